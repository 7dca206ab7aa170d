// otactl argument parsers for rollout policies: durations, wave specs, maintenance windows and
// start times. Header-only so the unit tests can call them directly. Each returns false with
// `why` naming what was wrong (the caller adds the option name and the value).
#pragma once

#include <cctype>
#include <ctime>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace otactl {

// Digits only, no sign, value <= max.
inline bool parse_uint(const std::string& s, long long max, long long& out) {
  if (s.empty() || s.size() > 18) return false;
  long long v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + (c - '0');
  }
  if (v > max) return false;
  out = v;
  return true;
}

// A plain decimal number such as "95" or "97.5" (no sign, no exponent).
inline bool parse_decimal(const std::string& s, double& out) {
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
  out = std::stod(s);
  return true;
}

// Duration: plain seconds ("90") or a count with one unit: "30s", "5m", "2h", "1d".
// At most 10 years.
inline bool parse_duration(const std::string& s, long long& secs, std::string& why) {
  constexpr long long kMax = 10LL * 366 * 86400;
  if (s.empty()) {
    why = "empty duration (expected seconds or a number with s, m, h or d, e.g. 30s, 5m, 2h, 1d)";
    return false;
  }
  long long mult = 1;
  std::string num = s;
  switch (s.back()) {
    case 's': mult = 1; num.pop_back(); break;
    case 'm': mult = 60; num.pop_back(); break;
    case 'h': mult = 3600; num.pop_back(); break;
    case 'd': mult = 86400; num.pop_back(); break;
    default: break;
  }
  long long v = 0;
  if (!parse_uint(num, kMax, v)) {
    why = "not a duration (expected seconds or a number with s, m, h or d, e.g. 30s, 5m, 2h, 1d)";
    return false;
  }
  if (v * mult > kMax) {
    why = "duration too long (at most 10 years)";
    return false;
  }
  secs = v * mult;
  return true;
}

// One wave: SIZE[:THRESHOLD[:SOAK]]. SIZE "10%" (1..100 percent of the remaining targets) or a
// device count "5"; THRESHOLD the success percent needed before the next wave (0..100, default
// none = wait for the whole wave; may be left empty: "10%::5m"); SOAK a duration (default none).
// Fills {"size": "10%" | 5, "success_threshold": N[, "soak": seconds]}.
inline bool parse_wave(const std::string& spec, nlohmann::json& wave, std::string& why) {
  std::vector<std::string> parts;
  std::string::size_type b = 0;
  for (;;) {
    auto c = spec.find(':', b);
    parts.push_back(spec.substr(b, c == std::string::npos ? std::string::npos : c - b));
    if (c == std::string::npos) break;
    b = c + 1;
  }
  if (parts.size() > 3) {
    why = "too many ':' (expected SIZE[:THRESHOLD[:SOAK]], e.g. 10%:90:5m)";
    return false;
  }
  wave = nlohmann::json::object();
  const std::string& size = parts[0];
  long long n = 0;
  if (!size.empty() && size.back() == '%') {
    if (!parse_uint(size.substr(0, size.size() - 1), 100, n) || n < 1) {
      why = "size '" + size + "' is not a percentage 1%..100%";
      return false;
    }
    wave["size"] = size;
  } else if (parse_uint(size, 10000000, n) && n >= 1) {
    wave["size"] = n;
  } else {
    why = "size '" + size +
          "' is neither a percentage of the remaining targets (e.g. 10%) nor a device count (e.g. 5)";
    return false;
  }
  // No threshold: the next wave waits until every device of this one has finished.
  if (parts.size() > 1 && !parts[1].empty()) {
    double threshold = 0;
    std::string t = parts[1];
    if (!t.empty() && t.back() == '%') t.pop_back();
    if (!parse_decimal(t, threshold) || threshold > 100) {
      why = "success threshold '" + parts[1] + "' is not a percentage 0..100";
      return false;
    }
    if (threshold == static_cast<double>(static_cast<long long>(threshold)))
      wave["success_threshold"] = static_cast<long long>(threshold);
    else
      wave["success_threshold"] = threshold;
  }
  if (parts.size() > 2 && !parts[2].empty()) {
    long long soak = 0;
    std::string w;
    if (!parse_duration(parts[2], soak, w)) {
      why = "soak '" + parts[2] + "': " + w;
      return false;
    }
    wave["soak"] = soak;
  }
  return true;
}

// Maintenance window HH:MM-HH:MM (UTC, may wrap past midnight: 22:00-04:00).
inline bool parse_window(const std::string& s, std::string& why) {
  auto hhmm = [](const std::string& t) {
    if (t.size() != 5 || t[2] != ':') return false;
    for (int i : {0, 1, 3, 4})
      if (!std::isdigit(static_cast<unsigned char>(t[static_cast<std::size_t>(i)]))) return false;
    const int h = (t[0] - '0') * 10 + (t[1] - '0');
    const int m = (t[3] - '0') * 10 + (t[4] - '0');
    return h <= 23 && m <= 59;
  };
  if (s.size() != 11 || s[5] != '-' || !hhmm(s.substr(0, 5)) || !hhmm(s.substr(6))) {
    why = "not a window HH:MM-HH:MM (24-hour UTC, e.g. 22:00-04:00)";
    return false;
  }
  if (s.substr(0, 5) == s.substr(6)) {
    why = "window start and end are the same time";
    return false;
  }
  return true;
}

// Start time: unix seconds, or ISO 8601 "YYYY-MM-DDTHH:MM[:SS]" followed by "Z" or "+HH:MM" /
// "-HH:MM" ("T" may be a space). Gives unix seconds.
inline bool parse_time(const std::string& s, long long& unix_secs, std::string& why) {
  if (parse_uint(s, 253402300799LL, unix_secs)) return true;  // up to 9999-12-31
  why = "not a time (expected unix seconds or YYYY-MM-DDTHH:MM[:SS]Z, e.g. 2026-11-26T02:00:00Z)";
  auto num = [&](std::size_t pos, std::size_t len, int& out) {
    if (pos + len > s.size()) return false;
    out = 0;
    for (std::size_t i = pos; i < pos + len; ++i) {
      if (!std::isdigit(static_cast<unsigned char>(s[i]))) return false;
      out = out * 10 + (s[i] - '0');
    }
    return true;
  };
  int Y, M, D, h, m, sec = 0;
  if (!num(0, 4, Y) || s.size() < 16 || s[4] != '-' || !num(5, 2, M) || s[7] != '-' ||
      !num(8, 2, D) || (s[10] != 'T' && s[10] != 't' && s[10] != ' ') || !num(11, 2, h) ||
      s[13] != ':' || !num(14, 2, m))
    return false;
  std::size_t p = 16;
  if (p < s.size() && s[p] == ':') {
    if (!num(p + 1, 2, sec)) return false;
    p += 3;
  }
  long long offset = 0;
  if (p < s.size() && (s[p] == 'Z' || s[p] == 'z') && p + 1 == s.size()) {
    // UTC
  } else if (p < s.size() && (s[p] == '+' || s[p] == '-') && p + 6 == s.size() && s[p + 3] == ':') {
    int oh, om;
    if (!num(p + 1, 2, oh) || !num(p + 4, 2, om) || oh > 23 || om > 59) return false;
    offset = (s[p] == '-' ? -1 : 1) * (oh * 3600LL + om * 60LL);
  } else {
    why = "time needs a zone: end it with Z (UTC) or +HH:MM (e.g. 2026-11-26T02:00:00Z)";
    return false;
  }
  static const int kDays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  const bool leap = (Y % 4 == 0 && Y % 100 != 0) || Y % 400 == 0;
  if (Y < 1970 || M < 1 || M > 12 || D < 1 || D > kDays[M - 1] || (M == 2 && D == 29 && !leap) ||
      h > 23 || m > 59 || sec > 59) {
    why = "date or time out of range";
    return false;
  }
  std::tm tm{};
  tm.tm_year = Y - 1900;
  tm.tm_mon = M - 1;
  tm.tm_mday = D;
  tm.tm_hour = h;
  tm.tm_min = m;
  tm.tm_sec = sec;
  unix_secs = static_cast<long long>(timegm(&tm)) - offset;
  return true;
}

// "30s", "5m", "2h", "1d", "90s" (the largest unit that divides evenly).
inline std::string fmt_duration(long long s) {
  if (s <= 0) return "0s";
  if (s % 86400 == 0) return std::to_string(s / 86400) + "d";
  if (s % 3600 == 0) return std::to_string(s / 3600) + "h";
  if (s % 60 == 0) return std::to_string(s / 60) + "m";
  return std::to_string(s) + "s";
}

// An age for people: "12s", "5m", "3h", "2d".
inline std::string fmt_age(long long s) {
  if (s < 0) s = 0;
  if (s < 60) return std::to_string(s) + "s";
  if (s < 3600) return std::to_string(s / 60) + "m";
  if (s < 86400) return std::to_string(s / 3600) + "h";
  return std::to_string(s / 86400) + "d";
}

}  // namespace otactl
