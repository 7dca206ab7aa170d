// The device's MQTT link on a real mosquitto (broker-config/), with the real ota-controller,
// ota-devsim and ota-agent processes:
//  - a device stopped with SIGTERM publishes its retained offline message before its
//    DISCONNECT, so the controller shows it offline at once (not after the heartbeat timeout);
//  - the reconnect back-off starts over only when the broker accepted (CONNACK), not when a
//    socket opened, and a socket that never gets a CONNACK counts as a failed attempt;
//  - a fleet that lost its broker comes back spread out (full jitter), not in one burst;
//  - ota-agent --root-key applies a root-signed key set from .../down/keys, keeps it in
//    DATA/agent.keys across a restart and says so in its hello (`keys`).
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/bn.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>

#include "ota/agent/linux/mosquitto_transport.hpp"
#include "ota/agent/linux/openssl_crypto.hpp"
#include "ota/proto/frame.hpp"
#include "ota/proto/messages.hpp"
#include "test_env.hpp"

namespace {

using namespace std::chrono_literals;
using json = nlohmann::json;
using ota::agent::linux_port::MosquittoTransport;
using ota::agent::linux_port::MqttSettings;
using ota::test::Broker;
using Child = ota::test::ChildProcess;
using ota::test::MqttTestClient;
using ota::test::Pki;
using ota::test::TempDir;
using ota::test::wait_until;
using SteadyClock = std::chrono::steady_clock;

constexpr int kFleetSize = 20;

const std::string kDevTopics = "ota/v1/dev/";
const std::string kPresenceSuffix = "/up/presence";

std::string presence_topic(const std::string& id) {
  return kDevTopics + id + kPresenceSuffix;
}

// The device id in ota/v1/dev/ID/up/presence.
std::string device_of(const std::string& presence) {
  return presence.substr(kDevTopics.size(),
                         presence.size() - kDevTopics.size() - kPresenceSuffix.size());
}

std::vector<std::string> numbered_ids(const std::string& prefix, int count) {
  std::vector<std::string> ids;
  for (int i = 1; i <= count; ++i) {
    char id[64];
    std::snprintf(id, sizeof id, "%s-%03d", prefix.c_str(), i);
    ids.emplace_back(id);
  }
  return ids;
}

bool is_offline_payload(const std::string& payload) {
  ota::proto::PresenceType type{};
  return !ota::proto::decode_presence_type(payload.data(), payload.size(), type) &&
         type == ota::proto::PresenceType::offline;
}

long long ms_between(SteadyClock::time_point from, SteadyClock::time_point to) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(to - from).count();
}

// A fresh P-256 key pair for the test (a root or online key), its PEM public key in a file.
struct TestKey {
  EVP_PKEY* key = EVP_EC_gen("P-256");
  ~TestKey() { EVP_PKEY_free(key); }
  TestKey() = default;
  TestKey(const TestKey&) = delete;
  TestKey& operator=(const TestKey&) = delete;

  std::string write_pub(const std::string& path) const {
    FILE* f = std::fopen(path.c_str(), "w");
    if (f == nullptr || PEM_write_PUBKEY(f, key) != 1) ADD_FAILURE() << "cannot write " << path;
    if (f != nullptr) std::fclose(f);
    return path;
  }
  // Raw r||s as 128 hex digits over `msg` (PROTOCOL.md 6.3).
  std::string sign_hex(const char* msg, std::size_t len) const {
    std::uint8_t raw[64] = {};
    EVP_MD_CTX* ctx = EVP_MD_CTX_new();
    std::size_t der_len = 0;
    std::vector<unsigned char> der;
    if (EVP_DigestSignInit(ctx, nullptr, EVP_sha256(), nullptr, key) == 1 &&
        EVP_DigestSign(ctx, nullptr, &der_len, reinterpret_cast<const unsigned char*>(msg),
                       len) == 1) {
      der.resize(der_len);
      EVP_DigestSign(ctx, der.data(), &der_len, reinterpret_cast<const unsigned char*>(msg), len);
    }
    EVP_MD_CTX_free(ctx);
    const unsigned char* p = der.data();
    ECDSA_SIG* sig = d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(der_len));
    if (sig != nullptr) {
      const BIGNUM* r = nullptr;
      const BIGNUM* s = nullptr;
      ECDSA_SIG_get0(sig, &r, &s);
      BN_bn2binpad(r, raw, 32);
      BN_bn2binpad(s, raw + 32, 32);
      ECDSA_SIG_free(sig);
    } else {
      ADD_FAILURE() << "signing failed";
    }
    char hex[129];
    ota::proto::hex_encode(raw, sizeof raw, hex);
    return std::string(hex, 128);
  }
};

// A `keys` message (PROTOCOL.md 6.6) of the PEM public keys `entries`, signed by `root`.
std::string keys_message(std::uint32_t version,
                         const std::vector<std::pair<std::string, ota::proto::KeyRole>>& entries,
                         const TestKey& root, const std::string& root_pub) {
  ota::proto::KeySet set;
  set.version = version;
  for (const auto& [pem, role] : entries) {
    ota::agent::linux_port::PublicKey k;
    std::string error;
    EXPECT_TRUE(ota::agent::linux_port::load_public_key_pem(pem, k, error)) << error;
    auto& e = set.keys[set.key_count++];
    e.id.assign(k.id.c_str());
    e.role = role;
    std::memcpy(e.pub, k.point.data(), k.point.size());
  }
  ota::agent::linux_port::PublicKey r;
  std::string error;
  EXPECT_TRUE(ota::agent::linux_port::load_public_key_pem(root_pub, r, error)) << error;
  set.key.assign(r.id.c_str());
  char buf[2048];
  const std::size_t n = ota::proto::canonical_keyset(set, buf, sizeof buf);
  set.sig.assign(root.sign_hex(buf, n).c_str());
  std::size_t len = 0;
  EXPECT_FALSE(ota::proto::encode_keyset(set, buf, sizeof buf, len));
  return std::string(buf, len);
}

// The `keys` of a hello payload, or -1 when it is no hello.
long long hello_keys(const std::string& payload) {
  ota::proto::Hello h;
  if (ota::proto::decode_hello(payload.data(), payload.size(), h)) return -1;
  return static_cast<long long>(h.keys);
}

// A TCP listener that completes the TCP handshake (the kernel does, from the backlog) and then
// never says a word: no TLS ServerHello, no CONNACK. What a device sees from a broker that is
// half started or overloaded.
class SilentListener {
 public:
  explicit SilentListener(int backlog = 16) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    socklen_t len = sizeof addr;
    if (fd_ < 0 || ::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        ::listen(fd_, backlog) != 0 ||
        ::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      throw std::runtime_error("silent listener: cannot listen on loopback");
    }
    port_ = ntohs(addr.sin_port);
  }
  ~SilentListener() {
    for (int fd : accepted_) ::close(fd);
    if (fd_ >= 0) ::close(fd_);
  }
  SilentListener(const SilentListener&) = delete;
  SilentListener& operator=(const SilentListener&) = delete;

  int port() const { return port_; }
  // Takes every pending connection (and keeps it open, silent); returns how many so far.
  std::size_t accept_pending() {
    for (;;) {
      const int fd = ::accept4(fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) break;
      accepted_.push_back(fd);
    }
    return accepted_.size();
  }

 private:
  int fd_ = -1;
  int port_ = 0;
  std::vector<int> accepted_;
};

class DeviceLink : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir("device-link");
    std::vector<ota::test::DeviceSpec> specs;
    for (const auto& id : numbered_ids("term", 5)) specs.push_back({id, {}});
    for (const auto& id : numbered_ids("fleet", kFleetSize)) specs.push_back({id, {}});
    specs.push_back({"agent-001", {}});
    specs.push_back({"link-001", {}});
    specs.push_back({"resume-001", {}});
    specs.push_back({"keys-001", {}});
    pki_ = new Pki(ota::test::make_pki(dir_->path() + "/pki", specs));
  }

  static void TearDownTestSuite() {
    delete pki_;
    delete dir_;
    pki_ = nullptr;
    dir_ = nullptr;
  }

  void TearDown() override {
    devices_.clear();
    const bool failed = HasFailure();
    controller_.reset();
    if (failed) {
      std::fprintf(stderr, "--- controller log tail ---\n%s\n",
                   tail(ota::test::read_file(work_dir() + "/controller.log")).c_str());
      std::fprintf(stderr, "--- device log tail ---\n%s\n",
                   tail(ota::test::read_file(device_log())).c_str());
      if (broker_)
        std::fprintf(stderr, "--- broker log tail ---\n%s\n", broker_->log_tail().c_str());
    }
    broker_.reset();
  }

  static std::string tail(const std::string& s) {
    return s.size() > 4000 ? s.substr(s.size() - 4000) : s;
  }

  std::string test_name() const {
    return ::testing::UnitTest::GetInstance()->current_test_info()->name();
  }
  std::string work_dir() const { return dir_->path() + "/" + test_name(); }
  std::string device_log() const { return work_dir() + "/devices.log"; }

  void start_broker() {
    ::mkdir(work_dir().c_str(), 0700);
    broker_ = std::make_unique<Broker>(*pki_);
  }

  // Broker plus ota-controller (with the broker's ACL file), up and answering.
  void start_stack() {
    start_broker();
    http_port_ = ota::test::free_loopback_port();
    controller_ = std::make_unique<Child>(
        std::vector<std::string>{
            OTA_CONTROLLER_BIN, "--broker-port", std::to_string(broker_->port()), "--ca",
            pki_->ca_cert(), "--cert", pki_->controller_cert(), "--key", pki_->controller_key(),
            "--db", work_dir() + "/ctl.db", "--store", work_dir() + "/images", "--signing-key",
            pki_->release_key(), "--http", "127.0.0.1:" + std::to_string(http_port_), "--acl-file",
            pki_->acl_path()},
        work_dir() + "/controller.log");
    ASSERT_TRUE(wait_until(
        [&] {
          auto r = client(false).Get("/api/v1/health");
          return r && r->status == 200;
        },
        15s))
        << "controller did not come up";
    std::ifstream tf(work_dir() + "/ctl.db.token");
    std::getline(tf, token_);
    ASSERT_EQ(token_.size(), 64u) << "no API token";
  }

  httplib::Client client(bool with_token = true) const {
    httplib::Client c("127.0.0.1", http_port_);
    c.set_connection_timeout(2);
    c.set_read_timeout(10);
    if (with_token && !token_.empty()) c.set_bearer_token_auth(token_);
    return c;
  }

  // The controller's liveness view of the device ("online" of GET /api/v1/devices/ID);
  // nullopt while the device is unknown or the controller does not answer.
  std::optional<bool> online(const std::string& id) const {
    auto r = client().Get(("/api/v1/devices/" + id).c_str());
    if (!r || r->status != 200) return std::nullopt;
    const json j = json::parse(r->body, nullptr, false);
    if (!j.is_object() || !j.contains("online") || !j["online"].is_boolean()) return std::nullopt;
    return j["online"].get<bool>();
  }

  bool all_show(const std::vector<std::string>& ids, bool want_online) const {
    for (const auto& id : ids) {
      if (online(id) != want_online) return false;
    }
    return true;
  }

  Child& start_devsim(const std::string& prefix, int count) {
    devices_.push_back(std::make_unique<Child>(
        std::vector<std::string>{OTA_DEVSIM_BIN, "--count", std::to_string(count), "--id-prefix",
                                 prefix, "--pki", pki_->dir, "--data", work_dir() + "/fleet",
                                 "--port", std::to_string(broker_->port()), "--hw", "board-x",
                                 "--no-fsync"},
        device_log()));
    return *devices_.back();
  }

  Child& start_agent(const std::string& id, const std::vector<std::string>& extra = {}) {
    std::vector<std::string> argv{OTA_AGENT_BIN, "--device-id", id, "--hw", "board-x", "--data",
                                  work_dir() + "/" + id, "--port", std::to_string(broker_->port()),
                                  "--ca", pki_->ca_cert(), "--cert", pki_->device_cert(id), "--key",
                                  pki_->device_key(id), "--trusted-key", pki_->release_pub()};
    argv.insert(argv.end(), extra.begin(), extra.end());
    devices_.push_back(std::make_unique<Child>(argv, device_log()));
    return *devices_.back();
  }

  // Stops `devices` (SIGTERM, reaped) once the controller shows every one of `ids` online,
  // and checks that the controller shows them offline within 2 s of the signal, and that the
  // presence topic the broker keeps for each is the offline message (not the hello).
  void expect_offline_within_2s_of_sigterm(Child& devices, const std::vector<std::string>& ids) {
    ASSERT_TRUE(wait_until([&] { return all_show(ids, true); }, 30s))
        << "devices did not come online";
    const auto signalled = SteadyClock::now();
    devices.stop();
    const auto exited = SteadyClock::now();
    const bool offline = wait_until([&] { return all_show(ids, false); }, 10s);
    const long long to_offline_ms = ms_between(signalled, SteadyClock::now());
    std::printf(
        "[ measured ] %zu device(s): SIGTERM -> process exited %lld ms, -> all shown "
        "offline by the controller %lld ms%s\n",
        ids.size(), ms_between(signalled, exited), to_offline_ms,
        offline ? "" : " (NOT reached within 10 s)");
    EXPECT_TRUE(offline) << "the controller still shows a stopped device online";
    EXPECT_LE(to_offline_ms, 2000) << "SIGTERM -> offline took longer than 2 s";

    // What a controller that (re)subscribes now would learn: the retained presence message.
    MqttTestClient observer(ota::test::ClientOptions::monitor(*pki_, broker_->port()));
    ASSERT_TRUE(observer.connect().ok());
    ASSERT_EQ(observer.subscribe("ota/v1/dev/+/up/presence", 1), 1);
    for (const auto& id : ids) {
      auto m = observer.wait_for_message(
          [&](const ota::test::Message& msg) { return msg.topic == presence_topic(id); }, 5s);
      ASSERT_TRUE(m.has_value()) << id << ": no retained presence message";
      EXPECT_TRUE(m->retain) << id;
      EXPECT_TRUE(is_offline_payload(m->payload))
          << id << ": retained presence is not the offline message: " << m->payload;
    }
  }

  // Polls `link` (10 ms at a time) until `cond` holds or `deadline` passes.
  static bool poll_until(MosquittoTransport& link, const std::function<bool()>& cond,
                         std::chrono::milliseconds deadline = 10s) {
    return wait_until(
        [&] {
          link.poll(10);
          return cond();
        },
        deadline, 0ms);
  }

  MqttSettings link_settings(int port) const {
    MqttSettings s;
    s.port = port;
    s.ca_file = pki_->ca_cert();
    s.cert_file = pki_->device_cert("link-001");
    s.key_file = pki_->device_key("link-001");
    s.client_id = "link-001";
    s.will_topic = presence_topic("link-001");
    s.will_payload = R"({"v":1,"type":"offline"})";
    s.jitter_seed = 1;  // reproducible delays
    return s;
  }

  static TempDir* dir_;
  static Pki* pki_;
  std::unique_ptr<Broker> broker_;
  std::unique_ptr<Child> controller_;
  std::vector<std::unique_ptr<Child>> devices_;
  int http_port_ = 0;
  std::string token_;
};

TempDir* DeviceLink::dir_ = nullptr;
Pki* DeviceLink::pki_ = nullptr;

// ------------------------------------------------------------------ clean stop

TEST_F(DeviceLink, DevsimStoppedWithSigtermShowsOfflineWithin2s) {
  ASSERT_NO_FATAL_FAILURE(start_stack());
  Child& fleet = start_devsim("term", 5);
  expect_offline_within_2s_of_sigterm(fleet, numbered_ids("term", 5));
}

TEST_F(DeviceLink, AgentStoppedWithSigtermShowsOfflineWithin2s) {
  ASSERT_NO_FATAL_FAILURE(start_stack());
  Child& agent = start_agent("agent-001");
  expect_offline_within_2s_of_sigterm(agent, {"agent-001"});
}

// The transport alone: stop() leaves the offline message retained although its DISCONNECT
// suppresses the last will.
TEST_F(DeviceLink, TransportStopReplacesRetainedHelloWithOffline) {
  start_broker();
  MosquittoTransport link(link_settings(broker_->port()));
  std::string error;
  ASSERT_TRUE(link.start(error)) << error;
  ASSERT_TRUE(poll_until(link, [&] { return link.connected(); }));
  const std::string hello = R"({"v":1,"type":"hello","note":"stands for the device's hello"})";
  ASSERT_TRUE(
      link.publish(presence_topic("link-001").c_str(), hello.data(), hello.size(), 1, true));
  {
    MqttTestClient observer(ota::test::ClientOptions::monitor(*pki_, broker_->port()));
    ASSERT_TRUE(observer.connect().ok());
    ASSERT_EQ(observer.subscribe(presence_topic("link-001"), 1), 1);
    ASSERT_TRUE(wait_until(
        [&] {
          link.poll(10);
          auto msgs = observer.messages();
          return !msgs.empty() && msgs.back().payload == hello;
        },
        5s, 0ms))
        << "the hello did not reach the broker";
  }
  const auto before = SteadyClock::now();
  link.stop();
  const long long stop_ms = ms_between(before, SteadyClock::now());
  std::printf("[ measured ] MosquittoTransport::stop() took %lld ms\n", stop_ms);
  EXPECT_LT(stop_ms, 1000) << "stop() ran into its PUBACK deadline";
  EXPECT_FALSE(link.connected());

  MqttTestClient observer(ota::test::ClientOptions::monitor(*pki_, broker_->port()));
  ASSERT_TRUE(observer.connect().ok());
  ASSERT_EQ(observer.subscribe(presence_topic("link-001"), 1), 1);
  auto m = observer.wait_for_topic(presence_topic("link-001"), 5s);
  ASSERT_TRUE(m.has_value()) << "no retained presence message";
  EXPECT_TRUE(m->retain);
  EXPECT_TRUE(is_offline_payload(m->payload)) << m->payload;
}

// ------------------------------------------------------------------ back-off

// A broker that accepts TCP but never answers: every attempt must be abandoned after
// connack_timeout and counted as failed, and a socket that opened must not reset the count.
TEST_F(DeviceLink, SocketWithoutConnackIsAFailedAttemptAndDoesNotResetBackoff) {
  SilentListener silent;
  MqttSettings s = link_settings(silent.port());
  s.connack_timeout = 300ms;
  s.reconnect_base = 20ms;
  s.reconnect_cap = 100ms;
  MosquittoTransport link(s);
  std::string error;
  ASSERT_TRUE(link.start(error)) << error;
  EXPECT_EQ(link.failed_attempts(), 0u) << "the first socket opened: not a failure yet";

  const auto started = SteadyClock::now();
  std::uint32_t highest = 0;
  bool count_went_down = false;
  std::size_t sockets = 0;
  const bool four_sockets = wait_until(
      [&] {
        link.poll(10);
        sockets = silent.accept_pending();
        const std::uint32_t n = link.failed_attempts();
        if (n < highest) count_went_down = true;
        highest = std::max(highest, n);
        return sockets >= 4;
      },
      15s, 0ms);
  const long long elapsed = ms_between(started, SteadyClock::now());
  std::printf("[ measured ] %zu sockets opened, %u failed attempts counted, %lld ms\n", sockets,
              link.failed_attempts(), elapsed);
  ASSERT_TRUE(four_sockets) << "the device stopped retrying";
  EXPECT_FALSE(count_went_down) << "an open socket without CONNACK reset the back-off";
  EXPECT_GE(link.failed_attempts(), 3u);  // the 4th socket's attempt is still pending
  EXPECT_FALSE(link.connected());
  EXPECT_EQ(link.connects(), 0u);
  // Each of the three abandoned attempts waited for its CONNACK deadline.
  EXPECT_GE(elapsed, 3 * 300);
  link.stop();
}

// step() serves an event loop that drives many devices (ota-devsim): it must not wait for
// TCP. A listener whose accept queue is full (mosquitto's holds 100) drops the SYN, and the
// kernel sends it again only after a second: a blocking connect would hold the loop, and
// every device on it, that long. Here the queue is full (backlog 0, one client waiting), so
// the attempt must still be connecting in the kernel when step() has returned.
TEST_F(DeviceLink, StepReturnsWhileTheTcpConnectIsStillPending) {
  SilentListener full(0);
  const int waiting = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<std::uint16_t>(full.port()));
  ASSERT_EQ(::connect(waiting, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0)
      << "the first client fills the accept queue";

  MosquittoTransport link(link_settings(full.port()));
  std::string error;
  ASSERT_TRUE(link.start(error)) << error;
  link.step(false, false);
  ASSERT_GE(link.socket(), 0) << "no connection attempt";
  tcp_info info{};
  socklen_t len = sizeof info;
  ASSERT_EQ(::getsockopt(link.socket(), IPPROTO_TCP, TCP_INFO, &info, &len), 0);
  EXPECT_EQ(info.tcpi_state, TCP_SYN_SENT) << "step() returned only once TCP was up (or failed)";
  EXPECT_TRUE(link.wants_write()) << "the loop must learn when the connection is up";
  EXPECT_EQ(link.connect_attempts(), 1u);
  EXPECT_FALSE(link.connected());
  ::close(waiting);
}

// A transport given a TLS context (MqttSettings::tls_context: ota-devsim's devices keep
// theirs across simulated power cycles) connects with it and does not read the files again;
// without it, start() names the file it could not use.
TEST_F(DeviceLink, TransportConnectsWithTheTlsContextItIsGiven) {
  start_broker();
  MqttSettings s = link_settings(broker_->port());
  std::string error;
  s.tls_context = ota::agent::linux_port::make_tls_context(s, error);
  ASSERT_NE(s.tls_context, nullptr) << error;
  s.cert_file = s.key_file = dir_->path() + "/no-such-key.pem";
  MosquittoTransport link(s);
  ASSERT_TRUE(link.start(error)) << error;
  EXPECT_TRUE(poll_until(link, [&] { return link.connected(); }))
      << "no connection with the context given";
  link.stop();

  s.tls_context = nullptr;
  MosquittoTransport from_files(s);
  EXPECT_FALSE(from_files.start(error));
  EXPECT_NE(error.find("no-such-key.pem"), std::string::npos) << error;
}

// A device that connects again resumes the TLS session of its last connection (the broker
// skips the certificates, signatures and key agreement: a wave's devices all reconnect at
// once after the update's reboot) and is still itself at the broker: its own topics are
// delivered to it, another device's are not.
TEST_F(DeviceLink, ReconnectResumesTheTlsSessionAsTheSameDevice) {
  start_broker();
  MqttSettings s = link_settings(broker_->port());
  std::string error;
  s.tls_context = ota::agent::linux_port::make_tls_context(s, error);
  ASSERT_NE(s.tls_context, nullptr) << error;
  auto connect = [&](MosquittoTransport& link) {
    return link.start(error) && poll_until(link, [&] { return link.connected(); });
  };
  {
    MosquittoTransport first(s);
    ASSERT_TRUE(connect(first)) << error;
    EXPECT_EQ(first.resumed_connects(), 0u) << "nothing to resume on the first connection";
    first.stop();
  }
  // A reboot: a new transport, the context (and the session it keeps) the same.
  MosquittoTransport again(s);
  std::vector<std::string> received;
  again.set_handlers(nullptr, [&](const char* topic, const std::uint8_t* data, std::size_t len) {
    received.push_back(std::string(topic) + " " + std::string(reinterpret_cast<const char*>(data), len));
  });
  ASSERT_TRUE(connect(again)) << error;
  EXPECT_EQ(again.resumed_connects(), 1u) << "a full handshake after a clean stop";
  ASSERT_TRUE(again.subscribe((kDevTopics + "term-001/down/#").c_str(), 1));
  ASSERT_TRUE(again.subscribe((kDevTopics + "link-001/down/#").c_str(), 1));
  MqttTestClient ctl(ota::test::ClientOptions::controller(*pki_, broker_->port()));
  ASSERT_TRUE(ctl.connect().ok());
  // In this order: when the second arrives, the first would have arrived before it.
  ASSERT_EQ(ctl.publish(kDevTopics + "term-001/down/offer", "not-yours"), 0);
  ASSERT_EQ(ctl.publish(kDevTopics + "link-001/down/offer", "yours"), 0);
  EXPECT_TRUE(poll_until(again, [&] { return !received.empty(); }))
      << "the resumed connection gets nothing on its own topic";
  EXPECT_EQ(received, std::vector<std::string>{kDevTopics + "link-001/down/offer yours"});
  again.stop();
}

// Revocation still holds with resumption: the CRL is re-read at SIGHUP together with a new
// TLS context in mosquitto, which does not know the sessions of the old one, so a revoked
// device's kept session is refused and its full handshake fails the CRL check.
TEST_F(DeviceLink, ARevokedDeviceCannotResumeItsSessionAfterTheBrokerReloadsTheCrl) {
  start_broker();
  MqttSettings s = link_settings(broker_->port());
  s.cert_file = pki_->device_cert("resume-001");
  s.key_file = pki_->device_key("resume-001");
  s.client_id = "resume-001";
  s.will_topic = presence_topic("resume-001");
  s.reconnect_base = 20ms;
  s.reconnect_cap = 100ms;
  std::string error;
  s.tls_context = ota::agent::linux_port::make_tls_context(s, error);
  ASSERT_NE(s.tls_context, nullptr) << error;
  for (int i = 0; i < 2; ++i) {
    MosquittoTransport link(s);
    ASSERT_TRUE(link.start(error)) << error;
    ASSERT_TRUE(poll_until(link, [&] { return link.connected(); }));
    EXPECT_EQ(link.resumed_connects(), i == 0 ? 0u : 1u) << "connection " << i + 1;
    link.stop();
  }
  pki_->revoke("resume-001");
  ASSERT_TRUE(broker_->reload());
  MosquittoTransport revoked(s);
  ASSERT_TRUE(revoked.start(error)) << error;
  EXPECT_TRUE(poll_until(revoked, [&] { return revoked.failed_attempts() >= 3; }))
      << "the revoked device's attempts were not refused";
  EXPECT_EQ(revoked.connects(), 0u) << "the revoked device connected";
  EXPECT_EQ(revoked.resumed_connects(), 0u);
  revoked.stop();
}

// A real broker restart: failed attempts pile up while it is down and only the CONNACK of the
// new connection resets them.
TEST_F(DeviceLink, OnlyTheBrokersConnackResetsBackoff) {
  start_broker();
  MqttSettings s = link_settings(broker_->port());
  s.reconnect_base = 20ms;
  s.reconnect_cap = 200ms;
  MosquittoTransport link(s);
  std::string error;
  ASSERT_TRUE(link.start(error)) << error;
  ASSERT_TRUE(poll_until(link, [&] { return link.connected(); }, 10s));
  EXPECT_EQ(link.failed_attempts(), 0u);
  EXPECT_EQ(link.connects(), 1u);

  broker_->kill9();
  ASSERT_TRUE(poll_until(link, [&] { return link.failed_attempts() >= 3; }, 10s))
      << "refused connections were not counted: " << link.failed_attempts();
  EXPECT_FALSE(link.connected());

  broker_->start();
  ASSERT_TRUE(poll_until(link, [&] { return link.connected(); }, 15s)) << "no reconnect";
  EXPECT_EQ(link.failed_attempts(), 0u);
  EXPECT_EQ(link.connects(), 2u);
  link.stop();
}

// Twenty devices lose the broker at the same instant (SIGKILL). After the outage every one
// must come back, and not in one burst: the arrival of their hellos, as a subscriber that
// connected right after the broker restarted sees them, spreads over more than a second
// (lock-step retries would land within the few hundred ms 20 TLS handshakes take).
TEST_F(DeviceLink, FleetComesBackSpreadOutAfterBrokerRestart) {
  ASSERT_NO_FATAL_FAILURE(start_stack());
  const auto ids = numbered_ids("fleet", kFleetSize);
  Child& fleet = start_devsim("fleet", kFleetSize);
  ASSERT_TRUE(wait_until([&] { return all_show(ids, true); }, 30s)) << "fleet did not come online";

  broker_->kill9();
  // The outage itself (not a synchronisation): long enough for every device to fail several
  // attempts, so their back-off has grown towards the cap.
  std::this_thread::sleep_for(3s);
  broker_->start();

  MqttTestClient observer(ota::test::ClientOptions::monitor(*pki_, broker_->port()));
  ASSERT_TRUE(observer.connect().ok());
  ASSERT_EQ(observer.subscribe("ota/v1/dev/+/up/presence", 1), 1);
  const auto subscribed = SteadyClock::now();
  // First hello per device: when the observer saw it (10 ms resolution) and whether it was
  // already retained (the device was back before the observer subscribed).
  std::map<std::string, std::pair<long long, bool>> first_hello;
  const bool all_back = wait_until(
      [&] {
        const long long now_ms = ms_between(subscribed, SteadyClock::now());
        for (const auto& m : observer.messages()) {
          ota::proto::PresenceType type{};
          if (ota::proto::decode_presence_type(m.payload.data(), m.payload.size(), type) ||
              type != ota::proto::PresenceType::hello) {
            continue;
          }
          first_hello.emplace(device_of(m.topic), std::make_pair(now_ms, m.retain));
        }
        return first_hello.size() >= ids.size();
      },
      30s, 10ms);
  std::vector<long long> live;
  for (const auto& [id, seen] : first_hello) {
    if (!seen.second) live.push_back(seen.first);
  }
  std::sort(live.begin(), live.end());
  std::string spread;
  for (long long t : live) spread += " " + std::to_string(t);
  std::printf(
      "[ measured ] %zu/%d devices back; %zu hellos after the observer subscribed, at "
      "(ms):%s\n",
      first_hello.size(), kFleetSize, live.size(), spread.c_str());
  EXPECT_TRUE(all_back) << "not every device reconnected after the broker restart";
  ASSERT_GE(live.size(), 8u) << "too few devices came back after the observer subscribed to "
                                "measure the spread";
  EXPECT_GE(live.back() - live.front(), 1000) << "the fleet reconnected in one burst";
  EXPECT_TRUE(wait_until([&] { return all_show(ids, true); }, 30s))
      << "the controller does not show the whole fleet online again";
  EXPECT_TRUE(fleet.alive()) << "ota-devsim died during the broker outage";
}

}  // namespace

// ------------------------------------------------------------------ key sets (6.6)

// ota-agent --root-key/--online-key: a root-signed key set on .../down/keys is applied, kept
// in DATA/agent.keys across a restart, and the retained hello reports its version; a set
// signed by another key is refused (the hello is republished with the version held).
TEST_F(DeviceLink, AgentAppliesRootSignedKeySetAndKeepsItAcrossRestart) {
  ASSERT_NO_FATAL_FAILURE(start_broker());
  const std::string id = "keys-001";
  TestKey root, online, stranger;
  const std::string root_pub = root.write_pub(work_dir() + "/root.pub");
  const std::string online_pub = online.write_pub(work_dir() + "/online.pub");
  const std::string stranger_pub = stranger.write_pub(work_dir() + "/stranger.pub");
  MqttTestClient observer(ota::test::ClientOptions::monitor(*pki_, broker_->port()));
  ASSERT_TRUE(observer.connect().ok());
  ASSERT_EQ(observer.subscribe(presence_topic(id), 1), 1);
  auto hello_with = [&](long long keys) {
    return observer.wait_for_message(
        [&](const ota::test::Message& m) {
          return m.topic == presence_topic(id) && hello_keys(m.payload) == keys;
        },
        20s);
  };
  const std::vector<std::string> keys_flags{"--root-key", root_pub, "--online-key", online_pub};
  Child* agent = &start_agent(id, keys_flags);
  ASSERT_TRUE(hello_with(0).has_value()) << "no hello from " << id;

  MqttTestClient controller(ota::test::ClientOptions::controller(*pki_, broker_->port()));
  ASSERT_TRUE(controller.connect().ok());
  const std::string topic = kDevTopics + id + "/down/keys";
  observer.clear_messages();
  ASSERT_EQ(controller.publish(topic, keys_message(1, {{pki_->release_pub(), ota::proto::KeyRole::release},
                                                       {online_pub, ota::proto::KeyRole::online}},
                                                   root, root_pub)),
            0);
  ASSERT_TRUE(hello_with(1).has_value()) << "the key set was not applied";
  struct stat st {};
  EXPECT_EQ(::stat((work_dir() + "/" + id + "/agent.keys").c_str(), &st), 0)
      << "no key record next to the agent's state";

  // Not signed by the root: refused, the hello says 1 again.
  observer.clear_messages();
  ASSERT_EQ(controller.publish(topic, keys_message(2, {{pki_->release_pub(), ota::proto::KeyRole::release}},
                                                   stranger, stranger_pub)),
            0);
  ASSERT_TRUE(hello_with(1).has_value()) << "no hello after a refused set";

  // Restart: the set comes back from DATA/agent.keys.
  agent->stop();
  observer.clear_messages();
  start_agent(id, keys_flags);
  EXPECT_TRUE(hello_with(1).has_value()) << "the key set did not survive the restart";
}
