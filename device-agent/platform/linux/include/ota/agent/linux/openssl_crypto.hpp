#pragma once

#include <map>
#include <string>

#include "ota/agent/ports.hpp"

typedef struct evp_pkey_st EVP_PKEY;
typedef struct evp_md_ctx_st EVP_MD_CTX;

namespace ota::agent::linux_port {

// Crypto port on OpenSSL 3 (EVP). Trusted release keys are loaded from PEM public keys;
// each is known by its key id (hex of the first 8 bytes of SHA-256 of its DER SPKI).
class OpensslCrypto final : public Crypto {
 public:
  OpensslCrypto() = default;
  ~OpensslCrypto() override;
  OpensslCrypto(const OpensslCrypto&) = delete;
  OpensslCrypto& operator=(const OpensslCrypto&) = delete;

  // Adds a trusted key; returns its key id, or an empty string with `error` set.
  std::string add_trusted_key_pem(const std::string& pem_path, std::string& error);

  void sha256_init(Sha256State& s) override;
  void sha256_update(Sha256State& s, const std::uint8_t* data, std::size_t len) override;
  void sha256_final(Sha256State& s, std::uint8_t digest[32]) override;
  Verify verify_p256(const char* key_id, const std::uint8_t* msg, std::size_t len,
                     const std::uint8_t sig[64]) override;

  static std::string key_id_of(EVP_PKEY* key);

 private:
  std::map<std::string, EVP_PKEY*> keys_;
  // Digest contexts by the state that uses them. The core may init a state again without
  // final (a transfer restarts) or drop it (power cut), so the port owns and frees them.
  std::map<const Sha256State*, EVP_MD_CTX*> digests_;
};

}  // namespace ota::agent::linux_port
