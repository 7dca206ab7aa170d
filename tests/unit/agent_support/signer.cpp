#include "signer.hpp"

#include <gtest/gtest.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdlib.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>

#include "ota/agent/linux/openssl_crypto.hpp"
#include "ota/proto/frame.hpp"

namespace ota::agent::test {

TempDir::TempDir() {
  char tmpl[] = "/tmp/ota-agent-test-XXXXXX";
  const char* p = ::mkdtemp(tmpl);
  if (p == nullptr) {
    ADD_FAILURE() << "mkdtemp failed";
    return;
  }
  path_ = p;
}

TempDir::~TempDir() {
  if (path_.empty()) return;
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

TestSigner::TestSigner() {
  key_ = EVP_EC_gen("P-256");
  if (key_ == nullptr) {
    ADD_FAILURE() << "EVP_EC_gen failed";
    return;
  }
  key_id_ = linux_port::OpensslCrypto::key_id_of(key_);
  pem_path_ = dir_.path() + "/release.pub.pem";
  FILE* f = std::fopen(pem_path_.c_str(), "w");
  if (f == nullptr || PEM_write_PUBKEY(f, key_) != 1) ADD_FAILURE() << "cannot write PEM";
  if (f != nullptr) std::fclose(f);
  std::size_t n = 0;
  if (EVP_PKEY_get_octet_string_param(key_, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, point_.data(),
                                      point_.size(), &n) != 1 ||
      n != point_.size()) {
    ADD_FAILURE() << "cannot read the public point";
  }
}

ProvisionedKey TestSigner::provisioned(proto::KeyRole role) const {
  ProvisionedKey k;
  k.role = role;
  std::memcpy(k.pub, point_.data(), point_.size());
  return k;
}

proto::KeySetEntry TestSigner::entry(proto::KeyRole role) const {
  proto::KeySetEntry e;
  e.id.assign(key_id_.c_str());
  e.role = role;
  std::memcpy(e.pub, point_.data(), point_.size());
  return e;
}

TestSigner::~TestSigner() { EVP_PKEY_free(key_); }

std::vector<std::uint8_t> TestSigner::sign_raw(const std::uint8_t* msg, std::size_t len) const {
  std::vector<std::uint8_t> raw(64, 0);
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  std::size_t der_len = 0;
  std::vector<unsigned char> der;
  if (EVP_DigestSignInit(ctx, nullptr, EVP_sha256(), nullptr, key_) != 1 ||
      EVP_DigestSign(ctx, nullptr, &der_len, msg, len) != 1) {
    ADD_FAILURE() << "EVP_DigestSign (size) failed";
    EVP_MD_CTX_free(ctx);
    return raw;
  }
  der.resize(der_len);
  if (EVP_DigestSign(ctx, der.data(), &der_len, msg, len) != 1) {
    ADD_FAILURE() << "EVP_DigestSign failed";
    EVP_MD_CTX_free(ctx);
    return raw;
  }
  EVP_MD_CTX_free(ctx);
  const unsigned char* p = der.data();
  ECDSA_SIG* sig = d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(der_len));
  if (sig == nullptr) {
    ADD_FAILURE() << "d2i_ECDSA_SIG failed";
    return raw;
  }
  const BIGNUM* r = nullptr;
  const BIGNUM* s = nullptr;
  ECDSA_SIG_get0(sig, &r, &s);
  if (BN_bn2binpad(r, raw.data(), 32) != 32 || BN_bn2binpad(s, raw.data() + 32, 32) != 32) {
    ADD_FAILURE() << "BN_bn2binpad failed";
  }
  ECDSA_SIG_free(sig);
  return raw;
}

void TestSigner::sign(proto::Manifest& m) const {
  m.key.assign(key_id_.c_str());
  char canon[2048];
  const std::size_t n = proto::canonical_manifest(m, canon, sizeof canon);
  ASSERT_GT(n, 0u);
  const auto raw = sign_raw(reinterpret_cast<const std::uint8_t*>(canon), n);
  char hex[129];
  proto::hex_encode(raw.data(), raw.size(), hex);
  hex[128] = '\0';
  m.sig.assign(hex);
}

namespace {
std::string hex128(const std::vector<std::uint8_t>& raw) {
  char hex[129];
  proto::hex_encode(raw.data(), raw.size(), hex);
  hex[128] = '\0';
  return hex;
}
}  // namespace

void TestSigner::sign_release(proto::Manifest& m) const {
  m.release_key.assign(key_id_.c_str());
  char canon[2048];
  const std::size_t n = proto::canonical_release(m, canon, sizeof canon);
  ASSERT_GT(n, 0u);
  m.release_sig.assign(hex128(sign_raw(reinterpret_cast<const std::uint8_t*>(canon), n)).c_str());
}

void TestSigner::sign_keyset(proto::KeySet& k) const {
  k.key.assign(key_id_.c_str());
  char canon[2048];
  const std::size_t n = proto::canonical_keyset(k, canon, sizeof canon);
  ASSERT_GT(n, 0u);
  k.sig.assign(hex128(sign_raw(reinterpret_cast<const std::uint8_t*>(canon), n)).c_str());
}

proto::KeySet make_keyset(std::uint32_t version,
                          const std::vector<std::pair<const TestSigner*, proto::KeyRole>>& entries,
                          const TestSigner& root) {
  proto::KeySet k;
  k.version = version;
  for (const auto& [signer, role] : entries) {
    if (k.key_count < proto::kMaxKeySetKeys) k.keys[k.key_count++] = signer->entry(role);
  }
  root.sign_keyset(k);
  return k;
}

std::vector<std::uint8_t> encode(const proto::KeySet& set) {
  std::vector<char> buf(4096);
  std::size_t len = 0;
  const proto::Error e = proto::encode_keyset(set, buf.data(), buf.size(), len);
  EXPECT_FALSE(e) << proto::errc_name(e.code) << " " << e.field;
  return std::vector<std::uint8_t>(buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(len));
}

std::vector<std::uint8_t> random_image(std::size_t size, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::uint8_t> out(size);
  for (auto& b : out) b = static_cast<std::uint8_t>(rng() & 0xffu);
  return out;
}

std::string sha256_hex(const std::uint8_t* data, std::size_t len) {
  unsigned char digest[32];
  unsigned int n = 0;
  EVP_Digest(data, len, digest, &n, EVP_sha256(), nullptr);
  char hex[65];
  proto::hex_encode(digest, 32, hex);
  hex[64] = '\0';
  return hex;
}

proto::Offer make_offer(const TestSigner& signer, const std::vector<std::uint8_t>& image,
                        const OfferOptions& opt) {
  const std::vector<std::uint8_t>& described = opt.manifest_image ? *opt.manifest_image : image;
  proto::Offer offer;
  offer.deployment.assign(opt.deployment.c_str());
  proto::Manifest& m = offer.manifest;
  const std::string sha = sha256_hex(described.data(), described.size());
  m.image.assign(sha.c_str(), 16);
  m.version.assign(opt.version.c_str());
  m.hw[0].assign(opt.hw.c_str());
  m.hw_count = 1;
  m.size = described.size();
  m.sha256.assign(sha.c_str());
  m.chunk_size = opt.chunk_size;
  m.counter = opt.counter;
  m.expires = opt.expires;
  m.kind = opt.kind;
  m.compression = proto::Compression::none;
  if (!opt.unbound) {
    m.deployment.assign(opt.deployment.c_str());
    if (opt.group.empty())
      m.device.assign(opt.device.c_str());
    else
      m.group.assign(opt.group.c_str());
  }
  m.rollback = opt.rollback;
  if (opt.release != nullptr) opt.release->sign_release(m);
  signer.sign(m);
  return offer;
}

std::vector<std::uint8_t> encode(const proto::Offer& offer) {
  std::vector<char> buf(4096);
  std::size_t len = 0;
  const proto::Error e = proto::encode_offer(offer, buf.data(), buf.size(), len);
  EXPECT_FALSE(e) << proto::errc_name(e.code) << " " << e.field;
  return std::vector<std::uint8_t>(buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(len));
}

}  // namespace ota::agent::test
