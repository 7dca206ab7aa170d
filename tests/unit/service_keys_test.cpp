// Offline signing and key rotation on the controller side (PROTOCOL.md 6.5, 6.6): the v5
// schema, the key-set chain (KeyRing), release signatures checked at upload, offers carrying
// them, deploys refused for images devices would decline, key sets delivered at hello, and
// revoked devices. No broker: a recording Publisher stands in for MQTT.
#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "ota/proto/messages.hpp"
#include "ota/service/controller.hpp"
#include "ota/service/keys.hpp"
#include "ota/service/signing.hpp"
#include "ota/service/store.hpp"
#include "service_controller_fixture.hpp"
#include "service_test_util.hpp"

using namespace ota::service;
using ota::service::testing::bytes_of;
using ota::service::testing::ControllerTest;
using ota::service::testing::make_ec_key_pem;
using ota::service::testing::TempDir;
namespace proto = ota::proto;

namespace {

struct Key {
  std::string pem;  // private
  std::string pub_pem;
  std::string id;
  P256Point point{};
  const Signer& signer() const { return *s; }
  std::shared_ptr<Signer> s;
};

Key make_key() {
  Key k;
  k.pem = make_ec_key_pem();
  auto s = Signer::from_pem(k.pem);
  EXPECT_TRUE(s.ok());
  k.s = std::make_shared<Signer>(std::move(*s));
  k.pub_pem = k.s->public_pem();
  k.id = k.s->key_id();
  auto pt = p256_point_of(k.s->key());
  EXPECT_TRUE(pt.ok());
  k.point = *pt;
  return k;
}

// The release file `otactl image sign` writes for `bytes`.
std::string release_file(const Key& key, const std::string& bytes, const std::string& version,
                         std::vector<std::string> hw = {"m1"}, std::uint32_t counter = 0,
                         bool bundle = false) {
  auto m = std::make_unique<proto::Manifest>();
  m->version.assign(version.c_str());
  for (const auto& h : hw) m->hw[m->hw_count++].assign(h.c_str());
  m->size = bytes.size();
  m->sha256.assign(sha256_hex(bytes.data(), bytes.size()).c_str());
  m->counter = counter;
  m->kind = bundle ? proto::ImageKind::bundle : proto::ImageKind::firmware;
  EXPECT_TRUE(key.signer().sign_release(*m).ok());
  char buf[4096];
  std::size_t len = 0;
  EXPECT_FALSE(proto::encode_release(*m, buf, sizeof buf, len));
  return std::string(buf, len);
}

// A `keys` message signed by `root`.
std::string keyset(const Key& root, std::uint32_t version,
                   const std::vector<std::pair<const Key*, proto::KeyRole>>& keys) {
  auto ks = std::make_unique<proto::KeySet>();
  ks->version = version;
  for (const auto& [k, role] : keys) {
    proto::KeySetEntry& e = ks->keys[ks->key_count++];
    e.id.assign(k->id.c_str());
    e.role = role;
    std::memcpy(e.pub, k->point.data(), k->point.size());
  }
  EXPECT_TRUE(root.signer().sign_keyset(*ks).ok());
  std::vector<char> buf(16384);
  std::size_t len = 0;
  EXPECT_FALSE(proto::encode_keyset(*ks, buf.data(), buf.size(), len));
  return std::string(buf.data(), len);
}

constexpr proto::KeyRole kRelease = proto::KeyRole::release;
constexpr proto::KeyRole kOnline = proto::KeyRole::online;
constexpr proto::KeyRole kRoot = proto::KeyRole::root;

// ------------------------------------------------------------------------------- schema v5

TEST(StoreMigration, Version4DatabaseGetsReleaseSignaturesDeviceKeysAndKeySets) {
  TempDir dir;
  {
    Store v4;
    ASSERT_TRUE(v4.open(dir.file("v4.db"), 4).ok());
    EXPECT_EQ(v4.schema_version(), 4);
    ImageRec img;
    img.id = "aaaaaaaaaaaaaaaa";
    img.sha256 = img.id + std::string(48, '0');
    img.version = "1.0.0";
    img.hw = {"m1"};
    img.size = 1000;
    img.chunk_size = 256;
    img.created_at = 1;
    ASSERT_TRUE(v4.insert_image(img).ok());
    DeviceRec d;
    d.id = "dev-1";
    d.hw = "m1";
    d.version = "1.0.0";
    ASSERT_TRUE(v4.upsert_device(d).ok());
    EXPECT_FALSE(v4.key_sets().ok()) << "no key_sets table before v5";
  }
  Store v5;
  Status s = v5.open(dir.file("v4.db"));
  ASSERT_TRUE(s.ok()) << s.error();
  EXPECT_EQ(v5.schema_version(), 5);
  auto img = v5.image_by_id("aaaaaaaaaaaaaaaa");
  ASSERT_TRUE(img.ok() && *img);
  EXPECT_EQ((*img)->release_key, "");
  EXPECT_EQ((*img)->release_sig, "");
  auto dev = v5.device("dev-1");
  ASSERT_TRUE(dev.ok() && *dev);
  EXPECT_EQ((*dev)->keys, 0u);
  EXPECT_EQ((*dev)->revoked_at, 0);
  EXPECT_EQ((*dev)->version, "1.0.0");

  // The new columns and the table work.
  ASSERT_TRUE(v5.set_image_release("aaaaaaaaaaaaaaaa", "0123456789abcdef", std::string(128, 'a')).ok());
  EXPECT_EQ((*v5.image_by_id("aaaaaaaaaaaaaaaa"))->release_key, "0123456789abcdef");
  EXPECT_EQ(v5.set_image_release("bbbbbbbbbbbbbbbb", "x", "y").kind(), ErrKind::not_found);
  DeviceRec d = **dev;
  d.keys = 3;
  ASSERT_TRUE(v5.upsert_device(d).ok());
  EXPECT_EQ((*v5.device("dev-1"))->keys, 3u);
  ASSERT_TRUE(v5.set_device_revoked("dev-1", 77).ok());
  EXPECT_EQ((*v5.device("dev-1"))->revoked_at, 77);
  KeySetRec k{2, "{\"v\":1}", "0011223344556677", "token:alice", 99};
  ASSERT_TRUE(v5.insert_key_set(k).ok());
  EXPECT_EQ(v5.insert_key_set(k).kind(), ErrKind::conflict);
  k.version = 1;
  ASSERT_TRUE(v5.insert_key_set(k).ok());
  auto sets = v5.key_sets();
  ASSERT_TRUE(sets.ok());
  ASSERT_EQ(sets->size(), 2u);
  EXPECT_EQ((*sets)[0].version, 1u);
  EXPECT_EQ((*sets)[1].version, 2u);
  EXPECT_EQ((*sets)[1].uploaded_by, "token:alice");
}

// ----------------------------------------------------------------------- the key-set chain

class KeyRingTest : public ::testing::Test {
 protected:
  Result<KeyRing> ring(bool with_root = true, bool online = true) {
    KeyRingConfig cfg;
    if (with_root) cfg.root_pub_pem = root.pub_pem;
    cfg.release_pub_pems = {r1.pub_pem};
    cfg.signing_key_online = online;
    return KeyRing::create(cfg, online_key.id, online_key.point);
  }
  KeySetRec rec(const std::string& body, std::uint32_t v) { return KeySetRec{v, body, "", "t", 1}; }

  Key root = make_key(), next_root = make_key(), r1 = make_key(), r2 = make_key(),
      online_key = make_key(), stranger = make_key();
};

TEST_F(KeyRingTest, WithoutARootKeyEveryKeySetIsRefused) {
  auto kr = ring(/*with_root=*/false);
  ASSERT_TRUE(kr.ok()) << kr.error();
  auto v = kr->verify(keyset(root, 1, {{&r1, kRelease}, {&online_key, kOnline}}));
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.kind(), ErrKind::invalid);
  EXPECT_NE(v.error().find("--root-key"), std::string::npos) << v.error();
}

TEST_F(KeyRingTest, ASetSignedByAnotherKeyIsRefusedAndNamesTheRoot) {
  auto kr = ring();
  ASSERT_TRUE(kr.ok()) << kr.error();
  // Signed by a key that is not the root (its own id in "key").
  auto v = kr->verify(keyset(stranger, 1, {{&r1, kRelease}, {&online_key, kOnline}}));
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.kind(), ErrKind::invalid);
  EXPECT_NE(v.error().find("not by the current root key " + root.id), std::string::npos) << v.error();
  // Signed by another key but claiming the root's id: the signature does not verify.
  std::string forged = keyset(stranger, 1, {{&r1, kRelease}, {&online_key, kOnline}});
  const auto at = forged.find(stranger.id);
  ASSERT_NE(at, std::string::npos);
  forged.replace(at, stranger.id.size(), root.id);
  v = kr->verify(forged);
  ASSERT_FALSE(v.ok());
  EXPECT_NE(v.error().find("signature does not verify"), std::string::npos) << v.error();
  // The genuine one passes.
  auto ok = kr->verify(keyset(root, 1, {{&r1, kRelease}, {&online_key, kOnline}}));
  EXPECT_TRUE(ok.ok()) << ok.error();
}

TEST_F(KeyRingTest, OnlyAHigherVersionIsAccepted) {
  auto kr = ring();
  ASSERT_TRUE(kr.ok());
  const std::string v2 = keyset(root, 2, {{&r1, kRelease}, {&online_key, kOnline}});
  auto ks = kr->verify(v2);
  ASSERT_TRUE(ks.ok()) << ks.error();
  kr->adopt(rec(v2, 2), *ks);
  EXPECT_EQ(kr->version(), 2u);
  for (std::uint32_t v : {1u, 2u}) {
    auto old = kr->verify(keyset(root, v, {{&r2, kRelease}, {&online_key, kOnline}}));
    ASSERT_FALSE(old.ok()) << v;
    EXPECT_EQ(old.kind(), ErrKind::conflict);
    EXPECT_NE(old.error().find("not newer than the held key set version 2"), std::string::npos) << old.error();
  }
  EXPECT_TRUE(kr->verify(keyset(root, 3, {{&r2, kRelease}, {&online_key, kOnline}})).ok());
}

TEST_F(KeyRingTest, NextRootRotation) {
  auto kr = ring();
  ASSERT_TRUE(kr.ok());
  // v1, signed by the provisioned root, names the next root.
  const std::string v1 = keyset(root, 1, {{&r1, kRelease}, {&online_key, kOnline}, {&next_root, kRoot}});
  auto ks = kr->verify(v1);
  ASSERT_TRUE(ks.ok()) << ks.error();
  kr->adopt(rec(v1, 1), *ks);
  EXPECT_EQ(kr->root_id(), next_root.id);
  EXPECT_NE(kr->root_source().find("key set version 1"), std::string::npos);
  // From now on the old root cannot sign a set, the new one can.
  auto by_old = kr->verify(keyset(root, 2, {{&r2, kRelease}, {&online_key, kOnline}}));
  ASSERT_FALSE(by_old.ok());
  EXPECT_NE(by_old.error().find("not by the current root key " + next_root.id), std::string::npos)
      << by_old.error();
  const std::string v2 = keyset(next_root, 2, {{&r2, kRelease}, {&online_key, kOnline}});
  auto by_new = kr->verify(v2);
  ASSERT_TRUE(by_new.ok()) << by_new.error();
  kr->adopt(rec(v2, 2), *by_new);
  // A set without a root entry keeps the root it was signed with.
  EXPECT_EQ(kr->root_id(), next_root.id);

  // The same chain from the database after a restart.
  auto again = ring();
  ASSERT_TRUE(again.ok());
  ASSERT_TRUE(again->load({rec(v1, 1), rec(v2, 2)}).ok());
  EXPECT_EQ(again->version(), 2u);
  EXPECT_EQ(again->root_id(), next_root.id);
}

TEST_F(KeyRingTest, FieldRulesIdsAndTheSigningKeyAreChecked) {
  auto kr = ring();
  ASSERT_TRUE(kr.ok());
  // Not a keys message.
  auto bad = kr->verify("{\"v\":1,\"type\":\"keys\"}");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().find("not a valid keys message"), std::string::npos) << bad.error();
  // An id that is not its key's (the signature covers it, so it is re-signed).
  auto ks = std::make_unique<proto::KeySet>();
  ks->version = 1;
  for (const auto& [k, role] : std::vector<std::pair<const Key*, proto::KeyRole>>{{&r1, kRelease}, {&online_key, kOnline}}) {
    proto::KeySetEntry& e = ks->keys[ks->key_count++];
    e.id.assign(k->id.c_str());
    e.role = role;
    std::memcpy(e.pub, k->point.data(), k->point.size());
  }
  ks->keys[0].id.assign(r2.id.c_str());
  ASSERT_TRUE(root.signer().sign_keyset(*ks).ok());
  std::vector<char> buf(16384);
  std::size_t len = 0;
  ASSERT_FALSE(proto::encode_keyset(*ks, buf.data(), buf.size(), len));
  bad = kr->verify(std::string(buf.data(), len));
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().find("is not the id of its public key"), std::string::npos) << bad.error();
  // A set without the controller's own signing key would make every offer unknown_key.
  bad = kr->verify(keyset(root, 1, {{&r1, kRelease}}));
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().find("does not list this controller's signing key " + online_key.id), std::string::npos)
      << bad.error();
}

TEST_F(KeyRingTest, ReleaseKeysComeFromTheNewestSetAndDroppedOnesAreRevoked) {
  auto kr = ring();
  ASSERT_TRUE(kr.ok());
  // No set: the --release-pub keys.
  EXPECT_NE(kr->release_key(r1.id), nullptr);
  EXPECT_EQ(kr->release_key(r2.id), nullptr);
  EXPECT_TRUE(kr->signing_online());
  const std::string v1 = keyset(root, 1, {{&r2, kRelease}, {&online_key, kOnline}});
  auto ks = kr->verify(v1);
  ASSERT_TRUE(ks.ok());
  kr->adopt(rec(v1, 1), *ks);
  EXPECT_EQ(kr->release_key(r1.id), nullptr);
  EXPECT_NE(kr->release_key(r2.id), nullptr);
  EXPECT_EQ(kr->revoked_in(r1.id), 1u);
  EXPECT_NE(kr->why_not_release_key(r1.id).find("revoked by key set version 1"), std::string::npos);
  EXPECT_EQ(kr->revoked_in(stranger.id), 0u);
  EXPECT_NE(kr->why_not_release_key(stranger.id).find("not a release key of the held key set"), std::string::npos);
  // The set decides the signing key's role, whatever the flag said.
  auto flag_release = ring(true, /*online=*/false);
  ASSERT_TRUE(flag_release.ok());
  EXPECT_FALSE(flag_release->signing_online());
  flag_release->adopt(rec(v1, 1), *ks);
  EXPECT_TRUE(flag_release->signing_online());
}

// ------------------------------------------------------- controller: uploads and deploys

class OfflineSigningTest : public ControllerTest {
 protected:
  void SetUp() override {
    key_pem = online_key.pem;  // the controller's --signing-key
    configure = [this](ControllerConfig& cfg) {
      cfg.keys.root_pub_pem = root.pub_pem;
      cfg.keys.release_pub_pems = {r1.pub_pem};
      cfg.keys.signing_key_online = online;
    };
    start();
  }
  Result<AddImageResult> upload(const std::string& bytes, const std::string& release,
                                const std::string& version = "", std::vector<std::string> hw = {}) {
    ImageParams p;
    p.release = release;
    p.version = version;
    p.hw = std::move(hw);
    return ctl->add_image(bytes, p);
  }
  proto::Offer last_offer(const std::string& dev) {
    proto::Offer o;
    auto offers = pub.on("ota/v1/dev/" + dev + "/down/offer");
    EXPECT_FALSE(offers.empty());
    if (!offers.empty()) {
      EXPECT_FALSE(proto::decode_offer(offers.back().payload.data(), offers.back().payload.size(), o));
    }
    return o;
  }
  void hello_keys(const std::string& dev, std::uint32_t keys, const std::string& version = "1.0.0") {
    proto::Hello h;
    h.device.assign(dev.c_str());
    h.hw.assign("m1");
    h.version.assign(version.c_str());
    h.slot.assign("a");
    h.free = 1 << 20;
    h.keys = keys;
    char buf[2048];
    std::size_t len = 0;
    ASSERT_FALSE(proto::encode_hello(h, buf, sizeof buf, len));
    ctl->on_message(("ota/v1/dev/" + dev + "/up/presence").c_str(), buf, len);
  }

  bool online = true;
  Key root = make_key(), r1 = make_key(), r2 = make_key(), online_key = make_key(),
      stranger = make_key();
};

TEST_F(OfflineSigningTest, AReleaseSignedImageIsStoredAndItsOffersCarryTheSignature) {
  const std::string fw = bytes_of(10000, 7);
  auto r = upload(fw, release_file(r1, fw, "2.0.0", {"m1"}, 3));
  ASSERT_TRUE(r.ok()) << r.error();
  EXPECT_TRUE(r->created);
  EXPECT_EQ(r->image.version, "2.0.0");
  EXPECT_EQ(r->image.counter, 3u);
  EXPECT_EQ(r->image.release_key, r1.id);
  EXPECT_EQ(r->image.release_sig.size(), 128u);
  auto j = ctl->image_json("2.0.0");
  ASSERT_TRUE(j.ok());
  EXPECT_EQ((*j)["release_key"], r1.id);

  hello("d1", "1.0.0");
  auto dep = ctl->deploy("2.0.0", "device", "d1");
  ASSERT_TRUE(dep.ok()) << dep.error();
  proto::Offer o = last_offer("d1");
  EXPECT_EQ(std::string(o.manifest.key.c_str()), online_key.id);
  EXPECT_EQ(std::string(o.manifest.release_key.c_str()), r1.id);
  EXPECT_EQ(std::string(o.manifest.release_sig.c_str()), r->image.release_sig);
  // Both signatures verify as a device checks them (3, 3b).
  EXPECT_TRUE(verify_manifest(online_key.s->key(), o.manifest));
  EXPECT_TRUE(verify_release(r1.s->key(), o.manifest));
}

TEST_F(OfflineSigningTest, UploadsWithABadReleaseFileAreRefusedSayingWhatIsWrong) {
  const std::string fw = bytes_of(10000, 7);
  const std::string good = release_file(r1, fw, "2.0.0");
  // A signature that does not verify (one hex digit changed).
  std::string bad_sig = good;
  const auto sig_at = bad_sig.find("\"sig\":\"") + 7;
  bad_sig[sig_at] = bad_sig[sig_at] == '0' ? '1' : '0';
  auto r = upload(fw, bad_sig);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.kind(), ErrKind::invalid);
  EXPECT_NE(r.error().find("release signature does not verify with release key " + r1.id), std::string::npos)
      << r.error();
  // Other bytes than those signed.
  r = upload(bytes_of(10000, 8), good);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.kind(), ErrKind::invalid);
  EXPECT_NE(r.error().find("release file is for sha256 " + sha256_hex(fw.data(), fw.size())), std::string::npos)
      << r.error();
  // Signed by a key the controller does not know.
  r = upload(fw, release_file(stranger, fw, "2.0.0"));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().find("release key " + stranger.id + " is not one the controller knows"), std::string::npos)
      << r.error();
  // Parameters that contradict the signed ones.
  r = upload(fw, good, "2.0.1");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().find("version 2.0.1 conflicts with the release file's version 2.0.0"), std::string::npos)
      << r.error();
  r = upload(fw, good, "", {"m2"});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().find("hw m2 conflicts"), std::string::npos) << r.error();
  // Not a release file at all.
  r = upload(fw, "{\"v\":1,\"type\":\"release\"}");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().find("not a valid release signature"), std::string::npos) << r.error();
  EXPECT_TRUE(ctl->images_json()->empty()) << "nothing was stored";
  // The good one is taken.
  EXPECT_TRUE(upload(fw, good).ok());
}

TEST_F(OfflineSigningTest, WithAnOnlineKeyAnImageWithoutReleaseSignatureIsNotDeployed) {
  add(bytes_of(5000, 1), "1.5.0");  // uploaded without a release file
  hello("d1", "1.0.0");
  auto dep = ctl->deploy("1.5.0", "device", "d1");
  ASSERT_FALSE(dep.ok());
  EXPECT_EQ(dep.kind(), ErrKind::invalid);
  EXPECT_NE(dep.error().find("has no release signature"), std::string::npos) << dep.error();
  EXPECT_NE(dep.error().find("otactl image sign"), std::string::npos) << dep.error();
  EXPECT_NE(dep.error().find("--release"), std::string::npos) << dep.error();
  EXPECT_TRUE(pub.on("ota/v1/dev/d1/down/offer").empty());
  auto ro = ctl->create_rollout(nlohmann::json{{"image", "1.5.0"}, {"target", {{"devices", {"d1"}}}}}, "t");
  ASSERT_FALSE(ro.ok());
  EXPECT_NE(ro.error().find("has no release signature"), std::string::npos) << ro.error();
  // Signed afterwards: the same image gets the signature and deploys.
  auto r = upload(bytes_of(5000, 1), release_file(r1, bytes_of(5000, 1), "1.5.0"));
  ASSERT_TRUE(r.ok()) << r.error();
  EXPECT_FALSE(r->created);
  EXPECT_EQ(r->image.release_key, r1.id);
  dep = ctl->deploy("1.5.0", "device", "d1");
  ASSERT_TRUE(dep.ok()) << dep.error();
}

TEST_F(OfflineSigningTest, AKeySetThatDropsAReleaseKeyStopsItsImagesAndIsSentToDevices) {
  const std::string fw1 = bytes_of(6000, 1), fw2 = bytes_of(6000, 2);
  ASSERT_TRUE(upload(fw1, release_file(r1, fw1, "2.0.0")).ok());
  hello_keys("d1", 0);
  hello_keys("d2", 0);
  EXPECT_TRUE(pub.on("ota/v1/dev/d1/down/keys").empty()) << "no key set held yet";

  // v1: R2 replaces R1.
  const std::string v1 = keyset(root, 1, {{&r2, kRelease}, {&online_key, kOnline}});
  auto pushed = ctl->push_keys(v1, "token:admin");
  ASSERT_TRUE(pushed.ok()) << pushed.error();
  EXPECT_EQ((*pushed)["version"], 1);
  for (const char* dev : {"d1", "d2"}) {
    auto sent = pub.on(std::string("ota/v1/dev/") + dev + "/down/keys");
    ASSERT_EQ(sent.size(), 1u) << dev;
    EXPECT_EQ(sent[0].qos, 1);
    EXPECT_FALSE(sent[0].retain);
    proto::KeySet ks;
    ASSERT_FALSE(proto::decode_keyset(sent[0].payload.data(), sent[0].payload.size(), ks));
    EXPECT_EQ(ks.version, 1u);
  }
  auto evs = ctl->events_json({});
  ASSERT_TRUE(evs.ok());
  bool logged = false;
  for (const auto& e : *evs)
    if (e["what"] == "keys_pushed" && e["actor"] == "token:admin") logged = true;
  EXPECT_TRUE(logged) << evs->dump();

  // An image signed by the revoked key: refused, naming the key.
  auto dep = ctl->deploy("2.0.0", "device", "d1");
  ASSERT_FALSE(dep.ok());
  EXPECT_NE(dep.error().find("release key " + r1.id + " was revoked by key set version 1"), std::string::npos)
      << dep.error();
  auto up = upload(fw2, release_file(r1, fw2, "2.0.1"));
  ASSERT_FALSE(up.ok());
  EXPECT_NE(up.error().find("revoked by key set version 1"), std::string::npos) << up.error();
  // Signed by the new key: fine.
  ASSERT_TRUE(upload(fw2, release_file(r2, fw2, "2.0.1")).ok());
  EXPECT_TRUE(ctl->deploy("2.0.1", "device", "d1").ok());

  // d1 took it (its hello says so): not sent again; d2 reconnects still on 0: sent again.
  hello_keys("d1", 1);
  hello_keys("d2", 0);
  EXPECT_EQ(pub.on("ota/v1/dev/d1/down/keys").size(), 1u);
  EXPECT_EQ(pub.on("ota/v1/dev/d2/down/keys").size(), 2u);
  auto d1 = ctl->device_json("d1");
  ASSERT_TRUE(d1.ok());
  EXPECT_EQ((*d1)["keys"], 1);
  auto kj = ctl->keys_json();
  ASSERT_TRUE(kj.ok());
  EXPECT_EQ((*kj)["devices_by_version"]["1"], 1);
  EXPECT_EQ((*kj)["devices_by_version"]["0"], 1);
  EXPECT_EQ((*kj)["signing_key"]["role"], "online");

  // A device that keeps refusing the set (another root) is not flooded.
  for (int i = 0; i < 20; ++i) hello_keys("d2", 0);
  EXPECT_LE(pub.on("ota/v1/dev/d2/down/keys").size(), 3u);

  // After a restart the controller still holds it.
  start();
  EXPECT_EQ((*ctl->keys_json())["version"], 1);
  EXPECT_FALSE(ctl->deploy("2.0.0", "device", "d2").ok());
  hello_keys("d3", 0);
  EXPECT_EQ(pub.on("ota/v1/dev/d3/down/keys").size(), 1u);
}

TEST_F(OfflineSigningTest, ANonRootKeySetIsRefusedAndReachesNoDevice) {
  hello_keys("d1", 0);
  auto r = ctl->push_keys(keyset(stranger, 1, {{&r2, kRelease}, {&online_key, kOnline}}), "token:admin");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.kind(), ErrKind::invalid);
  EXPECT_TRUE(pub.on("ota/v1/dev/d1/down/keys").empty());
  EXPECT_EQ((*ctl->keys_json())["version"], 0);
}

class SingleKeyModeTest : public OfflineSigningTest {
 protected:
  void SetUp() override {
    online = false;
    OfflineSigningTest::SetUp();
  }
};

TEST_F(SingleKeyModeTest, ImagesWithoutReleaseSignatureDeployAndOffersCarryNone) {
  add(bytes_of(5000, 1), "1.5.0");
  hello("d1", "1.0.0");
  auto dep = ctl->deploy("1.5.0", "device", "d1");
  ASSERT_TRUE(dep.ok()) << dep.error();
  proto::Offer o = last_offer("d1");
  EXPECT_TRUE(o.manifest.release_key.empty());
  EXPECT_TRUE(o.manifest.release_sig.empty());
  EXPECT_EQ(std::string(o.manifest.key.c_str()), online_key.id);
}

// ------------------------------------------------------------------------- revoked devices

TEST_F(ControllerTest, ARevokedDeviceIsDroppedNeverTargetedAndShownRevoked) {
  add(bytes_of(5000, 1), "1.5.0");
  hello("d1", "1.0.0", {"lab"});
  hello("d2", "1.0.0", {"lab"});
  auto dep = ctl->deploy("1.5.0", "device", "d1");
  ASSERT_TRUE(dep.ok());
  auto j = ctl->revoke_device("d1", "token:admin");
  ASSERT_TRUE(j.ok()) << j.error();
  EXPECT_EQ((*j)["revoked"], true);
  EXPECT_EQ(row_state(dep->id, "d1"), "cancelled");
  EXPECT_EQ(ctl->revoke_device("d1", "token:admin").kind(), ErrKind::conflict);
  EXPECT_EQ(ctl->revoke_device("nobody", "token:admin").kind(), ErrKind::not_found);
  // Its messages have no effect and are counted.
  hello("d1", "9.9.9");
  EXPECT_EQ((*ctl->device_json("d1"))["version"], "1.0.0");
  EXPECT_EQ(ctl->dropped(DropReason::revoked), 1u);
  EXPECT_NE(ctl->metrics_text().find("ota_device_messages_dropped_total{reason=\"revoked\"} 1"), std::string::npos);
  // Not targeted: directly, or as a group member.
  EXPECT_FALSE(ctl->deploy("1.5.0", "device", "d1").ok());
  auto grp = ctl->deploy("1.5.0", "group", "lab");
  ASSERT_TRUE(grp.ok());
  auto gj = ctl->deployment_json(grp->id);
  ASSERT_TRUE(gj.ok());
  for (const auto& r : (*gj)["devices"]) EXPECT_NE(r["device"], "d1");
  // It stays revoked across a restart.
  start();
  hello("d1", "9.9.9");
  EXPECT_EQ((*ctl->device_json("d1"))["version"], "1.0.0");
}

}  // namespace
