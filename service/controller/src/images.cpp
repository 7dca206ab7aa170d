#include "ota/service/images.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <random>
#include <set>

#include "ota/proto/bundle.hpp"
#include "ota/proto/topics.hpp"

namespace ota::service {
namespace {
std::string errno_str() { return std::strerror(errno); }
}  // namespace

Status validate_image_params(const ImageParams& p) {
  if (p.version.empty()) return invalid_err("version is required");
  if (p.version.size() > proto::kMaxVersionLen ||
      !proto::is_semver(p.version.data(), p.version.size()))
    return invalid_err("version '" + p.version +
                       "' is not a semantic version (MAJOR.MINOR.PATCH[-pre][+build], at most " +
                       std::to_string(proto::kMaxVersionLen) + " chars)");
  if (p.hw.empty()) return invalid_err("at least one hardware model (hw) is required");
  if (p.hw.size() > proto::kMaxHwModels)
    return invalid_err("too many hardware models: " + std::to_string(p.hw.size()) + " (max " +
                       std::to_string(proto::kMaxHwModels) + ")");
  std::set<std::string> seen;
  for (const auto& h : p.hw) {
    if (!proto::valid_id(h.data(), h.size()))
      return invalid_err("hardware model '" + h +
                         "' is invalid (1-64 chars of A-Z a-z 0-9 . _ -)");
    if (!seen.insert(h).second) return invalid_err("hardware model '" + h + "' given twice");
  }
  if (p.kind != "firmware" && p.kind != "bundle")
    return invalid_err("kind '" + p.kind + "' is not firmware or bundle");
  if (p.chunk_size < proto::kMinChunkSize || p.chunk_size > proto::kMaxChunkSize)
    return invalid_err("chunk size " + std::to_string(p.chunk_size) + " out of range " +
                       std::to_string(proto::kMinChunkSize) + ".." +
                       std::to_string(proto::kMaxChunkSize));
  if (p.counter > kMaxImageCounter)
    return invalid_err("anti-rollback counter " + std::to_string(p.counter) +
                       " is above the maximum " + std::to_string(kMaxImageCounter) +
                       ": devices that confirm it refuse every image with a lower counter, for "
                       "good; raise the counter one step per security release");
  return {};
}

Status validate_bundle(const std::string& bytes) {
  proto::bundle::Index index;
  // check_hashes: the device compares every file with its sha256 only after the download;
  // a lying index is refused here, before a fleet fetches it.
  if (std::string err = proto::bundle::parse(bytes, index, true); !err.empty())
    return invalid_err("invalid bundle: " + err);
  return {};
}

Status validate_image_size(std::uint64_t size) {
  if (size > proto::kMaxImageSize)
    return invalid_err("image of " + std::to_string(size) + " bytes is larger than the " +
                       std::to_string(proto::kMaxImageSize) +
                       " bytes a chunk frame's 32-bit offset can address (PROTOCOL.md 15)");
  return {};
}

Status validate_image(const std::string& bytes, const ImageParams& p) {
  if (Status s = validate_image_params(p); !s) return s;
  if (Status s = validate_image_size(bytes.size()); !s) return s;
  if (p.kind == "bundle") return validate_bundle(bytes);
  return {};
}

std::string image_path(const std::string& dir, const std::string& sha256) {
  return dir + "/" + sha256 + ".bin";
}

Status ensure_dir(const std::string& dir) {
  if (dir.empty()) return invalid_err("empty directory path");
  std::string cur;
  std::size_t pos = 0;
  while (pos != std::string::npos) {
    pos = dir.find('/', pos + 1);
    cur = dir.substr(0, pos);
    if (cur.empty()) continue;
    // Parents as usual (they may be shared); the store itself private from the start.
    const mode_t mode = pos == std::string::npos ? 0700 : 0755;
    if (::mkdir(cur.c_str(), mode) != 0 && errno != EEXIST)
      return internal_err("mkdir " + cur + ": " + errno_str());
  }
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) return internal_err("stat " + dir + ": " + errno_str());
  if (!S_ISDIR(st.st_mode)) return invalid_err(dir + " is not a directory");
  // Images are the fleet's firmware (keys, credentials, code): no other local user reads
  // them. A store created before this rule (0755, files 0644) is closed here at start.
  if ((st.st_mode & 0777) != 0700 && ::chmod(dir.c_str(), 0700) != 0)
    return internal_err("chmod 0700 " + dir + ": " + errno_str());
  return {};
}

Result<std::string> write_image_file(const std::string& dir, const std::string& sha256,
                                     const void* data, std::size_t len) {
  std::string final_path = image_path(dir, sha256);
  struct stat st {};
  if (::stat(final_path.c_str(), &st) == 0 && static_cast<std::size_t>(st.st_size) == len) {
    // Content-addressed: same name, same size, same bytes. Written 0644 by older versions.
    if ((st.st_mode & 0777) != 0600 && ::chmod(final_path.c_str(), 0600) != 0)
      return internal_err("chmod 0600 " + final_path + ": " + errno_str());
    return final_path;
  }
  std::random_device rd;
  std::string tmp = dir + "/." + sha256 + ".tmp." + std::to_string(rd());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return internal_err("create " + tmp + ": " + errno_str());
  const char* p = static_cast<const char*>(data);
  std::size_t left = len;
  while (left > 0) {
    ssize_t n = ::write(fd, p, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      std::string e = "write " + tmp + ": " + errno_str();
      ::close(fd);
      ::unlink(tmp.c_str());
      return internal_err(e);
    }
    p += n;
    left -= static_cast<std::size_t>(n);
  }
  if (::fsync(fd) != 0) {
    std::string e = "fsync " + tmp + ": " + errno_str();
    ::close(fd);
    ::unlink(tmp.c_str());
    return internal_err(e);
  }
  ::close(fd);
  if (::rename(tmp.c_str(), final_path.c_str()) != 0) {
    std::string e = "rename " + tmp + " -> " + final_path + ": " + errno_str();
    ::unlink(tmp.c_str());
    return internal_err(e);
  }
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    (void)::fsync(dfd);
    ::close(dfd);
  }
  return final_path;
}

std::vector<ChunkSlice> plan_chunks(std::uint64_t image_size, std::uint32_t chunk_size,
                                    const proto::ChunkRequest& req) {
  std::vector<ChunkSlice> out;
  if (chunk_size == 0 || image_size == 0) return out;
  const std::uint64_t n_chunks = (image_size + chunk_size - 1) / chunk_size;
  for (std::uint32_t rel = 0; rel < req.count; ++rel) {
    const std::uint64_t i = static_cast<std::uint64_t>(req.first) + rel;
    if (i >= n_chunks) break;
    if (!req.wants(rel)) continue;
    const std::uint64_t off = i * chunk_size;
    const std::uint64_t len = std::min<std::uint64_t>(chunk_size, image_size - off);
    if (off > 0xFFFFFFFFull) break;  // frame offsets are 32-bit
    out.push_back(ChunkSlice{static_cast<std::uint32_t>(i), static_cast<std::uint32_t>(off),
                             static_cast<std::uint32_t>(len)});
  }
  return out;
}

}  // namespace ota::service
