// Application bundles end to end: a real mosquitto, ota-controller, ota-devsim in --app-dir
// mode (BundleFlash) and otactl building the bundle from a directory.
#include <sys/stat.h>

#include <fstream>

#include <gtest/gtest.h>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include "test_env.hpp"

namespace {

using namespace std::chrono_literals;
using json = nlohmann::json;
using ota::test::Broker;
using Child = ota::test::ChildProcess;
using ota::test::Pki;
using ota::test::TempDir;
using ota::test::wait_until;
using ota::test::read_file;

bool exists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

void write_file(const std::string& path, const std::string& data) {
  for (std::size_t s = path.find('/', 1); s != std::string::npos; s = path.find('/', s + 1)) {
    ::mkdir(path.substr(0, s).c_str(), 0755);
  }
  std::ofstream(path, std::ios::binary) << data;
}

const std::vector<std::string> kApps{"app-001", "app-002"};
const std::string kWifi = "{\"ssid\":\"plant-3\",\"psk\":\"do-not-touch\"}";

class Bundles : public ::testing::Test {
 protected:
  void SetUp() override {
    pki_ = std::make_unique<Pki>(ota::test::make_pki(
        dir_.path() + "/pki", {{"app-001", {"apps"}}, {"app-002", {"apps"}}}));
    broker_ = std::make_unique<Broker>(*pki_);
    http_port_ = ota::test::free_loopback_port();
    controller_ = std::make_unique<Child>(
        std::vector<std::string>{OTA_CONTROLLER_BIN, "--broker-port",
                                 std::to_string(broker_->port()), "--ca", pki_->ca_cert(),
                                 "--cert", pki_->controller_cert(), "--key",
                                 pki_->controller_key(), "--db", dir_.path() + "/ctl.db",
                                 "--store", dir_.path() + "/images", "--signing-key",
                                 pki_->release_key(), "--http",
                                 "127.0.0.1:" + std::to_string(http_port_), "--acl-file",
                                 pki_->acl_path()},
        dir_.path() + "/controller.log");
    ASSERT_GT(controller_->pid(), 0);
    ASSERT_TRUE(wait_until(
        [&] {
          httplib::Client c("127.0.0.1", http_port_);
          auto r = c.Get("/api/v1/health");
          return r && r->status == 200;
        },
        15s));
    std::ifstream tf(dir_.path() + "/ctl.db.token");
    std::getline(tf, token_);
    ASSERT_EQ(token_.size(), 64u);
    // The application as installed at the factory: adopted by BundleFlash as tree a, 1.0.0.
    for (const auto& id : kApps) {
      const std::string app = app_dir(id) + "/current/";
      write_file(app + "main.py", "print('v1')\n");
      write_file(app + "wifi.json", kWifi);
      write_file(app + "certs/device.pem", "-----BEGIN CERTIFICATE----- " + id + "\n");
      write_file(app + "old.py", "obsolete\n");
      write_file(app + "data/log.txt", "kept\n");
    }
    fleet_ = std::make_unique<Child>(
        std::vector<std::string>{OTA_DEVSIM_BIN, "--count", "2", "--id-prefix", "app", "--pki",
                                 pki_->dir, "--data", dir_.path() + "/fleet", "--port",
                                 std::to_string(broker_->port()), "--hw", "board-x", "--group",
                                 "apps", "--request-timeout-ms", "1000", "--no-fsync",
                                 "--app-dir", "--protect", "wifi.json,certs/"},
        dir_.path() + "/devsim.log");
    ASSERT_TRUE(wait_until([&] { return online(kApps); }, 20s)) << "devices did not come online";
  }

  void TearDown() override {
    fleet_.reset();
    controller_.reset();
    broker_.reset();
    if (HasFailure()) {
      std::fprintf(stderr, "--- controller log ---\n%s\n--- devsim log ---\n%s\n",
                   tail(read_file(dir_.path() + "/controller.log")).c_str(),
                   tail(read_file(dir_.path() + "/devsim.log")).c_str());
    }
  }

  static std::string tail(const std::string& s) {
    return s.size() > 4000 ? s.substr(s.size() - 4000) : s;
  }

  std::string app_dir(const std::string& id) const { return dir_.path() + "/fleet/" + id + "/app"; }

  json get(const std::string& path) {
    httplib::Client c("127.0.0.1", http_port_);
    c.set_bearer_token_auth(token_);
    auto r = c.Get(path.c_str());
    return r ? json::parse(r->body, nullptr, false) : json();
  }

  bool online(const std::vector<std::string>& ids) {
    for (const auto& id : ids) {
      json d = get("/api/v1/devices/" + id);
      if (!d.is_object() || !d.value("online", false)) return false;
    }
    return true;
  }

  ota::test::CommandResult otactl(std::vector<std::string> args) {
    std::vector<std::string> argv{OTA_OTACTL_BIN, "--api",
                                  "http://127.0.0.1:" + std::to_string(http_port_),
                                  "--token-file", dir_.path() + "/ctl.db.token"};
    argv.insert(argv.end(), args.begin(), args.end());
    return ota::test::run_command(argv);
  }

  TempDir dir_{"bundle-e2e"};
  std::unique_ptr<Pki> pki_;
  std::unique_ptr<Broker> broker_;
  int http_port_ = 0;
  std::string token_;
  std::unique_ptr<Child> controller_;
  std::unique_ptr<Child> fleet_;
};

TEST_F(Bundles, OtactlBuildsABundleFromADirectoryAndDevicesSwitchTheirTree) {
  const std::string src = dir_.path() + "/release-1.1.0";
  write_file(src + "/main.py", "print('v2')\n");
  write_file(src + "/lib/helpers.py", "def helper(): return 42\n");
  write_file(src + "/assets/logo.bin", std::string(20000, '\x5a'));
  ::symlink("main.py", (src + "/link.py").c_str());  // skipped with a warning
  auto add = otactl({"image", "add", src, "--version", "1.1.0", "--hw", "board-x",
                     "--chunk-size", "1024", "--delete", "old.py"});
  ASSERT_EQ(add.exit_code, 0) << add.output;
  EXPECT_NE(add.output.find("bundle of 3 files, 1 deletes"), std::string::npos) << add.output;
  EXPECT_NE(add.output.find("skipping"), std::string::npos) << add.output;
  auto list = otactl({"image", "list"});
  ASSERT_EQ(list.exit_code, 0) << list.output;
  EXPECT_NE(list.output.find("KIND"), std::string::npos) << list.output;
  EXPECT_NE(list.output.find("bundle"), std::string::npos) << list.output;
  auto dep = otactl({"deploy", "1.1.0", "--group", "apps", "--wait", "--timeout", "90"});
  ASSERT_EQ(dep.exit_code, 0) << dep.output;
  for (const auto& id : kApps) {
    SCOPED_TRACE(id);
    json dev = get("/api/v1/devices/" + id);
    EXPECT_EQ(dev["version"], "1.1.0") << dev.dump();
    EXPECT_EQ(dev["slot_state"], "confirmed") << dev.dump();
    const std::string cur = app_dir(id) + "/current/";
    EXPECT_EQ(read_file(cur + "main.py"), "print('v2')\n");
    EXPECT_EQ(read_file(cur + "lib/helpers.py"), "def helper(): return 42\n");
    EXPECT_EQ(read_file(cur + "assets/logo.bin"), std::string(20000, '\x5a'));
    EXPECT_FALSE(exists(cur + "old.py"));
    EXPECT_FALSE(exists(cur + "link.py"));
    EXPECT_EQ(read_file(cur + "wifi.json"), kWifi);  // protected: carried over byte for byte
    EXPECT_EQ(read_file(cur + "certs/device.pem"), "-----BEGIN CERTIFICATE----- " + id + "\n");
    EXPECT_EQ(read_file(cur + "data/log.txt"), "kept\n");
    EXPECT_EQ(read_file(app_dir(id) + "/trees/a/old.py"), "obsolete\n");  // the previous tree
  }
}

TEST_F(Bundles, ABundleThatWouldOverwriteAProtectedFileFailsAndTheTreeStays) {
  const std::string src = dir_.path() + "/evil";
  write_file(src + "/main.py", "print('v9')\n");
  write_file(src + "/wifi.json", "{\"ssid\":\"attacker\"}");
  ASSERT_EQ(otactl({"image", "add", src, "--version", "1.2.0", "--hw", "board-x"}).exit_code, 0);
  auto dep = otactl({"--json", "deploy", "1.2.0", "--device", "app-001", "--wait", "--timeout",
                     "60"});
  EXPECT_EQ(dep.exit_code, 1) << dep.output;  // the device failed
  EXPECT_NE(dep.output.find("flash_error"), std::string::npos) << dep.output;
  json dev = get("/api/v1/devices/app-001");
  EXPECT_EQ(dev["version"], "1.0.0") << dev.dump();
  const std::string cur = app_dir("app-001") + "/current/";
  EXPECT_EQ(read_file(cur + "wifi.json"), kWifi);
  EXPECT_EQ(read_file(cur + "main.py"), "print('v1')\n");
  EXPECT_TRUE(exists(cur + "old.py"));
  EXPECT_NE(read_file(dir_.path() + "/devsim.log").find("protected path 'wifi.json'"),
            std::string::npos);

  // A whole firmware image is not for an application tree: declined as unsupported.
  const std::string fw = dir_.path() + "/fw.bin";
  write_file(fw, std::string(5000, '\x01'));
  ASSERT_EQ(otactl({"image", "add", fw, "--version", "2.0.0", "--hw", "board-x"}).exit_code, 0);
  auto fw_dep = otactl({"deploy", "2.0.0", "--device", "app-002", "--wait", "--timeout", "60"});
  EXPECT_EQ(fw_dep.exit_code, 1) << fw_dep.output;
  EXPECT_NE(fw_dep.output.find("unsupported"), std::string::npos) << fw_dep.output;
}

TEST_F(Bundles, OtactlRefusesADirectoryItCannotBundle) {
  const std::string src = dir_.path() + "/bad";
  write_file(src + "/has space.py", "x");
  auto add = otactl({"image", "add", src, "--version", "1.3.0", "--hw", "board-x"});
  EXPECT_EQ(add.exit_code, 2) << add.output;
  EXPECT_NE(add.output.find("has space.py"), std::string::npos) << add.output;
  auto fw = otactl({"image", "add", dir_.path() + "/pki", "--version", "1.3.0", "--hw",
                    "board-x", "--kind", "firmware"});
  EXPECT_EQ(fw.exit_code, 2) << fw.output;
  EXPECT_NE(fw.output.find("is a directory"), std::string::npos) << fw.output;
  auto del = otactl({"image", "add", dir_.path() + "/ctl.db.token", "--version", "1.3.0", "--hw",
                     "board-x", "--delete", "x"});
  EXPECT_EQ(del.exit_code, 2) << del.output;
}

}  // namespace
