// otactl's commands: one file per noun under commands/, each with a function that registers its
// subcommands (options and what they run) on the CLI11 app.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "api_client.hpp"

namespace CLI {
class App;
}

namespace otactl {

// The global options, the API once connected, and what each registered subcommand runs.
struct Context {
  std::string api_url;               // --api, else $OTA_API, else the default
  std::string api_source = "--api";  // where api_url came from (messages name it)
  std::string token_file;            // --token-file
  bool json_out = false;             // --json
  bool local_time = false;           // --local-time

  std::unique_ptr<Api> api;  // set by connect()

  // Opens `api` (--api, the token): kExitOk, or the exit code after the error was printed.
  int connect();
  // `run` is what `cmd` does when it is the subcommand given: an offline command, or one
  // that checks its arguments before it calls connect().
  void on(const CLI::App* cmd, std::function<int()> run);
  // The same, connected first.
  void on_api(const CLI::App* cmd, std::function<int()> run);
  // After parsing: runs the subcommand given; kExitUsage if there is none.
  int run() const;

 private:
  std::vector<std::pair<const CLI::App*, std::function<int()>>> commands_;
};

void add_image_commands(CLI::App& app, Context& ctx);       // image add|list|sign
void add_keys_commands(CLI::App& app, Context& ctx);        // keys sign|push|show
void add_deploy_command(CLI::App& app, Context& ctx);       // deploy [--wait]
void add_device_commands(CLI::App& app, Context& ctx);      // devices, device show|revoke|tag
void add_deployment_commands(CLI::App& app, Context& ctx);  // status, deployment list|show|cancel
void add_events_command(CLI::App& app, Context& ctx);       // events
void add_rollout_commands(CLI::App& app, Context& ctx);     // rollout create|start|...|events
void add_ops_commands(CLI::App& app, Context& ctx);         // health, backup
void add_token_commands(CLI::App& app, Context& ctx);       // token create|list|revoke
void add_watch_command(CLI::App& app, Context& ctx);        // watch

// Shared between nouns.
int show_deployment(Context& c, const std::string& id);  // deployment show, status DEPLOYMENT
// GET /api/v1/events with these filters ("" = any), as a table.
int show_events(Context& c, const std::string& rollout, const std::string& dep, const std::string& dev,
                int limit);
// The last `n` events worth an operator's eye (watch).
json notable_events(const json& evs, std::size_t n);

}  // namespace otactl
