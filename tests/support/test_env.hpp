// Test support: temp dirs, a test PKI (broker-config/pki.sh), a real mosquitto broker started
// from broker-config/ on a free loopback port, condition waiting with deadlines, and a thin
// libmosquitto client for tests. Link target: ota_test_support.
//
// Rules for tests using this: never sleep to synchronise (use wait_until / wait_for_message),
// never kill processes by name (Broker only signals its own pid).
#pragma once

#include <sys/types.h>

#include <csignal>

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

struct mosquitto;
struct mosquitto_message;

namespace ota::test {

// ---------------------------------------------------------------------------------------
// Paths and processes

// The repository root (compile definition OTA_SOURCE_DIR) and <root>/broker-config
// (overridable with env OTA_BROKER_CONFIG_DIR, e.g. to mutation-test the configuration).
std::string source_dir();
std::string broker_config_dir();

// Binds 127.0.0.1:0, reads the port the kernel chose, closes. Throws on failure.
int free_loopback_port();

// mkdtemp("/tmp/ota-<tag>-XXXXXX"); throws on failure.
std::string make_temp_dir(const char* tag);

// Deterministic pseudo-random bytes (an image whose content the test can reproduce).
std::string random_bytes(std::size_t n, unsigned seed);
// Lower-case hex SHA-256 of `data`.
std::string sha256_hex(const std::string& data);
// The whole file, or "" if it cannot be read.
std::string read_file(const std::string& path);

// Removes a directory tree (ignores errors).
void remove_tree(const std::string& path);

// True if env OTA_KEEP_TMP is set (temp trees are then kept for inspection).
bool keep_tmp();

// A temp directory removed (recursively) at destruction unless OTA_KEEP_TMP is set.
class TempDir {
 public:
  explicit TempDir(const char* tag);
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  TempDir(TempDir&& other) noexcept;
  TempDir& operator=(TempDir&& other) noexcept;

  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

struct CommandResult {
  int exit_code = -1;   // exit status, or 128 + signal number if killed, -1 if not started
  std::string output;   // stdout and stderr, interleaved
};

// Runs argv[0] (looked up in PATH) with the given arguments, no shell; waits for it.
CommandResult run_command(const std::vector<std::string>& argv);

// Polls `cond` every `poll` until it returns true (-> true) or `deadline` passes (-> false,
// after one last evaluation).
bool wait_until(const std::function<bool()>& cond, std::chrono::milliseconds deadline,
                std::chrono::milliseconds poll = std::chrono::milliseconds(10));

// ---------------------------------------------------------------------------------------
// PKI (broker-config/pki.sh)

struct Pki {
  std::string dir;               // absolute
  std::string prefix = "ota/v1"; // topic prefix the ACL was rendered with

  std::string ca_cert() const { return dir + "/ca.crt"; }
  std::string ca_key() const { return dir + "/ca.key"; }
  std::string server_cert() const { return dir + "/server.crt"; }
  std::string server_key() const { return dir + "/server.key"; }
  std::string controller_cert() const { return dir + "/controller.crt"; }
  std::string controller_key() const { return dir + "/controller.key"; }
  // Read-only identities: "ota-monitor" (pki.sh init) or "ota-monitor-X" (add_monitor).
  // The client id is the CN, so two clients with the same monitor certificate take each
  // other's connection over: give concurrent observers different names.
  std::string monitor_cert(const std::string& name = "ota-monitor") const;
  std::string monitor_key(const std::string& name = "ota-monitor") const;
  // CN ota-probe: may connect, no topic rights (Broker's readiness check).
  std::string probe_cert() const { return dir + "/probe.crt"; }
  std::string probe_key() const { return dir + "/probe.key"; }
  std::string crl_path() const { return dir + "/crl.pem"; }  // the broker's crlfile
  std::string release_key() const { return dir + "/release.key"; }  // manifest signing (PEM)
  std::string release_pub() const { return dir + "/release.pub"; }
  std::string acl_path() const { return dir + "/acl"; }
  std::string device_cert(const std::string& id) const { return dir + "/devices/" + id + ".crt"; }
  std::string device_key(const std::string& id) const { return dir + "/devices/" + id + ".key"; }
  bool has_device(const std::string& id) const;

  // `pki.sh device DIR ID --group G...` (idempotent). Throws std::runtime_error on failure.
  // A running broker only sees new group ACL lines after Broker::reload().
  void add_device(const std::string& id, const std::vector<std::string>& groups = {}) const;
  // `pki.sh devices DIR COUNT NAME --group G...` -> NAME-001..NAME-COUNT.
  void add_devices(int count, const std::string& name,
                   const std::vector<std::string>& groups = {}) const;
  // `pki.sh monitor DIR NAME` (NAME: ota-monitor-X; idempotent). A running broker knows
  // the new ACL section only after Broker::reload().
  void add_monitor(const std::string& name) const;
  // `pki.sh revoke DIR ID`: CRL entry, ACL section removed, device files moved to
  // DIR/revoked/ (has_device() is false afterwards). The broker refuses the certificate
  // after Broker::reload(); an open connection of it stays until Broker::restart().
  void revoke(const std::string& id) const;
};

using DeviceSpec = std::pair<std::string, std::vector<std::string>>;  // id, groups

// `pki.sh init DIR --prefix P` and one `pki.sh device` per entry. Throws on failure.
Pki make_pki(const std::string& dir, const std::vector<DeviceSpec>& devices_with_groups,
             const std::string& prefix = "ota/v1");

// One PKI per test binary run (created on first use in a temp dir removed at exit), with the
// given devices added if missing. Thread-safe.
const Pki& shared_pki(const std::vector<DeviceSpec>& devices_with_groups = {});

// ---------------------------------------------------------------------------------------
// Broker: a real mosquitto from broker-config/run-broker.sh (which renders mosquitto.conf.in).

struct BrokerOptions {
  int port = 0;                  // 0: pick a free loopback port
  std::string data_dir;          // empty: own TempDir (removed with the Broker)
  std::chrono::milliseconds start_deadline{10000};
  std::chrono::milliseconds stop_deadline{5000};  // SIGTERM -> SIGKILL after this
};

// The broker is a child of the test process (fork/exec of run-broker.sh, which execs
// mosquitto, so pid() is mosquitto's). It gets SIGTERM if the thread that started it exits
// (PR_SET_PDEATHSIG), so a test killed by a ctest timeout leaves no broker behind: create
// Brokers from the test's main thread. Log: log_path(); config: config_path().
class Broker {
 public:
  // Starts the broker and waits until the controller can connect over TLS. Throws
  // std::runtime_error (with the tail of the broker log) if it does not come up in time.
  explicit Broker(const Pki& pki, BrokerOptions options = {});
  ~Broker();  // stop()
  Broker(const Broker&) = delete;
  Broker& operator=(const Broker&) = delete;

  void start();    // no-op if running
  void stop();     // SIGTERM to our pid, wait; SIGKILL after stop_deadline. Broker saves its DB.
  void kill9();    // SIGKILL to our pid (crash; no DB save)
  void restart();  // stop() + start() on the same port and data dir
  // SIGHUP: re-reads the ACL file (e.g. after Pki::add_device with groups) and the CRL
  // (Pki::revoke; new handshakes only, open connections stay). Waits until the broker has
  // logged "Reloading config." (it is single-threaded: every connection attempt made after
  // that sees the new configuration); false if it did not within `deadline`.
  bool reload(std::chrono::milliseconds deadline = std::chrono::milliseconds(5000));
  bool running();  // reaps the child if it exited

  int port() const { return port_; }
  pid_t pid() const { return pid_; }
  const std::string& data_dir() const { return data_dir_; }
  std::string log_path() const { return data_dir_ + "/mosquitto.log"; }
  std::string config_path() const { return data_dir_ + "/mosquitto.conf"; }
  std::string log_tail(std::size_t lines = 40) const;
  const Pki& pki() const { return pki_; }

 private:
  void spawn();
  std::string wait_ready();  // "" when ready, else the reason

  Pki pki_;
  BrokerOptions options_;
  std::unique_ptr<TempDir> own_dir_;
  std::string data_dir_;
  int port_ = 0;
  bool auto_port_ = false;
  bool started_once_ = false;
  pid_t pid_ = -1;
};

// ---------------------------------------------------------------------------------------
// MQTT client for tests (libmosquitto, MQTT 3.1.1, TCP_NODELAY, background loop thread).

struct Message {
  std::string topic;
  std::string payload;  // binary-safe
  int qos = 0;
  bool retain = false;
};

struct ConnectResult {
  int rc = -1;       // MOSQ_ERR_* of the transport/TLS/connect phase; MOSQ_ERR_SUCCESS = 0
  int connack = -1;  // CONNACK return code; -1 if none arrived
  bool ok() const { return rc == 0 && connack == 0; }
  std::string describe() const;
};

struct ClientOptions {
  std::string host = "127.0.0.1";
  int port = 0;
  std::string client_id;  // empty: a unique generated id
  bool tls = true;        // false: plain TCP
  std::string ca_file;    // verifies the broker (hostname checked against the cert SAN)
  std::string cert_file;  // empty: no client certificate
  std::string key_file;
  bool clean_session = true;
  int keepalive = 30;

  // The broker makes the certificate CN the client id (use_username_as_clientid), so
  // `client_id` only names the libmosquitto handle: a client with the controller's
  // certificate IS ota-controller and takes the real controller's connection over. Tests
  // that only watch traffic use monitor().
  static ClientOptions controller(const Pki& pki, int port);
  static ClientOptions device(const Pki& pki, const std::string& id, int port);
  static ClientOptions monitor(const Pki& pki, int port,
                               const std::string& name = "ota-monitor");
  static ClientOptions probe(const Pki& pki, int port);
};

class MqttTestClient {
 public:
  // Special result codes (in addition to MOSQ_ERR_*).
  static constexpr int kTimeout = -100;

  explicit MqttTestClient(ClientOptions options);
  ~MqttTestClient();  // disconnect + stop the loop thread
  MqttTestClient(const MqttTestClient&) = delete;
  MqttTestClient& operator=(const MqttTestClient&) = delete;

  // Connects and waits for CONNACK (or failure) up to `deadline`; on success starts the
  // background loop (mosquitto_loop_start). A refused connection is reported, not thrown.
  ConnectResult connect(std::chrono::milliseconds deadline = std::chrono::milliseconds(5000));
  // Clean DISCONNECT and loop stop. Safe to call when not connected.
  void disconnect();
  bool connected() const;

  // SUBSCRIBE and wait for SUBACK: the granted QoS (0..2), 128 if the broker refused it,
  // -(MOSQ_ERR_*) if it could not be sent, or kTimeout.
  int subscribe(const std::string& pattern, int qos = 1,
                std::chrono::milliseconds deadline = std::chrono::milliseconds(5000));

  // PUBLISH; for QoS 1/2 waits for the broker's acknowledgement (which does NOT prove
  // delivery: ACL-denied and oversize messages are acknowledged too). Returns MOSQ_ERR_SUCCESS,
  // an MOSQ_ERR_* code, or kTimeout.
  int publish(const std::string& topic, const std::string& payload, int qos = 1,
              bool retain = false,
              std::chrono::milliseconds deadline = std::chrono::milliseconds(5000));

  // Waits until a received message satisfies `pred` (already received ones count).
  std::optional<Message> wait_for_message(const std::function<bool(const Message&)>& pred,
                                          std::chrono::milliseconds deadline);
  std::optional<Message> wait_for_topic(const std::string& topic,
                                        std::chrono::milliseconds deadline);

  std::vector<Message> messages() const;  // every received message, in arrival order
  void clear_messages();
  // Connections lost since the last connect() (on_disconnect with rc != 0: the broker or
  // the network closed it, e.g. another client took the session over). The background
  // loop reconnects by itself, so connected() alone can miss a short loss.
  int lost_connections() const;
  const std::string& client_id() const { return options_.client_id; }
  mosquitto* handle() { return mosq_; }

 private:
  static void on_connect_cb(mosquitto*, void*, int);
  static void on_disconnect_cb(mosquitto*, void*, int);
  static void on_publish_cb(mosquitto*, void*, int);
  static void on_subscribe_cb(mosquitto*, void*, int, int, const int*);
  static void on_message_cb(mosquitto*, void*, const mosquitto_message*);

  ClientOptions options_;
  mosquitto* mosq_ = nullptr;
  bool loop_running_ = false;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  int connack_ = -1;
  bool connected_ = false;
  int disconnect_rc_ = -1;  // last on_disconnect rc, -1 if none
  int lost_connections_ = 0;
  std::set<int> acked_mids_;
  std::map<int, int> suback_;  // mid -> first granted qos
  std::vector<Message> messages_;
};

// A program started for a test or benchmark (stdout and stderr appended to `log_path`),
// stopped by its own pid, never by name: SIGTERM (or SIGKILL) and reaped.
class ChildProcess {
 public:
  ChildProcess(std::vector<std::string> argv, const std::string& log_path);
  ~ChildProcess() { stop(); }
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  pid_t pid() const { return pid_; }
  bool alive() const;
  void kill9() { signal_and_reap(SIGKILL); }
  void stop() { signal_and_reap(SIGTERM); }
  // Sends `sig` and returns at once (stop() and kill9() wait and reap).
  void signal(int sig);
  // True once the process has ended (it is reaped then); *code: its exit status, or 128 +
  // the signal that killed it.
  bool exited(int* code = nullptr);

 private:
  void signal_and_reap(int sig);
  pid_t pid_ = -1;
  bool reaped_ = false;
  int exit_code_ = -1;
};

}  // namespace ota::test
