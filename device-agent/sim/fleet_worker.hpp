// FleetWorker: one ota-devsim worker thread and the devices it owns. It waits on their MQTT
// sockets with epoll (no FD_SETSIZE limit, unlike mosquitto_loop()'s select()) and steps a
// device when its socket is ready or its timer (the agent's tick, the reconnect back-off,
// the CONNACK timeout, keepalive) is due. Everything of a device, from power-on to power-off,
// runs on the worker's thread: the agent core stays single-threaded.
//
// Threads: add() before run(), from the thread that then starts run(); run() on the worker
// thread only. The devices' public atomics may be read from anywhere.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <queue>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "ota/agent/linux/device_runner.hpp"

namespace ota::devsim {

class FleetWorker {
 public:
  using Clock = std::chrono::steady_clock;

  FleetWorker();
  ~FleetWorker();
  FleetWorker(const FleetWorker&) = delete;
  FleetWorker& operator=(const FleetWorker&) = delete;

  // The device is powered on at `power_on_at` (the fleet's connection ramp).
  void add(agent::linux_port::DeviceRunner* device, Clock::time_point power_on_at);
  // Drives the devices until `stop` is set, then powers them off cleanly (offline message,
  // DISCONNECT) and returns. False when a device failed (the error is printed); the others
  // are powered off then too.
  bool run(const std::atomic<bool>& stop);

 private:
  struct Slot {
    agent::linux_port::DeviceRunner* device = nullptr;
    int fd = -1;              // registered with epoll, -1: none
    std::uint32_t events = 0;  // what it is registered for
    std::uint64_t epoch = 0;   // the device's socket_epoch() when registered
    Clock::time_point due;     // when it must be stepped at the latest
    bool started = false;  // start() called
    bool done = false;     // finished (or failed): counted out of unfinished_
  };
  using Timer = std::pair<Clock::time_point, std::size_t>;  // due, slot index

  bool step(std::size_t slot, bool readable, bool writable);
  void watch(std::size_t slot);
  void schedule(std::size_t slot, Clock::time_point due);
  bool step_due(Clock::time_point now);
  void request_stop_all();
  int wait_timeout_ms(Clock::time_point now) const;

  int epoll_fd_ = -1;
  std::vector<Slot> slots_;
  // Timers, earliest first; an entry whose time differs from its slot's `due` is stale.
  std::priority_queue<Timer, std::vector<Timer>, std::greater<Timer>> timers_;
  // Which slot registered a descriptor: a socket closed by libmosquitto leaves epoll by
  // itself, and its number may come back for another device of this worker.
  std::unordered_map<int, std::size_t> fd_owner_;
  std::size_t unfinished_ = 0;
};

}  // namespace ota::devsim
