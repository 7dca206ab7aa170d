#include "ota/service/mqtt.hpp"

#include <mosquitto.h>

#include <mutex>

#include "ota/service/log.hpp"

namespace ota::service {
namespace {
std::once_flag g_lib_once;
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

Status MqttClient::start() {
  mosq_ = mosquitto_new(cfg_.client_id.c_str(), /*clean_session=*/false, this);
  if (!mosq_) return internal_err("mosquitto_new failed (client id '" + cfg_.client_id + "')");
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
  mosquitto_reconnect_delay_set(mosq_, 1, 10, true);
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
  int rc = mosquitto_connect_async(mosq_, cfg_.host.c_str(), cfg_.port, cfg_.keepalive);
  if (rc != MOSQ_ERR_SUCCESS)
    log_warn("mqtt: connect to " + describe() + ": " + mosquitto_strerror(rc) +
             " (will keep retrying)");
  rc = mosquitto_loop_start(mosq_);
  if (rc != MOSQ_ERR_SUCCESS) return internal_err(std::string("mqtt loop start: ") + mosquitto_strerror(rc));
  started_ = true;
  return {};
}

void MqttClient::stop() {
  if (!mosq_ || !started_.exchange(false)) return;
  mosquitto_disconnect(mosq_);
  mosquitto_loop_stop(mosq_, /*force=*/false);
  connected_ = false;
  subscribed_ = false;
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
    log_warn("mqtt: connect to " + c->describe() + " refused: " + mosquitto_connack_string(rc));
    return;
  }
  c->connected_ = true;
  std::string sub = c->cfg_.prefix + "/dev/+/up/#";
  int mid = 0;
  int src = mosquitto_subscribe(m, &mid, sub.c_str(), 1);
  c->sub_mid_ = mid;
  if (src != MOSQ_ERR_SUCCESS)
    log_error("mqtt: subscribe " + sub + ": " + mosquitto_strerror(src));
  else
    log_info("mqtt: connected to " + c->describe() + ", subscribing " + sub);
}

void MqttClient::on_disconnect(mosquitto*, void* self, int rc) {
  auto* c = static_cast<MqttClient*>(self);
  c->connected_ = false;
  c->subscribed_ = false;
  if (rc != 0) log_warn("mqtt: disconnected from " + c->describe() + " (rc " + std::to_string(rc) + "); reconnecting");
}

void MqttClient::on_subscribe(mosquitto*, void* self, int mid, int qos_count, const int* granted) {
  auto* c = static_cast<MqttClient*>(self);
  if (mid != c->sub_mid_) return;
  if (qos_count < 1 || granted[0] > 2) {
    log_error("mqtt: subscription refused by the broker (check the ACL for " + c->cfg_.client_id + ")");
    return;
  }
  c->subscribed_ = true;
  log_info("mqtt: subscribed (granted qos " + std::to_string(granted[0]) + ")");
  if (c->ctl_) c->ctl_->on_connected();
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
