// Example firmware: the agent core wired to stub ports on a bare Cortex-M4. It exists to
// show the wiring a firmware team writes and to measure what the core costs in flash and
// RAM (build.sh). The stubs mark where the SDK calls go; see README "Porting the agent to
// your firmware".
#include <cstdint>
#include <cstring>

#include "ota/agent/agent.hpp"
#include "sha256.hpp"
#include "startup.hpp"

namespace {

using ota::agent::PortStatus;

// Update slot and state record in flash, placed by the linker script. On the MPS2 model this
// is writable SSRAM; on a part with real flash every memcpy below is an erase/program call.
extern "C" std::uint8_t __ota_slot_start[], __ota_slot_end[];
extern "C" std::uint8_t __ota_state_start[], __ota_state_end[];
extern "C" std::uint8_t __ota_keys_start[], __ota_keys_end[];

volatile std::uint32_t g_ms = 0;

// ------------------------------------------------------------------------------ FlashPort
// Stands for esp_ota_* / MCUboot's secondary slot: begin erases, write programs at an
// offset, activate marks the slot for a trial boot, confirm makes it permanent.
class SlotFlash final : public ota::agent::FlashPort {
 public:
  PortStatus begin(const ota::proto::Manifest& m, bool resume) override {
    if (m.size > capacity()) return PortStatus::no_space;
    if (!resume) std::memset(__ota_slot_start, 0xff, static_cast<std::size_t>(m.size));
    return PortStatus::ok;
  }
  PortStatus write(std::uint32_t offset, const std::uint8_t* data, std::size_t len) override {
    if (offset + len > capacity()) return PortStatus::error;
    std::memcpy(__ota_slot_start + offset, data, len);
    return PortStatus::ok;
  }
  PortStatus read(std::uint32_t offset, std::uint8_t* out, std::size_t len) override {
    if (offset + len > capacity()) return PortStatus::error;
    std::memcpy(out, __ota_slot_start + offset, len);
    return PortStatus::ok;
  }
  PortStatus sync() override { return PortStatus::ok; }  // programming is synchronous here
  PortStatus finish(const ota::proto::Manifest& m) override {
    other_version_ = m.version;
    return PortStatus::ok;
  }
  PortStatus abort() override { return PortStatus::ok; }
  PortStatus activate(const ota::proto::Manifest& m) override {
    pending_counter_ = m.counter;  // becomes the device's counter once confirmed
    // A real port sets the bootloader's trial flag here (MCUboot: boot_set_pending(0)).
    return PortStatus::ok;
  }
  PortStatus confirm() override {
    state_.security_counter = pending_counter_;
    state_.slot_state = ota::proto::SlotState::confirmed;
    return PortStatus::ok;
  }
  void reset() override {
    // SCB->AIRCR = VECTKEY | SYSRESETREQ
    *reinterpret_cast<volatile std::uint32_t*>(0xE000ED0Cu) = 0x05FA0004u;
    for (;;) {
    }
  }
  PortStatus read_state(ota::agent::ImageState& out) override {
    out = state_;
    out.free_bytes = capacity();
    out.previous_version = other_version_;
    return PortStatus::ok;
  }

  ota::agent::ImageState state_;

 private:
  static std::uint64_t capacity() {
    return static_cast<std::uint64_t>(__ota_slot_end - __ota_slot_start);
  }
  ota::proto::Version other_version_;  // of the image sealed in the update slot
  std::uint32_t pending_counter_ = 0;
};

// ------------------------------------------------------------------------------ Transport
// Stands for the SDK's MQTT client. Its receive buffer is the chunk buffer: a chunk frame is
// decoded in place and written to flash from there, so it is the one buffer sized by
// OTA_AGENT_MAX_CHUNK_SIZE.
class StubTransport final : public ota::agent::Transport {
 public:
  bool connected() const override { return link_up; }
  bool subscribe(const char*, int) override { return link_up; }
  bool unsubscribe(const char*) override { return link_up; }
  bool publish(const char*, const void*, std::size_t, int, bool) override { return link_up; }

  // Filled by the network driver (interrupt or task) in a real port.
  volatile bool link_up = false;
  volatile bool rx_ready = false;
  char rx_topic[ota::proto::kMaxTopicLen];
  std::uint8_t rx_payload[ota::proto::kFrameHeaderLen + OTA_AGENT_MAX_CHUNK_SIZE];
  volatile std::size_t rx_len = 0;
};

// ------------------------------------------------------------------------------ Clock
class TickClock final : public ota::agent::Clock {
 public:
  std::uint64_t now_ms() override { return g_ms; }
  // Wall time from SNTP or an RTC in a real port; manifests carry an expiry in unix seconds.
  std::uint64_t unix_seconds() override { return unix_at_boot + g_ms / 1000; }
  std::uint64_t unix_at_boot = 0;
};

// ------------------------------------------------------------------------------ Storage
// Stands for an NVS blob or a pair of flash pages written alternately (atomic by a sequence
// number and a checksum in a real port). One region for the state record, one for the key set.
class PageStorage final : public ota::agent::Storage {
 public:
  PageStorage(std::uint8_t* start, std::uint8_t* end) : start_(start), end_(end) {}
  PortStatus load(void* out, std::size_t cap, std::size_t& len) override {
    std::uint32_t stored = 0;
    std::memcpy(&stored, start_, sizeof stored);
    if (stored == 0 || stored == 0xffffffffu) return PortStatus::not_found;
    if (stored > cap || stored > capacity()) return PortStatus::error;
    std::memcpy(out, start_ + sizeof stored, stored);
    len = stored;
    return PortStatus::ok;
  }
  PortStatus save(const void* data, std::size_t len) override {
    if (len > capacity()) return PortStatus::no_space;
    const std::uint32_t stored = static_cast<std::uint32_t>(len);
    std::memcpy(start_ + sizeof stored, data, len);
    std::memcpy(start_, &stored, sizeof stored);
    return PortStatus::ok;
  }
  PortStatus erase() override {
    std::memset(start_, 0xff, sizeof(std::uint32_t));
    return PortStatus::ok;
  }

 private:
  std::size_t capacity() const {
    return static_cast<std::size_t>(end_ - start_) - sizeof(std::uint32_t);
  }
  std::uint8_t* start_;
  std::uint8_t* end_;
};

// ------------------------------------------------------------------------------ Crypto
// SHA-256 in software; ECDSA P-256 verification is a STUB that accepts any signature (the
// core has already picked the trusted key by id and role). A product links mbedTLS
// (mbedtls_ecdsa_verify), micro-ecc (uECC_verify) or a hardware engine here, and its size is
// not part of the figures build.sh prints.
class StubCrypto final : public ota::agent::Crypto {
 public:
  void sha256_init(ota::agent::Sha256State& s) override { fw::sha256_init(ctx(s)); }
  void sha256_update(ota::agent::Sha256State& s, const std::uint8_t* d, std::size_t n) override {
    fw::sha256_update(ctx(s), d, n);
  }
  void sha256_final(ota::agent::Sha256State& s, std::uint8_t digest[32]) override {
    fw::sha256_final(ctx(s), digest);
  }
  Verify verify_p256(const std::uint8_t pub[ota::proto::kP256PointLen], const std::uint8_t*,
                     std::size_t, const std::uint8_t[64]) override {
    return pub[0] == 0x04 ? Verify::ok : Verify::bad_signature;
  }

 private:
  static_assert(sizeof(fw::Sha256) <= sizeof(ota::agent::Sha256State), "hash state fits");
  static fw::Sha256& ctx(ota::agent::Sha256State& s) {
    return *reinterpret_cast<fw::Sha256*>(s.opaque);
  }
};

// The keys the device is built with (PROTOCOL.md 6.6): the root key that signs key sets and
// the release key (here the example key of tests/fixtures/proto, id 69bb99837e187bdb). A
// root-signed key set received later replaces the release/online keys and is kept in the
// key record; these stay the fallback of a device that never received one.
constexpr ota::agent::ProvisionedKey g_keys[] = {
    // A real device's root key goes here too (KeyRole::root); the example has none, so its
    // key set never changes.
    {ota::proto::KeyRole::release,
     {0x04, 0x69, 0x17, 0x04, 0x6b, 0x99, 0x85, 0xba, 0x55, 0x53, 0x06, 0x3c, 0xd6, 0x19,
      0xf4, 0x81, 0xa6, 0x60, 0x50, 0xc7, 0x12, 0xdb, 0x05, 0xcf, 0x35, 0x69, 0x06, 0x66,
      0x60, 0x39, 0x0a, 0x25, 0x3f, 0x8b, 0xd9, 0x46, 0x4c, 0x66, 0x73, 0x99, 0xe1, 0x5c,
      0xa5, 0xc7, 0x70, 0x6d, 0x30, 0x3b, 0x4f, 0x89, 0x84, 0xd5, 0xf9, 0x8e, 0x9b, 0x38,
      0xcb, 0xa0, 0x29, 0xd7, 0xfc, 0xea, 0x39, 0x3f, 0x39}},
};

bool self_test(void*) { return true; }  // the application's health check goes here

const char* const kGroups[] = {"lab"};

ota::agent::AgentConfig make_config() {
  ota::agent::AgentConfig c;
  c.device_id = "dev-0001";
  c.hw_model = "m4-board";
  c.groups = kGroups;
  c.group_count = 1;
  c.window_chunks = 8;  // enough to stream; few enough for a small MCU's TCP receive window
  c.self_test = self_test;
  c.keys = g_keys;
  c.key_count = sizeof g_keys / sizeof g_keys[0];
  return c;
}

SlotFlash g_flash;
StubTransport g_transport;
TickClock g_clock;
PageStorage g_storage(__ota_state_start, __ota_state_end);
PageStorage g_key_storage(__ota_keys_start, __ota_keys_end);
StubCrypto g_crypto;
ota::agent::Agent g_agent(make_config(), g_flash, g_transport, g_clock, g_storage, g_key_storage,
                          g_crypto);

}  // namespace

extern "C" void SysTick_Handler() { g_ms = g_ms + 1; }

int main() {
  // SysTick at 1 kHz from the 25 MHz MPS2 core clock.
  volatile std::uint32_t* systick = reinterpret_cast<volatile std::uint32_t*>(0xE000E010u);
  systick[1] = 25000 - 1;  // LOAD
  systick[2] = 0;          // VAL
  systick[0] = 7;          // CTRL: enable, interrupt, core clock

  g_agent.boot();
  bool was_up = false;
  for (;;) {
    const bool up = g_transport.link_up;
    if (up && !was_up) g_agent.on_connected();
    was_up = up;
    if (g_transport.rx_ready) {
      g_agent.on_message(g_transport.rx_topic, g_transport.rx_payload, g_transport.rx_len);
      g_transport.rx_ready = false;
    }
    g_agent.tick();
    if (g_agent.reset_requested()) g_flash.reset();
    __asm volatile("wfi");
  }
}
