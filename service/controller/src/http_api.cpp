#include "ota/service/http_api.hpp"

#include <httplib.h>

#include <cerrno>
#include <cstdlib>

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

}  // namespace

HttpApi::HttpApi(Controller& ctl, std::function<bool()> ready)
    : ctl_(ctl), ready_(std::move(ready)), srv_(std::make_unique<httplib::Server>()) {
  routes();
}

HttpApi::~HttpApi() { stop(); }

void HttpApi::stop() {
  if (srv_) srv_->stop();
  if (thread_ && thread_->joinable()) thread_->join();
  thread_.reset();
}

Result<int> HttpApi::start(const std::string& host, int port) {
  int bound = -1;
  if (port == 0) {
    bound = srv_->bind_to_any_port(host.c_str());
  } else {
    bound = srv_->bind_to_port(host.c_str(), port) ? port : -1;
  }
  if (bound < 0)
    return internal_err("http: cannot listen on " + host + ":" + std::to_string(port) +
                        " (address in use or not available)");
  thread_ = std::make_unique<std::thread>([this] { srv_->listen_after_bind(); });
  return bound;
}

void HttpApi::routes() {
  httplib::Server& s = *srv_;
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

  s.Get("/api/v1/health", [this](const httplib::Request&, httplib::Response& res) {
    const bool ready = ready_ ? ready_() : true;
    send_json(res, ready ? 200 : 503,
              json{{"status", ready ? "ok" : "starting"},
                   {"mqtt", ready ? "connected" : "not connected"},
                   {"key_id", ctl_.key_id()},
                   {"prefix", ctl_.prefix()},
                   {"decode_errors", ctl_.decode_errors()}});
  });

  s.Post("/api/v1/images", [this](const httplib::Request& req, httplib::Response& res) {
    ImageParams p;
    p.version = req.get_param_value("version");
    if (p.version.empty()) return send_error(res, 400, "query parameter 'version' is required");
    const std::size_t n = req.get_param_value_count("hw");
    for (std::size_t i = 0; i < n; ++i) p.hw.push_back(req.get_param_value("hw", i));
    if (p.hw.empty()) return send_error(res, 400, "query parameter 'hw' is required (repeat for several models)");
    if (req.has_param("chunk_size")) {
      auto c = parse_u32("chunk_size", req.get_param_value("chunk_size"), 0, 0xFFFFFFFFu);
      if (!c) return send_error(res, 400, c.error());
      p.chunk_size = *c;
    }
    if (req.has_param("counter")) {
      auto c = parse_u32("counter", req.get_param_value("counter"), 0, 0xFFFFFFFFu);
      if (!c) return send_error(res, 400, c.error());
      p.counter = *c;
    }
    if (req.body.empty()) return send_error(res, 400, "request body (the image bytes) is empty");
    auto r = ctl_.add_image(req.body, p);
    if (!r) return send_error(res, http_status(r.kind()), r.error());
    json j = Controller::to_json(r->image);
    j["created"] = r->created;
    send_json(res, r->created ? 201 : 200, j);
  });
  s.Get("/api/v1/images", [this](const httplib::Request&, httplib::Response& res) {
    reply(res, ctl_.images_json());
  });
  s.Get(R"(/api/v1/images/([^/]+))", [this](const httplib::Request& req, httplib::Response& res) {
    reply(res, ctl_.image_json(req.matches[1]));
  });

  s.Post("/api/v1/deployments", [this](const httplib::Request& req, httplib::Response& res) {
    auto d = parse_deploy_request(req.body);
    if (!d) return send_error(res, 400, "deploy: " + d.error());
    auto r = ctl_.deploy(d->image, d->kind, d->target);
    if (!r) return send_error(res, http_status(r.kind()), r.error());
    reply(res, ctl_.deployment_json(r->id), 201);
  });
  s.Get("/api/v1/deployments", [this](const httplib::Request&, httplib::Response& res) {
    reply(res, ctl_.deployments_json());
  });
  s.Get(R"(/api/v1/deployments/([^/]+))", [this](const httplib::Request& req, httplib::Response& res) {
    reply(res, ctl_.deployment_json(req.matches[1]));
  });
  s.Post(R"(/api/v1/deployments/([^/]+)/cancel)",
         [this](const httplib::Request& req, httplib::Response& res) {
           auto r = ctl_.cancel(req.matches[1]);
           if (!r) return send_error(res, http_status(r.kind()), r.error());
           reply(res, ctl_.deployment_json(r->id));
         });

  s.Get("/api/v1/devices", [this](const httplib::Request& req, httplib::Response& res) {
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
    reply(res, ctl_.devices_json(f));
  });
  s.Get(R"(/api/v1/devices/([^/]+))", [this](const httplib::Request& req, httplib::Response& res) {
    reply(res, ctl_.device_json(req.matches[1]));
  });
  s.Post(R"(/api/v1/devices/([^/]+)/reset-seq)",
         [this](const httplib::Request& req, httplib::Response& res) {
           Status st = ctl_.reset_seq(req.matches[1]);
           if (!st) return send_error(res, http_status(st.kind()), st.error());
           reply(res, ctl_.device_json(req.matches[1]));
         });
  s.Get("/api/v1/status", [this](const httplib::Request&, httplib::Response& res) {
    auto r = ctl_.status_json();
    if (r) (*r)["mqtt"] = (ready_ && !ready_()) ? "not connected" : "connected";
    reply(res, r);
  });
  s.Get("/api/v1/events", [this](const httplib::Request& req, httplib::Response& res) {
    EventFilter f;
    f.deployment = req.get_param_value("deployment");
    f.device = req.get_param_value("device");
    if (req.has_param("limit")) {
      auto l = parse_u32("limit", req.get_param_value("limit"), 1, 10000);
      if (!l) return send_error(res, 400, l.error());
      f.limit = static_cast<int>(*l);
    }
    reply(res, ctl_.events_json(f));
  });
}

}  // namespace ota::service
