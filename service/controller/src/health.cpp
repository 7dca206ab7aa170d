// Health that tells the truth: the broker link, the database and the disks each get their
// own verdict, and /health is not ok while any of them fails. Also the periodic database
// probe and the event retention, both run from Controller::tick().
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <atomic>
#include <filesystem>
#include <ostream>

#include "ota/service/controller.hpp"
#include "ota/service/log.hpp"

namespace ota::service {

using nlohmann::json;

namespace {

struct DiskSpace {
  std::string path;
  bool known = false;
  std::uint64_t free_bytes = 0;
  std::string error;
};

// Free space for an unprivileged writer (f_bavail) on the filesystem holding `path`.
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

std::vector<DiskSpace> watched_disks(const ControllerConfig& cfg) {
  std::string db_dir = std::filesystem::path(cfg.db_path).parent_path().string();
  std::vector<DiskSpace> out{disk_space(db_dir)};
  out.front().path = db_dir.empty() ? "." : db_dir;
  if (cfg.store_dir != db_dir) out.push_back(disk_space(cfg.store_dir));
  return out;
}

}  // namespace

void Controller::probe_database(long long now_ms) {
  // While failing, probe every second so recovery shows as soon as space returns.
  const bool was = store_.writable();
  if (now_ms - last_db_probe_ms_ < (was ? cfg_.db_probe_interval_ms : 1000)) return;
  last_db_probe_ms_ = now_ms;
  Status s = store_.probe_write(now_ms);
  if (!s && was) log_error("database " + cfg_.db_path + " is not writable: " + s.error());
  if (s && !was) log_info("database " + cfg_.db_path + " is writable again");
}

void Controller::prune_history(long long now_ms) {
  if (cfg_.event_retention.max_age_ms <= 0 && cfg_.event_retention.max_count <= 0) return;
  if (now_ms - last_prune_ms_ < cfg_.prune_interval_ms) return;
  // One batch per tick: the lock is held briefly; a backlog drains a batch a second.
  auto n = store_.prune_events(cfg_.event_retention, now_ms);
  if (!n) {
    log_error("event retention: " + n.error());
    last_prune_ms_ = now_ms;
    return;
  }
  events_pruned_ += static_cast<std::uint64_t>(*n);
  if (*n == 0) last_prune_ms_ = now_ms;  // caught up: next round after the interval
}

Result<std::uint64_t> Controller::backup_database(const std::string& dest) {
  std::lock_guard<std::mutex> lock(mu_);
  Status s = store_.backup_to(dest);  // refuses (conflict) an existing dest
  std::error_code ec;
  if (!s) return s.context("backup");
  const auto size = std::filesystem::file_size(dest, ec);
  if (ec) return internal_err("backup: size of " + dest + ": " + ec.message());
  log_info("database backed up to " + dest + " (" + std::to_string(size) + " bytes)");
  return static_cast<std::uint64_t>(size);
}

std::string Controller::backup_temp_path() const {
  static std::atomic<unsigned> n{0};
  return cfg_.db_path + ".backup-" + std::to_string(::getpid()) + "-" + std::to_string(++n);
}

json Controller::health_json(bool* ok) {
  const LinkStatus link = pub_ ? pub_->link_status() : LinkStatus{};
  const long long t = now();
  json mqtt{{"ok", link.usable},
            {"state", link.usable ? "connected" : (link.connected ? "subscribing" : "connecting")},
            {"broker", link.broker},
            {"reconnects", link.reconnects},
            {"failed_attempts", link.failed_attempts}};
  if (!link.usable && link.down_since_ms > 0) {
    mqtt["down_since_ms"] = link.down_since_ms;
    mqtt["down_for_s"] = (t - link.down_since_ms) / 1000;
  }
  if (link.last_outage_ms >= 0) mqtt["last_outage_ms"] = link.last_outage_ms;
  if (!link.last_error.empty()) mqtt["last_error"] = link.last_error;

  json database;
  {
    std::lock_guard<std::mutex> lock(mu_);
    database = json{{"ok", store_.writable()},
                    {"path", cfg_.db_path},
                    {"writable", store_.writable()},
                    {"write_errors", store_.write_errors()}};
    if (!store_.last_error().empty()) database["last_error"] = store_.last_error();
    if (last_db_probe_ms_ > 0) database["probed_s_ago"] = (t - last_db_probe_ms_) / 1000;
  }

  bool disk_ok = true;
  json paths = json::array();
  for (const auto& d : watched_disks(cfg_)) {
    const bool enough = d.known && d.free_bytes >= cfg_.min_free_bytes;
    disk_ok = disk_ok && enough;
    json p{{"path", d.path}, {"ok", enough}};
    if (d.known) p["free_bytes"] = d.free_bytes;
    else p["error"] = d.error;
    paths.push_back(p);
  }
  json disk{{"ok", disk_ok}, {"min_free_bytes", cfg_.min_free_bytes}, {"paths", paths}};

  std::vector<std::string> failing;
  if (!link.usable) failing.push_back("mqtt");
  if (!database["ok"].get<bool>()) failing.push_back("database");
  if (!disk_ok) failing.push_back("disk");
  const bool all_ok = failing.empty();
  if (ok) *ok = all_ok;
  // "starting": the broker was never reached yet and nothing else fails.
  const bool starting = failing.size() == 1 && failing[0] == "mqtt" && link.reconnects == 0 &&
                        link.last_outage_ms < 0;
  return json{{"status", all_ok ? "ok" : (starting ? "starting" : "failing")},
              {"failing", failing},
              {"mqtt", link.usable ? "connected" : "not connected"},
              {"checks", {{"mqtt", mqtt}, {"database", database}, {"disk", disk}}},
              {"key_id", key_id()},
              {"prefix", prefix()},
              {"decode_errors", decode_errors()}};
}

void Controller::health_metrics(std::ostream& o) {
  const LinkStatus link = pub_ ? pub_->link_status() : LinkStatus{};
  const long long t = now();
  o << "# HELP ota_mqtt_up 1 while the broker link is connected and subscribed.\n"
       "# TYPE ota_mqtt_up gauge\nota_mqtt_up " << (link.usable ? 1 : 0) << "\n";
  o << "# HELP ota_mqtt_down_seconds How long the broker link has been down (0 while up).\n"
       "# TYPE ota_mqtt_down_seconds gauge\nota_mqtt_down_seconds "
    << (!link.usable && link.down_since_ms > 0 ? (t - link.down_since_ms) / 1000 : 0) << "\n";
  o << "# HELP ota_mqtt_reconnects_total Times the broker link became usable again after a loss.\n"
       "# TYPE ota_mqtt_reconnects_total counter\nota_mqtt_reconnects_total " << link.reconnects << "\n";
  o << "# HELP ota_mqtt_connect_failures_total Broker connection attempts that failed.\n"
       "# TYPE ota_mqtt_connect_failures_total counter\nota_mqtt_connect_failures_total "
    << link.failed_attempts << "\n";
  o << "# HELP ota_db_writable 1 while the database accepts writes.\n"
       "# TYPE ota_db_writable gauge\nota_db_writable " << (store_.writable() ? 1 : 0) << "\n";
  o << "# HELP ota_db_write_errors_total Database writes that failed (full disk, I/O error...).\n"
       "# TYPE ota_db_write_errors_total counter\nota_db_write_errors_total " << store_.write_errors()
    << "\n";
  o << "# HELP ota_disk_free_bytes Free bytes on the disks of the database and the image store.\n"
       "# TYPE ota_disk_free_bytes gauge\n";
  for (const auto& d : watched_disks(cfg_))
    if (d.known) o << "ota_disk_free_bytes{path=\"" << prometheus_label_value(d.path) << "\"} " << d.free_bytes << "\n";
  o << "# HELP ota_disk_min_free_bytes Free space below which /health fails.\n"
       "# TYPE ota_disk_min_free_bytes gauge\nota_disk_min_free_bytes " << cfg_.min_free_bytes << "\n";
  o << "# HELP ota_events_pruned_total Events deleted by the retention policy.\n"
       "# TYPE ota_events_pruned_total counter\nota_events_pruned_total " << events_pruned_ << "\n";
}

}  // namespace ota::service
