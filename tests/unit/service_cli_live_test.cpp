// otactl's rough edges (issue 13, item 5): the built otactl binary against a real Controller
// behind a real HttpApi on loopback (devices are hellos sent straight to the controller), or
// alone where no controller is needed.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <regex>
#include <set>
#include <sstream>
#include <string>

#include "ota/service/http_api.hpp"
#include "service_controller_fixture.hpp"

namespace {

using nlohmann::json;
using ota::service::testing::bytes_of;

struct Outcome {
  int code = -1;
  std::string out;  // stdout + stderr
};

Outcome run_otactl(const std::string& args, const std::string& env) {
  const std::string cmd = "env -u OTA_API -u OTA_API_TOKEN -u OTA_API_TOKEN_FILE -u TZ " + env +
                          " " + OTACTL_PATH + " " + args + " 2>&1";
  Outcome r;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return r;
  char buf[4096];
  std::size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  const int st = pclose(p);
  r.code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

// The line of `out` that contains `needle` ("" if none).
std::string line_with(const std::string& out, const std::string& needle) {
  std::istringstream in(out);
  for (std::string l; std::getline(in, l);)
    if (l.find(needle) != std::string::npos) return l;
  return "";
}

// ------------------------------------------------------------------ without a controller

TEST(OtactlCommands, UnknownCommandsAreNamedWithTheClosestOne) {
  auto r = run_otactl("imag list", "");
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("unknown command 'imag' (did you mean 'image'?)"), std::string::npos)
      << r.out;
  r = run_otactl("bogus", "");
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("unknown command 'bogus'"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("A subcommand is required"), std::string::npos) << r.out;
  r = run_otactl("--json image lsit", "");
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("unknown image command 'lsit' (did you mean 'list'?)"), std::string::npos)
      << r.out;
  r = run_otactl("--api http://127.0.0.1:1 rollout strat ro-1", "");
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("did you mean 'start'?"), std::string::npos) << r.out;
  r = run_otactl("rollout", "");
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("otactl rollout: a subcommand is required: create, start"),
            std::string::npos)
      << r.out;
  // Arguments of a command are not commands.
  EXPECT_EQ(run_otactl("--api not-a-url status deploymnt", "").code, 2);
}

TEST(OtactlCommands, HelpSaysOtactlAndHasTheExitCodeTable) {
  auto r = run_otactl("--help", "");
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("Usage: otactl "), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find(OTACTL_PATH), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("Exit codes:"), std::string::npos) << r.out;
  for (const char* code : {"  0  ", "  1  ", "  2  ", "  3  "})
    EXPECT_NE(r.out.find(code), std::string::npos) << code << "\n" << r.out;
  r = run_otactl("image add --help", "");
  EXPECT_NE(r.out.find("Usage: otactl image add"), std::string::npos) << r.out;
}

TEST(OtactlCommands, BadValuesExit2BeforeAnythingIsSent) {
  // Port 1: nothing listens; a request would exit 1.
  const std::string api = "--api http://127.0.0.1:1 ";
  auto r = run_otactl(api + "image add /etc/hostname --version v1.1 --hw m1", "OTA_API_TOKEN=t");
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("--version 'v1.1' is not a semantic version"), std::string::npos) << r.out;
  r = run_otactl(api + "image add /etc/hostname --version 1.1.0 --hw 'a b'", "OTA_API_TOKEN=t");
  EXPECT_EQ(r.code, 2) << r.out;
  r = run_otactl(api + "image add /etc/hostname --version 1.1.0 --hw m1 --chunk-size 100",
                 "OTA_API_TOKEN=t");
  EXPECT_EQ(r.code, 2) << r.out;
}

TEST(OtactlCommands, ABadOtaApiIsNamedAsOtaApi) {
  auto r = run_otactl("status", "OTA_API_TOKEN=t OTA_API=localhost:8080");
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("invalid OTA_API URL 'localhost:8080'"), std::string::npos) << r.out;
  r = run_otactl("--api localhost:8080 status", "OTA_API_TOKEN=t OTA_API=http://127.0.0.1:1");
  EXPECT_NE(r.out.find("invalid --api URL"), std::string::npos) << r.out;
}

// ------------------------------------------------------------------ against a controller

class OtactlLiveController : public ota::service::testing::ControllerTest {
 protected:
  void SetUp() override {
    ControllerTest::SetUp();
    auto t = ota::service::load_or_create_api_token(dir.file("ota.db.token"));
    ASSERT_TRUE(t.ok()) << t.error();
    auto tk = ota::service::ApiTokens::open(dir.file("ota.db"), *t);
    ASSERT_TRUE(tk.ok()) << tk.error();
    tokens = std::move(*tk);
    api = std::make_unique<ota::service::HttpApi>(
        *ctl, [] { return true; }, *tokens);
    auto p = api->start("127.0.0.1", 0);
    ASSERT_TRUE(p.ok()) << p.error();
    port = *p;
  }
  void TearDown() override {
    if (api) api->stop();
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port); }
  Outcome otactl(const std::string& args, const std::string& env = "") {
    return run_otactl("--api " + url() + " " + args,
                      "OTA_API_TOKEN_FILE=" + dir.file("ota.db.token") + " " + env);
  }

  std::unique_ptr<ota::service::ApiTokens> tokens;
  std::unique_ptr<ota::service::HttpApi> api;
  int port = 0;
};

TEST_F(OtactlLiveController, DeployToAGroupWithoutDevicesIsRefusedNamingIt) {
  add(bytes_of(3000), "1.1.0");
  hello("d1", "1.0.0", {"lab"});
  auto r = otactl("deploy 1.1.0 --group nosuchgroup");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("group nosuchgroup has no known devices"), std::string::npos) << r.out;
  EXPECT_TRUE(ctl->deployments_json()->empty()) << "nothing was created";
  r = otactl("deploy 1.1.0 --group lab");
  EXPECT_EQ(r.code, 0) << r.out;
}

TEST_F(OtactlLiveController, CancelSaysWhatItCancelled) {
  add(bytes_of(3000), "1.1.0");
  hello("d1", "1.0.0", {"lab"});
  auto r = otactl("--json deploy 1.1.0 --device d1");
  ASSERT_EQ(r.code, 0) << r.out;
  const std::string dep = json::parse(r.out)["id"];
  r = otactl("deployment cancel " + dep);
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("deployment " + dep + " cancelled: cancelled 1"), std::string::npos)
      << r.out;
  EXPECT_EQ(r.out.find("()"), std::string::npos) << r.out;
  r = otactl("deployment cancel dep-nosuch");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("unknown deployment dep-nosuch"), std::string::npos) << r.out;
}

TEST_F(OtactlLiveController, EventsOfUnknownIdsAre404AndExit1) {
  hello("d1", "1.0.0");
  for (const char* args : {"events --rollout ro-nosuch", "rollout events ro-nosuch",
                           "events --deployment dep-nosuch", "events --device nosuch"}) {
    auto r = otactl(args);
    EXPECT_EQ(r.code, 1) << args << "\n" << r.out;
    EXPECT_NE(r.out.find("unknown "), std::string::npos) << args << "\n" << r.out;
    EXPECT_EQ(r.out.find("(none)"), std::string::npos) << args << "\n" << r.out;
  }
  auto r = otactl("events --device d1");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("hello"), std::string::npos) << r.out;
}

TEST_F(OtactlLiveController, WatchOnADraftSaysHowToStartItAndExits1AtOnce) {
  add(bytes_of(3000), "1.1.0");
  hello("d1", "1.0.0", {"lab"});
  auto r = otactl("--json rollout create 1.1.0 --group lab");
  ASSERT_EQ(r.code, 0) << r.out;
  const std::string id = json::parse(r.out)["id"];
  r = otactl("watch " + id);
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("rollout " + id + " is a draft"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("otactl rollout start " + id), std::string::npos) << r.out;
}

TEST_F(OtactlLiveController, SizesAreHumanReadableAndExactInJson) {
  ASSERT_FALSE(add(bytes_of(200000), "1.1.0").id.empty());
  auto r = otactl("image list");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("195.3 KiB"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("4.0 KiB"), std::string::npos) << "chunk size\n" << r.out;
  EXPECT_EQ(r.out.find("200000"), std::string::npos) << r.out;
  r = otactl("--json image list");
  EXPECT_NE(r.out.find("200000"), std::string::npos) << r.out;
}

TEST_F(OtactlLiveController, TimesSayTheirZone) {
  add(bytes_of(3000), "1.1.0");
  hello("d1", "1.0.0");
  ASSERT_EQ(otactl("deploy 1.1.0 --device d1").code, 0);
  auto r = otactl("deployment list");
  EXPECT_NE(r.out.find("CREATED (UTC)"), std::string::npos) << r.out;
  r = otactl("image list");
  EXPECT_NE(r.out.find("CREATED (UTC)"), std::string::npos) << r.out;
  r = otactl("device show d1");
  EXPECT_NE(line_with(r.out, "last seen").find(" UTC)"), std::string::npos) << r.out;
  r = otactl("events --device d1");
  EXPECT_NE(r.out.find("TIME (UTC)"), std::string::npos) << r.out;
  // A POSIX TZ needs no zone database: "XYZ" three hours behind UTC.
  r = otactl("--local-time device show d1", "TZ=XYZ3");
  EXPECT_NE(line_with(r.out, "last seen").find(" XYZ)"), std::string::npos) << r.out;
  r = otactl("deployment list --local-time", "TZ=XYZ3");
  EXPECT_NE(r.out.find("CREATED (XYZ)"), std::string::npos) << r.out;
}

TEST_F(OtactlLiveController, A401IsOneShortSentenceNamingTheTokenSource) {
  auto r = run_otactl("--api " + url() + " status", "OTA_API_TOKEN=nope");
  EXPECT_EQ(r.code, 1) << r.out;
  const std::string l = line_with(r.out, "rejected the API token");
  EXPECT_NE(l.find("from OTA_API_TOKEN"), std::string::npos) << r.out;
  EXPECT_NE(l.find("otactl token create"), std::string::npos) << r.out;
  EXPECT_LT(l.size(), 160u) << l;
}

TEST_F(OtactlLiveController, HttpsToAPlainHttpControllerSaysTlsInWords) {
  auto r =
      run_otactl("status", "OTA_API_TOKEN=t OTA_API=https://127.0.0.1:" + std::to_string(port));
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("TLS handshake failed"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("sSLConnection"), std::string::npos) << r.out;
}

// The issue's case: a rollout scheduled for 2030 does not lock its devices now.
TEST_F(OtactlLiveController, AScheduledRolloutLeavesItsDevicesFreeUntilItStarts) {
  add(bytes_of(3000), "1.1.0");
  add(bytes_of(3000, 2), "1.2.0");
  hello("d1", "1.0.0", {"lab"});
  auto r =
      otactl("--json rollout create 1.1.0 --group lab --start-at 2030-01-01T00:00:00Z --start");
  ASSERT_EQ(r.code, 0) << r.out;
  const std::string id = json::parse(r.out)["id"];
  EXPECT_EQ(json::parse(r.out)["state"], "scheduled");
  r = otactl("rollout show " + id);
  EXPECT_NE(r.out.find("devices are claimed when it starts"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("start at 2030-01-01 00:00:00 UTC"), std::string::npos) << r.out;
  r = otactl("deploy 1.2.0 --device d1");
  EXPECT_EQ(r.code, 0) << r.out;
}

TEST_F(OtactlLiveController, RollbackToAVersionNeverUploadedSaysWhatToDo) {
  add(bytes_of(3000), "1.1.0");
  hello("d1", "1.0.0", {"lab"});  // the factory image: never uploaded
  auto r = otactl("--json rollout create 1.1.0 --group lab --start");
  ASSERT_EQ(r.code, 0) << r.out;
  const std::string id = json::parse(r.out)["id"];
  r = otactl("rollout rollback " + id);
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("upload 1.0.0 first: otactl image add FILE --version 1.0.0 --hw m1"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("otactl rollout rollback " + id + " again"), std::string::npos) << r.out;
}

}  // namespace

namespace {

// Every event name the controller writes (the first non-empty string literal of its
// log_action / event / log_event calls, not a comparison operand) is listed in service/API.md,
// where operators look up what `otactl events` shows.
TEST(ApiDoc, ListsEveryEventNameTheControllerWrites) {
  auto read = [](const std::string& path) {
    std::ifstream in(path);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  };
  const std::string api = read(std::string(OTA_SOURCE_DIR) + "/service/API.md");
  ASSERT_FALSE(api.empty());
  const std::regex call(R"re(\b(?:log_action|event|log_event)\(([^;]*?)\);)re");
  const std::regex literal(R"re(((?:==|!=)\s*)?"([^"]*)")re");
  const std::regex name("[a-z]+(_[a-z]+)*");
  std::set<std::string> names;
  const std::string src = std::string(OTA_SOURCE_DIR) + "/service/controller/src";
  for (const auto& entry : std::filesystem::recursive_directory_iterator(src)) {
    if (entry.path().extension() != ".cpp") continue;
    const std::string text = read(entry.path().string());
    for (std::sregex_iterator c(text.begin(), text.end(), call), end; c != end; ++c) {
      const std::string args = (*c)[1];
      for (std::sregex_iterator l(args.begin(), args.end(), literal); l != end; ++l) {
        if ((*l)[1].matched || (*l)[2].length() == 0) continue;  // an operand, or ""
        if (std::regex_match((*l)[2].str(), name)) names.insert((*l)[2]);
        break;
      }
    }
  }
  EXPECT_GT(names.size(), 20u);
  for (const auto& n : names)
    EXPECT_TRUE(std::regex_search(api, std::regex("[^a-z_]" + n + "[^a-z_]")))
        << n << " is not in API.md";
}

// The deletes of API.md through otactl: a rollout that never started, an image nothing
// uses (refused naming its user otherwise), a device decommissioned (history kept).
TEST_F(OtactlLiveController, DeletesADraftRolloutAnUnusedImageAndDecommissionsADevice) {
  add(bytes_of(3000), "1.1.0");
  add(bytes_of(3100), "1.2.0");
  hello("d1", "1.0.0", {"lab"});
  hello("d2", "1.0.0", {"lab"});
  auto r = otactl("--json rollout create 1.1.0 --group lab");
  ASSERT_EQ(r.code, 0) << r.out;
  const std::string ro = json::parse(r.out)["id"];
  r = otactl("rollout delete " + ro);
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("rollout " + ro + " deleted"), std::string::npos) << r.out;
  EXPECT_EQ(otactl("rollout show " + ro).code, 1) << "still there after its delete";

  r = otactl("image delete 1.2.0");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("image 1.2.0"), std::string::npos) << r.out;
  EXPECT_EQ(otactl("--json image list").out.find("1.2.0"), std::string::npos);
  ASSERT_EQ(otactl("deploy 1.1.0 --device d1").code, 0);
  r = otactl("image delete 1.1.0");
  EXPECT_EQ(r.code, 1) << "an image a deployment uses was deleted: " << r.out;
  EXPECT_NE(otactl("--json image list").out.find("1.1.0"), std::string::npos);

  r = otactl("device decommission d2");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("device d2 decommissioned"), std::string::npos) << r.out;
  EXPECT_EQ(otactl("device show d2").code, 1) << "the device record is still there";
  EXPECT_EQ(otactl("rollout delete ro-nosuch").code, 1);
}

}  // namespace
