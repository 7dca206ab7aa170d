#include "ota/agent/linux/file_flash.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include "ota/agent/linux/atomic_file.hpp"
#include "ota/agent/linux/boot_state_file.hpp"

namespace ota::agent::linux_port {
namespace {

PortStatus from_errno() {
  switch (errno) {
    case ENOSPC:
    case EFBIG:
      return PortStatus::no_space;
    case EROFS:
    case EACCES:
    case EPERM:
      return PortStatus::read_only;
    default:
      return PortStatus::error;
  }
}

}  // namespace

FileFlash::FileFlash(FileFlashConfig config) : cfg_(std::move(config)) {}

FileFlash::~FileFlash() { close_target(); }

std::string FileFlash::slot_path(char slot) const {
  return cfg_.dir + (slot == 'b' ? "/slot_b.bin" : "/slot_a.bin");
}

bool FileFlash::load_state() {
  std::string text;
  BootStateFile file;
  if (!read_whole_file(cfg_.dir + "/boot.state", text) || !parse_boot_state(text, file)) {
    return false;
  }
  boot_.record() = file.record;
  return true;
}

bool FileFlash::save_state() {
  BootStateFile file;
  file.record = boot_.record();
  const std::string text = format_boot_state(file);
  return write_file_atomically(cfg_.dir + "/boot.state", text.data(), text.size(), cfg_.durable);
}

PortStatus FileFlash::power_on() {
  close_target();
  reset_requested_ = false;
  ::mkdir(cfg_.dir.c_str(), 0700);
  if (!load_state()) {
    // Factory-fresh device: slot a holds the initial image, confirmed.
    boot_.factory(cfg_.initial_version.c_str());
    const std::string image = "factory image " + cfg_.initial_version + "\n";
    if (!write_file_atomically(slot_path('a'), image.data(), image.size(), cfg_.durable) ||
        !save_state()) {
      return from_errno();
    }
  }
  if (sim_boot::BootLoader::changes_record(boot_.power_on()) && !save_state()) return from_errno();
  return PortStatus::ok;
}

PortStatus FileFlash::read_state(ImageState& out) {
  out = ImageState{};
  boot_.report(out);
  out.free_bytes = cfg_.slot_capacity;
  return PortStatus::ok;
}

PortStatus FileFlash::open_target(bool truncate) {
  close_target();
  int flags = O_RDWR | O_CREAT | O_CLOEXEC;
  if (truncate) flags |= O_TRUNC;
  fd_ = ::open(slot_path(target_).c_str(), flags, 0600);
  return fd_ < 0 ? from_errno() : PortStatus::ok;
}

void FileFlash::close_target() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

PortStatus FileFlash::begin(const proto::Manifest& manifest, bool resume) {
  if (boot_.record().pending != 0) return PortStatus::error;  // a trial image must be settled first
  if (manifest.size > cfg_.slot_capacity) return PortStatus::no_space;
  target_ = boot_.inactive();
  target_size_ = manifest.size;
  const bool keep = resume && boot_.record().writing == target_;
  if (!keep) {
    boot_.start_writing(target_);
    if (!save_state()) return from_errno();
  }
  const PortStatus s = open_target(!keep);
  // Asked to resume but nothing could be kept: say so, or the agent would trust a bitmap of
  // chunks that are gone and fail verification instead of downloading them again.
  return s == PortStatus::ok && resume && !keep ? PortStatus::not_found : s;
}

PortStatus FileFlash::write(std::uint32_t offset, const std::uint8_t* data, std::size_t len) {
  if (fd_ < 0 || offset + len > target_size_) return PortStatus::error;
  if (cfg_.write_delay_us > 0) ::usleep(cfg_.write_delay_us);
  const std::uint8_t* src = data;
  std::uint8_t flipped[1];
  std::size_t done = 0;
  if (corrupt_armed_ && corrupt_offset_ >= offset && corrupt_offset_ < offset + len) {
    corrupt_armed_ = false;
    const std::size_t at = corrupt_offset_ - offset;
    if (at > 0 && ::pwrite(fd_, data, at, offset) != static_cast<ssize_t>(at)) return from_errno();
    flipped[0] = static_cast<std::uint8_t>(data[at] ^ 0xff);
    if (::pwrite(fd_, flipped, 1, static_cast<off_t>(offset + at)) != 1) return from_errno();
    done = at + 1;
  }
  while (done < len) {
    const ssize_t n = ::pwrite(fd_, src + done, len - done, static_cast<off_t>(offset + done));
    if (n <= 0) return from_errno();
    done += static_cast<std::size_t>(n);
  }
  return PortStatus::ok;
}

PortStatus FileFlash::ensure_open() {
  if (fd_ >= 0) return PortStatus::ok;
  target_ = boot_.inactive();  // after a restart: the slot an interrupted update was using
  return open_target(false);
}

PortStatus FileFlash::read(std::uint32_t offset, std::uint8_t* out, std::size_t len) {
  if (ensure_open() != PortStatus::ok) return PortStatus::error;
  const ssize_t n = ::pread(fd_, out, len, offset);
  return n == static_cast<ssize_t>(len) ? PortStatus::ok : PortStatus::error;
}

PortStatus FileFlash::sync() {
  if (ensure_open() != PortStatus::ok) return PortStatus::error;
  if (cfg_.durable && ::fdatasync(fd_) != 0) return from_errno();
  return PortStatus::ok;
}

PortStatus FileFlash::finish(const proto::Manifest& manifest) {
  if (ensure_open() != PortStatus::ok) return PortStatus::error;
  if (cfg_.durable && ::fsync(fd_) != 0) return from_errno();
  close_target();
  boot_.finish_writing(target_, manifest);
  return save_state() ? PortStatus::ok : from_errno();
}

PortStatus FileFlash::abort() {
  close_target();
  if (target_ == 0 || boot_.record().writing != target_) return PortStatus::ok;
  boot_.abandon_writing(target_);
  ::truncate(slot_path(target_).c_str(), 0);
  return save_state() ? PortStatus::ok : from_errno();
}

PortStatus FileFlash::activate(const proto::Manifest& manifest) {
  return activate_trial(manifest, 1);
}

PortStatus FileFlash::activate_trial(const proto::Manifest& manifest, std::uint32_t max_boots) {
  if (!boot_.holds_finished(boot_.inactive(), manifest.version)) return PortStatus::error;
  boot_.activate_trial(max_boots, manifest.counter);
  return save_state() ? PortStatus::ok : from_errno();
}

PortStatus FileFlash::reject() {
  if (!sim_boot::BootLoader::changes_record(boot_.reject())) return PortStatus::ok;
  return save_state() ? PortStatus::ok : from_errno();
}

PortStatus FileFlash::confirm() {
  if (!sim_boot::BootLoader::changes_record(boot_.confirm())) return PortStatus::ok;
  return save_state() ? PortStatus::ok : from_errno();
}

}  // namespace ota::agent::linux_port
