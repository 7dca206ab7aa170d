#include "ota/service/rollout_policy.hpp"

#include "ota/policy/policy_grammar.hpp"

#include <cstdio>
#include <cstdlib>

namespace ota::service {

using nlohmann::json;

namespace {

Result<double> parse_pct(const json& v, const std::string& field) {
  if (!v.is_number()) return invalid_field_err(field, field + " must be a number (percent 0..100)");
  const double d = v.get<double>();
  if (!(d >= 0 && d <= 100)) return invalid_field_err(field, field + " " + v.dump() + " is not in 0..100");
  return d;
}

Result<int> parse_count(const json& v, const std::string& field, int max) {
  if (!v.is_number_integer() || v.get<long long>() < 0 || v.get<long long>() > max)
    return invalid_field_err(field, field + " must be an integer 0.." + std::to_string(max) + " (got " +
                       v.dump() + ")");
  return static_cast<int>(v.get<long long>());
}

}  // namespace

// ------------------------------------------------------------------------------- policy

bool MaintenanceWindow::contains(long long unix_ms) const {
  const long long day_ms = 86400000LL;
  const int m = static_cast<int>(((unix_ms % day_ms) + day_ms) % day_ms / 60000);
  if (start_min == end_min) return true;  // whole day
  if (start_min < end_min) return m >= start_min && m < end_min;
  return m >= start_min || m < end_min;
}

std::string MaintenanceWindow::text() const {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%02d:%02d-%02d:%02d", start_min / 60, start_min % 60,
                end_min / 60, end_min % 60);
  return buf;
}

Result<long long> parse_duration(const json& v, const std::string& field, PolicySource source) {
  if (v.is_number_integer()) {
    const long long seconds = v.get<long long>();
    if (source == PolicySource::stored && seconds > ota::policy::kMaxDurationS)
      return ota::policy::kMaxDurationS;
    auto d = ota::policy::check_duration(seconds);
    if (!d) return invalid_field_err(field, field + " " + v.dump() + ": " + d.error);
    return *d;
  }
  if (!v.is_string())
    return invalid_field_err(field, field + " must be seconds or a string like \"30s\", \"5m\", \"2h\", \"1d\"");
  auto d = ota::policy::parse_duration(v.get<std::string>());
  if (!d) return invalid_field_err(field, field + " '" + v.get<std::string>() + "': " + d.error);
  return *d;
}

Result<std::optional<MaintenanceWindow>> parse_window(const std::string& s, PolicySource source) {
  auto w = ota::policy::parse_window(s);
  if (!w) {
    // Before the shared grammar the controller stored equal ends and read them as the whole day.
    int h = 0, m = 0, h2 = 0, m2 = 0;
    const bool equal_ends = std::sscanf(s.c_str(), "%2d:%2d-%2d:%2d", &h, &m, &h2, &m2) == 4 &&
                            s.size() == 11 && h == h2 && m == m2 && h >= 0 && h < 24 && m >= 0 &&
                            m < 60;
    if (source == PolicySource::stored && equal_ends) return std::optional<MaintenanceWindow>{};
    return invalid_field_err("window", "window '" + s + "': " + w.error);
  }
  MaintenanceWindow mw;
  mw.start_min = w->start_min;
  mw.end_min = w->end_min;
  return std::optional<MaintenanceWindow>{mw};
}

// parse_policy, waves[i].size:
static Result<WaveSpec> parse_wave_size(const json& sz, const std::string& f, PolicySource source) {
  WaveSpec spec;
  if (sz.is_string()) {
    const std::string s = sz.get<std::string>();
    auto pct = ota::policy::parse_wave_percent(s);
    if (!pct && source == PolicySource::stored) {
      // What the controller accepted before the shared grammar: strtod, then '%', (0, 100].
      char* end = nullptr;
      const double v = std::strtod(s.c_str(), &end);
      if (!s.empty() && s.back() == '%' && end == s.c_str() + s.size() - 1 && v > 0 && v <= 100)
        pct.value = v;
    }
    if (!pct) return invalid_field_err(f + ".size", f + ".size '" + s + "': " + pct.error);
    spec.percent = true;
    spec.size = *pct;
  } else if (sz.is_number_integer()) {
    auto n = ota::policy::check_wave_count(sz.get<long long>());
    if (!n) return invalid_field_err(f + ".size", f + ".size " + sz.dump() + ": " + n.error);
    spec.percent = false;
    spec.size = static_cast<double>(*n);
  } else {
    return invalid_field_err(f + ".size", f + ".size " + sz.dump() + " must be a percentage string (\"10%\") or a positive count");
  }
  return spec;
}

// parse_policy, a string start_at:
static Result<long long> parse_start_at(const std::string& s) {
  auto t = ota::policy::parse_time(s);
  if (!t) return invalid_field_err("start_at", "start_at '" + s + "': " + t.error);
  return *t;
}

Result<RolloutPolicy> parse_policy(const json& body, PolicySource source) {
  RolloutPolicy p;
  if (body.contains("waves")) {
    const json& ws = body["waves"];
    if (!ws.is_array() || ws.empty() || ws.size() > 100)
      return invalid_field_err("waves", "waves must be a non-empty array of at most 100 waves");
    p.waves.clear();
    for (std::size_t i = 0; i < ws.size(); ++i) {
      const std::string f = "waves[" + std::to_string(i) + "]";
      const json& w = ws[i];
      if (!w.is_object()) return invalid_field_err(f, f + " must be an object like {\"size\":\"10%\"}");
      auto sz = w.find("size");
      if (sz == w.end()) return invalid_field_err(f + ".size", f + ".size is required (\"10%\" or a count)");
      auto sized = parse_wave_size(*sz, f, source);
      if (!sized) return sized.err();
      WaveSpec spec = *sized;
      if (w.contains("success_threshold") && !w["success_threshold"].is_null()) {
        auto t = parse_pct(w["success_threshold"], f + ".success_threshold");
        if (!t) return t.err();
        spec.success_threshold = *t;
      }
      if (w.contains("soak")) {
        auto s = parse_duration(w["soak"], f + ".soak", source);
        if (!s) return s.err();
        spec.soak_s = *s;
      }
      for (auto it = w.begin(); it != w.end(); ++it)
        if (it.key() != "size" && it.key() != "success_threshold" && it.key() != "soak")
          return invalid_field_err(f, f + ": unknown field \"" + it.key() +
                             "\" (size, success_threshold, soak)");
      p.waves.push_back(spec);
    }
  }
  if (body.contains("failure")) {
    const json& f = body["failure"];
    if (!f.is_object()) return invalid_field_err("failure", "failure must be an object");
    for (auto it = f.begin(); it != f.end(); ++it) {
      if (it.key() == "max_wave_rate") {
        auto v = parse_pct(it.value(), "failure.max_wave_rate");
        if (!v) return v.err();
        p.max_wave_failure_pct = *v;
      } else if (it.key() == "max_total_rate") {
        auto v = parse_pct(it.value(), "failure.max_total_rate");
        if (!v) return v.err();
        p.max_total_failure_pct = *v;
      } else if (it.key() == "action") {
        if (!it->is_string() || (it->get<std::string>() != "pause" && it->get<std::string>() != "abort"))
          return invalid_field_err("failure.action", "failure.action must be \"pause\" or \"abort\"");
        p.abort_on_failure = it->get<std::string>() == "abort";
      } else {
        return invalid_field_err("failure", "failure: unknown field \"" + it.key() +
                           "\" (max_wave_rate, max_total_rate, action)");
      }
    }
  }
  if (body.contains("retries")) {
    auto v = parse_count(body["retries"], "retries", 10);
    if (!v) return v.err();
    p.retries = *v;
  }
  if (body.contains("max_concurrent")) {
    auto v = parse_count(body["max_concurrent"], "max_concurrent", 1000000);
    if (!v) return v.err();
    p.max_concurrent = *v;
  }
  if (body.contains("max_defers")) {
    auto v = parse_count(body["max_defers"], "max_defers", 1000);
    if (!v) return v.err();
    p.max_defers = *v;
  }
  for (auto [key, dst] : {std::pair<const char*, long long*>{"retry_delay", &p.retry_delay_s},
                          {"timeout", &p.timeout_s},
                          {"defer_delay", &p.defer_delay_s}}) {
    if (!body.contains(key)) continue;
    auto v = parse_duration(body[key], key, source);
    if (!v) return v.err();
    *dst = *v;
  }
  if (body.contains("start_at") && !body["start_at"].is_null()) {
    const json& v = body["start_at"];
    if (v.is_number_integer() && v.get<long long>() >= 0) {
      p.start_at_s = v.get<long long>();
    } else if (v.is_string()) {
      auto t = parse_start_at(v.get<std::string>());
      if (!t) return t.err();
      p.start_at_s = *t;
    } else {
      return invalid_field_err("start_at", "start_at must be unix seconds or a UTC time like 2026-11-26T02:00:00Z");
    }
  }
  if (body.contains("window") && !body["window"].is_null()) {
    if (!body["window"].is_string()) return invalid_field_err("window", "window must be a string HH:MM-HH:MM");
    auto w = parse_window(body["window"].get<std::string>(), source);
    if (!w) return w.err();
    p.window = *w;
  }
  return p;
}

json RolloutPolicy::to_json() const {
  json ws = json::array();
  for (const auto& w : waves) {
    json jw;
    if (w.percent) {
      char buf[32];
      std::snprintf(buf, sizeof buf, "%g%%", w.size);
      jw["size"] = buf;
    } else {
      jw["size"] = static_cast<long long>(w.size);
    }
    jw["success_threshold"] = w.success_threshold < 0 ? json() : json(w.success_threshold);
    jw["soak"] = w.soak_s;
    ws.push_back(jw);
  }
  return json{{"waves", ws},
              {"failure",
               {{"max_wave_rate", max_wave_failure_pct},
                {"max_total_rate", max_total_failure_pct},
                {"action", abort_on_failure ? "abort" : "pause"}}},
              {"retries", retries},
              {"retry_delay", retry_delay_s},
              {"timeout", timeout_s},
              {"max_concurrent", max_concurrent},
              {"start_at", start_at_s},
              {"window", window ? json(window->text()) : json()},
              {"defer_delay", defer_delay_s},
              {"max_defers", max_defers}};
}

}  // namespace ota::service
