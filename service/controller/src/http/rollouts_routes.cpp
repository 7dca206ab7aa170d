// Rollout routes: create, actions and delete (operator), list and show (read-only).
#include "routes.hpp"

namespace ota::service::http {

namespace {

void create_rollout(Controller& ctl, const httplib::Request& req, httplib::Response& res) {
  auto body = parse_body(req.body);
  if (!body) return send_error(res, body.context("rollout"));
  reply(res, ctl.create_rollout(*body, actor()), 201);
}

void send_rollout(Controller& ctl, const httplib::Request& req, httplib::Response& res) {
  const std::string d = req.get_param_value("devices");
  reply(res, ctl.rollout_json(req.matches[1], d == "1" || d == "true"));
}

// POST /api/v1/rollouts/ID/ACTION (start, pause, resume, abort, retry, rollback).
void run_rollout_action(Controller& ctl, const httplib::Request& req, httplib::Response& res) {
  auto body = parse_body(req.body.empty() ? std::string("{}") : req.body);
  if (!body) return send_error(res, body.context(req.matches[2]));
  const std::string action = req.matches[2];
  reply(res, ctl.rollout_action(req.matches[1], action, *body, actor()),
        action == "rollback" ? 201 : 200);
}

void send_rollouts(Controller& ctl, const httplib::Request& req, httplib::Response& res) {
  Status params = check_list_params(req, {"state", "image"});
  if (!params) return send_error(res, params.err());
  auto page = parse_page(req);
  if (!page) return send_error(res, page.err());
  const std::string state = req.get_param_value("state");
  if (req.has_param("state") && !rollout_status_from(state))
    return send_error(res, 400,
                      "state '" + state +
                          "' is not draft, scheduled, running, paused, completed or aborted",
                      "state");
  auto all = ctl.rollouts_json();
  if (!all) return send_error(res, all.err());
  json list = std::move(*all);
  if (req.has_param("state")) list = filter_by(list, "state", state);
  if (req.has_param("image")) {
    const std::string image = req.get_param_value("image");
    json by_id = filter_by(list, "image", image);
    list = by_id.empty() ? filter_by(list, "version", image) : by_id;
  }
  send_page(req, res, *page, list);
}

}  // namespace

void add_rollout_routes(RouteTable& routes, Controller& ctl) {
  routes.post("/api/v1/rollouts", Role::operator_,
              [&ctl](const httplib::Request& req, httplib::Response& res) { create_rollout(ctl, req, res); });
  routes.get("/api/v1/rollouts", Role::read_only,
             [&ctl](const httplib::Request& req, httplib::Response& res) {
               send_rollouts(ctl, req, res);
             });
  routes.get(R"(/api/v1/rollouts/([^/]+))", Role::read_only,
             [&ctl](const httplib::Request& req, httplib::Response& res) { send_rollout(ctl, req, res); });
  routes.del(R"(/api/v1/rollouts/([^/]+))", Role::operator_,
             [&ctl](const httplib::Request& req, httplib::Response& res) {
               reply(res, ctl.delete_rollout(req.matches[1], actor()));
             });
  routes.post(R"(/api/v1/rollouts/([^/]+)/([a-z]+))", Role::operator_,
              [&ctl](const httplib::Request& req, httplib::Response& res) {
                run_rollout_action(ctl, req, res);
              });
}

}  // namespace ota::service::http
