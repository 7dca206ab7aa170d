#include "ota/agent/linux/openssl_crypto.hpp"

#include <openssl/bn.h>
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
  for (auto& [id, key] : keys_) EVP_PKEY_free(key);
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

std::string OpensslCrypto::add_trusted_key_pem(const std::string& pem_path, std::string& error) {
  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(pem_path.c_str(), "r"), &std::fclose);
  if (!f) {
    error = "cannot open release public key " + pem_path;
    return {};
  }
  EVP_PKEY* key = PEM_read_PUBKEY(f.get(), nullptr, nullptr, nullptr);
  if (key == nullptr) {
    error = "not a PEM public key: " + pem_path;
    return {};
  }
  if (EVP_PKEY_get_base_id(key) != EVP_PKEY_EC) {
    EVP_PKEY_free(key);
    error = "release key is not an EC (P-256) key: " + pem_path;
    return {};
  }
  std::string id = key_id_of(key);
  auto it = keys_.find(id);
  if (it != keys_.end()) EVP_PKEY_free(it->second);
  keys_[id] = key;
  return id;
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

Crypto::Verify OpensslCrypto::verify_p256(const char* key_id, const std::uint8_t* msg,
                                          std::size_t len, const std::uint8_t sig[64]) {
  auto it = keys_.find(key_id);
  if (it == keys_.end()) return Verify::unknown_key;
  // Wire signatures are raw r||s (what MCU crypto libraries produce); OpenSSL wants DER.
  ECDSA_SIG* es = ECDSA_SIG_new();
  BIGNUM* r = BN_bin2bn(sig, 32, nullptr);
  BIGNUM* s = BN_bin2bn(sig + 32, 32, nullptr);
  ECDSA_SIG_set0(es, r, s);
  unsigned char* der = nullptr;
  const int der_len = i2d_ECDSA_SIG(es, &der);
  ECDSA_SIG_free(es);
  if (der_len <= 0) return Verify::bad_signature;
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  const bool ok = EVP_DigestVerifyInit(ctx, nullptr, EVP_sha256(), nullptr, it->second) == 1 &&
                  EVP_DigestVerify(ctx, der, static_cast<std::size_t>(der_len), msg, len) == 1;
  EVP_MD_CTX_free(ctx);
  OPENSSL_free(der);
  return ok ? Verify::ok : Verify::bad_signature;
}

}  // namespace ota::agent::linux_port
