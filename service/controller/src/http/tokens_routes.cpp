// API token routes (admin; the secret is in the reply to the create and nowhere else) and
// GET /api/v1/whoami (any token: its own name and role).
#include "api_server.hpp"
#include "routes.hpp"

namespace ota::service::http {

namespace {

json token_json(const ApiTokenRec& t) {
  return json{{"name", t.name}, {"role", t.role}, {"created_at", t.created_at},
              {"created_by", t.created_by}};
}

void send_tokens(ApiTokens& tokens, const httplib::Request& req, httplib::Response& res) {
  Status params = check_list_params(req, {"role"});
  if (!params) return send_error(res, params.err());
  auto page = parse_page(req);
  if (!page) return send_error(res, page.err());
  json out = json::array();
  out.push_back({{"name", kBootstrapTokenName}, {"role", role_name(Role::admin)},
                 {"bootstrap", true}});
  for (const auto& t : tokens.list()) out.push_back(token_json(t));
  if (req.has_param("role")) out = filter_by(out, "role", req.get_param_value("role"));
  send_page(req, res, *page, out);
}

void create_token(ApiTokens& tokens, const httplib::Request& req, httplib::Response& res) {
  auto body = parse_body(req.body);
  if (!body) return send_error(res, body.context("token"));
  for (auto kv = body->begin(); kv != body->end(); ++kv)
    if (kv.key() != "name" && kv.key() != "role")
      return send_error(res, 400, "token: unknown field \"" + kv.key() + "\"", kv.key());
  const json& name = (*body)["name"];
  const json& role = (*body)["role"];
  if (!name.is_string())
    return send_error(res, 400, "token: \"name\" (a string) is required", "name");
  if (!role.is_string())
    return send_error(res, 400, "token: \"role\" is required: read-only, operator or admin",
                      "role");
  const auto r = parse_role(role.get<std::string>());
  if (!r)
    return send_error(res, 400,
                      "token: role '" + role.get<std::string>() +
                          "' is not one of read-only, operator, admin",
                      "role");
  auto created = tokens.create(name.get<std::string>(), *r, actor());
  if (!created) return send_error(res, created.err());
  json j = token_json(created->token);
  j["token"] = created->secret;
  res.set_header("Cache-Control", "no-store");
  send_json(res, 201, j);
}

void revoke_token(ApiTokens& tokens, const httplib::Request& req, httplib::Response& res) {
  const std::string name = req.matches[1];
  Status st = tokens.revoke(name, actor());
  if (!st) return send_error(res, st.err());
  send_json(res, 200, json{{"name", name}, {"revoked", true}});
}

}  // namespace

void add_token_routes(RouteTable& routes, ApiTokens& tokens) {
  routes.get("/api/v1/tokens", Role::admin,
             [&tokens](const httplib::Request& req, httplib::Response& res) {
               send_tokens(tokens, req, res);
             });
  routes.post("/api/v1/tokens", Role::admin, [&tokens](const httplib::Request& req, httplib::Response& res) {
    create_token(tokens, req, res);
  });
  routes.del(R"(/api/v1/tokens/([^/]+))", Role::admin,
             [&tokens](const httplib::Request& req, httplib::Response& res) {
               revoke_token(tokens, req, res);
             });
}

}  // namespace ota::service::http

namespace ota::service::http {

void add_whoami_route(RouteTable& routes) {
  routes.get("/api/v1/whoami", Role::read_only, [](const httplib::Request&, httplib::Response& res) {
    // Admission authenticated the request before it got here, so there is a caller.
    const ApiTokens::Identity& caller = *current_request().caller;
    send_json(res, 200,
              json{{"name", caller.name},
                   {"role", role_name(caller.role)},
                   {"bootstrap", caller.name == kBootstrapTokenName}});
  });
}

}  // namespace ota::service::http
