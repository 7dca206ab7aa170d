// Small text helpers shared by the controller's components.
#pragma once

#include <algorithm>
#include <cstddef>
#include <string>
#include <vector>

namespace ota::service {

inline bool contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

inline std::string join(const std::vector<std::string>& v, const char* sep) {
  std::string out;
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (i) out += sep;
    out += v[i];
  }
  return out;
}

// nbytes of randomness (RAND_bytes) as lower-case hex; empty if there is none.
std::string random_hex(std::size_t nbytes);

}  // namespace ota::service
