#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <random>
#include <string>

#include "ota/agent/ports.hpp"

struct mosquitto;
struct mosquitto_message;
struct ssl_ctx_st;  // OpenSSL's SSL_CTX

namespace ota::agent::linux_port {

struct MqttSettings {
  std::string host = "127.0.0.1";
  int port = 8883;
  std::string ca_file, cert_file, key_file;  // TLS: CA, client certificate (CN = device id)
  std::string client_id;
  int keepalive_s = 20;
  std::string will_topic, will_payload;  // last will, published retained at QoS 1
  // Reconnect back-off with full jitter: after n failed attempts in a row the next one
  // waits a uniform random time in [0, min(reconnect_cap, reconnect_base * 2^n)], so a fleet
  // that lost its broker at the same instant does not come back in lock-step. Only a CONNACK
  // that accepts the connection resets n.
  std::chrono::milliseconds reconnect_base{200};
  std::chrono::milliseconds reconnect_cap{5000};
  // A socket whose CONNACK has not arrived after this long counts as a failed attempt (a
  // broker that accepts TCP but is too busy or half-started to answer).
  std::chrono::milliseconds connack_timeout{10000};
  // stop(): how long to wait for the broker's PUBACK of the offline message.
  std::chrono::milliseconds offline_ack_timeout{1000};
  std::uint64_t jitter_seed = 0;  // 0: seeded from std::random_device (tests pin it)
  // A context from make_tls_context() for these settings, used instead of building one
  // from the files at start(): ota-devsim's devices keep theirs across simulated power
  // cycles (a real device keeps its key in flash, not as PEM text to decode at each boot),
  // and with it the TLS session to resume after the reboot (as a device keeps a session
  // ticket in memory that survives a reset).
  std::shared_ptr<ssl_ctx_st> tls_context;
};

// The client TLS context of `s` (CA, certificate, key, broker host check); nullptr with
// `error` naming the file that could not be used. Building one costs about a millisecond
// of PEM decoding in OpenSSL 3, several when threads build theirs at once. The context
// keeps the TLS session of its last connection and resumes it at the next (a device that
// reconnects after a reboot or a lost link skips the certificate exchange and signatures).
std::shared_ptr<ssl_ctx_st> make_tls_context(const MqttSettings& s, std::string& error);

// The longest reconnect delay after `failed_attempts` failures in a row: base * 2^n, capped.
std::chrono::milliseconds reconnect_delay_ceiling(std::uint32_t failed_attempts,
                                                  std::chrono::milliseconds base,
                                                  std::chrono::milliseconds cap);
// Full jitter: `random` (a uniformly distributed 64-bit value) mapped onto
// [0, reconnect_delay_ceiling(failed_attempts, base, cap)].
std::chrono::milliseconds reconnect_delay(std::uint32_t failed_attempts,
                                          std::chrono::milliseconds base,
                                          std::chrono::milliseconds cap, std::uint64_t random);

// Transport port on libmosquitto with TLS. Single-threaded: poll() (or step()) runs the
// network loop and calls the handlers on the caller's thread, so the agent needs no locks.
// Two ways to drive it, never mixed on one transport:
//  - poll(): blocking, one transport per thread (ota-agent, tests); stop() is blocking too.
//  - step(): non-blocking, for an event loop that drives many transports on one thread
//    (ota-devsim): the loop waits on socket() itself (epoll/poll, so descriptors above
//    FD_SETSIZE work, which mosquitto_loop()'s select() refuses), then calls step() with
//    what it saw, and again by the time step() returned at the latest. begin_stop() is the
//    non-blocking stop(). The reconnect back-off and the CONNACK timeout are the same.
class MosquittoTransport final : public Transport {
 public:
  using MessageHandler = std::function<void(const char*, const std::uint8_t*, std::size_t)>;
  using ConnectHandler = std::function<void()>;

  explicit MosquittoTransport(MqttSettings settings);
  ~MosquittoTransport() override;
  MosquittoTransport(const MosquittoTransport&) = delete;
  MosquittoTransport& operator=(const MosquittoTransport&) = delete;

  void set_handlers(ConnectHandler on_connect, MessageHandler on_message);
  // Sets up TLS; the first poll() or step() connects. False with `error` for configuration
  // errors (a broker that is down is not an error: poll() and step() keep retrying).
  bool start(std::string& error);
  // Network I/O for up to `timeout_ms`; reconnects with back-off when the link is down.
  void poll(int timeout_ms);
  // Non-blocking I/O: reads when `readable`, writes when `writable` or when output is queued,
  // then keepalive; (re)connects when the back-off has passed and drops an attempt whose
  // CONNACK is late. Returns when it must be called again at the latest (socket() and
  // wants_write() may differ afterwards).
  std::chrono::steady_clock::time_point step(bool readable, bool writable);
  // The socket to wait on, -1 while there is none. A new connection attempt may reuse the
  // number of a closed socket, so re-arm the wait after every step().
  int socket() const;
  // Output is queued: wait for the socket to be writable too.
  bool wants_write() const;
  // Non-blocking stop(): when connected, publishes the offline message; step() sends the
  // DISCONNECT once its PUBACK arrived or offline_ack_timeout passed. stopped() then.
  void begin_stop();
  bool stopped() const { return stop_ == StopPhase::done; }
  // Cuts the TCP connection without a DISCONNECT (the broker publishes the last will).
  void drop();
  // Clean shutdown: when connected, publishes the offline message (will_payload, retained,
  // QoS 1) on the will topic and waits up to offline_ack_timeout for its PUBACK, then sends
  // DISCONNECT. A DISCONNECT discards the last will, so without the explicit offline message
  // the retained hello would keep the device "online" until the controller's heartbeat
  // timeout.
  void stop();

  bool connected() const override { return connected_; }
  bool subscribe(const char* topic, int qos) override;
  bool unsubscribe(const char* topic) override;
  bool publish(const char* topic, const void* payload, std::size_t len, int qos,
               bool retain) override;

  std::uint64_t connects() const { return connects_; }
  // Connections whose TLS handshake resumed the session of an earlier one (make_tls_context).
  std::uint64_t resumed_connects() const { return resumed_connects_; }
  // Connection attempts made (each may open a new socket, possibly under the old number).
  std::uint64_t connect_attempts() const { return connect_attempts_; }
  // Connection attempts that failed since the broker last accepted one (diagnostics, tests).
  std::uint32_t failed_attempts() const { return failed_attempts_; }

 private:
  enum class Link { down, awaiting_connack, up };
  enum class StopPhase { running, awaiting_offline_ack, done };

  static void on_connect_cb(mosquitto*, void* self, int rc);
  static void on_disconnect_cb(mosquitto*, void* self, int rc);
  static void on_publish_cb(mosquitto*, void* self, int mid);
  static void on_message_cb(mosquitto*, void* self, const mosquitto_message* msg);
  // blocking: connect() waits for TCP (poll()); otherwise it returns at once and step() sees
  // the connection come up (a dropped SYN would stall a blocking connect for a second, and
  // with it every device of an event loop).
  void try_connect(bool blocking);
  bool handshake_failed();
  void link_lost();
  void schedule_next_attempt();
  void publish_offline_and_wait();
  bool publish_offline();
  bool service_socket(bool readable, bool writable);
  void finish_stop();

  MqttSettings settings_;
  mosquitto* mosq_ = nullptr;
  Link link_ = Link::down;
  bool connected_ = false;
  bool ever_connected_ = false;  // mosquitto_reconnect() needs one mosquitto_connect() first
  bool tcp_pending_ = false;     // a non-blocking connect not yet seen ready
  std::uint64_t connects_ = 0;
  std::uint64_t resumed_connects_ = 0;
  std::uint64_t connect_attempts_ = 0;
  std::uint32_t failed_attempts_ = 0;
  std::chrono::steady_clock::time_point next_attempt_{};
  std::chrono::steady_clock::time_point connack_deadline_{};
  std::mt19937_64 jitter_rng_;
  int offline_mid_ = -1;  // message id of the offline message stop() waits for
  bool offline_acked_ = false;
  StopPhase stop_ = StopPhase::running;  // begin_stop() / step() only
  std::chrono::steady_clock::time_point offline_ack_deadline_{};
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
