// otactl argument parsers for rollout policies: durations, wave specs, maintenance windows and
// start times, in the form `rollout create` uses them: false with `why` naming what was wrong
// (the caller adds the option name and the value). The grammar itself is the rollout policy
// grammar the controller uses too (service/policy: ota/policy/policy_grammar.hpp).
// Header-only so the unit tests can call them directly.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "ota/policy/policy_grammar.hpp"

namespace otactl {

// Duration: plain seconds ("90") or a count with one unit: "30s", "5m", "2h", "1d".
// At most 10 years.
inline bool parse_duration(const std::string& s, long long& secs, std::string& why) {
  auto d = ota::policy::parse_duration(s);
  if (!d) {
    why = d.error;
    return false;
  }
  secs = *d;
  return true;
}

// One wave: SIZE[:THRESHOLD[:SOAK]]. SIZE "10%" (over 0 and up to 100 percent of the remaining
// targets) or a device count "5"; THRESHOLD the success percent needed before the next wave
// (0..100, default none = wait for the whole wave; may be left empty: "10%::5m"); SOAK a
// duration (default none). Fills {"size": "10%" | 5, "success_threshold": N[, "soak": seconds]}.
inline bool parse_wave(const std::string& spec, nlohmann::json& wave, std::string& why) {
  auto w = ota::policy::parse_wave(spec);
  if (!w) {
    why = w.error;
    return false;
  }
  wave = nlohmann::json::object();
  if (w->size.percent)
    wave["size"] = w->size_text;  // as typed
  else
    wave["size"] = static_cast<long long>(w->size.size);
  if (w->success_threshold) {
    const double t = *w->success_threshold;
    if (t == static_cast<double>(static_cast<long long>(t)))
      wave["success_threshold"] = static_cast<long long>(t);
    else
      wave["success_threshold"] = t;
  }
  if (w->soak_s) wave["soak"] = *w->soak_s;
  return true;
}

// Maintenance window HH:MM-HH:MM (UTC, may wrap past midnight: 22:00-04:00; start != end).
inline bool parse_window(const std::string& s, std::string& why) {
  auto w = ota::policy::parse_window(s);
  if (!w) why = w.error;
  return static_cast<bool>(w);
}

// Start time: unix seconds, or ISO 8601 "YYYY-MM-DDTHH:MM[:SS]" followed by "Z" or "+HH:MM" /
// "-HH:MM" ("T" may be a space). Gives unix seconds.
inline bool parse_time(const std::string& s, long long& unix_secs, std::string& why) {
  auto t = ota::policy::parse_time(s);
  if (!t) {
    why = t.error;
    return false;
  }
  unix_secs = *t;
  return true;
}

// "30s", "5m", "2h", "1d", "90s" (the largest unit that divides evenly).
inline std::string fmt_duration(long long s) { return ota::policy::format_duration(s); }

// An age for people: "12s", "5m", "3h", "2d".
inline std::string fmt_age(long long s) {
  if (s < 0) s = 0;
  if (s < 60) return std::to_string(s) + "s";
  if (s < 3600) return std::to_string(s / 60) + "m";
  if (s < 86400) return std::to_string(s / 3600) + "h";
  return std::to_string(s / 86400) + "d";
}

}  // namespace otactl
