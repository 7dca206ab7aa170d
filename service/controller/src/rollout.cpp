#include "ota/service/rollout.hpp"

#include <openssl/sha.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <set>

namespace ota::service {

using nlohmann::json;

namespace {

std::string pct_text(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f%%", v);
  return buf;
}

std::string duration_text(long long s) {
  if (s % 86400 == 0 && s) return std::to_string(s / 86400) + "d";
  if (s % 3600 == 0 && s) return std::to_string(s / 3600) + "h";
  if (s % 60 == 0 && s) return std::to_string(s / 60) + "m";
  return std::to_string(s) + "s";
}

EngineAction log_action(std::string what, std::string detail, std::string device = "") {
  EngineAction a;
  a.kind = EngineAction::Kind::log;
  a.what = std::move(what);
  a.detail = std::move(detail);
  a.device = std::move(device);
  return a;
}

int total_attempts(const RolloutRow& r, const RolloutPolicy& p) {
  return 1 + p.retries + r.extra_attempts;
}

bool is_failure_state(const std::string& s) { return s == "failed" || s == "timed_out"; }

Result<double> parse_pct(const json& v, const std::string& field) {
  if (!v.is_number()) return invalid_err(field + " must be a number (percent 0..100)");
  const double d = v.get<double>();
  if (!(d >= 0 && d <= 100)) return invalid_err(field + " " + v.dump() + " is not in 0..100");
  return d;
}

Result<int> parse_count(const json& v, const std::string& field, int max) {
  if (!v.is_number_integer() || v.get<long long>() < 0 || v.get<long long>() > max)
    return invalid_err(field + " must be an integer 0.." + std::to_string(max) + " (got " +
                       v.dump() + ")");
  return static_cast<int>(v.get<long long>());
}

// "2026-11-26T02:00:00Z" -> unix seconds.
std::optional<long long> parse_utc_time(const std::string& s) {
  int y, mo, d, h, mi, sec;
  char z = 0;
  if (std::sscanf(s.c_str(), "%4d-%2d-%2dT%2d:%2d:%2d%c", &y, &mo, &d, &h, &mi, &sec, &z) != 7 ||
      z != 'Z' || s.size() != 20)
    return std::nullopt;
  if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60) return std::nullopt;
  // Days from civil (Howard Hinnant's algorithm).
  y -= mo <= 2;
  const long long era = (y >= 0 ? y : y - 399) / 400;
  const long long yoe = y - era * 400;
  const long long doy = (153 * (mo + (mo > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const long long doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  const long long days = era * 146097 + doe - 719468;
  return days * 86400 + h * 3600 + mi * 60 + sec;
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

Result<long long> parse_duration(const json& v, const std::string& field) {
  if (v.is_number_integer()) {
    if (v.get<long long>() < 0) return invalid_err(field + " must not be negative");
    return v.get<long long>();
  }
  if (!v.is_string())
    return invalid_err(field + " must be seconds or a string like \"30s\", \"5m\", \"2h\", \"1d\"");
  const std::string s = v.get<std::string>();
  std::size_t i = 0;
  while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i;
  const std::string unit = s.substr(i);
  long long mult = 0;
  if (unit.empty() || unit == "s") mult = 1;
  else if (unit == "m") mult = 60;
  else if (unit == "h") mult = 3600;
  else if (unit == "d") mult = 86400;
  if (i == 0 || i > 9 || mult == 0)
    return invalid_err(field + " '" + s + "' is not a duration like 30s, 5m, 2h, 1d");
  return std::strtoll(s.substr(0, i).c_str(), nullptr, 10) * mult;
}

Result<MaintenanceWindow> parse_window(const std::string& s) {
  int h1, m1, h2, m2;
  char tail = 0;
  if (s.size() != 11 ||
      std::sscanf(s.c_str(), "%2d:%2d-%2d:%2d%c", &h1, &m1, &h2, &m2, &tail) != 4 || h1 > 23 ||
      h2 > 23 || m1 > 59 || m2 > 59 || h1 < 0 || h2 < 0 || m1 < 0 || m2 < 0)
    return invalid_err("window '" + s + "' is not HH:MM-HH:MM (UTC, e.g. 22:00-04:00)");
  MaintenanceWindow w;
  w.start_min = h1 * 60 + m1;
  w.end_min = h2 * 60 + m2;
  return w;
}

Result<RolloutPolicy> parse_policy(const json& body) {
  RolloutPolicy p;
  if (body.contains("waves")) {
    const json& ws = body["waves"];
    if (!ws.is_array() || ws.empty() || ws.size() > 100)
      return invalid_err("waves must be a non-empty array of at most 100 waves");
    p.waves.clear();
    for (std::size_t i = 0; i < ws.size(); ++i) {
      const std::string f = "waves[" + std::to_string(i) + "]";
      const json& w = ws[i];
      if (!w.is_object()) return invalid_err(f + " must be an object like {\"size\":\"10%\"}");
      WaveSpec spec;
      auto sz = w.find("size");
      if (sz == w.end()) return invalid_err(f + ".size is required (\"10%\" or a count)");
      if (sz->is_string()) {
        const std::string s = sz->get<std::string>();
        char* end = nullptr;
        const double v = std::strtod(s.c_str(), &end);
        if (s.empty() || s.back() != '%' || end != s.c_str() + s.size() - 1 || !(v > 0) ||
            v > 100)
          return invalid_err(f + ".size '" + s + "' is not a percentage in (0, 100] like \"10%\"");
        spec.percent = true;
        spec.size = v;
      } else if (sz->is_number_integer() && sz->get<long long>() > 0 &&
                 sz->get<long long>() <= 1000000) {
        spec.percent = false;
        spec.size = static_cast<double>(sz->get<long long>());
      } else {
        return invalid_err(f + ".size " + sz->dump() +
                           " must be a percentage string (\"10%\") or a positive count");
      }
      if (w.contains("success_threshold") && !w["success_threshold"].is_null()) {
        auto t = parse_pct(w["success_threshold"], f + ".success_threshold");
        if (!t) return t.err();
        spec.success_threshold = *t;
      }
      if (w.contains("soak")) {
        auto s = parse_duration(w["soak"], f + ".soak");
        if (!s) return s.err();
        spec.soak_s = *s;
      }
      for (auto it = w.begin(); it != w.end(); ++it)
        if (it.key() != "size" && it.key() != "success_threshold" && it.key() != "soak")
          return invalid_err(f + ": unknown field \"" + it.key() +
                             "\" (size, success_threshold, soak)");
      p.waves.push_back(spec);
    }
  }
  if (body.contains("failure")) {
    const json& f = body["failure"];
    if (!f.is_object()) return invalid_err("failure must be an object");
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
          return invalid_err("failure.action must be \"pause\" or \"abort\"");
        p.abort_on_failure = it->get<std::string>() == "abort";
      } else {
        return invalid_err("failure: unknown field \"" + it.key() +
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
    auto v = parse_duration(body[key], key);
    if (!v) return v.err();
    *dst = *v;
  }
  if (body.contains("start_at") && !body["start_at"].is_null()) {
    const json& v = body["start_at"];
    if (v.is_number_integer() && v.get<long long>() >= 0) {
      p.start_at_s = v.get<long long>();
    } else if (v.is_string()) {
      auto t = parse_utc_time(v.get<std::string>());
      if (!t)
        return invalid_err("start_at '" + v.get<std::string>() +
                           "' is not a UTC time like 2026-11-26T02:00:00Z");
      p.start_at_s = *t;
    } else {
      return invalid_err("start_at must be unix seconds or a UTC time like 2026-11-26T02:00:00Z");
    }
  }
  if (body.contains("window") && !body["window"].is_null()) {
    if (!body["window"].is_string()) return invalid_err("window must be a string HH:MM-HH:MM");
    auto w = parse_window(body["window"].get<std::string>());
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

// ---------------------------------------------------------------------------- counting

bool is_in_flight_state(const std::string& s) {
  return s == "offered" || s == "accepted" || s == "downloading" || s == "verifying" ||
         s == "installing" || s == "rebooting" || s == "confirming";
}

std::string count_bucket(const std::string& s) {
  if (s == "accepted" || s == "downloading" || s == "verifying") return "downloading";
  if (s == "installing" || s == "rebooting" || s == "confirming") return "installing";
  return s;
}

const std::vector<std::string>& count_buckets() {
  static const std::vector<std::string> b{"pending",   "deferred", "offered",  "downloading",
                                          "installing", "succeeded", "failed", "declined",
                                          "timed_out", "cancelled"};
  return b;
}

bool is_terminal_rollout_state(const std::string& s) {
  return s == "completed" || s == "aborted";
}

bool row_is_final(const RolloutRow& r, const RolloutPolicy& p) {
  if (r.state == "succeeded" || r.state == "declined" || r.state == "cancelled") return true;
  return is_failure_state(r.state) && r.attempt >= total_attempts(r, p);
}

double WaveCounts::success_rate() const {
  const int denom = devices - declined;
  return denom > 0 ? 100.0 * succeeded / denom : 100.0;
}

double WaveCounts::failure_rate() const { return devices ? 100.0 * failed / devices : 0.0; }

std::vector<WaveCounts> wave_counts(const std::vector<RolloutRow>& rows, const RolloutPolicy& p) {
  std::vector<WaveCounts> out(p.waves.size());
  for (const auto& r : rows) {
    if (r.wave < 0 || static_cast<std::size_t>(r.wave) >= out.size()) continue;
    WaveCounts& c = out[static_cast<std::size_t>(r.wave)];
    c.devices++;
    if (is_in_flight_state(r.state)) c.in_flight++;
    if (!row_is_final(r, p)) continue;
    c.final_count++;
    if (r.state == "succeeded") c.succeeded++;
    else if (r.state == "declined") c.declined++;
    else if (is_failure_state(r.state)) c.failed++;
  }
  return out;
}

std::vector<RolloutRow> assign_waves(const std::string& rollout_id,
                                     const std::vector<std::string>& devices,
                                     const RolloutPolicy& p) {
  std::vector<std::pair<std::string, std::string>> keyed;  // (hash, device)
  for (const auto& d : std::set<std::string>(devices.begin(), devices.end())) {
    const std::string in = rollout_id + "/" + d;
    unsigned char md[SHA256_DIGEST_LENGTH];
    SHA256(reinterpret_cast<const unsigned char*>(in.data()), in.size(), md);
    keyed.emplace_back(std::string(reinterpret_cast<char*>(md), sizeof md), d);
  }
  std::sort(keyed.begin(), keyed.end());
  std::vector<RolloutRow> rows;
  std::size_t next = 0;
  const std::size_t n = keyed.size();
  for (std::size_t w = 0; w < p.waves.size() && next < n; ++w) {
    const std::size_t remaining = n - next;
    std::size_t take;
    if (w + 1 == p.waves.size()) {
      take = remaining;
    } else if (p.waves[w].percent) {
      take = static_cast<std::size_t>(std::ceil(p.waves[w].size * static_cast<double>(remaining) / 100.0 - 1e-9));
    } else {
      take = static_cast<std::size_t>(p.waves[w].size);
    }
    take = std::max<std::size_t>(1, std::min(take, remaining));
    for (std::size_t i = 0; i < take; ++i, ++next) {
      RolloutRow r;
      r.device = keyed[next].second;
      r.wave = static_cast<int>(w);
      r.order = static_cast<int>(next);
      r.changed = true;
      rows.push_back(r);
    }
  }
  return rows;
}

// --------------------------------------------------------------------------------- tick

namespace {

void set_state(RolloutRow& r, const std::string& state, const std::string& reason) {
  r.state = state;
  r.reason = reason;
  r.changed = true;
}

void abort_rows(std::vector<RolloutRow>& rows, const std::string& why,
                std::vector<EngineAction>& out) {
  for (auto& r : rows) {
    if (r.state == "pending" || r.state == "deferred") {
      set_state(r, "cancelled", "not offered: " + why);
    } else if (r.state == "offered" || r.state == "accepted" || r.state == "downloading" ||
               r.state == "verifying") {
      EngineAction c;
      c.kind = EngineAction::Kind::cancel;
      c.device = r.device;
      c.attempt = r.attempt;
      c.detail = why;
      out.push_back(c);
      set_state(r, "cancelled", why + " (was " + r.state + "; keeps its running image)");
    }
    // installing/rebooting/confirming cannot be stopped safely: they finish and report.
  }
}

}  // namespace

std::vector<EngineAction> tick(RolloutState& st, std::vector<RolloutRow>& rows,
                               const RolloutPolicy& p, long long now) {
  std::vector<EngineAction> out;
  if (st.state == "draft" || st.state == "completed") return out;
  if (st.state == "scheduled") {
    if (now < p.start_at_s * 1000) return out;
    st.state = "running";
    st.current_wave = 0;
    st.wave_started_ms = now;
    st.threshold_met_ms = 0;
    out.push_back(log_action("rollout_started", "start time reached; wave 1/" +
                                                    std::to_string(p.waves.size()) + " started"));
  }

  // Timeouts apply in every live state: a device that never answers must not hold a wave.
  if (p.timeout_s > 0) {
    for (auto& r : rows) {
      if (!is_in_flight_state(r.state) || now - r.offered_at_ms < p.timeout_s * 1000) continue;
      EngineAction c;
      c.kind = EngineAction::Kind::cancel;
      c.device = r.device;
      c.attempt = r.attempt;
      c.detail = "timed out";
      out.push_back(c);
      const std::string was = r.state;
      set_state(r, "timed_out",
                "no result within " + duration_text(p.timeout_s) + " (last state " + was + ")");
      out.push_back(log_action("device_timed_out", "attempt " + std::to_string(r.attempt) +
                                                       ": " + r.reason, r.device));
    }
  }
  if (st.state == "aborted") return out;

  // Failed attempts with attempts left go back to pending after the retry delay.
  for (auto& r : rows) {
    if (!is_failure_state(r.state) || r.attempt >= total_attempts(r, p)) continue;
    const std::string why = r.reason;
    set_state(r, "pending",
              "retry " + std::to_string(r.attempt + 1) + "/" + std::to_string(total_attempts(r, p)) +
                  " after: " + why);
    r.next_at_ms = now + p.retry_delay_s * 1000;
    out.push_back(log_action("device_retry_scheduled",
                             "attempt " + std::to_string(r.attempt + 1) + " in " +
                                 duration_text(p.retry_delay_s) + " after: " + why,
                             r.device));
  }

  // Failure policy over the started waves the operator has not accepted.
  const auto counts = wave_counts(rows, p);
  if (st.state == "running" || st.state == "paused") {
    int fails = 0, devs = 0;
    std::string tripped;
    for (int w = 0; w <= st.current_wave && w < static_cast<int>(counts.size()); ++w) {
      if (w <= st.accepted_through) continue;
      const WaveCounts& c = counts[static_cast<std::size_t>(w)];
      fails += c.failed;
      devs += c.devices;
      if (tripped.empty() && c.failed > 0 && c.failure_rate() > p.max_wave_failure_pct)
        tripped = "wave " + std::to_string(w + 1) + " failure rate " + pct_text(c.failure_rate()) +
                  " (" + std::to_string(c.failed) + "/" + std::to_string(c.devices) +
                  ") exceeds " + pct_text(p.max_wave_failure_pct);
    }
    const double total_rate = devs ? 100.0 * fails / devs : 0.0;
    if (tripped.empty() && fails > 0 && total_rate > p.max_total_failure_pct)
      tripped = "overall failure rate " + pct_text(total_rate) + " (" + std::to_string(fails) +
                "/" + std::to_string(devs) + ") exceeds " + pct_text(p.max_total_failure_pct);
    if (!tripped.empty() && p.abort_on_failure) {
      st.state = "aborted";
      st.pause_reason = tripped;
      st.paused_by = "policy";
      abort_rows(rows, "rollout aborted by failure policy", out);
      out.push_back(log_action("rollout_aborted", "failure policy: " + tripped));
      return out;
    }
    if (!tripped.empty() && st.state == "running") {
      st.state = "paused";
      st.pause_reason = tripped;
      st.paused_by = "policy";
      out.push_back(log_action("rollout_paused", "failure policy: " + tripped));
      return out;
    }
  }
  if (st.state != "running") return out;

  // Wave progression.
  const int last = static_cast<int>(p.waves.size()) - 1;
  while (st.current_wave >= 0 && st.current_wave <= last) {
    const int w = st.current_wave;
    const WaveCounts& c = counts[static_cast<std::size_t>(w)];
    const WaveSpec& spec = p.waves[static_cast<std::size_t>(w)];
    const bool accepted = w <= st.accepted_through;
    const bool all_final = c.final_count == c.devices;
    if (!accepted && spec.success_threshold < 0 && !all_final) break;
    if (!accepted && c.success_rate() + 1e-9 < spec.success_threshold) {
      if (all_final && c.devices > 0) {
        st.state = "paused";
        st.paused_by = "threshold";
        st.pause_reason = "wave " + std::to_string(w + 1) + " finished with " +
                          pct_text(c.success_rate()) + " succeeded, below its threshold " +
                          pct_text(spec.success_threshold);
        out.push_back(log_action("rollout_paused", st.pause_reason));
        return out;
      }
      break;
    }
    if (w == last) {
      if (!all_final) break;
      st.state = "completed";
      int ok = 0, failed = 0, declined = 0;
      for (const auto& wc : counts) ok += wc.succeeded, failed += wc.failed, declined += wc.declined;
      out.push_back(log_action("rollout_completed",
                               "succeeded " + std::to_string(ok) + ", failed " +
                                   std::to_string(failed) + ", declined " +
                                   std::to_string(declined) + " of " +
                                   std::to_string(rows.size())));
      return out;
    }
    if (st.threshold_met_ms == 0) {
      st.threshold_met_ms = now;
      if (spec.soak_s > 0)
        out.push_back(log_action("wave_soaking", "wave " + std::to_string(w + 1) + " reached " +
                                                     pct_text(c.success_rate()) + "; soaking " +
                                                     duration_text(spec.soak_s)));
    }
    if (now - st.threshold_met_ms < spec.soak_s * 1000) break;
    st.current_wave = w + 1;
    st.wave_started_ms = now;
    st.threshold_met_ms = 0;
    out.push_back(log_action(
        "wave_started", "wave " + std::to_string(w + 2) + "/" + std::to_string(last + 1) + ": " +
                            std::to_string(counts[static_cast<std::size_t>(w + 1)].devices) +
                            " devices (wave " + std::to_string(w + 1) + ": " +
                            pct_text(c.success_rate()) + " succeeded" +
                            (accepted ? ", accepted by operator" : "") + ")"));
  }

  // Offers: started waves in order, up to the concurrency cap, inside the window.
  int in_flight = 0;
  for (const auto& r : rows)
    if (is_in_flight_state(r.state)) in_flight++;
  std::vector<RolloutRow*> due;
  for (auto& r : rows)
    if (r.wave <= st.current_wave && (r.state == "pending" || r.state == "deferred") &&
        r.next_at_ms <= now)
      due.push_back(&r);
  if (due.empty()) return out;
  if (p.window && !p.window->contains(now)) {
    if (!st.held_by_window) {
      st.held_by_window = true;
      out.push_back(log_action("offers_held", std::to_string(due.size()) +
                                                  " devices wait for the maintenance window " +
                                                  p.window->text() + " UTC"));
    }
    return out;
  }
  if (st.held_by_window) {
    st.held_by_window = false;
    out.push_back(log_action("offers_released", "maintenance window " + p.window->text() +
                                                    " UTC opened"));
  }
  std::sort(due.begin(), due.end(), [](const RolloutRow* a, const RolloutRow* b) {
    return a->wave != b->wave ? a->wave < b->wave : a->order < b->order;
  });
  for (RolloutRow* r : due) {
    if (p.max_concurrent > 0 && in_flight >= p.max_concurrent) break;
    // A deferral keeps its attempt (same offer id): the device asks its policy again.
    if (r->state != "deferred" || r->attempt == 0) r->attempt++;
    r->offered_at_ms = now;
    r->next_at_ms = 0;
    set_state(*r, "offered", "");
    in_flight++;
    EngineAction a;
    a.kind = EngineAction::Kind::offer;
    a.device = r->device;
    a.attempt = r->attempt;
    a.detail = "wave " + std::to_string(r->wave + 1) + ", attempt " + std::to_string(r->attempt);
    out.push_back(a);
  }
  return out;
}

// ------------------------------------------------------------------------ operator ops

Result<std::vector<EngineAction>> op_start(RolloutState& st, const RolloutPolicy& p,
                                           long long now) {
  if (st.state != "draft")
    return conflict_err("rollout " + st.id + " is " + st.state + "; only a draft can be started");
  std::vector<EngineAction> out;
  if (p.start_at_s * 1000 > now) {
    st.state = "scheduled";
    out.push_back(log_action("rollout_scheduled", "starts at unix " + std::to_string(p.start_at_s)));
    return out;
  }
  st.state = "running";
  st.current_wave = 0;
  st.wave_started_ms = now;
  st.threshold_met_ms = 0;
  out.push_back(log_action("rollout_started", "wave 1/" + std::to_string(p.waves.size()) + " started"));
  return out;
}

Result<std::vector<EngineAction>> op_pause(RolloutState& st, const std::string& reason) {
  if (st.state != "running" && st.state != "scheduled")
    return conflict_err("rollout " + st.id + " is " + st.state +
                        "; only a running or scheduled rollout can be paused");
  st.state = "paused";
  st.paused_by = "operator";
  st.pause_reason = reason.empty() ? "paused by operator" : reason;
  return std::vector<EngineAction>{log_action("rollout_paused", st.pause_reason)};
}

Result<std::vector<EngineAction>> op_resume(RolloutState& st) {
  if (st.state != "paused")
    return conflict_err("rollout " + st.id + " is " + st.state + "; only a paused rollout can be resumed");
  std::string detail = "resumed";
  if (st.paused_by == "policy" || st.paused_by == "threshold") {
    // The operator looked at the failures and accepts them: the waves so far no longer hold
    // the rollout back, so the next wave starts.
    st.accepted_through = st.current_wave;
    detail += "; failures in waves 1.." + std::to_string(st.current_wave + 1) +
              " accepted (" + st.pause_reason + ")";
  }
  if (st.current_wave < 0) {
    st.state = "scheduled";  // paused before its start time
  } else {
    st.state = "running";
  }
  st.pause_reason.clear();
  st.paused_by.clear();
  return std::vector<EngineAction>{log_action("rollout_resumed", detail)};
}

Result<std::vector<EngineAction>> op_abort(RolloutState& st, std::vector<RolloutRow>& rows,
                                           const std::string& reason) {
  if (is_terminal_rollout_state(st.state))
    return conflict_err("rollout " + st.id + " is already " + st.state);
  std::vector<EngineAction> out;
  const std::string why = reason.empty() ? "rollout aborted by operator" : "rollout aborted: " + reason;
  abort_rows(rows, why, out);
  st.state = "aborted";
  st.paused_by = "operator";
  st.pause_reason = why;
  out.push_back(log_action("rollout_aborted", why));
  return out;
}

Result<std::vector<EngineAction>> op_retry(RolloutState& st, std::vector<RolloutRow>& rows,
                                           const RolloutPolicy& p, long long now) {
  if (st.state == "aborted" || st.state == "draft")
    return conflict_err("rollout " + st.id + " is " + st.state + "; retry applies to a started "
                        "rollout that is not aborted");
  int n = 0;
  for (auto& r : rows) {
    if (!is_failure_state(r.state) || !row_is_final(r, p)) continue;
    r.extra_attempts = r.attempt - p.retries;  // exactly one more attempt from now
    set_state(r, "pending", "retry by operator after: " + r.reason);
    r.next_at_ms = now;
    ++n;
  }
  if (n == 0) return conflict_err("rollout " + st.id + " has no failed or timed-out devices to retry");
  if (st.state == "completed") st.state = "running";
  return std::vector<EngineAction>{
      log_action("rollout_retry", std::to_string(n) + " failed or timed-out devices get one more attempt")};
}

}  // namespace ota::service
