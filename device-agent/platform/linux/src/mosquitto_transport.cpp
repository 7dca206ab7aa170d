#include "ota/agent/linux/mosquitto_transport.hpp"

#include <arpa/inet.h>
#include <mosquitto.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <sys/socket.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <thread>

namespace ota::agent::linux_port {

std::chrono::milliseconds reconnect_delay_ceiling(std::uint32_t failed_attempts,
                                                  std::chrono::milliseconds base,
                                                  std::chrono::milliseconds cap) {
  using std::chrono::milliseconds;
  if (cap <= milliseconds::zero() || base <= milliseconds::zero()) return milliseconds::zero();
  milliseconds ceiling = base;
  // Doubling stops at the cap, so neither the shift nor the count can overflow.
  for (std::uint32_t i = 0; i < failed_attempts && ceiling < cap; ++i) ceiling *= 2;
  return std::min(ceiling, cap);
}

std::chrono::milliseconds reconnect_delay(std::uint32_t failed_attempts,
                                          std::chrono::milliseconds base,
                                          std::chrono::milliseconds cap, std::uint64_t random) {
  const auto ceiling =
      static_cast<std::uint64_t>(reconnect_delay_ceiling(failed_attempts, base, cap).count());
  // The modulo bias is below 2^-40 for any ceiling a device would use.
  const std::uint64_t delay = random % (ceiling + 1);
  return std::chrono::milliseconds(static_cast<std::chrono::milliseconds::rep>(delay));
}

namespace {

std::uint64_t jitter_seed(std::uint64_t configured) {
  if (configured != 0) return configured;
  std::random_device entropy;
  return (static_cast<std::uint64_t>(entropy()) << 32) ^ entropy();
}

// The CA store of each CA file, parsed once per process and shared by every transport's
// TLS context (X509_STORE is reference-counted and read-only once built).
X509_STORE* shared_ca_store(const std::string& ca_file) {
  static std::mutex mu;
  // One reference each, kept for the life of the process. Never destroyed, so that the
  // stores stay reachable at exit (a static map's destructor would leave them to
  // LeakSanitizer as leaks; freeing them then would race transports still running).
  static auto& stores = *new std::map<std::string, X509_STORE*>();
  std::lock_guard<std::mutex> lock(mu);
  auto it = stores.find(ca_file);
  if (it != stores.end()) return it->second;
  X509_STORE* store = X509_STORE_new();
  if (store == nullptr || X509_STORE_load_file(store, ca_file.c_str()) != 1) {
    X509_STORE_free(store);
    return nullptr;
  }
  stores.emplace(ca_file, store);
  return store;
}

// TLS session resumption. A context keeps the session of its last handshake (a TLS 1.2
// session ticket or id, or a TLS 1.3 ticket) and offers it at the next one: the broker then
// skips the certificate exchange, the signatures and the key agreement, which are most of
// a connection's cost on both sides (a wave of 1,000 devices reconnecting at once after the
// update's reboot: from the last download to the last confirm 1.1-1.6 s instead of 1.9-3.3
// s, README "Performance"). The broker accepts a
// session only from the TLS context it issued it with (mosquitto builds a new one at start
// and at every SIGHUP, when it also re-reads the CRL: a revoked device cannot resume past
// the reload) and within its lifetime (two hours, OpenSSL's default); otherwise the
// handshake is a full one, and its session is kept instead. A session OpenSSL marked not
// resumable (it ended in an error) is not offered.
struct ResumableSession {
  std::mutex mu;
  SSL_SESSION* last = nullptr;  // one reference, ours
};

void free_resumable_session(void*, void* ptr, CRYPTO_EX_DATA*, int, long, void*) {
  auto* slot = static_cast<ResumableSession*>(ptr);
  if (slot == nullptr) return;
  if (slot->last != nullptr) SSL_SESSION_free(slot->last);
  delete slot;
}

int resumable_session_index() {
  static const int index =
      SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, &free_resumable_session);
  return index;
}

ResumableSession* resumable_session(SSL_CTX* ctx) {
  return static_cast<ResumableSession*>(SSL_CTX_get_ex_data(ctx, resumable_session_index()));
}

// OpenSSL's client cache callback: a new session was established; it becomes the one to offer.
int keep_new_session(SSL* ssl, SSL_SESSION* session) {
  ResumableSession* slot = resumable_session(SSL_get_SSL_CTX(ssl));
  if (slot == nullptr) return 0;  // not kept: OpenSSL frees it
  std::lock_guard<std::mutex> lock(slot->mu);
  if (slot->last != nullptr) SSL_SESSION_free(slot->last);
  slot->last = session;
  return 1;  // the reference is ours
}

// libmosquitto creates the SSL object and starts the handshake in one call, so the session
// is set from the info callback at the start of the handshake, before the ClientHello is
// built (the only hook between its SSL_new and SSL_connect).
void offer_kept_session(const SSL* ssl, int where, int) {
  if ((where & SSL_CB_HANDSHAKE_START) == 0 || SSL_is_server(ssl) || SSL_get_session(ssl) != nullptr)
    return;
  ResumableSession* slot = resumable_session(SSL_get_SSL_CTX(ssl));
  if (slot == nullptr) return;
  std::lock_guard<std::mutex> lock(slot->mu);
  if (slot->last != nullptr && SSL_SESSION_is_resumable(slot->last) == 1)
    SSL_set_session(const_cast<SSL*>(ssl), slot->last);  // takes its own reference
}

void enable_session_resumption(SSL_CTX* ctx) {
  SSL_CTX_set_ex_data(ctx, resumable_session_index(), new ResumableSession);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
  SSL_CTX_sess_set_new_cb(ctx, &keep_new_session);
  SSL_CTX_set_info_callback(ctx, &offer_kept_session);
}

std::string tls_error() {
  char buf[256] = "unknown TLS error";
  const unsigned long e = ERR_get_error();
  if (e != 0) ERR_error_string_n(e, buf, sizeof buf);
  ERR_clear_error();
  return buf;
}

}  // namespace

// The client's TLS context, built once per transport (or once per simulated device, see
// MqttSettings::tls_context). libmosquitto's own (mosquitto_tls_set)
// re-reads the CA, certificate and key files on every connection attempt, which costs
// milliseconds of PEM decoding in OpenSSL 3: enough to stall a loop that connects thousands
// of devices. Same policy as libmosquitto's default context: TLS 1.2 or later, the broker's
// certificate verified against the CA and checked against the host (DNS name or IP address
// in its subjectAltName), our certificate and key, no compression.
std::shared_ptr<ssl_ctx_st> make_tls_context(const MqttSettings& s, std::string& error) {
  std::shared_ptr<ssl_ctx_st> owner(SSL_CTX_new(TLS_client_method()), &SSL_CTX_free);
  SSL_CTX* ctx = owner.get();
  X509_STORE* ca = ctx != nullptr ? shared_ca_store(s.ca_file) : nullptr;
  if (ca == nullptr) {
    error = "CA " + s.ca_file + ": " + tls_error();
    return nullptr;
  }
  SSL_CTX_set1_cert_store(ctx, ca);
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION);
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);  // idle connections hold no buffers
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  enable_session_resumption(ctx);
  X509_VERIFY_PARAM* param = SSL_CTX_get0_param(ctx);
  unsigned char addr[16];
  const bool is_ip = ::inet_pton(AF_INET, s.host.c_str(), addr) == 1 ||
                     ::inet_pton(AF_INET6, s.host.c_str(), addr) == 1;
  X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
  const int host_ok = is_ip ? X509_VERIFY_PARAM_set1_ip_asc(param, s.host.c_str())
                            : X509_VERIFY_PARAM_set1_host(param, s.host.c_str(), 0);
  if (host_ok != 1 || SSL_CTX_use_certificate_chain_file(ctx, s.cert_file.c_str()) != 1 ||
      SSL_CTX_use_PrivateKey_file(ctx, s.key_file.c_str(), SSL_FILETYPE_PEM) != 1 ||
      SSL_CTX_check_private_key(ctx) != 1) {
    error = "cert " + s.cert_file + ", key " + s.key_file + ": " + tls_error();
    return nullptr;
  }
  return owner;
}

MosquittoTransport::MosquittoTransport(MqttSettings settings)
    : settings_(std::move(settings)), jitter_rng_(jitter_seed(settings_.jitter_seed)) {
  static std::once_flag init_once;
  std::call_once(init_once, [] { mosquitto_lib_init(); });
}

MosquittoTransport::~MosquittoTransport() {
  if (mosq_ != nullptr) {
    if (link_ != Link::down) mosquitto_disconnect(mosq_);
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
  std::string tls_detail;
  std::shared_ptr<ssl_ctx_st> tls = settings_.tls_context;
  if (tls == nullptr) tls = make_tls_context(settings_, tls_detail);
  // libmosquitto takes its own reference.
  int rc =
      tls != nullptr ? mosquitto_void_option(mosq_, MOSQ_OPT_SSL_CTX, tls.get()) : MOSQ_ERR_TLS;
  if (rc == MOSQ_ERR_SUCCESS) rc = mosquitto_int_option(mosq_, MOSQ_OPT_SSL_CTX_WITH_DEFAULTS, 0);
  if (rc != MOSQ_ERR_SUCCESS) {
    error = std::string("TLS setup (ca ") + settings_.ca_file + ", cert " + settings_.cert_file +
            "): " + (tls_detail.empty() ? mosquitto_strerror(rc) : tls_detail);
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
  mosquitto_publish_callback_set(mosq_, &on_publish_cb);
  mosquitto_message_callback_set(mosq_, &on_message_cb);
  return true;  // the first poll() or step() connects
}

void MosquittoTransport::try_connect(bool blocking) {
  ++connect_attempts_;
  int rc = MOSQ_ERR_SUCCESS;
  if (blocking) {
    rc = ever_connected_ ? mosquitto_reconnect(mosq_)
                         : mosquitto_connect(mosq_, settings_.host.c_str(), settings_.port,
                                             settings_.keepalive_s);
  } else {
    rc = ever_connected_ ? mosquitto_reconnect_async(mosq_)
                         : mosquitto_connect_async(mosq_, settings_.host.c_str(), settings_.port,
                                                   settings_.keepalive_s);
  }
  if (rc != MOSQ_ERR_SUCCESS) {
    ++failed_attempts_;
    schedule_next_attempt();
    return;
  }
  // At most TCP is up and CONNECT queued: the TLS handshake and the broker's answer are still
  // to come, so this is not yet a success (a broker that is starting up accepts TCP and then
  // drops or ignores us). on_connect_cb() decides.
  ever_connected_ = true;
  link_ = Link::awaiting_connack;
  tcp_pending_ = !blocking;
  connack_deadline_ = std::chrono::steady_clock::now() + settings_.connack_timeout;
}

void MosquittoTransport::schedule_next_attempt() {
  next_attempt_ = std::chrono::steady_clock::now() +
                  reconnect_delay(failed_attempts_, settings_.reconnect_base,
                                  settings_.reconnect_cap, jitter_rng_());
}

void MosquittoTransport::link_lost() {
  // Losing a connection the broker had accepted is not a failed attempt: the first reconnect
  // waits at most reconnect_base. Losing one it never accepted is.
  if (link_ != Link::up) ++failed_attempts_;
  link_ = Link::down;
  connected_ = false;
  schedule_next_attempt();
}

void MosquittoTransport::poll(int timeout_ms) {
  if (mosq_ == nullptr) return;
  if (link_ == Link::down) {
    if (std::chrono::steady_clock::now() >= next_attempt_) try_connect(true);
    if (link_ == Link::down) {
      // Pace the caller's loop while there is no socket to wait on.
      std::this_thread::sleep_for(std::chrono::milliseconds(timeout_ms));
      return;
    }
  }
  if (link_ == Link::awaiting_connack && std::chrono::steady_clock::now() >= connack_deadline_) {
    // Abandoned without touching the socket: mosquitto_reconnect() closes it at the next
    // attempt (shutting it down here would make that close write to a dead socket).
    link_lost();
    return;
  }
  if (mosquitto_loop(mosq_, timeout_ms, 1) != MOSQ_ERR_SUCCESS) link_lost();
}

namespace {
// mosquitto_loop_misc() sends PINGREQ and notices a silent broker; keepalive is counted in
// seconds, so once a second is often enough.
constexpr std::chrono::milliseconds kMiscInterval{1000};
}  // namespace

// A link given up on (CONNACK timeout) keeps its socket open until the next attempt closes
// it: nothing to wait for then, and a broker closing it must not wake the loop again and
// again until then. Likewise after a stop.
int MosquittoTransport::socket() const {
  if (mosq_ == nullptr || link_ == Link::down) return -1;
  return mosquitto_socket(mosq_);
}

// While the handshakes run, libmosquitto's own answer would keep the socket armed for writing
// when only the broker's reply can move things on (its want_write flag outlives the
// handshake step that set it): an event loop would spin on a writable socket.
bool MosquittoTransport::wants_write() const {
  if (socket() < 0) return false;
  if (link_ == Link::awaiting_connack) {
    if (tcp_pending_) return true;  // writable: the TCP connection is up (or failed)
    const auto* ssl = static_cast<const SSL*>(mosquitto_ssl_get(mosq_));
    if (ssl != nullptr && SSL_is_init_finished(ssl) == 0) return SSL_want_write(ssl) != 0;
  }
  return mosquitto_want_write(mosq_);
}

// Whether a connection the broker has not accepted yet failed before its TLS handshake ended,
// from the kernel's view of the socket: a refused connect, or a broker that closed it during
// the handshake, shows only there (libmosquitto's TLS step takes either for "try again
// later" and the socket stays ready, so an event loop would spin until the CONNACK timeout).
bool MosquittoTransport::handshake_failed() {
  const auto* ssl = static_cast<const SSL*>(mosquitto_ssl_get(mosq_));
  if (ssl != nullptr && SSL_is_init_finished(ssl) != 0) return false;  // libmosquitto's part now
  tcp_info info{};
  socklen_t len = sizeof info;
  if (::getsockopt(mosquitto_socket(mosq_), IPPROTO_TCP, TCP_INFO, &info, &len) != 0) return true;
  if (info.tcpi_state == TCP_SYN_SENT) return false;  // still connecting
  tcp_pending_ = false;
  return info.tcpi_state != TCP_ESTABLISHED;
}

// What mosquitto_loop() does after its select(), for a socket the caller waited on. Reading
// may queue output (answers sent from the message handler), so writing comes second.
bool MosquittoTransport::service_socket(bool readable, bool writable) {
  int rc = MOSQ_ERR_SUCCESS;
  // During the handshakes libmosquitto moves TLS on only from its read step: a writable
  // socket then means the TCP connection is up and the ClientHello can go.
  if (readable || (writable && link_ == Link::awaiting_connack)) rc = mosquitto_loop_read(mosq_, 1);
  if (rc == MOSQ_ERR_SUCCESS && mosquitto_socket(mosq_) >= 0 &&
      (writable || mosquitto_want_write(mosq_))) {
    rc = mosquitto_loop_write(mosq_, 1);
  }
  if (rc == MOSQ_ERR_SUCCESS) rc = mosquitto_loop_misc(mosq_);
  return rc == MOSQ_ERR_SUCCESS;
}

std::chrono::steady_clock::time_point MosquittoTransport::step(bool readable, bool writable) {
  using Clock = std::chrono::steady_clock;
  const auto now = Clock::now();
  if (mosq_ == nullptr || stop_ == StopPhase::done) return now + kMiscInterval;
  if (stop_ == StopPhase::awaiting_offline_ack) {
    if (!service_socket(readable, writable) || offline_acked_ || now >= offline_ack_deadline_) {
      finish_stop();
      return now;
    }
    return std::min(now + kMiscInterval, offline_ack_deadline_);
  }
  if (link_ == Link::down) {
    if (now >= next_attempt_) try_connect(false);
    if (link_ == Link::down) return next_attempt_;
  }
  if (link_ == Link::awaiting_connack && now >= connack_deadline_) {
    link_lost();  // as in poll(): the next attempt closes the socket
    return next_attempt_;
  }
  if (link_ == Link::awaiting_connack && (readable || writable) && handshake_failed()) {
    link_lost();  // refused or unreachable: counted, and retried after the back-off
    return next_attempt_;
  }
  if (!service_socket(readable, writable)) {
    link_lost();
    return next_attempt_;
  }
  if (link_ == Link::awaiting_connack) return std::min(now + kMiscInterval, connack_deadline_);
  return now + kMiscInterval;
}

void MosquittoTransport::begin_stop() {
  if (stop_ != StopPhase::running) return;
  if (mosq_ != nullptr && connected_ && !settings_.will_topic.empty() && publish_offline()) {
    stop_ = StopPhase::awaiting_offline_ack;
    offline_ack_deadline_ = std::chrono::steady_clock::now() + settings_.offline_ack_timeout;
    return;
  }
  finish_stop();
}

void MosquittoTransport::finish_stop() {
  if (mosq_ != nullptr && connected_) {
    // The DISCONNECT is small and goes out at once on a writable socket; whatever is left
    // when the transport is destroyed is lost, and the last will says the same then.
    mosquitto_disconnect(mosq_);
    if (mosquitto_socket(mosq_) >= 0 && mosquitto_want_write(mosq_)) mosquitto_loop_write(mosq_, 1);
  }
  offline_mid_ = -1;
  link_ = Link::down;
  connected_ = false;
  stop_ = StopPhase::done;
}

void MosquittoTransport::drop() {
  const int fd = mosq_ != nullptr ? mosquitto_socket(mosq_) : -1;
  if (fd >= 0) ::shutdown(fd, SHUT_RDWR);
  connected_ = false;
}

bool MosquittoTransport::publish_offline() {
  offline_acked_ = false;
  int mid = -1;
  if (mosquitto_publish(mosq_, &mid, settings_.will_topic.c_str(),
                        static_cast<int>(settings_.will_payload.size()),
                        settings_.will_payload.data(), 1, true) != MOSQ_ERR_SUCCESS) {
    return false;
  }
  offline_mid_ = mid;
  return true;
}

void MosquittoTransport::publish_offline_and_wait() {
  if (!publish_offline()) return;
  // The PUBACK proves the broker stored the retained offline message; the DISCONNECT that
  // follows must not overtake it. If the link dies meanwhile the last will says the same.
  // Messages arriving meanwhile still reach the agent, as in any poll().
  const auto deadline = std::chrono::steady_clock::now() + settings_.offline_ack_timeout;
  while (!offline_acked_) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left <= std::chrono::milliseconds::zero()) break;
    const auto wait = std::min(left, std::chrono::milliseconds(100));
    if (mosquitto_loop(mosq_, static_cast<int>(wait.count()), 1) != MOSQ_ERR_SUCCESS) break;
  }
  offline_mid_ = -1;
}

void MosquittoTransport::stop() {
  if (mosq_ != nullptr && connected_) {
    if (!settings_.will_topic.empty()) publish_offline_and_wait();
    mosquitto_disconnect(mosq_);
    mosquitto_loop(mosq_, 100, 1);
  }
  // An attempt still waiting for its CONNACK is just closed (by the destructor): if the broker
  // did accept it, its last will marks the device offline.
  link_ = Link::down;
  connected_ = false;
}

bool MosquittoTransport::subscribe(const char* topic, int qos) {
  return mosq_ != nullptr && mosquitto_subscribe(mosq_, nullptr, topic, qos) == MOSQ_ERR_SUCCESS;
}

bool MosquittoTransport::unsubscribe(const char* topic) {
  return mosq_ != nullptr && mosquitto_unsubscribe(mosq_, nullptr, topic) == MOSQ_ERR_SUCCESS;
}

bool MosquittoTransport::publish(const char* topic, const void* payload, std::size_t len, int qos,
                                 bool retain) {
  return mosq_ != nullptr && connected_ &&
         mosquitto_publish(mosq_, nullptr, topic, static_cast<int>(len), payload, qos, retain) ==
             MOSQ_ERR_SUCCESS;
}

void MosquittoTransport::on_connect_cb(mosquitto* m, void* self, int rc) {
  auto* t = static_cast<MosquittoTransport*>(self);
  // Refused (bad certificate, ACL): mosquitto_loop() fails next and poll() counts a failed
  // attempt.
  if (rc != 0) return;
  t->link_ = Link::up;
  t->connected_ = true;
  t->failed_attempts_ = 0;  // the only place the back-off starts over
  ++t->connects_;
  const auto* ssl = static_cast<const SSL*>(mosquitto_ssl_get(m));
  if (ssl != nullptr && SSL_session_reused(ssl) == 1) ++t->resumed_connects_;
  if (t->on_connect_) t->on_connect_();
}

void MosquittoTransport::on_disconnect_cb(mosquitto*, void* self, int) {
  static_cast<MosquittoTransport*>(self)->connected_ = false;
}

void MosquittoTransport::on_publish_cb(mosquitto*, void* self, int mid) {
  auto* t = static_cast<MosquittoTransport*>(self);
  if (t->offline_mid_ >= 0 && mid == t->offline_mid_) t->offline_acked_ = true;
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
