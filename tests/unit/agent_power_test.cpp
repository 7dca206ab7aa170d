// Power cuts: a simulated device whose power supply (PowerRail) is cut at the k-th operation
// that changes persistent state (flash erase/program/sync/seal, boot-state updates, record
// saves), for every k of a full update, and at random points (several per update, during
// recovery too). After every cut the device must boot a complete image (old or new, byte for
// byte) and then finish the update, with exactly one final answer for the deployment.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "fakes.hpp"
#include "ota/agent/agent.hpp"
#include "ota/agent/linux/openssl_crypto.hpp"
#include "signer.hpp"

namespace ota::agent::test {
namespace {

using proto::DeviceState;
using proto::EventType;
using proto::ReasonCode;

constexpr const char* kDevice = "dev-pc";
constexpr std::uint32_t kChunk = 256;
constexpr std::uint32_t kChunks = 16;  // small image: 16 chunks of 256 B
const std::string kOld = "1.0.0";
const std::string kNew = "1.1.0";

// What every simulated device shares: the release key, the image and its signed offer.
struct Release {
  TestSigner signer;
  linux_port::OpensslCrypto crypto;
  std::vector<ProvisionedKey> keys;  // AgentConfig::keys
  std::vector<std::uint8_t> image = random_image(kChunk * kChunks - 100, 77);  // short last chunk
  std::vector<std::uint8_t> factory;
  proto::Offer offer;
  std::vector<std::uint8_t> offer_bytes;
  std::unique_ptr<ChunkServer> server;

  Release() {
    keys.push_back(signer.provisioned(proto::KeyRole::release));
    OfferOptions opt;
    opt.deployment = "dep-pc";
    opt.device = kDevice;
    opt.version = kNew;
    opt.chunk_size = kChunk;
    opt.hw = "sim-board";
    offer = make_offer(signer, image, opt);
    offer_bytes = encode(offer);
    server = std::make_unique<ChunkServer>(image, kChunk, offer.manifest.image.c_str());
    const std::string f = "factory image " + kOld + "\n";
    factory.assign(f.begin(), f.end());
  }
};

// One device on its own power rail, and the controller's side of the conversation.
class Device {
 public:
  explicit Device(Release& rel) : rel_(rel) {
    flash.attach(&rail);
    storage.rail = &rail;
    transport.rail = &rail;
    cfg.device_id = kDevice;
    cfg.hw_model = "sim-board";
    cfg.checkpoint_chunks = 4;
    cfg.window_chunks = 8;  // several requests per update
    cfg.heartbeat_interval_ms = 0;
    cfg.keys = rel_.keys.data();
    cfg.key_count = rel_.keys.size();
  }

  // Power-on: boot loader, then the agent; a reset requested during boot() (revert) powers
  // on again. Connects when it got through.
  void power_on() {
    for (int i = 0; i < 8; ++i) {
      agent.reset();
      transport.connected_ = false;
      if (flash.power_on() != PortStatus::ok) {
        if (!rail.dead()) problem("boot loader failed without a power cut");
        return;
      }
      check_bootable("after power-on");
      agent = std::make_unique<Agent>(cfg, flash, transport, clock, storage, key_storage,
                                      rel_.crypto);
      agent->boot();
      ++boots;
      if (rail.dead() || !agent->reset_requested()) break;
    }
    if (rail.dead()) return;
    transport.connected_ = true;
    agent->on_connected();
  }

  // The power came back after a cut: RAM and unsynced flash writes are gone, time passed,
  // and whatever was in flight on the network is lost.
  void restore_power(std::uint64_t next_cut = 0) {
    rail.restore();
    rail.cut_after(next_cut);
    agent.reset();
    flash.power_cut();
    clock.advance_ms(60'000);
    cursor_ = transport.published.size();
    power_on();
  }

  enum class End { done, dead, stuck };

  // Plays the controller until the deployment has its final answer and the device is idle,
  // or the power is cut.
  End drive() {
    for (int step = 0; step < 5000; ++step) {
      if (rail.dead()) return End::dead;
      if (!agent) return End::stuck;
      if (agent->reset_requested()) {  // a normal reset (after activation)
        power_on();
        continue;
      }
      if (controller_step()) continue;
      if (rail.dead()) return End::dead;
      if (!finals.empty() && agent->state() == DeviceState::idle &&
          !agent->has_unsent_outcome()) {
        return End::done;
      }
      clock.advance_ms(std::uint64_t{cfg.request_timeout_ms} << 5);  // time passes (past the longest back-off and its jitter)
      agent->tick();
    }
    return End::stuck;
  }

  // A complete, verified image in the running slot: the factory image or the new one.
  void check_bootable(const char* when) {
    ImageState s;
    flash.read_state(s);
    const std::string v = s.running_version.c_str();
    const auto& data = flash.slot_data(s.running_slot);
    if (flash.boot_state().writing == s.running_slot) {
      problem(std::string(when) + ": running slot is being written");
    }
    if (v == kOld) {
      if (data != rel_.factory) problem(std::string(when) + ": old slot damaged");
    } else if (v == kNew) {
      if (data != rel_.image) problem(std::string(when) + ": new slot incomplete or damaged");
    } else {
      problem(std::string(when) + ": boots unknown version '" + v + "'");
    }
  }

  std::string running_version() {
    ImageState s;
    flash.read_state(s);
    return s.running_version.c_str();
  }

  void problem(const std::string& what) { problems.push_back(what); }

  PowerRail rail;
  FakeFlash flash{64 * 1024};
  MemStorage storage;
  MemStorage key_storage;
  ScriptedTransport transport;
  FakeClock clock;
  AgentConfig cfg;
  std::unique_ptr<Agent> agent;
  std::map<std::uint32_t, proto::Event> finals;  // final events of the deployment, by seq
  std::vector<std::string> problems;
  int boots = 0;
  int offers = 0;

 private:
  void send_offer() {
    ++offers;
    char t[proto::kMaxTopicLen];
    proto::make_topic(proto::kDefaultPrefix, proto::TopicKind::offer, kDevice, t, sizeof t);
    agent->on_message(t, rel_.offer_bytes.data(), rel_.offer_bytes.size());
  }

  void deliver(const ChunkServer::Frame& f) {
    char t[proto::kMaxTopicLen];
    proto::make_topic(proto::kDefaultPrefix, proto::TopicKind::chunk, kDevice, t, sizeof t);
    agent->on_message(t, f.bytes.data(), f.bytes.size());
  }

  // The controller drops events whose seq it has seen: a seq must never name two events.
  void note_seq(const proto::Event& ev, const char* text, std::size_t len) {
    auto [it, fresh] = seen_seq_.emplace(ev.seq, std::string(text, len));
    if (!fresh && it->second != std::string(text, len)) {
      problem("seq " + std::to_string(ev.seq) + " reused: " + it->second + " and " +
              std::string(text, len));
    }
  }

  void note_final(const proto::Event& ev) {
    if (ev.deployment != rel_.offer.deployment) {
      problem("final event for another deployment");
      return;
    }
    auto it = finals.find(ev.seq);
    if (it == finals.end()) {
      finals[ev.seq] = ev;
      return;
    }
    const proto::Event& was = it->second;  // a re-send: must be the same event
    if (was.type != ev.type || was.success != ev.success || was.reason != ev.reason ||
        was.version != ev.version) {
      problem("two different final events with seq " + std::to_string(ev.seq));
    }
  }

  // Handles what the device published since the last call; true if anything was handled.
  bool controller_step() {
    bool acted = false;
    while (cursor_ < transport.published.size() && !rail.dead() && agent &&
           !agent->reset_requested()) {
      const Published p = transport.published[cursor_++];  // copy: delivering publishes more
      const char* text = reinterpret_cast<const char*>(p.payload.data());
      acted = true;
      if (p.kind == proto::TopicKind::presence) {
        proto::PresenceType type;
        // The controller re-offers an active deployment when the device says hello.
        if (!proto::decode_presence_type(text, p.payload.size(), type) &&
            type == proto::PresenceType::hello && finals.empty()) {
          send_offer();
        }
      } else if (p.kind == proto::TopicKind::event) {
        proto::Event ev;
        if (proto::decode_event(text, p.payload.size(), ev)) {
          problem("undecodable event");
          continue;
        }
        note_seq(ev, text, p.payload.size());
        if (ev.type == EventType::result || ev.type == EventType::decline) note_final(ev);
      } else if (p.kind == proto::TopicKind::chunk_request) {
        proto::ChunkRequest req;
        if (proto::decode_chunk_request(text, p.payload.size(), req)) {
          problem("undecodable chunk request");
          continue;
        }
        for (const auto& f : rel_.server->frames_for(req)) {
          if (rail.dead() || agent->reset_requested()) break;
          deliver(f);
        }
      }
    }
    return acted;
  }

  Release& rel_;
  std::size_t cursor_ = 0;
  std::map<std::uint32_t, std::string> seen_seq_;
};

struct Tally {
  int cuts = 0, recovered = 0, finished_new = 0, kept_old = 0, rolled_back_boot_limit = 0;
};

// After the run: one final answer, the image it claims, nothing pending.
void check_converged(Device& d, Tally& tally, const std::string& run, bool old_expected = false) {
  SCOPED_TRACE(run);
  for (const auto& p : d.problems) ADD_FAILURE() << p;
  ASSERT_EQ(d.finals.size(), 1u) << "final answers for the deployment (distinct seq)";
  const proto::Event& final_ev = d.finals.begin()->second;
  const std::string running = d.running_version();
  d.check_bootable("at the end");
  for (const auto& p : d.problems) ADD_FAILURE() << p;
  EXPECT_EQ(d.flash.boot_state().pending, 0) << "a trial image is still unsettled";
  EXPECT_EQ(d.flash.boot_state().writing, 0) << "a partial image is left in flash";
  EXPECT_EQ(d.agent->state(), DeviceState::idle);
  if (final_ev.type == EventType::result && final_ev.success) {
    EXPECT_EQ(running, kNew);
    EXPECT_EQ(final_ev.version, kNew.c_str());
    EXPECT_EQ(d.flash.boot_state().counter, 1u) << "confirmed image raises the counter";
  } else if (final_ev.type == EventType::decline) {
    // Only possible when the record (with its outcome) was lost after the new image was
    // confirmed: the re-offer finds the image installed.
    EXPECT_EQ(final_ev.reason, ReasonCode::already_installed);
    EXPECT_EQ(running, kNew);
  } else {
    EXPECT_EQ(running, kOld) << proto::reason_name(final_ev.reason);
    EXPECT_EQ(final_ev.version, kOld.c_str());
    EXPECT_EQ(d.flash.boot_state().counter, 0u) << "a rolled-back image raised the counter";
  }
  if (running == kNew) {
    ++tally.finished_new;
  } else {
    ++tally.kept_old;
    if (!old_expected) {
      std::printf("%s: kept %s, final %s %s%s%s\n", run.c_str(), running.c_str(),
                  proto::event_type_name(final_ev.type), proto::reason_name(final_ev.reason),
                  final_ev.detail.empty() ? "" : ": ", final_ev.detail.c_str());
    }
    if (final_ev.type == EventType::result && final_ev.reason == ReasonCode::rolled_back &&
        d.flash.boot_state().rolled_back) {
      ++tally.rolled_back_boot_limit;
    }
  }
}

class PowerCutTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { release_ = new Release(); }
  static void TearDownTestSuite() {
    delete release_;
    release_ = nullptr;
  }

  // Operations of one uninterrupted update, from the offer to the confirmed image (or, with a
  // failing self-test, back on the old one).
  static std::uint64_t ops_of_full_update(bool self_test_fails = false) {
    Device d(*release_);
    if (self_test_fails) d.cfg.self_test = &failing_self_test;
    d.power_on();
    const std::uint64_t before = d.rail.ops();
    EXPECT_EQ(d.drive(), Device::End::done);
    EXPECT_EQ(d.running_version(), self_test_fails ? kOld : kNew);
    EXPECT_TRUE(d.problems.empty());
    return d.rail.ops() - before;
  }

  static bool failing_self_test(void*) { return false; }

  static Release* release_;
};
Release* PowerCutTest::release_ = nullptr;

TEST_F(PowerCutTest, CutAtEveryOperationOfAFullUpdateRecovers) {
  const std::uint64_t total = ops_of_full_update();
  ASSERT_GT(total, kChunks) << "every chunk write is an operation";
  Tally tally;
  std::map<std::string, int> by_kind;
  for (std::uint64_t k = 1; k <= total; ++k) {
    std::string run = "cut at operation " + std::to_string(k) + " of " + std::to_string(total);
    Device d(*release_);
    d.power_on();
    d.rail.cut_after(k);
    Device::End end = d.drive();
    ASSERT_EQ(end, Device::End::dead) << run << ": the cut never came";
    run += std::string(" (") + d.rail.cut_what() + ")";
    ++by_kind[d.rail.cut_what()];
    ++tally.cuts;
    d.restore_power();
    end = d.drive();
    ASSERT_EQ(end, Device::End::done) << run << ": did not converge";
    ++tally.recovered;
    check_converged(d, tally, run);
    if (HasFatalFailure()) return;
  }
  std::string kinds;
  for (const auto& [kind, n] : by_kind) kinds += (kinds.empty() ? "" : ", ") + kind + " " + std::to_string(n);
  std::printf("power cut at %d points (%s): %d recovered, %d finished new, %d kept old\n",
              tally.cuts, kinds.c_str(), tally.recovered, tally.finished_new, tally.kept_old);
  RecordProperty("cut_points", tally.cuts);
  RecordProperty("finished_new", tally.finished_new);
  RecordProperty("kept_old", tally.kept_old);
  EXPECT_EQ(tally.recovered, static_cast<int>(total));
  // A power cut is never a reason to give up the update.
  EXPECT_EQ(tally.finished_new, tally.recovered);
}

// The same for an update whose new image fails its self-test: the revert path (reject, the
// boot loader's return to the old slot, the failure report) is cut at every operation too.
// Every run ends on the old image with one failure report and the counter not raised.
TEST_F(PowerCutTest, CutAtEveryOperationOfARolledBackUpdateKeepsTheOldImage) {
  const std::uint64_t total = ops_of_full_update(true);
  Tally tally;
  std::map<std::string, int> reasons;
  for (std::uint64_t k = 1; k <= total; ++k) {
    std::string run = "cut at operation " + std::to_string(k) + " of " + std::to_string(total);
    Device d(*release_);
    d.cfg.self_test = &failing_self_test;
    d.power_on();
    d.rail.cut_after(k);
    ASSERT_EQ(d.drive(), Device::End::dead) << run << ": the cut never came";
    run += std::string(" (") + d.rail.cut_what() + ")";
    ++tally.cuts;
    d.restore_power();
    ASSERT_EQ(d.drive(), Device::End::done) << run << ": did not converge";
    ++tally.recovered;
    check_converged(d, tally, run, true);
    if (HasFatalFailure()) return;
    ++reasons[proto::reason_name(d.finals.begin()->second.reason)];
  }
  std::string why;
  for (const auto& [reason, n] : reasons) why += (why.empty() ? "" : ", ") + reason + " " + std::to_string(n);
  std::printf("power cut at %d points of a rolled-back update: %d recovered, %d kept old (%s)\n",
              tally.cuts, tally.recovered, tally.kept_old, why.c_str());
  EXPECT_EQ(tally.kept_old, static_cast<int>(total));
}

TEST_F(PowerCutTest, ThousandRandomRunsWithSeveralCutsIncludingDuringRecovery) {
  const std::uint64_t total = ops_of_full_update();
  Tally tally;
  int runs = 0, cuts_in_recovery = 0, failing_runs = 0, failing_kept_old = 0;
  int healthy_boot_limit = 0;
  for (std::uint32_t seed = 1; seed <= 1000; ++seed) {
    const std::string run = "seed " + std::to_string(seed);
    std::mt19937 rng(seed);
    const int planned = 2 + static_cast<int>(rng() % 4);  // 2..5 cuts
    // Every fifth run's new image fails its self-test: cuts hit the rollback path too.
    const bool failing = seed % 5 == 0;
    Device d(*release_);
    if (failing) d.cfg.self_test = &failing_self_test;
    d.power_on();
    d.rail.cut_after(1 + rng() % total);
    Device::End end = d.drive();
    for (int c = 0; c < planned && end == Device::End::dead; ++c) {
      ++tally.cuts;
      // Half of the next cuts land early in the recovery (boot loader, boot(), resume).
      const bool early = rng() % 2 == 0;
      const std::uint64_t next =
          c + 1 == planned ? 0 : 1 + (early ? rng() % 6 : rng() % total);
      const std::uint64_t ops_at_restore = d.rail.ops();
      d.restore_power(next);
      end = d.rail.dead() ? Device::End::dead : d.drive();
      if (end == Device::End::dead && d.rail.ops() - ops_at_restore <= 6) ++cuts_in_recovery;
    }
    if (end == Device::End::dead) {  // the last planned cut: recover without another
      ++tally.cuts;
      d.restore_power();
      end = d.drive();
    }
    ASSERT_EQ(end, Device::End::done) << run << ": did not converge";
    ++tally.recovered;
    ++runs;
    const int kept_before = tally.kept_old;
    check_converged(d, tally, run, failing);
    if (HasFatalFailure()) return;
    if (failing) {
      ++failing_runs;
      failing_kept_old += tally.kept_old - kept_before;
      EXPECT_EQ(tally.kept_old - kept_before, 1) << run << ": a failing image was kept";
    } else if (tally.kept_old != kept_before) {
      const proto::Event& f = d.finals.begin()->second;
      if (f.reason == ReasonCode::rolled_back && d.flash.boot_state().rolled_back) {
        ++healthy_boot_limit;
      }
    }
  }
  std::printf(
      "random power cuts: %d runs, %d cuts (%d within the first operations of a recovery): "
      "%d recovered, %d finished new, %d kept old (%d of them with a failing new image, %d "
      "after the trial boots ran out)\n",
      runs, tally.cuts, cuts_in_recovery, tally.recovered, tally.finished_new, tally.kept_old,
      failing_kept_old, tally.kept_old - failing_kept_old);
  RecordProperty("runs", runs);
  RecordProperty("cuts", tally.cuts);
  RecordProperty("finished_new", tally.finished_new);
  EXPECT_EQ(tally.recovered, 1000);
  EXPECT_GT(cuts_in_recovery, 100);
  // Cuts during max_trial_boots consecutive trial boots look like a crash loop to the boot
  // loader: those runs go back to the old image and report rolled_back (checked above).
  EXPECT_EQ(tally.finished_new + tally.kept_old, tally.recovered);
  EXPECT_EQ(failing_kept_old, failing_runs);
  EXPECT_EQ(tally.kept_old - failing_kept_old, healthy_boot_limit)
      << "an image that passes its self-test may only be kept out by a crash loop";
  EXPECT_LT(healthy_boot_limit, 50);
}

// Every operation counted above really is one: a cut record save leaves a torn record that
// the agent discards, a cut flash write leaves half a chunk.
TEST_F(PowerCutTest, TornSaveAndTornWriteAreWhatTheCutLeaves) {
  const std::uint64_t total = ops_of_full_update();
  // Some cut record saves leave a record whose CRC fails (torn): it is discarded, and the
  // update still ends on the new image. (A torn save whose two halves happen to match the
  // new record is simply the new record.)
  int torn_records = 0;
  for (std::uint64_t k = 1; k <= total; ++k) {
    Device d(*release_);
    d.power_on();
    d.rail.cut_after(k);
    ASSERT_EQ(d.drive(), Device::End::dead);
    if (std::string(d.rail.cut_what()) != "save") continue;
    d.restore_power();
    if (d.agent->stats().discarded_records == 0) continue;
    ++torn_records;
    EXPECT_EQ(d.drive(), Device::End::done) << "cut at " << k;
    EXPECT_EQ(d.running_version(), kNew) << "cut at " << k;
  }
  EXPECT_GE(torn_records, 1);

  // A cut at the first chunk write: half the chunk is in flash for good, the record does not
  // claim it, and the update completes with the right bytes.
  bool torn_write_seen = false;
  for (std::uint64_t k = 1; k <= 20 && !torn_write_seen; ++k) {
    Device w(*release_);
    w.power_on();
    w.rail.cut_after(k);
    ASSERT_EQ(w.drive(), Device::End::dead);
    const int writes = w.flash.counts().write;
    w.flash.power_cut();
    const auto& b = w.flash.slot_data('b');
    if (writes != 1 || b.size() != kChunk / 2) continue;
    torn_write_seen = true;
    EXPECT_TRUE(std::equal(b.begin(), b.end(), release_->image.begin()));
    w.restore_power();
    EXPECT_EQ(w.drive(), Device::End::done);
    EXPECT_EQ(w.running_version(), kNew);
    EXPECT_EQ(w.flash.slot_data('b'), release_->image);
    EXPECT_TRUE(w.problems.empty());
  }
  EXPECT_TRUE(torn_write_seen) << "no cut landed on the first chunk write";
}

}  // namespace
}  // namespace ota::agent::test
