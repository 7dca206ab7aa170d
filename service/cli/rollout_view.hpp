// otactl's views of a rollout (GET /api/v1/rollouts/ID): `rollout show`, `rollout list` and
// the live view of `watch`.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "format.hpp"

namespace otactl {

// "group g1", "tags site=berlin", "devices d1,d2,d3 +33 more" (at most `max_ids` ids).
std::string rollout_target(const json& ro, std::size_t max_ids = 3);
// ok 27 fail 1 run 12 pend 20 decl 0 tout 0 (plus "def N" / "canc N" when there are any).
std::string rollout_counts(const json& counts);
// "wave 2/3" (or "wave -/3" before the first wave starts).
std::string current_wave(const json& ro);
// The failure percentage of every started wave (failure_rate.all; older controllers: total).
double failure_all(const json& ro);
// "paused by operator: REASON".
std::string pause_text(const json& ro);
// Paused by its failure policy or a wave's threshold (not by an operator).
bool paused_by_policy(const json& ro);
// Header + one line per wave (the live view and `rollout show`).
std::vector<std::string> rollout_lines(const json& ro);
// `rollout show`: identity, policy, times, the waves; with one row per device if asked.
void print_rollout(const json& ro, bool with_devices);

}  // namespace otactl
