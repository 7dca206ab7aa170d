// Linux ports without network: file-backed A/B flash, file storage, OpenSSL crypto.
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <iterator>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "fakes.hpp"
#include "ota/agent/agent.hpp"
#include "ota/agent/linux/atomic_file.hpp"
#include "ota/agent/linux/file_flash.hpp"
#include "ota/agent/linux/file_storage.hpp"
#include "ota/agent/linux/mosquitto_transport.hpp"
#include "ota/agent/linux/openssl_crypto.hpp"
#include "ota/proto/frame.hpp"
#include "signer.hpp"

namespace ota::agent::test {
namespace {

using linux_port::FileFlash;
using linux_port::FileFlashConfig;
using linux_port::FileStorage;
using linux_port::OpensslCrypto;

proto::Manifest manifest_for(const std::vector<std::uint8_t>& image, const char* version,
                             std::uint32_t counter) {
  proto::Manifest m;
  const std::string sha = sha256_hex(image.data(), image.size());
  m.image.assign(sha.c_str(), 16);
  m.version.assign(version);
  m.hw[0].assign("sim-board");
  m.hw_count = 1;
  m.size = image.size();
  m.sha256.assign(sha.c_str());
  m.chunk_size = 1024;
  m.counter = counter;
  m.expires = 1'900'000'000;
  return m;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

class FileFlashTest : public ::testing::Test {
 protected:
  FileFlashConfig config() const {
    FileFlashConfig c;
    c.dir = dir_.path() + "/flash";
    c.slot_capacity = 1u << 20;
    c.durable = false;
    return c;
  }
  ImageState state_of(FileFlash& f) {
    ImageState s;
    EXPECT_EQ(f.read_state(s), PortStatus::ok);
    return s;
  }
  // Writes and finishes `image` into the inactive slot of a freshly powered flash.
  void install(FileFlash& f, const std::vector<std::uint8_t>& image, const proto::Manifest& m) {
    ASSERT_EQ(f.begin(m, false), PortStatus::ok);
    for (std::size_t off = 0; off < image.size(); off += 1024) {
      const std::size_t n = std::min<std::size_t>(1024, image.size() - off);
      ASSERT_EQ(f.write(static_cast<std::uint32_t>(off), image.data() + off, n), PortStatus::ok);
    }
    ASSERT_EQ(f.sync(), PortStatus::ok);
    ASSERT_EQ(f.finish(m), PortStatus::ok);
  }

  TempDir dir_;
  std::vector<std::uint8_t> image_ = random_image(10 * 1024 + 77, 3);
};

TEST_F(FileFlashTest, FactoryFreshDeviceRunsInitialVersion) {
  FileFlash f(config());
  ASSERT_EQ(f.power_on(), PortStatus::ok);
  const ImageState s = state_of(f);
  EXPECT_EQ(s.running_version, "1.0.0");
  EXPECT_EQ(s.running_slot, 'a');
  EXPECT_EQ(s.slot_state, proto::SlotState::confirmed);
  EXPECT_EQ(s.security_counter, 0u);
  EXPECT_EQ(s.free_bytes, 1u << 20);
  EXPECT_TRUE(s.previous_version.empty());
  EXPECT_TRUE(std::filesystem::exists(f.slot_path('a')));
  EXPECT_EQ(read_file(f.slot_path('a')), "factory image 1.0.0\n");
}

// The port reports the SHA-256 of the image it runs (from the verified manifest kept with
// the slot), so a same-version image with other bytes is not taken for the running one.
TEST_F(FileFlashTest, ReportsTheRunningImagesSha256) {
  const proto::Manifest m = manifest_for(image_, "1.1.0", 3);
  {
    FileFlash f(config());
    ASSERT_EQ(f.power_on(), PortStatus::ok);
    EXPECT_TRUE(state_of(f).running_sha256.empty()) << "the factory image's hash is unknown";
    install(f, image_, m);
    ASSERT_EQ(f.activate(m), PortStatus::ok);
  }
  {
    FileFlash f(config());  // trial boot of the new image, then confirmed
    ASSERT_EQ(f.power_on(), PortStatus::ok);
    EXPECT_EQ(state_of(f).running_sha256, m.sha256.c_str());
    ASSERT_EQ(f.confirm(), PortStatus::ok);
  }
  FileFlash f(config());
  ASSERT_EQ(f.power_on(), PortStatus::ok);
  EXPECT_EQ(state_of(f).running_sha256, m.sha256.c_str());
  // Starting to overwrite the other slot forgets that slot's hash, never the running one's.
  const auto other = random_image(3000, 9);
  ASSERT_EQ(f.begin(manifest_for(other, "1.2.0", 3), false), PortStatus::ok);
  EXPECT_EQ(state_of(f).running_sha256, m.sha256.c_str());
}

TEST_F(FileFlashTest, TrialBootThenRevertWithoutConfirm) {
  const proto::Manifest m = manifest_for(image_, "1.1.0", 3);
  {
    FileFlash f(config());
    ASSERT_EQ(f.power_on(), PortStatus::ok);
    install(f, image_, m);
    ASSERT_EQ(f.activate(m), PortStatus::ok);
    f.reset();
    EXPECT_TRUE(f.reset_requested());
  }
  {
    FileFlash f(config());  // trial boot
    ASSERT_EQ(f.power_on(), PortStatus::ok);
    const ImageState s = state_of(f);
    EXPECT_EQ(s.running_version, "1.1.0");
    EXPECT_EQ(s.running_slot, 'b');
    EXPECT_EQ(s.slot_state, proto::SlotState::pending);
    EXPECT_EQ(s.previous_version, "1.0.0");
    EXPECT_EQ(s.security_counter, 0u);
    const std::string b = read_file(f.slot_path('b'));
    EXPECT_EQ(std::vector<std::uint8_t>(b.begin(), b.end()), image_);
  }
  {
    FileFlash f(config());  // booted once on trial, never confirmed: revert
    ASSERT_EQ(f.power_on(), PortStatus::ok);
    const ImageState s = state_of(f);
    EXPECT_EQ(s.running_version, "1.0.0");
    EXPECT_EQ(s.running_slot, 'a');
    EXPECT_EQ(s.slot_state, proto::SlotState::rolled_back);
    EXPECT_EQ(s.security_counter, 0u);
  }
  {
    FileFlash f(config());  // and it stays reverted
    ASSERT_EQ(f.power_on(), PortStatus::ok);
    EXPECT_EQ(state_of(f).running_version, "1.0.0");
  }
}

TEST_F(FileFlashTest, ConfirmMakesTrialPermanentAndRaisesCounter) {
  const proto::Manifest m = manifest_for(image_, "1.1.0", 3);
  {
    FileFlash f(config());
    ASSERT_EQ(f.power_on(), PortStatus::ok);
    install(f, image_, m);
    ASSERT_EQ(f.activate(m), PortStatus::ok);
  }
  {
    FileFlash f(config());
    ASSERT_EQ(f.power_on(), PortStatus::ok);
    EXPECT_EQ(state_of(f).slot_state, proto::SlotState::pending);
    ASSERT_EQ(f.confirm(), PortStatus::ok);
    const ImageState s = state_of(f);
    EXPECT_EQ(s.slot_state, proto::SlotState::confirmed);
    EXPECT_EQ(s.security_counter, 3u);
  }
  for (int i = 0; i < 2; ++i) {
    FileFlash f(config());
    ASSERT_EQ(f.power_on(), PortStatus::ok);
    const ImageState s = state_of(f);
    EXPECT_EQ(s.running_version, "1.1.0");
    EXPECT_EQ(s.running_slot, 'b');
    EXPECT_EQ(s.slot_state, proto::SlotState::confirmed);
    EXPECT_EQ(s.security_counter, 3u);
  }
}

TEST_F(FileFlashTest, ActivateRefusesUnfinishedSlot) {
  const proto::Manifest m = manifest_for(image_, "1.1.0", 1);
  FileFlash f(config());
  ASSERT_EQ(f.power_on(), PortStatus::ok);
  ASSERT_EQ(f.begin(m, false), PortStatus::ok);
  ASSERT_EQ(f.write(0, image_.data(), 1024), PortStatus::ok);
  EXPECT_EQ(f.activate(m), PortStatus::error);
  // Abort drops the partial image; still nothing to activate.
  ASSERT_EQ(f.abort(), PortStatus::ok);
  EXPECT_EQ(f.activate(m), PortStatus::error);
  FileFlash g(config());
  ASSERT_EQ(g.power_on(), PortStatus::ok);
  EXPECT_EQ(state_of(g).running_version, "1.0.0");
  EXPECT_EQ(state_of(g).slot_state, proto::SlotState::confirmed);
}

TEST_F(FileFlashTest, RejectsOutOfBoundsWriteAndOversizedImage) {
  const proto::Manifest m = manifest_for(image_, "1.1.0", 1);
  FileFlash f(config());
  ASSERT_EQ(f.power_on(), PortStatus::ok);
  ASSERT_EQ(f.begin(m, false), PortStatus::ok);
  EXPECT_EQ(f.write(static_cast<std::uint32_t>(image_.size() - 10), image_.data(), 11),
            PortStatus::error);
  proto::Manifest big = m;
  big.size = (1u << 20) + 1;
  EXPECT_EQ(f.begin(big, false), PortStatus::no_space);
}

TEST_F(FileFlashTest, ResumedBeginKeepsPartialImage) {
  const proto::Manifest m = manifest_for(image_, "1.1.0", 1);
  {
    FileFlash f(config());
    ASSERT_EQ(f.power_on(), PortStatus::ok);
    ASSERT_EQ(f.begin(m, false), PortStatus::ok);
    ASSERT_EQ(f.write(0, image_.data(), 1024), PortStatus::ok);
    ASSERT_EQ(f.sync(), PortStatus::ok);
  }
  FileFlash f(config());  // restart
  ASSERT_EQ(f.power_on(), PortStatus::ok);
  std::vector<std::uint8_t> back(1024);
  ASSERT_EQ(f.read(0, back.data(), back.size()), PortStatus::ok);  // before begin()
  EXPECT_EQ(std::memcmp(back.data(), image_.data(), 1024), 0);
  ASSERT_EQ(f.begin(m, true), PortStatus::ok);
  ASSERT_EQ(f.read(0, back.data(), back.size()), PortStatus::ok);
  EXPECT_EQ(std::memcmp(back.data(), image_.data(), 1024), 0);
  ASSERT_EQ(f.begin(m, false), PortStatus::ok);  // a fresh begin drops it
  EXPECT_NE(f.read(0, back.data(), back.size()), PortStatus::ok);
}

TEST_F(FileFlashTest, ResumedBeginWithoutPartialImageSaysNotFound) {
  const proto::Manifest m = manifest_for(image_, "1.1.0", 1);
  FileFlash f(config());
  ASSERT_EQ(f.power_on(), PortStatus::ok);
  // Nothing was begun for this slot: the slot is prepared afresh and the caller told so, so
  // that it does not trust a bitmap of chunks that are not there.
  ASSERT_EQ(f.begin(m, true), PortStatus::not_found);
  ASSERT_EQ(f.write(0, image_.data(), 1024), PortStatus::ok);
  ASSERT_EQ(f.sync(), PortStatus::ok);
  FileFlash again(config());
  ASSERT_EQ(again.power_on(), PortStatus::ok);
  EXPECT_EQ(again.begin(m, true), PortStatus::ok);  // now there is something to keep
}

TEST_F(FileFlashTest, TrialBootsAreCountedUpToTheLimitThenReverted) {
  const proto::Manifest m = manifest_for(image_, "1.1.0", 3);
  {
    FileFlash f(config());
    ASSERT_EQ(f.power_on(), PortStatus::ok);
    install(f, image_, m);
    ASSERT_EQ(f.activate_trial(m, 3), PortStatus::ok);
  }
  for (std::uint32_t boot = 1; boot <= 3; ++boot) {
    FileFlash f(config());  // each a crash before the confirmation
    ASSERT_EQ(f.power_on(), PortStatus::ok);
    const ImageState s = state_of(f);
    EXPECT_EQ(s.running_version, "1.1.0") << "trial boot " << boot;
    EXPECT_EQ(s.slot_state, proto::SlotState::pending);
    EXPECT_EQ(s.trial_boots, boot);
  }
  FileFlash f(config());
  ASSERT_EQ(f.power_on(), PortStatus::ok);
  const ImageState s = state_of(f);
  EXPECT_EQ(s.running_version, "1.0.0");
  EXPECT_EQ(s.slot_state, proto::SlotState::rolled_back);
  EXPECT_EQ(s.trial_boots, 0u);
  EXPECT_EQ(s.security_counter, 0u);
}

TEST_F(FileFlashTest, RejectedTrialImageRevertsAtTheNextBoot) {
  const proto::Manifest m = manifest_for(image_, "1.1.0", 3);
  {
    FileFlash f(config());
    ASSERT_EQ(f.power_on(), PortStatus::ok);
    install(f, image_, m);
    ASSERT_EQ(f.activate_trial(m, 5), PortStatus::ok);
  }
  {
    FileFlash f(config());
    ASSERT_EQ(f.power_on(), PortStatus::ok);
    ASSERT_EQ(state_of(f).slot_state, proto::SlotState::pending);
    ASSERT_EQ(f.reject(), PortStatus::ok);
  }
  FileFlash f(config());
  ASSERT_EQ(f.power_on(), PortStatus::ok);
  EXPECT_EQ(state_of(f).running_version, "1.0.0");
  EXPECT_EQ(state_of(f).slot_state, proto::SlotState::rolled_back);
}

// A boot.state written before trial boots were counted (trial_booted=1) still reverts.
TEST_F(FileFlashTest, BootStateOfTheOneTrialBootLayoutStillReverts) {
  const proto::Manifest m = manifest_for(image_, "1.1.0", 3);
  {
    FileFlash f(config());
    ASSERT_EQ(f.power_on(), PortStatus::ok);
    install(f, image_, m);
  }
  const std::string old_state =
      "active=a\npending=b\ntrial_booted=1\nrolled_back=0\nwriting=\nversion_a=1.0.0\n"
      "version_b=1.1.0\ncounter=0\npending_counter=3\n";
  ASSERT_TRUE(linux_port::write_file_atomically(config().dir + "/boot.state", old_state.data(),
                                                old_state.size(), false));
  FileFlash f(config());
  ASSERT_EQ(f.power_on(), PortStatus::ok);
  EXPECT_EQ(state_of(f).running_version, "1.0.0");
  EXPECT_EQ(state_of(f).slot_state, proto::SlotState::rolled_back);
}

// The agent on the Linux ports whose state file cannot be replaced (here: a directory is in
// the way of its temporary file): the update stops before anything is written to flash, the
// old image keeps running and the reason is reported.
TEST(LinuxAgentTest, UnwritableStateFileAbortsCleanlyAndReports) {
  TempDir dir;
  TestSigner signer;
  OpensslCrypto crypto;
  const ProvisionedKey keys[] = {signer.provisioned(proto::KeyRole::release)};
  FileFlashConfig fc;
  fc.dir = dir.path() + "/flash";
  fc.durable = false;
  FileFlash flash(fc);
  ASSERT_EQ(flash.power_on(), PortStatus::ok);
  const std::string state_path = dir.path() + "/agent.state";
  FileStorage storage(state_path, false);
  FileStorage key_storage(dir.path() + "/agent.keys", false);
  std::filesystem::create_directory(state_path + ".tmp");
  ScriptedTransport transport;
  FakeClock clock;
  AgentConfig cfg;
  cfg.device_id = "dev-ro";
  cfg.hw_model = "sim-board";
  cfg.keys = keys;
  cfg.key_count = 1;
  Agent agent(cfg, flash, transport, clock, storage, key_storage, crypto);
  agent.boot();
  agent.on_connected();
  const auto image = random_image(8 * 1024, 5);
  OfferOptions opt;
  opt.device = "dev-ro";
  const auto offer = encode(make_offer(signer, image, opt));
  agent.on_message("ota/v1/dev/dev-ro/down/offer", offer.data(), offer.size());
  const auto evs = transport.events();
  ASSERT_FALSE(evs.empty());
  EXPECT_EQ(evs.back().type, proto::EventType::result);
  EXPECT_FALSE(evs.back().success);
  EXPECT_EQ(evs.back().reason, proto::ReasonCode::internal_error);
  EXPECT_EQ(evs.back().detail, "state record could not be saved");
  EXPECT_EQ(evs.back().version, "1.0.0");
  EXPECT_EQ(agent.state(), proto::DeviceState::idle);
  EXPECT_GT(agent.stats().storage_failures, 0u);
  EXPECT_FALSE(std::filesystem::exists(flash.slot_path('b'))) << "the update slot was touched";
  FileFlash after(fc);
  ASSERT_EQ(after.power_on(), PortStatus::ok);
  ImageState s;
  after.read_state(s);
  EXPECT_EQ(s.running_version, "1.0.0");
  EXPECT_EQ(s.slot_state, proto::SlotState::confirmed);
}

// ------------------------------------------------------------------------ FileStorage

TEST(FileStorageTest, SaveLoadEraseNotFound) {
  TempDir dir;
  FileStorage st(dir.path() + "/agent.state", false);
  char buf[64];
  std::size_t len = 0;
  EXPECT_EQ(st.load(buf, sizeof buf, len), PortStatus::not_found);
  const char first[] = "first record";
  ASSERT_EQ(st.save(first, sizeof first), PortStatus::ok);
  ASSERT_EQ(st.load(buf, sizeof buf, len), PortStatus::ok);
  EXPECT_EQ(len, sizeof first);
  EXPECT_STREQ(buf, first);
  const char second[] = "2nd";
  ASSERT_EQ(st.save(second, sizeof second), PortStatus::ok);
  ASSERT_EQ(st.load(buf, sizeof buf, len), PortStatus::ok);
  EXPECT_EQ(len, sizeof second);
  EXPECT_STREQ(buf, second);
  // Atomic replacement: no temporary left behind.
  EXPECT_FALSE(std::filesystem::exists(dir.path() + "/agent.state.tmp"));
  // A record larger than the caller's buffer is an error, not a truncation.
  char small[2];
  EXPECT_EQ(st.load(small, sizeof small, len), PortStatus::error);
  ASSERT_EQ(st.erase(), PortStatus::ok);
  EXPECT_EQ(st.load(buf, sizeof buf, len), PortStatus::not_found);
  EXPECT_EQ(st.erase(), PortStatus::ok);  // erasing nothing is fine
}

TEST(FileStorageTest, FailedReplaceKeepsOldRecord) {
  TempDir dir;
  const std::string path = dir.path() + "/agent.state";
  FileStorage st(path, false);
  ASSERT_EQ(st.save("old", 4), PortStatus::ok);
  // A directory where the temporary file would go makes the write fail.
  std::filesystem::create_directory(path + ".tmp");
  EXPECT_NE(st.save("new", 4), PortStatus::ok);
  char buf[8];
  std::size_t len = 0;
  ASSERT_EQ(st.load(buf, sizeof buf, len), PortStatus::ok);
  EXPECT_STREQ(buf, "old");
}

// ---------------------------------------------------------------------- OpensslCrypto

TEST(OpensslCryptoTest, Sha256OfAbc) {
  OpensslCrypto c;
  Sha256State s;
  std::uint8_t d[32];
  c.sha256_init(s);
  c.sha256_update(s, reinterpret_cast<const std::uint8_t*>("a"), 1);
  c.sha256_update(s, reinterpret_cast<const std::uint8_t*>("bc"), 2);
  c.sha256_final(s, d);
  char hex[65];
  proto::hex_encode(d, 32, hex);
  hex[64] = '\0';
  EXPECT_STREQ(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(OpensslCryptoTest, RepeatedInitWithoutFinalIsSafe) {
  OpensslCrypto c;
  Sha256State s;
  std::uint8_t d[32];
  c.sha256_init(s);
  c.sha256_update(s, reinterpret_cast<const std::uint8_t*>("xyz"), 3);
  c.sha256_init(s);  // restart (the agent does this when a transfer restarts)
  c.sha256_update(s, reinterpret_cast<const std::uint8_t*>("abc"), 3);
  c.sha256_final(s, d);
  EXPECT_EQ(d[0], 0xba);
  EXPECT_EQ(d[31], 0xad);
  Sha256State dropped;  // initialised and never finalised: the port owns the cleanup
  c.sha256_init(dropped);
}

TEST(OpensslCryptoTest, VerifyWithThePointOkAndBad) {
  TestSigner signer;
  TestSigner other_key;
  OpensslCrypto c;
  const std::string msg = "canonical manifest bytes";
  const auto* m = reinterpret_cast<const std::uint8_t*>(msg.data());
  auto sig = signer.sign_raw(m, msg.size());
  const std::uint8_t* pub = signer.point().data();
  EXPECT_EQ(c.verify_p256(pub, m, msg.size(), sig.data()), Crypto::Verify::ok);
  std::string other = msg;
  other[0] = 'C';
  EXPECT_EQ(c.verify_p256(pub, reinterpret_cast<const std::uint8_t*>(other.data()),
                          other.size(), sig.data()),
            Crypto::Verify::bad_signature);
  auto bad = sig;
  bad[40] ^= 0x01;
  EXPECT_EQ(c.verify_p256(pub, m, msg.size(), bad.data()), Crypto::Verify::bad_signature);
  std::vector<std::uint8_t> zero(64, 0);
  EXPECT_EQ(c.verify_p256(pub, m, msg.size(), zero.data()), Crypto::Verify::bad_signature);
  // Another key, and a point that is not on the curve.
  EXPECT_EQ(c.verify_p256(other_key.point().data(), m, msg.size(), sig.data()),
            Crypto::Verify::bad_signature);
  auto off_curve = signer.point();
  off_curve[64] ^= 0x01;
  EXPECT_EQ(c.verify_p256(off_curve.data(), m, msg.size(), sig.data()),
            Crypto::Verify::bad_signature);
}

TEST(OpensslCryptoTest, LoadPublicKeyPem) {
  TestSigner signer;
  linux_port::PublicKey k;
  std::string error;
  ASSERT_TRUE(linux_port::load_public_key_pem(signer.pem_path(), k, error)) << error;
  EXPECT_EQ(k.id, signer.key_id());
  EXPECT_EQ(k.point, signer.point());
  // The fixture key of PROTOCOL.md 6.4.
  ASSERT_TRUE(linux_port::load_public_key_pem(
      std::string(OTA_FIXTURE_DIR) + "/proto/example_release_key.pub.pem", k, error))
      << error;
  EXPECT_EQ(k.id, "69bb99837e187bdb");
  EXPECT_EQ(k.point[0], 0x04);
}

// PROTOCOL.md 5.1 / 6.2 / 6.4: the example offer carries a real signature by the example key,
// over the canonical bytes the document prints, and does not expire before 2100.
TEST(OpensslCryptoTest, ExampleOfferVerifiesWithTheExampleKey) {
  const std::string dir = std::string(OTA_FIXTURE_DIR) + "/proto/";
  linux_port::PublicKey k;
  std::string error;
  ASSERT_TRUE(linux_port::load_public_key_pem(dir + "example_release_key.pub.pem", k, error))
      << error;
  std::ifstream in(dir + "valid/offer_signed.json", std::ios::binary);
  const std::string json((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  proto::Offer offer;
  ASSERT_FALSE(proto::decode_offer(json.data(), json.size(), offer));
  EXPECT_EQ(offer.manifest.key, k.id.c_str());
  EXPECT_EQ(offer.manifest.expires, 4102444800u);  // 2100-01-01T00:00:00Z
  char canon[512];
  const std::size_t n = proto::canonical_manifest(offer.manifest, canon, sizeof canon);
  ASSERT_EQ(n, 277u);
  std::uint8_t sig[64];
  ASSERT_TRUE(proto::hex_decode(offer.manifest.sig.c_str(), offer.manifest.sig.size, sig, sizeof sig));
  OpensslCrypto crypto;
  EXPECT_EQ(crypto.verify_p256(k.point.data(), reinterpret_cast<const std::uint8_t*>(canon), n, sig),
            Crypto::Verify::ok);
  canon[10] ^= 1;  // and it is the signature that decides
  EXPECT_NE(crypto.verify_p256(k.point.data(), reinterpret_cast<const std::uint8_t*>(canon), n, sig),
            Crypto::Verify::ok);
}

TEST(OpensslCryptoTest, LoadPublicKeyErrors) {
  TempDir dir;
  linux_port::PublicKey k;
  std::string error;
  EXPECT_FALSE(linux_port::load_public_key_pem(dir.path() + "/missing.pem", k, error));
  EXPECT_FALSE(error.empty());
  const std::string junk = dir.path() + "/junk.pem";
  ASSERT_TRUE(linux_port::write_file_atomically(junk, "not a key\n", 10, false));
  error.clear();
  EXPECT_FALSE(linux_port::load_public_key_pem(junk, k, error));
  EXPECT_FALSE(error.empty());
  // An EC key on another curve is refused.
  EVP_PKEY* p384 = EVP_EC_gen("P-384");
  ASSERT_NE(p384, nullptr);
  const std::string other = dir.path() + "/p384.pem";
  FILE* f = std::fopen(other.c_str(), "w");
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(PEM_write_PUBKEY(f, p384), 1);
  std::fclose(f);
  EVP_PKEY_free(p384);
  error.clear();
  EXPECT_FALSE(linux_port::load_public_key_pem(other, k, error));
  EXPECT_NE(error.find("P-256"), std::string::npos) << error;
}

// ------------------------------------------------------------ reconnect back-off

using std::chrono::milliseconds;
using linux_port::reconnect_delay;
using linux_port::reconnect_delay_ceiling;

TEST(ReconnectBackoffTest, CeilingDoublesFromBaseUpToTheCap) {
  const milliseconds base(200), cap(5000);
  EXPECT_EQ(reconnect_delay_ceiling(0, base, cap), milliseconds(200));
  EXPECT_EQ(reconnect_delay_ceiling(1, base, cap), milliseconds(400));
  EXPECT_EQ(reconnect_delay_ceiling(4, base, cap), milliseconds(3200));
  EXPECT_EQ(reconnect_delay_ceiling(5, base, cap), cap);
  // A device that has been failing for days must neither overflow nor spin.
  EXPECT_EQ(reconnect_delay_ceiling(0xffffffffu, base, cap), cap);
  EXPECT_EQ(reconnect_delay_ceiling(3, milliseconds(9000), cap), cap);  // base above the cap
  EXPECT_EQ(reconnect_delay_ceiling(7, milliseconds(0), cap), milliseconds(0));
}

TEST(ReconnectBackoffTest, DelaysStayWithinZeroAndTheCeiling) {
  const milliseconds base(200), cap(5000);
  std::mt19937_64 rng(7);
  for (std::uint32_t n = 0; n < 40; ++n) {
    const milliseconds ceiling = reconnect_delay_ceiling(n, base, cap);
    for (int i = 0; i < 500; ++i) {
      const milliseconds d = reconnect_delay(n, base, cap, rng());
      ASSERT_GE(d, milliseconds(0)) << "attempt " << n;
      ASSERT_LE(d, ceiling) << "attempt " << n;
    }
    // Both ends of the interval are reachable ("full" jitter, not base plus a little noise).
    EXPECT_EQ(reconnect_delay(n, base, cap, 0), milliseconds(0));
    EXPECT_EQ(reconnect_delay(n, base, cap, static_cast<std::uint64_t>(ceiling.count())), ceiling);
  }
}

// Twenty devices that lost the broker at the same instant and failed the same number of
// attempts must not retry at the same moment: each seeds its own random source.
TEST(ReconnectBackoffTest, DevicesWithDifferentSeedsSpreadOverTheWholeInterval) {
  const milliseconds base(200), cap(5000);
  for (std::uint32_t n : {0u, 3u, 6u}) {
    const milliseconds ceiling = reconnect_delay_ceiling(n, base, cap);
    std::set<long long> distinct;
    milliseconds lowest = ceiling, highest(0);
    for (std::uint64_t device = 1; device <= 20; ++device) {
      std::mt19937_64 rng(device);
      const milliseconds d = reconnect_delay(n, base, cap, rng());
      distinct.insert(d.count());
      lowest = std::min(lowest, d);
      highest = std::max(highest, d);
    }
    EXPECT_GE(distinct.size(), 15u) << "attempt " << n;
    EXPECT_GE((highest - lowest).count(), ceiling.count() / 2) << "attempt " << n;
  }
  // Over many draws the mean sits in the middle of [0, ceiling] (uniform, not skewed).
  std::mt19937_64 rng(42);
  double sum = 0;
  const int draws = 20000;
  for (int i = 0; i < draws; ++i) {
    sum += static_cast<double>(reconnect_delay(9, base, cap, rng()).count());
  }
  EXPECT_NEAR(sum / draws, 2500.0, 100.0);
}

}  // namespace
}  // namespace ota::agent::test
