// The kit's MQTT connection: TLS with a client certificate from our PKI, one background
// network thread (libmosquitto's loop thread), an inbox of received messages with their
// retain flag and arrival time.
//
// Why not the device port's MosquittoTransport: the kit must tell a stale retained hello from
// a fresh one (the retain flag) and know when a subscription is in place (SUBACK), which the
// device port neither needs nor reports. Threads: the loop thread fills the inbox; every other
// call is made from the kit's main thread.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <set>
#include <string>

struct mosquitto;
struct mosquitto_message;

namespace ota::conformance {

using SteadyClock = std::chrono::steady_clock;

struct LinkSettings {
  std::string host = "127.0.0.1";
  int port = 8883;
  std::string ca, cert, key;  // TLS files (PEM); the certificate CN is the client id
  std::string client_id;      // the broker makes the CN the client id anyway
  int keepalive_s = 30;
};

struct LinkMessage {
  std::string topic;
  std::string payload;  // binary-safe
  bool retained = false;  // delivered from the broker's retained store (not live)
  SteadyClock::time_point at;
};

class Link {
 public:
  Link() = default;
  ~Link();
  Link(const Link&) = delete;
  Link& operator=(const Link&) = delete;

  // Connects and waits for CONNACK up to `deadline`, then starts the network thread. False
  // with `error` naming what failed (TLS files, refused, no answer).
  bool connect(const LinkSettings& settings, std::chrono::milliseconds deadline,
               std::string& error);
  void disconnect();
  bool connected() const;
  // SUBSCRIBE at QoS 1 and wait for the SUBACK. The network thread reconnects by itself
  // after a loss and then subscribes again.
  bool subscribe(const std::string& pattern, std::chrono::milliseconds deadline,
                 std::string& error);
  // PUBLISH at QoS 1 (queued; the network thread sends it). False when libmosquitto refused.
  bool publish(const std::string& topic, const std::string& payload, bool retain = false);
  // The next message received, waiting until `until` at most.
  std::optional<LinkMessage> next(SteadyClock::time_point until);
  // Connections lost since connect() (the broker closed it).
  int lost() const;

 private:
  static void on_connect_cb(mosquitto*, void*, int);
  static void on_disconnect_cb(mosquitto*, void*, int);
  static void on_subscribe_cb(mosquitto*, void*, int, int, const int*);
  static void on_message_cb(mosquitto*, void*, const mosquitto_message*);

  mosquitto* mosq_ = nullptr;
  bool loop_running_ = false;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  int connack_ = -1;
  bool connected_ = false;
  int lost_ = 0;
  std::set<int> subacked_;
  std::set<std::string> patterns_;  // subscribed again after a reconnect (clean session)
  std::deque<LinkMessage> inbox_;
};

}  // namespace ota::conformance
