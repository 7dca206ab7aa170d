#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "ota/agent/ports.hpp"
#include "ota/agent/sim_boot.hpp"
#include "ota/proto/bundle.hpp"

namespace ota::agent::linux_port {

struct BundleFlashConfig {
  std::string root;                       // ROOT/current -> trees/a|b, ROOT/boot.state
  std::string initial_version = "1.0.0";  // version of the factory tree
  // Paths no bundle may write or delete (Wi-Fi credentials, certificates): a file, or a
  // directory with everything under it ("certs" or "certs/"). Always carried over.
  std::vector<std::string> protect;
  bool durable = true;                  // fsync files, directories and state
  std::uint64_t reserve_bytes = 0;      // kept free: not offered as update space
  std::size_t max_spill_bytes = 8u << 20;  // chunks held until the bundle index is complete
  unsigned write_delay_us = 0;          // simulate slow flash: pause per write() call
};

// Application bundles (manifest kind "bundle") installed as a file tree, A/B like FileFlash:
//   ROOT/trees/a, ROOT/trees/b   the two trees; ROOT/current is a symlink to the running one
//   ROOT/boot.state              which tree is confirmed, on trial, being written (atomic)
//   ROOT/bundle.head             header + index of the bundle in the inactive tree
//   ROOT/bundle.spill            chunks that arrived before the index was complete
// begin() empties the inactive tree. Once the index is in, the tree is prepared: every file
// of the running tree is hard-linked into it (no copy, no space) except the files the bundle
// replaces or deletes; the bundle's files are then written in place at their offsets, in any
// order (streaming extraction: no second copy of the bundle). read() serves the bundle bytes
// back from the index and the new files, so the agent's hash needs no copy either. finish()
// checks every file's size and SHA-256 against the index. activate() marks the tree on trial
// in boot.state, then swaps ROOT/current with rename(): old tree or new tree, never a mix.
class BundleFlash final : public FlashPort {
 public:
  explicit BundleFlash(BundleFlashConfig config);
  ~BundleFlash() override;

  // Simulated power-on: the boot loader (sim_boot.hpp, as for FileFlash) picks the tree to run
  // and ROOT/current is pointed at it. A factory-fresh ROOT adopts ROOT/current when it
  // is a plain directory (the application as installed), else starts with an empty tree.
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
  std::string current_path() const { return cfg_.root + "/current"; }
  std::string tree_path(char slot) const;
  // Why the last call failed (bad bundle, protected path, hash mismatch, errno text).
  const std::string& last_error() const { return last_error_; }

  // Test hook, a power cut: filesystem operation number `k` (1-based, counted from now) is
  // torn (a write stores half its bytes; anything else does not happen) and it and every
  // later operation fail, as if the power went off. 0 disarms.
  void cut_power_at(std::uint64_t k) {
    cut_at_ = k;
    ops_ = 0;
  }
  std::uint64_t ops() const { return ops_; }  // filesystem operations counted so far
  bool powered_off() const { return dead_; }

 private:
  bool load_state();
  bool save_state();

  // Filesystem operations, counted for the power-cut hook.
  bool op();  // false: the power is off
  bool fs_write_all(int fd, const void* data, std::size_t len, std::uint64_t offset);
  bool fs_write_file_atomically(const std::string& path, const std::string& data);
  bool fs_mkdir(const std::string& path);
  bool fs_rename(const std::string& from, const std::string& to);
  bool fs_unlink(const std::string& path);
  bool fs_fsync(int fd);
  bool fs_fsync_dir(const std::string& path);
  bool fs_remove_tree(const std::string& path);
  int fs_create(const std::string& path);

  PortStatus fail(const std::string& what);  // sets last_error_ (with errno text)
  PortStatus refuse(const std::string& what);
  PortStatus switch_current(char slot);
  void forget_target();
  PortStatus ensure_loaded();
  PortStatus try_complete_head();
  PortStatus prepare_tree();
  PortStatus link_old_tree(const std::string& from, const std::string& to, const std::string& rel);
  PortStatus write_files(std::uint64_t offset, const std::uint8_t* data, std::size_t len);
  int file_fd(std::size_t index);
  void close_files();
  bool spill_covers(std::uint64_t offset, std::size_t len, std::uint8_t* out) const;

  BundleFlashConfig cfg_;
  sim_boot::BootLoader boot_;  // the record is boot.state
  std::string writing_image_;  // boot.state too: SHA-256 of the bundle being written
  bool reset_requested_ = false;
  std::string last_error_;

  // The bundle being written into the inactive tree.
  char target_ = 0;
  std::uint64_t target_size_ = 0;
  bool head_complete_ = false;
  std::string head_;  // header + index bytes, once complete
  proto::bundle::Index index_;
  std::map<std::uint64_t, std::string> spill_;  // offset -> bytes, before the index is in
  std::size_t spill_bytes_ = 0;
  int spill_fd_ = -1;
  std::map<std::size_t, int> fds_;  // open files of the bundle, by index position
  std::map<std::size_t, bool> dirty_;
  std::set<std::string> skip_;           // paths of the running tree not carried over
  std::set<std::string> dirs_of_files_;  // directories the bundle's files need

  std::uint64_t cut_at_ = 0;
  std::uint64_t ops_ = 0;
  bool dead_ = false;
};

}  // namespace ota::agent::linux_port
