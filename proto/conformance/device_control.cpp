#include "device_control.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>

namespace ota::conformance {

DeviceControl::DeviceControl(DeviceControlSettings settings) : settings_(std::move(settings)) {}

DeviceControl::~DeviceControl() { stop(); }

bool DeviceControl::can_restart() const {
  return !settings_.device_cmd.empty() || !settings_.reset_cmd.empty() || settings_.prompt;
}

std::string DeviceControl::log_path() const {
  return settings_.device_log.empty() ? settings_.work_dir + "/device.log" : settings_.device_log;
}

bool DeviceControl::alive(int* code) {
  if (pid_ < 0) {
    if (code != nullptr) *code = exit_code_;
    return false;
  }
  int status = 0;
  if (::waitpid(pid_, &status, WNOHANG) == pid_) {
    exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    pid_ = -1;
    if (code != nullptr) *code = exit_code_;
    return false;
  }
  return true;
}

// The DUT runs in a process group of its own (its pid), so a shell command and the device
// program it starts are signalled together.
void DeviceControl::signal_and_reap(int sig, int grace_ms) {
  if (pid_ < 0) return;
  ::kill(-pid_, sig);
  const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(grace_ms);
  for (;;) {
    int status = 0;
    const pid_t r = ::waitpid(pid_, &status, WNOHANG);
    if (r == pid_ || (r < 0 && errno == ECHILD)) break;
    if (std::chrono::steady_clock::now() >= end) {
      ::kill(-pid_, SIGKILL);
      ::waitpid(pid_, &status, 0);
      break;
    }
    ::poll(nullptr, 0, 10);  // waiting for the child to end: nothing to wake us
  }
  ::kill(-pid_, SIGKILL);  // anything of the group left behind by the shell
  pid_ = -1;
}

void DeviceControl::stop() { signal_and_reap(SIGTERM, 5000); }

bool DeviceControl::spawn(std::string& error) {
  std::string cmd = settings_.device_cmd;
  for (std::size_t at = cmd.find("{state}"); at != std::string::npos;
       at = cmd.find("{state}", at + state_dir_.size())) {
    cmd.replace(at, 7, state_dir_);
  }
  const std::string log = log_path();
  const int log_fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (log_fd < 0) {
    error = "cannot open the device log " + log + ": " + std::strerror(errno);
    return false;
  }
  const pid_t pid = ::fork();
  if (pid < 0) {
    error = std::string("fork: ") + std::strerror(errno);
    ::close(log_fd);
    return false;
  }
  if (pid == 0) {
    ::setpgid(0, 0);
    ::dup2(log_fd, 1);
    ::dup2(log_fd, 2);
    const int null_fd = ::open("/dev/null", O_RDONLY);
    if (null_fd >= 0) ::dup2(null_fd, 0);
    ::setenv("OTA_CONFORMANCE_STATE", state_dir_.c_str(), 1);
    ::execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  ::setpgid(pid, pid);  // also from here: no signal may race the child's own setpgid
  ::close(log_fd);
  pid_ = pid;
  return true;
}

bool DeviceControl::restart(Restart kind, std::string& error) {
  if (!settings_.device_cmd.empty()) {
    if (kind == Restart::power_cut) {
      signal_and_reap(SIGKILL, 2000);
    } else {
      stop();
      state_dir_ = settings_.work_dir + "/state-" + std::to_string(++fresh_starts_);
      if (::mkdir(state_dir_.c_str(), 0700) != 0 && errno != EEXIST) {
        error = "cannot create the state directory " + state_dir_ + ": " + std::strerror(errno);
        return false;
      }
    }
    return spawn(error);
  }
  const char* what = kind == Restart::power_cut ? "power-cut" : "fresh";
  if (!settings_.reset_cmd.empty()) {
    ::setenv("OTA_CONFORMANCE_RESET", what, 1);
    const int rc = std::system(settings_.reset_cmd.c_str());
    ::unsetenv("OTA_CONFORMANCE_RESET");
    if (rc != 0) {
      error = "--reset-cmd (" + std::string(what) + ") exited with status " + std::to_string(rc);
      return false;
    }
    return true;
  }
  if (settings_.prompt) {
    std::cerr << (kind == Restart::power_cut
                      ? "\n>>> Cut the power of the device (keep its flash) and power it on again, "
                        "then press Enter: "
                      : "\n>>> Erase the device's update state and agent record (factory state), "
                        "power it on, then press Enter: ")
              << std::flush;
    std::string line;
    if (!std::getline(std::cin, line)) {
      error = "no answer on the terminal (stdin closed)";
      return false;
    }
    return true;
  }
  error = "no device command";
  return false;
}

}  // namespace ota::conformance
