// Deployments: life cycle (load, deploy, cancel, completion), offers and their
// acknowledgements, cancels, the periodic work. Device messages: deployment_messages.cpp;
// the rollout runner's interface: deployment_rollouts.cpp; views: deployment_views.cpp.
#include "ota/service/deployments.hpp"

#include <algorithm>

#include "ota/proto/topics.hpp"
#include "ota/service/log.hpp"
#include "ota/service/util.hpp"

namespace ota::service {

Deployments::Deployments(const ControllerConfig& cfg, Publisher* pub, DeviceRegistry& registry,
                         KeyService& keys, ChunkServer& chunks)
    : cfg_(cfg), pub_(pub), registry_(registry), keys_(keys), chunks_(chunks) {}

long long Deployments::now() const { return controller_now(cfg_); }

std::string Deployments::topic(int kind, const std::string& id) const {
  return topic_for(cfg_.prefix, kind, id);
}

std::string Deployments::offer_id(const std::string& dep_id, int attempt) {
  return attempt <= 1 ? dep_id : dep_id + "." + std::to_string(attempt);
}

LiveDeployment* Deployments::find(const std::string& id, int* attempt) {
  return const_cast<LiveDeployment*>(static_cast<const Deployments*>(this)->find(id, attempt));
}

const LiveDeployment* Deployments::find(const std::string& id, int* attempt) const {
  *attempt = 1;
  auto it = active_.find(id);
  if (it != active_.end()) return &it->second;
  const auto dot = id.rfind('.');
  if (dot == std::string::npos || dot + 1 >= id.size() || id.size() - dot > 6 ||
      id.find_first_not_of("0123456789", dot + 1) != std::string::npos)
    return nullptr;
  it = active_.find(id.substr(0, dot));
  if (it == active_.end() || it->second.rollout_id.empty()) return nullptr;
  *attempt = std::atoi(id.c_str() + dot + 1);
  return &it->second;
}

Status Deployments::load(DbLock& db) {
  Store& store = db.store();
  auto deps = store.list_deployments(DeploymentState::active);
  if (!deps) return deps.context("deployments");
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& d : *deps) {
    auto img = store.image_by_id(d.image_id);
    if (!img) return img.context("deployment " + d.id);
    if (!*img) return internal_err("deployment " + d.id + ": image " + d.image_id + " missing");
    auto f = chunks_.open(**img);
    if (!f) return f.context("deployment " + d.id);
    LiveDeployment m;
    m.rec = d;
    if (d.target_kind == "rollout") m.rollout_id = d.target;
    m.image = **img;
    m.file = *f;
    auto rows = store.rows(d.id);
    if (!rows) return rows.context("deployment " + d.id);
    for (const auto& r : *rows) {
      LiveRow rm;
      rm.rec = r;
      rm.last_flush_ms = now_ms();
      m.rows[r.device_id] = rm;
    }
    active_[d.id] = std::move(m);
  }
  return {};
}

void Deployments::log_event(DbLock& db, const LiveDeployment& d, const std::string& dev,
                            const std::string& what, const std::string& detail,
                            const std::string& actor) {
  db.event(d.rec.id, dev, what, detail, actor, d.rollout_id);
}

void Deployments::event(DbLock& db, const std::string& dep, const std::string& dev,
                        const std::string& what, const std::string& detail,
                        const std::string& actor) {
  std::string rollout;
  if (!dep.empty()) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = active_.find(dep);
    if (it != active_.end()) rollout = it->second.rollout_id;
  }
  db.event(dep, dev, what, detail, actor, rollout);
}

// ------------------------------------------------------------------------------ rows

Status Deployments::write_row(DbLock& db, LiveRow& row) {
  row.rec.updated_at = now_ms();
  Status s = db.store().upsert_row(row.rec);
  if (s) {
    row.dirty = false;
    row.last_flush_ms = row.rec.updated_at;
  }
  return s;
}

Status Deployments::set_row_state(DbLock& db, LiveDeployment& d, LiveRow& row, RowState state,
                                  const std::string& reason) {
  const RowState old = row.rec.state;
  row.rec.state = state;
  row.rec.reason = reason;
  if (state == RowState::succeeded && row.rec.total == 0) row.rec.total = d.image.size;
  if (state == RowState::succeeded) row.rec.received = row.rec.total;
  Status s = write_row(db, row);
  if (!s) return s;
  if (old != state)
    log_event(db, d, row.rec.device_id, "state",
              std::string(to_string(old)) + " -> " + to_string(state) +
                  (reason.empty() ? "" : " (" + reason + ")"));
  return {};
}

// ------------------------------------------------------------------------ operator actions

namespace {

// A device target of a plain deployment: known, not revoked, of a hardware the image is for.
Status check_device_target(DbLock& db, const DeviceRegistry& registry, const ImageRec& img,
                           const std::string& target) {
  auto dev = db.store().device(target);
  if (!dev) return dev.context("deploy");
  if (!*dev) return not_found_err("deploy: unknown device " + target);
  if (registry.revoked(target)) return invalid_err("deploy: device " + target + " is revoked");
  if (!contains(img.hw, (*dev)->hw))
    return invalid_err("deploy: image " + img.id + " (" + img.version + ") is for hw " +
                       join(img.hw, ",") + " but device " + target + " is hw '" + (*dev)->hw + "'");
  return {};
}

// Why `dev` cannot take a new deployment: the row it has in `d`, named by what the operator
// acts on (a rollout's deployment is the rollout's business: abort the rollout).
std::string busy_device_text(const std::string& dev, const LiveDeployment& d, RowState state) {
  if (!d.rollout_id.empty())
    return "deploy: device " + dev + " is claimed by rollout " + d.rollout_id + " (state " +
           to_string(state) + "); wait for it to end or abort it: otactl rollout abort " +
           d.rollout_id;
  return "deploy: device " + dev + " is already in active deployment " + d.rec.id + " (state " +
         to_string(state) + "); cancel it first";
}

// Unguessable ids: a device must not be able to address a deployment it was not offered.
Result<std::string> new_deployment_id(Store& store) {
  for (int attempt = 0; attempt < 8; ++attempt) {
    const std::string hex = random_hex(6);
    if (hex.empty()) return internal_err("deploy: no randomness for the deployment id");
    auto existing = store.deployment("dep-" + hex);
    if (!existing) return existing.context("deploy: db");
    if (!*existing) return "dep-" + hex;
  }
  return internal_err("deploy: could not pick a free deployment id");
}

}  // namespace

Result<DeploymentRec> Deployments::deploy(DbLock& db, const ImageRec& img, const std::string& kind,
                                          const std::string& target, const std::string& actor) {
  if (kind != "device" && kind != "group")
    return invalid_err("deploy: target must be a device or a group");
  if (!proto::valid_id(target.data(), target.size()))
    return invalid_err("deploy: " + kind + " '" + target +
                       "' is not a valid id (1-64 chars of A-Z a-z 0-9 . _ -)");
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::string> members;
  if (kind == "device") {
    Status t = check_device_target(db, registry_, img, target);
    if (!t) return t.err();
    for (const auto& kv : active_) {
      auto r = kv.second.rows.find(target);
      if (r != kv.second.rows.end() && !is_final(r->second.rec.state))
        return conflict_err(busy_device_text(target, kv.second, r->second.rec.state));
    }
    members.push_back(target);
  } else {
    members = registry_.known_members(target);
    // Like a rollout's start: a deployment that reaches nobody is a typo, not a plan.
    if (members.empty())
      return not_found_err("deploy: group " + target +
                           " has no known devices (no member has said hello yet); nothing to "
                           "deploy to");
  }
  auto depid = new_deployment_id(db.store());
  if (!depid) return depid.err();
  auto file = chunks_.open(img);
  if (!file) return file.context("deploy");
  OfferTarget bound;
  (kind == "device" ? bound.device : bound.group) = target;
  auto offer = keys_.build_offer(img, *depid, bound);
  if (!offer) return offer.context("deploy");

  LiveDeployment dm;
  dm.rec.id = *depid;
  dm.rec.image_id = img.id;
  dm.rec.target_kind = kind;
  dm.rec.target = target;
  dm.rec.state = DeploymentState::active;
  dm.rec.offer = *offer;
  dm.rec.created_at = now_s();
  dm.image = img;
  dm.file = *file;
  const long long ts = now_ms();
  Tx tx(db.store());
  if (!tx.status()) return tx.status().context("deploy: db");
  Status s = db.store().insert_deployment(dm.rec);
  if (!s) return s.context("deploy: db");
  for (const auto& dev : members) {
    LiveRow rm;
    rm.rec.deployment_id = dm.rec.id;
    rm.rec.device_id = dev;
    rm.rec.state = RowState::offered;
    rm.rec.total = img.size;
    rm.rec.updated_at = ts;
    rm.last_flush_ms = ts;
    s = db.store().upsert_row(rm.rec);
    if (!s) return s.context("deploy: db");
    dm.rows[dev] = rm;
  }
  db.event(dm.rec.id, kind == "device" ? target : "", "deployment_created",
           "image " + img.id + " version " + img.version + " to " + kind + " " + target + " (" +
               std::to_string(members.size()) + " known devices)",
           actor);
  s = tx.commit();
  if (!s) return s.context("deploy: db");

  auto& d = active_[dm.rec.id] = std::move(dm);
  if (kind == "device") {
    publish_offer_to_device(d, target);
  } else {
    publish_group_offer(d, false);
  }
  log_info("deployment " + d.rec.id + ": image " + img.id + " (" + img.version + ") to " + kind +
           " " + target);
  return d.rec;
}

Result<DeploymentRec> Deployments::cancel(DbLock& db, const std::string& deployment_id,
                                          const std::string& actor) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = active_.find(deployment_id);
  if (it == active_.end()) {
    auto d = db.store().deployment(deployment_id);
    if (!d) return d.context("cancel: db");
    if (!*d) return not_found_err("cancel: unknown deployment " + deployment_id);
    return conflict_err("cancel: deployment " + deployment_id + " is already " +
                        to_string((*d)->state));
  }
  LiveDeployment& d = it->second;
  if (!d.rollout_id.empty())
    return conflict_err("cancel: deployment " + deployment_id + " belongs to rollout " +
                        d.rollout_id + "; use `otactl rollout abort " + d.rollout_id + "`");
  std::vector<std::string> notify;
  const long long ts = now_ms();
  Tx tx(db.store());
  if (!tx.status()) return tx.status().context("cancel: db");
  for (auto& kv : d.rows) {
    const auto to = next_row_state(kv.second.rec.state, RowEvent::cancel);
    if (!to) continue;
    notify.push_back(kv.first);
    kv.second.rec.state = *to;
    kv.second.rec.reason = "cancelled by operator";
    kv.second.rec.updated_at = ts;
    Status s = db.store().upsert_row(kv.second.rec);
    if (!s) return s.context("cancel: db");
  }
  if (d.rec.target_kind == "group")
    for (const auto& m : registry_.known_members(d.rec.target))
      if (!d.rows.count(m)) notify.push_back(m);
  Status s = db.store().set_deployment_state(d.rec.id, DeploymentState::cancelled, now_s());
  if (!s) return s.context("cancel: db");
  log_event(db, d, "", "deployment_cancelled",
            "by operator; " + std::to_string(notify.size()) + " devices notified", actor);
  s = tx.commit();
  if (!s) return s.context("cancel: db");
  d.rec.state = DeploymentState::cancelled;
  d.rec.finished_at = now_s();
  publish_cancels(d, notify, "cancelled by operator");
  if (d.rec.target_kind == "group") publish_group_offer(d, true);
  DeploymentRec out = d.rec;
  active_.erase(it);
  log_info("deployment " + out.id + " cancelled");
  return out;
}

Result<std::vector<std::string>> Deployments::cancel_rows_of(DbLock& db, const std::string& dev,
                                                             const std::string& actor) {
  std::lock_guard<std::mutex> lock(mu_);
  const long long ts = now_ms();
  std::vector<std::string> touched;
  for (auto& kv : active_) {
    auto r = kv.second.rows.find(dev);
    if (r == kv.second.rows.end()) continue;
    const auto to = next_row_state(r->second.rec.state, RowEvent::cancel);
    if (!to) continue;
    r->second.rec.state = *to;
    r->second.rec.reason = "device revoked";
    r->second.rec.updated_at = ts;
    Status s = db.store().upsert_row(r->second.rec);
    if (!s) return s.err();
    log_event(db, kv.second, dev, "state", "-> cancelled (device revoked)", actor);
    touched.push_back(kv.first);
  }
  return touched;
}

std::optional<std::string> Deployments::complete_if_done(DbLock& db, const std::string& dep_id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = active_.find(dep_id);
  if (it == active_.end()) return std::nullopt;
  LiveDeployment& d = it->second;
  DeploymentState final_state = DeploymentState::completed;
  if (!d.rollout_id.empty()) {
    // A rollout's deployment lives as long as the rollout (retries reopen rows) and then
    // until the devices that could not be stopped have reported.
    if (!is_terminal(d.rollout.state)) return std::nullopt;
    if (d.rollout.state == RolloutStatus::aborted) final_state = DeploymentState::cancelled;
  }
  if (d.rows.empty() && d.rollout_id.empty()) return std::nullopt;
  std::map<std::string, int> counts;
  for (const auto& kv : d.rows) {
    if (!is_final(kv.second.rec.state)) return std::nullopt;
    counts[to_string(kv.second.rec.state)]++;
  }
  if (d.rec.target_kind == "group")
    for (const auto& m : registry_.known_members(d.rec.target))
      if (!d.rows.count(m)) return std::nullopt;
  flush_rows_locked(db, true);
  Tx tx(db.store());
  Status s = tx.status();
  if (s) s = db.store().set_deployment_state(d.rec.id, final_state, now_s());
  std::string summary;
  for (const auto& c : counts)
    summary += (summary.empty() ? "" : " ") + c.first + "=" + std::to_string(c.second);
  if (s) log_event(db, d, "", std::string("deployment_") + to_string(final_state), summary);
  if (s) s = tx.commit();
  if (!s) {
    log_error("deployment " + d.rec.id + ": complete: " + s.error());
    return std::nullopt;
  }
  if (d.rec.target_kind == "group") publish_group_offer(d, true);
  log_info("deployment " + d.rec.id + " " + to_string(final_state) + ": " + summary);
  std::string rollout = d.rollout_id;
  active_.erase(it);
  return rollout;
}

// ------------------------------------------------------------------------ offers, cancels

bool Deployments::publish_offer_to_device(const LiveDeployment& d, const std::string& dev) {
  std::string t = topic(static_cast<int>(proto::TopicKind::offer), dev);
  bool ok = !t.empty() && pub_ && pub_->publish(t, d.rec.offer.data(), d.rec.offer.size(), 1, false);
  if (!ok) log_warn("deployment " + d.rec.id + ": publish offer to " + dev + " failed");
  return ok;
}

void Deployments::publish_group_offer(const LiveDeployment& d, bool clear) {
  std::string t = topic(static_cast<int>(proto::TopicKind::group_offer), d.rec.target);
  if (t.empty() || !pub_) return;
  bool ok = clear ? pub_->publish(t, "", 0, 1, true)
                  : pub_->publish(t, d.rec.offer.data(), d.rec.offer.size(), 1, true);
  if (!ok)
    log_warn("deployment " + d.rec.id + ": publish " + (clear ? "clear of " : "") +
             "group offer to " + t + " failed");
}

bool Deployments::publish_offer_attempt(const LiveDeployment& d, const std::string& dev,
                                        int attempt, bool tracked) {
  if (!tracked && d.rollout_id.empty()) return publish_offer_to_device(d, dev);
  std::string offer = d.rec.offer;
  if (!d.rollout_id.empty()) {
    // A rollout offers each device its own manifest, bound to the device and the attempt.
    OfferTarget bound;
    bound.device = dev;
    bound.rollback = d.rollout.rollback;
    auto built = keys_.build_offer(d.image, offer_id(d.rec.id, attempt), bound);
    if (!built) {
      log_error("deployment " + d.rec.id + ": offer to " + dev + ": " + built.error());
      return false;
    }
    offer = *built;
  }
  std::string t = topic(static_cast<int>(proto::TopicKind::offer), dev);
  std::function<void()> acked;
  if (tracked)
    acked = [this, dep = d.rec.id, dev, attempt] {
      std::lock_guard<std::mutex> lock(ack_mu_);
      offer_acks_.push_back({dep, dev, attempt});
    };
  bool ok = pub_ && pub_->publish_acked(t, offer.data(), offer.size(), 1, false, std::move(acked));
  if (!ok) log_warn("deployment " + d.rec.id + ": publish offer to " + dev + " failed");
  return ok;
}

void Deployments::publish_cancels(const LiveDeployment& d, const std::vector<std::string>& devs,
                                  const std::string& why) {
  proto::Cancel c;
  c.deployment.assign(d.rec.id.c_str());
  c.reason.assign(why.c_str());
  char buf[512];
  std::size_t len = 0;
  proto::Error e = proto::encode_cancel(c, buf, sizeof buf, len);
  if (e) {
    log_error(std::string("cancel: encode: ") + proto::errc_name(e.code) + " " + e.field);
    return;
  }
  const long long now = now_ms();
  for (const auto& dev : devs) {
    std::string t = topic(static_cast<int>(proto::TopicKind::cancel), dev);
    if (!pub_ || !pub_->publish(t, buf, len, 1, false))
      log_warn("cancel " + d.rec.id + ": publish to " + dev + " failed");
    else
      last_cancel_ms_[dev] = now;  // its in-flight requests need no second cancel
  }
}

void Deployments::send_cancel(const std::string& dev, const std::string& offer_id,
                              const std::string& why) {
  std::lock_guard<std::mutex> lock(mu_);
  send_cancel_locked(dev, offer_id, why);
}

void Deployments::send_cancel_locked(const std::string& dev, const std::string& dep_id,
                                     const std::string& why) {
  const long long now = now_ms();
  auto it = last_cancel_ms_.find(dev);
  if (it != last_cancel_ms_.end() && now - it->second < kCancelIntervalMs) return;
  if (last_cancel_ms_.size() >= 10000)  // bound: forget entries that no longer limit anything
    for (auto i = last_cancel_ms_.begin(); i != last_cancel_ms_.end();)
      i = now - i->second >= kCancelIntervalMs ? last_cancel_ms_.erase(i) : std::next(i);
  last_cancel_ms_[dev] = now;
  proto::Cancel c;
  c.deployment.assign(dep_id.c_str());
  c.reason.assign(why.c_str());
  char buf[512];
  std::size_t len = 0;
  proto::Error e = proto::encode_cancel(c, buf, sizeof buf, len);
  if (e) {
    log_error(std::string("cancel: encode: ") + proto::errc_name(e.code) + " " + e.field);
    return;
  }
  const std::string t = topic(static_cast<int>(proto::TopicKind::cancel), dev);
  if (!pub_ || !pub_->publish(t, buf, len, 1, false)) {
    log_warn("cancel " + dep_id + ": publish to " + dev + " failed");
    return;
  }
  cancels_sent_++;
  log_info("device " + dev + ": sent cancel for deployment '" + dep_id + "' (" + why + ")");
}

// ------------------------------------------------------------------------------ periodic

void Deployments::reoffer_deferred(DbLock& db, long long t) {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& kv : active_) {
    if (!kv.second.rollout_id.empty()) continue;  // the rollout engine re-offers its own
    for (auto& r : kv.second.rows) {
      LiveRow& row = r.second;
      const auto to = next_row_state(row.rec.state, RowEvent::offer);
      if (!to || row.rec.next_at > t) continue;
      row.rec.next_at = 0;
      Status s = set_row_state(db, kv.second, row, *to, "offered again after a deferral");
      if (!s) {
        log_error("deployment " + kv.first + ": re-offer to " + r.first + ": " + s.error());
        continue;
      }
      publish_offer_to_device(kv.second, r.first);
    }
  }
}

bool Deployments::needs_flush(bool force) const {
  std::lock_guard<std::mutex> lock(mu_);
  const long long now = now_ms();
  for (const auto& dkv : active_)
    for (const auto& rkv : dkv.second.rows)
      if (rkv.second.dirty && (force || now - rkv.second.last_flush_ms >= cfg_.flush_interval_ms))
        return true;
  return false;
}

void Deployments::flush_rows(DbLock& db, bool force) {
  std::lock_guard<std::mutex> lock(mu_);
  const long long now = now_ms();
  for (auto& dkv : active_)
    for (auto& rkv : dkv.second.rows)
      if (rkv.second.dirty && (force || now - rkv.second.last_flush_ms >= cfg_.flush_interval_ms)) {
        Status s = write_row(db, rkv.second);
        if (!s) log_error("flush row " + dkv.first + "/" + rkv.first + ": " + s.error());
      }
}

void Deployments::flush_rows_locked(DbLock& db, bool force) {
  const long long now = now_ms();
  bool any = false;
  for (const auto& dkv : active_)
    for (const auto& rkv : dkv.second.rows)
      any = any || (rkv.second.dirty &&
                    (force || now - rkv.second.last_flush_ms >= cfg_.flush_interval_ms));
  if (!any) return;
  Tx tx(db.store());
  if (!tx.status()) {
    log_error("flush: " + tx.status().error());
    return;
  }
  for (auto& dkv : active_)
    for (auto& rkv : dkv.second.rows)
      if (rkv.second.dirty && (force || now - rkv.second.last_flush_ms >= cfg_.flush_interval_ms)) {
        Status s = write_row(db, rkv.second);
        if (!s) log_error("flush row " + dkv.first + "/" + rkv.first + ": " + s.error());
      }
  Status c = tx.commit();
  if (!c) log_error("flush: " + c.error());
}

void Deployments::flush(DbLock& db, bool force) {
  std::lock_guard<std::mutex> lock(mu_);
  flush_rows_locked(db, force);
}

void Deployments::on_connected(DbLock& db, bool after_link_loss) {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& kv : active_)
    if (kv.second.rec.target_kind == "group") publish_group_offer(kv.second, false);
  if (!after_link_loss) return;
  // Whatever crossed the broker around the loss may be gone: an offer or an answer the
  // broker acknowledged but never delivered (a broker killed before it saved), a device's
  // hello delivered to nobody (our session lost, so we got only the retained copy). Every
  // device still in flight gets its offer again; by the protocol it works on from where it
  // is, or repeats its final answer, so no row waits for an answer that will never come.
  for (auto& kv : active_) {
    std::size_t resent = 0;
    for (auto& r : kv.second.rows) {
      if (!is_in_flight(r.second.rec.state)) continue;
      publish_offer_attempt(kv.second, r.first, r.second.rec.attempt, /*tracked=*/true);
      resent++;
    }
    if (resent > 0)
      db.event(kv.first, "", "offers_resent",
               std::to_string(resent) + " devices in flight: the link to the broker was restored",
               "controller", kv.second.rollout_id);
  }
}

void Deployments::apply_offer_acks(DbLock& db) {
  std::vector<OfferAck> acks;
  {
    std::lock_guard<std::mutex> lock(ack_mu_);
    acks.swap(offer_acks_);
  }
  if (acks.empty()) return;
  Tx tx(db.store());
  if (!tx.status()) {
    log_error("offer acks: " + tx.status().error());
    std::lock_guard<std::mutex> lock(ack_mu_);
    offer_acks_.insert(offer_acks_.end(), acks.begin(), acks.end());
    return;
  }
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& a : acks) {
    auto d = active_.find(a.dep);
    if (d == active_.end()) continue;
    auto r = d->second.rows.find(a.dev);
    if (r == d->second.rows.end() || r->second.rec.attempt != a.attempt || r->second.rec.offer_sent)
      continue;
    r->second.rec.offer_sent = true;
    Status s = write_row(db, r->second);
    if (!s) log_error("offer ack " + a.dep + "/" + a.dev + ": " + s.error());
  }
  Status c = tx.commit();
  if (!c) log_error("offer acks: " + c.error());
}

void Deployments::resend_unsent_offers(DbLock& db) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!resend_unsent_offers_) return;
  // Offers this controller committed before it stopped but the broker never acknowledged
  // (killed between the commit and the PUBACK): publish them now, once. One the broker did
  // take but whose PUBACK we lost is sent twice, the same offer id, which the agent treats
  // as the offer it already has.
  resend_unsent_offers_ = false;
  for (auto& kv : active_) {
    if (kv.second.rollout_id.empty()) continue;
    for (auto& r : kv.second.rows) {
      if (r.second.rec.state != RowState::offered || r.second.rec.offer_sent) continue;
      db.event(kv.first, r.first, "offer_republished",
               "attempt " + std::to_string(r.second.rec.attempt) +
                   ": the broker had not acknowledged it before the controller stopped",
               "controller", kv.second.rollout_id);
      publish_offer_attempt(kv.second, r.first, r.second.rec.attempt, /*tracked=*/true);
    }
  }
}

}  // namespace ota::service
