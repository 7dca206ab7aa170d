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

Status Store::begin() {
  if (batch_) {
    // SQLite rolls a transaction back by itself after some storage errors: then the rest of
    // the batch fails too (nothing of it is written, end_batch() says so) rather than commit
    // one by one after changes that were lost.
    if (sqlite3_get_autocommit(db_))
      return internal_err("begin: the batch's transaction was rolled back (" + last_error_ + ")");
    Status s = exec("SAVEPOINT tx", "begin");
    savepoint_ = s.ok();
    return s;
  }
  Status s = exec("BEGIN IMMEDIATE", "begin");
  if (s) changes_at_begin_ = sqlite3_total_changes64(db_);
  return s;
}
Status Store::commit() {
  if (savepoint_) {
    savepoint_ = false;
    return exec("RELEASE tx", "commit");
  }
  Status s = exec("COMMIT", "commit");
  if (s && sqlite3_total_changes64(db_) != changes_at_begin_) writable_ = true;
  return s;
}
void Store::rollback() {
  if (savepoint_) {
    savepoint_ = false;
    // Fails only if SQLite already rolled back the whole batch (see begin()).
    if (db_ && !sqlite3_get_autocommit(db_))
      (void)sqlite3_exec(db_, "ROLLBACK TO tx; RELEASE tx", nullptr, nullptr, nullptr);
    return;
  }
  // After some failed commits (full disk, I/O error) SQLite has already rolled back; a second
  // ROLLBACK would only fail with "no transaction is active".
  if (db_ && !sqlite3_get_autocommit(db_))
    (void)sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
}

Status Store::begin_batch() {
  if (batch_) return internal_err("begin batch: a batch is open");
  Status s = exec("BEGIN IMMEDIATE", "begin batch");
  if (!s) return s;
  batch_ = true;
  batch_changes_at_begin_ = sqlite3_total_changes64(db_);
  return s;
}

Status Store::end_batch() {
  if (!batch_) return internal_err("end batch: no batch is open");
  batch_ = false;
  savepoint_ = false;
  if (sqlite3_get_autocommit(db_))
    return internal_err("commit batch: SQLite rolled it back after an earlier error (" + last_error_ + ")");
  Status s = exec("COMMIT", "commit batch");
  if (!s) {
    rollback();
    return s;
  }
  if (sqlite3_total_changes64(db_) != batch_changes_at_begin_) writable_ = true;
  return s;
}

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

}  // namespace ota::service
