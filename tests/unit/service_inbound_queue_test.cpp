// The device-message thread (inbound.hpp): hellos, events and last wills are applied off the
// MQTT network thread, in arrival order; a chunk request is served at once unless a message
// of its own device still waits, then it waits behind it.
#include <gtest/gtest.h>

#include <sqlite3.h>

#include <condition_variable>
#include <mutex>
#include <thread>

#include "service_controller_fixture.hpp"
#include "test_env.hpp"

namespace ota::service::testing {
namespace {

using namespace std::chrono_literals;

// Holds the device-message thread where it first reads the clock while applying an event
// (handle_event: with the database lock, no component's lock), until the test opens it.
// Only that thread waits: the test's thread (on_message, with sender_threads = 0 also the
// chunk server's) reads the clock freely.
class Gate {
 public:
  long long now() {
    std::unique_lock<std::mutex> lock(mu_);
    if (closed_ && std::this_thread::get_id() != test_thread_) {
      held_ = true;
      cv_.notify_all();
      cv_.wait(lock, [this] { return !closed_; });
    }
    return 1'800'000'000'000LL;
  }
  void close() {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
    held_ = false;
  }
  bool wait_held() {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, 10s, [this] { return held_; });
  }
  void open() {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = false;
    cv_.notify_all();
  }

 private:
  const std::thread::id test_thread_ = std::this_thread::get_id();
  std::mutex mu_;
  std::condition_variable cv_;
  bool closed_ = false, held_ = false;
};

// Recorder, safe to read while the device-message thread publishes. For each publish on a
// watched topic it also notes the state of a deployment that another connection to the
// database file reads at that moment: what was committed by then.
class LockedRecorder : public Publisher {
 public:
  bool publish(const std::string& topic, const void* data, std::size_t len, int qos,
               bool retain) override {
    const bool watched = [&] {
      std::lock_guard<std::mutex> lock(mu_);
      return !topic_.empty() && topic == topic_;
    }();
    const std::string seen = watched ? committed_state() : "";
    std::lock_guard<std::mutex> lock(mu_);
    if (watched) seen_.push_back(seen);
    return rec_.publish(topic, data, len, qos, retain);
  }
  void watch(const std::string& db_path, const std::string& topic, const std::string& dep) {
    std::lock_guard<std::mutex> lock(mu_);
    db_path_ = db_path;
    topic_ = topic;
    dep_ = dep;
  }
  std::vector<std::string> seen() {
    std::lock_guard<std::mutex> lock(mu_);
    return seen_;
  }
  std::size_t count(const std::string& topic) {
    std::lock_guard<std::mutex> lock(mu_);
    return rec_.on(topic).size();
  }

 private:
  std::string committed_state() {
    std::string path, dep;
    {
      std::lock_guard<std::mutex> lock(mu_);
      path = db_path_;
      dep = dep_;
    }
    std::string state = "?";
    sqlite3* db = nullptr;
    if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK) {
      sqlite3_stmt* st = nullptr;
      if (sqlite3_prepare_v2(db, "SELECT state FROM deployments WHERE id = ?", -1, &st, nullptr) == SQLITE_OK) {
        sqlite3_bind_text(st, 1, dep.c_str(), -1, SQLITE_TRANSIENT);
        if (sqlite3_step(st) == SQLITE_ROW) state = reinterpret_cast<const char*>(sqlite3_column_text(st, 0));
      }
      sqlite3_finalize(st);
    }
    sqlite3_close(db);
    return state;
  }
  std::mutex mu_;
  std::string db_path_, topic_, dep_;
  std::vector<std::string> seen_;
  Recorder rec_;
};

class InboundQueue : public ControllerTest {
 protected:
  void SetUp() override {
    key_pem = make_ec_key_pem();
    publisher = &rec;
    clock = [this] { return gate.now(); };
    configure = [](ControllerConfig& c) { c.inbound_queue = 64; };
    start();
  }
  bool drained() {
    return ota::test::wait_until([&] { return ctl->queued_device_messages() == 0; }, 10s, 1ms);
  }
  // The row's state changes in the event log, oldest first.
  std::vector<std::string> transitions(const std::string& dep, const std::string& dev) {
    EventFilter f;
    f.deployment = dep;
    f.device = dev;
    f.limit = 100;
    std::vector<std::string> out;
    auto evs = ctl->events_json(f);
    if (!evs) return out;
    for (const auto& e : *evs)
      if (e["what"] == "state") out.push_back(e["detail"].get<std::string>());
    return out;
  }
  // An image deployed to devices `a` and `b` (each said hello first).
  struct Deployed {
    ImageRec img;
    DeploymentRec a, b;
  };
  Deployed deploy_to(const std::string& a, const std::string& b) {
    Deployed d;
    d.img = add(bytes_of(40000), "1.1.0");
    hello(a, "1.0.0");
    hello(b, "1.0.0");
    EXPECT_TRUE(drained());
    auto da = ctl->deploy(d.img.id, "device", a);
    auto db = ctl->deploy(d.img.id, "device", b);
    EXPECT_TRUE(da.ok() && db.ok());
    if (da.ok()) d.a = *da;
    if (db.ok()) d.b = *db;
    return d;
  }
  // Holds the device-message thread on an event of `dev` (see Gate).
  void hold_on_event_of(const std::string& dev, const std::string& dep) {
    gate.close();
    event(dev, ev(proto::EventType::status, next_seq++, dep));
    ASSERT_TRUE(gate.wait_held());
  }
  std::uint64_t metric(const std::string& name) {
    const std::string text = ctl->metrics_text();
    const auto at = text.find("\n" + name + " ");
    return at == std::string::npos ? 0 : std::stoull(text.substr(at + name.size() + 2));
  }
  Gate gate;
  LockedRecorder rec;
  std::uint32_t next_seq = 100;
};

TEST_F(InboundQueue, AChunkRequestGoesAtOnceWhileAnotherDevicesMessageIsBeingApplied) {
  const Deployed d = deploy_to("busy", "fast");
  event("busy", ev(proto::EventType::accept, 1, d.a.id));
  event("fast", ev(proto::EventType::accept, 1, d.b.id));
  ASSERT_TRUE(drained());
  chunk_req("fast", d.b.id, d.img.id, 0, 1);  // its row moves to downloading (a commit)
  ASSERT_EQ(rec.count("ota/v1/dev/fast/down/chunk"), 1u);

  hold_on_event_of("busy", d.a.id);
  // fast has nothing waiting: its request is served by the receiving thread while busy's
  // event is being applied (sender_threads = 0: on_message publishes).
  chunk_req("fast", d.b.id, d.img.id, 1, 2);
  EXPECT_EQ(rec.count("ota/v1/dev/fast/down/chunk"), 3u);
  // busy's next event, and its request behind it, wait.
  event("busy", ev(proto::EventType::status, next_seq++, d.a.id));
  chunk_req("busy", d.a.id, d.img.id, 0, 2);
  EXPECT_EQ(rec.count("ota/v1/dev/busy/down/chunk"), 0u);
  EXPECT_EQ(ctl->queued_device_messages(), 3u);  // with the one being applied
  gate.open();
  ASSERT_TRUE(drained());
  EXPECT_TRUE(ota::test::wait_until([&] { return rec.count("ota/v1/dev/busy/down/chunk") == 2; }, 10s, 1ms));
  EXPECT_NE(ctl->metrics_text().find("ota_device_messages_queued 0\n"), std::string::npos);
}

TEST_F(InboundQueue, ARequestRightAfterAnAcceptFindsTheRowAccepted) {
  const Deployed d = deploy_to("d1", "other");
  // Held on another device's event, so that d1's accept still waits when its request comes.
  hold_on_event_of("other", d.b.id);
  event("d1", ev(proto::EventType::accept, 1, d.a.id));
  chunk_req("d1", d.a.id, d.img.id, 0, 2);
  EXPECT_EQ(rec.count("ota/v1/dev/d1/down/chunk"), 0u) << "the request overtook the accept";
  EXPECT_EQ(ctl->queued_device_messages(), 3u);  // with the one being applied
  gate.open();
  ASSERT_TRUE(drained());
  EXPECT_TRUE(ota::test::wait_until([&] { return rec.count("ota/v1/dev/d1/down/chunk") == 2; }, 10s, 1ms));
  const std::vector<std::string> want = {"offered -> accepted", "accepted -> downloading"};
  EXPECT_EQ(transitions(d.a.id, "d1"), want);
}

// What waits is applied in one transaction (one WAL sync for all, not one each), and what
// the handlers decide in it goes out only once it is committed: the empty retained offer
// that ends a group deployment is published when another connection to the database file
// already reads the deployment as completed. (Published inside the batch, it would read
// "active"; applied one by one, no batch would be counted.)
TEST_F(InboundQueue, WaitingMessagesCommitTogetherAndTheirDecisionsGoOutAfterTheCommit) {
  const Deployed d = deploy_to("x", "y");
  hello("g1", "1.0.0", {"lab"});
  hello("g2", "1.0.0", {"lab"});
  ASSERT_TRUE(drained());
  auto group = ctl->deploy(d.img.id, "group", "lab");
  ASSERT_TRUE(group.ok()) << group.error();
  rec.watch(dir.file("ota.db"), "ota/v1/grp/lab/offer", group->id);

  hold_on_event_of("x", d.a.id);
  for (const char* dev : {"g1", "g2"}) {
    event(dev, ev(proto::EventType::accept, 1, group->id));
    auto r = ev(proto::EventType::result, 2, group->id);
    r.success = true;
    r.version.assign("1.1.0");
    event(dev, r);
  }
  EXPECT_EQ(ctl->queued_device_messages(), 5u);  // with the one being applied
  gate.open();
  ASSERT_TRUE(drained());
  EXPECT_EQ(row_state(group->id, "g1"), "succeeded");
  EXPECT_EQ(row_state(group->id, "g2"), "succeeded");
  const std::vector<std::string> seen = rec.seen();
  ASSERT_EQ(seen.size(), 1u) << "the completion's empty retained offer";
  EXPECT_EQ(seen[0], "completed") << "published before the batch committed";
  EXPECT_GE(metric("ota_device_message_batches_total"), 1u);
  EXPECT_GE(metric("ota_device_messages_batched_total"), 4u);
}

TEST_F(InboundQueue, StoppingAppliesWhatWaits) {
  const Deployed d = deploy_to("d1", "other");
  hold_on_event_of("other", d.b.id);
  event("d1", ev(proto::EventType::accept, 1, d.a.id));
  auto decline = ev(proto::EventType::decline, next_seq++, d.b.id);
  decline.reason = proto::ReasonCode::unsupported;
  event("other", decline);
  EXPECT_EQ(ctl->queued_device_messages(), 3u);  // with the one being applied
  gate.open();
  ctl.reset();  // the destructor stops the thread after applying the queue
  start();
  EXPECT_EQ(row_state(d.a.id, "d1"), "accepted");
  EXPECT_EQ(row_state(d.b.id, "other"), "declined");
}

}  // namespace
}  // namespace ota::service::testing
