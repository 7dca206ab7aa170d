// The connection gate: the HTTP API's defence against slow or idle clients (slowloris).
//
// Threads: ConnectionGate::admit runs on httplib's accept thread (HttpApi's server thread) and
// never blocks; poll_loop runs on the gate's own poller thread, which holds every connection
// that has not yet sent a complete request header (one poll() loop, the header deadline, the
// connection cap); work_loop runs on the gate's worker threads (HttpLimits::workers), each
// running one request at a time through the Serve callback. start() and stop() run on the
// thread that starts and stops the HttpApi.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "ota/service/http_api.hpp"
#include "ota/service/result.hpp"

namespace ota::service::http {

using Clock = std::chrono::steady_clock;

// Waits until fd is readable (POLLIN) or writable (POLLOUT), at most `timeout`.
bool wait_for_socket(int fd, short events, std::chrono::milliseconds timeout);

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

  // Starts the poller thread and the worker threads.
  Status start();
  // A new connection from the accept loop; never blocks. A burst waits for the poller, which
  // applies max_connections; a flood the poller cannot keep up with is closed at once beyond
  // kMaxAcceptedNotYetPolled: descriptors are shared with the database and the image files.
  void admit(int fd);
  // Ends the threads and closes every connection; idempotent.
  void stop();

 private:
  using Waiting = std::map<int, std::unique_ptr<Connection>>;  // by fd

  void wake();
  void enter(Waiting& waiting, std::unique_ptr<Connection> c, Clock::time_point now);
  void dispatch(std::unique_ptr<Connection> c);
  void close_waiting(Waiting& waiting, Waiting::iterator it);
  void evict_over_limit(Waiting& waiting);
  void drain(Waiting& waiting, Waiting::iterator it);
  void read_header(Waiting& waiting, Waiting::iterator it);
  void expire(Waiting& waiting, Clock::time_point now);
  void report(Clock::time_point now);
  void poll_loop();
  void work_loop();

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

}  // namespace ota::service::http
