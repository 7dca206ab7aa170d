// Controller fault handling without a broker: the reconnect back-off, offers re-sent after the
// broker link came back, /health verdicts, and event retention driven by tick(). (The same
// faults with real processes are in tests/integration/recovery_test.cpp.)
#include <gtest/gtest.h>

#include <sqlite3.h>

#include <random>
#include <set>

#include "ota/service/mqtt.hpp"
#include "service_controller_fixture.hpp"

namespace ota::service::testing {
namespace {

TEST(FullJitterDelay, StaysUnderTheDoublingCeilingAndTheCap) {
  std::mt19937_64 rng(7);
  for (int attempt = 0; attempt < 70; ++attempt) {
    long long ceiling = 500;
    for (int i = 0; i < attempt && ceiling < 10000; ++i) ceiling *= 2;
    ceiling = std::min(ceiling, 10000LL);
    for (int k = 0; k < 200; ++k) {
      const long long d = full_jitter_delay_ms(attempt, 500, 10000, rng());
      ASSERT_GE(d, 0);
      ASSERT_LE(d, ceiling) << "attempt " << attempt;
    }
  }
  // The extremes of the random source reach both ends of the interval.
  EXPECT_EQ(full_jitter_delay_ms(3, 500, 10000, 0), 0);
  EXPECT_EQ(full_jitter_delay_ms(3, 500, 10000, 4000), 4000);
  EXPECT_EQ(full_jitter_delay_ms(1000, 500, 10000, 10000), 10000);
}

TEST(FullJitterDelay, SpreadsOverTheWholeInterval) {
  // Full jitter, not "base plus a little": clients that failed together retry apart.
  std::mt19937_64 rng(11);
  std::set<long long> seen;
  long long lo = 1 << 30, hi = -1;
  for (int k = 0; k < 1000; ++k) {
    const long long d = full_jitter_delay_ms(10, 500, 10000, rng());
    seen.insert(d);
    lo = std::min(lo, d);
    hi = std::max(hi, d);
  }
  EXPECT_LT(lo, 1000);
  EXPECT_GT(hi, 9000);
  EXPECT_GT(seen.size(), 500u);
}

// A publisher whose broker link is down, as MqttClient reports it during an outage.
class DownLink : public Recorder {
 public:
  bool ready() const override { return false; }
  LinkStatus link_status() const override {
    LinkStatus s;
    s.usable = s.connected = false;
    s.reconnects = reconnects;
    s.last_outage_ms = reconnects > 0 ? 1500 : -1;
    s.down_since_ms = 1;
    s.failed_attempts = 4;
    s.last_error = "connection refused or closed";
    s.broker = "mqtts://127.0.0.1:1";
    return s;
  }
  std::uint64_t reconnects = 0;
};

using ControllerRecovery = ControllerTest;

TEST_F(ControllerRecovery, LinkRestoredResendsTheOfferToEveryDeviceInFlight) {
  const ImageRec img = add(bytes_of(10000), "1.1.0");
  for (const char* d : {"d1", "d2", "d3", "d4"}) hello(d, "1.0.0");
  auto offered = ctl->deploy("1.1.0", "device", "d1");
  auto downloading = ctl->deploy("1.1.0", "device", "d2");
  auto finished = ctl->deploy("1.1.0", "device", "d3");
  ASSERT_TRUE(offered.ok() && downloading.ok() && finished.ok());
  event("d2", ev(proto::EventType::accept, 1, downloading->id));
  auto p = ev(proto::EventType::progress, 2, downloading->id);
  p.received = 4096;
  p.total = 10000;
  event("d2", p);
  auto res = ev(proto::EventType::result, 1, finished->id);
  res.success = true;
  res.version.assign("1.1.0");
  event("d3", res);
  ASSERT_EQ(row_state(downloading->id, "d2"), "downloading");
  ASSERT_EQ(row_state(finished->id, "d3"), "succeeded");

  // The first connection re-sends nothing to devices (a restart has its own rule).
  pub.msgs.clear();
  ctl->on_connected(false);
  EXPECT_TRUE(pub.on("ota/v1/dev/d1/down/offer").empty());
  EXPECT_TRUE(pub.on("ota/v1/dev/d2/down/offer").empty());

  // After a lost link: both devices in flight get their offer again, byte for byte the
  // offer of their deployment; the finished one and the idle one get nothing.
  ctl->on_connected(true);
  auto o1 = pub.on("ota/v1/dev/d1/down/offer");
  auto o2 = pub.on("ota/v1/dev/d2/down/offer");
  ASSERT_EQ(o1.size(), 1u);
  ASSERT_EQ(o2.size(), 1u);
  EXPECT_NE(o1[0].payload.find(offered->id), std::string::npos);
  EXPECT_NE(o2[0].payload.find(downloading->id), std::string::npos);
  EXPECT_EQ(o1[0].qos, 1);
  EXPECT_TRUE(pub.on("ota/v1/dev/d3/down/offer").empty());
  EXPECT_TRUE(pub.on("ota/v1/dev/d4/down/offer").empty());
  // The rows did not move; the log says why the offers went out again.
  EXPECT_EQ(row_state(downloading->id, "d2"), "downloading");
  EventFilter f;
  f.deployment = downloading->id;
  f.limit = 100;
  auto evs = ctl->events_json(f);
  ASSERT_TRUE(evs.ok());
  bool logged = false;
  for (const auto& e : *evs) logged = logged || e["what"] == "offers_resent";
  EXPECT_TRUE(logged) << evs->dump();
  (void)img;
}

TEST_F(ControllerRecovery, HealthNamesTheFailingBrokerLink) {
  DownLink down;
  publisher = &down;
  start();
  bool ok = true;
  nlohmann::json h = ctl->health_json(&ok);
  EXPECT_FALSE(ok);
  EXPECT_EQ(h["status"], "starting") << h.dump();  // never connected yet
  EXPECT_EQ(h["failing"], nlohmann::json::array({"mqtt"}));
  EXPECT_FALSE(h["checks"]["mqtt"]["ok"].get<bool>());
  EXPECT_EQ(h["checks"]["mqtt"]["last_error"], "connection refused or closed");
  EXPECT_TRUE(h["checks"]["database"]["ok"].get<bool>());
  EXPECT_TRUE(h["checks"]["disk"]["ok"].get<bool>());

  down.reconnects = 2;  // was up before: an outage, not a start
  h = ctl->health_json(&ok);
  EXPECT_FALSE(ok);
  EXPECT_EQ(h["status"], "failing");
  const std::string m = ctl->metrics_text();
  EXPECT_NE(m.find("\nota_mqtt_up 0\n"), std::string::npos) << m;
  EXPECT_NE(m.find("\nota_mqtt_reconnects_total 2\n"), std::string::npos) << m;
  EXPECT_NE(m.find("\nota_mqtt_connect_failures_total 4\n"), std::string::npos) << m;
}

TEST_F(ControllerRecovery, HealthFailsWhenTheDiskIsBelowTheMinimum) {
  bool ok = false;
  nlohmann::json h = ctl->health_json(&ok);
  ASSERT_TRUE(ok) << h.dump();
  EXPECT_EQ(h["status"], "ok");
  configure = [](ControllerConfig& c) { c.min_free_bytes = 1ull << 62; };  // more than any disk
  start();
  h = ctl->health_json(&ok);
  EXPECT_FALSE(ok);
  EXPECT_EQ(h["failing"], nlohmann::json::array({"disk"})) << h.dump();
  ASSERT_FALSE(h["checks"]["disk"]["paths"].empty());
  EXPECT_GT(h["checks"]["disk"]["paths"][0]["free_bytes"].get<std::uint64_t>(), 0u);
  EXPECT_NE(ctl->metrics_text().find("ota_disk_free_bytes{path="), std::string::npos);
}

TEST_F(ControllerRecovery, TickPrunesOldEventsButNeverThoseOfAnActiveDeployment) {
  long long now = 1'800'000'000'000LL;
  clock = [&now] { return now; };
  configure = [](ControllerConfig& c) {
    c.event_retention = EventRetention{3600LL * 1000, 0};  // one hour
    c.prune_interval_ms = 0;
  };
  start();
  add(bytes_of(5000), "1.1.0");
  for (int i = 0; i < 20; ++i) hello("old" + std::to_string(i), "1.0.0");
  hello("busy", "1.0.0");
  auto active = ctl->deploy("1.1.0", "device", "busy");
  ASSERT_TRUE(active.ok());
  auto count = [&](const std::string& dep, const std::string& dev) {
    EventFilter f;
    f.deployment = dep;
    f.device = dev;
    f.limit = 10000;
    auto e = ctl->events_json(f);
    return e.ok() ? e->size() : std::size_t{0};
  };
  ASSERT_GE(count("", "old3"), 1u);
  const std::size_t active_events = count(active->id, "");
  ASSERT_GE(active_events, 1u);

  now += 2 * 3600LL * 1000;  // two hours later everything above is past the retention
  hello("new", "1.0.0");
  for (int i = 0; i < 5; ++i) ctl->tick();
  EXPECT_EQ(count("", "old3"), 0u) << "events older than the retention are still there";
  EXPECT_GE(count("", "new"), 1u) << "a recent event was pruned";
  EXPECT_EQ(count(active->id, ""), active_events) << "an active deployment lost history";
  const std::string m = ctl->metrics_text();
  EXPECT_EQ(m.find("\nota_events_pruned_total 0\n"), std::string::npos) << m;
}

// A security release raises the counter above every registered image, so devices that
// confirm it refuse all of them afterwards (the counter is the anti-rollback floor).
TEST_F(ControllerRecovery, ASecurityReleaseGetsTheNextCounter) {
  ImageParams p;
  p.hw = {"m1"};
  p.version = "1.0.0";
  p.counter = 3;
  ASSERT_TRUE(ctl->add_image(bytes_of(3000, 1), p).ok());
  p.version = "1.0.1";
  p.counter = 0;
  ASSERT_TRUE(ctl->add_image(bytes_of(3000, 2), p).ok());
  p.version = "1.1.0";
  p.security_release = true;
  auto r = ctl->add_image(bytes_of(3000, 3), p);
  ASSERT_TRUE(r.ok()) << r.error();
  EXPECT_EQ(r->image.counter, 4u);
  p.version = "1.2.0";
  r = ctl->add_image(bytes_of(3000, 4), p);
  ASSERT_TRUE(r.ok()) << r.error();
  EXPECT_EQ(r->image.counter, 5u);
}

// --------------------------------------------------------------------- hostile devices

TEST(RateLimiterTest, BurstThenTheRateAndKeysAreIndependent) {
  RateLimiter rl(10.0, 5.0);  // 10 a second, bursts of 5
  int admitted = 0;
  for (int i = 0; i < 20; ++i) admitted += rl.admit("a", 1000) ? 1 : 0;
  EXPECT_EQ(admitted, 5);
  EXPECT_TRUE(rl.admit("b", 1000)) << "another key has its own budget";
  EXPECT_FALSE(rl.admit("a", 1050)) << "half a token after 50 ms";
  EXPECT_TRUE(rl.admit("a", 1100));
  admitted = 0;
  for (int i = 0; i < 20; ++i) admitted += rl.admit("a", 1000000) ? 1 : 0;
  EXPECT_EQ(admitted, 5) << "a long pause refills to the burst, not beyond";
}

TEST(RateLimiterTest, ForgetsIdleKeysBeyondItsCapacity) {
  RateLimiter rl(1000.0, 2.0, 10);
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(rl.admit("k" + std::to_string(i), 0));
  EXPECT_EQ(rl.keys(), 10u);
  // Much later every bucket has refilled: they are forgotten to make room.
  EXPECT_TRUE(rl.admit("new", 100000));
  EXPECT_EQ(rl.keys(), 1u);
}

TEST_F(ControllerRecovery, AFloodingDeviceIsRateLimitedAndOthersAreServed) {
  configure = [](ControllerConfig& c) {
    c.device_messages_per_s = 0.001;  // no refill within the test
    c.device_messages_burst = 5;
  };
  start();
  auto img = add(bytes_of(3000), "1.1.0");
  hello("flood", "1.0.0");  // 1 of its 5
  hello("calm", "1.0.0");
  auto dep = ctl->deploy("1.1.0", "device", "flood");
  ASSERT_TRUE(dep.ok());
  for (std::uint32_t i = 1; i <= 100; ++i) event("flood", ev(proto::EventType::accept, i, dep->id));
  EXPECT_EQ(ctl->dropped(DropReason::rate_limited), 96u);
  EXPECT_EQ((*ctl->device_json("flood"))["last_seq"], 4) << "messages beyond the budget had an effect";
  hello("calm", "1.0.1", {}, proto::SlotState::confirmed);
  EXPECT_EQ((*ctl->device_json("calm"))["version"], "1.0.1") << "another device was starved";
  const std::string m = ctl->metrics_text();
  EXPECT_NE(m.find("ota_device_messages_dropped_total{reason=\"rate_limited\"} 96"), std::string::npos) << m;
  (void)img;
}

TEST_F(ControllerRecovery, AHelloNamingAnotherDeviceChangesNothing) {
  hello("victim", "1.0.0", {}, proto::SlotState::confirmed, "m1");
  // A device publishes on its own topic a hello that names the victim and another model.
  proto::Hello h;
  h.device.assign("victim");
  h.hw.assign("evil-board");
  h.version.assign("6.6.6");
  h.slot.assign("b");
  h.slot_state = proto::SlotState::confirmed;
  char buf[2048];
  std::size_t len = 0;
  ASSERT_FALSE(proto::encode_hello(h, buf, sizeof buf, len));
  ctl->on_message("ota/v1/dev/attacker/up/presence", buf, len);
  EXPECT_EQ((*ctl->device_json("victim"))["hw"], "m1");
  EXPECT_EQ((*ctl->device_json("victim"))["version"], "1.0.0");
  EXPECT_FALSE(ctl->device_json("attacker").ok() && (*ctl->device_json("attacker"))["version"] == "6.6.6")
      << "a hello naming another device was applied to its topic's device";
  EXPECT_EQ(ctl->dropped(DropReason::device_id_mismatch), 1u);
}

// PROTOCOL.md 5.3 / 5.7: a heartbeat naming another device than its topic keeps nothing alive.
TEST_F(ControllerRecovery, AHeartbeatNamingAnotherDeviceChangesNothing) {
  hello("victim", "1.0.0", {}, proto::SlotState::confirmed, "m1");
  hello("attacker", "1.0.0", {}, proto::SlotState::confirmed, "m1");
  const std::string will = R"({"v":1,"type":"offline"})";
  ctl->on_message("ota/v1/dev/attacker/up/presence", will.data(), will.size());
  ASSERT_EQ((*ctl->device_json("attacker"))["online"], false);
  proto::Heartbeat hb;
  hb.device.assign("victim");
  hb.state = proto::DeviceState::idle;
  char buf[512];
  std::size_t len = 0;
  ASSERT_FALSE(proto::encode_heartbeat(hb, buf, sizeof buf, len));
  ctl->on_message("ota/v1/dev/attacker/up/presence", buf, len);
  EXPECT_EQ((*ctl->device_json("attacker"))["online"], false);
  EXPECT_EQ(ctl->dropped(DropReason::device_id_mismatch), 1u);
  // Its own name brings it back.
  hb.device.assign("attacker");
  ASSERT_FALSE(proto::encode_heartbeat(hb, buf, sizeof buf, len));
  ctl->on_message("ota/v1/dev/attacker/up/presence", buf, len);
  EXPECT_EQ((*ctl->device_json("attacker"))["online"], true);
}

TEST_F(ControllerRecovery, ASuccessResultForAnotherVersionIsRefused) {
  add(bytes_of(9000), "1.5.0");
  hello("d1", "1.0.0");
  auto dep = ctl->deploy("1.5.0", "device", "d1");
  ASSERT_TRUE(dep.ok());
  event("d1", ev(proto::EventType::accept, 1, dep->id));
  auto lie = ev(proto::EventType::result, 2, dep->id);
  lie.success = true;
  lie.version.assign("9.9.9");
  event("d1", lie);
  EXPECT_EQ(row_state(dep->id, "d1"), "accepted");
  EXPECT_EQ((*ctl->device_json("d1"))["version"], "1.0.0");
  EXPECT_EQ(ctl->dropped(DropReason::result_mismatch), 1u);
  // The truthful result still counts.
  auto truth = ev(proto::EventType::result, 3, dep->id);
  truth.success = true;
  truth.version.assign("1.5.0");
  event("d1", truth);
  EXPECT_EQ(row_state(dep->id, "d1"), "succeeded");
  EXPECT_EQ((*ctl->device_json("d1"))["version"], "1.5.0");
}

TEST_F(ControllerRecovery, ProgressNeverGoesBackwardsWithinAnAttempt) {
  add(bytes_of(40000), "1.1.0");
  hello("d1", "1.0.0");
  auto dep = ctl->deploy("1.1.0", "device", "d1");
  ASSERT_TRUE(dep.ok());
  event("d1", ev(proto::EventType::accept, 1, dep->id));
  auto p = ev(proto::EventType::progress, 2, dep->id);
  p.received = 20000;
  p.total = 40000;
  event("d1", p);
  auto back = ev(proto::EventType::progress, 3, dep->id);
  back.received = 4096;
  back.total = 40000;
  event("d1", back);
  auto j = ctl->deployment_json(dep->id);
  EXPECT_EQ((*j)["devices"][0]["received"], 20000);
  EXPECT_EQ(ctl->dropped(DropReason::progress_backwards), 1u);
}


// Progress reports that move no state cost no commit each (on the MQTT network thread a WAL
// sync apiece held chunk frames back at fleet scale): the database sees them at the next
// flush (tick), in one transaction, and every query flushes first, so nothing shows stale.
TEST_F(ControllerRecovery, ProgressIsWrittenByTheFlushNotCommittedPerReport) {
  configure = [](ControllerConfig& c) { c.flush_interval_ms = 0; };  // every tick flushes
  start();
  add(bytes_of(400000), "1.1.0");
  hello("d1", "1.0.0");
  auto dep = ctl->deploy("1.1.0", "device", "d1");
  ASSERT_TRUE(dep.ok());
  event("d1", ev(proto::EventType::accept, 1, dep->id));
  std::uint32_t seq = 2;
  auto progress = [&](std::uint64_t received) {
    auto p = ev(proto::EventType::progress, seq++, dep->id);
    p.received = received;
    p.total = 400000;
    event("d1", p);
  };
  progress(20000);  // accepted -> downloading: committed at once
  ASSERT_EQ(row_state(dep->id, "d1"), "downloading");

  // A second connection to the file: PRAGMA data_version moves when another connection commits.
  sqlite3* watch = nullptr;
  ASSERT_EQ(sqlite3_open_v2(dir.file("ota.db").c_str(), &watch, SQLITE_OPEN_READONLY, nullptr), SQLITE_OK);
  auto query = [&](const char* sql) {
    sqlite3_stmt* st = nullptr;
    long long v = -1;
    if (sqlite3_prepare_v2(watch, sql, -1, &st, nullptr) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
      v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
  };
  const std::string received_sql =
      "SELECT received FROM deployment_devices WHERE device_id = 'd1' AND deployment_id = '" + dep->id + "'";
  const long long version_before = query("PRAGMA data_version");
  EXPECT_EQ(query(received_sql.c_str()), 20000);
  for (std::uint64_t r = 40000; r <= 360000; r += 20000) progress(r);
  EXPECT_EQ(query("PRAGMA data_version"), version_before) << "a progress report was committed on its own";
  EXPECT_EQ(query(received_sql.c_str()), 20000);

  // The next tick writes the row.
  ctl->tick();
  EXPECT_NE(query("PRAGMA data_version"), version_before);
  EXPECT_EQ(query(received_sql.c_str()), 360000);

  // A query flushes first: the latest report shows without waiting for the tick.
  progress(380000);
  auto j = ctl->deployment_json(dep->id);
  ASSERT_TRUE(j.ok());
  EXPECT_EQ((*j)["devices"][0]["received"], 380000);
  EXPECT_EQ(query(received_sql.c_str()), 380000);

  // Reports that move the row still commit at once: the download's end (verifying).
  auto verifying = ev(proto::EventType::status, seq++, dep->id);
  verifying.state = proto::DeviceState::verifying;
  const long long version_mid = query("PRAGMA data_version");
  event("d1", verifying);
  EXPECT_NE(query("PRAGMA data_version"), version_mid);
  sqlite3_close(watch);
}

}  // namespace
}  // namespace ota::service::testing
