// The connection gate (see connection_gate.hpp for which thread runs what).
#include "connection_gate.hpp"

#include <nlohmann/json.hpp>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>

#include "ota/service/log.hpp"

namespace ota::service::http {

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

int millis_until(Clock::time_point t, Clock::time_point now) {
  if (t <= now) return 0;
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(t - now).count() + 1;
  return static_cast<int>(std::min<long long>(ms, std::numeric_limits<int>::max()));
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
  // The API's error object (routes.hpp, send_error); only 408 and 431 are sent from here.
  const char* code = status == 408 ? "request_timeout" : "header_too_large";
  const std::string body =
      nlohmann::json{{"error", {{"code", code}, {"message", error}}}}.dump() + "\n";
  const std::string msg = "HTTP/1.1 " + std::to_string(status) + " " + reason +
                          "\r\nConnection: close\r\nContent-Type: application/json\r\n"
                          "Content-Length: " +
                          std::to_string(body.size()) + "\r\n\r\n" + body;
  (void)::send(fd, msg.data(), msg.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
}

// A refused request's body is read and thrown away for at most this long and this much before
// the connection is closed (a "lingering close"): closing a socket with unread data resets the
// connection, and the reset can destroy the reply (a 401, 403 or 415) before the client reads it.
constexpr std::chrono::milliseconds kMaxLinger{5000};
constexpr std::size_t kMaxAcceptedNotYetPolled = 256;
constexpr std::size_t kMaxLingerBytes = 64u * 1024u * 1024u;

}  // namespace

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

Status ConnectionGate::start() {
  wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake_fd_ < 0) return internal_err(std::string("http: eventfd: ") + std::strerror(errno));
  poller_ = std::thread([this] { poll_loop(); });
  for (int i = 0; i < std::max(1, limits_.workers); ++i)
    workers_.emplace_back([this] { work_loop(); });
  return {};
}

void ConnectionGate::admit(int fd) {
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

void ConnectionGate::stop() {
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

void ConnectionGate::wake() {
  const std::uint64_t one = 1;
  if (wake_fd_ >= 0) (void)!::write(wake_fd_, &one, sizeof one);
}

// A connection starts (again) to wait for a request header; one whose header is already
// here (pipelined after the previous request) goes straight to a worker.
void ConnectionGate::enter(Waiting& waiting, std::unique_ptr<Connection> c, Clock::time_point now) {
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

void ConnectionGate::dispatch(std::unique_ptr<Connection> c) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    ready_.push_back(std::move(c));
  }
  work_cv_.notify_one();
}

void ConnectionGate::close_waiting(Waiting& waiting, Waiting::iterator it) {
  ::close(it->first);
  waiting.erase(it);
}

// Over max_connections: the connections that have waited longest for a request header go
// first. A client that sends its request at once is never the oldest for long, so holding
// idle connections does not keep anyone else out.
void ConnectionGate::evict_over_limit(Waiting& waiting) {
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
void ConnectionGate::drain(Waiting& waiting, Waiting::iterator it) {
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

void ConnectionGate::read_header(Waiting& waiting, Waiting::iterator it) {
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

void ConnectionGate::expire(Waiting& waiting, Clock::time_point now) {
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
void ConnectionGate::report(Clock::time_point now) {
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

void ConnectionGate::poll_loop() {
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

void ConnectionGate::work_loop() {
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

}  // namespace ota::service::http
