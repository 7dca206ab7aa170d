// Image routes: upload and delete (operator), list and show (read-only).
#include "routes.hpp"

namespace ota::service::http {

namespace {

// The upload's query parameters. With a release file (`otactl image sign`) version, hw,
// counter and kind come from it.
Result<ImageParams> image_params(const httplib::Request& req) {
  ImageParams p;
  p.release = req.get_param_value("release");
  const bool with_release = req.has_param("release");
  if (with_release && p.release.empty())
    return invalid_field_err("release",
                             "query parameter 'release' is empty (it is the release file's JSON)");
  p.version = req.get_param_value("version");
  if (p.version.empty() && !with_release)
    return invalid_field_err(
        "version", "query parameter 'version' is required (or 'release': a release file)");
  const std::size_t n = req.get_param_value_count("hw");
  for (std::size_t i = 0; i < n; ++i) p.hw.push_back(req.get_param_value("hw", i));
  if (p.hw.empty() && !with_release)
    return invalid_field_err("hw", "query parameter 'hw' is required (repeat for several models)");
  if (req.has_param("chunk_size")) {
    auto c = parse_u32("chunk_size", req.get_param_value("chunk_size"), 0, 0xFFFFFFFFu);
    if (!c) return invalid_field_err("chunk_size", c.error());
    p.chunk_size = *c;
  }
  if (req.has_param("counter")) {
    if (req.get_param_value("counter") == "next") {
      p.security_release = true;
    } else {
      auto c = parse_u32("counter", req.get_param_value("counter"), 0, 0xFFFFFFFFu);
      if (!c) return invalid_field_err("counter", c.error() + " (or 'next': a security release)");
      p.counter = *c;
      p.counter_given = true;
    }
  }
  if (req.has_param("kind")) {
    p.kind = req.get_param_value("kind");
    p.kind_given = true;
  }
  return p;
}

void add_image(Controller& ctl, const httplib::Request& req, httplib::Response& res) {
  auto p = image_params(req);
  if (!p) return send_error(res, p.err());
  if (req.body.empty()) return send_error(res, 400, "request body (the image bytes) is empty");
  auto r = ctl.add_image(req.body, *p, actor());
  if (!r) return send_error(res, r.err());
  json j = Controller::to_json(r->image);
  j["created"] = r->created;
  send_json(res, r->created ? 201 : 200, j);
}

void send_images(Controller& ctl, const httplib::Request& req, httplib::Response& res) {
  Status params = check_list_params(req, {"version", "hw", "kind"});
  if (!params) return send_error(res, params.err());
  auto page = parse_page(req);
  if (!page) return send_error(res, page.err());
  auto images = ctl.images_json();
  if (!images) return send_error(res, images.err());
  json list = std::move(*images);
  for (const char* key : {"version", "hw", "kind"})
    if (req.has_param(key)) list = filter_by(list, key, req.get_param_value(key));
  send_page(req, res, *page, list);
}

}  // namespace

void add_image_routes(RouteTable& routes, Controller& ctl) {
  routes.post("/api/v1/images", Role::operator_, [&ctl](const httplib::Request& req, httplib::Response& res) {
    add_image(ctl, req, res);
  });
  routes.get("/api/v1/images", Role::read_only,
             [&ctl](const httplib::Request& req, httplib::Response& res) {
               send_images(ctl, req, res);
             });
  routes.get(R"(/api/v1/images/([^/]+))", Role::read_only,
             [&ctl](const httplib::Request& req, httplib::Response& res) {
               reply(res, ctl.image_json(req.matches[1]));
             });
  routes.del(R"(/api/v1/images/([^/]+))", Role::operator_,
             [&ctl](const httplib::Request& req, httplib::Response& res) {
               reply(res, ctl.delete_image(req.matches[1], actor()));
             });
}

}  // namespace ota::service::http
