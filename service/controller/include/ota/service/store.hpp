// SQLite persistence of the controller: images, devices, deployments, per-device deployment
// rows and an append-only event log. WAL, busy_timeout, foreign keys, a schema version table,
// prepared statements (cached), writes in transactions. Not thread-safe: Database
// (database.hpp) serialises its use.
//
// Recovery without a person: open() refuses a damaged file (integrity check) and says how to
// restore it, backup_to() makes a consistent copy while the controller runs, the write-health
// counters and probe_write() tell the truth about whether the database can take writes (full
// disk, I/O errors), and prune_events() keeps the event log bounded.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "ota/service/result.hpp"
#include "ota/service/states.hpp"

struct sqlite3;
struct sqlite3_stmt;

namespace ota::service {

constexpr int kSchemaVersion = 5;

// Start of the message of the error open() returns for a damaged database file (also
// Store::damaged()). verify_file() uses it too.
constexpr const char* kDatabaseDamagedPrefix = "database damaged: ";

struct ImageRec {
  std::string id;  // first 16 hex chars of sha256
  std::string sha256;
  std::string version;
  std::vector<std::string> hw;
  std::uint64_t size = 0;
  std::uint32_t chunk_size = 4096;
  std::uint32_t counter = 0;
  std::string kind = "firmware";
  long long created_at = 0;
  // Release signature (schema v5, PROTOCOL.md 6.5): made offline by release key
  // `release_key` over the image's canonical release encoding. Both empty: none.
  std::string release_key;
  std::string release_sig;
};

struct DeviceRec {
  std::string id;
  std::string hw;
  std::string version;
  std::optional<std::string> previous_version;
  std::string slot;
  std::string slot_state;
  std::uint64_t free = 0;
  std::uint32_t counter = 0;
  std::vector<std::string> groups;
  bool online = false;
  long long last_seen = 0;
  std::string last_error;
  long long last_seq = -1;  // -1: no event seen yet
  std::uint32_t keys = 0;   // key-set version of its last hello (schema v5; 0 = provisioned)
  long long revoked_at = 0;  // unix seconds the operator revoked it (schema v5); 0 = not
};

struct DeploymentRec {
  std::string id;
  std::string image_id;
  std::string target_kind;  // "device" | "group"
  std::string target;
  DeploymentState state = DeploymentState::active;
  std::string offer;  // exact signed offer JSON
  long long created_at = 0;
  long long finished_at = 0;
};

struct RowRec {
  std::string deployment_id;
  std::string device_id;
  RowState state = RowState::offered;
  std::string reason;
  std::uint64_t received = 0;
  std::uint64_t total = 0;
  std::uint64_t bytes_sent = 0;
  long long updated_at = 0;
  // Rollout bookkeeping (plain deployments leave the defaults).
  int wave = 0;
  int ord = 0;
  int attempt = 1;
  int extra_attempts = 0;
  int defers = 0;
  long long next_at = 0;     // unix ms: pending/deferred row not before
  long long offered_at = 0;  // unix ms of the current attempt's offer
  bool offer_sent = false;   // the broker acknowledged the current attempt's offer
};

struct RolloutRec {
  std::string id;
  std::string name;
  std::string image_id;
  std::string target_kind;  // group | devices | tags
  std::string target;       // group id, JSON array of ids, or a tag expression
  std::string policy;       // JSON (RolloutPolicy::to_json)
  RolloutStatus state = RolloutStatus::draft;
  int current_wave = -1;
  long long wave_started_ms = 0;
  long long threshold_met_ms = 0;
  int accepted_through = -1;
  std::string pause_reason;
  PausedBy paused_by = PausedBy::none;
  std::string deployment_id;
  std::string rollback_of;
  std::string from_version;
  long long excluded = 0;
  long long created_at = 0;
  long long started_at = 0;
  long long finished_at = 0;
};

struct EventRec {
  long long id = 0;
  long long ts = 0;  // unix milliseconds
  std::string deployment;
  std::string device;
  std::string what;
  std::string detail;
  std::string actor;
  std::string rollout;
};

struct DeviceFilter {
  std::string group;
  std::string version;
  std::optional<bool> online;
};

struct EventFilter {
  std::string deployment;
  std::string device;
  std::string rollout;
  long long after_id = 0;
  long long before_id = 0;  // 0: no upper bound (the next older page: its first id)
  int limit = 100;
};

// How much event history to keep; 0 = no limit in that dimension.
struct EventRetention {
  long long max_age_ms = 0;  // events older than this (by ts) go
  long long max_count = 0;   // only the newest max_count events stay
};

// A named API token (schema v4). The secret itself is never stored, only its SHA-256.
struct ApiTokenRec {
  std::string name;
  std::string role;    // "read-only" | "operator" | "admin"
  std::string sha256;  // lower-case hex of SHA-256(secret)
  long long created_at = 0;  // unix seconds
  std::string created_by;    // the actor that created it ("token:NAME")
};

// A key set the operator pushed (schema v5, PROTOCOL.md 6.6), as the `keys` message devices get.
struct KeySetRec {
  std::uint32_t version = 0;
  std::string body;       // the encoded `keys` message (proto::encode_keyset)
  std::string signed_by;  // key id of the root key that signed it
  std::string uploaded_by;  // the actor ("token:NAME")
  long long uploaded_at = 0;  // unix seconds
};

class Store {
 public:
  Store() = default;
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  // Opens, checks the file's integrity (PRAGMA quick_check) and migrates to target_version
  // (tests create older schemas with it). A damaged file is refused: the error starts with
  // kDatabaseDamagedPrefix, names the file, says what is wrong and how to restore a backup,
  // and damaged() is true (the connection is closed then). check_integrity=false skips the
  // check, for a second connection to a file another Store of this process has just checked.
  Status open(const std::string& path, int target_version = kSchemaVersion,
              bool check_integrity = true);
  int schema_version() const { return schema_version_; }
  bool damaged() const { return damaged_; }

  // Consistent online copy of the database (every committed transaction, WAL content
  // included) as a stand-alone file (rollback-journal mode, no -wal needed) at dest: written to
  // dest + ".tmp", integrity-checked, fsynced, renamed to dest, directory fsynced. Refuses
  // (conflict) if dest exists and inside an open transaction. Blocks the caller for the copy.
  Status backup_to(const std::string& dest);
  // Opens path read-only and checks it: quick_check (damage: kDatabaseDamagedPrefix) and a
  // schema version this controller can use. For restore tooling; does not modify the file.
  static Status verify_file(const std::string& path);
  // Copies the WAL into the database file and truncates the WAL to zero bytes.
  Status checkpoint_wal();

  // Write health. A write, begin or commit that fails counts in write_errors() (constraint
  // violations excepted: they are the caller's data, not the database's health) and sets
  // last_error(); one failing with a storage error (FULL, IOERR*, READONLY, CORRUPT, NOTADB,
  // CANTOPEN, PERM) makes writable() false until a later commit that changed data succeeds.
  std::uint64_t write_errors() const { return write_errors_; }
  std::string last_error() const { return last_error_; }
  bool writable() const { return writable_; }
  // A tiny write transaction (the one-row health_probe table) so that writability is known
  // even while nothing else writes.
  Status probe_write(long long now_ms);

  // Transactions (BEGIN IMMEDIATE / COMMIT / ROLLBACK). Inside a batch they are savepoints
  // of the batch's transaction (SAVEPOINT / RELEASE / ROLLBACK TO): committed for the caller,
  // durable only when the batch commits.
  Status begin();
  Status commit();
  void rollback();
  // Group commit: one transaction, and one WAL sync (synchronous=FULL), for the transactions
  // of many callers in a row (the device-message thread's batches). end_batch() commits it;
  // on failure it rolls back and says why. If SQLite itself rolled the batch back (some
  // storage errors do), the transactions after that fail to begin.
  Status begin_batch();
  Status end_batch();

  // Images.
  Status insert_image(const ImageRec& img);
  Result<std::optional<ImageRec>> image_by_id(const std::string& id);
  Result<std::optional<ImageRec>> image_by_sha(const std::string& sha);
  Result<std::optional<ImageRec>> image_by_version(const std::string& version);
  Result<std::vector<ImageRec>> list_images();
  // A release signature for a stored image (schema v5); not_found if there is no such image.
  Status set_image_release(const std::string& id, const std::string& release_key,
                           const std::string& release_sig);

  // Key sets (schema v5): the history, oldest first. insert: conflict if the version exists.
  Status insert_key_set(const KeySetRec& k);
  Result<std::vector<KeySetRec>> key_sets();

  // Devices.
  Status upsert_device(const DeviceRec& d);  // everything but last_seq / last_error / revoked_at
  Status set_device_online(const std::string& id, bool online, long long ts);
  Status set_device_last_seq(const std::string& id, long long seq);
  Status set_device_version(const std::string& id, const std::string& version);
  Status set_device_last_error(const std::string& id, const std::string& err);
  Status ensure_device(const std::string& id, long long ts);  // stub row if unknown
  Result<std::optional<DeviceRec>> device(const std::string& id);
  // ts 0: not revoked (schema v5).
  Status set_device_revoked(const std::string& id, long long ts);
  Result<std::vector<DeviceRec>> list_devices(const DeviceFilter& f);

  // Deployments.
  Result<std::string> next_deployment_id();
  Status insert_deployment(const DeploymentRec& d);
  // ts: finished_at (0 while active).
  Status set_deployment_state(const std::string& id, DeploymentState state, long long ts);
  Result<std::optional<DeploymentRec>> deployment(const std::string& id);
  // All deployments, or those in `state`.
  Result<std::vector<DeploymentRec>> list_deployments(std::optional<DeploymentState> state = {});

  // Per-device rows.
  Status upsert_row(const RowRec& r);
  Result<std::vector<RowRec>> rows(const std::string& deployment_id);
  Result<std::vector<RowRec>> rows_for_device(const std::string& device_id, int limit);

  // Events.
  // actor: who decided ("controller", "operator:alice", "device"); empty = controller.
  // ts_ms: unix ms (the controller's clock); 0 = the system clock.
  Status add_event(const std::string& deployment, const std::string& device,
                   const std::string& what, const std::string& detail,
                   const std::string& actor = "", const std::string& rollout = "", long long ts_ms = 0);
  Result<std::vector<EventRec>> events(const EventFilter& f);
  // The event log's `hello` and `device_decommissioned` entries, oldest first, one call of
  // `fn(ts, device, what, detail)` each (the versions-over-time chart replays them).
  Status for_each_version_event(
      const std::function<void(long long, const std::string&, const std::string&,
                               const std::string&)>& fn);
  // Deletes, oldest first and at most `batch` per call, the events older than r.max_age_ms
  // (ts < now_ms - max_age_ms) or beyond the newest r.max_count, except those of an active
  // deployment or of a rollout not in a terminal state (is_terminal(RolloutStatus)). Returns
  // how many it deleted: call again while it returns `batch`. Not inside a transaction: each
  // delete commits on its own so the write lock is held briefly.
  Result<long long> prune_events(const EventRetention& r, long long now_ms, int batch = 5000);

  // Rollouts.
  Status insert_rollout(const RolloutRec& r);
  Status update_rollout(const RolloutRec& r);  // state fields only
  Result<std::optional<RolloutRec>> rollout(const std::string& id);
  Result<std::vector<RolloutRec>> list_rollouts();

  // Device tags (operator-assigned key=value) and liveness.
  Status set_device_tag(const std::string& device, const std::string& key,
                        const std::optional<std::string>& value);  // nullopt removes
  Result<std::map<std::string, std::map<std::string, std::string>>> all_tags();
  Status set_device_last_seen(const std::string& id, long long ts);

  // API tokens. insert: conflict if the name is taken. delete: false if there was none.
  Status insert_api_token(const ApiTokenRec& t);
  Result<bool> delete_api_token(const std::string& name);
  Result<std::vector<ApiTokenRec>> list_api_tokens();

  // Deletions (store_deletes.cpp; inside the caller's transaction). The event log stays.
  // What refers to an image: "deployment dep-1 (active)", "rollout ro-2 (draft)", the
  // unfinished ones first.
  Result<std::vector<std::string>> image_users(const std::string& image_id);
  Status delete_image(const std::string& id);  // not_found if there is none
  // Only a rollout that never started (no deployment): conflict otherwise.
  Status delete_unstarted_rollout(const std::string& id);
  // The device's row and its tags; its deployment rows and events stay (history).
  Status delete_device(const std::string& id);

  // Summary helpers.
  Result<std::map<std::string, long long>> count_by(const std::string& sql);

 private:
  Result<sqlite3_stmt*> prepare(const std::string& sql);
  // what: prefix of the error message ("commit: ..."), none if null.
  Status exec(const std::string& sql, const char* what = nullptr);
  Status migrate(int target_version);
  std::string errmsg() const;
  void close();
  // The health bookkeeping of every write: a failure (returns the error to pass on) and a
  // statement that finished (a commit in autocommit mode).
  Err record_write_failure(int rc, std::string msg);
  void record_statement_done();

  sqlite3* db_ = nullptr;
  std::map<std::string, sqlite3_stmt*> cache_;
  int schema_version_ = 0;
  bool damaged_ = false;
  std::uint64_t write_errors_ = 0;
  std::string last_error_;
  bool writable_ = true;
  long long changes_at_begin_ = 0;  // sqlite3_total_changes64 when the transaction began
  bool batch_ = false;           // between begin_batch() and end_batch()
  bool savepoint_ = false;       // the open transaction is a savepoint of the batch
  long long batch_changes_at_begin_ = 0;
};

// RAII transaction: rolls back unless commit() succeeded.
class Tx {
 public:
  explicit Tx(Store& s) : s_(s) { st_ = s_.begin(); }
  ~Tx() {
    if (st_.ok() && !done_) s_.rollback();
  }
  Tx(const Tx&) = delete;
  Tx& operator=(const Tx&) = delete;
  const Status& status() const { return st_; }
  Status commit() {
    if (!st_.ok()) return st_;
    done_ = true;
    Status c = s_.commit();
    if (!c.ok()) s_.rollback();
    return c;
  }

 private:
  Store& s_;
  Status st_;
  bool done_ = false;
};

}  // namespace ota::service
