// Key set routes (PROTOCOL.md 6.6): show (read-only) and push (admin); the body of a push is
// the `keys` message `otactl keys sign` wrote.
#include "routes.hpp"

namespace ota::service::http {

void add_key_routes(RouteTable& routes, Controller& ctl) {
  routes.get("/api/v1/keys", Role::read_only, [&ctl](const httplib::Request&, httplib::Response& res) {
    reply(res, ctl.keys_json());
  });
  routes.put("/api/v1/keys", Role::admin, [&ctl](const httplib::Request& req, httplib::Response& res) {
    reply(res, ctl.push_keys(req.body, actor()));
  });
}

}  // namespace ota::service::http
