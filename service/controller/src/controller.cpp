// The Controller: wiring of the components, start-up, the periodic tick, the MQTT entry
// points and the operator actions. JSON queries, metrics and health: controller_queries.cpp.
#include "ota/service/controller.hpp"

#include <malloc.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>

#include "ota/service/log.hpp"

namespace ota::service {

using nlohmann::json;

Controller::Controller(ControllerConfig cfg, Signer signer, KeyRing keys, Publisher* pub)
    : cfg_(std::move(cfg)),
      pub_(pub),
      deferring_(pub ? std::make_unique<DeferringPublisher>(*pub) : nullptr),
      db_([this] { return now(); }),
      registry_(cfg_),
      keys_(std::move(signer), std::move(keys), decided(), cfg_.prefix, cfg_.offer_ttl,
            [this] { return now(); }),
      chunks_(cfg_.store_dir, cfg_.prefix, pub, cfg_.chunk_flow),  // frames, not decisions
      deployments_(cfg_, decided(), registry_, keys_, chunks_),
      runner_(cfg_, deployments_, registry_, keys_, chunks_),
      images_(cfg_, db_, keys_),
      inbound_(cfg_, db_, registry_, keys_, deployments_, runner_, chunks_, deferring_.get()) {
  // Bytes sent per row, and the row's first chunks move it to downloading.
  chunks_.set_served_hook([this](const std::string& dev, const std::string& offer_id,
                                 std::uint64_t bytes) {
    if (deployments_.chunks_served(dev, offer_id, bytes)) {
      DbLock db(db_);
      deployments_.transfer_started(db, dev, offer_id);
    }
  });
}

Controller::~Controller() {
  inbound_.stop();  // applies what waits; it calls into every component below
  chunks_.stop();   // the senders call into deployments_
  DbLock db(db_);
  flush(db, true);
}

Result<std::unique_ptr<Controller>> Controller::create(const ControllerConfig& cfg, Signer signer,
                                                       Publisher* pub) {
  Status d = ensure_dir(cfg.store_dir);
  if (!d) return d.context("image store " + cfg.store_dir);
  auto point = p256_point_of(signer.key());
  if (!point) return point.context("signing key");
  auto ring = KeyRing::create(cfg.keys, signer.key_id(), *point);
  if (!ring) return ring.err();
  std::unique_ptr<Controller> c(new Controller(cfg, std::move(signer), std::move(*ring), pub));
  Status s = c->db_.open(cfg.db_path);
  if (!s) return s.context("database");
  {
    DbLock db(c->db_);
    Status k = c->keys_.load(db);
    if (!k) return k.err();
  }
  if (!cfg.acl_file.empty()) {
    Status a = c->registry_.reload_acl_if_changed(true);
    if (!a) return a.context("--acl-file");
  } else {
    log_warn("no --acl-file: group membership is taken from the groups devices claim in "
             "their hello (a device can join any group deployment); pass the broker's "
             "acl_file to make the ACL the authority");
  }
  Status l = c->load();
  if (!l) return l.context("load state");
  return c;
}

Status Controller::load() {
  DbLock db(db_);
  auto devices = registry_.load(db);
  if (!devices) return devices.err();
  Status d = deployments_.load(db);
  if (!d) return d;
  Status r = runner_.load(db);
  if (!r) return r.context("rollouts");
  log_info("loaded " + std::to_string(*devices) + " devices, " +
           std::to_string(deployments_.active_count()) + " active deployments, " +
           std::to_string(runner_.live_count()) + " live rollouts");
  return {};
}

void Controller::flush(DbLock& db, bool force) {
  if (!deployments_.needs_flush(force) && !registry_.needs_flush(force)) return;
  Tx tx(db.store());
  if (!tx.status()) {
    log_error("flush: " + tx.status().error());
    return;
  }
  deployments_.flush_rows(db, force);
  registry_.flush(db, force);
  Status c = tx.commit();
  if (!c) log_error("flush: " + c.error());
}

void Controller::complete(DbLock& db, const std::string& dep_id) {
  auto done = deployments_.complete_if_done(db, dep_id);
  if (done && !done->empty()) runner_.forget(*done);
}

// ------------------------------------------------------------------------ the tick thread

void Controller::tick() {
  inbound_.retry_unapplied_hellos();
  const bool link_up = !pub_ || pub_->ready();
  if (link_up) rollout_tick(now());
  {
    DbLock db(db_);
    if (link_up) deployments_.reoffer_deferred(db, now());
    flush(db, false);
    db_.probe(db, now(), cfg_.db_probe_interval_ms, cfg_.db_path);
    db_.prune(db, now(), cfg_.event_retention, cfg_.prune_interval_ms);
    if (registry_.acl_enabled()) {
      Status s = registry_.reload_acl_if_changed(false);
      if (!s) log_error(s.error() + " (keeping the memberships read before)");
    }
  }
  return_free_memory();
}

// glibc keeps what a thread frees in that thread's arena, and the HTTP workers each once
// built a large reply (a page of 1,000 devices, the fleet's events): with 10,000 idle
// devices the controller sat at 431 MiB, most of it free memory held by a dozen arenas
// (3,000 devices: 143 MiB, 29 MiB right after malloc_trim). Trimming costs a few ms.
void Controller::return_free_memory() {
#ifdef __GLIBC__
  const auto t = std::chrono::steady_clock::now();
  if (t - last_memory_return_ < std::chrono::seconds(10)) return;
  last_memory_return_ = t;
  malloc_trim(0);
#endif
}

void Controller::rollout_tick(long long now_ms) {
  DbLock db(db_);
  deployments_.apply_offer_acks(db);
  deployments_.resend_unsent_offers(db);
  runner_.advance(db, now_ms);
}

// -------------------------------------------------------------------------- the MQTT side

void Controller::on_message(const char* topic, const void* payload, std::size_t len,
                            bool retained) {
  inbound_.on_message(topic, payload, len, retained);
}

void Controller::on_connected(bool after_link_loss) {
  DbLock db(db_);
  deployments_.on_connected(db, after_link_loss);
}

void Controller::offer_acks_arrived() {
  DbLock db(db_);
  deployments_.apply_offer_acks(db);
}

// ----------------------------------------------------------------------- operator actions

Result<AddImageResult> Controller::add_image(const std::string& bytes, const ImageParams& p,
                                             const std::string& actor) {
  return images_.add(bytes, p, actor);
}

Result<DeploymentRec> Controller::deploy(const std::string& image_ref, const std::string& kind,
                                         const std::string& target, const std::string& actor) {
  DbLock db(db_);
  auto img = resolve_image(db.store(), image_ref);
  if (!img) return img.context("deploy");
  Status deployable = keys_.check_deployable(*img);
  if (!deployable) return deployable.context("deploy");
  return deployments_.deploy(db, *img, kind, target, actor);
}

Result<DeploymentRec> Controller::cancel(const std::string& deployment_id, const std::string& actor) {
  DbLock db(db_);
  flush(db, true);
  return deployments_.cancel(db, deployment_id, actor);
}

Status Controller::reset_seq(const std::string& dev, const std::string& actor) {
  DbLock db(db_);
  auto d = db.store().device(dev);
  if (!d) return d.context("reset seq");
  if (!*d) return not_found_err("unknown device " + dev);
  Tx tx(db.store());
  Status s = tx.status();
  if (s) s = db.store().set_device_last_seq(dev, -1);
  if (s) db.event("", dev, "seq_reset", "by operator (was " + std::to_string((*d)->last_seq) + ")", actor);
  if (s) s = tx.commit();
  if (!s) return s.context("reset seq");
  registry_.set_seq(dev, -1);
  return {};
}

Result<json> Controller::revoke_device(const std::string& dev, const std::string& actor) {
  {
    DbLock db(db_);
    auto d = db.store().device(dev);
    if (!d) return d.context("revoke");
    if (!*d) return not_found_err("revoke: unknown device " + dev);
    if ((*d)->revoked_at > 0) return conflict_err("revoke: device " + dev + " is already revoked");
    flush(db, true);
    Tx tx(db.store());
    Status s = tx.status();
    if (s) s = db.store().set_device_revoked(dev, now_s());
    std::vector<std::string> touched;
    if (s) {
      auto t = deployments_.cancel_rows_of(db, dev, actor);
      if (t) touched = std::move(*t);
      else s = t.err();
    }
    if (s) db.event("", dev, "device_revoked", "its messages are dropped from now on", actor);
    if (s) s = tx.commit();
    if (!s) return s.context("revoke: db");
    registry_.set_revoked(dev);
    log_warn("device " + dev + " revoked by " + (actor.empty() ? "controller" : actor) +
             "; revoke its certificate on the broker too (broker-config/pki.sh revoke)");
    for (const auto& id : touched) complete(db, id);
  }
  return device_json(dev);
}

Result<json> Controller::push_keys(const std::string& body, const std::string& actor) {
  {
    DbLock db(db_);
    auto version = keys_.push(db, body, actor);
    if (!version) return version.err();
    // Online devices that trust an older set get it now, the others at their next hello.
    auto devs = db.store().list_devices({});
    if (!devs) return devs.context("key set: devices");
    std::size_t sent = 0;
    const long long t = now();
    for (const auto& d : *devs) {
      if (d.keys >= *version || registry_.revoked(d.id) || !registry_.is_online(d, t, nullptr)) continue;
      keys_.send_keys(d.id, /*force=*/true, d.keys);
      sent++;
    }
    log_info("key set version " + std::to_string(*version) + " sent to " + std::to_string(sent) +
             " online devices");
  }
  return keys_json();
}

Result<json> Controller::keys_json() {
  DbLock db(db_);
  json out = keys_.to_json();
  auto by = db.store().count_by("SELECT CAST(keyset AS TEXT), COUNT(*) FROM devices GROUP BY keyset");
  if (!by) return by.context("keys");
  out["devices_by_version"] = *by;
  return out;
}

Result<json> Controller::create_rollout(const json& body, const std::string& actor) {
  DbLock db(db_);
  return runner_.create(db, body, actor);
}

Result<json> Controller::rollout_action(const std::string& id, const std::string& action,
                                        const json& body, const std::string& actor) {
  DbLock db(db_);
  return runner_.action(db, id, action, body, actor);
}

Result<json> Controller::set_device_tags(const std::string& id, const json& body,
                                         const std::string& actor) {
  if (!body.is_object() || body.empty())
    return invalid_err("tags: body must be a JSON object like {\"site\": \"berlin\", \"old\": null}");
  for (auto it = body.begin(); it != body.end(); ++it) {
    if (!valid_tag_key(it.key()) || it.key() == "id" || it.key() == "hw" ||
        it.key() == "version" || it.key() == "group")
      return invalid_err("tags: '" + it.key() +
                         "' is not a valid tag name (1-64 of A-Z a-z 0-9 _ - .; not id, hw, "
                         "version, group, and, or, not)");
    if (!it->is_null() && (!it->is_string() || !valid_tag_value(it->get<std::string>())))
      return invalid_err("tags: value of '" + it.key() +
                         "' must be a string of at most 128 of A-Z a-z 0-9 _ - . : / + (or null to remove)");
  }
  {
    DbLock db(db_);
    auto d = db.store().device(id);
    if (!d) return d.context("tags");
    if (!*d) return not_found_err("tags: unknown device " + id);
    Tx tx(db.store());
    Status s = tx.status();
    std::string detail;
    for (auto it = body.begin(); it != body.end() && s; ++it) {
      s = db.store().set_device_tag(
          id, it.key(), it->is_null() ? std::nullopt : std::optional<std::string>(it->get<std::string>()));
      detail += (detail.empty() ? "" : " ") + it.key() + "=" + (it->is_null() ? "(removed)" : it->get<std::string>());
    }
    if (s) db.event("", id, "tags_set", detail, actor);
    if (s) s = tx.commit();
    if (!s) return s.context("tags");
  }
  return device_json(id);
}

Result<std::uint64_t> Controller::backup_database(const std::string& dest) {
  DbLock db(db_);
  Status s = db.store().backup_to(dest);  // refuses (conflict) an existing dest
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

}  // namespace ota::service
