// Image store helpers: parameter validation, content-addressed files written atomically,
// and chunk planning (pure, unit-tested).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ota/proto/messages.hpp"
#include "ota/service/result.hpp"

namespace ota::service {

constexpr std::uint32_t kDefaultChunkSize = 4096;
// Highest anti-rollback counter an image may carry. A device refuses every image with a
// counter below the highest one it confirmed, so a counter near 2^32 would leave no room
// above it, for good. Counters count security-relevant releases, one step at a time: a
// million is a release an hour for a century.
constexpr std::uint32_t kMaxImageCounter = 1000000;

struct ImageParams {
  std::string version;
  std::vector<std::string> hw;
  std::uint32_t chunk_size = kDefaultChunkSize;
  std::uint32_t counter = 0;
  std::string kind = "firmware";  // "firmware" (a whole image) or "bundle" (application files)
  // A security release: the counter becomes the highest counter of the registered images
  // + 1 (instead of `counter`), so that devices that confirm it refuse every earlier image.
  bool security_release = false;
  // The release file of `otactl image sign` (PROTOCOL.md 6.5), or empty. With it, version, hw,
  // counter and kind come from the file (values given as well must equal the file's), and
  // the controller stores its release signature with the image once it verified it.
  std::string release;
  bool counter_given = false;  // `counter` was given explicitly (not the default)
  bool kind_given = false;     // `kind` was given explicitly
};

// Checks version (semver, <= 32 chars), hw (1..4 valid ids, no duplicates), kind, chunk
// size (256..65536) and counter (<= kMaxImageCounter). Error messages name the offending value.
Status validate_image_params(const ImageParams& p);

// A bundle (PROTOCOL.md section 16) as the device will decode it, with the device's decoder
// (ota::proto::bundle::parse): header, index (paths, duplicates, file count and sizes), total
// size and every file's sha256. invalid_err("invalid bundle: <what is wrong>") otherwise: the
// controller must not sign what every device would refuse (or, worse, what one would not).
Status validate_bundle(const std::string& bytes);

// An image no device could download: over proto::kMaxImageSize bytes (the chunk frame's offset
// is a u32). invalid_err naming the size and the limit otherwise.
Status validate_image_size(std::uint64_t size);

// Everything add_image must check before it stores and signs an image: the parameters, the
// size (validate_image_size), and for kind "bundle" the bytes (validate_bundle).
Status validate_image(const std::string& bytes, const ImageParams& p);

// Writes bytes to <dir>/<sha256>.bin via a temp file, fsync and rename (and fsyncs the dir).
// The file is 0600 (firmware may hold secrets; only the controller reads it). Returns the
// final path. Succeeds without rewriting if an identical file is present (made 0600 too).
Result<std::string> write_image_file(const std::string& dir, const std::string& sha256,
                                     const void* data, std::size_t len);
std::string image_path(const std::string& dir, const std::string& sha256);
// Creates the image store directory (and parents) if missing. The directory itself is made
// 0700, also when it already existed with wider permissions (stores from before this rule).
Status ensure_dir(const std::string& dir);

// One chunk to send: index, byte offset in the image, payload length.
struct ChunkSlice {
  std::uint32_t index = 0;
  std::uint32_t offset = 0;
  std::uint32_t length = 0;
};

// Which chunks a request asks for, clipped to the image: chunks [first, first+count) that the
// bitmap wants, offset = i*chunk_size, the last one possibly partial; stops at image end.
std::vector<ChunkSlice> plan_chunks(std::uint64_t image_size, std::uint32_t chunk_size,
                                    const proto::ChunkRequest& req);

}  // namespace ota::service
