// Device registry: what the controller knows about each device between its messages.
//
// Owns: per device its claimed groups, running version, last event seq
//   (and which seqs still wait to be written), liveness (time of its last message, last
//   will seen, last_seen as last written), revocation; the ACL file's group memberships;
//   hellos the database could not take yet; the per-device message budgets.
// Lock: mu_, a leaf: nothing else is locked or called while it is held. Methods that write
//   take the database lock (DbLock&) as a parameter: the caller holds it already (the
//   database lock comes first).
// Threads: MQTT network thread (presence, events, chunk requests), tick thread (flush, ACL
//   re-read, hellos to apply again), HTTP workers (views, revoke, deploy and rollout targets).
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "ota/service/controller_config.hpp"
#include "ota/service/database.hpp"
#include "ota/service/rate_limit.hpp"
#include "ota/service/result.hpp"
#include "ota/service/store.hpp"
#include "ota/service/tag_expr.hpp"

namespace ota::service {

// Group memberships from a mosquitto acl_file: `user <id>` sections and their
// `topic [read|readwrite] <prefix>/grp/<group>/offer` lines (the lines broker-config/pki.sh
// appends). The broker enforces exactly these, so they are the authority on who may read a
// group's offer, unlike the "groups" a device claims in its hello. Also the groups whose
// broadcast image topics a user may read (`topic read <prefix>/grp/<group>/img/+/chunk`,
// PROTOCOL.md 17): the controller broadcasts to a device only on a topic it can read.
class AclGroups {
 public:
  // Parses the text of an acl file.
  static AclGroups parse(const std::string& text, const std::string& prefix);
  static Result<AclGroups> load(const std::string& path, const std::string& prefix);
  bool is_member(const std::string& dev, const std::string& group) const;
  std::vector<std::string> groups_of(const std::string& dev) const;
  bool reads_images_of(const std::string& dev, const std::string& group) const;
  std::size_t users() const { return groups_.size(); }

 private:
  std::map<std::string, std::set<std::string>> groups_;        // user -> groups
  std::map<std::string, std::set<std::string>> image_groups_;  // user -> groups' image topics
};

class DeviceRegistry {
 public:
  explicit DeviceRegistry(const ControllerConfig& cfg);
  DeviceRegistry(const DeviceRegistry&) = delete;
  DeviceRegistry& operator=(const DeviceRegistry&) = delete;

  // The known devices from the database (at start). Returns how many.
  Result<std::size_t> load(DbLock& db);

  // --- group membership: the ACL file when configured, else the device's hello claim
  bool acl_enabled() const { return acl_enabled_; }
  // Re-reads the ACL file when it changed (or always with force); keeps the old
  // memberships when it cannot be read.
  Status reload_acl_if_changed(bool force);
  bool in_group(const std::string& dev, const std::string& group) const;
  // Known devices (said hello at least once, not revoked) that are members of `group`.
  std::vector<std::string> known_members(const std::string& group) const;
  // May `dev` read `group`'s broadcast image topics? The ACL file's image line when
  // configured, else the device's claim (a device claiming a group it cannot read falls
  // back to unicast by itself, PROTOCOL.md 17).
  bool reads_group_images(const std::string& dev, const std::string& group) const;
  // The groups `d` is a member of (the ACL's, or the ones it claims).
  std::vector<std::string> member_of(const DeviceRec& d) const;

  // A decommissioned device: everything the registry knows about it goes (the ACL file's
  // groups stay: they are the broker's). A later hello makes it known again.
  void forget(const std::string& dev);

  // --- revocation
  bool revoked(const std::string& dev) const;
  void set_revoked(const std::string& dev);

  // --- event sequence numbers (-1: none seen yet)
  bool known(const std::string& dev) const;  // said hello (or is in the database)
  long long last_seq(const std::string& dev) const;
  void set_seq(const std::string& dev, long long seq);  // as written to the database
  // Remembered now, written by flush() (events that change nothing else).
  void set_seq_lazily(const std::string& dev, long long seq);

  // --- what its hello said
  // Inside the hello's transaction: groups, version, and its seq if it was not known.
  void hello_seen(const std::string& dev, const std::vector<std::string>& groups,
                  const std::string& version, long long stored_seq);
  // After the hello's commit: alive, no longer offline.
  void hello_committed(const std::string& dev, long long now);
  std::string version(const std::string& dev) const;
  void set_version(const std::string& dev, const std::string& version);

  // --- liveness: the broker's last will (d.online) and the age of the last message
  void note_alive(const std::string& dev, long long now);
  // A heartbeat: true if a last will marked it offline since its last hello.
  bool heartbeat_after_last_will(const std::string& dev);
  void last_will(const std::string& dev);
  // Sets *last_ms to the time of its last message.
  bool is_online(const DeviceRec& d, long long now, long long* last_ms) const;

  // Writes the seqs set lazily and last_seen that moved (by 30 s, or at all with force),
  // inside the caller's transaction. needs_flush: whether there is anything to write.
  bool needs_flush(bool force) const;
  void flush(DbLock& db, bool force);

  // --- hellos whose commit failed (full disk, I/O error): applied again by tick() once the
  // database takes writes (the device will not say hello again until it reconnects).
  void keep_unapplied_hello(const std::string& dev, std::string payload, bool retained);
  void forget_unapplied_hello(const std::string& dev);
  struct UnappliedHello {
    std::string payload;
    bool retained = false;
  };
  std::map<std::string, UnappliedHello> take_unapplied_hellos();

  // --- per-device budgets (token buckets; own locks): chunk requests, or everything else.
  bool admit(const std::string& dev, bool chunk_request, long long steady_ms);

  static constexpr std::size_t kMaxUnappliedHellos = 100000;

 private:
  std::vector<std::string> known_members_locked(const std::string& group) const;
  bool in_group_locked(const std::string& dev, const std::string& group) const;

  const ControllerConfig& cfg_;
  const bool acl_enabled_;
  RateLimiter message_budget_;  // presence + events, per device
  RateLimiter request_budget_;  // chunk requests, per device

  mutable std::mutex mu_;
  std::map<std::string, std::vector<std::string>> groups_;  // device -> claimed groups
  std::map<std::string, long long> seq_;                    // device -> last seq
  std::set<std::string> dirty_seq_;                         // seqs not written yet
  std::map<std::string, std::string> version_;              // device -> running version
  std::set<std::string> revoked_;
  std::map<std::string, long long> seen_ms_;     // device -> last message (unix ms)
  std::map<std::string, long long> saved_seen_;  // device -> last_seen (s) last written
  std::set<std::string> offline_;                // last will seen, no hello/heartbeat since
  std::map<std::string, UnappliedHello> unapplied_hellos_;
  AclGroups acl_;
  struct FileStamp {
    long long mtime_ns = -1, size = -1, ino = -1;
    bool operator==(const FileStamp& o) const {
      return mtime_ns == o.mtime_ns && size == o.size && ino == o.ino;
    }
  };
  FileStamp acl_stamp_;
};

// What tag expressions match against, for every known device: id, hw, version, the groups
// it is a member of (member_of), its tags.
std::map<std::string, TagSubject> tag_subjects(Store& store, const DeviceRegistry& registry);

}  // namespace ota::service
