// The fleet controller: wires the components that own the state (ARCHITECTURE.md) and
// offers the operations the HTTP API and the MQTT client call. It owns no state of its own
// besides the components; every method takes the database lock first where it needs it and
// then calls the components, which take their own locks.
//
//   Database        the SQLite connection and its lock           database.hpp
//   DeviceRegistry  hello, liveness, seqs, ACL groups, budgets   device_registry.hpp
//   KeyService      signing key, key sets, release keys          key_service.hpp
//   ChunkServer     open images, chunk serving, duplicates       chunk_server.hpp
//   Deployments     rows, offers, acks, cancels                  deployments.hpp
//   RolloutRunner   staged rollouts around the engine            rollout_runner.hpp
//   ImageCatalog    image uploads                                image_catalog.hpp
//   Inbound         device messages, one handler per kind        inbound.hpp
//   views, metrics, health: functions over snapshots             views.hpp metrics.hpp health.hpp
//
// Thread-safe: MQTT callbacks, HTTP handlers and the periodic tick may run concurrently.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "ota/service/chunk_server.hpp"
#include "ota/service/controller_config.hpp"
#include "ota/service/database.hpp"
#include "ota/service/deployments.hpp"
#include "ota/service/device_registry.hpp"
#include "ota/service/health.hpp"
#include "ota/service/image_catalog.hpp"
#include "ota/service/images.hpp"
#include "ota/service/inbound.hpp"
#include "ota/service/key_service.hpp"
#include "ota/service/keys.hpp"
#include "ota/service/metrics.hpp"
#include "ota/service/publisher.hpp"
#include "ota/service/result.hpp"
#include "ota/service/rollout_engine.hpp"
#include "ota/service/rollout_runner.hpp"
#include "ota/service/signing.hpp"
#include "ota/service/store.hpp"
#include "ota/service/tag_expr.hpp"
#include "ota/service/views.hpp"

namespace ota::service {

class Controller {
 public:
  // Opens the database and the store; loads devices, active deployments, live rollouts.
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

  // --- deletions (controller_deletes.cpp; DELETE in the HTTP API). The event log keeps
  // their history. Each returns {"id": ..., "deleted": true} (devices: "decommissioned").
  // An image no deployment or rollout refers to: its row and its file. conflict naming the
  // users otherwise.
  Result<nlohmann::json> delete_image(const std::string& id_or_version, const std::string& actor);
  // A rollout that never started (RolloutRunner::remove).
  Result<nlohmann::json> delete_rollout(const std::string& id, const std::string& actor);
  // Decommission: the device's row and tags go (its deployment rows and events stay), it is
  // forgotten in memory and its retained hello is cleared on the broker, so a restart does
  // not bring it back. If it says hello again it is a new device. conflict while it has an
  // unfinished row (cancel or let it finish first) or is revoked (its row keeps it refused).
  Result<nlohmann::json> decommission_device(const std::string& id, const std::string& actor);

  // --- key sets (PROTOCOL.md 6.6)
  // PUT /api/v1/keys: verifies the `keys` message (KeyRing::verify), stores it, logs it and
  // sends it to every online device whose hello reported an older version (the others get it
  // at their next hello). Returns keys_json().
  Result<nlohmann::json> push_keys(const std::string& body, const std::string& actor);
  // GET /api/v1/keys: the held set, the root, the signing key's role, devices by version.
  Result<nlohmann::json> keys_json();

  // --- rollouts (rollout_runner.hpp; actor names who asked, for the event log)
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

  // --- MQTT side (the network thread)
  // retained: the broker's stored copy, delivered because we (re)subscribed (a hello the
  // device sent before; it did not just reconnect).
  void on_message(const char* topic, const void* payload, std::size_t len, bool retained = false);
  // After connect+subscribe: re-publish retained group offers; after a lost link also
  // re-send the offer to every device in flight (their answers may have been lost).
  void on_connected(bool after_link_loss = false);
  // Periodic (about once a second): hellos to apply again, rollouts, deferrals, lazy
  // counters, the database probe and retention, a changed ACL file.
  void tick();
  // The broker acknowledged tracked offers (publish_acked callbacks ran): persist that now,
  // so a restart does not send them again. Takes the database lock: call it outside.
  void offer_acks_arrived();

  // --- queries (JSON as served by the HTTP API; controller_queries.cpp)
  Result<nlohmann::json> images_json();
  Result<nlohmann::json> image_json(const std::string& id_or_version);
  Result<nlohmann::json> deployments_json();
  Result<nlohmann::json> deployment_json(const std::string& id);
  // f plus a tag expression and a state (idle, an in-flight row state, online, offline).
  Result<nlohmann::json> devices_json(const DeviceFilter& f, const std::string& tag_expr = "",
                                      const std::string& state = "");
  // One page of what devices_json selects (id order): the views of [offset, offset + limit)
  // only, and in *total how many match. With 10,000 devices a page builds 25 views, not
  // 10,000 (GET /api/v1/devices).
  Result<nlohmann::json> devices_page_json(const DeviceFilter& f, const std::string& tag_expr,
                                           const std::string& state, std::size_t offset,
                                           std::size_t limit, std::size_t* total);
  // What devices_json selects, counted without building views (GET /api/v1/fleet):
  // {"total","online","offline","by_version","by_hw","by_state","by_group"}.
  Result<nlohmann::json> fleet_counts_json(const DeviceFilter& f, const std::string& tag_expr = "",
                                           const std::string& state = "");
  Result<nlohmann::json> device_json(const std::string& id);
  Result<nlohmann::json> status_json();
  Result<nlohmann::json> events_json(const EventFilter& f);
  // Devices per version at `points` evenly spaced times from `since_ms` (0: the first hello
  // in the event log) to now, replayed from the log's hellos (a hello is logged when a
  // device's version changes or it comes online): {"from","to","versions","points":[{"ts",
  // "counts"}]}. The history goes back as far as the event retention keeps it.
  Result<nlohmann::json> version_history_json(long long since_ms, int points);

  static nlohmann::json to_json(const ImageRec& r) { return image_view(r); }
  static nlohmann::json to_json(const DeviceRec& r) { return device_record_view(r); }

  std::uint64_t decode_errors() const { return inbound_.decode_errors(); }
  std::uint64_t broadcast_unreadable() const { return inbound_.broadcast_unreadable(); }
  // Device messages waiting for the device-message thread (inbound.hpp).
  std::size_t queued_device_messages() const { return inbound_.queued(); }
  std::uint64_t chunks_sent() const { return chunks_.chunks_sent(); }
  // Device messages dropped without effect (non-members, finished deployments, stale ids).
  std::uint64_t ignored_messages() const { return inbound_.ignored_messages(); }
  // Chunk requests skipped as identical repeats within kDuplicateRequestMs.
  std::uint64_t duplicate_requests() const { return chunks_.duplicate_requests(); }
  std::uint64_t cancels_sent() const { return deployments_.cancels_sent(); }
  std::uint64_t bytes_served() const { return chunks_.bytes_served(); }
  std::uint64_t dropped(DropReason r) const { return inbound_.dropped(r); }

  static constexpr long long kDuplicateRequestMs = ChunkServer::kDuplicateRequestMs;
  static constexpr long long kCancelIntervalMs = Deployments::kCancelIntervalMs;
  static constexpr std::size_t kLogOnceCapacity = Inbound::kLogOnceCapacity;
  const std::string& prefix() const { return cfg_.prefix; }
  const std::string& key_id() const { return keys_.key_id(); }

 private:
  Controller(ControllerConfig cfg, Signer signer, KeyRing keys, Publisher* pub);
  long long now() const { return controller_now(cfg_); }
  Status load();
  // Writes the lazy counters (rows' progress, seqs, last_seen) in one transaction.
  void flush(DbLock& db, bool force);
  // Finishes the deployment if it is done (and forgets its rollout then).
  void complete(DbLock& db, const std::string& dep_id);
  // Gives the memory threads freed back to the system, at most every 10 s (tick thread).
  void return_free_memory();
  std::chrono::steady_clock::time_point last_memory_return_{};
  // Snapshots for the views (controller_queries.cpp).
  DeviceLive device_live(const DeviceRec& d, long long now) const;
  // Calls fn(device, its live state, its tags) for each device the filters of devices_json
  // select, in id order, holding the database lock; `t` is the time liveness is judged at.
  Status for_each_device(
      const DeviceFilter& f, const std::string& tag_expr, const std::string& state,
      const std::function<void(const DeviceRec&, const DeviceLive&, const DeviceTags*, long long t)>& fn);
  nlohmann::json deployment_json_of(DbLock& db, const DeploymentRec& d, bool with_rows);
  HealthSnapshot health_snapshot(DbLock* db);
  MetricsSnapshot metrics_snapshot(DbLock& db);

  // Order matters: members are built (and refer to each other) top down.
  ControllerConfig cfg_;
  Publisher* pub_;
  // pub_ as the components that decide see it: the device-message thread's publishes wait
  // for its batch's commit. nullptr without a publisher.
  std::unique_ptr<DeferringPublisher> deferring_;
  Publisher* decided() { return deferring_ ? static_cast<Publisher*>(deferring_.get()) : nullptr; }
  Database db_;
  DeviceRegistry registry_;
  KeyService keys_;
  ChunkServer chunks_;
  Deployments deployments_;
  RolloutRunner runner_;
  ImageCatalog images_;
  Inbound inbound_;
};

}  // namespace ota::service
