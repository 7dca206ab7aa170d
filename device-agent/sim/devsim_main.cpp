// ota-devsim: a simulated fleet. Every device runs the real agent core with the Linux
// ports (own TLS identity, own MQTT connection, own flash files). A few worker threads
// (--threads) each own many devices and drive them from an epoll loop (fleet_worker.hpp), so
// one process holds thousands of connections; every call for one device happens on its
// owning worker's thread.
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <memory>
#include <set>
#include <sstream>
#include <thread>

#include <CLI/CLI.hpp>

#include "ota/cli_config.hpp"

#include "ota/agent/linux/device_runner.hpp"
#include "ota/proto/messages.hpp"

#include "fleet_worker.hpp"

namespace {
std::atomic<bool> g_stop{false};
void on_signal(int) { g_stop = true; }

std::set<std::string> split_ids(const std::string& list) {
  std::set<std::string> out;
  std::stringstream in(list);
  std::string id;
  while (std::getline(in, id, ',')) {
    if (!id.empty()) out.insert(id);
  }
  return out;
}

using ota::agent::linux_port::DeviceOptions;
using ota::agent::linux_port::DeviceRunner;

// What the command line says about the fleet; `base` is what every device shares.
struct FleetOptions {
  int count = 20;
  std::string id_prefix = "sim";
  std::string pki, data;
  DeviceOptions base;
  std::string fail_self_test, drop_ids, crash_ids, corrupt_ids, defer_ids, decline_ids;
  std::string decline_reason = "low_battery";
  std::string crash_in_state;
  std::uint32_t defer_count = 1;
  int drop_at = 50, crash_at = 50;
  std::int64_t corrupt_offset = 0;
  int status_ms = 0;
  bool app_bundles = false;
  unsigned threads = 0;        // 0: hardware concurrency (one per device with slow flash)
  unsigned connect_rate = 500;  // devices powered on per second at start (0: all at once)
};

// Descriptors one device holds: its MQTT socket and libmosquitto's wake-up socket pair, plus
// the slot file while it writes an image. The rest is for the process itself.
constexpr rlim_t kDescriptorsPerDevice = 4;
constexpr rlim_t kDescriptorsReserved = 64;

// Raises the soft RLIMIT_NOFILE to the hard limit. False (with the message printed) when
// even the hard limit is too low for `count` devices.
bool raise_descriptor_limit(int count) {
  rlimit lim{};
  if (::getrlimit(RLIMIT_NOFILE, &lim) != 0) {
    std::fprintf(stderr, "ota-devsim: getrlimit(RLIMIT_NOFILE): %s\n", std::strerror(errno));
    return false;
  }
  const rlim_t needed = static_cast<rlim_t>(count) * kDescriptorsPerDevice + kDescriptorsReserved;
  if (lim.rlim_max != RLIM_INFINITY && lim.rlim_max < needed) {
    std::fprintf(stderr,
                 "ota-devsim: --count %d needs %llu file descriptors (%llu per device + %llu), "
                 "but the hard RLIMIT_NOFILE is %llu: raise it (ulimit -Hn, LimitNOFILE=, "
                 "limits.conf) or run fewer devices per process (at most %llu)\n",
                 count, static_cast<unsigned long long>(needed),
                 static_cast<unsigned long long>(kDescriptorsPerDevice),
                 static_cast<unsigned long long>(kDescriptorsReserved),
                 static_cast<unsigned long long>(lim.rlim_max),
                 static_cast<unsigned long long>(
                     lim.rlim_max > kDescriptorsReserved
                         ? (lim.rlim_max - kDescriptorsReserved) / kDescriptorsPerDevice
                         : 0));
    return false;
  }
  if (lim.rlim_cur != RLIM_INFINITY && lim.rlim_cur < lim.rlim_max) {
    lim.rlim_cur = lim.rlim_max;
    if (::setrlimit(RLIMIT_NOFILE, &lim) != 0) {
      std::fprintf(stderr, "ota-devsim: setrlimit(RLIMIT_NOFILE, %llu): %s\n",
                   static_cast<unsigned long long>(lim.rlim_max), std::strerror(errno));
      return false;
    }
  }
  return true;
}

// One runner per device, each with its own certificate, data directory and injected faults.
// Empty when a device has no certificate (the error is printed).
std::vector<std::unique_ptr<DeviceRunner>> make_devices(FleetOptions& f) {
  const auto fail_set = split_ids(f.fail_self_test), drop_set = split_ids(f.drop_ids),
             crash_set = split_ids(f.crash_ids), corrupt_set = split_ids(f.corrupt_ids),
             defer_set = split_ids(f.defer_ids), decline_set = split_ids(f.decline_ids);
  ota::proto::ReasonCode decline_rc = ota::proto::ReasonCode::low_battery;
  ota::proto::reason_from_name(f.decline_reason.c_str(), f.decline_reason.size(), decline_rc);
  f.base.mqtt.ca_file = f.pki + "/ca.crt";
  if (f.base.trusted_keys.empty()) f.base.trusted_keys.push_back(f.pki + "/release.pub");
  std::vector<std::unique_ptr<DeviceRunner>> devices;
  for (int i = 1; i <= f.count; ++i) {
    char id[80];
    std::snprintf(id, sizeof id, "%s-%03d", f.id_prefix.c_str(), i);
    DeviceOptions o = f.base;
    o.device_id = id;
    o.data_dir = f.data + "/" + id;
    if (f.app_bundles) o.app_dir = o.data_dir + "/app";
    o.mqtt.cert_file = f.pki + "/devices/" + id + ".crt";
    o.mqtt.key_file = f.pki + "/devices/" + id + ".key";
    if (::access(o.mqtt.cert_file.c_str(), R_OK) != 0) {
      std::fprintf(stderr, "ota-devsim: no certificate for %s at %s (create it with broker-config/pki.sh device)\n",
                   id, o.mqtt.cert_file.c_str());
      return {};
    }
    o.fail_self_test = fail_set.count(id) > 0;
    if (drop_set.count(id)) o.drop_at_percent = f.drop_at;
    if (crash_set.count(id)) o.crash_at_percent = f.crash_at;
    if (corrupt_set.count(id)) o.corrupt_write_offset = f.corrupt_offset;
    if (defer_set.count(id)) o.defer_offers = f.defer_count;
    for (int st = 0; !f.crash_in_state.empty() && st <= 5; ++st) {
      if (f.crash_in_state == ota::proto::device_state_name(static_cast<ota::proto::DeviceState>(st))) {
        o.crash_in_state = st;
      }
    }
    if (decline_set.count(id)) {
      o.decline_offers = true;
      o.decline_reason = decline_rc;
    }
    devices.push_back(std::make_unique<DeviceRunner>(o));
  }
  return devices;
}

// Worker threads: --threads, else one per core; slow flash (--flash-write-delay-us) sleeps
// inside the device's flash write, which would hold up every device sharing its thread, so
// then each device gets its own thread unless --threads says otherwise.
unsigned worker_count(const FleetOptions& f, std::size_t devices) {
  unsigned n = f.threads;
  if (n == 0) {
    n = f.base.flash_write_delay_us > 0 ? static_cast<unsigned>(devices)
                                        : std::max(1u, std::thread::hardware_concurrency());
  }
  return static_cast<unsigned>(std::min<std::size_t>(n, devices));
}

// Runs the devices on the workers until a signal or a device fails; prints a status line
// every `status_ms` (0: never). The exit code.
int run_fleet(const std::vector<std::unique_ptr<DeviceRunner>>& devices, const FleetOptions& f) {
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
  const unsigned n_workers = worker_count(f, devices.size());
  // Devices are dealt round-robin and powered on at --connect-rate (a fleet at full speed
  // would make the broker's TLS handshakes time out and start in a reconnect storm).
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::unique_ptr<ota::devsim::FleetWorker>> workers;
  for (unsigned w = 0; w < n_workers; ++w) workers.push_back(std::make_unique<ota::devsim::FleetWorker>());
  for (std::size_t i = 0; i < devices.size(); ++i) {
    const auto offset = f.connect_rate == 0
                            ? std::chrono::microseconds(0)
                            : std::chrono::microseconds(i * 1000000u / f.connect_rate);
    workers[i % n_workers]->add(devices[i].get(), t0 + offset);
  }
  std::atomic<int> failed{0};
  std::vector<std::thread> threads;
  for (auto& w : workers) {
    threads.emplace_back([&failed, worker = w.get()] {
      if (!worker->run(g_stop)) ++failed;
    });
  }
  std::printf("ota-devsim running %zu devices on %u threads\n", devices.size(), n_workers);
  std::fflush(stdout);
  auto next_status = std::chrono::steady_clock::now();
  while (!g_stop && failed == 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));  // display pacing, not sync
    if (f.status_ms > 0 && std::chrono::steady_clock::now() >= next_status) {
      next_status += std::chrono::milliseconds(f.status_ms);
      int online = 0, busy = 0;
      for (auto& d : devices) {
        online += d->connected ? 1 : 0;
        busy += d->state != 0 ? 1 : 0;
      }
      std::fprintf(stderr, "ota-devsim: %d/%zu online, %d updating\n", online, devices.size(), busy);
    }
  }
  g_stop = true;
  for (auto& t : threads) t.join();
  return failed == 0 ? 0 : 1;
}
}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ota-devsim: N simulated OTA devices, each with its own TLS identity"};
  app.set_version_flag("--version", std::string(ota::cli::version()));
  FleetOptions f;
  DeviceOptions& base = f.base;
  app.add_option("--count", f.count, "number of devices")->capture_default_str()->check(CLI::Range(1, 10000));
  app.add_option("--id-prefix", f.id_prefix, "device ids are PREFIX-001...")->capture_default_str();
  app.add_option("--pki", f.pki, "PKI directory (ca.crt, devices/ID.crt|key, release.pub)")
      ->required()->check(CLI::ExistingDirectory);
  app.add_option("--trusted-key", base.trusted_keys,
                 "release public key PEM (repeatable; default PKI/release.pub)")
      ->check(CLI::ExistingFile);
  app.add_option("--online-key", base.online_keys,
                 "online public key PEM (repeatable): signs offers, accepted only with a release "
                 "signature")
      ->check(CLI::ExistingFile);
  app.add_option("--root-key", base.root_key,
                 "root public key PEM: signs key sets (rotation, revocation); each device keeps "
                 "the key set in force in DATA/ID/agent.keys")
      ->check(CLI::ExistingFile);
  app.add_option("--data", f.data, "state directory; each device gets DATA/ID/")->required();
  app.add_option("--host", base.mqtt.host, "broker host")->capture_default_str();
  app.add_option("--port", base.mqtt.port, "broker TLS port")->required()->check(CLI::Range(1, 65535));
  app.add_option("--hw", base.hw_model, "hardware model")->capture_default_str();
  app.add_option("--group", base.groups, "group of every device (repeatable)");
  app.add_option("--prefix", base.prefix, "topic prefix")->capture_default_str();
  app.add_option("--initial-version", base.initial_version, "factory version")->capture_default_str();
  app.add_option("--window", base.window_chunks, "chunks requested ahead")->capture_default_str()
      ->check(CLI::Range(1, 256));
  app.add_option("--request-timeout-ms", base.request_timeout_ms, "re-request after this long")
      ->capture_default_str();
  app.add_flag("!--no-broadcast", base.broadcast,
               "fetch chunks by unicast only (default: also listen on the group's image topic "
               "while downloading, PROTOCOL.md 17)");
  app.add_flag("!--no-fsync", base.durable, "skip fsync (faster; a crash of the machine may lose data)");
  app.add_option("--fail-self-test", f.fail_self_test, "comma-separated ids whose new image fails its self-test");
  app.add_option("--drop-ids", f.drop_ids, "ids whose network link is cut once during download");
  app.add_option("--drop-at", f.drop_at, "download %% at which --drop-ids lose the link")->capture_default_str();
  app.add_option("--crash-ids", f.crash_ids, "ids that lose power once during download");
  app.add_option("--crash-at", f.crash_at, "download %% at which --crash-ids lose power")->capture_default_str();
  app.add_option("--corrupt-ids", f.corrupt_ids, "ids that corrupt one flash write");
  app.add_option("--corrupt-offset", f.corrupt_offset, "image offset of the corrupted byte")->capture_default_str();
  app.add_option("--flash-write-delay-us", base.flash_write_delay_us,
                 "simulate slow flash: pause per chunk write")->capture_default_str();
  app.add_option("--max-trial-boots", base.max_trial_boots,
                 "boots a new image gets to confirm itself before the old one comes back")
      ->capture_default_str()->check(CLI::Range(1, 255));
  app.add_option("--confirm-timeout-ms", base.confirm_timeout_ms,
                 "a trial image must pass its self-test within this time (0: no limit)")
      ->capture_default_str();
  app.add_option("--heartbeat-ms", base.heartbeat_interval_ms,
                 "heartbeat on the presence topic every N ms while connected (0: never)")
      ->capture_default_str();
  app.add_option("--defer-ids", f.defer_ids,
                 "ids whose offer policy defers the first --defer-count offers of every deployment "
                 "(reason busy, retry_after 1)");
  app.add_option("--defer-count", f.defer_count, "offers per deployment --defer-ids defer")
      ->capture_default_str();
  app.add_option("--decline-ids", f.decline_ids, "ids whose offer policy declines every offer");
  app.add_option("--decline-reason", f.decline_reason, "reason code --decline-ids decline with")
      ->capture_default_str()
      ->check([](const std::string& name) {
        ota::proto::ReasonCode rc;
        return ota::proto::reason_from_name(name.c_str(), name.size(), rc)
                   ? std::string()
                   : "unknown reason code '" + name + "' (see proto/PROTOCOL.md section 11)";
      });
  app.add_option("--crash-in-state", f.crash_in_state,
                 "SIGKILL the process when a device enters this state (idle, downloading, "
                 "verifying, installing, rebooting, confirming), once per device data directory")
      ->check([](const std::string& name) {
        for (int i = 0; i <= static_cast<int>(ota::proto::DeviceState::confirming); ++i) {
          if (name == ota::proto::device_state_name(static_cast<ota::proto::DeviceState>(i))) {
            return std::string();
          }
        }
        return "unknown state '" + name + "'";
      });
  app.add_flag("--app-dir", f.app_bundles,
               "devices install application bundles (kind bundle) into DATA/ID/app (BundleFlash) "
               "instead of firmware images; a plain directory DATA/ID/app/current is adopted as "
               "the factory tree");
  app.add_option("--protect", base.protect,
                 "with --app-dir: paths no bundle may write or delete, e.g. wifi.json,certs/")
      ->delimiter(',');
  std::vector<std::string> conformance_faults;
  app.add_option("--conformance-fault", conformance_faults,
                 "TEST ONLY: make every device break the protocol on purpose, to check that "
                 "ota-conformance catches it: skip-signature-check (every signature verifies), "
                 "ignore-cancel (cancels never reach the agent), ignore-broadcast (frames on group "
                 "image topics never reach it, as if it never subscribed); comma-separated")
      ->delimiter(',')
      ->check(CLI::IsMember({"skip-signature-check", "ignore-cancel", "ignore-broadcast"}));
  app.add_option("--status-ms", f.status_ms, "print a status line every N ms (0: never)");
  app.add_option("--threads", f.threads,
                 "worker threads, each driving its share of the devices from one epoll loop "
                 "(default: one per core; one per device with --flash-write-delay-us)")
      ->check(CLI::Range(1u, 10000u));
  app.add_option("--connect-rate", f.connect_rate,
                 "devices powered on per second at start (0: all at once)")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  for (const auto& fault : conformance_faults) {
    if (fault == "skip-signature-check") base.fault_skip_signature_check = true;
    if (fault == "ignore-cancel") base.fault_ignore_cancel = true;
    if (fault == "ignore-broadcast") base.fault_ignore_broadcast = true;
    std::fprintf(stderr, "ota-devsim: TEST FAULT %s: these devices break the protocol on purpose\n",
                 fault.c_str());
  }

  if (!raise_descriptor_limit(f.count)) return 2;
  auto devices = make_devices(f);
  if (devices.empty()) return 2;
  ::mkdir(f.data.c_str(), 0700);
  return run_fleet(devices, f);
}
