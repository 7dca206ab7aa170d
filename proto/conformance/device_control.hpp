// How the kit drives the life of the device under test (DUT): it cannot reboot a board by
// itself, so it is told how.
//
//  --device-cmd CMD   the kit starts the DUT itself: `/bin/sh -c CMD` in a process group of
//                     its own, output appended to the device log. Every "{state}" in CMD is
//                     replaced by a state directory, also given as $OTA_CONFORMANCE_STATE: the
//                     DUT keeps everything it persists (flash, state record, counters) there.
//                     A fresh start gets a new empty directory (factory state); a power cut is
//                     SIGKILL to the process group and a start with the same directory. The
//                     kit stops it with SIGTERM to its process group (its own pid), SIGKILL
//                     after 5 s. Reboots the DUT makes by itself (into a new image) happen
//                     inside its process, as ota-agent and ota-devsim do.
//  --reset-cmd CMD    a real board: the kit runs `/bin/sh -c CMD` and waits for it, with
//                     $OTA_CONFORMANCE_RESET = power-cut (cut the power, keep the flash) or
//                     fresh (erase the update state and the agent's record, then power on).
//  --prompt-reset     the kit asks on the terminal and waits for Enter.
//
// Without any of them the cases that need a restart are reported as skipped. Threads: the
// kit's main thread only.
#pragma once

#include <sys/types.h>

#include <string>

namespace ota::conformance {

enum class Restart { power_cut, fresh };

struct DeviceControlSettings {
  std::string device_cmd;
  std::string reset_cmd;
  bool prompt = false;
  std::string work_dir;  // state directories and the device log live here
  std::string device_log;  // empty: work_dir/device.log
};

class DeviceControl {
 public:
  explicit DeviceControl(DeviceControlSettings settings);
  ~DeviceControl();  // stops a DUT it started
  DeviceControl(const DeviceControl&) = delete;
  DeviceControl& operator=(const DeviceControl&) = delete;

  bool can_restart() const;
  // Whether the kit starts the DUT itself (--device-cmd).
  bool owns_process() const { return !settings_.device_cmd.empty(); }
  // Starts (or restarts) the DUT the way `kind` says. False with `error`.
  bool restart(Restart kind, std::string& error);
  // Ends a DUT the kit started (SIGTERM to its process group, SIGKILL after 5 s).
  void stop();
  // For a DUT the kit started: false once its process has ended (*code: exit status).
  bool alive(int* code = nullptr);
  const std::string& state_dir() const { return state_dir_; }
  std::string log_path() const;

 private:
  bool spawn(std::string& error);
  void signal_and_reap(int sig, int grace_ms);
  DeviceControlSettings settings_;
  pid_t pid_ = -1;
  std::string state_dir_;
  int fresh_starts_ = 0;
  int exit_code_ = -1;
};

}  // namespace ota::conformance
