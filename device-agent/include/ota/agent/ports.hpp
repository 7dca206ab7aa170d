// The agent core's only contact with the outside world. A port implementation for a
// platform lives in device-agent/platform/<name>/ (linux/, cortex-m/; sim_boot/ is the
// simulated boot loader their simulated flashes share). The core calls these from one thread.
#pragma once

#include <cstddef>
#include <cstdint>

#include "ota/proto/messages.hpp"

namespace ota::agent {

enum class PortStatus : std::uint8_t { ok = 0, error, no_space, read_only, not_found };

// Which image the device runs and whether it still has to prove itself.
struct ImageState {
  proto::Version running_version;
  // SHA-256 (lower-case hex) of the running image, as the port knows it (the verified
  // manifest's sha256 kept with the slot, or a hash of the slot); empty when the port cannot
  // tell, and then an offer of the running version is taken for the running image.
  proto::Sha256Hex running_sha256;
  char running_slot = 'a';  // 'a' or 'b'
  proto::SlotState slot_state = proto::SlotState::confirmed;
  proto::Version previous_version;  // version in the other slot, empty if none
  std::uint32_t security_counter = 0;  // highest counter confirmed on this device
  std::uint64_t free_bytes = 0;        // capacity of the update slot
  // Boots of the running trial image so far (1 on its first), kept by the boot loader; 0 when
  // the running image is confirmed or the port does not count.
  std::uint32_t trial_boots = 0;
  // What the port installs: whole images (firmware) or application trees (bundle); offers of
  // another kind are declined as unsupported.
  proto::ImageKind kind = proto::ImageKind::firmware;
};

// The flash boundary, modelled on ota_start/ota_write/ota_finish (Pycom, ESP-IDF) and the
// FreeRTOS OTA PAL. Each call states what the agent has checked before calling it.
class FlashPort {
 public:
  virtual ~FlashPort() = default;
  // Prepare the inactive slot for an image of `size` bytes. Called after the manifest
  // signature, key, hardware, counter, expiry and size (<= free_bytes) were checked.
  // `resume` = true keeps what an earlier begin() for the same image wrote; when nothing can
  // be kept (the slot was erased or never begun) the port prepares the slot afresh and
  // returns not_found, so the agent forgets the chunks it believed written.
  virtual PortStatus begin(const proto::Manifest& manifest, bool resume) = 0;
  // Write `len` bytes at `offset` of the inactive slot. The chunk's CRC was checked and
  // offset+len <= manifest.size. May be called again for the same offset (idempotent).
  virtual PortStatus write(std::uint32_t offset, const std::uint8_t* data, std::size_t len) = 0;
  // Read back what write() stored (used to hash chunks that arrived out of order).
  virtual PortStatus read(std::uint32_t offset, std::uint8_t* out, std::size_t len) = 0;
  // Make everything written so far durable. Called before progress is persisted.
  virtual PortStatus sync() = 0;
  // All bytes written and the SHA-256 over them matched `manifest` (whose signature was
  // verified). Seal the slot. May be called again after a restart (idempotent).
  virtual PortStatus finish(const proto::Manifest& manifest) = 0;
  // Drop the partial image. The running image is untouched.
  virtual PortStatus abort() = 0;
  // Mark the finished slot to boot next, on trial (reverts at the next boot unless
  // confirmed). `manifest` is the verified manifest of the finished slot.
  virtual PortStatus activate(const proto::Manifest& manifest) = 0;
  // activate() with the number of boots the trial image gets before the boot loader returns
  // to the previous slot by itself (U-Boot bootcount/bootlimit, a boot counter in the slot
  // trailer). Boot loaders that allow exactly one trial boot (MCUboot test swap, ESP-IDF
  // app rollback) keep this default.
  virtual PortStatus activate_trial(const proto::Manifest& manifest, std::uint32_t max_boots) {
    (void)max_boots;
    return activate(manifest);
  }
  // The running trial image failed its self-test or did not confirm in time: the next boot
  // must return to the previous slot (esp_ota_mark_app_invalid_rollback_and_reboot). The
  // default does nothing, which is right for a boot loader that reverts any unconfirmed
  // image at its next boot.
  virtual PortStatus reject() { return PortStatus::ok; }
  // The running image passed its self-test: make it permanent, store its counter.
  virtual PortStatus confirm() = 0;
  // Restart the device into whatever activate() chose. On real hardware this never returns.
  virtual void reset() = 0;
  virtual PortStatus read_state(ImageState& out) = 0;
};

// MQTT (or any pub/sub) connection. Incoming messages are handed to Agent::on_message by
// the platform loop.
class Transport {
 public:
  virtual ~Transport() = default;
  virtual bool connected() const = 0;
  virtual bool subscribe(const char* topic, int qos) = 0;
  // Ends a subscription (the broadcast image topic once a download is over, PROTOCOL.md 17).
  virtual bool unsubscribe(const char* topic) = 0;
  virtual bool publish(const char* topic, const void* payload, std::size_t len, int qos,
                       bool retain) = 0;
};

// Monotonic milliseconds (never goes backwards, need not be wall time) plus wall time
// for manifest expiry.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual std::uint64_t now_ms() = 0;
  virtual std::uint64_t unix_seconds() = 0;
};

// Small persistent record store (a file, NVS, a flash page). Writes should be atomic
// (after a power cut the record is the old one or the new one); the agent checks a CRC and
// treats a torn record as lost, which never bricks but may restart an update. The agent uses
// two: the state record (saved often) and the key-set record (saved when a root-signed key
// set is applied, PROTOCOL.md 6.6), each on a Storage of its own.
class Storage {
 public:
  virtual ~Storage() = default;
  // Returns not_found when the record does not exist; `len` gets the record size.
  virtual PortStatus load(void* out, std::size_t cap, std::size_t& len) = 0;
  virtual PortStatus save(const void* data, std::size_t len) = 0;
  virtual PortStatus erase() = 0;
};

// SHA-256 with state the caller owns (no heap), and ECDSA P-256 verification.
struct Sha256State {
  alignas(8) std::uint8_t opaque[256];
};

class Crypto {
 public:
  virtual ~Crypto() = default;
  virtual void sha256_init(Sha256State& s) = 0;
  virtual void sha256_update(Sha256State& s, const std::uint8_t* data, std::size_t len) = 0;
  virtual void sha256_final(Sha256State& s, std::uint8_t digest[32]) = 0;
  // Verify raw r||s (64 bytes) over SHA-256(msg) with the public key `pub`, an uncompressed
  // P-256 point (04 || X || Y). The core keeps the trusted keys and picks the one to use (key
  // ids, roles, rotation: PROTOCOL.md 6.6); a point that is not on the curve is a bad
  // signature.
  enum class Verify : std::uint8_t { ok, bad_signature };
  virtual Verify verify_p256(const std::uint8_t pub[proto::kP256PointLen], const std::uint8_t* msg,
                             std::size_t len, const std::uint8_t sig[64]) = 0;
};

}  // namespace ota::agent
