// Fleet-scale delivery under overload: 300 devices fetch one image at once while the
// controller may have only 64 KiB of chunk frames unacknowledged by the broker (its send
// budget, --chunk-queue-bytes). Every device must finish, the controller must not re-send
// the image over and over (bytes published at most 1.2x the image per device), the budget
// must hold, and the controller's memory must stay small.
#include <fstream>
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
  start_fleet();
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

}  // namespace
