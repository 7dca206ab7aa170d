// ChunkServer flow control: the send budget bounds what is published and not acknowledged,
// whatever the number of devices asking; devices share it round robin; a lost link or a
// missing PUBACK gives the budget back; repeated requests merge instead of multiplying.
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "ota/proto/frame.hpp"
#include "ota/service/chunk_server.hpp"
#include "ota/service/images.hpp"
#include "service_test_util.hpp"

namespace {

using namespace ota::service;

// A broker link whose PUBACKs the test hands out (or, `auto_ack`, at once, from a thread of
// its own as the real client's network thread does).
class HeldAckPublisher : public Publisher {
 public:
  struct Sent {
    std::string topic;
    std::uint32_t offset = 0;
  };
  bool publish(const std::string&, const void*, std::size_t, int, bool) override { return true; }
  bool publish_acked(const std::string& topic, const void* data, std::size_t len, int, bool,
                     std::function<void()> acked) override {
    ota::proto::ChunkFrame f;
    if (ota::proto::decode_chunk_frame(static_cast<const std::uint8_t*>(data), len, 65536, f))
      return false;  // the server framed it wrong: shows up as missing chunks
    std::lock_guard<std::mutex> lock(mu_);
    sent_.push_back({topic, f.offset});
    pending_.push_back(std::move(acked));
    unacked_peak_ = std::max(unacked_peak_, pending_.size());
    cv_.notify_all();
    return true;
  }
  std::uint64_t link_generation() const override { return generation_; }

  // Runs the oldest `n` PUBACK callbacks (outside the lock, as the network thread does).
  void ack(std::size_t n) {
    std::vector<std::function<void()>> run;
    {
      std::lock_guard<std::mutex> lock(mu_);
      while (n-- > 0 && !pending_.empty()) {
        run.push_back(std::move(pending_.front()));
        pending_.pop_front();
      }
    }
    for (auto& cb : run) cb();
  }
  // The link drops: the client forgets every PUBACK it waited for.
  void lose_link() {
    std::lock_guard<std::mutex> lock(mu_);
    pending_.clear();
    ++generation_;
  }
  std::size_t sent_count() {
    std::lock_guard<std::mutex> lock(mu_);
    return sent_.size();
  }
  std::vector<Sent> sent() {
    std::lock_guard<std::mutex> lock(mu_);
    return sent_;
  }
  // Waits until `n` frames were published or the deadline passed.
  bool wait_sent(std::size_t n, std::chrono::milliseconds deadline = std::chrono::seconds(10)) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, deadline, [&] { return sent_.size() >= n; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Sent> sent_;
  std::deque<std::function<void()>> pending_;
  std::size_t unacked_peak_ = 0;
  std::atomic<std::uint64_t> generation_{0};
};

constexpr std::uint32_t kChunk = 1024;
constexpr std::uint64_t kFrame = ota::proto::kFrameHeaderLen + kChunk;

struct Fixture {
  ota::service::testing::TempDir dir;
  ImageRec img;
  Fixture(std::uint32_t chunks = 64) {
    img.sha256 = std::string(64, 'a');
    img.id = img.sha256.substr(0, 16);
    img.size = std::uint64_t{chunks} * kChunk;
    img.chunk_size = kChunk;
    EXPECT_TRUE(ensure_dir(dir.file("images")).ok());
    std::FILE* f = std::fopen(image_path(dir.file("images"), img.sha256).c_str(), "wb");
    std::string bytes(img.size, 'x');
    std::fwrite(bytes.data(), 1, bytes.size(), f);
    std::fclose(f);
  }
};

ota::proto::ChunkRequest req_for(const ImageRec& img, std::uint32_t first, std::uint32_t count) {
  ota::proto::ChunkRequest r;
  r.deployment.assign("dep-1");
  r.image.assign(img.id.c_str());
  r.first = first;
  r.count = count;
  return r;
}

// A chunk server over a fixture's image (`chunks` chunks) with the test's flow settings,
// and the image opened (file is empty if that failed).
struct Served {
  Fixture fx;
  HeldAckPublisher pub;
  ChunkServer cs;
  std::shared_ptr<ImageFile> file;
  explicit Served(const ChunkFlowConfig& flow, std::uint32_t chunks = 64)
      : fx(chunks), cs(fx.dir.file("images"), "ota/v1", &pub, flow) {
    auto opened = cs.open(fx.img);
    if (opened.ok()) file = *opened;
  }
};

TEST(ChunkFlow, UnackedBytesStayWithinTheBudgetWhateverTheNumberOfDevices) {
  ChunkFlowConfig flow;
  flow.max_unacked_bytes = 4 * kFrame;
  flow.sender_threads = 0;
  Served s(flow);
  ASSERT_TRUE(s.file);
  for (int d = 0; d < 50; ++d)
    EXPECT_EQ(s.cs.request("dev-" + std::to_string(d), "dep-1", s.file, req_for(s.fx.img, 0, 8)), 8u);
  EXPECT_EQ(s.pub.sent_count(), 4u) << "published beyond the budget before any PUBACK";
  EXPECT_EQ(s.cs.unacked_bytes(), 4 * kFrame);
  EXPECT_EQ(s.cs.queued_chunks(), 50u * 8 - 4);
  // Every PUBACK lets exactly one more frame out, until all 400 are sent.
  for (std::size_t n = 4; n < 400; ++n) {
    s.pub.ack(1);
    ASSERT_EQ(s.pub.sent_count(), n + 1);
  }
  s.pub.ack(4);
  EXPECT_EQ(s.cs.chunks_sent(), 400u);
  EXPECT_EQ(s.cs.unacked_bytes(), 0u);
  EXPECT_EQ(s.cs.queued_chunks(), 0u);
  EXPECT_LE(s.cs.peak_unacked_bytes(), 4 * kFrame);
}

TEST(ChunkFlow, DevicesShareTheBudgetRoundRobin) {
  ChunkFlowConfig flow;
  flow.max_unacked_bytes = 2 * kFrame;
  flow.sender_threads = 0;
  Served s(flow);
  ASSERT_TRUE(s.file);
  s.cs.request("greedy", "dep-1", s.file, req_for(s.fx.img, 0, 64));
  s.cs.request("small", "dep-1", s.file, req_for(s.fx.img, 0, 2));
  for (int i = 0; i < 10; ++i) s.pub.ack(1);
  // The first frames alternate: the device asking for 64 chunks did not starve the other.
  std::map<std::string, int> first_six;
  const auto sent = s.pub.sent();
  for (std::size_t i = 0; i < 6 && i < sent.size(); ++i) first_six[sent[i].topic]++;
  EXPECT_EQ(first_six["ota/v1/dev/small/down/chunk"], 2);
  EXPECT_EQ(first_six["ota/v1/dev/greedy/down/chunk"], 4);
}

TEST(ChunkFlow, RepeatedRequestsMergeIntoWhatIsQueued) {
  ChunkFlowConfig flow;
  flow.max_unacked_bytes = kFrame;
  flow.sender_threads = 0;
  Served s(flow);
  ASSERT_TRUE(s.file);
  EXPECT_EQ(s.cs.request("d1", "dep-1", s.file, req_for(s.fx.img, 0, 16)), 16u);
  EXPECT_EQ(s.pub.sent_count(), 1u);  // chunk 0; 1..15 wait for budget
  // A device that timed out asks again for the same window while it waits: it merges into
  // what is queued, and chunk 0, sent a moment ago, is not sent again (resend guard).
  EXPECT_EQ(s.cs.request("d1", "dep-1", s.file, req_for(s.fx.img, 0, 16)), 0u);
  EXPECT_EQ(s.cs.resends_avoided(), 1u);
  EXPECT_EQ(s.cs.request("d1", "dep-1", s.file, req_for(s.fx.img, 8, 16)), 8u);
  for (int i = 0; i < 40; ++i) s.pub.ack(1);
  std::map<std::uint32_t, int> times;
  for (const auto& frame : s.pub.sent()) times[frame.offset]++;
  EXPECT_EQ(times.size(), 24u);
  for (std::uint32_t c = 0; c < 24; ++c) EXPECT_EQ(times[c * kChunk], 1) << "chunk " << c;
  EXPECT_EQ(s.cs.chunks_sent(), 24u);
}

// The resend guard: a re-request for chunks sent (unicast or by broadcast) less than
// resend_guard_ms ago is a frame still on its way, not a loss; it is served once the guard
// passed, or at once after the device connected again (its frames before went with the link).
TEST(ChunkFlow, ChunksSentLatelyGoAgainOnlyAfterTheGuardOrAReconnect) {
  ChunkFlowConfig flow;
  flow.max_unacked_bytes = 8 * kFrame;
  flow.sender_threads = 0;
  flow.resend_guard_ms = 300;
  Served s(flow);
  ASSERT_TRUE(s.file);
  EXPECT_EQ(s.cs.request("d1", "dep-1", s.file, req_for(s.fx.img, 0, 4)), 4u);
  s.pub.ack(4);
  ASSERT_EQ(s.pub.sent_count(), 4u);
  // Asked again at once: nothing goes twice; a chunk never sent (4) is served.
  EXPECT_EQ(s.cs.request("d1", "dep-1", s.file, req_for(s.fx.img, 0, 5)), 1u);
  EXPECT_EQ(s.cs.resends_avoided(), 4u);
  s.pub.ack(1);
  EXPECT_EQ(s.pub.sent_count(), 5u);
  // Another deployment's marks do not apply (the guard is per offer).
  EXPECT_EQ(s.cs.request("d1", "dep-2", s.file, req_for(s.fx.img, 0, 1)), 1u);
  s.pub.ack(1);
  // A new connection (its hello): its frames before are lost, so the request is served.
  EXPECT_EQ(s.cs.request("d2", "dep-1", s.file, req_for(s.fx.img, 0, 2)), 2u);
  s.pub.ack(2);
  EXPECT_EQ(s.cs.request("d2", "dep-1", s.file, req_for(s.fx.img, 0, 2)), 0u);
  s.cs.link_restarted("d2");
  const auto sent_at = std::chrono::steady_clock::now();
  EXPECT_EQ(s.cs.request("d2", "dep-1", s.file, req_for(s.fx.img, 0, 2)), 2u);
  s.pub.ack(2);
  EXPECT_EQ(s.cs.request("d2", "dep-1", s.file, req_for(s.fx.img, 1, 1)), 0u);
  // Once the guard passed, d2's re-request for chunk 1 is served again.
  std::uint32_t queued = 0;
  const auto deadline = sent_at + std::chrono::seconds(5);
  while (queued == 0 && std::chrono::steady_clock::now() < deadline) {
    queued = s.cs.request("d2", "dep-1", s.file, req_for(s.fx.img, 1, 1));
    if (queued == 0) std::this_thread::sleep_for(std::chrono::milliseconds(5));  // polling the clock
  }
  EXPECT_EQ(queued, 1u);
  // The guard counts whole milliseconds of a steady clock: a mark taken at x.9 ms and a request
  // at (x + 300).1 ms are 300 apart for it, 299.2 ms for the test's clock.
  EXPECT_GE(std::chrono::steady_clock::now() - sent_at, std::chrono::milliseconds(300 - 1));
}

// A request far beyond what the device's queue holds (a confused or hostile device) queues
// nothing past the window, is counted, and does not disturb what is queued.
TEST(ChunkFlow, RequestsBeyondTheQueueWindowAreDroppedAndCounted) {
  ChunkFlowConfig flow;
  flow.max_unacked_bytes = kFrame;
  flow.sender_threads = 0;
  Served s(flow, ChunkServer::kQueueSpan + 64);
  ASSERT_TRUE(s.file);
  EXPECT_EQ(s.cs.request("d1", "dep-1", s.file, req_for(s.fx.img, 0, 4)), 4u);
  EXPECT_EQ(s.cs.request("d1", "dep-1", s.file, req_for(s.fx.img, ChunkServer::kQueueSpan + 10, 8)), 0u);
  EXPECT_EQ(s.cs.chunks_beyond_span(), 8u);
  // Past the end of the image: nothing queued at all.
  EXPECT_EQ(s.cs.request("d2", "dep-1", s.file, req_for(s.fx.img, ChunkServer::kQueueSpan + 64, 8)), 0u);
  for (int i = 0; i < 10; ++i) s.pub.ack(1);
  EXPECT_EQ(s.cs.chunks_sent(), 4u);
  EXPECT_EQ(s.cs.queued_chunks(), 0u);
}

TEST(ChunkFlow, ALostLinkGivesTheBudgetBack) {
  ChunkFlowConfig flow;
  flow.max_unacked_bytes = 3 * kFrame;
  flow.sender_threads = 0;
  Served s(flow);
  ASSERT_TRUE(s.file);
  s.cs.request("d1", "dep-1", s.file, req_for(s.fx.img, 0, 10));
  EXPECT_EQ(s.pub.sent_count(), 3u);
  s.pub.lose_link();  // those three PUBACKs will never come
  // The next request (after the device reconnected) finds the budget free again.
  s.cs.request("d2", "dep-1", s.file, req_for(s.fx.img, 0, 1));
  EXPECT_EQ(s.cs.frames_lost(), 3u);
  EXPECT_EQ(s.pub.sent_count(), 6u);  // two more of d1's (its share of 3 frames) and d2's one
  EXPECT_EQ(s.cs.unacked_bytes(), 3 * kFrame);
}

TEST(ChunkFlow, FramesWithoutPubackWithinTheTimeoutAreCountedLost) {
  ChunkFlowConfig flow;
  flow.max_unacked_bytes = 2 * kFrame;
  flow.ack_timeout_ms = 50;
  flow.sender_threads = 1;
  Served s(flow);
  ASSERT_TRUE(s.file);
  s.cs.request("d1", "dep-1", s.file, req_for(s.fx.img, 0, 6));
  // No PUBACK ever arrives: the sender counts each pair lost after 50 ms and goes on.
  ASSERT_TRUE(s.pub.wait_sent(6)) << "stuck at " << s.pub.sent_count() << " frames";
  EXPECT_GE(s.cs.frames_lost(), 4u);
}

TEST(ChunkFlow, SenderThreadsServeManyDevicesWithinTheBudget) {
  ChunkFlowConfig flow;
  flow.max_unacked_bytes = 16 * kFrame;
  flow.sender_threads = 2;
  std::atomic<std::uint64_t> served{0};
  Served s(flow, 32);
  ASSERT_TRUE(s.file);
  s.cs.set_served_hook([&](const std::string&, const std::string& offer, std::uint64_t bytes) {
    EXPECT_EQ(offer, "dep-1");
    served += bytes;
  });
  for (int d = 0; d < 200; ++d) s.cs.request("dev-" + std::to_string(d), "dep-1", s.file, req_for(s.fx.img, 0, 32));
  // An acknowledging "network thread": PUBACKs as frames go out.
  std::atomic<bool> done{false};
  std::thread broker([&] {
    while (!done) {
      s.pub.ack(4);
      std::this_thread::yield();
    }
  });
  const bool all = s.pub.wait_sent(200u * 32, std::chrono::seconds(30));
  done = true;
  broker.join();
  ASSERT_TRUE(all) << s.pub.sent_count();
  s.pub.ack(1000);
  EXPECT_LE(s.cs.peak_unacked_bytes(), 16 * kFrame);
  // A served hook call for every frame (the last may still be running: stop() joins).
  s.cs.stop();
  EXPECT_EQ(served.load(), 200u * 32 * kChunk);
  std::map<std::string, int> per_device;
  for (const auto& frame : s.pub.sent()) per_device[frame.topic]++;
  EXPECT_EQ(per_device.size(), 200u);
  for (const auto& [topic, n] : per_device) EXPECT_EQ(n, 32) << topic;
}

}  // namespace

namespace {

// Broadcast (PROTOCOL.md 17): a chunk two or more listening devices of one group want goes
// out once on the group's image topic and is cleared for all of them; what only one device
// wants, and everything for a device that does not listen, is unicast.
TEST(ChunkFlow, ChunksSeveralListenersWantAreBroadcastOnceTheRestUnicast) {
  ChunkFlowConfig flow;
  flow.max_unacked_bytes = kFrame;  // one frame at a time: requests wait and accumulate
  flow.sender_threads = 0;          // deterministic (and no hold)
  Served s(flow);
  ASSERT_TRUE(s.file);
  // a asks first: chunk 0 goes to it alone at once (nobody else asked yet).
  EXPECT_EQ(s.cs.request("a", "dep-1", s.file, req_for(s.fx.img, 0, 4), "g"), 4u);
  ASSERT_EQ(s.pub.sent_count(), 1u);
  // b and c listen on g too and want the same four; d wants them without listening.
  s.cs.request("b", "dep-1", s.file, req_for(s.fx.img, 0, 4), "g");
  s.cs.request("c", "dep-1", s.file, req_for(s.fx.img, 0, 4), "g");
  s.cs.request("d", "dep-1", s.file, req_for(s.fx.img, 0, 4));
  for (int i = 0; i < 20 && s.cs.queued_chunks() > 0; ++i) s.pub.ack(1);
  s.pub.ack(1);
  EXPECT_EQ(s.cs.queued_chunks(), 0u);
  const std::string image_topic = "ota/v1/grp/g/img/" + s.fx.img.id + "/chunk";
  std::map<std::string, std::multiset<std::uint32_t>> by_topic;
  for (const auto& frame : s.pub.sent()) by_topic[frame.topic].insert(frame.offset / kChunk);
  // a's chunk 0 by unicast; then chunk 0 once for b and c, chunks 1-3 once for all three.
  EXPECT_EQ(by_topic["ota/v1/dev/a/down/chunk"], (std::multiset<std::uint32_t>{0}));
  EXPECT_EQ(by_topic[image_topic], (std::multiset<std::uint32_t>{0, 1, 2, 3}));
  EXPECT_EQ(by_topic["ota/v1/dev/b/down/chunk"].size(), 0u);
  EXPECT_EQ(by_topic["ota/v1/dev/c/down/chunk"].size(), 0u);
  EXPECT_EQ(by_topic["ota/v1/dev/d/down/chunk"], (std::multiset<std::uint32_t>{0, 1, 2, 3}));
  EXPECT_EQ(s.cs.broadcast_frames(), 4u);
  EXPECT_EQ(s.cs.broadcast_deliveries(), 2u + 3 * 3);
  EXPECT_EQ(s.cs.broadcast_bytes(), 4u * kChunk);
  EXPECT_EQ(s.cs.unicast_bytes(), 5u * kChunk);
  EXPECT_EQ(s.cs.bytes_served(), 9u * kChunk);
  // b was counted in the broadcasts: asking again at once (the frames are still on their
  // way) sends nothing twice.
  EXPECT_EQ(s.cs.request("b", "dep-1", s.file, req_for(s.fx.img, 0, 4), "g"), 0u);
  EXPECT_EQ(s.cs.resends_avoided(), 4u);
}

// A device that stops listening (a request without bc) leaves the audience: its chunks are
// unicast and the others' counts no longer include it.
TEST(ChunkFlow, ADeviceThatStopsListeningIsServedByUnicast) {
  ChunkFlowConfig flow;
  flow.max_unacked_bytes = kFrame;
  flow.sender_threads = 0;
  Served s(flow);
  ASSERT_TRUE(s.file);
  s.cs.request("blocker", "dep-1", s.file, req_for(s.fx.img, 10, 1));  // holds the one-frame budget
  s.cs.request("a", "dep-1", s.file, req_for(s.fx.img, 0, 2), "g");
  s.cs.request("b", "dep-1", s.file, req_for(s.fx.img, 0, 2), "g");
  s.cs.request("b", "dep-1", s.file, req_for(s.fx.img, 0, 2));  // b falls back to unicast
  for (int i = 0; i < 10; ++i) s.pub.ack(1);
  EXPECT_EQ(s.cs.queued_chunks(), 0u);
  EXPECT_EQ(s.cs.broadcast_frames(), 0u);
  EXPECT_EQ(s.cs.unicast_bytes(), 5u * kChunk);
}

}  // namespace
