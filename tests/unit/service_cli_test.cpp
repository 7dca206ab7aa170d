// otactl argument handling: run the built binary with bad arguments.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <string>

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

}  // namespace

#include <fstream>
#include <sys/stat.h>

#include "service_test_util.hpp"
#include "test_env.hpp"

namespace {

// First start on a fresh machine: the database and image directories do not exist yet.
// The controller makes them and its API token file before it ever reaches a broker.
TEST(ControllerStartup, CreatesMissingStateDirectories) {
  ota::service::testing::TempDir dir;
  const std::string key = dir.path() + "/release.key";
  std::ofstream(key) << ota::service::testing::make_ec_key_pem();
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

}  // namespace
