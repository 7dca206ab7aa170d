#pragma once

#include <cstdint>
#include <string>

#include "ota/agent/ports.hpp"

namespace ota::agent::linux_port {

struct FileFlashConfig {
  std::string dir;                          // holds slot_a.bin, slot_b.bin, boot.state
  std::uint64_t slot_capacity = 64u << 20;  // bytes an image may take
  std::string initial_version = "1.0.0";    // what slot a holds on a factory-fresh device
  bool durable = true;                      // fsync writes and state (off only for tests)
  unsigned write_delay_us = 0;              // simulate slow flash: pause per write() call
};

// A dual-slot (A/B) flash in files that boots like real hardware does:
//  - power_on() picks the slot to run: the confirmed one, or an activated one on trial,
//    counting its trial boots (bootcount); a trial slot that used up its boots
//    (activate_trial) or was rejected without being confirmed reverts to the old one.
//  - the boot state is one small file replaced atomically.
class FileFlash final : public FlashPort {
 public:
  explicit FileFlash(FileFlashConfig config);
  ~FileFlash() override;

  // Simulated power-on / bootloader. Call before Agent::boot().
  PortStatus power_on();

  PortStatus begin(const proto::Manifest& manifest, bool resume) override;
  PortStatus write(std::uint32_t offset, const std::uint8_t* data, std::size_t len) override;
  PortStatus read(std::uint32_t offset, std::uint8_t* out, std::size_t len) override;
  PortStatus sync() override;
  PortStatus finish(const proto::Manifest& manifest) override;
  PortStatus abort() override;
  PortStatus activate(const proto::Manifest& manifest) override;
  PortStatus activate_trial(const proto::Manifest& manifest, std::uint32_t max_boots) override;
  PortStatus reject() override;
  PortStatus confirm() override;
  void reset() override { reset_requested_ = true; }
  PortStatus read_state(ImageState& out) override;

  bool reset_requested() const { return reset_requested_; }
  std::string slot_path(char slot) const;
  // Fault injection: flip one byte of the first write that covers `offset`.
  void corrupt_write_at(std::uint32_t offset) {
    corrupt_offset_ = offset;
    corrupt_armed_ = true;
  }

 private:
  struct BootState {
    char active = 'a';   // last confirmed slot
    char pending = 0;    // slot activated on trial, 0 if none
    std::uint32_t trial_boots = 0;      // boots of the pending slot so far
    std::uint32_t max_trial_boots = 1;  // trial boots it gets
    bool rejected = false;              // failed its self-test: revert at the next boot
    bool rolled_back = false;
    char writing = 0;    // slot holding a partial image, 0 if none
    std::string version_a, version_b;
    // SHA-256 of each slot's image from its verified manifest, empty when unknown (the factory
    // image, state files from before): lets the agent tell a same-version image with other
    // bytes from the one running (PROTOCOL.md section 7, check 8).
    std::string sha256_a, sha256_b;
    std::uint32_t counter = 0, pending_counter = 0;
  };
  bool load_state();
  bool save_state();
  std::string& version_of(char slot) { return slot == 'b' ? state_.version_b : state_.version_a; }
  std::string& sha256_of(char slot) { return slot == 'b' ? state_.sha256_b : state_.sha256_a; }
  static char other(char slot) { return slot == 'a' ? 'b' : 'a'; }
  PortStatus open_target(bool truncate);
  void close_target();
  PortStatus ensure_open();

  FileFlashConfig cfg_;
  BootState state_;
  char running_ = 'a';
  char target_ = 0;
  int fd_ = -1;
  std::string target_version_;
  std::uint64_t target_size_ = 0;
  bool reset_requested_ = false;
  bool corrupt_armed_ = false;
  std::uint32_t corrupt_offset_ = 0;
};

}  // namespace ota::agent::linux_port
