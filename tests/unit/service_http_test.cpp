// HTTP API authentication and content-type rules, on a real listening HttpApi (loopback,
// port 0) with a Controller whose publisher is a no-op.
#include <gtest/gtest.h>
#include <httplib.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <cstdio>
#include <fstream>

#include "ota/service/controller.hpp"
#include "ota/service/http_api.hpp"
#include "service_test_util.hpp"

using namespace ota::service;
using ota::service::testing::make_ec_key_pem;
using ota::service::testing::TempDir;

namespace {

class NullPublisher : public Publisher {
 public:
  bool publish(const std::string&, const void*, std::size_t, int, bool) override { return true; }
};

class HttpAuth : public ::testing::Test {
 protected:
  void SetUp() override {
    auto signer = Signer::from_pem(make_ec_key_pem());
    ASSERT_TRUE(signer.ok());
    ControllerConfig cfg;
    cfg.db_path = dir.file("ota.db");
    cfg.store_dir = dir.file("images");
    auto c = Controller::create(cfg, std::move(*signer), &pub);
    ASSERT_TRUE(c.ok()) << c.error();
    ctl = std::move(*c);
    auto t = load_or_create_api_token(dir.file("ota.db.token"));
    ASSERT_TRUE(t.ok()) << t.error();
    token = *t;
    api = std::make_unique<HttpApi>(*ctl, [] { return true; }, token);
    auto p = api->start("127.0.0.1", 0);
    ASSERT_TRUE(p.ok()) << p.error();
    port = *p;
  }
  void TearDown() override {
    if (api) api->stop();
  }
  httplib::Client client(const std::string& bearer = "") {
    httplib::Client c("127.0.0.1", port);
    c.set_connection_timeout(2);
    c.set_read_timeout(10);
    if (!bearer.empty()) c.set_bearer_token_auth(bearer);
    return c;
  }

  TempDir dir;
  NullPublisher pub;
  std::unique_ptr<Controller> ctl;
  std::unique_ptr<HttpApi> api;
  std::string token;
  int port = 0;
};

TEST_F(HttpAuth, TokenFileIsCreatedOnceWithMode0600) {
  struct stat st {};
  ASSERT_EQ(::stat(dir.file("ota.db.token").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(token.size(), 64u);
  EXPECT_EQ(token.find_first_not_of("0123456789abcdef"), std::string::npos) << token;
  auto again = load_or_create_api_token(dir.file("ota.db.token"));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, token) << "an existing token file is reused";
  auto other = load_or_create_api_token(dir.file("other.token"));
  ASSERT_TRUE(other.ok());
  EXPECT_NE(*other, token);
  std::ofstream(dir.file("empty.token")) << "  \n";
  EXPECT_FALSE(load_or_create_api_token(dir.file("empty.token")).ok());
  EXPECT_FALSE(load_or_create_api_token(dir.file("no/such/dir/t")).ok());
}

TEST_F(HttpAuth, TokenCompareAndMediaType) {
  EXPECT_TRUE(token_equal("abc", "abc"));
  EXPECT_FALSE(token_equal("abc", "abd"));
  EXPECT_FALSE(token_equal("abc", "abcd"));
  EXPECT_FALSE(token_equal("", ""));
  EXPECT_EQ(media_type("Application/JSON; charset=utf-8"), "application/json");
  EXPECT_EQ(media_type(""), "");
}

TEST_F(HttpAuth, HealthIsOpenEverythingElseNeedsTheToken) {
  auto h = client().Get("/api/v1/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);

  for (const char* path : {"/api/v1/status", "/api/v1/devices", "/api/v1/images",
                           "/api/v1/deployments", "/api/v1/events", "/api/v1/nope"}) {
    auto r = client().Get(path);
    ASSERT_TRUE(r) << path;
    EXPECT_EQ(r->status, 401) << path;
    EXPECT_NE(r->body.find("missing or wrong API token (none sent)"), std::string::npos) << r->body;
    r = client(token + "x").Get(path);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 401) << path;
    EXPECT_NE(r->body.find("missing or wrong API token (not the"), std::string::npos) << r->body;
  }
  auto ok = client(token).Get("/api/v1/status");
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200) << ok->body;

  // A cross-site form POST carries no token: refused before anything is stored.
  auto img = client().Post("/api/v1/images?version=1.0.0&hw=m1", "firmware", "text/plain");
  ASSERT_TRUE(img);
  EXPECT_EQ(img->status, 401);
  auto dep = client("wrong").Post("/api/v1/deployments", R"({"image":"1.0.0","group":"g"})",
                                  "application/json");
  ASSERT_TRUE(dep);
  EXPECT_EQ(dep->status, 401);
  EXPECT_EQ((*ctl->images_json()).size(), 0u);
}

TEST_F(HttpAuth, PostsNeedTheirContentType) {
  auto c = client(token);
  auto r = c.Post("/api/v1/deployments", R"({"image":"1.0.0","group":"g"})", "text/plain");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 415) << r->body;
  EXPECT_NE(r->body.find("application/json"), std::string::npos) << r->body;
  r = c.Post("/api/v1/deployments/dep-x/cancel", "", "application/x-www-form-urlencoded");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 415);
  r = c.Post("/api/v1/images?version=1.0.0&hw=m1", "firmware", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 415) << r->body;
  EXPECT_NE(r->body.find("application/octet-stream"), std::string::npos) << r->body;
  EXPECT_EQ((*ctl->images_json()).size(), 0u);

  r = c.Post("/api/v1/images?version=1.0.0&hw=m1", std::string(1000, 'x'),
             "application/octet-stream");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 201) << r->body;
  r = c.Post("/api/v1/deployments", R"({"image":"1.0.0","group":"g"})",
             "application/json; charset=utf-8");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 201) << r->body;
}

TEST_F(HttpAuth, OtactlSendsTheTokenAndExplainsA401) {
  auto run = [&](const std::string& env) {
    std::string cmd = "env -u OTA_API -u OTA_API_TOKEN -u OTA_API_TOKEN_FILE " + env + " " +
                      OTACTL_PATH + " --api http://127.0.0.1:" + std::to_string(port) +
                      " status 2>&1";
    std::string out;
    FILE* p = popen(cmd.c_str(), "r");
    char buf[4096];
    std::size_t n;
    while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
    int st = pclose(p);
    return std::make_pair(WIFEXITED(st) ? WEXITSTATUS(st) : -1, out);
  };
  auto good = run("OTA_API_TOKEN_FILE=" + dir.file("ota.db.token"));
  EXPECT_EQ(good.first, 0) << good.second;
  auto bad = run("OTA_API_TOKEN=nope");
  EXPECT_EQ(bad.first, 1) << bad.second;
  EXPECT_NE(bad.second.find("rejected the API token"), std::string::npos) << bad.second;
}

}  // namespace

namespace {

TEST_F(HttpAuth, RolloutEndpointsTagsAndMetrics) {
  auto c = client(token);
  // Metrics need the token like everything else.
  EXPECT_EQ(client().Get("/metrics")->status, 401);
  auto m = c.Get("/metrics");
  ASSERT_TRUE(m);
  EXPECT_EQ(m->status, 200);
  EXPECT_NE(m->get_header_value("Content-Type").find("text/plain"), std::string::npos);
  EXPECT_NE(m->body.find("ota_transfers_in_flight 0"), std::string::npos) << m->body;
  EXPECT_NE(m->body.find("# TYPE ota_bytes_served_total counter"), std::string::npos);

  // A rollout needs JSON, names bad fields, and 404s unknown ids and actions.
  auto r = c.Post("/api/v1/rollouts", R"({"image":"1.0.0","target":{"group":"g"},"waves":[{"size":"abc"}]})",
                  "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 400);
  EXPECT_NE(r->body.find("waves[0].size"), std::string::npos) << r->body;
  r = c.Post("/api/v1/rollouts", "image=1", "text/plain");
  EXPECT_EQ(r->status, 415);
  r = c.Post("/api/v1/rollouts", "{", "application/json");
  EXPECT_EQ(r->status, 400);
  EXPECT_NE(r->body.find("not valid JSON"), std::string::npos) << r->body;
  r = c.Post("/api/v1/rollouts/ro-nope/pause", "{}", "application/json");
  EXPECT_EQ(r->status, 404);
  r = c.Post("/api/v1/rollouts/ro-nope/explode", "{}", "application/json");
  EXPECT_EQ(r->status, 404);
  EXPECT_NE(r->body.find("unknown rollout action"), std::string::npos) << r->body;
  EXPECT_EQ(nlohmann::json::parse(c.Get("/api/v1/rollouts")->body), nlohmann::json::array());

  // Image, rollout draft, the actor in the event log.
  ImageParams p;
  p.version = "2.0.0";
  p.hw = {"m1"};
  ASSERT_TRUE(ctl->add_image(std::string(3000, 'x'), p).ok());
  httplib::Headers actor{{"X-OTA-Actor", "alice"}};
  r = c.Post("/api/v1/rollouts", actor, R"({"image":"2.0.0","target":{"tags":"site=berlin"}})",
             "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 201) << r->body;
  auto ro = nlohmann::json::parse(r->body);
  EXPECT_EQ(ro["state"], "draft");
  const std::string id = ro["id"];
  r = c.Post("/api/v1/rollouts/" + id + "/start", "{}", "application/json");
  EXPECT_EQ(r->status, 400);  // no device matches the tags yet
  EXPECT_NE(r->body.find("no eligible devices"), std::string::npos) << r->body;
  r = c.Post("/api/v1/rollouts/" + id + "/abort", actor, R"({"reason":"changed my mind"})", "application/json");
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(nlohmann::json::parse(r->body)["state"], "aborted");
  auto ev = c.Get("/api/v1/events?rollout=" + id);
  ASSERT_EQ(ev->status, 200);
  auto evs = nlohmann::json::parse(ev->body);
  ASSERT_GE(evs.size(), 2u);
  EXPECT_EQ(evs.front()["actor"], "operator:alice");
  EXPECT_EQ(evs.back()["what"], "rollout_aborted");

  // Tags: unknown device 404, bad key 400; a device filter with a bad expression 400.
  r = c.Put("/api/v1/devices/ghost/tags", R"({"site":"berlin"})", "application/json");
  EXPECT_EQ(r->status, 404);
  r = c.Put("/api/v1/devices/ghost/tags", R"({"site":"berlin"})", "text/plain");
  EXPECT_EQ(r->status, 415);
  auto d = c.Get("/api/v1/devices?tag=site%3D");
  EXPECT_EQ(d->status, 400);
  EXPECT_NE(d->body.find("tag expression"), std::string::npos) << d->body;
  d = c.Get("/api/v1/devices?state=sleeping");
  EXPECT_EQ(d->status, 400);
}

}  // namespace
