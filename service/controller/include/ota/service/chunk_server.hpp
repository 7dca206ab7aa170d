// Chunk server: reads image chunks and publishes them to the devices that ask, within a
// bounded send budget.
//
// Flow control: a device's chunk request only marks chunks as wanted in the device's queue
// (a fixed-size bitmap window, so a request costs no memory beyond the device's record and
// a repeated request merges into what is already wanted). Senders take one chunk at a time
// from the devices that want chunks, round robin, as long as the frames published and not
// yet acknowledged by the broker (QoS 1 PUBACK) stay within `max_unacked_bytes` in total
// (a broadcast frame counts once per listening device: what the broker has to deliver)
// and within each device's fair share of it. A request that does not fit waits its turn; it
// never grows memory. Frames lost with the broker link (the client forgets their PUBACKs)
// or not acknowledged within `ack_timeout_ms` are given back to the budget; the devices
// re-request what they still lack.
//
// Broadcast with unicast repair (PROTOCOL.md 17): a device whose request names a group
// (`bc`, checked against the ACL by the caller) listens on that group's image topic and
// joins the image's audience for the group, which counts per chunk how many listening
// members want it. When a sender serves a listening device it takes the chunk of its queue
// that most members want, once the device waited broadcast_hold_ms for the others to ask
// (or all of them did). A chunk never broadcast before (the wave's front) waits, up to
// kMaxHolds holds, until half of the devices that listen there want it, and is then
// published once on the image topic (frame flag broadcast) and cleared for all who want
// it. A chunk broadcast before (a repair: a device that joined late, was cut off or lost a
// frame) that fewer than a quarter want waits while the front still moves (up to
// kMaxRepairHolds holds), so the repairs of many go out once; whatever two or more want
// then is broadcast again. A chunk only one device wants, and everything for a device that
// does not listen, is unicast. Broadcast is request-driven: a chunk goes out only because
// devices asked for it, so it never runs ahead of what the fleet asked, and the more
// requests wait (for the hold or, under load, for the budget), the more one frame answers.
//
// Resend guard: a device asks again for what it still lacks when nothing arrived for a
// while. Under load that is often a frame still queued in the broker, so a chunk sent to
// the device (either way) less than resend_guard_ms ago is not queued again; after the
// guard, or once the device connected again (its frames before are lost), it is.
//
// Owns: the open image files (by image id); each device's queue (wanted chunks, frames
//   unacknowledged) and last request (an identical repeat within kDuplicateRequestMs is
//   counted once); the chunks each device was sent lately (the resend guard); the frames
//   in flight; the audiences (per image and group: the listening devices and per chunk how
//   many of them want it); the serving counters.
// Lock: mu_, a leaf. Reading the file and publishing happen outside it; the served hook is
//   called outside it.
// Threads: the MQTT network thread (request; acknowledgements), HTTP workers and the tick
//   thread (open an image for a new deployment), the sender threads (read, frame, CRC,
//   publish). With sender_threads = 0 the thread that requests or acknowledges sends
//   (unit tests: deterministic, synchronous).
#pragma once

#include <atomic>
#include <bitset>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "ota/proto/messages.hpp"
#include "ota/service/publisher.hpp"
#include "ota/service/result.hpp"
#include "ota/service/store.hpp"

namespace ota::service {

// An open stored image: its descriptor and geometry.
struct ImageFile {
  int fd = -1;
  std::uint64_t size = 0;
  std::uint32_t chunk_size = 0;
  std::uint8_t id[8] = {};
  std::string path;
  ImageFile() = default;
  ImageFile(const ImageFile&) = delete;
  ImageFile& operator=(const ImageFile&) = delete;
  ~ImageFile();
};

struct ChunkFlowConfig {
  // Chunk frames published and not yet acknowledged by the broker, all devices together; a
  // broadcast frame counts once per device listening. This bounds the controller's send
  // memory whatever the number of devices transferring, and the broker's backlog.
  std::uint64_t max_unacked_bytes = 8ull * 1024 * 1024;
  // Threads that read, frame and publish chunks; 0: whoever requests or acknowledges.
  unsigned sender_threads = 2;
  // A frame whose PUBACK has not come after this long is counted as lost (budget back).
  long long ack_timeout_ms = 10000;
  // Broadcast: a listening device's chunks wait until this long has passed since its oldest
  // waiting request and since the last device joined its audience (a wave still arriving),
  // at most kMaxHolds times this from its request, unless all of the audience already asks
  // for them; then the chunk goes to all who asked (unicast if that is the device alone).
  // 0: at once (coalescing only what waits for the budget anyway).
  long long broadcast_hold_ms = 500;
  // A chunk published to a device (unicast, or a broadcast it was counted in) is not sent
  // to it again for this long, unless the device connected again since: a re-request that
  // soon means the frame is still queued in the broker (deep queues under load), not lost,
  // and answering it would send the chunk twice. 0: every re-request is served.
  long long resend_guard_ms = 3000;
};

class ChunkServer {
 public:
  static constexpr long long kDuplicateRequestMs = 200;
  // The longest a chunk waits for its audience to gather: this many broadcast holds.
  static constexpr long long kMaxHolds = 10;
  // A repair (a chunk broadcast before) that fewer than a quarter of the listeners want
  // waits at most this many holds while the front moves, i.e. while a front chunk went out
  // within the last kFrontIdleHolds holds.
  static constexpr long long kMaxRepairHolds = 40;
  static constexpr long long kFrontIdleHolds = 4;
  // Chunks a device's queue can hold at once, from its lowest wanted chunk: well above an
  // agent's window (at most 256 chunks ahead); requests beyond it are dropped and counted,
  // and the device asks again.
  static constexpr std::uint32_t kQueueSpan = 1024;
  // (device, deployment/offer id, payload bytes) after each chunk published.
  using ServedHook = std::function<void(const std::string&, const std::string&, std::uint64_t)>;

  ChunkServer(std::string store_dir, std::string prefix, Publisher* pub, ChunkFlowConfig flow);
  ~ChunkServer();
  ChunkServer(const ChunkServer&) = delete;
  ChunkServer& operator=(const ChunkServer&) = delete;

  // Set once, before the first request (the controller's wiring).
  void set_served_hook(ServedHook hook) { served_ = std::move(hook); }
  // Stops the sender threads (before what the served hook calls goes away).
  void stop();

  // The stored file of `img`, opened once and shared by every deployment of it.
  Result<std::shared_ptr<ImageFile>> open(const ImageRec& img);
  // True if `dev` sent this same request less than kDuplicateRequestMs ago (counted as a
  // duplicate; after an outage a device may re-request the same window several times);
  // otherwise remembers it as the device's last request.
  bool repeated(const std::string& dev, const proto::ChunkRequest& req, long long now_ms);
  // The device connected again (its hello): frames published to it before are lost with
  // its old link, so its next requests are served in full (no resend guard).
  void link_restarted(const std::string& dev);
  // Queues the chunks `req` asks for, for `dev` in deployment (offer) `offer_id`. A request
  // for another image or offer replaces the device's queue. `bc_group`: the group whose
  // image topic the device listens on (req.bc once the caller checked the device may read
  // it), empty for unicast only. Returns the chunks queued.
  std::uint32_t request(const std::string& dev, const std::string& offer_id,
                        std::shared_ptr<ImageFile> file, const proto::ChunkRequest& req,
                        const std::string& bc_group = "");

  std::uint64_t chunks_sent() const { return chunks_sent_.load(); }
  // Image (payload) bytes published, unicast and broadcast together: the controller's egress.
  std::uint64_t bytes_served() const { return bytes_served_.load(); }
  std::uint64_t unicast_bytes() const { return bytes_served_.load() - broadcast_bytes_.load(); }
  // Frames published on image topics, their payload bytes, and the chunks they delivered
  // (a frame that answered k devices counts k).
  std::uint64_t broadcast_frames() const { return broadcast_frames_.load(); }
  std::uint64_t broadcast_bytes() const { return broadcast_bytes_.load(); }
  std::uint64_t broadcast_deliveries() const { return broadcast_deliveries_.load(); }
  std::uint64_t duplicate_requests() const { return duplicate_requests_.load(); }
  // Frame bytes published and not acknowledged yet (<= max_unacked_bytes + one frame).
  std::uint64_t unacked_bytes() const;
  // Most unacked_bytes() ever reached (the bench and tests check the bound).
  std::uint64_t peak_unacked_bytes() const { return peak_unacked_.load(); }
  // Chunks wanted and not sent yet, all devices.
  std::uint64_t queued_chunks() const;
  // Chunk requests cut at kQueueSpan; frames counted lost (link loss or no PUBACK in time).
  std::uint64_t chunks_beyond_span() const { return beyond_span_.load(); }
  std::uint64_t frames_lost() const { return frames_lost_.load(); }
  // Chunks a device asked for again within resend_guard_ms of being sent them (not re-sent).
  std::uint64_t resends_avoided() const { return resends_avoided_.load(); }

 private:
  struct DeviceQueue {
    std::shared_ptr<ImageFile> file;
    std::string offer_id;
    std::string topic;
    std::uint32_t base = 0;               // chunk index of bit 0
    std::bitset<kQueueSpan> wanted;       // chunks asked for and not sent yet
    std::uint32_t wanted_count = 0;
    std::uint32_t unacked = 0;            // frames published, PUBACK not seen
    bool in_ready = false;                // listed in ready_
    std::string audience;                 // key in audiences_; empty: unicast only
    long long waiting_since_ms = 0;       // when wanted_count last rose from 0
  };
  // The devices listening on one (image, group) topic and, per chunk index of the image,
  // how many of them want that chunk now and whether it was broadcast before (the count's
  // top bit, chunk_server.cpp).
  struct Audience {
    std::string topic;
    std::unordered_set<std::string> members;
    std::vector<std::uint32_t> wanting;
    // Devices that joined since the audience exists, and when the last new one did: while
    // a wave is still arriving, its chunks wait (gather) so one pass serves all of it.
    std::unordered_set<std::string> seen;
    long long last_new_member_ms = 0;
    long long last_front_ms = 0;  // a front chunk last went out (the wave still moves)
  };
  // The chunks published to one device lately and when (ring slots by chunk index: an
  // agent's window is at most 256 chunks, so the chunks it may ask for again do not
  // collide), for the resend guard. Kept while younger than the guard.
  static constexpr std::uint32_t kSentRing = 256;
  struct SentMarks {
    std::string offer_id;
    std::uint32_t index_plus_one[kSentRing] = {};  // 0: empty
    std::uint32_t at_ms[kSentRing] = {};           // steady ms, low 32 bits
    long long last_ms = 0;
  };
  struct InFlight {
    std::string dev;
    std::uint64_t bytes = 0;  // budget charged: frame bytes, times the listeners if broadcast
    long long sent_ms = 0;
  };
  // One chunk a sender is about to publish.
  struct Pick {
    std::string dev, offer_id, topic;
    std::shared_ptr<ImageFile> file;
    std::uint32_t index = 0;
    std::uint64_t seq = 0;
    std::uint32_t recipients = 0;  // broadcast: the devices it answers; 0: unicast
  };

  // `retry_ms`: when nothing may be sent now only because of held chunks, how long until
  // the first hold ends (else left alone).
  bool pick_locked(Pick& out, long long now, long long* retry_ms = nullptr);
  // Every change of a queue's wanted bits goes through these (they keep the counts).
  void want_locked(DeviceQueue& q, std::size_t bit);
  void unwant_locked(DeviceQueue& q, std::size_t bit);
  void clear_wanted_locked(DeviceQueue& q);
  void mark_sent_locked(const std::string& dev, const std::string& offer_id, std::uint32_t index, long long now);
  bool sent_lately_locked(const SentMarks* marks, std::uint32_t index, long long now) const;
  void prune_sent_locked(long long now);
  void join_audience_locked(const std::string& dev, DeviceQueue& q, const std::string& key);
  void erase_queue_locked(std::unordered_map<std::string, DeviceQueue>::iterator it);
  // Clears chunk `index` for every member of `a` that wants it; returns how many did.
  std::uint32_t broadcast_clear_locked(Audience& a, std::uint32_t index, long long now);
  void send(const Pick& p);
  void acked(std::uint64_t seq);
  void release_locked(std::map<std::uint64_t, InFlight>::iterator it);
  void expire_locked(long long now);
  void pump();          // sends while the budget allows (sender_threads == 0)
  void sender_loop();

  const std::string store_dir_;
  const std::string prefix_;
  Publisher* const pub_;
  const ChunkFlowConfig flow_;
  ServedHook served_;

  mutable std::mutex mu_;
  std::condition_variable work_;  // a chunk was queued or budget came back
  bool stopping_ = false;
  std::map<std::string, std::shared_ptr<ImageFile>> files_;  // image id -> open file
  struct LastRequest {
    std::string key;
    long long ms = 0;
  };
  std::map<std::string, LastRequest> last_request_;  // device -> last served request
  std::unordered_map<std::string, std::unique_ptr<SentMarks>> sent_;  // device -> recent sends
  long long sent_pruned_ms_ = 0;
  std::unordered_map<std::string, DeviceQueue> queues_;
  // "<image id>|<group>" -> its audience, kept once made (one per image and group).
  std::unordered_map<std::string, Audience> audiences_;
  std::deque<std::string> ready_;                  // devices with wanted chunks, round robin
  std::map<std::uint64_t, InFlight> in_flight_;    // by sequence number, oldest first
  std::uint64_t next_seq_ = 1;
  std::uint64_t unacked_bytes_ = 0;
  std::uint64_t link_seen_ = 0;
  std::uint64_t queued_ = 0;
  std::vector<std::thread> senders_;

  std::atomic<std::uint64_t> chunks_sent_{0};
  std::atomic<std::uint64_t> bytes_served_{0};
  std::atomic<std::uint64_t> duplicate_requests_{0};
  std::atomic<std::uint64_t> peak_unacked_{0};
  std::atomic<std::uint64_t> beyond_span_{0};
  std::atomic<std::uint64_t> frames_lost_{0};
  std::atomic<std::uint64_t> resends_avoided_{0};
  std::atomic<std::uint64_t> broadcast_frames_{0};
  std::atomic<std::uint64_t> broadcast_bytes_{0};
  std::atomic<std::uint64_t> broadcast_deliveries_{0};
};

}  // namespace ota::service
