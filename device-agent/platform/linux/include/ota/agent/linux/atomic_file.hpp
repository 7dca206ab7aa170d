#pragma once

#include <string>

namespace ota::agent::linux_port {

// Replaces `path` with `data` so that a crash leaves either the old or the new content:
// write a temporary file, fsync it (when `durable`), rename over the target.
bool write_file_atomically(const std::string& path, const void* data, std::size_t len,
                           bool durable);
// Reads the whole file; false if it does not exist or cannot be read.
bool read_whole_file(const std::string& path, std::string& out);

}  // namespace ota::agent::linux_port
