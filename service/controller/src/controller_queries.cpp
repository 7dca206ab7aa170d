// The Controller's queries: snapshots of the components (under their locks) handed to the
// view, metrics and health functions, which build the JSON and the Prometheus text.
#include <algorithm>
#include <map>
#include <set>

#include "ota/service/controller.hpp"
#include "ota/service/log.hpp"

namespace ota::service {

using nlohmann::json;

namespace {

// What a device is doing, for views and the devices filter: no in-flight row.
constexpr const char* kIdle = "idle";

// The `state` filter of devices_json: an in-flight row state, or idle (none), updating (any),
// online, offline; empty: no filter.
struct DeviceStateFilter {
  enum class Kind { any, idle, updating, online, offline, row } kind = Kind::any;
  RowState row = RowState::offered;
  bool matches(const std::optional<Transfer>& transfer, bool online) const {
    switch (kind) {
      case Kind::any: return true;
      case Kind::idle: return !transfer;
      case Kind::updating: return transfer.has_value();
      case Kind::online: return online;
      case Kind::offline: return !online;
      case Kind::row: return transfer && transfer->state == row;
    }
    return false;
  }
};

std::optional<DeviceStateFilter> parse_device_state_filter(const std::string& s) {
  using K = DeviceStateFilter::Kind;
  static const std::pair<const char*, K> kWords[] = {
      {"", K::any}, {kIdle, K::idle}, {"updating", K::updating}, {"online", K::online},
      {"offline", K::offline}};
  DeviceStateFilter f;
  for (const auto& [word, kind] : kWords)
    if (s == word) {
      f.kind = kind;
      return f;
    }
  auto row = row_state_from(s);
  if (!row || !is_in_flight(*row)) return std::nullopt;
  f.kind = K::row;
  f.row = *row;
  return f;
}

const DeviceTags* tags_of(const std::map<std::string, DeviceTags>* all, const std::string& id) {
  if (!all) return nullptr;
  auto it = all->find(id);
  return it == all->end() ? nullptr : &it->second;
}

}  // namespace

DeviceLive Controller::device_live(const DeviceRec& d, long long t) const {
  DeviceLive live;
  live.online = registry_.is_online(d, t, &live.last_ms);
  live.member_of = registry_.member_of(d);
  live.transfer = deployments_.transfer_of(d.id);
  return live;
}

// ------------------------------------------------------------------------------- images

Result<json> Controller::images_json() {
  DbLock db(db_);
  auto imgs = db.store().list_images();
  if (!imgs) return imgs.context("images");
  json out = json::array();
  for (const auto& i : *imgs) out.push_back(image_view(i));
  return out;
}

Result<json> Controller::image_json(const std::string& id_or_version) {
  DbLock db(db_);
  auto img = resolve_image(db.store(), id_or_version);
  if (!img) return img.err();
  return image_view(*img);
}

// -------------------------------------------------------------------------- deployments

json Controller::deployment_json_of(DbLock& db, const DeploymentRec& d, bool with_rows) {
  std::optional<ImageRec> img;
  if (auto i = db.store().image_by_id(d.image_id); i && *i) img = **i;
  std::vector<RowRec> rows;
  if (auto r = db.store().rows(d.id)) rows = std::move(*r);
  const int pending = d.state == DeploymentState::active && d.target_kind == "group"
                          ? deployments_.pending_members(d.id, d.target)
                          : 0;
  return deployment_view(d, img, rows, pending, with_rows);
}

Result<json> Controller::deployments_json() {
  DbLock db(db_);
  flush(db, true);
  auto deps = db.store().list_deployments();
  if (!deps) return deps.context("deployments");
  json out = json::array();
  for (const auto& d : *deps) out.push_back(deployment_json_of(db, d, false));
  return out;
}

Result<json> Controller::deployment_json(const std::string& id) {
  DbLock db(db_);
  flush(db, true);
  auto d = db.store().deployment(id);
  if (!d) return d.context("deployment");
  if (!*d) return not_found_err("unknown deployment " + id);
  return deployment_json_of(db, **d, true);
}

// ------------------------------------------------------------------------------ devices

Status Controller::for_each_device(
    const DeviceFilter& f, const std::string& tag_expr, const std::string& state,
    const std::function<void(const DeviceRec&, const DeviceLive&, const DeviceTags*, long long)>& fn) {
  std::optional<TagExpr> expr;
  if (!tag_expr.empty()) {
    auto e = TagExpr::parse(tag_expr);
    if (!e) return e.err();
    expr = *e;
  }
  const std::optional<DeviceStateFilter> filter = parse_device_state_filter(state);
  if (!filter)
    return invalid_err("state '" + state +
                       "' is not one of idle, updating, online, offline, offered, accepted, "
                       "downloading, verifying, installing, rebooting, confirming");
  DbLock db(db_);
  auto devs = db.store().list_devices(DeviceFilter{f.group, f.version, std::nullopt});
  if (!devs) return devs.context("devices");
  std::map<std::string, TagSubject> subjects;
  if (expr) subjects = tag_subjects(db.store(), registry_);
  auto tags = db.store().all_tags();
  const long long t = now();
  for (const auto& d : *devs) {
    if (expr) {
      auto it = subjects.find(d.id);
      if (it == subjects.end() || !expr->matches(it->second)) continue;
    }
    const DeviceLive live = device_live(d, t);
    if (f.online && live.online != *f.online) continue;
    if (!filter->matches(live.transfer, live.online)) continue;
    fn(d, live, tags_of(tags ? &*tags : nullptr, d.id), t);
  }
  return {};
}

Result<json> Controller::devices_json(const DeviceFilter& f, const std::string& tag_expr,
                                      const std::string& state) {
  json out = json::array();
  Status s = for_each_device(f, tag_expr, state,
                             [&out](const DeviceRec& d, const DeviceLive& live,
                                    const DeviceTags* tags, long long t) {
                               out.push_back(device_view(d, live, tags, t));
                             });
  if (!s) return s.err();
  return out;
}

Result<json> Controller::devices_page_json(const DeviceFilter& f, const std::string& tag_expr,
                                           const std::string& state, std::size_t offset,
                                           std::size_t limit, std::size_t* total) {
  json out = json::array();
  std::size_t n = 0;
  Status s = for_each_device(f, tag_expr, state,
                             [&](const DeviceRec& d, const DeviceLive& live,
                                 const DeviceTags* tags, long long t) {
                               if (n >= offset && n - offset < limit)
                                 out.push_back(device_view(d, live, tags, t));
                               ++n;
                             });
  if (!s) return s.err();
  *total = n;
  return out;
}

Result<json> Controller::fleet_counts_json(const DeviceFilter& f, const std::string& tag_expr,
                                           const std::string& state) {
  long long total = 0, online = 0;
  std::map<std::string, long long> by_version, by_hw, by_state, by_group;
  Status s = for_each_device(f, tag_expr, state,
                             [&](const DeviceRec& d, const DeviceLive& live, const DeviceTags*,
                                 long long) {
                               ++total;
                               if (live.online) ++online;
                               ++by_version[d.version];
                               ++by_hw[d.hw];
                               ++by_state[live.transfer ? to_string(live.transfer->state) : kIdle];
                               for (const auto& g : live.member_of) ++by_group[g];
                             });
  if (!s) return s.err();
  return json{{"total", total},          {"online", online},   {"offline", total - online},
              {"by_version", by_version}, {"by_hw", by_hw},     {"by_state", by_state},
              {"by_group", by_group}};
}

Result<json> Controller::device_json(const std::string& id) {
  DbLock db(db_);
  flush(db, true);
  auto d = db.store().device(id);
  if (!d) return d.context("device");
  if (!*d) return not_found_err("unknown device " + id);
  auto tags = db.store().all_tags();
  const long long t = now();
  json j = device_view(**d, device_live(**d, t), tags_of(tags ? &*tags : nullptr, id), t);
  auto rows = db.store().rows_for_device(id, 20);
  json jr = json::array();
  if (rows)
    for (const auto& r : *rows)
      jr.push_back(json{{"deployment", r.deployment_id},
                        {"state", to_string(r.state)},
                        {"reason", r.reason},
                        {"received", r.received},
                        {"total", r.total},
                        {"updated_at", r.updated_at}});
  j["deployments"] = jr;
  return j;
}

// ------------------------------------------------------------------------------ rollouts

Result<json> Controller::rollouts_json() {
  DbLock db(db_);
  return runner_.list_json(db);
}

Result<json> Controller::rollout_json(const std::string& id, bool with_devices) {
  DbLock db(db_);
  return runner_.one_json(db, id, with_devices);
}

// --------------------------------------------------------------------- status, events

Result<json> Controller::status_json() {
  DbLock db(db_);
  Store& store = db.store();
  auto by_version = store.count_by("SELECT version, COUNT(*) FROM devices GROUP BY version");
  if (!by_version) return by_version.context("status");
  auto online = store.count_by("SELECT CAST(online AS TEXT), COUNT(*) FROM devices GROUP BY online");
  if (!online) return online.context("status");
  auto deps = store.count_by("SELECT state, COUNT(*) FROM deployments GROUP BY state");
  if (!deps) return deps.context("status");
  auto imgs = store.count_by("SELECT 'n', COUNT(*) FROM images");
  if (!imgs) return imgs.context("status");
  long long total = 0;
  for (const auto& kv : *by_version) total += kv.second;
  json dep_states = json::object();
  for (DeploymentState st : {DeploymentState::active, DeploymentState::completed, DeploymentState::cancelled})
    dep_states[to_string(st)] = 0;
  for (const auto& kv : *deps) dep_states[kv.first] = kv.second;
  return json{{"devices",
               {{"total", total},
                {"online", online->count("1") ? online->at("1") : 0},
                {"by_version", *by_version}}},
              {"deployments", dep_states},
              {"images", imgs->count("n") ? imgs->at("n") : 0},
              {"decode_errors", decode_errors()},
              {"chunks_sent", chunks_sent()},
              {"ignored_messages", ignored_messages()},
              {"duplicate_chunk_requests", duplicate_requests()},
              {"cancels_sent", cancels_sent()}};
}

Result<json> Controller::version_history_json(long long since_ms, int points) {
  struct Change {
    long long ts;
    std::string device, version;  // version empty: the device was decommissioned
  };
  std::vector<Change> changes;
  {
    DbLock db(db_);
    Status s = db.store().for_each_version_event(
        [&changes](long long ts, const std::string& device, const std::string& what,
                   const std::string& detail) {
          // A hello's detail starts "version V hw ..." (handle_presence.cpp).
          std::string version;
          if (what == "hello" && detail.rfind("version ", 0) == 0)
            version = detail.substr(8, detail.find(' ', 8) - 8);
          else if (what == "hello")
            return;  // not a form this replay knows: skip rather than guess
          changes.push_back({ts, device, std::move(version)});
        });
    if (!s) return s.context("fleet versions");
  }
  const long long to = now();
  json out{{"from", 0}, {"to", to}, {"versions", json::array()}, {"points", json::array()}};
  if (changes.empty()) return out;
  const long long from = std::min(to, since_ms > 0 ? since_ms : changes.front().ts);
  out["from"] = from;
  std::map<std::string, std::string> version_of;  // device -> its version at the replay time
  std::map<std::string, long long> counts;         // version -> devices
  std::set<std::string> versions;
  std::size_t next = 0;
  for (int i = 0; i < points; ++i) {
    const long long t = from + (to - from) * i / std::max(1, points - 1);
    for (; next < changes.size() && changes[next].ts <= t; ++next) {
      const Change& c = changes[next];
      auto it = version_of.find(c.device);
      if (it != version_of.end() && --counts[it->second] == 0) counts.erase(it->second);
      if (c.version.empty()) {
        if (it != version_of.end()) version_of.erase(it);
        continue;
      }
      version_of[c.device] = c.version;
      ++counts[c.version];
    }
    json at = json::object();
    for (const auto& [version, n] : counts) {
      at[version] = n;
      versions.insert(version);
    }
    out["points"].push_back(json{{"ts", t}, {"counts", at}});
  }
  out["versions"] = versions;
  return out;
}

Result<json> Controller::events_json(const EventFilter& f) {
  DbLock db(db_);
  Store& store = db.store();
  auto evs = store.events(f);
  if (!evs) return evs.context("events");
  // A filter naming nothing that exists is a typo: 404, not an empty log. (Only when nothing
  // matched: a device that never said hello may still have ignored messages logged.)
  if (evs->empty()) {
    if (!f.rollout.empty()) {
      auto r = store.rollout(f.rollout);
      if (!r) return r.context("events");
      if (!*r) return not_found_err("events: unknown rollout " + f.rollout);
    }
    if (!f.deployment.empty()) {
      auto d = store.deployment(f.deployment);
      if (!d) return d.context("events");
      if (!*d) return not_found_err("events: unknown deployment " + f.deployment);
    }
    if (!f.device.empty()) {
      auto d = store.device(f.device);
      if (!d) return d.context("events");
      if (!*d) return not_found_err("events: unknown device " + f.device);
    }
  }
  return events_view(*evs);
}

// -------------------------------------------------------------------- metrics, health

HealthSnapshot Controller::health_snapshot(DbLock* db) {
  HealthSnapshot h;
  h.link = pub_ ? pub_->link_status() : LinkStatus{};
  h.now = now();
  if (db) {
    h.db = db_.health(*db);
  } else {
    DbLock lock(db_);
    h.db = db_.health(lock);
  }
  h.db_path = cfg_.db_path;
  h.disks = watched_disks(cfg_);
  h.min_free_bytes = cfg_.min_free_bytes;
  h.key_id = key_id();
  h.prefix = prefix();
  h.decode_errors = decode_errors();
  return h;
}

json Controller::health_json(bool* ok) { return health_view(health_snapshot(nullptr), ok); }

MetricsSnapshot Controller::metrics_snapshot(DbLock& db) {
  MetricsSnapshot s;
  std::map<std::string, std::string> dev_state;
  for (const auto& [dev, st] : deployments_.in_flight()) {
    dev_state[dev] = to_string(count_bucket(st));
    s.in_flight++;
  }
  const long long t = now();
  if (auto devs = db.store().list_devices({})) {
    for (const auto& d : *devs) {
      (registry_.is_online(d, t, nullptr) ? s.online : s.offline)++;
      s.by_version[d.version.empty() ? "unknown" : d.version]++;
      auto st = dev_state.find(d.id);
      s.by_state[st == dev_state.end() ? std::string(kIdle) : st->second]++;
    }
  }
  s.bytes_served = bytes_served();
  s.chunks_sent = chunks_sent();
  s.chunk_unacked_bytes = chunks_.unacked_bytes();
  s.chunk_unacked_peak = chunks_.peak_unacked_bytes();
  s.chunk_unacked_limit = cfg_.chunk_flow.max_unacked_bytes;
  s.chunk_queued = chunks_.queued_chunks();
  s.chunk_frames_lost = chunks_.frames_lost();
  s.chunk_resends_avoided = chunks_.resends_avoided();
  s.chunk_unicast_bytes = chunks_.unicast_bytes();
  s.chunk_broadcast_bytes = chunks_.broadcast_bytes();
  s.chunk_broadcast_frames = chunks_.broadcast_frames();
  s.chunk_broadcast_deliveries = chunks_.broadcast_deliveries();
  s.chunk_broadcast_unreadable = broadcast_unreadable();
  s.device_messages_queued = queued_device_messages();
  s.device_message_batches = inbound_.batches();
  s.device_messages_batched = inbound_.batched_messages();
  s.decode_errors = decode_errors();
  s.ignored_messages = ignored_messages();
  for (std::size_t r = 0; r < kDropReasonCount; ++r) s.dropped[r] = dropped(static_cast<DropReason>(r));
  for (auto& ro : runner_.snapshot(db)) {
    MetricsSnapshot::Rollout m{ro.rec, ro.policy, ro.version, summarize_rollout(ro.rec, ro.policy, ro.rows)};
    s.rollouts.push_back(std::move(m));
  }
  for (RolloutStatus st : all_rollout_statuses()) s.rollouts_by_state[to_string(st)] = 0;
  if (auto all = db.store().list_rollouts())
    for (const auto& r : *all) s.rollouts_by_state[to_string(r.state)]++;
  s.deployments_active = deployments_.active_count();
  s.health = health_snapshot(&db);
  return s;
}

std::string Controller::metrics_text() {
  MetricsSnapshot s;
  {
    DbLock db(db_);
    s = metrics_snapshot(db);
  }
  return ota::service::metrics_text(s);
}

}  // namespace ota::service
