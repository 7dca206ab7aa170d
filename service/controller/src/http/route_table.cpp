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
  server_.add_rule("GET", pattern, std::nullopt);
  server_.Get(pattern, std::move(h));
}

void RouteTable::page(const std::string& pattern, Handler h) {
  server_.add_rule("GET", pattern, std::nullopt, /*api=*/false);
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

const char* error_code(int status) {
  switch (status) {
    case 400: return "invalid";
    case 401: return "unauthorized";
    case 403: return "forbidden";
    case 404: return "not_found";
    case 405: return "method_not_allowed";
    case 408: return "request_timeout";
    case 409: return "conflict";
    case 413: return "too_large";
    case 415: return "unsupported_media_type";
    case 431: return "header_too_large";
    case 503: return "unavailable";
    default: return status >= 500 ? "internal" : "invalid";
  }
}

void send_json(httplib::Response& res, int status, const json& j) {
  res.status = status;
  res.set_content(j.dump(current_request().pretty ? 2 : -1) + "\n", "application/json");
}

void send_error(httplib::Response& res, int status, const std::string& msg,
                const std::string& field) {
  json e{{"code", error_code(status)}, {"message", msg}};
  if (!field.empty()) e["field"] = field;
  send_json(res, status, json{{"error", std::move(e)}});
}

void send_error(httplib::Response& res, const Err& e) {
  send_error(res, http_status(e.kind), e.msg, e.field);
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
