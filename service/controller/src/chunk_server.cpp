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
// An audience's per-chunk entry: how many listening devices want the chunk (low bits) and
// whether it was broadcast already (this bit). A chunk never broadcast is the wave's front;
// one broadcast before is a repair for whoever still wants it.
constexpr std::uint32_t kBroadcastOnce = 1u << 31;
std::uint32_t want_count(std::uint32_t entry) { return entry & ~kBroadcastOnce; }
bool front_chunk(std::uint32_t entry) { return (entry & kBroadcastOnce) == 0; }

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

void ChunkServer::link_restarted(const std::string& dev) {
  std::lock_guard<std::mutex> lock(mu_);
  sent_.erase(dev);
}

void ChunkServer::mark_sent_locked(const std::string& dev, const std::string& offer_id,
                                   std::uint32_t index, long long now) {
  if (flow_.resend_guard_ms <= 0) return;
  auto& marks = sent_[dev];
  if (!marks) marks = std::make_unique<SentMarks>();
  if (marks->offer_id != offer_id) {
    *marks = SentMarks{};
    marks->offer_id = offer_id;
  }
  const std::uint32_t slot = index % kSentRing;
  marks->index_plus_one[slot] = index + 1;
  marks->at_ms[slot] = static_cast<std::uint32_t>(now);
  marks->last_ms = now;
}

bool ChunkServer::sent_lately_locked(const SentMarks* marks, std::uint32_t index, long long now) const {
  if (marks == nullptr) return false;
  const std::uint32_t slot = index % kSentRing;
  // Unsigned difference of the low 32 bits: right across their wrap.
  return marks->index_plus_one[slot] == index + 1 &&
         static_cast<std::uint32_t>(now) - marks->at_ms[slot] < static_cast<std::uint64_t>(flow_.resend_guard_ms);
}

// Drops the marks of devices sent nothing within the guard (at most once a guard period:
// one pass over the devices that transferred lately).
void ChunkServer::prune_sent_locked(long long now) {
  if (now - sent_pruned_ms_ < flow_.resend_guard_ms) return;
  sent_pruned_ms_ = now;
  for (auto it = sent_.begin(); it != sent_.end();) {
    if (now - it->second->last_ms >= flow_.resend_guard_ms) {
      it = sent_.erase(it);
    } else {
      ++it;
    }
  }
}

void ChunkServer::want_locked(DeviceQueue& q, std::size_t bit) {
  q.wanted.set(bit);
  ++q.wanted_count;
  ++queued_;
  if (q.audience.empty()) return;
  auto a = audiences_.find(q.audience);
  if (a != audiences_.end()) ++a->second.wanting[q.base + bit];
}

void ChunkServer::unwant_locked(DeviceQueue& q, std::size_t bit) {
  q.wanted.reset(bit);
  --q.wanted_count;
  --queued_;
  if (q.audience.empty()) return;
  auto a = audiences_.find(q.audience);
  if (a != audiences_.end()) --a->second.wanting[q.base + bit];
}

void ChunkServer::clear_wanted_locked(DeviceQueue& q) {
  for (std::size_t bit = q.wanted._Find_first(); bit < kQueueSpan; bit = q.wanted._Find_next(bit))
    unwant_locked(q, bit);
}

// Moves the device's wanted chunks from its old audience's counts to the new one's (key
// empty: none); an audience nobody listens to any more goes.
void ChunkServer::join_audience_locked(const std::string& dev, DeviceQueue& q, const std::string& key) {
  if (q.audience == key) return;
  if (!q.audience.empty()) {
    auto old = audiences_.find(q.audience);
    if (old != audiences_.end()) {
      for (std::size_t b = q.wanted._Find_first(); b < kQueueSpan; b = q.wanted._Find_next(b))
        --old->second.wanting[q.base + b];
      // The audience stays (its `seen` tells how many listen to the topic; one record per
      // image and group, a counter per chunk).
      old->second.members.erase(dev);
    }
  }
  q.audience = key;
  if (key.empty()) return;
  Audience& a = audiences_[key];
  if (a.members.empty() && a.wanting.empty()) {
    char image_hex[2 * sizeof q.file->id + 1] = {};
    proto::hex_encode(q.file->id, sizeof q.file->id, image_hex);
    char topic[proto::kMaxTopicLen];
    const std::string group = key.substr(key.find('|') + 1);
    if (proto::make_group_chunk_topic(prefix_.c_str(), group.c_str(), image_hex, topic, sizeof topic) == 0) {
      audiences_.erase(key);  // not a usable topic: this device gets unicast only
      q.audience.clear();
      return;
    }
    a.topic = topic;
    a.wanting.assign((q.file->size + q.file->chunk_size - 1) / q.file->chunk_size, 0);
  }
  a.members.insert(dev);
  if (a.seen.insert(dev).second) a.last_new_member_ms = steady_ms();
  for (std::size_t b = q.wanted._Find_first(); b < kQueueSpan; b = q.wanted._Find_next(b))
    ++a.wanting[q.base + b];
}

void ChunkServer::erase_queue_locked(std::unordered_map<std::string, DeviceQueue>::iterator it) {
  join_audience_locked(it->first, it->second, "");
  queues_.erase(it);
}

std::uint32_t ChunkServer::broadcast_clear_locked(Audience& a, std::uint32_t index, long long now) {
  std::uint32_t cleared = 0;
  std::vector<std::string> idle;  // members left with nothing wanted or unacknowledged
  for (const std::string& m : a.members) {
    auto it = queues_.find(m);
    if (it == queues_.end()) continue;
    DeviceQueue& q = it->second;
    if (index < q.base || index - q.base >= kQueueSpan || !q.wanted.test(index - q.base)) continue;
    unwant_locked(q, index - q.base);
    mark_sent_locked(m, q.offer_id, index, now);
    ++cleared;
    if (q.wanted_count == 0 && q.unacked == 0) idle.push_back(m);
  }
  // After the loop: erasing a queue leaves the audience (changes a.members).
  for (const std::string& m : idle) {
    auto it = queues_.find(m);
    if (it != queues_.end()) erase_queue_locked(it);
  }
  return cleared;
}

std::uint32_t ChunkServer::request(const std::string& dev, const std::string& offer_id,
                                   std::shared_ptr<ImageFile> file, const proto::ChunkRequest& req,
                                   const std::string& bc_group) {
  if (!file || file->chunk_size == 0 || file->size == 0) return 0;
  const std::uint64_t n_chunks = (file->size + file->chunk_size - 1) / file->chunk_size;
  std::uint32_t added = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    const long long now = steady_ms();
    prune_sent_locked(now);
    auto marks_it = sent_.find(dev);
    const SentMarks* marks =
        marks_it != sent_.end() && marks_it->second->offer_id == offer_id ? marks_it->second.get() : nullptr;
    DeviceQueue& q = queues_[dev];
    if (q.file != file || q.offer_id != offer_id) {
      // Another image or offer: what was wanted for the old one is moot.
      clear_wanted_locked(q);
      join_audience_locked(dev, q, "");
      q.file = std::move(file);
      q.offer_id = offer_id;
      q.topic = topic_for(prefix_, static_cast<int>(proto::TopicKind::chunk), dev);
    }
    // The image id in hex is the request's (the caller checked it is the deployment's).
    join_audience_locked(dev, q, bc_group.empty() ? "" : std::string(req.image.c_str()) + "|" + bc_group);
    if (q.wanted_count == 0) {
      q.base = req.first;
      q.waiting_since_ms = now;
    }
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
      if (sent_lately_locked(marks, static_cast<std::uint32_t>(i), now)) {
        resends_avoided_++;  // still on its way, most likely: asked again after the guard
        continue;
      }
      want_locked(q, bit);
      ++added;
    }
    if (q.wanted_count > 0 && !q.in_ready) {
      q.in_ready = true;
      ready_.push_back(dev);
    }
    if (q.wanted_count == 0 && q.unacked == 0) erase_queue_locked(queues_.find(dev));
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
    if (q->second.unacked == 0 && q->second.wanted_count == 0) erase_queue_locked(q);
  }
  in_flight_.erase(it);
}

// Frames of a lost link (the client dropped their PUBACK callbacks) and frames unacknowledged
// for too long: lost for the budget; the devices ask again for what they miss.
void ChunkServer::expire_locked(long long now) {
  const std::uint64_t link = pub_ ? pub_->link_generation() : 0;
  const bool new_link = link != link_seen_;
  link_seen_ = link;
  // What was published on the lost link may never have reached the broker.
  if (new_link) sent_.clear();
  // Oldest first: after a link loss every frame in flight is gone, otherwise the timed-out ones.
  while (!in_flight_.empty() &&
         (new_link || now - in_flight_.begin()->second.sent_ms >= flow_.ack_timeout_ms)) {
    frames_lost_++;
    release_locked(in_flight_.begin());
  }
}

// The next chunk to send: round robin over the devices that want chunks, each within its
// fair share of the budget. False when nothing may be sent now.
bool ChunkServer::pick_locked(Pick& out, long long now, long long* retry_ms) {
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
    auto a = q.audience.empty() ? audiences_.end() : audiences_.find(q.audience);
    if (a != audiences_.end()) {
      // The chunk most of the audience wants (the lowest of equals: windows slide in order).
      std::uint32_t most = 0;
      for (std::size_t b = bit; b < kQueueSpan; b = q.wanted._Find_next(b)) {
        const std::uint32_t n = want_count(a->second.wanting[q.base + b]);
        if (n > most) {
          most = n;
          bit = b;
        }
      }
      // No hold without sender threads: nothing would come back to send what was held.
      const long long hold = flow_.sender_threads == 0 ? 0 : flow_.broadcast_hold_ms;
      // No hold lasts past kMaxHolds holds from the device's oldest waiting request.
      const long long latest = kMaxHolds * hold + q.waiting_since_ms;
      auto hold_left_after = [&](long long since) { return std::min(hold + since, latest) - now; };
      const long long held_for =
          hold_left_after(std::max(q.waiting_since_ms, a->second.last_new_member_ms));
      // The front waits (up to kMaxHolds holds) until half of the listeners want it: the
      // wave moves at the pace of its median device, not of its fastest.
      const bool front = front_chunk(a->second.wanting[q.base + bit]);
      const long long front_wait = latest - now;
      const bool half = 2 * std::size_t{most} >= a->second.seen.size();
      // A repair (broadcast before) that fewer than a quarter want waits while the front
      // still moves, up to kMaxRepairHolds holds: late joiners and devices that were cut
      // off take the front as it passes and gather their repairs, which then go out once
      // for all of them instead of once per device.
      const bool quarter = 4 * std::size_t{most} >= a->second.seen.size();
      const bool front_moving = now - a->second.last_front_ms < kFrontIdleHolds * hold;
      const long long repair_wait = kMaxRepairHolds * hold + q.waiting_since_ms - now;
      // While devices still join (a wave arriving), everything waits for them.
      const long long arriving = hold_left_after(a->second.last_new_member_ms);
      long long wait = 0;
      if (front && half) wait = arriving;  // enough of the wave asks: no hold beyond arrivals
      else if (held_for > 0 && most < a->second.members.size()) wait = held_for;
      else if (front && front_wait > 0) wait = front_wait;
      else if (!front && !quarter && front_moving && repair_wait > 0)
        wait = std::min(repair_wait, hold);  // looked at again each hold: the front may end
      if (wait > 0) {
        // Not everybody listening wants it yet: give the audience time to ask, so one frame
        // answers all who ask within the hold.
        if (retry_ms != nullptr && (*retry_ms <= 0 || wait < *retry_ms)) *retry_ms = wait;
        ready_.push_back(dev);
        continue;
      }
    }
    out.index = q.base + static_cast<std::uint32_t>(bit);
    const std::uint64_t off = static_cast<std::uint64_t>(out.index) * frame;
    const auto frame_bytes = static_cast<std::uint32_t>(
        proto::kFrameHeaderLen + std::min<std::uint64_t>(frame, q.file->size - off));
    // On the image topic once when two or more listeners want it (past the holds above);
    // a chunk one device wants is unicast.
    const std::uint32_t entry = a != audiences_.end() ? a->second.wanting[out.index] : 0;
    const bool broadcast = want_count(entry) >= 2;
    // The budget bounds what the broker still has to deliver: a broadcast frame counts once
    // per listening device (the broker copies it to each), so a wave cannot queue seconds
    // of fan-out in the broker ahead of everybody's repairs and PUBACKs. A frame larger
    // than the whole budget goes alone.
    std::uint64_t weight = frame_bytes;
    if (broadcast) weight *= std::max<std::size_t>(1, a->second.members.size());
    if (unacked_bytes_ != 0 && unacked_bytes_ + weight > flow_.max_unacked_bytes) {
      ready_.push_front(dev);  // keeps its turn
      return false;
    }
    ++q.unacked;  // first: keeps the queue when the broadcast empties it
    if (broadcast) {
      if (front_chunk(entry)) a->second.last_front_ms = now;
      a->second.wanting[out.index] |= kBroadcastOnce;
      out.recipients = broadcast_clear_locked(a->second, out.index, now);
      out.topic = a->second.topic;
    } else {
      unwant_locked(q, bit);
      mark_sent_locked(dev, q.offer_id, out.index, now);
      out.recipients = 0;
      out.topic = q.topic;
    }
    out.dev = dev;
    out.offer_id = q.offer_id;
    out.file = q.file;
    out.seq = next_seq_++;
    in_flight_.emplace(out.seq, InFlight{dev, weight, now});
    unacked_bytes_ += weight;
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
  const bool broadcast = p.recipients > 0;
  proto::encode_chunk_header(file.id, static_cast<std::uint32_t>(off), payload, len,
                             broadcast ? proto::kFrameFlagBroadcast : 0, buf.data());
  const std::uint64_t seq = p.seq;
  if (!pub_ || !pub_->publish_acked(p.topic, buf.data(), proto::kFrameHeaderLen + len, 1, false,
                                    [this, seq] { acked(seq); })) {
    log_warn((broadcast ? "topic " + p.topic : "device " + p.dev) + ": publish chunk " +
             std::to_string(p.index) + " failed");
    acked(p.seq);
    return;
  }
  chunks_sent_++;
  bytes_served_ += len;
  if (broadcast) {
    // Rows count unicast bytes only; a broadcast row moves on by the device's own events.
    broadcast_frames_++;
    broadcast_bytes_ += len;
    broadcast_deliveries_ += p.recipients;
    return;
  }
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
    long long retry_ms = 0;
    if (!pick_locked(p, steady_ms(), &retry_ms)) {
      // Woken by a request or an acknowledgement, or when a broadcast hold ends; the timeout
      // expires lost frames.
      work_.wait_for(lock, std::chrono::milliseconds(retry_ms > 0 ? std::min(retry_ms, 200LL) : 200));
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
