#pragma once

#include <atomic>
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
};

// One device: the agent core wired to the Linux ports, in a loop of power-on, serve,
// reboot. Reboots (after activation, or a simulated crash) happen in-process: everything
// in RAM is dropped and rebuilt from the files, as on real hardware.
class DeviceRunner {
 public:
  explicit DeviceRunner(DeviceOptions options) : opt_(std::move(options)) {}
  // Runs until `stop` is set. Returns false with `error` on a configuration error.
  bool run(const std::atomic<bool>& stop, std::string& error);

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
  struct BootSetup {
    std::vector<ProvisionedKey> keys;
    std::vector<const char*> groups;
    AgentConfig cfg;
    MqttSettings mqtt;
    OpensslCrypto crypto;
    SystemClock clock;
  };
  // The flash port of one power cycle: firmware slots or an application tree.
  struct PoweredFlash {
    std::unique_ptr<FileFlash> file;
    std::unique_ptr<BundleFlash> bundle;
    FlashPort& port() { return file ? static_cast<FlashPort&>(*file) : *bundle; }
    bool reset_requested() const { return file ? file->reset_requested() : bundle->reset_requested(); }
  };
  enum class BootEnd { reset, failed };

  bool load_keys(std::vector<ProvisionedKey>& keys, std::string& error) const;
  AgentConfig agent_config(const BootSetup& setup);
  bool mqtt_settings(MqttSettings& mqtt, std::string& error) const;
  bool power_on_flash(PoweredFlash& out, std::string& error);
  bool inject_download_faults(const Agent& agent, MosquittoTransport& transport);
  BootEnd boot_once(BootSetup& setup, const std::atomic<bool>& stop, std::string& error);
  void set_running_version(const char* v);
  static OfferDecision offer_policy(void* self, const proto::Manifest& manifest);
  void note_offer(const char* topic, const std::uint8_t* payload, std::size_t len);
  static void on_state(void* self, proto::DeviceState entered);

  DeviceOptions opt_;
  mutable std::mutex mu_;
  std::string version_;
  bool dropped_ = false, crashed_ = false, corrupted_ = false;
  std::map<std::string, std::uint32_t> deferred_;  // offers deferred per deployment (policy)
  std::string offer_deployment_;                   // deployment of the offer being handled
};

}  // namespace ota::agent::linux_port
