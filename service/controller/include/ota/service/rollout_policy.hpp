// A rollout's policy (waves, failure limits, retries, timeouts, window, deferrals) and its
// parsing from the JSON of a rollout create request. Used by the rollout engine
// (rollout_engine.hpp) and stored with each rollout (RolloutPolicy::to_json).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "ota/service/result.hpp"

namespace ota::service {

struct WaveSpec {
  bool percent = true;
  double size = 100;               // percent of the remaining targets, or a count
  // Percent of the wave (declines excluded) that must succeed before the next wave starts,
  // stragglers still running; a wave that ends below it pauses the rollout. Negative (the
  // default): no threshold, the next wave starts when every device of this one is final and
  // only the failure policy judges the failures.
  double success_threshold = -1;
  long long soak_s = 0;            // wait after reaching the threshold before the next wave
};

// Daily maintenance window in UTC minutes of day; end < start crosses midnight.
struct MaintenanceWindow {
  int start_min = 0;
  int end_min = 0;
  bool contains(long long unix_ms) const;
  std::string text() const;
};

struct RolloutPolicy {
  std::vector<WaveSpec> waves{WaveSpec{}};
  double max_wave_failure_pct = 100;   // a wave whose final failures exceed this trips
  double max_total_failure_pct = 100;  // all started waves together
  bool abort_on_failure = false;       // else pause
  int retries = 0;                     // extra attempts per device after a failure/timeout
  long long retry_delay_s = 60;
  long long timeout_s = 3600;  // offered -> final; 0 = no timeout
  int max_concurrent = 0;      // devices in flight at once; 0 = no cap
  long long start_at_s = 0;    // unix seconds; 0 = when started
  std::optional<MaintenanceWindow> window;
  long long defer_delay_s = 300;  // when the device does not say when to retry
  int max_defers = 10;            // more deferrals than this: counted as declined

  nlohmann::json to_json() const;
};

// Where a policy comes from. A request is held to the grammar of service/policy (the one otactl
// uses). A stored policy was accepted by an earlier controller whose grammar was looser, and a
// rollout must not stop loading (or the controller stop starting) because the grammar got
// stricter: equal window ends ("22:00-22:00") read as the whole day, as they always did;
// durations past the cap are cut to it; percentages the strict grammar refuses ("1e-05%",
// which to_json's %g wrote for tiny waves) are read as numbers.
enum class PolicySource { request, stored };

// Parses a duration: a number of seconds, or a string "90", "30s", "5m", "2h", "1d".
Result<long long> parse_duration(const nlohmann::json& v, const std::string& field,
                                 PolicySource source = PolicySource::request);
// "22:00-04:00". A stored "22:00-22:00" is the whole day: no window (nullopt).
Result<std::optional<MaintenanceWindow>> parse_window(const std::string& s,
                                                      PolicySource source = PolicySource::request);
// Parses the policy fields of a rollout create request (unknown keys are the caller's job), or
// a policy read back from the database (PolicySource::stored).
Result<RolloutPolicy> parse_policy(const nlohmann::json& body,
                                   PolicySource source = PolicySource::request);

}  // namespace ota::service
