// otactl: command line client of the ota-controller HTTP API. This file only wires the nouns
// (commands/*.cpp) to the command line. Exit codes: kExitCodeTable (api_client.cpp), shown at
// the end of --help.
#include <CLI/CLI.hpp>
#include <cstdlib>
#include <string>

#include "command_names.hpp"
#include "commands.hpp"
#include "format.hpp"
#include "ota/cli_config.hpp"

int main(int argc, char** argv) {
  using namespace otactl;
  // Named, so that usage lines say "otactl", not the path it was started by.
  CLI::App app{"otactl: control the OTA fleet controller over its HTTP API", "otactl"};
  app.require_subcommand(1);
  app.fallthrough();  // global options (--json, --api) may also follow the subcommand
  app.set_version_flag("--version", std::string(ota::cli::version()));
  app.footer(kExitCodeTable);
  Context ctx;
  const char* env_api = std::getenv("OTA_API");
  ctx.api_url = env_api && *env_api ? env_api : "http://127.0.0.1:8080";
  auto* api_opt = app.add_option("--api", ctx.api_url,
                                 "controller API URL (default: $OTA_API or http://127.0.0.1:8080)");
  app.add_flag(
      "--json", ctx.json_out,
      "machine-readable output (the API's JSON; sizes in bytes, times in unix seconds or ms)");
  app.add_flag("--local-time", ctx.local_time,
               "show times in the local time zone (default UTC; every time says which)");
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

  if (auto bad = command_error(app, argc, argv)) {
    errorf(*bad);
    return kExitUsage;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? kExitOk : kExitUsage;
  }
  if (api_opt->count() == 0 && env_api && *env_api) ctx.api_source = "OTA_API";
  use_local_time(ctx.local_time);
  return ctx.run();
}
