// GET /api/v1/openapi.json: the OpenAPI 3 description of this API (service/openapi.json),
// compiled in (embed_file.cmake), so the controller serves the description of exactly the
// routes it was built with, from the build tree and from the installed package.
#include "routes.hpp"

extern const char kOpenApiJson[];
extern const std::size_t kOpenApiJson_size;

namespace ota::service::http {

namespace {

// Parsed once; a description that does not parse is a build error the tests catch
// (ServiceOpenApi.*), served as a 500 rather than a crash.
const json& openapi_description() {
  static const json parsed =
      json::parse(kOpenApiJson, kOpenApiJson + kOpenApiJson_size, nullptr, false);
  return parsed;
}

}  // namespace

void add_openapi_route(RouteTable& routes) {
  routes.get("/api/v1/openapi.json", Role::read_only,
             [](const httplib::Request&, httplib::Response& res) {
               const json& d = openapi_description();
               if (d.is_discarded())
                 return send_error(res, 500, "the compiled-in OpenAPI description is not JSON");
               send_json(res, 200, d);
             });
}

}  // namespace ota::service::http
