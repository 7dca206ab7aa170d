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

namespace ota::service {
namespace {

const char* const kRowStates[] = {"offered",   "accepted",  "downloading", "verifying",
                                  "installing", "rebooting", "confirming",  "succeeded",
                                  "failed",    "declined",  "cancelled",   "pending",
                                  "deferred",  "timed_out"};

// Binds and resets a cached statement.
class Q {
 public:
  explicit Q(sqlite3_stmt* s) : s_(s) {}
  ~Q() {
    sqlite3_reset(s_);
    sqlite3_clear_bindings(s_);
  }
  Q(const Q&) = delete;
  Q& operator=(const Q&) = delete;
  Q& bind(int i, const std::string& v) {
    sqlite3_bind_text(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Q& bind(int i, const char* v) { return bind(i, std::string(v)); }
  Q& bind(int i, long long v) {
    sqlite3_bind_int64(s_, i, v);
    return *this;
  }
  Q& bind_u64(int i, std::uint64_t v) { return bind(i, static_cast<long long>(v)); }
  Q& bind_null(int i) {
    sqlite3_bind_null(s_, i);
    return *this;
  }
  int step() { return sqlite3_step(s_); }
  std::string text(int c) const {
    const unsigned char* t = sqlite3_column_text(s_, c);
    return t ? std::string(reinterpret_cast<const char*>(t),
                           static_cast<std::size_t>(sqlite3_column_bytes(s_, c)))
             : std::string();
  }
  bool is_null(int c) const { return sqlite3_column_type(s_, c) == SQLITE_NULL; }
  long long i64(int c) const { return sqlite3_column_int64(s_, c); }
  std::uint64_t u64(int c) const { return static_cast<std::uint64_t>(sqlite3_column_int64(s_, c)); }
  std::uint32_t u32(int c) const { return static_cast<std::uint32_t>(sqlite3_column_int64(s_, c)); }

 private:
  sqlite3_stmt* s_;
};

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
  d.state = q.text(4);
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
  r.state = q.text(2);
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
  r.state = q.text(6);
  r.current_wave = static_cast<int>(q.i64(7));
  r.wave_started_ms = q.i64(8);
  r.threshold_met_ms = q.i64(9);
  r.accepted_through = static_cast<int>(q.i64(10));
  r.pause_reason = q.text(11);
  r.paused_by = q.text(12);
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

const char* const kSchemaV1 = R"SQL(
CREATE TABLE IF NOT EXISTS images (
  id          TEXT PRIMARY KEY,
  sha256      TEXT NOT NULL UNIQUE,
  version     TEXT NOT NULL UNIQUE,
  hw          TEXT NOT NULL,
  size        INTEGER NOT NULL CHECK (size > 0),
  chunk_size  INTEGER NOT NULL CHECK (chunk_size BETWEEN 256 AND 65536),
  counter     INTEGER NOT NULL DEFAULT 0,
  kind        TEXT NOT NULL DEFAULT 'firmware',
  created_at  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS devices (
  id               TEXT PRIMARY KEY,
  hw               TEXT NOT NULL DEFAULT '',
  version          TEXT NOT NULL DEFAULT '',
  previous_version TEXT,
  slot             TEXT NOT NULL DEFAULT '',
  slot_state       TEXT NOT NULL DEFAULT '',
  free             INTEGER NOT NULL DEFAULT 0,
  counter          INTEGER NOT NULL DEFAULT 0,
  groups           TEXT NOT NULL DEFAULT '[]',
  online           INTEGER NOT NULL DEFAULT 0,
  last_seen        INTEGER NOT NULL DEFAULT 0,
  last_error       TEXT NOT NULL DEFAULT '',
  last_seq         INTEGER NOT NULL DEFAULT -1
);
CREATE TABLE IF NOT EXISTS deployments (
  id          TEXT PRIMARY KEY,
  image_id    TEXT NOT NULL REFERENCES images(id),
  target_kind TEXT NOT NULL CHECK (target_kind IN ('device', 'group')),
  target      TEXT NOT NULL,
  state       TEXT NOT NULL CHECK (state IN ('active', 'completed', 'cancelled')),
  offer       TEXT NOT NULL,
  created_at  INTEGER NOT NULL,
  finished_at INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS deployments_state ON deployments(state);
CREATE TABLE IF NOT EXISTS deployment_devices (
  deployment_id TEXT NOT NULL REFERENCES deployments(id) ON DELETE CASCADE,
  device_id     TEXT NOT NULL,
  state         TEXT NOT NULL CHECK (state IN ('offered', 'accepted', 'downloading',
                  'verifying', 'installing', 'rebooting', 'confirming', 'succeeded', 'failed',
                  'declined', 'cancelled')),
  reason        TEXT NOT NULL DEFAULT '',
  received      INTEGER NOT NULL DEFAULT 0,
  total         INTEGER NOT NULL DEFAULT 0,
  bytes_sent    INTEGER NOT NULL DEFAULT 0,
  updated_at    INTEGER NOT NULL,
  PRIMARY KEY (deployment_id, device_id)
);
CREATE INDEX IF NOT EXISTS deployment_devices_device ON deployment_devices(device_id);
CREATE TABLE IF NOT EXISTS events (
  id         INTEGER PRIMARY KEY AUTOINCREMENT,
  ts         INTEGER NOT NULL,
  deployment TEXT NOT NULL DEFAULT '',
  device     TEXT NOT NULL DEFAULT '',
  what       TEXT NOT NULL,
  detail     TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS events_deployment ON events(deployment);
CREATE INDEX IF NOT EXISTS events_device ON events(device);
)SQL";

// v2: rollouts. SQLite cannot change a CHECK constraint in place, so the deployment tables
// are rebuilt (foreign keys are off around this, see migrate()).
const char* const kSchemaV2 = R"SQL(
DROP INDEX IF EXISTS deployments_state;
DROP INDEX IF EXISTS deployment_devices_device;
ALTER TABLE deployment_devices RENAME TO deployment_devices_v1;
ALTER TABLE deployments RENAME TO deployments_v1;
CREATE TABLE deployments (
  id          TEXT PRIMARY KEY,
  image_id    TEXT NOT NULL REFERENCES images(id),
  target_kind TEXT NOT NULL CHECK (target_kind IN ('device', 'group', 'rollout')),
  target      TEXT NOT NULL,
  state       TEXT NOT NULL CHECK (state IN ('active', 'completed', 'cancelled')),
  offer       TEXT NOT NULL,
  created_at  INTEGER NOT NULL,
  finished_at INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX deployments_state ON deployments(state);
CREATE TABLE deployment_devices (
  deployment_id  TEXT NOT NULL REFERENCES deployments(id) ON DELETE CASCADE,
  device_id      TEXT NOT NULL,
  state          TEXT NOT NULL CHECK (state IN ('offered', 'accepted', 'downloading',
                   'verifying', 'installing', 'rebooting', 'confirming', 'succeeded', 'failed',
                   'declined', 'cancelled', 'pending', 'deferred', 'timed_out')),
  reason         TEXT NOT NULL DEFAULT '',
  received       INTEGER NOT NULL DEFAULT 0,
  total          INTEGER NOT NULL DEFAULT 0,
  bytes_sent     INTEGER NOT NULL DEFAULT 0,
  updated_at     INTEGER NOT NULL,
  wave           INTEGER NOT NULL DEFAULT 0,
  ord            INTEGER NOT NULL DEFAULT 0,
  attempt        INTEGER NOT NULL DEFAULT 1,
  extra_attempts INTEGER NOT NULL DEFAULT 0,
  defers         INTEGER NOT NULL DEFAULT 0,
  next_at        INTEGER NOT NULL DEFAULT 0,
  offered_at     INTEGER NOT NULL DEFAULT 0,
  offer_sent     INTEGER NOT NULL DEFAULT 1,
  PRIMARY KEY (deployment_id, device_id)
);
CREATE INDEX deployment_devices_device ON deployment_devices(device_id);
INSERT INTO deployments SELECT id, image_id, target_kind, target, state, offer, created_at,
  finished_at FROM deployments_v1;
INSERT INTO deployment_devices(deployment_id, device_id, state, reason, received, total,
  bytes_sent, updated_at) SELECT deployment_id, device_id, state, reason, received, total,
  bytes_sent, updated_at FROM deployment_devices_v1;
DROP TABLE deployment_devices_v1;
DROP TABLE deployments_v1;
ALTER TABLE events ADD COLUMN actor TEXT NOT NULL DEFAULT '';
ALTER TABLE events ADD COLUMN rollout TEXT NOT NULL DEFAULT '';
CREATE INDEX events_rollout ON events(rollout);
CREATE TABLE rollouts (
  id               TEXT PRIMARY KEY,
  name             TEXT NOT NULL DEFAULT '',
  image_id         TEXT NOT NULL REFERENCES images(id),
  target_kind      TEXT NOT NULL CHECK (target_kind IN ('group', 'devices', 'tags')),
  target           TEXT NOT NULL,
  policy           TEXT NOT NULL,
  state            TEXT NOT NULL CHECK (state IN ('draft', 'scheduled', 'running', 'paused',
                     'completed', 'aborted')),
  current_wave     INTEGER NOT NULL DEFAULT -1,
  wave_started_ms  INTEGER NOT NULL DEFAULT 0,
  threshold_met_ms INTEGER NOT NULL DEFAULT 0,
  accepted_through INTEGER NOT NULL DEFAULT -1,
  pause_reason     TEXT NOT NULL DEFAULT '',
  paused_by        TEXT NOT NULL DEFAULT '',
  deployment_id    TEXT NOT NULL DEFAULT '',
  rollback_of      TEXT NOT NULL DEFAULT '',
  from_version     TEXT NOT NULL DEFAULT '',
  excluded         INTEGER NOT NULL DEFAULT 0,
  created_at       INTEGER NOT NULL,
  started_at       INTEGER NOT NULL DEFAULT 0,
  finished_at      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX rollouts_state ON rollouts(state);
CREATE TABLE device_tags (
  device_id TEXT NOT NULL,
  key       TEXT NOT NULL,
  value     TEXT NOT NULL,
  PRIMARY KEY (device_id, key)
);
)SQL";

// v3: the one-row table probe_write() upserts, and events by time so that an age-based
// prune_events() finds the old events (or that there are none) without reading the whole log.
const char* const kSchemaV3 = R"SQL(
CREATE TABLE health_probe (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  ts INTEGER NOT NULL
);
CREATE INDEX events_ts ON events(ts);
)SQL";

// v4: named API tokens with a role. Only the SHA-256 of a secret is kept: a copy of the
// database (a backup) does not give API access.
const char* const kSchemaV4 = R"SQL(
CREATE TABLE api_tokens (
  name       TEXT PRIMARY KEY,
  role       TEXT NOT NULL CHECK (role IN ('read-only', 'operator', 'admin')),
  sha256     TEXT NOT NULL UNIQUE CHECK (length(sha256) = 64),
  created_at INTEGER NOT NULL,
  created_by TEXT NOT NULL DEFAULT ''
);
)SQL";

// v5: offline signing and key rotation (PROTOCOL.md 6.5, 6.6): an image's release signature,
// the key-set version each device reports, revoked devices, and the key sets pushed (history).
const char* const kSchemaV5 = R"SQL(
ALTER TABLE images ADD COLUMN release_key TEXT NOT NULL DEFAULT '';
ALTER TABLE images ADD COLUMN release_sig TEXT NOT NULL DEFAULT '';
ALTER TABLE devices ADD COLUMN keyset INTEGER NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN revoked_at INTEGER NOT NULL DEFAULT 0;
CREATE TABLE key_sets (
  version     INTEGER PRIMARY KEY CHECK (version >= 1),
  body        TEXT NOT NULL,
  signed_by   TEXT NOT NULL,
  uploaded_by TEXT NOT NULL DEFAULT '',
  uploaded_at INTEGER NOT NULL
);
)SQL";

// What PRAGMA quick_check found: the lines it reported ({"ok"} for an intact file) and the
// SQLite error that stopped it, if one did (SQLITE_OK if it ran to the end). On some damage it
// reports lines and then stops with SQLITE_CORRUPT: both are worth showing.
struct IntegrityReport {
  int rc = SQLITE_OK;
  std::string sqlite_error;
  std::vector<std::string> lines;

  bool intact() const { return rc == SQLITE_OK && lines.size() == 1 && lines[0] == "ok"; }
  bool reported_problems() const {
    return !lines.empty() && !(lines.size() == 1 && lines[0] == "ok");
  }
  // Damage, as opposed to a check that could not run (busy, I/O error, out of memory).
  bool damaged() const {
    const int primary = rc & 0xff;
    return reported_problems() || primary == SQLITE_CORRUPT || primary == SQLITE_NOTADB ||
           (rc == SQLITE_OK && !intact());
  }
  std::string describe() const {
    std::string out;
    if (reported_problems()) {
      constexpr std::size_t kLinesShown = 5;
      out = "PRAGMA quick_check reported: ";
      for (std::size_t i = 0; i < lines.size() && i < kLinesShown; ++i)
        out += (i ? "; " : "") + lines[i];
      if (lines.size() > kLinesShown)
        out += "; (" + std::to_string(lines.size() - kLinesShown) + " more)";
    } else if (rc == SQLITE_OK) {
      out = "PRAGMA quick_check returned nothing";
    }
    if (rc != SQLITE_OK)
      out += (out.empty() ? "PRAGMA quick_check failed: " : "; then it failed: ") + sqlite_error +
             " (SQLite error " + std::to_string(rc) + ")";
    return out;
  }
};

IntegrityReport quick_check(sqlite3* db) {
  IntegrityReport r;
  sqlite3_stmt* st = nullptr;
  // At most 10 problems: a badly damaged file is reported quickly, not exhaustively.
  r.rc = sqlite3_prepare_v2(db, "PRAGMA quick_check(10)", -1, &st, nullptr);
  if (r.rc == SQLITE_OK) {
    while ((r.rc = sqlite3_step(st)) == SQLITE_ROW) {
      const unsigned char* t = sqlite3_column_text(st, 0);
      // A row can hold several problems, one a line, after a "*** in database main ***".
      std::string row = t ? reinterpret_cast<const char*>(t) : "";
      std::size_t start = 0;
      while (start <= row.size()) {
        std::size_t end = row.find('\n', start);
        if (end == std::string::npos) end = row.size();
        std::string line = row.substr(start, end - start);
        if (!line.empty() && line.rfind("*** in database", 0) != 0) r.lines.push_back(line);
        start = end + 1;
      }
    }
    if (r.rc == SQLITE_DONE) r.rc = SQLITE_OK;
  }
  if (r.rc != SQLITE_OK) r.sqlite_error = sqlite3_errmsg(db);
  sqlite3_finalize(st);
  return r;
}

std::string damaged_message(const std::string& path, const IntegrityReport& r) {
  return std::string(kDatabaseDamagedPrefix) + path + ": " + r.describe();
}

std::string restore_instructions(const std::string& path) {
  return ". The controller does not use a damaged database. To restore: stop the controller, "
         "copy the newest backup (`otactl backup FILE` makes them) over " +
         path + ", delete " + path + "-wal and " + path +
         "-shm, and start the controller again.";
}

// Storage failures: the database (file, disk) cannot take writes, as opposed to a busy lock
// or a statement the data refused.
bool is_storage_failure(int rc) {
  switch (rc & 0xff) {
    case SQLITE_FULL:
    case SQLITE_IOERR:
    case SQLITE_READONLY:
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
    case SQLITE_CANTOPEN:
    case SQLITE_PERM:
      return true;
    default:
      return false;
  }
}

std::string errno_text(int e) { return std::strerror(e); }

// fsync of a file or a directory (after a rename, so that the new name is durable too).
Status fsync_path(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return internal_err("open " + path + ": " + errno_text(errno));
  const int rc = ::fsync(fd);
  const int e = errno;
  ::close(fd);
  if (rc != 0) return internal_err("fsync " + path + ": " + errno_text(e));
  return {};
}

// rename that never replaces an existing `to` (a backup is never overwritten, even by a race).
Status rename_no_replace(const std::string& from, const std::string& to) {
  if (::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_NOREPLACE) == 0) return {};
  int e = errno;
  if (e == EINVAL || e == ENOSYS) {  // file system without RENAME_NOREPLACE: link is exclusive
    if (::link(from.c_str(), to.c_str()) == 0) {
      ::unlink(from.c_str());
      return {};
    }
    e = errno;
  }
  if (e == EEXIST) return conflict_err(to + " already exists; not overwriting it");
  return internal_err("rename " + from + " to " + to + ": " + errno_text(e));
}

std::string directory_of(const std::string& path) {
  std::string dir = std::filesystem::path(path).parent_path().string();
  return dir.empty() ? std::string(".") : dir;
}

}  // namespace

bool is_row_state(const std::string& s) {
  for (const char* k : kRowStates)
    if (s == k) return true;
  return false;
}
bool is_final_row_state(const std::string& s) {
  return s == "succeeded" || s == "failed" || s == "declined" || s == "cancelled" ||
         s == "timed_out";
}

Store::~Store() { close(); }

void Store::close() {
  for (auto& kv : cache_) sqlite3_finalize(kv.second);
  cache_.clear();
  if (db_) sqlite3_close(db_);
  db_ = nullptr;
}

std::string Store::errmsg() const { return db_ ? sqlite3_errmsg(db_) : "database not open"; }

Err Store::record_write_failure(int rc, std::string msg) {
  // A constraint violation is the caller's data (a duplicate version, a bad reference), not a
  // sign of the database's health.
  if ((rc & 0xff) != SQLITE_CONSTRAINT) {
    ++write_errors_;
    last_error_ = msg;
    if (is_storage_failure(rc)) writable_ = false;
  }
  return internal_err(std::move(msg));
}

void Store::record_statement_done() {
  // In autocommit mode the statement was its own transaction and is committed now. Only a
  // commit that changed data proves writability (a no-op UPDATE writes nothing).
  if (sqlite3_get_autocommit(db_) && sqlite3_changes(db_) > 0) writable_ = true;
}

Status Store::exec(const std::string& sql, const char* what) {
  if (!db_) return internal_err("database not open");
  char* err = nullptr;
  const int rc = sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &err);
  if (rc != SQLITE_OK) {
    std::string msg = err ? err : errmsg();
    sqlite3_free(err);
    return record_write_failure(rc, what ? std::string(what) + ": " + msg : msg);
  }
  return {};
}

Result<sqlite3_stmt*> Store::prepare(const std::string& sql) {
  if (!db_) return internal_err("database not open");
  auto it = cache_.find(sql);
  if (it != cache_.end()) return it->second;
  sqlite3_stmt* st = nullptr;
  if (sqlite3_prepare_v2(db_, sql.c_str(), -1, &st, nullptr) != SQLITE_OK)
    return internal_err("prepare: " + errmsg());
  cache_.emplace(sql, st);
  return st;
}

Status Store::open(const std::string& path, int target_version, bool check_integrity) {
  damaged_ = false;
  if (sqlite3_open_v2(path.c_str(), &db_,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                      nullptr) != SQLITE_OK) {
    std::string m = "open " + path + ": " + errmsg();
    return internal_err(m);
  }
  sqlite3_busy_timeout(db_, 5000);
  // Before anything writes to it (journal mode, migrations): a damaged file is refused with
  // what to do, rather than run on until some query trips over the damage.
  IntegrityReport check;
  check.lines = {"ok"};  // what a skipped check reports
  if (check_integrity) check = quick_check(db_);
  if (!check.intact()) {
    if (!check.damaged())
      return internal_err("open " + path + ": integrity check: " + check.describe());
    damaged_ = true;
    close();
    return internal_err(damaged_message(path, check) + restore_instructions(path));
  }
  // synchronous=FULL, not NORMAL: the controller commits a decision before it publishes it (an
  // offer), so a commit must survive a power loss of the controller host, not just a process
  // crash. In WAL mode NORMAL does not sync the WAL at commit and may lose the last commits on
  // power loss; FULL syncs the WAL at every commit.
  for (const char* p : {"PRAGMA journal_mode=WAL", "PRAGMA synchronous=FULL",
                        "PRAGMA foreign_keys=ON"}) {
    Status s = exec(p);
    if (!s) return s.context("open " + path + ": " + p);
  }
  Status m = migrate(target_version);
  if (!m) return m.context("open " + path + ": schema");
  return {};
}

Status Store::migrate(int target) {
  Status s = exec("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)");
  if (!s) return s;
  auto st = prepare("SELECT MAX(version) FROM schema_version");
  if (!st) return st.err();
  int have = 0;
  {
    Q q(*st);
    if (q.step() == SQLITE_ROW && !q.is_null(0)) have = static_cast<int>(q.i64(0));
  }
  if (have > kSchemaVersion)
    return internal_err("database schema version " + std::to_string(have) +
                        " is newer than this controller (" + std::to_string(kSchemaVersion) + ")");
  if (have < 1) {
    Tx tx(*this);
    if (!tx.status()) return tx.status();
    Status c = exec(kSchemaV1);
    if (!c) return c;
    c = exec("INSERT INTO schema_version(version) VALUES (1)");
    if (!c) return c;
    c = tx.commit();
    if (!c) return c;
    have = 1;
  }
  if (have < 2 && target >= 2) {
    // Table rebuilds: foreign keys off (only possible outside a transaction), checked after.
    Status c = exec("PRAGMA foreign_keys=OFF");
    if (!c) return c;
    {
      Tx tx(*this);
      if (!tx.status()) return tx.status();
      c = exec(kSchemaV2);
      if (c) c = exec("INSERT INTO schema_version(version) VALUES (2)");
      if (c) {
        auto fk = prepare("PRAGMA foreign_key_check");
        if (!fk) return fk.err();
        Q q(*fk);
        if (q.step() == SQLITE_ROW) c = internal_err("foreign key check failed after migration to v2");
      }
      if (c) c = tx.commit();
    }
    Status on = exec("PRAGMA foreign_keys=ON");
    if (!c) return c.context("migrate to schema 2");
    if (!on) return on;
    have = 2;
  }
  // Additive steps (new tables and indexes): one transaction each.
  const std::pair<int, const char*> additive[] = {{3, kSchemaV3}, {4, kSchemaV4}, {5, kSchemaV5}};
  for (const auto& [version, sql] : additive) {
    if (have >= version || target < version) continue;
    Tx tx(*this);
    if (!tx.status()) return tx.status();
    Status c = exec(sql);
    if (c) c = exec("INSERT INTO schema_version(version) VALUES (" + std::to_string(version) + ")");
    if (c) c = tx.commit();
    if (!c) return c.context("migrate to schema " + std::to_string(version));
    have = version;
  }
  schema_version_ = have;
  return {};
}

Status Store::begin() {
  Status s = exec("BEGIN IMMEDIATE", "begin");
  if (s) changes_at_begin_ = sqlite3_total_changes64(db_);
  return s;
}
Status Store::commit() {
  Status s = exec("COMMIT", "commit");
  if (s && sqlite3_total_changes64(db_) != changes_at_begin_) writable_ = true;
  return s;
}
void Store::rollback() {
  // After some failed commits (full disk, I/O error) SQLite has already rolled back; a second
  // ROLLBACK would only fail with "no transaction is active".
  if (db_ && !sqlite3_get_autocommit(db_))
    (void)sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
}

#define OTA_PREP(var, sql)                      \
  auto var##_r = prepare(sql);                  \
  if (!var##_r) return var##_r.err();           \
  Q var(*var##_r)

// Steps a write statement to its end; failures and successes go through the health
// bookkeeping (record_write_failure / record_statement_done).
#define OTA_DONE(q, what)                                                              \
  do {                                                                                 \
    const int done_rc = (q).step();                                                    \
    if (done_rc != SQLITE_DONE)                                                        \
      return record_write_failure(done_rc, std::string(what) + ": " + errmsg());       \
    record_statement_done();                                                           \
  } while (0)

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
  q.bind(5, d.state).bind(6, d.offer).bind(7, d.created_at).bind(8, d.finished_at);
  OTA_DONE(q, "insert deployment");
  return {};
}

Status Store::set_deployment_state(const std::string& id, const std::string& state,
                                   long long ts) {
  OTA_PREP(q, "UPDATE deployments SET state = ?, finished_at = ? WHERE id = ?");
  q.bind(1, state).bind(2, state == "active" ? 0LL : ts).bind(3, id);
  OTA_DONE(q, "set deployment state");
  return {};
}

Result<std::optional<DeploymentRec>> Store::deployment(const std::string& id) {
  OTA_PREP(q, std::string(kDeploymentCols) + "WHERE id = ?");
  q.bind(1, id);
  if (q.step() == SQLITE_ROW) return std::optional<DeploymentRec>(read_deployment(q));
  return std::optional<DeploymentRec>();
}

Result<std::vector<DeploymentRec>> Store::list_deployments(const std::string& state_filter) {
  OTA_PREP(q, std::string(kDeploymentCols) +
                  "WHERE (?1 = '' OR state = ?1) ORDER BY created_at, "
                  "CAST(substr(id, 5) AS INTEGER), id");
  q.bind(1, state_filter);
  std::vector<DeploymentRec> out;
  while (q.step() == SQLITE_ROW) out.push_back(read_deployment(q));
  return out;
}

// ------------------------------------------------------------------------------------ rows
Status Store::upsert_row(const RowRec& r) {
  if (!is_row_state(r.state)) return invalid_err("bad row state '" + r.state + "'");
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
  q.bind(1, r.deployment_id).bind(2, r.device_id).bind(3, r.state).bind(4, r.reason);
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
           "AND (?4 = '' OR rollout = ?4) AND id > ?5 ORDER BY id DESC LIMIT ?3) ORDER BY id");
  q.bind(1, f.deployment).bind(2, f.device).bind(3, static_cast<long long>(f.limit));
  q.bind(4, f.rollout).bind(5, f.after_id);
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
  q.bind(6, r.policy).bind(7, r.state).bind(8, static_cast<long long>(r.current_wave));
  q.bind(9, r.wave_started_ms).bind(10, r.threshold_met_ms);
  q.bind(11, static_cast<long long>(r.accepted_through)).bind(12, r.pause_reason);
  q.bind(13, r.paused_by).bind(14, r.deployment_id).bind(15, r.rollback_of);
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
  q.bind(1, r.state).bind(2, static_cast<long long>(r.current_wave)).bind(3, r.wave_started_ms);
  q.bind(4, r.threshold_met_ms).bind(5, static_cast<long long>(r.accepted_through));
  q.bind(6, r.pause_reason).bind(7, r.paused_by).bind(8, r.deployment_id);
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

// --------------------------------------------------------------------------------- backups
Status Store::backup_to(const std::string& dest) {
  if (!db_) return internal_err("backup: database not open");
  // Inside a transaction the copy could contain uncommitted changes.
  if (!sqlite3_get_autocommit(db_))
    return internal_err("backup to " + dest + ": not possible inside a transaction");
  struct stat st {};
  if (::lstat(dest.c_str(), &st) == 0)
    return conflict_err("backup to " + dest + ": already exists; not overwriting it");
  if (errno != ENOENT) return internal_err("backup to " + dest + ": " + errno_text(errno));

  const std::string tmp = dest + ".tmp";
  // A leftover of an interrupted backup is ours to replace.
  for (const std::string& f : {tmp, tmp + "-journal", tmp + "-wal", tmp + "-shm"})
    ::unlink(f.c_str());

  sqlite3* out = nullptr;
  bool keep_tmp = false;
  auto cleanup = [&]() {
    if (out) sqlite3_close(out);
    out = nullptr;
    if (!keep_tmp)
      for (const std::string& f : {tmp, tmp + "-journal", tmp + "-wal", tmp + "-shm"})
        ::unlink(f.c_str());
  };
  auto fail = [&](const std::string& what) {
    cleanup();
    return internal_err("backup to " + dest + ": " + what);
  };

  // Created here, owner-only (the copy holds the whole fleet's state); SQLite takes an empty
  // file as an empty database and gives its journal the same mode.
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return fail("create " + tmp + ": " + errno_text(errno));
  ::close(fd);
  if (sqlite3_open_v2(tmp.c_str(), &out, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, nullptr) !=
      SQLITE_OK)
    return fail("open " + tmp + ": " + (out ? sqlite3_errmsg(out) : "out of memory"));

  sqlite3_backup* copy = sqlite3_backup_init(out, "main", db_, "main");
  if (!copy) return fail(sqlite3_errmsg(out));
  // Batches of pages: each step holds the source's read lock only briefly, so a writer in
  // another connection is not held up for the whole copy. Writes through this connection
  // between steps are carried into the copy by SQLite.
  constexpr int kPagesPerStep = 256;
  constexpr int kBusyRetries = 500;  // x 10 ms
  int rc = SQLITE_OK;
  int busy = 0;
  while (true) {
    rc = sqlite3_backup_step(copy, kPagesPerStep);
    if (rc == SQLITE_OK) continue;
    if ((rc == SQLITE_BUSY || rc == SQLITE_LOCKED) && ++busy < kBusyRetries) {
      sqlite3_sleep(10);
      continue;
    }
    break;
  }
  const int finish_rc = sqlite3_backup_finish(copy);
  if (rc != SQLITE_DONE)
    return fail("copy: " + std::string(sqlite3_errstr(rc)) + " (SQLite error " +
                std::to_string(rc) + ")");
  if (finish_rc != SQLITE_OK) return fail("copy: " + std::string(sqlite3_errmsg(out)));

  // The copy carries the source's WAL flag; rollback-journal mode makes it one stand-alone
  // file (the controller switches it back to WAL when it opens it after a restore).
  if (sqlite3_exec(out, "PRAGMA journal_mode=DELETE", nullptr, nullptr, nullptr) != SQLITE_OK)
    return fail("journal mode of the copy: " + std::string(sqlite3_errmsg(out)));
  IntegrityReport check = quick_check(out);
  if (!check.intact()) return fail("the copy fails its integrity check: " + check.describe());
  if (sqlite3_close(out) != SQLITE_OK) return fail("close " + tmp);
  out = nullptr;

  Status s = fsync_path(tmp);
  if (!s) return fail(s.error());
  s = rename_no_replace(tmp, dest);
  if (!s) {
    cleanup();
    return s.context("backup to " + dest);
  }
  keep_tmp = true;  // renamed: nothing left to clean up
  s = fsync_path(directory_of(dest));
  if (!s) return s.context("backup to " + dest);
  return {};
}

Status Store::verify_file(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0)
    return internal_err("verify " + path + ": " + errno_text(errno));
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, nullptr) !=
      SQLITE_OK) {
    std::string m = "verify " + path + ": " + (db ? sqlite3_errmsg(db) : "out of memory");
    sqlite3_close(db);
    return internal_err(m);
  }
  sqlite3_busy_timeout(db, 5000);
  IntegrityReport check = quick_check(db);
  if (!check.intact()) {
    sqlite3_close(db);
    if (check.damaged()) return internal_err(damaged_message(path, check));
    return internal_err("verify " + path + ": integrity check: " + check.describe());
  }
  sqlite3_stmt* st_version = nullptr;
  int version = 0;
  std::string problem;
  if (sqlite3_prepare_v2(db, "SELECT MAX(version) FROM schema_version", -1, &st_version,
                         nullptr) != SQLITE_OK) {
    problem = std::string("no schema version (") + sqlite3_errmsg(db) +
              "): not a controller database";
  } else if (sqlite3_step(st_version) == SQLITE_ROW &&
             sqlite3_column_type(st_version, 0) != SQLITE_NULL) {
    version = sqlite3_column_int(st_version, 0);
  }
  sqlite3_finalize(st_version);
  sqlite3_close(db);
  if (problem.empty() && (version < 1 || version > kSchemaVersion))
    problem = "schema version " + std::to_string(version) +
              " is not one this controller uses (1.." + std::to_string(kSchemaVersion) + ")";
  if (!problem.empty()) return internal_err("verify " + path + ": " + problem);
  return {};
}

Status Store::checkpoint_wal() {
  if (!db_) return internal_err("checkpoint: database not open");
  int wal_frames = 0;
  int checkpointed = 0;
  const int rc = sqlite3_wal_checkpoint_v2(db_, nullptr, SQLITE_CHECKPOINT_TRUNCATE, &wal_frames,
                                           &checkpointed);
  if (rc != SQLITE_OK) return record_write_failure(rc, "checkpoint: " + errmsg());
  return {};
}

// ---------------------------------------------------------------------------------- health
Status Store::probe_write(long long now_ms) {
  Tx tx(*this);
  if (!tx.status()) return tx.status().context("probe write");
  {
    OTA_PREP(q, "INSERT INTO health_probe(id, ts) VALUES (1, ?) "
                "ON CONFLICT(id) DO UPDATE SET ts = excluded.ts");
    q.bind(1, now_ms);
    OTA_DONE(q, "probe write");
  }
  Status c = tx.commit();
  if (!c) return c.context("probe write");
  return {};
}

// ------------------------------------------------------------------------------- retention
Result<long long> Store::prune_events(const EventRetention& r, long long now_ms, int batch) {
  if (batch <= 0) return invalid_err("prune events: batch must be positive");
  // Kept whatever their age or rank: the history of what is still in progress. The terminal
  // rollout states are those of is_terminal_rollout_state() (rollout.cpp); a test checks that
  // the two agree for every rollout state.
  const std::string kUnprotected =
      " AND NOT EXISTS (SELECT 1 FROM deployments d WHERE d.id = events.deployment "
      "AND d.state = 'active') AND NOT EXISTS (SELECT 1 FROM rollouts r WHERE "
      "r.id = events.rollout AND r.state NOT IN ('completed', 'aborted'))";
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
