// The database schema and its migrations (Store::migrate).
#include <sqlite3.h>

#include <string>
#include <utility>

#include "ota/service/store.hpp"
#include "store_statement.hpp"

namespace ota::service {

using detail::Q;

namespace {

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

}  // namespace

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

}  // namespace ota::service
