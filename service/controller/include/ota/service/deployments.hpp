// Deployments: the active deployments and their per-device rows, the offers, the broker's
// acknowledgements of offers, and cancels.
//
// Owns: the active deployments by id: record, image and open file, the rows with their
//   lazy-flush bookkeeping, and for a rollout's deployment what it needs of the rollout
//   (id, rollback or not, deferral policy, whether the rollout ended: the rollout runner
//   keeps it current); when each device was last sent a cancel; whether the offers of the
//   last run still wait to be re-sent; offers the broker acknowledged, not yet recorded.
// Lock: mu_. Order: database lock, then the rollout runner's, then this one, then the
//   registry's / key service's / chunk server's (leaves). Methods that write take the
//   database lock (DbLock&) as a parameter: the caller holds it. Row states only change
//   with the database lock held (they are persisted), so a caller holding it sees a row stay
//   as it was between two calls. ack_mu_ guards only the acknowledged offers: the MQTT
//   client's publish_acked callbacks take it and nothing else.
// Threads: MQTT network thread (events, hellos, chunk requests, acks, reconnects), HTTP
//   workers (deploy, cancel, revoke, rollout actions, views), tick thread (deferrals,
//   flush, rollouts).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "ota/proto/messages.hpp"
#include "ota/service/chunk_server.hpp"
#include "ota/service/controller_config.hpp"
#include "ota/service/database.hpp"
#include "ota/service/device_registry.hpp"
#include "ota/service/key_service.hpp"
#include "ota/service/publisher.hpp"
#include "ota/service/rollout_engine.hpp"
#include "ota/service/row_life.hpp"
#include "ota/service/store.hpp"

namespace ota::service {

struct LiveRow {
  RowRec rec;
  bool dirty = false;  // progress or bytes_sent not written yet
  long long last_flush_ms = 0;
};

// How a deferral is handled: a rollout's policy, else these defaults.
struct DeferPolicy {
  long long delay_s = 300;  // when the device does not say when; 0: the default
  int max_defers = 10;      // more deferrals: declined
};

// What a rollout's deployment knows of its rollout.
struct RolloutLink {
  bool rollback = false;  // offers carry the rollback flag
  DeferPolicy defer;
  RolloutStatus state = RolloutStatus::draft;  // the deployment ends once the rollout ended
};

struct LiveDeployment {
  DeploymentRec rec;
  ImageRec image;
  std::shared_ptr<ImageFile> file;
  std::map<std::string, LiveRow> rows;  // by device id
  std::string rollout_id;               // target_kind "rollout": the rollout
  RolloutLink rollout;
};

// What a device event refers to (Deployments::match_event).
struct EventMatch {
  // row: the device's row; stale_attempt: an earlier attempt of a rollout's offer;
  // non_member: not in the group (per the ACL); not_part: the deployment has no row for
  // it; unknown: no such active deployment.
  enum class Kind { row, stale_attempt, non_member, not_part, unknown } kind = Kind::unknown;
  std::string dep_id;  // the deployment's id (unknown: the id as sent)
  std::string group;   // non_member: the deployment's group
  int attempt = 1;     // the attempt the id names
  // kind row: the row as it is now, and its deployment.
  std::string image_version;
  RowState state = RowState::offered;
  int row_attempt = 1;
  int defers = 0;
  std::uint64_t received = 0;
  DeferPolicy defer;
};

// Whether chunk requests for a deployment are served (Deployments::chunk_grant).
struct ChunkGrant {
  std::shared_ptr<ImageFile> file;  // null: refused
  std::string refusal;              // why (for the log)
  std::string cancel;               // non-empty: tell the device to drop it, with this reason
};

// A device's transfer in flight, for device views.
struct Transfer {
  std::string deployment, rollout, version;
  RowState state = RowState::offered;
  std::uint64_t received = 0, total = 0;
};

class Deployments {
 public:
  static constexpr long long kCancelIntervalMs = 5000;

  Deployments(const ControllerConfig& cfg, Publisher* pub, DeviceRegistry& registry,
              KeyService& keys, ChunkServer& chunks);
  Deployments(const Deployments&) = delete;
  Deployments& operator=(const Deployments&) = delete;

  // The active deployments and their rows from the database (at start).
  Status load(DbLock& db);
  // Appends to the event log with the deployment's rollout (if any).
  void event(DbLock& db, const std::string& dep, const std::string& dev, const std::string& what,
             const std::string& detail, const std::string& actor = "");

  // --- operator actions (deployments.cpp)
  Result<DeploymentRec> deploy(DbLock& db, const ImageRec& img, const std::string& kind,
                               const std::string& target, const std::string& actor);
  Result<DeploymentRec> cancel(DbLock& db, const std::string& id, const std::string& actor);
  // Cancels the revoked device's unfinished rows inside the caller's transaction; returns
  // the deployments touched (to complete_if_done() after the commit).
  Result<std::vector<std::string>> cancel_rows_of(DbLock& db, const std::string& dev,
                                                  const std::string& actor);
  // Finishes the deployment when every row is final (and a rollout's when its rollout
  // ended). nullopt: still active; else the id of the rollout it belonged to ("" if none).
  std::optional<std::string> complete_if_done(DbLock& db, const std::string& dep_id);
  // Tells `dev` to drop deployment `offer_id` (at most once per kCancelIntervalMs per device).
  void send_cancel(const std::string& dev, const std::string& offer_id, const std::string& why);

  // --- device messages (deployment_messages.cpp)
  // The deployment and row a device event is for; adds a row for a group member.
  EventMatch match_event(const std::string& dev, const std::string& offer_id, proto::EventType type);
  // Applies an event whose row moves to `to` (the row life table's answer), inside the
  // caller's transaction: the row, the device's last error and version, the event log.
  // *final_now: the row became final.
  Status apply_event(DbLock& db, const std::string& dev, const EventMatch& m, const proto::Event& ev,
                     RowEvent rev, RowState to, bool* final_now);
  // A progress report that leaves the row's state as it is (m.state): kept in memory, written
  // by the next flush. False when the row is gone or its state moved since `m`.
  bool note_progress(const std::string& dev, const EventMatch& m, const proto::Event& ev);
  // The row's state and reason (for logs).
  std::optional<std::pair<RowState, std::string>> row_state(const std::string& dep_id,
                                                           const std::string& dev) const;
  // A hello from `dev` running `version`: finishes the rows it proves, re-offers the others
  // in flight unless it is the broker's retained copy. Inside the caller's transaction;
  // *touched: deployments to complete_if_done() after the commit.
  Status on_hello(DbLock& db, const std::string& dev, const std::string& version,
                  proto::SlotState slot, bool retained, std::vector<std::string>* touched);
  // A hello resuming a download of `offer_id`: why the device should drop it, if it should.
  std::optional<std::string> resume_refusal(const std::string& dev, const std::string& offer_id) const;
  ChunkGrant chunk_grant(const std::string& dev, const std::string& offer_id,
                         const std::string& image_id);
  // Counts bytes served for the row; true if the row should move on (transfer_started).
  bool chunks_served(const std::string& dev, const std::string& offer_id, std::uint64_t bytes);
  void transfer_started(DbLock& db, const std::string& dev, const std::string& offer_id);

  // --- periodic and link events (deployments.cpp)
  void reoffer_deferred(DbLock& db, long long now);  // plain deployments' due deferrals
  bool needs_flush(bool force) const;
  void flush_rows(DbLock& db, bool force);  // inside the caller's transaction
  void flush(DbLock& db, bool force);        // its own transaction
  void on_connected(DbLock& db, bool after_link_loss);
  // Records the offers the broker acknowledged (publish_acked callbacks queued them).
  void apply_offer_acks(DbLock& db);
  // Once after start: rollout offers committed but never acknowledged are published again.
  void resend_unsent_offers(DbLock& db);

  // --- rollouts (deployment_rollouts.cpp; called by the rollout runner)
  bool is_active(const std::string& dep_id) const;
  void link_rollout(const std::string& dep_id, const RolloutLink& link);
  void set_rollout_state(const std::string& dep_id, RolloutStatus state);
  // Whether `dev` has an unfinished row in an active deployment.
  bool busy(const std::string& dev) const;
  std::optional<std::vector<RolloutRow>> engine_rows(const std::string& dep_id) const;
  // Writes the rows the engine changed (memory and database, inside the caller's
  // transaction) and logs their state changes.
  Status store_engine_rows(DbLock& db, const std::string& dep_id, const std::vector<RolloutRow>& rows,
                           const std::string& actor, const std::string& rollout_id);
  // After a failed transaction: the rows as the database has them.
  void reload_rows(DbLock& db, const std::string& dep_id);
  // Publishes the engine's offers and cancels (after the commit).
  void carry_out(const std::string& dep_id, const std::vector<EngineAction>& actions);
  // A rollout's new deployment: stored inside the caller's transaction, then adopted.
  Status insert(DbLock& db, const LiveDeployment& d);
  void adopt(LiveDeployment d);
  // A finished rollout's deployment, active again (operator retry).
  Status reopen(DbLock& db, const DeploymentRec& rec, const ImageRec& img, const RolloutLink& link);

  // --- views (deployment_views.cpp)
  std::optional<std::vector<RowRec>> rows_of(const std::string& dep_id) const;
  std::optional<Transfer> transfer_of(const std::string& dev) const;
  // Known members of a group deployment's group that have no row yet.
  int pending_members(const std::string& dep_id, const std::string& group) const;
  // The rows in flight (device, state), by deployment id.
  std::vector<std::pair<std::string, RowState>> in_flight() const;
  std::size_t active_count() const;
  std::uint64_t cancels_sent() const { return cancels_sent_.load(); }

  // Offer ids: "dep-x" for the first attempt, "dep-x.<attempt>" after.
  static std::string offer_id(const std::string& dep_id, int attempt);

 private:
  long long now() const;  // the controller's clock
  LiveDeployment* find(const std::string& offer_id, int* attempt);
  const LiveDeployment* find(const std::string& offer_id, int* attempt) const;
  void log_event(DbLock& db, const LiveDeployment& d, const std::string& dev,
                 const std::string& what, const std::string& detail, const std::string& actor = "");
  Status write_row(DbLock& db, LiveRow& row);  // writes the row now, marks it clean
  Status set_row_state(DbLock& db, LiveDeployment& d, LiveRow& row, RowState state,
                       const std::string& reason);
  Status apply_row_event(DbLock& db, LiveDeployment& d, LiveRow& row, const proto::Event& ev,
                         RowEvent rev, RowState to, bool* final_now);
  bool publish_offer_to_device(const LiveDeployment& d, const std::string& dev);
  void publish_group_offer(const LiveDeployment& d, bool clear);
  // tracked: the row's offer_sent is set once the broker acknowledged the offer.
  bool publish_offer_attempt(const LiveDeployment& d, const std::string& dev, int attempt,
                             bool tracked = false);
  void send_cancel_locked(const std::string& dev, const std::string& offer_id, const std::string& why);
  // Cancels `d` on every device of `devs` now (operator cancel: no rate limit).
  void publish_cancels(const LiveDeployment& d, const std::vector<std::string>& devs,
                       const std::string& why);
  void flush_rows_locked(DbLock& db, bool force);
  std::string topic(int kind, const std::string& id) const;

  const ControllerConfig& cfg_;
  Publisher* const pub_;
  DeviceRegistry& registry_;
  KeyService& keys_;
  ChunkServer& chunks_;

  mutable std::mutex mu_;
  std::map<std::string, LiveDeployment> active_;    // by id
  std::map<std::string, long long> last_cancel_ms_;  // device -> last cancel sent
  bool resend_unsent_offers_ = true;  // once after start: offers committed, never acked

  struct OfferAck {
    std::string dep, dev;
    int attempt;
  };
  std::mutex ack_mu_;
  std::vector<OfferAck> offer_acks_;

  std::atomic<std::uint64_t> cancels_sent_{0};
};

}  // namespace ota::service
