// Device routes: list and show (read-only), tags (operator), revocation, reset-seq and
// decommission (admin); the fleet's counts and its versions over time (read-only).
#include "ota/service/tag_expr.hpp"
#include "routes.hpp"

namespace ota::service::http {

namespace {

// The filters of GET /devices and GET /fleet (group, tag, version, state, online). The
// filters' own errors name their parameter (a form shows the message next to it).
struct DeviceQuery {
  DeviceFilter filter;
  std::string tag, state;
};

Result<DeviceQuery> device_query(const httplib::Request& req) {
  DeviceQuery q;
  q.filter.group = req.get_param_value("group");
  q.filter.version = req.get_param_value("version");
  if (req.has_param("online")) {
    std::string o = req.get_param_value("online");
    if (o == "1" || o == "true" || o.empty())
      q.filter.online = true;
    else if (o == "0" || o == "false")
      q.filter.online = false;
    else
      return invalid_field_err("online", "online must be true/false/1/0, not '" + o + "'");
  }
  q.tag = req.get_param_value("tag");
  if (!q.tag.empty()) {
    auto expr = TagExpr::parse(q.tag);
    if (!expr) return invalid_field_err("tag", "tag: " + expr.error());
  }
  q.state = req.get_param_value("state");
  return q;
}

// The Controller checks the state filter (the only other one that can be wrong).
template <typename T>
Result<T> naming_state(Result<T> r) {
  if (!r && r.kind() == ErrKind::invalid && r.err().field.empty())
    return invalid_field_err("state", r.error());
  return r;
}

void send_devices(Controller& ctl, const httplib::Request& req, httplib::Response& res) {
  Status params = check_list_params(req, {"group", "tag", "version", "state", "online"});
  if (!params) return send_error(res, params.err());
  auto page = parse_page(req);
  if (!page) return send_error(res, page.err());
  auto q = device_query(req);
  if (!q) return send_error(res, q.err());
  std::size_t total = 0;
  auto devices = naming_state(
      ctl.devices_page_json(q->filter, q->tag, q->state, page->offset, page->limit, &total));
  if (!devices) return send_error(res, devices.err());
  send_page_of(req, res, *page, *devices, total);
}

// GET /api/v1/fleet: the filtered devices counted by the controller, so that a dashboard of
// 10,000 devices neither fetches them all nor makes the controller build their views.
void send_fleet(Controller& ctl, const httplib::Request& req, httplib::Response& res) {
  Status params = check_query_params(req, {"group", "tag", "version", "state", "online"});
  if (!params) return send_error(res, params.err());
  auto q = device_query(req);
  if (!q) return send_error(res, q.err());
  reply(res, naming_state(ctl.fleet_counts_json(q->filter, q->tag, q->state)));
}

// GET /api/v1/fleet/versions?points=N[&since=UNIX_S]
void send_fleet_versions(Controller& ctl, const httplib::Request& req, httplib::Response& res) {
  Status params = check_query_params(req, {"points", "since"});
  if (!params) return send_error(res, params.err());
  std::uint32_t points = 48;
  if (req.has_param("points")) {
    auto p = parse_u32("points", req.get_param_value("points"), 2, 500);
    if (!p) return send_error(res, 400, p.error(), "points");
    points = *p;
  }
  long long since_ms = 0;
  if (req.has_param("since")) {
    auto s = parse_u32("since", req.get_param_value("since"), 0, 0xFFFFFFFFu);
    if (!s) return send_error(res, 400, s.error(), "since");
    since_ms = static_cast<long long>(*s) * 1000;
  }
  reply(res, ctl.version_history_json(since_ms, static_cast<int>(points)));
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

void add_fleet_routes(RouteTable& routes, Controller& ctl) {
  routes.get("/api/v1/fleet", Role::read_only,
             [&ctl](const httplib::Request& req, httplib::Response& res) { send_fleet(ctl, req, res); });
  routes.get("/api/v1/fleet/versions", Role::read_only,
             [&ctl](const httplib::Request& req, httplib::Response& res) {
               send_fleet_versions(ctl, req, res);
             });
}

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
