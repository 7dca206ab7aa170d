// Deletions (DELETE in the HTTP API): images no deployment or rollout refers to, rollouts
// that never started, decommissioned devices. The event log is never deleted from here: it
// is the history of what was deleted.
#include <sqlite3.h>

#include "ota/service/store.hpp"
#include "store_statement.hpp"

namespace ota::service {

using detail::Q;

Result<std::vector<std::string>> Store::image_users(const std::string& image_id) {
  // Unfinished ones first: they are what an operator can act on (cancel, abort, delete).
  OTA_PREP(q,
           "SELECT what, unfinished FROM ("
           "SELECT 'deployment ' || id || ' (' || state || ')' AS what, "
           "state = 'active' AS unfinished, created_at FROM deployments WHERE image_id = ?1 "
           "UNION ALL SELECT 'rollout ' || id || ' (' || state || ')', "
           "state NOT IN ('completed', 'aborted'), created_at FROM rollouts WHERE image_id = ?1) "
           "ORDER BY unfinished DESC, created_at DESC");
  q.bind(1, image_id);
  std::vector<std::string> out;
  while (q.step() == SQLITE_ROW) out.push_back(q.text(0));
  return out;
}

Status Store::delete_image(const std::string& id) {
  OTA_PREP(q, "DELETE FROM images WHERE id = ?");
  q.bind(1, id);
  OTA_DONE(q, "delete image");
  if (sqlite3_changes(db_) != 1) return not_found_err("unknown image " + id);
  return {};
}

Status Store::delete_unstarted_rollout(const std::string& id) {
  OTA_PREP(q, "DELETE FROM rollouts WHERE id = ? AND deployment_id = ''");
  q.bind(1, id);
  OTA_DONE(q, "delete rollout");
  if (sqlite3_changes(db_) != 1)
    return conflict_err("rollout " + id + " is unknown or has started");
  return {};
}

Status Store::delete_device(const std::string& id) {
  {
    OTA_PREP(q, "DELETE FROM device_tags WHERE device_id = ?");
    q.bind(1, id);
    OTA_DONE(q, "delete device tags");
  }
  OTA_PREP(q, "DELETE FROM devices WHERE id = ?");
  q.bind(1, id);
  OTA_DONE(q, "delete device");
  if (sqlite3_changes(db_) != 1) return not_found_err("unknown device " + id);
  return {};
}

}  // namespace ota::service
