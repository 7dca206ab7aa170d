// The rollout policy grammar: the text forms of durations, maintenance windows, wave sizes,
// waves and start times, shared by otactl (rollout create) and the controller (POST
// /api/v1/rollouts), so that both accept and refuse the same things. Pure functions, no I/O.
//
// Each parser returns the value, or an error saying what is wrong without naming the field or
// repeating the input: the caller adds those ("--timeout '5y': not a duration (...)",
// "timeout '5y': not a duration (...)").
//
// The rules, where the CLI and the controller used to disagree:
//  * Durations: "90" (seconds) or digits with one unit s, m, h or d ("30s", "5m", "2h", "1d");
//    no sign, fraction, space or combination ("1h30m"); leading zeros are fine. At most
//    kMaxDurationS, 10 years of 366 days (316224000 s), for strings and for numbers alike.
//  * Windows: "HH:MM-HH:MM", 24-hour UTC, exactly two digits each; may wrap past midnight
//    ("22:00-04:00"). Equal start and end ("22:00-22:00") is refused: it could mean an empty
//    window (offers never go out) or the whole day, and the whole day is simply no window
//    (leave the field out), so there is no reason to write one.
//  * Wave sizes: a percentage of the targets not in an earlier wave, "10%" or "2.5%"
//    (0 < p <= 100, plain decimal), or a device count 1..kMaxWaveCount.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace ota::policy {

inline constexpr long long kMaxDurationS = 10LL * 366 * 86400;  // 316224000
inline constexpr long long kMaxWaveCount = 1000000;
inline constexpr long long kMaxUnixTime = 253402300799LL;  // 9999-12-31T23:59:59Z

// A value or why there is none.
template <typename T>
struct Parsed {
  std::optional<T> value;
  std::string error;  // set when !value

  explicit operator bool() const { return value.has_value(); }
  const T& operator*() const { return *value; }
  const T* operator->() const { return &*value; }
};

// Seconds from "90", "30s", "5m", "2h", "1d".
Parsed<long long> parse_duration(std::string_view s);
// A duration given as a number of seconds: 0..kMaxDurationS.
Parsed<long long> check_duration(long long seconds);
// "30s", "5m", "2h", "1d", "90s": the largest unit that divides evenly; "0s" for <= 0.
std::string format_duration(long long seconds);

struct Window {
  int start_min = 0;  // minutes after 00:00 UTC
  int end_min = 0;    // != start_min; < start_min: the window wraps past midnight
};
Parsed<Window> parse_window(std::string_view s);
std::string format_window(const Window& w);  // "22:00-04:00"
// Whether the minute of the day of `unix_ms` is in [start, end), wrapping past midnight.
bool window_contains(const Window& w, long long unix_ms);

struct WaveSize {
  bool percent = true;  // else a device count
  double size = 100;    // percent (0, 100] or count 1..kMaxWaveCount
};
// "10%", "2.5%" or a count "5".
Parsed<WaveSize> parse_wave_size(std::string_view s);
// Just the percentage form (the controller's JSON string sizes): "10%", "2.5%".
Parsed<double> parse_wave_percent(std::string_view s);
// A count given as a number (the controller's JSON integer sizes): 1..kMaxWaveCount.
Parsed<long long> check_wave_count(long long n);

// A success threshold: a plain decimal 0..100, optionally with "%": "90", "97.5", "95%".
Parsed<double> parse_percent(std::string_view s);

// otactl's --wave SIZE[:THRESHOLD[:SOAK]]: "10%:90:5m", "5", "100%::30" (empty parts are
// left out). The error names the part: "success threshold '150' is not a percentage 0..100".
struct Wave {
  std::string size_text;  // as given ("10%"), or the count ("5")
  WaveSize size;
  std::optional<double> success_threshold;
  std::optional<long long> soak_s;
};
Parsed<Wave> parse_wave(std::string_view spec);

// A start time: unix seconds (up to kMaxUnixTime), or ISO 8601 "YYYY-MM-DDTHH:MM[:SS]" ("T"
// may be "t" or a space) followed by "Z" or an offset "+HH:MM" / "-HH:MM". Unix seconds.
Parsed<long long> parse_time(std::string_view s);

}  // namespace ota::policy
