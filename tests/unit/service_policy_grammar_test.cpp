// The rollout policy grammar (service/policy) against its table, directly and as otactl uses
// it: the parsers otactl's rollout create calls, and the built otactl itself.
#include <sys/wait.h>

#include <cstdio>
#include <string>

#include "../../service/cli/args.hpp"
#include "ota/policy/policy_grammar.hpp"
#include "ota/service/rollout_policy.hpp"
#include "service_policy_grammar_table.hpp"

namespace {

using policy_table::Outcome;
namespace policy = ota::policy;

template <typename T>
Outcome outcome(const policy::Parsed<T>& p) {
  return Outcome{static_cast<bool>(p), p ? static_cast<double>(*p) : 0, p.error};
}

Outcome window_outcome(const policy::Parsed<policy::Window>& w) {
  return Outcome{static_cast<bool>(w), w ? w->start_min * 10000.0 + w->end_min : 0, w.error};
}

TEST(PolicyGrammar, Durations) {
  policy_table::expect_durations([](const std::string& in) { return outcome(policy::parse_duration(in)); });
  policy_table::expect_duration_seconds([](long long s) { return outcome(policy::check_duration(s)); });
  EXPECT_EQ(policy::format_duration(300), "5m");
  EXPECT_EQ(policy::format_duration(90), "90s");
  EXPECT_EQ(policy::format_duration(86400), "1d");
  EXPECT_EQ(policy::format_duration(7200), "2h");
  EXPECT_EQ(policy::format_duration(0), "0s");
  for (const auto& row : policy_table::kDurations) {  // what is printed reads back the same
    if (auto d = policy::parse_duration(row.input)) {
      EXPECT_EQ(*policy::parse_duration(policy::format_duration(*d)), *d) << row.input;
    }
  }
}

TEST(PolicyGrammar, Windows) {
  policy_table::expect_windows([](const std::string& in) { return window_outcome(policy::parse_window(in)); });
  auto w = policy::parse_window("22:00-04:00");
  ASSERT_TRUE(w);
  EXPECT_EQ(policy::format_window(*w), "22:00-04:00");
  const long long day = 86400000LL, hour = 3600000LL;
  EXPECT_TRUE(policy::window_contains(*w, 23 * hour));
  EXPECT_TRUE(policy::window_contains(*w, day + 3 * hour));
  EXPECT_FALSE(policy::window_contains(*w, day + 4 * hour));  // the end is not in it
  EXPECT_FALSE(policy::window_contains(*w, 12 * hour));
  EXPECT_TRUE(policy::window_contains(*w, -1 * hour));  // 23:00 the day before 1970
  auto day_window = policy::parse_window("09:00-17:00");
  ASSERT_TRUE(day_window);
  EXPECT_TRUE(policy::window_contains(*day_window, 9 * hour));
  EXPECT_FALSE(policy::window_contains(*day_window, 17 * hour));
}

TEST(PolicyGrammar, WaveSizes) {
  policy_table::expect_wave_percents([](const std::string& in) { return outcome(policy::parse_wave_percent(in)); });
  policy_table::expect_wave_counts([](long long n) { return outcome(policy::check_wave_count(n)); });
  // --wave SIZE takes both forms.
  policy_table::expect_wave_percents([](const std::string& in) {
    auto s = policy::parse_wave_size(in);
    EXPECT_TRUE(!s || s->percent) << in;
    return Outcome{static_cast<bool>(s), s ? s->size : 0, s.error};
  });
  policy_table::expect_wave_counts([](long long n) {
    auto s = policy::parse_wave_size(std::to_string(n));
    EXPECT_TRUE(!s || !s->percent) << n;
    return Outcome{static_cast<bool>(s), s ? s->size : 0, s.error};
  });
  EXPECT_FALSE(policy::parse_wave_size("abc"));
  EXPECT_FALSE(policy::parse_wave_size(""));
  EXPECT_FALSE(policy::parse_wave_size("5.5"));
}

TEST(PolicyGrammar, Waves) {
  auto w = policy::parse_wave("10%:90:5m");
  ASSERT_TRUE(w) << w.error;
  EXPECT_EQ(w->size_text, "10%");
  EXPECT_TRUE(w->size.percent);
  EXPECT_DOUBLE_EQ(w->size.size, 10);
  EXPECT_EQ(w->success_threshold.value_or(-1), 90.0);
  EXPECT_EQ(w->soak_s.value_or(-1), 300);
  w = policy::parse_wave("5");
  ASSERT_TRUE(w) << w.error;
  EXPECT_FALSE(w->size.percent);
  EXPECT_FALSE(w->success_threshold);
  EXPECT_FALSE(w->soak_s);
  w = policy::parse_wave("2.5%::1h");
  ASSERT_TRUE(w) << w.error;
  EXPECT_FALSE(w->success_threshold);
  EXPECT_EQ(w->soak_s.value_or(-1), 3600);
  EXPECT_EQ(policy::parse_wave("50%:97.5%")->success_threshold.value_or(-1), 97.5);
  const std::pair<const char*, const char*> bad[] = {
      {"", "size ''"},          {"0%", "size '0%'"},         {"101%", "percentage"},
      {"0", "device count"},    {"1000001", "device count"}, {"abc", "neither"},
      {"10%:150", "success threshold '150' is not a percentage 0..100"},
      {"10%:x", "threshold"},   {"10%:90:x", "soak 'x': not a duration"},
      {"10%:90:11y", "soak"},   {"10%:0:3661d", "too long"}, {"1:2:3:4", "too many ':'"},
  };
  for (const auto& [spec, why] : bad) {
    auto r = policy::parse_wave(spec);
    EXPECT_FALSE(r) << spec;
    EXPECT_NE(r.error.find(why), std::string::npos) << spec << ": " << r.error;
  }
}

TEST(PolicyGrammar, StartTimes) {
  policy_table::expect_times([](const std::string& in) { return outcome(policy::parse_time(in)); });
}

// ------------------------------------------------------------------------------ otactl's side

TEST(PolicyGrammarOtactl, ArgumentParsersFollowTheTable) {
  policy_table::expect_durations([](const std::string& in) {
    long long s = 0;
    std::string why;
    const bool ok = otactl::parse_duration(in, s, why);
    return Outcome{ok, static_cast<double>(s), why};
  });
  policy_table::expect_windows([](const std::string& in) {
    std::string why;
    const bool ok = otactl::parse_window(in, why);
    auto w = ota::policy::parse_window(in);  // otactl sends the text; the values are the library's
    return Outcome{ok, w ? w->start_min * 10000.0 + w->end_min : 0, why};
  });
  policy_table::expect_wave_percents([](const std::string& in) {
    nlohmann::json wave;
    std::string why;
    const bool ok = otactl::parse_wave(in, wave, why);
    if (ok) {
      EXPECT_EQ(wave["size"], in);  // sent as typed
    }
    return Outcome{ok, ok ? std::stod(in) : 0, why};
  });
  policy_table::expect_wave_counts([](long long n) {
    nlohmann::json wave;
    std::string why;
    const bool ok = otactl::parse_wave(std::to_string(n), wave, why);
    return Outcome{ok, ok ? wave["size"].get<double>() : 0, why};
  });
  policy_table::expect_times([](const std::string& in) {
    long long t = 0;
    std::string why;
    const bool ok = otactl::parse_time(in, t, why);
    return Outcome{ok, static_cast<double>(t), why};
  });
}

// The built otactl: a valid value gets as far as the (absent) controller (exit 1), a bad one
// is a usage error (exit 2) naming the option, the value and why.
Outcome run_rollout_create(const std::string& option, const std::string& value) {
  // "--timeout=-5" (else "-5" reads as an option), "--timeout ''" (else it is missing).
  const std::string sep = !value.empty() && value[0] == '-' ? "=" : " ";
  const std::string cmd = std::string("env -u OTA_API -u OTA_API_TOKEN_FILE OTA_API_TOKEN=t0ken ") + OTACTL_PATH +
                          " --api http://127.0.0.1:1 rollout create 1.1.0 --group g " + option + sep + "'" + value +
                          "' 2>&1";
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return Outcome{false, 0, "popen failed"};
  char buf[4096];
  std::size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int st = pclose(p);
  const int code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  if (code == 1 && out.find("cannot reach controller") != std::string::npos) return Outcome{true, 0, ""};
  EXPECT_EQ(code, 2) << option << " '" << value << "': " << out;
  EXPECT_NE(out.find(option + " '" + value + "'"), std::string::npos) << out;
  return Outcome{false, 0, out};
}

TEST(PolicyGrammarOtactl, RolloutCreateFollowsTheTable) {
  // What the controller would get is not seen here; the value rows take the library's.
  policy_table::expect_durations([](const std::string& in) {
    Outcome o = run_rollout_create("--timeout", in);
    if (auto d = ota::policy::parse_duration(in); o.ok && d) o.value = static_cast<double>(*d);
    return o;
  });
  policy_table::expect_windows([](const std::string& in) {
    Outcome o = run_rollout_create("--window", in);
    if (auto w = ota::policy::parse_window(in); o.ok && w) o.value = w->start_min * 10000.0 + w->end_min;
    return o;
  });
  policy_table::expect_wave_percents([](const std::string& in) {
    Outcome o = run_rollout_create("--wave", in);
    if (o.ok) o.value = std::stod(in);
    return o;
  });
}

// The controller parses the same grammar (POST /api/v1/rollouts) and must agree with the table.
TEST(PolicyGrammarController, ParseFunctionsFollowTheTable) {
  using ota::service::parse_duration;
  auto r_outcome = [](const auto& r, double v) { return Outcome{r.ok(), r.ok() ? v : 0, r.ok() ? "" : r.error()}; };
  policy_table::expect_durations([&](const std::string& in) {
    auto r = parse_duration(nlohmann::json(in), "timeout");
    return r_outcome(r, r.ok() ? static_cast<double>(*r) : 0);
  });
  policy_table::expect_duration_seconds([&](long long s) {
    auto r = parse_duration(nlohmann::json(s), "timeout");
    return r_outcome(r, r.ok() ? static_cast<double>(*r) : 0);
  });
  policy_table::expect_windows([&](const std::string& in) {
    auto r = ota::service::parse_window(in);
    return r_outcome(r, r.ok() ? (*r)->start_min * 10000.0 + (*r)->end_min : 0);
  });
  // Wave sizes and start times through parse_policy.
  policy_table::expect_wave_percents([&](const std::string& in) {
    auto r = ota::service::parse_policy(nlohmann::json{{"waves", {{{"size", in}}}}});
    return r_outcome(r, r.ok() ? r->waves[0].size : 0);
  });
  policy_table::expect_wave_counts([&](long long n) {
    auto r = ota::service::parse_policy(nlohmann::json{{"waves", {{{"size", n}}}}});
    return r_outcome(r, r.ok() ? r->waves[0].size : 0);
  });
  policy_table::expect_times([&](const std::string& in) {
    auto r = ota::service::parse_policy(nlohmann::json{{"start_at", in}});
    return r_outcome(r, r.ok() ? static_cast<double>(r->start_at_s) : 0);
  });
}

}  // namespace
