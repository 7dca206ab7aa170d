// What the controller trusts and how it signs (PROTOCOL.md 6.5, 6.6): the root public key
// (--root-key), the key sets the operator pushed (signed by the root, kept in the database),
// the release keys it accepts release signatures from, and the role of its own signing key.
// Pure logic, no locking and no I/O: the KeyService (key_service.hpp) owns one and serialises
// access.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "ota/proto/messages.hpp"
#include "ota/service/result.hpp"
#include "ota/service/signing.hpp"
#include "ota/service/store.hpp"

namespace ota::service {

struct KeyRingConfig {
  // --root-key: the root public key devices were provisioned with (PEM text); empty: none,
  // and key-set uploads are refused.
  std::string root_pub_pem;
  // --release-pub: release public keys (PEM texts) whose release signatures the controller
  // accepts while it holds no key set.
  std::vector<std::string> release_pub_pems;
  // --signing-key-role online: the signing key is an online key even before a key set says
  // so (devices provisioned with it as `online`). A held key set decides otherwise.
  bool signing_key_online = false;
};

class KeyRing {
 public:
  // signing_point: the public point of the controller's --signing-key.
  static Result<KeyRing> create(const KeyRingConfig& cfg, const std::string& signing_key_id,
                                const P256Point& signing_point);

  // The held key sets from the database, oldest first (each was verified when pushed).
  Status load(const std::vector<KeySetRec>& history);

  // Checks a pushed `keys` message: decodes (field rules), key ids, a version above the
  // held one, signed by the current root, and the controller's signing key still in it.
  // invalid_err (a bad set: 400) or conflict_err (not newer than the held set: 409).
  Result<proto::KeySet> verify(const std::string& body) const;
  // Takes a verified set as the newest held one (after it was stored).
  void adopt(const KeySetRec& rec, const proto::KeySet& set);

  bool has_root() const { return !root_id_.empty(); }
  std::uint32_t version() const { return history_.empty() ? 0 : history_.back().set.version; }
  const KeySetRec* current_rec() const { return history_.empty() ? nullptr : &history_.back().rec; }
  const proto::KeySet* current() const { return history_.empty() ? nullptr : &history_.back().set; }
  std::vector<KeySetRec> history() const;

  // The root key the next set must be signed by: the `root` entry of the newest held set
  // that names one, else the configured one. Empty id: none.
  const std::string& root_id() const { return root_id_; }
  std::string root_source() const { return root_source_; }

  // The signing key's role: the newest held set's word on it, else the flag.
  bool signing_online() const;
  // "release" | "online" | "none" (a held set that does not list it), and where that comes from.
  std::string signing_role() const;
  std::string signing_role_source() const;
  const std::string& signing_key_id() const { return signing_id_; }

  // Release keys whose signatures are accepted now: the newest held set's `release` keys, or
  // without a set the --release-pub keys plus the signing key itself in single-key mode.
  EVP_PKEY* release_key(const std::string& id) const;
  std::vector<std::string> release_ids() const;
  // The version of the held set that dropped `id` as a release key (revoked it); 0 if it
  // was never a release key of a held set, or still is one.
  std::uint32_t revoked_in(const std::string& id) const;
  // Why a release key id is not accepted, for error messages ("" if it is).
  std::string why_not_release_key(const std::string& id) const;

 private:
  struct Held {
    KeySetRec rec;
    proto::KeySet set;
  };
  void recompute();

  PkeyPtr configured_root_;
  std::string configured_root_id_;
  std::map<std::string, PkeyPtr> flag_release_;  // --release-pub, by id
  bool flag_online_ = false;
  std::string signing_id_;
  P256Point signing_point_{};
  PkeyPtr signing_pub_;
  std::vector<Held> history_;
  // Derived (recompute()).
  EVP_PKEY* root_ = nullptr;  // the root the next set must be signed by (one of the two)
  PkeyPtr next_root_;
  std::string root_id_, root_source_;
  std::map<std::string, PkeyPtr> set_release_;  // release keys of the newest held set
};

}  // namespace ota::service
