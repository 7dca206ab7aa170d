// Rollout runner: staged rollouts around the engine (rollout_engine.hpp). Each decision of
// the engine (a tick or an operator action) is persisted first, rows and rollout in one
// transaction, and only then carried out (offers, cancels), so a controller killed at any
// point resumes from the database in the same wave and never offers an attempt twice.
//
// Owns: the live rollouts: record, parsed policy and engine state of every rollout that has
//   not ended, and of ended ones whose deployment still waits for devices that could not
//   be stopped.
// Lock: mu_. Order: the database lock first (every public method takes it as a parameter),
//   then this, then the deployments' lock (the runner calls Deployments; never the reverse).
// Threads: tick thread (advance), HTTP workers (create, actions, views), MQTT network
//   thread (forget: a device's final event completed a rollout's deployment).
#pragma once

#include <map>
#include <mutex>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "ota/service/chunk_server.hpp"
#include "ota/service/controller_config.hpp"
#include "ota/service/database.hpp"
#include "ota/service/deployments.hpp"
#include "ota/service/device_registry.hpp"
#include "ota/service/key_service.hpp"
#include "ota/service/rollout_engine.hpp"
#include "ota/service/store.hpp"
#include "ota/service/tag_expr.hpp"

namespace ota::service {

class RolloutRunner {
 public:
  RolloutRunner(const ControllerConfig& cfg, Deployments& deployments, DeviceRegistry& registry,
                KeyService& keys, ChunkServer& chunks);
  RolloutRunner(const RolloutRunner&) = delete;
  RolloutRunner& operator=(const RolloutRunner&) = delete;

  // The live rollouts from the database (after Deployments::load).
  Status load(DbLock& db);
  std::size_t live_count() const;

  // One engine step for every live rollout at `now_ms`.
  void advance(DbLock& db, long long now_ms);
  // The deployment of rollout `id` completed: it is no longer live.
  void forget(const std::string& id);

  // --- operator (rollout_actions.cpp)
  Result<nlohmann::json> create(DbLock& db, const nlohmann::json& body, const std::string& actor);
  // action: start pause resume abort retry rollback. rollback returns the new rollout.
  Result<nlohmann::json> action(DbLock& db, const std::string& id, const std::string& action,
                                const nlohmann::json& body, const std::string& actor);

  // DELETE /api/v1/rollouts/ID: a rollout that never started (a draft, or one aborted as a
  // draft; it has no deployment and has claimed no device) goes from the database and from
  // the live rollouts (and so from /metrics); its events stay. conflict once it started.
  Result<nlohmann::json> remove(DbLock& db, const std::string& id, const std::string& actor);

  // --- views
  Result<nlohmann::json> list_json(DbLock& db);
  Result<nlohmann::json> one_json(DbLock& db, const std::string& id, bool with_devices);
  struct Snapshot {
    RolloutRec rec;
    RolloutPolicy policy;
    std::vector<RowRec> rows;
    std::string version;  // of its image
  };
  // Every live rollout with its rows (for metrics).
  std::vector<Snapshot> snapshot(DbLock& db) const;

 private:
  struct Live {
    RolloutRec rec;
    RolloutPolicy policy;
    RolloutState st;
  };
  long long now() const;
  // Persists what the engine decided (rows, rollout state, the log), then carries out its
  // actions. On failure nothing is carried out and ro.st is the caller's to restore.
  Status apply_engine(DbLock& db, Live& ro, std::vector<RolloutRow>& rows,
                      const std::vector<EngineAction>& actions, const std::string& actor,
                      long long now_ms);
  void run_engine(DbLock& db, Live& ro, long long now_ms);
  // Finishes the rollout's deployment if it is done; erases `id` from rollouts_ then.
  void complete_if_done(DbLock& db, const std::string& id, const std::string& dep_id);
  static RolloutLink link_of(const Live& ro);
  // rollout_actions.cpp
  // A draft: claims its devices now, or is scheduled (claiming nothing) for its start time.
  Status start(DbLock& db, Live& ro, const std::string& actor, long long now_ms);
  // The rollout's deployment: its eligible targets now, in waves, pending (a draft is
  // started too). Persisted before it is adopted.
  Status claim_devices(DbLock& db, Live& ro, const std::string& actor, long long now_ms);
  Result<LiveDeployment> rollout_deployment(const RolloutRec& rec, const ImageRec& img,
                                            const std::string& dep_id,
                                            std::vector<RolloutRow>& rows, long long now_ms);
  // A scheduled rollout whose start time came: claim_devices, or a pause saying why not.
  void start_when_due(DbLock& db, Live& ro, long long now_ms);
  Result<std::vector<std::string>> resolve_targets(DbLock& db, const RolloutRec& r);
  Result<Live*> revive(DbLock& db, const RolloutRec& rec);
  Result<nlohmann::json> rollback(DbLock& db, Live* ro, const RolloutRec& rec,
                                  const nlohmann::json& body, const std::string& actor);
  Result<nlohmann::json> operator_step(DbLock& db, Live& ro, const std::string& action,
                                       const std::string& reason, const std::string& actor);
  // The rollout as the API shows it: from memory if live, else from the database.
  Result<nlohmann::json> current_json(DbLock& db, const std::string& id);
  nlohmann::json to_json(DbLock& db, const RolloutRec& r, bool with_devices) const;

  const ControllerConfig& cfg_;
  Deployments& deployments_;
  DeviceRegistry& registry_;
  KeyService& keys_;
  ChunkServer& chunks_;

  mutable std::mutex mu_;
  std::map<std::string, Live> rollouts_;  // live rollouts by id
};

}  // namespace ota::service
