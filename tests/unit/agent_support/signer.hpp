// Release signing for tests: a fresh EC P-256 key, its PEM public key in a temp file, and
// signed offers built the way the controller builds them.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "ota/agent/agent.hpp"
#include "ota/proto/messages.hpp"

typedef struct evp_pkey_st EVP_PKEY;

namespace ota::agent::test {

// A temporary directory removed (recursively) on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

class TestSigner {
 public:
  TestSigner();
  ~TestSigner();
  TestSigner(const TestSigner&) = delete;
  TestSigner& operator=(const TestSigner&) = delete;

  const std::string& key_id() const { return key_id_; }
  const std::string& pem_path() const { return pem_path_; }
  // The public key as an uncompressed P-256 point (04 || X || Y).
  const std::array<std::uint8_t, proto::kP256PointLen>& point() const { return point_; }
  // This key provisioned into an agent (AgentConfig::keys) in `role`.
  ProvisionedKey provisioned(proto::KeyRole role = proto::KeyRole::release) const;
  // This key as an entry of a key set (PROTOCOL.md 6.6).
  proto::KeySetEntry entry(proto::KeyRole role) const;
  // Raw r||s (64 bytes) of ECDSA P-256 / SHA-256 over `msg`.
  std::vector<std::uint8_t> sign_raw(const std::uint8_t* msg, std::size_t len) const;
  // Sets m.key to this key and m.sig over canonical_manifest(m).
  void sign(proto::Manifest& m) const;
  // Sets m.release_key to this key and m.release_sig over canonical_release(m) (6.5). Sign
  // the manifest itself afterwards: its signature covers the release members.
  void sign_release(proto::Manifest& m) const;
  // Sets k.key to this key and k.sig over canonical_keyset(k).
  void sign_keyset(proto::KeySet& k) const;

 private:
  TempDir dir_;
  EVP_PKEY* key_ = nullptr;
  std::string key_id_;
  std::string pem_path_;
  std::array<std::uint8_t, proto::kP256PointLen> point_{};
};

struct OfferOptions {
  std::string deployment = "dep-1";
  std::string version = "1.1.0";
  std::string hw = "sim-board";
  std::uint32_t chunk_size = 1024;
  std::uint32_t counter = 1;
  std::uint64_t expires = 1'900'000'000;
  proto::ImageKind kind = proto::ImageKind::firmware;
  // Binding (PROTOCOL.md section 7, check 3a): the manifest is signed for `deployment` and
  // for this device, or for this group when `group` is set.
  std::string device = "dev-1";
  std::string group;
  bool rollback = false;
  bool unbound = false;  // sign without any binding (as before the binding existed)
  // When set, the manifest describes these bytes instead of the served image.
  const std::vector<std::uint8_t>* manifest_image = nullptr;
  // When set, a release signature by this key (6.5) before the manifest is signed.
  const TestSigner* release = nullptr;
};

std::vector<std::uint8_t> random_image(std::size_t size, std::uint32_t seed);
std::string sha256_hex(const std::uint8_t* data, std::size_t len);
// A signed offer for `image`.
proto::Offer make_offer(const TestSigner& signer, const std::vector<std::uint8_t>& image,
                        const OfferOptions& opt = {});
std::vector<std::uint8_t> encode(const proto::Offer& offer);
// A key set of `entries` (each a signer and its role), version `version`, signed by `root`.
proto::KeySet make_keyset(std::uint32_t version,
                          const std::vector<std::pair<const TestSigner*, proto::KeyRole>>& entries,
                          const TestSigner& root);
std::vector<std::uint8_t> encode(const proto::KeySet& set);

}  // namespace ota::agent::test
