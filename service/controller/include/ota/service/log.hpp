// Timestamped logging to stderr (thread-safe, one line per call).
#pragma once

#include <string>

namespace ota::service {

enum class LogLevel { debug, info, warn, error };

void log(LogLevel level, const std::string& msg);
inline void log_info(const std::string& msg) { log(LogLevel::info, msg); }
inline void log_warn(const std::string& msg) { log(LogLevel::warn, msg); }
inline void log_error(const std::string& msg) { log(LogLevel::error, msg); }
void set_log_level(LogLevel min_level);

// Wall clock helpers.
long long now_ms();
long long now_s();
// Monotonic milliseconds (timeouts, rate limits): never jumps with the wall clock.
long long steady_now_ms();

}  // namespace ota::service
