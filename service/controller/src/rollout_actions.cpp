// Rollout runner: the operator's actions (create, start, pause, resume, abort, retry,
// rollback) and the targets of a rollout.
#include <algorithm>
#include <set>

#include "ota/proto/topics.hpp"
#include "ota/service/image_catalog.hpp"
#include "ota/service/log.hpp"
#include "ota/service/rollout_records.hpp"
#include "ota/service/rollout_runner.hpp"
#include "ota/service/util.hpp"

namespace ota::service {

using nlohmann::json;

namespace {

const std::set<std::string> kRolloutActions{"start", "pause", "resume", "abort", "retry", "rollback"};

std::string random_id(const char* prefix) {
  const std::string hex = random_hex(6);
  return hex.empty() ? std::string(prefix) : prefix + hex;
}

// The target of a create request into rec.target_kind / rec.target.
Status parse_target(const json& body, RolloutRec& rec) {
  const json* t = body.contains("target") ? &body["target"] : nullptr;
  if (!t || !t->is_object() || t->size() != 1)
    return invalid_field_err("target", "rollout: \"target\" must be one of {\"group\": G}, {\"devices\": [..]}, "
                       "{\"tags\": \"site=berlin and model=esp32\"}");
  if (t->contains("group")) {
    const json& g = (*t)["group"];
    if (!g.is_string() || !proto::valid_id(g.get<std::string>().data(), g.get<std::string>().size()))
      return invalid_field_err("target.group", "rollout: target.group must be a valid group id");
    rec.target_kind = "group";
    rec.target = g.get<std::string>();
  } else if (t->contains("devices")) {
    const json& ds = (*t)["devices"];
    if (!ds.is_array() || ds.empty()) return invalid_field_err("target.devices", "rollout: target.devices must be a non-empty array");
    for (const auto& d : ds)
      if (!d.is_string() || !proto::valid_id(d.get<std::string>().data(), d.get<std::string>().size()))
        return invalid_field_err("target.devices", "rollout: target.devices: " + d.dump() + " is not a valid device id");
    rec.target_kind = "devices";
    rec.target = ds.dump();
  } else if (t->contains("tags")) {
    if (!(*t)["tags"].is_string()) return invalid_field_err("target.tags", "rollout: target.tags must be a string");
    auto e = TagExpr::parse((*t)["tags"].get<std::string>());
    if (!e) return invalid_field_err("target.tags", "rollout: target.tags: " + e.error());
    rec.target_kind = "tags";
    rec.target = e->text();
  } else {
    return invalid_field_err("target", "rollout: target needs \"group\", \"devices\" or \"tags\"");
  }
  return {};
}

// The fields of a create request are known ones.
Status check_create_fields(const json& body) {
  if (!body.is_object()) return invalid_err("rollout: body must be a JSON object");
  static const std::set<std::string> known{
      "image",   "name",        "target",  "waves",          "failure",  "retries",
      "retry_delay", "timeout", "max_concurrent", "start_at", "window",   "defer_delay",
      "max_defers",  "start"};
  for (auto it = body.begin(); it != body.end(); ++it)
    if (!known.count(it.key())) return invalid_field_err(it.key(), "rollout: unknown field \"" + it.key() + "\"");
  return {};
}

// The devices a start leaves out and why, and the version most of the others run.
struct Eligible {
  std::vector<std::string> devices, wrong_hw, busy;
  std::string from;  // most common running version other than the image's
};

}  // namespace

// ----------------------------------------------------------------------------- create

Result<json> RolloutRunner::create(DbLock& db, const json& body, const std::string& actor) {
  Status fields = check_create_fields(body);
  if (!fields) return fields.err();
  auto policy = parse_policy(body);
  if (!policy) return policy.context("rollout");
  if (!body.contains("image") || !body["image"].is_string())
    return invalid_field_err("image", "rollout: \"image\" (image id or version) is required");
  RolloutRec rec;
  if (body.contains("name")) {
    if (!body["name"].is_string() || body["name"].get<std::string>().size() > 128)
      return invalid_field_err("name", "rollout: \"name\" must be a string of at most 128 characters");
    rec.name = body["name"].get<std::string>();
  }
  Status t = parse_target(body, rec);
  if (!t) return t.err();
  const bool start_now = body.value("start", false);
  auto img = resolve_image(db.store(), body["image"].get<std::string>());
  if (!img) {
    Err e = img.context("rollout");
    e.field = "image";
    return e;
  }
  Status deployable = keys_.check_deployable(*img);
  if (!deployable) return deployable.context("rollout");
  rec.id = random_id("ro-");
  if (rec.id.size() < 4) return internal_err("rollout: no randomness for the id");
  rec.image_id = img->id;
  rec.policy = policy->to_json().dump();
  rec.state = RolloutStatus::draft;
  rec.created_at = now() / 1000;
  {
    Tx tx(db.store());
    Status s = tx.status();
    if (s) s = db.store().insert_rollout(rec);
    if (s)
      db.event("", "", "rollout_created",
               "image " + img->id + " (" + img->version + ") to " + rec.target_kind + " " +
                   rec.target + ", " + std::to_string(policy->waves.size()) + " waves",
               actor, rec.id);
    if (s) s = tx.commit();
    if (!s) return s.context("rollout: db");
  }
  std::lock_guard<std::mutex> lock(mu_);
  Live& ro = rollouts_.insert_or_assign(rec.id, Live{rec, std::move(*policy), engine_state(rec)}).first->second;
  if (start_now) {
    Status s = start(db, ro, actor, now());
    if (!s) return s.context("rollout " + rec.id + " created but not started");
  }
  return current_json(db, rec.id);
}

// ------------------------------------------------------------------------------ start

Result<std::vector<std::string>> RolloutRunner::resolve_targets(DbLock& db, const RolloutRec& r) {
  std::vector<std::string> out;
  if (r.target_kind == "group") return registry_.known_members(r.target);
  if (r.target_kind == "devices") {
    auto ids = json::parse(r.target, nullptr, false);
    std::vector<std::string> unknown;
    for (const auto& j : ids) {
      const std::string id = j.get<std::string>();
      auto d = db.store().device(id);
      if (!d) return d.err();
      if (!*d) unknown.push_back(id);
      out.push_back(id);
    }
    if (!unknown.empty())
      return not_found_err("unknown devices: " + join(unknown, ", ") + " (they have never said hello)");
    return out;
  }
  auto expr = TagExpr::parse(r.target);
  if (!expr) return expr.err();
  for (const auto& kv : tag_subjects(db.store(), registry_))
    if (expr->matches(kv.second)) out.push_back(kv.first);
  return out;
}

namespace {

// Devices of another hardware model cannot take the image, devices busy in another
// deployment wait for it: both are left out (and said so).
Result<Eligible> eligible_devices(DbLock& db, const std::vector<std::string>& targets,
                                  const ImageRec& img, const DeviceRegistry& registry,
                                  const Deployments& deployments) {
  Eligible e;
  std::map<std::string, int> from_versions;
  for (const auto& id : targets) {
    auto d = db.store().device(id);
    if (!d) return d.err();
    if (!*d || registry.revoked(id)) continue;
    if (!contains(img.hw, (*d)->hw)) {
      e.wrong_hw.push_back(id);
      continue;
    }
    if (deployments.busy(id)) {
      e.busy.push_back(id);
      continue;
    }
    e.devices.push_back(id);
    from_versions[(*d)->version]++;
  }
  int best = 0;
  for (const auto& kv : from_versions)
    if (kv.second > best && kv.first != img.version) best = kv.second, e.from = kv.first;
  return e;
}

std::string targets_summary(const Eligible& e, const std::vector<RolloutRow>& rows,
                            std::size_t waves) {
  std::string sizes;
  std::vector<int> per(waves, 0);
  for (const auto& r : rows) per[static_cast<std::size_t>(r.wave)]++;
  for (int n : per) sizes += (sizes.empty() ? "" : "/") + std::to_string(n);
  return std::to_string(e.devices.size()) + " devices in waves " + sizes +
         (e.wrong_hw.empty() ? "" : "; excluded " + std::to_string(e.wrong_hw.size()) + " of another hw") +
         (e.busy.empty() ? "" : "; excluded " + std::to_string(e.busy.size()) + " busy in another deployment") +
         (e.from.empty() ? "" : "; most run " + e.from);
}

}  // namespace

Status RolloutRunner::start(DbLock& db, Live& ro, const std::string& actor, long long now_ms) {
  if (ro.rec.state != RolloutStatus::draft)
    return conflict_err("rollout " + ro.rec.id + " is " + to_string(ro.rec.state) +
                        "; only a draft can be started");
  if (ro.policy.start_at_s * 1000 <= now_ms) return claim_devices(db, ro, actor, now_ms);
  // Scheduled: its devices stay free for other deployments until the start time
  // (claim_devices then). What can be checked now is, so that a typo fails at once.
  auto img = db.store().image_by_id(ro.rec.image_id);
  if (!img) return img.err();
  if (!*img) return internal_err("image " + ro.rec.image_id + " missing");
  Status deployable = keys_.check_deployable(**img);
  if (!deployable) return deployable;
  auto targets = resolve_targets(db, ro.rec);
  if (!targets) return targets.err();
  const RolloutState before = ro.st;
  auto actions = op_start(ro.st, ro.policy, now_ms);
  if (!actions) return actions.err();
  RolloutRec next = ro.rec;
  store_engine_state(ro.st, next);
  Tx tx(db.store());
  Status s = tx.status();
  if (s) s = db.store().update_rollout(next);
  if (s)
    for (const auto& a : *actions) db.event("", "", a.what, a.detail, actor, ro.rec.id);
  if (s) s = tx.commit();
  if (!s) {
    ro.st = before;
    return s.context("db");
  }
  ro.rec = next;
  return {};
}

Status RolloutRunner::claim_devices(DbLock& db, Live& ro, const std::string& actor,
                                    long long now_ms) {
  auto img = db.store().image_by_id(ro.rec.image_id);
  if (!img) return img.err();
  if (!*img) return internal_err("image " + ro.rec.image_id + " missing");
  Status deployable = keys_.check_deployable(**img);
  if (!deployable) return deployable;
  auto targets = resolve_targets(db, ro.rec);
  if (!targets) return targets.err();
  auto el = eligible_devices(db, *targets, **img, registry_, deployments_);
  if (!el) return el.err();
  if (el->devices.empty())
    return invalid_err("rollout " + ro.rec.id + ": no eligible devices (" +
                       std::to_string(targets->size()) + " targets, " +
                       std::to_string(el->wrong_hw.size()) + " of another hw, " +
                       std::to_string(el->busy.size()) + " busy in another deployment)");
  auto rows = assign_waves(ro.rec.id, el->devices, ro.policy);
  std::string dep_id = random_id("dep-");
  if (dep_id.size() < 5) return internal_err("no randomness for the deployment id");
  auto dm = rollout_deployment(ro.rec, **img, dep_id, rows, now_ms);
  if (!dm) return dm.err();
  // A draft starts now; a scheduled rollout is started by the engine's next step.
  const RolloutState before = ro.st;
  std::vector<EngineAction> actions;
  if (ro.st.state == RolloutStatus::draft) {
    auto started = op_start(ro.st, ro.policy, now_ms);
    if (!started) return started.err();
    actions = std::move(*started);
  }
  RolloutRec next = ro.rec;
  store_engine_state(ro.st, next);
  next.deployment_id = dep_id;
  next.from_version = el->from;
  next.excluded = static_cast<long long>(el->wrong_hw.size() + el->busy.size());
  next.started_at = now_ms / 1000;
  Tx tx(db.store());
  Status s = tx.status();
  if (s) s = deployments_.insert(db, *dm);
  if (s) s = db.store().update_rollout(next);
  if (s) {
    db.event(dep_id, "", "rollout_targets", targets_summary(*el, rows, ro.policy.waves.size()),
             actor, ro.rec.id);
    for (const auto& a : actions) db.event(dep_id, "", a.what, a.detail, actor, ro.rec.id);
  }
  if (s) s = tx.commit();
  if (!s) {
    ro.st = before;
    return s.context("db");
  }
  ro.rec = next;
  dm->rollout = link_of(ro);
  deployments_.adopt(std::move(*dm));
  run_engine(db, ro, now_ms);
  return {};
}

Result<LiveDeployment> RolloutRunner::rollout_deployment(const RolloutRec& rec, const ImageRec& img,
                                                         const std::string& dep_id,
                                                         std::vector<RolloutRow>& rows,
                                                         long long now_ms) {
  // The deployment's own offer is bound to nobody: devices get per-device offers; this one
  // only records what was signed.
  OfferTarget unbound;
  unbound.rollback = !rec.rollback_of.empty();
  auto offer = keys_.build_offer(img, dep_id, unbound);
  if (!offer) return offer.err();
  auto file = chunks_.open(img);
  if (!file) return file.err();
  LiveDeployment dm;
  dm.rec.id = dep_id;
  dm.rec.image_id = img.id;
  dm.rec.target_kind = "rollout";
  dm.rec.target = rec.id;
  dm.rec.state = DeploymentState::active;
  dm.rec.offer = *offer;
  dm.rec.created_at = now_ms / 1000;
  dm.rollout_id = rec.id;
  dm.image = img;
  dm.file = *file;
  for (auto& r : rows) {
    LiveRow rm;
    rm.rec.deployment_id = dep_id;
    rm.rec.device_id = r.device;
    rm.rec.state = RowState::pending;
    rm.rec.total = img.size;
    rm.rec.wave = r.wave;
    rm.rec.ord = r.order;
    rm.rec.attempt = 0;
    rm.rec.updated_at = now_ms;
    dm.rows[r.device] = rm;
    r.changed = false;
  }
  return dm;
}

void RolloutRunner::start_when_due(DbLock& db, Live& ro, long long now_ms) {
  Status s = claim_devices(db, ro, "controller", now_ms);
  if (s || s.kind() == ErrKind::internal) {
    if (!s) log_error("rollout " + ro.rec.id + ": start: " + s.error() + " (retrying next tick)");
    return;
  }
  // Nothing to claim at the start time (every target busy, gone or of another hw, or the
  // image no longer deployable): paused by policy, so that watch ends and says why; a
  // resume makes it scheduled again and the next tick tries again.
  const RolloutState before = ro.st;
  ro.st.state = RolloutStatus::paused;
  ro.st.paused_by = PausedBy::policy;
  ro.st.pause_reason =
      "nothing to start at the start time: " + s.error() + "; resume it to try again";
  EngineAction paused;
  paused.what = "rollout_paused";
  paused.detail = ro.st.pause_reason;
  std::vector<RolloutRow> no_rows;
  Status a = apply_engine(db, ro, no_rows, {paused}, "controller", now_ms);
  if (!a) {
    ro.st = before;
    log_error("rollout " + ro.rec.id + ": " + a.error() + " (retrying next tick)");
  }
}

// --------------------------------------------------------------------- operator actions

Result<RolloutRunner::Live*> RolloutRunner::revive(DbLock& db, const RolloutRec& rec) {
  // Retry of a finished rollout: bring it and its deployment back to life.
  auto p = parse_policy(json::parse(rec.policy, nullptr, false), PolicySource::stored);
  if (!p) return p.context("retry: stored policy");
  Live m{rec, std::move(*p), engine_state(rec)};
  if (m.rec.state == RolloutStatus::aborted)
    return conflict_err("retry: rollout " + rec.id + " was aborted; create a new rollout");
  auto dep = db.store().deployment(m.rec.deployment_id);
  if (!dep || !*dep) return internal_err("retry: deployment of rollout " + rec.id + " missing");
  auto img = db.store().image_by_id((*dep)->image_id);
  if (!img || !*img) return internal_err("retry: image missing");
  Status s = deployments_.reopen(db, **dep, **img, link_of(m));
  if (!s) return s.context("retry");
  return &rollouts_.emplace(rec.id, std::move(m)).first->second;
}

Result<json> RolloutRunner::operator_step(DbLock& db, Live& ro, const std::string& action,
                                          const std::string& reason, const std::string& actor) {
  const long long t = now();
  const std::string id = ro.rec.id;
  auto engine_rows = deployments_.engine_rows(ro.rec.deployment_id);
  std::vector<RolloutRow> rows = engine_rows ? std::move(*engine_rows) : std::vector<RolloutRow>{};
  const RolloutState before = ro.st;
  Result<std::vector<EngineAction>> acts = std::vector<EngineAction>{};
  if (action == "pause") acts = op_pause(ro.st, reason);
  else if (action == "resume") acts = op_resume(ro.st);
  else if (action == "abort") acts = op_abort(ro.st, rows, reason);
  else acts = op_retry(ro.st, rows, ro.policy, t);
  if (!acts) {
    ro.st = before;
    return acts.context(action);
  }
  Status s = apply_engine(db, ro, rows, *acts, actor, t);
  if (!s) {
    ro.st = before;
    return s.context(action);
  }
  // A draft aborted before it started has no deployment to wait for.
  if (is_terminal(ro.rec.state) && ro.rec.deployment_id.empty()) {
    rollouts_.erase(id);
  } else {
    run_engine(db, ro, t);  // e.g. resume starts the next wave now, not a tick later
  }
  // (run_engine may have finished the rollout and dropped it from memory: `ro` is gone.)
  return current_json(db, id);
}

Result<json> RolloutRunner::action(DbLock& db, const std::string& id, const std::string& action,
                                   const json& body, const std::string& actor) {
  if (!kRolloutActions.count(action))
    return not_found_err("unknown rollout action '" + action +
                         "' (start, pause, resume, abort, retry, rollback)");
  if (!body.is_object()) return invalid_err(action + ": body must be a JSON object");
  std::string reason;
  if (body.contains("reason")) {
    if (!body["reason"].is_string() || body["reason"].get<std::string>().size() > 256)
      return invalid_err(action + ": \"reason\" must be a string of at most 256 characters");
    reason = body["reason"].get<std::string>();
  }
  std::lock_guard<std::mutex> lock(mu_);
  auto it = rollouts_.find(id);
  Live* ro = it == rollouts_.end() ? nullptr : &it->second;
  if (!ro) {
    auto rec = db.store().rollout(id);
    if (!rec) return rec.context(action);
    if (!*rec) return not_found_err(action + ": unknown rollout " + id);
    if (action == "rollback") return rollback(db, nullptr, **rec, body, actor);
    if (action != "retry")
      return conflict_err(action + ": rollout " + id + " is already " + to_string((*rec)->state));
    auto revived = revive(db, **rec);
    if (!revived) return revived.err();
    ro = *revived;
  }
  if (action == "rollback") return rollback(db, ro, ro->rec, body, actor);
  if (action == "start") {
    Status s = start(db, *ro, actor, now());
    if (!s) return s.context("start");
    return current_json(db, id);
  }
  return operator_step(db, *ro, action, reason, actor);
}

// ------------------------------------------------------------------------------ rollback

namespace {

// The devices of a rollout now running its version (or still installing it) that do not run
// `img` yet; refused: those whose security counter is above the image's.
Status rollback_targets(DbLock& db, const RolloutRec& rec, const ImageRec& img,
                        std::vector<std::string>* targets) {
  auto rows = db.store().rows(rec.deployment_id);
  if (!rows) return rows.context("rollback");
  auto ro_img = db.store().image_by_id(rec.image_id);
  std::vector<std::string> refused;
  for (const auto& r : *rows) {
    auto d = db.store().device(r.device_id);
    if (!d || !*d) continue;
    const bool affected = r.state == RowState::succeeded || is_installing(r.state) ||
                          (ro_img && *ro_img && (*d)->version == (*ro_img)->version);
    if (!affected || (*d)->version == img.version) continue;
    if ((*d)->counter > img.counter)
      refused.push_back("device " + r.device_id + " has security counter " +
                        std::to_string((*d)->counter) + " but image " + img.version +
                        " has counter " + std::to_string(img.counter));
    targets->push_back(r.device_id);
  }
  if (!refused.empty()) {
    std::string msg = "rollback refused: ";
    for (std::size_t i = 0; i < refused.size() && i < 5; ++i) msg += (i ? "; " : "") + refused[i];
    if (refused.size() > 5) msg += "; and " + std::to_string(refused.size() - 5) + " more";
    msg += ": the devices would refuse it (anti-rollback); release a fixed image with a "
           "counter at least as high instead";
    return conflict_err(msg);
  }
  if (targets->empty())
    return conflict_err("rollback: no device of rollout " + rec.id + " runs its version; nothing to roll back");
  return {};
}

// The image a rollback goes to: "image" of the request, else the version most devices ran.
Result<ImageRec> rollback_image(DbLock& db, const RolloutRec& rec, const json& body,
                                const KeyService& keys) {
  static const std::set<std::string> known{"image", "start", "reason"};
  for (auto it = body.begin(); it != body.end(); ++it)
    if (!known.count(it.key())) return invalid_err("rollback: unknown field \"" + it.key() + "\"");
  if (rec.deployment_id.empty())
    return conflict_err("rollback: rollout " + rec.id + " never started; nothing to roll back");
  std::string ref = rec.from_version;
  if (body.contains("image")) {
    if (!body["image"].is_string()) return invalid_err("rollback: \"image\" must be a string");
    ref = body["image"].get<std::string>();
  }
  if (ref.empty())
    return invalid_err("rollback: rollout " + rec.id + " does not know the previous version; give \"image\"");
  auto img = resolve_image(db.store(), ref);
  if (!img && img.kind() == ErrKind::not_found && proto::is_semver(ref.data(), ref.size())) {
    // The devices named the version in their hello, but its image never reached the
    // controller (typically the factory image): say exactly how to fix that.
    auto own = db.store().image_by_id(rec.image_id);
    const std::string hw = own && *own ? join((*own)->hw, " --hw ") : "MODEL";
    return not_found_err("rollback: no image of version " + ref +
                         (body.contains("image")
                              ? ""
                              : " (the version the devices of rollout " + rec.id + " ran before)") +
                         " was ever uploaded; upload " + ref +
                         " first: otactl image add FILE --version " + ref + " --hw " + hw +
                         ", then run otactl rollout rollback " + rec.id + " again");
  }
  if (!img) return img.context("rollback");
  Status deployable = keys.check_deployable(*img);
  if (!deployable) return deployable.context("rollback");
  if (img->id == rec.image_id) return invalid_err("rollback: image " + ref + " is the rollout's own image");
  return img;
}

}  // namespace

Result<json> RolloutRunner::rollback(DbLock& db, Live* ro, const RolloutRec& rec, const json& body,
                                     const std::string& actor) {
  auto img = rollback_image(db, rec, body, keys_);
  if (!img) return img.err();
  deployments_.flush(db, true);
  std::vector<std::string> targets;
  Status t = rollback_targets(db, rec, *img, &targets);
  if (!t) return t.err();
  if (ro && !is_terminal(ro->rec.state)) {
    auto engine_rows = deployments_.engine_rows(rec.deployment_id);
    std::vector<RolloutRow> rr = engine_rows ? std::move(*engine_rows) : std::vector<RolloutRow>{};
    const RolloutState before = ro->st;
    auto acts = op_abort(ro->st, rr, "rolled back to " + img->version);
    if (acts) {
      Status s = apply_engine(db, *ro, rr, *acts, actor, now());
      if (!s) {
        ro->st = before;
        return s.context("rollback: abort");
      }
    }
  }
  RolloutRec nr;
  nr.id = random_id("ro-");
  nr.name = "rollback of " + rec.id;
  nr.image_id = img->id;
  nr.target_kind = "devices";
  nr.target = json(targets).dump();
  nr.rollback_of = rec.id;
  nr.created_at = now() / 1000;
  auto pol = parse_policy(json::parse(rec.policy, nullptr, false), PolicySource::stored);
  if (!pol) return pol.context("rollback: policy");
  // Going back is urgent: one wave, no start time or window, failures do not stop it.
  RolloutPolicy p = *pol;
  p.waves = {WaveSpec{}};
  p.start_at_s = 0;
  p.window.reset();
  p.max_wave_failure_pct = p.max_total_failure_pct = 100;
  nr.policy = p.to_json().dump();
  {
    Tx tx(db.store());
    Status s = tx.status();
    if (s) s = db.store().insert_rollout(nr);
    if (s)
      db.event("", "", "rollout_created",
               "rollback of " + rec.id + " to " + img->version + " for " +
                   std::to_string(targets.size()) + " devices",
               actor, nr.id);
    if (s) db.event("", "", "rollback_requested", "new rollout " + nr.id + " to " + img->version, actor, rec.id);
    if (s) s = tx.commit();
    if (!s) return s.context("rollback: db");
  }
  Live& m = rollouts_.insert_or_assign(nr.id, Live{nr, p, engine_state(nr)}).first->second;
  if (body.value("start", true)) {
    Status s = start(db, m, actor, now());
    if (!s) return s.context("rollback " + nr.id + " created but not started");
  }
  return current_json(db, nr.id);
}

}  // namespace ota::service
