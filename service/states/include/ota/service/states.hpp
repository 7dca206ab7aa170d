// The states of a deployment row, a deployment and a rollout, as enums. Their text form
// exists only at the edges: the SQLite columns (store.cpp) and the JSON / Prometheus output;
// the *_from() parsers are the only place that compares a state with a string.
#pragma once

#include <cstdint>
#include <iosfwd>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace ota::service {

// One device's part in a deployment. Plain deployments use offered .. cancelled; a rollout
// adds pending (not offered yet, or waiting for a retry), deferred (the device asked to be
// offered later) and timed_out (no final result within the policy's timeout).
enum class RowState : std::uint8_t {
  pending,
  offered,
  accepted,
  downloading,
  verifying,
  installing,
  rebooting,
  confirming,
  deferred,
  succeeded,
  failed,
  declined,
  timed_out,
  cancelled,
};
constexpr std::size_t kRowStateCount = 14;

enum class DeploymentState : std::uint8_t { active, completed, cancelled };

// The rollout's own state (RolloutState, the engine's view of a rollout, holds one).
enum class RolloutStatus : std::uint8_t { draft, scheduled, running, paused, completed, aborted };
constexpr std::size_t kRolloutStatusCount = 6;

// Who paused (or aborted) a rollout: the operator, the failure policy, or a wave that ended
// below its success threshold. none: not paused.
enum class PausedBy : std::uint8_t { none, operator_action, policy, threshold };

// Text forms ("timed_out", "active", "running", "operator"; PausedBy::none is "").
const char* to_string(RowState s);
const char* to_string(DeploymentState s);
const char* to_string(RolloutStatus s);
const char* to_string(PausedBy p);
// Parsers of the text forms; nullopt for anything else.
std::optional<RowState> row_state_from(std::string_view s);
std::optional<DeploymentState> deployment_state_from(std::string_view s);
std::optional<RolloutStatus> rollout_status_from(std::string_view s);
std::optional<PausedBy> paused_by_from(std::string_view s);
// JSON takes the text forms (instead of nlohmann's default for enums, a number).
void to_json(nlohmann::json& j, RowState s);
void to_json(nlohmann::json& j, DeploymentState s);
void to_json(nlohmann::json& j, RolloutStatus s);
void to_json(nlohmann::json& j, PausedBy p);
// For test and log output.
std::ostream& operator<<(std::ostream& o, RowState s);
std::ostream& operator<<(std::ostream& o, DeploymentState s);
std::ostream& operator<<(std::ostream& o, RolloutStatus s);
std::ostream& operator<<(std::ostream& o, PausedBy p);

const std::vector<RowState>& all_row_states();
const std::vector<RolloutStatus>& all_rollout_statuses();

// Will not change any more: succeeded failed declined cancelled timed_out. (A rollout may
// still retry a failed or timed-out row: row_is_final() in rollout_engine.hpp.)
bool is_final(RowState s);
// Offered and not finished: offered accepted downloading verifying installing rebooting
// confirming.
bool is_in_flight(RowState s);
// Past the point of no return on the device: installing rebooting confirming. A cancel can
// no longer stop it; a rollback shows in its next hello.
bool is_installing(RowState s);
// The bucket a row state is counted in by rollout views and metrics: accepted and verifying
// count as downloading, rebooting and confirming as installing; the others as themselves.
RowState count_bucket(RowState s);
// The buckets in display order (pending deferred offered downloading installing succeeded
// failed declined timed_out cancelled).
const std::vector<RowState>& count_buckets();

bool is_terminal(RolloutStatus s);  // completed, aborted

}  // namespace ota::service
