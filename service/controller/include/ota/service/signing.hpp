// Signing and verification for the controller and otactl (no controller state): manifests,
// release signatures (PROTOCOL.md 6.5) and key sets (6.6). ECDSA P-256 over SHA-256, raw r||s
// hex signatures. Library ota_signing (OpenSSL + ota::proto only), so that otactl signs
// offline with exactly the code the controller verifies with.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

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
  // Fills m.release_key and m.release_sig over canonical_release(m) (PROTOCOL.md 6.5).
  Status sign_release(proto::Manifest& m) const;
  // Fills k.key and k.sig over canonical_keyset(k) (PROTOCOL.md 6.6).
  Status sign_keyset(proto::KeySet& k) const;

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
// Loads a P-256 public key from a PEM file (`what` names it in errors: "--root-key").
Result<PkeyPtr> load_public_key_file(const std::string& path, const std::string& what);

// Verifies m.release_sig over canonical_release(m) (m.release_key must be set).
bool verify_release(EVP_PKEY* key, const proto::Manifest& m);
// Verifies k.sig over canonical_keyset(k).
bool verify_keyset(EVP_PKEY* key, const proto::KeySet& k);

using P256Point = std::array<std::uint8_t, proto::kP256PointLen>;
// The uncompressed point (04 || X || Y) of a P-256 key.
Result<P256Point> p256_point_of(EVP_PKEY* key);
// A public key from an uncompressed point; invalid_err if it is not a point of P-256.
Result<PkeyPtr> public_key_from_point(const P256Point& point);
// Key id (6.4) of a point: SHA-256 of proto::p256_spki_der(point), first 8 bytes, hex.
std::string key_id_of_point(const P256Point& point);
// Every key of a set has the id of its public key; invalid_err naming the first that has not.
Status check_keyset_ids(const proto::KeySet& k);

// Lower-case hex of bytes.
std::string hex_of(const void* data, std::size_t len);

// A private key file is refused when group or others may read it (whoever reads a release key
// can sign software; a root key, replace the trusted keys). invalid_err with the chmod to run.
Status check_private_key_file(const std::string& path, const std::string& what);
// The whole file; invalid_err("<what> <path>: <strerror>") if it cannot be read.
Result<std::string> read_file_text(const std::string& path, const std::string& what);

}  // namespace ota::service
