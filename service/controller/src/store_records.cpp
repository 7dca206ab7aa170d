// Store: reading and writing the records (images, key sets, devices, deployments, rows,
// events, rollouts, tags, API tokens) and the event retention.
#include "ota/service/store.hpp"

#include <fcntl.h>
#include <sqlite3.h>
#include <stdio.h>  // renameat2, RENAME_NOREPLACE
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "ota/service/log.hpp"
#include "store_statement.hpp"

namespace ota::service {

using detail::Q;

namespace {

std::string to_json_array(const std::vector<std::string>& v) { return nlohmann::json(v).dump(); }
std::vector<std::string> from_json_array(const std::string& s) {
  std::vector<std::string> out;
  nlohmann::json j = nlohmann::json::parse(s, nullptr, /*allow_exceptions=*/false);
  if (!j.is_array()) return out;
  for (const auto& e : j)
    if (e.is_string()) out.push_back(e.get<std::string>());
  return out;
}

ImageRec read_image(const Q& q, int schema) {
  ImageRec r;
  r.id = q.text(0);
  r.sha256 = q.text(1);
  r.version = q.text(2);
  r.hw = from_json_array(q.text(3));
  r.size = q.u64(4);
  r.chunk_size = q.u32(5);
  r.counter = q.u32(6);
  r.kind = q.text(7);
  r.created_at = q.i64(8);
  if (schema >= 5) {
    r.release_key = q.text(9);
    r.release_sig = q.text(10);
  }
  return r;
}
// The columns of the schema the file has (tests write older schemas through the Store).
std::string image_cols(int schema) {
  return std::string("SELECT id, sha256, version, hw, size, chunk_size, counter, kind, created_at") +
         (schema >= 5 ? ", release_key, release_sig" : "") + " FROM images ";
}

DeviceRec read_device(const Q& q, int schema) {
  DeviceRec d;
  d.id = q.text(0);
  d.hw = q.text(1);
  d.version = q.text(2);
  if (!q.is_null(3)) d.previous_version = q.text(3);
  d.slot = q.text(4);
  d.slot_state = q.text(5);
  d.free = q.u64(6);
  d.counter = q.u32(7);
  d.groups = from_json_array(q.text(8));
  d.online = q.i64(9) != 0;
  d.last_seen = q.i64(10);
  d.last_error = q.text(11);
  d.last_seq = q.i64(12);
  if (schema >= 5) {
    d.keys = q.u32(13);
    d.revoked_at = q.i64(14);
  }
  return d;
}
std::string device_cols(int schema) {
  return std::string("SELECT id, hw, version, previous_version, slot, slot_state, free, counter, "
                     "groups, online, last_seen, last_error, last_seq") +
         (schema >= 5 ? ", keyset, revoked_at" : "") + " FROM devices ";
}

DeploymentRec read_deployment(const Q& q) {
  DeploymentRec d;
  d.id = q.text(0);
  d.image_id = q.text(1);
  d.target_kind = q.text(2);
  d.target = q.text(3);
  d.state = deployment_state_from(q.text(4)).value_or(DeploymentState::active);  // CHECKed
  d.offer = q.text(5);
  d.created_at = q.i64(6);
  d.finished_at = q.i64(7);
  return d;
}
const char* const kDeploymentCols =
    "SELECT id, image_id, target_kind, target, state, offer, created_at, finished_at "
    "FROM deployments ";

RowRec read_row(const Q& q) {
  RowRec r;
  r.deployment_id = q.text(0);
  r.device_id = q.text(1);
  r.state = row_state_from(q.text(2)).value_or(RowState::failed);  // CHECKed
  r.reason = q.text(3);
  r.received = q.u64(4);
  r.total = q.u64(5);
  r.bytes_sent = q.u64(6);
  r.updated_at = q.i64(7);
  r.wave = static_cast<int>(q.i64(8));
  r.ord = static_cast<int>(q.i64(9));
  r.attempt = static_cast<int>(q.i64(10));
  r.extra_attempts = static_cast<int>(q.i64(11));
  r.defers = static_cast<int>(q.i64(12));
  r.next_at = q.i64(13);
  r.offered_at = q.i64(14);
  r.offer_sent = q.i64(15) != 0;
  return r;
}
const char* const kRowCols =
    "SELECT deployment_id, device_id, state, reason, received, total, bytes_sent, updated_at, "
    "wave, ord, attempt, extra_attempts, defers, next_at, offered_at, offer_sent "
    "FROM deployment_devices ";

RolloutRec read_rollout(const Q& q) {
  RolloutRec r;
  r.id = q.text(0);
  r.name = q.text(1);
  r.image_id = q.text(2);
  r.target_kind = q.text(3);
  r.target = q.text(4);
  r.policy = q.text(5);
  r.state = rollout_status_from(q.text(6)).value_or(RolloutStatus::draft);  // CHECKed
  r.current_wave = static_cast<int>(q.i64(7));
  r.wave_started_ms = q.i64(8);
  r.threshold_met_ms = q.i64(9);
  r.accepted_through = static_cast<int>(q.i64(10));
  r.pause_reason = q.text(11);
  r.paused_by = paused_by_from(q.text(12)).value_or(PausedBy::none);
  r.deployment_id = q.text(13);
  r.rollback_of = q.text(14);
  r.from_version = q.text(15);
  r.excluded = q.i64(16);
  r.created_at = q.i64(17);
  r.started_at = q.i64(18);
  r.finished_at = q.i64(19);
  return r;
}
const char* const kRolloutCols =
    "SELECT id, name, image_id, target_kind, target, policy, state, current_wave, "
    "wave_started_ms, threshold_met_ms, accepted_through, pause_reason, paused_by, "
    "deployment_id, rollback_of, from_version, excluded, created_at, started_at, finished_at "
    "FROM rollouts ";

}  // namespace

// ---------------------------------------------------------------------------------- images
Status Store::insert_image(const ImageRec& img) {
  const bool v5 = schema_version_ >= 5;
  if (!v5 && !img.release_sig.empty())
    return internal_err("insert image: a release signature needs schema 5");
  OTA_PREP(q, v5 ? "INSERT INTO images(id, sha256, version, hw, size, chunk_size, counter, kind, "
                   "created_at, release_key, release_sig) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
                 : "INSERT INTO images(id, sha256, version, hw, size, chunk_size, counter, kind, "
                   "created_at) VALUES (?,?,?,?,?,?,?,?,?)");
  q.bind(1, img.id).bind(2, img.sha256).bind(3, img.version).bind(4, to_json_array(img.hw));
  q.bind_u64(5, img.size).bind(6, static_cast<long long>(img.chunk_size));
  q.bind(7, static_cast<long long>(img.counter)).bind(8, img.kind).bind(9, img.created_at);
  if (v5) q.bind(10, img.release_key).bind(11, img.release_sig);
  OTA_DONE(q, "insert image");
  return {};
}

Status Store::set_image_release(const std::string& id, const std::string& release_key,
                                const std::string& release_sig) {
  OTA_PREP(q, "UPDATE images SET release_key = ?, release_sig = ? WHERE id = ?");
  q.bind(1, release_key).bind(2, release_sig).bind(3, id);
  OTA_DONE(q, "set image release signature");
  if (sqlite3_changes(db_) != 1) return not_found_err("unknown image " + id);
  return {};
}

Status Store::insert_key_set(const KeySetRec& k) {
  OTA_PREP(q, "INSERT INTO key_sets(version, body, signed_by, uploaded_by, uploaded_at) "
              "VALUES (?,?,?,?,?)");
  q.bind(1, static_cast<long long>(k.version)).bind(2, k.body).bind(3, k.signed_by);
  q.bind(4, k.uploaded_by).bind(5, k.uploaded_at);
  const int rc = q.step();
  if ((rc & 0xff) == SQLITE_CONSTRAINT)
    return conflict_err("key set version " + std::to_string(k.version) + " exists");
  if (rc != SQLITE_DONE) return record_write_failure(rc, "insert key set: " + errmsg());
  record_statement_done();
  return {};
}

Result<std::vector<KeySetRec>> Store::key_sets() {
  OTA_PREP(q, "SELECT version, body, signed_by, uploaded_by, uploaded_at FROM key_sets "
              "ORDER BY version");
  std::vector<KeySetRec> out;
  int rc;
  while ((rc = q.step()) == SQLITE_ROW) {
    KeySetRec k;
    k.version = q.u32(0);
    k.body = q.text(1);
    k.signed_by = q.text(2);
    k.uploaded_by = q.text(3);
    k.uploaded_at = q.i64(4);
    out.push_back(std::move(k));
  }
  if (rc != SQLITE_DONE) return internal_err("key sets: " + errmsg());
  return out;
}

Result<std::optional<ImageRec>> Store::image_by_id(const std::string& id) {
  OTA_PREP(q, image_cols(schema_version_) + "WHERE id = ?");
  q.bind(1, id);
  if (q.step() == SQLITE_ROW) return std::optional<ImageRec>(read_image(q, schema_version_));
  return std::optional<ImageRec>();
}
Result<std::optional<ImageRec>> Store::image_by_sha(const std::string& sha) {
  OTA_PREP(q, image_cols(schema_version_) + "WHERE sha256 = ?");
  q.bind(1, sha);
  if (q.step() == SQLITE_ROW) return std::optional<ImageRec>(read_image(q, schema_version_));
  return std::optional<ImageRec>();
}
Result<std::optional<ImageRec>> Store::image_by_version(const std::string& version) {
  OTA_PREP(q, image_cols(schema_version_) + "WHERE version = ?");
  q.bind(1, version);
  if (q.step() == SQLITE_ROW) return std::optional<ImageRec>(read_image(q, schema_version_));
  return std::optional<ImageRec>();
}
Result<std::vector<ImageRec>> Store::list_images() {
  OTA_PREP(q, image_cols(schema_version_) + "ORDER BY created_at, id");
  std::vector<ImageRec> out;
  while (q.step() == SQLITE_ROW) out.push_back(read_image(q, schema_version_));
  return out;
}

// --------------------------------------------------------------------------------- devices
Status Store::upsert_device(const DeviceRec& d) {
  const bool v5 = schema_version_ >= 5;
  OTA_PREP(q,
           std::string("INSERT INTO devices(id, hw, version, previous_version, slot, slot_state, "
                       "free, counter, groups, online, last_seen") +
               (v5 ? ", keyset) VALUES (?,?,?,?,?,?,?,?,?,?,?,?) "
                   : ") VALUES (?,?,?,?,?,?,?,?,?,?,?) ") +
               "ON CONFLICT(id) DO UPDATE SET hw=excluded.hw, version=excluded.version, "
               "previous_version=excluded.previous_version, slot=excluded.slot, "
               "slot_state=excluded.slot_state, free=excluded.free, counter=excluded.counter, "
               "groups=excluded.groups, online=excluded.online, last_seen=excluded.last_seen" +
               (v5 ? ", keyset=excluded.keyset" : ""));
  if (v5) q.bind(12, static_cast<long long>(d.keys));
  q.bind(1, d.id).bind(2, d.hw).bind(3, d.version);
  if (d.previous_version)
    q.bind(4, *d.previous_version);
  else
    q.bind_null(4);
  q.bind(5, d.slot).bind(6, d.slot_state).bind_u64(7, d.free);
  q.bind(8, static_cast<long long>(d.counter)).bind(9, to_json_array(d.groups));
  q.bind(10, static_cast<long long>(d.online ? 1 : 0)).bind(11, d.last_seen);
  OTA_DONE(q, "upsert device");
  return {};
}

Status Store::ensure_device(const std::string& id, long long ts) {
  OTA_PREP(q, "INSERT INTO devices(id, online, last_seen) VALUES (?, 1, ?) "
              "ON CONFLICT(id) DO NOTHING");
  q.bind(1, id).bind(2, ts);
  OTA_DONE(q, "ensure device");
  return {};
}

Status Store::set_device_online(const std::string& id, bool online, long long ts) {
  OTA_PREP(q, "UPDATE devices SET online = ?, last_seen = ? WHERE id = ?");
  q.bind(1, static_cast<long long>(online ? 1 : 0)).bind(2, ts).bind(3, id);
  OTA_DONE(q, "set device online");
  return {};
}
Status Store::set_device_revoked(const std::string& id, long long ts) {
  OTA_PREP(q, "UPDATE devices SET revoked_at = ? WHERE id = ?");
  q.bind(1, ts).bind(2, id);
  OTA_DONE(q, "set device revoked");
  if (sqlite3_changes(db_) != 1) return not_found_err("unknown device " + id);
  return {};
}

Status Store::set_device_last_seq(const std::string& id, long long seq) {
  OTA_PREP(q, "UPDATE devices SET last_seq = ? WHERE id = ?");
  q.bind(1, seq).bind(2, id);
  OTA_DONE(q, "set device last_seq");
  return {};
}
Status Store::set_device_version(const std::string& id, const std::string& version) {
  OTA_PREP(q,
           "UPDATE devices SET previous_version = CASE WHEN version <> ? AND version <> '' "
           "THEN version ELSE previous_version END, version = ?, last_error = '' WHERE id = ?");
  q.bind(1, version).bind(2, version).bind(3, id);
  OTA_DONE(q, "set device version");
  return {};
}
Status Store::set_device_last_error(const std::string& id, const std::string& err) {
  OTA_PREP(q, "UPDATE devices SET last_error = ? WHERE id = ?");
  q.bind(1, err).bind(2, id);
  OTA_DONE(q, "set device last_error");
  return {};
}

Result<std::optional<DeviceRec>> Store::device(const std::string& id) {
  OTA_PREP(q, device_cols(schema_version_) + "WHERE id = ?");
  q.bind(1, id);
  if (q.step() == SQLITE_ROW) return std::optional<DeviceRec>(read_device(q, schema_version_));
  return std::optional<DeviceRec>();
}

Result<std::vector<DeviceRec>> Store::list_devices(const DeviceFilter& f) {
  OTA_PREP(q, device_cols(schema_version_) +
                  "WHERE (?1 = '' OR EXISTS (SELECT 1 FROM json_each(devices.groups) "
                  "WHERE json_each.value = ?1)) AND (?2 = '' OR version = ?2) "
                  "AND (?3 < 0 OR online = ?3) ORDER BY id");
  q.bind(1, f.group).bind(2, f.version);
  q.bind(3, static_cast<long long>(f.online ? (*f.online ? 1 : 0) : -1));
  std::vector<DeviceRec> out;
  while (q.step() == SQLITE_ROW) out.push_back(read_device(q, schema_version_));
  return out;
}

// ----------------------------------------------------------------------------- deployments
Result<std::string> Store::next_deployment_id() {
  OTA_PREP(q, "SELECT COALESCE(MAX(CAST(substr(id, 5) AS INTEGER)), 0) FROM deployments "
              "WHERE id LIKE 'dep-%'");
  long long n = 0;
  if (q.step() == SQLITE_ROW) n = q.i64(0);
  return "dep-" + std::to_string(n + 1);
}

Status Store::insert_deployment(const DeploymentRec& d) {
  OTA_PREP(q,
           "INSERT INTO deployments(id, image_id, target_kind, target, state, offer, "
           "created_at, finished_at) VALUES (?,?,?,?,?,?,?,?)");
  q.bind(1, d.id).bind(2, d.image_id).bind(3, d.target_kind).bind(4, d.target);
  q.bind(5, to_string(d.state)).bind(6, d.offer).bind(7, d.created_at).bind(8, d.finished_at);
  OTA_DONE(q, "insert deployment");
  return {};
}

Status Store::set_deployment_state(const std::string& id, DeploymentState state, long long ts) {
  OTA_PREP(q, "UPDATE deployments SET state = ?, finished_at = ? WHERE id = ?");
  q.bind(1, to_string(state)).bind(2, state == DeploymentState::active ? 0LL : ts).bind(3, id);
  OTA_DONE(q, "set deployment state");
  return {};
}

Result<std::optional<DeploymentRec>> Store::deployment(const std::string& id) {
  OTA_PREP(q, std::string(kDeploymentCols) + "WHERE id = ?");
  q.bind(1, id);
  if (q.step() == SQLITE_ROW) return std::optional<DeploymentRec>(read_deployment(q));
  return std::optional<DeploymentRec>();
}

Result<std::vector<DeploymentRec>> Store::list_deployments(std::optional<DeploymentState> state) {
  OTA_PREP(q, std::string(kDeploymentCols) +
                  "WHERE (?1 = '' OR state = ?1) ORDER BY created_at, "
                  "CAST(substr(id, 5) AS INTEGER), id");
  q.bind(1, state ? to_string(*state) : "");
  std::vector<DeploymentRec> out;
  while (q.step() == SQLITE_ROW) out.push_back(read_deployment(q));
  return out;
}

// ------------------------------------------------------------------------------------ rows
Status Store::upsert_row(const RowRec& r) {
  if (!row_state_from(to_string(r.state)))
    return invalid_err("bad row state " + std::to_string(static_cast<int>(r.state)));
  OTA_PREP(q,
           "INSERT INTO deployment_devices(deployment_id, device_id, state, reason, received, "
           "total, bytes_sent, updated_at, wave, ord, attempt, extra_attempts, defers, next_at, "
           "offered_at, offer_sent) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) "
           "ON CONFLICT(deployment_id, device_id) DO UPDATE SET state=excluded.state, "
           "reason=excluded.reason, received=excluded.received, total=excluded.total, "
           "bytes_sent=excluded.bytes_sent, updated_at=excluded.updated_at, wave=excluded.wave, "
           "ord=excluded.ord, attempt=excluded.attempt, extra_attempts=excluded.extra_attempts, "
           "defers=excluded.defers, next_at=excluded.next_at, offered_at=excluded.offered_at, "
           "offer_sent=excluded.offer_sent");
  q.bind(1, r.deployment_id).bind(2, r.device_id).bind(3, to_string(r.state)).bind(4, r.reason);
  q.bind_u64(5, r.received).bind_u64(6, r.total).bind_u64(7, r.bytes_sent).bind(8, r.updated_at);
  q.bind(9, static_cast<long long>(r.wave)).bind(10, static_cast<long long>(r.ord));
  q.bind(11, static_cast<long long>(r.attempt)).bind(12, static_cast<long long>(r.extra_attempts));
  q.bind(13, static_cast<long long>(r.defers)).bind(14, r.next_at).bind(15, r.offered_at);
  q.bind(16, static_cast<long long>(r.offer_sent ? 1 : 0));
  OTA_DONE(q, "upsert deployment row");
  return {};
}

Result<std::vector<RowRec>> Store::rows(const std::string& deployment_id) {
  OTA_PREP(q, std::string(kRowCols) + "WHERE deployment_id = ? ORDER BY device_id");
  q.bind(1, deployment_id);
  std::vector<RowRec> out;
  while (q.step() == SQLITE_ROW) out.push_back(read_row(q));
  return out;
}

Result<std::vector<RowRec>> Store::rows_for_device(const std::string& device_id, int limit) {
  OTA_PREP(q, std::string(kRowCols) + "WHERE device_id = ? ORDER BY updated_at DESC LIMIT ?");
  q.bind(1, device_id).bind(2, static_cast<long long>(limit));
  std::vector<RowRec> out;
  while (q.step() == SQLITE_ROW) out.push_back(read_row(q));
  return out;
}

// ---------------------------------------------------------------------------------- events
Status Store::add_event(const std::string& deployment, const std::string& device,
                        const std::string& what, const std::string& detail,
                        const std::string& actor, const std::string& rollout, long long ts_ms) {
  OTA_PREP(q, "INSERT INTO events(ts, deployment, device, what, detail, actor, rollout) "
              "VALUES (?,?,?,?,?,?,?)");
  q.bind(1, ts_ms > 0 ? ts_ms : now_ms()).bind(2, deployment).bind(3, device).bind(4, what).bind(5, detail);
  q.bind(6, actor.empty() ? std::string("controller") : actor).bind(7, rollout);
  OTA_DONE(q, "add event");
  return {};
}

Result<std::vector<EventRec>> Store::events(const EventFilter& f) {
  OTA_PREP(q,
           "SELECT id, ts, deployment, device, what, detail, actor, rollout FROM (SELECT * "
           "FROM events WHERE (?1 = '' OR deployment = ?1) AND (?2 = '' OR device = ?2) "
           "AND (?4 = '' OR rollout = ?4) AND id > ?5 AND (?6 = 0 OR id < ?6) "
           "ORDER BY id DESC LIMIT ?3) ORDER BY id");
  q.bind(1, f.deployment).bind(2, f.device).bind(3, static_cast<long long>(f.limit));
  q.bind(4, f.rollout).bind(5, f.after_id).bind(6, f.before_id);
  std::vector<EventRec> out;
  while (q.step() == SQLITE_ROW) {
    EventRec e;
    e.id = q.i64(0);
    e.ts = q.i64(1);
    e.deployment = q.text(2);
    e.device = q.text(3);
    e.what = q.text(4);
    e.detail = q.text(5);
    e.actor = q.text(6);
    e.rollout = q.text(7);
    out.push_back(std::move(e));
  }
  return out;
}

Status Store::for_each_version_event(
    const std::function<void(long long, const std::string&, const std::string&,
                             const std::string&)>& fn) {
  OTA_PREP(q,
           "SELECT ts, device, what, detail FROM events "
           "WHERE what IN ('hello', 'device_decommissioned') ORDER BY id");
  while (q.step() == SQLITE_ROW) fn(q.i64(0), q.text(1), q.text(2), q.text(3));
  return {};
}

Result<std::map<std::string, long long>> Store::count_by(const std::string& sql) {
  OTA_PREP(q, sql);
  std::map<std::string, long long> out;
  while (q.step() == SQLITE_ROW) out[q.text(0)] = q.i64(1);
  return out;
}

}  // namespace ota::service

namespace ota::service {

// -------------------------------------------------------------------------------- rollouts
Status Store::insert_rollout(const RolloutRec& r) {
  OTA_PREP(q,
           "INSERT INTO rollouts(id, name, image_id, target_kind, target, policy, state, "
           "current_wave, wave_started_ms, threshold_met_ms, accepted_through, pause_reason, "
           "paused_by, deployment_id, rollback_of, from_version, excluded, created_at, "
           "started_at, finished_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)");
  q.bind(1, r.id).bind(2, r.name).bind(3, r.image_id).bind(4, r.target_kind).bind(5, r.target);
  q.bind(6, r.policy).bind(7, to_string(r.state)).bind(8, static_cast<long long>(r.current_wave));
  q.bind(9, r.wave_started_ms).bind(10, r.threshold_met_ms);
  q.bind(11, static_cast<long long>(r.accepted_through)).bind(12, r.pause_reason);
  q.bind(13, to_string(r.paused_by)).bind(14, r.deployment_id).bind(15, r.rollback_of);
  q.bind(16, r.from_version).bind(17, r.excluded).bind(18, r.created_at);
  q.bind(19, r.started_at).bind(20, r.finished_at);
  OTA_DONE(q, "insert rollout");
  return {};
}

Status Store::update_rollout(const RolloutRec& r) {
  OTA_PREP(q,
           "UPDATE rollouts SET state=?, current_wave=?, wave_started_ms=?, threshold_met_ms=?, "
           "accepted_through=?, pause_reason=?, paused_by=?, deployment_id=?, from_version=?, "
           "excluded=?, started_at=?, finished_at=? WHERE id=?");
  q.bind(1, to_string(r.state)).bind(2, static_cast<long long>(r.current_wave)).bind(3, r.wave_started_ms);
  q.bind(4, r.threshold_met_ms).bind(5, static_cast<long long>(r.accepted_through));
  q.bind(6, r.pause_reason).bind(7, to_string(r.paused_by)).bind(8, r.deployment_id);
  q.bind(9, r.from_version).bind(10, r.excluded).bind(11, r.started_at);
  q.bind(12, r.finished_at).bind(13, r.id);
  OTA_DONE(q, "update rollout");
  if (sqlite3_changes(db_) != 1) return not_found_err("update rollout: unknown rollout " + r.id);
  return {};
}

Result<std::optional<RolloutRec>> Store::rollout(const std::string& id) {
  OTA_PREP(q, std::string(kRolloutCols) + "WHERE id = ?");
  q.bind(1, id);
  if (q.step() == SQLITE_ROW) return std::optional<RolloutRec>(read_rollout(q));
  return std::optional<RolloutRec>();
}

Result<std::vector<RolloutRec>> Store::list_rollouts() {
  OTA_PREP(q, std::string(kRolloutCols) + "ORDER BY created_at, id");
  std::vector<RolloutRec> out;
  while (q.step() == SQLITE_ROW) out.push_back(read_rollout(q));
  return out;
}

// ------------------------------------------------------------------------------------ tags
Status Store::set_device_tag(const std::string& device, const std::string& key,
                             const std::optional<std::string>& value) {
  if (value) {
    OTA_PREP(q, "INSERT INTO device_tags(device_id, key, value) VALUES (?,?,?) "
                "ON CONFLICT(device_id, key) DO UPDATE SET value=excluded.value");
    q.bind(1, device).bind(2, key).bind(3, *value);
    OTA_DONE(q, "set tag");
  } else {
    OTA_PREP(q, "DELETE FROM device_tags WHERE device_id = ? AND key = ?");
    q.bind(1, device).bind(2, key);
    OTA_DONE(q, "remove tag");
  }
  return {};
}

Result<std::map<std::string, std::map<std::string, std::string>>> Store::all_tags() {
  OTA_PREP(q, "SELECT device_id, key, value FROM device_tags");
  std::map<std::string, std::map<std::string, std::string>> out;
  while (q.step() == SQLITE_ROW) out[q.text(0)][q.text(1)] = q.text(2);
  return out;
}

Status Store::set_device_last_seen(const std::string& id, long long ts) {
  OTA_PREP(q, "UPDATE devices SET last_seen = ? WHERE id = ? AND last_seen < ?");
  q.bind(1, ts).bind(2, id).bind(3, ts);
  OTA_DONE(q, "set device last_seen");
  return {};
}

// ------------------------------------------------------------------------------ API tokens
Status Store::insert_api_token(const ApiTokenRec& t) {
  OTA_PREP(q, "INSERT INTO api_tokens(name, role, sha256, created_at, created_by) "
              "VALUES (?,?,?,?,?)");
  q.bind(1, t.name).bind(2, t.role).bind(3, t.sha256).bind(4, t.created_at).bind(5, t.created_by);
  const int rc = q.step();
  // A taken name is the caller's conflict, not a database failure.
  if ((rc & 0xff) == SQLITE_CONSTRAINT) {
    const std::string why = errmsg();
    auto same = prepare("SELECT 1 FROM api_tokens WHERE name = ?");
    if (same) {
      Q n(*same);
      n.bind(1, t.name);
      if (n.step() == SQLITE_ROW) return conflict_err("a token named '" + t.name + "' exists");
    }
    return record_write_failure(rc, "insert API token: " + why);
  }
  if (rc != SQLITE_DONE) return record_write_failure(rc, "insert API token: " + errmsg());
  record_statement_done();
  return {};
}

Result<bool> Store::delete_api_token(const std::string& name) {
  OTA_PREP(q, "DELETE FROM api_tokens WHERE name = ?");
  q.bind(1, name);
  OTA_DONE(q, "delete API token");
  return sqlite3_changes(db_) > 0;
}

Result<std::vector<ApiTokenRec>> Store::list_api_tokens() {
  OTA_PREP(q, "SELECT name, role, sha256, created_at, created_by FROM api_tokens ORDER BY name");
  std::vector<ApiTokenRec> out;
  int rc;
  while ((rc = q.step()) == SQLITE_ROW) {
    ApiTokenRec t;
    t.name = q.text(0);
    t.role = q.text(1);
    t.sha256 = q.text(2);
    t.created_at = q.i64(3);
    t.created_by = q.text(4);
    out.push_back(std::move(t));
  }
  if (rc != SQLITE_DONE) return internal_err("list API tokens: " + errmsg());
  return out;
}

}  // namespace ota::service

namespace ota::service {

// ------------------------------------------------------------------------------- retention
Result<long long> Store::prune_events(const EventRetention& r, long long now_ms, int batch) {
  if (batch <= 0) return invalid_err("prune events: batch must be positive");
  // Kept whatever their age or rank: the history of what is still in progress. The terminal
  // rollout states are those of is_terminal(RolloutStatus); a test checks that the two agree
  // for every rollout state.
  std::string terminal;
  for (RolloutStatus st : all_rollout_statuses())
    if (is_terminal(st)) terminal += std::string(terminal.empty() ? "'" : ", '") + to_string(st) + "'";
  const std::string kUnprotected =
      std::string(" AND NOT EXISTS (SELECT 1 FROM deployments d WHERE d.id = events.deployment "
                  "AND d.state = '") +
      to_string(DeploymentState::active) +
      "') AND NOT EXISTS (SELECT 1 FROM rollouts r WHERE r.id = events.rollout AND r.state NOT IN (" +
      terminal + "))";
  long long deleted = 0;

  if (r.max_count > 0) {
    // Event ids only grow (AUTOINCREMENT) and events are only deleted here, from the old end,
    // so the newest max_count events are those with id > MAX(id) - max_count: one index
    // lookup instead of counting the log.
    long long newest_id = 0;
    {
      OTA_PREP(q, "SELECT COALESCE(MAX(id), 0) FROM events");
      if (q.step() == SQLITE_ROW) newest_id = q.i64(0);
    }
    const long long first_kept_id = newest_id - r.max_count + 1;
    if (first_kept_id > 1) {
      OTA_PREP(q, "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE id < ?1" +
                      kUnprotected + " ORDER BY id LIMIT ?2)");
      q.bind(1, first_kept_id).bind(2, static_cast<long long>(batch));
      OTA_DONE(q, "prune events by count");
      deleted += sqlite3_changes(db_);
    }
  }
  if (r.max_age_ms > 0 && deleted < batch) {
    // events_ts: nothing old is found without reading the log.
    OTA_PREP(q, "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE ts < ?1" +
                    kUnprotected + " ORDER BY ts, id LIMIT ?2)");
    q.bind(1, now_ms - r.max_age_ms).bind(2, batch - deleted);
    OTA_DONE(q, "prune events by age");
    deleted += sqlite3_changes(db_);
  }
  return deleted;
}

}  // namespace ota::service
