#include "ota/service/http_api.hpp"

#include <fcntl.h>
#include <httplib.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cerrno>
#include <cstdlib>
#include <cstring>

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

Result<std::string> load_or_create_api_token(const std::string& path) {
  auto trim = [](std::string t) {
    const char* ws = " \t\r\n";
    const auto b = t.find_first_not_of(ws);
    if (b == std::string::npos) return std::string();
    return t.substr(b, t.find_last_not_of(ws) - b + 1);
  };
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd >= 0) {
    unsigned char raw[32];
    if (RAND_bytes(raw, sizeof raw) != 1) {
      ::close(fd);
      ::unlink(path.c_str());
      return internal_err("api token: no randomness");
    }
    static const char* hex = "0123456789abcdef";
    std::string tok;
    for (unsigned char c : raw) {
      tok += hex[c >> 4];
      tok += hex[c & 15];
    }
    const std::string line = tok + "\n";
    const bool ok = ::write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size()) &&
                    ::fsync(fd) == 0;
    ::close(fd);
    if (!ok) {
      ::unlink(path.c_str());
      return internal_err("api token: write " + path + ": " + std::strerror(errno));
    }
    log_info("created API token file " + path + " (mode 0600)");
    return tok;
  }
  if (errno != EEXIST)
    return invalid_err("api token: create " + path + ": " + std::strerror(errno));
  fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return invalid_err("api token: read " + path + ": " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) == 0 && (st.st_mode & 077))
    log_warn("api token file " + path + " is accessible by group/others (chmod 600 it)");
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

// Who acted, for the event log: the operator name otactl sends (X-OTA-Actor), else "api".
std::string actor_of(const httplib::Request& req) {
  std::string a = req.get_header_value("X-OTA-Actor");
  if (a.size() > 64) a.resize(64);
  for (char& c : a)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-' && c != '@')
      c = '_';
  return a.empty() ? std::string("operator:api") : "operator:" + a;
}

}  // namespace

HttpApi::HttpApi(Controller& ctl, std::function<bool()> ready, std::string api_token)
    : ctl_(ctl),
      ready_(std::move(ready)),
      token_(std::move(api_token)),
      srv_(std::make_unique<httplib::Server>()) {
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
  // Wait until the accept loop runs: a stop() before that would be lost (httplib only stops
  // a running server) and the join in stop() would hang.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (!srv_->is_running() && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  if (!srv_->is_running()) return internal_err("http: server thread did not start");
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

  // Authentication and content type, before any handler runs. The token stops other local
  // users and, with the content-type rule, cross-site requests from a browser: a web page
  // can POST text/plain or form bodies without a CORS preflight, but cannot add an
  // Authorization header or an application/json body to a cross-origin request without one.
  s.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (req.method == "GET" && req.path == "/api/v1/health")
      return httplib::Server::HandlerResponse::Unhandled;
    const std::string auth = req.get_header_value("Authorization");
    const std::string scheme = "Bearer ";
    const bool has_bearer = auth.size() > scheme.size() &&
                            media_type(auth.substr(0, scheme.size() - 1)) == "bearer" &&
                            auth[scheme.size() - 1] == ' ';
    if (!has_bearer || !token_equal(auth.substr(scheme.size()), token_)) {
      res.set_header("WWW-Authenticate", "Bearer");
      send_error(res, 401,
                 std::string("missing or wrong API token (") +
                     (has_bearer ? "not the controller's" : "none sent") +
                     "): send 'Authorization: Bearer <token>' with the token from the "
                     "controller's --api-token-file (default: <db>.token)");
      return httplib::Server::HandlerResponse::Handled;
    }
    if (req.method == "POST" || req.method == "PUT") {
      const bool image = req.path == "/api/v1/images";
      const std::string want = image ? "application/octet-stream" : "application/json";
      const std::string got = media_type(req.get_header_value("Content-Type"));
      if (got != want) {
        send_error(res, 415,
                   "Content-Type must be " + want + " for POST " + req.path + ", not '" +
                       (got.empty() ? std::string("(none)") : got) + "'");
        return httplib::Server::HandlerResponse::Handled;
      }
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });

  s.Get("/api/v1/health", [this](const httplib::Request&, httplib::Response& res) {
    bool ok = false;
    json body = ctl_.health_json(&ok);
    send_json(res, ok ? 200 : 503, body);
  });

  // The database as one SQLite file (an online backup): restore it by stopping the
  // controller, putting the file in place of --db (without -wal/-shm) and starting it.
  s.Get("/api/v1/backup", [this](const httplib::Request&, httplib::Response& res) {
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
    if (req.has_param("kind")) p.kind = req.get_param_value("kind");
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
    reply(res, ctl_.devices_json(f, req.get_param_value("tag"), req.get_param_value("state")));
  });
  s.Put(R"(/api/v1/devices/([^/]+)/tags)", [this](const httplib::Request& req, httplib::Response& res) {
    auto body = parse_body(req.body);
    if (!body) return send_error(res, 400, "tags: " + body.error());
    reply(res, ctl_.set_device_tags(req.matches[1], *body, actor_of(req)));
  });

  s.Post("/api/v1/rollouts", [this](const httplib::Request& req, httplib::Response& res) {
    auto body = parse_body(req.body);
    if (!body) return send_error(res, 400, "rollout: " + body.error());
    reply(res, ctl_.create_rollout(*body, actor_of(req)), 201);
  });
  s.Get("/api/v1/rollouts", [this](const httplib::Request&, httplib::Response& res) {
    reply(res, ctl_.rollouts_json());
  });
  s.Get(R"(/api/v1/rollouts/([^/]+))", [this](const httplib::Request& req, httplib::Response& res) {
    const std::string d = req.get_param_value("devices");
    reply(res, ctl_.rollout_json(req.matches[1], d == "1" || d == "true"));
  });
  s.Post(R"(/api/v1/rollouts/([^/]+)/([a-z]+))",
         [this](const httplib::Request& req, httplib::Response& res) {
           auto body = parse_body(req.body.empty() ? std::string("{}") : req.body);
           if (!body) return send_error(res, 400, std::string(req.matches[2]) + ": " + body.error());
           const std::string action = req.matches[2];
           reply(res, ctl_.rollout_action(req.matches[1], action, *body, actor_of(req)),
                 action == "rollback" ? 201 : 200);
         });
  s.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.status = 200;
    res.set_content(ctl_.metrics_text(), "text/plain; version=0.0.4; charset=utf-8");
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
