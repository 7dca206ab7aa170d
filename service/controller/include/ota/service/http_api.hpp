// HTTP API of the controller (cpp-httplib, JSON). See service/API.md.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "ota/service/controller.hpp"
#include "ota/service/result.hpp"
#include "ota/service/store.hpp"

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

// The bootstrap API token (bearer, role admin). Reads the token from `path`; if the file does
// not exist, creates it (O_EXCL, mode 0600) with 32 random bytes as 64 hex characters.
// Surrounding whitespace is ignored; an empty or unreadable file is an error, and so is a file
// group or others may access (anyone who reads it has admin access to the API).
Result<std::string> load_or_create_api_token(const std::string& path);
// Constant-time comparison (the time does not depend on where the strings differ).
bool token_equal(const std::string& a, const std::string& b);
// The media type of a Content-Type header value, lower-case, without parameters.
std::string media_type(const std::string& content_type);
// Lower-case hex SHA-256 of `data`.
std::string sha256_hex(const std::string& data);

// What a token may do; each role may do everything the roles before it may.
//   read_only: every GET (devices, rollouts, events, /metrics, ...) except the two below;
//   operator_: + upload images, deploy, cancel, rollouts and their actions, device tags;
//   admin:     + API tokens, the database backup (it holds everything), reset-seq, key sets
//              (PUT /api/v1/keys), device revocation.
enum class Role { read_only = 0, operator_ = 1, admin = 2 };
const char* role_name(Role r);  // "read-only", "operator", "admin"
std::optional<Role> parse_role(const std::string& name);
// A token name: 1-64 of A-Z a-z 0-9 . _ @ -
bool valid_token_name(const std::string& name);

// The name of the token in --api-token-file: an admin that cannot be revoked through the API.
constexpr const char* kBootstrapTokenName = "bootstrap";

// The API's bearer tokens: the bootstrap token and the named tokens of the api_tokens table,
// of which only the SHA-256 is stored. Thread-safe. It has its own connection to the
// controller's database (the Controller's Store is private to the Controller and not
// thread-safe); SQLite in WAL mode serialises the two writers, and token writes are rare. The
// named tokens are cached in memory: authentication does not touch the database, a create or
// revoke takes effect for the next request.
class ApiTokens {
 public:
  struct Identity {
    std::string name;
    Role role = Role::read_only;
  };
  struct Created {
    ApiTokenRec token;
    std::string secret;  // shown once, never stored
  };

  // db_path: the controller's database, already opened (checked, migrated) by the Controller.
  static Result<std::unique_ptr<ApiTokens>> open(const std::string& db_path,
                                                 const std::string& bootstrap_secret);

  std::optional<Identity> authenticate(const std::string& secret) const;
  // A new token with a random secret. `actor` ("token:NAME") goes to the event log.
  // invalid: bad name; conflict: the name is taken (also "bootstrap").
  Result<Created> create(const std::string& name, Role role, const std::string& actor);
  // not_found: no such token; conflict: the bootstrap token.
  Status revoke(const std::string& name, const std::string& actor);
  std::vector<ApiTokenRec> list() const;

 private:
  ApiTokens() = default;
  std::mutex store_mu_;  // store_ (not thread-safe); held for a create or revoke
  Store store_;
  mutable std::mutex mu_;  // the members below, which every request reads
  std::string bootstrap_sha256_;
  std::map<std::string, ApiTokenRec> by_sha256_;
};

// How the API protects itself from slow or idle clients (slowloris). A connection costs no
// worker thread until it has sent a complete request header: until then it waits in one
// poll() loop, which closes it when the header is not complete within header_timeout.
struct HttpLimits {
  // Threads that run requests (handlers and request bodies).
  int workers = 16;
  // Open connections at most; beyond it the connection that has waited longest for its
  // request header is closed (a new client is served, an idle one goes first).
  std::size_t max_connections = 256;
  // From connecting (or from the previous response on a kept-alive connection) to the end of
  // the request header; also how long an idle kept-alive connection stays open.
  std::chrono::milliseconds header_timeout{10000};
  // Longest pause while reading a request body or writing a response.
  std::chrono::milliseconds read_timeout{10000};
  std::chrono::milliseconds write_timeout{10000};
  // Request line and headers at most (431 beyond).
  std::size_t max_header_bytes = 32 * 1024;
  // Requests on one connection before the server closes it.
  int keep_alive_max_requests = 100;
  // Listen backlog (cpp-httplib hard-codes 5; the socket is put in listen state again).
  int listen_backlog = 512;
};

class ApiServer;

class HttpApi {
 public:
  // `ready` reports whether the MQTT side is connected and subscribed (for /health).
  // Every request but GET /api/v1/health must carry `Authorization: Bearer <token>` of one of
  // `tokens`, whose role must allow the request (see Role).
  // `web_root`: the directory of the web dashboard's files (service/web/), served at / and
  // /ui/ without a token; empty: no dashboard.
  HttpApi(Controller& ctl, std::function<bool()> ready, ApiTokens& tokens,
          HttpLimits limits = {}, std::string web_root = {});
  ~HttpApi();
  HttpApi(const HttpApi&) = delete;
  HttpApi& operator=(const HttpApi&) = delete;

  // Binds and starts serving on a background thread; returns the bound port.
  Result<int> start(const std::string& host, int port);
  void stop();

  // Every route the server serves, as registered (method and path pattern, an ECMAScript
  // regex such as "/api/v1/devices/([^/]+)"): what the OpenAPI description must cover.
  struct Route {
    std::string method;
    std::string pattern;
    std::string role;  // the least role that may use it (role_name), "none": no token needed
  };
  std::vector<Route> routes() const;

 private:
  void add_routes();
  Controller& ctl_;
  std::function<bool()> ready_;
  ApiTokens& tokens_;
  std::string web_root_;
  std::unique_ptr<ApiServer> srv_;
  std::unique_ptr<std::thread> thread_;
};

}  // namespace ota::service
