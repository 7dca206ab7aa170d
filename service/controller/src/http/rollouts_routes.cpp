// Rollout routes: create and actions (operator), list and show (read-only).
#include "routes.hpp"

namespace ota::service::http {

namespace {

void create_rollout(Controller& ctl, const httplib::Request& req, httplib::Response& res) {
  auto body = parse_body(req.body);
  if (!body) return send_error(res, 400, "rollout: " + body.error());
  reply(res, ctl.create_rollout(*body, actor()), 201);
}

void send_rollout(Controller& ctl, const httplib::Request& req, httplib::Response& res) {
  const std::string d = req.get_param_value("devices");
  reply(res, ctl.rollout_json(req.matches[1], d == "1" || d == "true"));
}

// POST /api/v1/rollouts/ID/ACTION (start, pause, resume, abort, retry, rollback).
void run_rollout_action(Controller& ctl, const httplib::Request& req, httplib::Response& res) {
  auto body = parse_body(req.body.empty() ? std::string("{}") : req.body);
  if (!body) return send_error(res, 400, std::string(req.matches[2]) + ": " + body.error());
  const std::string action = req.matches[2];
  reply(res, ctl.rollout_action(req.matches[1], action, *body, actor()),
        action == "rollback" ? 201 : 200);
}

}  // namespace

void add_rollout_routes(RouteTable& routes, Controller& ctl) {
  routes.post("/api/v1/rollouts", Role::operator_,
              [&ctl](const httplib::Request& req, httplib::Response& res) { create_rollout(ctl, req, res); });
  routes.get("/api/v1/rollouts", Role::read_only, [&ctl](const httplib::Request&, httplib::Response& res) {
    reply(res, ctl.rollouts_json());
  });
  routes.get(R"(/api/v1/rollouts/([^/]+))", Role::read_only,
             [&ctl](const httplib::Request& req, httplib::Response& res) { send_rollout(ctl, req, res); });
  routes.post(R"(/api/v1/rollouts/([^/]+)/([a-z]+))", Role::operator_,
              [&ctl](const httplib::Request& req, httplib::Response& res) {
                run_rollout_action(ctl, req, res);
              });
}

}  // namespace ota::service::http
