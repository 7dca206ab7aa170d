// Deployment routes: deploy and cancel (operator), list and show (read-only).
#include "routes.hpp"

namespace ota::service::http {

namespace {

void deploy(Controller& ctl, const httplib::Request& req, httplib::Response& res) {
  auto d = parse_deploy_request(req.body);
  if (!d) return send_error(res, 400, "deploy: " + d.error());
  auto r = ctl.deploy(d->image, d->kind, d->target, actor());
  if (!r) return send_error(res, http_status(r.kind()), r.error());
  reply(res, ctl.deployment_json(r->id), 201);
}

void cancel(Controller& ctl, const httplib::Request& req, httplib::Response& res) {
  auto r = ctl.cancel(req.matches[1], actor());
  if (!r) return send_error(res, http_status(r.kind()), r.error());
  reply(res, ctl.deployment_json(r->id));
}

}  // namespace

void add_deployment_routes(RouteTable& routes, Controller& ctl) {
  routes.post("/api/v1/deployments", Role::operator_,
              [&ctl](const httplib::Request& req, httplib::Response& res) { deploy(ctl, req, res); });
  routes.get("/api/v1/deployments", Role::read_only, [&ctl](const httplib::Request&, httplib::Response& res) {
    reply(res, ctl.deployments_json());
  });
  routes.get(R"(/api/v1/deployments/([^/]+))", Role::read_only,
             [&ctl](const httplib::Request& req, httplib::Response& res) {
               reply(res, ctl.deployment_json(req.matches[1]));
             });
  routes.post(R"(/api/v1/deployments/([^/]+)/cancel)", Role::operator_,
              [&ctl](const httplib::Request& req, httplib::Response& res) { cancel(ctl, req, res); });
}

}  // namespace ota::service::http
