#include "rollout_view.hpp"

#include <algorithm>
#include <cstdio>

#include "args.hpp"

namespace otactl {

using ota::service::PausedBy;
using ota::service::RolloutStatus;

namespace {

std::string wave_line(const json& w, std::size_t i, std::size_t total) {
  char head[64];
  std::snprintf(head, sizeof head, "wave %zu/%zu %-7s ", i + 1, total, jstr(w, "state").c_str());
  char pct[16];
  std::snprintf(pct, sizeof pct, "%3lld%%", std::clamp(jint(w, "percent"), 0LL, 100LL));
  std::string s = std::string(head) + bar(jint(w, "percent"), 20) + " " + pct + "  " +
                  std::to_string(jint(w, "devices")) + " devices  " + rollout_counts(jobj(w, "counts"));
  const bool has_threshold = jhas(w, "success_threshold") && w["success_threshold"].is_number();
  std::string extra = has_threshold ? "needs " + fmt_pct(jnum(w, "success_threshold"))
                                    : std::string("waits for all");
  if (jint(w, "soak") > 0) extra += ", soak " + fmt_duration(jint(w, "soak"));
  if (jstr(w, "state") != "waiting" && jhas(w, "success_rate"))
    extra = "success " + fmt_pct(jnum(w, "success_rate")) + ", " + extra;
  return s + "  (" + extra + ")";
}

// "failure 2.5% (max 5% total, 10% per wave, then pause)". The rate of every started wave
// ("all"), beside the counts; after a resume accepted failures the policy judges only the
// waves since ("total"), shown when it differs.
std::string failure_text(const json& ro) {
  const json& f = jobj(ro, "failure_rate");
  std::string s = "failure " + fmt_pct(failure_all(ro));
  if (jhas(f, "all") && jnum(f, "all") != jnum(f, "total"))
    s += ", " + fmt_pct(jnum(f, "total")) + " in the waves since the operator accepted failures";
  std::vector<std::string> lim;
  if (jhas(f, "max_total_rate")) lim.push_back("max " + fmt_pct(jnum(f, "max_total_rate")) + " total");
  if (jhas(f, "max_wave_rate")) lim.push_back(fmt_pct(jnum(f, "max_wave_rate")) + " per wave");
  if (lim.empty() || (jnum(f, "max_total_rate") >= 100 && jnum(f, "max_wave_rate") >= 100))
    return s + " (no failure limit)";
  std::string l;
  for (const auto& x : lim) l += (l.empty() ? "" : ", ") + x;
  const std::string action = jstr(f, "action");
  return s + " (" + l + (action.empty() ? "" : ", then " + action) + ")";
}

std::string policy_text(const json& p) {
  std::vector<std::string> parts;
  if (jhas(p, "retries"))
    parts.push_back("retries " + std::to_string(jint(p, "retries")) +
                    (jint(p, "retries") > 0 && jint(p, "retry_delay") > 0
                         ? " after " + fmt_duration(jint(p, "retry_delay"))
                         : ""));
  if (jint(p, "timeout") > 0) parts.push_back("timeout " + fmt_duration(jint(p, "timeout")));
  if (jint(p, "max_concurrent") > 0) parts.push_back("max concurrent " + std::to_string(jint(p, "max_concurrent")));
  if (!jstr(p, "window").empty()) parts.push_back("window " + jstr(p, "window") + " UTC");
  if (jint(p, "start_at") > 0) parts.push_back("start at " + fmt_time(jint(p, "start_at")));
  if (jint(p, "defer_delay") > 0 || jhas(p, "max_defers"))
    parts.push_back("deferrals retried after " + fmt_duration(jint(p, "defer_delay")) +
                    (jhas(p, "max_defers") ? ", at most " + std::to_string(jint(p, "max_defers")) : ""));
  std::string s;
  for (const auto& x : parts) s += (s.empty() ? "" : ", ") + x;
  return s.empty() ? "-" : s;
}

}  // namespace

double failure_all(const json& ro) {
  const json& f = jobj(ro, "failure_rate");
  return jhas(f, "all") ? jnum(f, "all") : jnum(f, "total");
}

std::string rollout_target(const json& ro, std::size_t max_ids) {
  const json& t = jobj(ro, "target");
  if (t.contains("value") && t["value"].is_array() && t["value"].size() > max_ids) {
    std::string v;
    for (std::size_t i = 0; i < max_ids; ++i) v += (i ? "," : "") + jstr(json{{"v", t["value"][i]}}, "v");
    return jstr(t, "kind") + " " + v + " +" + std::to_string(t["value"].size() - max_ids) + " more";
  }
  return jstr(t, "kind") + " " + jstr(t, "value");
}

std::string rollout_counts(const json& counts) {
  auto n = [&](const char* k) { return jint(counts, k); };
  std::string s = "ok " + std::to_string(n("succeeded")) + " fail " + std::to_string(n("failed")) +
                  " run " + std::to_string(n("offered") + n("downloading") + n("installing")) +
                  " pend " + std::to_string(n("pending") + n("deferred")) + " decl " +
                  std::to_string(n("declined")) + " tout " + std::to_string(n("timed_out"));
  if (n("deferred") > 0) s += " def " + std::to_string(n("deferred"));
  if (n("cancelled") > 0) s += " canc " + std::to_string(n("cancelled"));
  return s;
}

std::string current_wave(const json& ro) {
  const long long total = jint(ro, "waves_total");
  const long long cur = jint(ro, "current_wave");
  const auto st = rollout_status(ro);
  const bool started = st != RolloutStatus::draft && st != RolloutStatus::scheduled;
  return "wave " + (started ? std::to_string(std::min(cur + 1, total)) : std::string("-")) + "/" +
         std::to_string(total);
}

std::string pause_text(const json& ro) {
  const std::string by = jstr(ro, "paused_by"), why = jstr(ro, "pause_reason");
  std::string s = "paused";
  if (!by.empty()) s += " by " + by;
  if (!why.empty()) s += ": " + why;
  return s;
}

bool paused_by_policy(const json& ro) {
  const PausedBy by = paused_by(ro);
  return rollout_status(ro) == RolloutStatus::paused &&
         (by == PausedBy::policy || by == PausedBy::threshold);
}

std::vector<std::string> rollout_lines(const json& ro) {
  std::vector<std::string> out;
  const std::string name = jstr(ro, "name");
  char pct[16];
  std::snprintf(pct, sizeof pct, "%3lld%%", std::clamp(jint(ro, "percent"), 0LL, 100LL));
  out.push_back("rollout " + jstr(ro, "id") + (name.empty() ? "" : " \"" + name + "\"") + "  version " +
                jstr(ro, "version") + "  " + rollout_target(ro) + "  state " + jstr(ro, "state") + "  " +
                current_wave(ro));
  std::string line2 = "overall " + bar(jint(ro, "percent"), 20) + " " + pct + "  " +
                      std::to_string(jint(ro, "devices_total")) + " devices";
  if (jint(ro, "excluded") > 0) line2 += " (" + std::to_string(jint(ro, "excluded")) + " excluded)";
  line2 += "  " + rollout_counts(jobj(ro, "counts"));
  out.push_back(line2);
  out.push_back(failure_text(ro));
  if (rollout_status(ro) == RolloutStatus::paused) out.push_back(pause_text(ro));
  const json& waves = ro.is_object() && ro.contains("waves") && ro["waves"].is_array() ? ro["waves"] : json::array();
  for (std::size_t i = 0; i < waves.size(); ++i) out.push_back(wave_line(waves[i], i, waves.size()));
  return out;
}

void print_rollout(const json& ro, bool with_devices) {
  std::printf("rollout    %s%s\n", jstr(ro, "id").c_str(),
              jstr(ro, "name").empty() ? "" : (" \"" + jstr(ro, "name") + "\"").c_str());
  std::printf("image      %s (%s)\n", jstr(ro, "version").c_str(), jstr(ro, "image").c_str());
  const auto st = rollout_status(ro);
  if ((st == RolloutStatus::draft || st == RolloutStatus::scheduled) &&
      jstr(ro, "deployment").empty())
    std::printf("target     %s: devices are claimed when it starts\n",
                rollout_target(ro, 8).c_str());
  else
    std::printf("target     %s: %lld devices%s\n", rollout_target(ro, 8).c_str(),
                jint(ro, "devices_total"),
                jint(ro, "excluded") > 0
                    ? (", " + std::to_string(jint(ro, "excluded")) + " excluded").c_str()
                    : "");
  std::printf("state      %s  %s\n", jstr(ro, "state").c_str(), current_wave(ro).c_str());
  if (rollout_status(ro) == RolloutStatus::paused) std::printf("           %s\n", pause_text(ro).c_str());
  if (!jstr(ro, "rollback_of").empty()) std::printf("rollback   of %s\n", jstr(ro, "rollback_of").c_str());
  if (!jstr(ro, "deployment").empty()) std::printf("deployment %s\n", jstr(ro, "deployment").c_str());
  std::printf("policy     %s\n", policy_text(jobj(ro, "policy")).c_str());
  std::printf("created    %s", fmt_time(jint(ro, "created_at")).c_str());
  if (jint(ro, "started_at") > 0) std::printf("  started %s", fmt_time(jint(ro, "started_at")).c_str());
  if (jint(ro, "finished_at") > 0) std::printf("  finished %s", fmt_time(jint(ro, "finished_at")).c_str());
  std::printf("\n\n");
  auto lines = rollout_lines(ro);
  for (std::size_t i = 1; i < lines.size(); ++i)  // the first line repeats the header above
    if (lines[i].rfind("paused", 0) != 0) std::printf("%s\n", lines[i].c_str());  // paused: above
  if (!with_devices) return;
  std::printf("\n");
  std::vector<std::vector<std::string>> rows;
  if (ro.contains("devices") && ro["devices"].is_array())
    for (const auto& d : ro["devices"]) {
      const long long ms = jint(d, "updated_at");
      rows.push_back({jstr(d, "device"), std::to_string(jint(d, "wave") + 1), jstr(d, "state"),
                      jstr(d, "attempt"), std::to_string(jint(d, "percent")) + "%",
                      cell_time(ms / 1000), jstr(d, "reason")});
    }
  print_table({"DEVICE", "WAVE", "STATE", "ATTEMPT", "PERCENT", time_head("UPDATED"), "REASON"},
              rows);
}

}  // namespace otactl
