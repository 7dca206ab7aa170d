// Deletions through the API: unused images, rollouts that never started, decommissioned
// devices. Each holds the database lock for the whole change (checks, transaction, memory),
// so nothing it checked can change before it commits; a refusal changes nothing.
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "ota/service/controller.hpp"
#include "ota/service/log.hpp"

namespace ota::service {

using nlohmann::json;

namespace {

// "a, b, c and 2 more" (at most `shown` named).
std::string name_some(const std::vector<std::string>& items, std::size_t shown) {
  std::string out;
  for (std::size_t i = 0; i < items.size() && i < shown; ++i) out += (i ? ", " : "") + items[i];
  if (items.size() > shown) out += " and " + std::to_string(items.size() - shown) + " more";
  return out;
}

}  // namespace

Result<json> Controller::delete_image(const std::string& ref, const std::string& actor) {
  DbLock db(db_);
  auto img = resolve_image(db.store(), ref);
  if (!img) return img.context("image delete");
  auto users = db.store().image_users(img->id);
  if (!users) return users.context("image delete");
  // The deployments and rollouts table refer to their image (foreign keys): finished ones too,
  // since their history names it.
  if (!users->empty())
    return conflict_err("image " + img->id + " (version " + img->version + ") is used by " +
                        name_some(*users, 5) +
                        ": cancel or finish active deployments, delete draft rollouts; an image "
                        "that finished deployments or rollouts refer to stays with their history");
  Tx tx(db.store());
  Status s = tx.status();
  if (s) s = db.store().delete_image(img->id);
  if (s) db.event("", "", "image_deleted", img->id + " version " + img->version, actor);
  if (s) s = tx.commit();
  if (!s) return s.context("image delete: db");
  // After the commit: a failed unlink leaves an orphan file (logged), never a row without one.
  const std::string path = image_path(cfg_.store_dir, img->sha256);
  if (::unlink(path.c_str()) != 0 && errno != ENOENT)
    log_warn("image delete: unlink " + path + ": " + std::strerror(errno));
  log_info("image " + img->id + " version " + img->version + " deleted by " +
           (actor.empty() ? "controller" : actor));
  return json{{"id", img->id}, {"version", img->version}, {"deleted", true}};
}

Result<json> Controller::delete_rollout(const std::string& id, const std::string& actor) {
  DbLock db(db_);
  return runner_.remove(db, id, actor);
}

Result<json> Controller::decommission_device(const std::string& dev, const std::string& actor) {
  DbLock db(db_);
  auto d = db.store().device(dev);
  if (!d) return d.context("decommission");
  if (!*d) return not_found_err("decommission: unknown device " + dev);
  if ((*d)->revoked_at > 0)
    return conflict_err("decommission: device " + dev +
                        " is revoked, and its record is what keeps it refused; it stays");
  auto rows = db.store().rows_for_device(dev, 1000000);
  if (!rows) return rows.context("decommission");
  std::vector<std::string> unfinished;
  for (const auto& r : *rows)
    if (!is_final(r.state)) unfinished.push_back(r.deployment_id + " (" + to_string(r.state) + ")");
  if (!unfinished.empty())
    return conflict_err("decommission: device " + dev + " is in deployment " +
                        name_some(unfinished, 3) +
                        ": cancel it (or abort its rollout) or let it finish first");
  // Lazily kept progress and seqs are written first: none of them may land on a deleted row.
  flush(db, true);
  Tx tx(db.store());
  Status s = tx.status();
  if (s) s = db.store().delete_device(dev);
  if (s) db.event("", dev, "device_decommissioned", "its history stays", actor);
  if (s) s = tx.commit();
  if (!s) return s.context("decommission: db");
  registry_.forget(dev);
  // The broker keeps the device's last hello (retained) and would deliver it again at the
  // next subscribe (a controller restart), bringing the device back: clear it.
  const std::string presence = cfg_.prefix + "/dev/" + dev + "/up/presence";
  if (pub_ && !pub_->publish(presence, "", 0, 1, true))
    log_warn("decommission: could not clear the retained hello of " + dev +
             " (broker link down); a controller restart may bring it back until it is cleared");
  log_info("device " + dev + " decommissioned by " + (actor.empty() ? "controller" : actor));
  return json{{"id", dev}, {"decommissioned", true}};
}

}  // namespace ota::service
