#include <CLI/CLI.hpp>

#include "commands.hpp"

namespace otactl {

int Context::connect() {
  return open_api(api_url, api_source, token_file, api);
}

void Context::on(const CLI::App* cmd, std::function<int()> run) { commands_.emplace_back(cmd, std::move(run)); }

void Context::on_api(const CLI::App* cmd, std::function<int()> run) {
  on(cmd, [this, run = std::move(run)] {
    if (int rc = connect(); rc != kExitOk) return rc;
    return run();
  });
}

int Context::run() const {
  for (const auto& [cmd, run] : commands_)
    if (cmd->parsed()) return run();
  errorf("no command given (try --help)");
  return kExitUsage;
}

}  // namespace otactl
