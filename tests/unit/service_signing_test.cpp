#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

#include "ota/proto/messages.hpp"
#include "ota/service/signing.hpp"
#include "service_test_util.hpp"

using namespace ota::service;
using ota::service::testing::make_ec_key_pem;

namespace {

ota::proto::Manifest sample_manifest() {
  ota::proto::Manifest m;
  m.image.assign("0011223344556677");
  m.version.assign("1.2.3");
  m.hw[0].assign("board-a");
  m.hw_count = 1;
  m.size = 123456;
  m.sha256.assign("0011223344556677001122334455667700112233445566770011223344556677");
  m.chunk_size = 4096;
  m.counter = 2;
  m.expires = 2000000000;
  return m;
}

TEST(Signing, ManifestSignatureVerifiesWithPublicKeyAndFailsAfterChange) {
  auto signer = Signer::from_pem(make_ec_key_pem());
  ASSERT_TRUE(signer.ok()) << signer.error();
  auto m = sample_manifest();
  Status s = signer->sign_manifest(m);
  ASSERT_TRUE(s.ok()) << s.error();
  EXPECT_EQ(m.sig.size, 128u);
  EXPECT_EQ(std::string(m.key.c_str()), signer->key_id());

  auto pub = public_key_from_pem(signer->public_pem());
  ASSERT_TRUE(pub.ok()) << pub.error();
  EXPECT_TRUE(verify_manifest(pub->get(), m));

  // Explicit check over the canonical bytes, independent of verify_manifest.
  char buf[4096];
  std::size_t n = ota::proto::canonical_manifest(m, buf, sizeof buf);
  ASSERT_GT(n, 0u);
  EXPECT_TRUE(verify_hex(pub->get(), buf, n, m.sig.c_str()));

  auto changed = m;
  changed.counter = 3;
  EXPECT_FALSE(verify_manifest(pub->get(), changed));
  changed = m;
  changed.version.assign("1.2.4");
  EXPECT_FALSE(verify_manifest(pub->get(), changed));
  changed = m;
  changed.sig.data[0] = changed.sig.data[0] == '0' ? '1' : '0';
  EXPECT_FALSE(verify_manifest(pub->get(), changed));

  // Another key does not verify it.
  auto other = Signer::from_pem(make_ec_key_pem());
  ASSERT_TRUE(other.ok());
  EXPECT_FALSE(verify_manifest(other->key(), m));
}

TEST(Signing, KeyIdIsFirst8BytesOfSha256OfSpki) {
  auto signer = Signer::from_pem(make_ec_key_pem());
  ASSERT_TRUE(signer.ok());
  unsigned char* der = nullptr;
  int n = i2d_PUBKEY(signer->key(), &der);
  ASSERT_GT(n, 0);
  unsigned char md[SHA256_DIGEST_LENGTH];
  SHA256(der, static_cast<std::size_t>(n), md);
  OPENSSL_free(der);
  char hex[17];
  for (int i = 0; i < 8; ++i) std::snprintf(hex + 2 * i, 3, "%02x", md[i]);
  EXPECT_EQ(signer->key_id(), std::string(hex));
  EXPECT_EQ(signer->key_id().size(), 16u);
}

TEST(Signing, SignaturesAreRawRS) {
  auto signer = Signer::from_pem(make_ec_key_pem());
  ASSERT_TRUE(signer.ok());
  for (int i = 0; i < 20; ++i) {  // r or s with leading zero bytes must still be 32 bytes each
    std::string data = "payload " + std::to_string(i);
    auto sig = signer->sign_hex(data.data(), data.size());
    ASSERT_TRUE(sig.ok());
    EXPECT_EQ(sig->size(), 128u);
    EXPECT_TRUE(verify_hex(signer->key(), data.data(), data.size(), *sig));
  }
  EXPECT_FALSE(verify_hex(signer->key(), "x", 1, "abc"));
  EXPECT_FALSE(verify_hex(signer->key(), "x", 1, std::string(128, 'z')));
}

TEST(Signing, RejectsWrongKeys) {
  auto p384 = Signer::from_pem(make_ec_key_pem("P-384"));
  ASSERT_FALSE(p384.ok());
  EXPECT_NE(p384.error().find("P-256"), std::string::npos) << p384.error();
  EXPECT_FALSE(Signer::from_pem("not a pem").ok());
  auto missing = Signer::load("/nonexistent/release.key");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.error().find("/nonexistent/release.key"), std::string::npos);
}

TEST(Signing, Sha256Hex) {
  EXPECT_EQ(sha256_hex("abc", 3),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

}  // namespace
