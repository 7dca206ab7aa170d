// The device agent killed with SIGKILL in every state of its state machine, on a real
// mosquitto with the real ota-controller: ota-devsim --crash-in-state STATE kills its own
// process right after the agent persisted STATE (once; a marker file keeps the restart
// alive), the test starts it again on the same data directory, and the device must converge
// to the new confirmed image (or to the old one with a failure report) with exactly one final
// answer reaching the controller. Plus heartbeat and offer-policy behaviour on the wire.
#include <fstream>
#include <map>
#include <random>

#include <gtest/gtest.h>
#include <httplib.h>
#include <nlohmann/json.hpp>
#include <openssl/evp.h>

#include "ota/proto/messages.hpp"
#include "test_env.hpp"

namespace {

using namespace std::chrono_literals;
using json = nlohmann::json;
using ota::test::Broker;
using Child = ota::test::ChildProcess;
using ota::test::MqttTestClient;
using ota::test::Pki;
using ota::test::TempDir;
using ota::test::wait_until;
using ota::test::random_bytes;
using ota::test::sha256_hex;
using ota::test::read_file;

const std::string kVersion = "1.1.0";

bool file_exists(const std::string& path) { return std::ifstream(path).good(); }

// A child that killed itself stays a zombie until ChildProcess reaps it (on stop()).
bool exited(const Child& c) {
  std::ifstream stat("/proc/" + std::to_string(c.pid()) + "/stat");
  std::string pid, comm, state;
  if (!(stat >> pid >> comm >> state)) return true;
  return state == "Z" || state == "X";
}

// Final answers (result / decline) of one device for one deployment, as the broker delivered
// them to a subscriber with the controller's identity: seq -> decoded event.
std::map<std::uint32_t, ota::proto::Event> finals_on_the_wire(const MqttTestClient& wire,
                                                               const std::string& device,
                                                               const std::string& deployment,
                                                               std::string& problems) {
  std::map<std::uint32_t, ota::proto::Event> out;
  const std::string topic = "ota/v1/dev/" + device + "/up/event";
  for (const auto& m : wire.messages()) {
    if (m.topic != topic) continue;
    ota::proto::Event ev;
    if (ota::proto::decode_event(m.payload.data(), m.payload.size(), ev)) {
      problems += "undecodable event: " + m.payload + "\n";
      continue;
    }
    if (ev.deployment != deployment.c_str()) continue;
    if (ev.type != ota::proto::EventType::result && ev.type != ota::proto::EventType::decline) {
      continue;
    }
    auto it = out.find(ev.seq);
    if (it != out.end() && (it->second.type != ev.type || it->second.success != ev.success ||
                            it->second.reason != ev.reason)) {
      problems += "two different final events with seq " + std::to_string(ev.seq) + "\n";
    }
    out[ev.seq] = ev;
  }
  return out;
}

class AgentFaults : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir("agent-faults");
    std::vector<ota::test::DeviceSpec> specs;
    for (const char* st : {"downloading", "verifying", "installing", "rebooting", "confirming",
                           "idle", "selftest", "heartbeat", "policy"}) {
      specs.push_back({std::string("kill-") + st + "-001", {}});
    }
    pki_ = new Pki(ota::test::make_pki(dir_->path() + "/pki", specs));
    // A second read-only identity for an observer that runs next to wire_ (one certificate
    // is one client id: two clients with the same one would take each other over).
    pki_->add_monitor("ota-monitor-late");
    broker_ = new Broker(*pki_);
    http_port_ = ota::test::free_loopback_port();
    controller_ = new Child(
        std::vector<std::string>{OTA_CONTROLLER_BIN, "--broker-port",
                                 std::to_string(broker_->port()), "--ca", pki_->ca_cert(),
                                 "--cert", pki_->controller_cert(), "--key",
                                 pki_->controller_key(), "--db", dir_->path() + "/ctl.db",
                                 "--store", dir_->path() + "/images", "--signing-key",
                                 pki_->release_key(), "--http",
                                 "127.0.0.1:" + std::to_string(http_port_), "--acl-file",
                                 pki_->acl_path()},
        dir_->path() + "/controller.log");
    const bool up = wait_until(
        [&] {
          auto r = client(false).Get("/api/v1/health");
          return r && r->status == 200;
        },
        15s);
    if (up) {
      std::ifstream tf(dir_->path() + "/ctl.db.token");
      std::getline(tf, token_);
    }
    // Everything the devices publish, as the controller receives it (read-only identity).
    wire_ = new MqttTestClient(ota::test::ClientOptions::monitor(*pki_, broker_->port()));
    if (wire_->connect().ok()) wire_->subscribe("ota/v1/dev/+/up/#", 1);
  }

  static void TearDownTestSuite() {
    delete wire_;
    delete controller_;
    delete broker_;
    delete pki_;
    delete dir_;
    wire_ = nullptr;
    controller_ = nullptr;
    broker_ = nullptr;
    pki_ = nullptr;
    dir_ = nullptr;
  }

  void SetUp() override {
    ASSERT_TRUE(controller_ != nullptr && controller_->alive()) << "controller did not start";
    ASSERT_EQ(token_.size(), 64u) << "no API token";
    ASSERT_TRUE(wire_->connected()) << "wire observer not connected";
    image_ = random_bytes(96 * 1024 + 77, 11);  // 24 chunks of 4 KiB, the last one partial
    image_id_ = add_image(image_, kVersion);
    ASSERT_FALSE(image_id_.empty());
  }

  void TearDown() override {
    devsims_.clear();
    if (HasFailure()) {
      std::fprintf(stderr, "--- controller log tail ---\n%s\n",
                   tail(read_file(dir_->path() + "/controller.log")).c_str());
      std::fprintf(stderr, "--- devsim log tail ---\n%s\n", tail(read_file(devsim_log())).c_str());
    }
  }

  static std::string tail(const std::string& s) {
    return s.size() > 4000 ? s.substr(s.size() - 4000) : s;
  }

  static httplib::Client client(bool with_token = true) {
    httplib::Client c("127.0.0.1", http_port_);
    c.set_connection_timeout(2);
    c.set_read_timeout(10);
    if (with_token && !token_.empty()) c.set_bearer_token_auth(token_);
    return c;
  }

  static json get(const std::string& path) {
    auto r = client().Get(path.c_str());
    if (!r) return json();
    return json::parse(r->body, nullptr, false);
  }

  static std::string add_image(const std::string& bytes, const std::string& version) {
    auto r = client().Post(("/api/v1/images?version=" + version + "&hw=board-x").c_str(), bytes,
                           "application/octet-stream");
    if (!r || (r->status != 201 && r->status != 200)) {
      ADD_FAILURE() << "image add failed: " << (r ? r->body : "no response");
      return {};
    }
    return json::parse(r->body)["id"].get<std::string>();
  }

  std::string deploy_to(const std::string& device) {
    const json body = {{"image", kVersion}, {"device", device}};
    auto r = client().Post("/api/v1/deployments", body.dump(), "application/json");
    if (!r || r->status != 201) {
      ADD_FAILURE() << "deploy failed: " << (r ? r->body : "no response");
      return {};
    }
    return json::parse(r->body)["id"].get<std::string>();
  }

  bool online(const std::string& id) { return get("/api/v1/devices/" + id).value("online", false); }

  std::string test_name() const {
    return ::testing::UnitTest::GetInstance()->current_test_info()->name();
  }
  std::string devsim_log() const { return dir_->path() + "/devsim-" + test_name() + ".log"; }
  std::string data_dir() const { return dir_->path() + "/fleet-" + test_name(); }

  // One ota-devsim process running the single device `name`-001.
  Child& start_devsim(const std::string& name, std::vector<std::string> extra) {
    std::vector<std::string> argv{OTA_DEVSIM_BIN, "--count", "1", "--id-prefix", name, "--pki",
                                  pki_->dir, "--data", data_dir(), "--port",
                                  std::to_string(broker_->port()), "--hw", "board-x",
                                  "--request-timeout-ms", "1000", "--no-fsync"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    devsims_.push_back(std::make_unique<Child>(argv, devsim_log()));
    return *devsims_.back();
  }

  // The device is killed right after entering `state`, started again, and must converge.
  void kill_in_state_and_restart(const std::string& state, bool expect_new,
                                 std::vector<std::string> extra = {}) {
    const std::string name = "kill-" + (expect_new ? state : std::string("selftest"));
    const std::string id = name + "-001";
    extra.insert(extra.end(), {"--crash-in-state", state});
    Child& first = start_devsim(name, extra);
    ASSERT_TRUE(wait_until([&] { return online(id); }, 20s)) << id << " never came online";
    const std::string dep = deploy_to(id);
    ASSERT_FALSE(dep.empty());

    ASSERT_TRUE(wait_until([&] { return exited(first); }, 60s))
        << id << " was not killed in state " << state << "\n"
        << get("/api/v1/deployments/" + dep).dump(2);
    EXPECT_TRUE(file_exists(data_dir() + "/" + id + "/crashed-in-" + state));
    EXPECT_NE(read_file(devsim_log()).find("SIGKILL in state " + state), std::string::npos);

    start_devsim(name, extra);  // same data directory: the marker lets it run on
    ASSERT_TRUE(wait_until(
        [&] { return get("/api/v1/deployments/" + dep).value("state", "") == "completed"; }, 60s))
        << get("/api/v1/deployments/" + dep).dump(2);
    const json d = get("/api/v1/deployments/" + dep);
    const json dev = get("/api/v1/devices/" + id);
    if (expect_new) {
      EXPECT_EQ(d["counts"].value("succeeded", 0), 1) << d.dump(2);
      EXPECT_EQ(dev.value("version", ""), kVersion) << dev.dump(2);
      EXPECT_EQ(dev.value("slot_state", ""), "confirmed") << dev.dump(2);
      // What the device runs is byte for byte the signed image.
      EXPECT_EQ(sha256_hex(read_file(data_dir() + "/" + id + "/flash/slot_b.bin")),
                sha256_hex(image_));
    } else {
      EXPECT_EQ(d["counts"].value("failed", 0), 1) << d.dump(2);
      EXPECT_EQ(dev.value("version", ""), "1.0.0") << dev.dump(2);
    }

    // Exactly one final answer for the deployment reached the controller: on the wire (the
    // same seq may come twice, a re-send) and in the controller's event log.
    std::map<std::uint32_t, ota::proto::Event> finals;
    std::string problems;
    ASSERT_TRUE(wait_until(
        [&] {
          problems.clear();
          finals = finals_on_the_wire(*wire_, id, dep, problems);
          return !finals.empty();
        },
        10s));
    EXPECT_TRUE(problems.empty()) << problems;
    ASSERT_EQ(finals.size(), 1u) << "distinct final events for " << dep;
    const ota::proto::Event& final_ev = finals.begin()->second;
    EXPECT_EQ(final_ev.type, ota::proto::EventType::result);
    EXPECT_EQ(final_ev.success, expect_new) << ota::proto::reason_name(final_ev.reason);
    if (!expect_new) {
      EXPECT_EQ(final_ev.reason, ota::proto::ReasonCode::self_test_failed)
          << ota::proto::reason_name(final_ev.reason);
    }
    const json events = get("/api/v1/events?deployment=" + dep + "&device=" + id + "&limit=1000");
    ASSERT_TRUE(events.is_array()) << events.dump();
    int results = 0;
    for (const auto& e : events) {
      const std::string what = e.value("what", "");
      if (what == "result" || what == "decline") ++results;
    }
    EXPECT_EQ(results, 1) << events.dump(2);
  }

  static TempDir* dir_;
  static Pki* pki_;
  static Broker* broker_;
  static Child* controller_;
  static MqttTestClient* wire_;
  static int http_port_;
  static std::string token_;
  std::string image_;
  std::string image_id_;
  std::vector<std::unique_ptr<Child>> devsims_;
};

TempDir* AgentFaults::dir_ = nullptr;
Pki* AgentFaults::pki_ = nullptr;
Broker* AgentFaults::broker_ = nullptr;
Child* AgentFaults::controller_ = nullptr;
MqttTestClient* AgentFaults::wire_ = nullptr;
int AgentFaults::http_port_ = 0;
std::string AgentFaults::token_;

TEST_F(AgentFaults, KilledOnEnteringDownloadingResumesAndInstalls) {
  kill_in_state_and_restart("downloading", true);
}

TEST_F(AgentFaults, KilledOnEnteringVerifyingVerifiesAgainAndInstalls) {
  kill_in_state_and_restart("verifying", true);
}

TEST_F(AgentFaults, KilledOnEnteringInstallingActivatesAgainAndInstalls) {
  kill_in_state_and_restart("installing", true);
}

TEST_F(AgentFaults, KilledAfterActivationBeforeTheResetBootsTheNewImage) {
  kill_in_state_and_restart("rebooting", true);
}

TEST_F(AgentFaults, KilledDuringTheTrialBootGetsAnotherTrialBootAndConfirms) {
  kill_in_state_and_restart("confirming", true);
}

TEST_F(AgentFaults, KilledRightAfterTheResultIsRecordedReportsItOnce) {
  kill_in_state_and_restart("idle", true);
}

// The new image fails its self-test; the kill lands in its first trial boot. The next trial
// boot fails the self-test again, the old image comes back, one failure is reported.
TEST_F(AgentFaults, KilledDuringAFailingTrialBootRollsBackAndReportsOnce) {
  kill_in_state_and_restart("confirming", false, {"--fail-self-test", "kill-selftest-001"});
}

// Heartbeats are QoS 0 and not retained: a subscriber that connects later gets the retained
// hello, not a heartbeat.
TEST_F(AgentFaults, HeartbeatsArriveAndDoNotReplaceTheRetainedHello) {
  const std::string id = "kill-heartbeat-001";
  const std::string topic = "ota/v1/dev/" + id + "/up/presence";
  start_devsim("kill-heartbeat", {"--heartbeat-ms", "200"});
  std::vector<ota::proto::Heartbeat> beats;
  ASSERT_TRUE(wait_until(
      [&] {
        beats.clear();
        for (const auto& m : wire_->messages()) {
          ota::proto::Heartbeat hb;
          if (m.topic == topic && !ota::proto::decode_heartbeat(m.payload.data(), m.payload.size(), hb)) {
            beats.push_back(hb);
          }
        }
        return beats.size() >= 3;
      },
      20s));
  EXPECT_EQ(beats[0].device, id.c_str());
  EXPECT_EQ(beats[0].state, ota::proto::DeviceState::idle);
  EXPECT_LE(beats.front().uptime, beats.back().uptime);
  MqttTestClient late(
      ota::test::ClientOptions::monitor(*pki_, broker_->port(), "ota-monitor-late"));
  ASSERT_TRUE(late.connect().ok());
  ASSERT_EQ(late.subscribe(topic, 1), 1);
  const auto retained = late.wait_for_message([&](const ota::test::Message& m) { return m.retain; }, 5s);
  ASSERT_TRUE(retained.has_value());
  ota::proto::PresenceType type = ota::proto::PresenceType::heartbeat;
  ASSERT_FALSE(ota::proto::decode_presence_type(retained->payload.data(), retained->payload.size(), type));
  EXPECT_EQ(type, ota::proto::PresenceType::hello);
}

// The offer policy of ota-devsim --defer-ids: the first offer of the deployment is deferred
// (reason busy, retry_after 1) on the wire; nothing is written until an offer is accepted.
TEST_F(AgentFaults, DeferredOfferIsAnsweredWithADeferEvent) {
  const std::string id = "kill-policy-001";
  start_devsim("kill-policy", {"--defer-ids", id, "--defer-count", "1"});
  ASSERT_TRUE(wait_until([&] { return online(id); }, 20s));
  const std::string dep = deploy_to(id);
  ASSERT_FALSE(dep.empty());
  const std::string topic = "ota/v1/dev/" + id + "/up/event";
  std::optional<ota::proto::Event> defer;
  ASSERT_TRUE(wait_until(
      [&] {
        for (const auto& m : wire_->messages()) {
          ota::proto::Event ev;
          if (m.topic == topic && !ota::proto::decode_event(m.payload.data(), m.payload.size(), ev) &&
              ev.type == ota::proto::EventType::defer && ev.deployment == dep.c_str()) {
            defer = ev;
            return true;
          }
        }
        return false;
      },
      20s));
  EXPECT_EQ(defer->reason, ota::proto::ReasonCode::busy);
  EXPECT_EQ(defer->retry_after, 1u);
  auto r = client().Post(("/api/v1/deployments/" + dep + "/cancel").c_str(), "{}", "application/json");
  EXPECT_TRUE(r && r->status == 200);
}

}  // namespace
