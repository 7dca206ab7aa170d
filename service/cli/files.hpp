// otactl's local files: images and the bundles built from directories, release files, files
// written atomically, and private signing keys. Errors are printed ("otactl: ...").
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <optional>
#include <string>
#include <vector>

#include "ota/proto/messages.hpp"
#include "ota/service/signing.hpp"

namespace otactl {

// The bytes `image add` / `image sign` upload or sign: a file as it is (a bundle file is
// checked), or the bundle built from a directory. kExitOk, or the exit code after the error
// was printed. `kind` is filled in when empty (bundle for a directory).
int load_image_bytes(const std::string& file, std::string& kind, const std::vector<std::string>& deletes,
                     std::string& bytes, std::size_t& bundle_files, bool& is_dir);

// A file written whole or not at all (temp file, fsync, rename), with `mode`.
bool write_file_atomic(const std::string& path, const std::string& data, mode_t mode, std::string& why);

// A release file (`otactl image sign`, PROTOCOL.md 6.5), decoded; false with `why`.
bool read_release_file(const std::string& path, ota::proto::Manifest& m, std::string& text, std::string& why);

// Loads a private signing key: refused if group or others may read it (as the controller
// refuses its own), or if it is not a P-256 key.
bool load_private_key(const std::string& path, const std::string& what,
                      std::optional<ota::service::Signer>& signer);

}  // namespace otactl
