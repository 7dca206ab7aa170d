// The staged-rollout engine: a deterministic step function over a rollout and its rows.
//
// The engine holds no clock and no I/O. advance(now) looks at a rollout and its device rows
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
#include "ota/service/rollout_policy.hpp"
#include "ota/service/states.hpp"

namespace ota::service {

// Row states (states.hpp): a rollout adds pending (not offered yet, or waiting for a retry,
// next_at), deferred (the device asked to be offered again later, next_at) and timed_out (no
// final result within the policy's timeout) to those of a plain deployment.

struct RolloutRow {
  std::string device;
  int wave = 0;
  int order = 0;  // position in the deterministic shuffle; offers go in this order
  RowState state = RowState::pending;
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
  RolloutStatus state = RolloutStatus::draft;
  int current_wave = -1;
  long long wave_started_ms = 0;
  long long threshold_met_ms = 0;  // current wave reached its threshold at (0: not yet)
  int accepted_through = -1;       // waves the operator resumed past a policy pause
  std::string pause_reason;
  PausedBy paused_by = PausedBy::none;
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
std::vector<EngineAction> advance(RolloutState& st, std::vector<RolloutRow>& rows,
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
