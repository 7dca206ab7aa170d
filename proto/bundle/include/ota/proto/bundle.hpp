// Application bundle format (manifest kind "bundle"): a set of application files plus a list
// of paths to delete, updated on the device as one tree. See proto/PROTOCOL.md section 16.
//
//   offset 0   "OTAB"                      magic
//          4   u32 little-endian           format version (1)
//          8   u32 little-endian           index length N (1..kMaxIndexSize)
//         12   N bytes of JSON             the index
//       12+N   file contents, concatenated in index order, no padding
//
// The index: {"delete":[PATH...],"files":[{"mode":M,"path":P,"sha256":H,"size":S}...]}.
// The signed manifest's sha256 covers the whole bundle, so the index (per-file hashes, the
// delete list) is signed with it.
//
// Host-side code (otactl, the controller, the Linux port): std:: containers, nlohmann_json and
// OpenSSL, in a library of its own (ota::proto_bundle, proto/bundle/) that the firmware-safe
// codec (ota::proto) never links; a firmware port parses the same layout itself.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace ota::proto::bundle {

constexpr char kMagic[4] = {'O', 'T', 'A', 'B'};
constexpr std::uint32_t kFormatVersion = 1;
constexpr std::size_t kHeaderSize = 12;
constexpr std::uint32_t kMaxIndexSize = 4u << 20;  // bytes of index JSON
constexpr std::size_t kMaxFiles = 65536;
constexpr std::size_t kMaxPathLen = 255;
constexpr std::size_t kMaxDeletes = 65536;

struct FileEntry {
  std::string path;
  std::uint64_t size = 0;
  std::uint32_t mode = 0644;  // permission bits only (0..0777)
  std::string sha256;         // lower-case hex of the file content
  std::uint64_t offset = 0;   // bundle offset of the content (computed, not in the JSON)
};

struct Index {
  std::uint32_t format = kFormatVersion;
  std::vector<FileEntry> files;      // bundle order
  std::vector<std::string> deletes;  // paths (files or whole directories) not carried over
  std::uint64_t data_offset = 0;     // kHeaderSize + index length
  std::uint64_t total_size = 0;      // data_offset + sum of file sizes
};

// "" when `path` is a valid bundle path, else what is wrong with it: relative, components
// separated by single '/', none empty, "." or "..", characters [A-Za-z0-9._+@=,~-] only (no
// NUL: the device opens the path as a C string), at most kMaxPathLen bytes. Errors show
// bytes outside printable ASCII as \xNN.
std::string check_path(const std::string& path);

// Parses the 12-byte header (`len` >= kHeaderSize). Returns "" and sets index_len, or the error.
std::string parse_header(const std::uint8_t* data, std::size_t len, std::uint32_t& index_len);

// Parses and validates the index JSON (after the header): no raw NUL byte, no member name
// twice in one object, nothing nested deeper than index > files > file, every path valid, no
// duplicate files or deletes, no file that is also a directory of another file, sizes and
// hashes well formed. Fills offsets, data_offset and total_size.
std::string parse_index(const char* json, std::size_t len, Index& out);

// Parses the header and index at the start of `bytes` and checks that `bytes` is exactly the
// bundle (total size); with `check_hashes` also every file's sha256.
std::string parse(const std::string& bytes, Index& out, bool check_hashes);

struct InputFile {
  std::string path;
  std::uint32_t mode = 0644;
  std::string data;
};

// Builds a bundle: files sorted by path (deterministic), deletes sorted. Returns "" or the
// first error (a bad or duplicate path, a file that is also a directory of another).
std::string build(std::vector<InputFile> files, std::vector<std::string> deletes,
                  std::string& out);

// Lower-case hex SHA-256.
std::string sha256_hex(const void* data, std::size_t len);

// true when `a` equals `b` or one is a directory ancestor of the other ("certs" and
// "certs/ca.pem"). Used for protected paths: writing or deleting either touches the other.
bool paths_overlap(const std::string& a, const std::string& b);

}  // namespace ota::proto::bundle
