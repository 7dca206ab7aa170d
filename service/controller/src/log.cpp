#include "ota/service/log.hpp"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <mutex>

#include <nlohmann/json.hpp>

namespace ota::service {
namespace {
std::mutex g_log_mu;
std::atomic<LogLevel> g_min{LogLevel::info};
std::atomic<LogFormat> g_format{LogFormat::text};
const char* level_name(LogLevel l) {
  switch (l) {
    case LogLevel::debug: return "DEBUG";
    case LogLevel::info: return "INFO";
    case LogLevel::warn: return "WARN";
    case LogLevel::error: return "ERROR";
  }
  return "?";
}
const char* level_json(LogLevel l) {
  switch (l) {
    case LogLevel::debug: return "debug";
    case LogLevel::info: return "info";
    case LogLevel::warn: return "warn";
    case LogLevel::error: return "error";
  }
  return "?";
}
// 2026-12-01T10:00:00.123Z
std::string utc_timestamp(long long ms) {
  std::time_t secs = static_cast<std::time_t>(ms / 1000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char ts[40];
  const std::size_t n = std::strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
  std::snprintf(ts + n, sizeof ts - n, ".%03dZ", static_cast<int>(ms % 1000));
  return ts;
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
void set_log_format(LogFormat format) { g_format = format; }

bool parse_log_format(const std::string& name, LogFormat* out) {
  if (name == "text") *out = LogFormat::text;
  else if (name == "json") *out = LogFormat::json;
  else return false;
  return true;
}

std::string format_log_line(LogFormat format, long long unix_ms, LogLevel level,
                            const std::string& msg, const LogFields& fields) {
  if (format == LogFormat::json) {
    nlohmann::json j{{"ts", utc_timestamp(unix_ms)}, {"level", level_json(level)}, {"msg", msg}};
    for (const auto& f : fields)
      if (!j.contains(f.first)) j[f.first] = f.second;  // ts, level, msg are not overridden
    // Device-supplied text may be invalid UTF-8: replaced (U+FFFD), never a broken line.
    return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  }
  char head[64];
  std::snprintf(head, sizeof head, "%s %-5s ", utc_timestamp(unix_ms).c_str(), level_name(level));
  std::string line = head + msg;
  for (const auto& f : fields) line += " " + f.first + "=" + f.second;
  return line;
}

void log(LogLevel level, const std::string& msg) { log(level, msg, {}); }

void log(LogLevel level, const std::string& msg, const LogFields& fields) {
  if (level < g_min.load()) return;
  const std::string line = format_log_line(g_format.load(), now_ms(), level, msg, fields) + "\n";
  std::lock_guard<std::mutex> lock(g_log_mu);
  std::fwrite(line.data(), 1, line.size(), stderr);
  std::fflush(stderr);
}

}  // namespace ota::service
