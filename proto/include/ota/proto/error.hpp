// Error type shared by every decoder and encoder of the wire protocol.
// No exceptions cross this API: callers get an Error naming what was wrong.
#pragma once

#include <cstdint>

namespace ota::proto {

enum class Errc : std::uint8_t {
  ok = 0,
  truncated,         // input ended before the message did
  bad_magic,         // binary frame does not start with the frame magic
  unsupported_version,  // protocol version "v" or frame version we do not speak
  bad_json,          // not well-formed JSON, or nesting/token limits exceeded
  wrong_type,        // "type" is not the one expected for this topic/decoder
  missing_field,     // a required field is absent
  bad_field_type,    // a field has the wrong JSON type
  field_too_long,    // a string/array exceeds its compile-time limit
  bad_value,         // a field has a value outside its documented range/format
  crc_mismatch,      // chunk payload CRC32 does not match its header
  buffer_too_small,  // encoder output buffer cannot hold the message
};

// `field` names the offending field (dotted path, e.g. "manifest.sha256") or
// the part of a frame; it always points to a string literal.
struct Error {
  Errc code = Errc::ok;
  const char* field = "";

  constexpr bool ok() const { return code == Errc::ok; }
  constexpr explicit operator bool() const { return code != Errc::ok; }
};

constexpr Error kOk{};

// Stable lower-case name of an error code, e.g. "missing_field".
const char* errc_name(Errc code);

}  // namespace ota::proto
