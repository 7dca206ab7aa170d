#include "format.hpp"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <ctime>

namespace otactl {

std::string join(const std::vector<std::string>& v, const std::string& sep) {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : sep) + s;
  return out;
}

std::optional<ota::service::RolloutStatus> rollout_status(const json& rollout) {
  return ota::service::rollout_status_from(jstr(rollout, "state"));
}
std::optional<ota::service::DeploymentState> deployment_state(const json& deployment) {
  return ota::service::deployment_state_from(jstr(deployment, "state"));
}
std::optional<ota::service::RowState> row_state(const json& row) {
  return ota::service::row_state_from(jstr(row, "state"));
}
ota::service::PausedBy paused_by(const json& rollout) {
  return ota::service::paused_by_from(jstr(rollout, "paused_by")).value_or(ota::service::PausedBy::none);
}

std::string jstr(const json& j, const char* key) {
  if (!j.is_object() || !j.contains(key)) return "";
  const json& v = j[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_null()) return "";
  if (v.is_boolean()) return v.get<bool>() ? "yes" : "no";
  if (v.is_array()) {
    std::string out;
    for (const auto& e : v) {
      if (!out.empty()) out += ",";
      out += e.is_string() ? e.get<std::string>() : e.dump();
    }
    return out;
  }
  return v.dump();
}

long long jint(const json& j, const char* key) {
  if (!j.is_object() || !j.contains(key) || !j[key].is_number()) return 0;
  return j[key].get<long long>();
}

double jnum(const json& j, const char* key) {
  if (!j.is_object() || !j.contains(key) || !j[key].is_number()) return 0;
  return j[key].get<double>();
}

bool jhas(const json& j, const char* key) { return j.is_object() && j.contains(key) && !j[key].is_null(); }

const json& jobj(const json& j, const char* key) {
  static const json empty = json::object();
  return j.is_object() && j.contains(key) && j[key].is_object() ? j[key] : empty;
}

namespace {
bool g_local_time = false;  // --local-time; set once before any command runs
}  // namespace

void use_local_time(bool local) {
  g_local_time = local;
}

std::string zone_name() {
  if (!g_local_time) return "UTC";
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  localtime_r(&now, &tm);
  char buf[16];
  return std::strftime(buf, sizeof buf, "%Z", &tm) > 0 ? buf : "local";
}

std::string cell_time(long long secs) {
  if (secs <= 0) return "-";
  std::time_t t = static_cast<std::time_t>(secs);
  std::tm tm{};
  if (g_local_time)
    localtime_r(&t, &tm);
  else
    gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &tm);
  return buf;
}

std::string fmt_time(long long secs) {
  return secs <= 0 ? "-" : cell_time(secs) + " " + zone_name();
}

std::string time_head(const std::string& head) {
  return head + " (" + zone_name() + ")";
}

std::string event_time(long long ts_ms, bool with_date) {
  const std::string t = cell_time(ts_ms / 1000);
  char ms[8];
  std::snprintf(ms, sizeof ms, ".%03lld", ts_ms % 1000);
  return (with_date || t.size() < 11 ? t : t.substr(11)) + ms;
}

std::string fmt_bytes(long long b) {
  char buf[32];
  if (b >= 1024 * 1024)
    std::snprintf(buf, sizeof buf, "%.1f MiB", static_cast<double>(b) / (1024.0 * 1024.0));
  else if (b >= 1024)
    std::snprintf(buf, sizeof buf, "%.1f KiB", static_cast<double>(b) / 1024.0);
  else
    std::snprintf(buf, sizeof buf, "%lld B", b);
  return buf;
}

std::string fmt_pct(double v) {
  char buf[32];
  if (v == static_cast<double>(static_cast<long long>(v)))
    std::snprintf(buf, sizeof buf, "%lld%%", static_cast<long long>(v));
  else
    std::snprintf(buf, sizeof buf, "%.1f%%", v);
  return buf;
}

std::string bar(long long pct, int width) {
  pct = std::clamp(pct, 0LL, 100LL);
  const long long fill = pct * width / 100;
  std::string s = "[";
  for (long long i = 0; i < width; ++i) s += i < fill ? '#' : '-';
  return s + "]";
}

void print_table(const std::vector<std::string>& head, const std::vector<std::vector<std::string>>& rows) {
  std::vector<std::size_t> w(head.size());
  for (std::size_t i = 0; i < head.size(); ++i) w[i] = head[i].size();
  for (const auto& r : rows)
    for (std::size_t i = 0; i < r.size() && i < w.size(); ++i) w[i] = std::max(w[i], r[i].size());
  auto line = [&](const std::vector<std::string>& r) {
    std::string s;
    for (std::size_t i = 0; i < head.size(); ++i) {
      std::string cell = i < r.size() ? r[i] : "";
      s += cell;
      if (i + 1 < head.size()) s += std::string(w[i] - cell.size() + 2, ' ');
    }
    while (!s.empty() && s.back() == ' ') s.pop_back();
    std::printf("%s\n", s.c_str());
  };
  line(head);
  for (const auto& r : rows) line(r);
  if (rows.empty()) std::printf("(none)\n");
}

void print_json(const json& j) { std::printf("%s\n", j.dump(2).c_str()); }

namespace {
// The row states a plain deployment's counts show, in the order of a device's progress.
using ota::service::RowState;
constexpr RowState kShownStates[] = {
    RowState::offered,   RowState::accepted,  RowState::downloading, RowState::verifying,
    RowState::installing, RowState::rebooting, RowState::confirming, RowState::succeeded,
    RowState::failed,    RowState::declined,  RowState::cancelled};
}  // namespace

std::string counts_text(const json& d, bool always_sf) {
  std::string s;
  const json& c = d.contains("counts") ? d["counts"] : json::object();
  for (const RowState state : kShownStates) {
    const char* st = ota::service::to_string(state);
    long long n = c.contains(st) && c[st].is_number() ? c[st].get<long long>() : 0;
    bool always = always_sf && (state == RowState::succeeded || state == RowState::failed);
    if (n == 0 && !always) continue;
    if (!s.empty()) s += "  ";
    s += std::string(st) + " " + std::to_string(n);
  }
  long long pending = jint(d, "pending_members");
  if (pending > 0) s += "  not-yet-seen " + std::to_string(pending);
  return s;
}

std::string progress_line(const json& d) {
  long long pct = std::clamp(jint(d, "percent"), 0LL, 100LL);
  std::string bar = "[";
  for (int i = 0; i < 10; ++i) bar += (i < pct / 10) ? '#' : '.';
  bar += "]";
  char p[16];
  std::snprintf(p, sizeof p, "%3lld%%", pct);
  return bar + " " + p + "  " + counts_text(d, true);
}

}  // namespace otactl
