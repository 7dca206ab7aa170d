// otactl token create | list | revoke: API tokens (admin).
#include <CLI/CLI.hpp>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "../commands.hpp"
#include "../format.hpp"

namespace otactl {

namespace {

// The secret goes alone to stdout (`otactl token create ci --role operator > ci.token`), the
// explanation to stderr: it is shown once and the controller keeps only its hash.
int cmd_token_create(Context& c, const std::string& name, const std::string& role) {
  Reply r = c.api->post_json("/api/v1/tokens", json{{"name", name}, {"role", role}});
  if (!r.ok) return fail(r);
  if (c.json_out) return print_json(r.body), kExitOk;
  std::fprintf(stderr,
               "token %s (role %s) created. Its secret follows; it is shown only now (the "
               "controller keeps its SHA-256): store it in a file of mode 0600 and use it with "
               "--token-file, OTA_API_TOKEN_FILE or OTA_API_TOKEN\n",
               jstr(r.body, "name").c_str(), jstr(r.body, "role").c_str());
  std::printf("%s\n", jstr(r.body, "token").c_str());
  return kExitOk;
}

int cmd_token_list(Context& c) {
  Reply r = c.api->get("/api/v1/tokens");
  if (!r.ok) return fail(r);
  if (c.json_out) return print_json(r.body), kExitOk;
  std::vector<std::vector<std::string>> rows;
  for (const auto& t : r.body) {
    const bool bootstrap = t.is_object() && t.value("bootstrap", false);
    rows.push_back({jstr(t, "name"), jstr(t, "role"),
                    bootstrap ? "-" : cell_time(jint(t, "created_at")),
                    bootstrap ? "(the controller's --api-token-file)" : jstr(t, "created_by")});
  }
  print_table({"NAME", "ROLE", time_head("CREATED"), "CREATED BY"}, rows);
  return kExitOk;
}

int cmd_token_revoke(Context& c, const std::string& name) {
  Reply r = c.api->del("/api/v1/tokens/" + url_encode(name));
  if (!r.ok) return fail(r);
  if (c.json_out) return print_json(r.body), kExitOk;
  std::printf("token %s revoked: the controller refuses it from now on\n", name.c_str());
  return kExitOk;
}

struct Options {
  std::string name, role;
};

}  // namespace

void add_token_commands(CLI::App& app, Context& ctx) {
  auto* token = app.add_subcommand("token", "API tokens (admin): one per person or script, with a role");
  token->require_subcommand(1);
  auto* create = token->add_subcommand("create", "create a token; prints its secret once (to stdout, alone on a line)");
  auto* list = token->add_subcommand("list", "list tokens (names and roles, never secrets)");
  auto* revoke = token->add_subcommand("revoke", "revoke a token: refused from the next request on");
  auto o = std::make_shared<Options>();
  create->add_option("NAME", o->name, "who or what uses it: 1-64 of A-Z a-z 0-9 . _ @ -")->required();
  create->add_option("--role", o->role,
                     "read-only (GETs and /metrics), operator (+ images, deployments, "
                     "rollouts, tags) or admin (+ tokens, backup, reset-seq)")
      ->required()
      ->check(CLI::IsMember({"read-only", "operator", "admin"}));
  revoke->add_option("NAME", o->name, "token name")->required();
  ctx.on_api(create, [&ctx, o] { return cmd_token_create(ctx, o->name, o->role); });
  ctx.on_api(list, [&ctx] { return cmd_token_list(ctx); });
  ctx.on_api(revoke, [&ctx, o] { return cmd_token_revoke(ctx, o->name); });
}

}  // namespace otactl
