#include "ota/service/keys.hpp"

#include <cstring>

#include "ota/proto/error.hpp"

namespace ota::service {
namespace {

P256Point point_of(const proto::KeySetEntry& e) {
  P256Point pt{};
  std::memcpy(pt.data(), e.pub, pt.size());
  return pt;
}

std::string join_ids(const std::vector<std::string>& ids) {
  std::string out;
  for (const auto& id : ids) out += (out.empty() ? "" : ", ") + id;
  return out.empty() ? "none" : out;
}

}  // namespace

Result<KeyRing> KeyRing::create(const KeyRingConfig& cfg, const std::string& signing_key_id,
                                const P256Point& signing_point) {
  KeyRing r;
  r.flag_online_ = cfg.signing_key_online;
  r.signing_id_ = signing_key_id;
  r.signing_point_ = signing_point;
  auto sp = public_key_from_point(signing_point);
  if (!sp) return sp.context("signing key");
  r.signing_pub_ = std::move(*sp);
  if (!cfg.root_pub_pem.empty()) {
    auto k = public_key_from_pem(cfg.root_pub_pem);
    if (!k) return k.context("root key");
    auto pt = p256_point_of(k->get());
    if (!pt) return pt.context("root key");
    r.configured_root_id_ = key_id_of_point(*pt);
    r.configured_root_ = std::move(*k);
    if (r.configured_root_id_ == signing_key_id)
      return invalid_err("root key " + r.configured_root_id_ +
                         " is the signing key: the root key signs key sets only and stays "
                         "offline");
  }
  for (const auto& pem : cfg.release_pub_pems) {
    auto k = public_key_from_pem(pem);
    if (!k) return k.context("release key");
    auto pt = p256_point_of(k->get());
    if (!pt) return pt.context("release key");
    const std::string id = key_id_of_point(*pt);
    if (id == r.configured_root_id_)
      return invalid_err("release key " + id + " is the root key");
    r.flag_release_[id] = std::move(*k);
  }
  r.recompute();
  return r;
}

Status KeyRing::load(const std::vector<KeySetRec>& history) {
  history_.clear();
  for (const auto& rec : history) {
    Held h{rec, {}};
    proto::Error e = proto::decode_keyset(rec.body.data(), rec.body.size(), h.set);
    if (e)
      return internal_err("key set version " + std::to_string(rec.version) + " in the database: " +
                          proto::errc_name(e.code) + " " + e.field);
    history_.push_back(std::move(h));
  }
  recompute();
  return {};
}

void KeyRing::recompute() {
  root_ = nullptr;
  next_root_.reset();
  root_id_.clear();
  root_source_.clear();
  if (configured_root_) {
    root_ = configured_root_.get();
    root_id_ = configured_root_id_;
    root_source_ = "--root-key";
  }
  // Each set signed by the current root that names a `root` entry makes it the next root.
  for (const auto& h : history_)
    for (std::size_t i = 0; i < h.set.key_count; ++i)
      if (h.set.keys[i].role == proto::KeyRole::root) {
        auto k = public_key_from_point(point_of(h.set.keys[i]));
        if (!k) continue;  // checked when it was pushed
        next_root_ = std::move(*k);
        root_ = next_root_.get();
        root_id_ = h.set.keys[i].id.c_str();
        root_source_ = "next root of key set version " + std::to_string(h.set.version);
      }
  set_release_.clear();
  if (const proto::KeySet* cur = current())
    for (std::size_t i = 0; i < cur->key_count; ++i)
      if (cur->keys[i].role == proto::KeyRole::release) {
        auto k = public_key_from_point(point_of(cur->keys[i]));
        if (k) set_release_[cur->keys[i].id.c_str()] = std::move(*k);
      }
}

std::vector<KeySetRec> KeyRing::history() const {
  std::vector<KeySetRec> out;
  for (const auto& h : history_) out.push_back(h.rec);
  return out;
}

Result<proto::KeySet> KeyRing::verify(const std::string& body) const {
  if (!has_root())
    return invalid_err(
        "key set refused: the controller has no root public key; start it with --root-key "
        "ROOT.pub.pem (the root key devices were provisioned with)");
  proto::KeySet ks;
  proto::Error e = proto::decode_keyset(body.data(), body.size(), ks);
  if (e)
    return invalid_err(std::string("key set refused: not a valid keys message (") +
                       proto::errc_name(e.code) + (*e.field ? std::string(" ") + e.field : "") +
                       "; PROTOCOL.md 6.6)");
  Status ids = check_keyset_ids(ks);
  if (!ids) return ids.context("key set refused");
  if (ks.version <= version())
    return conflict_err("key set refused: version " + std::to_string(ks.version) +
                        " is not newer than the held key set version " +
                        std::to_string(version()) +
                        " (devices apply only a higher version; sign it again with --version " +
                        std::to_string(version() + 1) + ")");
  if (ks.key != root_id_.c_str())
    return invalid_err(std::string("key set refused: signed by key ") + ks.key.c_str() +
                       ", not by the current root key " + root_id_ + " (" + root_source_ +
                       "); devices would refuse it");
  if (!verify_keyset(root_, ks))
    return invalid_err("key set refused: its signature does not verify with the root key " +
                       root_id_ + " (altered after signing, or not signed by that key)");
  bool lists_signing = false;
  for (std::size_t i = 0; i < ks.key_count; ++i)
    if (ks.keys[i].id == signing_id_.c_str() && ks.keys[i].role != proto::KeyRole::root)
      lists_signing = true;
  if (!lists_signing)
    return invalid_err("key set refused: it does not list this controller's signing key " +
                       signing_id_ +
                       " (as online or release key): every offer the controller signs would be "
                       "declined unknown_key. Rotating the online key: push a set with both "
                       "keys, restart the controller with the new --signing-key, then push a set "
                       "without the old one");
  return ks;
}

void KeyRing::adopt(const KeySetRec& rec, const proto::KeySet& set) {
  history_.push_back(Held{rec, set});
  recompute();
}

bool KeyRing::signing_online() const {
  const proto::KeySet* cur = current();
  if (!cur) return flag_online_;
  for (std::size_t i = 0; i < cur->key_count; ++i)
    if (cur->keys[i].id == signing_id_.c_str()) return cur->keys[i].role == proto::KeyRole::online;
  return flag_online_;
}

std::string KeyRing::signing_role() const {
  const proto::KeySet* cur = current();
  if (cur) {
    for (std::size_t i = 0; i < cur->key_count; ++i)
      if (cur->keys[i].id == signing_id_.c_str()) return proto::key_role_name(cur->keys[i].role);
    return "none";
  }
  return flag_online_ ? "online" : "release";
}

std::string KeyRing::signing_role_source() const {
  if (current()) return "key set version " + std::to_string(version());
  return flag_online_ ? "--signing-key-role online" : "--signing-key-role release (default)";
}

EVP_PKEY* KeyRing::release_key(const std::string& id) const {
  if (current()) {
    auto it = set_release_.find(id);
    return it == set_release_.end() ? nullptr : it->second.get();
  }
  auto it = flag_release_.find(id);
  if (it != flag_release_.end()) return it->second.get();
  // Single-key mode: the signing key is a release key.
  if (!flag_online_ && id == signing_id_ && signing_pub_) return signing_pub_.get();
  return nullptr;
}

std::vector<std::string> KeyRing::release_ids() const {
  std::vector<std::string> out;
  if (current()) {
    for (const auto& kv : set_release_) out.push_back(kv.first);
  } else {
    for (const auto& kv : flag_release_) out.push_back(kv.first);
    if (!flag_online_ && !flag_release_.count(signing_id_)) out.push_back(signing_id_);
  }
  return out;
}

std::uint32_t KeyRing::revoked_in(const std::string& id) const {
  if (history_.empty() || set_release_.count(id)) return 0;
  bool was_release = flag_release_.count(id) != 0;
  std::uint32_t dropped = 0;
  for (const auto& h : history_) {
    bool listed = false;
    for (std::size_t i = 0; i < h.set.key_count; ++i)
      if (h.set.keys[i].id == id.c_str() && h.set.keys[i].role == proto::KeyRole::release)
        listed = true;
    if (listed) {
      was_release = true;
      dropped = 0;
    } else if (was_release && dropped == 0) {
      dropped = h.set.version;
    }
  }
  return dropped;
}

std::string KeyRing::why_not_release_key(const std::string& id) const {
  if (release_key(id)) return "";
  if (const std::uint32_t v = revoked_in(id))
    return "release key " + id + " was revoked by key set version " + std::to_string(v) +
           " (the release keys of the held key set version " + std::to_string(version()) +
           " are: " + join_ids(release_ids()) + ")";
  if (current())
    return "release key " + id + " is not a release key of the held key set version " +
           std::to_string(version()) + " (its release keys: " + join_ids(release_ids()) + ")";
  return "release key " + id +
         " is not one the controller knows (it holds no key set; its --release-pub keys: " +
         join_ids(release_ids()) + ")";
}

}  // namespace ota::service
