#include "ota/service/views.hpp"

#include <algorithm>
#include <cmath>

#include "ota/service/rollout_engine.hpp"
#include "ota/service/rollout_records.hpp"

namespace ota::service {

using nlohmann::json;

namespace {

int percent_of(std::uint64_t part, std::uint64_t total) {
  return total ? static_cast<int>(std::min(part, total) * 100 / total) : 0;
}

double one_decimal(double v) { return std::round(v * 10) / 10; }

std::map<std::string, long long> zero_counts() {
  std::map<std::string, long long> c;
  for (RowState b : count_buckets()) c[to_string(b)] = 0;
  return c;
}

}  // namespace

json image_view(const ImageRec& r) {
  return json{{"id", r.id},         {"sha256", r.sha256},         {"version", r.version},
              {"hw", r.hw},         {"size", r.size},             {"chunk_size", r.chunk_size},
              {"counter", r.counter}, {"kind", r.kind},           {"created_at", r.created_at},
              {"release_key", r.release_key.empty() ? json() : json(r.release_key)},
              {"release_sig", r.release_sig.empty() ? json() : json(r.release_sig)}};
}

json device_record_view(const DeviceRec& r) {
  return json{{"id", r.id},
              {"hw", r.hw},
              {"version", r.version},
              {"previous_version", r.previous_version ? json(*r.previous_version) : json()},
              {"slot", r.slot},
              {"slot_state", r.slot_state},
              {"free", r.free},
              {"counter", r.counter},
              {"groups", r.groups},
              {"online", r.online},
              {"last_seen", r.last_seen},
              {"last_error", r.last_error},
              {"last_seq", r.last_seq},
              {"keys", r.keys},
              {"revoked", r.revoked_at > 0},
              {"revoked_at", r.revoked_at > 0 ? json(r.revoked_at) : json()}};
}

json device_view(const DeviceRec& d, const DeviceLive& live, const DeviceTags* tags, long long now) {
  json j = device_record_view(d);
  j["online"] = live.online;
  j["last_seen"] = live.last_ms / 1000;
  j["heartbeat_age"] = live.last_ms ? json(std::max(0LL, (now - live.last_ms) / 1000)) : json();
  // "groups" is what the device claims; with an ACL file, membership is what the broker grants.
  j["member_of"] = live.member_of;
  json jt = json::object();
  if (tags)
    for (const auto& kv : *tags) jt[kv.first] = kv.second;
  j["tags"] = jt;
  j["state"] = "idle";
  j["transfer"] = nullptr;
  if (live.transfer) {
    const Transfer& t = *live.transfer;
    j["state"] = to_string(t.state);
    j["transfer"] = json{{"deployment", t.deployment},
                         {"rollout", t.rollout},
                         {"version", t.version},
                         {"state", to_string(t.state)},
                         {"percent", percent_of(t.received, t.total)}};
  }
  return j;
}

json deployment_view(const DeploymentRec& d, const std::optional<ImageRec>& img,
                     const std::vector<RowRec>& rows, int pending_members, bool with_rows) {
  json j{{"id", d.id},          {"image", d.image_id},  {"target_kind", d.target_kind},
         {"target", d.target},  {"state", to_string(d.state)}, {"created_at", d.created_at},
         {"finished_at", d.finished_at}};
  std::uint64_t img_size = 0;
  if (img) {
    j["version"] = img->version;
    img_size = img->size;
  }
  json counts = json::object();
  for (RowState s : all_row_states()) counts[to_string(s)] = 0;
  std::uint64_t sum_total = 0, sum_recv = 0, sum_sent = 0;
  json jrows = json::array();
  for (const auto& r : rows) {
    counts[to_string(r.state)] = counts.value(to_string(r.state), 0LL) + 1;
    const std::uint64_t total = r.total ? r.total : img_size;
    const std::uint64_t recv =
        r.state == RowState::succeeded ? total : std::min<std::uint64_t>(r.received, total);
    sum_total += total;
    sum_recv += recv;
    sum_sent += r.bytes_sent;
    if (with_rows)
      jrows.push_back(json{{"device", r.device_id},
                           {"state", to_string(r.state)},
                           {"reason", r.reason},
                           {"received", r.received},
                           {"total", r.total},
                           {"percent", total ? static_cast<int>(recv * 100 / total) : 0},
                           {"bytes_sent", r.bytes_sent},
                           {"final", is_final(r.state)},
                           {"updated_at", r.updated_at}});
  }
  j["counts"] = counts;
  j["devices_total"] = rows.size() + static_cast<std::size_t>(pending_members);
  j["pending_members"] = pending_members;
  j["bytes_total"] = sum_total;
  j["bytes_received"] = sum_recv;
  j["bytes_sent"] = sum_sent;
  j["percent"] = sum_total ? static_cast<int>(sum_recv * 100 / sum_total)
                           : (d.state == DeploymentState::active ? 0 : 100);
  if (with_rows) j["devices"] = jrows;
  return j;
}

// ------------------------------------------------------------------------------- rollouts

RolloutSummary summarize_rollout(const RolloutRec& r, const RolloutPolicy& p,
                                 const std::vector<RowRec>& stored) {
  std::vector<RolloutRow> rows;
  for (const auto& x : stored) rows.push_back(engine_row(x));
  const auto wc = wave_counts(rows, p);
  RolloutSummary out;
  out.counts = zero_counts();
  out.waves.resize(p.waves.size());
  for (auto& w : out.waves) w.counts = zero_counts();
  for (const auto& x : rows) {
    const std::string b = to_string(count_bucket(x.state));
    out.counts[b]++;
    if (x.wave >= 0 && static_cast<std::size_t>(x.wave) < out.waves.size())
      out.waves[static_cast<std::size_t>(x.wave)].counts[b]++;
  }
  int fails = 0, devs = 0, finals = 0, all_fails = 0, all_devs = 0;
  for (std::size_t w = 0; w < p.waves.size(); ++w) {
    const WaveCounts& c = wc[w];
    WaveSummary& ws = out.waves[w];
    finals += c.final_count;
    const int wi = static_cast<int>(w);
    if (wi <= r.current_wave && wi > r.accepted_through) fails += c.failed, devs += c.devices;
    ws.state = "waiting";
    if (r.current_wave >= wi) ws.state = c.final_count == c.devices ? "done" : "running";
    else if (r.state == RolloutStatus::aborted) ws.state = "cancelled";
    if (wi <= r.current_wave) all_fails += c.failed, all_devs += c.devices;
    ws.devices = c.devices;
    ws.success_rate = one_decimal(c.success_rate());
    ws.failure_rate = one_decimal(c.failure_rate());
    ws.percent = c.devices ? c.final_count * 100 / c.devices : 0;
  }
  out.devices = rows.size();
  out.percent = rows.empty() ? (is_terminal(r.state) ? 100 : 0)
                             : static_cast<int>(finals * 100 / static_cast<int>(rows.size()));
  out.failure_total = devs ? std::round(1000.0 * fails / devs) / 10 : 0.0;
  out.failure_all = all_devs ? std::round(1000.0 * all_fails / all_devs) / 10 : 0.0;
  return out;
}

namespace {

json rollout_devices_view(const std::vector<RowRec>& stored) {
  std::vector<const RowRec*> sorted;
  for (const auto& x : stored) sorted.push_back(&x);
  std::sort(sorted.begin(), sorted.end(), [](const RowRec* a, const RowRec* b) {
    return a->wave != b->wave ? a->wave < b->wave : a->device_id < b->device_id;
  });
  json jd = json::array();
  for (const RowRec* x : sorted) {
    const int pct = x->state == RowState::succeeded ? 100 : percent_of(x->received, x->total);
    jd.push_back(json{{"device", x->device_id},
                      {"wave", x->wave},
                      {"state", to_string(x->state)},
                      {"attempt", x->attempt},
                      {"reason", x->reason},
                      {"percent", pct},
                      {"updated_at", x->updated_at}});
  }
  return jd;
}

}  // namespace

json rollout_view(const RolloutRec& r, const RolloutPolicy& p, const std::string& version,
                  const std::vector<RowRec>& rows, bool with_devices) {
  json j{{"id", r.id},
         {"name", r.name},
         {"image", r.image_id},
         {"state", to_string(r.state)},
         {"pause_reason", r.pause_reason},
         {"paused_by", to_string(r.paused_by)},
         {"rollback_of", r.rollback_of},
         {"from_version", r.from_version},
         {"deployment", r.deployment_id},
         {"policy", p.to_json()},
         {"current_wave", r.current_wave},
         {"waves_total", p.waves.size()},
         {"created_at", r.created_at},
         {"started_at", r.started_at},
         {"finished_at", r.finished_at},
         {"excluded", r.excluded},
         {"version", version}};
  json target{{"kind", r.target_kind}};
  if (r.target_kind == "devices")
    target["value"] = json::parse(r.target, nullptr, false);
  else
    target["value"] = r.target;
  j["target"] = target;
  const RolloutSummary s = summarize_rollout(r, p, rows);
  json waves = json::array();
  for (std::size_t w = 0; w < p.waves.size(); ++w) {
    const WaveSummary& ws = s.waves[w];
    waves.push_back(json{{"index", w},
                         {"devices", ws.devices},
                         {"state", ws.state},
                         {"success_threshold", p.waves[w].success_threshold < 0
                                                   ? json()
                                                   : json(p.waves[w].success_threshold)},
                         {"soak", p.waves[w].soak_s},
                         {"counts", ws.counts},
                         {"success_rate", ws.success_rate},
                         {"failure_rate", ws.failure_rate},
                         {"percent", ws.percent}});
  }
  j["waves"] = waves;
  j["counts"] = s.counts;
  j["devices_total"] = s.devices;
  j["percent"] = s.percent;
  // "total" is what the policy judges (waves the operator accepted on resume are left out);
  // "all" counts every started wave.
  j["failure_rate"] = json{{"total", s.failure_total},
                           {"all", s.failure_all},
                           {"max_total_rate", p.max_total_failure_pct},
                           {"max_wave_rate", p.max_wave_failure_pct},
                           {"action", p.abort_on_failure ? "abort" : "pause"}};
  if (with_devices) j["devices"] = rollout_devices_view(rows);
  return j;
}

json events_view(const std::vector<EventRec>& events) {
  json out = json::array();
  for (const auto& e : events)
    out.push_back(json{{"id", e.id},
                       {"ts", e.ts},
                       {"deployment", e.deployment},
                       {"device", e.device},
                       {"what", e.what},
                       {"detail", e.detail},
                       {"actor", e.actor},
                       {"rollout", e.rollout}});
  return out;
}

}  // namespace ota::service
