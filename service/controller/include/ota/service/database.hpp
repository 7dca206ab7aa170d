// The controller's database: the SQLite connection (Store, not thread-safe) and the lock
// that serialises every use of it.
//
// Owns: the Store; the bookkeeping of the periodic write probe and of the event retention.
// Lock: mu_, held through a Database::Lock (alias DbLock), the only way to reach the Store.
//   It is taken FIRST: no component lock may be held while taking it (ARCHITECTURE.md, lock
//   order). Recursive: the device-message thread holds it across a batch of messages (one
//   transaction, inbound.hpp) whose handlers take it again. Everything that changes persisted state (rows, devices, rollouts, events) holds
//   it for the whole change, transaction and memory together; so a holder sees the
//   persisted state of every component stand still.
// Threads: all of them (MQTT network thread, HTTP workers, the tick thread).
#pragma once

#include <cstdint>
#include <functional>
#include <mutex>
#include <string>

#include "ota/service/result.hpp"
#include "ota/service/store.hpp"

namespace ota::service {

class Database {
 public:
  // now: the controller's clock (unix ms), for event rows.
  explicit Database(std::function<long long()> now) : now_(std::move(now)) {}
  Database(const Database&) = delete;
  Database& operator=(const Database&) = delete;

  class Lock {
   public:
    explicit Lock(Database& db) : db_(db), guard_(db.mu_) {}
    Lock(const Lock&) = delete;
    Lock& operator=(const Lock&) = delete;
    Store& store() { return db_.store_; }
    // Appends to the event log. A failure is logged, not returned: the log must not fail
    // the action it records (inside a transaction, the commit reports a broken database).
    void event(const std::string& dep, const std::string& dev, const std::string& what,
               const std::string& detail, const std::string& actor = "",
               const std::string& rollout = "");
    Database& db() { return db_; }

   private:
    Database& db_;
    std::lock_guard<std::recursive_mutex> guard_;
  };

  // Opens (checks, migrates) the database file. Before the controller runs: no lock.
  Status open(const std::string& path) { return store_.open(path); }
  long long now() const { return now_(); }

  // Proves the database writable with a tiny write when nothing else wrote for interval_ms
  // (every second while it fails, so recovery shows at once).
  void probe(Lock& lock, long long now_ms, long long interval_ms, const std::string& path);
  // Deletes one batch of old events (Store::prune_events) every interval_ms, or every call
  // while a backlog drains.
  void prune(Lock& lock, long long now_ms, const EventRetention& r, long long interval_ms);

  struct Health {
    bool writable = true;
    std::uint64_t write_errors = 0;
    std::string last_error;
    long long last_probe_ms = 0;
    std::uint64_t events_pruned = 0;
  };
  Health health(Lock& lock) const;

 private:
  friend class Lock;
  std::recursive_mutex mu_;
  Store store_;
  std::function<long long()> now_;
  // Guarded by mu_.
  long long last_probe_ms_ = 0;
  long long last_prune_ms_ = 0;
  std::uint64_t events_pruned_ = 0;
};

using DbLock = Database::Lock;

}  // namespace ota::service
