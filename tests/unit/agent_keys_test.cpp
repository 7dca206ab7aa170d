// Key roles, release signatures and key sets in the agent core (PROTOCOL.md 6.5, 6.6 and
// section 7 checks 2, 3, 3b): offers signed by online keys with a release signature, root-
// signed key sets with rotation and revocation, their persistence and the torn-record policy.
// Real OpenSSL keys generated per test; fakes stand for flash, network, clock and storage.
#include <gtest/gtest.h>

#include <deque>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "fakes.hpp"
#include "ota/agent/agent.hpp"
#include "ota/agent/linux/openssl_crypto.hpp"
#include "signer.hpp"

namespace ota::agent::test {
namespace {

using proto::DeviceState;
using proto::EventType;
using proto::KeyRole;
using proto::ReasonCode;

constexpr const char* kDevice = "dev-1";
constexpr std::size_t kImageSize = 40 * 1024;  // 40 chunks of 1 KiB

using Entries = std::vector<std::pair<const TestSigner*, KeyRole>>;

class KeysTest : public ::testing::Test {
 protected:
  KeysTest() : image_(random_image(kImageSize, 4321)) {
    cfg_.device_id = kDevice;
    cfg_.hw_model = "sim-board";
    cfg_.heartbeat_interval_ms = 0;
    provision({{&root_, KeyRole::root}, {&release_, KeyRole::release}, {&online_, KeyRole::online}});
  }

  void provision(const Entries& entries) {
    keys_.clear();
    for (const auto& [signer, role] : entries) keys_.push_back(signer->provisioned(role));
    cfg_.keys = keys_.data();
    cfg_.key_count = keys_.size();
  }

  // Power-on of a factory-fresh device, then connect.
  void start() {
    ASSERT_EQ(flash_.power_on(), PortStatus::ok);
    boot_and_connect();
  }

  // A new Agent over the same ports (flash, both records), as after a power cycle.
  void boot_and_connect() {
    for (int i = 0; i < 4; ++i) {
      agent_.reset();
      transport_.connected_ = false;
      agent_ = std::make_unique<Agent>(cfg_, flash_, transport_, clock_, storage_, key_storage_,
                                       crypto_);
      agent_->boot();
      if (!agent_->reset_requested()) break;
      ASSERT_EQ(flash_.power_on(), PortStatus::ok);
    }
    transport_.connected_ = true;
    agent_->on_connected();
  }

  void reboot() {
    agent_.reset();
    pending_.clear();
    req_cursor_ = transport_.published.size();
    ASSERT_EQ(flash_.power_on(), PortStatus::ok);
    boot_and_connect();
  }

  std::string topic(proto::TopicKind kind) const {
    char t[proto::kMaxTopicLen];
    EXPECT_GT(proto::make_topic(proto::kDefaultPrefix, kind, kDevice, t, sizeof t), 0u);
    return t;
  }

  proto::Offer offer(const TestSigner& signer, const std::string& deployment,
                     const TestSigner* release = nullptr) {
    OfferOptions opt;
    opt.deployment = deployment;
    opt.release = release;
    return make_offer(signer, image_, opt);
  }

  void send_offer(const proto::Offer& o) {
    const auto payload = encode(o);
    agent_->on_message(topic(proto::TopicKind::offer).c_str(), payload.data(), payload.size());
  }

  void send_keys(const proto::KeySet& set) {
    const auto payload = encode(set);
    agent_->on_message(topic(proto::TopicKind::keys).c_str(), payload.data(), payload.size());
  }

  // Answers every chunk request until none is left or `max_frames` were delivered.
  std::size_t serve(const proto::Offer& o, std::size_t max_frames = static_cast<std::size_t>(-1)) {
    ChunkServer server(image_, o.manifest.chunk_size, o.manifest.image.c_str());
    std::size_t sent = 0;
    while (sent < max_frames) {
      for (const auto& r : transport_.chunk_requests(req_cursor_)) {
        for (auto& f : server.frames_for(r)) pending_.push_back(std::move(f));
      }
      req_cursor_ = transport_.published.size();
      if (pending_.empty()) break;
      const ChunkServer::Frame f = pending_.front();
      pending_.pop_front();
      agent_->on_message(topic(proto::TopicKind::chunk).c_str(), f.bytes.data(), f.bytes.size());
      ++sent;
    }
    return sent;
  }

  // The answer (accept or decline) to the offer just sent: ok for an accept.
  ReasonCode answer(std::size_t from) const {
    for (const auto& e : transport_.events(from)) {
      if (e.type == EventType::accept) return ReasonCode::ok;
      if (e.type == EventType::decline) return e.reason;
    }
    ADD_FAILURE() << "no answer to the offer";
    return ReasonCode::internal_error;
  }

  ReasonCode offer_answer(const proto::Offer& o) {
    const std::size_t mark = transport_.published.size();
    send_offer(o);
    return answer(mark);
  }

  std::vector<proto::Event> results(std::size_t from = 0) const {
    std::vector<proto::Event> out;
    for (const auto& e : transport_.events(from)) {
      if (e.type == EventType::result) out.push_back(e);
    }
    return out;
  }

  // `keys` of the last hello published since `from` (-1: none).
  long long hello_keys(std::size_t from = 0) const {
    const auto h = transport_.hellos(from);
    return h.empty() ? -1 : static_cast<long long>(h.back().keys);
  }

  // Installs `o` completely (accept, transfer, trial boot, confirm).
  void install(const proto::Offer& o) {
    ASSERT_EQ(offer_answer(o), ReasonCode::ok);
    serve(o);
    ASSERT_EQ(agent_->state(), DeviceState::rebooting);
    reboot();
    const auto r = results();
    ASSERT_FALSE(r.empty());
    EXPECT_TRUE(r.back().success) << proto::reason_name(r.back().reason);
    EXPECT_EQ(r.back().deployment, o.deployment);
  }

  TestSigner root_, release_, online_;                     // provisioned
  TestSigner release2_, online2_, new_root_, stranger_;  // not provisioned
  linux_port::OpensslCrypto crypto_;
  std::vector<ProvisionedKey> keys_;
  FakeFlash flash_;
  ScriptedTransport transport_;
  FakeClock clock_;
  MemStorage storage_;
  MemStorage key_storage_;
  AgentConfig cfg_;
  std::unique_ptr<Agent> agent_;
  std::vector<std::uint8_t> image_;
  std::size_t req_cursor_ = 0;
  std::deque<ChunkServer::Frame> pending_;
};

// ------------------------------------------------------------------------ offers (7: 2, 3, 3b)

TEST_F(KeysTest, OnlineSignedOfferWithReleaseSignatureIsInstalled) {
  start();
  EXPECT_EQ(hello_keys(), 0);  // provisioned keys; `keys` not even written
  install(offer(online_, "dep-online", &release_));
  EXPECT_EQ(flash_.version_of(flash_.running_slot()), "1.1.0");
  EXPECT_EQ(key_storage_.saves, 0) << "the provisioned keys are never written";
}

TEST_F(KeysTest, OnlineKeyWithoutReleaseSignatureIsBadSignature) {
  start();
  EXPECT_EQ(offer_answer(offer(online_, "dep-1")), ReasonCode::bad_signature);
  EXPECT_EQ(flash_.counts().begin, 0);
}

TEST_F(KeysTest, UnknownReleaseKeyIsUnknownKey) {
  start();
  // A release signature by a key the device never trusted...
  EXPECT_EQ(offer_answer(offer(online_, "dep-1", &release2_)), ReasonCode::unknown_key);
  // ...or by a key it trusts in another role (an online key cannot release).
  EXPECT_EQ(offer_answer(offer(online_, "dep-2", &online_)), ReasonCode::unknown_key);
  EXPECT_EQ(offer_answer(offer(release_, "dep-3", &root_)), ReasonCode::unknown_key);
  EXPECT_EQ(flash_.counts().begin, 0);
}

TEST_F(KeysTest, CorruptedReleaseSignatureIsBadSignature) {
  start();
  proto::Offer o = offer(online_, "dep-1", &release_);
  proto::Manifest& m = o.manifest;
  m.release_sig.data[10] = m.release_sig.data[10] == '0' ? '1' : '0';
  online_.sign(m);  // the manifest signature itself is fine
  EXPECT_EQ(offer_answer(o), ReasonCode::bad_signature);
  // A release signature over other release members (here: another version) does not hold
  // for this manifest either.
  proto::Offer other = offer(online_, "dep-2", &release_);
  other.manifest.version.assign("1.2.0");
  online_.sign(other.manifest);
  EXPECT_EQ(offer_answer(other), ReasonCode::bad_signature);
  EXPECT_EQ(flash_.counts().begin, 0);
}

TEST_F(KeysTest, ReleaseKeyAloneStillWorks) {
  // Single-key mode: a device with one release key and no root, manifests signed by it.
  provision({{&release_, KeyRole::release}});
  start();
  install(offer(release_, "dep-single"));
}

TEST_F(KeysTest, ReleaseSignedManifestWithBadReleaseSignatureIsBadSignature) {
  start();
  proto::Offer o = offer(release_, "dep-1", &release_);
  o.manifest.release_sig.data[0] = o.manifest.release_sig.data[0] == 'f' ? 'e' : 'f';
  release_.sign(o.manifest);
  EXPECT_EQ(offer_answer(o), ReasonCode::bad_signature);
  // With a valid one it is accepted.
  EXPECT_EQ(offer_answer(offer(release_, "dep-2", &release_)), ReasonCode::ok);
}

TEST_F(KeysTest, ChecksRunInProtocolOrder) {
  start();
  // 2 before 3: an unknown key with a broken signature is unknown_key.
  proto::Offer o = offer(stranger_, "dep-a");
  o.manifest.sig.data[0] = o.manifest.sig.data[0] == 'a' ? 'b' : 'a';
  EXPECT_EQ(offer_answer(o), ReasonCode::unknown_key);
  // 3 before 3b: a tampered manifest whose release key is unknown is bad_signature.
  proto::Offer t = offer(online_, "dep-b", &stranger_);
  t.manifest.counter += 1;
  EXPECT_EQ(offer_answer(t), ReasonCode::bad_signature);
  // 3b before 3a: a release key problem comes before the binding.
  proto::Offer u = offer(online_, "dep-c", &stranger_);
  u.manifest.device.assign("dev-2");
  online_.sign(u.manifest);
  EXPECT_EQ(offer_answer(u), ReasonCode::unknown_key);
  // The root key signs key sets, never manifests.
  EXPECT_EQ(offer_answer(offer(root_, "dep-d")), ReasonCode::unknown_key);
}

// ------------------------------------------------------------------------ key sets (6.6)

TEST_F(KeysTest, KeySetIsAppliedPersistedAndRevokes) {
  start();
  const std::size_t mark = transport_.published.size();
  send_keys(make_keyset(1, {{&release2_, KeyRole::release}, {&online_, KeyRole::online}}, root_));
  EXPECT_EQ(hello_keys(mark), 1);
  EXPECT_EQ(agent_->stats().keysets_applied, 1u);
  EXPECT_EQ(agent_->trusted_keys().version, 1u);
  EXPECT_EQ(key_storage_.saves, 1);
  // The revoked release key signs nothing the device accepts, alone or as release key.
  EXPECT_EQ(offer_answer(offer(release_, "dep-1")), ReasonCode::unknown_key);
  EXPECT_EQ(offer_answer(offer(online_, "dep-2", &release_)), ReasonCode::unknown_key);

  // Power cycle: the set survives in the key record.
  reboot();
  EXPECT_EQ(hello_keys(req_cursor_), 1);
  EXPECT_EQ(agent_->trusted_keys().version, 1u);
  EXPECT_FALSE(agent_->keys_lost());
  EXPECT_EQ(offer_answer(offer(release_, "dep-3")), ReasonCode::unknown_key);
  install(offer(online_, "dep-4", &release2_));
}

TEST_F(KeysTest, RevokedOnlineKeyIsUnknownKey) {
  start();
  send_keys(make_keyset(1, {{&release_, KeyRole::release}, {&online2_, KeyRole::online}}, root_));
  EXPECT_EQ(offer_answer(offer(online_, "dep-1", &release_)), ReasonCode::unknown_key);
  EXPECT_EQ(offer_answer(offer(online2_, "dep-2", &release_)), ReasonCode::ok);
}

TEST_F(KeysTest, OlderOrSameVersionIsIgnored) {
  start();
  const auto v1 = make_keyset(1, {{&release_, KeyRole::release}}, root_);
  send_keys(make_keyset(2, {{&release2_, KeyRole::release}}, root_));
  ASSERT_EQ(agent_->trusted_keys().version, 2u);
  std::size_t mark = transport_.published.size();
  send_keys(v1);  // replay of an older set that still lists release_
  EXPECT_EQ(hello_keys(mark), 2) << "a refusal republishes the hello with the version held";
  EXPECT_EQ(agent_->stats().keysets_refused, 1u);
  EXPECT_EQ(offer_answer(offer(release_, "dep-1")), ReasonCode::unknown_key);
  mark = transport_.published.size();
  send_keys(make_keyset(2, {{&release_, KeyRole::release}}, root_));  // same version
  EXPECT_EQ(hello_keys(mark), 2);
  EXPECT_EQ(agent_->stats().keysets_refused, 2u);
  EXPECT_EQ(key_storage_.saves, 1);
}

TEST_F(KeysTest, SetSignedByAnotherKeyIsRefused) {
  start();
  for (const TestSigner* signer : {&release_, &online_, &stranger_}) {
    const std::size_t mark = transport_.published.size();
    send_keys(make_keyset(1, {{&release2_, KeyRole::release}}, *signer));
    EXPECT_EQ(hello_keys(mark), 0);
  }
  // Named as the root but signed by another key.
  proto::KeySet forged = make_keyset(1, {{&release2_, KeyRole::release}}, stranger_);
  forged.key.assign(root_.key_id().c_str());
  send_keys(forged);
  EXPECT_EQ(agent_->stats().keysets_refused, 4u);
  EXPECT_EQ(agent_->trusted_keys().version, 0u);
  EXPECT_EQ(key_storage_.saves, 0);
  EXPECT_EQ(offer_answer(offer(release_, "dep-1")), ReasonCode::ok);
}

TEST_F(KeysTest, IdThatIsNotThePubsIsRefused) {
  start();
  proto::KeySet set;
  set.version = 1;
  set.keys[0] = release2_.entry(KeyRole::release);
  set.keys[0].id.assign(release_.key_id().c_str());  // an id the device knows, another key
  set.key_count = 1;
  root_.sign_keyset(set);
  const std::size_t mark = transport_.published.size();
  send_keys(set);
  EXPECT_EQ(hello_keys(mark), 0);
  EXPECT_EQ(agent_->stats().keysets_refused, 1u);
  EXPECT_EQ(key_storage_.saves, 0);
}

TEST_F(KeysTest, MalformedSetIsRefusedAndHelloRepublished) {
  start();
  const std::string junk = R"({"v":1,"type":"keys","version":1,"keys":[]})";
  const std::size_t mark = transport_.published.size();
  agent_->on_message(topic(proto::TopicKind::keys).c_str(),
                     reinterpret_cast<const std::uint8_t*>(junk.data()), junk.size());
  EXPECT_EQ(hello_keys(mark), 0);
  EXPECT_EQ(agent_->stats().keysets_refused, 1u);
}

TEST_F(KeysTest, MoreKeysThanTheDeviceHoldsIsRefused) {
  start();
  TestSigner a, b, c, d, e;
  send_keys(make_keyset(1, {{&a, KeyRole::release}, {&b, KeyRole::release}, {&c, KeyRole::online},
                            {&d, KeyRole::online}, {&e, KeyRole::online}},
                        root_));
  EXPECT_EQ(agent_->trusted_keys().version, kMaxTrustedKeys >= 5 ? 1u : 0u);
}

TEST_F(KeysTest, RootRotation) {
  start();
  send_keys(make_keyset(1, {{&release_, KeyRole::release}, {&new_root_, KeyRole::root}}, root_));
  ASSERT_EQ(agent_->trusted_keys().version, 1u);
  EXPECT_EQ(agent_->trusted_keys().root.id, new_root_.key_id().c_str());
  // The old root can sign nothing any more.
  send_keys(make_keyset(2, {{&release2_, KeyRole::release}}, root_));
  EXPECT_EQ(agent_->trusted_keys().version, 1u);
  EXPECT_EQ(agent_->stats().keysets_refused, 1u);
  // The new one can, also after a power cycle.
  reboot();
  EXPECT_EQ(agent_->trusted_keys().root.id, new_root_.key_id().c_str());
  send_keys(make_keyset(2, {{&release2_, KeyRole::release}}, new_root_));
  EXPECT_EQ(agent_->trusted_keys().version, 2u);
  // A set that names no root keeps the current one.
  send_keys(make_keyset(3, {{&release_, KeyRole::release}}, new_root_));
  EXPECT_EQ(agent_->trusted_keys().version, 3u);
  EXPECT_EQ(agent_->trusted_keys().root.id, new_root_.key_id().c_str());
}

TEST_F(KeysTest, DeviceWithoutRootIgnoresKeysMessages) {
  provision({{&release_, KeyRole::release}});
  start();
  const std::size_t mark = transport_.published.size();
  send_keys(make_keyset(1, {{&release2_, KeyRole::release}}, root_));
  EXPECT_EQ(transport_.published.size(), mark) << "ignored: not even a hello";
  EXPECT_EQ(agent_->trusted_keys().version, 0u);
  EXPECT_EQ(offer_answer(offer(release_, "dep-1")), ReasonCode::ok);
}

TEST_F(KeysTest, SetThatCannotBeStoredIsNotUsed) {
  start();
  key_storage_.fail_saves = true;
  const std::size_t mark = transport_.published.size();
  send_keys(make_keyset(1, {{&release2_, KeyRole::release}}, root_));
  EXPECT_EQ(hello_keys(mark), 0);
  EXPECT_EQ(agent_->trusted_keys().version, 0u);
  EXPECT_EQ(offer_answer(offer(release_, "dep-1")), ReasonCode::ok);
  key_storage_.fail_saves = false;
}

// ------------------------------------------------------------------------ downloads in progress

TEST_F(KeysTest, DownloadStoppedWhenItsKeyIsRevoked) {
  start();
  const proto::Offer o = offer(release_, "dep-1");
  ASSERT_EQ(offer_answer(o), ReasonCode::ok);
  serve(o, 10);
  ASSERT_EQ(agent_->state(), DeviceState::downloading);
  const std::size_t mark = transport_.published.size();
  send_keys(make_keyset(1, {{&release2_, KeyRole::release}}, root_));
  EXPECT_EQ(agent_->state(), DeviceState::idle);
  const auto r = results(mark);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_FALSE(r[0].success);
  EXPECT_EQ(r[0].reason, ReasonCode::unknown_key);
  EXPECT_EQ(r[0].deployment, "dep-1");
  EXPECT_EQ(r[0].version, "1.0.0");
  EXPECT_EQ(flash_.counts().abort, 1);
  EXPECT_EQ(hello_keys(mark), 1);
  EXPECT_FALSE(transport_.hellos(mark).back().resume.present);
  // Late chunks change nothing; the answer stays the final one.
  serve(o);
  EXPECT_EQ(flash_.counts().activate, 0);
  send_offer(o);  // asked again: the same final answer, no new accept
  EXPECT_EQ(results(mark).size(), 2u);
  EXPECT_EQ(results(mark).back().seq, r[0].seq);
  EXPECT_EQ(flash_.counts().begin, 1);
}

TEST_F(KeysTest, DownloadStoppedWhenItsReleaseKeyIsRevoked) {
  start();
  const proto::Offer o = offer(online_, "dep-1", &release_);
  ASSERT_EQ(offer_answer(o), ReasonCode::ok);
  serve(o, 5);
  const std::size_t mark = transport_.published.size();
  send_keys(make_keyset(1, {{&release2_, KeyRole::release}, {&online_, KeyRole::online}}, root_));
  const auto r = results(mark);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].reason, ReasonCode::unknown_key);
  EXPECT_EQ(agent_->state(), DeviceState::idle);
}

TEST_F(KeysTest, DownloadContinuesWhenItsKeysStayTrusted) {
  start();
  const proto::Offer o = offer(online_, "dep-1", &release_);
  ASSERT_EQ(offer_answer(o), ReasonCode::ok);
  serve(o, 5);
  send_keys(make_keyset(1, {{&release_, KeyRole::release}, {&online_, KeyRole::online},
                            {&release2_, KeyRole::release}},
                        root_));
  ASSERT_EQ(agent_->trusted_keys().version, 1u);
  EXPECT_EQ(agent_->state(), DeviceState::downloading);
  serve(o);
  ASSERT_EQ(agent_->state(), DeviceState::rebooting);
  reboot();
  ASSERT_FALSE(results().empty());
  EXPECT_TRUE(results().back().success);
}

TEST_F(KeysTest, ActivatedImageFinishesItsTrialAfterRevocation) {
  start();
  const proto::Offer o = offer(release_, "dep-1");
  ASSERT_EQ(offer_answer(o), ReasonCode::ok);
  serve(o);
  ASSERT_EQ(agent_->state(), DeviceState::rebooting);
  send_keys(make_keyset(1, {{&release2_, KeyRole::release}}, root_));
  EXPECT_EQ(agent_->trusted_keys().version, 1u);
  EXPECT_TRUE(results().empty());
  reboot();
  ASSERT_EQ(results().size(), 1u);
  EXPECT_TRUE(results()[0].success);
}

// The key record was stored but the power went before the state record said the download
// was stopped: the next boot stops it.
TEST_F(KeysTest, RevocationStoredJustBeforeAPowerCutStopsTheDownloadAtBoot) {
  start();
  const proto::Offer o = offer(release_, "dep-1");
  ASSERT_EQ(offer_answer(o), ReasonCode::ok);
  serve(o, 8);
  storage_.fail_saves = true;  // from here on only the key record is written
  send_keys(make_keyset(1, {{&release2_, KeyRole::release}}, root_));
  storage_.fail_saves = false;
  flash_.power_cut();
  const std::size_t mark = transport_.published.size();
  reboot();
  EXPECT_EQ(agent_->state(), DeviceState::idle);
  const auto r = results(mark);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].reason, ReasonCode::unknown_key);
  EXPECT_EQ(hello_keys(mark), 1);
}

// ------------------------------------------------------------------------ torn key records

TEST_F(KeysTest, TornKeyRecordOfANeverChangedSetFallsBackToTheProvisionedKeys) {
  key_storage_.has_record = true;
  key_storage_.record.assign(100, 0x5a);  // torn or foreign; no set was ever applied
  start();
  EXPECT_EQ(agent_->stats().discarded_key_records, 1u);
  EXPECT_FALSE(agent_->keys_lost());
  EXPECT_EQ(agent_->trusted_keys().version, 0u);
  EXPECT_EQ(offer_answer(offer(release_, "dep-1")), ReasonCode::ok);
}

TEST_F(KeysTest, TornKeyRecordOfAnAppliedSetFailsClosedUntilTheSetComesAgain) {
  start();
  const auto v1 = make_keyset(1, {{&release2_, KeyRole::release}}, root_);
  send_keys(v1);
  ASSERT_EQ(agent_->trusted_keys().version, 1u);
  // The Storage port breaks its promise: half the record is gone.
  key_storage_.record.resize(key_storage_.record.size() / 2);
  const std::size_t mark = transport_.published.size();
  reboot();
  EXPECT_TRUE(agent_->keys_lost());
  EXPECT_EQ(agent_->stats().discarded_key_records, 1u);
  EXPECT_EQ(hello_keys(mark), 0) << "asks the controller for its newest set";
  // Neither the revoked provisioned key nor the key of the lost set is trusted.
  EXPECT_EQ(offer_answer(offer(release_, "dep-1")), ReasonCode::unknown_key);
  EXPECT_EQ(offer_answer(offer(release2_, "dep-2")), ReasonCode::unknown_key);
  // Only the root signs; the lost set itself (by the provisioned root) restores the keys.
  send_keys(make_keyset(1, {{&release_, KeyRole::release}}, stranger_));
  EXPECT_TRUE(agent_->keys_lost());
  send_keys(v1);
  EXPECT_FALSE(agent_->keys_lost());
  EXPECT_EQ(agent_->trusted_keys().version, 1u);
  EXPECT_EQ(hello_keys(), 1);
  EXPECT_EQ(offer_answer(offer(release_, "dep-3")), ReasonCode::unknown_key);
  EXPECT_EQ(offer_answer(offer(release2_, "dep-4")), ReasonCode::ok);
}

TEST_F(KeysTest, LostKeyRecordAfterRootRotationNeedsReprovisioning) {
  start();
  send_keys(make_keyset(1, {{&release2_, KeyRole::release}, {&new_root_, KeyRole::root}}, root_));
  ASSERT_EQ(agent_->trusted_keys().version, 1u);
  ASSERT_EQ(key_storage_.erase(), PortStatus::ok);
  reboot();
  EXPECT_TRUE(agent_->keys_lost());
  // The provisioned root was rotated away: it may no longer sign; nor can the new one be
  // known without its record.
  const std::size_t mark = transport_.published.size();
  send_keys(make_keyset(2, {{&release2_, KeyRole::release}}, root_));
  send_keys(make_keyset(2, {{&release2_, KeyRole::release}}, new_root_));
  EXPECT_TRUE(agent_->keys_lost());
  EXPECT_EQ(transport_.published.size(), mark) << "no root: keys messages are ignored";
  EXPECT_EQ(offer_answer(offer(release2_, "dep-1")), ReasonCode::unknown_key);
}

TEST_F(KeysTest, RolledBackKeyRecordIsTreatedAsLost) {
  start();
  send_keys(make_keyset(1, {{&release_, KeyRole::release}}, root_));
  const auto v1_record = key_storage_.record;
  send_keys(make_keyset(2, {{&release2_, KeyRole::release}}, root_));
  ASSERT_EQ(agent_->trusted_keys().version, 2u);
  key_storage_.record = v1_record;  // valid, but older than the set the device applied
  reboot();
  EXPECT_TRUE(agent_->keys_lost());
  EXPECT_EQ(offer_answer(offer(release_, "dep-1")), ReasonCode::unknown_key);
  send_keys(make_keyset(1, {{&release_, KeyRole::release}}, root_));  // below the applied one
  EXPECT_TRUE(agent_->keys_lost());
  send_keys(make_keyset(2, {{&release2_, KeyRole::release}}, root_));
  EXPECT_FALSE(agent_->keys_lost());
  EXPECT_EQ(offer_answer(offer(release2_, "dep-2")), ReasonCode::ok);
}

// Both records gone (a factory reset): the device is back on its provisioned keys.
TEST_F(KeysTest, BothRecordsLostLooksLikeAFreshDevice) {
  start();
  send_keys(make_keyset(1, {{&release2_, KeyRole::release}}, root_));
  ASSERT_EQ(key_storage_.erase(), PortStatus::ok);
  ASSERT_EQ(storage_.erase(), PortStatus::ok);
  reboot();
  EXPECT_FALSE(agent_->keys_lost());
  EXPECT_EQ(agent_->trusted_keys().version, 0u);
  EXPECT_EQ(offer_answer(offer(release_, "dep-1")), ReasonCode::ok);
}

}  // namespace
}  // namespace ota::agent::test
