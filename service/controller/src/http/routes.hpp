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
// (ApiServer::required_role). Every route is registered here and nowhere else, so the
// server's list of routes (HttpApi::routes) is exactly what it serves.
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
  // A GET of the web dashboard's files: no token (the page holds no secret; it signs in with
  // one), and not part of the API (HttpApi::routes, the OpenAPI description).
  void page(const std::string& pattern, Handler h);

 private:
  ApiServer& server_;
};

// The status code of an error kind.
int http_status(ErrKind k);
// The error object's `code` for an HTTP status ("not_found", "conflict", ...).
const char* error_code(int status);
// Compact JSON, or indented when the request asked for it (?pretty=1).
void send_json(httplib::Response& res, int status, const json& j);
// The one error object of the API (API.md, Errors):
// {"error": {"code": "not_found", "message": "unknown device d9", "field": "limit"}}
// `field` only when a request field or query parameter is at fault.
void send_error(httplib::Response& res, int status, const std::string& msg,
                const std::string& field = "");
void send_error(httplib::Response& res, const Err& e);
// `r` as JSON with ok_status, or its error with the status of its kind.
template <typename T>
void reply(httplib::Response& res, const Result<T>& r, int ok_status = 200) {
  if (r)
    send_json(res, ok_status, *r);
  else
    send_error(res, r.err());
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
// GET /api/v1/whoami: the caller's token name and role (the dashboard hides what it may not do).
void add_whoami_route(RouteTable& routes);
// GET /api/v1/fleet (counts by online, version, hardware, state, group) and
// GET /api/v1/fleet/versions (devices per version over time, from the event log's hellos).
void add_fleet_routes(RouteTable& routes, Controller& ctl);
// The web dashboard (service/web/): GET / (redirect) and GET /ui/... from `web_root`
// (web_ui.cpp). Empty web_root: no dashboard, / answers 404 saying how to get one.
void add_web_routes(RouteTable& routes, const std::string& web_root);
// GET /api/v1/openapi.json: the API's OpenAPI 3 description (service/openapi.json, compiled in).
void add_openapi_route(RouteTable& routes);

// --- list endpoints (list_params.cpp): the query parameters every list takes
// The page a list request asks for: ?limit= (1..kMaxPageLimit, default kDefaultPageLimit) and
// ?offset= (0.., default 0).
struct Page {
  std::size_t limit = 0;
  std::size_t offset = 0;
};
constexpr std::size_t kDefaultPageLimit = 1000;
constexpr std::size_t kMaxPageLimit = 10000;
// Refuses (400 naming it) a query parameter not in `allowed` (besides limit, offset, pretty),
// so that a misspelt filter or an unsupported one (sort) is not silently ignored.
Status check_list_params(const httplib::Request& req, std::initializer_list<const char*> allowed);
// The same for a request that is not a list: only `allowed` and pretty.
Status check_query_params(const httplib::Request& req, std::initializer_list<const char*> allowed);
Result<Page> parse_page(const httplib::Request& req);
// Sends one page of `all` (a JSON array, in the list's stable order) with the headers
// X-Total-Count (items matching the filters) and, when more follow, Link: <...>; rel="next".
void send_page(const httplib::Request& req, httplib::Response& res, const Page& page,
               const json& all);
// The same for a list that is paged already: `items` is the page, `total` counts all matches.
void send_page_of(const httplib::Request& req, httplib::Response& res, const Page& page,
                  const json& items, std::size_t total);
// The Link header value of the next page: the request with `key` set to `value`.
std::string next_link(const httplib::Request& req, const std::string& key, long long value);
// The items of `all` whose `key` equals `value` (or, for an array member, contains it).
json filter_by(const json& all, const std::string& key, const std::string& value);

}  // namespace http
}  // namespace ota::service
