// ota-controller: the fleet controller daemon. See service/API.md.
#include <filesystem>
#include <signal.h>
#include <sys/stat.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "ota/cli_config.hpp"
#include "ota/service/controller.hpp"
#include "ota/service/http_api.hpp"
#include "ota/service/log.hpp"
#include "ota/service/mqtt.hpp"

using namespace ota::service;

namespace {

std::string mode_text(mode_t mode) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "%04o", static_cast<unsigned>(mode & 07777));
  return buf;
}

// A private key that group or others may read is refused before it is loaded: with the
// release key anyone can sign firmware every device installs, with the TLS key act as the
// controller on the broker.
bool key_is_private(const std::string& option, const std::string& path, const char* grants) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    log_error("startup: " + option + " " + path + ": " + std::strerror(errno));
    return false;
  }
  if ((st.st_mode & 077) == 0) return true;
  log_error("startup: " + option + " " + path + " has mode " + mode_text(st.st_mode) +
            ": group or others may read it, and whoever reads it " + grants +
            "; refusing to start. Run `chmod 600 " + path +
            "` (the file must be readable by the controller's user only)");
  return false;
}

// Databases made by earlier versions (under umask 022) are world-readable; the database holds
// the fleet's state and the API token hashes, so it and its WAL files become private.
void make_database_private(const std::string& db_path) {
  for (const std::string& f : {db_path, db_path + "-wal", db_path + "-shm"}) {
    struct stat st {};
    if (::stat(f.c_str(), &st) != 0 || (st.st_mode & 077) == 0) continue;
    if (::chmod(f.c_str(), st.st_mode & 0700) == 0)
      log_warn("startup: " + f + " had mode " + mode_text(st.st_mode) + "; made it " +
               mode_text(st.st_mode & 0700) + " (it holds the fleet's state and token hashes)");
    else
      log_warn("startup: " + f + " has mode " + mode_text(st.st_mode) + " and chmod failed: " +
               std::strerror(errno) + "; make it readable by the controller's user only");
  }
}

// The command line (with the OTA_* environment and the --config file), before it becomes the
// MQTT and controller configuration.
struct Options {
  MqttConfig mqtt;
  ControllerConfig controller;
  std::string signing_key_path;
  std::string signing_role = "release";  // "release" or "online"
  std::string root_key_path;
  std::vector<std::string> release_pub_paths;
  std::string http_listen = "127.0.0.1:8080";  // HOST:PORT
  bool http_allow_remote = false;
  std::string api_token_file;  // empty: the --db path + ".token"
  std::string web_root;        // empty: the installed dashboard, else the source tree's
  std::uint64_t min_free_mb = controller.min_free_bytes / (1024 * 1024);
  long long retention_days = controller.event_retention.max_age_ms / (86400LL * 1000);
  bool verbose = false;
  std::string log_format = "text";
  bool print_config = false;
};

int startup_failed(const std::string& error) {
  log_error("startup: " + error);
  return 1;
}

void start_logging(const Options& o, const std::string& config_file) {
  if (o.verbose) set_log_level(LogLevel::debug);
  LogFormat lf = LogFormat::text;
  parse_log_format(o.log_format, &lf);
  set_log_format(lf);
  log_info("ota-controller starting", {{"version", ota::cli::version()},
                                       {"config", config_file},
                                       {"db", o.controller.db_path}});
}

// The web dashboard's directory: --web-root (OTA_WEB_ROOT, web_root in --config) when given
// (it must exist); else <prefix>/share/ota/web beside the installed binary; else the source
// tree's service/web (a build tree). nullopt after printing why a given one is unusable; ""
// when there is none (the API runs without a dashboard).
std::optional<std::string> find_web_root(const std::string& given) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!given.empty()) {
    if (!fs::is_regular_file(fs::path(given) / "index.html", ec)) {
      std::fprintf(stderr, "ota-controller: --web-root %s: no index.html there (the directory "
                           "of the web dashboard, service/web/ or <prefix>/share/ota/web)\n",
                   given.c_str());
      return std::nullopt;
    }
    return given;
  }
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    const fs::path installed = exe.parent_path().parent_path() / "share" / "ota" / "web";
    if (fs::is_regular_file(installed / "index.html", ec)) return installed.string();
  }
  if (fs::is_regular_file(fs::path(OTA_WEB_ROOT_SOURCE) / "index.html", ec))
    return std::string(OTA_WEB_ROOT_SOURCE);
  log_warn("no web dashboard found (<prefix>/share/ota/web, " + std::string(OTA_WEB_ROOT_SOURCE) +
           "): the API runs without it; --web-root DIR names one");
  return std::string();
}

// Derives the configuration values given in other units and checks what CLI11 cannot check
// alone. Returns the HTTP listen address, or nullopt after printing why the options are wrong.
std::optional<HostPort> check_options(Options& o) {
  MqttConfig& mc = o.mqtt;
  ControllerConfig& cc = o.controller;
  cc.min_free_bytes = o.min_free_mb * 1024 * 1024;
  cc.event_retention.max_age_ms = o.retention_days * 86400LL * 1000;
  if (mc.reconnect_base_ms > mc.reconnect_max_ms) {
    std::fprintf(stderr, "ota-controller: --reconnect-base-ms %lld is above --reconnect-max-ms %lld\n",
                 mc.reconnect_base_ms, mc.reconnect_max_ms);
    return std::nullopt;
  }
  mc.prefix = cc.prefix;
  if (cc.prefix.empty() || cc.prefix.find_first_of("+#") != std::string::npos || cc.prefix.back() == '/') {
    std::fprintf(stderr, "ota-controller: --prefix '%s' is not a valid topic prefix\n", cc.prefix.c_str());
    return std::nullopt;
  }
  if ((mc.cert.empty()) != (mc.key.empty())) {
    std::fprintf(stderr, "ota-controller: --cert and --key must be given together\n");
    return std::nullopt;
  }
  auto hp = parse_host_port(o.http_listen);
  if (!hp) {
    std::fprintf(stderr, "ota-controller: --http: %s\n", hp.error().c_str());
    return std::nullopt;
  }
  if (!o.http_allow_remote && !is_loopback_host(hp->host)) {
    std::fprintf(stderr,
                 "ota-controller: --http %s is not a loopback address; the API is plain "
                 "HTTP (token in clear), pass --http-allow-remote to expose it anyway\n",
                 o.http_listen.c_str());
    return std::nullopt;
  }
  return *hp;
}

// Everything the controller creates (database and its WAL files, token file, images,
// backups, directories) is for its own user only.
void make_new_files_private() { ::umask(077); }

// Blocks the stop signals in every thread (threads started later inherit the mask); the main
// thread waits for them. Returns them.
sigset_t block_stop_signals() {
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  signal(SIGPIPE, SIG_IGN);
  return sigs;
}

// The private keys must be private, the state directories exist (a first start on a fresh
// machine: make them, not their parents' owners) and the database be private. False after
// logging why not.
bool prepare_state_files(const Options& o) {
  if (!key_is_private("--signing-key", o.signing_key_path,
                      o.signing_role == "online" ? "can sign offers as the controller"
                                                 : "can sign firmware that every device installs") ||
      (!o.mqtt.key.empty() &&
       !key_is_private("--key", o.mqtt.key, "can connect to the broker as the controller")))
    return false;
  for (const std::filesystem::path& dir : {std::filesystem::path(o.controller.db_path).parent_path(),
                                           std::filesystem::path(o.controller.store_dir)}) {
    std::error_code ec;
    if (!dir.empty()) std::filesystem::create_directories(dir, ec);
    if (ec) {
      log_error("startup: create directory " + dir.string() + ": " + ec.message());
      return false;
    }
  }
  make_database_private(o.controller.db_path);
  return true;
}

// The offer signing key; the root and release public keys go into o.controller.keys.
Result<Signer> load_signing_keys(Options& o) {
  auto signer = Signer::load(o.signing_key_path);
  if (!signer) return signer.err();
  auto& keys = o.controller.keys;
  keys.signing_key_online = o.signing_role == "online";
  if (!o.root_key_path.empty()) {
    auto pem = read_file_text(o.root_key_path, "--root-key");
    auto k = pem ? load_public_key_file(o.root_key_path, "--root-key") : Result<PkeyPtr>(pem.err());
    if (!k) return k.err();
    keys.root_pub_pem = *pem;
  }
  for (const auto& path : o.release_pub_paths) {
    auto k = load_public_key_file(path, "--release-pub");
    if (!k) return k.err();
    keys.release_pub_pems.push_back(*read_file_text(path, "--release-pub"));
  }
  return signer;
}

std::string listen_address_text(const std::string& host, int port) {
  return (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

// Until SIGTERM or SIGINT: prints the ready line once the MQTT side is subscribed and ticks the
// controller every second. Returns the signal.
int serve_until_stopped(Controller& c, MqttClient& mqtt, const std::string& http_addr,
                        const sigset_t& stop_signals) {
  bool ready_printed = false;
  long long last_tick = now_ms();
  int sig = 0;
  for (;;) {
    timespec ts{0, 100 * 1000 * 1000};
    sig = sigtimedwait(&stop_signals, nullptr, &ts);
    if (sig == SIGTERM || sig == SIGINT) break;
    if (!ready_printed && mqtt.subscribed()) {
      std::printf("ota-controller ready http=%s broker=%s\n", http_addr.c_str(), mqtt.describe().c_str());
      std::fflush(stdout);
      ready_printed = true;
    }
    if (now_ms() - last_tick >= 1000) {
      c.tick();
      last_tick = now_ms();
    }
  }
  return sig;
}

// Opens the controller, its API tokens, the HTTP API and the MQTT connection, serves until a
// stop signal and shuts down in order. The exit code.
int run_controller(Options& o, const HostPort& http_listen, const sigset_t& stop_signals,
                   Signer signer) {
  if (o.api_token_file.empty()) o.api_token_file = o.controller.db_path + ".token";
  auto token = load_or_create_api_token(o.api_token_file);
  if (!token) return startup_failed(token.error());
  MqttClient mqtt(o.mqtt);
  auto ctl = Controller::create(o.controller, std::move(signer), &mqtt);
  if (!ctl) return startup_failed(ctl.error());
  Controller& c = **ctl;
  mqtt.set_controller(&c);
  auto tokens = ApiTokens::open(o.controller.db_path, *token);
  if (!tokens) return startup_failed(tokens.error());
  HttpApi api(c, [&mqtt] { return mqtt.subscribed(); }, **tokens, HttpLimits{}, o.web_root);
  auto port = api.start(http_listen.host, http_listen.port);
  if (!port) return startup_failed(port.error());
  const std::string http_addr = listen_address_text(http_listen.host, *port);
  log_info("http API listening on " + http_addr + " (bootstrap admin token in " +
           o.api_token_file + "); signing key id " + c.key_id());
  Status ms = mqtt.start();
  if (!ms) {
    api.stop();
    return startup_failed(ms.error());
  }

  const int sig = serve_until_stopped(c, mqtt, http_addr, stop_signals);
  log_info(std::string("received ") + (sig == SIGTERM ? "SIGTERM" : "SIGINT") + ", shutting down");
  api.stop();
  mqtt.stop();
  mqtt.set_controller(nullptr);
  ctl->reset();  // flushes counters, closes the database
  log_info("stopped");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ota-controller: OTA fleet controller (MQTT + HTTP API)"};
  Options o;
  o.mqtt.port = 8883;
  app.add_option("--broker-host", o.mqtt.host, "MQTT broker host")->capture_default_str();
  app.add_option("--broker-port", o.mqtt.port, "MQTT broker port")->capture_default_str()->check(CLI::Range(1, 65535));
  app.add_option("--ca", o.mqtt.ca, "CA certificate (PEM) of the broker; enables TLS");
  app.add_option("--cert", o.mqtt.cert, "controller client certificate (PEM, CN=ota-controller)");
  app.add_option("--key", o.mqtt.key, "controller client key (PEM)");
  app.add_option("--db", o.controller.db_path, "SQLite database path")->required();
  app.add_option("--store", o.controller.store_dir, "directory for image files")->required();
  app.add_option("--signing-key", o.signing_key_path,
                 "key that signs offers (EC P-256 private key, PEM): a release key (single-key "
                 "mode), or an online key (see --signing-key-role) that cannot release software "
                 "by itself")
      ->required();
  app.add_option("--signing-key-role", o.signing_role,
                 "release: the signing key is a release key (images need no release signature); "
                 "online: devices trust it only with a release signature made offline "
                 "(`otactl image sign`), so images without one are not deployed. A key set the "
                 "controller holds decides instead")
      ->capture_default_str()
      ->check(CLI::IsMember({"release", "online"}));
  app.add_option("--root-key", o.root_key_path,
                 "root public key (PEM) devices were provisioned with: key sets (`otactl keys "
                 "push`) must be signed by it (or by the next root a held set names); without it "
                 "key-set uploads are refused");
  app.add_option("--release-pub", o.release_pub_paths,
                 "release public key (PEM) whose release signatures image uploads may carry, "
                 "while the controller holds no key set (repeatable)");
  app.add_option("--http", o.http_listen, "HTTP API listen address HOST:PORT (PORT 0 = any free port)")->capture_default_str();
  app.add_flag("--http-allow-remote", o.http_allow_remote, "allow a non-loopback --http address");
  app.add_option("--acl-file", o.controller.acl_file,
                 "the broker's mosquitto acl_file: group membership comes from its `user` "
                 "sections (re-read when it changes); without it, from device hellos");
  app.add_option("--api-token-file", o.api_token_file,
                 "the bootstrap admin token of the HTTP API (default: the --db path + "
                 "\".token\"; created with a random token, mode 0600, if missing; refused if "
                 "group or others may read it); more tokens: otactl token create");
  app.add_option("--web-root", o.web_root,
                 "directory of the web dashboard served at /ui/ (default: <prefix>/share/ota/web "
                 "beside the installed binary, else the source tree's service/web)");
  app.add_option("--prefix", o.controller.prefix, "MQTT topic prefix")->capture_default_str();
  app.add_option("--offer-ttl", o.controller.offer_ttl, "offer validity in seconds")->capture_default_str()->check(CLI::Range(60LL, 10LL * 365 * 86400));
  app.add_option("--heartbeat-timeout", o.controller.heartbeat_timeout_s,
                 "seconds without any message before a device is shown offline (0: only "
                 "the broker's last will)")->capture_default_str()->check(CLI::Range(0LL, 30LL * 86400));
  app.add_option("--client-id", o.mqtt.client_id, "MQTT client id (fixed: persistent session)")->capture_default_str();
  app.add_option("--reconnect-max-ms", o.mqtt.reconnect_max_ms,
                 "longest wait between broker connection attempts (exponential back-off with "
                 "full jitter from --reconnect-base-ms)")
      ->capture_default_str()->check(CLI::Range(100LL, 3600LL * 1000));
  app.add_option("--reconnect-base-ms", o.mqtt.reconnect_base_ms, "first back-off step")
      ->capture_default_str()->check(CLI::Range(10LL, 60LL * 1000));
  app.add_option("--connect-timeout-ms", o.mqtt.connect_timeout_ms,
                 "a broker connection without CONNACK and SUBACK after this long is dropped "
                 "and retried")
      ->capture_default_str()->check(CLI::Range(1000LL, 600LL * 1000));
  app.add_option("--min-free-mb", o.min_free_mb,
                 "/health fails when the disk of the database or the image store has less "
                 "free space (MiB)")
      ->capture_default_str()->check(CLI::Range(0ULL, 1ULL << 30));
  app.add_option("--event-retention-days", o.retention_days,
                 "delete events older than this (0: keep); events of active deployments "
                 "and live rollouts are always kept")
      ->capture_default_str()->check(CLI::Range(0LL, 100LL * 365));
  app.add_option("--event-retention-count", o.controller.event_retention.max_count,
                 "keep at most this many events, deleting the oldest (0: no limit)")
      ->capture_default_str()->check(CLI::Range(0LL, 1LL << 40));
  app.add_option("--chunk-queue-bytes", o.controller.chunk_flow.max_unacked_bytes,
                 "chunk frames sent and not yet acknowledged by the broker, all devices "
                 "together; more requests wait their turn (bounds send memory)")
      ->capture_default_str()->check(CLI::Range(65536ULL, 1ULL << 32));
  app.add_option("--chunk-threads", o.controller.chunk_flow.sender_threads,
                 "threads that read, frame and publish chunks")
      ->capture_default_str()->check(CLI::Range(1U, 64U));
  app.add_option("--broadcast-hold-ms", o.controller.chunk_flow.broadcast_hold_ms,
                 "a chunk only one device listening on its group's image topic wants waits this "
                 "long for others to ask before it is unicast (PROTOCOL.md 17; 0: at once)")
      ->capture_default_str()->check(CLI::Range(0LL, 10000LL));
  app.add_option("--resend-guard-ms", o.controller.chunk_flow.resend_guard_ms,
                 "a chunk sent to a device is not sent to it again for this long unless it "
                 "connected again since (a re-request that soon is a frame still queued in the "
                 "broker; 0: serve every re-request)")
      ->capture_default_str()->check(CLI::Range(0LL, 600000LL));
  app.add_flag("-v,--verbose", o.verbose, "debug logging");
  app.add_option("--log-format", o.log_format,
                 "stderr log lines: text, or json (one object per line: ts, level, msg, fields)")
      ->capture_default_str()->check(CLI::IsMember({"text", "json"}));
  // Declared last: every option above also reads OTA_<NAME> and the --config file.
  ota::cli::add_config_sources(app, o.print_config);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  if (o.print_config) {
    ota::cli::print_config(app);
    return 0;
  }
  start_logging(o, app["--config"]->as<std::string>());
  const std::optional<HostPort> http_listen = check_options(o);
  if (!http_listen) return 2;
  const std::optional<std::string> web_root = find_web_root(o.web_root);
  if (!web_root) return 2;
  o.web_root = *web_root;
  make_new_files_private();
  const sigset_t stop_signals = block_stop_signals();
  if (!prepare_state_files(o)) return 1;
  auto signer = load_signing_keys(o);
  if (!signer) return startup_failed(signer.error());
  return run_controller(o, *http_listen, stop_signals, std::move(*signer));
}
