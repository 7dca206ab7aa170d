// /metrics: the state and progress of every live rollout (running, scheduled, paused, or
// finished with devices still reporting), the rollouts in the database by state, the active
// deployments and the build. Called from metrics_text() with mu_ held. The alert rules
// (service/monitoring/ota-alerts.yml) and the Grafana dashboard use these names; the
// integration test tests/integration/ops_test.cpp checks that every name they use is served.
#include <ostream>
#include <sstream>

#include "ota/service/controller.hpp"

#ifndef OTA_VERSION
#define OTA_VERSION "unknown"
#endif

namespace ota::service {

using nlohmann::json;

namespace {
const char* const kRolloutStates[] = {"draft", "scheduled", "running", "paused", "completed", "aborted"};
const char* const kPausedBy[] = {"operator", "policy", "threshold"};

double number(const json& j, const char* key) {
  return j.is_object() && j.contains(key) && j[key].is_number() ? j[key].get<double>() : 0.0;
}
std::string text(const json& j, const char* key) {
  return j.is_object() && j.contains(key) && j[key].is_string() ? j[key].get<std::string>() : "";
}
}  // namespace

void Controller::rollout_metrics(std::ostream& o) {
  std::ostringstream state, paused, wave, waves, progress, limit, info;
  for (const auto& kv : rollouts_) {
    const json j = rollout_to_json(kv.second.rec, false);
    const std::string id = "rollout=\"" + prometheus_label_value(kv.first) + "\"";
    const std::string st = text(j, "state");
    for (const char* s : kRolloutStates)
      state << "ota_rollout_state{" << id << ",state=\"" << s << "\"} " << (st == s ? 1 : 0) << "\n";
    const std::string by = st == "paused" ? text(j, "paused_by") : "";
    for (const char* b : kPausedBy)
      paused << "ota_rollout_paused{" << id << ",by=\"" << b << "\"} " << (by == b ? 1 : 0) << "\n";
    // current_wave is 0-based, -1 before the first wave: exported 1-based, 0 = none yet.
    wave << "ota_rollout_wave{" << id << "} " << static_cast<long long>(number(j, "current_wave")) + 1 << "\n";
    waves << "ota_rollout_waves{" << id << "} " << static_cast<long long>(number(j, "waves_total")) << "\n";
    progress << "ota_rollout_progress_ratio{" << id << "} " << number(j, "percent") / 100.0 << "\n";
    limit << "ota_rollout_failure_rate_limit{" << id << "} "
          << (j.contains("failure_rate") ? number(j["failure_rate"], "max_total_rate") : 100.0) / 100.0 << "\n";
    info << "ota_rollout_info{" << id << ",name=\"" << prometheus_label_value(text(j, "name"))
         << "\",version=\"" << prometheus_label_value(text(j, "version")) << "\",target=\""
         << prometheus_label_value(j.contains("target") ? text(j["target"], "kind") : "") << "\"} 1\n";
  }
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

  std::map<std::string, long long> by_state;
  for (const char* s : kRolloutStates) by_state[s] = 0;
  auto all = store_.list_rollouts();
  if (all)
    for (const auto& r : *all) by_state[r.state]++;
  o << "# HELP ota_rollouts Rollouts in the database by state.\n# TYPE ota_rollouts gauge\n";
  for (const auto& kv : by_state)
    o << "ota_rollouts{state=\"" << prometheus_label_value(kv.first) << "\"} " << kv.second << "\n";
  o << "# HELP ota_deployments_active Deployments (single and rollout) that have not finished.\n"
       "# TYPE ota_deployments_active gauge\nota_deployments_active " << active_.size() << "\n";
  o << "# HELP ota_build_info The controller's version (value 1).\n"
       "# TYPE ota_build_info gauge\nota_build_info{version=\"" << OTA_VERSION << "\"} 1\n";
}

}  // namespace ota::service
