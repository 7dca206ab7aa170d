// libmosquitto client of the controller: TLS, persistent session, subscription to
// <prefix>/dev/+/up/# on every (re)connect.
//
// The client owns its connection's life. libmosquitto's own loop thread
// (mosquitto_loop_start) ends for good on some errors (TLS EPROTO after a broker restart,
// some keepalive timeouts) and nothing restarts it; so this class runs its own network
// thread that drives mosquitto_loop() and reconnects after every kind of loss, forever, with
// exponential back-off and full jitter. A connection counts as up only once the broker
// accepted it (CONNACK) and granted the subscription; a socket that gets neither within
// connect_timeout_ms is dropped and retried. stop() wakes the thread at once, also while it
// waits for a broker that is not up.
//
// Threads: the network thread (run()) calls every libmosquitto callback, so the Controller's
// on_message / on_connected / offer_acks_arrived run there. publish() and link_status() may
// be called from any thread.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>

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
  // Reconnect back-off: attempt n waits uniform [0, min(max, base * 2^n)] ms (full jitter).
  long long reconnect_base_ms = 500;
  long long reconnect_max_ms = 5000;
  // A socket without CONNACK + SUBACK after this long is dropped and retried.
  long long connect_timeout_ms = 10000;
};

// Full-jitter exponential back-off: a delay in [0, min(cap_ms, base_ms * 2^attempt)], picked
// by `random` (any 64-bit value, e.g. from a PRNG). attempt 0 is the first retry.
long long full_jitter_delay_ms(int attempt, long long base_ms, long long cap_ms,
                               std::uint64_t random);

class MqttClient : public Publisher {
 public:
  explicit MqttClient(MqttConfig cfg);
  ~MqttClient() override;
  MqttClient(const MqttClient&) = delete;
  MqttClient& operator=(const MqttClient&) = delete;

  // Messages go to `ctl` (set before start(), cleared only after stop()).
  void set_controller(Controller* ctl) { ctl_ = ctl; }
  // Configures the client and starts the network thread, which connects in the background
  // (a broker that is down is not an error). Errors: bad TLS files or options.
  Status start();
  // Clean DISCONNECT if connected, then ends the network thread. Returns within about a
  // second whatever state the link is in.
  void stop();

  bool publish(const std::string& topic, const void* data, std::size_t len, int qos,
               bool retain) override;
  bool publish_acked(const std::string& topic, const void* data, std::size_t len, int qos,
                     bool retain, std::function<void()> acked) override;

  bool connected() const { return connected_.load(); }
  bool subscribed() const { return subscribed_.load(); }
  bool ready() const override { return subscribed(); }
  LinkStatus link_status() const override;
  std::uint64_t link_generation() const override { return link_generation_.load(); }
  std::string describe() const;

 private:
  static void on_connect(mosquitto*, void* self, int rc);
  static void on_disconnect(mosquitto*, void* self, int rc);
  static void on_subscribe(mosquitto*, void* self, int mid, int qos_count, const int* granted);
  static void on_message(mosquitto*, void* self, const mosquitto_message* msg);
  static void on_log(mosquitto*, void* self, int level, const char* str);
  static void on_publish(mosquitto*, void* self, int mid);

  void run();  // the network thread
  // One connection attempt (TCP + TLS start); false with the reason on failure.
  bool open_socket(std::string& why);
  // The link went down (or an attempt failed): bookkeeping and a rate-limited log line.
  void link_lost(const std::string& why);
  // Waits up to `ms` or until stop() (true: stop requested).
  bool wait_or_stop(long long ms);
  void set_last_error(const std::string& e);

  MqttConfig cfg_;
  mosquitto* mosq_ = nullptr;
  Controller* ctl_ = nullptr;
  std::thread thread_;
  std::mutex wake_mu_;
  std::condition_variable wake_;
  std::atomic<bool> stop_requested_{false};
  std::atomic<bool> connected_{false};   // CONNACK accepted
  std::atomic<bool> subscribed_{false};  // SUBACK granted: the link is usable
  std::atomic<bool> ever_subscribed_{false};
  std::atomic<std::uint64_t> reconnects_{0};        // usable again after a loss
  std::atomic<std::uint64_t> link_generation_{0};   // links lost so far (Publisher)
  std::atomic<std::uint64_t> failed_attempts_{0};   // attempts that never became usable
  std::atomic<long long> down_since_ms_{0};         // unix ms the link went down; 0: up
  std::atomic<long long> last_up_ms_{0};            // unix ms it last became usable
  std::atomic<long long> last_outage_ms_{-1};       // length of the last outage
  int sub_mid_ = -1;         // network thread only
  int attempt_ = 0;          // network thread only: consecutive failures, reset on SUBACK
  long long last_log_ms_ = 0;  // network thread only: rate limit of the failure log
  std::uint64_t logged_failures_ = 0;
  mutable std::mutex error_mu_;
  std::string last_error_;
  std::mutex ack_mu_;
  std::map<int, std::function<void()>> pending_acks_;  // message id -> callback
};

}  // namespace ota::service
