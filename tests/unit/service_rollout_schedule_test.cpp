// A scheduled rollout claims its devices when its start time comes, not when it is started
// (issue 13, item 6): the controller with a driven clock and a recording publisher.
#include <gtest/gtest.h>

#include <string>

#include "service_controller_fixture.hpp"

namespace {

using nlohmann::json;
using ota::service::testing::bytes_of;
constexpr long long kT0 = 1'800'000'000'000LL;  // unix ms, 2027-01-15 08:00 UTC
constexpr long long kHourMs = 3'600'000;

class ScheduledRollout : public ota::service::testing::ControllerTest {
 protected:
  void SetUp() override {
    clock = [this] { return now_ms; };
    ControllerTest::SetUp();
    add(bytes_of(3000), "2.0.0");
    add(bytes_of(3000, 2), "3.0.0");
    for (const char* d : {"d0", "d1", "d2"}) hello(d, "1.0.0", {"lab"});
  }
  void advance(long long ms) {
    now_ms += ms;
    ctl->rollout_tick(now_ms);
  }
  // A rollout of 2.0.0 to group lab, started for kT0 + 1 h.
  std::string schedule() {
    auto r = ctl->create_rollout(json{{"image", "2.0.0"},
                                      {"target", {{"group", "lab"}}},
                                      {"start_at", (kT0 + kHourMs) / 1000},
                                      {"start", true}},
                                 "token:test");
    EXPECT_TRUE(r.ok()) << r.error();
    return r.ok() ? (*r)["id"].get<std::string>() : "";
  }
  json show(const std::string& id) {
    auto j = ctl->rollout_json(id, true);
    EXPECT_TRUE(j.ok()) << j.error();
    return j.ok() ? *j : json();
  }
  std::string event_detail(const std::string& id, const std::string& what) {
    ota::service::EventFilter f;
    f.rollout = id;
    auto evs = ctl->events_json(f);
    if (!evs.ok()) return "";
    for (const auto& e : *evs)
      if (e["what"] == what) return e["detail"];
    return "";
  }
  long long now_ms = kT0;
};

TEST_F(ScheduledRollout, ClaimsNoDeviceBeforeItsStartTime) {
  const std::string id = schedule();
  json r = show(id);
  EXPECT_EQ(r["state"], "scheduled");
  EXPECT_EQ(r["deployment"], "");
  EXPECT_EQ(r["devices_total"], 0);
  // Its devices are free until then: a plain deployment to one of them goes ahead.
  auto plain = ctl->deploy("3.0.0", "device", "d1", "token:test");
  EXPECT_TRUE(plain.ok()) << plain.error();
  advance(kHourMs - 1000);
  EXPECT_EQ(show(id)["state"], "scheduled");
  EXPECT_TRUE(pub.on("ota/v1/dev/d0/down/offer").empty());
}

TEST_F(ScheduledRollout, AtItsStartTimeItClaimsTheFreeDevicesAndCountsTheBusyOnes) {
  const std::string id = schedule();
  auto plain = ctl->deploy("3.0.0", "device", "d1", "token:test");
  ASSERT_TRUE(plain.ok()) << plain.error();
  advance(kHourMs);
  json r = show(id);
  EXPECT_EQ(r["state"], "running");
  EXPECT_NE(r["deployment"], "");
  EXPECT_EQ(r["devices_total"], 2);  // d0, d2
  EXPECT_EQ(r["excluded"], 1);       // d1: busy in the plain deployment
  EXPECT_EQ(r["from_version"], "1.0.0");
  EXPECT_NE(event_detail(id, "rollout_targets").find("excluded 1 busy in another deployment"),
            std::string::npos);
  EXPECT_EQ(pub.on("ota/v1/dev/d0/down/offer").size(), 1u);
  // Claimed now: a deploy to one of its devices names the rollout.
  auto refused = ctl->deploy("3.0.0", "device", "d0", "token:test");
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.kind(), ota::service::ErrKind::conflict);
  EXPECT_NE(refused.error().find("claimed by rollout " + id), std::string::npos) << refused.error();
  EXPECT_NE(refused.error().find("otactl rollout abort " + id), std::string::npos)
      << refused.error();
}

TEST_F(ScheduledRollout, WithEveryDeviceBusyAtItsStartItPausesAndAResumeTriesAgain) {
  const std::string id = schedule();
  std::vector<std::string> plain;
  for (const char* d : {"d0", "d1", "d2"}) {
    auto dep = ctl->deploy("3.0.0", "device", d, "token:test");
    ASSERT_TRUE(dep.ok()) << dep.error();
    plain.push_back(dep->id);
  }
  advance(kHourMs);
  json r = show(id);
  EXPECT_EQ(r["state"], "paused");
  EXPECT_EQ(r["paused_by"], "policy");
  EXPECT_NE(r["pause_reason"].get<std::string>().find("3 busy in another deployment"),
            std::string::npos)
      << r.dump();
  EXPECT_EQ(r["deployment"], "");
  // Once the devices are free, a resume makes it scheduled again and the next step claims them.
  for (const auto& dep : plain) ASSERT_TRUE(ctl->cancel(dep, "token:test").ok());
  auto resumed = ctl->rollout_action(id, "resume", json::object(), "token:test");
  ASSERT_TRUE(resumed.ok()) << resumed.error();
  advance(1000);
  r = show(id);
  EXPECT_EQ(r["state"], "running") << r.dump();
  EXPECT_EQ(r["devices_total"], 3);
}

TEST_F(ScheduledRollout, ARestartBeforeTheStartTimeKeepsItScheduledAndUnclaimed) {
  const std::string id = schedule();
  start();  // the controller again, from the database
  json r = show(id);
  EXPECT_EQ(r["state"], "scheduled");
  EXPECT_EQ(r["deployment"], "");
  advance(kHourMs);
  r = show(id);
  EXPECT_EQ(r["state"], "running");
  EXPECT_EQ(r["devices_total"], 3);
  // Aborting a scheduled rollout that claimed nothing ends it without a deployment.
  auto later = ctl->create_rollout(json{{"image", "3.0.0"},
                                        {"target", {{"group", "lab"}}},
                                        {"start_at", (now_ms + kHourMs) / 1000},
                                        {"start", true}},
                                   "token:test");
  ASSERT_TRUE(later.ok()) << later.error();
  const std::string other = (*later)["id"];
  auto aborted = ctl->rollout_action(other, "abort", json::object(), "token:test");
  ASSERT_TRUE(aborted.ok()) << aborted.error();
  EXPECT_EQ((*aborted)["state"], "aborted");
}

TEST_F(ScheduledRollout, RollbackToAVersionNeverUploadedSaysExactlyWhatToDo) {
  auto r = ctl->create_rollout(
      json{{"image", "2.0.0"}, {"target", {{"group", "lab"}}}, {"start", true}}, "token:test");
  ASSERT_TRUE(r.ok()) << r.error();
  const std::string id = (*r)["id"];
  auto rb = ctl->rollout_action(id, "rollback", json::object(), "token:test");
  ASSERT_FALSE(rb.ok());
  EXPECT_EQ(rb.kind(), ota::service::ErrKind::not_found);
  EXPECT_NE(rb.error().find("upload 1.0.0 first: otactl image add FILE --version 1.0.0 --hw m1"),
            std::string::npos)
      << rb.error();
  // Uploaded, the same rollback goes ahead (to the devices running 2.0.0: none yet).
  add(bytes_of(3000, 3), "1.0.0");
  rb = ctl->rollout_action(id, "rollback", json::object(), "token:test");
  ASSERT_FALSE(rb.ok());
  EXPECT_EQ(rb.error().find("upload"), std::string::npos) << rb.error();
}

}  // namespace
