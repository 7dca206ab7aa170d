#include "ota/agent/linux/device_runner.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstring>
#include <string>

#include <memory>

#include "ota/agent/agent.hpp"
#include "ota/agent/linux/bundle_flash.hpp"
#include "ota/agent/linux/file_flash.hpp"
#include "ota/agent/linux/file_storage.hpp"
#include "ota/agent/linux/openssl_crypto.hpp"
#include "ota/proto/topics.hpp"

namespace ota::agent::linux_port {
namespace {

bool fail_self_test_hook(void*) { return false; }

std::uint32_t percent_of(const Agent& agent) {
  const auto& st = agent.persisted();
  const std::uint32_t total = st.manifest.chunk_count();
  return total == 0 ? 0 : st.received_chunks * 100u / total;
}

}  // namespace

std::string DeviceRunner::running_version() const {
  std::lock_guard<std::mutex> lock(mu_);
  return version_;
}

void DeviceRunner::set_running_version(const char* v) {
  std::lock_guard<std::mutex> lock(mu_);
  if (version_ != v) version_ = v;
}

// Deferrals are counted per deployment: the runner notes the deployment id of the offer it
// hands to the agent (the policy itself only sees the signed manifest).
OfferDecision DeviceRunner::offer_policy(void* self, const proto::Manifest&) {
  auto* r = static_cast<DeviceRunner*>(self);
  OfferDecision d;
  if (r->opt_.decline_offers) {
    d.answer = OfferAnswer::decline;
    d.reason = r->opt_.decline_reason;
    return d;
  }
  std::uint32_t& n = r->deferred_[r->offer_deployment_];
  if (n < r->opt_.defer_offers) {
    ++n;
    d.answer = OfferAnswer::defer;
    d.reason = proto::ReasonCode::busy;
    d.retry_after_s = 1;
  }
  return d;
}

void DeviceRunner::on_state(void* self, proto::DeviceState entered) {
  auto* r = static_cast<DeviceRunner*>(self);
  r->state = static_cast<int>(entered);
  if (r->opt_.crash_in_state != static_cast<int>(entered)) return;
  const std::string marker =
      r->opt_.data_dir + "/crashed-in-" + proto::device_state_name(entered);
  if (::access(marker.c_str(), F_OK) == 0) return;  // crashed here before: run on
  const int fd = ::open(marker.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
  std::fprintf(stderr, "%s: fault injection: SIGKILL in state %s\n", r->opt_.device_id.c_str(),
               proto::device_state_name(entered));
  std::fflush(stderr);
  std::raise(SIGKILL);
}

void DeviceRunner::note_offer(const char* topic, const std::uint8_t* payload, std::size_t len) {
  const proto::TopicKind kind = proto::parse_topic(opt_.prefix.c_str(), topic, nullptr, nullptr);
  if (kind != proto::TopicKind::offer && kind != proto::TopicKind::group_offer) return;
  auto offer = std::make_unique<proto::Offer>();
  if (!proto::decode_offer(reinterpret_cast<const char*>(payload), len, *offer)) {
    offer_deployment_ = offer->deployment.c_str();
  }
}

bool DeviceRunner::load_keys(std::vector<ProvisionedKey>& keys, std::string& error) const {
  auto add_key = [&](const std::string& pem, proto::KeyRole role) {
    PublicKey k;
    if (!load_public_key_pem(pem, k, error)) return false;
    ProvisionedKey p;
    p.role = role;
    std::memcpy(p.pub, k.point.data(), sizeof p.pub);
    keys.push_back(p);
    return true;
  };
  if (!opt_.root_key.empty() && !add_key(opt_.root_key, proto::KeyRole::root)) return false;
  for (const auto& pem : opt_.trusted_keys) {
    if (!add_key(pem, proto::KeyRole::release)) return false;
  }
  for (const auto& pem : opt_.online_keys) {
    if (!add_key(pem, proto::KeyRole::online)) return false;
  }
  if (keys.size() - (opt_.root_key.empty() ? 0 : 1) > kMaxTrustedKeys) {
    error = "at most " + std::to_string(kMaxTrustedKeys) + " release and online keys";
    return false;
  }
  return true;
}

// The agent's settings point into `setup` (ids, groups, keys), which outlives every boot.
AgentConfig DeviceRunner::agent_config(const BootSetup& setup) {
  AgentConfig cfg;
  cfg.prefix = opt_.prefix.c_str();
  cfg.device_id = opt_.device_id.c_str();
  cfg.hw_model = opt_.hw_model.c_str();
  cfg.groups = setup.groups.data();
  cfg.group_count = setup.groups.size();
  cfg.window_chunks = opt_.window_chunks;
  cfg.request_timeout_ms = opt_.request_timeout_ms;
  cfg.checkpoint_chunks = opt_.checkpoint_chunks;
  if (opt_.fail_self_test) cfg.self_test = &fail_self_test_hook;
  cfg.heartbeat_interval_ms = opt_.heartbeat_interval_ms;
  cfg.max_trial_boots = opt_.max_trial_boots;
  cfg.confirm_timeout_ms = opt_.confirm_timeout_ms;
  cfg.keys = setup.keys.data();
  cfg.key_count = setup.keys.size();
  cfg.on_state = &DeviceRunner::on_state;
  cfg.on_state_ctx = this;
  if (opt_.decline_offers || opt_.defer_offers > 0) {
    cfg.offer_policy = &DeviceRunner::offer_policy;
    cfg.offer_policy_ctx = this;
  }
  return cfg;
}

// Our client id is the device id; the broker announces us offline if we vanish.
bool DeviceRunner::mqtt_settings(MqttSettings& mqtt, std::string& error) const {
  mqtt = opt_.mqtt;
  mqtt.client_id = opt_.device_id;
  char topic[proto::kMaxTopicLen];
  char will[64];
  std::size_t will_len = 0;
  if (proto::make_topic(opt_.prefix.c_str(), proto::TopicKind::presence, opt_.device_id.c_str(),
                        topic, sizeof topic) == 0 ||
      proto::encode_offline(will, sizeof will, will_len)) {
    error = "cannot build presence topic for " + opt_.device_id;
    return false;
  }
  mqtt.will_topic = topic;
  mqtt.will_payload.assign(will, will_len);
  return true;
}

// Power-on of whichever store the device installs into: firmware slots or an application tree.
bool DeviceRunner::power_on_flash(PoweredFlash& out, std::string& error) {
  if (opt_.app_dir.empty()) {
    FileFlashConfig cfg;
    cfg.dir = opt_.data_dir + "/flash";
    cfg.slot_capacity = opt_.slot_capacity;
    cfg.initial_version = opt_.initial_version;
    cfg.durable = opt_.durable;
    cfg.write_delay_us = opt_.flash_write_delay_us;
    out.file = std::make_unique<FileFlash>(cfg);
    if (out.file->power_on() != PortStatus::ok) {
      error = "flash at " + cfg.dir + " cannot be initialised";
      return false;
    }
    if (opt_.corrupt_write_offset >= 0 && !corrupted_) {
      out.file->corrupt_write_at(static_cast<std::uint32_t>(opt_.corrupt_write_offset));
    }
    return true;
  }
  BundleFlashConfig cfg;
  cfg.root = opt_.app_dir;
  cfg.initial_version = opt_.initial_version;
  cfg.protect = opt_.protect;
  cfg.durable = opt_.durable;
  cfg.write_delay_us = opt_.flash_write_delay_us;
  out.bundle = std::make_unique<BundleFlash>(cfg);
  if (out.bundle->power_on() != PortStatus::ok) {
    error = "application tree at " + cfg.root + " cannot be initialised: " +
            out.bundle->last_error();
    return false;
  }
  return true;
}

// The fault the options ask for at this download percentage. Returns true when power is lost.
bool DeviceRunner::inject_download_faults(const Agent& agent, MosquittoTransport& transport) {
  const std::uint32_t pct = percent_of(agent);
  if (opt_.drop_at_percent >= 0 && !dropped_ &&
      pct >= static_cast<std::uint32_t>(opt_.drop_at_percent)) {
    dropped_ = true;
    transport.drop();
  }
  if (opt_.crash_at_percent >= 0 && !crashed_ &&
      pct >= static_cast<std::uint32_t>(opt_.crash_at_percent)) {
    crashed_ = true;
    transport.drop();
    return true;
  }
  return false;
}

// One power cycle: flash, storage, transport and agent are built from the files alone (nothing
// in RAM survives), then run until the agent asks for a reset, power is lost, or `stop`.
DeviceRunner::BootEnd DeviceRunner::boot_once(BootSetup& setup, const std::atomic<bool>& stop,
                                              std::string& error) {
  PoweredFlash powered;
  if (!power_on_flash(powered, error)) return BootEnd::failed;
  FlashPort& flash = powered.port();
  FileStorage storage(opt_.data_dir + "/agent.state", opt_.durable);
  FileStorage key_storage(opt_.data_dir + "/agent.keys", opt_.durable);
  auto transport = std::make_unique<MosquittoTransport>(setup.mqtt);
  auto agent = std::make_unique<Agent>(setup.cfg, flash, *transport, setup.clock, storage,
                                       key_storage, setup.crypto);
  ++boots;
  ImageState img;
  flash.read_state(img);
  set_running_version(img.running_version.c_str());
  agent->boot();
  if (agent->reset_requested()) return BootEnd::reset;
  transport->set_handlers([&] { agent->on_connected(); },
                          [&](const char* t, const std::uint8_t* p, std::size_t n) {
                            if (setup.cfg.offer_policy != nullptr) note_offer(t, p, n);
                            agent->on_message(t, p, n);
                          });
  if (!transport->start(error)) return BootEnd::failed;
  std::uint64_t counted_bytes = 0;
  while (!stop && !agent->reset_requested()) {
    transport->poll(20);
    agent->tick();
    const auto& st = agent->persisted();
    state = static_cast<int>(st.state);
    received_chunks = st.received_chunks;
    total_chunks = st.manifest.chunk_count();
    connected = transport->connected();
    if (flash.read_state(img) == PortStatus::ok) set_running_version(img.running_version.c_str());
    bytes_received += agent->stats().bytes_received - counted_bytes;
    counted_bytes = agent->stats().bytes_received;
    if (st.state == proto::DeviceState::downloading && inject_download_faults(*agent, *transport))
      break;  // power lost: RAM state gone, the caller powers on again
  }
  if (powered.reset_requested() || stop) transport->stop();
  corrupted_ = corrupted_ || opt_.corrupt_write_offset >= 0;
  return BootEnd::reset;
}

bool DeviceRunner::run(const std::atomic<bool>& stop, std::string& error) {
  if (!proto::valid_id(opt_.device_id.c_str(), opt_.device_id.size())) {
    error = "invalid device id '" + opt_.device_id + "' (1-64 of [A-Za-z0-9._-])";
    return false;
  }
  ::mkdir(opt_.data_dir.c_str(), 0700);
  BootSetup setup;
  if (!load_keys(setup.keys, error)) return false;
  for (const auto& g : opt_.groups) setup.groups.push_back(g.c_str());
  setup.cfg = agent_config(setup);
  if (!mqtt_settings(setup.mqtt, error)) return false;
  while (!stop) {
    if (boot_once(setup, stop, error) == BootEnd::failed) return false;
  }
  return true;
}

}  // namespace ota::agent::linux_port
