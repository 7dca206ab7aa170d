// Device routes: list and show (read-only), tags (operator), revocation, reset-seq and
// decommission (admin).
#include "routes.hpp"

namespace ota::service::http {

namespace {

void send_devices(Controller& ctl, const httplib::Request& req, httplib::Response& res) {
  Status params = check_list_params(req, {"group", "tag", "version", "state", "online"});
  if (!params) return send_error(res, params.err());
  auto page = parse_page(req);
  if (!page) return send_error(res, page.err());
  DeviceFilter f;
  f.group = req.get_param_value("group");
  f.version = req.get_param_value("version");
  if (req.has_param("online")) {
    std::string o = req.get_param_value("online");
    if (o == "1" || o == "true" || o.empty())
      f.online = true;
    else if (o == "0" || o == "false")
      f.online = false;
    else
      return send_error(res, 400, "online must be true/false/1/0, not '" + o + "'", "online");
  }
  auto devices = ctl.devices_json(f, req.get_param_value("tag"), req.get_param_value("state"));
  if (!devices) return send_error(res, devices.err());
  send_page(req, res, *page, *devices);
}

void set_tags(Controller& ctl, const httplib::Request& req, httplib::Response& res) {
  auto body = parse_body(req.body);
  if (!body) return send_error(res, body.context("tags"));
  reply(res, ctl.set_device_tags(req.matches[1], *body, actor()));
}

void reset_seq(Controller& ctl, const httplib::Request& req, httplib::Response& res) {
  Status st = ctl.reset_seq(req.matches[1], actor());
  if (!st) return send_error(res, st.err());
  reply(res, ctl.device_json(req.matches[1]));
}

}  // namespace

void add_device_routes(RouteTable& routes, Controller& ctl) {
  routes.get("/api/v1/devices", Role::read_only,
             [&ctl](const httplib::Request& req, httplib::Response& res) { send_devices(ctl, req, res); });
  routes.get(R"(/api/v1/devices/([^/]+))", Role::read_only,
             [&ctl](const httplib::Request& req, httplib::Response& res) {
               reply(res, ctl.device_json(req.matches[1]));
             });
  routes.del(R"(/api/v1/devices/([^/]+))", Role::admin,
             [&ctl](const httplib::Request& req, httplib::Response& res) {
               reply(res, ctl.decommission_device(req.matches[1], actor()));
             });
  routes.put(R"(/api/v1/devices/([^/]+)/tags)", Role::operator_,
             [&ctl](const httplib::Request& req, httplib::Response& res) { set_tags(ctl, req, res); });
  routes.post(R"(/api/v1/devices/([^/]+)/revoke)", Role::admin,
              [&ctl](const httplib::Request& req, httplib::Response& res) {
                reply(res, ctl.revoke_device(req.matches[1], actor()));
              });
  routes.post(R"(/api/v1/devices/([^/]+)/reset-seq)", Role::admin,
              [&ctl](const httplib::Request& req, httplib::Response& res) { reset_seq(ctl, req, res); });
}

}  // namespace ota::service::http
