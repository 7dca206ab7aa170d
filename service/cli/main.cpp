// otactl: command line client of the ota-controller HTTP API.
//
// Exit codes: 0 ok; 1 API error (401: wrong token), no API token, unreachable controller,
// or (deploy --wait) a device that failed/declined/was cancelled; 2 usage error; 3 deploy
// --wait timed out.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <httplib.h>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

using nlohmann::json;

namespace {

constexpr int kExitOk = 0;
constexpr int kExitFail = 1;
constexpr int kExitUsage = 2;
constexpr int kExitTimeout = 3;

void errorf(const std::string& msg) { std::fprintf(stderr, "otactl: %s\n", msg.c_str()); }

std::string lower_first(std::string s) {
  if (!s.empty()) s[0] = static_cast<char>(std::tolower(static_cast<unsigned char>(s[0])));
  return s;
}

std::string url_encode(const std::string& s) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

struct Url {
  std::string scheme, host;
  int port = 0;
};

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

struct Reply {
  bool ok = false;  // HTTP 2xx with JSON
  int status = 0;
  json body;
  int exit_code = kExitFail;
  std::string error;
};

// The API token: --token-file PATH, else $OTA_API_TOKEN (the token itself), else
// $OTA_API_TOKEN_FILE. Returns false with `why` set if none is configured or readable.
bool find_token(const std::string& token_file_opt, std::string& token, std::string& why) {
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
  const char* ws = " \t\r\n";
  const auto b = token.find_first_not_of(ws);
  token = b == std::string::npos ? "" : token.substr(b, token.find_last_not_of(ws) - b + 1);
  if (token.empty() || token.find_first_of(ws) != std::string::npos) {
    why = "API token from " + (file.empty() ? source : file) + " is empty or malformed";
    return false;
  }
  return true;
}

class Api {
 public:
  Api(std::string base, Url u, const std::string& token)
      : base_(std::move(base)), url_(std::move(u)) {
    std::string hostport = url_.scheme + "://" +
                           (url_.host.find(':') != std::string::npos ? "[" + url_.host + "]" : url_.host) +
                           ":" + std::to_string(url_.port);
    cli_ = std::make_unique<httplib::Client>(hostport);
    cli_->set_connection_timeout(5, 0);
    cli_->set_read_timeout(120, 0);
    cli_->set_write_timeout(120, 0);
    cli_->set_bearer_token_auth(token);
  }

  Reply get(const std::string& path) { return finish(cli_->Get(path.c_str())); }
  Reply post(const std::string& path, const std::string& body, const char* type) {
    return finish(cli_->Post(path.c_str(), body, type));
  }
  const std::string& base() const { return base_; }

 private:
  Reply finish(httplib::Result res) {
    Reply r;
    if (!res) {
      httplib::Error e = res.error();
      std::string why = e == httplib::Error::Connection ? probe_connect_error(url_)
                                                        : lower_first(httplib::to_string(e));
      r.error = "cannot reach controller at " + base_ + ": " + why;
      return r;
    }
    r.status = res->status;
    r.body = json::parse(res->body, nullptr, false);
    if (r.body.is_discarded()) {
      r.error = "controller at " + base_ + " sent a non-JSON reply (HTTP " +
                std::to_string(res->status) + ")";
      return r;
    }
    if (res->status >= 200 && res->status < 300) {
      r.ok = true;
      r.exit_code = kExitOk;
      return r;
    }
    if (r.body.is_object() && r.body.contains("error") && r.body["error"].is_string())
      r.error = r.body["error"].get<std::string>();
    else
      r.error = "HTTP " + std::to_string(res->status);
    if (res->status == 401)
      r.error = "controller at " + base_ + " rejected the API token (HTTP 401: " + r.error +
                "); use the token file the controller was started with (--token-file, "
                "OTA_API_TOKEN_FILE or OTA_API_TOKEN)";
    return r;
  }

  std::string base_;
  Url url_;
  std::unique_ptr<httplib::Client> cli_;
};

// ------------------------------------------------------------------------------ output

std::string jstr(const json& j, const char* key) {
  if (!j.is_object() || !j.contains(key)) return "";
  const json& v = j[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_null()) return "";
  if (v.is_boolean()) return v.get<bool>() ? "yes" : "no";
  if (v.is_array()) {
    std::string out;
    for (const auto& e : v) {
      if (!out.empty()) out += ",";
      out += e.is_string() ? e.get<std::string>() : e.dump();
    }
    return out;
  }
  return v.dump();
}
long long jint(const json& j, const char* key) {
  if (!j.is_object() || !j.contains(key) || !j[key].is_number()) return 0;
  return j[key].get<long long>();
}

std::string fmt_time(long long secs) {
  if (secs <= 0) return "-";
  std::time_t t = static_cast<std::time_t>(secs);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &tm);
  return buf;
}

std::string fmt_bytes(long long b) {
  char buf[32];
  if (b >= 1024 * 1024)
    std::snprintf(buf, sizeof buf, "%.1f MiB", static_cast<double>(b) / (1024.0 * 1024.0));
  else if (b >= 1024)
    std::snprintf(buf, sizeof buf, "%.1f KiB", static_cast<double>(b) / 1024.0);
  else
    std::snprintf(buf, sizeof buf, "%lld B", b);
  return buf;
}

void print_table(const std::vector<std::string>& head, const std::vector<std::vector<std::string>>& rows) {
  std::vector<std::size_t> w(head.size());
  for (std::size_t i = 0; i < head.size(); ++i) w[i] = head[i].size();
  for (const auto& r : rows)
    for (std::size_t i = 0; i < r.size() && i < w.size(); ++i) w[i] = std::max(w[i], r[i].size());
  auto line = [&](const std::vector<std::string>& r) {
    std::string s;
    for (std::size_t i = 0; i < head.size(); ++i) {
      std::string cell = i < r.size() ? r[i] : "";
      s += cell;
      if (i + 1 < head.size()) s += std::string(w[i] - cell.size() + 2, ' ');
    }
    while (!s.empty() && s.back() == ' ') s.pop_back();
    std::printf("%s\n", s.c_str());
  };
  line(head);
  for (const auto& r : rows) line(r);
  if (rows.empty()) std::printf("(none)\n");
}

void print_json(const json& j) { std::printf("%s\n", j.dump(2).c_str()); }

const char* const kStates[] = {"offered",   "accepted",  "downloading", "verifying",
                               "installing", "rebooting", "confirming", "succeeded",
                               "failed",    "declined",  "cancelled"};

std::string counts_text(const json& d, bool always_sf) {
  std::string s;
  const json& c = d.contains("counts") ? d["counts"] : json::object();
  for (const char* st : kStates) {
    long long n = c.contains(st) && c[st].is_number() ? c[st].get<long long>() : 0;
    bool always = always_sf && (std::strcmp(st, "succeeded") == 0 || std::strcmp(st, "failed") == 0);
    if (n == 0 && !always) continue;
    if (!s.empty()) s += "  ";
    s += std::string(st) + " " + std::to_string(n);
  }
  long long pending = jint(d, "pending_members");
  if (pending > 0) s += "  not-yet-seen " + std::to_string(pending);
  return s;
}

std::string progress_line(const json& d) {
  long long pct = std::clamp(jint(d, "percent"), 0LL, 100LL);
  std::string bar = "[";
  for (int i = 0; i < 10; ++i) bar += (i < pct / 10) ? '#' : '.';
  bar += "]";
  char p[16];
  std::snprintf(p, sizeof p, "%3lld%%", pct);
  return bar + " " + p + "  " + counts_text(d, true);
}

void print_deployment(const json& d) {
  std::printf("deployment %s  state %s\n", jstr(d, "id").c_str(), jstr(d, "state").c_str());
  std::printf("image      %s (%s)\n", jstr(d, "image").c_str(), jstr(d, "version").c_str());
  std::printf("target     %s %s\n", jstr(d, "target_kind").c_str(), jstr(d, "target").c_str());
  std::printf("created    %s\n", fmt_time(jint(d, "created_at")).c_str());
  if (jint(d, "finished_at") > 0) std::printf("finished   %s\n", fmt_time(jint(d, "finished_at")).c_str());
  std::printf("progress   %s\n\n", progress_line(d).c_str());
  std::vector<std::vector<std::string>> rows;
  if (d.contains("devices"))
    for (const auto& r : d["devices"])
      rows.push_back({jstr(r, "device"), jstr(r, "state"), jstr(r, "percent") + "%",
                      fmt_bytes(jint(r, "received")) + " / " + fmt_bytes(jint(r, "total")),
                      jstr(r, "reason")});
  print_table({"DEVICE", "STATE", "PERCENT", "RECEIVED", "REASON"}, rows);
}

// --------------------------------------------------------------------------- commands

struct Ctx {
  std::unique_ptr<Api> api;
  bool json_out = false;
};

int fail(const Reply& r) {
  errorf(r.error);
  return r.exit_code == kExitOk ? kExitFail : r.exit_code;
}

int cmd_image_add(Ctx& c, const std::string& file, const std::string& version,
                  const std::vector<std::string>& hw, long long chunk_size, long long counter) {
  std::ifstream in(file, std::ios::binary);
  if (!in) {
    errorf("cannot read image file " + file + ": " + std::strerror(errno));
    return kExitUsage;
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  std::string bytes = ss.str();
  if (bytes.empty()) {
    errorf("image file " + file + " is empty");
    return kExitUsage;
  }
  std::string q = "/api/v1/images?version=" + url_encode(version);
  for (const auto& h : hw) q += "&hw=" + url_encode(h);
  if (chunk_size >= 0) q += "&chunk_size=" + std::to_string(chunk_size);
  if (counter >= 0) q += "&counter=" + std::to_string(counter);
  Reply r = c.api->post(q, bytes, "application/octet-stream");
  if (!r.ok) return fail(r);
  if (c.json_out) {
    print_json(r.body);
  } else {
    std::printf("image %s version %s (%s, chunk %lld, hw %s) %s\n", jstr(r.body, "id").c_str(),
                jstr(r.body, "version").c_str(), fmt_bytes(jint(r.body, "size")).c_str(),
                jint(r.body, "chunk_size"), jstr(r.body, "hw").c_str(),
                r.status == 201 ? "added" : "already present");
  }
  return kExitOk;
}

int cmd_image_list(Ctx& c) {
  Reply r = c.api->get("/api/v1/images");
  if (!r.ok) return fail(r);
  if (c.json_out) return print_json(r.body), kExitOk;
  std::vector<std::vector<std::string>> rows;
  for (const auto& i : r.body)
    rows.push_back({jstr(i, "id"), jstr(i, "version"), jstr(i, "hw"), std::to_string(jint(i, "size")),
                    jstr(i, "chunk_size"), jstr(i, "counter"), fmt_time(jint(i, "created_at"))});
  print_table({"ID", "VERSION", "HW", "SIZE", "CHUNK", "COUNTER", "CREATED"}, rows);
  return kExitOk;
}

int wait_deployment(Ctx& c, const std::string& id, double timeout_s) {
  const bool tty = isatty(STDOUT_FILENO) != 0 && !c.json_out;
  std::FILE* out = c.json_out ? stderr : stdout;
  const auto start = std::chrono::steady_clock::now();
  std::string last_line, last_err;
  json d;
  for (;;) {
    Reply r = c.api->get("/api/v1/deployments/" + url_encode(id));
    if (r.ok) {
      d = r.body;
      last_err.clear();
      std::string line = progress_line(d);
      if (tty) {
        std::fprintf(out, "\r%s\033[K", line.c_str());
        std::fflush(out);
      } else if (line != last_line) {
        std::fprintf(out, "%s\n", line.c_str());
        std::fflush(out);
      }
      last_line = line;
      const std::string st = jstr(d, "state");
      if (st != "active") break;
    } else if (r.status == 404) {
      if (tty) std::fprintf(out, "\n");
      return fail(r);
    } else if (r.error != last_err) {  // controller restarting? keep polling until the timeout
      if (tty) std::fprintf(out, "\n");
      errorf(r.error + " (still waiting)");
      last_err = r.error;
    }
    const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (timeout_s > 0 && el >= timeout_s) {
      if (tty) std::fprintf(out, "\n");
      errorf("timed out after " + std::to_string(static_cast<long long>(timeout_s)) +
             " s waiting for deployment " + id + (d.is_object() ? " (" + counts_text(d, false) + ")" : ""));
      if (c.json_out && d.is_object()) print_json(d);
      return kExitTimeout;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
  }
  if (tty) std::fprintf(out, "\n");
  if (c.json_out) print_json(d);
  std::vector<std::string> bad;
  long long ok = 0, n = 0;
  if (d.contains("devices"))
    for (const auto& row : d["devices"]) {
      ++n;
      std::string st = jstr(row, "state");
      if (st == "succeeded") {
        ++ok;
      } else {
        std::string why = jstr(row, "reason");
        bad.push_back(jstr(row, "device") + ": " + st + (why.empty() ? "" : " (" + why + ")"));
      }
    }
  const std::string st = jstr(d, "state");
  if (st == "completed" && bad.empty()) {
    if (!c.json_out) std::printf("deployment %s completed: %lld/%lld devices succeeded\n", id.c_str(), ok, n);
    return kExitOk;
  }
  std::fprintf(stderr, "deployment %s %s: %lld/%lld devices succeeded\n", id.c_str(), st.c_str(), ok, n);
  for (const auto& b : bad) std::fprintf(stderr, "  %s\n", b.c_str());
  return kExitFail;
}

int cmd_deploy(Ctx& c, const std::string& image, const std::string& device, const std::string& group,
               bool wait, double timeout_s) {
  json body{{"image", image}};
  if (!device.empty()) body["device"] = device;
  if (!group.empty()) body["group"] = group;
  Reply r = c.api->post("/api/v1/deployments", body.dump(), "application/json");
  if (!r.ok) return fail(r);
  const std::string id = jstr(r.body, "id");
  if (!wait) {
    if (c.json_out)
      print_json(r.body);
    else
      std::printf("deployment %s created: image %s (%s) to %s %s\n", id.c_str(), jstr(r.body, "image").c_str(),
                  jstr(r.body, "version").c_str(), jstr(r.body, "target_kind").c_str(),
                  jstr(r.body, "target").c_str());
    return kExitOk;
  }
  if (!c.json_out)
    std::printf("deployment %s created: image %s (%s) to %s %s; waiting\n", id.c_str(),
                jstr(r.body, "image").c_str(), jstr(r.body, "version").c_str(),
                jstr(r.body, "target_kind").c_str(), jstr(r.body, "target").c_str());
  std::fflush(stdout);
  return wait_deployment(c, id, timeout_s);
}

int cmd_devices(Ctx& c, const std::string& group, const std::string& version, bool online) {
  std::string q = "/api/v1/devices";
  std::string sep = "?";
  if (!group.empty()) q += sep + "group=" + url_encode(group), sep = "&";
  if (!version.empty()) q += sep + "version=" + url_encode(version), sep = "&";
  if (online) q += sep + "online=true";
  Reply r = c.api->get(q);
  if (!r.ok) return fail(r);
  if (c.json_out) return print_json(r.body), kExitOk;
  std::vector<std::vector<std::string>> rows;
  for (const auto& d : r.body)
    rows.push_back({jstr(d, "id"), jstr(d, "hw"), jstr(d, "version"), jstr(d, "online"),
                    jstr(d, "slot") + "/" + jstr(d, "slot_state"), jstr(d, "groups"),
                    fmt_time(jint(d, "last_seen")), jstr(d, "last_error")});
  print_table({"ID", "HW", "VERSION", "ONLINE", "SLOT", "GROUPS", "LAST SEEN", "LAST ERROR"}, rows);
  return kExitOk;
}

int cmd_device_show(Ctx& c, const std::string& id) {
  Reply r = c.api->get("/api/v1/devices/" + url_encode(id));
  if (!r.ok) return fail(r);
  if (c.json_out) return print_json(r.body), kExitOk;
  const json& d = r.body;
  std::printf("device     %s\n", jstr(d, "id").c_str());
  std::printf("hw         %s\n", jstr(d, "hw").c_str());
  std::printf("version    %s (previous %s)\n", jstr(d, "version").c_str(),
              jstr(d, "previous_version").empty() ? "-" : jstr(d, "previous_version").c_str());
  std::printf("slot       %s (%s)\n", jstr(d, "slot").c_str(), jstr(d, "slot_state").c_str());
  std::printf("online     %s (last seen %s)\n", jstr(d, "online").c_str(), fmt_time(jint(d, "last_seen")).c_str());
  std::printf("groups     %s\n", jstr(d, "groups").c_str());
  std::printf("free       %s\n", fmt_bytes(jint(d, "free")).c_str());
  std::printf("counter    %lld\n", jint(d, "counter"));
  std::printf("last error %s\n\n", jstr(d, "last_error").empty() ? "-" : jstr(d, "last_error").c_str());
  std::vector<std::vector<std::string>> rows;
  if (d.contains("deployments"))
    for (const auto& x : d["deployments"])
      rows.push_back({jstr(x, "deployment"), jstr(x, "state"), jstr(x, "reason")});
  print_table({"DEPLOYMENT", "STATE", "REASON"}, rows);
  return kExitOk;
}

int cmd_deployment_list(Ctx& c) {
  Reply r = c.api->get("/api/v1/deployments");
  if (!r.ok) return fail(r);
  if (c.json_out) return print_json(r.body), kExitOk;
  std::vector<std::vector<std::string>> rows;
  for (const auto& d : r.body)
    rows.push_back({jstr(d, "id"), jstr(d, "image"), jstr(d, "version"),
                    jstr(d, "target_kind") + ":" + jstr(d, "target"), jstr(d, "state"),
                    std::to_string(jint(d, "percent")) + "%", counts_text(d, false),
                    fmt_time(jint(d, "created_at"))});
  print_table({"ID", "IMAGE", "VERSION", "TARGET", "STATE", "PROGRESS", "DEVICES", "CREATED"}, rows);
  return kExitOk;
}

int cmd_deployment_show(Ctx& c, const std::string& id) {
  Reply r = c.api->get("/api/v1/deployments/" + url_encode(id));
  if (!r.ok) return fail(r);
  if (c.json_out) return print_json(r.body), kExitOk;
  print_deployment(r.body);
  return kExitOk;
}

int cmd_deployment_cancel(Ctx& c, const std::string& id) {
  Reply r = c.api->post("/api/v1/deployments/" + url_encode(id) + "/cancel", "", "application/json");
  if (!r.ok) return fail(r);
  if (c.json_out) return print_json(r.body), kExitOk;
  std::printf("deployment %s cancelled (%s)\n", id.c_str(), counts_text(r.body, false).c_str());
  return kExitOk;
}

int cmd_status(Ctx& c, const std::string& dep) {
  if (!dep.empty()) return cmd_deployment_show(c, dep);
  Reply r = c.api->get("/api/v1/status");
  if (!r.ok) return fail(r);
  if (c.json_out) return print_json(r.body), kExitOk;
  const json& s = r.body;
  const json& dv = s.contains("devices") ? s["devices"] : json::object();
  std::printf("controller  mqtt %s, %lld images, %lld decode errors\n", jstr(s, "mqtt").c_str(),
              jint(s, "images"), jint(s, "decode_errors"));
  std::printf("devices     %lld total, %lld online\n", jint(dv, "total"), jint(dv, "online"));
  const json& dp = s.contains("deployments") ? s["deployments"] : json::object();
  std::printf("deployments %lld active, %lld completed, %lld cancelled\n\n", jint(dp, "active"),
              jint(dp, "completed"), jint(dp, "cancelled"));
  std::vector<std::vector<std::string>> rows;
  if (dv.contains("by_version"))
    for (auto it = dv["by_version"].begin(); it != dv["by_version"].end(); ++it)
      rows.push_back({it.key().empty() ? "(unknown)" : it.key(), it.value().dump()});
  print_table({"VERSION", "DEVICES"}, rows);
  return kExitOk;
}

int cmd_events(Ctx& c, const std::string& dep, const std::string& dev, int limit) {
  std::string q = "/api/v1/events?limit=" + std::to_string(limit);
  if (!dep.empty()) q += "&deployment=" + url_encode(dep);
  if (!dev.empty()) q += "&device=" + url_encode(dev);
  Reply r = c.api->get(q);
  if (!r.ok) return fail(r);
  if (c.json_out) return print_json(r.body), kExitOk;
  std::vector<std::vector<std::string>> rows;
  for (const auto& e : r.body) {
    long long ts = jint(e, "ts");
    char ms[8];
    std::snprintf(ms, sizeof ms, ".%03lld", ts % 1000);
    rows.push_back({fmt_time(ts / 1000) + ms, jstr(e, "deployment"), jstr(e, "device"), jstr(e, "what"),
                    jstr(e, "detail")});
  }
  print_table({"TIME (UTC)", "DEPLOYMENT", "DEVICE", "WHAT", "DETAIL"}, rows);
  return kExitOk;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"otactl: control the OTA fleet controller over its HTTP API"};
  app.require_subcommand(1);
  app.fallthrough();  // global options (--json, --api) may also follow the subcommand
  const char* env_api = std::getenv("OTA_API");
  std::string api = env_api && *env_api ? env_api : "http://127.0.0.1:8080";
  bool json_out = false;
  app.add_option("--api", api, "controller API URL (default: $OTA_API or http://127.0.0.1:8080)");
  app.add_flag("--json", json_out, "machine-readable output (the API's JSON)");
  std::string token_file;
  app.add_option("--token-file", token_file,
                 "file holding the API bearer token (the controller's --api-token-file, default "
                 "<db>.token); else $OTA_API_TOKEN (the token), else $OTA_API_TOKEN_FILE");

  auto* image = app.add_subcommand("image", "manage firmware images");
  image->require_subcommand(1);
  auto* image_add = image->add_subcommand("add", "upload an image");
  std::string file, version;
  std::vector<std::string> hw;
  long long chunk_size = -1, counter = -1;
  image_add->add_option("FILE", file, "image file")->required();
  image_add->add_option("--version", version, "semantic version, e.g. 1.2.0")->required();
  image_add->add_option("--hw", hw, "compatible hardware model (repeatable)")->required();
  image_add->add_option("--chunk-size", chunk_size, "chunk size in bytes (256..65536, default 4096)")
      ->check(CLI::Range(256LL, 65536LL));
  image_add->add_option("--counter", counter, "security counter (default 0)")
      ->check(CLI::Range(0LL, 4294967295LL));
  auto* image_list = image->add_subcommand("list", "list images");

  auto* deploy = app.add_subcommand("deploy", "deploy an image to a device or a group");
  std::string dep_image, dep_device, dep_group;
  bool wait = false;
  double timeout_s = 1800;
  deploy->add_option("IMAGE", dep_image, "image id or version")->required();
  auto* o_dev = deploy->add_option("--device", dep_device, "target device id");
  auto* o_grp = deploy->add_option("--group", dep_group, "target group");
  o_dev->excludes(o_grp);
  o_grp->excludes(o_dev);
  auto* o_wait = deploy->add_flag("--wait", wait, "wait for the deployment to finish, showing progress");
  deploy->add_option("--timeout", timeout_s, "with --wait: give up after SECONDS (default 1800; exit 3)")
      ->needs(o_wait)
      ->check(CLI::PositiveNumber);

  auto* devices = app.add_subcommand("devices", "list devices");
  std::string f_group, f_version;
  bool f_online = false;
  devices->add_option("--group", f_group, "only members of this group");
  devices->add_option("--version", f_version, "only devices running this version");
  devices->add_flag("--online", f_online, "only online devices");

  auto* device = app.add_subcommand("device", "one device");
  device->require_subcommand(1);
  auto* device_show = device->add_subcommand("show", "show a device");
  std::string dev_id;
  device_show->add_option("ID", dev_id, "device id")->required();

  auto* status = app.add_subcommand("status", "fleet summary, or one deployment's progress");
  std::string status_dep;
  status->add_option("DEPLOYMENT", status_dep, "deployment id");

  auto* deployment = app.add_subcommand("deployment", "manage deployments");
  deployment->require_subcommand(1);
  auto* dl = deployment->add_subcommand("list", "list deployments");
  auto* ds = deployment->add_subcommand("show", "show a deployment with per-device rows");
  auto* dc = deployment->add_subcommand("cancel", "cancel a deployment");
  std::string d_id;
  ds->add_option("ID", d_id, "deployment id")->required();
  dc->add_option("ID", d_id, "deployment id")->required();

  auto* events = app.add_subcommand("events", "event log");
  std::string e_dep, e_dev;
  int e_limit = 50;
  events->add_option("--deployment", e_dep, "only this deployment");
  events->add_option("--device", e_dev, "only this device");
  events->add_option("--limit", e_limit, "at most N events (1..10000, default 50)")->check(CLI::Range(1, 10000));

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? kExitOk : kExitUsage;
  }
  if (deploy->parsed() && dep_device.empty() && dep_group.empty()) {
    errorf("deploy: give a target: --device ID or --group G");
    return kExitUsage;
  }
  Url u;
  std::string why;
  if (!parse_url(api, u, why)) {
    errorf("invalid --api URL '" + api + "': " + why);
    return kExitUsage;
  }
  std::string token;
  if (!find_token(token_file, token, why)) {
    errorf(why);
    return kExitFail;
  }
  Ctx c;
  c.api = std::make_unique<Api>(api, u, token);
  c.json_out = json_out;

  if (image_add->parsed()) return cmd_image_add(c, file, version, hw, chunk_size, counter);
  if (image_list->parsed()) return cmd_image_list(c);
  if (deploy->parsed()) return cmd_deploy(c, dep_image, dep_device, dep_group, wait, timeout_s);
  if (devices->parsed()) return cmd_devices(c, f_group, f_version, f_online);
  if (device_show->parsed()) return cmd_device_show(c, dev_id);
  if (status->parsed()) return cmd_status(c, status_dep);
  if (dl->parsed()) return cmd_deployment_list(c);
  if (ds->parsed()) return cmd_deployment_show(c, d_id);
  if (dc->parsed()) return cmd_deployment_cancel(c, d_id);
  if (events->parsed()) return cmd_events(c, e_dep, e_dev, e_limit);
  errorf("no command given (try --help)");
  return kExitUsage;
}
