// otactl: command line client of the ota-controller HTTP API. This file only wires the nouns
// (commands/*.cpp) to the command line.
//
// Exit codes: 0 ok; 1 API error (4xx/5xx; 401: wrong token), no API token, unreachable
// controller, (deploy --wait) a device that failed/declined/was cancelled, or (watch) a rollout
// that was aborted or paused by its policy; 2 usage error; 3 deploy --wait timed out, or watch
// gave up on an unreachable controller.
#include <CLI/CLI.hpp>
#include <cstdlib>
#include <string>

#include "commands.hpp"
#include "ota/cli_config.hpp"

int main(int argc, char** argv) {
  using namespace otactl;
  CLI::App app{"otactl: control the OTA fleet controller over its HTTP API"};
  app.require_subcommand(1);
  app.fallthrough();  // global options (--json, --api) may also follow the subcommand
  app.set_version_flag("--version", std::string(ota::cli::version()));
  Context ctx;
  const char* env_api = std::getenv("OTA_API");
  ctx.api_url = env_api && *env_api ? env_api : "http://127.0.0.1:8080";
  app.add_option("--api", ctx.api_url, "controller API URL (default: $OTA_API or http://127.0.0.1:8080)");
  app.add_flag("--json", ctx.json_out, "machine-readable output (the API's JSON)");
  app.add_option("--token-file", ctx.token_file,
                 "file holding the API bearer token (the controller's --api-token-file, default "
                 "<db>.token); else $OTA_API_TOKEN (the token), else $OTA_API_TOKEN_FILE");

  // In this order in --help.
  add_image_commands(app, ctx);
  add_keys_commands(app, ctx);
  add_deploy_command(app, ctx);
  add_device_commands(app, ctx);
  add_deployment_commands(app, ctx);
  add_events_command(app, ctx);
  add_rollout_commands(app, ctx);
  add_ops_commands(app, ctx);
  add_token_commands(app, ctx);
  add_watch_command(app, ctx);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? kExitOk : kExitUsage;
  }
  return ctx.run();
}
