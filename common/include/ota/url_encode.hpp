// Percent-encoding of one URL path segment or query key/value, shared by otactl (ids in the
// paths it requests) and the controller's HTTP API (the next-page links it writes).
#pragma once

#include <string>

namespace ota {

// Keeps RFC 3986's unreserved characters (A-Z a-z 0-9 - _ . ~) and encodes every other byte
// as %XX: safe in a path segment and in a query key or value ('/', '&', '=', '+', '%', space).
inline std::string url_encode(const std::string& s) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(s.size());
  for (const unsigned char c : s) {
    const bool unreserved = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                            c == '-' || c == '_' || c == '.' || c == '~';
    if (unreserved) {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

}  // namespace ota
