// Rollout runner: loading, the engine step (persist, then carry out), views. Operator
// actions: rollout_actions.cpp.
#include "ota/service/rollout_runner.hpp"

#include <algorithm>

#include "ota/service/log.hpp"
#include "ota/service/rollout_records.hpp"
#include "ota/service/views.hpp"

namespace ota::service {

using nlohmann::json;

RolloutRunner::RolloutRunner(const ControllerConfig& cfg, Deployments& deployments,
                             DeviceRegistry& registry, KeyService& keys, ChunkServer& chunks)
    : cfg_(cfg), deployments_(deployments), registry_(registry), keys_(keys), chunks_(chunks) {}

long long RolloutRunner::now() const { return controller_now(cfg_); }

RolloutLink RolloutRunner::link_of(const Live& ro) {
  RolloutLink l;
  l.rollback = !ro.rec.rollback_of.empty();
  l.defer.delay_s = ro.policy.defer_delay_s;
  l.defer.max_defers = ro.policy.max_defers;
  l.state = ro.rec.state;
  return l;
}

Status RolloutRunner::load(DbLock& db) {
  auto all = db.store().list_rollouts();
  if (!all) return all.err();
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& r : *all) {
    const bool dep_active = !r.deployment_id.empty() && deployments_.is_active(r.deployment_id);
    if (is_terminal(r.state) && !dep_active) continue;
    auto p = parse_policy(json::parse(r.policy, nullptr, false), PolicySource::stored);
    if (!p) return p.context("rollout " + r.id + ": stored policy");
    Live m{r, std::move(*p), engine_state(r)};
    if (dep_active) deployments_.link_rollout(r.deployment_id, link_of(m));
    rollouts_.insert_or_assign(r.id, std::move(m));
  }
  return {};
}

std::size_t RolloutRunner::live_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return rollouts_.size();
}

void RolloutRunner::forget(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  rollouts_.erase(id);
}

// -------------------------------------------------------------------------------- engine

Status RolloutRunner::apply_engine(DbLock& db, Live& ro, std::vector<RolloutRow>& rows,
                                   const std::vector<EngineAction>& actions,
                                   const std::string& actor, long long now_ms) {
  const RolloutStatus before = ro.rec.state;
  RolloutRec next = ro.rec;
  store_engine_state(ro.st, next);
  if (is_terminal(next.state) && !is_terminal(before)) next.finished_at = now_ms / 1000;
  if (!is_terminal(next.state)) next.finished_at = 0;
  const std::string& dep_id = ro.rec.deployment_id;
  const bool has_dep = !dep_id.empty() && deployments_.is_active(dep_id);
  {
    Tx tx(db.store());
    Status s = tx.status();
    if (s && has_dep) s = deployments_.store_engine_rows(db, dep_id, rows, actor, ro.rec.id);
    if (s) s = db.store().update_rollout(next);
    const std::string logged_dep = has_dep ? dep_id : std::string();
    for (const auto& a : actions) {
      if (!s) break;
      if (a.kind == EngineAction::Kind::log)
        db.event(logged_dep, a.device, a.what, a.detail, actor, ro.rec.id);
      else if (a.kind == EngineAction::Kind::offer)
        db.event(logged_dep, a.device, "offered", a.detail, actor, ro.rec.id);
      else
        db.event(logged_dep, a.device, "cancel_sent", a.detail, actor, ro.rec.id);
    }
    if (s) s = tx.commit();
    if (!s) {
      // Memory rows may be ahead of the database now; reload them so nothing is published
      // that the database does not hold.
      if (has_dep) deployments_.reload_rows(db, dep_id);
      return s;
    }
  }
  ro.rec = next;
  // Persisted: now tell the devices. A crash before this line loses the messages, never
  // repeats them: the offered rows time out and are retried as the policy says.
  if (has_dep) {
    deployments_.set_rollout_state(dep_id, ro.rec.state);
    deployments_.carry_out(dep_id, actions);
  }
  if (before != ro.rec.state)
    log_info("rollout " + ro.rec.id + ": " + to_string(before) + " -> " + to_string(ro.rec.state) +
             (ro.rec.pause_reason.empty() ? "" : " (" + ro.rec.pause_reason + ")"));
  return {};
}

void RolloutRunner::complete_if_done(DbLock& db, const std::string& id, const std::string& dep_id) {
  auto done = deployments_.complete_if_done(db, dep_id);
  if (done) rollouts_.erase(id);
}

void RolloutRunner::run_engine(DbLock& db, Live& ro, long long now_ms) {
  if (ro.rec.state == RolloutStatus::draft) return;
  if (ro.rec.deployment_id.empty()) {
    // A scheduled rollout claims its devices when its start time comes, not before.
    if (ro.rec.state == RolloutStatus::scheduled && ro.policy.start_at_s * 1000 <= now_ms)
      start_when_due(db, ro, now_ms);
    return;
  }
  auto engine_rows = deployments_.engine_rows(ro.rec.deployment_id);
  if (!engine_rows) return;
  std::vector<RolloutRow> rows = std::move(*engine_rows);
  const std::string id = ro.rec.id;
  const std::string dep_id = ro.rec.deployment_id;
  const RolloutState before = ro.st;
  auto actions = ota::service::advance(ro.st, rows, ro.policy, now_ms);
  const bool changed =
      !actions.empty() || before.state != ro.st.state || before.current_wave != ro.st.current_wave ||
      before.threshold_met_ms != ro.st.threshold_met_ms ||
      std::any_of(rows.begin(), rows.end(), [](const RolloutRow& r) { return r.changed; });
  if (!changed) {
    if (is_terminal(ro.rec.state)) complete_if_done(db, id, dep_id);
    return;
  }
  Status s = apply_engine(db, ro, rows, actions, "controller", now_ms);
  if (!s) {
    log_error("rollout " + ro.rec.id + ": " + s.error() + " (retrying next tick)");
    ro.st = before;
    return;
  }
  if (is_terminal(ro.rec.state)) complete_if_done(db, id, dep_id);  // (may erase ro)
}

void RolloutRunner::advance(DbLock& db, long long now_ms) {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::string> ids;
  for (const auto& kv : rollouts_) ids.push_back(kv.first);
  for (const auto& id : ids) {
    auto it = rollouts_.find(id);
    if (it != rollouts_.end()) run_engine(db, it->second, now_ms);
  }
}

// --------------------------------------------------------------------------------- views

json RolloutRunner::to_json(DbLock& db, const RolloutRec& r, bool with_devices) const {
  RolloutPolicy p;
  auto pp = parse_policy(json::parse(r.policy, nullptr, false), PolicySource::stored);
  if (pp) p = *pp;
  auto img = db.store().image_by_id(r.image_id);
  const std::string version = img && *img ? (*img)->version : "";
  std::vector<RowRec> rows;
  if (auto live = deployments_.rows_of(r.deployment_id)) {
    rows = std::move(*live);
  } else if (!r.deployment_id.empty()) {
    auto stored = db.store().rows(r.deployment_id);
    if (stored) rows = std::move(*stored);
  }
  return rollout_view(r, p, version, rows, with_devices);
}

Result<json> RolloutRunner::current_json(DbLock& db, const std::string& id) {
  auto live = rollouts_.find(id);
  if (live != rollouts_.end()) return to_json(db, live->second.rec, false);
  auto r = db.store().rollout(id);
  if (!r) return r.err();
  if (!*r) return not_found_err("unknown rollout " + id);
  return to_json(db, **r, false);
}

Result<json> RolloutRunner::list_json(DbLock& db) {
  auto all = db.store().list_rollouts();
  if (!all) return all.context("rollouts");
  std::lock_guard<std::mutex> lock(mu_);
  json out = json::array();
  for (const auto& r : *all) {
    auto live = rollouts_.find(r.id);
    out.push_back(to_json(db, live != rollouts_.end() ? live->second.rec : r, false));
  }
  return out;
}

Result<json> RolloutRunner::one_json(DbLock& db, const std::string& id, bool with_devices) {
  std::lock_guard<std::mutex> lock(mu_);
  auto live = rollouts_.find(id);
  if (live != rollouts_.end()) return to_json(db, live->second.rec, with_devices);
  auto r = db.store().rollout(id);
  if (!r) return r.context("rollout");
  if (!*r) return not_found_err("unknown rollout " + id);
  return to_json(db, **r, with_devices);
}

std::vector<RolloutRunner::Snapshot> RolloutRunner::snapshot(DbLock& db) const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<Snapshot> out;
  for (const auto& kv : rollouts_) {
    Snapshot s;
    s.rec = kv.second.rec;
    s.policy = kv.second.policy;
    auto img = db.store().image_by_id(s.rec.image_id);
    s.version = img && *img ? (*img)->version : "";
    if (auto live = deployments_.rows_of(s.rec.deployment_id)) {
      s.rows = std::move(*live);
    } else if (!s.rec.deployment_id.empty()) {
      auto stored = db.store().rows(s.rec.deployment_id);
      if (stored) s.rows = std::move(*stored);
    }
    out.push_back(std::move(s));
  }
  return out;
}

// ------------------------------------------------------------------------------ delete

Result<json> RolloutRunner::remove(DbLock& db, const std::string& id, const std::string& actor) {
  std::lock_guard<std::mutex> lock(mu_);
  auto live = rollouts_.find(id);
  std::optional<RolloutRec> rec;
  if (live != rollouts_.end()) {
    rec = live->second.rec;
  } else {
    auto stored = db.store().rollout(id);
    if (!stored) return stored.context("rollout delete");
    rec = *stored;
  }
  if (!rec) return not_found_err("unknown rollout " + id);
  if (!rec->deployment_id.empty())
    return conflict_err("rollout " + id + " is " + to_string(rec->state) +
                        " and has started (deployment " + rec->deployment_id +
                        "): only a rollout that never started can be deleted; abort it instead "
                        "(its history stays)");
  Tx tx(db.store());
  Status s = tx.status();
  if (s) s = db.store().delete_unstarted_rollout(id);
  if (s)
    db.event("", "", "rollout_deleted", "was " + std::string(to_string(rec->state)), actor, id);
  if (s) s = tx.commit();
  if (!s) return s.context("rollout delete: db");
  if (live != rollouts_.end()) rollouts_.erase(live);
  log_info("rollout " + id + " deleted by " + (actor.empty() ? "controller" : actor));
  return json{{"id", id}, {"deleted", true}};
}

}  // namespace ota::service
