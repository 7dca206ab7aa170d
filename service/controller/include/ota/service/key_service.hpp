// Keys: what the controller signs offers with, what it trusts (PROTOCOL.md 6.5, 6.6), and
// the delivery of key sets to devices.
//
// Owns: the signing key (Signer); the KeyRing (root key, the key sets pushed, the release
//   keys accepted); which key set was last sent to which device, when and how often.
// Lock: mu_, a leaf (it only publishes while holding it). push() takes the database lock
//   as a parameter (the caller holds it first).
// Threads: HTTP workers (keys, image add, deploy, rollouts), MQTT network thread (hello:
//   key set delivery; offers), tick thread (rollout offers).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <utility>

#include <nlohmann/json.hpp>

#include "ota/service/database.hpp"
#include "ota/service/images.hpp"
#include "ota/service/keys.hpp"
#include "ota/service/publisher.hpp"
#include "ota/service/signing.hpp"
#include "ota/service/store.hpp"

namespace ota::service {

// Whom a signed offer is for (the manifest's binding members).
struct OfferTarget {
  std::string device;     // one device, or
  std::string group;      // one group (a retained group offer)
  bool rollback = false;  // a downgrade the operator ordered (rollout rollback)
};

class KeyService {
 public:
  // now: the controller's clock (offer expiry).
  KeyService(Signer signer, KeyRing ring, Publisher* pub, std::string prefix, long long offer_ttl_s,
             std::function<long long()> now);
  KeyService(const KeyService&) = delete;
  KeyService& operator=(const KeyService&) = delete;

  // The held key sets from the database (at start); logs the signing key's role.
  Status load(DbLock& db);
  const std::string& key_id() const { return key_id_; }  // the signing key's (fixed)
  std::uint32_t version() const;

  // Signed offer JSON for `img` under the deployment id devices will use, bound to that id
  // and to `target`.
  Result<std::string> build_offer(const ImageRec& img, const std::string& offer_id,
                                  const OfferTarget& target) const;
  // Whether devices would take an offer of `img` signed now: with an online signing key it
  // needs a release signature, and a release signature's key must be trusted (not revoked).
  Status check_deployable(const ImageRec& img) const;
  // The release file checks of an image upload: fills p from it, checks it against the
  // bytes' sha256/size, the known release keys and its signature; returns the key and sig.
  Result<std::pair<std::string, std::string>> check_release(const std::string& sha,
                                                            std::size_t size,
                                                            ImageParams& p) const;

  // Sends the held key set to `dev` (topic .../down/keys). Unless `force`, a version already
  // sent kQuickResends times goes again only after kResendMs: a device that refuses the set
  // says hello after each one (it may have another root). device_version: what it reported.
  void send_keys(const std::string& dev, bool force, std::uint32_t device_version);

  // PUT /api/v1/keys: verifies the `keys` message, stores and logs it (its own transaction)
  // and takes it as the held set. Returns the new version.
  Result<std::uint32_t> push(DbLock& db, const std::string& body, const std::string& actor);
  // GET /api/v1/keys without devices_by_version: the held set, the root, the signing key.
  nlohmann::json to_json() const;

  static constexpr long long kResendMs = 600000;
  static constexpr int kQuickResends = 3;

 private:
  const std::string key_id_;
  Publisher* const pub_;
  const std::string prefix_;
  const long long offer_ttl_s_;
  const std::function<long long()> now_;

  mutable std::mutex mu_;
  Signer signer_;
  KeyRing ring_;
  struct Sent {
    std::uint32_t version = 0;
    long long ms = 0;
    int count = 0;
  };
  std::map<std::string, Sent> sent_;  // device -> last key set sent
};

}  // namespace ota::service
