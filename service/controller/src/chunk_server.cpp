#include "ota/service/chunk_server.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "ota/proto/frame.hpp"
#include "ota/proto/topics.hpp"
#include "ota/service/images.hpp"
#include "ota/service/log.hpp"

namespace ota::service {

namespace {

std::string chunk_request_key(const proto::ChunkRequest& r) {
  std::string k = std::string(r.deployment.c_str()) + "|" + r.image.c_str() + "|" +
                  std::to_string(r.first) + "|" + std::to_string(r.count) + "|";
  if (r.has_bitmap) {
    static const char* hex = "0123456789abcdef";
    const std::size_t n = (r.count + 7) / 8;
    for (std::size_t i = 0; i < n && i < sizeof r.bitmap; ++i) {
      k += hex[r.bitmap[i] >> 4];
      k += hex[r.bitmap[i] & 15];
    }
  }
  return k;
}

// Reads len bytes at offset; false on a short read.
bool read_at(int fd, std::uint8_t* out, std::size_t len, std::uint64_t offset) {
  std::size_t got = 0;
  while (got < len) {
    ssize_t n = ::pread(fd, out + got, len - got, static_cast<off_t>(offset + got));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += static_cast<std::size_t>(n);
  }
  return got == len;
}

}  // namespace

ImageFile::~ImageFile() {
  if (fd >= 0) ::close(fd);
}

ChunkServer::ChunkServer(std::string store_dir, std::string prefix, Publisher* pub)
    : store_dir_(std::move(store_dir)), prefix_(std::move(prefix)), pub_(pub) {}

Result<std::shared_ptr<ImageFile>> ChunkServer::open(const ImageRec& img) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = files_.find(img.id);
  if (it != files_.end()) return it->second;
  auto f = std::make_shared<ImageFile>();
  f->path = image_path(store_dir_, img.sha256);
  f->fd = ::open(f->path.c_str(), O_RDONLY | O_CLOEXEC);
  if (f->fd < 0) return internal_err("open image " + f->path + ": " + std::strerror(errno));
  f->size = img.size;
  f->chunk_size = img.chunk_size;
  if (!proto::image_id_to_bytes(img.id.c_str(), f->id)) return internal_err("bad image id " + img.id);
  files_[img.id] = f;
  return f;
}

bool ChunkServer::repeated(const std::string& dev, const proto::ChunkRequest& req, long long now_ms) {
  const std::string key = chunk_request_key(req);
  std::lock_guard<std::mutex> lock(mu_);
  LastRequest& lr = last_request_[dev];
  if (lr.key == key && now_ms - lr.ms < kDuplicateRequestMs) {
    duplicate_requests_++;
    return true;
  }
  lr.key = key;
  lr.ms = now_ms;
  return false;
}

std::uint64_t ChunkServer::serve(const std::string& dev, const ImageFile& file,
                                 const proto::ChunkRequest& req) {
  std::vector<ChunkSlice> plan = plan_chunks(file.size, file.chunk_size, req);
  if (plan.empty()) return 0;
  thread_local std::vector<std::uint8_t> buf;
  if (buf.size() < proto::kFrameHeaderLen + file.chunk_size)
    buf.resize(proto::kFrameHeaderLen + file.chunk_size);
  const std::string t = topic_for(prefix_, static_cast<int>(proto::TopicKind::chunk), dev);
  std::uint64_t sent = 0;
  for (const ChunkSlice& c : plan) {
    std::uint8_t* payload = buf.data() + proto::kFrameHeaderLen;
    if (!read_at(file.fd, payload, c.length, c.offset)) {
      log_error("image " + file.path + ": short read at offset " + std::to_string(c.offset) + ": " +
                std::strerror(errno));
      break;
    }
    proto::encode_chunk_header(file.id, c.offset, payload, c.length, 0, buf.data());
    if (!pub_ || !pub_->publish(t, buf.data(), proto::kFrameHeaderLen + c.length, 1, false)) {
      log_warn("device " + dev + ": publish chunk " + std::to_string(c.index) + " failed");
      break;
    }
    sent += c.length;
    chunks_sent_++;
  }
  bytes_served_ += sent;
  return sent;
}

}  // namespace ota::service
