#include "ota/service/image_catalog.hpp"

#include <algorithm>

#include "ota/proto/messages.hpp"
#include "ota/service/log.hpp"
#include "ota/service/signing.hpp"
#include "ota/service/util.hpp"

namespace ota::service {

Result<ImageRec> resolve_image(Store& store, const std::string& ref) {
  if (ref.empty()) return invalid_err("image is required (id or version)");
  auto byid = store.image_by_id(ref);
  if (!byid) return byid.err();
  if (*byid) return **byid;
  auto byver = store.image_by_version(ref);
  if (!byver) return byver.err();
  if (*byver) return **byver;
  return not_found_err("unknown image " + ref);
}

namespace {

// The same image again, or the same one with a (new) release signature, which is attached
// to it (signed after the upload, or again after a rotation).
Result<std::optional<ImageRec>> same_image(DbLock& db, const ImageRec& have, const ImageParams& p,
                                           const std::string& release_key,
                                           const std::string& release_sig, const std::string& actor) {
  if (release_sig.empty() || (have.release_key == release_key && have.release_sig == release_sig))
    return std::optional<ImageRec>(have);
  if (have.counter != p.counter || have.hw != p.hw || have.kind != p.kind)
    return conflict_err("image add: image " + have.id + " version " + have.version +
                        " is stored with counter " + std::to_string(have.counter) + ", hw " +
                        join(have.hw, ",") + ", kind " + have.kind +
                        "; the release file says counter " + std::to_string(p.counter) + ", hw " +
                        join(p.hw, ",") + ", kind " + p.kind + ": sign it again with the stored values");
  Tx tx(db.store());
  Status s = tx.status();
  if (s) s = db.store().set_image_release(have.id, release_key, release_sig);
  if (s)
    db.event("", "", "image_release_signed",
             have.id + " version " + have.version + " release key " + release_key +
                 (have.release_key.empty() ? "" : " (was " + have.release_key + ")"),
             actor);
  if (s) s = tx.commit();
  if (!s) return s.context("image add: db");
  log_info("image " + have.id + " version " + have.version + ": release signature by " +
           release_key + " stored");
  ImageRec out = have;
  out.release_key = release_key;
  out.release_sig = release_sig;
  return std::optional<ImageRec>(out);
}

}  // namespace

Result<std::optional<ImageRec>> ImageCatalog::existing(DbLock& db, const std::string& sha,
                                                       const ImageParams& p,
                                                       const std::string& release_key,
                                                       const std::string& release_sig,
                                                       const std::string& actor) {
  auto by_sha = db.store().image_by_sha(sha);
  if (!by_sha) return by_sha.context("image add: store");
  if (*by_sha) {
    if ((*by_sha)->version == p.version) return same_image(db, **by_sha, p, release_key, release_sig, actor);
    return conflict_err("image add: these bytes are already image " + (*by_sha)->id +
                        " with version " + (*by_sha)->version);
  }
  auto by_ver = db.store().image_by_version(p.version);
  if (!by_ver) return by_ver.context("image add: store");
  if (*by_ver)
    return conflict_err("image add: version " + p.version + " already exists as image " +
                        (*by_ver)->id + " with different content (sha256 " + (*by_ver)->sha256 + ")");
  return std::optional<ImageRec>();
}

Result<ImageRec> ImageCatalog::insert(DbLock& db, const std::string& sha, std::size_t size,
                                      const ImageParams& p, const std::string& release_key,
                                      const std::string& release_sig, const std::string& actor) {
  ImageRec rec;
  rec.id = sha.substr(0, proto::kImageIdLen);
  rec.sha256 = sha;
  rec.version = p.version;
  rec.hw = p.hw;
  rec.size = size;
  rec.chunk_size = p.chunk_size;
  rec.counter = p.counter;
  if (p.security_release) {
    auto images = db.store().list_images();
    if (!images) return images.context("image add: store");
    std::uint32_t highest = 0;
    for (const auto& i : *images) highest = std::max(highest, i.counter);
    if (highest >= kMaxImageCounter)
      return invalid_err("image add: security release: the highest counter is already " +
                         std::to_string(highest) + " (the limit)");
    rec.counter = highest + 1;
  }
  rec.kind = p.kind;
  rec.created_at = now_s();
  rec.release_key = release_key;
  rec.release_sig = release_sig;
  Tx tx(db.store());
  if (!tx.status()) return tx.status().context("image add: db");
  Status s = db.store().insert_image(rec);
  if (!s) return s.context("image add: db");
  db.event("", "", "image_added",
           rec.id + " version " + rec.version + " hw " + join(rec.hw, ",") + " size " +
               std::to_string(rec.size) + (rec.release_key.empty() ? "" : " release key " + rec.release_key),
           actor);
  s = tx.commit();
  if (!s) return s.context("image add: db");
  log_info("image added " + rec.id + " version " + rec.version + " (" + std::to_string(rec.size) +
           " bytes)");
  return rec;
}

Result<AddImageResult> ImageCatalog::add(const std::string& bytes, const ImageParams& params,
                                         const std::string& actor) {
  if (bytes.empty()) return invalid_err("image add: image is empty");
  if (bytes.size() > 0xFFFFFFFFull) return invalid_err("image add: image larger than 4 GiB");
  const std::string sha = sha256_hex(bytes.data(), bytes.size());
  ImageParams p = params;
  std::string release_key, release_sig;
  if (!p.release.empty()) {
    auto rel = keys_.check_release(sha, bytes.size(), p);
    if (!rel) return rel.context("image add");
    release_key = rel->first;
    release_sig = rel->second;
  }
  Status v = validate_image(bytes, p);
  if (!v) return v.context("image add");
  {
    DbLock db(db_);
    auto c = existing(db, sha, p, release_key, release_sig, actor);
    if (!c) return c.err();
    if (*c) return AddImageResult{**c, false};
  }
  auto path = write_image_file(cfg_.store_dir, sha, bytes.data(), bytes.size());
  if (!path) return path.context("image add: store");

  DbLock db(db_);
  auto c = existing(db, sha, p, release_key, release_sig, actor);  // another request may have raced us
  if (!c) return c.err();
  if (*c) return AddImageResult{**c, false};
  auto rec = insert(db, sha, bytes.size(), p, release_key, release_sig, actor);
  if (!rec) return rec.err();
  return AddImageResult{*rec, true};
}

}  // namespace ota::service
