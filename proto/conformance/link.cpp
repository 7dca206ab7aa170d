#include "link.hpp"

#include <mosquitto.h>

#include <mutex>

namespace ota::conformance {
namespace {
void lib_init_once() {
  static std::once_flag once;
  std::call_once(once, [] { mosquitto_lib_init(); });
}
}  // namespace

Link::~Link() {
  disconnect();
  if (mosq_ != nullptr) mosquitto_destroy(mosq_);
}

bool Link::connect(const LinkSettings& s, std::chrono::milliseconds deadline, std::string& error) {
  lib_init_once();
  if (mosq_ != nullptr) {
    disconnect();
    mosquitto_destroy(mosq_);
  }
  mosq_ = mosquitto_new(s.client_id.empty() ? nullptr : s.client_id.c_str(), true, this);
  if (mosq_ == nullptr) {
    error = "mosquitto_new failed";
    return false;
  }
  mosquitto_int_option(mosq_, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V311);
  mosquitto_int_option(mosq_, MOSQ_OPT_TCP_NODELAY, 1);
  mosquitto_connect_callback_set(mosq_, &Link::on_connect_cb);
  mosquitto_disconnect_callback_set(mosq_, &Link::on_disconnect_cb);
  mosquitto_subscribe_callback_set(mosq_, &Link::on_subscribe_cb);
  mosquitto_message_callback_set(mosq_, &Link::on_message_cb);
  mosquitto_reconnect_delay_set(mosq_, 1, 2, false);
  int rc = mosquitto_tls_set(mosq_, s.ca.c_str(), nullptr, s.cert.empty() ? nullptr : s.cert.c_str(),
                             s.key.empty() ? nullptr : s.key.c_str(), nullptr);
  if (rc != MOSQ_ERR_SUCCESS) {
    error = "TLS files (--ca " + s.ca + ", --cert " + s.cert + ", --key " + s.key +
            "): " + mosquitto_strerror(rc);
    return false;
  }
  mosquitto_tls_opts_set(mosq_, 1, "tlsv1.2", nullptr);
  {
    std::lock_guard<std::mutex> lock(mu_);
    connack_ = -1;
    connected_ = false;
  }
  const std::string where = s.host + ":" + std::to_string(s.port);
  rc = mosquitto_connect(mosq_, s.host.c_str(), s.port, s.keepalive_s);
  if (rc != MOSQ_ERR_SUCCESS) {
    error = "cannot connect to the broker at " + where + ": " + mosquitto_strerror(rc);
    return false;
  }
  // Drive the loop ourselves until CONNACK, so that a refusal is reported, not retried.
  const auto end = SteadyClock::now() + deadline;
  for (;;) {
    rc = mosquitto_loop(mosq_, 20, 1);
    std::lock_guard<std::mutex> lock(mu_);
    if (connack_ == 0) break;
    if (connack_ > 0) {
      error = "the broker at " + where + " refused the connection: " +
              mosquitto_connack_string(connack_);
      return false;
    }
    if (rc != MOSQ_ERR_SUCCESS) {
      error = "connection to the broker at " + where + " failed: " + mosquitto_strerror(rc);
      return false;
    }
    if (SteadyClock::now() >= end) {
      error = "no CONNACK from the broker at " + where + " within " +
              std::to_string(deadline.count()) + " ms";
      return false;
    }
  }
  if (mosquitto_loop_start(mosq_) != MOSQ_ERR_SUCCESS) {
    error = "cannot start the MQTT network thread";
    return false;
  }
  loop_running_ = true;
  return true;
}

void Link::disconnect() {
  if (mosq_ == nullptr) return;
  mosquitto_disconnect(mosq_);
  if (loop_running_) {
    mosquitto_loop_stop(mosq_, false);
    loop_running_ = false;
  }
  std::lock_guard<std::mutex> lock(mu_);
  connected_ = false;
}

bool Link::connected() const {
  std::lock_guard<std::mutex> lock(mu_);
  return connected_;
}

int Link::lost() const {
  std::lock_guard<std::mutex> lock(mu_);
  return lost_;
}

bool Link::subscribe(const std::string& pattern, std::chrono::milliseconds deadline,
                     std::string& error) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    patterns_.insert(pattern);
  }
  int mid = 0;
  const int rc = mosquitto_subscribe(mosq_, &mid, pattern.c_str(), 1);
  if (rc != MOSQ_ERR_SUCCESS) {
    error = "cannot subscribe to " + pattern + ": " + mosquitto_strerror(rc);
    return false;
  }
  std::unique_lock<std::mutex> lock(mu_);
  if (!cv_.wait_for(lock, deadline, [&] { return subacked_.count(mid) != 0; })) {
    error = "no SUBACK for " + pattern + " within " + std::to_string(deadline.count()) + " ms";
    return false;
  }
  return true;
}

bool Link::publish(const std::string& topic, const std::string& payload, bool retain) {
  return mosquitto_publish(mosq_, nullptr, topic.c_str(), static_cast<int>(payload.size()),
                           payload.data(), 1, retain) == MOSQ_ERR_SUCCESS;
}

std::optional<LinkMessage> Link::next(SteadyClock::time_point until) {
  std::unique_lock<std::mutex> lock(mu_);
  if (!cv_.wait_until(lock, until, [&] { return !inbox_.empty(); })) return std::nullopt;
  LinkMessage m = std::move(inbox_.front());
  inbox_.pop_front();
  return m;
}

void Link::on_connect_cb(mosquitto* mosq, void* self, int rc) {
  auto* l = static_cast<Link*>(self);
  std::set<std::string> again;
  {
    std::lock_guard<std::mutex> lock(l->mu_);
    l->connack_ = rc;
    l->connected_ = rc == 0;
    if (rc == 0) again = l->patterns_;  // empty at the first connect
    l->cv_.notify_all();
  }
  for (const auto& p : again) mosquitto_subscribe(mosq, nullptr, p.c_str(), 1);
}

void Link::on_disconnect_cb(mosquitto*, void* self, int rc) {
  auto* l = static_cast<Link*>(self);
  std::lock_guard<std::mutex> lock(l->mu_);
  l->connected_ = false;
  if (rc != 0) ++l->lost_;
  l->cv_.notify_all();
}

void Link::on_subscribe_cb(mosquitto*, void* self, int mid, int, const int*) {
  auto* l = static_cast<Link*>(self);
  std::lock_guard<std::mutex> lock(l->mu_);
  l->subacked_.insert(mid);
  l->cv_.notify_all();
}

void Link::on_message_cb(mosquitto*, void* self, const mosquitto_message* msg) {
  auto* l = static_cast<Link*>(self);
  LinkMessage m;
  m.topic = msg->topic;
  m.payload.assign(static_cast<const char*>(msg->payload), static_cast<std::size_t>(msg->payloadlen));
  m.retained = msg->retain;
  m.at = SteadyClock::now();
  std::lock_guard<std::mutex> lock(l->mu_);
  l->inbox_.push_back(std::move(m));
  l->cv_.notify_all();
}

}  // namespace ota::conformance
