// Image catalog: registering uploaded images (content-addressed files in the store
// directory, a row in the database, an optional release signature) and finding them.
//
// Owns: nothing in memory; the image files on disk. Uses the database (lock taken inside
//   add(), around the checks and the insert, not around writing the file) and the key
//   service (release signatures).
// Threads: HTTP workers.
#pragma once

#include <string>

#include "ota/service/controller_config.hpp"
#include "ota/service/database.hpp"
#include "ota/service/images.hpp"
#include "ota/service/key_service.hpp"
#include "ota/service/store.hpp"

namespace ota::service {

struct AddImageResult {
  ImageRec image;
  bool created = false;
};

// An image by id or version.
Result<ImageRec> resolve_image(Store& store, const std::string& ref);

class ImageCatalog {
 public:
  ImageCatalog(const ControllerConfig& cfg, Database& db, KeyService& keys)
      : cfg_(cfg), db_(db), keys_(keys) {}
  // actor: who asked, for the event log. Takes the database lock itself.
  Result<AddImageResult> add(const std::string& bytes, const ImageParams& params,
                             const std::string& actor);

 private:
  // An image already stored with these bytes or this version (or none yet); attaches a new
  // release signature to the same image.
  Result<std::optional<ImageRec>> existing(DbLock& db, const std::string& sha, const ImageParams& p,
                                           const std::string& release_key,
                                           const std::string& release_sig, const std::string& actor);
  Result<ImageRec> insert(DbLock& db, const std::string& sha, std::size_t size, const ImageParams& p,
                          const std::string& release_key, const std::string& release_sig,
                          const std::string& actor);

  const ControllerConfig& cfg_;
  Database& db_;
  KeyService& keys_;
};

}  // namespace ota::service
