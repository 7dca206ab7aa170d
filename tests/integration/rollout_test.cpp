// Staged rollouts end to end: a real mosquitto from broker-config/ (TLS, ACLs), the
// ota-controller with its SQLite file, ota-devsim fleets of up to 200 devices, otactl as an
// operator runs it. The counts the CLI and the API show are checked against what each
// simulated device really boots (its persisted flash state), and the offers the broker really
// carried are counted by a test client subscribed to every device's offer topic.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>
#include <httplib.h>
#include <nlohmann/json.hpp>
#include <openssl/evp.h>

#include "fleet_fixture.hpp"
#include "test_env.hpp"

namespace {

using namespace fleet_test;

std::string sha256_raw(const std::string& data) {
  unsigned char d[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_Digest(data.data(), data.size(), d, &n, EVP_sha256(), nullptr);
  return std::string(reinterpret_cast<const char*>(d), n);
}

// The rollout's wave of each device, as service/API.md promises it is decided: deterministic
// from the rollout id (devices ordered by SHA-256 of "<rollout>/<device>"), each percentage
// wave taking ceil(p% of the devices not yet in an earlier wave), the last wave the rest.
// Computed here so a test can choose which devices fail before the rollout starts.
std::map<std::string, int> expected_waves(const std::string& rollout,
                                          const std::vector<std::string>& devices,
                                          const std::vector<double>& percents) {
  std::vector<std::pair<std::string, std::string>> keyed;
  for (const auto& d : std::set<std::string>(devices.begin(), devices.end()))
    keyed.emplace_back(sha256_raw(rollout + "/" + d), d);
  std::sort(keyed.begin(), keyed.end());
  std::map<std::string, int> out;
  std::size_t next = 0;
  const std::size_t n = keyed.size();
  for (std::size_t w = 0; w < percents.size() && next < n; ++w) {
    const std::size_t remaining = n - next;
    std::size_t take =
        w + 1 == percents.size()
            ? remaining
            : static_cast<std::size_t>(std::ceil(percents[w] * static_cast<double>(remaining) / 100.0 - 1e-9));
    take = std::max<std::size_t>(1, std::min(take, remaining));
    for (std::size_t i = 0; i < take; ++i, ++next) out[keyed[next].second] = static_cast<int>(w);
  }
  return out;
}

class Rollouts : public fleet_test::FleetTest {};

// ------------------------------------------------------------------------------------------

TEST_F(Rollouts, TwoHundredDevicesThreeWavesFivePercentSelfTestFailures) {
  start_env("ro", 200, "fleet");
  if (HasFatalFailure()) return;
  add_image(random_bytes(48 * 1024 + 100, 11), "1.1.0");
  if (HasFatalFailure()) return;
  // A draft first: its id decides the waves, so the failing devices can be spread over them.
  json created = otactl_json({"rollout", "create", "1.1.0", "--group", "fleet", "--name", "fleet to 1.1.0",
                              "--wave", "10%:90", "--wave", "50%:90", "--wave", "100%:90",
                              "--max-wave-failure", "20", "--max-failure", "10"});
  ASSERT_EQ(created.value("state", ""), "draft") << created.dump();
  const std::string id = created.value("id", "");
  const auto waves = expected_waves(id, fleet_ids(), {10, 50, 100});
  std::vector<std::vector<std::string>> by_wave(3);
  for (const auto& [dev, w] : waves) by_wave[static_cast<std::size_t>(w)].push_back(dev);
  ASSERT_EQ(by_wave[0].size(), 20u);
  ASSERT_EQ(by_wave[1].size(), 90u);
  ASSERT_EQ(by_wave[2].size(), 90u);
  // 10 devices (5%) fail their self-test: 1, 4 and 5 in waves 1..3 (5%, 4.4%, 5.6%): every
  // wave stays above its 90% threshold and under the 20% / 10% failure limits.
  const std::size_t failing_per_wave[3] = {1, 4, 5};
  std::set<std::string> failing;
  for (std::size_t w = 0; w < 3; ++w)
    for (std::size_t i = 0; i < failing_per_wave[w]; ++i)
      failing.insert(by_wave[w][i * by_wave[w].size() / failing_per_wave[w]]);
  ASSERT_EQ(failing.size(), 10u);
  start_fleet({"--fail-self-test", join({failing.begin(), failing.end()})});
  if (HasFatalFailure()) return;
  wait_fleet_online();
  if (HasFatalFailure()) return;

  // The operator's live view, from before the start to the end.
  CommandResult& watch_result = background_result_;
  background_ = std::thread([this, id] {
    background_result_ =
        otactl({"watch", id, "--wait-start", "--interval-ms", "200", "--retry-for", "2"});
  });

  json started = otactl_json({"rollout", "start", id});
  EXPECT_EQ(started.value("state", ""), "running") << started.dump();
  // While it is live, /metrics has one ota_rollout_devices sample per state for it: all 200.
  long long metric_devices = -1;
  int last_wave = -1;
  bool wave_went_back = false;
  json end = wait_rollout_settles(id, 150s, [&](const json& r) {
    const int cw = r.value("current_wave", -1);
    if (cw < last_wave) wave_went_back = true;
    last_wave = std::max(last_wave, cw);
    if (r.value("state", "") == "running") {
      const long long s = metric_sum(metrics(), "ota_rollout_devices", "rollout=\"" + id + "\"");
      if (s >= 0) metric_devices = s;
    }
  });
  ASSERT_EQ(end.value("state", ""), "completed")
      << end.value("paused_by", "") << ": " << end.value("pause_reason", "") << "\n" << end.dump(1);
  EXPECT_FALSE(wave_went_back);
  EXPECT_EQ(metric_devices, 200) << "ota_rollout_devices samples of the live rollout";

  // What the API says.
  json api = rollout(id, true);
  EXPECT_EQ(api.value("devices_total", 0), 200);
  EXPECT_EQ(api.value("current_wave", -1), 2);
  EXPECT_EQ(api.value("percent", 0), 100);
  const json& counts = api["counts"];
  EXPECT_EQ(count_of(counts, "succeeded"), 190) << counts.dump();
  EXPECT_EQ(count_of(counts, "failed"), 10) << counts.dump();
  for (const char* other : {"pending", "deferred", "offered", "downloading", "installing", "declined", "timed_out",
                            "cancelled"})
    EXPECT_EQ(count_of(counts, other), 0) << other << " " << counts.dump();
  ASSERT_TRUE(api["waves"].is_array() && api["waves"].size() == 3) << api.dump(1);
  int wave_sum = 0;
  for (std::size_t w = 0; w < 3; ++w) {
    const json& jw = api["waves"][w];
    wave_sum += jw.value("devices", 0);
    EXPECT_EQ(jw.value("devices", 0), static_cast<int>(by_wave[w].size())) << jw.dump();
    EXPECT_EQ(jw.value("state", ""), "done") << jw.dump();
    EXPECT_EQ(count_of(jw["counts"], "failed"), static_cast<int>(failing_per_wave[w])) << jw.dump();
    EXPECT_EQ(count_of(jw["counts"], "succeeded"), static_cast<int>(by_wave[w].size() - failing_per_wave[w]))
        << jw.dump();
  }
  EXPECT_EQ(wave_sum, 200);
  std::set<std::string> api_failed, api_succeeded;
  ASSERT_TRUE(api["devices"].is_array() && api["devices"].size() == 200) << api.dump(1);
  for (const auto& row : api["devices"]) {
    const std::string dev = row.value("device", "");
    EXPECT_EQ(row.value("wave", -1), waves.count(dev) ? waves.at(dev) : -2) << row.dump();
    EXPECT_EQ(row.value("attempt", 0), 1) << row.dump();
    if (row.value("state", "") == "failed") {
      api_failed.insert(dev);
      // The self-test failure, rolled back on the device, is the reported reason.
      EXPECT_NE(row.value("reason", "").find("self_test"), std::string::npos) << row.dump();
    } else if (row.value("state", "") == "succeeded") {
      api_succeeded.insert(dev);
    }
  }
  EXPECT_EQ(api_failed, failing);

  // What `otactl rollout show --json` says is the same.
  json cli = otactl_json({"rollout", "show", id, "--devices"});
  EXPECT_EQ(cli.value("state", ""), "completed");
  EXPECT_EQ(cli["counts"], api["counts"]);
  EXPECT_EQ(cli["waves"], api["waves"]);
  EXPECT_EQ(cli["devices"].size(), api["devices"].size());

  // The truth: what each device boots, from its own flash state. A failed self-test reverts
  // at the next boot, so wait (with a deadline) until no device is on trial any more.
  ASSERT_TRUE(wait_fleet_settled(30s));
  std::set<std::string> boots_new, boots_old;
  for (const auto& dev : fleet_ids()) {
    const std::string v = boot_record(dev).boots();
    if (v == "1.1.0") boots_new.insert(dev);
    else if (v == "1.0.0") boots_old.insert(dev);
    else ADD_FAILURE() << dev << " boots " << v;
  }
  EXPECT_EQ(static_cast<int>(boots_new.size()), count_of(counts, "succeeded"));
  EXPECT_EQ(static_cast<int>(boots_old.size()), count_of(counts, "failed"));
  EXPECT_EQ(boots_new, api_succeeded) << "a device the API calls succeeded does not boot 1.1.0, or vice versa";
  EXPECT_EQ(boots_old, failing);

  // The registry (`otactl devices --json`) converges on the same versions (the reverted
  // devices say hello again after their reboot).
  json listed;
  std::string mismatch;
  EXPECT_TRUE(wait_until(
      [&] {
        CommandResult r = otactl({"devices", "--group", "fleet"}, true);
        listed = json::parse(r.output, nullptr, false);
        if (r.exit_code != 0 || !listed.is_array() || listed.size() != 200) return false;
        for (const auto& d : listed) {
          const std::string dev = d.value("id", "");
          const std::string want = boots_new.count(dev) ? "1.1.0" : "1.0.0";
          if (d.value("version", "") != want) {
            mismatch = dev + " registry " + d.value("version", "") + ", flash " + want;
            return false;
          }
        }
        return true;
      },
      30s, 250ms))
      << mismatch;
  const std::string m = metrics();
  EXPECT_EQ(metric_sum(m, "ota_devices_by_version", "version=\"1.1.0\""), 190) << m;
  EXPECT_EQ(metric_sum(m, "ota_devices_by_version", "version=\"1.0.0\""), 10) << m;

  // The event log: waves started in order, each device offered once and only after its wave
  // started.
  json evs = otactl_json({"events", "--rollout", id, "--limit", "10000"});
  ASSERT_TRUE(evs.is_array()) << evs.dump();
  std::vector<long long> wave_start_event(3, -1);
  std::vector<std::string> wave_started_details;
  std::map<std::string, int> offered;
  long long completed_event = -1;
  for (const auto& e : evs) {
    const std::string what = e.value("what", "");
    const long long eid = e.value("id", 0LL);
    if (what == "rollout_started") {
      EXPECT_EQ(wave_start_event[0], -1) << "started twice";
      wave_start_event[0] = eid;
    } else if (what == "wave_started") {
      wave_started_details.push_back(e.value("detail", ""));
      const std::size_t n = wave_started_details.size();
      if (n < 3) wave_start_event[n] = eid;
      EXPECT_EQ(e.value("actor", ""), "controller");
    } else if (what == "offered") {
      const std::string dev = e.value("device", "");
      offered[dev]++;
      const int w = waves.count(dev) ? waves.at(dev) : 0;
      EXPECT_GT(eid, wave_start_event[static_cast<std::size_t>(w)])
          << dev << " (wave " << w + 1 << ") offered before its wave started: " << e.dump();
      EXPECT_GT(wave_start_event[static_cast<std::size_t>(w)], -1) << e.dump();
    } else if (what == "rollout_completed") {
      completed_event = eid;
    }
  }
  ASSERT_EQ(wave_started_details.size(), 2u) << join(wave_started_details, "\n");
  EXPECT_EQ(wave_started_details[0].rfind("wave 2/3", 0), 0u) << wave_started_details[0];
  EXPECT_EQ(wave_started_details[1].rfind("wave 3/3", 0), 0u) << wave_started_details[1];
  EXPECT_LT(wave_start_event[0], wave_start_event[1]);
  EXPECT_LT(wave_start_event[1], wave_start_event[2]);
  EXPECT_GT(completed_event, wave_start_event[2]);
  EXPECT_EQ(offered.size(), 200u);
  for (const auto& [dev, n] : offered) EXPECT_EQ(n, 1) << dev << " offered " << n << " times";

  // The live view ended by itself with the rollout, exit 0, with a progress line per wave.
  background_.join();
  EXPECT_EQ(watch_result.exit_code, 0) << watch_result.output;
  for (const char* line : {"wave 1/3 done", "wave 2/3 done", "wave 3/3 done", "[####################] 100%"})
    EXPECT_NE(watch_result.output.find(line), std::string::npos) << line << "\n" << tail(watch_result.output);
  EXPECT_NE(watch_result.output.find("rollout " + id + " completed: 190 of 200 devices succeeded"),
            std::string::npos)
      << tail(watch_result.output);
}

// ------------------------------------------------------------------------------------------

TEST_F(Rollouts, FailurePolicyPausesInWaveOneAndLaterWavesStayUntouched) {
  start_env("pw", 40, "pw");
  if (HasFatalFailure()) return;
  observe_offers();
  if (HasFatalFailure()) return;
  add_image(random_bytes(32 * 1024, 12), "1.2.0");
  if (HasFatalFailure()) return;
  // Every device fails its self-test.
  start_fleet({"--fail-self-test", join(fleet_ids())});
  if (HasFatalFailure()) return;
  wait_fleet_online();
  if (HasFatalFailure()) return;
  // Waves of 10, 8 and 22 devices; more than 10% failures in a wave pauses.
  json created = otactl_json({"rollout", "create", "1.2.0", "--group", "pw", "--wave", "25%", "--wave", "25%",
                              "--wave", "100%", "--max-wave-failure", "10", "--on-failure", "pause", "--start"});
  const std::string id = created.value("id", "");
  ASSERT_FALSE(id.empty()) << created.dump();

  json r = wait_rollout_settles(id, 60s);
  ASSERT_EQ(r.value("state", ""), "paused") << r.dump(1);
  EXPECT_EQ(r.value("paused_by", ""), "policy");
  EXPECT_NE(r.value("pause_reason", "").find("wave 1 failure rate"), std::string::npos) << r.dump();
  EXPECT_EQ(r.value("current_wave", -1), 0);

  // The wave's devices in flight finish; nothing of waves 2 and 3 moves.
  std::map<int, std::set<std::string>> by_wave;
  ASSERT_TRUE(wait_until(
      [&] {
        r = rollout(id, true);
        if (!r.is_object() || !r["devices"].is_array()) return false;
        by_wave.clear();
        bool in_flight = false;
        for (const auto& row : r["devices"]) {
          by_wave[row.value("wave", -1)].insert(row.value("device", ""));
          const std::string st = row.value("state", "");
          // Every state between the offer and the device's final answer (a device that
          // failed its self-test is still rebooting back into its old image for a moment).
          static const std::set<std::string> kInFlight{"offered",  "accepted",  "downloading",
                                                       "verifying", "installing", "rebooting",
                                                       "confirming"};
          if (kInFlight.count(st)) in_flight = true;
        }
        return !in_flight;
      },
      60s, 100ms))
      << r.dump(1);
  ASSERT_EQ(by_wave[0].size(), 10u);
  ASSERT_EQ(by_wave[1].size(), 8u);
  ASSERT_EQ(by_wave[2].size(), 22u);
  EXPECT_EQ(r.value("state", ""), "paused");
  EXPECT_EQ(count_of(r["counts"], "failed"), 10) << r["counts"].dump();
  EXPECT_EQ(count_of(r["counts"], "pending"), 30) << r["counts"].dump();
  for (const auto& row : r["devices"]) {
    if (row.value("wave", -1) == 0) continue;
    EXPECT_EQ(row.value("state", ""), "pending") << row.dump();
    EXPECT_EQ(row.value("attempt", -1), 0) << row.dump();
  }
  auto offers = offers_seen();
  for (const auto& [dev, ids] : offers)
    EXPECT_TRUE(by_wave[0].count(dev)) << dev << " of a later wave was sent an offer while wave 1 paused the rollout";
  EXPECT_EQ(offers.size(), 10u);
  // The live view stops on a policy pause and says how to go on (exit 1).
  CommandResult w = otactl({"watch", id, "--interval-ms", "100"});
  EXPECT_EQ(w.exit_code, 1) << w.output;
  EXPECT_NE(w.output.find("paused by policy"), std::string::npos) << w.output;
  EXPECT_NE(w.output.find("otactl rollout resume " + id), std::string::npos) << w.output;

  // The operator accepts wave 1's failures: wave 2 starts at once, and fails too.
  json resumed = otactl_json({"rollout", "resume", id});
  EXPECT_EQ(resumed.value("current_wave", -1), 1) << resumed.dump();
  r = wait_rollout_settles(id, 60s);
  ASSERT_EQ(r.value("state", ""), "paused") << r.dump(1);
  EXPECT_EQ(r.value("paused_by", ""), "policy");
  EXPECT_NE(r.value("pause_reason", "").find("wave 2 failure rate"), std::string::npos) << r.dump();
  json evs = events(id);
  int wave2_started = 0, resumed_events = 0;
  for (const auto& e : evs) {
    if (e.value("what", "") == "wave_started") {
      ++wave2_started;
      EXPECT_EQ(e.value("detail", "").rfind("wave 2/3", 0), 0u) << e.dump();
      EXPECT_NE(e.value("detail", "").find("accepted by operator"), std::string::npos) << e.dump();
    }
    if (e.value("what", "") == "rollout_resumed") {
      ++resumed_events;
      EXPECT_EQ(e.value("actor", "").rfind("token:", 0), 0u) << e.dump();
    }
  }
  EXPECT_EQ(wave2_started, 1);
  EXPECT_EQ(resumed_events, 1);

  // Abort: wave 3 is never offered.
  json aborted = otactl_json({"rollout", "abort", id, "--reason", "bad build"});
  EXPECT_EQ(aborted.value("state", ""), "aborted") << aborted.dump();
  ASSERT_TRUE(wait_until(
      [&] {
        r = rollout(id, true);
        if (!r.is_object() || !r["devices"].is_array()) return false;
        for (const auto& row : r["devices"]) {
          const std::string st = row.value("state", "");
          if (st != "failed" && st != "cancelled") return false;
        }
        return true;
      },
      60s, 100ms))
      << r.dump(1);
  EXPECT_EQ(r.value("state", ""), "aborted");
  EXPECT_NE(r.value("pause_reason", "").find("bad build"), std::string::npos) << r.dump();
  for (const auto& row : r["devices"]) {
    if (row.value("wave", -1) != 2) continue;
    EXPECT_EQ(row.value("state", ""), "cancelled") << row.dump();
  }
  // An aborted rollout stays quiet: no offer to a wave-3 device within several engine ticks.
  auto wave3_offered = [&] {
    for (const auto& [dev, ids] : offers_seen())
      if (by_wave[2].count(dev)) return true;
    return false;
  };
  EXPECT_FALSE(wait_until(wave3_offered, 3500ms, 100ms)) << "an aborted rollout sent offers";
  offers = offers_seen();
  EXPECT_EQ(offers.size(), 18u);
  // One offer id per device: no retry attempt and no second offer. The same id may arrive
  // twice (a device that reconnects is sent its in-flight offer again, which it answers with
  // its current status; seen under ASan on a loaded machine), so ids are counted once.
  for (const auto& [dev, ids] : offers) {
    EXPECT_EQ(std::set<std::string>(ids.begin(), ids.end()).size(), 1u) << dev << ": " << join(ids);
  }
  // Every device still boots its old image (the failed ones reverted after their trial boot).
  for (const auto& dev : fleet_ids()) {
    ASSERT_TRUE(wait_until([&] { return boot_record(dev).settled(); }, 20s)) << dev << " stays on trial";
    EXPECT_EQ(boot_record(dev).boots(), "1.0.0") << dev;
  }
}

// ------------------------------------------------------------------------------------------

TEST_F(Rollouts, ControllerKilledMidRolloutContinuesAndNeverOffersTwice) {
  constexpr int kDevices = 200;
  start_env("ck", kDevices, "fleet");
  if (HasFatalFailure()) return;
  observe_offers();  // for the whole test, across every controller restart
  if (HasFatalFailure()) return;
  add_image(random_bytes(64 * 1024, 13), "2.0.0");
  if (HasFatalFailure()) return;
  // Slow flash: 16 chunks x 60 ms, about a second per device; at most 40 at once.
  start_fleet({"--flash-write-delay-us", "60000"});
  if (HasFatalFailure()) return;
  wait_fleet_online();
  if (HasFatalFailure()) return;
  json created = otactl_json({"rollout", "create", "2.0.0", "--group", "fleet", "--wave", "10%", "--wave", "50%",
                              "--wave", "100%", "--max-concurrent", "40", "--start"});
  const std::string id = created.value("id", "");
  ASSERT_FALSE(id.empty()) << created.dump();

  int max_wave = -1;
  auto check_wave = [&](const json& r) {
    const int cw = r.value("current_wave", -1);
    EXPECT_GE(cw, max_wave) << "current wave went backwards: " << r.dump();
    max_wave = std::max(max_wave, cw);
  };
  // Devices the controller shows as offered (or further) although no offer for them ever
  // reached the broker: after a restart nothing else will tell them.
  auto offered_but_never_sent = [&] {
    json r = rollout(id, true);
    const auto seen = offers_seen();
    std::string out;
    if (!r.is_object() || !r["devices"].is_array()) return std::string("(no rollout)");
    for (const auto& row : r["devices"]) {
      const std::string dev = row.value("device", ""), st = row.value("state", "");
      if (st != "pending" && !seen.count(dev)) out += "\n  " + dev + " " + st;
    }
    return out;
  };
  auto kill_and_restart = [&](const std::string& when) {
    json before = rollout(id);
    check_wave(before);
    controller_->kill9();
    std::fprintf(stderr, "[ killed  ] %s: wave %d, %s\n", when.c_str(), before.value("current_wave", -1) + 1,
                 before["counts"].dump().c_str());
    ASSERT_TRUE(start_controller()) << when;
    json after = rollout(id);
    check_wave(after);
    EXPECT_GE(after.value("current_wave", -1), before.value("current_wave", -2)) << when;
    EXPECT_EQ(after.value("state", ""), "running") << when << ": " << after.dump();
    // Whatever was in flight when the controller died: every device it recorded as offered
    // gets that offer (the broker carries it) once the controller is back.
    std::string missing;
    ASSERT_TRUE(wait_until(
        [&] {
          missing = offered_but_never_sent();
          return missing.empty();
        },
        20s, 200ms))
        << when << ": the restarted controller shows these devices offered, but no offer for them ever "
        << "reached the broker (the kill lost the publish after the rows were committed), so they wait "
        << "for the in-progress timeout:" << missing;
  };
  auto counts_now = [&](const char* key) {
    json r = rollout(id);
    if (r.is_object()) check_wave(r);
    return r.is_object() ? count_of(r["counts"], key) : -1;
  };

  // 1: wave 1 started, its offers in flight.
  ASSERT_TRUE(wait_until([&] { return counts_now("offered") + counts_now("downloading") >= 10; }, 60s, 20ms));
  kill_and_restart("wave 1, offers in flight");
  if (HasFatalFailure()) return;
  // 2: wave 2 half done, transfers in flight.
  ASSERT_TRUE(wait_until(
      [&] {
        json r = rollout(id);
        if (!r.is_object()) return false;
        check_wave(r);
        return r.value("current_wave", -1) == 1 && count_of(r["waves"][1]["counts"], "succeeded") >= 30 &&
               count_of(r["counts"], "downloading") > 0;
      },
      90s, 50ms));
  kill_and_restart("wave 2, transfers in flight");
  if (HasFatalFailure()) return;
  // 3: the moment wave 3 has started (its wave_started event and first offers committed).
  ASSERT_TRUE(wait_until(
      [&] {
        json r = rollout(id);
        if (r.is_object()) check_wave(r);
        return r.is_object() && r.value("current_wave", -1) == 2;
      },
      90s, 5ms));
  kill_and_restart("just after wave 3 started");
  if (HasFatalFailure()) return;

  json end = wait_rollout_settles(id, 120s, check_wave);
  if (end.value("state", "") != "completed") {
    // Name the devices the rollout waits for, and whether an offer ever reached them.
    json rows = rollout(id, true);
    const auto seen = offers_seen();
    std::string stuck;
    for (const auto& row : rows["devices"]) {
      const std::string st = row.value("state", ""), dev = row.value("device", "");
      if (st == "succeeded") continue;
      stuck += "\n  " + dev + " " + st + ", offer messages seen on the broker: " +
               std::to_string(seen.count(dev) ? seen.at(dev).size() : 0);
    }
    FAIL() << "rollout did not complete after the restarts; devices not done:" << stuck;
  }
  json api = rollout(id, true);
  EXPECT_EQ(count_of(api["counts"], "succeeded"), kDevices) << api["counts"].dump();
  for (const auto& row : api["devices"]) EXPECT_EQ(row.value("attempt", 0), 1) << row.dump();

  // Exactly one `offered` decision per device in the event log, across the restarts.
  const std::string dep = api.value("deployment", "");
  std::map<std::string, int> offered;
  std::map<std::string, std::vector<std::string>> resent;
  int wave_started = 0;
  for (const auto& e : events(id)) {
    const std::string what = e.value("what", "");
    if (what == "offered") offered[e.value("device", "")]++;
    if (what == "offer_resent") resent[e.value("device", "")].push_back(e.value("detail", ""));
    if (what == "wave_started") ++wave_started;
  }
  EXPECT_EQ(wave_started, 2);
  EXPECT_EQ(offered.size(), static_cast<std::size_t>(kDevices));
  for (const auto& [dev, n] : offered) EXPECT_EQ(n, 1) << dev << " offered " << n << " times";

  // What the broker carried: every device got the one offer of this rollout (attempt 1, the
  // deployment's own id), never a different one, and only once: a restarted controller must
  // not offer again what it offered before the kill.
  auto offers = offers_seen();
  EXPECT_EQ(offers.size(), static_cast<std::size_t>(kDevices));
  int repeated = 0;
  for (const auto& [dev, ids] : offers) {
    EXPECT_EQ(std::set<std::string>(ids.begin(), ids.end()), std::set<std::string>{dep}) << dev << ": " << join(ids);
    EXPECT_EQ(ids.size(), 1u) << dev << " was sent " << ids.size() << " offer messages; offer_resent: "
                              << join(resent[dev], "; ");
    repeated += static_cast<int>(ids.size()) - 1;
  }
  std::fprintf(stderr, "[ offers  ] %zu devices, %d repeated offer messages\n", offers.size(), repeated);
  for (const auto& dev : fleet_ids()) {
    ASSERT_TRUE(wait_until([&] { return boot_record(dev).settled(); }, 20s)) << dev << " stays on trial";
    EXPECT_EQ(boot_record(dev).boots(), "2.0.0") << dev;
  }
}

// ------------------------------------------------------------------------------------------

TEST_F(Rollouts, DeferralsAreRetriedAndDeclinesCountedNotFailures) {
  start_env("df", 20, "df");
  if (HasFatalFailure()) return;
  add_image(random_bytes(16 * 1024, 14), "3.0.0");
  if (HasFatalFailure()) return;
  const std::set<std::string> deferring{"df-001", "df-007", "df-013"}, declining{"df-004", "df-016"};
  start_fleet({"--defer-ids", join({deferring.begin(), deferring.end()}), "--defer-count", "2", "--decline-ids",
               join({declining.begin(), declining.end()}), "--decline-reason", "low_battery"});
  if (HasFatalFailure()) return;
  wait_fleet_online();
  if (HasFatalFailure()) return;
  // Any failure pauses: deferrals and declines must not count as failures.
  json created = otactl_json({"rollout", "create", "3.0.0", "--group", "df", "--wave", "50%", "--wave", "100%",
                              "--max-failure", "0", "--defer-delay", "1s", "--start"});
  const std::string id = created.value("id", "");
  ASSERT_FALSE(id.empty()) << created.dump();
  json end = wait_rollout_settles(id, 90s);
  ASSERT_EQ(end.value("state", ""), "completed") << end.dump(1);
  json api = rollout(id, true);
  const json& c = api["counts"];
  EXPECT_EQ(count_of(c, "succeeded"), 18) << c.dump();
  EXPECT_EQ(count_of(c, "declined"), 2) << c.dump();
  EXPECT_EQ(count_of(c, "failed"), 0) << c.dump();
  EXPECT_EQ(count_of(c, "deferred"), 0) << c.dump();
  EXPECT_EQ(api["failure_rate"].value("total", -1.0), 0.0) << api.dump();
  for (const auto& row : api["devices"]) {
    const std::string dev = row.value("device", "");
    if (declining.count(dev)) {
      EXPECT_EQ(row.value("state", ""), "declined") << row.dump();
      EXPECT_NE(row.value("reason", "").find("low_battery"), std::string::npos) << row.dump();
    } else {
      EXPECT_EQ(row.value("state", ""), "succeeded") << row.dump();
      EXPECT_EQ(row.value("attempt", 0), 1) << "a deferral is not a new attempt: " << row.dump();
    }
  }
  // The deferring devices went through `deferred`, were offered again and took the offer
  // (attempt 1, above). Each defers the first 2 offer messages it gets, so twice when every
  // offer arrives once; an offer may legitimately arrive twice (the controller offers again
  // to a device whose live hello it handles while the row is offered), and the second defer
  // then finds the row already deferred and is ignored: once or twice, never more.
  std::map<std::string, int> deferrals;
  for (const auto& e : events(id))
    if (e.value("what", "") == "state" && e.value("detail", "").find("-> deferred") != std::string::npos)
      deferrals[e.value("device", "")]++;
  for (const auto& dev : deferring) {
    EXPECT_GE(deferrals[dev], 1) << dev;
    EXPECT_LE(deferrals[dev], 2) << dev;
  }
  EXPECT_EQ(deferrals.size(), deferring.size());
  for (const auto& dev : fleet_ids()) {
    ASSERT_TRUE(wait_until([&] { return boot_record(dev).settled(); }, 10s)) << dev;
    EXPECT_EQ(boot_record(dev).boots(), declining.count(dev) ? "1.0.0" : "3.0.0") << dev;
  }
}

}  // namespace
