// Fleet-scale delivery under overload: 300 devices fetch one image at once while the
// controller may have only 64 KiB of chunk frames unacknowledged by the broker (its send
// budget, --chunk-queue-bytes). Every device must finish, the controller must not re-send
// the image over and over (bytes published at most 1.2x the image per device), the budget
// must hold, and the controller's memory must stay small.
#include <cstdio>
#include <fstream>
#include <set>
#include <sstream>

#include "fleet_fixture.hpp"

namespace {

using namespace fleet_test;

class FleetFlow : public fleet_test::FleetTest {
 protected:
  // A `name value` line of the Prometheus text; -1 when missing.
  static double metric(const std::string& text, const std::string& name) {
    std::istringstream in(text);
    std::string line;
    while (std::getline(in, line)) {
      if (line.compare(0, name.size() + 1, name + " ") == 0) return std::stod(line.substr(name.size() + 1));
    }
    return -1;
  }
  // Peak resident memory of a process (VmHWM), in KiB; -1 when unreadable.
  static long long peak_rss_kib(pid_t pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/status");
    std::string key;
    long long v = -1;
    while (in >> key) {
      if (key == "VmHWM:") {
        in >> v;
        return v;
      }
    }
    return -1;
  }
};

TEST_F(FleetFlow, ThreeHundredDevicesWithATinySendBudgetAllFinishWithoutResending) {
  constexpr int kDevices = 300;
  constexpr std::size_t kImage = 64 * 1024;  // 16 chunks of 4 KiB
  constexpr double kBudget = 64 * 1024;
  controller_args_ = {"--chunk-queue-bytes", std::to_string(static_cast<long long>(kBudget))};
  start_env("ff", kDevices, "crowd");
  start_fleet({"--no-broadcast"});  // the unicast send path under overload
  wait_fleet_online();
  std::string image(kImage, '\0');
  for (std::size_t i = 0; i < kImage; ++i) image[i] = static_cast<char>((i * 131 + i / 4096) & 0xFF);
  add_image(image, "2.0.0");

  auto r = client().Post("/api/v1/deployments", json{{"image", "2.0.0"}, {"group", "crowd"}}.dump(),
                         "application/json");
  ASSERT_TRUE(r && r->status == 201) << (r ? r->body : "no response");
  const std::string dep = json::parse(r->body).value("id", "");
  auto succeeded = [&] {
    json d = get("/api/v1/deployments/" + dep);
    return d.is_object() ? d["counts"].value("succeeded", 0) : -1;
  };
  ASSERT_TRUE(wait_until([&] { return succeeded() == kDevices; }, 400s, 500ms))
      << succeeded() << " of " << kDevices << " succeeded\n"
      << get("/api/v1/deployments/" + dep)["counts"].dump();

  const std::string m = metrics();
  const double served = metric(m, "ota_bytes_served_total");
  const double peak = metric(m, "ota_chunk_unacked_peak_bytes");
  EXPECT_EQ(metric(m, "ota_chunk_unacked_limit_bytes"), kBudget);
  // Every device got the image; re-requests under overload did not multiply the traffic.
  EXPECT_GE(served, static_cast<double>(kDevices) * kImage);
  EXPECT_LE(served, 1.2 * kDevices * kImage) << "bytes published per device / image = "
                                             << served / (static_cast<double>(kDevices) * kImage);
  // The budget held: at most one frame (28-byte header + 4 KiB) past it.
  EXPECT_GT(peak, 0);
  EXPECT_LE(peak, kBudget + 28 + 4096);
  // 300 devices x 64 KiB is 19 MiB of frames; the controller never holds them.
  const long long rss_kib = peak_rss_kib(controller_->pid());
  ASSERT_GT(rss_kib, 0);
#if defined(__SANITIZE_ADDRESS__)
  std::printf("controller peak RSS %lld MiB (ASan build: not checked)\n", rss_kib / 1024);
#else
  EXPECT_LT(rss_kib, 120 * 1024) << "controller peak RSS " << rss_kib / 1024 << " MiB";
#endif
}

// Broadcast with unicast repair (PROTOCOL.md 17): 50 devices of one group fetch one image
// at once, listening on the group's image topic; 10 of them lose their link mid-transfer
// (--drop-ids at --drop-at %) and come back. All 50 finish; the controller publishes the
// image about twice instead of 50 times; the chunks served are the images once plus at
// most what the ten lacked when they were cut off; a device that was cut off fetches by
// unicast no more than it lacked (its repairs mostly come by broadcast, gathered with the
// others').
TEST_F(FleetFlow, BroadcastWaveOfFiftyWithTenCutOffAllFinishAndRepairsFetchOnlyWhatIsMissing) {
  constexpr int kDevices = 50;
  constexpr int kDropAtPercent = 40;
  constexpr std::size_t kImage = 512 * 1024;  // 128 chunks of 4 KiB: two agent windows
  // The fixture's devices re-request after 1 s (and fall back to unicast after 2 unanswered
  // re-requests without broadcast): a hold of 200 ms keeps the longest wait (10 holds) below.
  controller_args_ = {"--broadcast-hold-ms", "200"};
  start_env("bw", kDevices, "wave");
  std::vector<std::string> dropped;
  for (int i = 5; i <= kDevices; i += 5) dropped.push_back(device_id(i));
  start_fleet({"--drop-ids", join(dropped), "--drop-at", std::to_string(kDropAtPercent)});
  wait_fleet_online();
  std::string image(kImage, '\0');
  for (std::size_t i = 0; i < kImage; ++i) image[i] = static_cast<char>((i * 157 + i / 4096) & 0xFF);
  add_image(image, "2.0.0");

  auto r = client().Post("/api/v1/deployments", json{{"image", "2.0.0"}, {"group", "wave"}}.dump(),
                         "application/json");
  ASSERT_TRUE(r && r->status == 201) << (r ? r->body : "no response");
  const std::string dep = json::parse(r->body).value("id", "");
  json d;
  ASSERT_TRUE(wait_until(
      [&] {
        d = get("/api/v1/deployments/" + dep);
        return d.is_object() && d["counts"].value("succeeded", 0) == kDevices;
      },
      60s, 100ms))
      << (d.is_object() ? d["counts"].dump() : "no deployment");

  const std::string m = metrics();
  const double served = metric(m, "ota_bytes_served_total");
  const double broadcast = metric(m, "ota_chunk_broadcast_bytes_total");
  const double unicast = metric(m, "ota_chunk_unicast_bytes_total");
  std::printf("published %.2fx the image (broadcast %.2fx, unicast %.2fx), %.0f broadcast frames "
              "delivering %.0f chunks\n",
              served / kImage, broadcast / kImage, unicast / kImage,
              metric(m, "ota_chunk_broadcast_frames_total"),
              metric(m, "ota_chunk_broadcast_deliveries_total"));
  EXPECT_EQ(served, broadcast + unicast);
  EXPECT_GE(broadcast, static_cast<double>(kImage) / 2) << "the wave was not broadcast";
  // 50 unicast downloads would be 50x the image. Measured here (2 cores, three or two runs
  // at once, also under ASan): 1.8-2.5x; before repairs were gathered while the front
  // moves, 3.5-15x (late devices and the ten repairs were served by unicast).
  EXPECT_LE(served, 6.0 * kImage) << "published " << served / kImage << "x the image";

  // What each cut-off device held when its link went (the simulator logs the fault).
  const std::string log = read_file(dir_.path() + "/devsim.log");
  std::map<std::string, double> lacked;  // device -> image bytes it lacked at the cut
  for (const auto& dev : dropped) {
    const auto at = log.find(dev + ": fault injection: link cut at ");
    ASSERT_NE(at, std::string::npos) << dev << ": the link was never cut";
    unsigned pct = 0, held = 0, chunks = 0;
    ASSERT_EQ(std::sscanf(log.c_str() + at + dev.size(), ": fault injection: link cut at %u%% (%u of %u chunks)",
                          &pct, &held, &chunks), 3);
    ASSERT_EQ(chunks, kImage / 4096);
    lacked[dev] = static_cast<double>(chunks - held) * 4096;
  }
  // Rows count the unicast bytes a device was sent: not much more than the image (a frame
  // lost with a cut link or re-requested while queued goes twice), and the ten that came
  // back fetched by unicast what they lacked when they were cut off, within 10%: a chunk
  // re-requested after a late frame goes twice (under ASan one device took 420 KiB for 296
  // KiB missing, the ten 3.06 MB for 2.97 MB), while fetching the image over again would be
  // about 1.8 times what they lacked.
  int rows = 0;
  double repaired_unicast = 0, repaired_lacked = 0;
  for (const auto& row : d["devices"]) {
    ++rows;
    const double sent = row.value("bytes_sent", 0.0);
    const std::string dev = row.value("device", "");
    EXPECT_LE(sent, 1.25 * kImage) << dev << " was sent the image over again by unicast";
    if (lacked.count(dev)) {
      repaired_unicast += sent;
      repaired_lacked += lacked[dev];
      std::printf("%s lacked %.0f KiB at the cut, was sent %.0f KiB by unicast\n", dev.c_str(),
                  lacked[dev] / 1024, sent / 1024);
    }
  }
  EXPECT_EQ(rows, kDevices);
  // Chunks served, all devices together (a broadcast frame counts once per device that
  // asked for it; a chunk that came before a device asked is not counted): at most every
  // device's image once, plus once more what the ten lacked at the cut (frames that went
  // while they were away). Fetching the image over again, or serving re-requests of frames
  // still on their way, would exceed it.
  const double delivered_chunks =
      metric(m, "ota_chunk_broadcast_deliveries_total") + unicast / 4096;
  const double chunks = static_cast<double>(kImage / 4096);
  EXPECT_LE(delivered_chunks, kDevices * chunks + repaired_lacked / 4096)
      << "chunks served " << delivered_chunks << " for " << kDevices * chunks << " needed";
  EXPECT_LE(repaired_unicast, 1.1 * repaired_lacked)
      << "the ten cut-off devices were sent " << repaired_unicast << " bytes by unicast, they lacked "
      << repaired_lacked;
}

}  // namespace
