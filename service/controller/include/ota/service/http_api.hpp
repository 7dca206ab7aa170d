// HTTP API of the controller (cpp-httplib, JSON). See service/API.md.
#pragma once

#include <functional>
#include <memory>
#include <thread>
#include <string>

#include "ota/service/controller.hpp"
#include "ota/service/result.hpp"

namespace httplib {
class Server;
}

namespace ota::service {

constexpr std::size_t kMaxBodyBytes = 256u * 1024u * 1024u;

struct HostPort {
  std::string host;
  int port = 0;
};
// Parses "HOST:PORT" or "[V6]:PORT" (PORT 0..65535; 0 = pick a free port).
Result<HostPort> parse_host_port(const std::string& s);
bool is_loopback_host(const std::string& host);

// Request validation helpers (unit-tested).
Result<std::uint32_t> parse_u32(const std::string& name, const std::string& value,
                                std::uint32_t min, std::uint32_t max);
struct DeployRequest {
  std::string image, kind, target;
};
Result<DeployRequest> parse_deploy_request(const std::string& body);

// API token (bearer). Reads the token from `path`; if the file does not exist, creates it
// (O_EXCL, mode 0600) with 32 random bytes as 64 hex characters. Surrounding whitespace is
// ignored; an empty or unreadable file is an error.
Result<std::string> load_or_create_api_token(const std::string& path);
// Constant-time comparison (the time does not depend on where the strings differ).
bool token_equal(const std::string& a, const std::string& b);
// The media type of a Content-Type header value, lower-case, without parameters.
std::string media_type(const std::string& content_type);

class HttpApi {
 public:
  // `ready` reports whether the MQTT side is connected and subscribed (for /health).
  // Every request but GET /api/v1/health must carry `Authorization: Bearer <api_token>`.
  HttpApi(Controller& ctl, std::function<bool()> ready, std::string api_token);
  ~HttpApi();
  HttpApi(const HttpApi&) = delete;
  HttpApi& operator=(const HttpApi&) = delete;

  // Binds and starts serving on a background thread; returns the bound port.
  Result<int> start(const std::string& host, int port);
  void stop();

 private:
  void routes();
  Controller& ctl_;
  std::function<bool()> ready_;
  std::string token_;
  std::unique_ptr<httplib::Server> srv_;
  std::unique_ptr<std::thread> thread_;
};

}  // namespace ota::service
