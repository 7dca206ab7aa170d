// The staged-rollout engine: policy parsing and a deterministic tick.
//
// The engine holds no clock and no I/O. tick(now) looks at a rollout and its device rows
// (as persisted), changes them in place and returns what to do next (offers, cancels, log
// lines). The controller persists the changed rows and the rollout in one transaction and
// only then publishes, so a controller killed at any point resumes from the database in the
// same wave and never offers a device the same attempt twice.
#pragma once

#include <cstdint>
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

// Parses a duration: a number of seconds, or a string "90", "30s", "5m", "2h", "1d".
Result<long long> parse_duration(const nlohmann::json& v, const std::string& field);
// "22:00-04:00".
Result<MaintenanceWindow> parse_window(const std::string& s);
// Parses the policy fields of a rollout create request (unknown keys are the caller's job).
Result<RolloutPolicy> parse_policy(const nlohmann::json& body);

// Row states a rollout adds to the deployment row states.
//   pending   not offered yet, or waiting for a retry (next_at)
//   deferred  the device asked to be offered again later (next_at)
//   timed_out no final result within the policy's timeout
// In flight: offered accepted downloading verifying installing rebooting confirming.
bool is_in_flight_state(const std::string& s);
// The wave-table bucket a row state is counted in (pending, deferred, offered, downloading,
// installing, succeeded, failed, declined, timed_out, cancelled).
std::string count_bucket(const std::string& row_state);
const std::vector<std::string>& count_buckets();

struct RolloutRow {
  std::string device;
  int wave = 0;
  int order = 0;  // position in the deterministic shuffle; offers go in this order
  std::string state = "pending";
  std::string reason;
  int attempt = 0;  // attempts offered so far
  int extra_attempts = 0;  // granted by operator retries
  int defers = 0;
  long long next_at_ms = 0;
  long long offered_at_ms = 0;
  bool changed = false;  // set by the engine when it changed the row
};

struct RolloutState {
  std::string id;
  std::string state = "draft";  // draft scheduled running paused completed aborted
  int current_wave = -1;
  long long wave_started_ms = 0;
  long long threshold_met_ms = 0;  // current wave reached its threshold at (0: not yet)
  int accepted_through = -1;       // waves the operator resumed past a policy pause
  std::string pause_reason;
  std::string paused_by;  // operator policy threshold
  bool held_by_window = false;  // not persisted: only to log hold/release once
};

struct EngineAction {
  enum class Kind { offer, cancel, log } kind = Kind::log;
  std::string device;
  int attempt = 0;
  std::string what;
  std::string detail;
};

struct WaveCounts {
  int devices = 0;
  int final_count = 0;
  int succeeded = 0;
  int failed = 0;  // final failures (failed or timed out with no attempt left)
  int declined = 0;
  int in_flight = 0;
  double success_rate() const;  // percent of devices - declined
  double failure_rate() const;  // percent of devices
};

bool is_terminal_rollout_state(const std::string& s);
// A row that will not change any more: succeeded, declined, cancelled, or failed/timed out
// with no attempt left.
bool row_is_final(const RolloutRow& r, const RolloutPolicy& p);
std::vector<WaveCounts> wave_counts(const std::vector<RolloutRow>& rows,
                                    const RolloutPolicy& p);

// Splits targets into waves: deterministic shuffle keyed by the rollout id, then each wave
// takes its size of what earlier waves left; the last wave takes the rest. Every wave gets at
// least one device while any remain (waves beyond the targets stay empty).
std::vector<RolloutRow> assign_waves(const std::string& rollout_id,
                                     const std::vector<std::string>& devices,
                                     const RolloutPolicy& p);

// One step of the engine at time now (unix ms). Changes st and rows in place (rows get
// changed=true), returns the actions in the order to carry them out.
std::vector<EngineAction> tick(RolloutState& st, std::vector<RolloutRow>& rows,
                               const RolloutPolicy& p, long long now_ms);

// Operator actions on the state (the controller adds persistence and messages). Each returns
// an error naming why the action does not apply, or the log actions to record.
Result<std::vector<EngineAction>> op_start(RolloutState& st, const RolloutPolicy& p,
                                           long long now_ms);
Result<std::vector<EngineAction>> op_pause(RolloutState& st, const std::string& reason);
Result<std::vector<EngineAction>> op_resume(RolloutState& st);
// Cancels what has not reached installation; returns cancels for in-flight devices.
Result<std::vector<EngineAction>> op_abort(RolloutState& st, std::vector<RolloutRow>& rows,
                                           const std::string& reason);
// Gives failed and timed-out devices one more attempt. Returns how many via the log action.
Result<std::vector<EngineAction>> op_retry(RolloutState& st, std::vector<RolloutRow>& rows,
                                           const RolloutPolicy& p, long long now_ms);

}  // namespace ota::service
