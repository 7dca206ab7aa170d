// Inbound: device events (.../up/event): accept, decline, defer, progress, status, result.
// Sequence numbers and replays are checked here; what the event does to its row is the row
// life table's call (row_life.hpp), carried out by Deployments::apply_event.
#include "ota/proto/messages.hpp"
#include "ota/service/inbound.hpp"
#include "ota/service/log.hpp"

namespace ota::service {

namespace {

std::string reason_text(proto::ReasonCode code, const proto::Reason& detail) {
  std::string r = proto::reason_name(code);
  if (!detail.empty()) r += ": " + std::string(detail.c_str());
  return r;
}

// What a device event means for its row. defers_exhausted: a deferral beyond max_defers.
RowEvent row_event_of(const proto::Event& ev, bool defers_exhausted) {
  switch (ev.type) {
    case proto::EventType::accept: return RowEvent::accept;
    case proto::EventType::progress: return RowEvent::transfer;
    case proto::EventType::status: return RowEvent::report;
    case proto::EventType::defer: return defers_exhausted ? RowEvent::defer_exhausted : RowEvent::defer;
    case proto::EventType::decline:
      return ev.reason == proto::ReasonCode::already_installed ? RowEvent::decline_installed
                                                               : RowEvent::decline;
    case proto::EventType::result: return ev.success ? RowEvent::result_ok : RowEvent::result_failed;
  }
  return RowEvent::report;
}

// The device's row of a deployment that is no longer active.
std::optional<RowRec> finished_row(Store& store, const std::string& dep_id, const std::string& dev) {
  auto rows = store.rows(dep_id);
  if (!rows) return std::nullopt;
  for (const auto& r : *rows)
    if (r.device_id == dev) return r;
  return std::nullopt;
}

}  // namespace

void Inbound::handle_event(const std::string& dev, const char* p, std::size_t len, const char* topic) {
  proto::Event ev;
  proto::Error e = proto::decode_event(p, len, ev);
  if (e) return decode_error(dev, topic, "event", static_cast<int>(e.code), e.field);
  DbLock db(db_);
  const long long last = registry_.last_seq(dev);
  const bool is_final_event = ev.type == proto::EventType::result || ev.type == proto::EventType::decline;
  // A final event at an old seq is the device re-sending its outcome (it got an offer for a
  // deployment it already finished): the first copy may have been lost by a crash after the
  // PUBACK. It is applied to a non-final row; it never re-applies to a final one.
  const bool replay = static_cast<long long>(ev.seq) <= last;
  if (replay && !is_final_event) {
    log(LogLevel::debug, "device " + dev + ": dropping event seq " + std::to_string(ev.seq) +
                             " (last " + std::to_string(last) + ")");
    return;
  }
  registry_.note_alive(dev, now());
  const EventMatch m = deployments_.match_event(dev, ev.deployment.c_str(), ev.type);
  if (m.kind != EventMatch::Kind::row) return unmatched_event(db, dev, ev, m, replay);
  if (replay && is_final(m.state)) {
    ignored_messages_++;  // the outcome we already have, re-sent: nothing to do
    count_drop(DropReason::duplicate);
    return;
  }
  if (refused_claim(db, dev, ev, m)) return;
  // A row never offered (attempt 0: a rollout has not reached it) takes no device message.
  const RowEvent rev = row_event_of(ev, m.defers + 1 > m.defer.max_defers);
  const std::optional<RowState> to =
      m.row_attempt > 0 ? next_row_state(m.state, rev, ev.state) : std::nullopt;
  const RowState to_state = to.value_or(m.state);
  // Progress that moves no state is kept in memory and written by the next flush (tick,
  // at most flush_interval_ms later, one transaction for all rows; and before any query),
  // with the seq: a WAL sync per device per 5% of its download, when it ran on the MQTT
  // network thread, held every chunk frame and PUBACK of a 1,000-device wave behind the
  // disk. Lost on a power cut: only how far the row's bar was, which the device reports again.
  if (ev.type == proto::EventType::progress && !replay && to && to_state == m.state &&
      deployments_.note_progress(dev, m, ev)) {
    registry_.set_seq_lazily(dev, ev.seq);
    return;
  }
  const std::string type = proto::event_type_name(ev.type);
  Tx tx(db.store());
  Status s = tx.status();
  if (s) s = db.store().ensure_device(dev, now_s());
  if (s && !replay) s = db.store().set_device_last_seq(dev, ev.seq);
  bool final_now = false;
  if (s && !to)
    log_info("device " + dev + ": " + type + " event for deployment " + m.dep_id +
             (is_final(m.state) ? " after its row became " : " while its row is ") +
             to_string(m.state) + "; ignored");
  else if (s)
    s = deployments_.apply_event(db, dev, m, ev, rev, to_state, &final_now);
  if (s) s = tx.commit();
  if (!s) {
    log_error("device " + dev + ": " + type + " event: " + s.error());
    return;  // not committed: the device will resend (QoS 1) and we will apply it then
  }
  if (!replay)
    registry_.set_seq(dev, ev.seq);
  else
    log_info("device " + dev + ": re-sent " + type + " (seq " + std::to_string(ev.seq) +
             ") for deployment " + m.dep_id + " applied");
  if (!final_now) return;
  if (auto row = deployments_.row_state(m.dep_id, dev))
    log_info("device " + dev + ": deployment " + m.dep_id + " -> " + to_string(row->first) +
             (row->second.empty() ? "" : " (" + row->second + ")"));
  complete(db, m.dep_id);
}

// Claims the controller can check against what it knows are not taken at face value.
bool Inbound::refused_claim(DbLock& db, const std::string& dev, const proto::Event& ev,
                            const EventMatch& m) {
  if (ev.type == proto::EventType::result && ev.success && !ev.version.empty() &&
      m.image_version != ev.version.c_str()) {
    ignored(db, "result-version|" + dev + "|" + m.dep_id, m.dep_id, dev, "refused_result",
            std::string("success result claims version ") + ev.version.c_str() +
                ", the deployment's image is " + m.image_version,
            std::string("success result for deployment ") + m.dep_id + " claims version " +
                ev.version.c_str() + ", not the image's " + m.image_version + "; ignored",
            DropReason::result_mismatch);
    return true;
  }
  if (ev.type == proto::EventType::progress && m.row_attempt == m.attempt &&
      ev.received < m.received && m.state == RowState::downloading) {
    count_drop(DropReason::progress_backwards);
    ignored_messages_++;
    return true;
  }
  return false;
}

// An event for no row of an active deployment: a late one for a finished deployment (whose
// failure reason may still refine the row), a superseded attempt, a non-member, a stranger.
void Inbound::unmatched_event(DbLock& db, const std::string& dev, const proto::Event& ev,
                              const EventMatch& m, bool replay) {
  const std::string& dep_id = m.dep_id;
  const std::string type = proto::event_type_name(ev.type);
  const std::string seq = std::to_string(ev.seq);
  std::optional<RowRec> late;
  const bool refinement = ev.type == proto::EventType::result && !ev.success;
  if (m.kind == EventMatch::Kind::unknown && !replay &&
      (refinement || (!logged("late|" + dev + "|" + dep_id) && !logged("ignored|" + dev + "|" + dep_id))))
    late = finished_row(db.store(), dep_id, dev);
  if (late && refinement && next_row_state(late->state, RowEvent::result_failed) == late->state) {
    // The hello already showed the rollback (and finished the row); the result names the
    // precise reason.
    late->reason = reason_text(ev.reason, ev.detail);
    late->updated_at = now_ms();
    Tx tx(db.store());
    Status s = tx.status();
    if (s) s = db.store().upsert_row(*late);
    if (s) s = db.store().set_device_last_seq(dev, ev.seq);
    if (s) db.event(dep_id, dev, "result", "seq " + seq + " reason " + late->reason);
    if (s) s = tx.commit();
    if (!s) {
      log_error("device " + dev + ": " + type + " event: " + s.error());
      return;
    }
    registry_.set_seq(dev, ev.seq);
    return;
  }
  // Ignored: counted, logged and recorded once per (device, deployment, reason); the seq is
  // persisted lazily (flush), so a flood of such events costs no database write each.
  if (!replay) registry_.set_seq_lazily(dev, ev.seq);
  const std::string sent_id = ev.deployment.c_str();
  if (replay) {
    ignored_messages_++;
  } else if (late) {
    ignored(db, "late|" + dev + "|" + dep_id, dep_id, dev, "late_event", type + " seq " + seq,
            type + " event for finished deployment " + dep_id + "; ignored");
  } else if (m.kind == EventMatch::Kind::stale_attempt) {
    ignored(db, "stale|" + dev + "|" + sent_id, dep_id, dev, "ignored_event",
            type + " seq " + seq + " for superseded " + sent_id,
            type + " event for superseded attempt " + sent_id + "; ignored");
  } else if (m.kind == EventMatch::Kind::non_member) {
    ignored(db, "nonmember|" + dev + "|" + dep_id, dep_id, dev, "ignored_event",
            type + " seq " + seq + ": not a member of group " + m.group,
            type + " event for group deployment " + dep_id + " of group '" + m.group +
                "', which the ACL does not grant it; ignored");
  } else {
    ignored(db, "ignored|" + dev + "|" + dep_id, dep_id, dev, "ignored_event", type + " seq " + seq,
            type + " event for deployment '" + dep_id + "' it is not part of (or not active); ignored");
  }
}

}  // namespace ota::service
