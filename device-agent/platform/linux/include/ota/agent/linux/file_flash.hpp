#pragma once

#include <cstdint>
#include <string>

#include "ota/agent/ports.hpp"
#include "ota/agent/sim_boot.hpp"

namespace ota::agent::linux_port {

struct FileFlashConfig {
  std::string dir;                          // holds slot_a.bin, slot_b.bin, boot.state
  std::uint64_t slot_capacity = 64u << 20;  // bytes an image may take
  std::string initial_version = "1.0.0";    // what slot a holds on a factory-fresh device
  bool durable = true;                      // fsync writes and state (off only for tests)
  unsigned write_delay_us = 0;              // simulate slow flash: pause per write() call
};

// A dual-slot (A/B) flash in files that boots like real hardware does: power_on() runs the
// simulated boot loader (sim_boot.hpp: the confirmed slot, or an activated one on trial,
// counting its boots, reverting when they are used up or it was rejected). Owns DIR: the two
// slot files and boot.state (the boot loader's record, boot_state_file.hpp), replaced
// atomically after every change.
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
  bool load_state();
  bool save_state();
  PortStatus open_target(bool truncate);
  void close_target();
  PortStatus ensure_open();

  FileFlashConfig cfg_;
  sim_boot::BootLoader boot_;  // the record is boot.state
  char target_ = 0;
  int fd_ = -1;
  std::uint64_t target_size_ = 0;
  bool reset_requested_ = false;
  bool corrupt_armed_ = false;
  std::uint32_t corrupt_offset_ = 0;
};

}  // namespace ota::agent::linux_port
