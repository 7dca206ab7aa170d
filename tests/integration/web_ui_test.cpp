// The web dashboard (issue 14) against a real fleet: mosquitto from broker-config/ (TLS,
// ACLs), ota-controller with its SQLite file serving service/web/, 12 simulated devices
// (ota-devsim), and Debian's chromium driven headless by tests/web/dashboard_test.js
// (playwright-core). This file starts and stops the processes (by pid) and prepares what the
// browser script needs: two images, tags, an operator and a read-only token; the script
// checks the pages against the API. Also the dashboard's files as the controller serves them
// from its default web root (content types, caching, no way out of the web root).
#include <sys/stat.h>
#include <unistd.h>

#include "fleet_fixture.hpp"

namespace fleet_test {
namespace {

bool file_exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

std::string chromium_path() {
  const char* env = std::getenv("OTA_CHROMIUM");
  return env && *env ? std::string(env) : std::string("/usr/bin/chromium");
}

class WebDashboard : public FleetTest {
 protected:
  // A new API token with `role`: its secret.
  std::string make_token(const std::string& name, const std::string& role) {
    auto r = client().Post("/api/v1/tokens", json{{"name", name}, {"role", role}}.dump(),
                           "application/json");
    EXPECT_TRUE(r && r->status == 201) << (r ? r->body : "no reply");
    return r && r->status == 201 ? json::parse(r->body).value("token", "") : "";
  }
};

TEST_F(WebDashboard, FleetRolloutsAndRolesInChromium) {
  const std::string node_module = std::string(OTA_WEB_NODE_MODULES) + "/playwright-core/package.json";
  if (!file_exists(chromium_path()) || !file_exists(node_module))
    GTEST_SKIP() << "needs " << chromium_path() << " and " << node_module
                 << " (scripts/install-deps.sh installs both)";
  start_env("web", 12, "lab");
  // One device whose new image fails its self-test: a failure on the rollout page, a last
  // error with its reason on the device's page.
  start_fleet({"--fail-self-test", device_id(12)});
  wait_fleet_online();
  add_image(random_bytes(48 * 1024, 14), "1.1.0");
  add_image(random_bytes(48 * 1024, 15), "1.2.0");
  for (int i = 1; i <= 4; ++i) {
    auto r = client().Put(("/api/v1/devices/" + device_id(i) + "/tags").c_str(),
                          json{{"site", "berlin"}}.dump(), "application/json");
    ASSERT_TRUE(r && r->status == 200) << (r ? r->body : "no reply");
  }
  const std::string operator_token = make_token("web-operator", "operator");
  const std::string viewer_token = make_token("web-viewer", "read-only");
  ASSERT_FALSE(operator_token.empty() || viewer_token.empty());
  const std::string artifacts = OTA_WEB_ARTIFACTS;
  ASSERT_EQ(ota::test::run_command({"mkdir", "-p", artifacts}).exit_code, 0);
  for (const char* png : {"fleet.png", "rollout.png", "failure.png"})
    std::remove((artifacts + "/" + png).c_str());

  const auto started = std::chrono::steady_clock::now();
  CommandResult r = ota::test::run_command(
      {"env", std::string("NODE_PATH=") + OTA_WEB_NODE_MODULES, "OTA_WEB_URL=" + api_url(),
       "OTA_WEB_OPERATOR_TOKEN=" + operator_token, "OTA_WEB_READONLY_TOKEN=" + viewer_token,
       "OTA_WEB_GROUP=lab", "OTA_WEB_IMAGE=1.1.0", "OTA_WEB_IMAGE2=1.2.0",
       "OTA_WEB_FAILING_DEVICE=" + device_id(12),
       "OTA_WEB_ARTIFACTS=" + artifacts, "OTA_CHROMIUM=" + chromium_path(), "node",
       OTA_WEB_TEST_SCRIPT});
  const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(
      std::chrono::steady_clock::now() - started);
  std::printf("%s(browser part: %lld ms)\n", r.output.c_str(), static_cast<long long>(took.count()));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  for (const char* png : {"fleet.png", "rollout.png"}) {
    const std::string bytes = read_file(artifacts + "/" + png);
    EXPECT_GT(bytes.size(), 10000u) << png;
    EXPECT_EQ(bytes.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8)) << png << " is a PNG";
  }
}

// The controller of a build tree finds service/web itself (no --web-root) and serves it with
// the right types and caching headers, and nothing outside it.
TEST_F(WebDashboard, FilesAreServedTypedCachedAndConfined) {
  prepare_env("files", 1, "lab");
  broker_ = std::make_unique<Broker>(*pki_);
  ASSERT_TRUE(start_controller());
  httplib::Client anonymous("127.0.0.1", http_port_);
  auto root = anonymous.Get("/");
  ASSERT_TRUE(root);
  EXPECT_EQ(root->status, 302);
  EXPECT_EQ(root->get_header_value("Location"), "/ui/");

  auto index = anonymous.Get("/ui/");
  ASSERT_TRUE(index);
  ASSERT_EQ(index->status, 200) << index->body;
  EXPECT_EQ(index->get_header_value("Content-Type"), "text/html; charset=utf-8");
  EXPECT_EQ(index->body, read_file(std::string(OTA_WEB_ROOT) + "/index.html"));
  EXPECT_NE(index->get_header_value("Content-Security-Policy").find("default-src 'self'"), std::string::npos);
  EXPECT_EQ(index->get_header_value("Cache-Control"), "no-cache");
  const std::string etag = index->get_header_value("ETag");
  ASSERT_FALSE(etag.empty());
  auto again = anonymous.Get("/ui/", {{"If-None-Match", etag}});
  ASSERT_TRUE(again);
  EXPECT_EQ(again->status, 304);
  EXPECT_TRUE(again->body.empty());

  const std::pair<const char*, const char*> typed[] = {
      {"/ui/js/app.js", "text/javascript; charset=utf-8"},
      {"/ui/style.css", "text/css; charset=utf-8"},
  };
  for (const auto& [path, type] : typed) {
    auto f = anonymous.Get(path);
    ASSERT_TRUE(f);
    EXPECT_EQ(f->status, 200) << path;
    EXPECT_EQ(f->get_header_value("Content-Type"), type) << path;
    EXPECT_EQ(f->get_header_value("X-Content-Type-Options"), "nosniff") << path;
  }
  // Out of the web root: the database beside it, the source tree, /etc/passwd; plain, percent-
  // encoded and doubled. Each is refused and none of them leaks the file.
  for (const char* path : {"/ui/../../../../etc/passwd", "/ui/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
                           "/ui/js/%2E%2E/%2E%2E/web_ui_test.cpp", "/ui/..%2f..%2f..%2fetc%2fpasswd",
                           "/ui//etc/passwd", "/ui/js/../index.html", "/ui/.%2e/CMakeLists.txt",
                           "/ui/%5c..%5c..%5cetc%5cpasswd"}) {
    auto f = anonymous.Get(path);
    ASSERT_TRUE(f) << path;
    EXPECT_TRUE(f->status == 400 || f->status == 404) << path << " -> " << f->status;
    EXPECT_EQ(f->body.find("root:"), std::string::npos) << path;
    const json err = json::parse(f->body, nullptr, false);
    EXPECT_TRUE(err.is_object() && err.contains("error")) << path << ": " << f->body;
  }
  auto unknown_type = anonymous.Get("/ui/README");
  ASSERT_TRUE(unknown_type);
  EXPECT_EQ(unknown_type->status, 404);
  // The page needs no token, the API behind it does.
  auto api = anonymous.Get("/api/v1/whoami");
  ASSERT_TRUE(api);
  EXPECT_EQ(api->status, 401);
  auto me = client().Get("/api/v1/whoami");
  ASSERT_TRUE(me && me->status == 200);
  EXPECT_EQ(json::parse(me->body), (json{{"name", "bootstrap"}, {"role", "admin"}, {"bootstrap", true}}));
  // The dashboard's files only take GET.
  auto post = anonymous.Post("/ui/index.html", "{}", "application/json");
  ASSERT_TRUE(post);
  EXPECT_EQ(post->status, 401);

  // --web-root: its files, and a symlink in it that leads out of it is not followed.
  const std::string web = dir_.path() + "/web";
  ASSERT_EQ(ota::test::run_command({"mkdir", "-p", web}).exit_code, 0);
  std::ofstream(web + "/index.html") << "<!doctype html><title>other</title>";
  ASSERT_EQ(::symlink("/etc/passwd", (web + "/leak.txt").c_str()), 0);
  controller_.reset();
  controller_args_ = {"--web-root", web};
  ASSERT_TRUE(start_controller());
  auto other = anonymous.Get("/ui/index.html");
  ASSERT_TRUE(other);
  EXPECT_EQ(other->body, "<!doctype html><title>other</title>");
  auto leak = anonymous.Get("/ui/leak.txt");
  ASSERT_TRUE(leak);
  EXPECT_EQ(leak->status, 404);
  EXPECT_EQ(leak->body.find("root:"), std::string::npos);

  // A --web-root without the dashboard is a bad option, named.
  controller_.reset();
  controller_args_ = {"--web-root", dir_.path() + "/nosuch"};
  CommandResult bad = ota::test::run_command(controller_argv());
  EXPECT_EQ(bad.exit_code, 2) << bad.output;
  EXPECT_NE(bad.output.find("--web-root " + dir_.path() + "/nosuch: no index.html there"),
            std::string::npos)
      << bad.output;
}

}  // namespace
}  // namespace fleet_test
