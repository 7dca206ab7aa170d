#include "ota/service/database.hpp"

#include "ota/service/log.hpp"

namespace ota::service {

void Database::Lock::event(const std::string& dep, const std::string& dev, const std::string& what,
                           const std::string& detail, const std::string& actor,
                           const std::string& rollout) {
  Status s = db_.store_.add_event(dep, dev, what, detail, actor, rollout, db_.now());
  if (!s) log_error("event log: " + s.error());
}

void Database::probe(Lock& lock, long long now_ms, long long interval_ms, const std::string& path) {
  Store& store = lock.store();
  const bool was = store.writable();
  if (now_ms - last_probe_ms_ < (was ? interval_ms : 1000)) return;
  last_probe_ms_ = now_ms;
  Status s = store.probe_write(now_ms);
  if (!s && was) log_error("database " + path + " is not writable: " + s.error());
  if (s && !was) log_info("database " + path + " is writable again");
}

void Database::prune(Lock& lock, long long now_ms, const EventRetention& r, long long interval_ms) {
  if (r.max_age_ms <= 0 && r.max_count <= 0) return;
  if (now_ms - last_prune_ms_ < interval_ms) return;
  // One batch per tick: the lock is held briefly; a backlog drains a batch a second.
  auto n = lock.store().prune_events(r, now_ms);
  if (!n) {
    log_error("event retention: " + n.error());
    last_prune_ms_ = now_ms;
    return;
  }
  events_pruned_ += static_cast<std::uint64_t>(*n);
  if (*n == 0) last_prune_ms_ = now_ms;  // caught up: next round after the interval
}

Database::Health Database::health(Lock& lock) const {
  Store& store = lock.store();
  Health h;
  h.writable = store.writable();
  h.write_errors = store.write_errors();
  h.last_error = store.last_error();
  h.last_probe_ms = last_probe_ms_;
  h.events_pruned = events_pruned_;
  return h;
}

}  // namespace ota::service
