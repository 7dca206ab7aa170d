// Deployment routes: deploy and cancel (operator), list and show (read-only).
#include <algorithm>

#include "routes.hpp"

namespace ota::service::http {

namespace {

void deploy(Controller& ctl, const httplib::Request& req, httplib::Response& res) {
  auto d = parse_deploy_request(req.body);
  if (!d) return send_error(res, d.context("deploy"));
  auto r = ctl.deploy(d->image, d->kind, d->target, actor());
  if (!r) return send_error(res, r.err());
  reply(res, ctl.deployment_json(r->id), 201);
}

void cancel(Controller& ctl, const httplib::Request& req, httplib::Response& res) {
  auto r = ctl.cancel(req.matches[1], actor());
  if (!r) return send_error(res, r.err());
  reply(res, ctl.deployment_json(r->id));
}

// ?image= matches an image id or version.
json filter_by_image(const json& all, const std::string& image) {
  json out = filter_by(all, "image", image);
  for (const auto& item : filter_by(all, "version", image))
    if (std::find(out.begin(), out.end(), item) == out.end()) out.push_back(item);
  return out;
}

void send_deployments(Controller& ctl, const httplib::Request& req, httplib::Response& res) {
  Status params = check_list_params(req, {"state", "image", "target_kind"});
  if (!params) return send_error(res, params.err());
  auto page = parse_page(req);
  if (!page) return send_error(res, page.err());
  const std::string state = req.get_param_value("state");
  if (req.has_param("state") && !deployment_state_from(state))
    return send_error(res, 400, "state '" + state + "' is not active, completed or cancelled",
                      "state");
  auto all = ctl.deployments_json();
  if (!all) return send_error(res, all.err());
  json list = std::move(*all);
  if (req.has_param("state")) list = filter_by(list, "state", state);
  if (req.has_param("target_kind"))
    list = filter_by(list, "target_kind", req.get_param_value("target_kind"));
  if (req.has_param("image")) list = filter_by_image(list, req.get_param_value("image"));
  send_page(req, res, *page, list);
}

}  // namespace

void add_deployment_routes(RouteTable& routes, Controller& ctl) {
  routes.post("/api/v1/deployments", Role::operator_,
              [&ctl](const httplib::Request& req, httplib::Response& res) { deploy(ctl, req, res); });
  routes.get("/api/v1/deployments", Role::read_only,
             [&ctl](const httplib::Request& req, httplib::Response& res) {
               send_deployments(ctl, req, res);
             });
  routes.get(R"(/api/v1/deployments/([^/]+))", Role::read_only,
             [&ctl](const httplib::Request& req, httplib::Response& res) {
               reply(res, ctl.deployment_json(req.matches[1]));
             });
  routes.post(R"(/api/v1/deployments/([^/]+)/cancel)", Role::operator_,
              [&ctl](const httplib::Request& req, httplib::Response& res) { cancel(ctl, req, res); });
}

}  // namespace ota::service::http
