// The HTTP API's shape (issue 13, item 4): one error object, 405 with Allow, pages and
// filters on every list, compact JSON unless asked, the OpenAPI description against the
// route table, and DELETE of draft rollouts, unused images and devices (decommission). A
// real listening HttpApi (loopback, port 0) over a Controller on a real SQLite file; device
// messages as the agent encodes them (service_controller_fixture.hpp).
#include <gtest/gtest.h>
#include <httplib.h>
#include <sys/stat.h>

#include <algorithm>
#include <regex>
#include <set>

#include "ota/service/http_api.hpp"
#include "ota/url_encode.hpp"
#include "service_controller_fixture.hpp"

using namespace ota::service;
using namespace ota::service::testing;
using nlohmann::json;

namespace {

class ServiceApi : public ControllerTest {
 protected:
  void SetUp() override {
    ControllerTest::SetUp();
    serve();
  }
  void TearDown() override { stop_api(); }
  void serve() {
    auto t = load_or_create_api_token(dir.file("ota.db.token"));
    ASSERT_TRUE(t.ok()) << t.error();
    token = *t;
    auto tk = ApiTokens::open(dir.file("ota.db"), token);
    ASSERT_TRUE(tk.ok()) << tk.error();
    tokens = std::move(*tk);
    api = std::make_unique<HttpApi>(
        *ctl, [] { return true; }, *tokens);
    auto p = api->start("127.0.0.1", 0);
    ASSERT_TRUE(p.ok()) << p.error();
    port = *p;
  }
  void stop_api() {
    if (api) api->stop();
    api.reset();
    tokens.reset();
  }
  // A controller restart on the same database and store, and a new API over it.
  void restart() {
    stop_api();
    start();
    serve();
  }
  httplib::Client client() {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(30);
    c.set_bearer_token_auth(token);
    return c;
  }
  httplib::Result get(const std::string& path) { return client().Get(path.c_str()); }
  httplib::Result del(const std::string& path) { return client().Delete(path.c_str()); }
  httplib::Result post(const std::string& path, const json& body) {
    return client().Post(path.c_str(), body.dump(), "application/json");
  }
  static json body(const httplib::Result& r) { return json::parse(r->body, nullptr, false); }
  // The error object of a reply: {"error": {"code", "message", "field"?}}.
  static void expect_error(const httplib::Result& r, int status, const std::string& code,
                           const std::string& message_part, const std::string& field = "") {
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, status) << r->body;
    const json j = body(r);
    ASSERT_TRUE(j.is_object() && j.contains("error") && j["error"].is_object()) << r->body;
    EXPECT_EQ(j["error"].value("code", ""), code) << r->body;
    EXPECT_NE(j["error"].value("message", "").find(message_part), std::string::npos) << r->body;
    if (field.empty())
      EXPECT_FALSE(j["error"].contains("field")) << r->body;
    else
      EXPECT_EQ(j["error"].value("field", ""), field) << r->body;
  }
  std::string rollout_draft(const std::string& image, const std::string& group) {
    auto r = post("/api/v1/rollouts", {{"image", image}, {"target", {{"group", group}}}});
    EXPECT_TRUE(r);
    if (!r) return {};
    EXPECT_EQ(r->status, 201) << r->body;
    return body(r).value("id", "");
  }
  bool image_file_exists(const ImageRec& img) {
    struct stat st {};
    return ::stat(image_path(dir.file("images"), img.sha256).c_str(), &st) == 0;
  }

  std::unique_ptr<ApiTokens> tokens;
  std::unique_ptr<HttpApi> api;
  std::string token;
  int port = 0;
};

TEST_F(ServiceApi, ErrorsAreOneObjectWithCodeMessageAndField) {
  hello("sim-001", "1.0.0");
  expect_error(get("/api/v1/devices?limit=0"), 400, "invalid", "limit 0 out of range 1..10000",
               "limit");
  expect_error(get("/api/v1/devices?limit=x"), 400, "invalid", "limit 'x'", "limit");
  expect_error(get("/api/v1/devices?offset=-1"), 400, "invalid", "offset", "offset");
  expect_error(get("/api/v1/devices?sort=id"), 400, "invalid", "unknown query parameter 'sort'",
               "sort");
  expect_error(get("/api/v1/rollouts?state=bogus"), 400, "invalid", "state 'bogus'", "state");
  expect_error(get("/api/v1/devices?online=maybe"), 400, "invalid", "online", "online");
  expect_error(get("/api/v1/devices/sim-404"), 404, "not_found", "sim-404");
  expect_error(get("/api/v1/nosuch"), 404, "not_found", "no such endpoint: GET /api/v1/nosuch");
  expect_error(post("/api/v1/tokens", {{"name", "x"}, {"role", "root"}}), 400, "invalid",
               "role 'root'", "role");
  expect_error(post("/api/v1/deployments", {{"image", "9.9.9"}, {"device", "sim-001"}}), 404,
               "not_found", "9.9.9");
  // 401 and 415 are the same object.
  httplib::Client anonymous("127.0.0.1", port);
  expect_error(anonymous.Get("/api/v1/devices"), 401, "unauthorized", "missing or wrong API token");
  expect_error(client().Post("/api/v1/deployments", "{}", "text/plain"), 415,
               "unsupported_media_type", "Content-Type must be application/json");
}

TEST_F(ServiceApi, KnownPathWithAnotherMethodIs405WithAllow) {
  hello("sim-001", "1.0.0");
  auto patch = client().Patch("/api/v1/devices/sim-001", "{}", "application/json");
  expect_error(patch, 405, "method_not_allowed", "PATCH is not allowed on /api/v1/devices/sim-001");
  EXPECT_EQ(patch->get_header_value("Allow"), "GET, HEAD, DELETE");
  auto put = client().Put("/api/v1/devices", "{}", "application/json");
  expect_error(put, 405, "method_not_allowed", "allowed: GET, HEAD");
  EXPECT_EQ(put->get_header_value("Allow"), "GET, HEAD");
  auto del_tokens = del("/api/v1/tokens");
  expect_error(del_tokens, 405, "method_not_allowed", "DELETE");
  EXPECT_EQ(del_tokens->get_header_value("Allow"), "GET, HEAD, POST");
  // Also with a body of another type: the method is what is wrong.
  auto post_device = client().Post("/api/v1/devices/sim-001", "x", "text/plain");
  expect_error(post_device, 405, "method_not_allowed", "POST is not allowed");
  EXPECT_EQ(post_device->get_header_value("Allow"), "GET, HEAD, DELETE");
  // An unknown path stays a 404, without Allow.
  auto unknown = del("/api/v1/devices/sim-001/nosuch");
  expect_error(unknown, 404, "not_found", "no such endpoint");
  EXPECT_FALSE(unknown->has_header("Allow"));
  // The device is still there.
  EXPECT_EQ(get("/api/v1/devices/sim-001")->status, 200);
}

TEST_F(ServiceApi, ListsArePagedFilteredAndCompactUnlessAsked) {
  for (int i = 1; i <= 5; ++i) hello("sim-00" + std::to_string(i), i <= 2 ? "1.0.0" : "1.1.0");
  auto first = get("/api/v1/devices?limit=2");
  ASSERT_TRUE(first);
  ASSERT_EQ(first->status, 200) << first->body;
  EXPECT_EQ(first->get_header_value("X-Total-Count"), "5");
  EXPECT_EQ(first->get_header_value("Link"), "</api/v1/devices?limit=2&offset=2>; rel=\"next\"");
  json page = body(first);
  ASSERT_EQ(page.size(), 2u);
  EXPECT_EQ(page[0]["id"], "sim-001");
  EXPECT_EQ(page[1]["id"], "sim-002");
  auto last = get("/api/v1/devices?limit=2&offset=4");
  ASSERT_EQ(body(last).size(), 1u);
  EXPECT_EQ(body(last)[0]["id"], "sim-005");
  EXPECT_FALSE(last->has_header("Link"));
  auto beyond = get("/api/v1/devices?offset=9");
  EXPECT_EQ(body(beyond), json::array());
  EXPECT_EQ(beyond->get_header_value("X-Total-Count"), "5");
  // Filters count into the total.
  auto filtered = get("/api/v1/devices?version=1.1.0&limit=1");
  EXPECT_EQ(filtered->get_header_value("X-Total-Count"), "3");
  EXPECT_EQ(filtered->get_header_value("Link"),
            "</api/v1/devices?limit=1&version=1.1.0&offset=1>; rel=\"next\"");
  // Compact by default, indented on request.
  auto all = get("/api/v1/devices");
  EXPECT_EQ(all->body.find('\n'), all->body.size() - 1) << "one line: " << all->body.substr(0, 200);
  auto pretty = get("/api/v1/devices?pretty=1");
  EXPECT_NE(pretty->body.find("\n  {"), std::string::npos) << pretty->body.substr(0, 200);
  EXPECT_EQ(body(pretty), body(all));

  // Images, deployments, rollouts, tokens and their filters.
  add(bytes_of(5000, 1), "1.0.0");
  const ImageRec b = add(bytes_of(6000, 2), "2.0.0");
  auto images = get("/api/v1/images?version=2.0.0");
  ASSERT_EQ(body(images).size(), 1u);
  EXPECT_EQ(body(images)[0]["id"], b.id);
  EXPECT_EQ(images->get_header_value("X-Total-Count"), "1");
  EXPECT_EQ(body(get("/api/v1/images?hw=m1")).size(), 2u);
  EXPECT_EQ(body(get("/api/v1/images?hw=other")).size(), 0u);
  ASSERT_EQ(post("/api/v1/deployments", {{"image", "2.0.0"}, {"device", "sim-001"}})->status, 201);
  EXPECT_EQ(body(get("/api/v1/deployments?state=active&image=2.0.0")).size(), 1u);
  EXPECT_EQ(body(get("/api/v1/deployments?state=completed")).size(), 0u);
  const std::string ro = rollout_draft("1.0.0", "lab");
  EXPECT_EQ(body(get("/api/v1/rollouts?state=draft"))[0]["id"], ro);
  EXPECT_EQ(body(get("/api/v1/rollouts?state=running")).size(), 0u);
  EXPECT_EQ(body(get("/api/v1/tokens?role=admin")).size(), 1u);
  EXPECT_EQ(get("/api/v1/tokens?limit=1")->get_header_value("X-Total-Count"), "1");
}

// Ids in otactl's request paths and filter values in the API's next-page links: everything
// but RFC 3986's unreserved characters is %XX ('+' would read as a space in a query, '/' would
// split a path). (The Link header is not checked through httplib's client: it decodes header
// values as it reads them.)
TEST(UrlEncode, KeepsUnreservedCharactersAndEncodesEveryOtherByte) {
  EXPECT_EQ(ota::url_encode("AZaz09-_.~"), "AZaz09-_.~");
  EXPECT_EQ(ota::url_encode("2.0.0+b.7"), "2.0.0%2Bb.7");
  EXPECT_EQ(ota::url_encode("a/b c%d&e=f?g#h"), "a%2Fb%20c%25d%26e%3Df%3Fg%23h");
  EXPECT_EQ(ota::url_encode("\xC3\xA9\x01"), "%C3%A9%01");
  EXPECT_EQ(ota::url_encode(""), "");
}

TEST_F(ServiceApi, EventsPageBackwardsWithABeforeCursor) {
  for (int i = 1; i <= 5; ++i) hello("sim-00" + std::to_string(i), "1.0.0");
  auto newest = get("/api/v1/events?limit=2");
  const json a = body(newest);
  ASSERT_EQ(a.size(), 2u) << newest->body;
  const long long first_id = a[0]["id"].get<long long>();
  EXPECT_EQ(newest->get_header_value("Link"),
            "</api/v1/events?limit=2&before=" + std::to_string(first_id) + ">; rel=\"next\"");
  auto older = get("/api/v1/events?limit=2&before=" + std::to_string(first_id));
  const json b = body(older);
  ASSERT_EQ(b.size(), 2u);
  EXPECT_LT(b[1]["id"].get<long long>(), first_id);
  expect_error(get("/api/v1/events?offset=3"), 400, "invalid", "unknown query parameter 'offset'",
               "offset");
}

// otactl lists everything: with more devices than one page it follows X-Total-Count.
TEST_F(ServiceApi, OtactlFetchesEveryPage) {
  const std::size_t n = 1003;  // the default page is 1000
  ctl.reset();
  {
    Store s;
    ASSERT_TRUE(s.open(dir.file("ota.db")).ok());
    Tx tx(s);
    for (std::size_t i = 0; i < n; ++i) {
      DeviceRec d;
      d.id = "bulk-" + std::to_string(10000 + i);
      d.hw = "m1";
      d.version = "1.0.0";
      ASSERT_TRUE(s.upsert_device(d).ok());
    }
    ASSERT_TRUE(tx.commit().ok());
  }
  stop_api();
  start();
  serve();
  EXPECT_EQ(body(get("/api/v1/devices")).size(), 1000u);
  const std::string cmd = std::string("env -u OTA_API_TOKEN_FILE OTA_API_TOKEN=") + token + " " +
                          OTACTL_PATH + " --api http://127.0.0.1:" + std::to_string(port) +
                          " devices --json 2>&1";
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  char buf[65536];
  std::size_t got;
  while ((got = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, got);
  EXPECT_EQ(pclose(p), 0) << out.substr(0, 500);
  const json listed = json::parse(out, nullptr, false);
  ASSERT_TRUE(listed.is_array()) << out.substr(0, 500);
  EXPECT_EQ(listed.size(), n);
  std::set<std::string> ids;
  for (const auto& d : listed) ids.insert(d["id"].get<std::string>());
  EXPECT_EQ(ids.size(), n) << "no device twice, none missing";
}

// The OpenAPI description the server serves describes exactly the routes it registers,
// each with the role the server asks for.
TEST_F(ServiceApi, OpenApiDescribesEveryRouteAndNothingElse) {
  auto r = get("/api/v1/openapi.json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  const json doc = body(r);
  ASSERT_TRUE(doc.is_object());
  EXPECT_EQ(doc["openapi"].get<std::string>().substr(0, 2), "3.");
  ASSERT_TRUE(doc["components"]["schemas"].contains("Error"));

  // A concrete path for a described one: each {param} becomes a lower-case word, which every
  // route's parameter pattern ([^/]+, [a-z]+) takes.
  const auto concrete = [](const std::string& described) {
    return std::regex_replace(described, std::regex(R"(\{[^}]+\})"), "sample");
  };
  const auto upper = [](std::string m) {
    for (auto& c : m) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    return m;
  };
  const std::vector<HttpApi::Route> routes = api->routes();
  ASSERT_GE(routes.size(), 25u);
  std::size_t described = 0;
  for (const auto& [path, item] : doc["paths"].items()) {
    for (const auto& [method, operation] : item.items()) {
      ++described;
      const std::string m = upper(method);
      const HttpApi::Route* served = nullptr;
      for (const auto& route : routes)
        if (route.method == m && std::regex_match(concrete(path), std::regex(route.pattern)))
          served = &route;
      ASSERT_NE(served, nullptr) << m << " " << path
                                 << " is described but the server has no such route";
      EXPECT_EQ(operation.value("x-ota-role", ""), served->role) << m << " " << path;
      EXPECT_TRUE(operation.contains("responses")) << m << " " << path;
    }
  }
  for (const auto& route : routes) {
    bool found = false;
    for (const auto& [path, item] : doc["paths"].items())
      for (const auto& [method, operation] : item.items())
        found = found || (upper(method) == route.method &&
                          std::regex_match(concrete(path), std::regex(route.pattern)));
    EXPECT_TRUE(found) << route.method << " " << route.pattern
                       << " is served but not described in service/openapi.json";
  }
  EXPECT_EQ(described, routes.size()) << "one described operation per route";
}

// Checks `v` against an OpenAPI 3.0 schema of `doc` ($ref, allOf, type, nullable, enum,
// required, properties, items; oneOf is not checked): every mismatch as a test failure.
void expect_matches(const json& doc, const json& schema, const json& v, const std::string& where) {
  if (schema.contains("$ref")) {
    const std::string name =
        schema["$ref"].get<std::string>().substr(sizeof "#/components/schemas/" - 1);
    return expect_matches(doc, doc["components"]["schemas"][name], v, where);
  }
  if (schema.contains("allOf")) {
    for (const auto& part : schema["allOf"]) expect_matches(doc, part, v, where);
    return;
  }
  if (v.is_null() && schema.value("nullable", false)) return;
  const std::string type = schema.value("type", "");
  const bool type_ok = type.empty() || (type == "object" && v.is_object()) ||
                       (type == "array" && v.is_array()) || (type == "string" && v.is_string()) ||
                       (type == "integer" && v.is_number_integer()) ||
                       (type == "number" && v.is_number()) || (type == "boolean" && v.is_boolean());
  EXPECT_TRUE(type_ok) << where << ": " << v.dump() << " is not " << type;
  if (!type_ok) return;
  if (schema.contains("enum")) {
    EXPECT_NE(std::find(schema["enum"].begin(), schema["enum"].end(), v), schema["enum"].end())
        << where << ": " << v.dump() << " is not in " << schema["enum"].dump();
  }
  for (const auto& key : schema.value("required", json::array()))
    EXPECT_TRUE(v.contains(key.get<std::string>())) << where << " lacks " << key;
  if (v.is_object() && schema.contains("properties"))
    for (const auto& [key, sub] : schema["properties"].items())
      if (v.contains(key)) expect_matches(doc, sub, v[key], where + "." + key);
  if (v.is_array() && schema.contains("items"))
    for (std::size_t i = 0; i < v.size(); ++i)
      expect_matches(doc, schema["items"], v[i], where + "[" + std::to_string(i) + "]");
}

// What the server sends matches what the description says it sends.
TEST_F(ServiceApi, RepliesMatchTheirDescribedSchemas) {
  hello("d1", "1.0.0", {"lab"});
  add(bytes_of(5000, 8), "1.1.0");
  ASSERT_EQ(post("/api/v1/deployments", {{"image", "1.1.0"}, {"device", "d1"}})->status, 201);
  const std::string ro = rollout_draft("1.1.0", "lab");
  const json doc = body(get("/api/v1/openapi.json"));
  const auto check = [&](const std::string& described, const std::string& path, int status) {
    auto r = get(path);
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, status) << path << ": " << r->body;
    const json& schema = doc["paths"][described]["get"]["responses"][std::to_string(status)];
    ASSERT_TRUE(schema.is_object()) << described << " describes no " << status;
    const json& resolved =
        schema.contains("$ref")
            ? doc["components"]["responses"]
                 [schema["$ref"].get<std::string>().substr(sizeof "#/components/responses/" - 1)]
            : schema;
    expect_matches(doc, resolved["content"]["application/json"]["schema"], body(r), path);
  };
  check("/api/v1/images", "/api/v1/images", 200);
  check("/api/v1/images/{ref}", "/api/v1/images/1.1.0", 200);
  check("/api/v1/devices", "/api/v1/devices", 200);
  check("/api/v1/devices/{id}", "/api/v1/devices/d1", 200);
  check("/api/v1/deployments", "/api/v1/deployments", 200);
  check("/api/v1/rollouts", "/api/v1/rollouts", 200);
  check("/api/v1/rollouts/{id}", "/api/v1/rollouts/" + ro, 200);
  check("/api/v1/events", "/api/v1/events", 200);
  check("/api/v1/tokens", "/api/v1/tokens", 200);
  check("/api/v1/status", "/api/v1/status", 200);
  check("/api/v1/keys", "/api/v1/keys", 200);
  check("/api/v1/whoami", "/api/v1/whoami", 200);
  check("/api/v1/fleet", "/api/v1/fleet", 200);
  check("/api/v1/fleet/versions", "/api/v1/fleet/versions", 200);
  check("/api/v1/fleet", "/api/v1/fleet?online=maybe", 400);
  check("/api/v1/devices/{id}", "/api/v1/devices/nosuch", 404);
  check("/api/v1/devices", "/api/v1/devices?limit=0", 400);
  const json deployments = body(get("/api/v1/deployments"));
  ASSERT_EQ(deployments.size(), 1u);
  auto one = get("/api/v1/deployments/" + deployments[0]["id"].get<std::string>());
  expect_matches(doc,
                 doc["paths"]["/api/v1/deployments/{id}"]["get"]["responses"]["200"]["content"]
                    ["application/json"]["schema"],
                 body(one), "deployment");
}

TEST_F(ServiceApi, DraftRolloutDeleteTakesItsMetricsAndSurvivesARestart) {
  hello("d1", "1.0.0", {"lab"});
  hello("d2", "1.0.0", {"lab"});
  add(bytes_of(5000, 3), "1.1.0");
  const std::string draft = rollout_draft("1.1.0", "lab");
  const std::string started = rollout_draft("1.1.0", "lab");
  ASSERT_EQ(post("/api/v1/rollouts/" + started + "/start", json::object())->status, 200);
  EXPECT_NE(ctl->metrics_text().find("rollout=\"" + draft + "\""), std::string::npos);

  // A started rollout is refused, unchanged.
  const json before = body(get("/api/v1/rollouts/" + started + "?devices=1"));
  expect_error(del("/api/v1/rollouts/" + started), 409, "conflict", "has started");
  EXPECT_EQ(body(get("/api/v1/rollouts/" + started + "?devices=1")), before);

  auto r = del("/api/v1/rollouts/" + draft);
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(body(r), (json{{"id", draft}, {"deleted", true}}));
  expect_error(get("/api/v1/rollouts/" + draft), 404, "not_found", draft);
  expect_error(del("/api/v1/rollouts/" + draft), 404, "not_found", draft);
  EXPECT_EQ(ctl->metrics_text().find(draft), std::string::npos) << "its series are gone";
  // Its history stays: created and deleted, by the token.
  const json events = body(get("/api/v1/events?rollout=" + draft));
  ASSERT_GE(events.size(), 2u);
  EXPECT_EQ(events.front()["what"], "rollout_created");
  EXPECT_EQ(events.back()["what"], "rollout_deleted");
  EXPECT_EQ(events.back()["actor"], "token:bootstrap");

  restart();
  expect_error(get("/api/v1/rollouts/" + draft), 404, "not_found", draft);
  EXPECT_EQ(ctl->metrics_text().find(draft), std::string::npos);
  const json left = body(get("/api/v1/rollouts"));
  ASSERT_EQ(left.size(), 1u);
  EXPECT_EQ(left[0]["id"], started);
}

TEST_F(ServiceApi, ImageDeleteIsRefusedWhileUsedAndPersists) {
  hello("d1", "1.0.0", {"lab"});
  const ImageRec used = add(bytes_of(5000, 4), "1.1.0");
  const ImageRec free = add(bytes_of(6000, 5), "1.2.0");
  const std::string draft = rollout_draft("1.1.0", "lab");
  const json listed = body(get("/api/v1/images"));

  expect_error(del("/api/v1/images/1.1.0"), 409, "conflict", "rollout " + draft + " (draft)");
  EXPECT_EQ(body(get("/api/v1/images")), listed) << "a refused delete changes nothing";
  EXPECT_TRUE(image_file_exists(used));

  auto r = del("/api/v1/images/" + free.id);
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(body(r), (json{{"id", free.id}, {"version", "1.2.0"}, {"deleted", true}}));
  EXPECT_FALSE(image_file_exists(free));
  expect_error(get("/api/v1/images/1.2.0"), 404, "not_found", "1.2.0");

  // Once its draft is gone the image is unused; a deployment uses it again.
  ASSERT_EQ(del("/api/v1/rollouts/" + draft)->status, 200);
  ASSERT_EQ(post("/api/v1/deployments", {{"image", "1.1.0"}, {"device", "d1"}})->status, 201);
  expect_error(del("/api/v1/images/1.1.0"), 409, "conflict", "(active)");
  EXPECT_TRUE(image_file_exists(used));

  restart();
  expect_error(get("/api/v1/images/1.2.0"), 404, "not_found", "1.2.0");
  ASSERT_EQ(body(get("/api/v1/images")).size(), 1u);
  // The same bytes can be uploaded again.
  EXPECT_EQ(add(bytes_of(6000, 5), "1.2.0").id, free.id);
  EXPECT_TRUE(image_file_exists(free));
}

TEST_F(ServiceApi, DecommissionedDeviceGoesKeepsItsHistoryAndComesBackAsNew) {
  hello("d1", "1.0.0", {"lab"});
  hello("d2", "1.0.0", {"lab"});
  ASSERT_EQ(
      client().Put("/api/v1/devices/d1/tags", R"({"site":"berlin"})", "application/json")->status,
      200);
  add(bytes_of(5000, 6), "1.1.0");
  auto dep = post("/api/v1/deployments", {{"image", "1.1.0"}, {"device", "d1"}});
  ASSERT_EQ(dep->status, 201);
  const std::string dep_id = body(dep)["id"];

  // In flight: refused, unchanged.
  const json before = body(get("/api/v1/devices/d1"));
  expect_error(del("/api/v1/devices/d1"), 409, "conflict", "deployment " + dep_id + " (offered)");
  EXPECT_EQ(body(get("/api/v1/devices/d1")), before);
  // Revoked: refused (its record keeps it refused).
  ASSERT_EQ(post("/api/v1/devices/d2/revoke", json::object())->status, 200);
  expect_error(del("/api/v1/devices/d2"), 409, "conflict", "revoked");

  ASSERT_EQ(post("/api/v1/deployments/" + dep_id + "/cancel", json::object())->status, 200);
  pub.msgs.clear();
  auto r = del("/api/v1/devices/d1");
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(body(r), (json{{"id", "d1"}, {"decommissioned", true}}));
  expect_error(get("/api/v1/devices/d1"), 404, "not_found", "d1");
  EXPECT_EQ(body(get("/api/v1/devices")).size(), 1u);
  // Its retained hello is cleared on the broker (an empty retained message).
  const auto cleared = pub.on("ota/v1/dev/d1/up/presence");
  ASSERT_EQ(cleared.size(), 1u);
  EXPECT_TRUE(cleared[0].payload.empty());
  EXPECT_TRUE(cleared[0].retain);
  // Its history stays: its deployment row and its events.
  EXPECT_EQ(row_state(dep_id, "d1"), "cancelled");
  const json events = body(get("/api/v1/events?device=d1"));
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.front()["what"], "hello");
  EXPECT_EQ(events.back()["what"], "device_decommissioned");

  restart();
  expect_error(get("/api/v1/devices/d1"), 404, "not_found", "d1");
  EXPECT_EQ(row_state(dep_id, "d1"), "cancelled");

  // It says hello again: a new device, without its old tags.
  hello("d1", "1.0.0", {"lab"});
  const json back = body(get("/api/v1/devices/d1"));
  EXPECT_EQ(back["id"], "d1");
  EXPECT_EQ(back["tags"], json::object());
  EXPECT_EQ(back["last_seq"], -1);
}

TEST_F(ServiceApi, DeletesNeedTheirRoles) {
  hello("d1", "1.0.0");
  auto made = post("/api/v1/tokens", {{"name", "op"}, {"role", "operator"}});
  ASSERT_EQ(made->status, 201);
  httplib::Client op("127.0.0.1", port);
  op.set_bearer_token_auth(body(made)["token"].get<std::string>());
  expect_error(op.Delete("/api/v1/devices/d1"), 403, "forbidden", "needs role admin");
  EXPECT_EQ(get("/api/v1/devices/d1")->status, 200);
  add(bytes_of(5000, 7), "1.1.0");
  EXPECT_EQ(op.Delete("/api/v1/images/1.1.0")->status, 200);
}

}  // namespace

namespace {

// The web dashboard's API calls (issue 14): who the token is, the fleet counted by the
// server, devices per version over time from the event log.
TEST_F(ServiceApi, WhoamiNamesTheTokenAndItsRole) {
  auto me = get("/api/v1/whoami");
  ASSERT_TRUE(me);
  ASSERT_EQ(me->status, 200) << me->body;
  EXPECT_EQ(body(me), (json{{"name", "bootstrap"}, {"role", "admin"}, {"bootstrap", true}}));
  auto created = post("/api/v1/tokens", {{"name", "viewer"}, {"role", "read-only"}});
  ASSERT_TRUE(created && created->status == 201);
  httplib::Client viewer("127.0.0.1", port);
  viewer.set_bearer_token_auth(body(created)["token"].get<std::string>());
  auto v = viewer.Get("/api/v1/whoami");
  ASSERT_TRUE(v && v->status == 200);
  EXPECT_EQ(body(v), (json{{"name", "viewer"}, {"role", "read-only"}, {"bootstrap", false}}));
  httplib::Client anonymous("127.0.0.1", port);
  expect_error(anonymous.Get("/api/v1/whoami"), 401, "unauthorized", "missing or wrong API token");
}

TEST_F(ServiceApi, FleetCountsAndVersionsOverTimeFromTheEventLog) {
  long long now_ms = 1800000000000LL;
  clock = [&now_ms] { return now_ms; };
  restart();
  const long long t0 = now_ms;
  hello("d1", "1.0.0", {"lab"}, proto::SlotState::confirmed, "m1");
  hello("d2", "1.0.0", {"lab"}, proto::SlotState::confirmed, "m2");
  hello("d3", "1.0.0", {"other"}, proto::SlotState::confirmed, "m1");
  now_ms += 60000;
  hello("d1", "1.1.0", {"lab"}, proto::SlotState::confirmed, "m1");
  now_ms += 60000;

  auto fleet = get("/api/v1/fleet");
  ASSERT_TRUE(fleet);
  ASSERT_EQ(fleet->status, 200) << fleet->body;
  EXPECT_EQ(body(fleet), (json{{"total", 3}, {"online", 3}, {"offline", 0},
                               {"by_version", {{"1.0.0", 2}, {"1.1.0", 1}}},
                               {"by_hw", {{"m1", 2}, {"m2", 1}}},
                               {"by_state", {{"idle", 3}}},
                               {"by_group", {{"lab", 2}, {"other", 1}}}}));
  // The same filters as /devices.
  auto lab = get("/api/v1/fleet?group=lab&version=1.0.0");
  ASSERT_TRUE(lab && lab->status == 200);
  EXPECT_EQ(body(lab)["total"], 1);
  auto by_id = get("/api/v1/fleet?tag=id%3Dd*%20and%20hw%3Dm1");
  ASSERT_TRUE(by_id && by_id->status == 200) << by_id->body;
  EXPECT_EQ(body(by_id)["total"], 2);
  expect_error(get("/api/v1/fleet?tag=site%3D"), 400, "invalid", "tag:", "tag");
  expect_error(get("/api/v1/devices?tag=site%3D"), 400, "invalid", "tag:", "tag");
  expect_error(get("/api/v1/fleet?state=sleeping"), 400, "invalid", "state 'sleeping'", "state");
  expect_error(get("/api/v1/fleet?limit=5"), 400, "invalid", "unknown query parameter 'limit'", "limit");

  auto history = get("/api/v1/fleet/versions?points=3");
  ASSERT_TRUE(history);
  ASSERT_EQ(history->status, 200) << history->body;
  const json h = body(history);
  EXPECT_EQ(h["from"], t0);
  EXPECT_EQ(h["to"], now_ms);
  EXPECT_EQ(h["versions"], (json{"1.0.0", "1.1.0"}));
  ASSERT_EQ(h["points"].size(), 3u) << h.dump();
  EXPECT_EQ(h["points"][0], (json{{"ts", t0}, {"counts", {{"1.0.0", 3}}}}));
  EXPECT_EQ(h["points"][1], (json{{"ts", t0 + 60000}, {"counts", {{"1.0.0", 2}, {"1.1.0", 1}}}}));
  EXPECT_EQ(h["points"][2], (json{{"ts", now_ms}, {"counts", {{"1.0.0", 2}, {"1.1.0", 1}}}}));
  // since: the devices' versions at that time come from the hellos before it.
  auto since = get("/api/v1/fleet/versions?points=2&since=" + std::to_string((t0 + 90000) / 1000));
  ASSERT_TRUE(since && since->status == 200) << since->body;
  EXPECT_EQ(body(since)["points"][0]["counts"], (json{{"1.0.0", 2}, {"1.1.0", 1}}));
  // A decommissioned device leaves the chart.
  ASSERT_EQ(del("/api/v1/devices/d3")->status, 200);
  auto after = get("/api/v1/fleet/versions?points=2");
  ASSERT_TRUE(after && after->status == 200);
  EXPECT_EQ(body(after)["points"][1]["counts"], (json{{"1.0.0", 1}, {"1.1.0", 1}}));
  expect_error(get("/api/v1/fleet/versions?points=1"), 400, "invalid", "points", "points");
  expect_error(get("/api/v1/fleet/versions?step=1"), 400, "invalid", "unknown query parameter 'step'", "step");
}

// A rollout the server refuses names the field at fault: the dashboard's form shows the
// message next to that input.
TEST_F(ServiceApi, RolloutCreateErrorsNameTheirField) {
  hello("d1", "1.0.0", {"lab"});
  add(bytes_of(5000, 8), "1.1.0");
  const auto create = [&](json extra) {
    json b{{"image", "1.1.0"}, {"target", {{"group", "lab"}}}};
    b.update(extra);
    return post("/api/v1/rollouts", b);
  };
  expect_error(create({{"waves", {{{"size", "150%"}}}}}), 400, "invalid", "waves[0].size '150%'",
               "waves[0].size");
  expect_error(create({{"waves", {{{"size", "10%"}}, {{"size", "100%"}, {"soak", "5x"}}}}}), 400,
               "invalid", "waves[1].soak '5x'", "waves[1].soak");
  expect_error(create({{"failure", {{"max_wave_rate", 250}}}}), 400, "invalid",
               "failure.max_wave_rate 250 is not in 0..100", "failure.max_wave_rate");
  expect_error(create({{"failure", {{"action", "panic"}}}}), 400, "invalid", "failure.action",
               "failure.action");
  expect_error(create({{"retries", -1}}), 400, "invalid", "retries must be an integer", "retries");
  expect_error(create({{"window", "25:00-01:00"}}), 400, "invalid", "window '25:00-01:00'", "window");
  expect_error(create({{"colour", "red"}}), 400, "invalid", "unknown field \"colour\"", "colour");
  expect_error(create({{"target", json::object()}}), 400, "invalid", "\"target\" must be one of",
               "target");
  expect_error(create({{"target", {{"tags", "site="}}}}), 400, "invalid", "target.tags:",
               "target.tags");
  expect_error(create({{"target", {{"group", "no/such"}}}}), 400, "invalid", "target.group",
               "target.group");
  expect_error(create({{"image", "9.9.9"}}), 404, "not_found", "9.9.9", "image");
  auto none = get("/api/v1/rollouts");
  ASSERT_TRUE(none);
  EXPECT_EQ(none->get_header_value("X-Total-Count"), "0") << "nothing was created";
}

}  // namespace
