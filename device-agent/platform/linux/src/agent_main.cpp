// ota-agent: the OTA agent as a daemon for one Linux device.
#include <csignal>
#include <cstdio>

#include <CLI/CLI.hpp>

#include "ota/cli_config.hpp"

#include "ota/agent/linux/device_runner.hpp"

namespace {
std::atomic<bool> g_stop{false};
void on_signal(int) { g_stop = true; }
}  // namespace

int main(int argc, char** argv) {
  using ota::agent::linux_port::DeviceOptions;
  CLI::App app{"ota-agent: OTA device agent for one Linux device (A/B slots in files)"};
  DeviceOptions opt;
  app.add_option("--device-id", opt.device_id, "device id = CN of its certificate")->required();
  app.add_option("--hw", opt.hw_model, "hardware model")->required();
  app.add_option("--group", opt.groups, "group membership (repeatable)");
  app.add_option("--data", opt.data_dir, "state directory (flash slots, agent state)")->required();
  app.add_option("--host", opt.mqtt.host, "broker host")->capture_default_str();
  app.add_option("--port", opt.mqtt.port, "broker TLS port")->required();
  app.add_option("--ca", opt.mqtt.ca_file, "CA certificate")->required()->check(CLI::ExistingFile);
  app.add_option("--cert", opt.mqtt.cert_file, "device certificate")->required()->check(CLI::ExistingFile);
  app.add_option("--key", opt.mqtt.key_file, "device key")->required()->check(CLI::ExistingFile);
  app.add_option("--trusted-key", opt.trusted_keys, "release public key PEM (repeatable)")
      ->required()->check(CLI::ExistingFile);
  app.add_option("--online-key", opt.online_keys,
                 "online public key PEM (repeatable): signs offers, accepted only with a release "
                 "signature")
      ->check(CLI::ExistingFile);
  app.add_option("--root-key", opt.root_key,
                 "root public key PEM: signs key sets (rotation, revocation); without it the "
                 "key set never changes. The key set in force is kept in DATA/agent.keys")
      ->check(CLI::ExistingFile);
  app.add_option("--prefix", opt.prefix, "topic prefix")->capture_default_str();
  app.add_option("--initial-version", opt.initial_version, "version of a factory-fresh slot a")
      ->capture_default_str();
  app.add_option("--window", opt.window_chunks, "chunks requested ahead")->capture_default_str()
      ->check(CLI::Range(1, 256));
  app.add_option("--request-timeout-ms", opt.request_timeout_ms,
                 "ask again for missing chunks after this long without one (PROTOCOL.md 8.1)")
      ->capture_default_str()->check(CLI::Range(50u, 600000u));
  app.add_flag("!--no-broadcast", opt.broadcast,
               "fetch chunks by unicast only (default: also listen on the group's image topic "
               "while downloading, PROTOCOL.md 17)");
  app.add_option("--max-trial-boots", opt.max_trial_boots,
                 "boots a new image gets to confirm itself before the old one comes back")
      ->capture_default_str()->check(CLI::Range(1, 255));
  app.add_option("--confirm-timeout-ms", opt.confirm_timeout_ms,
                 "a trial image must pass its self-test within this time (0: no limit)")
      ->capture_default_str();
  app.add_option("--heartbeat-ms", opt.heartbeat_interval_ms,
                 "heartbeat on the presence topic every N ms while connected (0: never)")
      ->capture_default_str();
  app.add_option("--app-dir", opt.app_dir,
                 "install application bundles (kind bundle) into this tree instead of firmware "
                 "images: DIR/current -> trees/a|b; a plain directory DIR/current is adopted as "
                 "the factory tree (version --initial-version)");
  app.add_option("--protect", opt.protect,
                 "with --app-dir: paths no bundle may write or delete, e.g. wifi.json,certs/ "
                 "(comma-separated, repeatable)")
      ->delimiter(',');
  std::string crash_in_state;
  app.add_option("--crash-in-state", crash_in_state,
                 "debug: SIGKILL when entering this state, once per --data directory");
  // Every option above also reads OTA_<NAME> (OTA_DEVICE_ID, OTA_PORT...) and --config FILE;
  // the systemd unit uses /etc/ota/agent.toml.
  bool print_config = false;
  ota::cli::add_config_sources(app, print_config);
  CLI11_PARSE(app, argc, argv);
  if (print_config) {
    ota::cli::print_config(app);
    return 0;
  }
  for (int st = 0; !crash_in_state.empty() && st <= 5; ++st) {
    if (crash_in_state == ota::proto::device_state_name(static_cast<ota::proto::DeviceState>(st))) {
      opt.crash_in_state = st;
    }
  }
  if (!crash_in_state.empty() && opt.crash_in_state < 0) {
    std::fprintf(stderr, "ota-agent: --crash-in-state: unknown state '%s'\n", crash_in_state.c_str());
    return 2;
  }

  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
  ota::agent::linux_port::DeviceRunner runner(opt);
  std::string error;
  if (!runner.run(g_stop, error)) {
    std::fprintf(stderr, "ota-agent: %s\n", error.c_str());
    return 1;
  }
  return 0;
}
