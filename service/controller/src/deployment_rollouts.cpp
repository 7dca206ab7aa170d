// Deployments: the interface of the rollout runner to a rollout's deployment (its rows as
// the engine sees them, writing back what the engine changed, carrying out its actions).
#include "ota/service/deployments.hpp"

#include "ota/service/log.hpp"
#include "ota/service/rollout_records.hpp"

namespace ota::service {

bool Deployments::is_active(const std::string& dep_id) const {
  std::lock_guard<std::mutex> lock(mu_);
  return active_.count(dep_id) != 0;
}

void Deployments::link_rollout(const std::string& dep_id, const RolloutLink& link) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = active_.find(dep_id);
  if (it != active_.end()) it->second.rollout = link;
}

void Deployments::set_rollout_state(const std::string& dep_id, RolloutStatus state) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = active_.find(dep_id);
  if (it != active_.end()) it->second.rollout.state = state;
}

bool Deployments::busy(const std::string& dev) const {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& kv : active_) {
    auto r = kv.second.rows.find(dev);
    if (r != kv.second.rows.end() && !is_final(r->second.rec.state)) return true;
  }
  return false;
}

std::optional<std::vector<RolloutRow>> Deployments::engine_rows(const std::string& dep_id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = active_.find(dep_id);
  if (it == active_.end()) return std::nullopt;
  std::vector<RolloutRow> rows;
  rows.reserve(it->second.rows.size());
  for (const auto& kv : it->second.rows) rows.push_back(engine_row(kv.second.rec));
  return rows;
}

Status Deployments::store_engine_rows(DbLock& db, const std::string& dep_id,
                                      const std::vector<RolloutRow>& rows, const std::string& actor,
                                      const std::string& rollout_id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto dit = active_.find(dep_id);
  if (dit == active_.end()) return {};
  LiveDeployment& d = dit->second;
  for (const auto& r : rows) {
    if (!r.changed) continue;
    auto it = d.rows.find(r.device);
    const bool created = it == d.rows.end();
    if (created) {
      LiveRow rm;
      rm.rec.deployment_id = d.rec.id;
      rm.rec.device_id = r.device;
      rm.rec.total = d.image.size;
      it = d.rows.emplace(r.device, rm).first;
    }
    RowRec& rec = it->second.rec;
    // (An offer is logged as its own "offered" decision.)
    if (rec.state != r.state && !created && r.state != RowState::offered)
      db.event(d.rec.id, r.device, "state",
               std::string(to_string(rec.state)) + " -> " + to_string(r.state) +
                   (r.reason.empty() ? "" : " (" + r.reason + ")"),
               actor, rollout_id);
    store_engine_row(r, rec);
    if (r.state == RowState::offered) {
      rec.received = 0;
      rec.bytes_sent = 0;
      rec.offer_sent = false;  // until the broker acknowledges it
    }
    Status s = write_row(db, it->second);
    if (!s) return s;
  }
  return {};
}

void Deployments::reload_rows(DbLock& db, const std::string& dep_id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = active_.find(dep_id);
  if (it == active_.end()) return;
  auto fresh = db.store().rows(dep_id);
  if (!fresh) return;
  it->second.rows.clear();
  for (const auto& r : *fresh) it->second.rows[r.device_id].rec = r;
}

void Deployments::carry_out(const std::string& dep_id, const std::vector<EngineAction>& actions) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = active_.find(dep_id);
  if (it == active_.end()) return;
  const LiveDeployment& d = it->second;
  for (const auto& a : actions) {
    if (a.kind == EngineAction::Kind::offer) {
      publish_offer_attempt(d, a.device, a.attempt, /*tracked=*/true);
    } else if (a.kind == EngineAction::Kind::cancel) {
      last_cancel_ms_.erase(a.device);  // the engine's cancels go out now
      send_cancel_locked(a.device, offer_id(d.rec.id, a.attempt), a.detail);
    }
  }
}

Status Deployments::insert(DbLock& db, const LiveDeployment& d) {
  Status s = db.store().insert_deployment(d.rec);
  for (const auto& kv : d.rows)
    if (s) s = db.store().upsert_row(kv.second.rec);
  return s;
}

void Deployments::adopt(LiveDeployment d) {
  std::lock_guard<std::mutex> lock(mu_);
  const std::string id = d.rec.id;
  active_[id] = std::move(d);
}

Status Deployments::reopen(DbLock& db, const DeploymentRec& rec, const ImageRec& img,
                           const RolloutLink& link) {
  auto file = chunks_.open(img);
  if (!file) return file.err();
  LiveDeployment dm;
  dm.rec = rec;
  dm.rollout_id = rec.target;
  dm.rollout = link;
  dm.image = img;
  dm.file = *file;
  auto rows = db.store().rows(dm.rec.id);
  if (!rows) return rows.err();
  for (const auto& r : *rows) dm.rows[r.device_id].rec = r;
  Status s = db.store().set_deployment_state(dm.rec.id, DeploymentState::active, 0);
  if (!s) return s;
  dm.rec.state = DeploymentState::active;
  dm.rec.finished_at = 0;
  adopt(std::move(dm));
  return {};
}

}  // namespace ota::service
