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

struct ImageParams {
  std::string version;
  std::vector<std::string> hw;
  std::uint32_t chunk_size = kDefaultChunkSize;
  std::uint32_t counter = 0;
  std::string kind = "firmware";  // "firmware" (a whole image) or "bundle" (application files)
};

// Checks version (semver, <= 32 chars), hw (1..4 valid ids, no duplicates) and chunk size
// (256..65536). Error messages name the offending value.
Status validate_image_params(const ImageParams& p);

// Writes bytes to <dir>/<sha256>.bin via a temp file, fsync and rename (and fsyncs the dir).
// Returns the final path. Succeeds without rewriting if an identical file is present.
Result<std::string> write_image_file(const std::string& dir, const std::string& sha256,
                                     const void* data, std::size_t len);
std::string image_path(const std::string& dir, const std::string& sha256);
// Creates the directory (and parents) if missing.
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
