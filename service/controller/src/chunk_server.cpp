#include "ota/service/chunk_server.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
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

namespace {
long long steady_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
}  // namespace

ChunkServer::ChunkServer(std::string store_dir, std::string prefix, Publisher* pub,
                         ChunkFlowConfig flow)
    : store_dir_(std::move(store_dir)), prefix_(std::move(prefix)), pub_(pub), flow_(flow) {
  for (unsigned i = 0; i < flow_.sender_threads; ++i) senders_.emplace_back([this] { sender_loop(); });
}

ChunkServer::~ChunkServer() { stop(); }

void ChunkServer::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  work_.notify_all();
  for (auto& t : senders_) t.join();
  senders_.clear();
}

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

std::uint32_t ChunkServer::request(const std::string& dev, const std::string& offer_id,
                                   std::shared_ptr<ImageFile> file, const proto::ChunkRequest& req) {
  if (!file || file->chunk_size == 0 || file->size == 0) return 0;
  const std::uint64_t n_chunks = (file->size + file->chunk_size - 1) / file->chunk_size;
  std::uint32_t added = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    DeviceQueue& q = queues_[dev];
    if (q.file != file || q.offer_id != offer_id) {
      // Another image or offer: what was wanted for the old one is moot.
      queued_ -= q.wanted_count;
      q.wanted.reset();
      q.wanted_count = 0;
      q.file = std::move(file);
      q.offer_id = offer_id;
      q.topic = topic_for(prefix_, static_cast<int>(proto::TopicKind::chunk), dev);
    }
    if (q.wanted_count == 0) q.base = req.first;
    for (std::uint32_t rel = 0; rel < req.count; ++rel) {
      const std::uint64_t i = static_cast<std::uint64_t>(req.first) + rel;
      if (i >= n_chunks || i * q.file->chunk_size > 0xFFFFFFFFull) break;  // 32-bit offsets
      if (!req.wants(rel)) continue;
      if (i < q.base || i - q.base >= kQueueSpan) {
        beyond_span_++;
        continue;
      }
      const std::size_t bit = static_cast<std::size_t>(i - q.base);
      if (q.wanted.test(bit)) continue;
      q.wanted.set(bit);
      ++q.wanted_count;
      ++added;
    }
    queued_ += added;
    if (q.wanted_count > 0 && !q.in_ready) {
      q.in_ready = true;
      ready_.push_back(dev);
    }
    if (q.wanted_count == 0 && q.unacked == 0) queues_.erase(dev);
  }
  if (added == 0) return 0;
  if (flow_.sender_threads == 0) {
    pump();
  } else {
    work_.notify_one();
  }
  return added;
}

// Gives a frame's bytes back to the budget.
void ChunkServer::release_locked(std::map<std::uint64_t, InFlight>::iterator it) {
  unacked_bytes_ -= it->second.bytes;
  auto q = queues_.find(it->second.dev);
  if (q != queues_.end()) {
    if (q->second.unacked > 0) --q->second.unacked;
    if (q->second.unacked == 0 && q->second.wanted_count == 0) queues_.erase(q);
  }
  in_flight_.erase(it);
}

// Frames of a lost link (the client dropped their PUBACK callbacks) and frames unacknowledged
// for too long: lost for the budget; the devices ask again for what they miss.
void ChunkServer::expire_locked(long long now) {
  const std::uint64_t link = pub_ ? pub_->link_generation() : 0;
  const bool new_link = link != link_seen_;
  link_seen_ = link;
  // Oldest first: after a link loss every frame in flight is gone, otherwise the timed-out ones.
  while (!in_flight_.empty() &&
         (new_link || now - in_flight_.begin()->second.sent_ms >= flow_.ack_timeout_ms)) {
    frames_lost_++;
    release_locked(in_flight_.begin());
  }
}

// The next chunk to send: round robin over the devices that want chunks, each within its
// fair share of the budget. False when nothing may be sent now.
bool ChunkServer::pick_locked(Pick& out, long long now) {
  expire_locked(now);
  for (std::size_t tries = ready_.size(); tries > 0; --tries) {
    const std::string dev = std::move(ready_.front());
    ready_.pop_front();
    auto it = queues_.find(dev);
    if (it == queues_.end()) continue;
    DeviceQueue& q = it->second;
    if (q.wanted_count == 0) {
      q.in_ready = false;
      continue;
    }
    const std::uint64_t frame = q.file->chunk_size;
    const bool fits_total = unacked_bytes_ == 0 || unacked_bytes_ + frame <= flow_.max_unacked_bytes;
    // The fair share in frames, rounded up so the budget is not left idle.
    const std::uint64_t budget_frames = std::max<std::uint64_t>(1, flow_.max_unacked_bytes / frame);
    const std::uint64_t devices = std::max<std::uint64_t>(1, queues_.size());
    const bool fits_share = q.unacked < (budget_frames + devices - 1) / devices;
    if (!fits_total) {
      ready_.push_front(dev);  // keeps its turn
      return false;
    }
    if (!fits_share) {
      ready_.push_back(dev);
      continue;
    }
    std::size_t bit = q.wanted._Find_first();
    q.wanted.reset(bit);
    --q.wanted_count;
    --queued_;
    ++q.unacked;
    out.dev = dev;
    out.offer_id = q.offer_id;
    out.topic = q.topic;
    out.file = q.file;
    out.index = q.base + static_cast<std::uint32_t>(bit);
    out.seq = next_seq_++;
    const std::uint64_t off = static_cast<std::uint64_t>(out.index) * frame;
    const auto bytes = static_cast<std::uint32_t>(
        proto::kFrameHeaderLen + std::min<std::uint64_t>(frame, q.file->size - off));
    in_flight_.emplace(out.seq, InFlight{dev, bytes, now});
    unacked_bytes_ += bytes;
    if (unacked_bytes_ > peak_unacked_.load()) peak_unacked_ = unacked_bytes_;
    if (q.wanted_count > 0) {
      ready_.push_back(dev);
    } else {
      q.in_ready = false;
    }
    return true;
  }
  return false;
}

void ChunkServer::acked(std::uint64_t seq) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = in_flight_.find(seq);
    if (it == in_flight_.end()) return;  // already counted lost
    release_locked(it);
  }
  if (flow_.sender_threads == 0) {
    pump();
  } else {
    work_.notify_one();
  }
}

// Reads, frames (CRC) and publishes one chunk; outside the lock.
void ChunkServer::send(const Pick& p) {
  const ImageFile& file = *p.file;
  thread_local std::vector<std::uint8_t> buf;
  if (buf.size() < proto::kFrameHeaderLen + file.chunk_size)
    buf.resize(proto::kFrameHeaderLen + file.chunk_size);
  const std::uint64_t off = static_cast<std::uint64_t>(p.index) * file.chunk_size;
  const auto len = static_cast<std::uint32_t>(std::min<std::uint64_t>(file.chunk_size, file.size - off));
  std::uint8_t* payload = buf.data() + proto::kFrameHeaderLen;
  if (!read_at(file.fd, payload, len, off)) {
    log_error("image " + file.path + ": short read at offset " + std::to_string(off) + ": " +
              std::strerror(errno));
    acked(p.seq);
    return;
  }
  proto::encode_chunk_header(file.id, static_cast<std::uint32_t>(off), payload, len, 0, buf.data());
  const std::uint64_t seq = p.seq;
  if (!pub_ || !pub_->publish_acked(p.topic, buf.data(), proto::kFrameHeaderLen + len, 1, false,
                                    [this, seq] { acked(seq); })) {
    log_warn("device " + p.dev + ": publish chunk " + std::to_string(p.index) + " failed");
    acked(p.seq);
    return;
  }
  chunks_sent_++;
  bytes_served_ += len;
  if (served_) served_(p.dev, p.offer_id, len);
}

void ChunkServer::pump() {
  // Re-entrant through acked() when the publisher acknowledges inside publish (tests):
  // the outermost call does the sending.
  thread_local bool pumping = false;
  if (pumping) return;
  pumping = true;
  Pick p;
  for (;;) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_ || !pick_locked(p, steady_ms())) break;
    }
    send(p);
  }
  pumping = false;
}

void ChunkServer::sender_loop() {
  Pick p;
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    if (!pick_locked(p, steady_ms())) {
      // Woken by a request or an acknowledgement; the timeout expires lost frames.
      work_.wait_for(lock, std::chrono::milliseconds(200));
      continue;
    }
    lock.unlock();
    send(p);
    lock.lock();
  }
}

std::uint64_t ChunkServer::unacked_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return unacked_bytes_;
}

std::uint64_t ChunkServer::queued_chunks() const {
  std::lock_guard<std::mutex> lock(mu_);
  return queued_;
}

}  // namespace ota::service
