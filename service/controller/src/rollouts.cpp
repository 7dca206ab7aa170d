// Controller: staged rollouts (persistence and messaging around the engine in rollout.cpp),
// the device registry view (tags, liveness, transfers) and Prometheus metrics.
#include <openssl/rand.h>

#include <algorithm>
#include <cmath>
#include <sstream>

#include "ota/proto/topics.hpp"
#include "ota/service/controller.hpp"
#include "ota/service/log.hpp"

namespace ota::service {

using nlohmann::json;

namespace {

std::string random_id(const char* prefix) {
  unsigned char b[6];
  if (RAND_bytes(b, sizeof b) != 1) return {};
  static const char* hex = "0123456789abcdef";
  std::string out = prefix;
  for (unsigned char c : b) {
    out += hex[c >> 4];
    out += hex[c & 15];
  }
  return out;
}

RolloutState state_of(const RolloutRec& r) {
  RolloutState st;
  st.id = r.id;
  st.state = r.state;
  st.current_wave = r.current_wave;
  st.wave_started_ms = r.wave_started_ms;
  st.threshold_met_ms = r.threshold_met_ms;
  st.accepted_through = r.accepted_through;
  st.pause_reason = r.pause_reason;
  st.paused_by = r.paused_by;
  return st;
}

void copy_state(const RolloutState& st, RolloutRec& r) {
  r.state = st.state;
  r.current_wave = st.current_wave;
  r.wave_started_ms = st.wave_started_ms;
  r.threshold_met_ms = st.threshold_met_ms;
  r.accepted_through = st.accepted_through;
  r.pause_reason = st.pause_reason;
  r.paused_by = st.paused_by;
}


json zero_counts() {
  json c = json::object();
  for (const auto& b : count_buckets()) c[b] = 0;
  return c;
}

const std::set<std::string> kRolloutActions{"start", "pause", "resume", "abort", "retry",
                                            "rollback"};

}  // namespace

// ----------------------------------------------------------------------------- loading

Status Controller::load_rollouts() {
  auto all = store_.list_rollouts();
  if (!all) return all.err();
  for (const auto& r : *all) {
    const bool dep_active = !r.deployment_id.empty() && active_.count(r.deployment_id);
    if (is_terminal_rollout_state(r.state) && !dep_active) continue;
    RolloutMem m;
    m.rec = r;
    auto pj = json::parse(r.policy, nullptr, false);
    auto p = parse_policy(pj);
    if (!p) return p.context("rollout " + r.id + ": stored policy");
    m.policy = *p;
    m.st = state_of(r);
    rollouts_[r.id] = std::move(m);
  }
  return {};
}

std::vector<RolloutRow> Controller::rollout_rows(const DepMem& d) const {
  std::vector<RolloutRow> rows;
  rows.reserve(d.rows.size());
  for (const auto& kv : d.rows) {
    const RowRec& r = kv.second.rec;
    RolloutRow x;
    x.device = r.device_id;
    x.wave = r.wave;
    x.order = r.ord;
    x.state = r.state;
    x.reason = r.reason;
    x.attempt = r.attempt;
    x.extra_attempts = r.extra_attempts;
    x.defers = r.defers;
    x.next_at_ms = r.next_at;
    x.offered_at_ms = r.offered_at;
    rows.push_back(std::move(x));
  }
  return rows;
}

// ------------------------------------------------------------------------------ engine

Status Controller::apply_engine(RolloutMem& ro, DepMem* d, std::vector<RolloutRow>& rows,
                                const std::vector<EngineAction>& actions,
                                const std::string& actor, long long now_ms) {
  const std::string before = ro.rec.state;
  RolloutRec next = ro.rec;
  copy_state(ro.st, next);
  if (is_terminal_rollout_state(next.state) && !is_terminal_rollout_state(before))
    next.finished_at = now_ms / 1000;
  if (!is_terminal_rollout_state(next.state)) next.finished_at = 0;
  const std::string dep_id = d ? d->rec.id : std::string();
  {
    Tx tx(store_);
    Status s = tx.status();
    for (auto& r : rows) {
      if (!s || !r.changed || !d) continue;
      auto it = d->rows.find(r.device);
      if (it == d->rows.end()) {
        RowMem rm;
        rm.rec.deployment_id = d->rec.id;
        rm.rec.device_id = r.device;
        rm.rec.total = d->image.size;
        it = d->rows.emplace(r.device, rm).first;
      }
      RowRec& rec = it->second.rec;
      // (An offer is logged as its own "offered" decision below.)
      if (rec.state != r.state && !rec.state.empty() && r.state != "offered")
        event(dep_id, r.device, "state",
              rec.state + " -> " + r.state + (r.reason.empty() ? "" : " (" + r.reason + ")"),
              actor, ro.rec.id);
      rec.state = r.state;
      rec.reason = r.reason;
      rec.wave = r.wave;
      rec.ord = r.order;
      rec.attempt = r.attempt;
      rec.extra_attempts = r.extra_attempts;
      rec.defers = r.defers;
      rec.next_at = r.next_at_ms;
      rec.offered_at = r.offered_at_ms;
      if (r.state == "offered") {
        rec.received = 0;
        rec.bytes_sent = 0;
        rec.offer_sent = false;  // until the broker acknowledges it
      }
      s = write_row(it->second);
    }
    if (s) s = store_.update_rollout(next);
    for (const auto& a : actions) {
      if (!s) break;
      if (a.kind == EngineAction::Kind::log)
        event(dep_id, a.device, a.what, a.detail, actor, ro.rec.id);
      else if (a.kind == EngineAction::Kind::offer)
        event(dep_id, a.device, "offered", a.detail, actor, ro.rec.id);
      else
        event(dep_id, a.device, "cancel_sent", a.detail, actor, ro.rec.id);
    }
    if (s) s = tx.commit();
    if (!s) {
      // Memory rows may be ahead of the database now; reload them so nothing is published
      // that the database does not hold.
      if (d) {
        auto fresh = store_.rows(d->rec.id);
        if (fresh) {
          d->rows.clear();
          for (const auto& r : *fresh) d->rows[r.device_id].rec = r;
        }
      }
      return s;
    }
  }
  ro.rec = next;
  // Persisted: now tell the devices. A crash before this line loses the messages, never
  // repeats them: the offered rows time out and are retried as the policy says.
  for (const auto& a : actions) {
    if (!d) break;
    if (a.kind == EngineAction::Kind::offer) {
      publish_offer_attempt(*d, a.device, a.attempt, /*tracked=*/true);
    } else if (a.kind == EngineAction::Kind::cancel) {
      send_cancel_now(a.device, offer_id(d->rec.id, a.attempt), a.detail);
    }
  }
  if (before != ro.rec.state)
    log_info("rollout " + ro.rec.id + ": " + before + " -> " + ro.rec.state +
             (ro.rec.pause_reason.empty() ? "" : " (" + ro.rec.pause_reason + ")"));
  return {};
}

void Controller::send_cancel_now(const std::string& dev, const std::string& id,
                                 const std::string& why) {
  last_cancel_ms_.erase(dev);
  send_cancel(dev, id, why);
}

void Controller::run_engine(RolloutMem& ro, long long now_ms) {
  if (ro.rec.state == "draft" || ro.rec.deployment_id.empty()) return;
  auto it = active_.find(ro.rec.deployment_id);
  if (it == active_.end()) return;
  DepMem& d = it->second;
  std::vector<RolloutRow> rows = rollout_rows(d);
  const RolloutState before = ro.st;
  auto actions = ota::service::tick(ro.st, rows, ro.policy, now_ms);
  const bool changed =
      !actions.empty() || before.state != ro.st.state ||
      before.current_wave != ro.st.current_wave || before.threshold_met_ms != ro.st.threshold_met_ms ||
      std::any_of(rows.begin(), rows.end(), [](const RolloutRow& r) { return r.changed; });
  if (!changed) {
    if (is_terminal_rollout_state(ro.rec.state)) maybe_complete(d.rec.id);
    return;
  }
  Status s = apply_engine(ro, &d, rows, actions, "controller", now_ms);
  if (!s) {
    log_error("rollout " + ro.rec.id + ": " + s.error() + " (retrying next tick)");
    ro.st = before;
    return;
  }
  if (is_terminal_rollout_state(ro.rec.state)) maybe_complete(d.rec.id);
}

void Controller::offer_acks_arrived() {
  std::lock_guard<std::mutex> lock(mu_);
  apply_offer_acks();
}

void Controller::apply_offer_acks() {
  std::vector<OfferAck> acks;
  {
    std::lock_guard<std::mutex> lock(ack_mu_);
    acks.swap(offer_acks_);
  }
  if (acks.empty()) return;
  Tx tx(store_);
  if (!tx.status()) {
    log_error("offer acks: " + tx.status().error());
    std::lock_guard<std::mutex> lock(ack_mu_);
    offer_acks_.insert(offer_acks_.end(), acks.begin(), acks.end());
    return;
  }
  for (const auto& a : acks) {
    auto d = active_.find(a.dep);
    if (d == active_.end()) continue;
    auto r = d->second.rows.find(a.dev);
    if (r == d->second.rows.end() || r->second.rec.attempt != a.attempt || r->second.rec.offer_sent)
      continue;
    r->second.rec.offer_sent = true;
    Status s = write_row(r->second);
    if (!s) log_error("offer ack " + a.dep + "/" + a.dev + ": " + s.error());
  }
  Status c = tx.commit();
  if (!c) log_error("offer acks: " + c.error());
}

void Controller::rollout_tick(long long now_ms) {
  std::lock_guard<std::mutex> lock(mu_);
  apply_offer_acks();
  if (resend_unsent_offers_) {
    // Offers this controller committed before it stopped but the broker never acknowledged
    // (killed between the commit and the PUBACK): publish them now, once. One the broker
    // did take but whose PUBACK we lost is sent twice, the same offer id, which the agent
    // treats as the offer it already has.
    resend_unsent_offers_ = false;
    for (auto& kv : active_) {
      if (kv.second.rollout_id.empty()) continue;
      for (auto& r : kv.second.rows) {
        if (r.second.rec.state != "offered" || r.second.rec.offer_sent) continue;
        event(kv.first, r.first, "offer_republished",
              "attempt " + std::to_string(r.second.rec.attempt) +
                  ": the broker had not acknowledged it before the controller stopped",
              "controller", kv.second.rollout_id);
        publish_offer_attempt(kv.second, r.first, r.second.rec.attempt, /*tracked=*/true);
      }
    }
  }
  std::vector<std::string> ids;
  for (const auto& kv : rollouts_) ids.push_back(kv.first);
  for (const auto& id : ids) {
    auto it = rollouts_.find(id);
    if (it != rollouts_.end()) run_engine(it->second, now_ms);
  }
}

// ----------------------------------------------------------------------- create, start

Result<std::vector<std::string>> Controller::resolve_targets(const RolloutRec& r) {
  std::vector<std::string> out;
  if (r.target_kind == "group") return known_members(r.target);
  if (r.target_kind == "devices") {
    auto ids = json::parse(r.target, nullptr, false);
    std::vector<std::string> unknown;
    for (const auto& j : ids) {
      const std::string id = j.get<std::string>();
      auto d = store_.device(id);
      if (!d) return d.err();
      if (!*d) unknown.push_back(id);
      out.push_back(id);
    }
    if (!unknown.empty()) {
      std::string list;
      for (const auto& u : unknown) list += (list.empty() ? "" : ", ") + u;
      return not_found_err("unknown devices: " + list + " (they have never said hello)");
    }
    return out;
  }
  auto expr = TagExpr::parse(r.target);
  if (!expr) return expr.err();
  for (const auto& kv : tag_subjects())
    if (expr->matches(kv.second)) out.push_back(kv.first);
  return out;
}

std::map<std::string, TagSubject> Controller::tag_subjects() {
  std::map<std::string, TagSubject> out;
  auto devs = store_.list_devices({});
  if (!devs) return out;
  auto tags = store_.all_tags();
  for (const auto& d : *devs) {
    TagSubject& t = out[d.id];
    t.id = d.id;
    t.hw = d.hw;
    t.version = d.version;
    t.groups = acl_enabled_ ? acl_.groups_of(d.id) : d.groups;
    if (tags) {
      auto it = tags->find(d.id);
      if (it != tags->end()) t.tags = it->second;
    }
  }
  return out;
}

Result<json> Controller::create_rollout(const json& body, const std::string& actor) {
  if (!body.is_object()) return invalid_err("rollout: body must be a JSON object");
  static const std::set<std::string> known{
      "image",   "name",        "target",  "waves",          "failure",  "retries",
      "retry_delay", "timeout", "max_concurrent", "start_at", "window",   "defer_delay",
      "max_defers",  "start"};
  for (auto it = body.begin(); it != body.end(); ++it)
    if (!known.count(it.key())) return invalid_err("rollout: unknown field \"" + it.key() + "\"");
  auto policy = parse_policy(body);
  if (!policy) return policy.context("rollout");
  if (!body.contains("image") || !body["image"].is_string())
    return invalid_err("rollout: \"image\" (image id or version) is required");
  RolloutRec rec;
  if (body.contains("name")) {
    if (!body["name"].is_string() || body["name"].get<std::string>().size() > 128)
      return invalid_err("rollout: \"name\" must be a string of at most 128 characters");
    rec.name = body["name"].get<std::string>();
  }
  const json* t = body.contains("target") ? &body["target"] : nullptr;
  if (!t || !t->is_object() || t->size() != 1)
    return invalid_err("rollout: \"target\" must be one of {\"group\": G}, {\"devices\": [..]}, "
                       "{\"tags\": \"site=berlin and model=esp32\"}");
  if (t->contains("group")) {
    const json& g = (*t)["group"];
    if (!g.is_string() || !proto::valid_id(g.get<std::string>().data(), g.get<std::string>().size()))
      return invalid_err("rollout: target.group must be a valid group id");
    rec.target_kind = "group";
    rec.target = g.get<std::string>();
  } else if (t->contains("devices")) {
    const json& ds = (*t)["devices"];
    if (!ds.is_array() || ds.empty()) return invalid_err("rollout: target.devices must be a non-empty array");
    for (const auto& d : ds)
      if (!d.is_string() || !proto::valid_id(d.get<std::string>().data(), d.get<std::string>().size()))
        return invalid_err("rollout: target.devices: " + d.dump() + " is not a valid device id");
    rec.target_kind = "devices";
    rec.target = ds.dump();
  } else if (t->contains("tags")) {
    if (!(*t)["tags"].is_string()) return invalid_err("rollout: target.tags must be a string");
    auto e = TagExpr::parse((*t)["tags"].get<std::string>());
    if (!e) return e.context("rollout");
    rec.target_kind = "tags";
    rec.target = e->text();
  } else {
    return invalid_err("rollout: target needs \"group\", \"devices\" or \"tags\"");
  }
  const bool start = body.value("start", false);
  std::lock_guard<std::mutex> lock(mu_);
  auto img = resolve_image(body["image"].get<std::string>());
  if (!img) return img.context("rollout");
  Status deployable = check_deployable(*img);
  if (!deployable) return deployable.context("rollout");
  rec.id = random_id("ro-");
  if (rec.id.size() < 4) return internal_err("rollout: no randomness for the id");
  rec.image_id = img->id;
  rec.policy = policy->to_json().dump();
  rec.state = "draft";
  rec.created_at = now() / 1000;
  {
    Tx tx(store_);
    Status s = tx.status();
    if (s) s = store_.insert_rollout(rec);
    if (s)
      event("", "", "rollout_created",
            "image " + img->id + " (" + img->version + ") to " + rec.target_kind + " " +
                rec.target + ", " + std::to_string(policy->waves.size()) + " waves",
            actor, rec.id);
    if (s) s = tx.commit();
    if (!s) return s.context("rollout: db");
  }
  RolloutMem& ro = rollouts_[rec.id];
  ro.rec = rec;
  ro.policy = *policy;
  ro.st = state_of(rec);
  if (start) {
    Status s = start_rollout(ro, actor, now());
    if (!s) return s.context("rollout " + rec.id + " created but not started");
  }
  return current_rollout_json(rec.id);
}

Status Controller::start_rollout(RolloutMem& ro, const std::string& actor, long long now_ms) {
  if (ro.rec.state != "draft")
    return conflict_err("rollout " + ro.rec.id + " is " + ro.rec.state + "; only a draft can be started");
  auto img = store_.image_by_id(ro.rec.image_id);
  if (!img) return img.err();
  if (!*img) return internal_err("image " + ro.rec.image_id + " missing");
  Status deployable = check_deployable(**img);
  if (!deployable) return deployable;
  auto targets = resolve_targets(ro.rec);
  if (!targets) return targets.err();
  // Devices of another hardware model cannot take the image: leave them out, say so.
  std::vector<std::string> eligible, wrong_hw, busy;
  std::map<std::string, int> from_versions;
  for (const auto& id : *targets) {
    auto d = store_.device(id);
    if (!d) return d.err();
    if (!*d || revoked_.count(id)) continue;
    if (std::find(img->value().hw.begin(), img->value().hw.end(), (*d)->hw) == img->value().hw.end()) {
      wrong_hw.push_back(id);
      continue;
    }
    bool in_other = false;
    for (const auto& kv : active_) {
      auto r = kv.second.rows.find(id);
      if (r != kv.second.rows.end() && !is_final_row_state(r->second.rec.state)) in_other = true;
    }
    if (in_other) {
      busy.push_back(id);
      continue;
    }
    eligible.push_back(id);
    from_versions[(*d)->version]++;
  }
  if (eligible.empty())
    return invalid_err("rollout " + ro.rec.id + ": no eligible devices (" +
                       std::to_string(targets->size()) + " targets, " +
                       std::to_string(wrong_hw.size()) + " of another hw, " +
                       std::to_string(busy.size()) + " busy in another deployment)");
  std::string from;
  int best = 0;
  for (const auto& kv : from_versions)
    if (kv.second > best && kv.first != img->value().version) best = kv.second, from = kv.first;

  auto rows = assign_waves(ro.rec.id, eligible, ro.policy);
  std::string dep_id = random_id("dep-");
  if (dep_id.size() < 5) return internal_err("no randomness for the deployment id");
  // The deployment's own offer is bound to nobody: devices get per-device offers
  // (publish_offer_attempt); this one only records what was signed.
  OfferTarget unbound;
  unbound.rollback = !ro.rec.rollback_of.empty();
  auto offer = build_offer(**img, dep_id, unbound);
  if (!offer) return offer.err();
  auto file = open_image(**img);
  if (!file) return file.err();

  DepMem dm;
  dm.rec.id = dep_id;
  dm.rec.image_id = img->value().id;
  dm.rec.target_kind = "rollout";
  dm.rec.target = ro.rec.id;
  dm.rec.state = "active";
  dm.rec.offer = *offer;
  dm.rec.created_at = now_ms / 1000;
  dm.rollout_id = ro.rec.id;
  dm.image = **img;
  dm.file = *file;
  for (auto& r : rows) {
    RowMem rm;
    rm.rec.deployment_id = dep_id;
    rm.rec.device_id = r.device;
    rm.rec.state = "pending";
    rm.rec.total = img->value().size;
    rm.rec.wave = r.wave;
    rm.rec.ord = r.order;
    rm.rec.attempt = 0;
    rm.rec.updated_at = now_ms;
    dm.rows[r.device] = rm;
    r.changed = false;
  }
  const RolloutState before = ro.st;
  auto actions = op_start(ro.st, ro.policy, now_ms);
  if (!actions) return actions.err();
  RolloutRec next = ro.rec;
  copy_state(ro.st, next);
  next.deployment_id = dep_id;
  next.from_version = from;
  next.excluded = static_cast<long long>(wrong_hw.size() + busy.size());
  next.started_at = now_ms / 1000;
  Tx tx(store_);
  Status s = tx.status();
  if (s) s = store_.insert_deployment(dm.rec);
  for (auto& kv : dm.rows)
    if (s) s = store_.upsert_row(kv.second.rec);
  if (s) s = store_.update_rollout(next);
  if (s) {
    std::string waves;
    std::vector<int> sizes(ro.policy.waves.size(), 0);
    for (const auto& r : rows) sizes[static_cast<std::size_t>(r.wave)]++;
    for (int n : sizes) waves += (waves.empty() ? "" : "/") + std::to_string(n);
    event(dep_id, "", "rollout_targets",
          std::to_string(eligible.size()) + " devices in waves " + waves +
              (wrong_hw.empty() ? "" : "; excluded " + std::to_string(wrong_hw.size()) + " of another hw") +
              (busy.empty() ? "" : "; excluded " + std::to_string(busy.size()) + " busy in another deployment") +
              (from.empty() ? "" : "; most run " + from),
          actor, ro.rec.id);
    for (const auto& a : *actions) event(dep_id, "", a.what, a.detail, actor, ro.rec.id);
  }
  if (s) s = tx.commit();
  if (!s) {
    ro.st = before;
    return s.context("db");
  }
  ro.rec = next;
  active_[dep_id] = std::move(dm);
  run_engine(ro, now_ms);
  return {};
}

// --------------------------------------------------------------------- operator actions

Result<json> Controller::rollout_action(const std::string& id, const std::string& action,
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
  const long long t = now();
  auto it = rollouts_.find(id);
  if (it == rollouts_.end()) {
    auto rec = store_.rollout(id);
    if (!rec) return rec.context(action);
    if (!*rec) return not_found_err(action + ": unknown rollout " + id);
    if (action == "rollback") return rollback_rollout(nullptr, **rec, body, actor);
    if (action != "retry")
      return conflict_err(action + ": rollout " + id + " is already " + (*rec)->state);
    // Retry of a finished rollout: bring it and its deployment back to life.
    RolloutMem m;
    m.rec = **rec;
    auto p = parse_policy(json::parse(m.rec.policy, nullptr, false));
    if (!p) return p.context("retry: stored policy");
    m.policy = *p;
    m.st = state_of(m.rec);
    if (m.rec.state == "aborted")
      return conflict_err("retry: rollout " + id + " was aborted; create a new rollout");
    auto dep = store_.deployment(m.rec.deployment_id);
    if (!dep || !*dep) return internal_err("retry: deployment of rollout " + id + " missing");
    auto img = store_.image_by_id((*dep)->image_id);
    if (!img || !*img) return internal_err("retry: image missing");
    auto file = open_image(**img);
    if (!file) return file.context("retry");
    DepMem dm;
    dm.rec = **dep;
    dm.rollout_id = id;
    dm.image = **img;
    dm.file = *file;
    auto rows = store_.rows(dm.rec.id);
    if (!rows) return rows.context("retry");
    for (const auto& r : *rows) dm.rows[r.device_id].rec = r;
    Status s = store_.set_deployment_state(dm.rec.id, "active", 0);
    if (!s) return s.context("retry");
    dm.rec.state = "active";
    dm.rec.finished_at = 0;
    active_[dm.rec.id] = std::move(dm);
    it = rollouts_.emplace(id, std::move(m)).first;
  }
  RolloutMem& ro = it->second;
  if (action == "rollback") return rollback_rollout(&ro, ro.rec, body, actor);
  if (action == "start") {
    Status s = start_rollout(ro, actor, t);
    if (!s) return s.context("start");
    return current_rollout_json(id);
  }
  DepMem* d = nullptr;
  if (!ro.rec.deployment_id.empty()) {
    auto di = active_.find(ro.rec.deployment_id);
    if (di != active_.end()) d = &di->second;
  }
  std::vector<RolloutRow> rows = d ? rollout_rows(*d) : std::vector<RolloutRow>{};
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
  if (ro.rec.state == "draft" && action == "abort") {
    // Never started: nothing to tell devices.
  }
  Status s = apply_engine(ro, d, rows, *acts, actor, t);
  if (!s) {
    ro.st = before;
    return s.context(action);
  }
  // A draft aborted before it started has no deployment to wait for.
  if (is_terminal_rollout_state(ro.rec.state) && ro.rec.deployment_id.empty()) {
    rollouts_.erase(id);
  } else {
    run_engine(ro, t);  // e.g. resume starts the next wave now, not a tick later
  }
  // (run_engine may have finished the rollout and dropped it from memory: `ro` is gone.)
  return current_rollout_json(id);
}

Result<json> Controller::rollback_rollout(RolloutMem* ro, const RolloutRec& rec, const json& body,
                                          const std::string& actor) {
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
    return invalid_err("rollback: rollout " + rec.id +
                       " does not know the previous version; give \"image\"");
  auto img = resolve_image(ref);
  if (!img) return img.context("rollback");
  Status deployable = check_deployable(*img);
  if (!deployable) return deployable.context("rollback");
  if (img->id == rec.image_id)
    return invalid_err("rollback: image " + ref + " is the rollout's own image");
  flush_dirty(true);
  auto rows = store_.rows(rec.deployment_id);
  if (!rows) return rows.context("rollback");
  auto ro_img = store_.image_by_id(rec.image_id);
  std::vector<std::string> targets;
  std::vector<std::string> refused;
  for (const auto& r : *rows) {
    auto d = store_.device(r.device_id);
    if (!d || !*d) continue;
    // Devices now running the rolled-out version (or still installing it).
    const bool affected = r.state == "succeeded" || r.state == "installing" ||
                          r.state == "rebooting" || r.state == "confirming" ||
                          (ro_img && *ro_img && (*d)->version == (*ro_img)->version);
    if (!affected || (*d)->version == img->version) continue;
    if ((*d)->counter > img->counter)
      refused.push_back("device " + r.device_id + " has security counter " +
                        std::to_string((*d)->counter) + " but image " + img->version +
                        " has counter " + std::to_string(img->counter));
    targets.push_back(r.device_id);
  }
  if (!refused.empty()) {
    std::string msg = "rollback refused: ";
    for (std::size_t i = 0; i < refused.size() && i < 5; ++i) msg += (i ? "; " : "") + refused[i];
    if (refused.size() > 5) msg += "; and " + std::to_string(refused.size() - 5) + " more";
    msg += ": the devices would refuse it (anti-rollback); release a fixed image with a "
           "counter at least as high instead";
    return conflict_err(msg);
  }
  if (targets.empty())
    return conflict_err("rollback: no device of rollout " + rec.id + " runs its version; nothing to roll back");
  if (ro && !is_terminal_rollout_state(ro->rec.state)) {
    std::vector<RolloutRow> rr;
    DepMem* d = nullptr;
    auto di = active_.find(rec.deployment_id);
    if (di != active_.end()) {
      d = &di->second;
      rr = rollout_rows(*d);
    }
    const RolloutState before = ro->st;
    auto acts = op_abort(ro->st, rr, "rolled back to " + img->version);
    if (acts) {
      Status s = apply_engine(*ro, d, rr, *acts, actor, now());
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
  nr.policy = rec.policy;
  nr.rollback_of = rec.id;
  nr.created_at = now() / 1000;
  auto pol = parse_policy(json::parse(rec.policy, nullptr, false));
  if (!pol) return pol.context("rollback: policy");
  // Going back is urgent: one wave, no start time or window, failures do not stop it.
  RolloutPolicy p = *pol;
  p.waves = {WaveSpec{}};
  p.start_at_s = 0;
  p.window.reset();
  p.max_wave_failure_pct = p.max_total_failure_pct = 100;
  nr.policy = p.to_json().dump();
  {
    Tx tx(store_);
    Status s = tx.status();
    if (s) s = store_.insert_rollout(nr);
    if (s) event("", "", "rollout_created",
                 "rollback of " + rec.id + " to " + img->version + " for " +
                     std::to_string(targets.size()) + " devices",
                 actor, nr.id);
    if (s) event("", "", "rollback_requested", "new rollout " + nr.id + " to " + img->version, actor, rec.id);
    if (s) s = tx.commit();
    if (!s) return s.context("rollback: db");
  }
  RolloutMem& m = rollouts_[nr.id];
  m.rec = nr;
  m.policy = p;
  m.st = state_of(nr);
  if (body.value("start", true)) {
    Status s = start_rollout(m, actor, now());
    if (!s) return s.context("rollback " + nr.id + " created but not started");
  }
  return current_rollout_json(nr.id);
}

// ------------------------------------------------------------------------------ queries

json Controller::rollout_to_json(const RolloutRec& r, bool with_devices) {
  RolloutPolicy p;
  auto pp = parse_policy(json::parse(r.policy, nullptr, false));
  if (pp) p = *pp;
  json j{{"id", r.id},
         {"name", r.name},
         {"image", r.image_id},
         {"state", r.state},
         {"pause_reason", r.pause_reason},
         {"paused_by", r.paused_by},
         {"rollback_of", r.rollback_of},
         {"from_version", r.from_version},
         {"deployment", r.deployment_id},
         {"policy", p.to_json()},
         {"current_wave", r.current_wave},
         {"waves_total", p.waves.size()},
         {"created_at", r.created_at},
         {"started_at", r.started_at},
         {"finished_at", r.finished_at},
         {"excluded", r.excluded}};
  auto img = store_.image_by_id(r.image_id);
  j["version"] = img && *img ? (*img)->version : "";
  json target{{"kind", r.target_kind}};
  if (r.target_kind == "devices")
    target["value"] = json::parse(r.target, nullptr, false);
  else
    target["value"] = r.target;
  j["target"] = target;

  std::vector<RolloutRow> rows;
  std::map<std::string, const RowRec*> recs;
  std::vector<RowRec> stored;
  auto di = active_.find(r.deployment_id);
  if (di != active_.end()) {
    rows = rollout_rows(di->second);
    for (const auto& kv : di->second.rows) recs[kv.first] = &kv.second.rec;
  } else if (!r.deployment_id.empty()) {
    auto sr = store_.rows(r.deployment_id);
    if (sr) stored = *sr;
    for (const auto& x : stored) {
      recs[x.device_id] = &x;
      RolloutRow rr;
      rr.device = x.device_id;
      rr.wave = x.wave;
      rr.order = x.ord;
      rr.state = x.state;
      rr.reason = x.reason;
      rr.attempt = x.attempt;
      rr.extra_attempts = x.extra_attempts;
      rows.push_back(rr);
    }
  }
  const auto wc = wave_counts(rows, p);
  json counts = zero_counts();
  std::vector<json> wave_bucket(p.waves.size(), zero_counts());
  for (const auto& x : rows) {
    const std::string b = count_bucket(x.state);
    if (!counts.contains(b)) continue;
    counts[b] = counts[b].get<long long>() + 1;
    if (x.wave >= 0 && static_cast<std::size_t>(x.wave) < wave_bucket.size())
      wave_bucket[static_cast<std::size_t>(x.wave)][b] =
          wave_bucket[static_cast<std::size_t>(x.wave)][b].get<long long>() + 1;
  }
  json waves = json::array();
  int fails = 0, devs = 0, finals = 0, all_fails = 0, all_devs = 0;
  for (std::size_t w = 0; w < p.waves.size(); ++w) {
    const WaveCounts& c = wc[w];
    finals += c.final_count;
    const int wi = static_cast<int>(w);
    if (wi <= r.current_wave && wi > r.accepted_through) fails += c.failed, devs += c.devices;
    std::string state = "waiting";
    if (r.current_wave >= wi) state = c.final_count == c.devices ? "done" : "running";
    else if (r.state == "aborted") state = "cancelled";
    if (wi <= r.current_wave) all_fails += c.failed, all_devs += c.devices;
    waves.push_back(json{{"index", w},
                         {"devices", c.devices},
                         {"state", state},
                         {"success_threshold", p.waves[w].success_threshold < 0
                                                   ? json()
                                                   : json(p.waves[w].success_threshold)},
                         {"soak", p.waves[w].soak_s},
                         {"counts", wave_bucket[w]},
                         {"success_rate", std::round(c.success_rate() * 10) / 10},
                         {"failure_rate", std::round(c.failure_rate() * 10) / 10},
                         {"percent", c.devices ? c.final_count * 100 / c.devices : 0}});
  }
  j["waves"] = waves;
  j["counts"] = counts;
  j["devices_total"] = rows.size();
  j["percent"] = rows.empty() ? (is_terminal_rollout_state(r.state) ? 100 : 0)
                              : static_cast<int>(finals * 100 / static_cast<int>(rows.size()));
  // "total" is what the policy judges (waves the operator accepted on resume are left out);
  // "all" counts every started wave.
  j["failure_rate"] = json{{"total", devs ? std::round(1000.0 * fails / devs) / 10 : 0.0},
                           {"all", all_devs ? std::round(1000.0 * all_fails / all_devs) / 10 : 0.0},
                           {"max_total_rate", p.max_total_failure_pct},
                           {"max_wave_rate", p.max_wave_failure_pct},
                           {"action", p.abort_on_failure ? "abort" : "pause"}};
  if (with_devices) {
    json jd = json::array();
    std::vector<const RolloutRow*> sorted;
    for (const auto& x : rows) sorted.push_back(&x);
    std::sort(sorted.begin(), sorted.end(), [](const RolloutRow* a, const RolloutRow* b) {
      return a->wave != b->wave ? a->wave < b->wave : a->device < b->device;
    });
    for (const RolloutRow* x : sorted) {
      const RowRec* rr = recs[x->device];
      const std::uint64_t total = rr && rr->total ? rr->total : 0;
      int pct = 0;
      if (x->state == "succeeded") pct = 100;
      else if (rr && total) pct = static_cast<int>(std::min(rr->received, total) * 100 / total);
      jd.push_back(json{{"device", x->device},
                        {"wave", x->wave},
                        {"state", x->state},
                        {"attempt", x->attempt},
                        {"reason", x->reason},
                        {"percent", pct},
                        {"updated_at", rr ? rr->updated_at : 0}});
    }
    j["devices"] = jd;
  }
  return j;
}

Result<json> Controller::current_rollout_json(const std::string& id) {
  auto live = rollouts_.find(id);
  if (live != rollouts_.end()) return rollout_to_json(live->second.rec, false);
  auto r = store_.rollout(id);
  if (!r) return r.err();
  if (!*r) return not_found_err("unknown rollout " + id);
  return rollout_to_json(**r, false);
}

Result<json> Controller::rollouts_json() {
  std::lock_guard<std::mutex> lock(mu_);
  auto all = store_.list_rollouts();
  if (!all) return all.context("rollouts");
  json out = json::array();
  for (const auto& r : *all) {
    auto live = rollouts_.find(r.id);
    out.push_back(rollout_to_json(live != rollouts_.end() ? live->second.rec : r, false));
  }
  return out;
}

Result<json> Controller::rollout_json(const std::string& id, bool with_devices) {
  std::lock_guard<std::mutex> lock(mu_);
  auto live = rollouts_.find(id);
  if (live != rollouts_.end()) return rollout_to_json(live->second.rec, with_devices);
  auto r = store_.rollout(id);
  if (!r) return r.context("rollout");
  if (!*r) return not_found_err("unknown rollout " + id);
  return rollout_to_json(**r, with_devices);
}

// ------------------------------------------------------------------------------ devices

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
    std::lock_guard<std::mutex> lock(mu_);
    auto d = store_.device(id);
    if (!d) return d.context("tags");
    if (!*d) return not_found_err("tags: unknown device " + id);
    Tx tx(store_);
    Status s = tx.status();
    std::string detail;
    for (auto it = body.begin(); it != body.end() && s; ++it) {
      s = store_.set_device_tag(id, it.key(),
                                it->is_null() ? std::nullopt
                                              : std::optional<std::string>(it->get<std::string>()));
      detail += (detail.empty() ? "" : " ") + it.key() + "=" + (it->is_null() ? "(removed)" : it->get<std::string>());
    }
    if (s) event("", id, "tags_set", detail, actor);
    if (s) s = tx.commit();
    if (!s) return s.context("tags");
  }
  return device_json(id);
}

std::string Controller::metrics_text() {
  std::ostringstream o;
  std::lock_guard<std::mutex> lock(mu_);
  auto devs = store_.list_devices({});
  const long long t = now();
  long long online = 0, offline = 0;
  std::map<std::string, long long> by_version, by_state;
  std::map<std::string, std::string> dev_state;
  long long in_flight = 0;
  for (const auto& kv : active_)
    for (const auto& r : kv.second.rows)
      if (is_in_flight_state(r.second.rec.state)) {
        dev_state[r.first] = count_bucket(r.second.rec.state);
        in_flight++;
      }
  if (devs) {
    for (const auto& d : *devs) {
      (is_online(d, t, nullptr) ? online : offline)++;
      by_version[d.version.empty() ? "unknown" : d.version]++;
      auto st = dev_state.find(d.id);
      by_state[st == dev_state.end() ? "idle" : st->second]++;
    }
  }
  o << "# HELP ota_devices Known devices by liveness.\n# TYPE ota_devices gauge\n";
  o << "ota_devices{online=\"true\"} " << online << "\nota_devices{online=\"false\"} " << offline << "\n";
  o << "# HELP ota_devices_by_version Known devices by running version.\n# TYPE ota_devices_by_version gauge\n";
  for (const auto& kv : by_version)
    o << "ota_devices_by_version{version=\"" << prometheus_label_value(kv.first) << "\"} " << kv.second << "\n";
  o << "# HELP ota_devices_by_state Known devices by update state.\n# TYPE ota_devices_by_state gauge\n";
  for (const auto& kv : by_state)
    o << "ota_devices_by_state{state=\"" << prometheus_label_value(kv.first) << "\"} " << kv.second << "\n";
  o << "# HELP ota_transfers_in_flight Devices offered an update that have not finished.\n"
       "# TYPE ota_transfers_in_flight gauge\nota_transfers_in_flight " << in_flight << "\n";
  o << "# HELP ota_bytes_served_total Image bytes published to devices.\n"
       "# TYPE ota_bytes_served_total counter\nota_bytes_served_total " << bytes_served_.load() << "\n";
  o << "# HELP ota_chunks_served_total Chunks published to devices.\n"
       "# TYPE ota_chunks_served_total counter\nota_chunks_served_total " << chunks_sent_.load() << "\n";
  o << "# HELP ota_decode_errors_total Device messages that failed to decode.\n"
       "# TYPE ota_decode_errors_total counter\nota_decode_errors_total " << decode_errors_.load() << "\n";
  o << "# HELP ota_ignored_messages_total Device messages dropped without effect.\n"
       "# TYPE ota_ignored_messages_total counter\nota_ignored_messages_total " << ignored_messages_.load() << "\n";
  o << "# HELP ota_device_messages_dropped_total Device messages dropped without effect, by reason.\n"
       "# TYPE ota_device_messages_dropped_total counter\n";
  for (std::size_t r = 0; r < kDropReasonCount; ++r)
    o << "ota_device_messages_dropped_total{reason=\"" << drop_reason_name(static_cast<DropReason>(r))
      << "\"} " << dropped_[r].load() << "\n";
  o << "# HELP ota_rollout_devices Devices of live rollouts by state.\n# TYPE ota_rollout_devices gauge\n";
  std::ostringstream rates;
  for (const auto& kv : rollouts_) {
    json j = rollout_to_json(kv.second.rec, false);
    for (auto c = j["counts"].begin(); c != j["counts"].end(); ++c)
      o << "ota_rollout_devices{rollout=\"" << kv.first << "\",state=\"" << c.key() << "\"} "
        << c->get<long long>() << "\n";
    rates << "ota_rollout_failure_rate{rollout=\"" << kv.first << "\"} "
          << j["failure_rate"]["total"].get<double>() / 100.0 << "\n";
  }
  o << "# HELP ota_rollout_failure_rate Final failures / devices of the started waves (0..1).\n"
       "# TYPE ota_rollout_failure_rate gauge\n" << rates.str();
  rollout_metrics(o);
  health_metrics(o);
  return o.str();
}

std::string prometheus_label_value(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

}  // namespace ota::service
