// The route table and the JSON replies the route files share.
#include "api_server.hpp"
#include "routes.hpp"

namespace ota::service::http {

void RouteTable::get(const std::string& pattern, Role role, Handler h) {
  server_.add_rule("GET", pattern, role);
  server_.Get(pattern, std::move(h));
}

void RouteTable::post(const std::string& pattern, Role role, Handler h) {
  server_.add_rule("POST", pattern, role);
  server_.Post(pattern, std::move(h));
}

void RouteTable::put(const std::string& pattern, Role role, Handler h) {
  server_.add_rule("PUT", pattern, role);
  server_.Put(pattern, std::move(h));
}

void RouteTable::del(const std::string& pattern, Role role, Handler h) {
  server_.add_rule("DELETE", pattern, role);
  server_.Delete(pattern, std::move(h));
}

void RouteTable::get_without_token(const std::string& pattern, Handler h) {
  server_.Get(pattern, std::move(h));
}

int http_status(ErrKind k) {
  switch (k) {
    case ErrKind::invalid: return 400;
    case ErrKind::not_found: return 404;
    case ErrKind::conflict: return 409;
    case ErrKind::internal: return 500;
  }
  return 500;
}

void send_json(httplib::Response& res, int status, const json& j) {
  res.status = status;
  res.set_content(j.dump(2) + "\n", "application/json");
}

void send_error(httplib::Response& res, int status, const std::string& msg) {
  send_json(res, status, json{{"error", msg}});
}

Result<json> parse_body(const std::string& body) {
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return invalid_err("body is not valid JSON");
  if (!j.is_object()) return invalid_err("body must be a JSON object");
  return j;
}

std::string actor() {
  const RequestContext& request = current_request();
  return "token:" + (request.caller ? request.caller->name : std::string("?"));
}

}  // namespace ota::service::http
