#include "ota/service/health.hpp"

#include <sys/statvfs.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <ostream>

#include "ota/service/metrics.hpp"

namespace ota::service {

using nlohmann::json;

namespace {

DiskSpace disk_space(const std::string& path) {
  DiskSpace d;
  d.path = path.empty() ? "." : path;
  struct statvfs st {};
  if (::statvfs(d.path.c_str(), &st) != 0) {
    d.error = std::string("statvfs: ") + std::strerror(errno);
    return d;
  }
  d.known = true;
  d.free_bytes = static_cast<std::uint64_t>(st.f_bavail) * static_cast<std::uint64_t>(st.f_frsize);
  return d;
}

json mqtt_check(const HealthSnapshot& h) {
  const LinkStatus& link = h.link;
  json mqtt{{"ok", link.usable},
            {"state", link.usable ? "connected" : (link.connected ? "subscribing" : "connecting")},
            {"broker", link.broker},
            {"reconnects", link.reconnects},
            {"failed_attempts", link.failed_attempts}};
  if (!link.usable && link.down_since_ms > 0) {
    mqtt["down_since_ms"] = link.down_since_ms;
    mqtt["down_for_s"] = (h.now - link.down_since_ms) / 1000;
  }
  if (link.last_outage_ms >= 0) mqtt["last_outage_ms"] = link.last_outage_ms;
  if (!link.last_error.empty()) mqtt["last_error"] = link.last_error;
  return mqtt;
}

json database_check(const HealthSnapshot& h) {
  json database{{"ok", h.db.writable},
                {"path", h.db_path},
                {"writable", h.db.writable},
                {"write_errors", h.db.write_errors}};
  if (!h.db.last_error.empty()) database["last_error"] = h.db.last_error;
  if (h.db.last_probe_ms > 0) database["probed_s_ago"] = (h.now - h.db.last_probe_ms) / 1000;
  return database;
}

}  // namespace

std::vector<DiskSpace> watched_disks(const ControllerConfig& cfg) {
  std::string db_dir = std::filesystem::path(cfg.db_path).parent_path().string();
  std::vector<DiskSpace> out{disk_space(db_dir)};
  out.front().path = db_dir.empty() ? "." : db_dir;
  if (cfg.store_dir != db_dir) out.push_back(disk_space(cfg.store_dir));
  return out;
}

json health_view(const HealthSnapshot& h, bool* ok) {
  const json mqtt = mqtt_check(h);
  const json database = database_check(h);
  bool disk_ok = true;
  json paths = json::array();
  for (const auto& d : h.disks) {
    const bool enough = d.known && d.free_bytes >= h.min_free_bytes;
    disk_ok = disk_ok && enough;
    json p{{"path", d.path}, {"ok", enough}};
    if (d.known) p["free_bytes"] = d.free_bytes;
    else p["error"] = d.error;
    paths.push_back(p);
  }
  json disk{{"ok", disk_ok}, {"min_free_bytes", h.min_free_bytes}, {"paths", paths}};

  std::vector<std::string> failing;
  if (!h.link.usable) failing.push_back("mqtt");
  if (!h.db.writable) failing.push_back("database");
  if (!disk_ok) failing.push_back("disk");
  const bool all_ok = failing.empty();
  if (ok) *ok = all_ok;
  // "starting": the broker was never reached yet and nothing else fails.
  const bool starting = failing.size() == 1 && !h.link.usable && h.link.reconnects == 0 &&
                        h.link.last_outage_ms < 0;
  return json{{"status", all_ok ? "ok" : (starting ? "starting" : "failing")},
              {"failing", failing},
              {"mqtt", h.link.usable ? "connected" : "not connected"},
              {"checks", {{"mqtt", mqtt}, {"database", database}, {"disk", disk}}},
              {"key_id", h.key_id},
              {"prefix", h.prefix},
              {"decode_errors", h.decode_errors}};
}

void health_metrics(std::ostream& o, const HealthSnapshot& h) {
  const LinkStatus& link = h.link;
  o << "# HELP ota_mqtt_up 1 while the broker link is connected and subscribed.\n"
       "# TYPE ota_mqtt_up gauge\nota_mqtt_up " << (link.usable ? 1 : 0) << "\n";
  o << "# HELP ota_mqtt_down_seconds How long the broker link has been down (0 while up).\n"
       "# TYPE ota_mqtt_down_seconds gauge\nota_mqtt_down_seconds "
    << (!link.usable && link.down_since_ms > 0 ? (h.now - link.down_since_ms) / 1000 : 0) << "\n";
  o << "# HELP ota_mqtt_reconnects_total Times the broker link became usable again after a loss.\n"
       "# TYPE ota_mqtt_reconnects_total counter\nota_mqtt_reconnects_total " << link.reconnects << "\n";
  o << "# HELP ota_mqtt_connect_failures_total Broker connection attempts that failed.\n"
       "# TYPE ota_mqtt_connect_failures_total counter\nota_mqtt_connect_failures_total "
    << link.failed_attempts << "\n";
  o << "# HELP ota_db_writable 1 while the database accepts writes.\n"
       "# TYPE ota_db_writable gauge\nota_db_writable " << (h.db.writable ? 1 : 0) << "\n";
  o << "# HELP ota_db_write_errors_total Database writes that failed (full disk, I/O error...).\n"
       "# TYPE ota_db_write_errors_total counter\nota_db_write_errors_total " << h.db.write_errors
    << "\n";
  o << "# HELP ota_disk_free_bytes Free bytes on the disks of the database and the image store.\n"
       "# TYPE ota_disk_free_bytes gauge\n";
  for (const auto& d : h.disks)
    if (d.known) o << "ota_disk_free_bytes{path=\"" << prometheus_label_value(d.path) << "\"} " << d.free_bytes << "\n";
  o << "# HELP ota_disk_min_free_bytes Free space below which /health fails.\n"
       "# TYPE ota_disk_min_free_bytes gauge\nota_disk_min_free_bytes " << h.min_free_bytes << "\n";
  o << "# HELP ota_events_pruned_total Events deleted by the retention policy.\n"
       "# TYPE ota_events_pruned_total counter\nota_events_pruned_total " << h.db.events_pruned << "\n";
}

}  // namespace ota::service
