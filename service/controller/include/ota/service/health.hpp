// Health that tells the truth: the broker link, the database and the disks each get their
// own verdict, and /health is not ok while any of them fails. A function over a snapshot
// the Controller gathers (health_json) and the matching Prometheus lines.
#pragma once

#include <cstdint>
#include <iosfwd>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "ota/service/controller_config.hpp"
#include "ota/service/database.hpp"
#include "ota/service/publisher.hpp"

namespace ota::service {

// Free space for an unprivileged writer on the filesystem holding `path`.
struct DiskSpace {
  std::string path;
  bool known = false;
  std::uint64_t free_bytes = 0;
  std::string error;
};
// The disks of the database and of the image store (one entry if they are the same path).
std::vector<DiskSpace> watched_disks(const ControllerConfig& cfg);

struct HealthSnapshot {
  LinkStatus link;
  long long now = 0;  // the controller's clock (unix ms)
  Database::Health db;
  std::string db_path;
  std::vector<DiskSpace> disks;
  std::uint64_t min_free_bytes = 0;
  std::string key_id, prefix;
  std::uint64_t decode_errors = 0;
};

// GET /api/v1/health. *ok: every check passes.
nlohmann::json health_view(const HealthSnapshot& h, bool* ok);
// The ota_mqtt_*, ota_db_*, ota_disk_* and ota_events_pruned_total metrics.
void health_metrics(std::ostream& o, const HealthSnapshot& h);

}  // namespace ota::service
