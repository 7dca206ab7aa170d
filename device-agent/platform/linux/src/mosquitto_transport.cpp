#include "ota/agent/linux/mosquitto_transport.hpp"

#include <mosquitto.h>
#include <sys/socket.h>

#include <mutex>
#include <thread>

namespace ota::agent::linux_port {

MosquittoTransport::MosquittoTransport(MqttSettings settings) : settings_(std::move(settings)) {
  static std::once_flag init_once;
  std::call_once(init_once, [] { mosquitto_lib_init(); });
}

MosquittoTransport::~MosquittoTransport() {
  if (mosq_ != nullptr) {
    if (!link_down_) mosquitto_disconnect(mosq_);
    mosquitto_destroy(mosq_);
  }
}

void MosquittoTransport::set_handlers(ConnectHandler on_connect, MessageHandler on_message) {
  on_connect_ = std::move(on_connect);
  on_message_ = std::move(on_message);
}

bool MosquittoTransport::start(std::string& error) {
  mosq_ = mosquitto_new(settings_.client_id.c_str(), true, this);
  if (mosq_ == nullptr) {
    error = "mosquitto_new failed for client " + settings_.client_id;
    return false;
  }
  mosquitto_int_option(mosq_, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V311);
  // Without TCP_NODELAY every request/response round trip can stall ~40 ms (Nagle).
  mosquitto_int_option(mosq_, MOSQ_OPT_TCP_NODELAY, 1);
  int rc = mosquitto_tls_set(mosq_, settings_.ca_file.c_str(), nullptr,
                             settings_.cert_file.c_str(), settings_.key_file.c_str(), nullptr);
  if (rc != MOSQ_ERR_SUCCESS) {
    error = std::string("TLS setup (ca ") + settings_.ca_file + ", cert " + settings_.cert_file +
            "): " + mosquitto_strerror(rc);
    return false;
  }
  if (!settings_.will_topic.empty()) {
    rc = mosquitto_will_set(mosq_, settings_.will_topic.c_str(),
                            static_cast<int>(settings_.will_payload.size()),
                            settings_.will_payload.data(), 1, true);
    if (rc != MOSQ_ERR_SUCCESS) {
      error = std::string("last will: ") + mosquitto_strerror(rc);
      return false;
    }
  }
  mosquitto_connect_callback_set(mosq_, &on_connect_cb);
  mosquitto_disconnect_callback_set(mosq_, &on_disconnect_cb);
  mosquitto_message_callback_set(mosq_, &on_message_cb);
  try_connect();
  return true;
}

void MosquittoTransport::try_connect() {
  const auto now = std::chrono::steady_clock::now();
  if (now < next_attempt_) return;
  const int rc = ever_connected_ ? mosquitto_reconnect(mosq_)
                                 : mosquitto_connect(mosq_, settings_.host.c_str(), settings_.port,
                                                     settings_.keepalive_s);
  if (rc == MOSQ_ERR_SUCCESS) {
    ever_connected_ = true;
    link_down_ = false;
    backoff_ = std::chrono::milliseconds(100);
  } else {
    next_attempt_ = now + backoff_;
    if (backoff_ < std::chrono::milliseconds(2000)) backoff_ *= 2;
  }
}

void MosquittoTransport::poll(int timeout_ms) {
  if (mosq_ == nullptr) return;
  if (link_down_) {
    try_connect();
    if (link_down_) {
      // Pace the caller's loop while there is no socket to wait on.
      std::this_thread::sleep_for(std::chrono::milliseconds(timeout_ms));
      return;
    }
  }
  if (mosquitto_loop(mosq_, timeout_ms, 1) != MOSQ_ERR_SUCCESS) {
    connected_ = false;
    link_down_ = true;  // reconnect after one back-off period, not on every poll
    next_attempt_ = std::chrono::steady_clock::now() + backoff_;
  }
}

void MosquittoTransport::drop() {
  const int fd = mosq_ != nullptr ? mosquitto_socket(mosq_) : -1;
  if (fd >= 0) ::shutdown(fd, SHUT_RDWR);
  connected_ = false;
}

void MosquittoTransport::stop() {
  if (mosq_ != nullptr && connected_) {
    mosquitto_disconnect(mosq_);
    mosquitto_loop(mosq_, 100, 1);
  }
  connected_ = false;
}

bool MosquittoTransport::subscribe(const char* topic, int qos) {
  return mosq_ != nullptr && mosquitto_subscribe(mosq_, nullptr, topic, qos) == MOSQ_ERR_SUCCESS;
}

bool MosquittoTransport::publish(const char* topic, const void* payload, std::size_t len, int qos,
                                 bool retain) {
  return mosq_ != nullptr && connected_ &&
         mosquitto_publish(mosq_, nullptr, topic, static_cast<int>(len), payload, qos, retain) ==
             MOSQ_ERR_SUCCESS;
}

void MosquittoTransport::on_connect_cb(mosquitto*, void* self, int rc) {
  auto* t = static_cast<MosquittoTransport*>(self);
  if (rc != 0) return;  // refused (bad certificate, ACL): poll() retries with back-off
  t->connected_ = true;
  ++t->connects_;
  if (t->on_connect_) t->on_connect_();
}

void MosquittoTransport::on_disconnect_cb(mosquitto*, void* self, int) {
  static_cast<MosquittoTransport*>(self)->connected_ = false;
}

void MosquittoTransport::on_message_cb(mosquitto*, void* self, const mosquitto_message* msg) {
  auto* t = static_cast<MosquittoTransport*>(self);
  if (t->on_message_) {
    t->on_message_(msg->topic, static_cast<const std::uint8_t*>(msg->payload),
                   static_cast<std::size_t>(msg->payloadlen));
  }
}

std::uint64_t SystemClock::now_ms() {
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                        std::chrono::steady_clock::now().time_since_epoch())
                                        .count());
}

std::uint64_t SystemClock::unix_seconds() {
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::seconds>(
                                        std::chrono::system_clock::now().time_since_epoch())
                                        .count());
}

}  // namespace ota::agent::linux_port
