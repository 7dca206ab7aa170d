// Where a daemon's settings come from, for ota-controller and ota-agent: every option with a
// long name can also be given as an environment variable OTA_<NAME> (upper case, '-' -> '_':
// --min-free-mb -> OTA_MIN_FREE_MB) and as a key of a TOML/INI file given with --config FILE
// (or OTA_CONFIG=FILE): `min-free-mb = 128` (or min_free_mb). Precedence:
//
//   command line > environment > config file > built-in defaults
//
// CLI11 2.1 applies the config file before the environment and the environment only to
// options that are still unset, which would let the file win over the environment; the
// file reader here therefore leaves out every key whose environment variable is set.
// Unknown keys in the file are errors (a typo must not be ignored silently).
//
// Use: declare every option, then add_config_sources(app, print) once; after parsing, if
// `print` is set, print_config(app) and exit. Options declared later get no variable.
#pragma once

#include <CLI/CLI.hpp>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <istream>
#include <memory>
#include <string>
#include <vector>

#ifndef OTA_VERSION
#define OTA_VERSION "unknown"
#endif

namespace ota::cli {

inline const char* version() { return OTA_VERSION; }

// --min-free-mb -> OTA_MIN_FREE_MB
inline std::string env_name(const std::string& long_name, const std::string& prefix = "OTA_") {
  std::string out = prefix;
  for (char c : long_name)
    out += c == '-' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return out;
}

// The TOML/INI reader of --config: '_' and '-' are the same in key names, and keys whose
// environment variable is set (non-empty) are dropped so the environment wins.
class EnvFirstConfig : public CLI::ConfigTOML {
 public:
  explicit EnvFirstConfig(const CLI::App* app) : app_(app) {}
  std::vector<CLI::ConfigItem> from_config(std::istream& input) const override {
    std::vector<CLI::ConfigItem> parsed = CLI::ConfigTOML::from_config(input);
    std::vector<CLI::ConfigItem> out;
    for (CLI::ConfigItem& item : parsed) {
      if (item.parents.empty() && item.name != "++" && item.name != "--") {
        std::replace(item.name.begin(), item.name.end(), '_', '-');
        const CLI::Option* opt = app_->get_option_no_throw("--" + item.name);
        if (opt != nullptr && !opt->get_envname().empty()) {
          const char* env = std::getenv(opt->get_envname().c_str());
          if (env != nullptr && *env != '\0') continue;
        }
      }
      out.push_back(std::move(item));
    }
    return out;
  }

 private:
  const CLI::App* app_;
};

// Adds --version, --config FILE (default $OTA_CONFIG, then required to exist) and
// --print-config, and gives every option declared so far that has a long name its
// environment variable (shown in --help as "Env:").
inline void add_config_sources(CLI::App& app, bool& print_config, const std::string& prefix = "OTA_") {
  std::vector<const CLI::Option*> skip{app.get_help_ptr()};
  skip.push_back(app.set_version_flag("--version", std::string(version()))->configurable(false));
  for (CLI::Option* opt : app.get_options()) {
    if (opt->get_lnames().empty() || !opt->get_configurable() ||
        std::find(skip.begin(), skip.end(), opt) != skip.end())
      continue;
    opt->envname(env_name(opt->get_lnames().front(), prefix));
  }
  const std::string config_env = prefix + "CONFIG";
  const char* config_default = std::getenv(config_env.c_str());
  const bool from_env = config_default != nullptr && *config_default != '\0';
  app.set_config("--config", from_env ? config_default : "",
                 "read options from this TOML/INI file: `long-option-name = value` lines "
                 "(env " + config_env + "); the command line and OTA_* variables override it",
                 from_env);
  app.config_formatter(std::make_shared<EnvFirstConfig>(&app));
  app.allow_config_extras(CLI::config_extras_mode::error);
  app.add_flag("--print-config", print_config,
               "print the effective settings (command line > environment > config file > "
               "defaults) as a TOML config file and exit")
      ->configurable(false);
}

// The effective settings as a config file --config accepts, with each option's help as a
// comment.
inline void print_config(const CLI::App& app) {
  std::fputs(app.config_to_str(true, true).c_str(), stdout);
  std::fflush(stdout);
}

}  // namespace ota::cli
