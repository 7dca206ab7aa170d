#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <string>

#include "ota/agent/ports.hpp"

typedef struct evp_pkey_st EVP_PKEY;
typedef struct evp_md_ctx_st EVP_MD_CTX;

namespace ota::agent::linux_port {

// A P-256 public key read from a PEM file: its key id (hex of the first 8 bytes of SHA-256 of
// its DER SubjectPublicKeyInfo, PROTOCOL.md 6.4) and its uncompressed point (04 || X || Y),
// the form the agent core keeps (AgentConfig::keys).
struct PublicKey {
  std::string id;
  std::array<std::uint8_t, proto::kP256PointLen> point{};
};
// False with `error` set when the file cannot be read or holds no P-256 public key.
bool load_public_key_pem(const std::string& pem_path, PublicKey& out, std::string& error);

// Crypto port on OpenSSL 3 (EVP): SHA-256, and ECDSA P-256 verification with the point the
// core hands over.
class OpensslCrypto final : public Crypto {
 public:
  OpensslCrypto() = default;
  ~OpensslCrypto() override;
  OpensslCrypto(const OpensslCrypto&) = delete;
  OpensslCrypto& operator=(const OpensslCrypto&) = delete;

  void sha256_init(Sha256State& s) override;
  void sha256_update(Sha256State& s, const std::uint8_t* data, std::size_t len) override;
  void sha256_final(Sha256State& s, std::uint8_t digest[32]) override;
  Verify verify_p256(const std::uint8_t pub[proto::kP256PointLen], const std::uint8_t* msg,
                     std::size_t len, const std::uint8_t sig[64]) override;

  static std::string key_id_of(EVP_PKEY* key);

 private:
  // Digest contexts by the state that uses them. The core may init a state again without
  // final (a transfer restarts) or drop it (power cut), so the port owns and frees them.
  std::map<const Sha256State*, EVP_MD_CTX*> digests_;
};

}  // namespace ota::agent::linux_port
