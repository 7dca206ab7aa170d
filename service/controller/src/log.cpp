#include "ota/service/log.hpp"

#include <chrono>
#include <cstdio>
#include <ctime>
#include <mutex>

namespace ota::service {
namespace {
std::mutex g_log_mu;
LogLevel g_min = LogLevel::info;
const char* level_name(LogLevel l) {
  switch (l) {
    case LogLevel::debug: return "DEBUG";
    case LogLevel::info: return "INFO";
    case LogLevel::warn: return "WARN";
    case LogLevel::error: return "ERROR";
  }
  return "?";
}
}  // namespace

long long now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}
long long now_s() { return now_ms() / 1000; }
long long steady_now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

void set_log_level(LogLevel min_level) { g_min = min_level; }

void log(LogLevel level, const std::string& msg) {
  if (level < g_min) return;
  long long ms = now_ms();
  std::time_t secs = static_cast<std::time_t>(ms / 1000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char ts[32];
  std::strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
  std::lock_guard<std::mutex> lock(g_log_mu);
  std::fprintf(stderr, "%s.%03dZ %-5s %s\n", ts, static_cast<int>(ms % 1000), level_name(level),
               msg.c_str());
  std::fflush(stderr);
}

}  // namespace ota::service
