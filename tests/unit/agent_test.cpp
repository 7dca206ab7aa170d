// Agent core behaviour, end to end through its ports: fakes stand where hardware would be
// (flash, network, clock, record store); crypto is the real OpenSSL port.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <set>
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

constexpr const char* kDevice = "dev-1";
constexpr const char* kGroups[] = {"fleet"};
constexpr std::size_t kImageSize = 100 * 1024;

bool failing_self_test(void*) { return false; }

// A saved record ends after the bitmap bytes in use; the rest of the struct is zero.
PersistedState decode_record(const std::vector<std::uint8_t>& rec) {
  PersistedState s;
  std::memset(static_cast<void*>(&s), 0, sizeof s);
  EXPECT_LE(rec.size(), sizeof s);
  EXPECT_GE(rec.size(), sizeof s - sizeof s.received);
  if (rec.size() <= sizeof s) std::memcpy(static_cast<void*>(&s), rec.data(), rec.size());
  return s;
}

bool bit(const PersistedState& s, std::uint32_t i) { return (s.received[i / 8] >> (i % 8)) & 1u; }

class AgentTest : public ::testing::Test {
 protected:
  using Frames = std::vector<ChunkServer::Frame>;
  using Shape = std::function<void(Frames&)>;

  AgentTest() : image_(random_image(kImageSize, 1234)) {
    keys_.push_back(signer_.provisioned(proto::KeyRole::release));
    cfg_.keys = keys_.data();
    cfg_.key_count = keys_.size();
    cfg_.device_id = kDevice;
    cfg_.hw_model = "sim-board";
    cfg_.groups = kGroups;
    cfg_.group_count = 1;
  }

  // Power-on of a factory-fresh device, then connect.
  void start() {
    ASSERT_EQ(flash_.power_on(), PortStatus::ok);
    boot_and_connect();
  }

  // A new Agent over the same ports, as after a power cycle; the transport is down during
  // boot() (as in the device runner) and comes up afterwards. When boot() asks for a reset
  // (revert after a failed self-test) the device powers on again before connecting.
  void boot_and_connect(bool connect = true) {
    for (int i = 0; i < 4; ++i) {
      agent_.reset();
      transport_.connected_ = false;
      agent_ = std::make_unique<Agent>(cfg_, port_ != nullptr ? *port_ : flash_, transport_,
                                       clock_, storage_, key_storage_,
                                       crypto_);
      agent_->boot();
      if (!agent_->reset_requested()) break;
      ASSERT_EQ(flash_.power_on(), PortStatus::ok);
    }
    ASSERT_FALSE(agent_->reset_requested());
    if (!connect) return;
    transport_.connected_ = true;
    agent_->on_connected();
  }

  void reboot(bool connect = true) {
    agent_.reset();
    ASSERT_EQ(flash_.power_on(), PortStatus::ok);
    boot_and_connect(connect);
  }

  std::string topic(proto::TopicKind kind, const char* id = kDevice) const {
    char t[proto::kMaxTopicLen];
    const std::size_t n = proto::make_topic(proto::kDefaultPrefix, kind, id, t, sizeof t);
    EXPECT_GT(n, 0u);
    return std::string(t, n);
  }

  void send_offer(const proto::Offer& offer, proto::TopicKind kind = proto::TopicKind::offer,
                  const char* id = kDevice) {
    const auto payload = encode(offer);
    agent_->on_message(topic(kind, id).c_str(), payload.data(), payload.size());
  }

  void send_cancel(const char* deployment) {
    proto::Cancel c;
    c.deployment.assign(deployment);
    char buf[512];
    std::size_t len = 0;
    ASSERT_FALSE(proto::encode_cancel(c, buf, sizeof buf, len));
    agent_->on_message(topic(proto::TopicKind::cancel).c_str(),
                       reinterpret_cast<const std::uint8_t*>(buf), len);
  }

  void deliver(const ChunkServer::Frame& f) {
    agent_->on_message(topic(proto::TopicKind::chunk).c_str(), f.bytes.data(), f.bytes.size());
    ++delivered_;
  }

  // Chunk requests published since the last call.
  std::vector<proto::ChunkRequest> take_requests() {
    auto out = transport_.chunk_requests(req_cursor_);
    req_cursor_ = transport_.published.size();
    return out;
  }

  // Plays the controller: answers every chunk request (new ones included) until none is
  // left or `max_frames` frames were delivered (what is left stays queued for the next
  // call). `shape` reorders/duplicates/drops the frames of each request.
  void serve(const ChunkServer& server, const Shape& shape = {},
             std::size_t max_frames = static_cast<std::size_t>(-1)) {
    std::size_t sent = 0;
    for (;;) {
      for (auto& r : take_requests()) {
        EXPECT_EQ(r.deployment, deployment_.c_str());
        EXPECT_LE(ChunkServer::wanted(r).size(), cfg_.window_chunks);
        queue_.push_back(r);
      }
      if (pending_.empty()) {
        if (queue_.empty()) return;
        const proto::ChunkRequest req = queue_.front();
        queue_.pop_front();
        Frames frames = server.frames_for(req);
        if (shape) shape(frames);
        pending_.insert(pending_.end(), frames.begin(), frames.end());
        continue;
      }
      if (sent == max_frames) return;
      const ChunkServer::Frame f = pending_.front();
      pending_.pop_front();
      deliver(f);
      ++sent;
    }
  }

  // The controller loses track of what was asked so far (the device restarted).
  void forget_requests() {
    req_cursor_ = transport_.published.size();
    queue_.clear();
    pending_.clear();
  }

  proto::Offer offer_for(const std::vector<std::uint8_t>& image, OfferOptions opt = {}) {
    deployment_ = opt.deployment;
    return make_offer(signer_, image, opt);
  }

  // Offer + full transfer of the test image.
  proto::Offer run_update(OfferOptions opt = {}) {
    proto::Offer offer = offer_for(image_, opt);
    send_offer(offer);
    ChunkServer server(image_, offer.manifest.chunk_size, offer.manifest.image.c_str());
    serve(server);
    return offer;
  }

  std::vector<proto::Event> events_of(EventType type, std::size_t from = 0) const {
    std::vector<proto::Event> out;
    for (auto& e : transport_.events(from)) {
      if (e.type == type) out.push_back(e);
    }
    return out;
  }

  std::vector<DeviceState> statuses(std::size_t from = 0) const {
    std::vector<DeviceState> out;
    for (auto& e : events_of(EventType::status, from)) out.push_back(e.state);
    return out;
  }

  void expect_seq_increasing() const {
    std::uint32_t last = 0;
    for (const auto& e : transport_.events()) {
      EXPECT_GT(e.seq, last) << "event " << proto::event_type_name(e.type);
      last = e.seq;
    }
  }

  std::string running_version() {
    ImageState s;
    flash_.read_state(s);
    return s.running_version.c_str();
  }

  void expect_single_result(bool success, ReasonCode reason, const char* version,
                            std::size_t from = 0) {
    const auto results = events_of(EventType::result, from);
    ASSERT_EQ(results.size(), 1u);
    EXPECT_EQ(results[0].success, success);
    EXPECT_EQ(results[0].reason, reason) << proto::reason_name(results[0].reason);
    EXPECT_EQ(results[0].version, version);
    EXPECT_EQ(results[0].deployment, deployment_.c_str());
  }

  // The offer was declined with `reason` and nothing on the device changed.
  void expect_declined(const proto::Offer& offer, ReasonCode reason) {
    const auto boot_before = flash_.boot_state();
    const std::size_t from = transport_.published.size();
    send_offer(offer);
    const auto evs = transport_.events(from);
    ASSERT_EQ(evs.size(), 1u);
    EXPECT_EQ(evs[0].type, EventType::decline);
    EXPECT_EQ(evs[0].reason, reason) << proto::reason_name(evs[0].reason);
    EXPECT_EQ(evs[0].deployment, offer.deployment);
    EXPECT_EQ(transport_.count(proto::TopicKind::chunk_request, from), 0u);
    EXPECT_EQ(agent_->state(), DeviceState::idle);
    EXPECT_EQ(flash_.counts().begin, 0);
    EXPECT_EQ(flash_.counts().write, 0);
    EXPECT_EQ(flash_.counts().activate, 0);
    EXPECT_EQ(flash_.boot_state().active, boot_before.active);
    EXPECT_EQ(flash_.boot_state().pending, boot_before.pending);
    EXPECT_EQ(flash_.boot_state().writing, boot_before.writing);
    EXPECT_EQ(flash_.boot_state().counter, boot_before.counter);
    EXPECT_EQ(running_version(), "1.0.0");
    // The same offer again (retained, or re-sent because the decline was lost) gets the
    // same answer with the same sequence number, so the controller counts it once.
    const std::size_t again = transport_.published.size();
    send_offer(offer);
    const auto repeated = events_of(EventType::decline, again);
    ASSERT_EQ(repeated.size(), 1u);
    EXPECT_EQ(repeated[0].seq, evs[0].seq);
    EXPECT_EQ(repeated[0].reason, reason);
    EXPECT_EQ(flash_.counts().begin, 0);
  }

  TestSigner signer_;
  linux_port::OpensslCrypto crypto_;
  std::vector<ProvisionedKey> keys_;  // AgentConfig::keys
  FakeFlash flash_;
  FlashPort* port_ = nullptr;  // set before start(): the agent's flash instead of flash_
  ScriptedTransport transport_;
  FakeClock clock_;
  MemStorage storage_;
  MemStorage key_storage_;
  AgentConfig cfg_;
  std::unique_ptr<Agent> agent_;
  std::vector<std::uint8_t> image_;
  std::string deployment_ = "dep-1";
  std::size_t req_cursor_ = 0;
  std::size_t delivered_ = 0;
  std::deque<proto::ChunkRequest> queue_;
  std::deque<ChunkServer::Frame> pending_;
};

// ------------------------------------------------------------------------- happy path

TEST_F(AgentTest, HappyPathInstallsConfirmsAndReports) {
  start();
  // Subscribed to its own downlink and its group's offers; hello shows the factory image.
  ASSERT_GE(transport_.subscriptions.size(), 2u);
  EXPECT_EQ(transport_.subscriptions[0].first, "ota/v1/dev/dev-1/down/#");
  EXPECT_EQ(transport_.subscriptions[1].first, topic(proto::TopicKind::group_offer, "fleet"));
  auto hellos = transport_.hellos();
  ASSERT_EQ(hellos.size(), 1u);
  EXPECT_EQ(hellos[0].version, "1.0.0");
  EXPECT_FALSE(hellos[0].resume.present);
  EXPECT_TRUE(transport_.published[0].retain);

  const proto::Offer offer = offer_for(image_);
  send_offer(offer);
  auto evs = transport_.events();
  ASSERT_GE(evs.size(), 2u);
  EXPECT_EQ(evs[0].type, EventType::accept);
  EXPECT_EQ(evs[0].deployment, "dep-1");
  EXPECT_EQ(evs[1].type, EventType::status);
  EXPECT_EQ(evs[1].state, DeviceState::downloading);
  EXPECT_EQ(agent_->state(), DeviceState::downloading);
  EXPECT_EQ(flash_.counts().begin, 1);
  auto reqs = transport_.chunk_requests();
  ASSERT_EQ(reqs.size(), 1u);
  EXPECT_EQ(reqs[0].first, 0u);
  EXPECT_LE(reqs[0].count, cfg_.window_chunks);
  EXPECT_EQ(reqs[0].count, cfg_.window_chunks);  // 100 chunks: the first window is full
  EXPECT_EQ(reqs[0].image, offer.manifest.image);

  ChunkServer server(image_, offer.manifest.chunk_size, offer.manifest.image.c_str());
  serve(server);
  EXPECT_EQ(delivered_, 100u);
  EXPECT_EQ(agent_->stats().chunks_received, 100u);
  EXPECT_EQ(agent_->stats().duplicate_chunks, 0u);
  EXPECT_EQ(agent_->stats().bytes_received, kImageSize);
  EXPECT_EQ(statuses(), (std::vector<DeviceState>{DeviceState::downloading, DeviceState::verifying,
                                                  DeviceState::installing,
                                                  DeviceState::rebooting}));
  EXPECT_FALSE(events_of(EventType::progress).empty());
  std::uint64_t last_received = 0;
  for (auto& p : events_of(EventType::progress)) {
    EXPECT_GT(p.received, last_received);
    EXPECT_EQ(p.total, kImageSize);
    last_received = p.received;
  }
  EXPECT_EQ(flash_.counts().finish, 1);
  EXPECT_EQ(flash_.counts().activate, 1);
  EXPECT_EQ(flash_.counts().abort, 0);
  EXPECT_TRUE(agent_->reset_requested());
  EXPECT_TRUE(flash_.reset_requested());
  EXPECT_EQ(agent_->state(), DeviceState::rebooting);
  EXPECT_TRUE(events_of(EventType::result).empty());  // only after the new image proved itself

  // Power cycle: the new image boots on trial, passes its self-test and is confirmed.
  const std::size_t before_reboot = transport_.published.size();
  reboot();
  EXPECT_EQ(flash_.running_slot(), 'b');
  EXPECT_EQ(flash_.counts().confirm, 1);
  EXPECT_EQ(agent_->state(), DeviceState::idle);
  expect_single_result(true, ReasonCode::ok, "1.1.0", before_reboot);
  hellos = transport_.hellos(before_reboot);
  ASSERT_FALSE(hellos.empty());
  EXPECT_EQ(hellos.back().version, "1.1.0");
  EXPECT_EQ(hellos.back().slot_state, proto::SlotState::confirmed);
  EXPECT_EQ(hellos.back().slot.c_str(), std::string("b"));
  EXPECT_EQ(hellos.back().counter, 1u);
  EXPECT_EQ(flash_.boot_state().counter, 1u);
  EXPECT_EQ(flash_.slot_data('b'), image_);
  EXPECT_EQ(flash_.slot_data('b').size(), kImageSize);
  expect_seq_increasing();

  // Another power cycle: stays on 1.1.0, no new result.
  const std::size_t before_second = transport_.published.size();
  reboot();
  EXPECT_EQ(running_version(), "1.1.0");
  EXPECT_TRUE(events_of(EventType::result, before_second).empty());
}

// ------------------------------------------------------------------- transfer quality

// Progress: an event per 5 % step while chunks come slowly, at most one per
// progress_interval_ms while they come fast (a wave's devices would otherwise send twenty
// each within seconds), and the one at 100 % whatever the interval.
TEST_F(AgentTest, ProgressEventsAreSpacedByTheIntervalAndTheLastOneAlwaysGoes) {
  start();
  const proto::Offer offer = offer_for(image_);
  ASSERT_EQ(offer.manifest.chunk_count(), 100u);  // one chunk is one percent
  send_offer(offer);
  ChunkServer server(image_, offer.manifest.chunk_size, offer.manifest.image.c_str());
  auto progress_received = [&] {
    std::vector<std::uint64_t> out;
    for (const auto& p : events_of(EventType::progress)) out.push_back(p.received / 1024);
    return out;
  };
  // Fast: half the image while the clock stands still: only the first step (5 %).
  serve(server, {}, 50);
  EXPECT_EQ(progress_received(), (std::vector<std::uint64_t>{5}));
  // The interval passed: the next chunk reports where the download is (51 %).
  clock_.advance_ms(cfg_.progress_interval_ms);
  serve(server, {}, 1);
  EXPECT_EQ(progress_received(), (std::vector<std::uint64_t>{5, 51}));
  // Slow (the interval between chunks): every step.
  for (int i = 0; i < 44; ++i) {
    clock_.advance_ms(cfg_.progress_interval_ms);
    serve(server, {}, 1);
  }
  EXPECT_EQ(progress_received(),
            (std::vector<std::uint64_t>{5, 51, 55, 60, 65, 70, 75, 80, 85, 90, 95}));
  // Fast again to the end: the 100 % one goes at once.
  serve(server);
  EXPECT_EQ(progress_received(),
            (std::vector<std::uint64_t>{5, 51, 55, 60, 65, 70, 75, 80, 85, 90, 95, 100}));
  EXPECT_EQ(agent_->stats().chunks_received, 100u);
}

TEST_F(AgentTest, OutOfOrderChunksComplete) {
  start();
  flash_.record_writes(true);
  const proto::Offer offer = offer_for(image_);
  send_offer(offer);
  ChunkServer server(image_, offer.manifest.chunk_size, offer.manifest.image.c_str());
  serve(server, [](Frames& f) { std::reverse(f.begin(), f.end()); });
  // Really out of order: the first write was not at offset 0.
  ASSERT_FALSE(flash_.write_offsets().empty());
  EXPECT_NE(flash_.write_offsets().front(), 0u);
  EXPECT_GT(flash_.counts().read, 0);  // hashed back from flash
  EXPECT_TRUE(agent_->reset_requested());
  reboot();
  expect_single_result(true, ReasonCode::ok, "1.1.0");
  EXPECT_EQ(flash_.slot_data('b'), image_);
}

TEST_F(AgentTest, DuplicateChunksAreCountedAndHarmless) {
  start();
  flash_.record_writes(true);
  const proto::Offer offer = offer_for(image_);
  send_offer(offer);
  ChunkServer server(image_, offer.manifest.chunk_size, offer.manifest.image.c_str());
  serve(server, [](Frames& f) {
    Frames twice;
    for (auto& x : f) {
      twice.push_back(x);
      twice.push_back(x);
    }
    f = twice;
  });
  EXPECT_EQ(agent_->stats().chunks_received, 200u - 1u);  // the last duplicate came too late
  EXPECT_EQ(agent_->stats().duplicate_chunks, 99u);
  EXPECT_EQ(flash_.counts().write, 100);  // duplicates are not written again
  EXPECT_TRUE(agent_->reset_requested());
  reboot();
  expect_single_result(true, ReasonCode::ok, "1.1.0");
  EXPECT_EQ(flash_.slot_data('b'), image_);
}

TEST_F(AgentTest, LostChunksAreReRequestedAfterTimeout) {
  start();
  const proto::Offer offer = offer_for(image_);
  send_offer(offer);
  ChunkServer server(image_, offer.manifest.chunk_size, offer.manifest.image.c_str());
  std::set<std::uint32_t> dropped;
  serve(server, [&](Frames& f) {
    Frames kept;
    for (auto& x : f) {
      if (x.index % 10 == 3) {
        dropped.insert(x.index);
      } else {
        kept.push_back(x);
      }
    }
    f = kept;
  });
  ASSERT_EQ(dropped.size(), 10u);
  EXPECT_EQ(agent_->state(), DeviceState::downloading);
  EXPECT_EQ(agent_->persisted().received_chunks, 90u);

  // Before the timeout nothing happens.
  clock_.advance_ms(cfg_.request_timeout_ms - 1);
  agent_->tick();
  EXPECT_TRUE(take_requests().empty());
  clock_.advance_ms(1);
  agent_->tick();
  EXPECT_EQ(agent_->stats().timeouts, 1u);
  const auto again = transport_.chunk_requests(req_cursor_);
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].first, 3u);  // the first missing chunk
  EXPECT_TRUE(again[0].has_bitmap);
  EXPECT_EQ(again[0].first + again[0].count, 100u);  // spans to the end, bitmap picks
  const auto wanted = ChunkServer::wanted(again[0]);
  EXPECT_EQ(std::set<std::uint32_t>(wanted.begin(), wanted.end()), dropped);

  serve(server);
  EXPECT_EQ(agent_->stats().duplicate_chunks, 0u);
  EXPECT_TRUE(agent_->reset_requested());
  reboot();
  expect_single_result(true, ReasonCode::ok, "1.1.0");
  EXPECT_EQ(flash_.slot_data('b'), image_);
}

TEST_F(AgentTest, ResumesAfterRestartWithoutRefetchingPersistedChunks) {
  cfg_.checkpoint_chunks = 10;  // progress is saved at checkpoints only (not per event)
  start();
  const proto::Offer offer = offer_for(image_);
  send_offer(offer);
  ChunkServer server(image_, offer.manifest.chunk_size, offer.manifest.image.c_str());
  serve(server, {}, 60);
  ASSERT_EQ(delivered_, 60u);
  EXPECT_EQ(agent_->state(), DeviceState::downloading);

  // What survives the restart is the last persisted record.
  const PersistedState saved = decode_record(storage_.record);
  ASSERT_EQ(saved.state, DeviceState::downloading);
  ASSERT_GT(saved.received_chunks, 0u);
  ASSERT_LE(saved.received_chunks, 60u);

  const std::size_t before = transport_.published.size();
  forget_requests();  // requests of the old run are gone with it
  reboot();              // no shutdown: the agent object is simply dropped
  EXPECT_EQ(agent_->state(), DeviceState::downloading);
  const auto hellos = transport_.hellos(before);
  ASSERT_EQ(hellos.size(), 1u);
  ASSERT_TRUE(hellos[0].resume.present);
  EXPECT_EQ(hellos[0].resume.deployment, "dep-1");
  EXPECT_EQ(hellos[0].resume.image, offer.manifest.image);
  EXPECT_EQ(hellos[0].resume.received, std::uint64_t{saved.received_chunks} * 1024u);
  EXPECT_GT(hellos[0].resume.received, 0u);
  EXPECT_EQ(flash_.counts().begin, 2);  // begin(resume=true) kept the partial image
  EXPECT_EQ(flash_.counts().abort, 0);

  const auto reqs = transport_.chunk_requests(before);
  ASSERT_FALSE(reqs.empty());
  for (const auto& r : reqs) {
    for (std::uint32_t i : ChunkServer::wanted(r)) {
      EXPECT_FALSE(bit(saved, i)) << "chunk " << i << " was persisted but requested again";
    }
  }
  serve(server);
  EXPECT_LT(delivered_, 130u);  // < 1.3 x chunk count across both runs
  EXPECT_TRUE(agent_->reset_requested());
  reboot();
  expect_single_result(true, ReasonCode::ok, "1.1.0");
  EXPECT_EQ(flash_.slot_data('b'), image_);
  expect_seq_increasing();
}

// A power cut loses what the flash had not made durable; progress persisted by the agent
// must never claim such chunks (FlashPort::sync() comes before progress is persisted).
TEST_F(AgentTest, PowerCutMidDownloadNeverTrustsUnsyncedChunks) {
  start();
  const proto::Offer offer = offer_for(image_);
  send_offer(offer);
  ChunkServer server(image_, offer.manifest.chunk_size, offer.manifest.image.c_str());
  serve(server, {}, 60);
  forget_requests();
  agent_.reset();
  flash_.power_cut();
  reboot();
  EXPECT_EQ(agent_->state(), DeviceState::downloading);
  serve(server);
  ASSERT_TRUE(agent_->reset_requested()) << proto::reason_name(agent_->last_reason());
  reboot();
  expect_single_result(true, ReasonCode::ok, "1.1.0");
  EXPECT_EQ(flash_.slot_data('b'), image_);
}

// ------------------------------------------------------------------------- rejections

TEST_F(AgentTest, RejectsBadSignature) {
  start();
  proto::Offer offer = offer_for(image_);
  offer.manifest.sig.data[10] = offer.manifest.sig.data[10] == '0' ? '1' : '0';
  expect_declined(offer, ReasonCode::bad_signature);
}

TEST_F(AgentTest, RejectsSignedFieldChangedAfterSigning) {
  start();
  proto::Offer offer = offer_for(image_);
  offer.manifest.counter = 7;  // not what was signed
  expect_declined(offer, ReasonCode::bad_signature);
}

TEST_F(AgentTest, RejectsUnknownKey) {
  start();
  TestSigner stranger;
  proto::Offer offer = make_offer(stranger, image_, {});
  expect_declined(offer, ReasonCode::unknown_key);
}

// A captured, validly signed offer replayed under another deployment id, to another device,
// to a group the device is not in, or signed without any binding: declined, nothing written.
TEST_F(AgentTest, RejectsAnOfferSignedForAnotherDeploymentDeviceOrGroup) {
  start();
  proto::Offer replayed = offer_for(image_);  // signed for dep-1
  replayed.deployment.assign("dep-replayed");  // outside the signature
  expect_declined(replayed, ReasonCode::wrong_target);
  OfferOptions other_device;
  other_device.deployment = "dep-2";
  other_device.device = "dev-2";
  expect_declined(offer_for(image_, other_device), ReasonCode::wrong_target);
  OfferOptions other_group;
  other_group.deployment = "dep-3";
  other_group.group = "other-fleet";
  expect_declined(offer_for(image_, other_group), ReasonCode::wrong_target);
  OfferOptions unbound;
  unbound.deployment = "dep-4";
  unbound.unbound = true;
  expect_declined(offer_for(image_, unbound), ReasonCode::wrong_target);
  // Bound to a group it is in: accepted.
  OfferOptions own_group;
  own_group.deployment = "dep-5";
  own_group.group = "fleet";
  const std::size_t from = transport_.published.size();
  send_offer(offer_for(image_, own_group));
  const auto evs = transport_.events(from);
  ASSERT_FALSE(evs.empty());
  EXPECT_EQ(evs[0].type, EventType::accept);
}

TEST_F(AgentTest, ALowerVersionNeedsTheOperatorsRollback) {
  start();
  OfferOptions older;
  older.deployment = "dep-old";
  older.version = "0.9.0";  // running 1.0.0, same security counter
  expect_declined(offer_for(image_, older), ReasonCode::downgrade);
  OfferOptions rollback = older;
  rollback.deployment = "dep-rollback";
  rollback.rollback = true;
  const std::size_t from = transport_.published.size();
  send_offer(offer_for(image_, rollback));
  const auto evs = transport_.events(from);
  ASSERT_FALSE(evs.empty());
  EXPECT_EQ(evs[0].type, EventType::accept) << "a rollback the operator ordered was refused";
}

TEST_F(AgentTest, RejectsWrongHardware) {
  start();
  OfferOptions opt;
  opt.hw = "other-board";
  expect_declined(offer_for(image_, opt), ReasonCode::wrong_hardware);
}

TEST_F(AgentTest, RejectsLowerSecurityCounter) {
  flash_.power_on();
  flash_.set_security_counter(5);
  boot_and_connect();
  OfferOptions opt;
  opt.counter = 1;
  expect_declined(offer_for(image_, opt), ReasonCode::downgrade);
}

TEST_F(AgentTest, RejectsExpiredOffer) {
  start();
  OfferOptions opt;
  clock_.set_unix(opt.expires + 1);
  expect_declined(offer_for(image_, opt), ReasonCode::expired);
}

TEST_F(AgentTest, ExpiryZeroMeansTheOfferNeverExpires) {
  start();
  OfferOptions opt;
  opt.expires = 0;
  clock_.set_unix(4'000'000'000);
  send_offer(offer_for(image_, opt));
  EXPECT_EQ(agent_->state(), DeviceState::downloading);
  EXPECT_TRUE(events_of(EventType::decline).empty());
}

TEST_F(AgentTest, DowngradeIsReportedBeforeExpiry) {
  start();
  flash_.set_security_counter(5);
  OfferOptions opt;
  clock_.set_unix(opt.expires + 1);  // both wrong: the counter check comes first
  expect_declined(offer_for(image_, opt), ReasonCode::downgrade);
}

TEST_F(AgentTest, RejectsAlreadyInstalledVersion) {
  start();
  OfferOptions opt;
  opt.version = "1.0.0";
  expect_declined(offer_for(image_, opt), ReasonCode::already_installed);
}

TEST_F(AgentTest, RejectsImageLargerThanSlot) {
  flash_.set_capacity(kImageSize - 1);
  start();
  expect_declined(offer_for(image_), ReasonCode::no_space);
}

TEST_F(AgentTest, RejectsUnsupportedKind) {
  start();
  OfferOptions opt;
  opt.kind = proto::ImageKind::bundle;
  expect_declined(offer_for(image_, opt), ReasonCode::unsupported);
}

// Check 7 (`unsupported`) comes after the signature: an offer the device could not install
// anyway still gets bad_signature when it is not validly signed.
TEST_F(AgentTest, UnsupportedOfferWithABadSignatureIsDeclinedBadSignature) {
  start();
  OfferOptions opt;
  opt.kind = proto::ImageKind::bundle;
  proto::Offer offer = offer_for(image_, opt);
  offer.manifest.sig.data[10] = offer.manifest.sig.data[10] == '0' ? '1' : '0';
  expect_declined(offer, ReasonCode::bad_signature);
}

// Check 3c: `image` must be the first 16 hex digits of `sha256`, even when signed that way.
TEST_F(AgentTest, SignedOfferWhoseImageIdIsNotItsSha256IsDeclinedBadManifest) {
  start();
  proto::Offer offer = offer_for(image_);
  offer.manifest.image.data[0] = offer.manifest.image.data[0] == '0' ? '1' : '0';
  signer_.sign(offer.manifest);
  expect_declined(offer, ReasonCode::bad_manifest);
}

TEST_F(AgentTest, RejectsMoreChunksThanTheDeviceCanTrack) {
  start();
  const auto big = random_image(std::size_t{kMaxImageChunks} * 256u + 1u, 7);
  OfferOptions opt;
  opt.chunk_size = 256;
  expect_declined(offer_for(big, opt), ReasonCode::unsupported);
}

TEST_F(AgentTest, CorruptOfferIsIgnoredAndCounted) {
  start();
  const std::size_t before = transport_.published.size();
  const std::string junk = "{\"v\":1,\"type\":\"offer\",\"deployment\":";
  agent_->on_message(topic(proto::TopicKind::offer).c_str(),
                     reinterpret_cast<const std::uint8_t*>(junk.data()), junk.size());
  EXPECT_EQ(agent_->stats().bad_messages, 1u);
  EXPECT_EQ(transport_.published.size(), before);
  EXPECT_EQ(agent_->state(), DeviceState::idle);
  EXPECT_EQ(flash_.counts().begin, 0);
  // A corrupt cancel too.
  agent_->on_message(topic(proto::TopicKind::cancel).c_str(),
                     reinterpret_cast<const std::uint8_t*>("[1,"), 3);
  EXPECT_EQ(agent_->stats().bad_messages, 2u);
  EXPECT_EQ(transport_.published.size(), before);
}

TEST_F(AgentTest, IgnoresOffersForOtherDevicesAndGroups) {
  start();
  const std::size_t before = transport_.published.size();
  send_offer(offer_for(image_), proto::TopicKind::offer, "dev-2");
  send_offer(offer_for(image_), proto::TopicKind::group_offer, "other-fleet");
  EXPECT_EQ(transport_.published.size(), before);
  EXPECT_EQ(agent_->state(), DeviceState::idle);
}

// -------------------------------------------------------------- transfer failures

TEST_F(AgentTest, HashMismatchFailsAndKeepsOldImage) {
  start();
  auto served = image_;
  served[5000] ^= 0x5a;
  OfferOptions opt;
  opt.manifest_image = &image_;
  const proto::Offer offer = offer_for(served, opt);
  send_offer(offer);
  ChunkServer server(served, offer.manifest.chunk_size, offer.manifest.image.c_str());
  serve(server);
  expect_single_result(false, ReasonCode::hash_mismatch, "1.0.0");
  EXPECT_EQ(agent_->state(), DeviceState::idle);
  EXPECT_EQ(flash_.counts().abort, 1);
  EXPECT_EQ(flash_.counts().finish, 0);
  EXPECT_EQ(flash_.counts().activate, 0);
  EXPECT_FALSE(agent_->reset_requested());
  reboot();
  EXPECT_EQ(running_version(), "1.0.0");
  EXPECT_EQ(flash_.running_slot(), 'a');
}

TEST_F(AgentTest, WrongChunkLengthIsDroppedAndNeverWritten) {
  start();
  // The manifest says 100 KiB + 100 bytes; the server's last chunk holds only 50.
  const auto described = random_image(kImageSize + 100, 99);
  std::vector<std::uint8_t> served(described.begin(), described.end() - 50);
  OfferOptions opt;
  opt.manifest_image = &described;
  const proto::Offer offer = offer_for(served, opt);
  send_offer(offer);
  ChunkServer server(served, offer.manifest.chunk_size, offer.manifest.image.c_str());
  serve(server);
  // Not a chunk of the signed image: dropped (and re-requested later), never written.
  EXPECT_GE(agent_->stats().bad_frames, 1u);
  EXPECT_EQ(agent_->state(), DeviceState::downloading);
  EXPECT_EQ(agent_->persisted().received_chunks, offer.manifest.chunk_count() - 1);
  EXPECT_TRUE(events_of(EventType::result).empty());
  EXPECT_EQ(flash_.counts().activate, 0);
  EXPECT_EQ(running_version(), "1.0.0");
}

TEST_F(AgentTest, BadCrcFrameIsIgnoredAndReRequested) {
  start();
  const proto::Offer offer = offer_for(image_);
  send_offer(offer);
  ChunkServer server(image_, offer.manifest.chunk_size, offer.manifest.image.c_str());
  bool corrupted = false;
  serve(server, [&](Frames& f) {
    for (auto& x : f) {
      if (x.index == 5 && !corrupted) {
        x.bytes[proto::kFrameHeaderLen + 17] ^= 0x01;  // payload no longer matches its CRC
        corrupted = true;
      }
    }
  });
  ASSERT_TRUE(corrupted);
  EXPECT_EQ(agent_->stats().bad_frames, 1u);
  EXPECT_EQ(agent_->state(), DeviceState::downloading);
  EXPECT_EQ(agent_->persisted().received_chunks, 99u);
  clock_.advance_ms(cfg_.request_timeout_ms);
  agent_->tick();
  const auto reqs = take_requests();
  ASSERT_EQ(reqs.size(), 1u);
  EXPECT_EQ(ChunkServer::wanted(reqs[0]), std::vector<std::uint32_t>{5});
  deliver(server.frame(5));
  EXPECT_TRUE(agent_->reset_requested());
  reboot();
  expect_single_result(true, ReasonCode::ok, "1.1.0");
}

// PROTOCOL.md 8.3: a device that does not implement the reserved flags (broadcast, compressed)
// treats them as unknown: the frame is dropped, never written, and re-requested.
TEST_F(AgentTest, FrameWithAReservedFlagIsDroppedAndReRequested) {
  start();
  const proto::Offer offer = offer_for(image_);
  send_offer(offer);
  ChunkServer server(image_, offer.manifest.chunk_size, offer.manifest.image.c_str());
  int flagged = 0;
  serve(server, [&](Frames& f) {
    for (auto& x : f) {
      const bool first_time = (x.index == 5 && flagged == 0) || (x.index == 6 && flagged == 1);
      if (!first_time) continue;
      x.bytes[5] = x.index == 5 ? proto::kFrameFlagCompressed : proto::kFrameFlagBroadcast;
      ++flagged;
    }
  });
  ASSERT_EQ(flagged, 2);
  EXPECT_EQ(agent_->stats().bad_frames, 2u);
  EXPECT_EQ(agent_->state(), DeviceState::downloading);
  EXPECT_EQ(agent_->persisted().received_chunks, 98u);
  clock_.advance_ms(cfg_.request_timeout_ms);
  agent_->tick();
  serve(server);
  EXPECT_TRUE(agent_->reset_requested());
  reboot();
  expect_single_result(true, ReasonCode::ok, "1.1.0");
}

TEST_F(AgentTest, FrameOfAnotherImageIsIgnored) {
  start();
  const proto::Offer offer = offer_for(image_);
  send_offer(offer);
  const auto other = random_image(kImageSize, 5);
  const std::string other_id = sha256_hex(other.data(), other.size()).substr(0, 16);
  ChunkServer foreign(other, 1024, other_id.c_str());
  deliver(foreign.frame(0));
  EXPECT_EQ(agent_->stats().bad_frames, 1u);
  EXPECT_EQ(agent_->persisted().received_chunks, 0u);
  EXPECT_EQ(flash_.counts().write, 0);
}

TEST_F(AgentTest, FlashWriteErrorFailsUpdate) {
  start();
  flash_.fail_write(3, PortStatus::error);
  run_update();
  expect_single_result(false, ReasonCode::flash_error, "1.0.0");
  EXPECT_EQ(flash_.counts().write, 3);
  EXPECT_EQ(flash_.counts().abort, 1);
  EXPECT_EQ(flash_.counts().activate, 0);
  EXPECT_EQ(agent_->state(), DeviceState::idle);
  reboot();
  EXPECT_EQ(running_version(), "1.0.0");
  EXPECT_EQ(flash_.slot_data('a'), std::vector<std::uint8_t>(
                                        std::begin("factory image 1.0.0\n"),
                                        std::end("factory image 1.0.0\n") - 1));
}

TEST_F(AgentTest, FlashNoSpaceFailsUpdate) {
  start();
  flash_.fail_write(3, PortStatus::no_space);
  run_update();
  expect_single_result(false, ReasonCode::no_space, "1.0.0");
  EXPECT_EQ(flash_.counts().abort, 1);
  EXPECT_EQ(flash_.counts().activate, 0);
  EXPECT_EQ(running_version(), "1.0.0");
}

// ------------------------------------------------------------------ trial boot, revert

TEST_F(AgentTest, FailedSelfTestRevertsAndReports) {
  cfg_.self_test = &failing_self_test;
  start();
  run_update();
  ASSERT_TRUE(agent_->reset_requested());
  const std::size_t before = transport_.published.size();
  reboot();  // trial boot fails its self-test, the device resets into the old image
  EXPECT_EQ(flash_.counts().power_on, 3);
  EXPECT_EQ(flash_.counts().confirm, 0);
  EXPECT_EQ(running_version(), "1.0.0");
  EXPECT_EQ(flash_.running_slot(), 'a');
  expect_single_result(false, ReasonCode::self_test_failed, "1.0.0", before);
  EXPECT_EQ(flash_.boot_state().counter, 0u);  // the security counter was not raised
  const auto hellos = transport_.hellos(before);
  ASSERT_FALSE(hellos.empty());
  EXPECT_EQ(hellos.back().version, "1.0.0");
  EXPECT_EQ(hellos.back().slot_state, proto::SlotState::rolled_back);
  EXPECT_EQ(hellos.back().counter, 0u);
  EXPECT_EQ(agent_->state(), DeviceState::idle);
  expect_seq_increasing();
}

// ------------------------------------------------------------------- cancel and busy

TEST_F(AgentTest, CancelDuringDownloadAbortsAndKeepsOldImage) {
  start();
  const proto::Offer offer = offer_for(image_);
  send_offer(offer);
  ChunkServer server(image_, offer.manifest.chunk_size, offer.manifest.image.c_str());
  serve(server, {}, 30);
  send_cancel("dep-1");
  expect_single_result(false, ReasonCode::cancelled, "1.0.0");
  EXPECT_EQ(agent_->state(), DeviceState::idle);
  EXPECT_EQ(flash_.counts().abort, 1);
  EXPECT_EQ(flash_.boot_state().writing, 0);
  // Late chunks of the cancelled transfer change nothing.
  const int writes = flash_.counts().write;
  deliver(server.frame(40));
  EXPECT_EQ(flash_.counts().write, writes);
  reboot();
  EXPECT_EQ(running_version(), "1.0.0");
  EXPECT_EQ(flash_.counts().activate, 0);
}

TEST_F(AgentTest, CancelForAnotherDeploymentIsIgnored) {
  start();
  const proto::Offer offer = offer_for(image_);
  send_offer(offer);
  send_cancel("dep-other");
  EXPECT_EQ(agent_->state(), DeviceState::downloading);
  EXPECT_TRUE(events_of(EventType::result).empty());
}

TEST_F(AgentTest, SecondOfferWhileDownloadingIsDeclinedBusy) {
  start();
  const proto::Offer offer = offer_for(image_);
  send_offer(offer);
  ChunkServer server(image_, offer.manifest.chunk_size, offer.manifest.image.c_str());
  serve(server, {}, 20);
  OfferOptions other;
  other.deployment = "dep-2";
  other.version = "1.2.0";
  const proto::Offer second = make_offer(signer_, image_, other);
  const std::size_t before = transport_.published.size();
  send_offer(second);
  const auto evs = transport_.events(before);
  ASSERT_EQ(evs.size(), 1u);
  EXPECT_EQ(evs[0].type, EventType::decline);
  EXPECT_EQ(evs[0].reason, ReasonCode::busy);
  EXPECT_EQ(evs[0].deployment, "dep-2");
  // The same deployment re-offered (e.g. retained) is neither declined nor restarted.
  const std::size_t before_same = transport_.published.size();
  send_offer(offer);
  EXPECT_EQ(transport_.published.size(), before_same);
  EXPECT_EQ(flash_.counts().begin, 1);
  // The running download is unaffected.
  serve(server);
  EXPECT_TRUE(agent_->reset_requested());
  reboot();
  expect_single_result(true, ReasonCode::ok, "1.1.0");
}

// PROTOCOL.md section 7: nothing is answered about an offer before its signature is checked,
// `busy` included: while downloading, a forged offer for another deployment is declined
// bad_signature (a final answer), and the download goes on.
TEST_F(AgentTest, BadlySignedOfferWhileDownloadingIsDeclinedBadSignatureNotBusy) {
  start();
  const proto::Offer offer = offer_for(image_);
  send_offer(offer);
  ChunkServer server(image_, offer.manifest.chunk_size, offer.manifest.image.c_str());
  serve(server, {}, 20);
  OfferOptions other;
  other.deployment = "dep-2";
  other.version = "1.2.0";
  proto::Offer forged = make_offer(signer_, image_, other);
  forged.manifest.counter = 9;  // not what was signed
  const std::size_t before = transport_.published.size();
  send_offer(forged);
  const auto evs = transport_.events(before);
  ASSERT_EQ(evs.size(), 1u);
  EXPECT_EQ(evs[0].type, EventType::decline);
  EXPECT_EQ(evs[0].reason, ReasonCode::bad_signature) << proto::reason_name(evs[0].reason);
  EXPECT_EQ(evs[0].deployment, "dep-2");
  EXPECT_EQ(agent_->state(), DeviceState::downloading);
  serve(server);
  EXPECT_TRUE(agent_->reset_requested());
  reboot();
  expect_single_result(true, ReasonCode::ok, "1.1.0");
}

TEST_F(AgentTest, FinishedDeploymentOfferedAgainRepeatsItsResult) {
  start();
  const proto::Offer offer = offer_for(image_);
  send_offer(offer, proto::TopicKind::group_offer, "fleet");
  ASSERT_EQ(agent_->state(), DeviceState::downloading);
  ChunkServer server(image_, offer.manifest.chunk_size, offer.manifest.image.c_str());
  serve(server);
  reboot();
  expect_single_result(true, ReasonCode::ok, "1.1.0");
  const auto first = events_of(EventType::result);
  ASSERT_EQ(first.size(), 1u);
  // The retained group offer comes again on every (re)connection; the controller re-sends
  // an offer when it missed the result. Either way: the same result, same seq, no download.
  const std::size_t before = transport_.published.size();
  send_offer(offer, proto::TopicKind::group_offer, "fleet");
  auto again = events_of(EventType::result, before);
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].seq, first[0].seq);
  EXPECT_TRUE(again[0].success);
  reboot();
  const std::size_t after_reboot = transport_.published.size();
  send_offer(offer, proto::TopicKind::group_offer, "fleet");
  again = events_of(EventType::result, after_reboot);
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].seq, first[0].seq);
  EXPECT_EQ(take_requests().size(), 0u);
  EXPECT_EQ(agent_->state(), DeviceState::idle);
  EXPECT_EQ(flash_.counts().begin, 1);
  // An empty retained message (offer withdrawn) is ignored as well.
  agent_->on_message(topic(proto::TopicKind::group_offer, "fleet").c_str(), nullptr, 0);
  EXPECT_EQ(agent_->stats().bad_messages, 0u);
}

// Devices whose answers were late together spread their next requests: the jitter depends
// on the device id, and differs between attempts.
TEST(AgentBackoff, ReRequestJitterSpreadsAFleet) {
  std::set<std::uint32_t> waits;
  for (int d = 0; d < 50; ++d) {
    AgentConfig cfg;
    const std::string id = "dev-" + std::to_string(d);
    cfg.device_id = id.c_str();
    cfg.request_timeout_ms = 2000;
    waits.insert(ota::agent::request_timeout_for(cfg, 1));
  }
  EXPECT_GT(waits.size(), 40u) << "the same wait for most devices: no jitter";
  for (std::uint32_t w : waits) {
    EXPECT_GE(w, 4000u);
    EXPECT_LT(w, 6000u);
  }
}

TEST_F(AgentTest, NoChunksEverArriveTimesOut) {
  cfg_.max_stalled_requests = 3;
  start();
  send_offer(offer_for(image_));
  ASSERT_EQ(take_requests().size(), 1u);
  // The re-request timeout doubles per stalled request (up to 16x), plus a jitter of up to
  // half: an outage of the controller is not turned into a flood of requests, nor into
  // failures within a minute.
  for (std::uint32_t i = 0; i < cfg_.max_stalled_requests; ++i) {
    const std::uint64_t base = std::uint64_t{cfg_.request_timeout_ms} << std::min(i, 4u);
    const std::uint64_t wait = agent_->request_timeout_ms();
    if (i == 0) {
      EXPECT_EQ(wait, base);
    }
    EXPECT_GE(wait, base) << "re-request " << i;
    EXPECT_LT(wait, base + base / 2) << "re-request " << i;
    clock_.advance_ms(wait - 1);
    agent_->tick();
    ASSERT_TRUE(take_requests().empty()) << "re-request " << i << " came before its back-off";
    clock_.advance_ms(1);
    agent_->tick();
    const auto reqs = take_requests();
    ASSERT_EQ(reqs.size(), 1u) << "re-request " << i;
    EXPECT_EQ(reqs[0].first, 0u);
    EXPECT_TRUE(events_of(EventType::result).empty());
  }
  // While offline a stall is not counted.
  transport_.connected_ = false;
  clock_.advance_ms(10 * cfg_.request_timeout_ms);
  agent_->tick();
  EXPECT_EQ(agent_->state(), DeviceState::downloading);
  transport_.connected_ = true;
  clock_.advance_ms(agent_->request_timeout_ms());
  agent_->tick();
  expect_single_result(false, ReasonCode::timeout, "1.0.0");
  EXPECT_EQ(agent_->stats().timeouts, 4u);
  EXPECT_EQ(flash_.counts().abort, 1);
  EXPECT_EQ(agent_->state(), DeviceState::idle);
}

// The record is lost (wiped, or unreadable for the new image's agent) while the new image
// runs on trial: the image is still self-tested and confirmed instead of reverting unseen.
TEST_F(AgentTest, TrialImageWithoutRecordIsStillConfirmed) {
  start();
  const proto::Offer offer = offer_for(image_);
  send_offer(offer);
  ChunkServer server(image_, offer.manifest.chunk_size, offer.manifest.image.c_str());
  serve(server);
  ASSERT_TRUE(agent_->reset_requested());
  ASSERT_EQ(storage_.erase(), PortStatus::ok);
  reboot();
  EXPECT_EQ(running_version(), "1.1.0");
  EXPECT_EQ(flash_.boot_state().pending, 0);  // confirmed: no revert at the next boot
  reboot();
  EXPECT_EQ(running_version(), "1.1.0");
  const auto hellos = transport_.hellos();
  ASSERT_FALSE(hellos.empty());
  EXPECT_EQ(hellos.back().version, "1.1.0");
  EXPECT_EQ(hellos.back().slot_state, proto::SlotState::confirmed);
}

// A device whose state record is lost keeps numbering its events above what the controller
// has seen, so its next events are not dropped as duplicates.
TEST_F(AgentTest, LostRecordDoesNotRestartSequenceNumbers) {
  start();
  OfferOptions opt;
  opt.hw = "other-board";
  send_offer(offer_for(image_, opt));  // declined: one event with a low seq
  const auto before = events_of(EventType::decline);
  ASSERT_EQ(before.size(), 1u);
  ASSERT_EQ(storage_.erase(), PortStatus::ok);
  clock_.advance_ms(60'000);  // a reboot takes a while; wall time moves on
  reboot();
  const std::size_t from = transport_.published.size();
  opt.deployment = "dep-2";
  send_offer(offer_for(image_, opt));
  const auto after = events_of(EventType::decline, from);
  ASSERT_EQ(after.size(), 1u);
  EXPECT_GT(after[0].seq, before[0].seq);
}

// ------------------------------------------------------------------ power cuts

// The record says "installing" (verification passed) when power is lost, before the flash
// was switched: boot() activates again and the update completes.
TEST_F(AgentTest, PowerCutWhileInstallingRedoesActivation) {
  start();
  bool snapped = false;
  FakeFlash flash_at_cut;
  std::vector<std::uint8_t> record_at_cut;
  std::size_t published_at_cut = 0;
  storage_.on_save = [&](const std::vector<std::uint8_t>& rec) {
    if (snapped || decode_record(rec).state != DeviceState::installing) return;
    snapped = true;
    flash_at_cut = flash_;
    record_at_cut = rec;
    published_at_cut = transport_.published.size();
  };
  run_update();
  ASSERT_TRUE(snapped);
  storage_.on_save = nullptr;
  // Power was lost right there: nothing after it happened.
  agent_.reset();
  flash_ = flash_at_cut;
  storage_.record = record_at_cut;
  transport_.published.resize(published_at_cut);
  EXPECT_EQ(flash_.counts().activate, 0);
  EXPECT_EQ(flash_.version_of('b'), "1.1.0");  // finished (sealed) before the cut

  const std::size_t before = transport_.published.size();
  ASSERT_EQ(flash_.power_on(), PortStatus::ok);
  EXPECT_EQ(running_version(), "1.0.0");
  agent_ = std::make_unique<Agent>(cfg_, flash_, transport_, clock_, storage_, key_storage_,
                                       crypto_);
  agent_->boot();
  EXPECT_EQ(flash_.counts().activate, 1);
  EXPECT_TRUE(agent_->reset_requested());
  EXPECT_EQ(agent_->state(), DeviceState::rebooting);
  reboot();
  EXPECT_EQ(running_version(), "1.1.0");
  expect_single_result(true, ReasonCode::ok, "1.1.0", before);
  EXPECT_EQ(flash_.slot_data('b'), image_);
  expect_seq_increasing();
}

// Power lost after FlashPort::activate() but before the record left "installing": the
// device comes up in the new image on trial and must run the self-test and confirm it.
TEST_F(AgentTest, PowerCutRightAfterActivationConfirmsNewImage) {
  start();
  bool snapped = false;
  FakeFlash flash_at_cut;
  std::vector<std::uint8_t> previous, record_at_cut;
  std::size_t published_at_cut = 0;
  storage_.on_save = [&](const std::vector<std::uint8_t>& rec) {
    if (!snapped && flash_.counts().activate == 1) {
      snapped = true;  // the first save after activate(): the cut came just before it
      flash_at_cut = flash_;
      record_at_cut = previous;
      published_at_cut = transport_.published.size();
    }
    previous = rec;
  };
  run_update();
  ASSERT_TRUE(snapped);
  storage_.on_save = nullptr;
  agent_.reset();
  flash_ = flash_at_cut;
  storage_.record = record_at_cut;
  transport_.published.resize(published_at_cut);
  ASSERT_EQ(decode_record(storage_.record).state, DeviceState::installing);

  const std::size_t before = transport_.published.size();
  reboot();
  EXPECT_EQ(running_version(), "1.1.0");
  EXPECT_EQ(flash_.counts().confirm, 1);
  expect_single_result(true, ReasonCode::ok, "1.1.0", before);
  EXPECT_EQ(flash_.boot_state().counter, 1u);
  reboot();
  EXPECT_EQ(running_version(), "1.1.0");  // confirmed: no revert at the next boot
}

// A result that could not be sent (offline) is sent on the next connection, once.
TEST_F(AgentTest, ResultIsSentOnceWhenBackOnline) {
  start();
  flash_.fail_write(1, PortStatus::error);
  const proto::Offer offer = offer_for(image_);
  send_offer(offer);
  ChunkServer server(image_, offer.manifest.chunk_size, offer.manifest.image.c_str());
  transport_.connected_ = false;
  deliver(server.frame(0));
  EXPECT_TRUE(agent_->has_unsent_outcome());
  EXPECT_TRUE(events_of(EventType::result).empty());
  transport_.connected_ = true;
  agent_->on_connected();
  expect_single_result(false, ReasonCode::flash_error, "1.0.0");
  EXPECT_FALSE(agent_->has_unsent_outcome());
  agent_->on_connected();
  EXPECT_EQ(events_of(EventType::result).size(), 1u);
}

// ------------------------------------------------------------------ heartbeat, offer policy

TEST_F(AgentTest, HeartbeatEveryIntervalWithoutSeqOrStorageWrites) {
  cfg_.heartbeat_interval_ms = 10'000;
  start();
  const int saves = storage_.saves;
  const std::uint32_t seq = agent_->persisted().seq;
  const std::size_t from = transport_.published.size();
  clock_.advance_ms(9'999);
  agent_->tick();
  EXPECT_TRUE(transport_.heartbeats(from).empty()) << "heartbeat before its interval";
  clock_.advance_ms(1);
  agent_->tick();
  auto hbs = transport_.heartbeats(from);
  ASSERT_EQ(hbs.size(), 1u);
  EXPECT_EQ(transport_.published[hbs[0].index].topic, "ota/v1/dev/dev-1/up/presence");
  EXPECT_EQ(hbs[0].qos, 0);
  EXPECT_FALSE(hbs[0].retain) << "a retained heartbeat would replace the retained hello";
  EXPECT_EQ(hbs[0].hb.device, kDevice);
  EXPECT_EQ(hbs[0].hb.state, DeviceState::idle);
  EXPECT_EQ(hbs[0].hb.uptime, 10u);
  // Ticks in between send nothing; the next one comes one interval later.
  for (int i = 0; i < 9; ++i) {
    clock_.advance_ms(1'000);
    agent_->tick();
  }
  EXPECT_EQ(transport_.heartbeats(from).size(), 1u);
  clock_.advance_ms(1'000);
  agent_->tick();
  hbs = transport_.heartbeats(from);
  ASSERT_EQ(hbs.size(), 2u);
  EXPECT_EQ(hbs[1].hb.uptime, 20u);
  // Offline: nothing is queued; the first tick after reconnecting sends one.
  transport_.connected_ = false;
  clock_.advance_ms(35'000);
  agent_->tick();
  transport_.connected_ = true;
  agent_->tick();
  hbs = transport_.heartbeats(from);
  ASSERT_EQ(hbs.size(), 3u);
  EXPECT_EQ(hbs[2].hb.uptime, 55u);
  // The state shown is the agent's: downloading once an update runs.
  send_offer(offer_for(image_));
  ASSERT_EQ(agent_->state(), DeviceState::downloading);
  const int saves_before_hb = storage_.saves;
  const std::uint32_t seq_before_hb = agent_->persisted().seq;
  clock_.advance_ms(10'000);
  agent_->tick();
  hbs = transport_.heartbeats(from);
  ASSERT_EQ(hbs.size(), 4u);
  EXPECT_EQ(hbs[3].hb.state, DeviceState::downloading);
  // No event sequence number and no storage write for any heartbeat (flash wear).
  EXPECT_EQ(agent_->stats().heartbeats, 4u);
  EXPECT_GE(saves_before_hb, saves);
  EXPECT_EQ(storage_.saves - saves_before_hb, 0) << "a heartbeat wrote the record";
  EXPECT_EQ(agent_->persisted().seq, seq_before_hb);
  EXPECT_EQ(transport_.hellos(from).size(), 0u);
  (void)seq;
}

TEST_F(AgentTest, HeartbeatIntervalZeroNeverSends) {
  cfg_.heartbeat_interval_ms = 0;
  start();
  for (int i = 0; i < 10; ++i) {
    clock_.advance_ms(3'600'000);
    agent_->tick();
  }
  EXPECT_TRUE(transport_.heartbeats().empty());
  EXPECT_EQ(agent_->stats().heartbeats, 0u);
}

// A scripted integrator policy that records what it was asked.
struct PolicyScript {
  std::vector<OfferDecision> answers;  // consumed in order; accept when exhausted
  std::vector<std::string> asked;      // versions of the manifests it saw
  static OfferDecision call(void* ctx, const proto::Manifest& m) {
    auto* self = static_cast<PolicyScript*>(ctx);
    self->asked.emplace_back(m.version.c_str());
    if (self->asked.size() > self->answers.size()) return OfferDecision{};
    return self->answers[self->asked.size() - 1];
  }
};

OfferDecision decision(OfferAnswer a, ReasonCode r, std::uint32_t retry = 0) {
  OfferDecision d;
  d.answer = a;
  d.reason = r;
  d.retry_after_s = retry;
  return d;
}

TEST_F(AgentTest, PolicyDeclineIsAFinalOutcomeRepeatedOnReOffer) {
  PolicyScript policy;
  policy.answers = {decision(OfferAnswer::decline, ReasonCode::low_battery)};
  cfg_.offer_policy = &PolicyScript::call;
  cfg_.offer_policy_ctx = &policy;
  start();
  const proto::Offer offer = offer_for(image_);
  // expect_declined() also sends the offer a second time: same event, same seq, and the
  // policy is not asked again (the decline is final, like a failed check).
  expect_declined(offer, ReasonCode::low_battery);
  EXPECT_EQ(policy.asked, std::vector<std::string>{"1.1.0"});
  // It survives a reboot like any final outcome.
  const auto first = events_of(EventType::decline);
  ASSERT_FALSE(first.empty());
  reboot();
  const std::size_t from = transport_.published.size();
  send_offer(offer);
  const auto again = events_of(EventType::decline, from);
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].seq, first[0].seq);
  EXPECT_EQ(again[0].reason, ReasonCode::low_battery);
  EXPECT_EQ(policy.asked.size(), 1u);
  EXPECT_TRUE(events_of(EventType::defer).empty());
}

TEST_F(AgentTest, PolicyDeclineWithoutReasonIsSentAsInternalError) {
  PolicyScript policy;
  policy.answers = {decision(OfferAnswer::decline, ReasonCode::ok)};
  cfg_.offer_policy = &PolicyScript::call;
  cfg_.offer_policy_ctx = &policy;
  start();
  expect_declined(offer_for(image_), ReasonCode::internal_error);
}

TEST_F(AgentTest, PolicyDeferIsNotRecordedAndTheReOfferAsksAgainThenCompletes) {
  PolicyScript policy;
  policy.answers = {decision(OfferAnswer::defer, ReasonCode::not_in_window, 900),
                    decision(OfferAnswer::defer, ReasonCode::ok, 0)};
  cfg_.offer_policy = &PolicyScript::call;
  cfg_.offer_policy_ctx = &policy;
  start();
  const proto::Offer offer = offer_for(image_);
  const int saves = storage_.saves;
  std::size_t from = transport_.published.size();
  send_offer(offer);
  auto evs = transport_.events(from);
  ASSERT_EQ(evs.size(), 1u);
  EXPECT_EQ(evs[0].type, EventType::defer);
  EXPECT_EQ(evs[0].deployment, "dep-1");
  EXPECT_EQ(evs[0].reason, ReasonCode::not_in_window);
  EXPECT_EQ(evs[0].retry_after, 900u);
  const std::uint32_t first_seq = evs[0].seq;
  EXPECT_EQ(agent_->state(), DeviceState::idle);
  EXPECT_FALSE(agent_->has_unsent_outcome());
  for (const auto& o : agent_->persisted().outcomes) EXPECT_TRUE(o.deployment.empty());
  EXPECT_EQ(flash_.counts().begin, 0);
  EXPECT_EQ(transport_.count(proto::TopicKind::chunk_request, from), 0u);
  EXPECT_EQ(saves + 1, storage_.saves) << "a defer saves only its sequence number";

  // The controller offers again later (after a reboot, too): the policy is asked again.
  reboot();
  from = transport_.published.size();
  send_offer(offer);
  evs = transport_.events(from);
  ASSERT_EQ(evs.size(), 1u);
  EXPECT_EQ(evs[0].type, EventType::defer);
  EXPECT_EQ(evs[0].reason, ReasonCode::busy);  // a defer without a reason says busy
  EXPECT_EQ(evs[0].retry_after, 0u);
  EXPECT_GT(evs[0].seq, first_seq);
  EXPECT_EQ(policy.asked.size(), 2u);

  // Third time it accepts: the update runs to the end and is reported once.
  from = transport_.published.size();
  send_offer(offer);
  EXPECT_EQ(policy.asked.size(), 3u);
  ASSERT_EQ(agent_->state(), DeviceState::downloading);
  ASSERT_EQ(events_of(EventType::accept, from).size(), 1u);
  ChunkServer server(image_, offer.manifest.chunk_size, offer.manifest.image.c_str());
  serve(server);
  ASSERT_TRUE(agent_->reset_requested());
  reboot();
  expect_single_result(true, ReasonCode::ok, "1.1.0", from);
  EXPECT_EQ(running_version(), "1.1.0");
  expect_seq_increasing();
  // Offers after the result repeat the result and do not ask the policy.
  const std::size_t after = transport_.published.size();
  send_offer(offer);
  EXPECT_EQ(events_of(EventType::result, after).size(), 1u);
  EXPECT_EQ(policy.asked.size(), 3u);
}

TEST_F(AgentTest, PolicyIsNeverAskedAboutAnOfferThatFailsACheck) {
  PolicyScript policy;
  policy.answers = {decision(OfferAnswer::defer, ReasonCode::busy, 1)};
  cfg_.offer_policy = &PolicyScript::call;
  cfg_.offer_policy_ctx = &policy;
  start();
  proto::Offer bad_sig = offer_for(image_);
  bad_sig.manifest.sig.data[10] = bad_sig.manifest.sig.data[10] == '0' ? '1' : '0';
  expect_declined(bad_sig, ReasonCode::bad_signature);
  OfferOptions opt;
  opt.deployment = "dep-hw";
  opt.hw = "other-board";
  expect_declined(offer_for(image_, opt), ReasonCode::wrong_hardware);
  opt = OfferOptions{};
  opt.deployment = "dep-same";
  opt.version = "1.0.0";
  expect_declined(offer_for(image_, opt), ReasonCode::already_installed);
  flash_.set_capacity(kImageSize - 1);
  opt = OfferOptions{};
  opt.deployment = "dep-big";
  expect_declined(offer_for(image_, opt), ReasonCode::no_space);
  EXPECT_TRUE(policy.asked.empty());
  // Nor while another deployment is running (that one is declined busy by the agent).
  flash_.set_capacity(1u << 20);
  opt = OfferOptions{};
  opt.deployment = "dep-ok";
  const proto::Offer good = offer_for(image_, opt);
  send_offer(good);  // asked: defers
  ASSERT_EQ(policy.asked.size(), 1u);
  send_offer(good);  // asked: accepts
  ASSERT_EQ(agent_->state(), DeviceState::downloading);
  opt = OfferOptions{};
  opt.deployment = "dep-2";
  opt.version = "1.2.0";
  const std::size_t from = transport_.published.size();
  send_offer(make_offer(signer_, image_, opt));
  const auto busy = events_of(EventType::decline, from);
  ASSERT_EQ(busy.size(), 1u);
  EXPECT_EQ(busy[0].reason, ReasonCode::busy);
  EXPECT_EQ(policy.asked.size(), 2u);
}

// ------------------------------------------------------------- boot confirmation, rollback

// An asynchronous self-test scripted by the test.
struct SelfTestScript {
  SelfTestStatus status = SelfTestStatus::running;
  int polls = 0;
  static SelfTestStatus poll(void* ctx) {
    auto* self = static_cast<SelfTestScript*>(ctx);
    ++self->polls;
    return self->status;
  }
};

TEST_F(AgentTest, AsyncSelfTestConfirmsWhenItPasses) {
  SelfTestScript probe;
  cfg_.self_test_poll = &SelfTestScript::poll;
  cfg_.self_test_ctx = &probe;
  cfg_.confirm_timeout_ms = 60'000;
  start();
  run_update();
  ASSERT_TRUE(agent_->reset_requested());
  const std::size_t before = transport_.published.size();
  reboot();
  EXPECT_EQ(agent_->state(), DeviceState::confirming);
  EXPECT_EQ(running_version(), "1.1.0");
  clock_.advance_ms(30'000);
  agent_->tick();
  EXPECT_EQ(agent_->state(), DeviceState::confirming);
  EXPECT_TRUE(events_of(EventType::result, before).empty());
  EXPECT_EQ(flash_.counts().confirm, 0);
  probe.status = SelfTestStatus::passed;
  agent_->tick();
  EXPECT_EQ(agent_->state(), DeviceState::idle);
  EXPECT_EQ(flash_.counts().confirm, 1);
  expect_single_result(true, ReasonCode::ok, "1.1.0", before);
  EXPECT_GE(probe.polls, 3);
}

TEST_F(AgentTest, SelfTestThatNeverPassesInTimeRollsBackWithConfirmTimeout) {
  SelfTestScript probe;  // stays "running"
  cfg_.self_test_poll = &SelfTestScript::poll;
  cfg_.self_test_ctx = &probe;
  cfg_.confirm_timeout_ms = 60'000;
  start();
  run_update();
  const std::size_t before = transport_.published.size();
  reboot(false);
  ASSERT_EQ(agent_->state(), DeviceState::confirming);
  clock_.advance_ms(59'999);
  agent_->tick();
  ASSERT_EQ(agent_->state(), DeviceState::confirming);
  clock_.advance_ms(1);
  agent_->tick();
  // Given up: the trial image is rejected and the device resets into the old one.
  EXPECT_TRUE(agent_->reset_requested());
  EXPECT_EQ(flash_.counts().reject, 1);
  EXPECT_EQ(flash_.counts().confirm, 0);
  reboot();
  EXPECT_EQ(running_version(), "1.0.0");
  EXPECT_EQ(flash_.running_slot(), 'a');
  expect_single_result(false, ReasonCode::timeout, "1.0.0", before);
  EXPECT_EQ(events_of(EventType::result, before)[0].detail,
            "confirm timeout: the self-test did not pass in time");
  EXPECT_EQ(flash_.boot_state().counter, 0u);
  EXPECT_EQ(agent_->state(), DeviceState::idle);
}

// The new image crashes (power cycles) before it can confirm, again and again: the boot
// loader gives it max_trial_boots boots and then returns to the old image by itself.
TEST_F(AgentTest, TrialImageThatNeverConfirmsIsRolledBackAfterMaxTrialBoots) {
  SelfTestScript probe;
  cfg_.self_test_poll = &SelfTestScript::poll;
  cfg_.self_test_ctx = &probe;
  cfg_.max_trial_boots = 3;
  start();
  run_update();
  const std::size_t before = transport_.published.size();
  for (std::uint32_t boot = 1; boot <= 3; ++boot) {
    agent_.reset();  // crash: no shutdown
    ASSERT_EQ(flash_.power_on(), PortStatus::ok);
    EXPECT_EQ(running_version(), "1.1.0") << "trial boot " << boot;
    ImageState img;
    flash_.read_state(img);
    EXPECT_EQ(img.trial_boots, boot);
    EXPECT_EQ(img.slot_state, proto::SlotState::pending);
    boot_and_connect();
    EXPECT_EQ(agent_->state(), DeviceState::confirming);
  }
  EXPECT_EQ(probe.polls, 3);
  EXPECT_TRUE(events_of(EventType::result, before).empty());
  reboot();  // the fourth boot: the boot loader reverts
  EXPECT_EQ(running_version(), "1.0.0");
  expect_single_result(false, ReasonCode::rolled_back, "1.0.0", before);
  EXPECT_EQ(events_of(EventType::result, before)[0].detail,
            "boot count exceeded: the image was not confirmed within its trial boots");
  EXPECT_EQ(flash_.counts().confirm, 0);
  EXPECT_EQ(flash_.boot_state().counter, 0u);
  const auto hellos = transport_.hellos(before);
  ASSERT_FALSE(hellos.empty());
  EXPECT_EQ(hellos.back().slot_state, proto::SlotState::rolled_back);
  EXPECT_EQ(agent_->state(), DeviceState::idle);
}

// A crash during the self-test is not a failure by itself: the next trial boot confirms.
TEST_F(AgentTest, CrashDuringSelfTestGetsAnotherTrialBootAndConfirms) {
  SelfTestScript probe;
  cfg_.self_test_poll = &SelfTestScript::poll;
  cfg_.self_test_ctx = &probe;
  start();
  run_update();
  const std::size_t before = transport_.published.size();
  reboot();
  ASSERT_EQ(agent_->state(), DeviceState::confirming);
  probe.status = SelfTestStatus::passed;
  reboot();  // crash before the next poll
  EXPECT_EQ(running_version(), "1.1.0");
  EXPECT_EQ(flash_.counts().confirm, 1);
  expect_single_result(true, ReasonCode::ok, "1.1.0", before);
}

TEST_F(AgentTest, FailedSelfTestRejectsTheImageAtOnceEvenWithTrialBootsLeft) {
  cfg_.self_test = &failing_self_test;
  cfg_.max_trial_boots = 5;
  start();
  run_update();
  const std::size_t before = transport_.published.size();
  reboot();
  EXPECT_EQ(flash_.counts().reject, 1);
  EXPECT_EQ(flash_.counts().power_on, 3);  // trial boot, then straight back to the old image
  EXPECT_EQ(running_version(), "1.0.0");
  expect_single_result(false, ReasonCode::self_test_failed, "1.0.0", before);
  EXPECT_TRUE(events_of(EventType::result, before)[0].detail.empty());
}

TEST_F(AgentTest, SameVersionOfferedAfterUpdateIsAlreadyInstalledWithoutReboot) {
  start();
  run_update();
  reboot();
  expect_single_result(true, ReasonCode::ok, "1.1.0");
  const int begins = flash_.counts().begin, resets = flash_.counts().reset;
  const int power_ons = flash_.counts().power_on;
  OfferOptions opt;
  opt.deployment = "dep-again";
  const proto::Offer again = offer_for(image_, opt);
  const std::size_t from = transport_.published.size();
  send_offer(again);
  const auto evs = transport_.events(from);
  ASSERT_EQ(evs.size(), 1u);
  EXPECT_EQ(evs[0].type, EventType::decline);
  EXPECT_EQ(evs[0].reason, ReasonCode::already_installed);
  EXPECT_EQ(evs[0].deployment, "dep-again");
  EXPECT_EQ(flash_.counts().begin, begins);
  EXPECT_EQ(flash_.counts().reset, resets);
  EXPECT_EQ(flash_.counts().power_on, power_ons);
  EXPECT_FALSE(agent_->reset_requested());
  EXPECT_EQ(agent_->state(), DeviceState::idle);
  EXPECT_EQ(running_version(), "1.1.0");
}

// A port that can tell the SHA-256 of the running image (one that hashes its slot, or keeps
// the verified manifest's sha256 with the slot), over the fake flash.
class HashingFlash final : public FlashPort {
 public:
  explicit HashingFlash(FakeFlash& inner) : inner_(inner) {}
  PortStatus begin(const proto::Manifest& m, bool resume) override { return inner_.begin(m, resume); }
  PortStatus write(std::uint32_t offset, const std::uint8_t* data, std::size_t len) override {
    return inner_.write(offset, data, len);
  }
  PortStatus read(std::uint32_t offset, std::uint8_t* out, std::size_t len) override {
    return inner_.read(offset, out, len);
  }
  PortStatus sync() override { return inner_.sync(); }
  PortStatus finish(const proto::Manifest& m) override { return inner_.finish(m); }
  PortStatus abort() override { return inner_.abort(); }
  PortStatus activate(const proto::Manifest& m) override { return inner_.activate(m); }
  PortStatus activate_trial(const proto::Manifest& m, std::uint32_t boots) override {
    return inner_.activate_trial(m, boots);
  }
  PortStatus reject() override { return inner_.reject(); }
  PortStatus confirm() override { return inner_.confirm(); }
  void reset() override { inner_.reset(); }
  PortStatus read_state(ImageState& out) override {
    const PortStatus s = inner_.read_state(out);
    const auto& running = inner_.slot_data(inner_.running_slot());
    out.running_sha256.assign(sha256_hex(running.data(), running.size()).c_str());
    return s;
  }

 private:
  FakeFlash& inner_;
};

// PROTOCOL.md section 7, check 8: already_installed means the same version *and* the same
// SHA-256. A different image under the running version (a rebuild, or a running image that
// is not what its version claims) is installed when the port can tell the running hash.
TEST_F(AgentTest, SameVersionWithOtherBytesIsInstalledWhenThePortKnowsTheRunningHash) {
  HashingFlash hashing(flash_);
  port_ = &hashing;
  start();
  OfferOptions opt;
  opt.version = "1.0.0";  // the factory image's version, other bytes
  const proto::Offer offer = offer_for(image_, opt);
  send_offer(offer);
  const auto evs = transport_.events();
  ASSERT_FALSE(evs.empty());
  EXPECT_EQ(evs[0].type, EventType::accept) << "declined " << proto::reason_name(evs[0].reason);
  ChunkServer server(image_, offer.manifest.chunk_size, offer.manifest.image.c_str());
  serve(server);
  ASSERT_EQ(agent_->state(), DeviceState::rebooting);
  const std::size_t before_reboot = transport_.published.size();
  reboot();
  EXPECT_EQ(flash_.running_slot(), 'b');
  EXPECT_EQ(flash_.slot_data('b'), image_);
  expect_single_result(true, ReasonCode::ok, "1.0.0", before_reboot);

  // Now the same version and the same bytes: nothing to do.
  const int begins = flash_.counts().begin;
  opt.deployment = "dep-again";
  const std::size_t from = transport_.published.size();
  send_offer(offer_for(image_, opt));
  const auto again = transport_.events(from);
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].type, EventType::decline);
  EXPECT_EQ(again[0].reason, ReasonCode::already_installed);
  EXPECT_EQ(flash_.counts().begin, begins);
}

TEST_F(AgentTest, SameVersionAndSameBytesIsAlreadyInstalledWhenThePortKnowsTheRunningHash) {
  HashingFlash hashing(flash_);
  port_ = &hashing;
  start();
  const std::string factory = "factory image 1.0.0\n";  // what FakeFlash puts in slot a
  const std::vector<std::uint8_t> running(factory.begin(), factory.end());
  ASSERT_EQ(flash_.slot_data('a'), running);
  OfferOptions opt;
  opt.version = "1.0.0";
  opt.chunk_size = 256;
  expect_declined(offer_for(running, opt), ReasonCode::already_installed);
}

// A same-version image that fails its self-test: the device is back on the old image, which
// has the same version; only the hash tells the agent that the new one did not stay.
TEST_F(AgentTest, SameVersionImageThatFailsItsSelfTestIsReportedAsReverted) {
  HashingFlash hashing(flash_);
  port_ = &hashing;
  cfg_.self_test = &failing_self_test;
  start();
  OfferOptions opt;
  opt.version = "1.0.0";
  run_update(opt);
  ASSERT_EQ(agent_->state(), DeviceState::rebooting);
  const std::size_t before = transport_.published.size();
  reboot();
  EXPECT_EQ(flash_.running_slot(), 'a');
  expect_single_result(false, ReasonCode::self_test_failed, "1.0.0", before);
  EXPECT_EQ(flash_.boot_state().counter, 0u);
}

TEST_F(AgentTest, SecurityCounterIsRaisedOnlyWhenTheImageIsConfirmed) {
  start();
  OfferOptions opt;
  opt.counter = 7;
  run_update(opt);
  ASSERT_TRUE(agent_->reset_requested());
  EXPECT_EQ(flash_.boot_state().counter, 0u) << "raised before the image proved itself";
  reboot();
  EXPECT_EQ(flash_.boot_state().counter, 7u);
  const auto hellos = transport_.hellos();
  ASSERT_FALSE(hellos.empty());
  EXPECT_EQ(hellos.back().counter, 7u);
  // From now on an image signed with a lower counter is a downgrade.
  OfferOptions old;
  old.deployment = "dep-old";
  old.version = "1.0.5";
  old.counter = 6;
  const std::size_t from = transport_.published.size();
  send_offer(offer_for(image_, old));
  const auto evs = events_of(EventType::decline, from);
  ASSERT_EQ(evs.size(), 1u);
  EXPECT_EQ(evs[0].reason, ReasonCode::downgrade);
  // A rolled-back image never raises it.
  cfg_.self_test = &failing_self_test;
  OfferOptions next;
  next.deployment = "dep-next";
  next.version = "1.2.0";
  next.counter = 9;
  reboot();
  run_update(next);
  reboot();
  EXPECT_EQ(running_version(), "1.1.0");
  EXPECT_EQ(flash_.boot_state().counter, 7u);
}

// ------------------------------------------------------------- storage and flash faults

TEST_F(AgentTest, TornRecordIsDiscardedAndTheUpdateStartsOver) {
  start();
  const proto::Offer offer = offer_for(image_);
  send_offer(offer);
  ChunkServer server(image_, offer.manifest.chunk_size, offer.manifest.image.c_str());
  serve(server, {}, 50);
  ASSERT_EQ(decode_record(storage_.record).state, DeviceState::downloading);
  // Half of a newer record over the old one: the CRC no longer matches.
  auto torn = storage_.record;
  for (std::size_t i = torn.size() / 2; i < torn.size(); ++i) torn[i] ^= 0x5a;
  storage_.record = torn;
  forget_requests();
  agent_.reset();
  flash_.power_cut();
  reboot();
  EXPECT_EQ(agent_->stats().discarded_records, 1u);
  EXPECT_EQ(agent_->state(), DeviceState::idle);
  EXPECT_EQ(running_version(), "1.0.0");
  const auto hellos = transport_.hellos();
  ASSERT_FALSE(hellos.empty());
  EXPECT_FALSE(hellos.back().resume.present);
  // The controller offers the deployment again; it is downloaded from scratch and completes.
  send_offer(offer);
  ASSERT_EQ(agent_->state(), DeviceState::downloading);
  serve(server);
  ASSERT_TRUE(agent_->reset_requested());
  reboot();
  EXPECT_EQ(running_version(), "1.1.0");
  EXPECT_EQ(flash_.slot_data('b'), image_);
}

// The flash lost the partial image (slot erased) while the record kept its bitmap: begin()
// says not_found and the agent forgets those chunks instead of failing verification.
TEST_F(AgentTest, ResumeWithoutThePartialImageDownloadsEverythingAgain) {
  start();
  const proto::Offer offer = offer_for(image_);
  send_offer(offer);
  ChunkServer server(image_, offer.manifest.chunk_size, offer.manifest.image.c_str());
  serve(server, {}, 70);
  ASSERT_GT(decode_record(storage_.record).received_chunks, 0u);
  forget_requests();
  agent_.reset();
  // Something else (a factory tool, a previous abort) erased the slot.
  ASSERT_EQ(flash_.power_on(), PortStatus::ok);
  ASSERT_EQ(flash_.abort(), PortStatus::ok);  // no target after power-on: a no-op...
  FakeFlash wiped(1u << 20);
  wiped.power_on();
  flash_ = wiped;  // ...so start from a factory-fresh flash with the old record
  boot_and_connect();
  EXPECT_EQ(agent_->state(), DeviceState::downloading);
  EXPECT_EQ(agent_->persisted().received_chunks, 0u);
  serve(server);
  ASSERT_TRUE(agent_->reset_requested()) << proto::reason_name(agent_->last_reason());
  reboot();
  expect_single_result(true, ReasonCode::ok, "1.1.0");
  EXPECT_EQ(flash_.slot_data('b'), image_);
}

TEST_F(AgentTest, ReadOnlyStateStorageAbortsCleanlyAndReports) {
  start();
  storage_.fail_saves = true;
  storage_.fail_status = PortStatus::read_only;
  const proto::Offer offer = offer_for(image_);
  send_offer(offer);
  expect_single_result(false, ReasonCode::internal_error, "1.0.0");
  EXPECT_EQ(events_of(EventType::result)[0].detail, "state record could not be saved");
  EXPECT_EQ(agent_->state(), DeviceState::idle);
  EXPECT_EQ(flash_.counts().write, 0);
  EXPECT_EQ(flash_.counts().activate, 0);
  EXPECT_GT(agent_->stats().storage_failures, 0u);
  storage_.fail_saves = false;
  reboot();
  EXPECT_EQ(running_version(), "1.0.0");
  EXPECT_EQ(flash_.boot_state().writing, 0);
}

TEST_F(AgentTest, StorageFullMidDownloadAbortsWithNoSpace) {
  cfg_.checkpoint_chunks = 8;
  start();
  const proto::Offer offer = offer_for(image_);
  send_offer(offer);
  ChunkServer server(image_, offer.manifest.chunk_size, offer.manifest.image.c_str());
  serve(server, {}, 20);
  storage_.fail_saves = true;
  storage_.fail_status = PortStatus::no_space;
  serve(server);
  expect_single_result(false, ReasonCode::no_space, "1.0.0");
  EXPECT_EQ(flash_.counts().abort, 1);
  EXPECT_EQ(flash_.counts().activate, 0);
  EXPECT_EQ(agent_->state(), DeviceState::idle);
  storage_.fail_saves = false;
  reboot();
  EXPECT_EQ(running_version(), "1.0.0");
  EXPECT_EQ(flash_.slot_data('a'), std::vector<std::uint8_t>(
                                        std::begin("factory image 1.0.0\n"),
                                        std::end("factory image 1.0.0\n") - 1));
}

struct FlashFault {
  FakeFlash::FailOp op;
  PortStatus status;
  ReasonCode reason;
};

TEST_F(AgentTest, FailingFlashOperationsAbortCleanlyKeepTheOldImageAndReport) {
  const FlashFault faults[] = {
      {FakeFlash::FailOp::begin, PortStatus::no_space, ReasonCode::no_space},
      {FakeFlash::FailOp::begin, PortStatus::read_only, ReasonCode::flash_error},
      {FakeFlash::FailOp::sync, PortStatus::error, ReasonCode::flash_error},
      {FakeFlash::FailOp::finish, PortStatus::error, ReasonCode::flash_error},
      {FakeFlash::FailOp::activate, PortStatus::read_only, ReasonCode::flash_error},
  };
  int n = 0;
  for (const auto& f : faults) {
    SCOPED_TRACE(::testing::Message() << "fault " << n);
    flash_ = FakeFlash();
    storage_ = MemStorage();
    transport_ = ScriptedTransport();
    forget_requests();
    req_cursor_ = 0;
    start();
    flash_.fail_always(f.op, f.status);
    OfferOptions opt;
    opt.deployment = "dep-f" + std::to_string(n++);
    run_update(opt);
    expect_single_result(false, f.reason, "1.0.0");
    EXPECT_EQ(agent_->state(), DeviceState::idle);
    EXPECT_FALSE(agent_->reset_requested());
    EXPECT_EQ(flash_.boot_state().pending, 0);
    EXPECT_EQ(flash_.boot_state().writing, 0);
    flash_.fail_always(f.op, PortStatus::ok);
    reboot();
    EXPECT_EQ(running_version(), "1.0.0");
    EXPECT_EQ(flash_.running_slot(), 'a');
  }
}

TEST_F(AgentTest, FailingConfirmReportsFlashErrorOnceAndTheBootLoaderReverts) {
  start();
  run_update();
  flash_.fail_always(FakeFlash::FailOp::confirm, PortStatus::error);
  const std::size_t before = transport_.published.size();
  reboot();
  expect_single_result(false, ReasonCode::flash_error, "1.1.0", before);
  // The remaining trial boots try again (and fail again); the boot loader then returns to
  // the old image. The deployment is reported once.
  for (int i = 0; i < 3; ++i) reboot();
  EXPECT_EQ(running_version(), "1.0.0");
  EXPECT_EQ(events_of(EventType::result, before).size(), 1u);
  EXPECT_EQ(flash_.boot_state().counter, 0u);
}

// Flash wear: a save writes the record only as far as it is used (no bitmap when idle, the
// image's bitmap bytes while downloading), and events save it only every few sequence numbers.
TEST_F(AgentTest, RecordSavesAreSmallAndRare) {
  start();
  static const PersistedState layout;
  const std::size_t head = static_cast<std::size_t>(
      layout.received - reinterpret_cast<const std::uint8_t*>(&layout));
  const proto::Offer offer = offer_for(image_);
  send_offer(offer);
  ASSERT_TRUE(storage_.has_record);
  EXPECT_EQ(storage_.record.size(), head + (100 + 7) / 8);  // 100 chunks
  const int saves_before = storage_.saves;
  ChunkServer server(image_, offer.manifest.chunk_size, offer.manifest.image.c_str());
  serve(server);
  ASSERT_TRUE(agent_->reset_requested());
  const int during = storage_.saves - saves_before;
  // 100 chunks: 3 checkpoints (every 32), 4 state entries, ~20 progress and status events
  // that save only every 8th sequence number.
  EXPECT_LE(during, 8) << "saves during the download and install";
  reboot();
  expect_single_result(true, ReasonCode::ok, "1.1.0");
  EXPECT_EQ(storage_.record.size(), head);  // idle: no bitmap
  EXPECT_LT(head, sizeof(PersistedState) / 2);
  std::printf("record: %zu B idle, %zu B while downloading 100 chunks (struct %zu B); "
              "%d saves for a 100-chunk update\n",
              head, head + 13, sizeof(PersistedState), during);
}

}  // namespace
}  // namespace ota::agent::test

namespace ota::agent::test {
namespace {

// Broadcast (PROTOCOL.md 17): a listening agent subscribes (QoS 0) to its group's image topic
// for the download, says so in its requests, keeps every broadcast chunk of its image (asked for
// or not, in any order) and unsubscribes when the download is over.
TEST_F(AgentTest, BroadcastListenerKeepsEveryChunkOfItsImageAndUnsubscribesAtTheEnd) {
  cfg_.broadcast = true;
  start();
  const proto::Offer offer = offer_for(image_);
  send_offer(offer, proto::TopicKind::group_offer, "fleet");
  ASSERT_EQ(agent_->state(), DeviceState::downloading);
  const std::string image_topic = "ota/v1/grp/fleet/img/" + std::string(offer.manifest.image.c_str()) + "/chunk";
  ASSERT_FALSE(transport_.subscriptions.empty());
  EXPECT_EQ(transport_.subscriptions.back().first, image_topic);
  EXPECT_EQ(transport_.subscriptions.back().second, 0) << "frames come at most once (17)";
  auto reqs = take_requests();
  ASSERT_EQ(reqs.size(), 1u);
  EXPECT_EQ(std::string(reqs[0].bc.c_str()), "fleet");
  EXPECT_LT(reqs[0].count, 100u);  // the window: most chunks come without being asked for

  // Every chunk on the image topic with the broadcast flag, last first.
  ChunkServer server(image_, offer.manifest.chunk_size, offer.manifest.image.c_str());
  for (std::uint32_t i = server.chunk_count(); i-- > 0;) {
    ChunkServer::Frame f = server.frame(i);
    f.bytes[5] = proto::kFrameFlagBroadcast;
    agent_->on_message(image_topic.c_str(), f.bytes.data(), f.bytes.size());
  }
  EXPECT_EQ(agent_->stats().bad_frames, 0u);
  EXPECT_EQ(agent_->stats().broadcast_chunks, 100u);
  EXPECT_EQ(agent_->stats().duplicate_chunks, 0u);
  EXPECT_TRUE(agent_->reset_requested());  // verified and installed from broadcast alone
  ASSERT_EQ(transport_.unsubscriptions.size(), 1u);
  EXPECT_EQ(transport_.unsubscriptions[0], image_topic);
  reboot();
  expect_single_result(true, ReasonCode::ok, "1.1.0");
}

// An agent that does not do broadcast neither subscribes nor accepts the flag.
TEST_F(AgentTest, AgentWithoutBroadcastDropsBroadcastFrames) {
  start();  // cfg_.broadcast is false by default
  const proto::Offer offer = offer_for(image_);
  send_offer(offer, proto::TopicKind::group_offer, "fleet");
  for (const auto& s : transport_.subscriptions) EXPECT_EQ(s.first.find("/img/"), std::string::npos) << s.first;
  auto reqs = take_requests();
  ASSERT_EQ(reqs.size(), 1u);
  EXPECT_TRUE(reqs[0].bc.empty());
  ChunkServer server(image_, offer.manifest.chunk_size, offer.manifest.image.c_str());
  ChunkServer::Frame f = server.frame(0);
  f.bytes[5] = proto::kFrameFlagBroadcast;
  agent_->on_message(topic(proto::TopicKind::chunk).c_str(), f.bytes.data(), f.bytes.size());
  const std::string image_topic = "ota/v1/grp/fleet/img/" + std::string(offer.manifest.image.c_str()) + "/chunk";
  agent_->on_message(image_topic.c_str(), f.bytes.data(), f.bytes.size());
  EXPECT_EQ(agent_->stats().bad_frames, 1u);  // the one on its own topic; the other is ignored
  EXPECT_EQ(agent_->stats().chunks_received, 0u);
}

}  // namespace
}  // namespace ota::agent::test
