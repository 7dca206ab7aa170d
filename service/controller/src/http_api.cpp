#include "ota/service/http_api.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <httplib.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cerrno>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <limits>
#include <regex>
#include <set>

#include "ota/proto/topics.hpp"
#include "ota/service/log.hpp"

namespace ota::service {

using nlohmann::json;

Result<HostPort> parse_host_port(const std::string& s) {
  HostPort hp;
  std::string port;
  if (!s.empty() && s[0] == '[') {
    auto close = s.find(']');
    if (close == std::string::npos || close + 1 >= s.size() || s[close + 1] != ':')
      return invalid_err("'" + s + "' is not [HOST]:PORT");
    hp.host = s.substr(1, close - 1);
    port = s.substr(close + 2);
  } else {
    auto colon = s.rfind(':');
    if (colon == std::string::npos) return invalid_err("'" + s + "' is not HOST:PORT");
    hp.host = s.substr(0, colon);
    port = s.substr(colon + 1);
  }
  if (hp.host.empty()) return invalid_err("'" + s + "' has an empty host");
  auto p = parse_u32("port", port, 0, 65535);
  if (!p) return invalid_err("'" + s + "': " + p.error());
  hp.port = static_cast<int>(*p);
  return hp;
}

bool is_loopback_host(const std::string& host) {
  return host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

Result<std::uint32_t> parse_u32(const std::string& name, const std::string& value,
                                std::uint32_t min, std::uint32_t max) {
  if (value.empty() || value.size() > 10 || value.find_first_not_of("0123456789") != std::string::npos)
    return invalid_err(name + " '" + value + "' is not a non-negative integer");
  unsigned long long v = std::strtoull(value.c_str(), nullptr, 10);
  if (v < min || v > max)
    return invalid_err(name + " " + value + " out of range " + std::to_string(min) + ".." +
                       std::to_string(max));
  return static_cast<std::uint32_t>(v);
}

Result<DeployRequest> parse_deploy_request(const std::string& body) {
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object())
    return invalid_err("body must be a JSON object like {\"image\": ID, \"device\": ID}");
  DeployRequest r;
  auto it = j.find("image");
  if (it == j.end() || !it->is_string() || it->get<std::string>().empty())
    return invalid_err("\"image\" (image id or version, a string) is required");
  r.image = it->get<std::string>();
  const bool has_dev = j.contains("device"), has_grp = j.contains("group");
  if (has_dev == has_grp) return invalid_err("give exactly one of \"device\" or \"group\"");
  r.kind = has_dev ? "device" : "group";
  const json& t = j[r.kind];
  if (!t.is_string()) return invalid_err("\"" + r.kind + "\" must be a string");
  r.target = t.get<std::string>();
  if (!proto::valid_id(r.target.data(), r.target.size()))
    return invalid_err(r.kind + " '" + r.target +
                       "' is not a valid id (1-64 chars of A-Z a-z 0-9 . _ -)");
  for (auto kv = j.begin(); kv != j.end(); ++kv)
    if (kv.key() != "image" && kv.key() != "device" && kv.key() != "group")
      return invalid_err("unknown field \"" + kv.key() + "\"");
  return r;
}

namespace {

// 32 random bytes as 64 lower-case hex characters (an API token secret).
Result<std::string> random_secret() {
  unsigned char raw[32];
  if (RAND_bytes(raw, sizeof raw) != 1) return internal_err("no randomness (RAND_bytes failed)");
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned char c : raw) {
    out += hex[c >> 4];
    out += hex[c & 15];
  }
  OPENSSL_cleanse(raw, sizeof raw);
  return out;
}

std::string mode_text(mode_t mode) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "%04o", static_cast<unsigned>(mode & 07777));
  return buf;
}

}  // namespace

Result<std::string> load_or_create_api_token(const std::string& path) {
  auto trim = [](std::string t) {
    const char* ws = " \t\r\n";
    const auto b = t.find_first_not_of(ws);
    if (b == std::string::npos) return std::string();
    return t.substr(b, t.find_last_not_of(ws) - b + 1);
  };
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd >= 0) {
    auto tok = random_secret();
    if (!tok) {
      ::close(fd);
      ::unlink(path.c_str());
      return internal_err("api token: " + tok.error());
    }
    const std::string line = *tok + "\n";
    const bool ok = ::write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size()) &&
                    ::fsync(fd) == 0;
    ::close(fd);
    if (!ok) {
      ::unlink(path.c_str());
      return internal_err("api token: write " + path + ": " + std::strerror(errno));
    }
    log_info("created API token file " + path + " (mode 0600)");
    return *tok;
  }
  if (errno != EEXIST)
    return invalid_err("api token: create " + path + ": " + std::strerror(errno));
  fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return invalid_err("api token: read " + path + ": " + std::strerror(errno));
  struct stat st {};
  // The file is the bootstrap admin token: whoever can read it controls the fleet.
  if (::fstat(fd, &st) == 0 && (st.st_mode & 077)) {
    ::close(fd);
    return invalid_err("api token file " + path + " has mode " + mode_text(st.st_mode) +
                       ": group or others may access it, and it grants admin access to the API; "
                       "run `chmod 600 " + path +
                       "` (give other readers such as Prometheus their own token: otactl token "
                       "create NAME --role read-only)");
  }
  std::string text;
  char buf[256];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof buf)) > 0 && text.size() < 4096)
    text.append(buf, static_cast<std::size_t>(n));
  ::close(fd);
  if (n < 0) return invalid_err("api token: read " + path + ": " + std::strerror(errno));
  std::string tok = trim(text);
  if (tok.empty()) return invalid_err("api token: " + path + " is empty");
  if (tok.find_first_of(" \t\r\n") != std::string::npos)
    return invalid_err("api token: " + path + " must hold one token on one line");
  return tok;
}

bool token_equal(const std::string& a, const std::string& b) {
  // Length is not secret (64 hex characters); the contents are compared in constant time.
  if (a.size() != b.size() || a.empty()) return false;
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

std::string media_type(const std::string& content_type) {
  std::string t = content_type.substr(0, content_type.find(';'));
  const auto b = t.find_first_not_of(" \t");
  if (b == std::string::npos) return {};
  t = t.substr(b, t.find_last_not_of(" \t") - b + 1);
  std::transform(t.begin(), t.end(), t.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return t;
}

std::string sha256_hex(const std::string& data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr) != 1) return {};
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < len; ++i) {
    out += hex[md[i] >> 4];
    out += hex[md[i] & 15];
  }
  return out;
}

const char* role_name(Role r) {
  switch (r) {
    case Role::read_only: return "read-only";
    case Role::operator_: return "operator";
    case Role::admin: return "admin";
  }
  return "?";
}

std::optional<Role> parse_role(const std::string& name) {
  for (Role r : {Role::read_only, Role::operator_, Role::admin})
    if (name == role_name(r)) return r;
  return std::nullopt;
}

bool valid_token_name(const std::string& name) {
  if (name.empty() || name.size() > 64) return false;
  for (char c : name)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-' && c != '@')
      return false;
  return true;
}

// ------------------------------------------------------------------------------ ApiTokens

Result<std::unique_ptr<ApiTokens>> ApiTokens::open(const std::string& db_path,
                                                   const std::string& bootstrap_secret) {
  if (bootstrap_secret.empty()) return invalid_err("api tokens: the bootstrap token is empty");
  std::unique_ptr<ApiTokens> t(new ApiTokens());
  // The Controller opened this file a moment ago and checked it; a second quick_check of a
  // large database would only delay the start.
  Status s = t->store_.open(db_path, kSchemaVersion, /*check_integrity=*/false);
  if (!s) return s.context("api tokens");
  auto rows = t->store_.list_api_tokens();
  if (!rows) return rows.context("api tokens");
  for (auto& r : *rows) {
    if (!parse_role(r.role)) return internal_err("api tokens: token '" + r.name + "' has unknown role '" + r.role + "'");
    t->by_sha256_[r.sha256] = std::move(r);
  }
  t->bootstrap_sha256_ = sha256_hex(bootstrap_secret);
  return t;
}

std::optional<ApiTokens::Identity> ApiTokens::authenticate(const std::string& secret) const {
  if (secret.empty()) return std::nullopt;
  // Only hashes are compared: a lookup's timing says something about SHA-256(secret), which
  // does not help to guess a secret.
  const std::string h = sha256_hex(secret);
  if (token_equal(h, bootstrap_sha256_)) return Identity{kBootstrapTokenName, Role::admin};
  std::lock_guard<std::mutex> lock(mu_);
  auto it = by_sha256_.find(h);
  if (it == by_sha256_.end()) return std::nullopt;
  return Identity{it->second.name, parse_role(it->second.role).value_or(Role::read_only)};
}

Result<ApiTokens::Created> ApiTokens::create(const std::string& name, Role role,
                                             const std::string& actor) {
  if (!valid_token_name(name))
    return invalid_err("token name '" + name + "' is not 1-64 characters of A-Z a-z 0-9 . _ @ -");
  if (name == kBootstrapTokenName)
    return conflict_err("'" + name + "' is the token in the controller's --api-token-file");
  auto secret = random_secret();
  if (!secret) return secret.context("create token");
  Created c;
  c.secret = *secret;
  c.token.name = name;
  c.token.role = role_name(role);
  c.token.sha256 = sha256_hex(c.secret);
  c.token.created_at = now_s();
  c.token.created_by = actor;
  {
    std::lock_guard<std::mutex> lock(store_mu_);
    Tx tx(store_);
    if (!tx.status()) return tx.status().context("create token");
    Status s = store_.insert_api_token(c.token);
    if (!s) return s.kind() == ErrKind::conflict ? s.err() : s.context("create token");
    s = store_.add_event("", "", "token_created", name + " (" + c.token.role + ")", actor);
    if (!s) return s.context("create token");
    s = tx.commit();
    if (!s) return s.context("create token");
  }
  std::lock_guard<std::mutex> lock(mu_);
  by_sha256_[c.token.sha256] = c.token;
  return c;
}

Status ApiTokens::revoke(const std::string& name, const std::string& actor) {
  if (name == kBootstrapTokenName)
    return conflict_err("the bootstrap token is the controller's --api-token-file and cannot be "
                        "revoked through the API: write a new token into that file (or delete "
                        "it: the controller creates a new one) and restart the controller");
  // One revoke or create at a time (store_mu_), requests keep authenticating meanwhile (mu_).
  std::lock_guard<std::mutex> store_lock(store_mu_);
  std::string role;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = std::find_if(by_sha256_.begin(), by_sha256_.end(),
                           [&](const auto& kv) { return kv.second.name == name; });
    if (it == by_sha256_.end()) return not_found_err("no token named '" + name + "'");
    role = it->second.role;
  }
  {
    Tx tx(store_);
    if (!tx.status()) return tx.status().context("revoke token");
    auto deleted = store_.delete_api_token(name);
    if (!deleted) return deleted.context("revoke token");
    Status s = store_.add_event("", "", "token_revoked", name + " (" + role + ")", actor);
    if (!s) return s.context("revoke token");
    s = tx.commit();
    if (!s) return s.context("revoke token");
  }
  std::lock_guard<std::mutex> lock(mu_);
  for (auto it = by_sha256_.begin(); it != by_sha256_.end(); ++it)
    if (it->second.name == name) {
      by_sha256_.erase(it);
      break;
    }
  return {};
}

std::vector<ApiTokenRec> ApiTokens::list() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<ApiTokenRec> out;
  for (const auto& kv : by_sha256_) out.push_back(kv.second);
  std::sort(out.begin(), out.end(),
            [](const ApiTokenRec& a, const ApiTokenRec& b) { return a.name < b.name; });
  return out;
}

// ------------------------------------------------------------------ connections (slowloris)
//
// cpp-httplib gives every accepted connection a pool thread until the connection ends; a thread
// waits up to the read timeout for every byte, so a client that sends nothing, or one byte at a
// time, holds a thread for as long as it likes, and nine of them starved the API's eight
// threads. Here httplib's accept loop only hands the socket over (InlineTaskQueue,
// ApiServer::process_and_close_socket). A ConnectionGate keeps the connections that have not
// sent a complete request header in one poll() loop, where they cost no thread, closes them at
// the header deadline however slowly they trickle, and keeps the number of open connections
// bounded. Only a complete header reaches a worker thread, which runs exactly one request
// through httplib (Server::process_request) and hands the connection back.

namespace {

using Clock = std::chrono::steady_clock;

int millis_until(Clock::time_point t, Clock::time_point now) {
  if (t <= now) return 0;
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(t - now).count() + 1;
  return static_cast<int>(std::min<long long>(ms, std::numeric_limits<int>::max()));
}

// Waits until fd is readable (POLLIN) or writable (POLLOUT), at most `timeout`.
bool wait_for_socket(int fd, short events, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    pollfd p{fd, events, 0};
    const int r = ::poll(&p, 1, millis_until(deadline, Clock::now()));
    if (r > 0) return true;  // ready, or an error/hang-up the next read or write reports
    if (r == 0) return false;
    if (errno != EINTR) return false;
  }
}

// Where a request header ends ("\r\n\r\n", or "\n\n" which httplib then refuses with a 400),
// searching from `from`; npos if it has not arrived yet.
std::size_t header_end(const std::string& buf, std::size_t from) {
  for (std::size_t i = from; i < buf.size(); ++i) {
    if (buf[i] != '\n') continue;
    if (i >= 1 && buf[i - 1] == '\n') return i + 1;
    if (i >= 3 && buf[i - 1] == '\r' && buf[i - 2] == '\n' && buf[i - 3] == '\r') return i + 1;
  }
  return std::string::npos;
}

// Best effort: a short reply to a connection that is about to be closed (never blocks).
void send_final_reply(int fd, int status, const char* reason, const std::string& error) {
  const std::string body = nlohmann::json{{"error", error}}.dump() + "\n";
  const std::string msg = "HTTP/1.1 " + std::to_string(status) + " " + reason +
                          "\r\nConnection: close\r\nContent-Type: application/json\r\n"
                          "Content-Length: " +
                          std::to_string(body.size()) + "\r\n\r\n" + body;
  (void)::send(fd, msg.data(), msg.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
}

// Runs each job on the thread that enqueues it: httplib's accept loop, whose job
// (ApiServer::process_and_close_socket) only passes the socket to the ConnectionGate.
class InlineTaskQueue : public httplib::TaskQueue {
 public:
  void enqueue(std::function<void()> fn) override { fn(); }
  void shutdown() override {}
};

// A refused request's body is read and thrown away for at most this long and this much before
// the connection is closed (a "lingering close"): closing a socket with unread data resets the
// connection, and the reset can destroy the reply (a 401, 403 or 415) before the client reads it.
constexpr std::chrono::milliseconds kMaxLinger{5000};
constexpr std::size_t kMaxAcceptedNotYetPolled = 256;
constexpr std::size_t kMaxLingerBytes = 64u * 1024u * 1024u;

// One client connection between requests.
struct Connection {
  int fd = -1;
  std::string received;  // read from the socket, not yet consumed by a request
  std::uint64_t waiting_order = 0;  // when it began to wait, as a count (times can be equal)
  Clock::time_point header_deadline;  // or, while draining, the end of the lingering close
  int requests_served = 0;
  bool draining = false;  // the last reply is sent; discard what the client still sends
  std::size_t drained = 0;
};

class ConnectionGate {
 public:
  // serve: runs one request of a connection whose `received` holds a complete header; true
  // keeps the connection open for the next request.
  using Serve = std::function<bool(Connection&)>;

  ConnectionGate(const HttpLimits& limits, Serve serve) : limits_(limits), serve_(std::move(serve)) {}
  ~ConnectionGate() { stop(); }
  ConnectionGate(const ConnectionGate&) = delete;
  ConnectionGate& operator=(const ConnectionGate&) = delete;

  Status start() {
    wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (wake_fd_ < 0) return internal_err(std::string("http: eventfd: ") + std::strerror(errno));
    poller_ = std::thread([this] { poll_loop(); });
    for (int i = 0; i < std::max(1, limits_.workers); ++i)
      workers_.emplace_back([this] { work_loop(); });
    return {};
  }

  // A new connection from the accept loop; never blocks. A burst waits for the poller, which
  // applies max_connections; a flood the poller cannot keep up with is closed at once beyond
  // kMaxAcceptedNotYetPolled: descriptors are shared with the database and the image files.
  void admit(int fd) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!stopping_ && wake_fd_ >= 0 && incoming_.size() < kMaxAcceptedNotYetPolled) {
        incoming_.push_back(fd);
        fd = -1;
      }
    }
    if (fd >= 0)
      ::close(fd);
    else
      wake();
  }

  void stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) return;
      stopping_ = true;
      // A worker may wait for a slow body or client: end its reads and writes now.
      for (int fd : busy_fds_) ::shutdown(fd, SHUT_RDWR);
    }
    work_cv_.notify_all();
    wake();
    if (poller_.joinable()) poller_.join();
    for (auto& w : workers_)
      if (w.joinable()) w.join();
    workers_.clear();
    std::lock_guard<std::mutex> lock(mu_);
    for (int fd : incoming_) ::close(fd);
    incoming_.clear();
    for (auto& c : returned_) ::close(c->fd);
    returned_.clear();
    for (auto& c : ready_) ::close(c->fd);
    ready_.clear();
    if (wake_fd_ >= 0) ::close(wake_fd_);
    wake_fd_ = -1;
  }

 private:
  using Waiting = std::map<int, std::unique_ptr<Connection>>;  // by fd

  void wake() {
    const std::uint64_t one = 1;
    if (wake_fd_ >= 0) (void)!::write(wake_fd_, &one, sizeof one);
  }

  // A connection starts (again) to wait for a request header; one whose header is already
  // here (pipelined after the previous request) goes straight to a worker.
  void enter(Waiting& waiting, std::unique_ptr<Connection> c, Clock::time_point now) {
    c->waiting_order = ++entered_;
    c->header_deadline = now + (c->draining ? std::min(limits_.header_timeout, kMaxLinger)
                                            : limits_.header_timeout);
    if (!c->draining && header_end(c->received, 0) != std::string::npos) {
      dispatch(std::move(c));
      return;
    }
    const int fd = c->fd;
    waiting[fd] = std::move(c);
  }

  void dispatch(std::unique_ptr<Connection> c) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      ready_.push_back(std::move(c));
    }
    work_cv_.notify_one();
  }

  void close_waiting(Waiting& waiting, Waiting::iterator it) {
    ::close(it->first);
    waiting.erase(it);
  }

  // Over max_connections: the connections that have waited longest for a request header go
  // first. A client that sends its request at once is never the oldest for long, so holding
  // idle connections does not keep anyone else out.
  void evict_over_limit(Waiting& waiting) {
    std::size_t in_service;
    {
      std::lock_guard<std::mutex> lock(mu_);
      in_service = ready_.size() + busy_fds_.size();
    }
    while (!waiting.empty() && waiting.size() + in_service > limits_.max_connections) {
      auto oldest = waiting.begin();
      for (auto it = waiting.begin(); it != waiting.end(); ++it)
        if (it->second->waiting_order < oldest->second->waiting_order) oldest = it;
      close_waiting(waiting, oldest);
      ++evicted_;
    }
  }

  // Reads and discards until the client closes its side, or enough.
  void drain(Waiting& waiting, Waiting::iterator it) {
    Connection& c = *it->second;
    char buf[64 * 1024];
    for (;;) {
      const ssize_t n = ::recv(c.fd, buf, sizeof buf, MSG_DONTWAIT);
      if (n > 0) {
        c.drained += static_cast<std::size_t>(n);
        if (c.drained < kMaxLingerBytes) continue;
      } else if (n < 0 && errno == EINTR) {
        continue;
      } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        return;
      }
      close_waiting(waiting, it);
      return;
    }
  }

  void read_header(Waiting& waiting, Waiting::iterator it) {
    Connection& c = *it->second;
    if (c.draining) return drain(waiting, it);
    const std::size_t searched = c.received.size() >= 3 ? c.received.size() - 3 : 0;
    bool closed = false;
    char buf[16 * 1024];
    while (c.received.size() < limits_.max_header_bytes) {
      const ssize_t n = ::recv(c.fd, buf, sizeof buf, MSG_DONTWAIT);
      if (n > 0) {
        c.received.append(buf, static_cast<std::size_t>(n));
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      closed = n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK);
      break;
    }
    if (header_end(c.received, searched) != std::string::npos) {
      // Complete, even if the client closed its side after sending: the reply can still go.
      std::unique_ptr<Connection> ready = std::move(it->second);
      waiting.erase(it);
      dispatch(std::move(ready));
    } else if (closed) {
      close_waiting(waiting, it);
    } else if (c.received.size() >= limits_.max_header_bytes) {
      send_final_reply(c.fd, 431, "Request Header Fields Too Large",
                       "request header larger than " +
                           std::to_string(limits_.max_header_bytes) + " bytes");
      close_waiting(waiting, it);
    }
  }

  void expire(Waiting& waiting, Clock::time_point now) {
    for (auto it = waiting.begin(); it != waiting.end();) {
      auto next = std::next(it);
      if (it->second->header_deadline <= now) {
        // A client in the middle of a request learns why; an idle kept-alive connection is
        // simply closed, as HTTP allows.
        const Connection& c = *it->second;
        if (!c.draining && !c.received.empty())
          send_final_reply(it->first, 408, "Request Timeout",
                           "request header not complete within " +
                               std::to_string(limits_.header_timeout.count()) + " ms");
        // Slow or idle from the start; a kept-alive connection going idle is normal.
        if (!c.draining && (!c.received.empty() || c.requests_served == 0)) ++timed_out_;
        close_waiting(waiting, it);
      }
      it = next;
    }
  }

  // Under attack this would log every second; a summary every 10 s is enough to notice.
  void report(Clock::time_point now) {
    if (now < next_report_) return;
    if (evicted_ + timed_out_ > 0)
      log_warn("http: closed " + std::to_string(timed_out_) +
               " connections that sent no complete request header within " +
               std::to_string(limits_.header_timeout.count()) + " ms and " +
               std::to_string(evicted_) + " idle ones over the limit of " +
               std::to_string(limits_.max_connections) + " connections (last 10 s)");
    evicted_ = 0;
    timed_out_ = 0;
    next_report_ = now + std::chrono::seconds(10);
  }

  void poll_loop() {
    Waiting waiting;
    std::vector<pollfd> fds;
    for (;;) {
      std::vector<int> incoming;
      std::vector<std::unique_ptr<Connection>> returned;
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (stopping_) break;
        incoming.swap(incoming_);
        returned.swap(returned_);
      }
      auto now = Clock::now();
      for (int fd : incoming) {
        auto c = std::make_unique<Connection>();
        c->fd = fd;
        enter(waiting, std::move(c), now);
      }
      for (auto& c : returned) enter(waiting, std::move(c), now);
      evict_over_limit(waiting);

      fds.clear();
      fds.push_back({wake_fd_, POLLIN, 0});
      Clock::time_point next_deadline = Clock::time_point::max();
      for (const auto& kv : waiting) {
        fds.push_back({kv.first, POLLIN, 0});
        next_deadline = std::min(next_deadline, kv.second->header_deadline);
      }
      const int timeout = waiting.empty() ? 10000 : millis_until(next_deadline, now);
      const int n = ::poll(fds.data(), fds.size(), timeout);
      if (n < 0 && errno != EINTR) {
        // Not expected (the descriptors are ours and few); do not spin on it.
        log_error(std::string("http: poll: ") + std::strerror(errno));
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        continue;
      }
      if (n > 0) {
        if (fds[0].revents) {
          std::uint64_t count;
          while (::read(wake_fd_, &count, sizeof count) > 0) {
          }
        }
        for (std::size_t i = 1; i < fds.size(); ++i) {
          if (!fds[i].revents) continue;
          auto it = waiting.find(fds[i].fd);
          if (it != waiting.end()) read_header(waiting, it);
        }
      }
      now = Clock::now();
      expire(waiting, now);
      report(now);
    }
    for (auto& kv : waiting) ::close(kv.first);
  }

  void work_loop() {
    for (;;) {
      std::unique_ptr<Connection> c;
      {
        std::unique_lock<std::mutex> lock(mu_);
        work_cv_.wait(lock, [this] { return stopping_ || !ready_.empty(); });
        if (stopping_) return;
        c = std::move(ready_.front());
        ready_.pop_front();
        busy_fds_.insert(c->fd);
      }
      const bool keep = serve_(*c);
      {
        std::lock_guard<std::mutex> lock(mu_);
        busy_fds_.erase(c->fd);
        if (!stopping_ && (keep || c->draining)) {
          // Tells the client the reply is complete; what it still sends is drained.
          if (!keep) ::shutdown(c->fd, SHUT_WR);
          returned_.push_back(std::move(c));
        }
      }
      if (c)
        ::close(c->fd);
      else
        wake();
    }
  }

  const HttpLimits limits_;
  const Serve serve_;
  int wake_fd_ = -1;
  std::thread poller_;
  std::vector<std::thread> workers_;

  std::mutex mu_;  // guards the members below
  std::condition_variable work_cv_;
  bool stopping_ = false;
  std::vector<int> incoming_;                            // accepted, for the poller
  std::vector<std::unique_ptr<Connection>> returned_;    // served, for the poller
  std::deque<std::unique_ptr<Connection>> ready_;        // complete header, for a worker
  std::set<int> busy_fds_;                               // in a worker

  // The poller's own: connections that entered the waiting room, statistics for report().
  std::uint64_t entered_ = 0;
  std::uint64_t evicted_ = 0, timed_out_ = 0;
  Clock::time_point next_report_ = Clock::now();
};

// httplib's view of a connection: first the bytes the ConnectionGate has read already, then
// the socket, each wait bounded by the read or write timeout.
class ConnectionStream final : public httplib::Stream {
 public:
  ConnectionStream(int fd, std::string buffered, std::chrono::milliseconds read_timeout,
                   std::chrono::milliseconds write_timeout)
      : fd_(fd), buffered_(std::move(buffered)), read_timeout_(read_timeout), write_timeout_(write_timeout) {}

  bool is_readable() const override {
    return offset_ < buffered_.size() || wait_for_socket(fd_, POLLIN, read_timeout_);
  }
  bool is_writable() const override { return wait_for_socket(fd_, POLLOUT, write_timeout_); }

  ssize_t read(char* ptr, size_t size) override {
    if (offset_ < buffered_.size()) {
      const std::size_t n = std::min(size, buffered_.size() - offset_);
      std::memcpy(ptr, buffered_.data() + offset_, n);
      offset_ += n;
      return static_cast<ssize_t>(n);
    }
    for (;;) {
      if (!wait_for_socket(fd_, POLLIN, read_timeout_)) return -1;
      const ssize_t n = ::recv(fd_, ptr, size, MSG_DONTWAIT);
      if (n >= 0) return n;
      if (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK) return -1;
    }
  }

  ssize_t write(const char* ptr, size_t size) override {
    for (;;) {
      if (!wait_for_socket(fd_, POLLOUT, write_timeout_)) return -1;
      const ssize_t n = ::send(fd_, ptr, size, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n >= 0) return n;
      if (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK) return -1;
    }
  }

  void get_remote_ip_and_port(std::string& ip, int& port) const override {
    sockaddr_storage a{};
    socklen_t len = sizeof a;
    if (::getpeername(fd_, reinterpret_cast<sockaddr*>(&a), &len) == 0) address_of(a, ip, port);
  }
  void get_local_ip_and_port(std::string& ip, int& port) const override {
    sockaddr_storage a{};
    socklen_t len = sizeof a;
    if (::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len) == 0) address_of(a, ip, port);
  }
  ::socket_t socket() const override { return fd_; }

  // What was read but not consumed: the start of the connection's next request.
  std::string take_unread() { return buffered_.substr(offset_); }

 private:
  static void address_of(const sockaddr_storage& a, std::string& ip, int& port) {
    char text[INET6_ADDRSTRLEN] = "";
    if (a.ss_family == AF_INET) {
      const auto& v4 = reinterpret_cast<const sockaddr_in&>(a);
      ::inet_ntop(AF_INET, &v4.sin_addr, text, sizeof text);
      port = ntohs(v4.sin_port);
    } else if (a.ss_family == AF_INET6) {
      const auto& v6 = reinterpret_cast<const sockaddr_in6&>(a);
      ::inet_ntop(AF_INET6, &v6.sin6_addr, text, sizeof text);
      port = ntohs(v6.sin6_port);
    }
    ip = text;
  }

  int fd_;
  std::string buffered_;
  std::size_t offset_ = 0;
  std::chrono::milliseconds read_timeout_, write_timeout_;
};

// What the pre-routing handler learned about a request, for its route handler and for
// ApiServer::serve_one. All three run on the worker thread that runs the request, one request
// at a time, so a thread-local carries it.
struct RequestContext {
  std::optional<ApiTokens::Identity> caller;
  bool close_after_response = false;  // the request's body was not read: the stream is unusable
};
thread_local RequestContext t_request;

}  // namespace

// httplib::Server with the ConnectionGate in front of it and each route's required role.
class ApiServer : public httplib::Server {
 public:
  explicit ApiServer(const HttpLimits& limits)
      : limits_(limits), gate_(limits, [this](Connection& c) { return serve_one(c); }) {
    new_task_queue = [] { return new InlineTaskQueue(); };
    const auto secs = [](std::chrono::milliseconds ms) {
      return static_cast<time_t>(std::max<long long>(1, (ms.count() + 999) / 1000));
    };
    // Only what httplib still uses itself: the socket timeouts it sets on accepted sockets and
    // the Keep-Alive header it sends (timeout=, max=).
    set_read_timeout(secs(limits.read_timeout));
    set_write_timeout(secs(limits.write_timeout));
    set_keep_alive_timeout(secs(limits.header_timeout));
    set_keep_alive_max_count(static_cast<std::size_t>(std::max(1, limits.keep_alive_max_requests)));
    // Replaces httplib's default options (SO_REUSEADDR and SO_REUSEPORT): SO_REUSEPORT would let
    // a second controller of the same user bind the same port and get half the requests.
    set_socket_options([this](::socket_t fd) {
      int yes = 1;
      ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
      listen_fd_ = fd;  // the last one httplib creates is the one it binds
    });
  }
  ~ApiServer() override { gate_.stop(); }

  Status start_gate() { return gate_.start(); }
  void stop_gate() { gate_.stop(); }

  // httplib listens with a backlog of 5 (compiled into libcpp-httplib); listen() on a listening
  // socket sets a new backlog.
  void raise_backlog() {
    if (listen_fd_ >= 0 && ::listen(listen_fd_, limits_.listen_backlog) != 0)
      log_warn(std::string("http: listen backlog ") + std::to_string(limits_.listen_backlog) +
               ": " + std::strerror(errno));
  }

  void add_rule(const std::string& method, const std::string& pattern, Role role) {
    rules_.push_back({method, std::regex(pattern), role});
  }
  // The role a request needs, by the route it goes to (httplib matches the same patterns in
  // the same order); nullopt when no route matches (it gets a 404).
  std::optional<Role> required_role(const std::string& method, const std::string& path) const {
    // httplib answers HEAD with the GET handler (which runs, only the body is not sent).
    const std::string as = method == "HEAD" ? std::string("GET") : method;
    for (const auto& r : rules_)
      if (r.method == as && std::regex_match(path, r.pattern)) return r.role;
    return std::nullopt;
  }

 private:
  struct Rule {
    std::string method;
    std::regex pattern;
    Role role;
  };

  // httplib calls this for every accepted socket (on the accept thread, see InlineTaskQueue).
  bool process_and_close_socket(::socket_t sock) override {
    gate_.admit(sock);
    return true;
  }

  bool serve_one(Connection& c) {
    ConnectionStream stream(c.fd, std::move(c.received), limits_.read_timeout, limits_.write_timeout);
    const bool last = ++c.requests_served >= limits_.keep_alive_max_requests;
    bool client_closes = false;
    t_request = RequestContext{};
    const bool ok = process_request(stream, last, client_closes, nullptr);
    c.received = stream.take_unread();
    const bool keep = ok && !last && !client_closes && !t_request.close_after_response;
    c.draining = ok && t_request.close_after_response;
    t_request = RequestContext{};
    return keep;
  }

  const HttpLimits limits_;
  ConnectionGate gate_;
  std::vector<Rule> rules_;
  std::atomic<int> listen_fd_{-1};
};

namespace {

int http_status(ErrKind k) {
  switch (k) {
    case ErrKind::invalid: return 400;
    case ErrKind::not_found: return 404;
    case ErrKind::conflict: return 409;
    case ErrKind::internal: return 500;
  }
  return 500;
}

void send_json(httplib::Response& res, int status, const json& j) {
  res.status = status;
  res.set_content(j.dump(2) + "\n", "application/json");
}
void send_error(httplib::Response& res, int status, const std::string& msg) {
  send_json(res, status, json{{"error", msg}});
}
template <typename T>
void reply(httplib::Response& res, const Result<T>& r, int ok_status = 200) {
  if (r)
    send_json(res, ok_status, *r);
  else
    send_error(res, http_status(r.kind()), r.error());
}

Result<json> parse_body(const std::string& body) {
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return invalid_err("body is not valid JSON");
  if (!j.is_object()) return invalid_err("body must be a JSON object");
  return j;
}

// Who acted, for the event log: the token the request authenticated with. Never anything the
// client states about itself (a header), which anyone holding a token could forge.
std::string actor() {
  return "token:" + (t_request.caller ? t_request.caller->name : std::string("?"));
}

json token_json(const ApiTokenRec& t) {
  return json{{"name", t.name}, {"role", t.role}, {"created_at", t.created_at},
              {"created_by", t.created_by}};
}

bool has_body(const httplib::Request& req) {
  const std::string length = req.get_header_value("Content-Length");
  return req.has_header("Transfer-Encoding") || (!length.empty() && length != "0");
}

// A refused request whose body was not read leaves that body in the connection, where the next
// request would start: the connection is closed after the reply.
void close_unless_bodyless(const httplib::Request& req, httplib::Response& res) {
  if (has_body(req)) {
    t_request.close_after_response = true;
    res.set_header("Connection", "close");
  }
}

}  // namespace

HttpApi::HttpApi(Controller& ctl, std::function<bool()> ready, ApiTokens& tokens, HttpLimits limits)
    : ctl_(ctl), ready_(std::move(ready)), tokens_(tokens), srv_(std::make_unique<ApiServer>(limits)) {
  routes();
}

HttpApi::~HttpApi() { stop(); }

void HttpApi::stop() {
  if (srv_) srv_->stop();
  if (thread_ && thread_->joinable()) thread_->join();
  thread_.reset();
  // After the accept loop: no new connection reaches the gate any more.
  if (srv_) srv_->stop_gate();
}

Result<int> HttpApi::start(const std::string& host, int port) {
  Status gate = srv_->start_gate();
  if (!gate) return gate.err();
  int bound = -1;
  if (port == 0) {
    bound = srv_->bind_to_any_port(host.c_str());
  } else {
    bound = srv_->bind_to_port(host.c_str(), port) ? port : -1;
  }
  if (bound < 0)
    return internal_err("http: cannot listen on " + host + ":" + std::to_string(port) +
                        " (address in use or not available)");
  srv_->raise_backlog();
  thread_ = std::make_unique<std::thread>([this] { srv_->listen_after_bind(); });
  // Wait until the accept loop runs: a stop() before that would be lost (httplib only stops
  // a running server) and the join in stop() would hang.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (!srv_->is_running() && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  if (!srv_->is_running()) return internal_err("http: server thread did not start");
  return bound;
}

void HttpApi::routes() {
  ApiServer& s = *srv_;
  using Handler = httplib::Server::Handler;
  // Every route with the least role that may use it (ApiServer::required_role).
  auto get = [&s](const std::string& pattern, Role role, Handler h) {
    s.add_rule("GET", pattern, role);
    s.Get(pattern, std::move(h));
  };
  auto post = [&s](const std::string& pattern, Role role, Handler h) {
    s.add_rule("POST", pattern, role);
    s.Post(pattern, std::move(h));
  };
  auto put = [&s](const std::string& pattern, Role role, Handler h) {
    s.add_rule("PUT", pattern, role);
    s.Put(pattern, std::move(h));
  };
  auto del = [&s](const std::string& pattern, Role role, Handler h) {
    s.add_rule("DELETE", pattern, role);
    s.Delete(pattern, std::move(h));
  };

  s.set_payload_max_length(kMaxBodyBytes);
  s.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    if (res.status == 404)
      send_error(res, 404, "no such endpoint: " + req.method + " " + req.path);
    else if (res.status == 413)
      send_error(res, 413, "request body too large (limit " +
                               std::to_string(kMaxBodyBytes / (1024 * 1024)) + " MiB)");
    else
      send_error(res, res.status, "HTTP " + std::to_string(res.status));
  });
  s.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    std::string what = "internal error";
    try {
      if (ep) std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = std::string("internal error: ") + e.what();
    } catch (...) {
    }
    log_error("http: " + what);
    send_error(res, 500, what);
  });

  // Authentication, the token's role and the content type, before any handler runs and
  // before a request body is read. The token stops other local users and, with the
  // content-type rule, cross-site requests from a browser: a web page can POST text/plain or
  // form bodies without a CORS preflight, but cannot add an Authorization header or an
  // application/json body to a cross-origin request without one.
  // Returns whether the request may go on; if not, `res` holds the refusal.
  auto admit = [this](const httplib::Request& req, httplib::Response& res) {
    const std::string auth = req.get_header_value("Authorization");
    const std::string scheme = "Bearer ";
    const bool has_bearer = auth.size() > scheme.size() &&
                            media_type(auth.substr(0, scheme.size() - 1)) == "bearer" &&
                            auth[scheme.size() - 1] == ' ';
    t_request.caller = has_bearer ? tokens_.authenticate(auth.substr(scheme.size())) : std::nullopt;
    if (!t_request.caller) {
      res.set_header("WWW-Authenticate", "Bearer");
      send_error(res, 401,
                 std::string("missing or wrong API token (") +
                     (has_bearer ? "unknown or revoked token" : "none sent") +
                     "): send 'Authorization: Bearer <token>' with the controller's bootstrap "
                     "token (its --api-token-file, default <db>.token) or a token made with "
                     "`otactl token create`");
      close_unless_bodyless(req, res);
      return false;
    }
    const ApiTokens::Identity& caller = *t_request.caller;
    const std::optional<Role> needed = srv_->required_role(req.method, req.path);
    if (needed && caller.role < *needed) {
      send_error(res, 403,
                 "forbidden: token '" + caller.name + "' has role " + role_name(caller.role) +
                     ", and " + req.method + " " + req.path + " needs role " +
                     role_name(*needed) + (*needed == Role::admin ? "" : " or above"));
      close_unless_bodyless(req, res);
      return false;
    }
    if (req.method == "POST" || req.method == "PUT") {
      const bool image = req.path == "/api/v1/images";
      const std::string want = image ? "application/octet-stream" : "application/json";
      const std::string got = media_type(req.get_header_value("Content-Type"));
      if (got != want) {
        send_error(res, 415,
                   "Content-Type must be " + want + " for " + req.method + " " + req.path +
                       ", not '" + (got.empty() ? std::string("(none)") : got) + "'");
        close_unless_bodyless(req, res);
        return false;
      }
    }
    return true;
  };
  auto is_health = [](const httplib::Request& req) {
    return req.method == "GET" && req.path == "/api/v1/health";
  };
  s.set_pre_routing_handler([admit, is_health](const httplib::Request& req, httplib::Response& res) {
    // No GET takes a body, and httplib would read one (slowly, if the client sends it
    // slowly) before the handler runs, also for /health, which needs no token.
    if ((req.method == "GET" || req.method == "HEAD") && has_body(req)) {
      send_error(res, 400, req.method + " " + req.path + " takes no request body");
      close_unless_bodyless(req, res);
      return httplib::Server::HandlerResponse::Handled;
    }
    return is_health(req) || admit(req, res) ? httplib::Server::HandlerResponse::Unhandled
                                             : httplib::Server::HandlerResponse::Handled;
  });
  // A client that asks before it sends a body (curl does for large uploads) gets the refusal
  // instead of "100 Continue", and never sends the body.
  s.set_expect_100_continue_handler([admit, is_health](const httplib::Request& req, httplib::Response& res) {
    return is_health(req) || admit(req, res) ? 100 : res.status;
  });

  // An access log of who changed what and who was refused: image uploads, deployments and
  // cancels are not in the event log under the token's name.
  s.set_logger([](const httplib::Request& req, const httplib::Response& res) {
    const std::string line = "http: " + req.remote_addr + " " +
                             (t_request.caller ? "token:" + t_request.caller->name
                                               : std::string("(no valid token)")) +
                             " " + req.method + " " + req.path + " -> " + std::to_string(res.status);
    if (res.status == 401 || res.status == 403)
      log_warn(line);
    else if (req.method != "GET" && req.method != "HEAD")
      log_info(line);
    else
      log(LogLevel::debug, line);
  });

  s.Get("/api/v1/health", [this](const httplib::Request&, httplib::Response& res) {
    bool ok = false;
    json body = ctl_.health_json(&ok);
    send_json(res, ok ? 200 : 503, body);
  });

  // API tokens (admin). The secret is in the reply to the create and nowhere else.
  get("/api/v1/tokens", Role::admin, [this](const httplib::Request&, httplib::Response& res) {
    json out = json::array();
    out.push_back({{"name", kBootstrapTokenName}, {"role", role_name(Role::admin)},
                   {"bootstrap", true}});
    for (const auto& t : tokens_.list()) out.push_back(token_json(t));
    send_json(res, 200, out);
  });
  post("/api/v1/tokens", Role::admin, [this](const httplib::Request& req, httplib::Response& res) {
    auto body = parse_body(req.body);
    if (!body) return send_error(res, 400, "token: " + body.error());
    for (auto kv = body->begin(); kv != body->end(); ++kv)
      if (kv.key() != "name" && kv.key() != "role")
        return send_error(res, 400, "token: unknown field \"" + kv.key() + "\"");
    const json& name = (*body)["name"];
    const json& role = (*body)["role"];
    if (!name.is_string()) return send_error(res, 400, "token: \"name\" (a string) is required");
    if (!role.is_string())
      return send_error(res, 400, "token: \"role\" is required: read-only, operator or admin");
    const auto r = parse_role(role.get<std::string>());
    if (!r)
      return send_error(res, 400, "token: role '" + role.get<std::string>() +
                                      "' is not one of read-only, operator, admin");
    auto created = tokens_.create(name.get<std::string>(), *r, actor());
    if (!created) return send_error(res, http_status(created.kind()), created.error());
    json j = token_json(created->token);
    j["token"] = created->secret;
    res.set_header("Cache-Control", "no-store");
    send_json(res, 201, j);
  });
  del(R"(/api/v1/tokens/([^/]+))", Role::admin, [this](const httplib::Request& req, httplib::Response& res) {
    const std::string name = req.matches[1];
    Status st = tokens_.revoke(name, actor());
    if (!st) return send_error(res, http_status(st.kind()), st.error());
    send_json(res, 200, json{{"name", name}, {"revoked", true}});
  });

  // The database as one SQLite file (an online backup): restore it by stopping the
  // controller, putting the file in place of --db (without -wal/-shm) and starting it. Admin:
  // it holds everything, the token hashes included.
  get("/api/v1/backup", Role::admin, [this](const httplib::Request&, httplib::Response& res) {
    const std::string tmp = ctl_.backup_temp_path();
    auto size = ctl_.backup_database(tmp);
    if (!size) {
      ::unlink(tmp.c_str());
      return send_error(res, size.kind() == ErrKind::conflict ? 409 : 500, size.error());
    }
    const int fd = ::open(tmp.c_str(), O_RDONLY | O_CLOEXEC);
    ::unlink(tmp.c_str());  // the open descriptor keeps the bytes until the reply is sent
    if (fd < 0) return send_error(res, 500, "backup: reopen " + tmp + ": " + std::strerror(errno));
    res.status = 200;
    res.set_header("Content-Disposition", "attachment; filename=\"controller-backup.db\"");
    res.set_content_provider(
        static_cast<std::size_t>(*size), "application/vnd.sqlite3",
        [fd](std::size_t offset, std::size_t length, httplib::DataSink& sink) {
          char buf[64 * 1024];
          const std::size_t want = std::min(length, sizeof buf);
          const ssize_t n = ::pread(fd, buf, want, static_cast<off_t>(offset));
          if (n <= 0) return false;
          return sink.write(buf, static_cast<std::size_t>(n));
        },
        [fd](bool) { ::close(fd); });
  });

  post("/api/v1/images", Role::operator_, [this](const httplib::Request& req, httplib::Response& res) {
    ImageParams p;
    // With a release file (`otactl image sign`) version, hw, counter and kind come from it.
    p.release = req.get_param_value("release");
    const bool with_release = req.has_param("release");
    if (with_release && p.release.empty())
      return send_error(res, 400, "query parameter 'release' is empty (it is the release file's JSON)");
    p.version = req.get_param_value("version");
    if (p.version.empty() && !with_release)
      return send_error(res, 400, "query parameter 'version' is required (or 'release': a release file)");
    const std::size_t n = req.get_param_value_count("hw");
    for (std::size_t i = 0; i < n; ++i) p.hw.push_back(req.get_param_value("hw", i));
    if (p.hw.empty() && !with_release)
      return send_error(res, 400, "query parameter 'hw' is required (repeat for several models)");
    if (req.has_param("chunk_size")) {
      auto c = parse_u32("chunk_size", req.get_param_value("chunk_size"), 0, 0xFFFFFFFFu);
      if (!c) return send_error(res, 400, c.error());
      p.chunk_size = *c;
    }
    if (req.has_param("counter")) {
      if (req.get_param_value("counter") == "next") {
        p.security_release = true;
      } else {
        auto c = parse_u32("counter", req.get_param_value("counter"), 0, 0xFFFFFFFFu);
        if (!c) return send_error(res, 400, c.error() + " (or 'next': a security release)");
        p.counter = *c;
        p.counter_given = true;
      }
    }
    if (req.has_param("kind")) {
      p.kind = req.get_param_value("kind");
      p.kind_given = true;
    }
    if (req.body.empty()) return send_error(res, 400, "request body (the image bytes) is empty");
    auto r = ctl_.add_image(req.body, p, actor());
    if (!r) return send_error(res, http_status(r.kind()), r.error());
    json j = Controller::to_json(r->image);
    j["created"] = r->created;
    send_json(res, r->created ? 201 : 200, j);
  });
  get("/api/v1/images", Role::read_only, [this](const httplib::Request&, httplib::Response& res) {
    reply(res, ctl_.images_json());
  });
  get(R"(/api/v1/images/([^/]+))", Role::read_only, [this](const httplib::Request& req, httplib::Response& res) {
    reply(res, ctl_.image_json(req.matches[1]));
  });

  post("/api/v1/deployments", Role::operator_, [this](const httplib::Request& req, httplib::Response& res) {
    auto d = parse_deploy_request(req.body);
    if (!d) return send_error(res, 400, "deploy: " + d.error());
    auto r = ctl_.deploy(d->image, d->kind, d->target, actor());
    if (!r) return send_error(res, http_status(r.kind()), r.error());
    reply(res, ctl_.deployment_json(r->id), 201);
  });
  get("/api/v1/deployments", Role::read_only, [this](const httplib::Request&, httplib::Response& res) {
    reply(res, ctl_.deployments_json());
  });
  get(R"(/api/v1/deployments/([^/]+))", Role::read_only, [this](const httplib::Request& req, httplib::Response& res) {
    reply(res, ctl_.deployment_json(req.matches[1]));
  });
  post(R"(/api/v1/deployments/([^/]+)/cancel)", Role::operator_,
         [this](const httplib::Request& req, httplib::Response& res) {
           auto r = ctl_.cancel(req.matches[1], actor());
           if (!r) return send_error(res, http_status(r.kind()), r.error());
           reply(res, ctl_.deployment_json(r->id));
         });

  get("/api/v1/devices", Role::read_only, [this](const httplib::Request& req, httplib::Response& res) {
    DeviceFilter f;
    f.group = req.get_param_value("group");
    f.version = req.get_param_value("version");
    if (req.has_param("online")) {
      std::string o = req.get_param_value("online");
      if (o == "1" || o == "true" || o.empty())
        f.online = true;
      else if (o == "0" || o == "false")
        f.online = false;
      else
        return send_error(res, 400, "online must be true/false/1/0, not '" + o + "'");
    }
    reply(res, ctl_.devices_json(f, req.get_param_value("tag"), req.get_param_value("state")));
  });
  put(R"(/api/v1/devices/([^/]+)/tags)", Role::operator_, [this](const httplib::Request& req, httplib::Response& res) {
    auto body = parse_body(req.body);
    if (!body) return send_error(res, 400, "tags: " + body.error());
    reply(res, ctl_.set_device_tags(req.matches[1], *body, actor()));
  });

  post("/api/v1/rollouts", Role::operator_, [this](const httplib::Request& req, httplib::Response& res) {
    auto body = parse_body(req.body);
    if (!body) return send_error(res, 400, "rollout: " + body.error());
    reply(res, ctl_.create_rollout(*body, actor()), 201);
  });
  get("/api/v1/rollouts", Role::read_only, [this](const httplib::Request&, httplib::Response& res) {
    reply(res, ctl_.rollouts_json());
  });
  get(R"(/api/v1/rollouts/([^/]+))", Role::read_only, [this](const httplib::Request& req, httplib::Response& res) {
    const std::string d = req.get_param_value("devices");
    reply(res, ctl_.rollout_json(req.matches[1], d == "1" || d == "true"));
  });
  post(R"(/api/v1/rollouts/([^/]+)/([a-z]+))", Role::operator_,
         [this](const httplib::Request& req, httplib::Response& res) {
           auto body = parse_body(req.body.empty() ? std::string("{}") : req.body);
           if (!body) return send_error(res, 400, std::string(req.matches[2]) + ": " + body.error());
           const std::string action = req.matches[2];
           reply(res, ctl_.rollout_action(req.matches[1], action, *body, actor()),
                 action == "rollback" ? 201 : 200);
         });
  get("/metrics", Role::read_only, [this](const httplib::Request&, httplib::Response& res) {
    res.status = 200;
    res.set_content(ctl_.metrics_text(), "text/plain; version=0.0.4; charset=utf-8");
  });
  get(R"(/api/v1/devices/([^/]+))", Role::read_only, [this](const httplib::Request& req, httplib::Response& res) {
    reply(res, ctl_.device_json(req.matches[1]));
  });
  post(R"(/api/v1/devices/([^/]+)/revoke)", Role::admin,
         [this](const httplib::Request& req, httplib::Response& res) {
           reply(res, ctl_.revoke_device(req.matches[1], actor()));
         });
  // Key sets (PROTOCOL.md 6.6): the body is the `keys` message `otactl keys sign` wrote.
  get("/api/v1/keys", Role::read_only, [this](const httplib::Request&, httplib::Response& res) {
    reply(res, ctl_.keys_json());
  });
  put("/api/v1/keys", Role::admin, [this](const httplib::Request& req, httplib::Response& res) {
    reply(res, ctl_.push_keys(req.body, actor()));
  });
  post(R"(/api/v1/devices/([^/]+)/reset-seq)", Role::admin,
         [this](const httplib::Request& req, httplib::Response& res) {
           Status st = ctl_.reset_seq(req.matches[1], actor());
           if (!st) return send_error(res, http_status(st.kind()), st.error());
           reply(res, ctl_.device_json(req.matches[1]));
         });
  get("/api/v1/status", Role::read_only, [this](const httplib::Request&, httplib::Response& res) {
    auto r = ctl_.status_json();
    if (r) (*r)["mqtt"] = (ready_ && !ready_()) ? "not connected" : "connected";
    reply(res, r);
  });
  get("/api/v1/events", Role::read_only, [this](const httplib::Request& req, httplib::Response& res) {
    EventFilter f;
    f.deployment = req.get_param_value("deployment");
    f.device = req.get_param_value("device");
    f.rollout = req.get_param_value("rollout");
    if (req.has_param("after")) {
      auto a = parse_u32("after", req.get_param_value("after"), 0, 0xFFFFFFFFu);
      if (!a) return send_error(res, 400, a.error());
      f.after_id = *a;
    }
    if (req.has_param("limit")) {
      auto l = parse_u32("limit", req.get_param_value("limit"), 1, 10000);
      if (!l) return send_error(res, 400, l.error());
      f.limit = static_cast<int>(*l);
    }
    reply(res, ctl_.events_json(f));
  });
}

}  // namespace ota::service
