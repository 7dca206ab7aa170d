// What the route files of the HTTP API share: the route table (each route with the least role
// that may use it), the JSON replies, and one registration function per noun.
#pragma once

#include <httplib.h>
#include <nlohmann/json.hpp>

#include <functional>
#include <string>

#include "ota/service/controller.hpp"
#include "ota/service/http_api.hpp"
#include "ota/service/result.hpp"

namespace ota::service {

class ApiServer;

namespace http {

using nlohmann::json;

// Registers routes on the ApiServer, each with the least role that may use it
// (ApiServer::required_role).
class RouteTable {
 public:
  using Handler = httplib::Server::Handler;
  explicit RouteTable(ApiServer& server) : server_(server) {}

  void get(const std::string& pattern, Role role, Handler h);
  void post(const std::string& pattern, Role role, Handler h);
  void put(const std::string& pattern, Role role, Handler h);
  void del(const std::string& pattern, Role role, Handler h);
  // A GET that needs no token (the request admission lets it through unauthenticated).
  void get_without_token(const std::string& pattern, Handler h);

 private:
  ApiServer& server_;
};

// The status code of an error kind.
int http_status(ErrKind k);
void send_json(httplib::Response& res, int status, const json& j);
void send_error(httplib::Response& res, int status, const std::string& msg);
// `r` as JSON with ok_status, or its error with the status of its kind.
template <typename T>
void reply(httplib::Response& res, const Result<T>& r, int ok_status = 200) {
  if (r)
    send_json(res, ok_status, *r);
  else
    send_error(res, http_status(r.kind()), r.error());
}
// A request body that must be a JSON object.
Result<json> parse_body(const std::string& body);
// Who acted, for the event log: the token the request authenticated with. Never anything the
// client states about itself (a header), which anyone holding a token could forge.
std::string actor();

// Authentication, roles, content types, the error and exception replies and the access log:
// everything that runs around the route handlers (request_admission.cpp).
void install_request_admission(ApiServer& server, ApiTokens& tokens);

// The routes, by noun. `ready`: whether the MQTT side is connected (for /health and /status).
void add_ops_routes(RouteTable& routes, Controller& ctl, const std::function<bool()>& ready);
void add_token_routes(RouteTable& routes, ApiTokens& tokens);
void add_image_routes(RouteTable& routes, Controller& ctl);
void add_deployment_routes(RouteTable& routes, Controller& ctl);
void add_device_routes(RouteTable& routes, Controller& ctl);
void add_rollout_routes(RouteTable& routes, Controller& ctl);
void add_key_routes(RouteTable& routes, Controller& ctl);

}  // namespace http
}  // namespace ota::service
