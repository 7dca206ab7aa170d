// Fixture for integration tests that run a whole fleet as an operator would: a real
// mosquitto from broker-config/ (TLS, ACLs), the ota-controller process with its SQLite file,
// ota-devsim fleets, otactl. Every process is started and stopped by its own pid. Used by
// rollout_test.cpp and recovery_test.cpp.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include "test_env.hpp"

namespace fleet_test {

using namespace std::chrono_literals;
using json = nlohmann::json;
using ota::test::Broker;
using Child = ota::test::ChildProcess;
using ota::test::CommandResult;
using ota::test::MqttTestClient;
using ota::test::Pki;
using ota::test::TempDir;
using ota::test::wait_until;
using ota::test::random_bytes;
using ota::test::read_file;

inline std::string join(const std::vector<std::string>& v, const char* sep = ",") {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : sep) + s;
  return out;
}

// A simulated device's own boot record (device-agent/platform/linux/src/file_flash.cpp,
// <data>/<id>/flash/boot.state: active=, pending=, version_a=, version_b=, ...).
struct BootRecord {
  bool ok = false;
  std::string active, pending, version_a, version_b;
  bool settled() const { return ok && pending.empty(); }  // not on trial, not mid-boot
  const std::string& version_of(const std::string& slot) const { return slot == "b" ? version_b : version_a; }
  // The version the device boots (the active slot once settled).
  std::string boots() const {
    if (!ok) return "(no boot.state)";
    return pending.empty() ? version_of(active) : "(trial of " + version_of(pending) + ")";
  }
};

inline BootRecord read_boot_record(const std::string& path) {
  BootRecord b;
  std::ifstream in(path);
  if (!in) return b;
  std::string line;
  while (std::getline(in, line)) {
    const auto eq = line.find('=');
    if (eq == std::string::npos) continue;
    const std::string k = line.substr(0, eq), v = line.substr(eq + 1);
    if (k == "active") b.active = v;
    else if (k == "pending") b.pending = v;
    else if (k == "version_a") b.version_a = v;
    else if (k == "version_b") b.version_b = v;
  }
  b.ok = b.active == "a" || b.active == "b";
  return b;
}

// Sum of a Prometheus gauge's samples whose label set contains `labels` (e.g.
// `rollout="ro-1"`); -1 if there is none.
inline long long metric_sum(const std::string& text, const std::string& name, const std::string& labels) {
  std::istringstream in(text);
  std::string line;
  long long sum = -1;
  while (std::getline(in, line)) {
    if (line.rfind(name + "{", 0) != 0) continue;
    const auto close = line.find('}');
    if (close == std::string::npos || line.substr(0, close).find(labels) == std::string::npos) continue;
    sum = (sum < 0 ? 0 : sum) + std::atoll(line.c_str() + close + 1);
  }
  return sum;
}

inline int count_of(const json& counts, const char* key) {
  return counts.is_object() && counts.contains(key) && counts[key].is_number() ? counts[key].get<int>() : -1;
}


class FleetTest : public ::testing::Test {
 protected:
  // PKI with `count` devices NAME-001.. in `group`, a broker, the controller.
  void start_env(const std::string& name, int count, const std::string& group) {
    prepare_env(name, count, group);
    broker_ = std::make_unique<Broker>(*pki_);
    ASSERT_TRUE(start_controller());
  }
  // The PKI and the controller's HTTP port, no processes yet.
  void prepare_env(const std::string& name, int count, const std::string& group) {
    name_ = name;
    count_ = count;
    group_ = group;
    pki_ = std::make_unique<Pki>(ota::test::make_pki(dir_.path() + "/pki", {}));
    pki_->add_devices(count, name, {group});
    http_port_ = ota::test::free_loopback_port();
  }

  void TearDown() override {
    fleets_.clear();
    observer_.reset();
    controller_.reset();
    if (background_.joinable()) background_.join();  // otactl watch ends once the API is gone
    broker_.reset();
    if (HasFailure()) {
      std::fprintf(stderr, "--- controller log tail ---\n%s\n",
                   tail(read_file(dir_.path() + "/controller.log")).c_str());
      std::fprintf(stderr, "--- devsim log tail ---\n%s\n", tail(read_file(dir_.path() + "/devsim.log")).c_str());
    }
  }

  static std::string tail(const std::string& s) { return s.size() > 6000 ? s.substr(s.size() - 6000) : s; }

  // The controller's command line: the fixture's broker, PKI, database and store, the signing
  // key (signing_key_, else the PKI's release key), plus controller_args_.
  std::vector<std::string> controller_argv() const {
    std::vector<std::string> argv{OTA_CONTROLLER_BIN, "--broker-port", std::to_string(broker_port()), "--ca",
                                  pki_->ca_cert(), "--cert", pki_->controller_cert(), "--key",
                                  pki_->controller_key(), "--db", db_path_, "--store",
                                  dir_.path() + "/images", "--signing-key",
                                  signing_key_.empty() ? pki_->release_key() : signing_key_, "--http",
                                  "127.0.0.1:" + std::to_string(http_port_), "--acl-file", pki_->acl_path()};
    argv.insert(argv.end(), controller_args_.begin(), controller_args_.end());
    return argv;
  }

  // The running broker's port, or broker_port_ before there is one.
  int broker_port() const { return broker_ ? broker_->port() : broker_port_; }

  // Starts the controller; with wait_healthy, waits until /api/v1/health says 200.
  bool start_controller(bool wait_healthy = true) {
    controller_ = std::make_unique<Child>(controller_argv(), dir_.path() + "/controller.log");
    if (controller_->pid() <= 0) {
      ADD_FAILURE() << "controller did not start";
      return false;
    }
    if (!wait_healthy) return true;
    if (!wait_until([&] { return health_status() == 200; }, 30s, 20ms)) {
      ADD_FAILURE() << "controller did not become healthy";
      return false;
    }
    std::ifstream tf(token_file());
    std::getline(tf, token_);
    if (token_.size() != 64u) {
      ADD_FAILURE() << "API token file " << token_file();
      return false;
    }
    return true;
  }

  // HTTP status of GET /api/v1/health (no token needed); -1 when unreachable.
  int health_status(json* body = nullptr) {
    auto r = client(false).Get("/api/v1/health");
    if (!r) return -1;
    if (body) *body = json::parse(r->body, nullptr, false);
    return r->status;
  }

  std::string token_file() const { return db_path_ + ".token"; }
  std::string api_url() const { return "http://127.0.0.1:" + std::to_string(http_port_); }
  std::string device_id(int i) const {
    char id[64];
    std::snprintf(id, sizeof id, "%s-%03d", name_.c_str(), i);
    return id;
  }
  std::vector<std::string> fleet_ids() const {
    std::vector<std::string> out;
    for (int i = 1; i <= count_; ++i) out.push_back(device_id(i));
    return out;
  }
  BootRecord boot_record(const std::string& id) const {
    return read_boot_record(dir_.path() + "/fleet/" + id + "/flash/boot.state");
  }

  // Waits until no device of the fleet is on trial or mid-boot (a failed self-test reverts
  // at the next boot): only then does its boot record say what it runs.
  bool wait_fleet_settled(std::chrono::milliseconds deadline) {
    return wait_until(
        [&] {
          for (const auto& dev : fleet_ids())
            if (!boot_record(dev).settled()) return false;
          return true;
        },
        deadline, 100ms);
  }

  // One ota-devsim process for the whole fleet (every device in `group_`).
  void start_fleet(std::vector<std::string> extra = {}) {
    std::vector<std::string> argv{OTA_DEVSIM_BIN, "--count", std::to_string(count_), "--id-prefix", name_,
                                  "--pki", pki_->dir, "--data", dir_.path() + "/fleet", "--port",
                                  std::to_string(broker_port()), "--hw", "board-x", "--group", group_,
                                  "--request-timeout-ms", "1000", "--no-fsync"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    fleets_.push_back(std::make_unique<Child>(argv, dir_.path() + "/devsim.log"));
    ASSERT_GT(fleets_.back()->pid(), 0);
  }

  void wait_fleet_online() {
    ASSERT_TRUE(wait_until([&] { return online_count() == count_; }, 120s, 200ms))
        << online_count() << " of " << count_ << " devices online";
  }

  int online_count() {
    json d = get("/api/v1/devices?group=" + group_ + "&online=true");
    return d.is_array() ? static_cast<int>(d.size()) : -1;
  }

  httplib::Client client(bool with_token = true) {
    httplib::Client c("127.0.0.1", http_port_);
    c.set_connection_timeout(2);
    c.set_read_timeout(20);
    if (with_token && !token_.empty()) c.set_bearer_token_auth(token_);
    return c;
  }

  // The JSON body of a 200 answer; otherwise null, and why goes to stderr (a test that then
  // reads the null fails on a type error: the line above it in the log says what happened).
  json get(const std::string& path) {
    auto r = client().Get(path.c_str());
    if (!r) {
      std::fprintf(stderr, "[ fixture ] GET %s: no answer (%s)\n", path.c_str(),
                   httplib::to_string(r.error()).c_str());
      return json();
    }
    if (r->status != 200) {
      std::fprintf(stderr, "[ fixture ] GET %s: HTTP %d %s\n", path.c_str(), r->status,
                   r->body.substr(0, 300).c_str());
      return json();
    }
    return json::parse(r->body, nullptr, false);
  }

  std::string metrics() {
    auto r = client().Get("/metrics");
    return r && r->status == 200 ? r->body : std::string();
  }

  json rollout(const std::string& id, bool devices = false) {
    return get("/api/v1/rollouts/" + id + (devices ? "?devices=1" : ""));
  }

  json events(const std::string& rollout_id) {
    return get("/api/v1/events?rollout=" + rollout_id + "&limit=10000");
  }

  CommandResult otactl(const std::vector<std::string>& args, bool json_out = false) {
    std::vector<std::string> argv{OTA_OTACTL_BIN, "--api", api_url(), "--token-file", token_file()};
    if (json_out) argv.push_back("--json");
    argv.insert(argv.end(), args.begin(), args.end());
    return ota::test::run_command(argv);
  }

  // `otactl --json ARGS`: the JSON it printed; a failure if it exited non-zero.
  json otactl_json(const std::vector<std::string>& args) {
    CommandResult r = otactl(args, true);
    EXPECT_EQ(r.exit_code, 0) << "otactl " << join(args, " ") << ":\n" << r.output;
    json j = json::parse(r.output, nullptr, false);
    EXPECT_FALSE(j.is_discarded()) << "otactl " << join(args, " ") << " printed no JSON:\n" << r.output;
    return j;
  }

  void add_image(const std::string& bytes, const std::string& version) {
    const std::string file = dir_.path() + "/fw-" + version + ".bin";
    std::ofstream(file, std::ios::binary) << bytes;
    json img = otactl_json({"image", "add", file, "--version", version, "--hw", "board-x", "--chunk-size", "4096"});
    ASSERT_EQ(img.value("version", ""), version) << img.dump();
  }

  // A read-only test client (the monitoring identity: the ACL lets it read every device's
  // topics, write none), counting the offers the broker carries to each device. Not the
  // controller's certificate: the broker makes the CN the client id, so that would take the
  // controller's own connection and session over.
  void observe_offers() {
    observer_ = std::make_unique<MqttTestClient>(
        ota::test::ClientOptions::monitor(*pki_, broker_->port()));
    auto c = observer_->connect();
    ASSERT_TRUE(c.ok()) << c.describe();
    ASSERT_EQ(observer_->subscribe(pki_->prefix + "/dev/+/down/offer", 1), 1);
  }

  // device -> the offer ids (payload "deployment") of every offer message it was sent, in order.
  std::map<std::string, std::vector<std::string>> offers_seen() {
    std::map<std::string, std::vector<std::string>> out;
    const std::string head = pki_->prefix + "/dev/";
    for (const auto& m : observer_->messages()) {
      if (m.topic.rfind(head, 0) != 0) continue;
      const std::string dev = m.topic.substr(head.size(), m.topic.find('/', head.size()) - head.size());
      json p = json::parse(m.payload, nullptr, false);
      out[dev].push_back(p.is_object() ? p.value("deployment", "?") : "(not json)");
    }
    return out;
  }

  // Waits until the rollout is completed, aborted or paused; returns its JSON.
  json wait_rollout_settles(const std::string& id, std::chrono::milliseconds deadline,
                            const std::function<void(const json&)>& on_poll = {}) {
    json r;
    const bool ok = wait_until(
        [&] {
          r = rollout(id);
          if (on_poll && r.is_object()) on_poll(r);
          const std::string st = r.is_object() ? r.value("state", "") : "";
          return st == "completed" || st == "aborted" || st == "paused";
        },
        deadline, 100ms);
    EXPECT_TRUE(ok) << "rollout did not settle: " << r.dump(1);
    return r;
  }

  TempDir dir_{"rollout"};
  std::string db_path_ = dir_.path() + "/ctl.db";
  std::vector<std::string> controller_args_;
  std::string signing_key_;  // the controller's --signing-key; empty: the PKI's release key
  int broker_port_ = 0;
  std::string name_, group_;
  int count_ = 0;
  std::unique_ptr<Pki> pki_;
  std::unique_ptr<Broker> broker_;
  int http_port_ = 0;
  std::string token_;
  std::unique_ptr<Child> controller_;
  std::vector<std::unique_ptr<Child>> fleets_;
  std::unique_ptr<MqttTestClient> observer_;
  std::thread background_;
  CommandResult background_result_;
};

}  // namespace fleet_test
