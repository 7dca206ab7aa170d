#include "test_env.hpp"

#include <openssl/evp.h>

#include <random>

#include <arpa/inet.h>
#include <fcntl.h>
#include <mosquitto.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

#ifndef OTA_SOURCE_DIR
#error "OTA_SOURCE_DIR must be defined (the repository root)"
#endif

extern char** environ;

namespace ota::test {
namespace {

using Clock = std::chrono::steady_clock;

void lib_init_once() {
  static std::once_flag once;
  std::call_once(once, [] {
    mosquitto_lib_init();
    // A TLS write to a socket the broker closed (e.g. after kill9) must not kill the test.
    ::signal(SIGPIPE, SIG_IGN);
  });
}

std::string errno_str(const char* what) {
  return std::string(what) + ": " + std::strerror(errno);
}

std::vector<char*> to_argv(const std::vector<std::string>& args) {
  std::vector<char*> v;
  v.reserve(args.size() + 1);
  for (const auto& a : args) v.push_back(const_cast<char*>(a.c_str()));
  v.push_back(nullptr);
  return v;
}

int decode_status(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

std::string tail_lines(const std::string& text, std::size_t lines) {
  std::size_t pos = text.size();
  if (pos > 0 && text[pos - 1] == '\n') --pos;
  std::size_t count = 0;
  while (pos > 0) {
    if (text[pos - 1] == '\n' && ++count == lines) break;
    --pos;
  }
  return text.substr(pos);
}

std::string unique_client_id(const char* tag) {
  static std::atomic<unsigned> counter{0};
  return std::string("t-") + tag + "-" + std::to_string(::getpid()) + "-" +
         std::to_string(counter.fetch_add(1));
}

}  // namespace

// ---------------------------------------------------------------------------------------

std::string source_dir() { return OTA_SOURCE_DIR; }
std::string broker_config_dir() {
  const char* v = std::getenv("OTA_BROKER_CONFIG_DIR");
  return v != nullptr && *v != '\0' ? std::string(v) : source_dir() + "/broker-config";
}

int free_loopback_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw std::runtime_error(errno_str("socket"));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    std::string err = errno_str("bind/getsockname");
    ::close(fd);
    throw std::runtime_error(err);
  }
  ::close(fd);
  return ntohs(addr.sin_port);
}

std::string make_temp_dir(const char* tag) {
  std::string templ = std::string("/tmp/ota-") + (tag ? tag : "test") + "-XXXXXX";
  std::vector<char> buf(templ.begin(), templ.end());
  buf.push_back('\0');
  if (::mkdtemp(buf.data()) == nullptr) throw std::runtime_error(errno_str("mkdtemp"));
  return std::string(buf.data());
}

void remove_tree(const std::string& path) {
  if (path.empty()) return;
  std::error_code ec;
  std::filesystem::remove_all(path, ec);
}

bool keep_tmp() {
  const char* v = std::getenv("OTA_KEEP_TMP");
  return v != nullptr && *v != '\0';
}

TempDir::TempDir(const char* tag) : path_(make_temp_dir(tag)) {}
TempDir::~TempDir() {
  if (!path_.empty() && !keep_tmp()) remove_tree(path_);
}
TempDir::TempDir(TempDir&& other) noexcept : path_(std::move(other.path_)) {
  other.path_.clear();
}
TempDir& TempDir::operator=(TempDir&& other) noexcept {
  if (this != &other) {
    if (!path_.empty() && !keep_tmp()) remove_tree(path_);
    path_ = std::move(other.path_);
    other.path_.clear();
  }
  return *this;
}

CommandResult run_command(const std::vector<std::string>& argv) {
  CommandResult result;
  if (argv.empty()) return result;
  int pipefd[2];
  if (::pipe2(pipefd, O_CLOEXEC) != 0) throw std::runtime_error(errno_str("pipe2"));

  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, pipefd[1], 1);
  posix_spawn_file_actions_adddup2(&fa, pipefd[1], 2);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t def;
  sigemptyset(&def);
  sigaddset(&def, SIGPIPE);
  posix_spawnattr_setsigdefault(&attr, &def);
  sigset_t none;
  sigemptyset(&none);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);

  auto args = to_argv(argv);
  pid_t pid = -1;
  int rc = ::posix_spawnp(&pid, args[0], &fa, &attr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  ::close(pipefd[1]);
  if (rc != 0) {
    ::close(pipefd[0]);
    result.output = "posix_spawnp " + argv[0] + ": " + std::strerror(rc);
    return result;
  }
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(pipefd[0], buf, sizeof(buf));
    if (n > 0) {
      result.output.append(buf, static_cast<std::size_t>(n));
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else {
      break;
    }
  }
  ::close(pipefd[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  result.exit_code = decode_status(status);
  return result;
}

bool wait_until(const std::function<bool()>& cond, std::chrono::milliseconds deadline,
                std::chrono::milliseconds poll) {
  const auto end = Clock::now() + deadline;
  for (;;) {
    if (cond()) return true;
    if (Clock::now() >= end) return cond();
    std::this_thread::sleep_for(poll);
  }
}

// ---------------------------------------------------------------------------------------
// PKI

namespace {

void run_pki(const std::vector<std::string>& args) {
#ifdef OTA_PKI_DEVICES_BIN  // ota_test_support defines it; bench/ compiles this file itself
  // pki.sh devices issues certificates with this build's tool (unless the environment
  // names another one) instead of one openssl process per certificate.
  ::setenv("OTA_PKI_DEVICES", OTA_PKI_DEVICES_BIN, 0);
#endif
  std::vector<std::string> argv{"bash", broker_config_dir() + "/pki.sh"};
  argv.insert(argv.end(), args.begin(), args.end());
  CommandResult r = run_command(argv);
  if (r.exit_code != 0) {
    std::string cmd;
    for (const auto& a : argv) cmd += a + " ";
    throw std::runtime_error("pki.sh failed (exit " + std::to_string(r.exit_code) + "): " + cmd +
                             "\n" + r.output);
  }
}

std::vector<std::string> group_args(const std::vector<std::string>& groups) {
  std::vector<std::string> out;
  for (const auto& g : groups) {
    out.emplace_back("--group");
    out.push_back(g);
  }
  return out;
}

}  // namespace

std::string Pki::monitor_cert(const std::string& name) const {
  return name == "ota-monitor" ? dir + "/monitor.crt" : dir + "/monitors/" + name + ".crt";
}
std::string Pki::monitor_key(const std::string& name) const {
  return name == "ota-monitor" ? dir + "/monitor.key" : dir + "/monitors/" + name + ".key";
}

void Pki::add_monitor(const std::string& name) const { run_pki({"monitor", dir, name}); }

void Pki::revoke(const std::string& id) const { run_pki({"revoke", dir, id}); }

bool Pki::has_device(const std::string& id) const {
  return ::access(device_cert(id).c_str(), R_OK) == 0 &&
         ::access(device_key(id).c_str(), R_OK) == 0;
}

void Pki::add_device(const std::string& id, const std::vector<std::string>& groups) const {
  std::vector<std::string> args{"device", dir, id};
  auto g = group_args(groups);
  args.insert(args.end(), g.begin(), g.end());
  run_pki(args);
}

void Pki::add_devices(int count, const std::string& name,
                      const std::vector<std::string>& groups) const {
  std::vector<std::string> args{"devices", dir, std::to_string(count), name};
  auto g = group_args(groups);
  args.insert(args.end(), g.begin(), g.end());
  run_pki(args);
}

Pki make_pki(const std::string& dir, const std::vector<DeviceSpec>& devices_with_groups,
             const std::string& prefix) {
  run_pki({"init", dir, "--prefix", prefix});
  Pki pki;
  pki.dir = std::filesystem::absolute(dir).lexically_normal().string();
  while (pki.dir.size() > 1 && pki.dir.back() == '/') pki.dir.pop_back();
  pki.prefix = prefix;
  for (const auto& [id, groups] : devices_with_groups) pki.add_device(id, groups);
  return pki;
}

const Pki& shared_pki(const std::vector<DeviceSpec>& devices_with_groups) {
  static std::mutex mu;
  static TempDir dir("pki");  // destroyed at exit -> removed unless OTA_KEEP_TMP
  static Pki pki = make_pki(dir.path(), {});
  std::lock_guard<std::mutex> lock(mu);
  for (const auto& [id, groups] : devices_with_groups) {
    // Devices without groups that already exist need no call; with groups, pki.sh adds any
    // missing ACL lines idempotently.
    if (groups.empty() && pki.has_device(id)) continue;
    pki.add_device(id, groups);
  }
  return pki;
}

// ---------------------------------------------------------------------------------------
// Broker

Broker::Broker(const Pki& pki, BrokerOptions options) : pki_(pki), options_(std::move(options)) {
  lib_init_once();
  if (options_.data_dir.empty()) {
    own_dir_ = std::make_unique<TempDir>("broker");
    data_dir_ = own_dir_->path();
  } else {
    data_dir_ = options_.data_dir;
    std::filesystem::create_directories(data_dir_);
  }
  auto_port_ = options_.port == 0;
  port_ = options_.port;
  start();
}

Broker::~Broker() {
  try {
    stop();
  } catch (...) {
  }
}

void Broker::spawn() {
  const std::string script = broker_config_dir() + "/run-broker.sh";
  const std::string out_path = data_dir_ + "/broker.out";
  const std::string port = std::to_string(port_);
  std::vector<std::string> argv{"/bin/bash", script, pki_.dir, data_dir_, port, pki_.prefix};
  auto args = to_argv(argv);
  const pid_t parent = ::getpid();

  pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error(errno_str("fork"));
  if (pid == 0) {
    // Child: async-signal-safe calls only. If the test process dies (e.g. ctest timeout),
    // the broker gets SIGTERM instead of lingering.
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (::getppid() != parent) ::_exit(127);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::signal(SIGPIPE, SIG_DFL);
    int in = ::open("/dev/null", O_RDONLY);
    int out = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (in < 0 || out < 0) ::_exit(126);
    ::dup2(in, 0);
    ::dup2(out, 1);
    ::dup2(out, 2);
    ::execve(args[0], args.data(), environ);
    ::_exit(127);
  }
  pid_ = pid;
}

bool Broker::running() {
  if (pid_ <= 0) return false;
  int status = 0;
  pid_t r = ::waitpid(pid_, &status, WNOHANG);
  if (r == pid_ || (r < 0 && errno == ECHILD)) {
    pid_ = -1;
    return false;
  }
  return true;
}

std::string Broker::wait_ready() {
  const auto end = Clock::now() + options_.start_deadline;
  std::string last;
  while (Clock::now() < end) {
    if (pid_ > 0) {
      int status = 0;
      pid_t r = ::waitpid(pid_, &status, WNOHANG);
      if (r == pid_) {
        pid_ = -1;
        return "mosquitto exited with status " + std::to_string(decode_status(status));
      }
    }
    auto remaining = std::chrono::duration_cast<std::chrono::milliseconds>(end - Clock::now());
    try {
      // Its own identity (no topic rights): with the controller's, the probe would take the
      // connection and, being a clean session, the durable session of a running controller.
      MqttTestClient probe(ClientOptions::probe(pki_, port_));
      ConnectResult cr = probe.connect(std::min(remaining, std::chrono::milliseconds(2000)));
      if (cr.ok()) return "";
      last = cr.describe();
    } catch (const std::exception& e) {
      last = e.what();  // e.g. PKI files missing; the broker will exit and say so
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // poll interval, not a sync
  }
  return "controller could not connect within the start deadline (last: " + last + ")";
}

void Broker::start() {
  if (running()) return;
  for (int attempt = 0;; ++attempt) {
    if (port_ == 0) port_ = free_loopback_port();
    spawn();
    std::string why = wait_ready();
    if (why.empty()) {
      started_once_ = true;
      return;
    }
    const std::string out = read_file(data_dir_ + "/broker.out");
    const std::string log = log_tail(60);
    if (running()) {
      ::kill(pid_, SIGKILL);
      int status = 0;
      ::waitpid(pid_, &status, 0);
      pid_ = -1;
    }
    const bool port_taken = log.find("Address already in use") != std::string::npos ||
                            out.find("Address already in use") != std::string::npos;
    if (auto_port_ && !started_once_ && port_taken && attempt < 3) {
      port_ = 0;  // someone grabbed our free port in between: pick another
      continue;
    }
    throw std::runtime_error("broker failed to start on port " + std::to_string(port_) + ": " +
                             why + "\n--- " + data_dir_ + "/broker.out ---\n" +
                             tail_lines(out, 20) + "\n--- " + log_path() + " (tail) ---\n" + log);
  }
}

void Broker::stop() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGTERM);
  int status = 0;
  const bool exited = wait_until(
      [&] {
        const pid_t r = ::waitpid(pid_, &status, WNOHANG);
        return r == pid_ || (r < 0 && errno != EINTR);
      },
      options_.stop_deadline, std::chrono::milliseconds(5));
  if (!exited) {
    ::kill(pid_, SIGKILL);
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
  }
  pid_ = -1;
}

void Broker::kill9() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGKILL);
  int status = 0;
  while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
  pid_ = -1;
}

void Broker::restart() {
  stop();
  start();
}

bool Broker::reload(std::chrono::milliseconds deadline) {
  if (pid_ <= 0) return false;
  auto reloads = [this] {
    const std::string log = read_file(log_path());
    std::size_t n = 0;
    for (auto p = log.find("Reloading config."); p != std::string::npos;
         p = log.find("Reloading config.", p + 1)) {
      ++n;
    }
    return n;
  };
  const std::size_t before = reloads();
  ::kill(pid_, SIGHUP);
  return wait_until([&] { return reloads() > before; }, deadline);
}

std::string Broker::log_tail(std::size_t lines) const {
  return tail_lines(read_file(log_path()), lines);
}

// ---------------------------------------------------------------------------------------
// MqttTestClient

std::string ConnectResult::describe() const {
  std::string s = "rc=" + std::to_string(rc);
  if (rc == MqttTestClient::kTimeout) {
    s += " (timeout)";
  } else if (rc == MOSQ_ERR_ERRNO) {
    s += " (system error)";
  } else if (rc >= 0) {
    s += std::string(" (") + mosquitto_strerror(rc) + ")";
  }
  s += " connack=" + std::to_string(connack);
  if (connack >= 0) s += std::string(" (") + mosquitto_connack_string(connack) + ")";
  return s;
}

ClientOptions ClientOptions::controller(const Pki& pki, int port) {
  ClientOptions o;
  o.port = port;
  o.ca_file = pki.ca_cert();
  o.cert_file = pki.controller_cert();
  o.key_file = pki.controller_key();
  return o;
}

ClientOptions ClientOptions::monitor(const Pki& pki, int port, const std::string& name) {
  ClientOptions o;
  o.port = port;
  o.ca_file = pki.ca_cert();
  o.cert_file = pki.monitor_cert(name);
  o.key_file = pki.monitor_key(name);
  return o;
}

ClientOptions ClientOptions::probe(const Pki& pki, int port) {
  ClientOptions o;
  o.port = port;
  o.ca_file = pki.ca_cert();
  o.cert_file = pki.probe_cert();
  o.key_file = pki.probe_key();
  return o;
}

ClientOptions ClientOptions::device(const Pki& pki, const std::string& id, int port) {
  ClientOptions o;
  o.port = port;
  o.ca_file = pki.ca_cert();
  o.cert_file = pki.device_cert(id);
  o.key_file = pki.device_key(id);
  return o;
}

MqttTestClient::MqttTestClient(ClientOptions options) : options_(std::move(options)) {
  lib_init_once();
  if (options_.client_id.empty()) options_.client_id = unique_client_id("c");
  mosq_ = mosquitto_new(options_.client_id.c_str(), options_.clean_session, this);
  if (mosq_ == nullptr) throw std::runtime_error("mosquitto_new failed");
  mosquitto_int_option(mosq_, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V311);
  mosquitto_int_option(mosq_, MOSQ_OPT_TCP_NODELAY, 1);
  mosquitto_connect_callback_set(mosq_, &MqttTestClient::on_connect_cb);
  mosquitto_disconnect_callback_set(mosq_, &MqttTestClient::on_disconnect_cb);
  mosquitto_publish_callback_set(mosq_, &MqttTestClient::on_publish_cb);
  mosquitto_subscribe_callback_set(mosq_, &MqttTestClient::on_subscribe_cb);
  mosquitto_message_callback_set(mosq_, &MqttTestClient::on_message_cb);
  mosquitto_reconnect_delay_set(mosq_, 1, 2, false);
  if (options_.tls) {
    const char* cert = options_.cert_file.empty() ? nullptr : options_.cert_file.c_str();
    const char* key = options_.key_file.empty() ? nullptr : options_.key_file.c_str();
    int rc = mosquitto_tls_set(mosq_, options_.ca_file.c_str(), nullptr, cert, key, nullptr);
    if (rc != MOSQ_ERR_SUCCESS) {
      mosquitto_destroy(mosq_);
      throw std::runtime_error(std::string("mosquitto_tls_set: ") + mosquitto_strerror(rc));
    }
    mosquitto_tls_opts_set(mosq_, 1, "tlsv1.2", nullptr);
  }
}

MqttTestClient::~MqttTestClient() {
  disconnect();
  mosquitto_destroy(mosq_);
}

ConnectResult MqttTestClient::connect(std::chrono::milliseconds deadline) {
  ConnectResult result;
  {
    std::lock_guard<std::mutex> lock(mu_);
    connack_ = -1;
    connected_ = false;
    disconnect_rc_ = -1;
    lost_connections_ = 0;
  }
  if (loop_running_) disconnect();
  int rc = mosquitto_connect(mosq_, options_.host.c_str(), options_.port, options_.keepalive);
  if (rc != MOSQ_ERR_SUCCESS) {
    result.rc = rc;
    return result;
  }
  // Drive the network loop ourselves until CONNACK or failure, so a refused connection is
  // reported instead of retried by the background thread.
  const auto end = Clock::now() + deadline;
  for (;;) {
    rc = mosquitto_loop(mosq_, 20, 1);
    std::unique_lock<std::mutex> lock(mu_);
    if (connack_ >= 0) {
      result.rc = MOSQ_ERR_SUCCESS;
      result.connack = connack_;
      break;
    }
    if (rc != MOSQ_ERR_SUCCESS || disconnect_rc_ >= 0) {
      result.rc = rc != MOSQ_ERR_SUCCESS ? rc : MOSQ_ERR_CONN_LOST;
      break;
    }
    if (Clock::now() >= end) {
      result.rc = kTimeout;
      break;
    }
  }
  if (!result.ok()) {
    mosquitto_disconnect(mosq_);
    return result;
  }
  rc = mosquitto_loop_start(mosq_);
  if (rc != MOSQ_ERR_SUCCESS) {
    mosquitto_disconnect(mosq_);
    result.rc = rc;
    return result;
  }
  loop_running_ = true;
  return result;
}

void MqttTestClient::disconnect() {
  mosquitto_disconnect(mosq_);
  if (loop_running_) {
    mosquitto_loop_stop(mosq_, false);
    loop_running_ = false;
  }
  std::lock_guard<std::mutex> lock(mu_);
  connected_ = false;
}

bool MqttTestClient::connected() const {
  std::lock_guard<std::mutex> lock(mu_);
  return connected_;
}

int MqttTestClient::subscribe(const std::string& pattern, int qos,
                              std::chrono::milliseconds deadline) {
  int mid = 0;
  int rc = mosquitto_subscribe(mosq_, &mid, pattern.c_str(), qos);
  if (rc != MOSQ_ERR_SUCCESS) return rc > 0 ? -rc : rc;
  std::unique_lock<std::mutex> lock(mu_);
  if (!cv_.wait_for(lock, deadline, [&] { return suback_.count(mid) != 0; })) return kTimeout;
  int granted = suback_[mid];
  suback_.erase(mid);
  return granted;
}

int MqttTestClient::publish(const std::string& topic, const std::string& payload, int qos,
                            bool retain, std::chrono::milliseconds deadline) {
  int mid = 0;
  int rc = mosquitto_publish(mosq_, &mid, topic.c_str(), static_cast<int>(payload.size()),
                             payload.data(), qos, retain);
  if (rc != MOSQ_ERR_SUCCESS) return rc;
  std::unique_lock<std::mutex> lock(mu_);
  if (!cv_.wait_for(lock, deadline, [&] { return acked_mids_.count(mid) != 0; })) return kTimeout;
  acked_mids_.erase(mid);
  return MOSQ_ERR_SUCCESS;
}

std::optional<Message> MqttTestClient::wait_for_message(
    const std::function<bool(const Message&)>& pred, std::chrono::milliseconds deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  std::size_t checked = 0;
  std::optional<Message> found;
  auto scan = [&] {
    for (; checked < messages_.size(); ++checked) {
      if (pred(messages_[checked])) {
        found = messages_[checked];
        return true;
      }
    }
    return false;
  };
  cv_.wait_for(lock, deadline, scan);
  return found;
}

std::optional<Message> MqttTestClient::wait_for_topic(const std::string& topic,
                                                      std::chrono::milliseconds deadline) {
  return wait_for_message([&](const Message& m) { return m.topic == topic; }, deadline);
}

std::vector<Message> MqttTestClient::messages() const {
  std::lock_guard<std::mutex> lock(mu_);
  return messages_;
}

int MqttTestClient::lost_connections() const {
  std::lock_guard<std::mutex> lock(mu_);
  return lost_connections_;
}

void MqttTestClient::clear_messages() {
  std::lock_guard<std::mutex> lock(mu_);
  messages_.clear();
}

void MqttTestClient::on_connect_cb(mosquitto*, void* obj, int rc) {
  auto* self = static_cast<MqttTestClient*>(obj);
  {
    std::lock_guard<std::mutex> lock(self->mu_);
    self->connack_ = rc;
    self->connected_ = rc == 0;
  }
  self->cv_.notify_all();
}

void MqttTestClient::on_disconnect_cb(mosquitto*, void* obj, int rc) {
  auto* self = static_cast<MqttTestClient*>(obj);
  {
    std::lock_guard<std::mutex> lock(self->mu_);
    self->connected_ = false;
    self->disconnect_rc_ = rc;
    if (rc != 0) ++self->lost_connections_;
  }
  self->cv_.notify_all();
}

void MqttTestClient::on_publish_cb(mosquitto*, void* obj, int mid) {
  auto* self = static_cast<MqttTestClient*>(obj);
  {
    std::lock_guard<std::mutex> lock(self->mu_);
    self->acked_mids_.insert(mid);
  }
  self->cv_.notify_all();
}

void MqttTestClient::on_subscribe_cb(mosquitto*, void* obj, int mid, int qos_count,
                                     const int* granted) {
  auto* self = static_cast<MqttTestClient*>(obj);
  {
    std::lock_guard<std::mutex> lock(self->mu_);
    self->suback_[mid] = qos_count > 0 ? granted[0] : 128;
  }
  self->cv_.notify_all();
}

void MqttTestClient::on_message_cb(mosquitto*, void* obj, const mosquitto_message* msg) {
  auto* self = static_cast<MqttTestClient*>(obj);
  Message m;
  m.topic = msg->topic ? msg->topic : "";
  if (msg->payload != nullptr && msg->payloadlen > 0) {
    m.payload.assign(static_cast<const char*>(msg->payload),
                     static_cast<std::size_t>(msg->payloadlen));
  }
  m.qos = msg->qos;
  m.retain = msg->retain;
  {
    std::lock_guard<std::mutex> lock(self->mu_);
    self->messages_.push_back(std::move(m));
  }
  self->cv_.notify_all();
}

ChildProcess::ChildProcess(std::vector<std::string> argv, const std::string& log_path) {
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  std::vector<char*> args;
  for (auto& a : argv) args.push_back(a.data());
  args.push_back(nullptr);
  if (posix_spawn(&pid_, args[0], &fa, nullptr, args.data(), environ) != 0) pid_ = -1;
  posix_spawn_file_actions_destroy(&fa);
}

bool ChildProcess::alive() const { return pid_ > 0 && !reaped_ && ::kill(pid_, 0) == 0; }

void ChildProcess::signal(int sig) {
  if (pid_ > 0 && !reaped_) ::kill(pid_, sig);
}

bool ChildProcess::exited(int* code) {
  if (pid_ > 0 && !reaped_) {
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      reaped_ = true;
      exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
  }
  if (code) *code = exit_code_;
  return reaped_;
}

void ChildProcess::signal_and_reap(int sig) {
  if (pid_ <= 0) return;
  if (reaped_) {
    pid_ = -1;
    return;
  }
  ::kill(pid_, sig);
  int status = 0;
  if (!wait_until([&] { return ::waitpid(pid_, &status, WNOHANG) == pid_; },
                  std::chrono::seconds(10))) {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, &status, 0);
  }
  pid_ = -1;
}

std::string random_bytes(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng() & 0xff);
  return s;
}

std::string sha256_hex(const std::string& data) {
  unsigned char d[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_Digest(data.data(), data.size(), d, &n, EVP_sha256(), nullptr);
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < n; ++i) {
    out += hex[d[i] >> 4];
    out += hex[d[i] & 15];
  }
  return out;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

}  // namespace ota::test
