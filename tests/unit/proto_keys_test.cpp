// Release signatures and key sets (PROTOCOL.md 6.5, 6.6): the manifest's release members,
// canonical_release, the release file, the `keys` message, p256_spki_der (against OpenSSL's
// DER) and hello `keys`.
#include <gtest/gtest.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "ota/proto/frame.hpp"
#include "ota/proto/messages.hpp"
#include "ota/proto/topics.hpp"

using namespace ota::proto;

namespace {

const char* kSha = "3f2a9c1b7d4e8f60a7c1e09b55d2f3846e1b0c9d7a35f2e84c61b0d9e2f7a3c5";
const char* kReleaseKey = "69bb99837e187bdb";

std::string err_str(const Error& e) { return std::string(errc_name(e.code)) + " " + e.field; }

std::string hex_of(const std::uint8_t* p, std::size_t n) {
  std::string s(n * 2, '\0');
  hex_encode(p, n, s.data());
  return s;
}

// The example manifest of PROTOCOL.md 5.1.
Manifest example_manifest() {
  Manifest m;
  m.image.assign("3f2a9c1b7d4e8f60");
  m.version.assign("1.4.2");
  m.hw[0].assign("esp32-s3-devkit");
  m.hw_count = 1;
  m.size = 1048576;
  m.sha256.assign(kSha);
  m.chunk_size = 4096;
  m.counter = 3;
  m.expires = 1767225600;
  m.key.assign("a1b2c3d4e5f60718");
  m.sig.assign(std::string(128, 'a').c_str());
  return m;
}

Manifest released_manifest() {
  Manifest m = example_manifest();
  m.release_key.assign(kReleaseKey);
  m.release_sig.assign((std::string(64, 'b') + std::string(64, 'c')).c_str());
  return m;
}

void test_point(std::uint8_t seed, std::uint8_t out[kP256PointLen]) {
  out[0] = 0x04;
  for (std::size_t i = 1; i < kP256PointLen; ++i) out[i] = static_cast<std::uint8_t>(seed + i);
}

KeySet sample_keyset() {
  KeySet k;
  k.version = 2;
  const KeyRole roles[] = {KeyRole::release, KeyRole::online, KeyRole::root};
  const char* ids[] = {"1111111111111111", "2222222222222222", "3333333333333333"};
  for (std::size_t i = 0; i < 3; ++i) {
    k.keys[i].id.assign(ids[i]);
    k.keys[i].role = roles[i];
    test_point(static_cast<std::uint8_t>(16 * i), k.keys[i].pub);
  }
  k.key_count = 3;
  k.key.assign("0123456789abcdef");
  k.sig.assign(std::string(128, 'd').c_str());
  return k;
}

std::string replaced(std::string s, const std::string& from, const std::string& to) {
  const auto at = s.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  if (at != std::string::npos) s.replace(at, from.size(), to);
  return s;
}

}  // namespace

// ------------------------------------------------------------------------ manifest members

TEST(ProtoRelease, CanonicalReleaseIsTheExampleOfSection65) {
  Manifest m = example_manifest();
  m.release_key.assign(kReleaseKey);
  char buf[1024];
  const std::size_t n = canonical_release(m, buf, sizeof buf);
  const std::string want =
      R"({"compression":"none","counter":3,"hw":["esp32-s3-devkit"],"key":"69bb99837e187bdb",)"
      R"("kind":"firmware","sha256":"3f2a9c1b7d4e8f60a7c1e09b55d2f3846e1b0c9d7a35f2e84c61b0d9e2f7a3c5",)"
      R"("size":1048576,"type":"release","version":"1.4.2"})";
  ASSERT_EQ(std::string(buf, n), want);
  // Delivery parameters, the binding and the online key are not part of it.
  m.chunk_size = 65536;
  m.expires = 0;
  m.key.assign("ffffffffffffffff");
  m.deployment.assign("dep-9");
  m.device.assign("dev-9");
  m.rollback = true;
  m.release_sig.assign(std::string(128, 'e').c_str());
  EXPECT_EQ(std::string(buf, canonical_release(m, buf, sizeof buf)), want);
  EXPECT_EQ(canonical_release(m, buf, want.size() - 1), 0u);
  EXPECT_EQ(canonical_release(m, buf, want.size()), want.size());
  EXPECT_EQ(canonical_release(m, nullptr, 100), 0u);
}

TEST(ProtoRelease, ManifestCarriesReleaseMembersInSortedPlace) {
  Manifest m = released_manifest();
  m.deployment.assign("dep-1");
  m.device.assign("dev-1");
  m.rollback = true;
  char buf[2048];
  const std::string c(buf, canonical_manifest(m, buf, sizeof buf));
  EXPECT_NE(c.find(R"("kind":"firmware","release_key":"69bb99837e187bdb","release_sig":")" +
                   std::string(64, 'b')),
            std::string::npos)
      << c;
  EXPECT_NE(c.find(std::string(64, 'c') + R"(","rollback":true,"sha256")"), std::string::npos) << c;

  Offer o;
  o.deployment.assign("dep-1");
  o.manifest = m;
  std::size_t len = 0;
  ASSERT_TRUE(encode_offer(o, buf, sizeof buf, len).ok());
  Offer d;
  ASSERT_TRUE(decode_offer(buf, len, d).ok());
  EXPECT_EQ(d.manifest.release_key, kReleaseKey);
  EXPECT_EQ(d.manifest.release_sig, m.release_sig);
  char again[2048];
  std::size_t len2 = 0;
  ASSERT_TRUE(encode_offer(d, again, sizeof again, len2).ok());
  EXPECT_EQ(std::string(buf, len), std::string(again, len2));

  // Without them the bytes are those of a single-key manifest.
  Manifest plain = example_manifest();
  char p[1024];
  const std::string pc(p, canonical_manifest(plain, p, sizeof p));
  EXPECT_EQ(pc.find("release"), std::string::npos);
}

TEST(ProtoRelease, ManifestReleaseMembersAreValidated) {
  Offer o;
  o.deployment.assign("dep-1");
  o.manifest = released_manifest();
  char buf[2048];
  std::size_t len = 0;
  ASSERT_TRUE(encode_offer(o, buf, sizeof buf, len).ok());
  const std::string good(buf, len);
  const std::string rk = R"("release_key":"69bb99837e187bdb",)";
  const std::string rs_val = std::string(64, 'b') + std::string(64, 'c');
  const std::string rs = R"("release_sig":")" + rs_val + R"(",)";
  struct Case {
    std::string text;
    Errc code;
    const char* field;
  };
  const Case cases[] = {
      {replaced(good, rk, ""), Errc::bad_value, "manifest.release_key"},  // sig alone
      {replaced(good, rs, ""), Errc::bad_value, "manifest.release_sig"},  // key alone
      {replaced(good, rk, R"("release_key":"40AE8F1292283E00",)"), Errc::bad_value,
       "manifest.release_key"},
      {replaced(good, rk, R"("release_key":"40ae8f12",)"), Errc::bad_value, "manifest.release_key"},
      {replaced(good, rk, R"("release_key":"",)"), Errc::bad_value, "manifest.release_key"},
      {replaced(good, rk, R"("release_key":"69bb99837e187bdb00",)"), Errc::field_too_long,
       "manifest.release_key"},
      {replaced(good, rk, R"("release_key":7,)"), Errc::bad_field_type, "manifest.release_key"},
      {replaced(good, rs, R"("release_sig":")" + rs_val.substr(2) + R"(",)"), Errc::bad_value,
       "manifest.release_sig"},
      {replaced(good, rs, R"("release_sig":")" + rs_val + R"(00",)"), Errc::field_too_long,
       "manifest.release_sig"},
      {replaced(good, rs, R"("release_sig":"g)" + rs_val.substr(1) + R"(",)"), Errc::bad_value,
       "manifest.release_sig"},
  };
  for (const auto& c : cases) {
    Offer out;
    const Error e = decode_offer(c.text.data(), c.text.size(), out);
    EXPECT_EQ(e.code, c.code) << c.text << ": " << err_str(e);
    EXPECT_STREQ(e.field, c.field) << c.text;
  }
  // The encoder refuses one without the other as well.
  o.manifest.release_sig.assign("");
  EXPECT_EQ(err_str(encode_offer(o, buf, sizeof buf, len)), "bad_value manifest.release_sig");
  o.manifest = released_manifest();
  o.manifest.release_key.assign("");
  EXPECT_EQ(err_str(encode_offer(o, buf, sizeof buf, len)), "bad_value manifest.release_key");
}

// ------------------------------------------------------------------------ release file

TEST(ProtoRelease, ReleaseFileRoundTrip) {
  Manifest m = released_manifest();
  char buf[1024];
  std::size_t len = 0;
  ASSERT_TRUE(encode_release(m, buf, sizeof buf, len).ok());
  EXPECT_EQ(std::string(buf, len),
            R"({"v":1,"type":"release","compression":"none","counter":3,"hw":["esp32-s3-devkit"],)"
            R"("key":"69bb99837e187bdb","kind":"firmware","sha256":")" +
                std::string(kSha) + R"(","size":1048576,"version":"1.4.2","sig":")" +
                std::string(64, 'b') + std::string(64, 'c') + R"("})");
  Manifest d;
  ASSERT_TRUE(decode_release(buf, len, d).ok());
  EXPECT_EQ(d.release_key, kReleaseKey);
  EXPECT_EQ(d.release_sig, m.release_sig);
  EXPECT_EQ(d.sha256, m.sha256);
  EXPECT_EQ(d.version, m.version);
  EXPECT_EQ(d.size, m.size);
  EXPECT_EQ(d.counter, m.counter);
  ASSERT_EQ(d.hw_count, 1u);
  EXPECT_EQ(d.hw[0], "esp32-s3-devkit");
  EXPECT_EQ(d.kind, ImageKind::firmware);
  EXPECT_TRUE(d.key.empty());  // the release file fills only the release members
  char c1[1024], c2[1024];
  const std::size_t n1 = canonical_release(m, c1, sizeof c1);
  ASSERT_EQ(canonical_release(d, c2, sizeof c2), n1);
  EXPECT_EQ(std::memcmp(c1, c2, n1), 0);

  const std::string good(buf, len);
  struct Case {
    std::string text;
    Errc code;
    const char* field;
  };
  const Case cases[] = {
      {replaced(good, R"("v":1,)", R"("v":1,"url":"http://x",)"), Errc::bad_value, "release"},
      {replaced(good, R"("type":"release")", R"("type":"keys")"), Errc::wrong_type, "type"},
      {replaced(good, R"("compression":"none",)", ""), Errc::missing_field, "compression"},
      {replaced(good, R"("kind":"firmware")", R"("kind":"delta")"), Errc::bad_value, "kind"},
      {replaced(good, R"("hw":["esp32-s3-devkit"])", R"("hw":[])"), Errc::bad_value, "hw"},
      {replaced(good, R"("key":"69bb99837e187bdb")", R"("key":"40ae")"), Errc::bad_value, "key"},
      {replaced(good, R"("size":1048576)", R"("size":0)"), Errc::bad_value, "size"},
      {replaced(good, R"("version":"1.4.2")", R"("version":"1.4")"), Errc::bad_value, "version"},
      {replaced(good, R"(,"sig":")" + std::string(64, 'b'), R"(,"sig":")" + std::string(62, 'b')),
       Errc::bad_value, "sig"},
      {replaced(good, R"("counter":3)", R"("counter":4294967296)"), Errc::bad_value, "counter"},
  };
  for (const auto& c : cases) {
    Manifest out;
    const Error e = decode_release(c.text.data(), c.text.size(), out);
    EXPECT_EQ(e.code, c.code) << c.text << ": " << err_str(e);
    EXPECT_STREQ(e.field, c.field) << c.text;
  }
  m.release_sig.assign("");
  EXPECT_EQ(err_str(encode_release(m, buf, sizeof buf, len)), "bad_value sig");
  m = released_manifest();
  EXPECT_EQ(encode_release(m, buf, 40, len).code, Errc::buffer_too_small);
}

// ------------------------------------------------------------------------ key sets

TEST(ProtoKeySet, CanonicalBytes) {
  KeySet k = sample_keyset();
  k.key_count = 1;
  char buf[1024];
  const std::size_t n = canonical_keyset(k, buf, sizeof buf);
  EXPECT_EQ(std::string(buf, n),
            R"({"key":"0123456789abcdef","keys":[{"id":"1111111111111111","pub":")" +
                hex_of(k.keys[0].pub, kP256PointLen) +
                R"(","role":"release"}],"type":"keys","v":1,"version":2})");
  EXPECT_EQ(canonical_keyset(k, buf, n - 1), 0u);
  // The signature is not part of it.
  k.sig.assign(std::string(128, '0').c_str());
  EXPECT_EQ(canonical_keyset(k, buf, sizeof buf), n);
}

TEST(ProtoKeySet, FullSetFitsTheAgentMessageBuffer) {
  KeySet k = sample_keyset();
  for (std::size_t i = 0; i < kMaxKeySetKeys; ++i) {
    char id[17];
    std::snprintf(id, sizeof id, "%016zx", i + 0xabc);
    k.keys[i].id.assign(id);
    k.keys[i].role = i == 0 ? KeyRole::root : KeyRole::release;
    test_point(static_cast<std::uint8_t>(i), k.keys[i].pub);
  }
  k.key_count = kMaxKeySetKeys;
  k.version = 4294967295u;
  char buf[2048];
  const std::size_t n = canonical_keyset(k, buf, sizeof buf);
  EXPECT_GT(n, 900u);
  EXPECT_LT(n, 1024u);  // OTA_AGENT_MESSAGE_BUFFER's default (and the firmware's)
  std::size_t len = 0;
  ASSERT_TRUE(encode_keyset(k, buf, sizeof buf, len).ok());
  KeySet d;
  ASSERT_TRUE(decode_keyset(buf, len, d).ok()) << std::string(buf, len);
  EXPECT_EQ(d.key_count, kMaxKeySetKeys);
}

TEST(ProtoKeySet, RoundTrip) {
  const KeySet k = sample_keyset();
  char buf[2048];
  std::size_t len = 0;
  ASSERT_TRUE(encode_keyset(k, buf, sizeof buf, len).ok());
  const std::string s(buf, len);
  EXPECT_EQ(s.rfind(R"({"v":1,"type":"keys","version":2,"keys":[{"id":"1111111111111111","role":"release","pub":"04)", 0),
            0u)
      << s;
  EXPECT_NE(s.find(R"(],"key":"0123456789abcdef","sig":")"), std::string::npos) << s;
  KeySet d;
  ASSERT_TRUE(decode_keyset(buf, len, d).ok());
  EXPECT_EQ(d.version, 2u);
  ASSERT_EQ(d.key_count, 3u);
  for (std::size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(d.keys[i].id, k.keys[i].id);
    EXPECT_EQ(d.keys[i].role, k.keys[i].role);
    EXPECT_EQ(std::memcmp(d.keys[i].pub, k.keys[i].pub, kP256PointLen), 0);
  }
  EXPECT_EQ(d.key, k.key);
  EXPECT_EQ(d.sig, k.sig);
  // Members in another order and unknown members (ignored, 4.1) decode the same.
  const std::string pub0 = hex_of(k.keys[0].pub, kP256PointLen);
  const std::string alt = R"({"sig":")" + std::string(128, 'd') +
                          R"(","key":"0123456789abcdef","future":1,"keys":[{"pub":")" + pub0 +
                          R"(","role":"release","id":"1111111111111111"}],"type":"keys","version":9,"v":1})";
  ASSERT_TRUE(decode_keyset(alt.data(), alt.size(), d).ok());
  EXPECT_EQ(d.version, 9u);
  EXPECT_EQ(d.key_count, 1u);
}

TEST(ProtoKeySet, FieldRules) {
  const KeySet k = sample_keyset();
  char buf[2048];
  std::size_t len = 0;
  ASSERT_TRUE(encode_keyset(k, buf, sizeof buf, len).ok());
  const std::string good(buf, len);
  const std::string pub1 = hex_of(k.keys[1].pub, kP256PointLen);
  const std::string entry1 =
      R"({"id":"2222222222222222","role":"online","pub":")" + pub1 + R"("})";
  struct Case {
    std::string text;
    Errc code;
    const char* field;
  };
  const Case cases[] = {
      {replaced(good, R"("version":2)", R"("version":0)"), Errc::bad_value, "version"},
      {replaced(good, R"("version":2)", R"("version":-1)"), Errc::bad_value, "version"},
      {replaced(good, R"("version":2,)", ""), Errc::missing_field, "version"},
      {replaced(good, R"("type":"keys")", R"("type":"release")"), Errc::wrong_type, "type"},
      {replaced(good, R"("v":1,)", R"("v":2,)"), Errc::unsupported_version, "v"},
      {replaced(good, "," + entry1, "," + entry1 + "," + entry1), Errc::bad_value, "keys.id"},
      {replaced(good, R"("role":"online")", R"("role":"root")"), Errc::bad_value, "keys.role"},
      {replaced(good, R"("role":"release")", R"("role":"online")"), Errc::bad_value, "keys.role"},
      {replaced(good, R"("role":"online")", R"("role":"director")"), Errc::bad_value, "keys.role"},
      {replaced(good, R"("id":"2222222222222222")", R"("id":"2222")"), Errc::bad_value, "keys.id"},
      {replaced(good, R"("id":"2222222222222222",)", ""), Errc::missing_field, "keys.id"},
      {replaced(good, R"("pub":"04)" + pub1.substr(2), R"("pub":"02)" + pub1.substr(2)),
       Errc::bad_value, "keys.pub"},
      {replaced(good, R"("pub":"04)" + pub1.substr(2), R"("pub":"04)" + pub1.substr(4)),
       Errc::bad_value, "keys.pub"},
      {replaced(good, R"("pub":"04)" + pub1.substr(2), R"("pub":"04)" + pub1.substr(2) + "00"),
       Errc::field_too_long, "keys.pub"},
      {replaced(good, pub1, std::string(pub1).replace(10, 1, "A")), Errc::bad_value, "keys.pub"},
      {replaced(good, "," + entry1, "," + entry1 + "," + entry1 + "," + entry1 + "," + entry1),
       Errc::field_too_long, "keys"},
      {replaced(good, good.substr(good.find("[{"), good.find("}],") + 2 - good.find("[{")), "[]"),
       Errc::bad_value, "keys"},
      {replaced(good, R"("keys":[)", R"("keys":[1,)"), Errc::bad_field_type, "keys"},
      {replaced(good, R"("key":"0123456789abcdef")", R"("key":"01234567")"), Errc::bad_value, "key"},
      {replaced(good, R"(,"sig":")" + std::string(128, 'd'), R"(,"sig":")" + std::string(126, 'd')),
       Errc::bad_value, "sig"},
  };
  for (const auto& c : cases) {
    KeySet out;
    const Error e = decode_keyset(c.text.data(), c.text.size(), out);
    EXPECT_EQ(e.code, c.code) << c.text << ": " << err_str(e);
    EXPECT_STREQ(e.field, c.field) << c.text;
  }
  // The encoder checks the same rules.
  KeySet bad = k;
  bad.keys[1].id = bad.keys[0].id;
  EXPECT_EQ(err_str(encode_keyset(bad, buf, sizeof buf, len)), "bad_value keys.id");
  bad = k;
  bad.key_count = 0;
  EXPECT_EQ(err_str(encode_keyset(bad, buf, sizeof buf, len)), "bad_value keys");
  bad = k;
  bad.version = 0;
  EXPECT_EQ(err_str(encode_keyset(bad, buf, sizeof buf, len)), "bad_value version");
  bad = k;
  bad.keys[2].pub[0] = 0x03;
  EXPECT_EQ(err_str(encode_keyset(bad, buf, sizeof buf, len)), "bad_value keys.pub");
  EXPECT_EQ(encode_keyset(k, buf, 100, len).code, Errc::buffer_too_small);
}

TEST(ProtoKeySet, RoleNames) {
  EXPECT_STREQ(key_role_name(KeyRole::root), "root");
  EXPECT_STREQ(key_role_name(KeyRole::release), "release");
  EXPECT_STREQ(key_role_name(KeyRole::online), "online");
  EXPECT_STREQ(key_role_name(static_cast<KeyRole>(9)), "unknown");
}

// p256_spki_der gives exactly OpenSSL's DER SubjectPublicKeyInfo, so SHA-256 over it is the
// key id of 6.4 (checked on the example release key of the fixtures).
TEST(ProtoKeySet, SpkiDerMatchesOpenssl) {
  auto check_key = [](EVP_PKEY* key) -> std::string {
    std::uint8_t point[kP256PointLen];
    std::size_t plen = 0;
    EXPECT_EQ(EVP_PKEY_get_octet_string_param(key, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, point,
                                              sizeof point, &plen),
              1);
    EXPECT_EQ(plen, kP256PointLen);
    unsigned char* der = nullptr;
    const int der_len = i2d_PUBKEY(key, &der);
    EXPECT_EQ(der_len, static_cast<int>(kP256SpkiDerLen));
    std::uint8_t mine[kP256SpkiDerLen];
    p256_spki_der(point, mine);
    if (der_len == static_cast<int>(kP256SpkiDerLen)) {
      EXPECT_EQ(hex_of(mine, sizeof mine), hex_of(der, kP256SpkiDerLen));
    }
    OPENSSL_free(der);
    unsigned char digest[32];
    unsigned int n = 0;
    EVP_Digest(mine, sizeof mine, digest, &n, EVP_sha256(), nullptr);
    return hex_of(digest, 8);
  };
  for (int i = 0; i < 4; ++i) {
    EVP_PKEY* key = EVP_EC_gen("P-256");
    ASSERT_NE(key, nullptr);
    check_key(key);
    EVP_PKEY_free(key);
  }
  FILE* f = std::fopen(OTA_PROTO_FIXTURE_DIR "/example_release_key.pub.pem", "r");
  ASSERT_NE(f, nullptr);
  EVP_PKEY* example = PEM_read_PUBKEY(f, nullptr, nullptr, nullptr);
  std::fclose(f);
  ASSERT_NE(example, nullptr);
  EXPECT_EQ(check_key(example), kReleaseKey);
  EVP_PKEY_free(example);
}

// ------------------------------------------------------------------------ hello, topic

TEST(ProtoKeySet, HelloKeysVersion) {
  Hello h;
  h.device.assign("dev-0001");
  h.hw.assign("esp32-s3-devkit");
  h.version.assign("1.4.1");
  h.slot.assign("a");
  h.free = 1;
  h.counter = 3;
  char buf[1024];
  std::size_t len = 0;
  ASSERT_TRUE(encode_hello(h, buf, sizeof buf, len).ok());
  EXPECT_EQ(std::string(buf, len).find("keys"), std::string::npos);  // 0: not written
  h.keys = 7;
  h.resume.present = true;
  h.resume.deployment.assign("d");
  h.resume.image.assign("3f2a9c1b7d4e8f60");
  ASSERT_TRUE(encode_hello(h, buf, sizeof buf, len).ok());
  const std::string s(buf, len);
  EXPECT_NE(s.find(R"("groups":[],"keys":7,"resume":{)"), std::string::npos) << s;
  Hello d;
  d.keys = 99;
  ASSERT_TRUE(decode_hello(buf, len, d).ok());
  EXPECT_EQ(d.keys, 7u);
  const std::string zero = replaced(s, R"("keys":7)", R"("keys":0)");
  ASSERT_TRUE(decode_hello(zero.data(), zero.size(), d).ok());
  EXPECT_EQ(d.keys, 0u);
  const std::string str = replaced(s, R"("keys":7)", R"("keys":"7")");
  EXPECT_EQ(err_str(decode_hello(str.data(), str.size(), d)), "bad_field_type keys");
  const std::string big = replaced(s, R"("keys":7)", R"("keys":4294967296)");
  EXPECT_EQ(err_str(decode_hello(big.data(), big.size(), d)), "bad_value keys");
}

TEST(ProtoKeySet, KeysTopic) {
  char t[kMaxTopicLen];
  ASSERT_GT(make_topic("ota/v1", TopicKind::keys, "dev-1", t, sizeof t), 0u);
  EXPECT_STREQ(t, "ota/v1/dev/dev-1/down/keys");
  const char* id = nullptr;
  std::size_t n = 0;
  EXPECT_EQ(parse_topic("ota/v1", t, &id, &n), TopicKind::keys);
  EXPECT_EQ(std::string(id, n), "dev-1");
  EXPECT_EQ(parse_topic("ota/v1", "ota/v1/grp/g/keys", nullptr, nullptr), TopicKind::unknown);
  EXPECT_EQ(parse_topic("ota/v1", "ota/v1/dev/d/down/keys/x", nullptr, nullptr),
            TopicKind::unknown);
}
