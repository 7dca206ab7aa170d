// Inbound: the device messages from the broker, one handler per message kind (like
// Mosquitto's handle_*.c): on_message() checks the topic, the sender's budget and
// revocation, then hands the message to handle_presence (hello, heartbeat, last will:
// handle_presence.cpp), handle_event (handle_event.cpp) or handle_chunk_request
// (handle_chunk_req.cpp). The handlers decode, decide what applies and call the components;
// they hold no state of their own besides the drop counters.
//
// Owns: the drop counters and the keys of drops already logged once.
// Lock: log_mu_ (the logged-once keys), a leaf; the counters are atomics. The handlers take
//   the database lock before any component's, and only while they change persisted state
//   (a chunk request takes none unless its row moves on).
// Threads: MQTT network thread (on_message: chunk requests, and queueing the rest), the
//   device-message thread (hellos, heartbeats, last wills and events, in arrival order; none
//   with cfg.inbound_queue = 0, then on_message applies them), tick thread (hellos applied
//   again).
// Batches: the device-message thread applies what waits (up to kMaxBatch) in one
//   transaction holding the database lock throughout (group commit: a WAL sync per batch,
//   not per message), and what the handlers publish meanwhile goes out after the commit
//   (DeferringPublisher). A lone message is applied as it comes.
// Order: a device's messages are applied in the order they arrived. A chunk request goes
//   straight to the chunk server only when none of its device's messages waits in the queue
//   (else it queues behind them: a request right after an accept finds the row accepted).
// Crash: libmosquitto (2.0) acknowledges a message before it hands it over, so one still
//   queued when the controller dies is lost, as one inside a handler was before the queue.
//   What that loses is recovered: hellos and offline markers are retained (delivered again
//   at the next subscribe), a device re-sends its outcome when it is offered the deployment
//   again, and its later reports and requests move the row on. A batch whose commit fails
//   is lost the same way (logged; what it would have published is not sent).
#pragma once

#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "ota/proto/topics.hpp"
#include "ota/service/chunk_server.hpp"
#include "ota/service/controller_config.hpp"
#include "ota/service/database.hpp"
#include "ota/service/deferring_publisher.hpp"
#include "ota/service/deployments.hpp"
#include "ota/service/device_registry.hpp"
#include "ota/service/key_service.hpp"

namespace ota::service {

// Why a device message was dropped without effect (a label of
// ota_device_messages_dropped_total).
enum class DropReason {
  decode_error,        // not a valid message (codec error)
  rate_limited,        // over the device's message budget
  device_id_mismatch,  // a hello or heartbeat naming another device than its topic
  result_mismatch,     // a success result for another version than the deployment's image
  progress_backwards,  // progress below what the device already reported in this attempt
  not_applicable,      // not a member, finished or superseded deployment, stale id
  duplicate,           // an outcome we already have, sent again
  revoked,             // from a device the operator revoked (otactl device revoke)
};
constexpr std::size_t kDropReasonCount = 8;
const char* drop_reason_name(DropReason r);

// A set of keys with a capacity: inserting into a full set forgets the oldest key (FIFO).
// Used for "log once" bookkeeping driven by device messages, so a device cannot grow it
// without bound.
class BoundedKeySet {
 public:
  explicit BoundedKeySet(std::size_t cap) : cap_(cap ? cap : 1) {}
  // True if `key` was not present (it is now).
  bool insert(const std::string& key);
  bool contains(const std::string& key) const { return set_.count(key) != 0; }
  std::size_t size() const { return set_.size(); }
  std::size_t capacity() const { return cap_; }

 private:
  std::size_t cap_;
  std::unordered_set<std::string> set_;
  std::deque<std::string> order_;
};

class RolloutRunner;

class Inbound {
 public:
  static constexpr std::size_t kLogOnceCapacity = 4096;

  // pub: what the components publish through (held during a batch); nullptr: no batches.
  Inbound(const ControllerConfig& cfg, Database& db, DeviceRegistry& registry, KeyService& keys,
          Deployments& deployments, RolloutRunner& runner, ChunkServer& chunks,
          DeferringPublisher* pub);
  ~Inbound();
  Inbound(const Inbound&) = delete;
  Inbound& operator=(const Inbound&) = delete;

  // retained: the broker's stored copy, delivered because we (re)subscribed.
  void on_message(const char* topic, const void* payload, std::size_t len, bool retained);
  // Applies what waits in the queue and stops the device-message thread (before the
  // components it calls go away). Messages that arrive later are applied by on_message.
  void stop();
  // Messages queued for the device-message thread and not applied yet (a gauge).
  std::size_t queued() const;
  // Hellos whose commit failed before, once the database takes writes again (tick thread).
  void retry_unapplied_hellos();

  std::uint64_t decode_errors() const { return decode_errors_.load(); }
  std::uint64_t ignored_messages() const { return ignored_messages_.load(); }
  // Chunk requests naming a group (`bc`) whose image topic the device may not read: served
  // by unicast instead (PROTOCOL.md 17).
  std::uint64_t broadcast_unreadable() const { return broadcast_unreadable_.load(); }
  std::uint64_t dropped(DropReason r) const { return dropped_[static_cast<std::size_t>(r)].load(); }
  // Group commits of several queued messages, and the messages they applied.
  std::uint64_t batches() const { return batches_.load(); }
  std::uint64_t batched_messages() const { return batched_messages_.load(); }
  // The most messages one transaction applies: bounds how long the database lock is held
  // (other threads wait for it) and what a failed commit loses.
  static constexpr std::size_t kMaxBatch = 128;

 private:
  // handle_presence.cpp
  void handle_presence(const std::string& dev, const char* p, std::size_t len, const char* topic,
                       bool retained);
  void handle_heartbeat(const std::string& dev, const char* p, std::size_t len, const char* topic);
  void handle_last_will(const std::string& dev);
  void handle_hello(const std::string& dev, const char* p, std::size_t len, const char* topic,
                    bool retained);
  // After the hello's commit: liveness, the key set, a resumed download, completions.
  void after_hello(DbLock& db, const std::string& dev, const proto::Hello& h,
                   const std::vector<std::string>& touched);
  // handle_event.cpp
  void handle_event(const std::string& dev, const char* p, std::size_t len, const char* topic);
  void unmatched_event(DbLock& db, const std::string& dev, const proto::Event& ev,
                       const EventMatch& m, bool replay);
  bool refused_claim(DbLock& db, const std::string& dev, const proto::Event& ev, const EventMatch& m);
  // handle_chunk_req.cpp
  void handle_chunk_request(const std::string& dev, const char* p, std::size_t len,
                            const char* topic);

  // inbound.cpp
  // A message past the budget and revocation checks, to its handler.
  void dispatch(proto::TopicKind kind, const std::string& dev, const char* p, std::size_t len,
                const char* topic, bool retained);
  // The device-message thread, and its batches.
  void worker_loop();
  struct Queued;
  void apply_batch(std::vector<Queued>& batch);
  void decode_error(const std::string& dev, const char* topic, const char* what, int code,
                    const char* field);
  void count_drop(DropReason r) { dropped_[static_cast<std::size_t>(r)]++; }
  // True the first time for `key` (then the caller logs it).
  bool first_time(const std::string& key);
  bool logged(const std::string& key);
  // Counts an ignored device message; logs it, and records one event row (`what` non-empty),
  // once per key. The caller holds the database lock.
  void ignored(DbLock& db, const std::string& key, const std::string& dep, const std::string& dev,
               const std::string& what, const std::string& detail, const std::string& msg,
               DropReason reason = DropReason::not_applicable);
  // As ignored(), for a caller without the database lock (takes it only to record the event).
  void ignored_unlocked(const std::string& key, const std::string& dep, const std::string& dev,
                        const std::string& what, const std::string& detail, const std::string& msg,
                        DropReason reason = DropReason::not_applicable);
  // A completed deployment of a rollout: the runner forgets the rollout.
  void complete(DbLock& db, const std::string& dep_id);
  long long now() const { return controller_now(cfg_); }

  const ControllerConfig& cfg_;
  DeferringPublisher* pub_;
  Database& db_;
  DeviceRegistry& registry_;
  KeyService& keys_;
  Deployments& deployments_;
  RolloutRunner& runner_;
  ChunkServer& chunks_;

  // The device-message queue (cfg.inbound_queue > 0).
  struct Queued {
    proto::TopicKind kind;
    std::string dev, topic, payload;
    bool retained;
  };
  mutable std::mutex queue_mu_;
  std::condition_variable queue_cv_;        // a message queued, or stop
  std::condition_variable queue_space_cv_;  // the queue shrank
  std::deque<Queued> queue_;
  std::unordered_map<std::string, std::size_t> queued_of_;  // per device, while > 0
  std::size_t unapplied_ = 0;  // queued, or being applied
  std::atomic<std::uint64_t> batches_{0};           // group commits of several messages
  std::atomic<std::uint64_t> batched_messages_{0};  // the messages they applied
  bool queue_stopping_ = false;
  std::thread worker_;

  std::mutex log_mu_;
  BoundedKeySet logged_once_{kLogOnceCapacity};  // drop log keys
  std::atomic<std::uint64_t> decode_errors_{0};
  std::atomic<std::uint64_t> ignored_messages_{0};
  std::atomic<std::uint64_t> broadcast_unreadable_{0};
  std::array<std::atomic<std::uint64_t>, kDropReasonCount> dropped_{};
};

}  // namespace ota::service
