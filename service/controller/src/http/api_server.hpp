// The HTTP server under HttpApi: httplib::Server with the ConnectionGate in front of it, the
// role each route needs, and the context of the request a worker thread is running.
#pragma once

#include <httplib.h>

#include <atomic>
#include <optional>
#include <regex>
#include <string>
#include <vector>

#include "connection_gate.hpp"
#include "ota/service/http_api.hpp"

namespace ota::service {

namespace http {

// What the pre-routing handler learned about a request, for its route handler and for
// ApiServer::serve_one. All three run on the worker thread that runs the request, one request
// at a time, so it is per thread.
struct RequestContext {
  std::optional<ApiTokens::Identity> caller;
  bool close_after_response = false;  // the request's body was not read: the stream is unusable
  bool pretty = false;                // ?pretty=1: indented JSON replies
};
// The context of the request this thread is running.
RequestContext& current_request();

}  // namespace http

// httplib::Server with the ConnectionGate in front of it and each route's required role.
class ApiServer : public httplib::Server {
 public:
  explicit ApiServer(const HttpLimits& limits);
  ~ApiServer() override { gate_.stop(); }

  Status start_gate() { return gate_.start(); }
  void stop_gate() { gate_.stop(); }

  // httplib listens with a backlog of 5 (compiled into libcpp-httplib); listen() on a listening
  // socket sets a new backlog.
  void raise_backlog();

  // role nullopt: a route that needs no token (GET /api/v1/health, the dashboard's files).
  // api false: not part of the API (the dashboard's files), so not in routes() and not in the
  // OpenAPI description.
  void add_rule(const std::string& method, const std::string& pattern, std::optional<Role> role,
                bool api = true) {
    rules_.push_back({method, pattern, std::regex(pattern), role, api});
  }
  // The role a request needs, by the route it goes to (httplib matches the same patterns in
  // the same order); nullopt when no route matches (it gets a 404 or 405).
  std::optional<Role> required_role(const std::string& method, const std::string& path) const;
  // Whether a route serves `method` on `path` (HEAD: the GET route).
  bool has_route(const std::string& method, const std::string& path) const;
  // Whether the route of `method` on `path` needs no token.
  bool is_public(const std::string& method, const std::string& path) const;
  // The methods some route serves `path` with ("GET, HEAD, DELETE"), for the Allow header of a
  // 405; empty when no route has this path (a 404).
  std::string allowed_methods(const std::string& path) const;
  std::vector<HttpApi::Route> routes() const;

 private:
  struct Rule {
    std::string method;
    std::string source;  // the pattern as registered
    std::regex pattern;
    std::optional<Role> role;
    bool api = true;
  };

  // httplib calls this for every accepted socket (on the accept thread, see InlineTaskQueue).
  bool process_and_close_socket(::socket_t sock) override {
    gate_.admit(sock);
    return true;
  }

  bool serve_one(http::Connection& c);

  const HttpLimits limits_;
  http::ConnectionGate gate_;
  std::vector<Rule> rules_;
  std::atomic<int> listen_fd_{-1};
};

}  // namespace ota::service
