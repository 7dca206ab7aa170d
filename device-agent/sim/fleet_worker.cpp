#include "fleet_worker.hpp"

#include <sys/epoll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <stdexcept>

namespace ota::devsim {
namespace {

// The wait is capped so that the stop flag is seen within this time without a signal.
constexpr int kMaxWaitMs = 100;
constexpr int kEventsPerWait = 256;
constexpr int kPowerOnsPerTurn = 4;

}  // namespace

FleetWorker::FleetWorker() : epoll_fd_(::epoll_create1(EPOLL_CLOEXEC)) {
  if (epoll_fd_ < 0) throw std::runtime_error(std::string("epoll_create1: ") + std::strerror(errno));
}

FleetWorker::~FleetWorker() { ::close(epoll_fd_); }

void FleetWorker::add(agent::linux_port::DeviceRunner* device, Clock::time_point power_on_at) {
  Slot s;
  s.device = device;
  slots_.push_back(s);
  schedule(slots_.size() - 1, power_on_at);
  ++unfinished_;
}

void FleetWorker::schedule(std::size_t slot, Clock::time_point due) {
  slots_[slot].due = due;
  timers_.emplace(due, slot);
}

// Keeps the epoll registration in line with the device's socket and what it waits for.
// Called after every step. A reconnect or a power cycle may give a new socket the number of
// the old one, whose registration the kernel dropped at close: then (a new socket epoch) the
// registration is re-asserted (MOD, else ADD). The same socket waiting for the same events
// keeps its registration (most steps: a system call per step was a tenth of the simulator's
// CPU at 1,000 devices).
void FleetWorker::watch(std::size_t slot) {
  Slot& s = slots_[slot];
  const int fd = s.device->socket();
  const std::uint32_t events = EPOLLIN | (s.device->wants_write() ? EPOLLOUT : 0u);
  const std::uint64_t epoch = s.device->socket_epoch();
  if (fd >= 0 && fd == s.fd && events == s.events && epoch == s.epoch) return;
  if (s.fd >= 0 && s.fd != fd) {
    auto owner = fd_owner_.find(s.fd);
    if (owner != fd_owner_.end() && owner->second == slot) {
      ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, s.fd, nullptr);  // fails harmlessly if closed
      fd_owner_.erase(owner);
    }
    s.fd = -1;
  }
  if (fd < 0) return;
  auto [owner, inserted] = fd_owner_.try_emplace(fd, slot);
  if (!inserted && owner->second != slot) {
    slots_[owner->second].fd = -1;  // that device's socket was closed; the number is ours now
    owner->second = slot;
  }
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = slot;
  if (::epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, fd, &ev) != 0 && errno == ENOENT) {
    ::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev);
  }
  s.fd = fd;
  s.events = events;
  s.epoch = epoch;
}

bool FleetWorker::step(std::size_t slot, bool readable, bool writable) {
  Slot& s = slots_[slot];
  if (s.done) return true;
  std::string error;
  if (!s.started) {
    s.started = true;
    if (!s.device->start(error)) {
      std::fprintf(stderr, "ota-devsim: %s: %s\n", s.device->options().device_id.c_str(), error.c_str());
      s.done = true;
      --unfinished_;
      return false;
    }
  }
  Clock::time_point next;
  const bool ok = s.device->step(readable, writable, next, error);
  if (!ok) {
    std::fprintf(stderr, "ota-devsim: %s: %s\n", s.device->options().device_id.c_str(), error.c_str());
  }
  watch(slot);
  if (s.device->finished()) {
    s.done = true;
    --unfinished_;
    return ok;
  }
  schedule(slot, next);
  return ok;
}

// Steps every device whose time has come, but powers on at most kPowerOnsPerTurn devices
// between two looks at the sockets: a power-on costs milliseconds of TLS setup, and a worker
// that fell behind the --connect-rate must not leave the connections it already has (TLS
// handshakes, CONNACKs, keepalive) unserved for seconds, or they time out and reconnect: the
// ramp slows down to what the CPU gives instead. False when a device failed.
bool FleetWorker::step_due(Clock::time_point now) {
  bool ok = true;
  int power_ons = 0;
  std::vector<std::size_t> later;
  while (!timers_.empty() && timers_.top().first <= now) {
    const auto [due, slot] = timers_.top();
    timers_.pop();
    if (due != slots_[slot].due) continue;  // rescheduled since
    if (!slots_[slot].started && ++power_ons > kPowerOnsPerTurn) {
      later.push_back(slot);
      continue;
    }
    ok = step(slot, false, false) && ok;
  }
  for (std::size_t slot : later) schedule(slot, now);
  return ok;
}

int FleetWorker::wait_timeout_ms(Clock::time_point now) const {
  if (timers_.empty()) return kMaxWaitMs;
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(timers_.top().first - now);
  // Rounded up, so that a timer 0.4 ms away does not spin through zero-timeout waits.
  return static_cast<int>(std::clamp<std::chrono::milliseconds::rep>(left.count() + 1, 0, kMaxWaitMs));
}

// A device not yet started has nothing to say goodbye on; the others power off cleanly.
void FleetWorker::request_stop_all() {
  const auto now = Clock::now();
  for (std::size_t i = 0; i < slots_.size(); ++i) {
    Slot& s = slots_[i];
    if (s.done) continue;
    if (!s.started) {
      s.done = true;
      s.due = Clock::time_point::max();
      --unfinished_;
      continue;
    }
    s.device->request_stop();
    schedule(i, now);
  }
}

bool FleetWorker::run(const std::atomic<bool>& stop) {
  bool ok = true, stopping = false;
  epoll_event events[kEventsPerWait];
  while (unfinished_ > 0) {
    if (!stopping && (stop || !ok)) {
      stopping = true;
      request_stop_all();
    }
    const int n = ::epoll_wait(epoll_fd_, events, kEventsPerWait, wait_timeout_ms(Clock::now()));
    for (int i = 0; i < n; ++i) {
      const std::size_t slot = events[i].data.u64;
      const std::uint32_t ev = events[i].events;
      ok = step(slot, (ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) != 0, (ev & EPOLLOUT) != 0) && ok;
    }
    ok = step_due(Clock::now()) && ok;
  }
  return ok;
}

}  // namespace ota::devsim
