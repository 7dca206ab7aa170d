#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "ota/agent/agent.hpp"

#include "ota/agent/linux/bundle_flash.hpp"
#include "ota/agent/linux/file_flash.hpp"
#include "ota/agent/linux/mosquitto_transport.hpp"
#include "ota/agent/linux/openssl_crypto.hpp"

namespace ota::agent::linux_port {

struct DeviceOptions {
  std::string device_id;
  std::string hw_model = "sim-board";
  std::vector<std::string> groups;
  std::string data_dir;  // flash slots, boot state, agent state
  std::string prefix = "ota/v1";
  MqttSettings mqtt;     // host, port and TLS files; client id and will are filled in
  // Provisioned keys (PROTOCOL.md 6.6), PEM public keys: release keys, online keys (accepted
  // as manifest `key` only with a release signature) and the optional root key that signs
  // key sets. The key set in force is kept in data_dir/agent.keys.
  std::vector<std::string> trusted_keys;  // role release
  std::vector<std::string> online_keys;   // role online
  std::string root_key;                   // empty: no root, the key set never changes
  std::string initial_version = "1.0.0";
  std::uint64_t slot_capacity = 64u << 20;
  bool durable = true;
  std::uint32_t window_chunks = 64;
  // Listen on a group's image topic while downloading (AgentConfig::broadcast).
  bool broadcast = true;
  std::uint32_t request_timeout_ms = 2000;
  std::uint32_t checkpoint_chunks = 64;
  std::uint32_t heartbeat_interval_ms = 60000;  // 0 = no heartbeats
  std::uint32_t max_trial_boots = 3;             // boots a new image gets to confirm itself
  std::uint32_t confirm_timeout_ms = 300000;     // per trial boot; 0 = no limit
  unsigned flash_write_delay_us = 0;  // simulate slow flash
  // Application bundles instead of firmware images: the device's application tree lives at
  // app_dir (BundleFlash: app_dir/current -> trees/a|b); `protect` lists paths no bundle may
  // write or delete (Wi-Fi credentials, certificates).
  std::string app_dir;
  std::vector<std::string> protect;
  // Offer policy (what an integrator's battery/maintenance-window check would answer):
  // defer the first `defer_offers` offers of every deployment (reason busy, retry after 1 s),
  // and/or decline every offer with `decline_reason`.
  std::uint32_t defer_offers = 0;
  bool decline_offers = false;
  proto::ReasonCode decline_reason = proto::ReasonCode::low_battery;
  // Fault injection, each fires at most once per process.
  bool fail_self_test = false;
  int drop_at_percent = -1;   // cut the network link at this download progress
  int crash_at_percent = -1;  // lose power (all RAM state) at this download progress
  std::int64_t corrupt_write_offset = -1;  // flip a byte of the image write at this offset
  // SIGKILL the whole process right after the agent entered (and persisted) this state, once
  // per data directory (a marker file DATA/crashed-in-STATE keeps the restart alive).
  int crash_in_state = -1;  // proto::DeviceState, -1 = never
  // Test only (ota-devsim --conformance-fault): a deliberately broken device, to show that
  // ota-conformance reports exactly what it breaks. Never set on a real device.
  bool fault_skip_signature_check = false;  // every ECDSA signature "verifies" (PROTOCOL.md 7)
  bool fault_ignore_cancel = false;         // cancel messages never reach the agent (5.2)
  bool fault_ignore_broadcast = false;      // frames on group image topics never reach it (17)
};

// One device: the agent core wired to the Linux ports, in a loop of power-on, serve,
// reboot. Reboots (after activation, or a simulated crash) happen in-process: everything
// in RAM is dropped and rebuilt from the files, as on real hardware.
//
// Two forms, both single-threaded per device (every call for one device from one thread):
//  - run(): blocking, the device on the caller's thread (ota-agent).
//  - start() / step() / request_stop(): non-blocking, for an event loop that drives many
//    devices on one thread (ota-devsim). The loop waits on socket() (readable; writable too
//    while wants_write()) and calls step() when it is ready, or when the time step() gave
//    has come. run() is this loop for one device.
class DeviceRunner {
 public:
  using Clock = std::chrono::steady_clock;

  explicit DeviceRunner(DeviceOptions options);
  ~DeviceRunner();
  DeviceRunner(const DeviceRunner&) = delete;
  DeviceRunner& operator=(const DeviceRunner&) = delete;

  // Runs until `stop` is set (then powers off cleanly). Returns false with `error` on a
  // configuration error.
  bool run(const std::atomic<bool>& stop, std::string& error);

  // Checks the options and loads the keys; the first step() powers the device on. False
  // with `error` on a configuration error.
  bool start(std::string& error);
  // Network I/O (what the caller saw on socket()), the agent's tick, injected faults,
  // power cycles. Sets `next` to when it must run again at the latest. False with `error`
  // when the device cannot go on (its flash cannot be initialised...).
  bool step(bool readable, bool writable, Clock::time_point& next, std::string& error);
  int socket() const;  // -1 while there is none; may change at any step()
  bool wants_write() const;
  // Changes whenever socket() may be a new socket, even under the same number (a power
  // cycle, a connection attempt): an event loop re-registers it then, and only then.
  std::uint64_t socket_epoch() const;
  // Clean power-off: the offline message and DISCONNECT, then finished(). Keep stepping.
  void request_stop();
  bool finished() const { return phase_ == Phase::finished; }

  // Live figures for progress displays (updated by the runner thread).
  std::atomic<int> state{0};  // proto::DeviceState
  std::atomic<std::uint32_t> received_chunks{0};
  std::atomic<std::uint32_t> total_chunks{0};
  std::atomic<std::uint32_t> boots{0};
  std::atomic<std::uint64_t> bytes_received{0};  // chunk payload bytes, whole life
  std::atomic<bool> connected{false};
  std::string running_version() const;
  const DeviceOptions& options() const { return opt_; }

 private:
  // What every boot of this device shares; the agent's settings point into it.
  struct BootSetup;
  // One power cycle: flash, storage, transport and agent, built from the files alone.
  struct Powered;
  enum class Phase { off, serving, powering_off, finished };

  bool load_keys(std::vector<ProvisionedKey>& keys, std::string& error) const;
  AgentConfig agent_config(const BootSetup& setup);
  bool mqtt_settings(MqttSettings& mqtt, std::string& error) const;
  bool power_on_flash(Powered& out, std::string& error);
  bool power_on(std::string& error);
  void power_off();
  Clock::time_point serve(bool readable, bool writable);
  void publish_figures();
  bool inject_download_faults(const Agent& agent, MosquittoTransport& transport);
  void set_running_version(const char* v);
  static OfferDecision offer_policy(void* self, const proto::Manifest& manifest);
  void note_offer(const char* topic, const std::uint8_t* payload, std::size_t len);
  static void on_state(void* self, proto::DeviceState entered);

  DeviceOptions opt_;
  std::unique_ptr<BootSetup> setup_;
  std::unique_ptr<Powered> powered_;  // null while off
  Phase phase_ = Phase::off;
  bool stop_requested_ = false;
  mutable std::mutex mu_;
  std::string version_;
  bool dropped_ = false, crashed_ = false, corrupted_ = false;
  std::map<std::string, std::uint32_t> deferred_;  // offers deferred per deployment (policy)
  std::string offer_deployment_;                   // deployment of the offer being handled
};

}  // namespace ota::agent::linux_port
