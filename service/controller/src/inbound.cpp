// Inbound: routing of device messages to their handlers, the drop counters.
#include "ota/service/inbound.hpp"

#include "ota/proto/messages.hpp"
#include "ota/proto/topics.hpp"
#include "ota/service/log.hpp"
#include "ota/service/rollout_runner.hpp"

namespace ota::service {

const char* drop_reason_name(DropReason r) {
  switch (r) {
    case DropReason::decode_error: return "decode_error";
    case DropReason::rate_limited: return "rate_limited";
    case DropReason::device_id_mismatch: return "device_id_mismatch";
    case DropReason::result_mismatch: return "result_mismatch";
    case DropReason::progress_backwards: return "progress_backwards";
    case DropReason::not_applicable: return "not_applicable";
    case DropReason::duplicate: return "duplicate";
    case DropReason::revoked: return "revoked";
  }
  return "unknown";
}

bool BoundedKeySet::insert(const std::string& key) {
  if (set_.count(key)) return false;
  while (set_.size() >= cap_ && !order_.empty()) {
    set_.erase(order_.front());
    order_.pop_front();
  }
  set_.insert(key);
  order_.push_back(key);
  return true;
}

Inbound::Inbound(const ControllerConfig& cfg, Database& db, DeviceRegistry& registry,
                 KeyService& keys, Deployments& deployments, RolloutRunner& runner,
                 ChunkServer& chunks, DeferringPublisher* pub)
    : cfg_(cfg),
      pub_(pub),
      db_(db),
      registry_(registry),
      keys_(keys),
      deployments_(deployments),
      runner_(runner),
      chunks_(chunks) {
  if (cfg_.inbound_queue > 0) worker_ = std::thread([this] { worker_loop(); });
}

Inbound::~Inbound() { stop(); }

void Inbound::stop() {
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    queue_stopping_ = true;
  }
  queue_cv_.notify_all();
  queue_space_cv_.notify_all();
  if (worker_.joinable()) worker_.join();
}

std::size_t Inbound::queued() const {
  std::lock_guard<std::mutex> lock(queue_mu_);
  return unapplied_;
}

// Applies the queue in order, in batches of what waits; once stopping, what is left, then
// ends.
void Inbound::worker_loop() {
  std::vector<Queued> batch;
  std::unique_lock<std::mutex> lock(queue_mu_);
  for (;;) {
    queue_cv_.wait(lock, [this] { return queue_stopping_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stopping, and nothing left
    const std::size_t n = std::min(queue_.size(), kMaxBatch);
    for (std::size_t i = 0; i < n; ++i) {
      batch.push_back(std::move(queue_.front()));
      queue_.pop_front();
    }
    lock.unlock();
    queue_space_cv_.notify_all();
    apply_batch(batch);
    lock.lock();
    // Counted down only now: a chunk request of these devices that arrived meanwhile queued
    // behind their messages instead of overtaking them.
    for (const Queued& m : batch) {
      auto it = queued_of_.find(m.dev);
      if (it != queued_of_.end() && --it->second == 0) queued_of_.erase(it);
    }
    unapplied_ -= batch.size();
    batch.clear();
  }
}

// One message is applied as it comes; several in one transaction (group commit): one WAL
// sync for all instead of one each, the database lock held throughout, and what the handlers
// publish held back until the commit (DeferringPublisher).
void Inbound::apply_batch(std::vector<Queued>& batch) {
  auto apply_each = [&] {
    for (const Queued& m : batch)
      dispatch(m.kind, m.dev, m.payload.data(), m.payload.size(), m.topic.c_str(), m.retained);
  };
  if (batch.size() == 1 || pub_ == nullptr) return apply_each();
  DbLock db(db_);
  Status s = db.store().begin_batch();
  if (!s) {
    log_error("device messages: cannot begin a batch (" + s.error() + "); applying them one by one");
    return apply_each();
  }
  pub_->hold();
  apply_each();
  s = db.store().end_batch();
  if (!s) {
    const std::size_t dropped = pub_->drop_held();
    // Hellos are applied again once the database takes writes (as after a hello's own
    // failed commit); the devices report everything else again.
    std::size_t hellos = 0;
    for (Queued& m : batch) {
      proto::PresenceType type{};
      if (m.kind == proto::TopicKind::presence &&
          !proto::decode_presence_type(m.payload.data(), m.payload.size(), type) &&
          type == proto::PresenceType::hello) {
        registry_.keep_unapplied_hello(m.dev, m.payload, m.retained);
        ++hellos;
      }
    }
    log_error("device messages: a batch of " + std::to_string(batch.size()) + " was not written (" +
              s.error() + "); " + std::to_string(hellos) + " hellos will be applied again, " +
              std::to_string(dropped) + " messages it would have published were not sent");
    return;
  }
  ++batches_;
  batched_messages_ += batch.size();
  // The link went down since the handlers published (they were told it was up): lost as a
  // publish failing at once would have been; offers go out again after the reconnect
  // (Controller::on_connected).
  if (const std::size_t failed = pub_->send_held())
    log_warn("device messages: " + std::to_string(failed) +
             " messages decided in a batch could not be published (broker link down)");
}

void Inbound::on_message(const char* topic, const void* payload, std::size_t len, bool retained) {
  const char* idp = nullptr;
  std::size_t idlen = 0;
  proto::TopicKind k = proto::parse_topic(cfg_.prefix.c_str(), topic, &idp, &idlen);
  if (k != proto::TopicKind::presence && k != proto::TopicKind::event &&
      k != proto::TopicKind::chunk_request)
    return;
  if (!idp || !proto::valid_id(idp, idlen)) {
    decode_errors_++;
    count_drop(DropReason::decode_error);
    log_warn(std::string("ignoring message on topic with invalid device id: ") + topic);
    return;
  }
  const std::string dev(idp, idlen);
  const char* p = static_cast<const char*>(payload);
  // Retained copies come from the broker's store (we subscribed), not from the device now.
  if (!retained && !registry_.admit(dev, k == proto::TopicKind::chunk_request, steady_now_ms())) {
    count_drop(DropReason::rate_limited);
    ignored_messages_++;
    if (first_time("rate|" + dev))
      log_warn("device " + dev + ": over its message budget; dropping messages (logged once, counted "
               "in ota_device_messages_dropped_total{reason=\"rate_limited\"})");
    return;
  }
  if (registry_.revoked(dev)) {
    count_drop(DropReason::revoked);
    ignored_messages_++;
    if (first_time("revoked|" + dev))
      log_warn("device " + dev + " is revoked; dropping its messages (logged once, counted in "
               "ota_device_messages_dropped_total{reason=\"revoked\"}); revoke its "
               "certificate on the broker (broker-config/pki.sh revoke)");
    return;
  }
  if (cfg_.inbound_queue > 0) {
    std::unique_lock<std::mutex> lock(queue_mu_);
    if (!queue_stopping_) {
      const bool overtakes = k == proto::TopicKind::chunk_request && !queued_of_.count(dev);
      if (!overtakes) {
        // Full: the network thread waits, as it did when it applied everything itself.
        queue_space_cv_.wait(lock, [this] { return queue_stopping_ || queue_.size() < cfg_.inbound_queue; });
        if (!queue_stopping_) {
          queue_.push_back(Queued{k, dev, topic, std::string(p, len), retained});
          ++queued_of_[dev];
          ++unapplied_;
          lock.unlock();
          queue_cv_.notify_one();
          return;
        }
      }
    }
  }
  dispatch(k, dev, p, len, topic, retained);
}

void Inbound::dispatch(proto::TopicKind kind, const std::string& dev, const char* p, std::size_t len,
                       const char* topic, bool retained) {
  switch (kind) {
    case proto::TopicKind::presence: handle_presence(dev, p, len, topic, retained); break;
    case proto::TopicKind::event: handle_event(dev, p, len, topic); break;
    case proto::TopicKind::chunk_request: handle_chunk_request(dev, p, len, topic); break;
    default: break;
  }
}

void Inbound::retry_unapplied_hellos() {
  {
    DbLock db(db_);
    if (!db.store().writable()) return;
  }
  auto retry = registry_.take_unapplied_hellos();
  if (retry.empty()) return;
  log_info("applying " + std::to_string(retry.size()) +
           " device hellos the database could not take before");
  for (const auto& [dev, hello] : retry) {
    const std::string topic = cfg_.prefix + "/dev/" + dev + "/up/presence";
    handle_presence(dev, hello.payload.data(), hello.payload.size(), topic.c_str(), hello.retained);
  }
}

void Inbound::decode_error(const std::string& dev, const char* topic, const char* what, int code,
                           const char* field) {
  decode_errors_++;
  count_drop(DropReason::decode_error);
  log_warn("device " + dev + ": bad " + what + " on " + topic + ": " +
           proto::errc_name(static_cast<proto::Errc>(code)) +
           (field && *field ? std::string(" (field ") + field + ")" : std::string()));
}

bool Inbound::first_time(const std::string& key) {
  std::lock_guard<std::mutex> lock(log_mu_);
  return logged_once_.insert(key);
}

bool Inbound::logged(const std::string& key) {
  std::lock_guard<std::mutex> lock(log_mu_);
  return logged_once_.contains(key);
}

void Inbound::ignored(DbLock& db, const std::string& key, const std::string& dep,
                      const std::string& dev, const std::string& what, const std::string& detail,
                      const std::string& msg, DropReason reason) {
  ignored_messages_++;
  count_drop(reason);
  if (!first_time(key)) return;
  log_warn("device " + dev + ": " + msg + " (logged once; further ones are only counted)");
  if (!what.empty()) deployments_.event(db, dep, dev, what, detail);
}

void Inbound::ignored_unlocked(const std::string& key, const std::string& dep,
                               const std::string& dev, const std::string& what,
                               const std::string& detail, const std::string& msg,
                               DropReason reason) {
  ignored_messages_++;
  count_drop(reason);
  if (!first_time(key)) return;
  log_warn("device " + dev + ": " + msg + " (logged once; further ones are only counted)");
  if (what.empty()) return;
  DbLock db(db_);
  deployments_.event(db, dep, dev, what, detail);
}

void Inbound::complete(DbLock& db, const std::string& dep_id) {
  auto done = deployments_.complete_if_done(db, dep_id);
  if (done && !done->empty()) runner_.forget(*done);
}

}  // namespace ota::service
