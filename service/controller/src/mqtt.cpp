#include "ota/service/mqtt.hpp"

#include <mosquitto.h>
#include <poll.h>
#include <sys/socket.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <random>

#include "ota/service/log.hpp"

namespace ota::service {
namespace {

std::once_flag g_lib_once;

// libmosquitto reports socket errors as MOSQ_ERR_ERRNO with the reason in errno.
std::string rc_text(int rc, int saved_errno) {
  if (rc == MOSQ_ERR_ERRNO) return std::strerror(saved_errno);
  return mosquitto_strerror(rc);
}

constexpr long long kLogEveryMs = 60000;  // repeated failures: one line a minute at most
constexpr int kLogFirstFailures = 3;

}  // namespace

long long full_jitter_delay_ms(int attempt, long long base_ms, long long cap_ms,
                               std::uint64_t random) {
  if (base_ms < 1) base_ms = 1;
  if (cap_ms < base_ms) cap_ms = base_ms;
  long long ceiling = base_ms;
  for (int i = 0; i < attempt && ceiling < cap_ms; ++i) ceiling *= 2;
  if (ceiling > cap_ms) ceiling = cap_ms;
  return static_cast<long long>(random % static_cast<std::uint64_t>(ceiling + 1));
}

MqttClient::MqttClient(MqttConfig cfg) : cfg_(std::move(cfg)) {
  std::call_once(g_lib_once, [] { mosquitto_lib_init(); });
}

MqttClient::~MqttClient() {
  stop();
  if (mosq_) mosquitto_destroy(mosq_);
}

std::string MqttClient::describe() const {
  return (cfg_.ca.empty() ? "mqtt://" : "mqtts://") + cfg_.host + ":" + std::to_string(cfg_.port);
}

LinkStatus MqttClient::link_status() const {
  LinkStatus s;
  s.usable = subscribed_.load();
  s.connected = connected_.load();
  s.reconnects = reconnects_.load();
  s.failed_attempts = failed_attempts_.load();
  s.down_since_ms = s.usable ? 0 : down_since_ms_.load();
  s.last_outage_ms = last_outage_ms_.load();
  s.broker = describe();
  std::lock_guard<std::mutex> lock(error_mu_);
  s.last_error = last_error_;
  return s;
}

void MqttClient::set_last_error(const std::string& e) {
  std::lock_guard<std::mutex> lock(error_mu_);
  last_error_ = e;
}

Status MqttClient::start() {
  mosq_ = mosquitto_new(cfg_.client_id.c_str(), /*clean_session=*/false, this);
  if (!mosq_) return internal_err("mosquitto_new failed (client id '" + cfg_.client_id + "')");
  // Our own thread runs the loop while others publish: libmosquitto must lock.
  mosquitto_threaded_set(mosq_, true);
  mosquitto_int_option(mosq_, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V311);
  mosquitto_int_option(mosq_, MOSQ_OPT_TCP_NODELAY, 1);
  mosquitto_int_option(mosq_, MOSQ_OPT_SEND_MAXIMUM, cfg_.max_inflight);
  mosquitto_int_option(mosq_, MOSQ_OPT_RECEIVE_MAXIMUM, cfg_.max_inflight);
  mosquitto_max_inflight_messages_set(mosq_, static_cast<unsigned int>(cfg_.max_inflight));
  mosquitto_connect_callback_set(mosq_, &MqttClient::on_connect);
  mosquitto_disconnect_callback_set(mosq_, &MqttClient::on_disconnect);
  mosquitto_subscribe_callback_set(mosq_, &MqttClient::on_subscribe);
  mosquitto_message_callback_set(mosq_, &MqttClient::on_message);
  mosquitto_publish_callback_set(mosq_, &MqttClient::on_publish);
  mosquitto_log_callback_set(mosq_, &MqttClient::on_log);
  if (!cfg_.ca.empty()) {
    int rc = mosquitto_tls_set(mosq_, cfg_.ca.c_str(), nullptr,
                               cfg_.cert.empty() ? nullptr : cfg_.cert.c_str(),
                               cfg_.key.empty() ? nullptr : cfg_.key.c_str(), nullptr);
    if (rc != MOSQ_ERR_SUCCESS)
      return invalid_err("mqtt tls (ca " + cfg_.ca + ", cert " + cfg_.cert + ", key " + cfg_.key +
                         "): " + mosquitto_strerror(rc));
    rc = mosquitto_tls_opts_set(mosq_, 1 /*SSL_VERIFY_PEER*/, "tlsv1.2", nullptr);
    if (rc != MOSQ_ERR_SUCCESS) return invalid_err(std::string("mqtt tls opts: ") + mosquitto_strerror(rc));
  }
  down_since_ms_ = now_ms();
  stop_requested_ = false;
  thread_ = std::thread([this] { run(); });
  return {};
}

void MqttClient::stop() {
  if (!thread_.joinable()) return;
  {
    std::lock_guard<std::mutex> lock(wake_mu_);
    stop_requested_ = true;
  }
  wake_.notify_all();
  thread_.join();
  connected_ = false;
  subscribed_ = false;
}

bool MqttClient::wait_or_stop(long long ms) {
  std::unique_lock<std::mutex> lock(wake_mu_);
  return wake_.wait_for(lock, std::chrono::milliseconds(ms), [this] { return stop_requested_.load(); });
}

bool MqttClient::open_socket(std::string& why) {
  // The first call stores host, port and keepalive; later ones reuse them. Both only start
  // the TCP connect (non-blocking); the TLS handshake and CONNACK happen in mosquitto_loop.
  static_assert(MOSQ_ERR_SUCCESS == 0, "libmosquitto success code");
  errno = 0;
  const int rc = ever_subscribed_ || failed_attempts_ > 0
                     ? mosquitto_reconnect_async(mosq_)
                     : mosquitto_connect_async(mosq_, cfg_.host.c_str(), cfg_.port, cfg_.keepalive);
  if (rc != MOSQ_ERR_SUCCESS) {
    why = rc_text(rc, errno);
    return false;
  }
  // libmosquitto (2.0.11) does not notice a non-blocking connect that failed: with TLS its
  // loop reports success while every write fails, spinning a core (thousands of select and
  // write calls a second) and never retrying. So wait for the TCP connect here and ask the
  // socket how it went; the next attempt closes the failed socket.
  const int fd = mosquitto_socket(mosq_);
  if (fd < 0) {
    why = "no socket after connect";
    return false;
  }
  const long long deadline = steady_now_ms() + cfg_.connect_timeout_ms;
  for (;;) {
    if (stop_requested_) {
      why = "stopping";
      return false;
    }
    pollfd p{fd, POLLOUT, 0};
    const int n = ::poll(&p, 1, 200);
    if (n > 0 && (p.revents & (POLLERR | POLLHUP))) {
      // libmosquitto may already have consumed the socket error (its first TLS write got
      // ECONNREFUSED), so SO_ERROR can be 0 here: the hang-up is the answer.
      int err = 0;
      socklen_t len = sizeof err;
      ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
      why = err != 0 ? std::strerror(err) : "connection refused or closed";
      return false;
    }
    if (n > 0) break;
    if (n < 0 && errno != EINTR) {
      why = std::string("poll: ") + std::strerror(errno);
      return false;
    }
    if (steady_now_ms() > deadline) {
      why = "TCP connect timed out after " + std::to_string(cfg_.connect_timeout_ms) + " ms";
      return false;
    }
  }
  int err = 0;
  socklen_t len = sizeof err;
  if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
  if (err != 0) {
    why = std::strerror(err);
    return false;
  }
  return true;
}

void MqttClient::link_lost(const std::string& why) {
  const bool was_usable = subscribed_.exchange(false);
  connected_ = false;
  const long long now = now_ms();
  if (was_usable) down_since_ms_ = now;
  set_last_error(why);
  {
    // Offers waiting for a PUBACK on the lost connection: the controller re-sends every
    // in-flight offer after reconnecting, so these callbacks would only pile up.
    std::lock_guard<std::mutex> lock(ack_mu_);
    pending_acks_.clear();
    link_generation_++;  // under ack_mu_: no publish_acked in between records a stale id
  }
  if (was_usable) {
    logged_failures_ = 0;
    last_log_ms_ = now;
    log_warn("mqtt: lost the link to " + describe() + ": " + why + "; reconnecting");
    return;
  }
  failed_attempts_++;
  logged_failures_++;
  if (logged_failures_ <= kLogFirstFailures || now - last_log_ms_ >= kLogEveryMs) {
    last_log_ms_ = now;
    log_warn("mqtt: connect to " + describe() + " failed (" + why + "), attempt " +
             std::to_string(logged_failures_) + " of this outage; retrying with back-off" +
             (logged_failures_ == kLogFirstFailures ? " (logged once a minute from now)" : ""));
  }
}

void MqttClient::run() {
  std::mt19937_64 rng{std::random_device{}()};
  while (!stop_requested_) {
    std::string why;
    if (open_socket(why)) {
      const long long opened = steady_now_ms();
      bool timed_out = false;
      while (!stop_requested_) {
        errno = 0;
        const int rc = mosquitto_loop(mosq_, 200, 1);
        if (rc != MOSQ_ERR_SUCCESS) {
          if (!timed_out) why = rc_text(rc, errno);
          break;
        }
        if (!subscribed_ && !timed_out && steady_now_ms() - opened > cfg_.connect_timeout_ms) {
          // A broker that accepts TCP but never answers (overloaded, half-open, a TLS peer
          // that stalls): cut the socket; the next loop call reports the loss.
          timed_out = true;
          why = std::string("no ") + (connected_ ? "SUBACK" : "CONNACK") + " within " +
                std::to_string(cfg_.connect_timeout_ms) + " ms";
          const int fd = mosquitto_socket(mosq_);
          if (fd >= 0) ::shutdown(fd, SHUT_RDWR);
        }
      }
      if (stop_requested_) break;
    }
    link_lost(why);
    const long long delay = full_jitter_delay_ms(attempt_++, cfg_.reconnect_base_ms,
                                                 cfg_.reconnect_max_ms, rng());
    log(LogLevel::debug, "mqtt: next connect attempt in " + std::to_string(delay) + " ms");
    if (wait_or_stop(delay)) break;
  }
  // Stop: a clean DISCONNECT (no last will), flushed within a second.
  if (connected_) {
    mosquitto_disconnect(mosq_);
    const long long until = steady_now_ms() + 1000;
    while (steady_now_ms() < until && mosquitto_loop(mosq_, 100, 1) == MOSQ_ERR_SUCCESS) {
    }
  }
}

bool MqttClient::publish(const std::string& topic, const void* data, std::size_t len, int qos,
                         bool retain) {
  if (!mosq_) return false;
  int rc = mosquitto_publish(mosq_, nullptr, topic.c_str(), static_cast<int>(len), data, qos, retain);
  if (rc != MOSQ_ERR_SUCCESS && rc != MOSQ_ERR_NO_CONN) {
    log_warn("mqtt publish " + topic + ": " + mosquitto_strerror(rc));
    return false;
  }
  // MOSQ_ERR_NO_CONN: QoS>0 messages are queued by libmosquitto and sent after reconnect.
  return rc == MOSQ_ERR_SUCCESS || qos > 0;
}

bool MqttClient::publish_acked(const std::string& topic, const void* data, std::size_t len,
                               int qos, bool retain, std::function<void()> acked) {
  if (!mosq_) return false;
  // Held across the publish so the network thread's on_publish cannot look the id up
  // before it is recorded.
  std::lock_guard<std::mutex> lock(ack_mu_);
  int mid = 0;
  int rc = mosquitto_publish(mosq_, &mid, topic.c_str(), static_cast<int>(len), data, qos, retain);
  if (rc != MOSQ_ERR_SUCCESS) {
    log_warn("mqtt publish " + topic + ": " + mosquitto_strerror(rc));
    return false;
  }
  if (acked) pending_acks_[mid] = std::move(acked);
  return true;
}

void MqttClient::on_publish(mosquitto*, void* self, int mid) {
  auto* c = static_cast<MqttClient*>(self);
  std::function<void()> cb;
  {
    std::lock_guard<std::mutex> lock(c->ack_mu_);
    auto it = c->pending_acks_.find(mid);
    if (it == c->pending_acks_.end()) return;
    cb = std::move(it->second);
    c->pending_acks_.erase(it);
  }
  cb();
  if (c->ctl_) c->ctl_->offer_acks_arrived();
}

void MqttClient::on_connect(mosquitto* m, void* self, int rc) {
  auto* c = static_cast<MqttClient*>(self);
  if (rc != 0) {
    const std::string why = std::string("refused by the broker: ") + mosquitto_connack_string(rc);
    c->set_last_error(why);
    log_warn("mqtt: connect to " + c->describe() + " " + why);
    return;  // libmosquitto closes the socket; run() retries with back-off
  }
  c->connected_ = true;
  std::string sub = c->cfg_.prefix + "/dev/+/up/#";
  int mid = 0;
  int src = mosquitto_subscribe(m, &mid, sub.c_str(), 1);
  c->sub_mid_ = mid;
  if (src != MOSQ_ERR_SUCCESS)
    log_error("mqtt: subscribe " + sub + ": " + mosquitto_strerror(src));
  else
    log(LogLevel::debug, "mqtt: connected to " + c->describe() + ", subscribing " + sub);
}

void MqttClient::on_disconnect(mosquitto*, void* self, int) {
  static_cast<MqttClient*>(self)->connected_ = false;
  // run() sees the failed loop call and does the rest (subscribed_, back-off, logging).
}

void MqttClient::on_subscribe(mosquitto*, void* self, int mid, int qos_count, const int* granted) {
  auto* c = static_cast<MqttClient*>(self);
  if (mid != c->sub_mid_) return;
  if (qos_count < 1 || granted[0] > 2) {
    const std::string why = "subscription refused by the broker (check the ACL for " +
                            c->cfg_.client_id + ")";
    c->set_last_error(why);
    log_error("mqtt: " + why);
    return;  // not usable: the connect timeout drops it and retries
  }
  const long long now = now_ms();
  const bool reconnect = c->ever_subscribed_.exchange(true);
  const long long down_since = c->down_since_ms_.load();
  if (reconnect) {
    c->reconnects_++;
    c->last_outage_ms_ = down_since > 0 ? now - down_since : 0;
    log_info("mqtt: link to " + c->describe() + " usable again after " +
             std::to_string(c->last_outage_ms_.load()) + " ms (" +
             std::to_string(c->attempt_) + " failed attempts)");
  } else {
    log_info("mqtt: connected to " + c->describe() + ", subscribed (granted qos " +
             std::to_string(granted[0]) + ")");
  }
  c->attempt_ = 0;
  c->logged_failures_ = 0;
  c->last_up_ms_ = now;
  c->down_since_ms_ = 0;
  c->subscribed_ = true;
  if (c->ctl_) c->ctl_->on_connected(reconnect);
}

void MqttClient::on_message(mosquitto*, void* self, const mosquitto_message* msg) {
  auto* c = static_cast<MqttClient*>(self);
  if (!c->ctl_ || !msg || !msg->topic) return;
  c->ctl_->on_message(msg->topic, msg->payload,
                      msg->payloadlen > 0 ? static_cast<std::size_t>(msg->payloadlen) : 0,
                      msg->retain);
}

void MqttClient::on_log(mosquitto*, void*, int level, const char* str) {
  if (level & (MOSQ_LOG_ERR | MOSQ_LOG_WARNING)) log_warn(std::string("mosquitto: ") + str);
}

}  // namespace ota::service
