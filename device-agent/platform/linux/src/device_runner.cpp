#include "ota/agent/linux/device_runner.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>

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

// Tick cadence: while an update is under way the agent hashes and re-requests from tick()
// (as often as the old one-thread-per-device loop did); an idle agent only checks its
// heartbeat ("at least every few hundred milliseconds", agent.hpp).
constexpr std::chrono::milliseconds kBusyTick{20};
constexpr std::chrono::milliseconds kIdleTick{250};

// DeviceOptions::fault_skip_signature_check (test only): the real crypto port, except that no
// signature is ever refused.
class SignatureSkippingCrypto final : public Crypto {
 public:
  explicit SignatureSkippingCrypto(Crypto& real) : real_(real) {}
  void sha256_init(Sha256State& s) override { real_.sha256_init(s); }
  void sha256_update(Sha256State& s, const std::uint8_t* data, std::size_t len) override {
    real_.sha256_update(s, data, len);
  }
  void sha256_final(Sha256State& s, std::uint8_t digest[32]) override {
    real_.sha256_final(s, digest);
  }
  Verify verify_p256(const std::uint8_t*, const std::uint8_t*, std::size_t,
                     const std::uint8_t*) override {
    return Verify::ok;
  }

 private:
  Crypto& real_;
};

}  // namespace

struct DeviceRunner::BootSetup {
  std::vector<ProvisionedKey> keys;
  std::vector<const char*> groups;
  AgentConfig cfg;
  MqttSettings mqtt;
  OpensslCrypto crypto;
  std::unique_ptr<SignatureSkippingCrypto> faulty_crypto;  // fault_skip_signature_check
  SystemClock clock;
  Crypto& crypto_port() { return faulty_crypto ? static_cast<Crypto&>(*faulty_crypto) : crypto; }
};

// Members are destroyed in reverse order: the agent first, the flash last.
struct DeviceRunner::Powered {
  std::unique_ptr<FileFlash> file;      // firmware slots, or
  std::unique_ptr<BundleFlash> bundle;  // an application tree
  std::unique_ptr<FileStorage> storage, key_storage;
  std::unique_ptr<MosquittoTransport> transport;
  std::unique_ptr<Agent> agent;
  std::uint64_t counted_bytes = 0;  // agent bytes already added to bytes_received
  bool served = false;              // went online (not reset by boot() already)
  FlashPort& flash() { return file ? static_cast<FlashPort&>(*file) : *bundle; }
  bool reset_requested() const { return file ? file->reset_requested() : bundle->reset_requested(); }
};

DeviceRunner::DeviceRunner(DeviceOptions options) : opt_(std::move(options)) {}
DeviceRunner::~DeviceRunner() = default;

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
  cfg.broadcast = opt_.broadcast;
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
bool DeviceRunner::power_on_flash(Powered& out, std::string& error) {
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
    // Tests check that the fault fired and what the device held then.
    std::fprintf(stderr, "%s: fault injection: link cut at %u%% (%u of %u chunks)\n",
                 opt_.device_id.c_str(), pct, agent.persisted().received_chunks,
                 agent.persisted().manifest.chunk_count());
  }
  if (opt_.crash_at_percent >= 0 && !crashed_ &&
      pct >= static_cast<std::uint32_t>(opt_.crash_at_percent)) {
    crashed_ = true;
    transport.drop();
    return true;
  }
  return false;
}

// Power-on: flash, storage, transport and agent are built from the files alone (nothing in
// RAM survives a power cycle), the agent boots and the transport starts connecting.
bool DeviceRunner::power_on(std::string& error) {
  auto p = std::make_unique<Powered>();
  if (!power_on_flash(*p, error)) return false;
  BootSetup& setup = *setup_;
  p->storage = std::make_unique<FileStorage>(opt_.data_dir + "/agent.state", opt_.durable);
  p->key_storage = std::make_unique<FileStorage>(opt_.data_dir + "/agent.keys", opt_.durable);
  p->transport = std::make_unique<MosquittoTransport>(setup.mqtt);
  p->agent = std::make_unique<Agent>(setup.cfg, p->flash(), *p->transport, setup.clock,
                                     *p->storage, *p->key_storage, setup.crypto_port());
  ++boots;
  ImageState img;
  p->flash().read_state(img);
  set_running_version(img.running_version.c_str());
  Agent& agent = *p->agent;
  agent.boot();
  powered_ = std::move(p);
  phase_ = Phase::serving;
  if (agent.reset_requested()) {  // e.g. a trial image reverted: reboot before going online
    power_off();
    return true;
  }
  powered_->transport->set_handlers([&agent] { agent.on_connected(); },
                                    [this, &agent](const char* topic, const std::uint8_t* payload,
                                                   std::size_t len) {
                                      if (setup_->cfg.offer_policy != nullptr) {
                                        note_offer(topic, payload, len);
                                      }
                                      const proto::TopicKind kind = proto::parse_topic(
                                          opt_.prefix.c_str(), topic, nullptr, nullptr);
                                      if ((opt_.fault_ignore_cancel && kind == proto::TopicKind::cancel) ||
                                          (opt_.fault_ignore_broadcast &&
                                           kind == proto::TopicKind::group_chunk)) {
                                        return;
                                      }
                                      agent.on_message(topic, payload, len);
                                    });
  powered_->served = true;
  return powered_->transport->start(error);
}

// Everything in RAM is gone; the files stay. The one corrupted write is spent once the
// device has been online (a boot that reset at once never wrote anything).
void DeviceRunner::power_off() {
  if (powered_ != nullptr && powered_->served) {
    corrupted_ = corrupted_ || opt_.corrupt_write_offset >= 0;
  }
  powered_.reset();
  connected = false;
  phase_ = stop_requested_ ? Phase::finished : Phase::off;
}

void DeviceRunner::publish_figures() {
  Powered& p = *powered_;
  const auto& st = p.agent->persisted();
  state = static_cast<int>(st.state);
  received_chunks = st.received_chunks;
  total_chunks = st.manifest.chunk_count();
  connected = p.transport->connected();
  ImageState img;
  if (p.flash().read_state(img) == PortStatus::ok) set_running_version(img.running_version.c_str());
  bytes_received += p.agent->stats().bytes_received - p.counted_bytes;
  p.counted_bytes = p.agent->stats().bytes_received;
}

// One serving step of a powered device: network, tick, faults; a reset asked for by the
// flash (a new image activated) powers off cleanly, a lost power at once.
DeviceRunner::Clock::time_point DeviceRunner::serve(bool readable, bool writable) {
  Powered& p = *powered_;
  const Clock::time_point network_due = p.transport->step(readable, writable);
  p.agent->tick();
  publish_figures();
  const auto& st = p.agent->persisted();
  if (st.state == proto::DeviceState::downloading && inject_download_faults(*p.agent, *p.transport)) {
    power_off();  // power lost: RAM state gone, the next step powers on again
    return Clock::now();
  }
  if (p.agent->reset_requested()) {
    if (!p.reset_requested()) {
      power_off();
      return Clock::now();
    }
    phase_ = Phase::powering_off;
    p.transport->begin_stop();
    return Clock::now();
  }
  const bool busy = st.state != proto::DeviceState::idle;
  return std::min(network_due, Clock::now() + (busy ? kBusyTick : kIdleTick));
}

bool DeviceRunner::start(std::string& error) {
  if (!proto::valid_id(opt_.device_id.c_str(), opt_.device_id.size())) {
    error = "invalid device id '" + opt_.device_id + "' (1-64 of [A-Za-z0-9._-])";
    return false;
  }
  ::mkdir(opt_.data_dir.c_str(), 0700);
  setup_ = std::make_unique<BootSetup>();
  if (!load_keys(setup_->keys, error)) return false;
  for (const auto& g : opt_.groups) setup_->groups.push_back(g.c_str());
  setup_->cfg = agent_config(*setup_);
  if (opt_.fault_skip_signature_check) {
    setup_->faulty_crypto = std::make_unique<SignatureSkippingCrypto>(setup_->crypto);
  }
  if (!mqtt_settings(setup_->mqtt, error)) return false;
  // Built once and kept across power cycles: a fleet rebooting into a new image at once
  // would otherwise decode every key again on the simulator's few threads (1-5 ms each
  // with OpenSSL 3), and the devices queued behind would come back seconds late.
  setup_->mqtt.tls_context = make_tls_context(setup_->mqtt, error);
  if (setup_->mqtt.tls_context == nullptr) {
    error = "TLS setup (ca " + setup_->mqtt.ca_file + ", cert " + setup_->mqtt.cert_file +
            "): " + error;
    return false;
  }
  phase_ = Phase::off;
  return true;
}

bool DeviceRunner::step(bool readable, bool writable, Clock::time_point& next,
                        std::string& error) {
  switch (phase_) {
    case Phase::off:
      if (!power_on(error)) {
        powered_.reset();
        phase_ = Phase::finished;
        return false;
      }
      next = Clock::now();  // serve at once: the first connection attempt is under way
      return true;
    case Phase::serving:
      next = serve(readable, writable);
      return true;
    case Phase::powering_off: {
      MosquittoTransport& t = *powered_->transport;
      next = t.step(readable, writable);
      if (t.stopped()) {
        power_off();
        next = Clock::now();
      }
      return true;
    }
    case Phase::finished:
      next = Clock::now() + std::chrono::hours(1);
      return true;
  }
  return true;
}

int DeviceRunner::socket() const {
  return powered_ != nullptr ? powered_->transport->socket() : -1;
}

std::uint64_t DeviceRunner::socket_epoch() const {
  // boots counts power-ons (each a new transport); attempts count its sockets.
  const std::uint64_t attempts = powered_ != nullptr ? powered_->transport->connect_attempts() : 0;
  return (std::uint64_t{boots.load()} << 32) + attempts;
}

bool DeviceRunner::wants_write() const {
  return powered_ != nullptr && powered_->transport->wants_write();
}

void DeviceRunner::request_stop() {
  if (stop_requested_) return;
  stop_requested_ = true;
  if (phase_ == Phase::off) {
    phase_ = Phase::finished;
  } else if (phase_ == Phase::serving) {
    phase_ = Phase::powering_off;
    powered_->transport->begin_stop();
  }
}

// The steppable form with this thread waiting on the one socket. The wait is capped so that
// `stop` is seen within 100 ms even without a signal.
bool DeviceRunner::run(const std::atomic<bool>& stop, std::string& error) {
  if (!start(error)) return false;
  bool readable = false, writable = false;
  while (!finished()) {
    if (stop) request_stop();
    Clock::time_point next;
    if (!step(readable, writable, next, error)) return false;
    readable = writable = false;
    const auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(next - Clock::now());
    const int timeout_ms =
        static_cast<int>(std::clamp<std::chrono::milliseconds::rep>(wait.count(), 0, 100));
    pollfd pfd{socket(), static_cast<short>(POLLIN | (wants_write() ? POLLOUT : 0)), 0};
    if (pfd.fd < 0) {
      if (timeout_ms > 0) ::poll(nullptr, 0, timeout_ms);
      continue;
    }
    if (::poll(&pfd, 1, timeout_ms) > 0) {
      readable = (pfd.revents & (POLLIN | POLLHUP | POLLERR)) != 0;
      writable = (pfd.revents & POLLOUT) != 0;
    }
  }
  return true;
}

}  // namespace ota::agent::linux_port
