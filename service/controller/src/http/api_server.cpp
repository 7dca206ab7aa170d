// The HTTP server under HttpApi: the connection's stream and the request context.
#include "api_server.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "ota/service/log.hpp"

namespace ota::service {

namespace http {

RequestContext& current_request() {
  thread_local RequestContext context;
  return context;
}

namespace {

// Runs each job on the thread that enqueues it: httplib's accept loop, whose job
// (ApiServer::process_and_close_socket) only passes the socket to the ConnectionGate.
class InlineTaskQueue : public httplib::TaskQueue {
 public:
  void enqueue(std::function<void()> fn) override { fn(); }
  void shutdown() override {}
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

}  // namespace

}  // namespace http

using http::Connection;
using http::ConnectionStream;
using http::InlineTaskQueue;

ApiServer::ApiServer(const HttpLimits& limits)
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

void ApiServer::raise_backlog() {
  if (listen_fd_ >= 0 && ::listen(listen_fd_, limits_.listen_backlog) != 0)
    log_warn(std::string("http: listen backlog ") + std::to_string(limits_.listen_backlog) +
             ": " + std::strerror(errno));
}

std::optional<Role> ApiServer::required_role(const std::string& method,
                                             const std::string& path) const {
  // httplib answers HEAD with the GET handler (which runs, only the body is not sent).
  const std::string as = method == "HEAD" ? std::string("GET") : method;
  for (const auto& r : rules_)
    if (r.method == as && std::regex_match(path, r.pattern)) return r.role;
  return std::nullopt;
}

bool ApiServer::has_route(const std::string& method, const std::string& path) const {
  const std::string as = method == "HEAD" ? std::string("GET") : method;
  for (const auto& r : rules_)
    if (r.method == as && std::regex_match(path, r.pattern)) return true;
  return false;
}

bool ApiServer::is_public(const std::string& method, const std::string& path) const {
  const std::string as = method == "HEAD" ? std::string("GET") : method;
  for (const auto& r : rules_)
    if (r.method == as && std::regex_match(path, r.pattern)) return !r.role.has_value();
  return false;
}

std::string ApiServer::allowed_methods(const std::string& path) const {
  std::vector<std::string> methods;
  for (const auto& r : rules_) {
    if (!std::regex_match(path, r.pattern) ||
        std::find(methods.begin(), methods.end(), r.method) != methods.end())
      continue;
    methods.push_back(r.method);
    if (r.method == "GET") methods.push_back("HEAD");  // httplib answers HEAD with the GET route
  }
  std::string allow;
  for (const auto& m : methods) allow += (allow.empty() ? "" : ", ") + m;
  return allow;
}

std::vector<HttpApi::Route> ApiServer::routes() const {
  std::vector<HttpApi::Route> out;
  for (const auto& r : rules_)
    if (r.api) out.push_back({r.method, r.source, r.role ? role_name(*r.role) : std::string("none")});
  return out;
}

bool ApiServer::serve_one(Connection& c) {
  ConnectionStream stream(c.fd, std::move(c.received), limits_.read_timeout, limits_.write_timeout);
  const bool last = ++c.requests_served >= limits_.keep_alive_max_requests;
  bool client_closes = false;
  http::RequestContext& request = http::current_request();
  request = http::RequestContext{};
  const bool ok = process_request(stream, last, client_closes, nullptr);
  c.received = stream.take_unread();
  const bool keep = ok && !last && !client_closes && !request.close_after_response;
  c.draining = ok && request.close_after_response;
  request = http::RequestContext{};
  return keep;
}

}  // namespace ota::service
