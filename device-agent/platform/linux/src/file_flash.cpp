#include "ota/agent/linux/file_flash.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <sstream>

#include "ota/agent/linux/atomic_file.hpp"

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

char slot_char(const std::string& v) { return v.empty() ? 0 : v[0]; }

}  // namespace

FileFlash::FileFlash(FileFlashConfig config) : cfg_(std::move(config)) {}

FileFlash::~FileFlash() { close_target(); }

std::string FileFlash::slot_path(char slot) const {
  return cfg_.dir + (slot == 'b' ? "/slot_b.bin" : "/slot_a.bin");
}

bool FileFlash::load_state() {
  std::string text;
  if (!read_whole_file(cfg_.dir + "/boot.state", text)) return false;
  std::istringstream in(text);
  std::string line;
  BootState s;
  while (std::getline(in, line)) {
    const auto eq = line.find('=');
    if (eq == std::string::npos) continue;
    const std::string key = line.substr(0, eq), value = line.substr(eq + 1);
    if (key == "active") s.active = slot_char(value);
    else if (key == "pending") s.pending = slot_char(value);
    else if (key == "trial_booted") s.trial_boots = value == "1" ? 1 : 0;  // layout before bootcount
    else if (key == "trial_boots") s.trial_boots = static_cast<std::uint32_t>(std::stoul(value));
    else if (key == "max_trial_boots") s.max_trial_boots = static_cast<std::uint32_t>(std::stoul(value));
    else if (key == "rejected") s.rejected = value == "1";
    else if (key == "rolled_back") s.rolled_back = value == "1";
    else if (key == "writing") s.writing = slot_char(value);
    else if (key == "version_a") s.version_a = value;
    else if (key == "version_b") s.version_b = value;
    else if (key == "sha256_a") s.sha256_a = value;
    else if (key == "sha256_b") s.sha256_b = value;
    else if (key == "counter") s.counter = static_cast<std::uint32_t>(std::stoul(value));
    else if (key == "pending_counter") s.pending_counter = static_cast<std::uint32_t>(std::stoul(value));
  }
  if (s.active != 'a' && s.active != 'b') return false;
  state_ = s;
  return true;
}

bool FileFlash::save_state() {
  std::ostringstream out;
  auto slot = [](char c) { return c == 0 ? std::string() : std::string(1, c); };
  out << "active=" << slot(state_.active) << "\npending=" << slot(state_.pending)
      << "\ntrial_boots=" << state_.trial_boots << "\nmax_trial_boots=" << state_.max_trial_boots
      << "\nrejected=" << (state_.rejected ? 1 : 0)
      << "\nrolled_back=" << (state_.rolled_back ? 1 : 0) << "\nwriting=" << slot(state_.writing)
      << "\nversion_a=" << state_.version_a << "\nversion_b=" << state_.version_b
      << "\nsha256_a=" << state_.sha256_a << "\nsha256_b=" << state_.sha256_b
      << "\ncounter=" << state_.counter << "\npending_counter=" << state_.pending_counter << "\n";
  const std::string text = out.str();
  return write_file_atomically(cfg_.dir + "/boot.state", text.data(), text.size(), cfg_.durable);
}

PortStatus FileFlash::power_on() {
  close_target();
  reset_requested_ = false;
  ::mkdir(cfg_.dir.c_str(), 0700);
  if (!load_state()) {
    // Factory-fresh device: slot a holds the initial image, confirmed.
    state_ = BootState{};
    state_.version_a = cfg_.initial_version;
    const std::string image = "factory image " + cfg_.initial_version + "\n";
    if (!write_file_atomically(slot_path('a'), image.data(), image.size(), cfg_.durable) ||
        !save_state()) {
      return from_errno();
    }
  }
  if (state_.pending != 0 && !state_.rejected && state_.trial_boots < state_.max_trial_boots) {
    ++state_.trial_boots;  // one more trial boot for the new image
    state_.rolled_back = false;
    running_ = state_.pending;
    if (!save_state()) return from_errno();
  } else if (state_.pending != 0) {
    state_.pending = 0;  // out of trial boots (or rejected) and never confirmed: revert
    state_.trial_boots = 0;
    state_.rejected = false;
    state_.rolled_back = true;
    running_ = state_.active;
    if (!save_state()) return from_errno();
  } else {
    running_ = state_.active;
  }
  return PortStatus::ok;
}

PortStatus FileFlash::read_state(ImageState& out) {
  out = ImageState{};
  out.running_version.assign(version_of(running_).c_str());
  out.running_sha256.assign(sha256_of(running_).c_str());
  out.running_slot = running_;
  out.slot_state = running_ == state_.pending ? proto::SlotState::pending
                   : state_.rolled_back      ? proto::SlotState::rolled_back
                                             : proto::SlotState::confirmed;
  out.previous_version.assign(version_of(other(running_)).c_str());
  out.security_counter = state_.counter;
  out.free_bytes = cfg_.slot_capacity;
  out.trial_boots = running_ == state_.pending ? state_.trial_boots : 0;
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
  if (state_.pending != 0) return PortStatus::error;  // a trial image must be settled first
  if (manifest.size > cfg_.slot_capacity) return PortStatus::no_space;
  target_ = other(running_);
  target_version_ = manifest.version.c_str();
  target_size_ = manifest.size;
  const bool keep = resume && state_.writing == target_;
  if (!keep) {
    // The other slot stops being a fallback image the moment we start overwriting it.
    state_.writing = target_;
    version_of(target_).clear();
    sha256_of(target_).clear();
    state_.rolled_back = false;
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
  target_ = other(running_);  // after a restart: the slot an interrupted update was using
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
  target_version_ = manifest.version.c_str();
  if (cfg_.durable && ::fsync(fd_) != 0) return from_errno();
  close_target();
  state_.writing = 0;
  version_of(target_) = target_version_;
  sha256_of(target_) = manifest.sha256.c_str();
  return save_state() ? PortStatus::ok : from_errno();
}

PortStatus FileFlash::abort() {
  close_target();
  if (target_ == 0 || state_.writing != target_) return PortStatus::ok;
  state_.writing = 0;
  ::truncate(slot_path(target_).c_str(), 0);
  return save_state() ? PortStatus::ok : from_errno();
}

PortStatus FileFlash::activate(const proto::Manifest& manifest) {
  return activate_trial(manifest, 1);
}

PortStatus FileFlash::reject() {
  if (state_.pending == 0 || running_ != state_.pending) return PortStatus::ok;
  state_.rejected = true;
  return save_state() ? PortStatus::ok : from_errno();
}

PortStatus FileFlash::activate_trial(const proto::Manifest& manifest, std::uint32_t max_boots) {
  const char slot = other(running_);
  if (state_.writing == slot || version_of(slot) != manifest.version.c_str()) {
    return PortStatus::error;  // only a finished image may become bootable
  }
  state_.pending = slot;
  state_.trial_boots = 0;
  state_.max_trial_boots = max_boots == 0 ? 1 : max_boots;
  state_.rejected = false;
  state_.pending_counter = manifest.counter;
  return save_state() ? PortStatus::ok : from_errno();
}

PortStatus FileFlash::confirm() {
  if (state_.pending == 0 || running_ != state_.pending) return PortStatus::ok;
  state_.active = state_.pending;
  state_.pending = 0;
  state_.trial_boots = 0;
  state_.rejected = false;
  state_.rolled_back = false;
  if (state_.pending_counter > state_.counter) state_.counter = state_.pending_counter;
  return save_state() ? PortStatus::ok : from_errno();
}

}  // namespace ota::agent::linux_port
