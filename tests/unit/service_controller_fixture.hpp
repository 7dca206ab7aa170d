// Controller test fixture: a recording Publisher stands in for MQTT; helpers send device
// messages exactly as the agent encodes them. Shared by the controller and rollout tests.
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "ota/proto/messages.hpp"
#include "ota/service/controller.hpp"
#include "service_test_util.hpp"

namespace ota::service::testing {

namespace proto = ota::proto;

struct Msg {
  std::string topic;
  std::string payload;
  int qos;
  bool retain;
};

class Recorder : public Publisher {
 public:
  bool publish(const std::string& topic, const void* data, std::size_t len, int qos,
               bool retain) override {
    msgs.push_back({topic, std::string(static_cast<const char*>(data), len), qos, retain});
    return true;
  }
  std::vector<Msg> on(const std::string& topic) const {
    std::vector<Msg> out;
    for (const auto& m : msgs)
      if (m.topic == topic) out.push_back(m);
    return out;
  }
  std::vector<Msg> msgs;
};

inline std::string bytes_of(std::size_t n, unsigned seed = 1) {
  std::string s(n, '\0');
  for (std::size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 31 + seed * 7) & 0xff);
  return s;
}

class ControllerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    key_pem = make_ec_key_pem();
    start();
  }
  void start() {
    ctl.reset();
    auto signer = Signer::from_pem(key_pem);
    ASSERT_TRUE(signer.ok());
    ControllerConfig cfg;
    cfg.db_path = dir.file("ota.db");
    cfg.store_dir = dir.file("images");
    cfg.acl_file = acl_file;
    cfg.clock = clock;
    // Chunks are sent by the thread that asks for them (the test's), so a test can look at
    // what was published as soon as on_message returns. The sender threads are exercised
    // by the integration tests and ChunkFlow tests.
    cfg.chunk_flow.sender_threads = 0;
    // Likewise device messages are applied by on_message itself (inbound.hpp); the
    // device-message thread is exercised by InboundQueue tests and the integration tests.
    cfg.inbound_queue = 0;
    if (configure) configure(cfg);
    auto c = Controller::create(cfg, std::move(*signer), publisher ? publisher : &pub);
    ASSERT_TRUE(c.ok()) << c.error();
    ctl = std::move(*c);
  }

  void hello(const std::string& dev, const std::string& version, std::vector<std::string> groups = {},
             proto::SlotState st = proto::SlotState::confirmed, const std::string& hw = "m1",
             const std::string& resume_dep = "") {
    proto::Hello h;
    h.device.assign(dev.c_str());
    h.hw.assign(hw.c_str());
    h.version.assign(version.c_str());
    h.slot.assign("a");
    h.slot_state = st;
    h.free = 1 << 20;
    for (const auto& g : groups) h.groups[h.group_count++].assign(g.c_str());
    if (!resume_dep.empty()) {
      h.resume.present = true;
      h.resume.deployment.assign(resume_dep.c_str());
      h.resume.image.assign("0123456789abcdef");
      h.resume.received = 4096;
    }
    char buf[2048];
    std::size_t len = 0;
    ASSERT_FALSE(proto::encode_hello(h, buf, sizeof buf, len));
    ctl->on_message(("ota/v1/dev/" + dev + "/up/presence").c_str(), buf, len);
  }

  void event(const std::string& dev, proto::Event ev) {
    char buf[2048];
    std::size_t len = 0;
    ASSERT_FALSE(proto::encode_event(ev, buf, sizeof buf, len));
    ctl->on_message(("ota/v1/dev/" + dev + "/up/event").c_str(), buf, len);
  }
  static proto::Event ev(proto::EventType t, std::uint32_t seq, const std::string& dep) {
    proto::Event e;
    e.type = t;
    e.seq = seq;
    e.deployment.assign(dep.c_str());
    return e;
  }

  void chunk_req(const std::string& dev, const std::string& dep, const std::string& image,
                 std::uint32_t first, std::uint32_t count, const std::string& bc = "") {
    proto::ChunkRequest r;
    r.bc.assign(bc.c_str());
    r.deployment.assign(dep.c_str());
    r.image.assign(image.c_str());
    r.first = first;
    r.count = count;
    char buf[2048];
    std::size_t len = 0;
    ASSERT_FALSE(proto::encode_chunk_request(r, buf, sizeof buf, len));
    ctl->on_message(("ota/v1/dev/" + dev + "/up/req").c_str(), buf, len);
  }

  ImageRec add(const std::string& bytes, const std::string& version, std::uint32_t chunk = 4096) {
    ImageParams p;
    p.version = version;
    p.hw = {"m1"};
    p.chunk_size = chunk;
    auto r = ctl->add_image(bytes, p);
    EXPECT_TRUE(r.ok()) << r.error();
    return r.ok() ? r->image : ImageRec{};
  }

  std::string row_state(const std::string& dep, const std::string& dev) {
    auto j = ctl->deployment_json(dep);
    if (!j) return "?";
    for (const auto& r : (*j)["devices"])
      if (r["device"] == dev) return r["state"].get<std::string>();
    return "none";
  }

  TempDir dir;
  std::string key_pem;
  std::string acl_file;  // set before start() to use an ACL file
  std::function<long long()> clock;  // set before start() to drive time
  std::function<void(ControllerConfig&)> configure;  // set before start(): other settings
  Publisher* publisher = nullptr;  // set before start() to use another publisher than pub
  Recorder pub;
  std::unique_ptr<Controller> ctl;
};

}  // namespace ota::service::testing
