// The rollout policy grammar's test table (service/policy/include/ota/policy/policy_grammar.hpp):
// one list of inputs with the outcome every parser of that grammar must give, otactl's and the
// controller's alike. A side plugs its parser in with an adapter returning an Outcome:
//
//   policy_table::expect_durations([](const std::string& in) {
//     auto r = ota::service::parse_duration(nlohmann::json(in), "timeout");
//     return policy_table::Outcome{r.ok(), r.ok() ? *r : 0, r.ok() ? "" : r.error()};
//   });
//
// An error must contain the row's substring (the caller may add the field and the input).
#pragma once

#include <gtest/gtest.h>

#include <cstddef>
#include <iterator>
#include <string>

namespace policy_table {

struct Outcome {
  bool ok = false;
  double value = 0;     // seconds, percent, count, unix seconds, or start_min * 10000 + end_min
  std::string error;    // when !ok
};

struct Row {
  const char* input;
  bool ok;
  double value;       // when ok
  const char* error;  // when !ok: a substring of the error
};

// Durations as text (--timeout, "timeout": "5m", a wave's soak).
inline const Row kDurations[] = {
    {"90", true, 90, ""},
    {"30s", true, 30, ""},
    {"5m", true, 300, ""},
    {"2h", true, 7200, ""},
    {"1d", true, 86400, ""},
    {"0", true, 0, ""},
    {"0s", true, 0, ""},
    {"007m", true, 420, ""},
    {"316224000", true, 316224000, ""},  // the cap: 10 years of 366 days
    {"3660d", true, 316224000, ""},
    {"87840h", true, 316224000, ""},
    {"5270400m", true, 316224000, ""},
    {"316224001", false, 0, "too long"},
    {"3661d", false, 0, "too long"},
    {"87841h", false, 0, "too long"},
    {"999999999", false, 0, "too long"},  // 9 digits: was accepted by the controller
    {"999999999d", false, 0, "too long"},
    {"99999999999d", false, 0, "too long"},
    {"99999999999999999999999999", false, 0, "too long"},
    {"", false, 0, "empty duration"},
    {"s", false, 0, "not a duration"},
    {"5y", false, 0, "not a duration"},
    {"5M", false, 0, "not a duration"},
    {"-5", false, 0, "not a duration"},
    {"-5m", false, 0, "not a duration"},
    {"+5", false, 0, "not a duration"},
    {"1.5h", false, 0, "not a duration"},
    {"5 m", false, 0, "not a duration"},
    {" 5m", false, 0, "not a duration"},
    {"5m ", false, 0, "not a duration"},
    {"1h30m", false, 0, "not a duration"},
    {"0x10", false, 0, "not a duration"},
    {"soon", false, 0, "not a duration"},
};

// Durations as JSON numbers of seconds (the controller only).
struct SecondsRow {
  long long input;
  bool ok;
  const char* error;
};
inline const SecondsRow kDurationSeconds[] = {
    {0, true, ""},
    {90, true, ""},
    {316224000, true, ""},
    {316224001, false, "too long"},
    {-1, false, "negative"},
};

// Maintenance windows; value = start_min * 10000 + end_min.
inline const Row kWindows[] = {
    {"22:00-04:00", true, 1320 * 10000 + 240, ""},
    {"00:00-23:59", true, 0 * 10000 + 1439, ""},
    {"09:00-10:00", true, 540 * 10000 + 600, ""},
    {"23:59-00:00", true, 1439 * 10000 + 0, ""},
    {"22:00-22:00", false, 0, "same"},  // equal start and end: refused on both sides
    {"00:00-00:00", false, 0, "same"},
    {"10:00-10:00", false, 0, "same"},
    {"", false, 0, "HH:MM-HH:MM"},
    {"22:00", false, 0, "HH:MM-HH:MM"},
    {"24:00-01:00", false, 0, "HH:MM-HH:MM"},
    {"22:60-01:00", false, 0, "HH:MM-HH:MM"},
    {"2:00-4:00", false, 0, "HH:MM-HH:MM"},
    {"+2:00-04:00", false, 0, "HH:MM-HH:MM"},
    {" 2:00-04:00", false, 0, "HH:MM-HH:MM"},
    {"22:00_04:00", false, 0, "HH:MM-HH:MM"},
    {"22:00-04:00 ", false, 0, "HH:MM-HH:MM"},
    {"9-17", false, 0, "HH:MM-HH:MM"},
};

// Wave sizes given as a percentage string ("size": "10%"; otactl --wave 10%).
inline const Row kWavePercents[] = {
    {"10%", true, 10, ""},
    {"2.5%", true, 2.5, ""},
    {"0.5%", true, 0.5, ""},
    {"100%", true, 100, ""},
    {"010%", true, 10, ""},
    {"0%", false, 0, "percentage"},
    {"0.0%", false, 0, "percentage"},
    {"101%", false, 0, "percentage"},
    {"100.5%", false, 0, "percentage"},
    {"%", false, 0, "percentage"},
    {"-5%", false, 0, "percentage"},
    {"+5%", false, 0, "percentage"},
    {" 5%", false, 0, "percentage"},
    {"1e1%", false, 0, "percentage"},
    {"5%%", false, 0, "percentage"},
    {"10 %", false, 0, "percentage"},
    {"abc%", false, 0, "percentage"},
};

// Wave sizes given as a device count (the controller's JSON integers; otactl --wave 5).
inline const SecondsRow kWaveCounts[] = {
    {1, true, ""},
    {5, true, ""},
    {1000000, true, ""},
    {0, false, "device count"},
    {-1, false, "device count"},
    {1000001, false, "device count"},  // otactl used to allow 10000000
};

// Start times as text; value = unix seconds.
inline const Row kTimes[] = {
    {"2026-11-26T02:00:00Z", true, 1795658400, ""},
    {"2026-11-26T02:00Z", true, 1795658400, ""},
    {"2026-11-26T03:00:00+01:00", true, 1795658400, ""},
    {"2026-11-26t01:00:00-01:00", true, 1795658400, ""},
    {"1795658400", true, 1795658400, ""},
    {"2024-02-29 23:30:15+02:30", true, 1709240415, ""},
    {"", false, 0, "not a time"},
    {"now", false, 0, "not a time"},
    {"-5", false, 0, "not a time"},
    {"2026-11-26", false, 0, "not a time"},
    {"2026-11-26T02:00", false, 0, "zone"},
    {"2026-11-26T02:00:00+1:00", false, 0, "zone"},
    {"2025-02-29T00:00Z", false, 0, "range"},
    {"2026-02-31T00:00:00Z", false, 0, "range"},
    {"2026-13-01T00:00Z", false, 0, "range"},
    {"2026-11-26T24:00Z", false, 0, "range"},
    {"2026-11-26T02:00:60Z", false, 0, "range"},
    {"1969-12-31T23:59:59Z", false, 0, "range"},
};

template <typename Parse>
void expect_rows(const char* what, const Row* rows, std::size_t n, Parse parse) {
  for (std::size_t i = 0; i < n; ++i) {
    const Row& row = rows[i];
    const Outcome out = parse(std::string(row.input));
    EXPECT_EQ(out.ok, row.ok) << what << " '" << row.input << "': " << out.error;
    if (out.ok && row.ok) {
      EXPECT_DOUBLE_EQ(out.value, row.value) << what << " '" << row.input << "'";
    }
    if (!out.ok && !row.ok) {
      EXPECT_NE(out.error.find(row.error), std::string::npos)
          << what << " '" << row.input << "': no '" << row.error << "' in: " << out.error;
    }
  }
}

template <typename Parse>
void expect_numbers(const char* what, const SecondsRow* rows, std::size_t n, Parse parse) {
  for (std::size_t i = 0; i < n; ++i) {
    const SecondsRow& row = rows[i];
    const Outcome out = parse(row.input);
    EXPECT_EQ(out.ok, row.ok) << what << " " << row.input << ": " << out.error;
    if (out.ok && row.ok) {
      EXPECT_DOUBLE_EQ(out.value, static_cast<double>(row.input)) << what << " " << row.input;
    }
    if (!out.ok && !row.ok) {
      EXPECT_NE(out.error.find(row.error), std::string::npos)
          << what << " " << row.input << ": no '" << row.error << "' in: " << out.error;
    }
  }
}

// `parse(std::string)` -> Outcome for each table.
template <typename Parse>
void expect_durations(Parse parse) {
  expect_rows("duration", kDurations, std::size(kDurations), parse);
}
template <typename Parse>
void expect_windows(Parse parse) {
  expect_rows("window", kWindows, std::size(kWindows), parse);
}
template <typename Parse>
void expect_wave_percents(Parse parse) {
  expect_rows("wave size", kWavePercents, std::size(kWavePercents), parse);
}
template <typename Parse>
void expect_times(Parse parse) {
  expect_rows("start time", kTimes, std::size(kTimes), parse);
}
// `parse(long long)` -> Outcome.
template <typename Parse>
void expect_duration_seconds(Parse parse) {
  expect_numbers("duration seconds", kDurationSeconds, std::size(kDurationSeconds), parse);
}
template <typename Parse>
void expect_wave_counts(Parse parse) {
  expect_numbers("wave count", kWaveCounts, std::size(kWaveCounts), parse);
}

}  // namespace policy_table
