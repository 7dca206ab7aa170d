// The rollout engine with driven time: no clock, no broker, no database.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>

#include "ota/policy/policy_grammar.hpp"
#include "ota/service/rollout_engine.hpp"
#include "ota/service/tag_expr.hpp"
#include "service_controller_fixture.hpp"

using namespace ota::service;
using nlohmann::json;
using ota::service::testing::bytes_of;
namespace proto = ota::proto;

namespace {

constexpr long long kT0 = 1'800'000'000'000LL;  // unix ms, 2027-01-15 08:00 UTC

RolloutPolicy policy(const json& j) {
  auto p = parse_policy(j);
  EXPECT_TRUE(p.ok()) << p.error();
  return p.ok() ? *p : RolloutPolicy{};
}

std::vector<std::string> devices(int n) {
  std::vector<std::string> out;
  for (int i = 0; i < n; ++i) out.push_back("dev-" + std::to_string(1000 + i));
  return out;
}

struct Sim {
  RolloutState st;
  std::vector<RolloutRow> rows;
  RolloutPolicy p;
  long long now = kT0;
  std::vector<EngineAction> last;

  Sim(int n, const json& pj) : p(policy(pj)) {
    st.id = "ro-test";
    rows = assign_waves(st.id, devices(n), p);
    auto a = op_start(st, p, now);
    EXPECT_TRUE(a.ok());
  }
  std::vector<EngineAction> step(long long advance_ms = 1000) {
    now += advance_ms;
    last = advance(st, rows, p, now);
    return last;
  }
  RolloutRow& row(const std::string& dev) {
    for (auto& r : rows)
      if (r.device == dev) return r;
    ADD_FAILURE() << "no row " << dev;
    return rows.front();
  }
  std::vector<std::string> offers(const std::vector<EngineAction>& acts) const {
    std::vector<std::string> out;
    for (const auto& a : acts)
      if (a.kind == EngineAction::Kind::offer) out.push_back(a.device);
    return out;
  }
  std::vector<std::string> cancels(const std::vector<EngineAction>& acts) const {
    std::vector<std::string> out;
    for (const auto& a : acts)
      if (a.kind == EngineAction::Kind::cancel) out.push_back(a.device);
    return out;
  }
  bool logged(const std::string& what) const {
    return std::any_of(last.begin(), last.end(), [&](const EngineAction& a) {
      return a.kind == EngineAction::Kind::log && a.what == what;
    });
  }
  std::vector<RolloutRow*> wave(int w) {
    std::vector<RolloutRow*> out;
    for (auto& r : rows)
      if (r.wave == w) out.push_back(&r);
    return out;
  }
  // What the controller does when a device reports.
  void finish(RolloutRow& r, bool ok) {
    r.state = ok ? RowState::succeeded : RowState::failed;
    r.reason = ok ? "" : "self_test_failed";
  }
};

TEST(RolloutWaves, PercentOfRemainingAndLastTakesTheRest) {
  auto p = policy(json::parse(R"({"waves":[{"size":"10%"},{"size":"50%"},{"size":"10%"}]})"));
  auto rows = assign_waves("ro-a", devices(200), p);
  ASSERT_EQ(rows.size(), 200u);
  std::map<int, int> per;
  std::set<std::string> seen;
  for (const auto& r : rows) per[r.wave]++, seen.insert(r.device);
  EXPECT_EQ(seen.size(), 200u);
  EXPECT_EQ(per[0], 20);   // 10% of 200
  EXPECT_EQ(per[1], 90);   // 50% of the 180 left
  EXPECT_EQ(per[2], 90);   // the last wave takes all that remain
}

TEST(RolloutWaves, CountsAndMoreWavesThanDevices) {
  auto p = policy(json::parse(R"({"waves":[{"size":1},{"size":"1%"},{"size":2},{"size":"100%"}]})"));
  auto rows = assign_waves("ro-a", devices(3), p);
  std::map<int, int> per;
  for (const auto& r : rows) per[r.wave]++;
  EXPECT_EQ(per[0], 1);
  EXPECT_EQ(per[1], 1);  // at least one device while any remain
  EXPECT_EQ(per[2], 1);
  EXPECT_EQ(per.count(3), 0u);
}

TEST(RolloutWaves, DeterministicPerRolloutAndShuffled) {
  auto p = policy(json::parse(R"({"waves":[{"size":"10%"},{"size":"100%"}]})"));
  auto first = [&](const std::string& id) {
    std::vector<std::string> w0;
    for (const auto& r : assign_waves(id, devices(100), p))
      if (r.wave == 0) w0.push_back(r.device);
    std::sort(w0.begin(), w0.end());
    return w0;
  };
  EXPECT_EQ(first("ro-a"), first("ro-a"));
  EXPECT_NE(first("ro-a"), first("ro-b"));
  // Not simply the first ids in sort order.
  EXPECT_NE(first("ro-a"), std::vector<std::string>(devices(10)));
}

TEST(RolloutEngine, FirstTickOffersOnlyWaveOne) {
  Sim s(50, json::parse(R"({"waves":[{"size":"20%"},{"size":"100%"}]})"));
  auto acts = s.step();
  auto offered = s.offers(acts);
  EXPECT_EQ(offered.size(), 10u);
  for (const auto& d : offered) EXPECT_EQ(s.row(d).wave, 0);
  for (auto* r : s.wave(1)) EXPECT_EQ(r->state, RowState::pending);
  for (auto* r : s.wave(0)) {
    EXPECT_EQ(r->state, RowState::offered);
    EXPECT_EQ(r->attempt, 1);
    EXPECT_EQ(r->offered_at_ms, s.now);
  }
  // Nothing changed: a second tick offers nobody again.
  EXPECT_TRUE(s.offers(s.step()).empty());
}

TEST(RolloutEngine, ErrorThresholdInWaveOnePausesWithinOneTickAndLaterWavesStayUntouched) {
  Sim s(100, json::parse(R"({"waves":[{"size":"10%"},{"size":"50%"},{"size":"100%"}],
                             "failure":{"max_wave_rate":10,"action":"pause"}})"));
  s.step();
  auto w0 = s.wave(0);
  ASSERT_EQ(w0.size(), 10u);
  s.finish(*w0[0], false);  // 10%: not above the limit yet
  s.finish(*w0[1], true);
  s.step();
  EXPECT_EQ(s.st.state, RolloutStatus::running);
  s.finish(*w0[2], false);  // 20% > 10%
  auto acts = s.step();
  EXPECT_EQ(s.st.state, RolloutStatus::paused);
  EXPECT_EQ(s.st.paused_by, PausedBy::policy);
  EXPECT_NE(s.st.pause_reason.find("wave 1 failure rate 20.0%"), std::string::npos) << s.st.pause_reason;
  EXPECT_TRUE(s.logged("rollout_paused"));
  EXPECT_TRUE(s.offers(acts).empty());
  // The rest of wave 1 finishes successfully while paused: still nobody in wave 2/3 offered.
  for (std::size_t i = 3; i < w0.size(); ++i) s.finish(*w0[i], true);
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(s.offers(s.step(60000)).empty());
  EXPECT_EQ(s.st.current_wave, 0);
  for (int w : {1, 2})
    for (auto* r : s.wave(w)) EXPECT_EQ(r->state, RowState::pending) << r->device;
}

TEST(RolloutEngine, ResumeAfterPolicyPauseStartsTheNextWave) {
  Sim s(100, json::parse(R"({"waves":[{"size":"10%"},{"size":"50%"},{"size":"100%"}],
                             "failure":{"max_wave_rate":10}})"));
  s.step();
  auto w0 = s.wave(0);
  for (std::size_t i = 0; i < w0.size(); ++i) s.finish(*w0[i], i >= 3);  // 30% failed
  s.step();
  ASSERT_EQ(s.st.state, RolloutStatus::paused);
  ASSERT_TRUE(op_resume(s.st).ok());
  EXPECT_EQ(s.st.state, RolloutStatus::running);
  auto acts = s.step();
  EXPECT_EQ(s.st.current_wave, 1);
  EXPECT_TRUE(s.logged("wave_started"));
  auto offered = s.offers(acts);
  EXPECT_EQ(offered.size(), s.wave(1).size());
  for (const auto& d : offered) EXPECT_EQ(s.row(d).wave, 1);
  // The accepted wave's failures do not trip the policy again.
  EXPECT_EQ(s.st.state, RolloutStatus::running);
  // Resuming a running rollout is refused with a reason.
  auto again = op_resume(s.st);
  ASSERT_FALSE(again.ok());
  EXPECT_NE(again.error().find("only a paused rollout"), std::string::npos);
}

TEST(RolloutEngine, OperatorPauseHoldsOffersAndResumeDoesNotSkipTheThreshold) {
  Sim s(20, json::parse(R"({"waves":[{"size":"50%","success_threshold":100},{"size":"100%"}],
                            "max_concurrent":2})"));
  EXPECT_EQ(s.offers(s.step()).size(), 2u);
  ASSERT_TRUE(op_pause(s.st, "lunch").ok());
  EXPECT_EQ(s.st.paused_by, PausedBy::operator_action);
  for (auto* r : s.wave(0))
    if (r->state == RowState::offered) s.finish(*r, true);
  EXPECT_TRUE(s.offers(s.step()).empty());
  ASSERT_TRUE(op_resume(s.st).ok());
  auto offered = s.offers(s.step());
  EXPECT_EQ(offered.size(), 2u);
  for (const auto& d : offered) EXPECT_EQ(s.row(d).wave, 0);  // still wave 1
  EXPECT_EQ(s.st.current_wave, 0);
}

TEST(RolloutEngine, AbortCancelsInFlightKeepsInstallingAndNeverOffersAgain) {
  Sim s(30, json::parse(R"({"waves":[{"size":"50%"},{"size":"100%"}]})"));
  s.step();
  auto w0 = s.wave(0);
  w0[0]->state = RowState::downloading;
  w0[1]->state = RowState::installing;
  s.finish(*w0[2], true);
  auto acts = op_abort(s.st, s.rows, "bad build");
  ASSERT_TRUE(acts.ok());
  EXPECT_EQ(s.st.state, RolloutStatus::aborted);
  auto cancelled = s.cancels(*acts);
  EXPECT_EQ(cancelled.size(), w0.size() - 2);  // all in flight but installing and finished
  EXPECT_EQ(std::count(cancelled.begin(), cancelled.end(), w0[0]->device), 1);
  EXPECT_EQ(std::count(cancelled.begin(), cancelled.end(), w0[1]->device), 0);
  EXPECT_EQ(w0[0]->state, RowState::cancelled);
  EXPECT_EQ(w0[1]->state, RowState::installing);
  EXPECT_EQ(w0[2]->state, RowState::succeeded);
  for (auto* r : s.wave(1)) EXPECT_EQ(r->state, RowState::cancelled);
  EXPECT_TRUE(s.offers(s.step(3600000)).empty());
  EXPECT_FALSE(op_abort(s.st, s.rows, "").ok());
}

TEST(RolloutEngine, FailurePolicyAbortCancels) {
  Sim s(10, json::parse(R"({"waves":[{"size":"50%"},{"size":"100%"}],
                            "failure":{"max_total_rate":5,"action":"abort"}})"));
  s.step();
  s.wave(0)[0]->state = RowState::failed;
  auto acts = s.step();
  EXPECT_EQ(s.st.state, RolloutStatus::aborted);
  EXPECT_EQ(s.cancels(acts).size(), 4u);  // the other wave-1 devices, offered
  for (auto* r : s.wave(1)) EXPECT_EQ(r->state, RowState::cancelled);
}

TEST(RolloutEngine, RetriesAfterDelayThenCountAsFailure) {
  Sim s(1, json::parse(R"({"retries":1,"retry_delay":"30s","failure":{"max_wave_rate":50}})"));
  s.step();
  RolloutRow& r = s.rows[0];
  s.finish(r, false);
  s.step();
  EXPECT_EQ(r.state, RowState::pending);
  EXPECT_EQ(r.next_at_ms, s.now + 30000);
  EXPECT_EQ(s.st.state, RolloutStatus::running);  // a failure with attempts left is not a failure yet
  EXPECT_TRUE(s.offers(s.step(29000)).empty());
  auto offered = s.offers(s.step(1000));
  ASSERT_EQ(offered.size(), 1u);
  EXPECT_EQ(r.attempt, 2);
  s.finish(r, false);
  s.step();
  EXPECT_EQ(r.state, RowState::failed);
  EXPECT_TRUE(row_is_final(r, s.p));
  EXPECT_EQ(s.st.state, RolloutStatus::paused);  // 100% > 50%
}

TEST(RolloutEngine, InProgressTimeoutCancelsAndCounts) {
  Sim s(4, json::parse(R"({"timeout":"10m","failure":{"max_wave_rate":30}})"));
  s.step();
  s.rows[0].state = RowState::downloading;
  s.finish(s.rows[1], true);
  s.finish(s.rows[2], true);
  s.finish(s.rows[3], true);
  EXPECT_TRUE(s.cancels(s.step(9 * 60000)).empty());
  auto acts = s.step(60000);
  EXPECT_EQ(s.cancels(acts), std::vector<std::string>{s.rows[0].device});
  EXPECT_EQ(s.rows[0].state, RowState::timed_out);
  EXPECT_NE(s.rows[0].reason.find("no result within 10m (last state downloading)"), std::string::npos);
  // 1 of 4 = 25% <= 30%: the rollout completes with the timeout counted as a failure.
  EXPECT_EQ(s.st.state, RolloutStatus::completed);
  EXPECT_EQ(wave_counts(s.rows, s.p)[0].failed, 1);
}

TEST(RolloutEngine, ConcurrencyCap) {
  Sim s(20, json::parse(R"({"max_concurrent":3})"));
  EXPECT_EQ(s.offers(s.step()).size(), 3u);
  EXPECT_TRUE(s.offers(s.step()).empty());
  int done = 0;
  for (auto& r : s.rows)
    if (r.state == RowState::offered && done < 2) s.finish(r, true), ++done;
  EXPECT_EQ(s.offers(s.step()).size(), 2u);
}

TEST(RolloutEngine, MaintenanceWindowHoldsOffers) {
  // kT0 is 08:00 UTC; the window opens at 09:00.
  Sim s(5, json::parse(R"({"window":"09:00-10:00"})"));
  EXPECT_TRUE(s.offers(s.step()).empty());
  EXPECT_TRUE(s.logged("offers_held"));
  EXPECT_TRUE(s.offers(s.step(30 * 60000)).empty());
  EXPECT_FALSE(s.logged("offers_held"));  // said once, not every tick
  auto acts = s.step(30 * 60000);  // 09:00:02
  EXPECT_EQ(s.offers(acts).size(), 5u);
  EXPECT_TRUE(s.logged("offers_released"));
}

TEST(RolloutEngine, WindowAcrossMidnight) {
  auto parsed = parse_window("22:00-04:00");
  ASSERT_TRUE(parsed.ok() && parsed->has_value());
  const auto& w = *parsed;
  const long long day = 86400000LL;
  EXPECT_TRUE(w->contains(23 * 3600000LL));
  EXPECT_TRUE(w->contains(day + 3 * 3600000LL));
  EXPECT_FALSE(w->contains(day + 4 * 3600000LL));
  EXPECT_FALSE(w->contains(12 * 3600000LL));
  EXPECT_FALSE(parse_window("25:00-04:00").ok());
  EXPECT_FALSE(parse_window("22:00").ok());
}

// A policy an earlier controller stored under its looser grammar still loads (a rollout must not
// stop the controller from starting), while the same text in a request is refused.
TEST(RolloutPolicy, StoredPoliciesFromTheOlderGrammarStillLoad) {
  const json stored = json::parse(
      R"({"waves":[{"size":"1e-05%"},{"size":"100%","soak":999999999999}],
          "window":"22:00-22:00","timeout":400000000})");
  EXPECT_FALSE(parse_policy(stored).ok());
  auto p = parse_policy(stored, PolicySource::stored);
  ASSERT_TRUE(p.ok()) << p.error();
  EXPECT_FALSE(p->window.has_value());  // equal ends were always the whole day
  EXPECT_DOUBLE_EQ(p->waves[0].size, 1e-05);
  EXPECT_EQ(p->waves[1].soak_s, ota::policy::kMaxDurationS);
  EXPECT_EQ(p->timeout_s, ota::policy::kMaxDurationS);
  // What is still wrong in any grammar stays refused.
  EXPECT_FALSE(parse_policy(json::parse(R"({"window":"25:00-25:00"})"), PolicySource::stored).ok());
  EXPECT_FALSE(parse_policy(json::parse(R"({"timeout":-1})"), PolicySource::stored).ok());
  EXPECT_FALSE(parse_policy(json::parse(R"({"waves":[{"size":"0%"}]})"), PolicySource::stored).ok());
}

TEST(RolloutEngine, StartTimeSchedules) {
  auto p = policy(json{{"start_at", (kT0 + 3600000) / 1000}});
  RolloutState st;
  st.id = "ro-s";
  auto rows = assign_waves(st.id, devices(3), p);
  ASSERT_TRUE(op_start(st, p, kT0).ok());
  EXPECT_EQ(st.state, RolloutStatus::scheduled);
  EXPECT_TRUE(advance(st, rows, p, kT0 + 3599000).empty());
  auto acts = advance(st, rows, p, kT0 + 3600000);
  EXPECT_EQ(st.state, RolloutStatus::running);
  int offers = 0;
  for (const auto& a : acts) offers += a.kind == EngineAction::Kind::offer;
  EXPECT_EQ(offers, 3);
}

TEST(RolloutEngine, SoakTimeDelaysTheNextWave) {
  Sim s(10, json::parse(R"({"waves":[{"size":"50%","soak":"1h"},{"size":"100%"}]})"));
  s.step();
  for (auto* r : s.wave(0)) s.finish(*r, true);
  s.step();
  EXPECT_TRUE(s.logged("wave_soaking"));
  EXPECT_EQ(s.st.current_wave, 0);
  EXPECT_TRUE(s.offers(s.step(3599000)).empty());
  auto offered = s.offers(s.step(1000));
  EXPECT_EQ(offered.size(), 5u);
  EXPECT_EQ(s.st.current_wave, 1);
}

TEST(RolloutEngine, SuccessThresholdStartsNextWaveBeforeStragglersFinish) {
  Sim s(20, json::parse(R"({"waves":[{"size":"50%","success_threshold":80},{"size":"100%"}]})"));
  s.step();
  auto w0 = s.wave(0);
  for (int i = 0; i < 7; ++i) s.finish(*w0[static_cast<std::size_t>(i)], true);
  s.step();
  EXPECT_EQ(s.st.current_wave, 0);  // 70% < 80%
  s.finish(*w0[7], true);
  auto acts = s.step();
  EXPECT_EQ(s.st.current_wave, 1);
  EXPECT_EQ(s.offers(acts).size(), 10u);
}

TEST(RolloutEngine, WaveFinishingBelowThresholdPauses) {
  Sim s(10, json::parse(R"({"waves":[{"size":"50%","success_threshold":100},{"size":"100%"}]})"));
  s.step();
  auto w0 = s.wave(0);
  for (std::size_t i = 0; i < w0.size(); ++i) {
    w0[i]->state = i == 0 ? RowState::declined : (i == 1 ? RowState::failed : RowState::succeeded);
  }
  s.step();
  EXPECT_EQ(s.st.state, RolloutStatus::paused);
  EXPECT_EQ(s.st.paused_by, PausedBy::threshold);
  EXPECT_NE(s.st.pause_reason.find("below its threshold"), std::string::npos);
}

TEST(RolloutEngine, DeclinesAreNotFailures) {
  Sim s(10, json::parse(R"({"failure":{"max_wave_rate":0}})"));
  s.step();
  for (auto& r : s.rows) r.state = RowState::declined;
  s.rows[0].state = RowState::succeeded;
  s.step();
  EXPECT_EQ(s.st.state, RolloutStatus::completed);
  EXPECT_EQ(wave_counts(s.rows, s.p)[0].declined, 9);
}

TEST(RolloutEngine, DeferredDeviceOfferedAgainWithTheSameAttempt) {
  Sim s(1, json::parse(R"({})"));
  s.step();
  RolloutRow& r = s.rows[0];
  r.state = RowState::deferred;
  r.next_at_ms = s.now + 60000;
  EXPECT_TRUE(s.offers(s.step(59000)).empty());
  EXPECT_EQ(s.st.state, RolloutStatus::running);
  EXPECT_EQ(s.offers(s.step(1000)).size(), 1u);
  EXPECT_EQ(r.attempt, 1);
  EXPECT_EQ(r.state, RowState::offered);
}

TEST(RolloutEngine, OperatorRetryGivesFinalFailuresOneMoreAttempt) {
  Sim s(2, json::parse(R"({"failure":{"max_wave_rate":100}})"));
  s.step();
  s.finish(s.rows[0], false);
  s.finish(s.rows[1], true);
  s.step();
  ASSERT_EQ(s.st.state, RolloutStatus::completed);
  auto r = op_retry(s.st, s.rows, s.p, s.now);
  ASSERT_TRUE(r.ok()) << r.error();
  EXPECT_EQ(s.st.state, RolloutStatus::running);
  auto offered = s.offers(s.step());
  ASSERT_EQ(offered, std::vector<std::string>{s.rows[0].device});
  EXPECT_EQ(s.rows[0].attempt, 2);
  s.finish(s.rows[0], true);
  s.step();
  EXPECT_EQ(s.st.state, RolloutStatus::completed);
  EXPECT_FALSE(op_retry(s.st, s.rows, s.p, s.now).ok());  // nothing failed any more
}

TEST(RolloutPolicy, ErrorsNameTheField) {
  auto bad = [](const char* j) {
    auto p = parse_policy(json::parse(j));
    EXPECT_FALSE(p.ok()) << j;
    return p.ok() ? std::string() : p.error();
  };
  EXPECT_NE(bad(R"({"waves":[{"size":"abc"}]})").find("waves[0].size"), std::string::npos);
  EXPECT_NE(bad(R"({"waves":[{"size":"10%","success_threshold":150}]})").find("waves[0].success_threshold"), std::string::npos);
  EXPECT_NE(bad(R"({"waves":[{"size":"10%","speed":1}]})").find("speed"), std::string::npos);
  EXPECT_NE(bad(R"({"waves":[]})").find("waves"), std::string::npos);
  EXPECT_NE(bad(R"({"timeout":"5 minutes"})").find("timeout"), std::string::npos);
  EXPECT_NE(bad(R"({"failure":{"action":"explode"}})").find("failure.action"), std::string::npos);
  EXPECT_NE(bad(R"({"retries":11})").find("retries"), std::string::npos);
  EXPECT_NE(bad(R"({"start_at":"tomorrow"})").find("start_at"), std::string::npos);
  EXPECT_NE(bad(R"({"window":"9-17"})").find("window"), std::string::npos);
  auto ok = parse_policy(json::parse(R"({"start_at":"2026-11-26T02:00:00Z","timeout":"2h","retry_delay":90})"));
  ASSERT_TRUE(ok.ok()) << ok.error();
  EXPECT_EQ(ok->start_at_s, 1795658400);  // 2026-11-26T02:00:00Z
  EXPECT_EQ(ok->timeout_s, 7200);
  EXPECT_EQ(ok->retry_delay_s, 90);
  // The stored form parses back to the same policy.
  auto again = parse_policy(ok->to_json());
  ASSERT_TRUE(again.ok()) << again.error();
  EXPECT_EQ(again->to_json(), ok->to_json());
}

TEST(TagExpr, MatchesTagsAndBuiltins) {
  TagSubject berlin{"d1", "esp32", "1.0.0", {"lab"}, {{"site", "berlin"}, {"beta", "yes"}}};
  TagSubject paris{"d2", "esp32s3", "1.1.0", {}, {{"site", "paris"}}};
  auto m = [&](const char* e, const TagSubject& s) {
    auto x = TagExpr::parse(e);
    EXPECT_TRUE(x.ok()) << e << ": " << x.error();
    return x.ok() && x->matches(s);
  };
  EXPECT_TRUE(m("site=berlin and hw=esp32", berlin));
  EXPECT_FALSE(m("site=berlin and hw=esp32", paris));
  EXPECT_TRUE(m("hw=esp32* and not beta", paris));
  EXPECT_FALSE(m("hw=esp32* and not beta", berlin));
  EXPECT_TRUE(m("(site=paris or group=lab) and version!=2.0.0", berlin));
  EXPECT_TRUE(m("site!=berlin", paris));
  EXPECT_TRUE(m("id=d2", paris));
}

TEST(TagExpr, ErrorsSayWhereAndWhat) {
  for (const char* e : {"", "site=", "site=berlin and", "(site=berlin", "site=berlin)",
                        "site==x", "a=b* c", "site=ber*lin", "and=x", "si te=x or"}) {
    auto x = TagExpr::parse(e);
    EXPECT_FALSE(x.ok()) << "accepted: " << e;
  }
  auto x = TagExpr::parse("site=berlin and (model=esp32");
  ASSERT_FALSE(x.ok());
  EXPECT_NE(x.error().find("expected ')'"), std::string::npos) << x.error();
  EXPECT_NE(x.error().find("position"), std::string::npos) << x.error();
}

// ------------------------------------------------------- the controller around the engine

class RolloutControllerTest : public ota::service::testing::ControllerTest {
 protected:
  void SetUp() override {
    clock = [this] { return now_ms; };
    ControllerTest::SetUp();
  }
  void advance(long long ms) {
    now_ms += ms;
    ctl->rollout_tick(now_ms);
  }
  // Offers published so far, by device (deployment ids as sent).
  std::map<std::string, std::vector<std::string>> offers() const {
    std::map<std::string, std::vector<std::string>> out;
    for (const auto& m : pub.msgs) {
      const std::string tail = "/down/offer";
      if (m.topic.size() < tail.size() || m.topic.compare(m.topic.size() - tail.size(), tail.size(), tail))
        continue;
      const std::string dev = m.topic.substr(11, m.topic.size() - 11 - tail.size());
      proto::Offer o;
      EXPECT_FALSE(proto::decode_offer(m.payload.data(), m.payload.size(), o));
      out[dev].push_back(o.deployment.c_str());
    }
    return out;
  }
  json show(const std::string& id) {
    auto j = ctl->rollout_json(id, true);
    EXPECT_TRUE(j.ok()) << j.error();
    return j.ok() ? *j : json();
  }
  std::string dev_state(const json& r, const std::string& dev) {
    for (const auto& d : r["devices"])
      if (d["device"] == dev) return d["state"];
    return "none";
  }
  void result(const std::string& dev, std::uint32_t seq, const std::string& dep, bool ok,
              const std::string& version) {
    auto e = ev(proto::EventType::result, seq, dep);
    e.success = ok;
    e.version.assign(version.c_str());
    if (!ok) e.reason = proto::ReasonCode::self_test_failed;
    event(dev, e);
  }
  void hello_with_counter(const std::string& dev, const std::string& version, std::uint32_t counter,
                          bool retained = false) {
    proto::Hello h;
    h.device.assign(dev.c_str());
    h.hw.assign("m1");
    h.version.assign(version.c_str());
    h.slot.assign("b");
    h.slot_state = proto::SlotState::confirmed;
    h.counter = counter;
    char buf[2048];
    std::size_t len = 0;
    ASSERT_FALSE(proto::encode_hello(h, buf, sizeof buf, len));
    ctl->on_message(("ota/v1/dev/" + dev + "/up/presence").c_str(), buf, len, retained);
  }
  long long now_ms = kT0;
};

TEST_F(RolloutControllerTest, OffersWaveByWaveAndSurvivesARestartWithoutOfferingTwice) {
  auto img = add(bytes_of(5000), "2.0.0");
  for (int i = 0; i < 10; ++i) hello("d" + std::to_string(i), "1.0.0");
  auto r = ctl->create_rollout(
      json{{"image", "2.0.0"},
           {"target", {{"devices", {"d0", "d1", "d2", "d3", "d4", "d5", "d6", "d7", "d8", "d9"}}}},
           {"waves", json::array({{{"size", "20%"}}, {{"size", "100%"}}})},
           {"start", true}},
      "operator:test");
  ASSERT_TRUE(r.ok()) << r.error();
  const std::string id = (*r)["id"];
  json j = show(id);
  EXPECT_EQ(j["state"], "running");
  EXPECT_EQ(j["from_version"], "1.0.0");
  const std::string dep = j["deployment"];
  auto o = offers();
  ASSERT_EQ(o.size(), 2u);  // wave 1: 20% of 10
  for (const auto& kv : o) {
    EXPECT_EQ(kv.second, std::vector<std::string>{dep});
    EXPECT_EQ(dev_state(j, kv.first), "offered");
  }
  EXPECT_EQ(j["waves"][1]["counts"]["pending"], 8);

  // "Crash" and restart on the same database: same wave, nothing re-offered, not even when
  // the broker hands the restarted controller the devices' retained hellos. (The recorder
  // acknowledges at once; the acks are stored when the controller hears of them.)
  ctl->offer_acks_arrived();
  ctl.reset();
  start();
  for (const auto& kv : o) hello_with_counter(kv.first, "1.0.0", 0, /*retained=*/true);
  ctl->rollout_tick(now_ms + 1000);
  EXPECT_EQ(offers().size(), 2u);
  for (const auto& kv : offers()) EXPECT_EQ(kv.second.size(), 1u) << kv.first;
  EXPECT_EQ(show(id)["current_wave"], 0);
  // A device that really reconnects (a fresh hello) gets its offer again: it may have lost it.
  const std::string again = o.begin()->first;
  hello_with_counter(again, "1.0.0", 0);
  EXPECT_EQ(offers()[again].size(), 2u);
  EXPECT_EQ(offers()[again][1], dep);

  std::uint32_t seq = 100;
  for (const auto& kv : offers()) result(kv.first, seq++, dep, true, "2.0.0");
  advance(1000);
  j = show(id);
  EXPECT_EQ(j["current_wave"], 1);
  EXPECT_EQ(offers().size(), 10u);
  for (const auto& kv : offers()) EXPECT_EQ(kv.second.size(), kv.first == again ? 2u : 1u) << kv.first;
  for (const auto& kv : offers())
    if (j["devices"].dump().find(kv.first) != std::string::npos && dev_state(j, kv.first) == "offered")
      result(kv.first, seq++, dep, true, "2.0.0");
  advance(1000);
  j = show(id);
  EXPECT_EQ(j["state"], "completed");
  EXPECT_EQ(j["counts"]["succeeded"], 10);
  EXPECT_EQ(j["percent"], 100);

  // The event log names the operator for the action and the controller for decisions.
  EventFilter f;
  f.rollout = id;
  f.limit = 1000;
  auto evs = ctl->events_json(f);
  ASSERT_TRUE(evs.ok());
  int offered = 0, created_by_op = 0, waves = 0;
  for (const auto& e : *evs) {
    offered += e["what"] == "offered";
    created_by_op += e["what"] == "rollout_created" && e["actor"] == "operator:test";
    waves += e["what"] == "wave_started";
  }
  EXPECT_EQ(offered, 10);
  EXPECT_EQ(created_by_op, 1);
  EXPECT_EQ(waves, 1);
}

TEST_F(RolloutControllerTest, OffersTheBrokerNeverAcknowledgedAreSentOnceAfterARestart) {
  add(bytes_of(5000), "2.0.0");
  for (const char* d : {"d0", "d1"}) hello(d, "1.0.0");
  struct Lossy : ota::service::testing::Recorder {
    bool publish_acked(const std::string& topic, const void* data, std::size_t len, int qos,
                       bool retain, std::function<void()>) override {
      return publish(topic, data, len, qos, retain);  // sent, but no PUBACK ever comes
    }
  } lossy;
  // The controller dies after committing the offers, before any PUBACK.
  {
    auto signer = Signer::from_pem(key_pem);
    ASSERT_TRUE(signer.ok());
    ControllerConfig cfg;
    cfg.db_path = dir.file("ota.db");
    cfg.store_dir = dir.file("images");
    cfg.clock = clock;
    auto c = Controller::create(cfg, std::move(*signer), &lossy);
    ASSERT_TRUE(c.ok());
    ctl.reset();
    auto r = (*c)->create_rollout(json{{"image", "2.0.0"}, {"target", {{"devices", {"d0", "d1"}}}},
                                       {"start", true}}, "");
    ASSERT_TRUE(r.ok()) << r.error();
  }
  EXPECT_TRUE(offers().empty());
  start();  // the recorder acknowledges what it is given
  ctl->rollout_tick(now_ms);
  auto o = offers();
  ASSERT_EQ(o.size(), 2u);
  for (const auto& kv : o) EXPECT_EQ(kv.second.size(), 1u);
  ctl->offer_acks_arrived();
  start();  // acknowledged now: a second restart sends nothing
  ctl->rollout_tick(now_ms + 1000);
  for (const auto& kv : offers()) EXPECT_EQ(kv.second.size(), 1u) << kv.first;
}

TEST_F(RolloutControllerTest, RetryUsesANewOfferIdAndIgnoresTheOldAttempt) {
  add(bytes_of(5000), "2.0.0");
  hello("d0", "1.0.0");
  auto r = ctl->create_rollout(json{{"image", "2.0.0"}, {"target", {{"devices", {"d0"}}}},
                                    {"retries", 1}, {"retry_delay", 10}, {"start", true}},
                               "");
  ASSERT_TRUE(r.ok()) << r.error();
  const std::string id = (*r)["id"], dep = show(id)["deployment"];
  result("d0", 10, dep, false, "1.0.0");
  advance(1000);
  EXPECT_EQ(dev_state(show(id), "d0"), "pending");
  advance(10000);
  auto o = offers()["d0"];
  ASSERT_EQ(o, (std::vector<std::string>{dep, dep + ".2"}));
  // A late event of attempt 1 does not touch attempt 2; chunk requests for it are refused.
  auto img = ctl->images_json();
  const std::string image_id = (*img)[0]["id"];
  const auto before = pub.on("ota/v1/dev/d0/down/chunk").size();
  chunk_req("d0", dep, image_id, 0, 1);
  EXPECT_EQ(pub.on("ota/v1/dev/d0/down/chunk").size(), before);
  chunk_req("d0", dep + ".2", image_id, 0, 1);
  EXPECT_EQ(pub.on("ota/v1/dev/d0/down/chunk").size(), before + 1);
  result("d0", 11, dep + ".2", true, "2.0.0");
  advance(1000);
  EXPECT_EQ(show(id)["state"], "completed");
  EXPECT_EQ(show(id)["counts"]["succeeded"], 1);
}

TEST_F(RolloutControllerTest, DeferIsRetriedLaterNotCountedAsFailure) {
  add(bytes_of(5000), "2.0.0");
  hello("d0", "1.0.0");
  auto r = ctl->create_rollout(json{{"image", "2.0.0"}, {"target", {{"devices", {"d0"}}}},
                                    {"failure", {{"max_wave_rate", 0}}}, {"start", true}},
                               "");
  ASSERT_TRUE(r.ok()) << r.error();
  const std::string id = (*r)["id"], dep = show(id)["deployment"];
  auto d = ev(proto::EventType::defer, 5, dep);
  d.reason = proto::ReasonCode::low_battery;
  d.retry_after = 60;
  event("d0", d);
  json j = show(id);
  EXPECT_EQ(dev_state(j, "d0"), "deferred");
  EXPECT_EQ(j["counts"]["deferred"], 1);
  advance(59000);
  EXPECT_EQ(offers()["d0"].size(), 1u);
  advance(1000);
  EXPECT_EQ(offers()["d0"], (std::vector<std::string>{dep, dep}));  // same attempt, asked again
  result("d0", 6, dep, true, "2.0.0");
  advance(1000);
  EXPECT_EQ(show(id)["state"], "completed");
}

TEST_F(RolloutControllerTest, PlainDeploymentDeferralIsShownAndOfferedAgain) {
  add(bytes_of(5000), "2.0.0");
  hello("d0", "1.0.0");
  auto dep = ctl->deploy("2.0.0", "device", "d0");
  ASSERT_TRUE(dep.ok()) << dep.error();
  auto d = ev(proto::EventType::defer, 5, dep->id);
  d.reason = proto::ReasonCode::busy;
  d.retry_after = 30;
  event("d0", d);
  auto j = ctl->deployment_json(dep->id);
  ASSERT_TRUE(j.ok()) << j.error();
  EXPECT_EQ((*j)["counts"]["deferred"], 1);
  EXPECT_EQ((*j)["devices"][0]["state"], "deferred");
  EXPECT_EQ(offers()["d0"].size(), 1u);
  now_ms += 29000;
  ctl->tick();
  EXPECT_EQ(offers()["d0"].size(), 1u);
  now_ms += 1000;
  ctl->tick();
  EXPECT_EQ(offers()["d0"], (std::vector<std::string>{dep->id, dep->id}));
  EXPECT_EQ((*ctl->deployment_json(dep->id))["devices"][0]["state"], "offered");
}

TEST_F(RolloutControllerTest, TagTargetsAndRollbackRefusedBySecurityCounter) {
  ImageParams p;
  p.version = "1.0.0";
  p.hw = {"m1"};
  p.counter = 1;
  ASSERT_TRUE(ctl->add_image(bytes_of(3000, 3), p).ok());
  p.version = "2.0.0";
  p.counter = 2;
  ASSERT_TRUE(ctl->add_image(bytes_of(3000, 4), p).ok());
  hello("berlin-1", "1.0.0");
  hello("berlin-2", "1.0.0");
  hello("paris-1", "1.0.0");
  ASSERT_TRUE(ctl->set_device_tags("berlin-1", json{{"site", "berlin"}}, "operator:t").ok());
  ASSERT_TRUE(ctl->set_device_tags("berlin-2", json{{"site", "berlin"}}, "operator:t").ok());
  ASSERT_TRUE(ctl->set_device_tags("paris-1", json{{"site", "paris"}}, "operator:t").ok());
  EXPECT_FALSE(ctl->set_device_tags("nobody", json{{"site", "x"}}, "").ok());
  EXPECT_FALSE(ctl->set_device_tags("paris-1", json{{"version", "x"}}, "").ok());
  auto listed = ctl->devices_json({}, "site=berlin");
  ASSERT_TRUE(listed.ok());
  EXPECT_EQ(listed->size(), 2u);

  auto r = ctl->create_rollout(json{{"image", "2.0.0"}, {"target", {{"tags", "site=berlin"}}},
                                    {"start", true}}, "");
  ASSERT_TRUE(r.ok()) << r.error();
  const std::string id = (*r)["id"], dep = show(id)["deployment"];
  EXPECT_EQ(offers().count("paris-1"), 0u);
  ASSERT_EQ(offers().size(), 2u);
  std::uint32_t seq = 50;
  for (const char* d : {"berlin-1", "berlin-2"}) {
    result(d, seq++, dep, true, "2.0.0");
    hello_with_counter(d, "2.0.0", 2);  // the confirmed image raised its security counter
  }
  advance(1000);
  ASSERT_EQ(show(id)["state"], "completed");
  auto refused = ctl->rollout_action(id, "rollback", json::object(), "operator:t");
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.kind(), ErrKind::conflict);
  EXPECT_NE(refused.error().find("device berlin-1 has security counter 2 but image 1.0.0 has counter 1"),
            std::string::npos) << refused.error();
  // Devices that still accept counter 1 (e.g. a release that did not raise it): allowed.
  for (const char* d : {"berlin-1", "berlin-2"}) hello_with_counter(d, "2.0.0", 1);
  auto rb = ctl->rollout_action(id, "rollback", json::object(), "operator:t");
  ASSERT_TRUE(rb.ok()) << rb.error();
  EXPECT_EQ((*rb)["rollback_of"], id);
  EXPECT_EQ((*rb)["version"], "1.0.0");
  EXPECT_EQ((*rb)["devices_total"], 2);
}

TEST_F(RolloutControllerTest, BadRequestsNameWhatWasWrong) {
  add(bytes_of(5000), "2.0.0");
  hello("d0", "1.0.0");
  auto err = [&](const json& body) {
    auto r = ctl->create_rollout(body, "");
    EXPECT_FALSE(r.ok()) << body.dump();
    return r.ok() ? std::string() : r.error();
  };
  EXPECT_NE(err(json{{"image", "9.9.9"}, {"target", {{"group", "g"}}}}).find("unknown image 9.9.9"), std::string::npos);
  EXPECT_NE(err(json{{"image", "2.0.0"}}).find("target"), std::string::npos);
  EXPECT_NE(err(json{{"image", "2.0.0"}, {"target", {{"tags", "site="}}}}).find("tag expression"), std::string::npos);
  EXPECT_NE(err(json{{"image", "2.0.0"}, {"target", {{"group", "g"}}}, {"colour", 1}}).find("colour"), std::string::npos);
  EXPECT_NE(err(json{{"image", "2.0.0"}, {"target", {{"devices", {"d0", "ghost"}}}}, {"start", true}}).find("ghost"), std::string::npos);
  auto a = ctl->rollout_action("ro-nope", "pause", json::object(), "");
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.kind(), ErrKind::not_found);
  auto r = ctl->create_rollout(json{{"image", "2.0.0"}, {"target", {{"devices", {"d0"}}}}}, "");
  ASSERT_TRUE(r.ok());
  auto resume = ctl->rollout_action((*r)["id"], "resume", json::object(), "");
  ASSERT_FALSE(resume.ok());
  EXPECT_EQ(resume.kind(), ErrKind::conflict);
  EXPECT_NE(resume.error().find("draft"), std::string::npos) << resume.error();
}

}  // namespace
