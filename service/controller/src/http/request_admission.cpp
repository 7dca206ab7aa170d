// What runs around the route handlers: authentication, the token's role and the content type
// before any handler runs and before a request body is read; the replies to unrouted requests
// and exceptions; the access log. All of it runs on the worker thread of the request.
#include <exception>

#include "api_server.hpp"
#include "ota/service/log.hpp"
#include "routes.hpp"

namespace ota::service::http {

namespace {

bool has_body(const httplib::Request& req) {
  const std::string length = req.get_header_value("Content-Length");
  return req.has_header("Transfer-Encoding") || (!length.empty() && length != "0");
}

// A refused request whose body was not read leaves that body in the connection, where the next
// request would start: the connection is closed after the reply.
void close_unless_bodyless(const httplib::Request& req, httplib::Response& res) {
  if (has_body(req)) {
    current_request().close_after_response = true;
    res.set_header("Connection", "close");
  }
}


// The caller's token: 401 if there is none or it is unknown.
bool authenticate(ApiTokens& tokens, const httplib::Request& req, httplib::Response& res) {
  const std::string auth = req.get_header_value("Authorization");
  const std::string scheme = "Bearer ";
  const bool has_bearer = auth.size() > scheme.size() &&
                          media_type(auth.substr(0, scheme.size() - 1)) == "bearer" &&
                          auth[scheme.size() - 1] == ' ';
  RequestContext& request = current_request();
  request.caller = has_bearer ? tokens.authenticate(auth.substr(scheme.size())) : std::nullopt;
  if (request.caller) return true;
  res.set_header("WWW-Authenticate", "Bearer");
  send_error(res, 401,
             std::string("missing or wrong API token (") +
                 (has_bearer ? "unknown or revoked token" : "none sent") +
                 "): send 'Authorization: Bearer <token>' with the controller's bootstrap "
                 "token (its --api-token-file, default <db>.token) or a token made with "
                 "`otactl token create`");
  close_unless_bodyless(req, res);
  return false;
}

// The caller's role against the route's: 403 if it is below.
bool authorize(const ApiServer& server, const httplib::Request& req, httplib::Response& res) {
  const ApiTokens::Identity& caller = *current_request().caller;
  const std::optional<Role> needed = server.required_role(req.method, req.path);
  if (!needed || caller.role >= *needed) return true;
  send_error(res, 403,
             "forbidden: token '" + caller.name + "' has role " + role_name(caller.role) +
                 ", and " + req.method + " " + req.path + " needs role " +
                 role_name(*needed) + (*needed == Role::admin ? "" : " or above"));
  close_unless_bodyless(req, res);
  return false;
}

// The body's media type of a POST or PUT: 415 if it is not the route's.
bool check_content_type(const httplib::Request& req, httplib::Response& res) {
  if (req.method != "POST" && req.method != "PUT") return true;
  const bool image = req.path == "/api/v1/images";
  const std::string want = image ? "application/octet-stream" : "application/json";
  const std::string got = media_type(req.get_header_value("Content-Type"));
  if (got == want) return true;
  send_error(res, 415,
             "Content-Type must be " + want + " for " + req.method + " " + req.path +
                 ", not '" + (got.empty() ? std::string("(none)") : got) + "'");
  close_unless_bodyless(req, res);
  return false;
}

// Authentication, the token's role and the content type, before any handler runs and
// before a request body is read. The token stops other local users and, with the
// content-type rule, cross-site requests from a browser: a web page can POST text/plain or
// form bodies without a CORS preflight, but cannot add an Authorization header or an
// application/json body to a cross-origin request without one.
// Returns whether the request may go on; if not, `res` holds the refusal.
bool admit(const ApiServer& server, ApiTokens& tokens, const httplib::Request& req,
           httplib::Response& res) {
  if (!authenticate(tokens, req, res)) return false;
  // No route for this method and path: routing answers 404 or 405, whatever the body's type.
  if (!server.has_route(req.method, req.path)) return true;
  return authorize(server, req, res) && check_content_type(req, res);
}

// A path some route serves with other methods gets 405 and the methods in Allow (RFC 9110
// 15.5.6); a path no route serves, 404.
void reply_to_unrouted(const ApiServer& server, const httplib::Request& req,
                       httplib::Response& res) {
  if (!res.body.empty()) return;
  const std::string allow = res.status == 404 ? server.allowed_methods(req.path) : "";
  if (!allow.empty()) {
    res.set_header("Allow", allow);
    send_error(res, 405,
               req.method + " is not allowed on " + req.path + " (allowed: " + allow + ")");
  } else if (res.status == 404)
    send_error(res, 404, "no such endpoint: " + req.method + " " + req.path);
  else if (res.status == 413)
    send_error(res, 413, "request body too large (limit " +
                             std::to_string(kMaxBodyBytes / (1024 * 1024)) + " MiB)");
  else if (res.status == 400)
    send_error(res, 400, "malformed request: " + req.method + " " + req.path +
                             " (its request line, a header or the body could not be read)");
  else
    send_error(res, res.status, "HTTP " + std::to_string(res.status));
}

// ?pretty=1 (or true, or no value) asks for indented JSON; the default is compact.
bool read_pretty(const httplib::Request& req, httplib::Response& res) {
  if (!req.has_param("pretty")) return true;
  const std::string v = req.get_param_value("pretty");
  current_request().pretty = v.empty() || v == "1" || v == "true";
  if (current_request().pretty || v == "0" || v == "false") return true;
  send_error(res, 400, "pretty must be 1, true, 0 or false, not '" + v + "'", "pretty");
  close_unless_bodyless(req, res);
  return false;
}

void reply_to_exception(const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
  std::string what = "internal error";
  try {
    if (ep) std::rethrow_exception(ep);
  } catch (const std::exception& e) {
    what = std::string("internal error: ") + e.what();
  } catch (...) {
  }
  log_error("http: " + what);
  send_error(res, 500, what);
}

// An access log of who changed what and who was refused: image uploads, deployments and
// cancels are not in the event log under the token's name.
void log_access(const httplib::Request& req, const httplib::Response& res) {
  const RequestContext& request = current_request();
  const std::string line = "http: " + req.remote_addr + " " +
                           (request.caller ? "token:" + request.caller->name
                                           : std::string("(no valid token)")) +
                           " " + req.method + " " + req.path + " -> " + std::to_string(res.status);
  if (res.status == 401 || res.status == 403)
    log_warn(line);
  else if (req.method != "GET" && req.method != "HEAD")
    log_info(line);
  else
    log(LogLevel::debug, line);
}

}  // namespace

void install_request_admission(ApiServer& server, ApiTokens& tokens) {
  server.set_payload_max_length(kMaxBodyBytes);
  const ApiServer& routes = server;
  server.set_error_handler([&routes](const httplib::Request& req, httplib::Response& res) {
    reply_to_unrouted(routes, req, res);
  });
  server.set_exception_handler(reply_to_exception);
  server.set_pre_routing_handler([&routes, &tokens](const httplib::Request& req,
                                                    httplib::Response& res) {
    if (!read_pretty(req, res)) return httplib::Server::HandlerResponse::Handled;
    // No GET takes a body, and httplib would read one (slowly, if the client sends it
    // slowly) before the handler runs, also for /health, which needs no token.
    if ((req.method == "GET" || req.method == "HEAD") && has_body(req)) {
      send_error(res, 400, req.method + " " + req.path + " takes no request body");
      close_unless_bodyless(req, res);
      return httplib::Server::HandlerResponse::Handled;
    }
    return routes.is_public(req.method, req.path) || admit(routes, tokens, req, res)
               ? httplib::Server::HandlerResponse::Unhandled
               : httplib::Server::HandlerResponse::Handled;
  });
  // A client that asks before it sends a body (curl does for large uploads) gets the refusal
  // instead of "100 Continue", and never sends the body.
  server.set_expect_100_continue_handler([&routes, &tokens](const httplib::Request& req,
                                                           httplib::Response& res) {
    return routes.is_public(req.method, req.path) || admit(routes, tokens, req, res) ? 100 : res.status;
  });
  server.set_logger(log_access);
}

}  // namespace ota::service::http
