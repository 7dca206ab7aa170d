// End to end on a real mosquitto from broker-config/: the ota-controller and ota-devsim
// binaries as a user runs them, a real SQLite file, real OpenSSL. Devices are killed
// (SIGKILL) mid-download and the controller is killed mid-transfer.
#include <fstream>
#include <random>

#include <gtest/gtest.h>
#include <httplib.h>
#include <nlohmann/json.hpp>
#include <openssl/evp.h>

#include "test_env.hpp"

namespace {

using namespace std::chrono_literals;
using json = nlohmann::json;
using ota::test::Broker;
using Child = ota::test::ChildProcess;
using ota::test::Pki;
using ota::test::TempDir;
using ota::test::wait_until;
using ota::test::random_bytes;
using ota::test::sha256_hex;
using ota::test::read_file;

class EndToEnd : public ::testing::Test {
 protected:
  void SetUp() override {
    std::vector<ota::test::DeviceSpec> specs;
    for (int i = 1; i <= 5; ++i) {
      char id[32];
      std::snprintf(id, sizeof id, "e2e-%03d", i);
      specs.push_back({id, {"lab"}});
    }
    specs.push_back({"solo-001", {}});
    pki_ = std::make_unique<Pki>(ota::test::make_pki(dir_.path() + "/pki", specs));
    broker_ = std::make_unique<Broker>(*pki_);
    http_port_ = ota::test::free_loopback_port();
    start_controller();
  }

  void TearDown() override {
    fleets_.clear();
    controller_.reset();
    broker_.reset();
    if (HasFailure()) {
      std::fprintf(stderr, "--- controller log tail ---\n%s\n",
                   tail(read_file(dir_.path() + "/controller.log")).c_str());
      std::fprintf(stderr, "--- devsim log tail ---\n%s\n",
                   tail(read_file(dir_.path() + "/devsim.log")).c_str());
    }
  }

  static std::string tail(const std::string& s) {
    return s.size() > 4000 ? s.substr(s.size() - 4000) : s;
  }

  void start_controller() {
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
          auto r = client().Get("/api/v1/health");
          return r && r->status == 200;
        },
        15s))
        << "controller did not come up";
    // Created (mode 0600) by the controller before its HTTP API listens.
    std::ifstream tf(token_file());
    std::getline(tf, token_);
    ASSERT_EQ(token_.size(), 64u) << "API token file " << token_file();
  }

  std::string token_file() const { return dir_.path() + "/ctl.db.token"; }

  // One ota-devsim process for `count` devices named PREFIX-001...
  Child& start_fleet(const std::string& id_prefix, int count, std::vector<std::string> extra = {}) {
    std::vector<std::string> argv{OTA_DEVSIM_BIN, "--count", std::to_string(count), "--id-prefix",
                                  id_prefix, "--pki", pki_->dir, "--data",
                                  dir_.path() + "/fleet", "--port",
                                  std::to_string(broker_->port()), "--hw", "board-x",
                                  "--request-timeout-ms", "1000", "--no-fsync"};
    if (id_prefix == "e2e") extra.insert(extra.end(), {"--group", "lab"});
    argv.insert(argv.end(), extra.begin(), extra.end());
    fleets_.push_back(std::make_unique<Child>(argv, dir_.path() + "/devsim.log"));
    return *fleets_.back();
  }

  httplib::Client client(bool with_token = true) {
    httplib::Client c("127.0.0.1", http_port_);
    c.set_connection_timeout(2);
    c.set_read_timeout(10);
    if (with_token && !token_.empty()) c.set_bearer_token_auth(token_);
    return c;
  }

  json get(const std::string& path) {
    auto r = client().Get(path.c_str());
    if (!r) return json();
    return json::parse(r->body, nullptr, false);
  }

  bool devices_online(const std::vector<std::string>& ids) {
    for (const auto& id : ids) {
      json d = get("/api/v1/devices/" + id);
      if (!d.is_object() || !d.value("online", false)) return false;
    }
    return true;
  }

  std::string add_image(const std::string& bytes, const std::string& version) {
    auto r = client().Post(("/api/v1/images?version=" + version + "&hw=board-x").c_str(), bytes,
                           "application/octet-stream");
    if (!r || (r->status != 201 && r->status != 200)) {
      ADD_FAILURE() << "image add failed: " << (r ? r->body : "no response");
      return {};
    }
    return json::parse(r->body)["id"].get<std::string>();
  }

  std::string deploy(const json& body) {
    auto r = client().Post("/api/v1/deployments", body.dump(), "application/json");
    if (!r || r->status != 201) {
      ADD_FAILURE() << "deploy failed: " << (r ? r->body : "no response");
      return {};
    }
    return json::parse(r->body)["id"].get<std::string>();
  }

  json deployment(const std::string& id) { return get("/api/v1/deployments/" + id); }

  int percent_of(const std::string& dep, const std::string& device) {
    json d = deployment(dep);
    if (!d.contains("devices")) return -1;
    for (const auto& row : d["devices"]) {
      if (row["device"] == device) return row["percent"].get<int>();
    }
    return -1;
  }

  std::string device_slot_file(const std::string& id, char slot) {
    return dir_.path() + "/fleet/" + id + "/flash/slot_" + slot + ".bin";
  }

  TempDir dir_{"e2e"};
  std::unique_ptr<Pki> pki_;
  std::unique_ptr<Broker> broker_;
  int http_port_ = 0;
  std::string token_;
  std::unique_ptr<Child> controller_;
  std::vector<std::unique_ptr<Child>> fleets_;
};

const std::vector<std::string> kLab{"e2e-001", "e2e-002", "e2e-003", "e2e-004", "e2e-005"};

TEST_F(EndToEnd, FiveDevicesUpdateThroughGroupOffer) {
  start_fleet("e2e", 5);
  ASSERT_TRUE(wait_until([&] { return devices_online(kLab); }, 20s));
  const std::string image = random_bytes(300 * 1024 + 123, 1);  // last chunk partial
  const std::string image_id = add_image(image, "1.1.0");
  const std::string dep = deploy({{"image", "1.1.0"}, {"group", "lab"}});
  ASSERT_FALSE(dep.empty());
  ASSERT_TRUE(wait_until([&] { return deployment(dep).value("state", "") == "completed"; }, 60s))
      << deployment(dep).dump(2);
  json d = deployment(dep);
  EXPECT_EQ(d["counts"]["succeeded"], 5) << d.dump(2);
  for (const auto& id : kLab) {
    json dev = get("/api/v1/devices/" + id);
    EXPECT_EQ(dev["version"], "1.1.0") << dev.dump();
    EXPECT_EQ(dev["slot_state"], "confirmed") << dev.dump();
    // What the device booted is byte for byte the signed image.
    EXPECT_EQ(sha256_hex(read_file(device_slot_file(id, 'b'))), sha256_hex(image)) << id;
  }
  // The CLI shows the same truth to scripts.
  auto cli = ota::test::run_command({OTA_OTACTL_BIN, "--api",
                                     "http://127.0.0.1:" + std::to_string(http_port_),
                                     "--token-file", token_file(), "--json", "devices",
                                     "--group", "lab"});
  ASSERT_EQ(cli.exit_code, 0) << cli.output;
  json listed = json::parse(cli.output, nullptr, false);
  ASSERT_TRUE(listed.is_array()) << cli.output;
  EXPECT_EQ(listed.size(), 5u);
  for (const auto& dev : listed) EXPECT_EQ(dev["version"], "1.1.0") << dev.dump();
}

TEST_F(EndToEnd, DeviceKilledMidDownloadResumesWithoutStartingOver) {
  // Slow flash (6 ms per 4 KiB chunk, 3 s a download) so the kill lands mid-download: the
  // device reports progress at most once a second.
  const std::vector<std::string> slow{"--flash-write-delay-us", "6000"};
  start_fleet("solo", 1, slow);
  ASSERT_TRUE(wait_until([&] { return devices_online({"solo-001"}); }, 20s));
  const std::size_t size = 2 * 1024 * 1024;
  const std::string image = random_bytes(size, 2);
  add_image(image, "2.0.0");
  const std::string dep = deploy({{"image", "2.0.0"}, {"device", "solo-001"}});
  ASSERT_TRUE(wait_until([&] { return percent_of(dep, "solo-001") >= 30; }, 60s))
      << deployment(dep).dump(2);
  fleets_.back()->kill9();
  const int at_kill = percent_of(dep, "solo-001");
  EXPECT_LT(at_kill, 100) << "the kill should land mid-download";

  start_fleet("solo", 1, slow);
  ASSERT_TRUE(wait_until(
      [&] { return get("/api/v1/devices/solo-001").value("version", "") == "2.0.0"; }, 60s))
      << deployment(dep).dump(2);
  json d = deployment(dep);
  EXPECT_EQ(d["counts"]["succeeded"], 1) << d.dump(2);
  const auto sent = d["devices"][0]["bytes_sent"].get<std::uint64_t>();
  EXPECT_GE(sent, size);
  EXPECT_LT(static_cast<double>(sent), 1.3 * static_cast<double>(size))
      << "resumed download re-fetched too much: " << sent << " bytes for a " << size
      << " byte image";
  EXPECT_EQ(sha256_hex(read_file(device_slot_file("solo-001", 'b'))), sha256_hex(image));
}

TEST_F(EndToEnd, ControllerKilledMidTransferAndRestartedCompletesEveryTransfer) {
  // Slow flash (8 ms a chunk, 3 s a download): devices report progress at most once a second,
  // so the controller must see a download in progress before it ends.
  start_fleet("e2e", 5, {"--flash-write-delay-us", "8000"});
  ASSERT_TRUE(wait_until([&] { return devices_online(kLab); }, 20s));
  const std::string image = random_bytes(1536 * 1024, 3);
  add_image(image, "1.2.0");
  const std::string dep = deploy({{"image", "1.2.0"}, {"group", "lab"}});
  ASSERT_TRUE(wait_until(
      [&] {
        json d = deployment(dep);
        return d.value("percent", 0) >= 15 && d["counts"].value("downloading", 0) >= 1;
      },
      60s))
      << deployment(dep).dump(2);
  controller_->kill9();
  start_controller();
  ASSERT_TRUE(wait_until([&] { return deployment(dep).value("state", "") == "completed"; }, 90s))
      << deployment(dep).dump(2);
  json d = deployment(dep);
  EXPECT_EQ(d["counts"]["succeeded"], 5) << d.dump(2);
  for (const auto& id : kLab) {
    EXPECT_EQ(get("/api/v1/devices/" + id)["version"], "1.2.0") << id;
    EXPECT_EQ(sha256_hex(read_file(device_slot_file(id, 'b'))), sha256_hex(image)) << id;
  }
}

TEST_F(EndToEnd, ForeignAndMalformedDeviceMessagesAreDroppedAndServiceContinues) {
  start_fleet("e2e", 1);
  ASSERT_TRUE(wait_until([&] { return devices_online({"e2e-001"}); }, 20s));
  // solo-001's certificate, speaking for a device id it does not own: the broker's ACL
  // drops it, so the controller never learns of "e2e-005".
  ota::test::MqttTestClient rogue(ota::test::ClientOptions::device(*pki_, "solo-001", broker_->port()));
  ASSERT_TRUE(rogue.connect().ok());
  const std::string hello_for_other =
      R"({"v":1,"type":"hello","device":"e2e-005","hw":"board-x","version":"9.9.9","slot":"a",)"
      R"("slot_state":"confirmed","free":1000,"counter":0})";
  rogue.publish("ota/v1/dev/e2e-005/up/presence", hello_for_other, 1, true);
  // Malformed payloads on its own topics: logged and dropped.
  rogue.publish("ota/v1/dev/solo-001/up/event", "{not json", 1);
  rogue.publish("ota/v1/dev/solo-001/up/req", R"({"v":1,"type":"chunk_req","first":-1})", 1);
  // Then a valid hello on its own topic: once the controller shows it, everything sent
  // before it has been processed.
  const std::string own_hello =
      R"({"v":1,"type":"hello","device":"solo-001","hw":"board-x","version":"1.0.7","slot":"a",)"
      R"("slot_state":"confirmed","free":1000,"counter":0})";
  ASSERT_EQ(rogue.publish("ota/v1/dev/solo-001/up/presence", own_hello, 1, true), 0);
  ASSERT_TRUE(wait_until(
      [&] { return get("/api/v1/devices/solo-001").value("version", "") == "1.0.7"; }, 10s));
  auto r = client().Get("/api/v1/devices/e2e-005");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 404) << "a device must not be able to speak for another: " << r->body;
  EXPECT_TRUE(controller_->alive());

  // The controller keeps serving the real fleet.
  const std::string image = random_bytes(64 * 1024, 4);
  add_image(image, "1.3.0");
  const std::string dep = deploy({{"image", "1.3.0"}, {"device", "e2e-001"}});
  ASSERT_TRUE(wait_until([&] { return deployment(dep).value("state", "") == "completed"; }, 60s))
      << deployment(dep).dump(2);
  EXPECT_EQ(deployment(dep)["counts"]["succeeded"], 1);
}

TEST_F(EndToEnd, CorruptedFlashWriteIsCaughtByTheHashAndTheOldImageKeepsBooting) {
  start_fleet("solo", 1, {"--corrupt-ids", "solo-001", "--corrupt-offset", "5000"});
  ASSERT_TRUE(wait_until([&] { return devices_online({"solo-001"}); }, 20s));
  add_image(random_bytes(64 * 1024, 5), "1.4.0");
  const std::string dep = deploy({{"image", "1.4.0"}, {"device", "solo-001"}});
  ASSERT_TRUE(wait_until([&] { return deployment(dep).value("state", "") == "completed"; }, 60s))
      << deployment(dep).dump(2);
  json d = deployment(dep);
  EXPECT_EQ(d["counts"]["failed"], 1) << d.dump(2);
  EXPECT_EQ(d["devices"][0]["reason"], "hash_mismatch") << d.dump(2);
  EXPECT_EQ(get("/api/v1/devices/solo-001")["version"], "1.0.0");
}

}  // namespace

namespace {

TEST_F(EndToEnd, FailedSelfTestRollsBackToTheOldImageAndIsReported) {
  start_fleet("solo", 1, {"--fail-self-test", "solo-001"});
  ASSERT_TRUE(wait_until([&] { return devices_online({"solo-001"}); }, 20s));
  add_image(random_bytes(128 * 1024, 6), "1.5.0");
  const std::string dep = deploy({{"image", "1.5.0"}, {"device", "solo-001"}});
  ASSERT_TRUE(wait_until([&] { return deployment(dep).value("state", "") == "completed"; }, 60s))
      << deployment(dep).dump(2);
  json d = deployment(dep);
  EXPECT_EQ(d["counts"]["failed"], 1) << d.dump(2);
  EXPECT_EQ(d["devices"][0]["reason"], "self_test_failed") << d.dump(2);
  ASSERT_TRUE(wait_until(
      [&] { return get("/api/v1/devices/solo-001").value("slot_state", "") == "rolled_back"; }, 10s))
      << get("/api/v1/devices/solo-001").dump();
  EXPECT_EQ(get("/api/v1/devices/solo-001")["version"], "1.0.0");
}

TEST_F(EndToEnd, NetworkDropMidDownloadReconnectsAndResumes) {
  start_fleet("solo", 1,
              {"--drop-ids", "solo-001", "--drop-at", "40", "--flash-write-delay-us", "500"});
  ASSERT_TRUE(wait_until([&] { return devices_online({"solo-001"}); }, 20s));
  const std::size_t size = 2 * 1024 * 1024;
  const std::string image = random_bytes(size, 7);
  add_image(image, "1.6.0");
  const std::string dep = deploy({{"image", "1.6.0"}, {"device", "solo-001"}});
  ASSERT_TRUE(wait_until([&] { return deployment(dep).value("state", "") == "completed"; }, 60s))
      << deployment(dep).dump(2);
  json d = deployment(dep);
  EXPECT_EQ(d["counts"]["succeeded"], 1) << d.dump(2);
  // The drop really happened: the broker saw the device's connection lost and a new one.
  const std::string log = read_file(broker_->log_path());
  std::size_t connects = 0;
  for (std::size_t p = 0; (p = log.find("as solo-001", p)) != std::string::npos; ++p) ++connects;
  EXPECT_GE(connects, 2u) << "expected a reconnect of solo-001 in the broker log";
  // A drop loses what was in flight (at most a window of 64 x 4 KiB chunks) and may get
  // requests answered twice; it must never restart the image from zero.
  const std::uint64_t window_bytes = 64 * 4096;
  EXPECT_LT(d["devices"][0]["bytes_sent"].get<std::uint64_t>(), size + 2 * window_bytes);
  EXPECT_EQ(sha256_hex(read_file(device_slot_file("solo-001", 'b'))), sha256_hex(image));
}

TEST_F(EndToEnd, ApiRefusesRequestsWithoutTheTokenAndCrossSiteContentTypes) {
  auto health = client(false).Get("/api/v1/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  auto none = client(false).Get("/api/v1/devices");
  ASSERT_TRUE(none);
  EXPECT_EQ(none->status, 401) << none->body;
  EXPECT_NE(none->body.find("missing or wrong API token"), std::string::npos) << none->body;
  httplib::Client wrong("127.0.0.1", http_port_);
  wrong.set_bearer_token_auth(std::string(64, '0'));
  auto w = wrong.Post("/api/v1/images?version=6.6.6&hw=board-x", random_bytes(1000, 9),
                      "application/octet-stream");
  ASSERT_TRUE(w);
  EXPECT_EQ(w->status, 401) << w->body;
  // What a cross-site <form> can send: text/plain. Refused even with the right token.
  auto plain = client().Post("/api/v1/deployments", R"({"image":"6.6.6","group":"lab"})",
                             "text/plain");
  ASSERT_TRUE(plain);
  EXPECT_EQ(plain->status, 415) << plain->body;
  EXPECT_EQ(get("/api/v1/images").size(), 0u) << "nothing was stored";
  // otactl with a wrong token says so and exits 1.
  auto cli = ota::test::run_command({"env", "OTA_API_TOKEN=" + std::string(64, '1'),
                                     OTA_OTACTL_BIN, "--api",
                                     "http://127.0.0.1:" + std::to_string(http_port_), "status"});
  EXPECT_EQ(cli.exit_code, 1) << cli.output;
  EXPECT_NE(cli.output.find("rejected the API token"), std::string::npos) << cli.output;
}

TEST_F(EndToEnd, AGroupClaimTheAclDoesNotGrantNeitherJoinsNorBlocksTheDeployment) {
  // solo-001 says it is in "lab", but the broker ACL (from pki.sh) does not grant it.
  start_fleet("e2e", 5);
  ASSERT_TRUE(wait_until([&] { return devices_online(kLab); }, 20s));
  ota::test::MqttTestClient liar(ota::test::ClientOptions::device(*pki_, "solo-001", broker_->port()));
  ASSERT_TRUE(liar.connect().ok());
  const std::string hello =
      R"({"v":1,"type":"hello","device":"solo-001","hw":"board-x","version":"1.0.0","slot":"a",)"
      R"("slot_state":"confirmed","free":10000000,"counter":0,"groups":["lab"]})";
  ASSERT_EQ(liar.publish("ota/v1/dev/solo-001/up/presence", hello, 1, true), 0);
  ASSERT_TRUE(wait_until([&] { return devices_online({"solo-001"}); }, 10s));
  add_image(random_bytes(64 * 1024, 10), "1.7.0");
  const std::string dep = deploy({{"image", "1.7.0"}, {"group", "lab"}});
  // It learned the deployment id somehow and accepts: no row, no chunks.
  const std::string accept =
      R"({"v":1,"type":"accept","seq":1,"deployment":")" + dep + R"("})";
  ASSERT_EQ(liar.publish("ota/v1/dev/solo-001/up/event", accept, 1), 0);
  ASSERT_TRUE(wait_until([&] { return deployment(dep).value("state", "") == "completed"; }, 60s))
      << deployment(dep).dump(2);
  json d = deployment(dep);
  EXPECT_EQ(d["counts"]["succeeded"], 5) << d.dump(2);
  EXPECT_EQ(d["devices"].size(), 5u) << d.dump(2);
  for (const auto& row : d["devices"]) EXPECT_NE(row["device"], "solo-001") << d.dump(2);
}

TEST_F(EndToEnd, BrokerBoundsTheBytesQueuedForADeviceThatDoesNotRead) {
  // A device with a persistent session subscribes to its chunk topic and goes away (the same
  // as never reading). 48 MiB of QoS 1 chunks for it must not all be kept by the broker.
  // Only the controller's identity may publish chunks, and its certificate is its client id:
  // stop the real controller so the test publisher does not take its connection over.
  controller_.reset();
  {
    auto o = ota::test::ClientOptions::device(*pki_, "solo-001", broker_->port());
    o.clean_session = false;  // client id: solo-001 (the broker uses the certificate CN)
    ota::test::MqttTestClient sleeper(o);
    ASSERT_TRUE(sleeper.connect().ok());
    ASSERT_EQ(sleeper.subscribe("ota/v1/dev/solo-001/down/chunk", 1), 1);
    sleeper.disconnect();
  }
  auto co = ota::test::ClientOptions::controller(*pki_, broker_->port());
  ota::test::MqttTestClient pub(co);
  ASSERT_TRUE(pub.connect().ok());
  const std::string chunk(512 * 1024, 'x');
  for (int i = 0; i < 96; ++i)
    ASSERT_EQ(pub.publish("ota/v1/dev/solo-001/down/chunk", chunk, 1), 0) << i;
  EXPECT_TRUE(wait_until(
      [&] {
        return read_file(broker_->log_path())
                   .find("Outgoing messages are being dropped for client solo-001") !=
               std::string::npos;
      },
      10s))
      << broker_->log_tail();
}

}  // namespace
