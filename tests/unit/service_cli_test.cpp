// otactl argument handling: run the built binary with bad arguments; the rollout policy parsers
// (service/cli/args.hpp) directly.
#include <gtest/gtest.h>
#include <httplib.h>
#include <sys/wait.h>

#include <cstdio>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "../../service/cli/args.hpp"

namespace {

struct Run {
  int code = -1;
  std::string out;  // stdout + stderr
};

Run otactl(const std::string& args, const std::string& env = "OTA_API_TOKEN=t0ken") {
  std::string cmd = std::string("env -u OTA_API -u OTA_API_TOKEN -u OTA_API_TOKEN_FILE ") + env +
                    " " + OTACTL_PATH + " " + args + " 2>&1";
  Run r;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return r;
  char buf[4096];
  std::size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  int st = pclose(p);
  r.code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

TEST(Otactl, NoCommandIsUsageError) {
  auto r = otactl("");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("subcommand"), std::string::npos) << r.out;
}

TEST(Otactl, UnknownCommandIsUsageError) { EXPECT_EQ(otactl("frobnicate").code, 2); }

TEST(Otactl, ImageAddMissingArguments) {
  auto r = otactl("image add");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("FILE"), std::string::npos) << r.out;
  r = otactl("image add /etc/hostname --hw m1");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("--version"), std::string::npos) << r.out;
  r = otactl("image add /etc/hostname --version 1.0.0");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("--hw"), std::string::npos) << r.out;
}

TEST(Otactl, ImageAddBadChunkSizeAndMissingFile) {
  auto r = otactl("image add /etc/hostname --version 1.0.0 --hw m1 --chunk-size 100");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("chunk-size"), std::string::npos) << r.out;
  r = otactl("image add /nonexistent/fw.bin --version 1.0.0 --hw m1");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("/nonexistent/fw.bin"), std::string::npos) << r.out;
}

TEST(Otactl, DeployNeedsExactlyOneTarget) {
  auto r = otactl("deploy 1.0.0");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("--device"), std::string::npos) << r.out;
  EXPECT_EQ(otactl("deploy 1.0.0 --device a --group b").code, 2);
  r = otactl("deploy 1.0.0 --device a --timeout 5");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("--wait"), std::string::npos) << r.out;
}

TEST(Otactl, BadApiUrl) {
  auto r = otactl("--api not-a-url image list");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("not-a-url"), std::string::npos) << r.out;
}

TEST(Otactl, UnreachableControllerNamesTheUrl) {
  // Port 1 on loopback: nothing listens there.
  auto r = otactl("--api http://127.0.0.1:1 image list");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("cannot reach controller at http://127.0.0.1:1"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("connection refused"), std::string::npos) << r.out;
}

TEST(Otactl, MissingTokenIsAClearError) {
  auto r = otactl("--api http://127.0.0.1:1 image list", "");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("no API token"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("--token-file"), std::string::npos) << r.out;
  r = otactl("--api http://127.0.0.1:1 --token-file /nonexistent/t image list", "");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("/nonexistent/t"), std::string::npos) << r.out;
  r = otactl("--api http://127.0.0.1:1 image list", "OTA_API_TOKEN_FILE=/nonexistent/f");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("/nonexistent/f"), std::string::npos) << r.out;
}

TEST(Otactl, HelpExitsZero) { EXPECT_EQ(otactl("--help").code, 0); }

// ------------------------------------------------------- against a scripted fake controller

// Answers otactl's requests from a script and records them. The listening socket exists before
// the constructor returns (bind, then the accept loop on a thread), so no wait is needed.
class FakeController {
 public:
  struct Request {
    std::string method, path, body, actor, content_type;
  };

  FakeController() {
    port_ = srv_.bind_to_any_port("127.0.0.1");
    auto handler = [this](const httplib::Request& req, httplib::Response& res) {
      std::lock_guard<std::mutex> lock(mu_);
      std::string path = req.path;
      if (!req.params.empty()) {
        std::string q;
        for (const auto& kv : req.params) q += (q.empty() ? "?" : "&") + kv.first + "=" + kv.second;
        path += q;
      }
      log_.push_back({req.method, path, req.body, req.get_header_value("X-OTA-Actor"),
                      req.get_header_value("Content-Type")});
      if (req.path == "/api/v1/rollouts/ro-1" && !rollouts_.empty()) {
        res.set_content(rollouts_.front().dump(), "application/json");
        if (rollouts_.size() > 1) rollouts_.pop_front();  // the last one repeats
        return;
      }
      if (req.path == "/api/v1/events") return res.set_content(events_.dump(), "application/json");
      res.status = status_;
      res.set_content(reply_.dump(), "application/json");
    };
    srv_.Get(".*", handler);
    srv_.Post(".*", handler);
    srv_.Put(".*", handler);
    thread_ = std::thread([this] { srv_.listen_after_bind(); });
  }
  ~FakeController() {
    srv_.stop();
    thread_.join();
  }
  std::string api() const { return "--api http://127.0.0.1:" + std::to_string(port_) + " "; }
  // GET /api/v1/rollouts/ro-1 answers these in turn (the last one from then on).
  void script(std::vector<nlohmann::json> rollouts) {
    std::lock_guard<std::mutex> lock(mu_);
    rollouts_.assign(rollouts.begin(), rollouts.end());
  }
  // GET /api/v1/events answers this.
  void events(nlohmann::json evs) {
    std::lock_guard<std::mutex> lock(mu_);
    events_ = std::move(evs);
  }
  // Every other request gets this.
  void reply(int status, nlohmann::json body) {
    std::lock_guard<std::mutex> lock(mu_);
    status_ = status;
    reply_ = std::move(body);
  }
  std::vector<Request> log() {
    std::lock_guard<std::mutex> lock(mu_);
    return log_;
  }

 private:
  httplib::Server srv_;
  int port_ = 0;
  std::thread thread_;
  std::mutex mu_;
  std::deque<nlohmann::json> rollouts_;
  int status_ = 200;
  nlohmann::json reply_ = nlohmann::json::object();
  nlohmann::json events_ = nlohmann::json::array();
  std::vector<Request> log_;
};

nlohmann::json rollout(const std::string& state, int percent, const std::string& paused_by = "",
                       const std::string& reason = "") {
  nlohmann::json counts = {{"pending", 100 - percent}, {"succeeded", percent}, {"failed", 0}};
  return {{"id", "ro-1"},
          {"name", "canary"},
          {"version", "1.1.0"},
          {"target", {{"kind", "group"}, {"value", "lab"}}},
          {"state", state},
          {"paused_by", paused_by},
          {"pause_reason", reason},
          {"current_wave", 0},
          {"waves_total", 1},
          {"devices_total", 100},
          {"counts", counts},
          {"percent", percent},
          {"failure_rate", {{"total", 0}, {"max_total_rate", 5}, {"max_wave_rate", 10}, {"action", "pause"}}},
          {"waves",
           {{{"index", 0}, {"devices", 100}, {"state", "running"}, {"percent", percent}, {"counts", counts}}}}};
}

std::size_t count_of(const std::string& hay, const std::string& needle) {
  std::size_t n = 0;
  for (auto p = hay.find(needle); p != std::string::npos; p = hay.find(needle, p + 1)) ++n;
  return n;
}

const std::string kWatch = "watch ro-1 --interval-ms 50 ";

TEST(OtactlLive, WatchEndsWith0WhenCompletedAndPrintsABlockOnlyOnChange) {
  FakeController fc;
  fc.script({rollout("running", 10), rollout("running", 10), rollout("running", 50), rollout("running", 50),
             rollout("completed", 100)});
  auto r = otactl(fc.api() + kWatch);
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(count_of(r.out, "rollout ro-1 \"canary\""), 3u) << r.out;  // 10%, 50%, completed
  EXPECT_NE(r.out.find("wave 1/1 running [##########----------]  50%  100 devices  ok 50 fail 0"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("rollout ro-1 completed: 100 of 100 devices succeeded"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("\033["), std::string::npos) << "no ANSI codes when stdout is not a TTY";
}

TEST(OtactlLive, WatchEndsWith1OnAPolicyPauseOrAbortButNotOnAnOperatorPause) {
  FakeController fc;
  fc.script({rollout("running", 10), rollout("paused", 20, "policy", "wave 1 failure rate 12% > 10%")});
  auto r = otactl(fc.api() + kWatch);
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("paused by policy: wave 1 failure rate 12% > 10%"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("otactl rollout resume ro-1"), std::string::npos) << r.out;

  fc.script({rollout("running", 10), rollout("paused", 20, "threshold", "wave 1 below 90%")});
  EXPECT_EQ(otactl(fc.api() + kWatch).code, 1);

  fc.script({rollout("running", 10), rollout("aborted", 20, "operator", "rollout aborted: bad batch")});
  r = otactl(fc.api() + kWatch);
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("rollout ro-1 aborted: bad batch"), std::string::npos) << r.out;

  fc.script({rollout("paused", 10, "operator", "lunch"), rollout("paused", 10, "operator", "lunch"),
             rollout("running", 60), rollout("completed", 100)});
  r = otactl(fc.api() + kWatch);
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("paused by operator: lunch"), std::string::npos) << r.out;
}

// After a policy pause the operator accepted (resume), the policy judges only the waves since
// ("total" 0%), but the failures counted beside it happened: the rate shown is "all".
TEST(OtactlLive, WatchShowsTheFailureRateOfEveryWaveBesideTheFailures) {
  FakeController fc;
  auto ro = rollout("completed", 100);
  ro["counts"]["failed"] = 1;
  ro["failure_rate"]["total"] = 0;
  ro["failure_rate"]["all"] = 1;
  fc.script({ro});
  auto r = otactl(fc.api() + kWatch);
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("fail 1"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("failure 1%, 0% in the waves since the operator accepted failures"),
            std::string::npos)
      << r.out;
  EXPECT_EQ(r.out.find("failure 0%"), std::string::npos) << r.out;
}

// Long event names (device_retry_scheduled) do not push the columns after them out of line.
TEST(OtactlLive, WatchEventColumnsAreAsWideAsTheirEntries) {
  FakeController fc;
  fc.script({rollout("running", 10), rollout("completed", 100)});
  fc.events({{{"ts", 1795547741107},
              {"actor", "controller"},
              {"rollout", "ro-1"},
              {"device", "d1"},
              {"what", "device_retry_scheduled"},
              {"detail", "retry 2/2"}},
             {{"ts", 1795547741200},
              {"actor", "token:alice"},
              {"rollout", "ro-1"},
              {"device", ""},
              {"what", "rollout_paused"},
              {"detail", "ticket 4711"}}});
  auto r = otactl(fc.api() + kWatch);
  EXPECT_EQ(r.code, 0) << r.out;
  const auto col = [&](const std::string& what) {
    const auto pos = r.out.find(what);
    return pos == std::string::npos ? std::string::npos : pos - r.out.rfind('\n', pos);
  };
  ASSERT_NE(col("device_retry_scheduled"), std::string::npos) << r.out;
  EXPECT_EQ(col("device_retry_scheduled"), col("rollout_paused")) << r.out;
  ASSERT_NE(col("retry 2/2"), std::string::npos) << r.out;
  EXPECT_EQ(col("retry 2/2"), col("ticket 4711")) << r.out;
}

TEST(OtactlLive, WatchJsonIsOneRolloutPerLineWhenItChanges) {
  FakeController fc;
  fc.script({rollout("running", 10), rollout("running", 10), rollout("running", 70), rollout("completed", 100)});
  auto r = otactl(fc.api() + "--json " + kWatch);
  EXPECT_EQ(r.code, 0) << r.out;
  std::vector<std::string> states;
  std::size_t b = 0;
  for (auto e = r.out.find('\n'); e != std::string::npos; b = e + 1, e = r.out.find('\n', b)) {
    const std::string line = r.out.substr(b, e - b);
    if (line.rfind("rollout ro-1 completed", 0) == 0) continue;  // stderr, merged by the test
    auto j = nlohmann::json::parse(line, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << line;
    states.push_back(j["state"].get<std::string>() + std::to_string(j["percent"].get<int>()));
  }
  EXPECT_EQ(states, (std::vector<std::string>{"running10", "running70", "completed100"})) << r.out;
}

TEST(OtactlLive, WatchUnknownRolloutExits1AtOnce) {
  FakeController fc;
  fc.reply(404, {{"error", "unknown rollout ro-9"}});
  auto r = otactl(fc.api() + "watch ro-9");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("unknown rollout ro-9"), std::string::npos) << r.out;
}

TEST(OtactlLive, RolloutCreateSendsTheContractBodyAndNoActorHeader) {
  FakeController fc;
  fc.reply(201, rollout("draft", 0));
  auto r = otactl(fc.api() +
                      "rollout create 1.1.0 --group lab --name canary --wave 10%:90:5m --wave 5 --wave 100%::1h "
                      "--max-wave-failure 10 --max-failure 2.5 --on-failure abort --retries 2 --retry-delay 30s "
                      "--timeout 1h --max-concurrent 50 --start-at 2026-11-26T02:00:00Z --window 22:00-04:00 "
                      "--defer-delay 5m --max-defers 3",
                  "OTA_API_TOKEN=t0ken USER=alice");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("rollout ro-1 created (draft)"), std::string::npos) << r.out;
  auto log = fc.log();
  ASSERT_EQ(log.size(), 1u);
  EXPECT_EQ(log[0].method, "POST");
  EXPECT_EQ(log[0].path, "/api/v1/rollouts");
  // The controller names the actor after the token; a header would only be a claim.
  EXPECT_EQ(log[0].actor, "");
  EXPECT_EQ(log[0].content_type, "application/json");
  EXPECT_EQ(nlohmann::json::parse(log[0].body), nlohmann::json::parse(R"({
    "image":"1.1.0","name":"canary","target":{"group":"lab"},
    "waves":[{"size":"10%","success_threshold":90,"soak":300},{"size":5},
             {"size":"100%","soak":3600}],
    "failure":{"max_wave_rate":10,"max_total_rate":2.5,"action":"abort"},
    "retries":2,"retry_delay":30,"timeout":3600,"max_concurrent":50,"start_at":1795658400,
    "window":"22:00-04:00","defer_delay":300,"max_defers":3,"start":false})"));

  r = otactl(fc.api() + "rollout create 1.1.0 --devices d1,d2 --devices d3 --start", "OTA_API_TOKEN=t0ken USER=");
  EXPECT_EQ(r.code, 0) << r.out;
  log = fc.log();
  ASSERT_EQ(log.size(), 2u);
  EXPECT_EQ(log[1].actor, "");
  EXPECT_EQ(nlohmann::json::parse(log[1].body), nlohmann::json::parse(R"({
    "image":"1.1.0","target":{"devices":["d1","d2","d3"]},"waves":[{"size":"100%"}],
    "start":true})"));
}

TEST(OtactlLive, RolloutActionsPostTheReasonAndA409Exits1WithTheMessage) {
  FakeController fc;
  fc.reply(200, rollout("paused", 10, "operator", "ticket 4711"));
  auto r = otactl(fc.api() + "rollout pause ro-1 --reason 'ticket 4711'");
  EXPECT_EQ(r.code, 0) << r.out;
  fc.reply(409, {{"error", "rollout ro-1 is running; only a paused rollout can be resumed"}});
  r = otactl(fc.api() + "rollout resume ro-1");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("only a paused rollout can be resumed"), std::string::npos) << r.out;
  fc.reply(201, rollout("running", 0));
  EXPECT_EQ(otactl(fc.api() + "rollout rollback ro-1 --image 1.0.0 --no-start").code, 0);
  EXPECT_EQ(otactl(fc.api() + "rollout rollback ro-1").code, 0);
  auto log = fc.log();
  ASSERT_EQ(log.size(), 4u);
  EXPECT_EQ(log[0].path, "/api/v1/rollouts/ro-1/pause");
  EXPECT_EQ(nlohmann::json::parse(log[0].body), nlohmann::json({{"reason", "ticket 4711"}}));
  EXPECT_EQ(log[1].path, "/api/v1/rollouts/ro-1/resume");
  EXPECT_EQ(nlohmann::json::parse(log[1].body), nlohmann::json::object());
  EXPECT_EQ(log[2].path, "/api/v1/rollouts/ro-1/rollback");
  EXPECT_EQ(nlohmann::json::parse(log[2].body), nlohmann::json({{"image", "1.0.0"}, {"start", false}}));
  EXPECT_EQ(nlohmann::json::parse(log[3].body), nlohmann::json({{"start", true}}));
}

TEST(OtactlLive, DevicesFiltersTableAndTags) {
  FakeController fc;
  fc.reply(200, nlohmann::json::parse(R"([
    {"id":"d1","version":"1.1.0","previous_version":"1.0.0","slot":"b","slot_state":"confirmed","groups":["lab"],
     "online":true,"heartbeat_age":12,"last_error":"","tags":{"site":"berlin","model":"esp32"},"state":"downloading",
     "transfer":{"deployment":"dep-1","rollout":"ro-1","state":"downloading","percent":45}},
    {"id":"d2","version":"1.0.0","previous_version":"","slot":"a","slot_state":"confirmed","groups":[],
     "online":false,"heartbeat_age":10800,"last_error":"dep-0: self_test_failed","tags":{},"state":"idle",
     "transfer":null}])"));
  auto r = otactl(fc.api() + "devices --group lab --tag 'site=berlin and model=esp32' --version 1.1.0 "
                             "--state downloading --offline");
  EXPECT_EQ(r.code, 0) << r.out;
  for (const char* cell : {"yes 12s", "no 3h", "model=esp32,site=berlin", "dep-1 downloading 45%",
                           "dep-0: self_test_failed", "PREVIOUS", "TRANSFER"})
    EXPECT_NE(r.out.find(cell), std::string::npos) << cell << "\n" << r.out;
  fc.reply(200, {{"id", "d1"}, {"tags", {{"site", "berlin"}}}});
  r = otactl(fc.api() + "device tag d1 site=berlin --remove model");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("device d1 tags: site=berlin"), std::string::npos) << r.out;
  auto log = fc.log();
  ASSERT_EQ(log.size(), 2u);
  EXPECT_EQ(log[0].path,
            "/api/v1/devices?group=lab&online=false&state=downloading&tag=site=berlin and model=esp32&version=1.1.0");
  EXPECT_EQ(log[1].method, "PUT");
  EXPECT_EQ(log[1].path, "/api/v1/devices/d1/tags");
  EXPECT_EQ(nlohmann::json::parse(log[1].body), nlohmann::json::parse(R"({"site":"berlin","model":null})"));
}

// The argument tests below point at a port where nothing listens: a command that got past its
// argument checks would exit 1 (cannot reach controller), not 2.
const std::string kNoServer = "--api http://127.0.0.1:1 ";

// Exit 2 and every `needles` in the output.
void expect_usage(const std::string& args, std::initializer_list<const char*> needles) {
  auto r = otactl(kNoServer + args);
  EXPECT_EQ(r.code, 2) << args << "\n" << r.out;
  for (const char* n : needles) EXPECT_NE(r.out.find(n), std::string::npos) << args << ": no '" << n << "' in\n" << r.out;
}

TEST(Otactl, RolloutCreateNeedsExactlyOneTarget) {
  expect_usage("rollout create 1.1.0", {"target", "--group", "--devices", "--tags"});
  expect_usage("rollout create 1.1.0 --group g --devices d1", {"--group", "--devices"});
  expect_usage("rollout create 1.1.0 --devices d1 --tags site=berlin", {"--devices", "--tags"});
  expect_usage("rollout create 1.1.0 --devices ''", {"--devices", "empty"});
  expect_usage("rollout create 1.1.0 --devices ,", {"--devices"});
  expect_usage("rollout create --group g", {"IMAGE"});
}

TEST(Otactl, RolloutCreateBadWaveSpecNamesIt) {
  expect_usage("rollout create 1.1.0 --group g --wave abc", {"--wave", "'abc'"});
  expect_usage("rollout create 1.1.0 --group g --wave 10%:150", {"--wave", "'10%:150'", "threshold"});
  expect_usage("rollout create 1.1.0 --group g --wave 10% --wave 0%", {"--wave", "'0%'"});
  expect_usage("rollout create 1.1.0 --group g --wave 101%", {"--wave", "101%"});
  expect_usage("rollout create 1.1.0 --group g --wave 0", {"--wave", "'0'"});
  expect_usage("rollout create 1.1.0 --group g --wave 5:90:5x", {"--wave", "soak", "5x"});
  expect_usage("rollout create 1.1.0 --group g --wave 5:90:5m:1", {"--wave", "too many"});
}

TEST(Otactl, RolloutCreateBadDurationNamesIt) {
  expect_usage("rollout create 1.1.0 --group g --retry-delay 5y", {"--retry-delay", "'5y'"});
  expect_usage("rollout create 1.1.0 --group g --timeout soon", {"--timeout", "'soon'"});
  expect_usage("rollout create 1.1.0 --group g --defer-delay -5m", {"--defer-delay"});
  expect_usage("rollout create 1.1.0 --group g --timeout ''", {"--timeout", "empty"});
}

TEST(Otactl, RolloutCreateBadWindowStartAtAndPolicy) {
  expect_usage("rollout create 1.1.0 --group g --window 25:00-01:00", {"--window", "25:00-01:00"});
  expect_usage("rollout create 1.1.0 --group g --window 22:00", {"--window", "HH:MM-HH:MM"});
  expect_usage("rollout create 1.1.0 --group g --window 02:00-02:00", {"--window", "same"});
  expect_usage("rollout create 1.1.0 --group g --on-failure explode", {"--on-failure", "explode", "pause", "abort"});
  expect_usage("rollout create 1.1.0 --group g --start-at tomorrow", {"--start-at", "tomorrow"});
  expect_usage("rollout create 1.1.0 --group g --start-at 2026-11-26T02:00", {"--start-at", "zone"});
  expect_usage("rollout create 1.1.0 --group g --start-at 2026-02-30T02:00Z", {"--start-at", "range"});
  expect_usage("rollout create 1.1.0 --group g --max-failure 150", {"--max-failure"});
  expect_usage("rollout create 1.1.0 --group g --max-wave-failure -1", {"--max-wave-failure"});
  expect_usage("rollout create 1.1.0 --group g --retries -1", {"--retries"});
  expect_usage("rollout create 1.1.0 --group g --max-concurrent 0", {"--max-concurrent"});
}

TEST(Otactl, RolloutCreateValidArgumentsReachTheController) {
  auto r = otactl(kNoServer +
                  "rollout create 1.1.0 --devices a,b --devices c --wave 10%:90:5m --wave 5 --wave 50%::1h "
                  "--max-wave-failure 10 --max-failure 2.5 --on-failure abort --retries 1 --retry-delay 60 "
                  "--timeout 1h --max-concurrent 50 --start-at 2026-11-26T02:00:00Z --window 22:00-04:00 "
                  "--defer-delay 5m --max-defers 10 --name canary --start");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("cannot reach controller"), std::string::npos) << r.out;
}

TEST(Otactl, RolloutActionsAndWatchNeedAnId) {
  for (const char* a : {"start", "pause", "resume", "abort", "retry", "rollback", "show", "events"})
    expect_usage(std::string("rollout ") + a, {"ID"});
  expect_usage("rollout resume ro-1 --reason x", {"--reason"});  // only pause and abort take one
  expect_usage("rollout", {"subcommand"});
  expect_usage("watch", {"ROLLOUT"});
  expect_usage("watch ro-1 --interval-ms 0", {"--interval-ms"});
  expect_usage("watch ro-1 --retry-for -1", {"--retry-for"});
}

TEST(Otactl, DevicesFiltersAndTags) {
  expect_usage("devices --online --offline", {"--online", "--offline"});
  expect_usage("device tag d1", {"KEY=VALUE", "--remove"});
  expect_usage("device tag d1 site", {"'site'", "KEY=VALUE"});
  expect_usage("device tag d1 =berlin", {"'=berlin'"});
  expect_usage("device tag d1 site=berlin --remove site", {"'site'", "both"});
  expect_usage("device tag d1 --remove a=b", {"--remove", "'a=b'"});
  auto r = otactl(kNoServer + "device tag d1 site=berlin model= --remove old");
  EXPECT_EQ(r.code, 1) << r.out;  // valid: reaches for the controller
}

TEST(Otactl, WatchGivesUpOnAnUnreachableControllerWithExit3) {
  auto r = otactl(kNoServer + "watch ro-1 --interval-ms 100 --retry-for 1");
  EXPECT_EQ(r.code, 3) << r.out;
  EXPECT_NE(r.out.find("cannot reach controller at http://127.0.0.1:1"), std::string::npos) << r.out;
}

TEST(OtactlArgs, Durations) {
  long long s = -1;
  std::string why;
  EXPECT_TRUE(otactl::parse_duration("90", s, why));
  EXPECT_EQ(s, 90);
  EXPECT_TRUE(otactl::parse_duration("30s", s, why));
  EXPECT_EQ(s, 30);
  EXPECT_TRUE(otactl::parse_duration("5m", s, why));
  EXPECT_EQ(s, 300);
  EXPECT_TRUE(otactl::parse_duration("2h", s, why));
  EXPECT_EQ(s, 7200);
  EXPECT_TRUE(otactl::parse_duration("1d", s, why));
  EXPECT_EQ(s, 86400);
  EXPECT_TRUE(otactl::parse_duration("0", s, why));
  EXPECT_EQ(s, 0);
  for (const char* bad : {"", "s", "5y", "-5", "1.5h", "5 m", "1h30m", "99999999999d"})
    EXPECT_FALSE(otactl::parse_duration(bad, s, why)) << bad;
  EXPECT_EQ(otactl::fmt_duration(300), "5m");
  EXPECT_EQ(otactl::fmt_duration(90), "90s");
  EXPECT_EQ(otactl::fmt_duration(86400), "1d");
  EXPECT_EQ(otactl::fmt_age(12), "12s");
  EXPECT_EQ(otactl::fmt_age(3 * 3600 + 5), "3h");
}

TEST(OtactlArgs, Waves) {
  nlohmann::json w;
  std::string why;
  ASSERT_TRUE(otactl::parse_wave("10%:90:5m", w, why)) << why;
  EXPECT_EQ(w, nlohmann::json::parse(R"({"size":"10%","success_threshold":90,"soak":300})"));
  ASSERT_TRUE(otactl::parse_wave("5", w, why)) << why;
  EXPECT_EQ(w, nlohmann::json::parse(R"({"size":5})"));
  ASSERT_TRUE(otactl::parse_wave("100%::30", w, why)) << why;
  EXPECT_EQ(w, nlohmann::json::parse(R"({"size":"100%","soak":30})"));
  ASSERT_TRUE(otactl::parse_wave("50%:97.5", w, why)) << why;
  EXPECT_DOUBLE_EQ(w["success_threshold"].get<double>(), 97.5);
  for (const char* bad : {"", "abc", "%", "0%", "101%", "-5", "0", "10%:150", "10%:x", "10%:90:x", "1:2:3:4", "5%%"})
    EXPECT_FALSE(otactl::parse_wave(bad, w, why)) << bad;
}

TEST(OtactlArgs, WindowsAndTimes) {
  std::string why;
  EXPECT_TRUE(otactl::parse_window("22:00-04:00", why));
  EXPECT_TRUE(otactl::parse_window("00:00-23:59", why));
  for (const char* bad : {"", "22:00", "24:00-01:00", "22:60-01:00", "2:00-4:00", "22:00_04:00", "10:00-10:00"})
    EXPECT_FALSE(otactl::parse_window(bad, why)) << bad;
  long long t = 0;
  ASSERT_TRUE(otactl::parse_time("2026-11-26T02:00:00Z", t, why)) << why;
  EXPECT_EQ(t, 1795658400);
  ASSERT_TRUE(otactl::parse_time("2026-11-26T02:00Z", t, why)) << why;
  EXPECT_EQ(t, 1795658400);
  ASSERT_TRUE(otactl::parse_time("2026-11-26T03:00:00+01:00", t, why)) << why;
  EXPECT_EQ(t, 1795658400);
  ASSERT_TRUE(otactl::parse_time("1795658400", t, why)) << why;
  EXPECT_EQ(t, 1795658400);
  ASSERT_TRUE(otactl::parse_time("2024-02-29 23:30:15+02:30", t, why)) << why;
  EXPECT_EQ(t, 1709240415);
  for (const char* bad : {"", "now", "2026-11-26", "2026-11-26T02:00", "2025-02-29T00:00Z", "2026-13-01T00:00Z",
                          "2026-11-26T24:00Z", "2026-11-26T02:00:00+1:00", "-5"})
    EXPECT_FALSE(otactl::parse_time(bad, t, why)) << bad;
}

}  // namespace

#include <fstream>
#include <sstream>
#include <sys/stat.h>

#include "ota/proto/messages.hpp"
#include "ota/service/signing.hpp"
#include "service_test_util.hpp"
#include "test_env.hpp"

namespace {

// A release key file only its owner may read (what `umask 077` or `chmod 600` gives).
std::string private_key_file(const std::string& path) {
  std::ofstream(path) << ota::service::testing::make_ec_key_pem();
  ::chmod(path.c_str(), 0600);
  return path;
}

std::string file_text(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

unsigned mode_of(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 ? static_cast<unsigned>(st.st_mode & 07777) : 010000u;
}

// First start on a fresh machine: the database and image directories do not exist yet.
// The controller makes them and its API token file before it ever reaches a broker.
TEST(ControllerStartup, CreatesMissingStateDirectories) {
  ota::service::testing::TempDir dir;
  const std::string key = private_key_file(dir.path() + "/release.key");
  const std::string db = dir.path() + "/state/nested/controller.db";
  ota::test::ChildProcess controller(
      {OTA_CONTROLLER_PATH, "--broker-port", "1", "--db", db, "--store",
       dir.path() + "/state/images", "--signing-key", key, "--http", "127.0.0.1:0"},
      dir.path() + "/controller.log");
  ASSERT_GT(controller.pid(), 0);
  struct stat st {};
  ASSERT_TRUE(ota::test::wait_until([&] { return ::stat((db + ".token").c_str(), &st) == 0; },
                                    std::chrono::seconds(10)));
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(::stat((dir.path() + "/state/images").c_str(), &st), 0);
  EXPECT_TRUE(S_ISDIR(st.st_mode));
  EXPECT_TRUE(controller.alive());  // keeps retrying the broker instead of exiting
}

// The attack: a release key other local users can read lets them sign firmware every device
// installs. The controller refuses to start with it, and says how to fix it.
TEST(ControllerStartup, RefusesASigningKeyOthersCanRead) {
  ota::service::testing::TempDir dir;
  const std::string key = private_key_file(dir.path() + "/release.key");
  ASSERT_EQ(::chmod(key.c_str(), 0644), 0);
  const std::string log = dir.path() + "/controller.log";
  ota::test::ChildProcess controller(
      {OTA_CONTROLLER_PATH, "--broker-port", "1", "--db", dir.path() + "/c.db", "--store",
       dir.path() + "/images", "--signing-key", key, "--http", "127.0.0.1:0"},
      log);
  ASSERT_GT(controller.pid(), 0);
  int code = -1;
  ASSERT_TRUE(ota::test::wait_until([&] { return controller.exited(&code); }, std::chrono::seconds(10)))
      << "the controller started with a world-readable key:\n" << file_text(log);
  EXPECT_EQ(code, 1);
  const std::string out = file_text(log);
  EXPECT_NE(out.find("--signing-key " + key + " has mode 0644"), std::string::npos) << out;
  EXPECT_NE(out.find("chmod 600 " + key), std::string::npos) << out;
  EXPECT_EQ(out.find("http API listening"), std::string::npos) << out;
  struct stat st {};
  EXPECT_NE(::stat((dir.path() + "/c.db").c_str(), &st), 0) << "refused before touching the database";
  EXPECT_NE(::stat((dir.path() + "/images").c_str(), &st), 0) << "refused before making directories";
}

// With the key made private it starts; what it creates is for its own user only, and a
// database an older version left world-readable is made private.
TEST(ControllerStartup, PrivateKeyStartsAndStateFilesArePrivate) {
  ota::service::testing::TempDir dir;
  const std::string key = private_key_file(dir.path() + "/release.key");
  const std::string db = dir.path() + "/state/controller.db";
  const std::string log = dir.path() + "/controller.log";
  std::vector<std::string> argv{OTA_CONTROLLER_PATH, "--broker-port", "1", "--db", db,
                                "--store", dir.path() + "/state/images", "--signing-key", key,
                                "--http", "127.0.0.1:0"};
  {
    ota::test::ChildProcess controller(argv, log);
    ASSERT_GT(controller.pid(), 0);
    ASSERT_TRUE(ota::test::wait_until(
        [&] { return file_text(log).find("http API listening") != std::string::npos; },
        std::chrono::seconds(10)))
        << file_text(log);
    EXPECT_EQ(mode_of(db), 0600u);
    EXPECT_EQ(mode_of(db + ".token"), 0600u);
    EXPECT_EQ(mode_of(dir.path() + "/state"), 0700u);
    EXPECT_EQ(mode_of(dir.path() + "/state/images"), 0700u);
    for (const char* f : {"-wal", "-shm"}) {
      if (mode_of(db + f) != 010000u) {  // present
        EXPECT_EQ(mode_of(db + f), 0600u) << f;
      }
    }
    controller.stop();
  }
  // As an earlier version (umask 022) left it.
  ASSERT_EQ(::chmod(db.c_str(), 0644), 0);
  const std::string log2 = dir.path() + "/controller2.log";
  ota::test::ChildProcess again(argv, log2);
  ASSERT_TRUE(ota::test::wait_until(
      [&] { return file_text(log2).find("http API listening") != std::string::npos; },
      std::chrono::seconds(10)))
      << file_text(log2);
  EXPECT_EQ(mode_of(db), 0600u);
  EXPECT_NE(file_text(log2).find(db + " had mode 0644; made it 0600"), std::string::npos) << file_text(log2);
}

// ------------------------------------------------- offline signing: image sign, keys sign

std::string public_key_file(const std::string& private_path, const std::string& path) {
  auto s = ota::service::Signer::from_pem(file_text(private_path));
  EXPECT_TRUE(s.ok());
  std::ofstream(path) << s->public_pem();
  return path;
}

ota::service::PkeyPtr public_key_of(const std::string& private_path) {
  auto s = ota::service::Signer::from_pem(file_text(private_path));
  EXPECT_TRUE(s.ok());
  auto k = ota::service::public_key_from_pem(s->public_pem());
  EXPECT_TRUE(k.ok());
  return std::move(*k);
}

// No API token and no controller: signing is offline.
Run offline(const std::string& args) { return otactl(args, ""); }

TEST(OtactlImageSign, ArgumentErrors) {
  ota::service::testing::TempDir dir;
  const std::string key = private_key_file(dir.path() + "/release.pem");
  const std::string fw = dir.path() + "/fw.bin";
  std::ofstream(fw) << "firmware bytes";
  auto r = offline("image sign " + fw + " --version 1.0.0 --hw m1");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("--key"), std::string::npos) << r.out;
  r = offline("image sign " + fw + " --key " + key + " --hw m1");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("--version"), std::string::npos) << r.out;
  r = offline("image sign " + fw + " --key " + key + " --version 1.0");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("--hw"), std::string::npos) << r.out;
  r = offline("image sign " + fw + " --key " + key + " --version 1.0 --hw m1");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("'1.0' is not a semantic version"), std::string::npos) << r.out;
  r = offline("image sign " + fw + " --key " + key + " --version 1.0.0 --hw 'a b'");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("--hw 'a b' is not a valid model name"), std::string::npos) << r.out;
  r = offline("image sign " + fw + " --key " + key + " --version 1.0.0 --hw m1 --counter 1000001");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("--counter"), std::string::npos) << r.out;
  r = offline("image sign " + dir.path() + "/missing.bin --key " + key + " --version 1.0.0 --hw m1");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("missing.bin"), std::string::npos) << r.out;
  r = offline("image sign " + fw + " --key " + dir.path() + "/nokey.pem --version 1.0.0 --hw m1");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("nokey.pem"), std::string::npos) << r.out;
  struct stat st {};
  EXPECT_NE(::stat((fw + ".release.json").c_str(), &st), 0) << "nothing written on an error";
}

// Whoever reads the release key can release software: refused like the controller's key.
TEST(OtactlImageSign, RefusesAKeyOthersCanRead) {
  ota::service::testing::TempDir dir;
  const std::string key = private_key_file(dir.path() + "/release.pem");
  ASSERT_EQ(::chmod(key.c_str(), 0640), 0);
  const std::string fw = dir.path() + "/fw.bin";
  std::ofstream(fw) << "firmware bytes";
  auto r = offline("image sign " + fw + " --key " + key + " --version 1.0.0 --hw m1");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("--key " + key + " has mode 0640"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("chmod 600 " + key), std::string::npos) << r.out;
  struct stat st {};
  EXPECT_NE(::stat((fw + ".release.json").c_str(), &st), 0);
}

TEST(OtactlImageSign, WritesAReleaseFileThatVerifiesWithTheReleaseKey) {
  ota::service::testing::TempDir dir;
  const std::string key = private_key_file(dir.path() + "/release.pem");
  const std::string fw = dir.path() + "/fw.bin";
  const std::string bytes = "firmware bytes \x01\x02";
  std::ofstream(fw, std::ios::binary) << bytes;
  auto r = offline("image sign " + fw + " --key " + key + " --version 1.2.0 --hw m1 --hw m2 --counter 4");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("otactl image add " + fw + " --release " + fw + ".release.json"), std::string::npos) << r.out;
  std::string text = file_text(fw + ".release.json");
  while (!text.empty() && text.back() == '\n') text.pop_back();
  ota::proto::Manifest m;
  ASSERT_FALSE(ota::proto::decode_release(text.data(), text.size(), m)) << text;
  EXPECT_EQ(std::string(m.version.c_str()), "1.2.0");
  ASSERT_EQ(m.hw_count, 2u);
  EXPECT_EQ(std::string(m.hw[1].c_str()), "m2");
  EXPECT_EQ(m.counter, 4u);
  EXPECT_EQ(m.size, bytes.size());
  EXPECT_EQ(std::string(m.sha256.c_str()), ota::service::sha256_hex(bytes.data(), bytes.size()));
  EXPECT_EQ(m.kind, ota::proto::ImageKind::firmware);
  auto pub = public_key_of(key);
  EXPECT_TRUE(ota::service::verify_release(pub.get(), m));
  m.counter = 5;  // what the signature covers
  EXPECT_FALSE(ota::service::verify_release(pub.get(), m));
  // -o names the file.
  r = offline("image sign " + fw + " --key " + key + " --version 1.2.0 --hw m1 -o " + dir.path() + "/x.json");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_FALSE(file_text(dir.path() + "/x.json").empty());
}

TEST(OtactlImageSign, ADirectoryIsSignedAsTheBundleWrittenNextToTheReleaseFile) {
  ota::service::testing::TempDir dir;
  const std::string key = private_key_file(dir.path() + "/release.pem");
  const std::string app = dir.path() + "/app";
  ASSERT_EQ(::mkdir(app.c_str(), 0755), 0);
  std::ofstream(app + "/main.py") << "print('hi')\n";
  auto r = offline("image sign " + app + "/ --key " + key + " --version 1.0.0 --hw m1");
  ASSERT_EQ(r.code, 0) << r.out;
  const std::string bundle = file_text(app + ".bundle");
  ASSERT_FALSE(bundle.empty()) << r.out;
  std::string text = file_text(app + ".bundle.release.json");
  while (!text.empty() && text.back() == '\n') text.pop_back();
  ota::proto::Manifest m;
  ASSERT_FALSE(ota::proto::decode_release(text.data(), text.size(), m)) << text;
  EXPECT_EQ(m.kind, ota::proto::ImageKind::bundle);
  EXPECT_EQ(std::string(m.sha256.c_str()), ota::service::sha256_hex(bundle.data(), bundle.size()));
  // With -o elsewhere, the bundle goes next to it.
  ASSERT_EQ(::mkdir((dir.path() + "/out").c_str(), 0755), 0);
  r = offline("image sign " + app + " --key " + key + " --version 1.0.0 --hw m1 -o " + dir.path() + "/out/r.json");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(file_text(dir.path() + "/out/app.bundle"), bundle);
}

// `image add --release`: the release file decides; contradicting flags and other bytes are
// refused before anything is sent (the API address below has no controller).
TEST(OtactlImageSign, ImageAddWithAReleaseFileRefusesConflictsAndOtherBytes) {
  ota::service::testing::TempDir dir;
  const std::string key = private_key_file(dir.path() + "/release.pem");
  const std::string fw = dir.path() + "/fw.bin";
  std::ofstream(fw) << "firmware bytes";
  ASSERT_EQ(offline("image sign " + fw + " --key " + key + " --version 1.2.0 --hw m1 --counter 2").code, 0);
  const std::string rel = fw + ".release.json";
  const std::string api = "--api http://127.0.0.1:1 ";
  auto r = otactl(api + "image add " + fw + " --release " + rel + " --version 1.2.1");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("--version 1.2.1 conflicts with the release file " + rel + ", which signed version 1.2.0"),
            std::string::npos)
      << r.out;
  r = otactl(api + "image add " + fw + " --release " + rel + " --hw m2");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("--hw m2 conflicts"), std::string::npos) << r.out;
  r = otactl(api + "image add " + fw + " --release " + rel + " --counter 3");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("--counter 3 conflicts"), std::string::npos) << r.out;
  r = otactl(api + "image add " + fw + " --release " + rel + " --security-release");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("--security-release"), std::string::npos) << r.out;
  r = otactl(api + "image add " + fw + " --release " + rel + " --kind bundle");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("--kind bundle conflicts"), std::string::npos) << r.out;
  const std::string other = dir.path() + "/other.bin";
  std::ofstream(other) << "other bytes";
  r = otactl(api + "image add " + other + " --release " + rel);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("is not the image the release file " + rel + " signed"), std::string::npos) << r.out;
  r = otactl(api + "image add " + fw + " --release " + dir.path() + "/none.json");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("cannot read release file"), std::string::npos) << r.out;
  std::ofstream(dir.path() + "/bad.json") << "{\"v\":1,\"type\":\"release\"}";
  r = otactl(api + "image add " + fw + " --release " + dir.path() + "/bad.json");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("is not a release signature made by `otactl image sign`"), std::string::npos) << r.out;
  // Consistent flags pass the local checks and reach for the controller.
  r = otactl(api + "image add " + fw + " --release " + rel + " --version 1.2.0 --hw m1");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("cannot reach controller"), std::string::npos) << r.out;
}

TEST(OtactlKeysSign, ArgumentErrors) {
  ota::service::testing::TempDir dir;
  const std::string root = private_key_file(dir.path() + "/root.pem");
  const std::string root_pub = public_key_file(root, dir.path() + "/root.pub.pem");
  std::vector<std::string> pubs;
  for (int i = 0; i < 5; ++i)
    pubs.push_back(public_key_file(private_key_file(dir.path() + "/k" + std::to_string(i) + ".pem"),
                                   dir.path() + "/k" + std::to_string(i) + ".pub.pem"));
  const std::string out = " -o " + dir.path() + "/ks.json";
  auto r = offline("keys sign --version 1 --release " + pubs[0] + out);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("--root"), std::string::npos) << r.out;
  r = offline("keys sign --root " + root + " --release " + pubs[0] + out);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("--version"), std::string::npos) << r.out;
  r = offline("keys sign --root " + root + " --version 0 --release " + pubs[0] + out);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("--version"), std::string::npos) << r.out;
  r = offline("keys sign --root " + root + " --version 1 --release " + pubs[0]);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("--output"), std::string::npos) << r.out;
  r = offline("keys sign --root " + root + " --version 1 --online " + pubs[0] + out);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("at least one --release"), std::string::npos) << r.out;
  r = offline("keys sign --root " + root + " --version 1 --release " + root_pub + out);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("is the root key"), std::string::npos) << r.out;
  r = offline("keys sign --root " + root + " --version 1 --release " + pubs[0] + " --online " + pubs[0] + out);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("is the same key"), std::string::npos) << r.out;
  r = offline("keys sign --root " + root + " --version 1 --release " + pubs[0] + " --release " + pubs[1] +
              " --release " + pubs[2] + " --release " + pubs[3] + " --online " + pubs[4] + out);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("too many keys"), std::string::npos) << r.out;
  r = offline("keys sign --root " + root + " --version 1 --release " + dir.path() + "/k0.pem" + out);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("not a PEM public key"), std::string::npos) << r.out;
  ASSERT_EQ(::chmod(root.c_str(), 0644), 0);
  r = offline("keys sign --root " + root + " --version 1 --release " + pubs[0] + out);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("--root " + root + " has mode 0644"), std::string::npos) << r.out;
  struct stat st {};
  EXPECT_NE(::stat((dir.path() + "/ks.json").c_str(), &st), 0) << "nothing written on an error";
}

TEST(OtactlKeysSign, WritesAKeySetSignedByTheRoot) {
  ota::service::testing::TempDir dir;
  const std::string root = private_key_file(dir.path() + "/root.pem");
  const std::string rel = public_key_file(private_key_file(dir.path() + "/r.pem"), dir.path() + "/r.pub.pem");
  const std::string onl = public_key_file(private_key_file(dir.path() + "/o.pem"), dir.path() + "/o.pub.pem");
  const std::string nxt = public_key_file(private_key_file(dir.path() + "/n.pem"), dir.path() + "/n.pub.pem");
  auto r = offline("keys sign --root " + root + " --version 7 --release " + rel + " --online " + onl +
                   " --next-root " + nxt + " -o " + dir.path() + "/ks.json");
  ASSERT_EQ(r.code, 0) << r.out;
  std::string text = file_text(dir.path() + "/ks.json");
  while (!text.empty() && text.back() == '\n') text.pop_back();
  ota::proto::KeySet ks;
  ASSERT_FALSE(ota::proto::decode_keyset(text.data(), text.size(), ks)) << text;
  EXPECT_EQ(ks.version, 7u);
  ASSERT_EQ(ks.key_count, 3u);
  EXPECT_EQ(ks.keys[0].role, ota::proto::KeyRole::release);
  EXPECT_EQ(ks.keys[1].role, ota::proto::KeyRole::online);
  EXPECT_EQ(ks.keys[2].role, ota::proto::KeyRole::root);
  EXPECT_TRUE(ota::service::check_keyset_ids(ks).ok());
  auto pub = public_key_of(root);
  EXPECT_TRUE(ota::service::verify_keyset(pub.get(), ks));
  ks.version = 8;
  EXPECT_FALSE(ota::service::verify_keyset(pub.get(), ks));
}

}  // namespace
