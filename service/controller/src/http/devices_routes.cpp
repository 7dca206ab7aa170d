// Device routes: list and show (read-only), tags (operator), revocation, reset-seq and
// decommission (admin); the fleet's counts and its versions over time (read-only).
#include "ota/service/tag_expr.hpp"
#include "routes.hpp"

namespace ota::service::http {

namespace {

// The devices the filters of GET /devices (group, tag, version, state, online) select.
Result<json> filtered_devices(Controller& ctl, const httplib::Request& req) {
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
      return invalid_field_err("online", "online must be true/false/1/0, not '" + o + "'");
  }
  // The filters' own errors name their parameter (a form shows the message next to it).
  const std::string tag = req.get_param_value("tag");
  if (!tag.empty()) {
    auto expr = TagExpr::parse(tag);
    if (!expr) return invalid_field_err("tag", "tag: " + expr.error());
  }
  auto devices = ctl.devices_json(f, tag, req.get_param_value("state"));
  if (!devices && devices.kind() == ErrKind::invalid && devices.err().field.empty())
    return invalid_field_err("state", devices.error());  // the only other filter it checks
  return devices;
}

void send_devices(Controller& ctl, const httplib::Request& req, httplib::Response& res) {
  Status params = check_list_params(req, {"group", "tag", "version", "state", "online"});
  if (!params) return send_error(res, params.err());
  auto page = parse_page(req);
  if (!page) return send_error(res, page.err());
  auto devices = filtered_devices(ctl, req);
  if (!devices) return send_error(res, devices.err());
  send_page(req, res, *page, *devices);
}

// GET /api/v1/fleet: the filtered devices counted, so that a dashboard of 10,000 devices
// does not fetch them all to count them.
void send_fleet(Controller& ctl, const httplib::Request& req, httplib::Response& res) {
  for (const auto& kv : req.params)
    if (kv.first != "group" && kv.first != "tag" && kv.first != "version" &&
        kv.first != "state" && kv.first != "online" && kv.first != "pretty")
      return send_error(res, 400,
                        "unknown query parameter '" + kv.first +
                            "' for GET /api/v1/fleet (it takes: group, tag, version, state, "
                            "online, pretty)",
                        kv.first);
  auto devices = filtered_devices(ctl, req);
  if (!devices) return send_error(res, devices.err());
  long long online = 0;
  json by_version = json::object(), by_hw = json::object(), by_state = json::object(),
       by_group = json::object();
  const auto bump = [](json& counts, const json& key) {
    const std::string k = key.is_string() ? key.get<std::string>() : std::string();
    counts[k] = counts.value(k, 0LL) + 1;
  };
  for (const auto& d : *devices) {
    if (d.value("online", false)) ++online;
    bump(by_version, d.value("version", json()));
    bump(by_hw, d.value("hw", json()));
    bump(by_state, d.value("state", json()));
    for (const auto& g : d.value("member_of", json::array())) bump(by_group, g);
  }
  const long long total = static_cast<long long>(devices->size());
  send_json(res, 200,
            json{{"total", total}, {"online", online}, {"offline", total - online},
                 {"by_version", by_version}, {"by_hw", by_hw}, {"by_state", by_state},
                 {"by_group", by_group}});
}

// GET /api/v1/fleet/versions?points=N[&since=UNIX_S]
void send_fleet_versions(Controller& ctl, const httplib::Request& req, httplib::Response& res) {
  for (const auto& kv : req.params)
    if (kv.first != "points" && kv.first != "since" && kv.first != "pretty")
      return send_error(res, 400,
                        "unknown query parameter '" + kv.first +
                            "' for GET /api/v1/fleet/versions (it takes: points, since, pretty)",
                        kv.first);
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
