#include "ota/proto/error.hpp"

namespace ota::proto {

const char* errc_name(Errc code) {
  switch (code) {
    case Errc::ok: return "ok";
    case Errc::truncated: return "truncated";
    case Errc::bad_magic: return "bad_magic";
    case Errc::unsupported_version: return "unsupported_version";
    case Errc::bad_json: return "bad_json";
    case Errc::wrong_type: return "wrong_type";
    case Errc::missing_field: return "missing_field";
    case Errc::bad_field_type: return "bad_field_type";
    case Errc::field_too_long: return "field_too_long";
    case Errc::bad_value: return "bad_value";
    case Errc::crc_mismatch: return "crc_mismatch";
    case Errc::buffer_too_small: return "buffer_too_small";
  }
  return "unknown";
}

}  // namespace ota::proto
