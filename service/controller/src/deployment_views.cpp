// Deployments: snapshots for the JSON views and the metrics (views.hpp, metrics.hpp).
#include "ota/service/deployments.hpp"

namespace ota::service {

std::optional<std::vector<RowRec>> Deployments::rows_of(const std::string& dep_id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = active_.find(dep_id);
  if (it == active_.end()) return std::nullopt;
  std::vector<RowRec> out;
  out.reserve(it->second.rows.size());
  for (const auto& kv : it->second.rows) out.push_back(kv.second.rec);
  return out;
}

std::optional<Transfer> Deployments::transfer_of(const std::string& dev) const {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& kv : active_) {
    auto r = kv.second.rows.find(dev);
    if (r == kv.second.rows.end() || !is_in_flight(r->second.rec.state)) continue;
    const RowRec& rr = r->second.rec;
    Transfer t;
    t.deployment = kv.first;
    t.rollout = kv.second.rollout_id;
    t.version = kv.second.image.version;
    t.state = rr.state;
    t.received = rr.received;
    t.total = rr.total ? rr.total : kv.second.image.size;
    return t;
  }
  return std::nullopt;
}

int Deployments::pending_members(const std::string& dep_id, const std::string& group) const {
  const std::vector<std::string> members = registry_.known_members(group);
  std::lock_guard<std::mutex> lock(mu_);
  auto it = active_.find(dep_id);
  int n = 0;
  for (const auto& m : members)
    if (it == active_.end() || !it->second.rows.count(m)) n++;
  return n;
}

std::vector<std::pair<std::string, RowState>> Deployments::in_flight() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::pair<std::string, RowState>> out;
  for (const auto& kv : active_)
    for (const auto& r : kv.second.rows)
      if (is_in_flight(r.second.rec.state)) out.emplace_back(r.first, r.second.rec.state);
  return out;
}

std::size_t Deployments::active_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return active_.size();
}

}  // namespace ota::service
