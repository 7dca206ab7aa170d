#include "api_client.hpp"

#include <arpa/inet.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <httplib.h>

namespace otactl {

namespace {

std::string lower_first(std::string s) {
  if (!s.empty()) s[0] = static_cast<char>(std::tolower(static_cast<unsigned char>(s[0])));
  return s;
}

// HOST[:PORT] or [IPv6][:PORT] into u.host and `port` (empty if none).
bool split_host_port(const std::string& rest, Url& u, std::string& port, std::string& why) {
  if (!rest.empty() && rest[0] == '[') {
    auto close = rest.find(']');
    if (close == std::string::npos) {
      why = "unterminated [IPv6] host";
      return false;
    }
    u.host = rest.substr(1, close - 1);
    if (close + 1 < rest.size()) {
      if (rest[close + 1] != ':') {
        why = "bad port";
        return false;
      }
      port = rest.substr(close + 2);
    }
  } else {
    auto colon = rest.rfind(':');
    u.host = rest.substr(0, colon);
    if (colon != std::string::npos) port = rest.substr(colon + 1);
  }
  return true;
}

// Finds out why a TCP connection fails (httplib only says "connection failed").
std::string probe_connect_error(const Url& u) {
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  int g = getaddrinfo(u.host.c_str(), std::to_string(u.port).c_str(), &hints, &res);
  if (g != 0) return std::string("cannot resolve host: ") + gai_strerror(g);
  std::string why = "connection failed";
  for (addrinfo* ai = res; ai; ai = ai->ai_next) {
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
    if (fd < 0) continue;
    int rc = connect(fd, ai->ai_addr, ai->ai_addrlen);
    int err = 0;
    if (rc != 0 && errno == EINPROGRESS) {
      pollfd pfd{fd, POLLOUT, 0};
      if (poll(&pfd, 1, 3000) <= 0) {
        err = ETIMEDOUT;
      } else {
        socklen_t l = sizeof err;
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &l);
      }
    } else if (rc != 0) {
      err = errno;
    }
    close(fd);
    if (err == 0) {
      why = "connection failed";
      break;
    }
    why = lower_first(std::strerror(err));
  }
  freeaddrinfo(res);
  return why;
}

// Why a request got no HTTP reply, in words (httplib names only an enum value).
std::string transport_error(httplib::Error e, const Url& url) {
  using httplib::Error;
  switch (e) {
    case Error::Connection:
      return probe_connect_error(url);
    case Error::ConnectionTimeout:
      return "no connection within 5 s";
    case Error::SSLConnection:
      return "the TLS handshake failed: an https:// URL needs a TLS endpoint in front of the "
             "controller (it speaks plain http itself; API.md: TLS), or use http:// on loopback";
    case Error::SSLServerVerification:
      return "its TLS certificate is not trusted by this system's CAs or is not for " + url.host;
    case Error::SSLLoadingCerts:
      return "cannot load this system's trusted CA certificates";
    case Error::Read:
    case Error::Write:
      return "the connection broke before a reply came";
    default:
      return lower_first(httplib::to_string(e));
  }
}

// The reply to one request: JSON on 2xx, else the controller's error (or why there was none).
Reply finish(const std::string& base, const Url& url, const std::string& token_source,
             httplib::Result res) {
  Reply r;
  if (!res) {
    r.error = "cannot reach controller at " + base + ": " + transport_error(res.error(), url);
    return r;
  }
  r.status = res->status;
  r.body = json::parse(res->body, nullptr, false);
  if (r.body.is_discarded()) {
    r.error = "controller at " + base + " sent a non-JSON reply (HTTP " +
              std::to_string(res->status) + ")";
    return r;
  }
  if (res->status >= 200 && res->status < 300) {
    r.ok = true;
    r.exit_code = kExitOk;
    return r;
  }
  // {"error": {"code": ..., "message": ..., "field": ...}} (API.md, Errors); a controller
  // before it sent {"error": "message"}.
  const json* error =
      r.body.is_object() && r.body.contains("error") ? &r.body["error"] : nullptr;
  if (error && error->is_object() && error->contains("message") &&
      (*error)["message"].is_string())
    r.error = (*error)["message"].get<std::string>();
  else if (error && error->is_string())
    r.error = error->get<std::string>();
  else
    r.error = "HTTP " + std::to_string(res->status);
  if (res->status == 401)
    r.error = "controller at " + base + " rejected the API token from " + token_source +
              ": use its <db>.token file or one from `otactl token create`";
  return r;
}

}  // namespace

const char* const kExitCodeTable =
    "Exit codes:\n"
    "  0  done\n"
    "  1  refused or failed: the controller's 4xx/5xx (404: no such id) with its message, no or\n"
    "     a rejected API token, controller unreachable; deploy --wait: a device did not succeed;\n"
    "     watch: the rollout was aborted, paused by its policy, or is a draft\n"
    "  2  bad usage: an unknown command, a missing or bad argument (nothing was sent)\n"
    "  3  gave up waiting: deploy --wait --timeout, or watch on an unreachable controller\n";

void errorf(const std::string& msg) { std::fprintf(stderr, "otactl: %s\n", msg.c_str()); }

bool parse_url(const std::string& s, Url& u, std::string& why) {
  auto p = s.find("://");
  if (p == std::string::npos) {
    why = "missing scheme (expected http://HOST:PORT)";
    return false;
  }
  u.scheme = s.substr(0, p);
  if (u.scheme != "http" && u.scheme != "https") {
    why = "scheme must be http or https";
    return false;
  }
  std::string rest = s.substr(p + 3);
  auto slash = rest.find('/');
  if (slash != std::string::npos) {
    if (rest.substr(slash) != "/") {
      why = "must not contain a path";
      return false;
    }
    rest = rest.substr(0, slash);
  }
  std::string port;
  if (!split_host_port(rest, u, port, why)) return false;
  if (u.host.empty()) {
    why = "empty host";
    return false;
  }
  if (port.empty()) {
    u.port = u.scheme == "https" ? 443 : 80;
  } else {
    if (port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos ||
        std::atoi(port.c_str()) < 1 || std::atoi(port.c_str()) > 65535) {
      why = "bad port '" + port + "'";
      return false;
    }
    u.port = std::atoi(port.c_str());
  }
  return true;
}

bool find_token(const std::string& token_file_opt, std::string& token, std::string& why,
                std::string* source_out) {
  std::string file = token_file_opt, source = "--token-file";
  if (file.empty()) {
    const char* v = std::getenv("OTA_API_TOKEN");
    if (v && *v) {
      token = v;
      source = "OTA_API_TOKEN";
    } else {
      const char* f = std::getenv("OTA_API_TOKEN_FILE");
      if (f && *f) {
        file = f;
        source = "OTA_API_TOKEN_FILE";
      }
    }
  }
  if (token.empty() && file.empty()) {
    why = "no API token: pass --token-file PATH or set OTA_API_TOKEN_FILE=PATH (the controller "
          "writes its token to --api-token-file, default <db>.token) or OTA_API_TOKEN=TOKEN";
    return false;
  }
  if (token.empty()) {
    std::ifstream in(file);
    if (!in) {
      why = "cannot read API token file " + file + " (from " + source + "): " + std::strerror(errno);
      return false;
    }
    std::getline(in, token);
  }
  if (source_out) *source_out = file.empty() ? source : source + " " + file;
  const char* ws = " \t\r\n";
  const auto b = token.find_first_not_of(ws);
  token = b == std::string::npos ? "" : token.substr(b, token.find_last_not_of(ws) - b + 1);
  if (token.empty() || token.find_first_of(ws) != std::string::npos) {
    why = "API token from " + (file.empty() ? source : file) + " is empty or malformed";
    return false;
  }
  return true;
}

Api::Api(std::string base, Url u, const std::string& token, std::string token_source)
    : base_(std::move(base)), url_(std::move(u)), token_source_(std::move(token_source)) {
  std::string hostport = url_.scheme + "://" +
                         (url_.host.find(':') != std::string::npos ? "[" + url_.host + "]" : url_.host) +
                         ":" + std::to_string(url_.port);
  cli_ = std::make_unique<httplib::Client>(hostport);
  cli_->set_connection_timeout(5, 0);
  cli_->set_read_timeout(120, 0);
  cli_->set_write_timeout(120, 0);
  // The controller names the actor in its event log after this token.
  cli_->set_bearer_token_auth(token);
}

Api::~Api() = default;

// A list endpoint sends one page (API.md, Lists) with the number of matching items in
// X-Total-Count: a request that asked for no page (no limit=/offset=) gets every page,
// concatenated, so commands that list everything see everything.
Reply Api::get(const std::string& path) {
  auto res = cli_->Get(path.c_str());
  const bool paged_by_caller =
      path.find("limit=") != std::string::npos || path.find("offset=") != std::string::npos;
  if (!res || res->status != 200 || paged_by_caller || !res->has_header("X-Total-Count"))
    return finish(base_, url_, token_source_, std::move(res));
  const std::size_t total =
      std::strtoull(res->get_header_value("X-Total-Count").c_str(), nullptr, 10);
  Reply all = finish(base_, url_, token_source_, std::move(res));
  const char* sep = path.find('?') == std::string::npos ? "?" : "&";
  while (all.ok && all.body.is_array() && all.body.size() < total) {
    const std::string next = path + sep + "offset=" + std::to_string(all.body.size());
    Reply page = finish(base_, url_, token_source_, cli_->Get(next.c_str()));
    if (!page.ok || !page.body.is_array()) return page;
    if (page.body.empty()) break;  // the list shrank meanwhile
    for (auto& item : page.body) all.body.push_back(std::move(item));
  }
  return all;
}

Reply Api::post(const std::string& path, const std::string& body, const char* type) {
  return finish(base_, url_, token_source_, cli_->Post(path.c_str(), body, type));
}

Reply Api::post_json(const std::string& path, const json& body) {
  return post(path, body.dump(), "application/json");
}

Reply Api::put_json(const std::string& path, const json& body) {
  return finish(base_, url_, token_source_,
                cli_->Put(path.c_str(), body.dump(), "application/json"));
}

Reply Api::put_raw(const std::string& path, const std::string& body) {
  return finish(base_, url_, token_source_, cli_->Put(path.c_str(), body, "application/json"));
}

Reply Api::del(const std::string& path) {
  return finish(base_, url_, token_source_, cli_->Delete(path.c_str()));
}

Reply Api::download(const std::string& path, std::string& bytes) {
  auto res = cli_->Get(path.c_str());
  if (res && res->status == 200) {
    bytes = std::move(res->body);
    Reply r;
    r.ok = true;
    r.status = 200;
    r.exit_code = kExitOk;
    return r;
  }
  return finish(base_, url_, token_source_, std::move(res));
}

int open_api(const std::string& url, const std::string& url_source, const std::string& token_file,
             std::unique_ptr<Api>& api) {
  Url u;
  std::string why;
  if (!parse_url(url, u, why)) {
    errorf("invalid " + url_source + " URL '" + url + "': " + why);
    return kExitUsage;
  }
  std::string token, token_source;
  if (!find_token(token_file, token, why, &token_source)) {
    errorf(why);
    return kExitFail;
  }
  api = std::make_unique<Api>(url, u, token, token_source);
  return kExitOk;
}

int fail(const Reply& r) {
  errorf(r.error);
  return r.exit_code == kExitOk ? kExitFail : r.exit_code;
}

}  // namespace otactl
