// Operations routes: health, status, metrics, the event log and the database backup.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "routes.hpp"

namespace ota::service::http {

namespace {

void send_health(Controller& ctl, httplib::Response& res) {
  bool ok = false;
  json body = ctl.health_json(&ok);
  send_json(res, ok ? 200 : 503, body);
}

void send_events(Controller& ctl, const httplib::Request& req, httplib::Response& res) {
  for (const auto& kv : req.params) {
    const std::string& k = kv.first;
    if (k != "rollout" && k != "deployment" && k != "device" && k != "after" &&
        k != "before" && k != "limit" && k != "pretty")
      return send_error(res, 400,
                        "unknown query parameter '" + k +
                            "' for GET /api/v1/events (it takes: rollout, deployment, device, "
                            "after, before, limit, pretty)",
                        k);
  }
  EventFilter f;
  f.deployment = req.get_param_value("deployment");
  f.device = req.get_param_value("device");
  f.rollout = req.get_param_value("rollout");
  if (req.has_param("after")) {
    auto a = parse_u32("after", req.get_param_value("after"), 0, 0xFFFFFFFFu);
    if (!a) return send_error(res, 400, a.error(), "after");
    f.after_id = *a;
  }
  if (req.has_param("before")) {
    auto b = parse_u32("before", req.get_param_value("before"), 1, 0xFFFFFFFFu);
    if (!b) return send_error(res, 400, b.error(), "before");
    f.before_id = *b;
  }
  if (req.has_param("limit")) {
    auto l = parse_u32("limit", req.get_param_value("limit"), 1, 10000);
    if (!l) return send_error(res, 400, l.error(), "limit");
    f.limit = static_cast<int>(*l);
  }
  auto events = ctl.events_json(f);
  if (!events) return send_error(res, events.err());
  // The newest `limit` entries, oldest first: a full page may have older ones before it,
  // the next page (going back in time) ends before its first id.
  if (!events->empty() && events->size() == static_cast<std::size_t>(f.limit))
    res.set_header("Link", next_link(req, "before", events->front().value("id", 0LL)));
  send_json(res, 200, *events);
}

// The database as one SQLite file (an online backup): restore it by stopping the
// controller, putting the file in place of --db (without -wal/-shm) and starting it. Admin:
// it holds everything, the token hashes included.
void send_backup(Controller& ctl, httplib::Response& res) {
  const std::string tmp = ctl.backup_temp_path();
  auto size = ctl.backup_database(tmp);
  if (!size) {
    ::unlink(tmp.c_str());
    return send_error(res, size.kind() == ErrKind::conflict ? 409 : 500, size.error());
  }
  const int fd = ::open(tmp.c_str(), O_RDONLY | O_CLOEXEC);
  ::unlink(tmp.c_str());  // the open descriptor keeps the bytes until the reply is sent
  if (fd < 0) return send_error(res, 500, "backup: reopen " + tmp + ": " + std::strerror(errno));
  res.status = 200;
  res.set_header("Content-Disposition", "attachment; filename=\"controller-backup.db\"");
  res.set_content_provider(
      static_cast<std::size_t>(*size), "application/vnd.sqlite3",
      [fd](std::size_t offset, std::size_t length, httplib::DataSink& sink) {
        char buf[64 * 1024];
        const std::size_t want = std::min(length, sizeof buf);
        const ssize_t n = ::pread(fd, buf, want, static_cast<off_t>(offset));
        if (n <= 0) return false;
        return sink.write(buf, static_cast<std::size_t>(n));
      },
      [fd](bool) { ::close(fd); });
}

}  // namespace

void add_ops_routes(RouteTable& routes, Controller& ctl, const std::function<bool()>& ready) {
  routes.get_without_token("/api/v1/health", [&ctl](const httplib::Request&, httplib::Response& res) {
    send_health(ctl, res);
  });
  routes.get("/api/v1/backup", Role::admin, [&ctl](const httplib::Request&, httplib::Response& res) {
    send_backup(ctl, res);
  });
  routes.get("/metrics", Role::read_only, [&ctl](const httplib::Request&, httplib::Response& res) {
    res.status = 200;
    res.set_content(ctl.metrics_text(), "text/plain; version=0.0.4; charset=utf-8");
  });
  routes.get("/api/v1/status", Role::read_only,
             [&ctl, &ready](const httplib::Request&, httplib::Response& res) {
               auto r = ctl.status_json();
               if (r) (*r)["mqtt"] = (ready && !ready()) ? "not connected" : "connected";
               reply(res, r);
             });
  routes.get("/api/v1/events", Role::read_only,
             [&ctl](const httplib::Request& req, httplib::Response& res) { send_events(ctl, req, res); });
}

}  // namespace ota::service::http
