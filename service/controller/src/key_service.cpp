#include "ota/service/key_service.hpp"

#include <memory>
#include <vector>

#include "ota/proto/messages.hpp"
#include "ota/proto/topics.hpp"
#include "ota/service/log.hpp"
#include "ota/service/util.hpp"

namespace ota::service {

using nlohmann::json;

KeyService::KeyService(Signer signer, KeyRing ring, Publisher* pub, std::string prefix,
                       long long offer_ttl_s, std::function<long long()> now)
    : key_id_(signer.key_id()),
      pub_(pub),
      prefix_(std::move(prefix)),
      offer_ttl_s_(offer_ttl_s),
      now_(std::move(now)),
      signer_(std::move(signer)),
      ring_(std::move(ring)) {}

Status KeyService::load(DbLock& db) {
  auto sets = db.store().key_sets();
  if (!sets) return sets.context("key sets");
  std::lock_guard<std::mutex> lock(mu_);
  Status k = ring_.load(*sets);
  if (!k) return k.err();
  if (ring_.version() > 0 && ring_.signing_role() == "none")
    log_error("key set version " + std::to_string(ring_.version()) +
              " does not list the signing key " + ring_.signing_key_id() +
              ": devices that hold it decline every offer (unknown_key); start the controller "
              "with a signing key of that set");
  log_info("signing key " + ring_.signing_key_id() + " role " + ring_.signing_role() + " (" +
           ring_.signing_role_source() + "); key set version " + std::to_string(ring_.version()) +
           (ring_.has_root() ? "; root key " + ring_.root_id() + " (" + ring_.root_source() + ")"
                             : "; no root key (--root-key): key-set uploads are refused"));
  return {};
}

std::uint32_t KeyService::version() const {
  std::lock_guard<std::mutex> lock(mu_);
  return ring_.version();
}

Result<std::string> KeyService::build_offer(const ImageRec& img, const std::string& offer_id,
                                            const OfferTarget& target) const {
  auto offer = std::make_unique<proto::Offer>();
  offer->deployment.assign(offer_id.c_str());
  proto::Manifest& m = offer->manifest;
  m.deployment.assign(offer_id.c_str());
  m.device.assign(target.device.c_str());
  m.group.assign(target.group.c_str());
  m.rollback = target.rollback;
  m.image.assign(img.id.c_str());
  m.version.assign(img.version.c_str());
  for (const auto& h : img.hw) {
    if (m.hw_count >= proto::kMaxHwModels) break;
    m.hw[m.hw_count++].assign(h.c_str());
  }
  m.size = img.size;
  m.sha256.assign(img.sha256.c_str());
  m.chunk_size = img.chunk_size;
  m.counter = img.counter;
  m.expires = static_cast<std::uint64_t>(now_() / 1000 + offer_ttl_s_);
  m.kind = img.kind == "bundle" ? proto::ImageKind::bundle : proto::ImageKind::firmware;
  std::lock_guard<std::mutex> lock(mu_);
  if (!img.release_sig.empty()) {
    if (!m.release_key.assign(img.release_key.c_str()) || !m.release_sig.assign(img.release_sig.c_str()))
      return internal_err("image " + img.id + ": malformed release signature in the database");
  } else if (ring_.signing_online()) {
    return invalid_err("image " + img.id + " has no release signature; an online key cannot "
                       "offer it (otactl image sign)");
  }
  Status sg = signer_.sign_manifest(m);
  if (!sg) return sg.err();
  std::vector<char> buf(16384);
  std::size_t len = 0;
  proto::Error e = proto::encode_offer(*offer, buf.data(), buf.size(), len);
  if (e)
    return internal_err(std::string("encode offer: ") + proto::errc_name(e.code) + " " + e.field);
  return std::string(buf.data(), len);
}

Status KeyService::check_deployable(const ImageRec& img) const {
  std::lock_guard<std::mutex> lock(mu_);
  if (img.release_sig.empty()) {
    if (!ring_.signing_online()) return {};
    return invalid_err(
        "image " + img.id + " (version " + img.version +
        ") has no release signature, and the controller signs offers with online key " +
        ring_.signing_key_id() + " (" + ring_.signing_role_source() +
        "), which devices accept only together with a release signature. On the signing "
        "machine run `otactl image sign FILE --key RELEASE.pem --version " + img.version +
        " --hw " + join(img.hw, " --hw ") +
        (img.counter ? " --counter " + std::to_string(img.counter) : std::string()) +
        (img.kind == "bundle" ? std::string(" --kind bundle") : std::string()) +
        "`, then upload it with `otactl image add FILE --release FILE.release.json`");
  }
  if (!ring_.release_key(img.release_key))
    return invalid_err("image " + img.id + " (version " + img.version + ") is signed by " +
                       ring_.why_not_release_key(img.release_key) +
                       ": devices would decline it unknown_key. Sign it again with a current "
                       "release key (`otactl image sign`) and upload the new release file "
                       "(`otactl image add FILE --release FILE.release.json`)");
  return {};
}

namespace {

Err release_conflict(const std::string& what, const std::string& given, const std::string& file) {
  return invalid_err(what + " " + given + " conflicts with the release file's " + what + " " + file +
                     " (the release signature covers it; sign the image again to change it)");
}

// What the release signature covers is the image's identity: the file decides, and values
// also given must agree (a mistake, or an attempt to register it as something else).
Status take_release_identity(const proto::Manifest& m, ImageParams& p) {
  std::vector<std::string> hw;
  for (std::size_t i = 0; i < m.hw_count; ++i) hw.emplace_back(m.hw[i].c_str());
  const std::string kind = m.kind == proto::ImageKind::bundle ? "bundle" : "firmware";
  if (!p.version.empty() && p.version != m.version.c_str())
    return release_conflict("version", p.version, m.version.c_str());
  if (!p.hw.empty() && p.hw != hw) return release_conflict("hw", join(p.hw, ","), join(hw, ","));
  if (p.counter_given && p.counter != m.counter)
    return release_conflict("counter", std::to_string(p.counter), std::to_string(m.counter));
  if (p.security_release)
    return invalid_err("counter 'next' (a security release) cannot be used with a release file: "
                       "its counter is signed (sign it with --counter N)");
  if (p.kind_given && p.kind != kind) return release_conflict("kind", p.kind, kind);
  p.version = m.version.c_str();
  p.hw = hw;
  p.counter = m.counter;
  p.kind = kind;
  return {};
}

}  // namespace

Result<std::pair<std::string, std::string>> KeyService::check_release(const std::string& sha,
                                                                      std::size_t size,
                                                                      ImageParams& p) const {
  auto m = std::make_unique<proto::Manifest>();
  proto::Error e = proto::decode_release(p.release.data(), p.release.size(), *m);
  if (e)
    return invalid_err(std::string("release file: not a valid release signature (") +
                       proto::errc_name(e.code) + (*e.field ? std::string(" ") + e.field : "") +
                       "; made by `otactl image sign`, PROTOCOL.md 6.5)");
  Status id = take_release_identity(*m, p);
  if (!id) return id.err();
  if (sha != m->sha256.c_str() || size != m->size)
    return invalid_err(std::string("release file is for sha256 ") + m->sha256.c_str() + " (" +
                       std::to_string(m->size) + " bytes), but the uploaded image is sha256 " +
                       sha + " (" + std::to_string(size) +
                       " bytes): upload the file that was signed (for a directory, the .bundle "
                       "`otactl image sign` wrote next to the release file)");
  const std::string rkey = m->release_key.c_str();
  std::lock_guard<std::mutex> lock(mu_);
  EVP_PKEY* key = ring_.release_key(rkey);
  if (!key)
    return invalid_err("release signature refused: " + ring_.why_not_release_key(rkey) +
                       "; devices would decline it unknown_key");
  if (!verify_release(key, *m))
    return invalid_err("release signature does not verify with release key " + rkey +
                       ": the release file was altered after signing, or the image's version, "
                       "hw, counter or kind differ from what was signed");
  return std::make_pair(rkey, std::string(m->release_sig.c_str()));
}

void KeyService::send_keys(const std::string& dev, bool force, std::uint32_t device_version) {
  std::lock_guard<std::mutex> lock(mu_);
  const KeySetRec* cur = ring_.current_rec();
  if (!cur || !pub_) return;
  const long long t = now_ms();
  Sent& ks = sent_[dev];
  if (!force && ks.version == cur->version && ks.count >= kQuickResends && t - ks.ms < kResendMs)
    return;
  const std::string topic = topic_for(prefix_, static_cast<int>(proto::TopicKind::keys), dev);
  if (!pub_->publish(topic, cur->body.data(), cur->body.size(), 1, false)) {
    log_warn("device " + dev + ": publish key set version " + std::to_string(cur->version) +
             " failed");
    return;
  }
  if (ks.version != cur->version) ks.count = 0;
  ks.version = cur->version;
  ks.ms = t;
  ks.count++;
  if (ks.count == kQuickResends + 1)
    log_warn("device " + dev + " still reports key set version " + std::to_string(device_version) +
             " after " + std::to_string(kQuickResends) + " deliveries of version " +
             std::to_string(cur->version) +
             ": it refuses the set (another root key?); sending it again at most every " +
             std::to_string(kResendMs / 60000) + " minutes");
  log(LogLevel::debug, "device " + dev + ": sent key set version " + std::to_string(cur->version));
}

Result<std::uint32_t> KeyService::push(DbLock& db, const std::string& body, const std::string& actor) {
  std::lock_guard<std::mutex> lock(mu_);
  auto ks = ring_.verify(body);
  if (!ks) return ks.err();
  // Devices get the set re-encoded by the reference codec: the same members, canonical order.
  std::vector<char> buf(16384);
  std::size_t len = 0;
  proto::Error e = proto::encode_keyset(*ks, buf.data(), buf.size(), len);
  if (e)
    return internal_err(std::string("key set: encode: ") + proto::errc_name(e.code) + " " + e.field);
  KeySetRec rec;
  rec.version = ks->version;
  rec.body.assign(buf.data(), len);
  rec.signed_by = ks->key.c_str();
  rec.uploaded_by = actor.empty() ? "controller" : actor;
  rec.uploaded_at = now_s();
  std::string listing;
  for (std::size_t i = 0; i < ks->key_count; ++i)
    listing += std::string(listing.empty() ? "" : " ") + ks->keys[i].id.c_str() + ":" +
               proto::key_role_name(ks->keys[i].role);
  Tx tx(db.store());
  Status s = tx.status();
  if (s) s = db.store().insert_key_set(rec);
  if (s)
    db.event("", "", "keys_pushed",
             "key set version " + std::to_string(rec.version) + " signed by " + rec.signed_by + ": " +
                 listing,
             actor);
  if (s) s = tx.commit();
  if (!s) return s.context("key set: db");
  const std::vector<std::string> before = ring_.release_ids();
  ring_.adopt(rec, *ks);
  std::string revoked;
  for (const auto& id : before)
    if (!ring_.release_key(id)) revoked += (revoked.empty() ? "" : ", ") + id;
  log_info("key set version " + std::to_string(rec.version) + " (" + listing + ") pushed by " +
           rec.uploaded_by + (revoked.empty() ? "" : "; release keys revoked: " + revoked));
  return rec.version;
}

json KeyService::to_json() const {
  std::lock_guard<std::mutex> lock(mu_);
  json out;
  const KeySetRec* rec = ring_.current_rec();
  const proto::KeySet* cur = ring_.current();
  out["version"] = ring_.version();
  json jkeys = json::array();
  if (cur) {
    for (std::size_t i = 0; i < cur->key_count; ++i)
      jkeys.push_back(json{{"id", cur->keys[i].id.c_str()},
                           {"role", proto::key_role_name(cur->keys[i].role)},
                           {"pub", hex_of(cur->keys[i].pub, proto::kP256PointLen)}});
    out["signed_by"] = rec->signed_by;
    out["uploaded_by"] = rec->uploaded_by;
    out["uploaded_at"] = rec->uploaded_at;
  } else {
    // No set yet: what devices were provisioned with, as far as the controller knows.
    for (const auto& id : ring_.release_ids()) jkeys.push_back(json{{"id", id}, {"role", "release"}});
    if (ring_.signing_online())
      jkeys.push_back(json{{"id", ring_.signing_key_id()}, {"role", "online"}});
    out["signed_by"] = nullptr;
    out["uploaded_by"] = nullptr;
    out["uploaded_at"] = nullptr;
  }
  out["keys"] = jkeys;
  out["root"] = ring_.has_root() ? json{{"id", ring_.root_id()}, {"source", ring_.root_source()}} : json();
  out["signing_key"] = json{{"id", ring_.signing_key_id()},
                            {"role", ring_.signing_role()},
                            {"source", ring_.signing_role_source()}};
  json hist = json::array();
  for (const auto& h : ring_.history())
    hist.push_back(json{{"version", h.version},
                        {"signed_by", h.signed_by},
                        {"uploaded_by", h.uploaded_by},
                        {"uploaded_at", h.uploaded_at}});
  out["history"] = hist;
  return out;
}

}  // namespace ota::service
