// Operating the controller: where its settings come from (command line > OTA_* environment >
// --config file > defaults, --print-config), JSON logs of a real run, and /metrics against the
// monitoring files: the rollout metrics follow a real rollout (running in wave 1, paused by
// the operator, paused by its failure policy), and every metric the Grafana dashboard and the
// Prometheus alert rules (service/monitoring/) use is served. Real mosquitto from
// broker-config/, ota-controller, ota-devsim and SQLite; every process stopped by its pid.
#include <cctype>
#include <cstdlib>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>

#include "fleet_fixture.hpp"
#include "ota/service/log.hpp"

namespace {

using namespace fleet_test;
using ota::test::run_command;

std::string monitoring_dir() { return ota::test::source_dir() + "/service/monitoring"; }

void write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}

// key -> value (quotes kept) of the `key=value` lines --print-config writes.
std::map<std::string, std::string> parse_printed_config(const std::string& text) {
  std::map<std::string, std::string> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    const auto eq = line.find('=');
    if (eq != std::string::npos) out[line.substr(0, eq)] = line.substr(eq + 1);
  }
  return out;
}

// The value of the first sample of `name` whose labels contain every one of `labels`
// (e.g. {"rollout=\"ro-1\"", "state=\"running\""}); NaN if there is none.
double metric_value(const std::string& text, const std::string& name, const std::vector<std::string>& labels = {}) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(name, 0) != 0) continue;
    const char next = line.size() > name.size() ? line[name.size()] : '\0';
    if (next != '{' && next != ' ') continue;
    const auto close = line.find('}');
    const std::string label_part = next == '{' && close != std::string::npos ? line.substr(0, close + 1) : "";
    bool all = true;
    for (const auto& l : labels) all = all && label_part.find(l) != std::string::npos;
    if (!all) continue;
    const auto sp = line.rfind(' ');
    return std::strtod(line.c_str() + sp + 1, nullptr);
  }
  return std::nan("");
}

// Metric names with at least one sample in a Prometheus text exposition.
std::set<std::string> served_metric_names(const std::string& text) {
  std::set<std::string> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    out.insert(line.substr(0, line.find_first_of("{ ")));
  }
  return out;
}

// The metric names a PromQL expression selects: identifiers that are not functions,
// aggregations, keywords, label names (inside {...} and by/without/on/ignoring/group_x
// lists), strings, numbers or range/offset durations.
std::set<std::string> promql_metric_names(const std::string& e) {
  static const std::set<std::string> words{
      "and", "or", "unless", "bool", "offset", "inf", "nan", "sum", "min", "max", "avg", "count",
      "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values", "group"};
  static const std::set<std::string> label_lists{"by", "without", "on", "ignoring", "group_left", "group_right"};
  std::set<std::string> out;
  std::size_t i = 0;
  const std::size_t n = e.size();
  auto skip_to = [&](char close) {
    while (i < n && e[i] != close) {
      if (e[i] == '"' || e[i] == '\'') {
        const char q = e[i++];
        while (i < n && e[i] != q) i += e[i] == '\\' ? 2 : 1;
      }
      ++i;
    }
    ++i;
  };
  while (i < n) {
    const char c = e[i];
    if (c == '"' || c == '\'') {
      ++i;
      while (i < n && e[i] != c) i += e[i] == '\\' ? 2 : 1;
      ++i;
    } else if (c == '{') {
      skip_to('}');
    } else if (c == '[') {
      skip_to(']');
    } else if (std::isdigit(static_cast<unsigned char>(c)) || c == '.') {
      while (i < n && (std::isalnum(static_cast<unsigned char>(e[i])) || e[i] == '.')) ++i;
    } else if (std::isalpha(static_cast<unsigned char>(c)) || c == '_' || c == ':') {
      std::size_t j = i;
      while (j < n && (std::isalnum(static_cast<unsigned char>(e[j])) || e[j] == '_' || e[j] == ':')) ++j;
      const std::string id = e.substr(i, j - i);
      i = j;
      while (j < n && e[j] == ' ') ++j;
      if (label_lists.count(id)) {
        if (j < n && e[j] == '(') {
          i = j + 1;
          skip_to(')');
        }
      } else if (!words.count(id) && !(j < n && e[j] == '(')) {
        out.insert(id);
      }
    } else {
      ++i;
    }
  }
  return out;
}

// Every `expr:` of a Prometheus rules file (one-line values and `|`/`>` blocks).
std::vector<std::string> rule_exprs(const std::string& yaml) {
  std::vector<std::string> out;
  std::istringstream in(yaml);
  std::vector<std::string> lines;
  for (std::string l; std::getline(in, l);) lines.push_back(l);
  for (std::size_t k = 0; k < lines.size(); ++k) {
    static const std::regex expr_re(R"(^(\s*)expr:\s*(.*)$)");
    std::smatch m;
    if (!std::regex_match(lines[k], m, expr_re)) continue;
    std::string v = m[2];
    if (!v.empty() && (v[0] == '|' || v[0] == '>')) {
      v.clear();
      const std::size_t indent = m[1].length();
      while (k + 1 < lines.size() && (lines[k + 1].find_first_not_of(' ') > indent || lines[k + 1].find_first_not_of(' ') == std::string::npos))
        v += lines[++k] + " ";
    } else if (v.size() >= 2 && (v[0] == '"' || v[0] == '\'') && v.back() == v[0]) {
      v = v.substr(1, v.size() - 2);
    }
    out.push_back(v);
  }
  return out;
}

// ------------------------------------------------------------------------------ settings

class Settings : public ::testing::Test {
 protected:
  // ota-controller with extra environment variables (via env(1): nothing else changes).
  CommandResult controller(const std::vector<std::string>& env, const std::vector<std::string>& args) {
    std::vector<std::string> argv{"env"};
    argv.insert(argv.end(), env.begin(), env.end());
    argv.push_back(OTA_CONTROLLER_BIN);
    argv.insert(argv.end(), args.begin(), args.end());
    return run_command(argv);
  }
  TempDir dir_{"ops-config"};
};

TEST(PromQL, MetricNamesOfAnExpression) {
  // The parser the coverage test relies on.
  EXPECT_EQ(promql_metric_names(R"(sum without(online) (ota_devices{online="false"}) / sum by (x) (ota_devices) > 0.2)"),
            (std::set<std::string>{"ota_devices"}));
  EXPECT_EQ(promql_metric_names(R"((a{by=~"p|t"} == 1) * on(instance, job, rollout) group_left(name, version) b_info)"),
            (std::set<std::string>{"a", "b_info"}));
  EXPECT_EQ(promql_metric_names(R"(increase(x_total{instance=~"$instance"}[$__rate_interval]) > 5e3 and up)"),
            (std::set<std::string>{"x_total", "up"}));
  EXPECT_EQ(promql_metric_names("absent(ota_build_info)"), (std::set<std::string>{"ota_build_info"}));
}

TEST_F(Settings, CommandLineBeatsEnvironmentBeatsConfigFileBeatsDefaults) {
  const std::string cfg = dir_.path() + "/controller.toml";
  write_file(cfg,
             "# every kind of line an operator writes\n"
             "db = \"" + dir_.path() + "/from-file.db\"\n"
             "store = \"" + dir_.path() + "/images\"\n"
             "signing_key = \"/etc/ota/pki/release.key\"   # '_' for '-'\n"
             "min-free-mb = 10\n"          // file only... overridden by env below
             "heartbeat-timeout = 100\n"   // file, env and command line
             "offer-ttl = 1000\n"          // file and command line
             "prefix = \"file/v1\"\n"      // file only
             "verbose = true\n");
  CommandResult r = controller({"OTA_MIN_FREE_MB=20", "OTA_HEARTBEAT_TIMEOUT=200", "OTA_EVENT_RETENTION_DAYS=7",
                                "OTA_LOG_FORMAT=json"},
                               {"--config", cfg, "--heartbeat-timeout", "300", "--offer-ttl", "2000", "--print-config"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto eff = parse_printed_config(r.output);
  EXPECT_EQ(eff["heartbeat-timeout"], "300") << "command line over environment and file";
  EXPECT_EQ(eff["offer-ttl"], "2000") << "command line over file";
  EXPECT_EQ(eff["min-free-mb"], "20") << "environment over file";
  EXPECT_EQ(eff["event-retention-days"], "7") << "environment over default";
  EXPECT_EQ(eff["log-format"], "\"json\"") << "environment over default";
  EXPECT_EQ(eff["prefix"], "\"file/v1\"") << "file over default";
  EXPECT_EQ(eff["signing-key"], "\"/etc/ota/pki/release.key\"") << "a key written with '_'";
  EXPECT_EQ(eff["verbose"], "true");
  EXPECT_EQ(eff["db"], "\"" + dir_.path() + "/from-file.db\"");
  EXPECT_EQ(eff["broker-port"], "8883") << "default";
  EXPECT_EQ(eff["event-retention-count"], "1000000") << "default";
  EXPECT_EQ(eff.count("print-config"), 0u);
  EXPECT_EQ(eff.count("config"), 0u);
  // --print-config only prints: it neither opened the database nor created its directory.
  EXPECT_FALSE(std::ifstream(dir_.path() + "/from-file.db").good());

  // What it printed is a config file the controller accepts and that reproduces the settings.
  const std::string printed = dir_.path() + "/printed.toml";
  write_file(printed, r.output);
  CommandResult again = controller({}, {"--config", printed, "--print-config"});
  ASSERT_EQ(again.exit_code, 0) << again.output;
  EXPECT_EQ(parse_printed_config(again.output), eff);

  // OTA_CONFIG names the file when --config is not given.
  CommandResult by_env = controller({"OTA_CONFIG=" + cfg}, {"--print-config"});
  ASSERT_EQ(by_env.exit_code, 0) << by_env.output;
  EXPECT_EQ(parse_printed_config(by_env.output)["prefix"], "\"file/v1\"");
  // An empty variable does not count: the file's value stays.
  CommandResult empty_env = controller({"OTA_PREFIX="}, {"--config", cfg, "--print-config"});
  ASSERT_EQ(empty_env.exit_code, 0) << empty_env.output;
  EXPECT_EQ(parse_printed_config(empty_env.output)["prefix"], "\"file/v1\"");
  // Values from the environment are checked like command-line values.
  CommandResult bad_env = controller({"OTA_BROKER_PORT=70000"}, {"--config", cfg, "--print-config"});
  EXPECT_EQ(bad_env.exit_code, 2) << bad_env.output;
  EXPECT_NE(bad_env.output.find("broker-port"), std::string::npos) << bad_env.output;
}

TEST_F(Settings, MistakesAreRefusedNotIgnored) {
  const std::string cfg = dir_.path() + "/typo.toml";
  write_file(cfg, "db = \"/tmp/x.db\"\nstore = \"/tmp/s\"\nsigning-key = \"/tmp/k\"\nmin-fre-mb = 5\n");
  CommandResult typo = controller({}, {"--config", cfg, "--print-config"});
  EXPECT_EQ(typo.exit_code, 2) << typo.output;
  EXPECT_NE(typo.output.find("min-fre-mb"), std::string::npos) << "the unknown key is named: " << typo.output;

  CommandResult missing = controller({}, {"--config", dir_.path() + "/nope.toml", "--print-config"});
  EXPECT_EQ(missing.exit_code, 2) << missing.output;
  EXPECT_NE(missing.output.find("nope.toml"), std::string::npos) << missing.output;
  CommandResult missing_env = controller({"OTA_CONFIG=" + dir_.path() + "/nope.toml"}, {"--print-config"});
  EXPECT_EQ(missing_env.exit_code, 2) << missing_env.output;

  // Required options may come from any source; from none, the controller says which.
  CommandResult none = controller({}, {"--print-config"});
  EXPECT_EQ(none.exit_code, 2) << none.output;
  EXPECT_NE(none.output.find("--db"), std::string::npos) << none.output;
  CommandResult env_only = controller({"OTA_DB=/tmp/e.db", "OTA_STORE=/tmp/e", "OTA_SIGNING_KEY=/tmp/k"}, {"--print-config"});
  EXPECT_EQ(env_only.exit_code, 0) << env_only.output;

  CommandResult bad_format = controller({}, {"--config", dir_.path() + "/typo.toml", "--log-format", "xml"});
  EXPECT_EQ(bad_format.exit_code, 2) << bad_format.output;
}

TEST_F(Settings, EveryOptionHasItsEnvironmentVariable) {
  // Derived from the long name for every option, so options added later get one too.
  CommandResult help = controller({}, {"--help"});
  ASSERT_EQ(help.exit_code, 0) << help.output;
  static const std::regex opt_re(R"(^\s+(?:-\w,)?--([a-z0-9-]+)\b(.*)$)");
  static const std::set<std::string> without{"help", "version", "config", "print-config"};
  std::istringstream in(help.output);
  std::string line;
  int checked = 0;
  while (std::getline(in, line)) {
    std::smatch m;
    if (!std::regex_match(line, m, opt_re) || without.count(m[1])) continue;
    std::string env = "OTA_";
    for (char c : std::string(m[1])) env += c == '-' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    EXPECT_NE(line.find("(Env:" + env + ")"), std::string::npos) << "--" << m[1] << " has no " << env << ": " << line;
    ++checked;
  }
  EXPECT_GE(checked, 20) << help.output;
  CommandResult v = controller({}, {"--version"});
  EXPECT_EQ(v.exit_code, 0);
  EXPECT_EQ(v.output, std::string(OTA_VERSION) + "\n");
}

// ------------------------------------------------------------------------------ logs

TEST(LogFormat, JsonLinesEscapeAndReplaceInvalidUtf8) {
  using namespace ota::service;
  const long long ms = 1796149662123;  // 2026-12-01T18:27:42.123Z
  const std::string line = format_log_line(LogFormat::json, ms, LogLevel::warn,
                                           "device \"x\"\nsaid \xff\xfe", {{"device", "x\"y"}, {"msg", "spoofed"}});
  EXPECT_EQ(line.find('\n'), std::string::npos) << line;
  json j = json::parse(line, nullptr, false);
  ASSERT_TRUE(j.is_object()) << line;
  EXPECT_EQ(j.value("ts", ""), "2026-12-01T18:27:42.123Z");
  EXPECT_EQ(j.value("level", ""), "warn");
  EXPECT_EQ(j.value("msg", ""), "device \"x\"\nsaid \xEF\xBF\xBD\xEF\xBF\xBD");  // U+FFFD twice
  EXPECT_EQ(j.value("device", ""), "x\"y");
  EXPECT_EQ(j.size(), 4u) << "a field named like a member does not override it: " << line;
  EXPECT_EQ(format_log_line(LogFormat::text, ms, LogLevel::info, "hello", {{"k", "v"}}),
            "2026-12-01T18:27:42.123Z INFO  hello k=v");
}

class Ops : public FleetTest {
 protected:
  // The controller with stderr (the log) in its own file and stdout in controller.log.
  bool start_controller_logging_to(const std::string& stderr_path) {
    std::vector<std::string> argv{"/bin/sh", "-c", "exec \"$0\" \"$@\" 2>>'" + stderr_path + "'"};
    for (const auto& a : controller_argv()) argv.push_back(a);
    controller_ = std::make_unique<Child>(argv, dir_.path() + "/controller.log");
    if (!wait_until([&] { return health_status() == 200; }, 30s, 20ms)) {
      ADD_FAILURE() << "controller did not become healthy:\n" << read_file(stderr_path);
      return false;
    }
    std::ifstream tf(token_file());
    std::getline(tf, token_);
    return token_.size() == 64u;
  }

  json post(const std::string& path, const json& body) {
    auto r = client().Post(path.c_str(), body.dump(), "application/json");
    if (!r) return json{{"error", "no reply"}};
    json j = json::parse(r->body, nullptr, false);
    if (r->status >= 300) ADD_FAILURE() << "POST " << path << ": " << r->status << " " << r->body;
    return j;
  }
};

TEST_F(Ops, JsonLogOfARealRunAndSettingsFromFileAndEnvironment) {
  prepare_env("lg", 3, "lg");
  pki_->add_device("lg-odd");  // sends a malformed message below; not one of the fleet
  broker_ = std::make_unique<Broker>(*pki_);
  const std::string cfg = dir_.path() + "/controller.toml";
  write_file(cfg, "log-format = \"json\"\nverbose = true\nmin-free-mb = 1\n");
  controller_args_ = {"--config", cfg};
  ASSERT_EQ(::setenv("OTA_MIN_FREE_MB", "2", 1), 0);  // the environment wins over the file
  const std::string log_path = dir_.path() + "/controller.stderr";
  const bool started = start_controller_logging_to(log_path);
  ::unsetenv("OTA_MIN_FREE_MB");
  ASSERT_TRUE(started);

  json health;
  ASSERT_EQ(health_status(&health), 200);
  EXPECT_EQ(health["checks"]["disk"].value("min_free_bytes", 0ull), 2ull * 1024 * 1024) << health.dump();
  EXPECT_EQ(metric_value(metrics(), "ota_disk_min_free_bytes"), 2.0 * 1024 * 1024);

  // Some real work: devices, an image, a rollout to the end, a malformed device message.
  add_image(random_bytes(16 * 1024, 3), "1.1.0");
  start_fleet();
  wait_fleet_online();
  if (HasFatalFailure()) return;
  json created = post("/api/v1/rollouts", {{"image", "1.1.0"}, {"name", "json \"log\" run"},
                                           {"target", {{"group", "lg"}}}, {"start", true}});
  const std::string id = created.value("id", "");
  ASSERT_FALSE(id.empty()) << created.dump();
  json r = wait_rollout_settles(id, 60s);
  EXPECT_EQ(r.value("state", ""), "completed") << r.dump(1);
  {
    MqttTestClient dev(ota::test::ClientOptions::device(*pki_, "lg-odd", broker_->port()));
    ASSERT_TRUE(dev.connect().ok());
    ASSERT_EQ(dev.publish(pki_->prefix + "/dev/lg-odd/up/event", "{\"not\": \"an event\xff\"", 1), 0);
    ASSERT_TRUE(wait_until([&] { return metric_value(metrics(), "ota_decode_errors_total") >= 1; }, 10s, 50ms));
  }
  controller_->stop();  // SIGTERM: the shutdown lines are logged too

  std::ifstream in(log_path);
  std::string line;
  int lines = 0;
  std::map<std::string, int> levels;
  json starting, last;
  bool decode_warning = false;
  static const std::regex ts_re(R"(^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$)");
  while (std::getline(in, line)) {
    ++lines;
    json j = json::parse(line, nullptr, false);
    ASSERT_TRUE(j.is_object()) << "log line " << lines << " is not a JSON object: " << line;
    ASSERT_TRUE(j["ts"].is_string() && std::regex_match(j["ts"].get<std::string>(), ts_re)) << line;
    ASSERT_TRUE(j["msg"].is_string()) << line;
    const std::string level = j.value("level", "");
    ASSERT_TRUE(level == "debug" || level == "info" || level == "warn" || level == "error") << line;
    levels[level]++;
    if (j["msg"] == "ota-controller starting") starting = j;
    if (level == "warn" && j["msg"].get<std::string>().find("lg-odd") != std::string::npos) decode_warning = true;
    last = j;
  }
  EXPECT_GE(lines, 10);
  EXPECT_GT(levels["debug"], 0) << "verbose = true from the config file";
  EXPECT_GT(levels["info"], 0);
  EXPECT_TRUE(decode_warning) << "no warning about the malformed message";
  EXPECT_EQ(starting.value("config", ""), cfg) << starting.dump();
  EXPECT_EQ(starting.value("version", ""), OTA_VERSION) << starting.dump();
  EXPECT_EQ(last.value("msg", ""), "stopped") << last.dump();
}

TEST_F(Ops, RolloutMetricsFollowARealRolloutAndCoverDashboardAndAlerts) {
  start_env("om", 4, "om");
  if (HasFatalFailure()) return;
  add_image(random_bytes(16 * 1024, 4), "1.1.0");
  start_fleet({"--fail-self-test", device_id(3)});
  wait_fleet_online();
  if (HasFatalFailure()) return;

  // A: om-001 and om-002, wave 1 of one device soaking for an hour, then the rest.
  json a = post("/api/v1/rollouts", {{"image", "1.1.0"}, {"name", "canary"},
                                     {"target", {{"devices", {device_id(1), device_id(2)}}}},
                                     {"waves", {{{"size", 1}, {"soak", "1h"}}, {{"size", "100%"}}}},
                                     {"start", true}});
  // B: om-003 (fails its self-test) and om-004; more than 10% failures pause it.
  json b = post("/api/v1/rollouts", {{"image", "1.1.0"}, {"name", "policy"},
                                     {"target", {{"devices", {device_id(3), device_id(4)}}}},
                                     {"failure", {{"max_total_rate", 10}, {"action", "pause"}}},
                                     {"start", true}});
  const std::string ra = a.value("id", ""), rb = b.value("id", "");
  ASSERT_FALSE(ra.empty() || rb.empty()) << a.dump() << b.dump();
  const std::string la = "rollout=\"" + ra + "\"", lb = "rollout=\"" + rb + "\"";

  std::string m;
  ASSERT_TRUE(wait_until(
      [&] {
        m = metrics();
        return metric_value(m, "ota_rollout_devices", {la, "state=\"succeeded\""}) == 1 &&
               metric_value(m, "ota_rollout_paused", {lb, "by=\"policy\""}) == 1;
      },
      60s, 100ms))
      << m << "\nA: " << rollout(ra).dump() << "\nB: " << rollout(rb).dump();
  // A runs in wave 1 of 2, half done.
  EXPECT_EQ(metric_value(m, "ota_rollout_state", {la, "state=\"running\""}), 1);
  EXPECT_EQ(metric_value(m, "ota_rollout_state", {la, "state=\"paused\""}), 0);
  EXPECT_EQ(metric_value(m, "ota_rollout_wave", {la}), 1);
  EXPECT_EQ(metric_value(m, "ota_rollout_waves", {la}), 2);
  EXPECT_EQ(metric_value(m, "ota_rollout_progress_ratio", {la}), 0.5);
  EXPECT_EQ(metric_value(m, "ota_rollout_failure_rate_limit", {la}), 1.0);
  EXPECT_EQ(metric_value(m, "ota_rollout_info", {la, "name=\"canary\"", "version=\"1.1.0\"", "target=\"devices\""}), 1);
  for (const char* by : {"operator", "policy", "threshold"})
    EXPECT_EQ(metric_value(m, "ota_rollout_paused", {la, std::string("by=\"") + by + "\""}), 0) << by;
  // B was paused by its failure policy: om-003 failed, 50% > 10%.
  EXPECT_EQ(metric_value(m, "ota_rollout_state", {lb, "state=\"paused\""}), 1);
  EXPECT_EQ(metric_value(m, "ota_rollout_state", {lb, "state=\"running\""}), 0);
  EXPECT_EQ(metric_value(m, "ota_rollout_paused", {lb, "by=\"operator\""}), 0);
  EXPECT_EQ(metric_value(m, "ota_rollout_failure_rate_limit", {lb}), 0.1);
  EXPECT_GT(metric_value(m, "ota_rollout_failure_rate", {lb}), 0.1);
  EXPECT_EQ(metric_value(m, "ota_rollouts", {"state=\"running\""}), 1);
  EXPECT_EQ(metric_value(m, "ota_rollouts", {"state=\"paused\""}), 1);
  EXPECT_EQ(metric_value(m, "ota_rollouts", {"state=\"completed\""}), 0);
  EXPECT_EQ(metric_value(m, "ota_deployments_active"), 2);
  EXPECT_EQ(metric_value(m, "ota_build_info", {"version=\"" OTA_VERSION "\""}), 1);

  // The operator pauses A.
  json paused = post("/api/v1/rollouts/" + ra + "/pause", {{"reason", "ops test"}});
  EXPECT_EQ(paused.value("state", ""), "paused") << paused.dump();
  m = metrics();
  EXPECT_EQ(metric_value(m, "ota_rollout_paused", {la, "by=\"operator\""}), 1);
  EXPECT_EQ(metric_value(m, "ota_rollout_state", {la, "state=\"paused\""}), 1);
  EXPECT_EQ(metric_value(m, "ota_rollouts", {"state=\"paused\""}), 2);

  // Every metric the dashboard and the alert rules use has samples in this scrape.
  const std::set<std::string> served = served_metric_names(m);
  std::map<std::string, std::set<std::string>> used;  // metric -> where
  const std::string dash_text = read_file(monitoring_dir() + "/grafana-dashboard.json");
  json dash = json::parse(dash_text, nullptr, false);
  ASSERT_TRUE(dash.is_object()) << "grafana-dashboard.json is not JSON";
  int exprs = 0;
  std::set<int> ids;
  for (const auto& p : dash["panels"]) {
    EXPECT_TRUE(ids.insert(p.value("id", -1)).second) << "duplicate panel id " << p.dump();
    if (p.value("type", "") == "row") continue;
    EXPECT_EQ(p["datasource"].value("uid", ""), "${datasource}") << p.value("title", "");
    ASSERT_TRUE(p["targets"].is_array() && !p["targets"].empty()) << p.value("title", "");
    for (const auto& t : p["targets"]) {
      const std::string e = t.value("expr", "");
      ++exprs;
      EXPECT_NE(e.find("instance=~\"$instance\""), std::string::npos) << p.value("title", "") << ": " << e;
      const auto names = promql_metric_names(e);
      EXPECT_FALSE(names.empty()) << e;
      for (const auto& n : names) used[n].insert("dashboard: " + p.value("title", ""));
    }
  }
  EXPECT_GE(exprs, 20);
  static const std::regex ota_name(R"(\bota_[a-z0-9_]+)");
  for (const auto& v : dash["templating"]["list"]) {
    const std::string q = v["query"].is_object() ? v["query"].value("query", "") : v["query"].is_string() ? v["query"].get<std::string>() : "";
    for (std::sregex_iterator it(q.begin(), q.end(), ota_name), end; it != end; ++it)
      used[it->str()].insert("dashboard variable " + v.value("name", ""));
  }
  const std::string rules = read_file(monitoring_dir() + "/ota-alerts.yml");
  const auto rexprs = rule_exprs(rules);
  EXPECT_GE(rexprs.size(), 6u);
  for (const auto& e : rexprs)
    for (const auto& n : promql_metric_names(e)) used[n].insert("alert rule: " + e);
  for (const char* alert : {"OtaRolloutPausedByPolicy", "OtaRolloutFailureRateHigh", "OtaMqttLinkDown",
                            "OtaDatabaseNotWritable", "OtaDatabaseWriteErrors", "OtaDiskLow", "OtaDevicesOffline"})
    EXPECT_NE(rules.find(std::string("alert: ") + alert), std::string::npos) << alert;
  for (const auto& [name, where] : used) {
    EXPECT_EQ(name.rfind("ota_", 0), 0u) << name << " is not a controller metric (" << *where.begin() << ")";
    EXPECT_TRUE(served.count(name)) << name << " is used by " << join({where.begin(), where.end()}, "; ")
                                    << " but /metrics has no sample of it";
  }
  EXPECT_GE(used.size(), 25u);

  // promtool's linter accepts the exposition (names, types, HELP) when it is installed.
  if (std::system("command -v promtool >/dev/null 2>&1") == 0) {
    const std::string scrape = dir_.path() + "/metrics.txt";
    write_file(scrape, m);
    CommandResult lint = run_command({"sh", "-c", "promtool check metrics < '" + scrape + "'"});
    EXPECT_EQ(lint.exit_code, 0) << lint.output;
  }
}

}  // namespace
