// Offline signing and key rotation end to end (PROTOCOL.md 6.5, 6.6): a real mosquitto from
// broker-config/, the ota-controller process signing offers with an online key and holding no
// private release key, ota-devsim devices provisioned with root + release + online public keys,
// otactl image sign / keys sign on a "signing machine" directory, and raw offers published with
// the controller's broker credentials. Keys are made with the openssl commands of the README.
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <memory>
#include <optional>

#include "fleet_fixture.hpp"
#include "ota/proto/messages.hpp"
#include "ota/service/signing.hpp"

namespace {

using namespace fleet_test;

class KeysTest : public FleetTest {
 protected:
  void SetUp() override {
    prepare_env("keys", 1, "keys");
    signing_ = dir_.path() + "/signing-machine";
    pub_ = dir_.path() + "/public";
    ASSERT_EQ(::mkdir(signing_.c_str(), 0700), 0);
    ASSERT_EQ(::mkdir(pub_.c_str(), 0755), 0);
    ASSERT_EQ(::mkdir((dir_.path() + "/controller").c_str(), 0700), 0);
    // The root and release keys exist only on the signing machine; the controller gets its
    // online key and public keys.
    for (const char* k : {"root", "r1", "r2"}) make_key(signing_ + "/" + k + ".pem", pub_ + "/" + k + ".pub.pem");
    signing_key_ = dir_.path() + "/controller/online.pem";
    make_key(signing_key_, pub_ + "/online.pub.pem");
    // No release private key anywhere the controller is pointed at: not even the PKI's.
    ASSERT_EQ(::unlink(pki_->release_key().c_str()), 0);
    controller_args_ = {"--signing-key-role", "online", "--root-key", pub_ + "/root.pub.pem",
                        "--release-pub", pub_ + "/r1.pub.pem"};
    broker_ = std::make_unique<Broker>(*pki_);
    ASSERT_TRUE(start_controller());
    for (const auto& a : controller_argv())
      ASSERT_EQ(a.find(signing_), std::string::npos) << "the controller was given " << a;
    // Provisioned with the root, release key R1 and the controller's online key (key set 0).
    start_fleet({"--trusted-key", pub_ + "/r1.pub.pem", "--online-key", pub_ + "/online.pub.pem",
                 "--root-key", pub_ + "/root.pub.pem"});
    wait_fleet_online();
    dev_ = device_id(1);
  }

  // `openssl genpkey` + `openssl pkey -pubout`, as the README's how-to does it.
  static void make_key(const std::string& priv, const std::string& pub) {
    CommandResult g = ota::test::run_command(
        {"openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", priv});
    ASSERT_EQ(g.exit_code, 0) << g.output;
    ASSERT_EQ(::chmod(priv.c_str(), 0600), 0);
    CommandResult p = ota::test::run_command({"openssl", "pkey", "-in", priv, "-pubout", "-out", pub});
    ASSERT_EQ(p.exit_code, 0) << p.output;
  }

  std::string key_id(const std::string& name) {
    auto k = ota::service::load_public_key_file(pub_ + "/" + name + ".pub.pem", name);
    EXPECT_TRUE(k.ok());
    auto id = ota::service::key_id_of(k->get());
    return id.ok() ? *id : "?";
  }

  // otactl without a controller or a token: the signing machine.
  static CommandResult offline(std::vector<std::string> args) {
    args.insert(args.begin(), OTA_OTACTL_BIN);
    return ota::test::run_command(args);
  }

  // An image file of `version` on the signing machine, signed with release key `key`:
  // returns the release file.
  std::string sign_image(const std::string& version, const std::string& key, unsigned seed) {
    const std::string fw = signing_ + "/fw-" + version + ".bin";
    std::ofstream(fw, std::ios::binary) << random_bytes(40000, seed);
    CommandResult r = offline({"image", "sign", fw, "--key", signing_ + "/" + key + ".pem", "--version", version,
                               "--hw", "board-x"});
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return fw + ".release.json";
  }

  void upload_signed(const std::string& version, const std::string& key) {
    const std::string fw = signing_ + "/fw-" + version + ".bin";
    json img = otactl_json({"image", "add", fw, "--release", fw + ".release.json", "--chunk-size", "4096"});
    EXPECT_EQ(img.value("version", ""), version) << img.dump();
    EXPECT_EQ(img.value("release_key", ""), key_id(key)) << img.dump();
  }

  void deploy_and_wait(const std::string& version) {
    CommandResult r = otactl({"deploy", version, "--device", dev_, "--wait", "--timeout", "120"});
    ASSERT_EQ(r.exit_code, 0) << r.output;
    ASSERT_TRUE(wait_until([&] { return get("/api/v1/devices/" + dev_).value("version", "") == version; }, 30s));
  }

  std::string signing_, pub_, dev_;
};

// The user story: the controller needs no private release key at all. An image signed offline
// with `otactl image sign` and uploaded with its release file deploys; the same kind of image
// uploaded without one is refused, saying how to sign it.
TEST_F(KeysTest, OfflineSignedImageDeploysAndAnUnsignedOneIsRefused) {
  struct stat st {};
  ASSERT_NE(::stat(pki_->release_key().c_str(), &st), 0);
  sign_image("1.1.0", "r1", 1);
  upload_signed("1.1.0", "r1");
  deploy_and_wait("1.1.0");
  EXPECT_EQ(boot_record(dev_).boots(), "1.1.0");

  // The same image without a release signature: the online key cannot release it.
  const std::string fw = signing_ + "/fw-1.2.0.bin";
  std::ofstream(fw, std::ios::binary) << random_bytes(40000, 2);
  json img = otactl_json({"image", "add", fw, "--version", "1.2.0", "--hw", "board-x"});
  ASSERT_EQ(img.value("version", ""), "1.2.0");
  EXPECT_TRUE(img["release_key"].is_null()) << img.dump();
  CommandResult r = otactl({"deploy", "1.2.0", "--device", dev_});
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("has no release signature"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("otactl image sign"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("--release FILE.release.json"), std::string::npos) << r.output;
  r = otactl({"rollout", "create", "1.2.0", "--devices", dev_, "--start"});
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("has no release signature"), std::string::npos) << r.output;
  // Signed afterwards and uploaded with the release file: the stored image gets it and deploys.
  CommandResult s = offline({"image", "sign", fw, "--key", signing_ + "/r1.pem", "--version", "1.2.0", "--hw", "board-x"});
  ASSERT_EQ(s.exit_code, 0) << s.output;
  upload_signed("1.2.0", "r1");
  deploy_and_wait("1.2.0");
}

// Rotation: key set 1 drops release key R1 and adds R2. The device takes it (its hello says
// keys=1); the controller refuses to deploy an R1 image, naming the key; an R1-signed offer
// published to the device raw with the controller's broker credentials is declined
// unknown_key; an R2 image deploys.
TEST_F(KeysTest, KeySetRotationRevokesAReleaseKeyOnControllerAndDevice) {
  sign_image("1.1.0", "r1", 1);
  upload_signed("1.1.0", "r1");
  sign_image("1.2.0", "r1", 2);
  upload_signed("1.2.0", "r1");
  deploy_and_wait("1.1.0");
  EXPECT_EQ(get("/api/v1/devices/" + dev_).value("keys", -1), 0);

  const std::string ks = signing_ + "/keyset-1.json";
  CommandResult r = offline({"keys", "sign", "--root", signing_ + "/root.pem", "--version", "1", "--release",
                             pub_ + "/r2.pub.pem", "--online", pub_ + "/online.pub.pem", "-o", ks});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = otactl({"keys", "push", ks});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  ASSERT_TRUE(wait_until([&] { return get("/api/v1/devices/" + dev_).value("keys", -1) == 1; }, 30s))
      << get("/api/v1/devices/" + dev_).dump();
  json keys = otactl_json({"keys", "show"});
  EXPECT_EQ(keys.value("version", 0), 1) << keys.dump();
  EXPECT_EQ(keys["devices_by_version"].value("1", 0), 1) << keys.dump();
  EXPECT_EQ(keys["signing_key"].value("role", ""), "online") << keys.dump();
  CommandResult table = otactl({"devices"});
  EXPECT_NE(table.output.find("KEYS"), std::string::npos) << table.output;

  // The controller refuses what the devices would refuse.
  r = otactl({"deploy", "1.2.0", "--device", dev_});
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("release key " + key_id("r1") + " was revoked by key set version 1"), std::string::npos)
      << r.output;
  const std::string rel3 = sign_image("1.3.0", "r1", 3);
  r = otactl({"image", "add", signing_ + "/fw-1.3.0.bin", "--release", rel3});
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("revoked by key set version 1"), std::string::npos) << r.output;

  // An image signed by the new release key deploys.
  sign_image("1.4.0", "r2", 4);
  upload_signed("1.4.0", "r2");
  deploy_and_wait("1.4.0");

  // The device itself: offers made with the controller's online key, published raw with the
  // controller's broker identity (the controller is stopped so the two do not take each other's
  // connection over).
  controller_.reset();
  MqttTestClient raw(ota::test::ClientOptions::controller(*pki_, broker_->port()));
  ASSERT_TRUE(raw.connect().ok());
  const std::string prefix = pki_->prefix + "/dev/" + dev_;
  ASSERT_EQ(raw.subscribe(prefix + "/up/event", 1), 1);
  auto online = ota::service::Signer::load(signing_key_);
  ASSERT_TRUE(online.ok()) << online.error();
  auto offer_for = [&](const std::string& dep, const std::string& version, unsigned seed,
                       const std::string& release_key) {
    const std::string bytes = random_bytes(40000, seed);
    auto o = std::make_unique<ota::proto::Offer>();
    o->deployment.assign(dep.c_str());
    ota::proto::Manifest& m = o->manifest;
    if (!release_key.empty()) {
      std::ofstream(signing_ + "/raw.bin", std::ios::binary) << bytes;
      CommandResult s = offline({"image", "sign", signing_ + "/raw.bin", "--key", signing_ + "/" + release_key + ".pem",
                                 "--version", version, "--hw", "board-x", "-o", signing_ + "/raw.json"});
      EXPECT_EQ(s.exit_code, 0) << s.output;
      std::string text = read_file(signing_ + "/raw.json");
      while (!text.empty() && text.back() == '\n') text.pop_back();
      EXPECT_FALSE(ota::proto::decode_release(text.data(), text.size(), m)) << text;
    } else {
      m.version.assign(version.c_str());
      m.hw[m.hw_count++].assign("board-x");
      m.size = bytes.size();
      m.sha256.assign(ota::test::sha256_hex(bytes).c_str());
    }
    m.image.assign(ota::test::sha256_hex(bytes).substr(0, 16).c_str());
    m.chunk_size = 4096;
    m.expires = static_cast<std::uint64_t>(std::time(nullptr) + 3600);
    m.deployment.assign(dep.c_str());
    m.device.assign(dev_.c_str());
    EXPECT_TRUE(online->sign_manifest(m).ok());
    char buf[8192];
    std::size_t len = 0;
    EXPECT_FALSE(ota::proto::encode_offer(*o, buf, sizeof buf, len));
    return std::string(buf, len);
  };
  auto answer = [&](const std::string& dep) -> json {
    auto m = raw.wait_for_message(
        [&](const ota::test::Message& msg) {
          json e = json::parse(msg.payload, nullptr, false);
          return e.is_object() && e.value("deployment", "") == dep;
        },
        30s);
    return m ? json::parse(m->payload, nullptr, false) : json();
  };
  // 1. The online key alone releases nothing.
  ASSERT_EQ(raw.publish(prefix + "/down/offer", offer_for("dep-raw-online", "1.5.0", 5, "")), 0);
  json a = answer("dep-raw-online");
  EXPECT_EQ(a.value("type", ""), "decline") << a.dump();
  EXPECT_EQ(a.value("reason", ""), "bad_signature") << a.dump();
  // 2. A release signature by the revoked R1.
  ASSERT_EQ(raw.publish(prefix + "/down/offer", offer_for("dep-raw-r1", "1.5.0", 5, "r1")), 0);
  a = answer("dep-raw-r1");
  EXPECT_EQ(a.value("type", ""), "decline") << a.dump();
  EXPECT_EQ(a.value("reason", ""), "unknown_key") << a.dump();
  // 3. The same offer with R2's release signature is taken: the raw offers were well-formed.
  ASSERT_EQ(raw.publish(prefix + "/down/offer", offer_for("dep-raw-r2", "1.5.0", 5, "r2")), 0);
  a = answer("dep-raw-r2");
  EXPECT_EQ(a.value("type", ""), "accept") << a.dump();
}

// A key set signed by another key than the root is refused by the controller and never reaches
// a device; the genuine one does.
TEST_F(KeysTest, AKeySetNotSignedByTheRootIsRefusedAndNeverReachesDevices) {
  observer_ = std::make_unique<MqttTestClient>(ota::test::ClientOptions::monitor(*pki_, broker_->port()));
  ASSERT_TRUE(observer_->connect().ok());
  ASSERT_EQ(observer_->subscribe(pki_->prefix + "/dev/+/down/keys", 1), 1);

  const std::string bad = signing_ + "/keyset-bad.json";
  CommandResult r = offline({"keys", "sign", "--root", signing_ + "/r2.pem", "--version", "1", "--release",
                             pub_ + "/r1.pub.pem", "--online", pub_ + "/online.pub.pem", "-o", bad});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = otactl({"keys", "push", bad});
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("signed by key " + key_id("r2") + ", not by the current root key " + key_id("root")),
            std::string::npos)
      << r.output;
  auto res = client().Put("/api/v1/keys", read_file(bad), "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 400) << res->body;
  // A read-only token may look but not push.
  json tok = otactl_json({"token", "create", "viewer", "--role", "read-only"});
  httplib::Client viewer("127.0.0.1", http_port_);
  viewer.set_bearer_token_auth(tok.value("token", ""));
  res = viewer.Put("/api/v1/keys", read_file(bad), "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 403) << res->body;

  // The genuine set goes out: once the device reports it, the observer has seen every keys
  // message the broker carried.
  const std::string good = signing_ + "/keyset-1.json";
  r = offline({"keys", "sign", "--root", signing_ + "/root.pem", "--version", "1", "--release", pub_ + "/r1.pub.pem",
               "--online", pub_ + "/online.pub.pem", "-o", good});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(get("/api/v1/devices/" + dev_).value("keys", -1), 0);
  r = otactl({"keys", "push", good});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  ASSERT_TRUE(wait_until([&] { return get("/api/v1/devices/" + dev_).value("keys", -1) == 1; }, 30s));
  ASSERT_TRUE(observer_->wait_for_topic(pki_->prefix + "/dev/" + dev_ + "/down/keys", 10s).has_value());
  int seen = 0;
  for (const auto& m : observer_->messages()) {
    json k = json::parse(m.payload, nullptr, false);
    ++seen;
    EXPECT_EQ(k.value("key", ""), key_id("root")) << m.payload;
  }
  EXPECT_GE(seen, 1);
  // An older or equal version is refused too (409).
  r = otactl({"keys", "push", good});
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("not newer than the held key set version 1"), std::string::npos) << r.output;
}

}  // namespace
