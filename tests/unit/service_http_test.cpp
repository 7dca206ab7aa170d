// HTTP API authentication, token roles, content-type rules and slow-client defences, on a
// real listening HttpApi (loopback, port 0, real sockets) with a Controller whose publisher
// is a no-op.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>
#include <vector>

#include "ota/proto/messages.hpp"
#include "ota/service/controller.hpp"
#include "ota/service/http_api.hpp"
#include "service_test_util.hpp"
#include "test_env.hpp"

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
    cfg.inbound_queue = 0;  // hello() looks at its effect at once (inbound.hpp)
    auto c = Controller::create(cfg, std::move(*signer), &pub);
    ASSERT_TRUE(c.ok()) << c.error();
    ctl = std::move(*c);
    auto t = load_or_create_api_token(dir.file("ota.db.token"));
    ASSERT_TRUE(t.ok()) << t.error();
    token = *t;
    auto tk = ApiTokens::open(cfg.db_path, token);
    ASSERT_TRUE(tk.ok()) << tk.error();
    tokens = std::move(*tk);
    api = std::make_unique<HttpApi>(*ctl, [] { return true; }, *tokens, limits);
    auto p = api->start("127.0.0.1", 0);
    ASSERT_TRUE(p.ok()) << p.error();
    port = *p;
  }
  void TearDown() override {
    if (api) api->stop();
  }
  // Device `dev` says hello as a member of `group` (a group deployment needs a known device).
  void hello(const std::string& dev, const std::string& group) {
    ota::proto::Hello h;
    h.device.assign(dev.c_str());
    h.hw.assign("m1");
    h.version.assign("0.9.0");
    h.slot.assign("a");
    h.slot_state = ota::proto::SlotState::confirmed;
    h.groups[h.group_count++].assign(group.c_str());
    char buf[2048];
    std::size_t len = 0;
    ASSERT_FALSE(ota::proto::encode_hello(h, buf, sizeof buf, len));
    ctl->on_message(("ota/v1/dev/" + dev + "/up/presence").c_str(), buf, len);
  }
  // A new token made through the API with the bootstrap (admin) token; returns its secret.
  std::string make_token(const std::string& name, const std::string& role) {
    auto r = client(token).Post("/api/v1/tokens",
                                nlohmann::json{{"name", name}, {"role", role}}.dump(),
                                "application/json");
    EXPECT_TRUE(r);
    if (!r) return {};
    EXPECT_EQ(r->status, 201) << r->body;
    return nlohmann::json::parse(r->body).value("token", "");
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
  std::unique_ptr<ApiTokens> tokens;
  std::unique_ptr<HttpApi> api;
  HttpLimits limits;  // set before SetUp() for other limits
  std::string token;  // the bootstrap (admin) token
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

  // A token file others may read is an admin credential in the open: refused.
  ASSERT_EQ(::chmod(dir.file("other.token").c_str(), 0644), 0);
  auto open = load_or_create_api_token(dir.file("other.token"));
  ASSERT_FALSE(open.ok());
  EXPECT_NE(open.error().find("mode 0644"), std::string::npos) << open.error();
  EXPECT_NE(open.error().find("chmod 600 " + dir.file("other.token")), std::string::npos)
      << open.error();
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
    EXPECT_NE(r->body.find("missing or wrong API token (unknown or revoked token)"),
              std::string::npos)
        << r->body;
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
  hello("d1", "g");
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

  // Image, rollout draft, the actor in the event log: the token's name, not the header.
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
  EXPECT_EQ(evs.front()["actor"], "token:bootstrap");
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

// ------------------------------------------------------------------ tokens and their roles

namespace {

using nlohmann::json;

TEST_F(HttpAuth, ReadOnlyTokenReadsButCannotDeploy) {
  ImageParams p;
  p.version = "1.0.0";
  p.hw = {"m1"};
  ASSERT_TRUE(ctl->add_image(std::string(3000, 'x'), p).ok());
  const std::string viewer = make_token("viewer", "read-only");
  ASSERT_EQ(viewer.size(), 64u);
  auto c = client(viewer);
  for (const char* path : {"/api/v1/status", "/api/v1/devices", "/api/v1/images",
                           "/api/v1/deployments", "/api/v1/rollouts", "/api/v1/events", "/metrics"}) {
    auto r = c.Get(path);
    ASSERT_TRUE(r) << path;
    EXPECT_EQ(r->status, 200) << path << ": " << r->body;
  }
  // The attack: a read-only token tries to deploy firmware.
  auto r = c.Post("/api/v1/deployments", R"({"image":"1.0.0","group":"g"})", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 403) << r->body;
  EXPECT_NE(r->body.find("token 'viewer' has role read-only"), std::string::npos) << r->body;
  EXPECT_NE(r->body.find("POST /api/v1/deployments needs role operator"), std::string::npos) << r->body;
  EXPECT_EQ((*ctl->deployments_json()).size(), 0u) << "nothing was deployed";
  r = c.Post("/api/v1/rollouts", R"({"image":"1.0.0","target":{"group":"g"}})", "application/json");
  EXPECT_EQ(r->status, 403) << r->body;
  r = c.Put("/api/v1/devices/d1/tags", R"({"site":"x"})", "application/json");
  EXPECT_EQ(r->status, 403) << r->body;
  // Refused before the body is read: the upload is not stored, and the connection is closed
  // (the unread body must not be taken for the next request).
  r = c.Post("/api/v1/images?version=2.0.0&hw=m1", std::string(1 << 20, 'x'), "application/octet-stream");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 403) << r->body;
  EXPECT_EQ(r->get_header_value("Connection"), "close");
  EXPECT_EQ((*ctl->images_json()).size(), 1u);
  // The backup holds everything (token hashes too): admin only; so are tokens and reset-seq.
  for (const char* path : {"/api/v1/backup", "/api/v1/tokens"}) {
    r = c.Get(path);
    EXPECT_EQ(r->status, 403) << path;
    EXPECT_NE(r->body.find("needs role admin"), std::string::npos) << r->body;
  }
  r = c.Post("/api/v1/devices/d1/reset-seq", "{}", "application/json");
  EXPECT_EQ(r->status, 403) << r->body;
  // HEAD runs the GET handler: the same role applies.
  r = c.Head("/api/v1/backup");
  EXPECT_EQ(r->status, 403);
}

TEST_F(HttpAuth, OperatorDeploysButCannotManageTokens) {
  ImageParams p;
  p.version = "1.0.0";
  p.hw = {"m1"};
  ASSERT_TRUE(ctl->add_image(std::string(3000, 'x'), p).ok());
  auto c = client(make_token("ci-pipeline", "operator"));
  auto r = c.Post("/api/v1/images?version=1.1.0&hw=m1", std::string(2000, 'y'), "application/octet-stream");
  EXPECT_EQ(r->status, 201) << r->body;
  hello("d1", "g");
  r = c.Post("/api/v1/deployments", R"({"image":"1.0.0","group":"g"})", "application/json");
  EXPECT_EQ(r->status, 201) << r->body;
  // The attack: an operator makes itself an admin token.
  r = c.Post("/api/v1/tokens", R"({"name":"escalate","role":"admin"})", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 403) << r->body;
  EXPECT_NE(r->body.find("token 'ci-pipeline' has role operator"), std::string::npos) << r->body;
  EXPECT_NE(r->body.find("needs role admin"), std::string::npos) << r->body;
  EXPECT_EQ(c.Delete("/api/v1/tokens/ci-pipeline")->status, 403);
  EXPECT_EQ(c.Get("/api/v1/backup")->status, 403);
  auto list = nlohmann::json::parse(client(token).Get("/api/v1/tokens")->body);
  ASSERT_EQ(list.size(), 2u) << list.dump();  // bootstrap and ci-pipeline, no "escalate"
  EXPECT_EQ(list[0]["name"], "bootstrap");
  EXPECT_EQ(list[1]["name"], "ci-pipeline");
  EXPECT_EQ(list[1]["role"], "operator");
  EXPECT_EQ(list[1]["created_by"], "token:bootstrap");
  EXPECT_FALSE(list[1].contains("token")) << "secrets are never listed";
}

TEST_F(HttpAuth, RevokedTokenIsRefused) {
  const std::string secret = make_token("laptop-of-bob", "operator");
  auto c = client(secret);
  EXPECT_EQ(c.Get("/api/v1/status")->status, 200);
  auto r = client(token).Delete("/api/v1/tokens/laptop-of-bob");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
  r = client(secret).Get("/api/v1/status");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 401) << r->body;
  EXPECT_NE(r->body.find("unknown or revoked token"), std::string::npos) << r->body;
  // Revoking again, the bootstrap token, bad names and roles, taken names.
  EXPECT_EQ(client(token).Delete("/api/v1/tokens/laptop-of-bob")->status, 404);
  r = client(token).Delete("/api/v1/tokens/bootstrap");
  EXPECT_EQ(r->status, 409);
  EXPECT_NE(r->body.find("--api-token-file"), std::string::npos) << r->body;
  auto post = [&](const std::string& body) {
    return client(token).Post("/api/v1/tokens", body, "application/json");
  };
  EXPECT_EQ(post(R"({"name":"bad name","role":"operator"})")->status, 400);
  r = post(R"({"name":"x","role":"root"})");
  EXPECT_EQ(r->status, 400);
  EXPECT_NE(r->body.find("read-only, operator, admin"), std::string::npos) << r->body;
  EXPECT_EQ(post(R"({"name":"x"})")->status, 400);
  EXPECT_EQ(post(R"({"name":"x","role":"admin","extra":1})")->status, 400);
  EXPECT_EQ(post(R"({"name":"bootstrap","role":"admin"})")->status, 409);
  make_token("dup", "read-only");
  r = post(R"({"name":"dup","role":"admin"})");
  EXPECT_EQ(r->status, 409) << r->body;
  EXPECT_NE(r->body.find("'dup' exists"), std::string::npos) << r->body;
  // The log says who made and revoked tokens.
  auto evs = nlohmann::json::parse(client(token).Get("/api/v1/events")->body);
  int created = 0, revoked = 0;
  for (const auto& e : evs) {
    if (e["what"] == "token_created") ++created;
    if (e["what"] == "token_revoked") {
      ++revoked;
      EXPECT_EQ(e["detail"], "laptop-of-bob (operator)");
      EXPECT_EQ(e["actor"], "token:bootstrap");
    }
  }
  EXPECT_EQ(created, 2);
  EXPECT_EQ(revoked, 1);
}

TEST_F(HttpAuth, EventActorIsTheTokenNotTheHeaderTheClientSends) {
  ImageParams p;
  p.version = "2.0.0";
  p.hw = {"m1"};
  ASSERT_TRUE(ctl->add_image(std::string(3000, 'x'), p).ok());
  auto alice = client(make_token("alice", "operator"));
  // The attack: alice claims to be mallory.
  httplib::Headers forged{{"X-OTA-Actor", "mallory"}};
  auto r = alice.Post("/api/v1/rollouts", forged, R"({"image":"2.0.0","target":{"group":"g"}})",
                      "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 201) << r->body;
  const std::string id = nlohmann::json::parse(r->body)["id"];
  r = alice.Post("/api/v1/rollouts/" + id + "/abort", forged, R"({"reason":"test"})", "application/json");
  ASSERT_EQ(r->status, 200) << r->body;
  auto evs = nlohmann::json::parse(client(token).Get("/api/v1/events?rollout=" + id)->body);
  ASSERT_GE(evs.size(), 2u);
  int by_alice = 0;
  for (const auto& e : evs) {
    EXPECT_EQ(e["actor"].get<std::string>().find("mallory"), std::string::npos) << e.dump();
    by_alice += e["actor"] == "token:alice";
  }
  EXPECT_GE(by_alice, 2) << evs.dump();
  EXPECT_EQ(evs.front()["what"], "rollout_created");
  EXPECT_EQ(evs.front()["actor"], "token:alice");
}

TEST_F(HttpAuth, OnlyTheHashOfATokenIsStoredAndItSurvivesARestart) {
  const std::string secret = make_token("prometheus", "read-only");
  ASSERT_EQ(secret.size(), 64u);
  {
    Store s;
    ASSERT_TRUE(s.open(dir.file("ota.db")).ok());
    auto rows = s.list_api_tokens();
    ASSERT_TRUE(rows.ok()) << rows.error();
    ASSERT_EQ(rows->size(), 1u);
    EXPECT_EQ((*rows)[0].sha256, sha256_hex(secret));
    EXPECT_EQ((*rows)[0].role, "read-only");
  }
  // Neither the database nor its WAL contains the secret.
  for (const char* f : {"ota.db", "ota.db-wal"}) {
    std::ifstream in(dir.file(f), std::ios::binary);
    std::stringstream bytes;
    bytes << in.rdbuf();
    EXPECT_EQ(bytes.str().find(secret), std::string::npos) << f;
  }
  // A restarted controller (a new ApiTokens on the same file) knows the token.
  auto again = ApiTokens::open(dir.file("ota.db"), token);
  ASSERT_TRUE(again.ok()) << again.error();
  auto who = (*again)->authenticate(secret);
  ASSERT_TRUE(who.has_value());
  EXPECT_EQ(who->name, "prometheus");
  EXPECT_EQ(who->role, Role::read_only);
  EXPECT_FALSE((*again)->authenticate(secret + "0").has_value());
  EXPECT_FALSE((*again)->authenticate("").has_value());
  auto boot = (*again)->authenticate(token);
  ASSERT_TRUE(boot.has_value());
  EXPECT_EQ(boot->name, "bootstrap");
  EXPECT_EQ(boot->role, Role::admin);
}

TEST_F(HttpAuth, OtactlCreatesListsAndRevokesTokens) {
  auto run = [&](const std::string& env, const std::string& args, bool with_stderr = true) {
    std::string cmd = "env -u OTA_API -u OTA_API_TOKEN -u OTA_API_TOKEN_FILE " + env + " " +
                      OTACTL_PATH + " --api http://127.0.0.1:" + std::to_string(port) + " " +
                      args + (with_stderr ? " 2>&1" : " 2>/dev/null");
    std::string out;
    FILE* p = popen(cmd.c_str(), "r");
    char buf[4096];
    std::size_t n;
    while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
    int st = pclose(p);
    return std::make_pair(WIFEXITED(st) ? WEXITSTATUS(st) : -1, out);
  };
  const std::string admin = "OTA_API_TOKEN_FILE=" + dir.file("ota.db.token");
  // stdout is the secret alone, so that it can go straight into a file.
  auto created = run(admin, "token create deploy-bot --role operator", false);
  ASSERT_EQ(created.first, 0) << created.second;
  ASSERT_EQ(created.second.size(), 65u) << created.second;
  const std::string secret = created.second.substr(0, 64);
  EXPECT_EQ(client(secret).Get("/api/v1/status")->status, 200);
  auto status = run("OTA_API_TOKEN=" + secret, "status");
  EXPECT_EQ(status.first, 0) << status.second;

  auto list = run(admin, "token list");
  EXPECT_EQ(list.first, 0) << list.second;
  EXPECT_NE(list.second.find("deploy-bot"), std::string::npos) << list.second;
  EXPECT_NE(list.second.find("operator"), std::string::npos) << list.second;
  EXPECT_NE(list.second.find("bootstrap"), std::string::npos) << list.second;
  EXPECT_EQ(list.second.find(secret), std::string::npos) << "a list never shows secrets";

  // An operator may not list tokens: the controller's 403 message, exit 1.
  auto denied = run("OTA_API_TOKEN=" + secret, "token list");
  EXPECT_EQ(denied.first, 1) << denied.second;
  EXPECT_NE(denied.second.find("needs role admin"), std::string::npos) << denied.second;

  auto bad_role = run(admin, "token create x --role superuser");
  EXPECT_EQ(bad_role.first, 2) << bad_role.second;

  auto revoked = run(admin, "token revoke deploy-bot");
  EXPECT_EQ(revoked.first, 0) << revoked.second;
  status = run("OTA_API_TOKEN=" + secret, "status");
  EXPECT_EQ(status.first, 1) << status.second;
  EXPECT_NE(status.second.find("rejected the API token"), std::string::npos) << status.second;
  EXPECT_EQ(run(admin, "token revoke deploy-bot").first, 1);
}

// -------------------------------------------------------------- slow clients (slowloris)

int connect_to(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<std::uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

bool send_all(int fd, const std::string& data) {
  return ::send(fd, data.data(), data.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(data.size());
}

// Reads until the server closes fd (EOF or reset: true, *got = what it sent) or the deadline
// passes (false).
bool closed_by_server(int fd, std::chrono::steady_clock::time_point deadline, std::string* got = nullptr) {
  char buf[4096];
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    pollfd p{fd, POLLIN, 0};
    const int r = ::poll(&p, 1, static_cast<int>(left.count()));
    if (r == 0) return false;
    if (r < 0) continue;
    const ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n == 0) return true;
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      return true;  // reset
    }
    if (got) got->append(buf, static_cast<std::size_t>(n));
  }
}

// Reads until `needle` arrived (true) or the deadline passed or the server closed (false).
bool receive_until(int fd, const std::string& needle, std::chrono::steady_clock::time_point deadline,
                   std::string& got) {
  char buf[4096];
  while (got.find(needle) == std::string::npos) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
    const ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) return false;
    if (n > 0) got.append(buf, static_cast<std::size_t>(n));
  }
  return true;
}

bool still_open(int fd) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, 0) == 0;
}

// A client that sends a request header one byte every 100 ms, never finishing it, until the
// server closes the connection or stop().
class Trickler {
 public:
  explicit Trickler(int fd) : fd_(fd), thread_([this] { run(); }) {}
  ~Trickler() { stop(); }
  void stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }
  int bytes_sent() const { return sent_.load(); }

 private:
  void run() {
    const std::string header = "GET /api/v1/status HTTP/1.1\r\nHost: x\r\nX-Padding: " + std::string(4000, 'a');
    std::unique_lock<std::mutex> lock(mu_);
    for (std::size_t i = 0; i < header.size() && !stop_; ++i) {
      if (::send(fd_, &header[i], 1, MSG_NOSIGNAL) != 1) return;  // the server closed it
      ++sent_;
      cv_.wait_for(lock, std::chrono::milliseconds(100), [this] { return stop_; });  // the attack's pace
    }
  }
  int fd_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::atomic<int> sent_{0};
  std::thread thread_;
};

class HttpSlowClients : public HttpAuth {
 protected:
  void SetUp() override {
    limits.header_timeout = std::chrono::milliseconds(1500);  // shorter than the default 10 s: a quick test
    HttpAuth::SetUp();
  }
  void TearDown() override {
    for (auto& t : tricklers) t->stop();
    HttpAuth::TearDown();
    for (int fd : fds) ::close(fd);
  }
  std::vector<int> fds;
  std::vector<std::unique_ptr<Trickler>> tricklers;
};

// The attack that starved the API (8 threads, each held by an idle connection for 5 s, or for
// ever by one that trickles): 50 connections that send nothing, half a header, or a header one
// byte at a time. The API still answers at once, and the server closes every one of them at
// the header deadline.
TEST_F(HttpSlowClients, IdleAndTricklingConnectionsDoNotStarveTheApi) {
  enum Kind { idle, half_header, trickle };
  std::vector<Kind> kinds;
  // The server's header deadline of the last connection starts when it accepts it: after this.
  auto last_connect_started = std::chrono::steady_clock::now();
  for (int i = 0; i < 50; ++i) {
    last_connect_started = std::chrono::steady_clock::now();
    const int fd = connect_to(port);
    ASSERT_GE(fd, 0) << "connection " << i;
    fds.push_back(fd);
    kinds.push_back(static_cast<Kind>(i % 3));
    if (kinds.back() == half_header) {
      ASSERT_TRUE(send_all(fd, "POST /api/v1/deployments HTTP/1.1\r\nHost: x\r\nContent-Type: app"));
    }
    if (kinds.back() == trickle) tricklers.push_back(std::make_unique<Trickler>(fd));
  }
  const auto attack_started = std::chrono::steady_clock::now();

  auto c = client(token);
  c.set_read_timeout(1, 0);
  auto r = c.Get("/api/v1/status");
  const auto answered_in = std::chrono::steady_clock::now() - attack_started;
  ASSERT_TRUE(r) << "no answer within 1 s while 50 slow connections are open";
  EXPECT_EQ(r->status, 200);
  EXPECT_LT(answered_in, limits.header_timeout) << "answered only after the slow ones were closed";
  auto h = client().Get("/api/v1/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
  // The slow connections were still open while the API answered (none was closed early).
  int open_now = 0;
  for (int fd : fds) open_now += still_open(fd);
  EXPECT_EQ(open_now, 50);

  // Every one is closed at the header deadline, the trickling ones too although they kept
  // sending; a half-sent request is told why (408).
  const auto deadline = attack_started + limits.header_timeout + std::chrono::seconds(3);
  for (std::size_t i = 0; i < fds.size(); ++i) {
    std::string got;
    ASSERT_TRUE(closed_by_server(fds[i], deadline, &got)) << "connection " << i << " (kind " << kinds[i] << ") still open";
    if (kinds[i] != idle) {
      EXPECT_EQ(got.rfind("HTTP/1.1 408", 0), 0u) << "connection " << i << ": " << got;
    }
  }
  EXPECT_GE(std::chrono::steady_clock::now() - last_connect_started, limits.header_timeout);
  for (auto& t : tricklers) {
    t->stop();
    EXPECT_GE(t->bytes_sent(), 5) << "the trickler kept the connection busy";
  }
  r = client(token).Get("/api/v1/status");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
}

class HttpConnectionCap : public HttpAuth {
 protected:
  void SetUp() override {
    limits.max_connections = 20;
    limits.header_timeout = std::chrono::seconds(60);  // only the cap closes connections here
    HttpAuth::SetUp();
  }
  void TearDown() override {
    HttpAuth::TearDown();
    for (int fd : fds) ::close(fd);
  }
  std::vector<int> fds;
};

// More idle connections than the cap: the oldest are closed at once (not at the header
// deadline), the newest stay, and a real client still gets its answer.
TEST_F(HttpConnectionCap, OldestIdleConnectionsMakeRoomForNewClients) {
  for (int i = 0; i < 60; ++i) {
    const int fd = connect_to(port);
    ASSERT_GE(fd, 0);
    fds.push_back(fd);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  for (int i = 0; i < 40; ++i) {
    ASSERT_TRUE(closed_by_server(fds[static_cast<std::size_t>(i)], deadline))
        << "connection " << i << " of 60 still open";
  }
  int open_now = 0;
  for (int i = 40; i < 60; ++i) open_now += still_open(fds[static_cast<std::size_t>(i)]);
  EXPECT_EQ(open_now, 20) << "the newest 20 fit under the cap";

  auto c = client(token);
  c.set_read_timeout(2, 0);
  auto r = c.Get("/api/v1/status");
  ASSERT_TRUE(r) << "a client with a request was kept out by idle connections";
  EXPECT_EQ(r->status, 200);
  EXPECT_TRUE(closed_by_server(fds[40], std::chrono::steady_clock::now() + std::chrono::seconds(5)))
      << "the oldest idle one made room";
}

TEST_F(HttpAuth, KeepAlivePipeliningAndMalformedRequests) {
  // Three requests on one kept-alive connection.
  auto c = client(token);
  c.set_keep_alive(true);
  for (int i = 0; i < 3; ++i) {
    auto r = c.Get("/api/v1/status");
    ASSERT_TRUE(r) << i;
    EXPECT_EQ(r->status, 200);
  }
  // Two requests in one write: two answers, in order, then the close the second asked for.
  const int fd = connect_to(port);
  ASSERT_GE(fd, 0);
  const std::string auth = "Authorization: Bearer " + token + "\r\n";
  ASSERT_TRUE(send_all(fd, "GET /api/v1/images HTTP/1.1\r\nHost: x\r\n" + auth + "\r\n" +
                               "GET /api/v1/nope HTTP/1.1\r\nHost: x\r\n" + auth +
                               "Connection: close\r\n\r\n"));
  std::string got;
  EXPECT_TRUE(closed_by_server(fd, std::chrono::steady_clock::now() + std::chrono::seconds(5), &got));
  ::close(fd);
  const auto first = got.find("HTTP/1.1 200");
  const auto second = got.find("HTTP/1.1 404");
  EXPECT_NE(first, std::string::npos) << got;
  EXPECT_NE(second, std::string::npos) << got;
  EXPECT_LT(first, second) << got;
  EXPECT_NE(got.find("no such endpoint: GET /api/v1/nope"), std::string::npos) << got;

  // A header that never ends but keeps growing: 431 and closed, not buffered for ever.
  const int big = connect_to(port);
  ASSERT_GE(big, 0);
  send_all(big, "GET /api/v1/status HTTP/1.1\r\nX-Big: " + std::string(limits.max_header_bytes, 'b'));
  got.clear();
  EXPECT_TRUE(closed_by_server(big, std::chrono::steady_clock::now() + std::chrono::seconds(5), &got));
  ::close(big);
  EXPECT_EQ(got.rfind("HTTP/1.1 431", 0), 0u) << got;

  // A body on a GET is refused at once, not read: /health needs no token, and a body sent a
  // byte at a time would otherwise hold a worker thread.
  const int with_body = connect_to(port);
  ASSERT_GE(with_body, 0);
  send_all(with_body, "GET /api/v1/health HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nab");
  got.clear();
  EXPECT_TRUE(receive_until(with_body, "takes no request body",
                            std::chrono::steady_clock::now() + std::chrono::seconds(2), got))
      << got;
  ::close(with_body);
  EXPECT_EQ(got.rfind("HTTP/1.1 400", 0), 0u) << got;
  EXPECT_NE(got.find("Connection: close"), std::string::npos) << got;
}

}  // namespace
