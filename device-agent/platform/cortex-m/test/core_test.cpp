// The agent core's tests on the target CPU: the same objects the firmware links, run on an
// emulated Cortex-M4 (qemu-system-arm -machine mps2-an386, semihosting for output and the
// exit status). GoogleTest and the host fakes (std containers, OpenSSL) do not fit a bare
// newlib-nano target, so the ports here are fixed-size, and this file plays the controller.
//
// Crypto: SHA-256 is real (sha256.cpp), so the hash check of the flash contents and the key
// ids (SHA-256 of the key's DER) are exercised; ECDSA is replaced by a test signature
// r||s = SHA-256(public point || signed bytes) twice, which still makes a tampered manifest,
// release signature or key set, or one "signed" with another key, fail the check.
#include <cstdint>
#include <cstring>
#include <new>

#include "ota/agent/agent.hpp"
#include "ota/agent/sim_boot.hpp"
#include "ota/proto/frame.hpp"
#include "ota/proto/messages.hpp"
#include "ota/proto/topics.hpp"
#include "sha256.hpp"
#include "startup.hpp"

namespace {

namespace agent = ota::agent;
namespace proto = ota::proto;
using agent::PortStatus;
using proto::DeviceState;
using proto::EventType;
using proto::ReasonCode;

// ------------------------------------------------------------------------- tiny harness

int g_failures = 0;
int g_checks = 0;
const char* g_test = "";

void print_uint(std::uint64_t v) {
  char buf[24];
  char* p = buf + sizeof buf;
  *--p = '\0';
  do {
    *--p = static_cast<char>('0' + v % 10);
    v /= 10;
  } while (v != 0);
  fw::print(p);
}

void check(bool ok, const char* what, int line) {
  ++g_checks;
  if (ok) return;
  ++g_failures;
  fw::print("FAIL ");
  fw::print(g_test);
  fw::print(" line ");
  print_uint(static_cast<std::uint64_t>(line));
  fw::print(": ");
  fw::print(what);
  fw::print("\n");
}
#define CHECK(cond) check((cond), #cond, __LINE__)

constexpr const char* kPrefix = proto::kDefaultPrefix;
constexpr const char* kDevice = "dev-1";
constexpr const char* kHw = "m4-board";
constexpr std::uint32_t kChunk = 1024;
constexpr std::uint64_t kNow = 1'800'000'000;

// ------------------------------------------------------------------------- ports

constexpr std::size_t kSlotCapacity = 64 * 1024;

// A/B flash on the simulated boot loader the host tests' FakeFlash uses (sim_boot.hpp). It
// keeps the one-trial-boot default of FlashPort::activate_trial() and reject() (MCUboot's test
// swap): an activated slot boots once on trial; booted again without confirm() it reverts.
class TestFlash final : public agent::FlashPort {
 public:
  void factory(const char* version) {
    for (auto& d : slots_) std::memset(d, 0xff, sizeof d);
    boot_.factory(version);
    begins = writes = finishes = aborts = activates = confirms = resets = 0;
    reset_requested = false;
  }
  // The boot loader's decision at power-on.
  void power_on() {
    reset_requested = false;
    boot_.power_on();
  }

  PortStatus begin(const proto::Manifest& m, bool resume) override {
    ++begins;
    if (boot_.record().pending != 0) return PortStatus::error;
    if (m.size > kSlotCapacity) return PortStatus::no_space;
    if (!resume) {
      std::memset(slot(boot_.inactive()), 0xff, kSlotCapacity);
      boot_.start_writing(boot_.inactive());
    }
    return PortStatus::ok;
  }
  PortStatus write(std::uint32_t offset, const std::uint8_t* data, std::size_t len) override {
    ++writes;
    if (offset + len > kSlotCapacity) return PortStatus::error;
    std::memcpy(slot(boot_.inactive()) + offset, data, len);
    return PortStatus::ok;
  }
  PortStatus read(std::uint32_t offset, std::uint8_t* out, std::size_t len) override {
    if (offset + len > kSlotCapacity) return PortStatus::error;
    std::memcpy(out, slot(boot_.inactive()) + offset, len);
    return PortStatus::ok;
  }
  PortStatus sync() override { return PortStatus::ok; }
  PortStatus finish(const proto::Manifest& m) override {
    ++finishes;
    boot_.finish_writing(boot_.inactive(), m);
    return PortStatus::ok;
  }
  PortStatus abort() override {
    ++aborts;
    if (boot_.record().writing == boot_.inactive()) boot_.abandon_writing(boot_.inactive());
    return PortStatus::ok;
  }
  PortStatus activate(const proto::Manifest& m) override {
    ++activates;
    if (!boot_.holds_finished(boot_.inactive(), m.version)) return PortStatus::error;
    boot_.activate_trial(1, m.counter);
    return PortStatus::ok;
  }
  PortStatus confirm() override {
    ++confirms;
    boot_.confirm();
    return PortStatus::ok;
  }
  void reset() override {
    ++resets;
    reset_requested = true;
  }
  PortStatus read_state(agent::ImageState& out) override {
    out = agent::ImageState{};
    boot_.report(out);
    out.free_bytes = kSlotCapacity;
    return PortStatus::ok;
  }

  const std::uint8_t* inactive_data() const { return slots_[boot_.inactive() == 'b' ? 1 : 0]; }
  const proto::Version& running_version() const { return boot_.version_of(boot_.running()); }
  std::uint32_t& counter() { return boot_.record().counter; }

  int begins = 0, writes = 0, finishes = 0, aborts = 0, activates = 0, confirms = 0, resets = 0;
  bool reset_requested = false;

 private:
  std::uint8_t* slot(char s) { return slots_[s == 'b' ? 1 : 0]; }

  std::uint8_t slots_[2][kSlotCapacity];
  agent::sim_boot::BootLoader boot_;
};

template <std::size_t Capacity>
class TestStorage final : public agent::Storage {
 public:
  PortStatus load(void* out, std::size_t cap, std::size_t& len) override {
    if (!has_) return PortStatus::not_found;
    if (len_ > cap) return PortStatus::error;
    std::memcpy(out, record_, len_);
    len = len_;
    return PortStatus::ok;
  }
  PortStatus save(const void* data, std::size_t len) override {
    if (len > sizeof record_) return PortStatus::no_space;
    std::memcpy(record_, data, len);
    len_ = len;
    has_ = true;
    return PortStatus::ok;
  }
  PortStatus erase() override {
    has_ = false;
    return PortStatus::ok;
  }

 private:
  alignas(8) std::uint8_t record_[Capacity];
  std::size_t len_ = 0;
  bool has_ = false;
};

class TestClock final : public agent::Clock {
 public:
  std::uint64_t now_ms() override { return ms; }
  std::uint64_t unix_seconds() override { return kNow + ms / 1000; }
  std::uint64_t ms = 1000;
};

struct Message {
  proto::TopicKind kind;
  char payload[OTA_AGENT_MESSAGE_BUFFER];
  std::size_t len;
};

// Keeps what the agent publishes, in order, for the test to read as the controller would.
class TestTransport final : public agent::Transport {
 public:
  static constexpr std::size_t kCapacity = 256;

  bool connected() const override { return up; }
  bool subscribe(const char*, int) override { return up; }
  bool unsubscribe(const char*) override { return up; }
  bool publish(const char* topic, const void* payload, std::size_t len, int,
               bool) override {
    if (!up) return false;
    if (count == kCapacity || len > sizeof log[0].payload) fw::fatal("transport log full");
    const char* id = nullptr;
    std::size_t id_len = 0;
    Message& m = log[count++];
    m.kind = proto::parse_topic(kPrefix, topic, &id, &id_len);
    std::memcpy(m.payload, payload, len);
    m.len = len;
    return true;
  }

  bool up = true;
  Message log[kCapacity];
  std::size_t count = 0;
};

class TestCrypto final : public agent::Crypto {
 public:
  void sha256_init(agent::Sha256State& s) override { fw::sha256_init(ctx(s)); }
  void sha256_update(agent::Sha256State& s, const std::uint8_t* d, std::size_t n) override {
    fw::sha256_update(ctx(s), d, n);
  }
  void sha256_final(agent::Sha256State& s, std::uint8_t digest[32]) override {
    fw::sha256_final(ctx(s), digest);
  }
  Verify verify_p256(const std::uint8_t pub[proto::kP256PointLen], const std::uint8_t* msg,
                     std::size_t len, const std::uint8_t sig[64]) override {
    std::uint8_t expected[64];
    test_signature(pub, msg, len, expected);
    return std::memcmp(expected, sig, sizeof expected) == 0 ? Verify::ok : Verify::bad_signature;
  }

  static void test_signature(const std::uint8_t* pub, const std::uint8_t* msg, std::size_t len,
                             std::uint8_t out[64]) {
    fw::Sha256 s;
    fw::sha256_init(s);
    fw::sha256_update(s, pub, proto::kP256PointLen);
    fw::sha256_update(s, msg, len);
    fw::sha256_final(s, out);
    std::memcpy(out + 32, out, 32);
  }

 private:
  static fw::Sha256& ctx(agent::Sha256State& s) { return *reinterpret_cast<fw::Sha256*>(s.opaque); }
};

// ------------------------------------------------------------------------- the device

// Test keys: points 04 || 64 bytes (the test signature does not need them on the curve).
struct TestKey {
  std::uint8_t pub[proto::kP256PointLen];
  proto::KeyId id;
};
TestKey g_root, g_release, g_online, g_release2, g_stranger, g_new_root;

void make_key(TestKey& k, std::uint8_t seed) {
  k.pub[0] = 0x04;
  for (std::size_t i = 1; i < sizeof k.pub; ++i) k.pub[i] = static_cast<std::uint8_t>(seed * 31 + i);
  std::uint8_t der[proto::kP256SpkiDerLen];
  proto::p256_spki_der(k.pub, der);
  fw::Sha256 s;
  std::uint8_t digest[32];
  fw::sha256_init(s);
  fw::sha256_update(s, der, sizeof der);
  fw::sha256_final(s, digest);
  proto::hex_encode(digest, 8, k.id.data);
  k.id.data[proto::kKeyIdLen] = '\0';
  k.id.size = proto::kKeyIdLen;
}

agent::ProvisionedKey g_provisioned[3];

TestFlash g_flash;
TestStorage<sizeof(agent::PersistedState)> g_storage;
TestStorage<sizeof(agent::KeyRecord)> g_key_storage;
TestClock g_clock;
TestTransport g_transport;
TestCrypto g_crypto;
bool g_self_test_ok = true;
alignas(agent::Agent) unsigned char g_agent_mem[sizeof(agent::Agent)];
agent::Agent* g_agent = nullptr;
std::size_t g_agent_stack_peak = 0;  // deepest stack any call into the agent reached

bool self_test(void*) { return g_self_test_ok; }

agent::AgentConfig config() {
  agent::AgentConfig c;
  c.device_id = kDevice;
  c.hw_model = kHw;
  c.window_chunks = 8;
  // The power-cut case resumes from a checkpoint within its first nine chunks (the default,
  // 32, is more than this image has).
  c.checkpoint_chunks = 4;
  c.self_test = self_test;
  c.keys = g_provisioned;
  c.key_count = 3;
  return c;
}

// Runs one call into the agent and records how deep the stack went during it.
template <typename F>
void measured(F call) {
  fw::stack_repaint();
  const std::size_t before = fw::stack_used();
  call();
  const std::size_t used = fw::stack_used() - before;
  if (used > g_agent_stack_peak) g_agent_stack_peak = used;
}

agent::Agent& dev() { return *g_agent; }

// Power-on: the bootloader picks a slot, a fresh agent object boots and connects. The
// storage and flash objects carry over, as they would across a real power cycle.
void power_cycle() {
  g_flash.power_on();
  g_agent = new (g_agent_mem) agent::Agent(config(), g_flash, g_transport, g_clock, g_storage,
                                           g_key_storage, g_crypto);
  measured([] { dev().boot(); });
  measured([] { dev().on_connected(); });
}

void factory_reset() {
  g_flash.factory("1.0.0");
  g_storage.erase();
  g_key_storage.erase();
  g_transport.count = 0;
  g_clock.ms = 1000;
  g_self_test_ok = true;
  power_cycle();
}

void deliver(proto::TopicKind kind, const std::uint8_t* payload, std::size_t len) {
  char topic[proto::kMaxTopicLen];
  proto::make_topic(kPrefix, kind, kDevice, topic, sizeof topic);
  measured([&] { dev().on_message(topic, payload, len); });
}

// ------------------------------------------------------------------------- the controller

std::uint8_t g_image[20 * kChunk + 300];
std::uint8_t g_other_image[sizeof g_image];
proto::Offer g_offer;
char g_json[2048];
std::uint8_t g_frame[proto::kFrameHeaderLen + kChunk];

void fill(std::uint8_t* p, std::size_t n, std::uint32_t seed) {
  for (std::size_t i = 0; i < n; ++i) {
    seed = seed * 1664525u + 1013904223u;
    p[i] = static_cast<std::uint8_t>(seed >> 24);
  }
}

void sha256(const std::uint8_t* p, std::size_t n, std::uint8_t out[32]) {
  fw::Sha256 s;
  fw::sha256_init(s);
  fw::sha256_update(s, p, n);
  fw::sha256_final(s, out);
}

void sign_bytes(const TestKey& key, std::size_t n, proto::SignatureHex& out) {
  std::uint8_t sig[64];
  TestCrypto::test_signature(key.pub, reinterpret_cast<const std::uint8_t*>(g_json), n, sig);
  proto::hex_encode(sig, sizeof sig, out.data);
  out.data[proto::kSignatureHexLen] = '\0';
  out.size = proto::kSignatureHexLen;
}

void sign(proto::Manifest& m, const TestKey& key) {
  m.key = key.id;
  sign_bytes(key, proto::canonical_manifest(m, g_json, sizeof g_json), m.sig);
}

void sign_release(proto::Manifest& m, const TestKey& key) {
  m.release_key = key.id;
  sign_bytes(key, proto::canonical_release(m, g_json, sizeof g_json), m.release_sig);
}

struct OfferSpec {
  const char* deployment = "dep-1";
  const char* version = "1.1.0";
  const char* hw = kHw;
  const TestKey* key = &g_release;
  std::uint32_t counter = 1;
  const std::uint8_t* described = g_image;  // the bytes the manifest's hash is made of
  const char* device = kDevice;              // binding: the device it is signed for
  const char* signed_for = nullptr;          // binding: deployment signed for (default: the same)
  const TestKey* release = nullptr;          // release signature by this key (6.5)
};

// Builds g_offer for g_image as the controller does.
void make_offer(const OfferSpec& spec) {
  g_offer = proto::Offer{};
  g_offer.deployment.assign(spec.deployment);
  proto::Manifest& m = g_offer.manifest;
  std::uint8_t digest[32];
  sha256(spec.described, sizeof g_image, digest);
  proto::hex_encode(digest, 8, m.image.data);
  m.image.size = proto::kImageIdLen;
  proto::hex_encode(digest, sizeof digest, m.sha256.data);
  m.sha256.size = proto::kSha256HexLen;
  m.version.assign(spec.version);
  m.hw[0].assign(spec.hw);
  m.hw_count = 1;
  m.size = sizeof g_image;
  m.chunk_size = kChunk;
  m.counter = spec.counter;
  m.expires = kNow + 3600;
  m.deployment.assign(spec.signed_for ? spec.signed_for : spec.deployment);
  m.device.assign(spec.device);
  if (spec.release != nullptr) sign_release(m, *spec.release);
  sign(m, *spec.key);
}

void send_offer() {
  std::size_t len = 0;
  if (proto::encode_offer(g_offer, g_json, sizeof g_json, len)) fw::fatal("encode_offer");
  deliver(proto::TopicKind::offer, reinterpret_cast<const std::uint8_t*>(g_json), len);
}

void send_chunk(std::uint32_t index, bool corrupt) {
  const std::uint32_t offset = index * kChunk;
  const std::uint32_t rest = static_cast<std::uint32_t>(sizeof g_image - offset);
  const std::uint32_t len = rest < kChunk ? rest : kChunk;
  std::uint8_t id[8];
  proto::image_id_to_bytes(g_offer.manifest.image.c_str(), id);
  const std::size_t n =
      proto::encode_chunk_frame(id, offset, g_image + offset, len, 0, g_frame, sizeof g_frame);
  if (corrupt) g_frame[proto::kFrameHeaderLen] ^= 0x01;  // the CRC no longer matches
  deliver(proto::TopicKind::chunk, g_frame, n);
}

// Serves the chunk requests the agent publishes, last chunk of each request first (so the
// agent sees them out of order and hashes back from flash). When no request is left it lets
// the request timeout pass, as a lost message would. `limit` stops after that many frames
// (a power cut); `corrupt_first` damages the first frame sent.
struct Transfer {
  std::size_t frames = 0;
  std::size_t timeouts = 0;
  bool requested_received = false;  // a request asked for a chunk already stored
};

Transfer serve(std::size_t limit = static_cast<std::size_t>(-1), bool corrupt_first = false) {
  Transfer t;
  std::size_t next = 0;
  static proto::ChunkRequest req;  // 130 bytes; kept off the measured stack
  while (dev().state() == DeviceState::downloading && t.frames < limit) {
    if (next == g_transport.count) {
      if (++t.timeouts > 20) break;
      g_clock.ms += 60'000;  // beyond any back-off
      measured([] { dev().tick(); });
      continue;
    }
    const Message& m = g_transport.log[next++];
    if (m.kind != proto::TopicKind::chunk_request) continue;
    CHECK(!proto::decode_chunk_request(m.payload, m.len, req));
    for (std::uint32_t i = req.count; i-- > 0 && t.frames < limit;) {
      if (!req.wants(i)) continue;
      const std::uint32_t index = req.first + i;
      const agent::PersistedState& st = dev().persisted();
      if ((st.received[index / 8] >> (index % 8)) & 1u) t.requested_received = true;
      send_chunk(index, corrupt_first && t.frames == 0);
      ++t.frames;
    }
  }
  return t;
}

// The last event of `type` the agent published since `from`.
bool last_event(EventType type, proto::Event& out, std::size_t from = 0) {
  bool found = false;
  for (std::size_t i = from; i < g_transport.count; ++i) {
    const Message& m = g_transport.log[i];
    if (m.kind != proto::TopicKind::event) continue;
    proto::Event ev;
    if (proto::decode_event(m.payload, m.len, ev)) continue;
    if (ev.type == type) {
      out = ev;
      found = true;
    }
  }
  return found;
}

std::size_t count_kind(proto::TopicKind kind) {
  std::size_t n = 0;
  for (std::size_t i = 0; i < g_transport.count; ++i) n += g_transport.log[i].kind == kind;
  return n;
}

// ------------------------------------------------------------------------- tests

void test_update_confirmed() {
  factory_reset();
  CHECK(count_kind(proto::TopicKind::presence) == 1);  // hello
  make_offer(OfferSpec{});
  send_offer();
  proto::Event ev;
  CHECK(last_event(EventType::accept, ev) && ev.deployment == "dep-1");
  CHECK(dev().state() == DeviceState::downloading);

  const Transfer t = serve();
  CHECK(t.frames == (sizeof g_image + kChunk - 1) / kChunk);
  CHECK(t.timeouts == 0);
  CHECK(dev().state() == DeviceState::rebooting);
  CHECK(g_flash.reset_requested && g_flash.activates == 1);
  CHECK(std::memcmp(g_flash.inactive_data(), g_image, sizeof g_image) == 0);
  CHECK(dev().stats().duplicate_chunks == 0 && dev().stats().bad_frames == 0);

  power_cycle();  // trial boot of 1.1.0, self-test passes
  CHECK(g_flash.confirms == 1);
  CHECK(g_flash.running_version() == "1.1.0");
  CHECK(g_flash.counter() == 1);
  CHECK(dev().state() == DeviceState::idle);
  CHECK(last_event(EventType::result, ev) && ev.success && ev.version == "1.1.0" &&
        ev.deployment == "dep-1");
  const std::uint32_t seq = ev.seq;

  // The controller asks again (its copy of the result was lost): same answer, same seq.
  const std::size_t mark = g_transport.count;
  send_offer();
  CHECK(last_event(EventType::result, ev, mark) && ev.success && ev.seq == seq);
  CHECK(g_flash.begins == 1);
}

void test_declines() {
  factory_reset();
  g_flash.counter() = 5;
  struct Case {
    OfferSpec spec;
    bool tamper;
    ReasonCode expected;
  };
  Case cases[9];
  cases[0].spec.deployment = "dep-tampered";
  cases[0].tamper = true;
  cases[0].expected = ReasonCode::bad_signature;
  cases[1].spec.deployment = "dep-key";
  cases[1].spec.key = &g_stranger;
  cases[1].tamper = false;
  cases[1].expected = ReasonCode::unknown_key;
  cases[2].spec.deployment = "dep-hw";
  cases[2].spec.hw = "other-board";
  cases[2].tamper = false;
  cases[2].expected = ReasonCode::wrong_hardware;
  cases[3].spec.deployment = "dep-old";
  cases[3].spec.counter = 4;
  cases[3].tamper = false;
  cases[3].expected = ReasonCode::downgrade;
  cases[4].spec.deployment = "dep-same";
  cases[4].spec.version = "1.0.0";
  cases[4].spec.counter = 5;
  cases[4].tamper = false;
  cases[4].expected = ReasonCode::already_installed;
  cases[5].spec.deployment = "dep-replayed";  // a signed offer replayed under another id
  cases[5].spec.signed_for = "dep-original";
  cases[5].spec.counter = 5;
  cases[5].tamper = false;
  cases[5].expected = ReasonCode::wrong_target;
  cases[6].spec.deployment = "dep-elsewhere";  // signed for another device
  cases[6].spec.device = "dev-2";
  cases[6].spec.counter = 5;
  cases[6].tamper = false;
  cases[6].expected = ReasonCode::wrong_target;
  cases[7].spec.deployment = "dep-lower";  // a lower version without the operator's rollback
  cases[7].spec.version = "0.9.0";
  cases[7].spec.counter = 5;
  cases[7].tamper = false;
  cases[7].expected = ReasonCode::downgrade;
  cases[8].spec.deployment = "dep-ok";
  cases[8].spec.counter = 5;
  cases[8].tamper = false;
  cases[8].expected = ReasonCode::ok;
  for (const Case& c : cases) {
    make_offer(c.spec);
    if (c.tamper) g_offer.manifest.counter += 1;  // after signing
    const std::size_t mark = g_transport.count;
    send_offer();
    proto::Event ev;
    if (c.expected == ReasonCode::ok) {
      CHECK(last_event(EventType::accept, ev, mark) && ev.deployment == c.spec.deployment);
    } else {
      CHECK(last_event(EventType::decline, ev, mark) && ev.reason == c.expected &&
            ev.deployment == c.spec.deployment);
      CHECK(g_flash.begins == 0);
    }
  }
  // Busy: another deployment while one is downloading.
  make_offer(OfferSpec{"dep-busy", "1.2.0", kHw, &g_release, 5, g_image});
  const std::size_t mark = g_transport.count;
  send_offer();
  proto::Event ev;
  CHECK(last_event(EventType::decline, ev, mark) && ev.reason == ReasonCode::busy);
  CHECK(g_flash.begins == 1);
}

void test_corrupt_chunk_and_power_cut() {
  factory_reset();
  make_offer(OfferSpec{"dep-3", "1.1.0", kHw, &g_release, 1, g_image});
  send_offer();
  Transfer t = serve(9, true);
  CHECK(t.frames == 9);
  CHECK(dev().stats().bad_frames == 1);  // the damaged frame was dropped, not written
  CHECK(dev().state() == DeviceState::downloading);

  g_transport.count = 0;
  power_cycle();  // power cut in the middle of the download
  CHECK(dev().state() == DeviceState::downloading);
  const std::uint32_t kept = dev().persisted().received_chunks;
  CHECK(kept > 0 && kept < 9);
  t = serve();
  CHECK(!t.requested_received);  // resumed: asks only for what is missing
  CHECK(t.frames == (sizeof g_image + kChunk - 1) / kChunk - kept);
  CHECK(dev().state() == DeviceState::rebooting);
  CHECK(std::memcmp(g_flash.inactive_data(), g_image, sizeof g_image) == 0);
}

void test_lost_chunk_rerequested() {
  factory_reset();
  make_offer(OfferSpec{"dep-4", "1.1.0", kHw, &g_release, 1, g_image});
  send_offer();
  const Transfer t = serve(static_cast<std::size_t>(-1), true);
  CHECK(t.timeouts >= 1);  // the damaged chunk came back only after a re-request
  CHECK(dev().state() == DeviceState::rebooting);
}

void test_hash_mismatch() {
  factory_reset();
  fill(g_other_image, sizeof g_other_image, 99);
  make_offer(OfferSpec{"dep-5", "1.1.0", kHw, &g_release, 1, g_other_image});
  send_offer();
  serve();
  CHECK(dev().state() == DeviceState::idle);
  proto::Event ev;
  CHECK(last_event(EventType::result, ev) && !ev.success &&
        ev.reason == ReasonCode::hash_mismatch && ev.version == "1.0.0");
  CHECK(g_flash.aborts == 1 && g_flash.activates == 0);
}

void test_self_test_failure_rolls_back() {
  factory_reset();
  make_offer(OfferSpec{"dep-6", "1.1.0", kHw, &g_release, 1, g_image});
  send_offer();
  serve();
  CHECK(dev().state() == DeviceState::rebooting);
  g_self_test_ok = false;
  power_cycle();  // trial boot: the self-test fails, the agent resets without confirming
  CHECK(g_flash.reset_requested && g_flash.confirms == 0);
  g_self_test_ok = true;
  power_cycle();  // the bootloader reverts to 1.0.0
  CHECK(g_flash.running_version() == "1.0.0");
  CHECK(dev().state() == DeviceState::idle);
  proto::Event ev;
  CHECK(last_event(EventType::result, ev) && !ev.success &&
        ev.reason == ReasonCode::self_test_failed && ev.version == "1.0.0" &&
        ev.deployment == "dep-6");
}

// Checks 2, 3, 3b: an online key needs a release signature by a release key.
void test_release_signature() {
  factory_reset();
  struct Case {
    const char* deployment;
    const TestKey* key;
    const TestKey* release;
    bool tamper_release;
    ReasonCode expected;
  };
  const Case cases[] = {
      {"dep-online-alone", &g_online, nullptr, false, ReasonCode::bad_signature},
      {"dep-online-stranger", &g_online, &g_stranger, false, ReasonCode::unknown_key},
      {"dep-online-by-online", &g_online, &g_online, false, ReasonCode::unknown_key},
      {"dep-online-tampered", &g_online, &g_release, true, ReasonCode::bad_signature},
      {"dep-root", &g_root, nullptr, false, ReasonCode::unknown_key},
      {"dep-online-ok", &g_online, &g_release, false, ReasonCode::ok},
  };
  for (const Case& c : cases) {
    OfferSpec spec;
    spec.deployment = c.deployment;
    spec.key = c.key;
    spec.release = c.release;
    make_offer(spec);
    if (c.tamper_release) {
      g_offer.manifest.release_sig.data[5] = g_offer.manifest.release_sig.data[5] == '0' ? '1' : '0';
      sign(g_offer.manifest, *c.key);
    }
    const std::size_t mark = g_transport.count;
    send_offer();
    proto::Event ev;
    if (c.expected == ReasonCode::ok) {
      CHECK(last_event(EventType::accept, ev, mark) && ev.deployment == c.deployment);
    } else {
      CHECK(last_event(EventType::decline, ev, mark) && ev.reason == c.expected &&
            ev.deployment == c.deployment);
    }
  }
  serve();
  CHECK(dev().state() == DeviceState::rebooting);
  power_cycle();
  CHECK(g_flash.running_version() == "1.1.0");
}

proto::KeySet g_set;

// A key set signed by `signer`: release2 (release) and online (online), version `version`.
void send_keyset(std::uint32_t version, const TestKey& signer, const TestKey* next_root) {
  g_set = proto::KeySet{};
  g_set.version = version;
  const TestKey* keys[] = {&g_release2, &g_online, next_root};
  const proto::KeyRole roles[] = {proto::KeyRole::release, proto::KeyRole::online,
                                  proto::KeyRole::root};
  for (std::size_t i = 0; i < 3; ++i) {
    if (keys[i] == nullptr) continue;
    proto::KeySetEntry& e = g_set.keys[g_set.key_count++];
    e.id = keys[i]->id;
    e.role = roles[i];
    std::memcpy(e.pub, keys[i]->pub, sizeof e.pub);
  }
  g_set.key = signer.id;
  sign_bytes(signer, proto::canonical_keyset(g_set, g_json, sizeof g_json), g_set.sig);
  std::size_t len = 0;
  if (proto::encode_keyset(g_set, g_json, sizeof g_json, len)) fw::fatal("encode_keyset");
  deliver(proto::TopicKind::keys, reinterpret_cast<const std::uint8_t*>(g_json), len);
}

// `keys` of the last hello published since `from`, or -1.
long last_hello_keys(std::size_t from) {
  long keys = -1;
  static proto::Hello h;
  for (std::size_t i = from; i < g_transport.count; ++i) {
    const Message& m = g_transport.log[i];
    if (m.kind == proto::TopicKind::presence && !proto::decode_hello(m.payload, m.len, h)) {
      keys = static_cast<long>(h.keys);
    }
  }
  return keys;
}

// 6.6: a root-signed key set revokes the release key (stopping the download it signed), is
// kept across a power cycle, and can only go forward; the root rotates.
void test_key_set_rotation() {
  factory_reset();
  make_offer(OfferSpec{"dep-k1", "1.1.0", kHw, &g_release, 1, g_image});
  send_offer();
  serve(5);
  CHECK(dev().state() == DeviceState::downloading);
  std::size_t mark = g_transport.count;
  send_keyset(1, g_release, nullptr);  // not the root: refused
  CHECK(last_hello_keys(mark) == 0);
  CHECK(dev().state() == DeviceState::downloading);
  mark = g_transport.count;
  send_keyset(1, g_root, &g_new_root);  // revokes g_release, rotates the root
  CHECK(last_hello_keys(mark) == 1);
  proto::Event ev;
  CHECK(last_event(EventType::result, ev, mark) && !ev.success &&
        ev.reason == ReasonCode::unknown_key && ev.deployment == "dep-k1");
  CHECK(dev().state() == DeviceState::idle);

  power_cycle();
  CHECK(dev().trusted_keys().version == 1);
  make_offer(OfferSpec{"dep-k2", "1.1.0", kHw, &g_release, 1, g_image});
  mark = g_transport.count;
  send_offer();
  CHECK(last_event(EventType::decline, ev, mark) && ev.reason == ReasonCode::unknown_key);
  mark = g_transport.count;
  send_keyset(2, g_root, nullptr);  // the old root was rotated away
  CHECK(last_hello_keys(mark) == 1);
  send_keyset(1, g_new_root, nullptr);  // the new root, but not a newer version
  CHECK(dev().trusted_keys().version == 1);
  mark = g_transport.count;
  send_keyset(2, g_new_root, nullptr);
  CHECK(last_hello_keys(mark) == 2);
  OfferSpec spec;
  spec.deployment = "dep-k3";
  spec.key = &g_online;
  spec.release = &g_release2;
  make_offer(spec);
  mark = g_transport.count;
  send_offer();
  CHECK(last_event(EventType::accept, ev, mark) && ev.deployment == "dep-k3");
  serve();
  CHECK(dev().state() == DeviceState::rebooting);
}

void run(const char* name, void (*test)()) {
  g_test = name;
  const int before = g_failures;
  test();
  fw::print(g_failures == before ? "ok   " : "FAIL ");
  fw::print(name);
  fw::print("\n");
}

}  // namespace

int main() {
  fill(g_image, sizeof g_image, 7);
  make_key(g_root, 1);
  make_key(g_release, 2);
  make_key(g_online, 3);
  make_key(g_release2, 4);
  make_key(g_stranger, 5);
  make_key(g_new_root, 6);
  const TestKey* provisioned[] = {&g_root, &g_release, &g_online};
  const proto::KeyRole roles[] = {proto::KeyRole::root, proto::KeyRole::release,
                                  proto::KeyRole::online};
  for (std::size_t i = 0; i < 3; ++i) {
    g_provisioned[i].role = roles[i];
    std::memcpy(g_provisioned[i].pub, provisioned[i]->pub, proto::kP256PointLen);
  }
  run("update_confirmed", test_update_confirmed);
  run("declines", test_declines);
  run("corrupt_chunk_and_power_cut", test_corrupt_chunk_and_power_cut);
  run("lost_chunk_rerequested", test_lost_chunk_rerequested);
  run("hash_mismatch", test_hash_mismatch);
  run("self_test_failure_rolls_back", test_self_test_failure_rolls_back);
  run("release_signature", test_release_signature);
  run("key_set_rotation", test_key_set_rotation);

  fw::print("sizeof(Agent) ");
  print_uint(sizeof(agent::Agent));
  fw::print(" B (PersistedState ");
  print_uint(sizeof(agent::PersistedState));
  fw::print(" B, Offer ");
  print_uint(sizeof(proto::Offer));
  fw::print(" B, KeyRecord ");
  print_uint(sizeof(agent::KeyRecord));
  fw::print(" B)\nagent stack peak ");
  print_uint(g_agent_stack_peak);
  fw::print(" B\n");
  print_uint(static_cast<std::uint64_t>(g_checks));
  fw::print(" checks, ");
  print_uint(static_cast<std::uint64_t>(g_failures));
  fw::print(" failed\n");
  return g_failures == 0 ? 0 : 1;
}
