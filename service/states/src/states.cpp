#include "ota/service/states.hpp"

#include <ostream>

#include <nlohmann/json.hpp>

namespace ota::service {

namespace {

constexpr const char* kRowNames[kRowStateCount] = {
    "pending",    "offered",   "accepted",   "downloading", "verifying", "installing", "rebooting",
    "confirming", "deferred",  "succeeded",  "failed",      "declined",  "timed_out",  "cancelled"};
constexpr const char* kDeploymentNames[] = {"active", "completed", "cancelled"};
constexpr const char* kRolloutNames[kRolloutStatusCount] = {"draft",  "scheduled", "running",
                                                            "paused", "completed", "aborted"};
constexpr const char* kPausedByNames[] = {"", "operator", "policy", "threshold"};

template <typename E, std::size_t N>
const char* name_of(E e, const char* const (&names)[N]) {
  const auto i = static_cast<std::size_t>(e);
  return i < N ? names[i] : "?";
}

template <typename E, std::size_t N>
std::optional<E> parse(std::string_view s, const char* const (&names)[N]) {
  for (std::size_t i = 0; i < N; ++i)
    if (s == names[i]) return static_cast<E>(i);
  return std::nullopt;
}

}  // namespace

const char* to_string(RowState s) { return name_of(s, kRowNames); }
const char* to_string(DeploymentState s) { return name_of(s, kDeploymentNames); }
const char* to_string(RolloutStatus s) { return name_of(s, kRolloutNames); }
const char* to_string(PausedBy p) { return name_of(p, kPausedByNames); }

std::optional<RowState> row_state_from(std::string_view s) { return parse<RowState>(s, kRowNames); }
std::optional<DeploymentState> deployment_state_from(std::string_view s) {
  return parse<DeploymentState>(s, kDeploymentNames);
}
std::optional<RolloutStatus> rollout_status_from(std::string_view s) {
  return parse<RolloutStatus>(s, kRolloutNames);
}
std::optional<PausedBy> paused_by_from(std::string_view s) {
  return parse<PausedBy>(s, kPausedByNames);
}

void to_json(nlohmann::json& j, RowState s) { j = to_string(s); }
void to_json(nlohmann::json& j, DeploymentState s) { j = to_string(s); }
void to_json(nlohmann::json& j, RolloutStatus s) { j = to_string(s); }
void to_json(nlohmann::json& j, PausedBy p) { j = to_string(p); }

std::ostream& operator<<(std::ostream& o, RowState s) { return o << to_string(s); }
std::ostream& operator<<(std::ostream& o, DeploymentState s) { return o << to_string(s); }
std::ostream& operator<<(std::ostream& o, RolloutStatus s) { return o << to_string(s); }
std::ostream& operator<<(std::ostream& o, PausedBy p) { return o << to_string(p); }

const std::vector<RowState>& all_row_states() {
  static const std::vector<RowState> all = [] {
    std::vector<RowState> v;
    for (std::size_t i = 0; i < kRowStateCount; ++i) v.push_back(static_cast<RowState>(i));
    return v;
  }();
  return all;
}

const std::vector<RolloutStatus>& all_rollout_statuses() {
  static const std::vector<RolloutStatus> all = [] {
    std::vector<RolloutStatus> v;
    for (std::size_t i = 0; i < kRolloutStatusCount; ++i) v.push_back(static_cast<RolloutStatus>(i));
    return v;
  }();
  return all;
}

bool is_final(RowState s) {
  switch (s) {
    case RowState::succeeded:
    case RowState::failed:
    case RowState::declined:
    case RowState::cancelled:
    case RowState::timed_out: return true;
    default: return false;
  }
}

bool is_in_flight(RowState s) {
  switch (s) {
    case RowState::offered:
    case RowState::accepted:
    case RowState::downloading:
    case RowState::verifying:
    case RowState::installing:
    case RowState::rebooting:
    case RowState::confirming: return true;
    default: return false;
  }
}

bool is_installing(RowState s) {
  return s == RowState::installing || s == RowState::rebooting || s == RowState::confirming;
}

RowState count_bucket(RowState s) {
  switch (s) {
    case RowState::accepted:
    case RowState::verifying: return RowState::downloading;
    case RowState::rebooting:
    case RowState::confirming: return RowState::installing;
    default: return s;
  }
}

const std::vector<RowState>& count_buckets() {
  static const std::vector<RowState> b{
      RowState::pending,   RowState::deferred, RowState::offered,  RowState::downloading,
      RowState::installing, RowState::succeeded, RowState::failed, RowState::declined,
      RowState::timed_out, RowState::cancelled};
  return b;
}

bool is_terminal(RolloutStatus s) {
  return s == RolloutStatus::completed || s == RolloutStatus::aborted;
}

}  // namespace ota::service
