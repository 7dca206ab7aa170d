#include "ota/agent/linux/openssl_crypto.hpp"

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include <cstdio>
#include <cstring>
#include <memory>

#include "ota/proto/frame.hpp"

namespace ota::agent::linux_port {
namespace {

// The port keeps OpenSSL's digest context behind the caller-owned opaque state.
EVP_MD_CTX*& ctx_of(Sha256State& s) {
  static_assert(sizeof(EVP_MD_CTX*) <= sizeof(Sha256State::opaque), "state too small");
  return *reinterpret_cast<EVP_MD_CTX**>(s.opaque);
}

}  // namespace

OpensslCrypto::~OpensslCrypto() {
  for (auto& [state, ctx] : digests_) EVP_MD_CTX_free(ctx);
}

std::string OpensslCrypto::key_id_of(EVP_PKEY* key) {
  unsigned char* der = nullptr;
  const int der_len = i2d_PUBKEY(key, &der);
  if (der_len <= 0) return {};
  unsigned char digest[32];
  unsigned int digest_len = 0;
  EVP_Digest(der, static_cast<std::size_t>(der_len), digest, &digest_len, EVP_sha256(), nullptr);
  OPENSSL_free(der);
  char hex[17];
  proto::hex_encode(digest, 8, hex);
  hex[16] = '\0';
  return hex;
}

bool load_public_key_pem(const std::string& pem_path, PublicKey& out, std::string& error) {
  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(pem_path.c_str(), "r"), &std::fclose);
  if (!f) {
    error = "cannot open public key " + pem_path;
    return false;
  }
  std::unique_ptr<EVP_PKEY, void (*)(EVP_PKEY*)> key(
      PEM_read_PUBKEY(f.get(), nullptr, nullptr, nullptr), &EVP_PKEY_free);
  if (!key) {
    error = "not a PEM public key: " + pem_path;
    return false;
  }
  char group[32] = {};
  std::size_t group_len = 0;
  std::size_t point_len = 0;
  if (EVP_PKEY_get_base_id(key.get()) != EVP_PKEY_EC ||
      EVP_PKEY_get_utf8_string_param(key.get(), OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group,
                                     &group_len) != 1 ||
      std::strcmp(group, "prime256v1") != 0) {
    error = "not an EC P-256 public key: " + pem_path;
    return false;
  }
  // The uncompressed point, whatever form the PEM used.
  if (EVP_PKEY_set_utf8_string_param(key.get(), OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT,
                                     "uncompressed") != 1 ||
      EVP_PKEY_get_octet_string_param(key.get(), OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY,
                                      out.point.data(), out.point.size(), &point_len) != 1 ||
      point_len != out.point.size() || out.point[0] != 0x04) {
    error = "cannot read the P-256 point of " + pem_path;
    return false;
  }
  out.id = OpensslCrypto::key_id_of(key.get());
  if (out.id.empty()) {
    error = "cannot compute the key id of " + pem_path;
    return false;
  }
  return true;
}

void OpensslCrypto::sha256_init(Sha256State& s) {
  // Reuse the context of an earlier init of the same state (never finalised) instead of
  // leaking it; the opaque bytes cannot tell, they are uninitialised before the first init.
  EVP_MD_CTX*& ctx = digests_[&s];
  if (ctx == nullptr) ctx = EVP_MD_CTX_new();
  ctx_of(s) = ctx;
  EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr);
}

void OpensslCrypto::sha256_update(Sha256State& s, const std::uint8_t* data, std::size_t len) {
  EVP_DigestUpdate(ctx_of(s), data, len);
}

void OpensslCrypto::sha256_final(Sha256State& s, std::uint8_t digest[32]) {
  EVP_MD_CTX*& ctx = ctx_of(s);
  unsigned int n = 0;
  EVP_DigestFinal_ex(ctx, digest, &n);
  digests_.erase(&s);
  EVP_MD_CTX_free(ctx);
  ctx = nullptr;
}

Crypto::Verify OpensslCrypto::verify_p256(const std::uint8_t pub[proto::kP256PointLen],
                                          const std::uint8_t* msg, std::size_t len,
                                          const std::uint8_t sig[64]) {
  // The point as DER SubjectPublicKeyInfo, which OpenSSL parses and checks (on the curve).
  std::uint8_t spki[proto::kP256SpkiDerLen];
  proto::p256_spki_der(pub, spki);
  const unsigned char* p = spki;
  EVP_PKEY* key = d2i_PUBKEY(nullptr, &p, static_cast<long>(sizeof spki));
  if (key == nullptr) return Verify::bad_signature;
  // Wire signatures are raw r||s (what MCU crypto libraries produce); OpenSSL wants DER.
  ECDSA_SIG* es = ECDSA_SIG_new();
  BIGNUM* r = BN_bin2bn(sig, 32, nullptr);
  BIGNUM* s = BN_bin2bn(sig + 32, 32, nullptr);
  ECDSA_SIG_set0(es, r, s);
  unsigned char* der = nullptr;
  const int der_len = i2d_ECDSA_SIG(es, &der);
  ECDSA_SIG_free(es);
  if (der_len <= 0) {
    EVP_PKEY_free(key);
    return Verify::bad_signature;
  }
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  const bool ok = EVP_DigestVerifyInit(ctx, nullptr, EVP_sha256(), nullptr, key) == 1 &&
                  EVP_DigestVerify(ctx, der, static_cast<std::size_t>(der_len), msg, len) == 1;
  EVP_MD_CTX_free(ctx);
  OPENSSL_free(der);
  EVP_PKEY_free(key);
  return ok ? Verify::ok : Verify::bad_signature;
}

}  // namespace ota::agent::linux_port
