// The web dashboard's files (service/web/): GET / redirects to /ui/, GET /ui/ and
// GET /ui/PATH serve files below the web root. Only regular files with a known type are
// served; a path with an empty, "." or ".." segment (also percent-encoded: httplib decodes the
// path before routing) or a backslash is refused, and a file that resolves (symlinks) outside
// the web root is not served. Each reply carries an ETag (size and modification time) and
// Cache-Control: no-cache, so a browser revalidates and an upgraded controller's files are
// picked up at once; the page is refused in frames and limited to this origin's scripts.
// Runs on the HTTP workers; it reads files only and keeps no state.
#include <sys/stat.h>

#include <climits>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "routes.hpp"

namespace ota::service::http {

namespace {

// The content type of a file the dashboard is made of, by its extension; nullptr: not served.
const char* content_type_of(const std::string& path) {
  static const std::pair<const char*, const char*> kTypes[] = {
      {".html", "text/html; charset=utf-8"},
      {".js", "text/javascript; charset=utf-8"},
      {".mjs", "text/javascript; charset=utf-8"},
      {".css", "text/css; charset=utf-8"},
      {".svg", "image/svg+xml"},
      {".png", "image/png"},
      {".ico", "image/x-icon"},
      {".json", "application/json"},
      {".txt", "text/plain; charset=utf-8"},
  };
  for (const auto& [ext, type] : kTypes) {
    const std::string e = ext;
    if (path.size() > e.size() && path.compare(path.size() - e.size(), e.size(), e) == 0)
      return type;
  }
  return nullptr;
}

// Why `rel` (the path below /ui/) is refused, or "" when its form is acceptable.
std::string bad_path_reason(const std::string& rel) {
  if (rel.find('\\') != std::string::npos || rel.find('\0') != std::string::npos)
    return "a backslash or NUL in the path";
  std::size_t start = 0;
  while (start <= rel.size()) {
    const std::size_t slash = rel.find('/', start);
    const std::string segment =
        rel.substr(start, slash == std::string::npos ? std::string::npos : slash - start);
    if (segment.empty() || segment == "." || segment == "..")
      return "an empty, '.' or '..' segment in the path";
    if (slash == std::string::npos) break;
    start = slash + 1;
  }
  return "";
}

std::string real_path(const std::string& path) {
  char buf[PATH_MAX];
  return ::realpath(path.c_str(), buf) ? std::string(buf) : std::string();
}

void serve_file(const std::string& root, const std::string& rel, const httplib::Request& req,
                httplib::Response& res) {
  const std::string why = bad_path_reason(rel);
  if (!why.empty()) return send_error(res, 400, "refused /ui/" + rel + ": " + why);
  const char* type = content_type_of(rel);
  if (!type) return send_error(res, 404, "no such dashboard file: /ui/" + rel);
  const std::string path = real_path(root + "/" + rel);
  struct stat st {};
  // A symlink out of the web root is not part of the dashboard.
  if (path.empty() || path.compare(0, root.size() + 1, root + "/") != 0 ||
      ::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode))
    return send_error(res, 404, "no such dashboard file: /ui/" + rel);
  const std::string etag = "\"" + std::to_string(st.st_size) + "-" +
                           std::to_string(st.st_mtim.tv_sec) + "." +
                           std::to_string(st.st_mtim.tv_nsec) + "\"";
  res.set_header("ETag", etag);
  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Content-Type-Options", "nosniff");
  if (req.get_header_value("If-None-Match") == etag) {
    res.status = 304;
    return;
  }
  std::ifstream in(path, std::ios::binary);
  std::ostringstream body;
  body << in.rdbuf();
  if (!in) return send_error(res, 500, "cannot read dashboard file /ui/" + rel);
  if (rel.size() >= 5 && rel.compare(rel.size() - 5, 5, ".html") == 0) {
    res.set_header("Content-Security-Policy",
                   "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                   "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; "
                   "base-uri 'none'; form-action 'none'");
    res.set_header("X-Frame-Options", "DENY");
  }
  res.status = 200;
  res.set_content(body.str(), type);
}

}  // namespace

void add_web_routes(RouteTable& routes, const std::string& web_root) {
  const std::string root = web_root.empty() ? std::string() : real_path(web_root);
  routes.page("/", [root](const httplib::Request&, httplib::Response& res) {
    if (root.empty())
      return send_error(res, 404,
                        "no web dashboard: this controller was started without one (--web-root "
                        "DIR, the directory of service/web/)");
    res.status = 302;
    res.set_header("Location", "/ui/");
  });
  routes.page("/ui/?", [root](const httplib::Request& req, httplib::Response& res) {
    if (root.empty()) return send_error(res, 404, "no web dashboard (--web-root)");
    serve_file(root, "index.html", req, res);
  });
  routes.page("/ui/(.+)", [root](const httplib::Request& req, httplib::Response& res) {
    if (root.empty()) return send_error(res, 404, "no web dashboard (--web-root)");
    serve_file(root, req.matches[1], req, res);
  });
}

}  // namespace ota::service::http
