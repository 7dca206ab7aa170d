// Parsing of request and command-line values: listen addresses, numbers, deploy requests,
// media types.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cstdlib>

#include "ota/proto/topics.hpp"
#include "ota/service/http_api.hpp"

namespace ota::service {

using nlohmann::json;

Result<HostPort> parse_host_port(const std::string& s) {
  HostPort hp;
  std::string port;
  if (!s.empty() && s[0] == '[') {
    auto close = s.find(']');
    if (close == std::string::npos || close + 1 >= s.size() || s[close + 1] != ':')
      return invalid_err("'" + s + "' is not [HOST]:PORT");
    hp.host = s.substr(1, close - 1);
    port = s.substr(close + 2);
  } else {
    auto colon = s.rfind(':');
    if (colon == std::string::npos) return invalid_err("'" + s + "' is not HOST:PORT");
    hp.host = s.substr(0, colon);
    port = s.substr(colon + 1);
  }
  if (hp.host.empty()) return invalid_err("'" + s + "' has an empty host");
  auto p = parse_u32("port", port, 0, 65535);
  if (!p) return invalid_err("'" + s + "': " + p.error());
  hp.port = static_cast<int>(*p);
  return hp;
}

bool is_loopback_host(const std::string& host) {
  return host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

Result<std::uint32_t> parse_u32(const std::string& name, const std::string& value,
                                std::uint32_t min, std::uint32_t max) {
  if (value.empty() || value.size() > 10 || value.find_first_not_of("0123456789") != std::string::npos)
    return invalid_err(name + " '" + value + "' is not a non-negative integer");
  unsigned long long v = std::strtoull(value.c_str(), nullptr, 10);
  if (v < min || v > max)
    return invalid_err(name + " " + value + " out of range " + std::to_string(min) + ".." +
                       std::to_string(max));
  return static_cast<std::uint32_t>(v);
}

Result<DeployRequest> parse_deploy_request(const std::string& body) {
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object())
    return invalid_err("body must be a JSON object like {\"image\": ID, \"device\": ID}");
  DeployRequest r;
  auto it = j.find("image");
  if (it == j.end() || !it->is_string() || it->get<std::string>().empty())
    return invalid_err("\"image\" (image id or version, a string) is required");
  r.image = it->get<std::string>();
  const bool has_dev = j.contains("device"), has_grp = j.contains("group");
  if (has_dev == has_grp) return invalid_err("give exactly one of \"device\" or \"group\"");
  r.kind = has_dev ? "device" : "group";
  const json& t = j[r.kind];
  if (!t.is_string()) return invalid_err("\"" + r.kind + "\" must be a string");
  r.target = t.get<std::string>();
  if (!proto::valid_id(r.target.data(), r.target.size()))
    return invalid_err(r.kind + " '" + r.target +
                       "' is not a valid id (1-64 chars of A-Z a-z 0-9 . _ -)");
  for (auto kv = j.begin(); kv != j.end(); ++kv)
    if (kv.key() != "image" && kv.key() != "device" && kv.key() != "group")
      return invalid_err("unknown field \"" + kv.key() + "\"");
  return r;
}

std::string media_type(const std::string& content_type) {
  std::string t = content_type.substr(0, content_type.find(';'));
  const auto b = t.find_first_not_of(" \t");
  if (b == std::string::npos) return {};
  t = t.substr(b, t.find_last_not_of(" \t") - b + 1);
  std::transform(t.begin(), t.end(), t.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return t;
}

}  // namespace ota::service
