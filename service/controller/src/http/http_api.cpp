// HttpApi: the server's life cycle (start, stop) and its routes, registered by noun.
#include "ota/service/http_api.hpp"

#include <chrono>
#include <thread>

#include "api_server.hpp"
#include "routes.hpp"

namespace ota::service {

HttpApi::HttpApi(Controller& ctl, std::function<bool()> ready, ApiTokens& tokens, HttpLimits limits,
                 std::string web_root)
    : ctl_(ctl),
      ready_(std::move(ready)),
      tokens_(tokens),
      web_root_(std::move(web_root)),
      srv_(std::make_unique<ApiServer>(limits)) {
  add_routes();
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

std::vector<HttpApi::Route> HttpApi::routes() const { return srv_->routes(); }

void HttpApi::add_routes() {
  http::install_request_admission(*srv_, tokens_);
  http::RouteTable table(*srv_);
  http::add_ops_routes(table, ctl_, ready_);
  http::add_token_routes(table, tokens_);
  http::add_image_routes(table, ctl_);
  http::add_deployment_routes(table, ctl_);
  http::add_device_routes(table, ctl_);
  http::add_rollout_routes(table, ctl_);
  http::add_key_routes(table, ctl_);
  http::add_openapi_route(table);
  http::add_whoami_route(table);
  http::add_fleet_routes(table, ctl_);
  http::add_web_routes(table, web_root_);
}

}  // namespace ota::service
