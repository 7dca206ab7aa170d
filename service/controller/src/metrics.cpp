#include "ota/service/metrics.hpp"

#include <sstream>

#ifndef OTA_VERSION
#define OTA_VERSION "unknown"
#endif

namespace ota::service {

namespace {

// One metric without labels: its HELP and TYPE lines and its value.
template <typename Value>
void one_value(std::ostream& o, const char* name, const char* type, const char* help, Value v) {
  o << "# HELP " << name << " " << help << "\n# TYPE " << name << " " << type << "\n"
    << name << " " << v << "\n";
}

void device_metrics(std::ostream& o, const MetricsSnapshot& s) {
  o << "# HELP ota_devices Known devices by liveness.\n# TYPE ota_devices gauge\n";
  o << "ota_devices{online=\"true\"} " << s.online << "\nota_devices{online=\"false\"} " << s.offline << "\n";
  o << "# HELP ota_devices_by_version Known devices by running version.\n# TYPE ota_devices_by_version gauge\n";
  for (const auto& kv : s.by_version)
    o << "ota_devices_by_version{version=\"" << prometheus_label_value(kv.first) << "\"} " << kv.second << "\n";
  o << "# HELP ota_devices_by_state Known devices by update state.\n# TYPE ota_devices_by_state gauge\n";
  for (const auto& kv : s.by_state)
    o << "ota_devices_by_state{state=\"" << prometheus_label_value(kv.first) << "\"} " << kv.second << "\n";
  o << "# HELP ota_transfers_in_flight Devices offered an update that have not finished.\n"
       "# TYPE ota_transfers_in_flight gauge\nota_transfers_in_flight " << s.in_flight << "\n";
}

void traffic_metrics(std::ostream& o, const MetricsSnapshot& s) {
  one_value(o, "ota_bytes_served_total", "counter",
            "Image bytes published to devices (unicast and broadcast: the controller's image egress).",
            s.bytes_served);
  one_value(o, "ota_chunks_served_total", "counter",
            "Chunks published to devices.",
            s.chunks_sent);
  one_value(o, "ota_chunk_unacked_bytes", "gauge",
            "Chunk frame bytes published and not yet acknowledged by the broker (a broadcast frame once per device listening).",
            s.chunk_unacked_bytes);
  one_value(o, "ota_chunk_unacked_peak_bytes", "gauge",
            "The most ota_chunk_unacked_bytes has been since the start.",
            s.chunk_unacked_peak);
  one_value(o, "ota_chunk_unacked_limit_bytes", "gauge",
            "The send budget (--chunk-queue-bytes).",
            s.chunk_unacked_limit);
  one_value(o, "ota_chunk_queued_chunks", "gauge",
            "Chunks devices asked for, waiting for the send budget.",
            s.chunk_queued);
  one_value(o, "ota_chunk_frames_lost_total", "counter",
            "Chunk frames whose PUBACK never came (link lost or timeout).",
            s.chunk_frames_lost);
  one_value(o, "ota_chunk_resends_avoided_total", "counter",
            "Chunks a device asked for again within --resend-guard-ms of being sent them (not sent again).",
            s.chunk_resends_avoided);
  one_value(o, "ota_chunk_unicast_bytes_total", "counter",
            "Image bytes published on device chunk topics.",
            s.chunk_unicast_bytes);
  one_value(o, "ota_chunk_broadcast_bytes_total", "counter",
            "Image bytes published once on group image topics.",
            s.chunk_broadcast_bytes);
  one_value(o, "ota_chunk_broadcast_frames_total", "counter",
            "Chunk frames published on group image topics.",
            s.chunk_broadcast_frames);
  one_value(o, "ota_chunk_broadcast_deliveries_total", "counter",
            "Chunk requests answered by broadcast frames (a frame answering k devices counts k).",
            s.chunk_broadcast_deliveries);
  one_value(o, "ota_chunk_broadcast_unreadable_total", "counter",
            "Chunk requests naming a group whose image topic the device may not read (served by unicast).",
            s.chunk_broadcast_unreadable);
  one_value(o, "ota_device_messages_queued", "gauge",
            "Device hellos, events and last wills queued for the device-message thread, not applied yet.",
            s.device_messages_queued);
  one_value(o, "ota_device_message_batches_total", "counter",
            "Transactions that applied several queued device messages at once (group commit).",
            s.device_message_batches);
  one_value(o, "ota_device_messages_batched_total", "counter",
            "Device messages applied in those transactions.",
            s.device_messages_batched);
  one_value(o, "ota_decode_errors_total", "counter",
            "Device messages that failed to decode.",
            s.decode_errors);
  one_value(o, "ota_ignored_messages_total", "counter",
            "Device messages dropped without effect.",
            s.ignored_messages);
  o << "# HELP ota_device_messages_dropped_total Device messages dropped without effect, by reason.\n"
       "# TYPE ota_device_messages_dropped_total counter\n";
  for (std::size_t r = 0; r < kDropReasonCount; ++r)
    o << "ota_device_messages_dropped_total{reason=\"" << drop_reason_name(static_cast<DropReason>(r))
      << "\"} " << s.dropped[r] << "\n";
}

// The state and progress of every live rollout.
void rollout_metrics(std::ostream& o, const MetricsSnapshot& s) {
  static const PausedBy kPausedBy[] = {PausedBy::operator_action, PausedBy::policy, PausedBy::threshold};
  std::ostringstream devices, rates, state, paused, wave, waves, progress, limit, info;
  for (const auto& ro : s.rollouts) {
    const RolloutRec& rec = ro.rec;
    const std::string id = "rollout=\"" + prometheus_label_value(rec.id) + "\"";
    for (const auto& kv : ro.summary.counts)
      devices << "ota_rollout_devices{rollout=\"" << rec.id << "\",state=\"" << kv.first << "\"} "
              << kv.second << "\n";
    rates << "ota_rollout_failure_rate{rollout=\"" << rec.id << "\"} " << ro.summary.failure_total / 100.0
          << "\n";
    for (RolloutStatus st : all_rollout_statuses())
      state << "ota_rollout_state{" << id << ",state=\"" << to_string(st) << "\"} "
            << (rec.state == st ? 1 : 0) << "\n";
    const PausedBy by = rec.state == RolloutStatus::paused ? rec.paused_by : PausedBy::none;
    for (PausedBy b : kPausedBy)
      paused << "ota_rollout_paused{" << id << ",by=\"" << to_string(b) << "\"} " << (by == b ? 1 : 0) << "\n";
    // current_wave is 0-based, -1 before the first wave: exported 1-based, 0 = none yet.
    wave << "ota_rollout_wave{" << id << "} " << static_cast<long long>(rec.current_wave) + 1 << "\n";
    waves << "ota_rollout_waves{" << id << "} " << ro.policy.waves.size() << "\n";
    progress << "ota_rollout_progress_ratio{" << id << "} " << ro.summary.percent / 100.0 << "\n";
    limit << "ota_rollout_failure_rate_limit{" << id << "} " << ro.policy.max_total_failure_pct / 100.0 << "\n";
    info << "ota_rollout_info{" << id << ",name=\"" << prometheus_label_value(rec.name) << "\",version=\""
         << prometheus_label_value(ro.version) << "\",target=\"" << prometheus_label_value(rec.target_kind)
         << "\"} 1\n";
  }
  o << "# HELP ota_rollout_devices Devices of live rollouts by state.\n# TYPE ota_rollout_devices gauge\n"
    << devices.str();
  o << "# HELP ota_rollout_failure_rate Final failures / devices of the started waves (0..1).\n"
       "# TYPE ota_rollout_failure_rate gauge\n" << rates.str();
  o << "# HELP ota_rollout_state State of each live rollout (1 for its state, 0 for the others).\n"
       "# TYPE ota_rollout_state gauge\n" << state.str();
  o << "# HELP ota_rollout_paused 1 while the rollout is paused, labelled by who paused it "
       "(operator, policy: failure rate over the limit, threshold: a wave below its success threshold).\n"
       "# TYPE ota_rollout_paused gauge\n" << paused.str();
  o << "# HELP ota_rollout_wave Current wave of the rollout, 1-based (0: not started).\n"
       "# TYPE ota_rollout_wave gauge\n" << wave.str();
  o << "# HELP ota_rollout_waves Number of waves of the rollout.\n"
       "# TYPE ota_rollout_waves gauge\n" << waves.str();
  o << "# HELP ota_rollout_progress_ratio Devices of the rollout with a final result / all its devices (0..1).\n"
       "# TYPE ota_rollout_progress_ratio gauge\n" << progress.str();
  o << "# HELP ota_rollout_failure_rate_limit The rollout's overall failure limit (0..1); above it the policy pauses or aborts.\n"
       "# TYPE ota_rollout_failure_rate_limit gauge\n" << limit.str();
  o << "# HELP ota_rollout_info Name, image version and target kind of each live rollout (value 1).\n"
       "# TYPE ota_rollout_info gauge\n" << info.str();
}

void inventory_metrics(std::ostream& o, const MetricsSnapshot& s) {
  o << "# HELP ota_rollouts Rollouts in the database by state.\n# TYPE ota_rollouts gauge\n";
  for (const auto& kv : s.rollouts_by_state)
    o << "ota_rollouts{state=\"" << prometheus_label_value(kv.first) << "\"} " << kv.second << "\n";
  o << "# HELP ota_deployments_active Deployments (single and rollout) that have not finished.\n"
       "# TYPE ota_deployments_active gauge\nota_deployments_active " << s.deployments_active << "\n";
  o << "# HELP ota_build_info The controller's version (value 1).\n"
       "# TYPE ota_build_info gauge\nota_build_info{version=\"" << OTA_VERSION << "\"} 1\n";
}

}  // namespace

std::string metrics_text(const MetricsSnapshot& s) {
  std::ostringstream o;
  device_metrics(o, s);
  traffic_metrics(o, s);
  rollout_metrics(o, s);
  inventory_metrics(o, s);
  health_metrics(o, s.health);
  return o.str();
}

std::string prometheus_label_value(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

}  // namespace ota::service
