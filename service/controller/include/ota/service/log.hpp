// Timestamped logging to stderr (thread-safe, one line per call). Text (the default):
//   2026-12-01T10:00:00.123Z INFO  msg key=value
// JSON (set_log_format(LogFormat::json), `ota-controller --log-format json`): one object per
// line, {"ts":"2026-12-01T10:00:00.123Z","level":"info","msg":"...","key":"value"}, invalid
// UTF-8 replaced, for journald/Loki/Elasticsearch shippers.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace ota::service {

enum class LogLevel { debug, info, warn, error };
enum class LogFormat { text, json };
// Structured fields of one line (JSON: extra members; text: " key=value" after the message).
using LogFields = std::vector<std::pair<std::string, std::string>>;

void log(LogLevel level, const std::string& msg);
void log(LogLevel level, const std::string& msg, const LogFields& fields);
inline void log_info(const std::string& msg) { log(LogLevel::info, msg); }
inline void log_info(const std::string& msg, const LogFields& fields) { log(LogLevel::info, msg, fields); }
inline void log_warn(const std::string& msg) { log(LogLevel::warn, msg); }
inline void log_error(const std::string& msg) { log(LogLevel::error, msg); }
void set_log_level(LogLevel min_level);
void set_log_format(LogFormat format);
// "text" | "json" (what --log-format accepts); false for anything else.
bool parse_log_format(const std::string& name, LogFormat* out);
// One line as log() writes it (no newline); for tests.
std::string format_log_line(LogFormat format, long long unix_ms, LogLevel level,
                            const std::string& msg, const LogFields& fields);

// Wall clock helpers.
long long now_ms();
long long now_s();
// Monotonic milliseconds (timeouts, rate limits): never jumps with the wall clock.
long long steady_now_ms();

}  // namespace ota::service
