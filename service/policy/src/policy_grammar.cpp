#include "ota/policy/policy_grammar.hpp"

#include <cstdio>
#include <ctime>
#include <string>
#include <utility>
#include <vector>

namespace ota::policy {

namespace {

template <typename T>
Parsed<T> fail(std::string why) {
  Parsed<T> p;
  p.error = std::move(why);
  return p;
}

template <typename T>
Parsed<T> ok(T v) {
  Parsed<T> p;
  p.value = std::move(v);
  return p;
}

bool all_digits(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s)
    if (c < '0' || c > '9') return false;
  return true;
}

// Digits only (no sign), value <= max; leading zeros are fine. False also when empty.
bool parse_uint(std::string_view s, long long max, long long& out) {
  if (!all_digits(s)) return false;
  long long v = 0;
  for (char c : s) {
    v = v * 10 + (c - '0');
    if (v > max) return false;
  }
  out = v;
  return true;
}

// A plain decimal such as "95" or "97.5": digits with at most one '.', no sign, no exponent.
bool parse_decimal(std::string_view s, double& out) {
  if (s.empty() || s.size() > 24) return false;
  bool dot = false, digit = false;
  for (char c : s) {
    if (c == '.') {
      if (dot) return false;
      dot = true;
    } else if (c >= '0' && c <= '9') {
      digit = true;
    } else {
      return false;
    }
  }
  if (!digit) return false;
  out = std::stod(std::string(s));
  return true;
}

constexpr const char* kNotDuration =
    "not a duration (expected seconds or a number with s, m, h or d, e.g. 30s, 5m, 2h, 1d)";
constexpr const char* kTooLong = "duration too long (at most 10 years)";
constexpr const char* kNotWavePercent = "not a percentage over 0% and up to 100% (e.g. 10%, 2.5%)";
constexpr const char* kNotWaveCount = "not a device count 1..1000000";

std::vector<std::string_view> split(std::string_view s, char sep) {
  std::vector<std::string_view> parts;
  for (;;) {
    const auto c = s.find(sep);
    parts.push_back(s.substr(0, c));
    if (c == std::string_view::npos) return parts;
    s.remove_prefix(c + 1);
  }
}

}  // namespace

// ------------------------------------------------------------------------------ durations

Parsed<long long> parse_duration(std::string_view s) {
  if (s.empty())
    return fail<long long>("empty duration (expected seconds or a number with s, m, h or d, e.g. 30s, 5m, 2h, 1d)");
  std::string_view num = s;
  long long unit = 1;  // no suffix: seconds
  switch (s.back()) {
    case 's': num.remove_suffix(1); break;
    case 'm': unit = 60; num.remove_suffix(1); break;
    case 'h': unit = 3600; num.remove_suffix(1); break;
    case 'd': unit = 86400; num.remove_suffix(1); break;
    default: break;
  }
  if (!all_digits(num)) return fail<long long>(kNotDuration);
  long long v = 0;
  if (!parse_uint(num, kMaxDurationS, v) || v * unit > kMaxDurationS) return fail<long long>(kTooLong);
  return ok(v * unit);
}

Parsed<long long> check_duration(long long seconds) {
  if (seconds < 0) return fail<long long>("a duration must not be negative");
  if (seconds > kMaxDurationS) return fail<long long>(kTooLong);
  return ok(seconds);
}

std::string format_duration(long long s) {
  if (s <= 0) return "0s";
  if (s % 86400 == 0) return std::to_string(s / 86400) + "d";
  if (s % 3600 == 0) return std::to_string(s / 3600) + "h";
  if (s % 60 == 0) return std::to_string(s / 60) + "m";
  return std::to_string(s) + "s";
}

// -------------------------------------------------------------------------------- windows

Parsed<Window> parse_window(std::string_view s) {
  auto hhmm = [](std::string_view t, int& minutes) {
    if (t.size() != 5 || t[2] != ':' || !all_digits(t.substr(0, 2)) || !all_digits(t.substr(3))) return false;
    const int h = (t[0] - '0') * 10 + (t[1] - '0');
    const int m = (t[3] - '0') * 10 + (t[4] - '0');
    minutes = h * 60 + m;
    return h <= 23 && m <= 59;
  };
  Window w;
  if (s.size() != 11 || s[5] != '-' || !hhmm(s.substr(0, 5), w.start_min) || !hhmm(s.substr(6), w.end_min))
    return fail<Window>("not a window HH:MM-HH:MM (24-hour UTC, e.g. 22:00-04:00)");
  if (w.start_min == w.end_min) return fail<Window>("window start and end are the same time");
  return ok(w);
}

std::string format_window(const Window& w) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%02d:%02d-%02d:%02d", w.start_min / 60, w.start_min % 60, w.end_min / 60,
                w.end_min % 60);
  return buf;
}

bool window_contains(const Window& w, long long unix_ms) {
  const long long day_ms = 86400000LL;
  const int m = static_cast<int>(((unix_ms % day_ms) + day_ms) % day_ms / 60000);
  if (w.start_min == w.end_min) return true;  // never parsed; kept as the controller read it
  if (w.start_min < w.end_min) return m >= w.start_min && m < w.end_min;
  return m >= w.start_min || m < w.end_min;
}

// ---------------------------------------------------------------------------------- waves

Parsed<double> parse_wave_percent(std::string_view s) {
  double v = 0;
  if (s.empty() || s.back() != '%' || !parse_decimal(s.substr(0, s.size() - 1), v) || !(v > 0) || v > 100)
    return fail<double>(kNotWavePercent);
  return ok(v);
}

Parsed<long long> check_wave_count(long long n) {
  if (n < 1 || n > kMaxWaveCount) return fail<long long>(kNotWaveCount);
  return ok(n);
}

Parsed<WaveSize> parse_wave_size(std::string_view s) {
  if (!s.empty() && s.back() == '%') {
    auto p = parse_wave_percent(s);
    if (!p) return fail<WaveSize>(p.error);
    return ok(WaveSize{true, *p});
  }
  if (!all_digits(s))
    return fail<WaveSize>("neither a percentage of the remaining targets (e.g. 10%) nor a device count (e.g. 5)");
  long long n = 0;
  if (!parse_uint(s, kMaxWaveCount, n) || n < 1) return fail<WaveSize>(kNotWaveCount);
  return ok(WaveSize{false, static_cast<double>(n)});
}

Parsed<double> parse_percent(std::string_view s) {
  if (!s.empty() && s.back() == '%') s.remove_suffix(1);
  double v = 0;
  if (!parse_decimal(s, v) || v > 100) return fail<double>("not a percentage 0..100");
  return ok(v);
}

Parsed<Wave> parse_wave(std::string_view spec) {
  const std::vector<std::string_view> parts = split(spec, ':');
  if (parts.size() > 3) return fail<Wave>("too many ':' (expected SIZE[:THRESHOLD[:SOAK]], e.g. 10%:90:5m)");
  Wave w;
  w.size_text = std::string(parts[0]);
  auto size = parse_wave_size(parts[0]);
  if (!size) return fail<Wave>("size '" + w.size_text + "' is " + size.error);
  w.size = *size;
  // No threshold: the next wave waits until every device of this one has finished.
  if (parts.size() > 1 && !parts[1].empty()) {
    auto t = parse_percent(parts[1]);
    if (!t) return fail<Wave>("success threshold '" + std::string(parts[1]) + "' is " + t.error);
    w.success_threshold = *t;
  }
  if (parts.size() > 2 && !parts[2].empty()) {
    auto soak = parse_duration(parts[2]);
    if (!soak) return fail<Wave>("soak '" + std::string(parts[2]) + "': " + soak.error);
    w.soak_s = *soak;
  }
  return ok(std::move(w));
}

// ------------------------------------------------------------------------------ start time

Parsed<long long> parse_time(std::string_view s) {
  long long unix_secs = 0;
  if (parse_uint(s, kMaxUnixTime, unix_secs)) return ok(unix_secs);
  const auto bad = [] {
    return fail<long long>("not a time (expected unix seconds or YYYY-MM-DDTHH:MM[:SS]Z, e.g. 2026-11-26T02:00:00Z)");
  };
  auto num = [&](std::size_t pos, std::size_t len, int& out) {
    if (pos + len > s.size() || !all_digits(s.substr(pos, len))) return false;
    out = 0;
    for (std::size_t i = pos; i < pos + len; ++i) out = out * 10 + (s[i] - '0');
    return true;
  };
  int Y, M, D, h, m, sec = 0;
  if (!num(0, 4, Y) || s.size() < 16 || s[4] != '-' || !num(5, 2, M) || s[7] != '-' || !num(8, 2, D) ||
      (s[10] != 'T' && s[10] != 't' && s[10] != ' ') || !num(11, 2, h) || s[13] != ':' || !num(14, 2, m))
    return bad();
  std::size_t p = 16;
  if (p < s.size() && s[p] == ':') {
    if (!num(p + 1, 2, sec)) return bad();
    p += 3;
  }
  long long offset = 0;
  if (p < s.size() && (s[p] == 'Z' || s[p] == 'z') && p + 1 == s.size()) {
    // UTC
  } else if (p < s.size() && (s[p] == '+' || s[p] == '-') && p + 6 == s.size() && s[p + 3] == ':') {
    int oh, om;
    if (!num(p + 1, 2, oh) || !num(p + 4, 2, om) || oh > 23 || om > 59) return bad();
    offset = (s[p] == '-' ? -1 : 1) * (oh * 3600LL + om * 60LL);
  } else {
    return fail<long long>("time needs a zone: end it with Z (UTC) or +HH:MM (e.g. 2026-11-26T02:00:00Z)");
  }
  static const int kDays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  const bool leap = (Y % 4 == 0 && Y % 100 != 0) || Y % 400 == 0;
  if (Y < 1970 || M < 1 || M > 12 || D < 1 || D > kDays[M - 1] || (M == 2 && D == 29 && !leap) || h > 23 ||
      m > 59 || sec > 59)
    return fail<long long>("date or time out of range");
  std::tm tm{};
  tm.tm_year = Y - 1900;
  tm.tm_mon = M - 1;
  tm.tm_mday = D;
  tm.tm_hour = h;
  tm.tm_min = m;
  tm.tm_sec = sec;
  return ok(static_cast<long long>(timegm(&tm)) - offset);
}

}  // namespace ota::policy
