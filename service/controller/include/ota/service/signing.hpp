// Release-key signing of manifests: ECDSA P-256 over SHA-256, raw r||s hex signatures.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "ota/proto/messages.hpp"
#include "ota/service/result.hpp"

typedef struct evp_pkey_st EVP_PKEY;

namespace ota::service {

struct PkeyDeleter {
  void operator()(EVP_PKEY* k) const;
};
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyDeleter>;

// Hex SHA-256 of bytes (lower case).
std::string sha256_hex(const void* data, std::size_t len);

// Key id: hex of the first 8 bytes of SHA-256 of the public key's DER SubjectPublicKeyInfo.
Result<std::string> key_id_of(EVP_PKEY* key);

class Signer {
 public:
  // Loads an EC P-256 private key from a PEM file.
  static Result<Signer> load(const std::string& pem_path);
  static Result<Signer> from_pem(const std::string& pem);

  const std::string& key_id() const { return key_id_; }
  EVP_PKEY* key() const { return key_.get(); }
  // Public key as PEM (SubjectPublicKeyInfo).
  std::string public_pem() const;

  // Signs `data` and returns 128 hex chars (raw r||s).
  Result<std::string> sign_hex(const void* data, std::size_t len) const;
  // Fills m.key and m.sig over canonical_manifest(m).
  Status sign_manifest(proto::Manifest& m) const;

 private:
  PkeyPtr key_;
  std::string key_id_;
};

// Verifies a raw r||s hex signature over data with a public (or private) EC key.
bool verify_hex(EVP_PKEY* key, const void* data, std::size_t len, const std::string& sig_hex);
// Verifies manifest.sig over canonical_manifest(manifest).
bool verify_manifest(EVP_PKEY* key, const proto::Manifest& m);
// Loads a public key from PEM text.
Result<PkeyPtr> public_key_from_pem(const std::string& pem);

}  // namespace ota::service
