// Deployments: what device messages (events, hellos, chunk requests) do to the rows. The
// row life table (row_life.hpp) decides the state; this file carries out the rest.
#include "ota/service/deployments.hpp"

#include "ota/service/log.hpp"

namespace ota::service {

namespace {

std::string reason_text(proto::ReasonCode code, const proto::Reason& detail) {
  std::string r = proto::reason_name(code);
  if (!detail.empty()) r += ": " + std::string(detail.c_str());
  return r;
}

}  // namespace

// ------------------------------------------------------------------------------ events

EventMatch Deployments::match_event(const std::string& dev, const std::string& offer_id,
                                    proto::EventType type) {
  std::lock_guard<std::mutex> lock(mu_);
  EventMatch m;
  LiveDeployment* dp = find(offer_id, &m.attempt);
  m.dep_id = dp ? dp->rec.id : offer_id;
  if (!dp) return m;
  LiveDeployment& dep = *dp;
  auto r = dep.rows.find(dev);
  const bool group = dep.rec.target_kind == "group";
  if (r != dep.rows.end() && r->second.rec.attempt != m.attempt) {
    m.kind = EventMatch::Kind::stale_attempt;  // an earlier attempt of a rollout: superseded
    return m;
  }
  if (r == dep.rows.end()) {
    // A group member's first message adds its row; without an ACL file the claim of an
    // answer to the group offer is enough.
    const bool answer = type == proto::EventType::accept || type == proto::EventType::decline;
    if (!group || !(registry_.in_group(dev, dep.rec.target) || (!registry_.acl_enabled() && answer))) {
      m.kind = group ? EventMatch::Kind::non_member : EventMatch::Kind::not_part;
      m.group = dep.rec.target;
      return m;
    }
    LiveRow rm;
    rm.rec.deployment_id = dep.rec.id;
    rm.rec.device_id = dev;
    rm.rec.state = RowState::offered;
    rm.rec.total = dep.image.size;
    r = dep.rows.emplace(dev, rm).first;
  }
  m.kind = EventMatch::Kind::row;
  m.image_version = dep.image.version;
  m.state = r->second.rec.state;
  m.row_attempt = r->second.rec.attempt;
  m.defers = r->second.rec.defers;
  m.received = r->second.rec.received;
  m.defer = dep.rollout_id.empty() ? DeferPolicy{} : dep.rollout.defer;
  return m;
}

Status Deployments::apply_event(DbLock& db, const std::string& dev, const EventMatch& m,
                                const proto::Event& ev, RowEvent rev, RowState to, bool* final_now) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = active_.find(m.dep_id);
  if (it == active_.end()) return {};
  LiveDeployment& dep = it->second;
  auto r = dep.rows.find(dev);
  if (r == dep.rows.end()) return {};
  LiveRow& row = r->second;
  if (rev == RowEvent::result_failed && to == row.rec.state) {
    // The hello already showed the rollback; the result names the precise reason.
    row.rec.reason = reason_text(ev.reason, ev.detail);
    Status s = write_row(db, row);
    if (s)
      log_event(db, dep, dev, "result", "seq " + std::to_string(ev.seq) + " reason " + row.rec.reason);
    return s;
  }
  Status s = apply_row_event(db, dep, row, ev, rev, to, final_now);
  if (s && ev.type != proto::EventType::progress && ev.type != proto::EventType::status)
    log_event(db, dep, dev, proto::event_type_name(ev.type),
              "seq " + std::to_string(ev.seq) +
                  (ev.type == proto::EventType::decline || ev.type == proto::EventType::defer ||
                           (ev.type == proto::EventType::result && !ev.success)
                       ? " reason " + reason_text(ev.reason, ev.detail)
                       : std::string()));
  return s;
}

bool Deployments::note_progress(const std::string& dev, const EventMatch& m, const proto::Event& ev) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = active_.find(m.dep_id);
  if (it == active_.end()) return false;
  auto r = it->second.rows.find(dev);
  if (r == it->second.rows.end() || r->second.rec.state != m.state) return false;
  LiveRow& row = r->second;
  row.rec.received = ev.received;
  if (ev.total) row.rec.total = ev.total;
  row.dirty = true;
  return true;
}

Status Deployments::apply_row_event(DbLock& db, LiveDeployment& dep, LiveRow& row,
                                    const proto::Event& ev, RowEvent rev, RowState to,
                                    bool* final_now) {
  Store& store = db.store();
  const std::string& dev = row.rec.device_id;
  const std::string reason = reason_text(ev.reason, ev.detail);
  Status s;
  switch (ev.type) {
    case proto::EventType::accept:
    case proto::EventType::status:
      if (to != row.rec.state) s = set_row_state(db, dep, row, to, "");
      break;
    case proto::EventType::decline:
      s = set_row_state(db, dep, row, to, reason);
      if (s && rev == RowEvent::decline)
        s = store.set_device_last_error(dev, "declined " + dep.rec.id + ": " + reason);
      *final_now = true;
      break;
    case proto::EventType::defer: {
      // Not a failure and not final: offered again later (the rollout engine, or tick() for a
      // plain deployment), when the device said or after the policy's delay.
      const DeferPolicy defer = dep.rollout_id.empty() ? DeferPolicy{} : dep.rollout.defer;
      long long delay_s = ev.retry_after ? ev.retry_after : defer.delay_s;
      if (!delay_s) delay_s = 300;
      row.rec.defers++;
      if (rev == RowEvent::defer_exhausted) {
        s = set_row_state(db, dep, row, to,
                          "deferred " + std::to_string(row.rec.defers) + " times (last: " + reason + ")");
        *final_now = true;
      } else {
        row.rec.next_at = now() + delay_s * 1000;
        s = set_row_state(db, dep, row, to, reason + "; offered again in " + std::to_string(delay_s) + " s");
      }
      break;
    }
    case proto::EventType::progress:
      row.rec.received = ev.received;
      if (ev.total) row.rec.total = ev.total;
      if (to != row.rec.state)
        s = set_row_state(db, dep, row, to, "");
      else
        row.dirty = true;  // written by the next flush (note_progress)
      break;
    case proto::EventType::result:
      if (ev.success) {
        std::string ver = ev.version.empty() ? dep.image.version : ev.version.c_str();
        s = set_row_state(db, dep, row, to, "");
        if (s) s = store.set_device_version(dev, ver);
        if (s) registry_.set_version(dev, ver);
      } else {
        s = set_row_state(db, dep, row, to, reason);
        if (s) s = store.set_device_last_error(dev, dep.rec.id + ": " + reason);
        if (s && !ev.version.empty() && registry_.version(dev) != ev.version.c_str()) {
          s = store.set_device_version(dev, ev.version.c_str());
          if (s) registry_.set_version(dev, ev.version.c_str());
        }
      }
      *final_now = true;
      break;
  }
  return s;
}

std::optional<std::pair<RowState, std::string>> Deployments::row_state(const std::string& dep_id,
                                                                      const std::string& dev) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = active_.find(dep_id);
  if (it == active_.end()) return std::nullopt;
  auto r = it->second.rows.find(dev);
  if (r == it->second.rows.end()) return std::nullopt;
  return std::make_pair(r->second.rec.state, r->second.rec.reason);
}

// ------------------------------------------------------------------------------ hellos

Status Deployments::on_hello(DbLock& db, const std::string& dev, const std::string& version,
                             proto::SlotState slot, bool retained, std::vector<std::string>* touched) {
  std::lock_guard<std::mutex> lock(mu_);
  Status s;
  for (auto& kv : active_) {
    LiveDeployment& dep = kv.second;
    auto r = dep.rows.find(dev);
    if (r == dep.rows.end()) {
      if (dep.rec.target_kind == "group") touched->push_back(kv.first);
      continue;
    }
    LiveRow& row = r->second;
    const bool runs_target = version == dep.image.version;
    std::optional<RowEvent> hev;
    if (runs_target && slot == proto::SlotState::confirmed)
      hev = RowEvent::hello_confirmed;
    else if (!runs_target && slot == proto::SlotState::rolled_back)
      hev = RowEvent::hello_rolled_back;
    const std::optional<RowState> to = hev ? next_row_state(row.rec.state, *hev) : std::nullopt;
    if (to && *hev == RowEvent::hello_confirmed) {
      s = set_row_state(db, dep, row, *to, "running " + version + " (confirmed)");
      touched->push_back(kv.first);
    } else if (to) {
      s = set_row_state(db, dep, row, *to, "rolled_back");
      if (s) s = db.store().set_device_last_error(dev, "rolled back from " + dep.image.version);
      touched->push_back(kv.first);
    } else if (is_in_flight(row.rec.state) && !retained) {
      // The hello does not prove the outcome. Whatever state we last saw, the device may have
      // finished meanwhile and its final event may be lost (PUBACKed before we committed it):
      // re-offering makes it work on, or re-send its final event. A retained hello is not a
      // reconnect (we re-subscribed): the device is still working on what it was offered and
      // its events reach our persistent session.
      publish_offer_attempt(dep, dev, row.rec.attempt);
      log_event(db, dep, dev, "offer_resent",
                "device said hello running " + version + "; row " + to_string(row.rec.state));
    }
    if (!s) break;
  }
  return s;
}

std::optional<std::string> Deployments::resume_refusal(const std::string& dev,
                                                       const std::string& offer_id) const {
  std::lock_guard<std::mutex> lock(mu_);
  int attempt = 1;
  const LiveDeployment* dp = find(offer_id, &attempt);
  if (!dp) return std::string("deployment is no longer active");
  auto r = dp->rows.find(dev);
  if (r == dp->rows.end()) return std::nullopt;
  if (is_final(r->second.rec.state))
    return std::string("device's row is ") + to_string(r->second.rec.state);
  if (r->second.rec.attempt != attempt)
    return "superseded by attempt " + std::to_string(r->second.rec.attempt);
  return std::nullopt;
}

// ------------------------------------------------------------------------ chunk requests

ChunkGrant Deployments::chunk_grant(const std::string& dev, const std::string& offer_id,
                                    const std::string& image_id) {
  std::lock_guard<std::mutex> lock(mu_);
  ChunkGrant g;
  int attempt = 1;
  const LiveDeployment* dp = find(offer_id, &attempt);
  if (!dp) {
    // Cancelled or finished while the device was away: make it drop the partial image.
    g.refusal = "no such active deployment";
    g.cancel = "deployment is no longer active";
    return g;
  }
  const LiveDeployment& dep = *dp;
  if (image_id != dep.image.id) {
    g.refusal = "image " + image_id + " is not the deployment's image " + dep.image.id;
    return g;
  }
  auto r = dep.rows.find(dev);
  if (r != dep.rows.end()) {
    // Chunks flow while the row takes transfers (row_life.hpp: in flight).
    if (r->second.rec.attempt != attempt || !applies(r->second.rec.state, RowEvent::transfer)) {
      g.refusal = r->second.rec.attempt != attempt
                      ? "superseded by attempt " + std::to_string(r->second.rec.attempt)
                      : std::string("device's row is ") + to_string(r->second.rec.state);
      g.cancel = g.refusal;
      return g;
    }
  } else if (!(dep.rec.target_kind == "group" && registry_.in_group(dev, dep.rec.target))) {
    g.refusal = "device is not part of it";
    return g;
  }
  g.file = dep.file;
  return g;
}

bool Deployments::chunks_served(const std::string& dev, const std::string& offer_id,
                                std::uint64_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  int attempt = 1;
  LiveDeployment* dp = find(offer_id, &attempt);
  if (!dp) return false;
  auto r = dp->rows.find(dev);
  if (r == dp->rows.end()) return false;
  r->second.rec.bytes_sent += bytes;
  r->second.dirty = true;
  const auto to = next_row_state(r->second.rec.state, RowEvent::transfer);
  return to && *to != r->second.rec.state;
}

void Deployments::transfer_started(DbLock& db, const std::string& dev, const std::string& offer_id) {
  std::lock_guard<std::mutex> lock(mu_);
  int attempt = 1;
  LiveDeployment* dp = find(offer_id, &attempt);
  if (!dp) return;
  auto r = dp->rows.find(dev);
  if (r == dp->rows.end()) return;
  const auto to = next_row_state(r->second.rec.state, RowEvent::transfer);
  if (!to || *to == r->second.rec.state) return;
  Status s = set_row_state(db, *dp, r->second, *to, "");
  if (!s) log_error("device " + dev + ": chunk accounting: " + s.error());
}

}  // namespace ota::service
