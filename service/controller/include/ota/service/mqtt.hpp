// libmosquitto client of the controller: TLS, persistent session, automatic reconnect,
// subscription to <prefix>/dev/+/up/# on every (re)connect.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <mutex>
#include <string>

#include "ota/service/controller.hpp"
#include "ota/service/result.hpp"

struct mosquitto;
struct mosquitto_message;

namespace ota::service {

struct MqttConfig {
  std::string host = "127.0.0.1";
  int port = 8883;
  std::string ca, cert, key;  // TLS files; TLS is off when ca is empty
  std::string client_id = "ota-controller";
  std::string prefix = "ota/v1";
  int keepalive = 30;
  int max_inflight = 1000;
};

class MqttClient : public Publisher {
 public:
  explicit MqttClient(MqttConfig cfg);
  ~MqttClient() override;
  MqttClient(const MqttClient&) = delete;
  MqttClient& operator=(const MqttClient&) = delete;

  // Messages go to `ctl` (set before start()).
  void set_controller(Controller* ctl) { ctl_ = ctl; }
  Status start();  // connect asynchronously and start the network thread
  void stop();

  bool publish(const std::string& topic, const void* data, std::size_t len, int qos,
               bool retain) override;
  bool publish_acked(const std::string& topic, const void* data, std::size_t len, int qos,
                     bool retain, std::function<void()> acked) override;

  bool connected() const { return connected_.load(); }
  bool subscribed() const { return subscribed_.load(); }
  bool ready() const override { return subscribed(); }
  std::string describe() const;

 private:
  static void on_connect(mosquitto*, void* self, int rc);
  static void on_disconnect(mosquitto*, void* self, int rc);
  static void on_subscribe(mosquitto*, void* self, int mid, int qos_count, const int* granted);
  static void on_message(mosquitto*, void* self, const mosquitto_message* msg);
  static void on_log(mosquitto*, void* self, int level, const char* str);
  static void on_publish(mosquitto*, void* self, int mid);

  MqttConfig cfg_;
  mosquitto* mosq_ = nullptr;
  Controller* ctl_ = nullptr;
  std::atomic<bool> connected_{false};
  std::atomic<bool> subscribed_{false};
  std::atomic<bool> started_{false};
  int sub_mid_ = -1;
  std::mutex ack_mu_;
  std::map<int, std::function<void()>> pending_acks_;  // message id -> callback
};

}  // namespace ota::service
