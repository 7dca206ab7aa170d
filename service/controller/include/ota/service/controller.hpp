// The fleet controller: device message handling, image store, deployments, chunk serving.
// Thread-safe: MQTT callbacks, HTTP handlers and the periodic tick may run concurrently.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <iosfwd>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <unordered_set>
#include <vector>

#include <nlohmann/json.hpp>

#include "ota/service/images.hpp"
#include "ota/service/keys.hpp"
#include "ota/service/rate_limit.hpp"
#include "ota/service/result.hpp"
#include "ota/service/rollout.hpp"
#include "ota/service/signing.hpp"
#include "ota/service/store.hpp"
#include "ota/service/tag_expr.hpp"

namespace ota::service {

// The broker link as /api/v1/health and /metrics show it.
struct LinkStatus {
  bool usable = true;     // connected and subscribed: offers and chunks can flow
  bool connected = true;  // the broker accepted the connection (CONNACK)
  std::uint64_t reconnects = 0;       // times the link became usable again after a loss
  std::uint64_t failed_attempts = 0;  // connection attempts that never became usable
  long long down_since_ms = 0;        // unix ms the link went down; 0 while usable
  long long last_outage_ms = -1;      // how long the last loss lasted; -1: none yet
  std::string last_error;             // why the link last went down or an attempt failed
  std::string broker;                 // mqtts://host:port
};

// Where the controller sends MQTT messages (the real client, or a recorder in tests).
class Publisher {
 public:
  virtual ~Publisher() = default;
  virtual bool publish(const std::string& topic, const void* data, std::size_t len, int qos,
                       bool retain) = 0;
  // False while the link is down: rollouts hold new offers instead of losing them.
  virtual bool ready() const { return true; }
  virtual LinkStatus link_status() const {
    LinkStatus s;
    s.usable = s.connected = ready();
    return s;
  }
  // As publish(); `acked` runs once the broker acknowledged the message (QoS 1 PUBACK), on
  // any thread and possibly inside this call: it must not take the caller's locks.
  virtual bool publish_acked(const std::string& topic, const void* data, std::size_t len, int qos,
                             bool retain, std::function<void()> acked) {
    const bool ok = publish(topic, data, len, qos, retain);
    if (ok && acked) acked();
    return ok;
  }
};

// A set of keys with a capacity: inserting into a full set forgets the oldest key (FIFO).
// Used for "log once" bookkeeping driven by device messages, so a device cannot grow it
// without bound.
class BoundedKeySet {
 public:
  explicit BoundedKeySet(std::size_t cap) : cap_(cap ? cap : 1) {}
  // True if `key` was not present (it is now).
  bool insert(const std::string& key);
  bool contains(const std::string& key) const { return set_.count(key) != 0; }
  std::size_t size() const { return set_.size(); }
  std::size_t capacity() const { return cap_; }

 private:
  std::size_t cap_;
  std::unordered_set<std::string> set_;
  std::deque<std::string> order_;
};

// Group memberships from a mosquitto acl_file: `user <id>` sections and their
// `topic [read|readwrite] <prefix>/grp/<group>/offer` lines (the lines broker-config/pki.sh
// appends). The broker enforces exactly these, so they are the authority on who may read a
// group's offer, unlike the "groups" a device claims in its hello.
class AclGroups {
 public:
  // Parses the text of an acl file.
  static AclGroups parse(const std::string& text, const std::string& prefix);
  static Result<AclGroups> load(const std::string& path, const std::string& prefix);
  bool is_member(const std::string& dev, const std::string& group) const;
  std::vector<std::string> groups_of(const std::string& dev) const;
  std::size_t users() const { return groups_.size(); }

 private:
  std::map<std::string, std::set<std::string>> groups_;  // user -> groups
};

struct ControllerConfig {
  std::string db_path;
  std::string store_dir;
  // mosquitto acl_file the broker uses; when set, group membership comes from it (re-read
  // when its mtime changes) and hello "groups" are informative only. Empty: hello claims.
  std::string acl_file;
  std::string prefix = "ota/v1";
  long long offer_ttl = 604800;
  // Lazy flush of progress/bytes_sent: at most every flush_interval_ms per row, or on 10%.
  long long flush_interval_ms = 1000;
  // A device is shown offline when nothing (heartbeat, event, request) arrived for this long,
  // even before the broker publishes its last will. 0: trust the last will only.
  long long heartbeat_timeout_s = 180;
  // Wall clock in unix ms; tests drive rollouts with their own. Empty: the system clock.
  std::function<long long()> clock;
  // Health: the disks holding the database and the image store must keep this much free.
  std::uint64_t min_free_bytes = 64ull * 1024 * 1024;
  // How often tick() proves the database writable when nothing else wrote (health).
  long long db_probe_interval_ms = 5000;
  // Event history kept: older / more events are deleted, except those of active
  // deployments and live rollouts. 0 = no limit of that kind.
  EventRetention event_retention{90LL * 86400 * 1000, 1000000};
  long long prune_interval_ms = 60000;
  // Per-device message budgets (token buckets): presence and events, and chunk requests (an
  // agent at full speed asks about 600 times a second with 4 KiB chunks). Messages beyond
  // them are dropped and counted (ota_device_messages_dropped_total{reason="rate_limited"}).
  double device_messages_per_s = 20, device_messages_burst = 200;
  double device_requests_per_s = 2000, device_requests_burst = 2000;
  // Offline signing and key sets (PROTOCOL.md 6.5, 6.6): the root key, release keys and the
  // signing key's role (keys.hpp).
  KeyRingConfig keys;
};

// Why a device message was dropped without effect (a label of
// ota_device_messages_dropped_total).
enum class DropReason {
  decode_error,        // not a valid message (codec error)
  rate_limited,        // over the device's message budget
  device_id_mismatch,  // a hello naming another device than its topic
  result_mismatch,     // a success result for another version than the deployment's image
  progress_backwards,  // progress below what the device already reported in this attempt
  not_applicable,      // not a member, finished or superseded deployment, stale id
  duplicate,           // an outcome we already have, sent again
  revoked,             // from a device the operator revoked (otactl device revoke)
};
constexpr std::size_t kDropReasonCount = 8;
const char* drop_reason_name(DropReason r);

// A Prometheus label value with backslash, double quote and newline escaped.
std::string prometheus_label_value(const std::string& v);

struct ImageFile;  // open fd + geometry of a stored image

struct AddImageResult {
  ImageRec image;
  bool created = false;
};

class Controller {
 public:
  // Opens the database and the store; loads active deployments.
  static Result<std::unique_ptr<Controller>> create(const ControllerConfig& cfg, Signer signer,
                                                    Publisher* pub);
  ~Controller();
  Controller(const Controller&) = delete;
  Controller& operator=(const Controller&) = delete;

  // --- operator actions
  // actor: who asked, for the event log ("token:alice"); empty = the controller.
  Result<AddImageResult> add_image(const std::string& bytes, const ImageParams& p,
                                   const std::string& actor = "");
  // image_ref: image id or version; kind "device" | "group".
  Result<DeploymentRec> deploy(const std::string& image_ref, const std::string& kind,
                               const std::string& target, const std::string& actor = "");
  Result<DeploymentRec> cancel(const std::string& deployment_id, const std::string& actor = "");
  // Forgets the device's last event seq (after a factory reset of its counter).
  Status reset_seq(const std::string& device_id, const std::string& actor = "");
  // Marks a device revoked: its messages are dropped (counted as DropReason::revoked), it is
  // never targeted again, its in-flight rows are cancelled. The broker side (its certificate
  // on the CRL) is the operator's step (broker-config/pki.sh revoke). Returns the device JSON.
  Result<nlohmann::json> revoke_device(const std::string& device_id, const std::string& actor);

  // --- key sets (PROTOCOL.md 6.6)
  // PUT /api/v1/keys: verifies the `keys` message (KeyRing::verify), stores it, logs it and
  // sends it to every online device whose hello reported an older version (the others get it
  // at their next hello). Returns keys_json().
  Result<nlohmann::json> push_keys(const std::string& body, const std::string& actor);
  // GET /api/v1/keys: the held set, the root, the signing key's role, devices by version.
  Result<nlohmann::json> keys_json();

  // --- rollouts (see rollout.hpp; actor names who asked, for the event log)
  Result<nlohmann::json> create_rollout(const nlohmann::json& body, const std::string& actor);
  // action: start pause resume abort retry rollback. rollback returns the new rollout.
  Result<nlohmann::json> rollout_action(const std::string& id, const std::string& action,
                                        const nlohmann::json& body, const std::string& actor);
  Result<nlohmann::json> rollouts_json();
  Result<nlohmann::json> rollout_json(const std::string& id, bool with_devices);
  // One engine step for every live rollout at `now_ms` (tick() calls it with the clock).
  void rollout_tick(long long now_ms);
  // body: {"key": "value" | null, ...}
  Result<nlohmann::json> set_device_tags(const std::string& id, const nlohmann::json& body,
                                         const std::string& actor);
  // Prometheus text exposition.
  std::string metrics_text();
  // An online backup of the database (SQLite's backup API: every committed transaction,
  // WAL included) written to `dest`, which must not exist. Returns its size in bytes.
  Result<std::uint64_t> backup_database(const std::string& dest);
  // Where backup_database() may put a temporary copy: beside the database (same disk).
  std::string backup_temp_path() const;
  // GET /api/v1/health: the broker link, the database's writability and the free space of
  // the database's and the store's disks, each with its own verdict. *ok: all pass.
  nlohmann::json health_json(bool* ok);

  // --- MQTT side
  // retained: the broker's stored copy, delivered because we (re)subscribed (a hello the
  // device sent before; it did not just reconnect).
  void on_message(const char* topic, const void* payload, std::size_t len, bool retained = false);
  // After connect+subscribe: re-publish retained group offers; after a lost link also
  // re-send the offer to every device in flight (their answers may have been lost).
  void on_connected(bool after_link_loss = false);
  // Periodic (about once a second): flush lazy counters, re-read a changed ACL file, prove
  // the database writable, prune old events.
  void tick();
  // The broker acknowledged tracked offers (publish_acked callbacks ran): persist that now,
  // so a restart does not send them again. Takes the controller lock: call it outside.
  void offer_acks_arrived();

  // --- queries (JSON as served by the HTTP API)
  Result<nlohmann::json> images_json();
  Result<nlohmann::json> image_json(const std::string& id_or_version);
  Result<nlohmann::json> deployments_json();
  Result<nlohmann::json> deployment_json(const std::string& id);
  // f plus a tag expression and a state (idle, an in-flight row state, online, offline).
  Result<nlohmann::json> devices_json(const DeviceFilter& f, const std::string& tag_expr = "",
                                      const std::string& state = "");
  Result<nlohmann::json> device_json(const std::string& id);
  Result<nlohmann::json> status_json();
  Result<nlohmann::json> events_json(const EventFilter& f);

  static nlohmann::json to_json(const ImageRec& r);
  static nlohmann::json to_json(const DeviceRec& r);

  std::uint64_t decode_errors() const { return decode_errors_.load(); }
  std::uint64_t chunks_sent() const { return chunks_sent_.load(); }
  // Device messages dropped without effect (non-members, finished deployments, stale ids).
  std::uint64_t ignored_messages() const { return ignored_messages_.load(); }
  // Chunk requests skipped as identical repeats within kDuplicateRequestMs.
  std::uint64_t duplicate_requests() const { return duplicate_requests_.load(); }
  std::uint64_t cancels_sent() const { return cancels_sent_.load(); }
  std::uint64_t bytes_served() const { return bytes_served_.load(); }
  std::uint64_t dropped(DropReason r) const { return dropped_[static_cast<std::size_t>(r)].load(); }

  static constexpr long long kDuplicateRequestMs = 200;
  static constexpr long long kCancelIntervalMs = 5000;
  static constexpr std::size_t kLogOnceCapacity = 4096;
  const std::string& prefix() const { return cfg_.prefix; }
  const std::string& key_id() const { return signer_.key_id(); }

 private:
  struct RowMem {
    RowRec rec;
    bool dirty = false;
    long long last_flush_ms = 0;
    int last_pct_bucket = -1;
  };
  struct DepMem {
    DeploymentRec rec;
    std::string rollout_id;  // for target_kind "rollout"
    ImageRec image;
    std::shared_ptr<ImageFile> file;
    std::map<std::string, RowMem> rows;  // by device id
  };

  struct RolloutMem {
    RolloutRec rec;
    RolloutPolicy policy;
    RolloutState st;
  };

  Controller(ControllerConfig cfg, Signer signer, KeyRing keys, Publisher* pub);
  long long now() const;  // unix ms from cfg_.clock
  // Whom a signed offer is for (the manifest's binding members).
  struct OfferTarget {
    std::string device;     // one device, or
    std::string group;      // one group (a retained group offer)
    bool rollback = false;  // a downgrade the operator ordered (rollout rollback)
  };
  // Signed offer JSON for `img` under the deployment id devices will use, bound to that id
  // and to `target`.
  Result<std::string> build_offer(const ImageRec& img, const std::string& offer_id,
                                  const OfferTarget& target);
  // Whether devices would take an offer of `img` signed now: with an online signing key it
  // needs a release signature, and a release signature's key must be trusted (not revoked).
  // Must hold mu_.
  Status check_deployable(const ImageRec& img) const;
  // Release file checks of add_image (must hold mu_): fills p from it, checks it against the
  // bytes' sha256/size, the known release keys and its signature; returns the key and sig.
  Result<std::pair<std::string, std::string>> check_release(const std::string& sha, std::size_t size,
                                                            ImageParams& p) const;
  // Sends the held key set to `dev` (topic .../down/keys). Unless `force`, a version already
  // sent kKeysQuickResends times goes again only after kKeysResendMs: a device that refuses
  // the set says hello after each one (it may have another root). Must hold mu_.
  void send_keys(const std::string& dev, bool force);
  bool is_rollback(const DepMem& d) const;
  // Active deployment for an id as sent by a device ("dep-x" or "dep-x.<attempt>").
  DepMem* find_dep(const std::string& offer_id, int* attempt);
  static std::string offer_id(const std::string& dep_id, int attempt);
  // tracked: the row's offer_sent is set once the broker acknowledged the offer.
  bool publish_offer_attempt(DepMem& d, const std::string& dev, int attempt, bool tracked = false);
  void apply_offer_acks();  // must hold mu_
  void send_cancel_now(const std::string& dev, const std::string& offer_id, const std::string& why);
  void note_alive(const std::string& dev);
  // Rollouts, must hold mu_.
  Status load_rollouts();
  std::vector<RolloutRow> rollout_rows(const DepMem& d) const;
  // Writes back changed rows and the rollout state, logs and carries out the actions.
  Status apply_engine(RolloutMem& ro, DepMem* d, std::vector<RolloutRow>& rows,
                      const std::vector<EngineAction>& actions, const std::string& actor,
                      long long now_ms);
  void run_engine(RolloutMem& ro, long long now_ms);
  Status start_rollout(RolloutMem& ro, const std::string& actor, long long now_ms);
  Result<std::vector<std::string>> resolve_targets(const RolloutRec& r);
  Result<nlohmann::json> rollback_rollout(RolloutMem* ro, const RolloutRec& rec,
                                          const nlohmann::json& body, const std::string& actor);
  nlohmann::json rollout_to_json(const RolloutRec& r, bool with_devices);
  // From memory if live, else from the database (must hold mu_).
  Result<nlohmann::json> current_rollout_json(const std::string& id);
  std::map<std::string, TagSubject> tag_subjects();
  nlohmann::json device_view(const DeviceRec& d,
                             const std::map<std::string, std::map<std::string, std::string>>* tags);
  Status load();
  Result<std::shared_ptr<ImageFile>> open_image(const ImageRec& img);
  Result<ImageRec> resolve_image(const std::string& ref);

  void handle_presence(const std::string& dev, const char* p, std::size_t len,
                       const char* topic, bool retained);
  void handle_event(const std::string& dev, const char* p, std::size_t len, const char* topic);
  void handle_chunk_request(const std::string& dev, const char* p, std::size_t len,
                            const char* topic);
  void decode_error(const std::string& dev, const char* topic, const char* what, int code,
                    const char* field);

  // Must hold mu_.
  bool publish_offer_to_device(const DepMem& d, const std::string& dev);
  void publish_group_offer(const DepMem& d, bool clear);
  Status write_row(RowMem& row);  // writes the row now, marks clean
  Status set_row_state(DepMem& d, RowMem& row, const std::string& state,
                       const std::string& reason);
  // Finishes the deployment when every row is final (erases it from active_).
  void maybe_complete(const std::string& dep_id);
  void flush_dirty(bool force);
  // Membership: the ACL file when configured, else the device's hello claim.
  bool in_group(const std::string& dev, const std::string& group) const;
  // Known devices (said hello at least once) that are members of `group`.
  std::vector<std::string> known_members(const std::string& group) const;
  Status reload_acl_if_changed(bool force);
  // Counts an ignored device message; logs (and records one event row) once per key.
  void ignored(const std::string& key, const std::string& dep, const std::string& dev,
               const std::string& what, const std::string& detail, const std::string& msg,
               DropReason reason = DropReason::not_applicable);
  void count_drop(DropReason r) { dropped_[static_cast<std::size_t>(r)]++; }
  // Tells `dev` to drop deployment `dep_id` (at most once per kCancelIntervalMs per device).
  void send_cancel(const std::string& dev, const std::string& dep_id, const std::string& why);
  std::optional<RowRec> finished_row(const std::string& dep_id, const std::string& dev);
  bool explained_version(const std::string& dev, const std::string& version,
                         const std::optional<std::string>& previous);
  std::string topic_for(int kind, const std::string& id) const;
  nlohmann::json deployment_to_json(const DeploymentRec& d, bool with_rows);
  void event(const std::string& dep, const std::string& dev, const std::string& what,
             const std::string& detail, const std::string& actor = "",
             const std::string& rollout = "");

  ControllerConfig cfg_;
  Signer signer_;
  KeyRing keys_;
  struct KeysSent {
    std::uint32_t version = 0;
    long long ms = 0;
    int count = 0;
  };
  std::map<std::string, KeysSent> keys_sent_;   // device -> last key set sent
  std::map<std::string, std::uint32_t> dev_keys_;  // device -> key-set version of its hello
  std::set<std::string> revoked_;                   // revoked devices
  static constexpr long long kKeysResendMs = 600000;
  static constexpr int kKeysQuickResends = 3;
  Publisher* pub_;
  std::mutex mu_;
  Store store_;
  std::map<std::string, DepMem> active_;                       // active deployments by id
  std::map<std::string, std::vector<std::string>> dev_groups_;  // device -> groups
  std::map<std::string, long long> dev_seq_;                    // device -> last seq
  std::map<std::string, std::string> dev_version_;              // device -> running version
  std::map<std::string, std::shared_ptr<ImageFile>> files_;     // image id -> open file
  std::map<std::string, RolloutMem> rollouts_;                  // live rollouts by id
  std::map<std::string, long long> seen_ms_;     // device -> last message (unix ms)
  std::map<std::string, long long> saved_seen_; // device -> last_seen (s) last written
  // Liveness: the broker's last will (d.online) and the age of the last message we heard.
  // Sets *last_ms to that message's time. Must hold mu_.
  bool is_online(const DeviceRec& d, long long now_ms, long long* last_ms) const;
  std::set<std::string> offline_devs_;          // last will seen, no hello/heartbeat since
  struct OfferAck {
    std::string dep, dev;
    int attempt;
  };
  std::mutex ack_mu_;  // the MQTT thread reports acks here without taking mu_
  std::vector<OfferAck> offer_acks_;
  bool resend_unsent_offers_ = true;  // once after start: offers committed, never acked
  BoundedKeySet logged_once_{kLogOnceCapacity};                // ignored-message log keys
  std::set<std::string> dirty_seq_;                              // devices: last_seq to persist
  std::map<std::string, long long> last_cancel_ms_;              // device -> last cancel sent
  struct LastRequest {
    std::string key;
    long long ms = 0;
  };
  std::map<std::string, LastRequest> last_request_;  // device -> last served chunk request
  bool acl_enabled_ = false;
  AclGroups acl_;
  struct FileStamp {
    long long mtime_ns = -1, size = -1, ino = -1;
    bool operator==(const FileStamp& o) const {
      return mtime_ns == o.mtime_ns && size == o.size && ino == o.ino;
    }
  };
  FileStamp acl_stamp_;
  std::atomic<std::uint64_t> decode_errors_{0};
  std::atomic<std::uint64_t> chunks_sent_{0};
  std::atomic<std::uint64_t> ignored_messages_{0};
  std::atomic<std::uint64_t> duplicate_requests_{0};
  std::atomic<std::uint64_t> cancels_sent_{0};
  std::atomic<std::uint64_t> bytes_served_{0};
  std::array<std::atomic<std::uint64_t>, kDropReasonCount> dropped_{};
  RateLimiter message_budget_;  // presence + events, per device
  RateLimiter request_budget_;  // chunk requests, per device
  // Health (health.cpp). Must hold mu_.
  void probe_database(long long now_ms);
  void prune_history(long long now_ms);
  void health_metrics(std::ostream& o);
  void rollout_metrics(std::ostream& o);  // rollout_metrics.cpp
  // Hellos whose commit failed (full disk, I/O error): applied again by tick() once the
  // database takes writes, so a device that said hello during the outage is not missed
  // (it will not say hello again until it reconnects). Device -> payload, retained flag.
  std::map<std::string, std::pair<std::string, bool>> unapplied_hellos_;
  static constexpr std::size_t kMaxUnappliedHellos = 100000;
  void keep_unapplied_hello(const std::string& dev, const char* p, std::size_t len, bool retained);
  void retry_unapplied_hellos();  // takes mu_
  long long last_db_probe_ms_ = 0;
  long long last_prune_ms_ = 0;
  std::uint64_t events_pruned_ = 0;
};

}  // namespace ota::service
