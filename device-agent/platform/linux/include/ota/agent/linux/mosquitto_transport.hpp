#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>

#include "ota/agent/ports.hpp"

struct mosquitto;
struct mosquitto_message;

namespace ota::agent::linux_port {

struct MqttSettings {
  std::string host = "127.0.0.1";
  int port = 8883;
  std::string ca_file, cert_file, key_file;  // TLS: CA, client certificate (CN = device id)
  std::string client_id;
  int keepalive_s = 20;
  std::string will_topic, will_payload;  // last will, published retained at QoS 1
};

// Transport port on libmosquitto with TLS. Single-threaded: poll() runs the network loop
// and calls the handlers on the caller's thread, so the agent needs no locks.
class MosquittoTransport final : public Transport {
 public:
  using MessageHandler = std::function<void(const char*, const std::uint8_t*, std::size_t)>;
  using ConnectHandler = std::function<void()>;

  explicit MosquittoTransport(MqttSettings settings);
  ~MosquittoTransport() override;
  MosquittoTransport(const MosquittoTransport&) = delete;
  MosquittoTransport& operator=(const MosquittoTransport&) = delete;

  void set_handlers(ConnectHandler on_connect, MessageHandler on_message);
  // Sets up TLS and tries a first connection; false with `error` for configuration errors
  // (a broker that is down is not an error: poll() keeps retrying).
  bool start(std::string& error);
  // Network I/O for up to `timeout_ms`; reconnects with back-off when the link is down.
  void poll(int timeout_ms);
  // Cuts the TCP connection without a DISCONNECT (the broker publishes the last will).
  void drop();
  // Clean DISCONNECT and a final flush.
  void stop();

  bool connected() const override { return connected_; }
  bool subscribe(const char* topic, int qos) override;
  bool publish(const char* topic, const void* payload, std::size_t len, int qos,
               bool retain) override;

  std::uint64_t connects() const { return connects_; }

 private:
  static void on_connect_cb(mosquitto*, void* self, int rc);
  static void on_disconnect_cb(mosquitto*, void* self, int rc);
  static void on_message_cb(mosquitto*, void* self, const mosquitto_message* msg);
  void try_connect();

  MqttSettings settings_;
  mosquitto* mosq_ = nullptr;
  bool connected_ = false;
  bool link_down_ = true;        // no usable socket: poll() reconnects after the back-off
  bool ever_connected_ = false;  // mosquitto_reconnect() needs one mosquitto_connect() first
  std::uint64_t connects_ = 0;
  std::chrono::steady_clock::time_point next_attempt_{};
  std::chrono::milliseconds backoff_{100};
  ConnectHandler on_connect_;
  MessageHandler on_message_;
};

// Clock port on std::chrono.
class SystemClock final : public Clock {
 public:
  std::uint64_t now_ms() override;
  std::uint64_t unix_seconds() override;
};

}  // namespace ota::agent::linux_port
