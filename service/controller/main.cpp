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
#include <string>

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

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ota-controller: OTA fleet controller (MQTT + HTTP API)"};
  MqttConfig mc;
  ControllerConfig cc;
  std::string signing_key, http = "127.0.0.1:8080", token_file;
  bool allow_remote = false, verbose = false;
  mc.port = 8883;
  app.add_option("--broker-host", mc.host, "MQTT broker host")->capture_default_str();
  app.add_option("--broker-port", mc.port, "MQTT broker port")->capture_default_str()->check(CLI::Range(1, 65535));
  app.add_option("--ca", mc.ca, "CA certificate (PEM) of the broker; enables TLS");
  app.add_option("--cert", mc.cert, "controller client certificate (PEM, CN=ota-controller)");
  app.add_option("--key", mc.key, "controller client key (PEM)");
  app.add_option("--db", cc.db_path, "SQLite database path")->required();
  app.add_option("--store", cc.store_dir, "directory for image files")->required();
  app.add_option("--signing-key", signing_key,
                 "key that signs offers (EC P-256 private key, PEM): a release key (single-key "
                 "mode), or an online key (see --signing-key-role) that cannot release software "
                 "by itself")
      ->required();
  std::string signing_role = "release", root_key;
  std::vector<std::string> release_pubs;
  app.add_option("--signing-key-role", signing_role,
                 "release: the signing key is a release key (images need no release signature); "
                 "online: devices trust it only with a release signature made offline "
                 "(`otactl image sign`), so images without one are not deployed. A key set the "
                 "controller holds decides instead")
      ->capture_default_str()
      ->check(CLI::IsMember({"release", "online"}));
  app.add_option("--root-key", root_key,
                 "root public key (PEM) devices were provisioned with: key sets (`otactl keys "
                 "push`) must be signed by it (or by the next root a held set names); without it "
                 "key-set uploads are refused");
  app.add_option("--release-pub", release_pubs,
                 "release public key (PEM) whose release signatures image uploads may carry, "
                 "while the controller holds no key set (repeatable)");
  app.add_option("--http", http, "HTTP API listen address HOST:PORT (PORT 0 = any free port)")->capture_default_str();
  app.add_flag("--http-allow-remote", allow_remote, "allow a non-loopback --http address");
  app.add_option("--acl-file", cc.acl_file,
                 "the broker's mosquitto acl_file: group membership comes from its `user` "
                 "sections (re-read when it changes); without it, from device hellos");
  app.add_option("--api-token-file", token_file,
                 "the bootstrap admin token of the HTTP API (default: the --db path + "
                 "\".token\"; created with a random token, mode 0600, if missing; refused if "
                 "group or others may read it); more tokens: otactl token create");
  app.add_option("--prefix", cc.prefix, "MQTT topic prefix")->capture_default_str();
  app.add_option("--offer-ttl", cc.offer_ttl, "offer validity in seconds")->capture_default_str()->check(CLI::Range(60LL, 10LL * 365 * 86400));
  app.add_option("--heartbeat-timeout", cc.heartbeat_timeout_s,
                 "seconds without any message before a device is shown offline (0: only "
                 "the broker's last will)")->capture_default_str()->check(CLI::Range(0LL, 30LL * 86400));
  app.add_option("--client-id", mc.client_id, "MQTT client id (fixed: persistent session)")->capture_default_str();
  app.add_option("--reconnect-max-ms", mc.reconnect_max_ms,
                 "longest wait between broker connection attempts (exponential back-off with "
                 "full jitter from --reconnect-base-ms)")
      ->capture_default_str()->check(CLI::Range(100LL, 3600LL * 1000));
  app.add_option("--reconnect-base-ms", mc.reconnect_base_ms, "first back-off step")
      ->capture_default_str()->check(CLI::Range(10LL, 60LL * 1000));
  app.add_option("--connect-timeout-ms", mc.connect_timeout_ms,
                 "a broker connection without CONNACK and SUBACK after this long is dropped "
                 "and retried")
      ->capture_default_str()->check(CLI::Range(1000LL, 600LL * 1000));
  std::uint64_t min_free_mb = cc.min_free_bytes / (1024 * 1024);
  app.add_option("--min-free-mb", min_free_mb,
                 "/health fails when the disk of the database or the image store has less "
                 "free space (MiB)")
      ->capture_default_str()->check(CLI::Range(0ULL, 1ULL << 30));
  long long retention_days = cc.event_retention.max_age_ms / (86400LL * 1000);
  app.add_option("--event-retention-days", retention_days,
                 "delete events older than this (0: keep); events of active deployments "
                 "and live rollouts are always kept")
      ->capture_default_str()->check(CLI::Range(0LL, 100LL * 365));
  app.add_option("--event-retention-count", cc.event_retention.max_count,
                 "keep at most this many events, deleting the oldest (0: no limit)")
      ->capture_default_str()->check(CLI::Range(0LL, 1LL << 40));
  app.add_flag("-v,--verbose", verbose, "debug logging");
  std::string log_format = "text";
  app.add_option("--log-format", log_format,
                 "stderr log lines: text, or json (one object per line: ts, level, msg, fields)")
      ->capture_default_str()->check(CLI::IsMember({"text", "json"}));
  // Declared last: every option above also reads OTA_<NAME> and the --config file.
  bool print_config = false;
  ota::cli::add_config_sources(app, print_config);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  if (print_config) {
    ota::cli::print_config(app);
    return 0;
  }
  if (verbose) set_log_level(LogLevel::debug);
  LogFormat lf = LogFormat::text;
  parse_log_format(log_format, &lf);
  set_log_format(lf);
  log_info("ota-controller starting", {{"version", ota::cli::version()},
                                       {"config", app["--config"]->as<std::string>()},
                                       {"db", cc.db_path}});
  cc.min_free_bytes = min_free_mb * 1024 * 1024;
  cc.event_retention.max_age_ms = retention_days * 86400LL * 1000;
  if (mc.reconnect_base_ms > mc.reconnect_max_ms) {
    std::fprintf(stderr, "ota-controller: --reconnect-base-ms %lld is above --reconnect-max-ms %lld\n",
                 mc.reconnect_base_ms, mc.reconnect_max_ms);
    return 2;
  }
  mc.prefix = cc.prefix;
  if (cc.prefix.empty() || cc.prefix.find_first_of("+#") != std::string::npos || cc.prefix.back() == '/') {
    std::fprintf(stderr, "ota-controller: --prefix '%s' is not a valid topic prefix\n", cc.prefix.c_str());
    return 2;
  }
  if ((mc.cert.empty()) != (mc.key.empty())) {
    std::fprintf(stderr, "ota-controller: --cert and --key must be given together\n");
    return 2;
  }
  auto hp = parse_host_port(http);
  if (!hp) {
    std::fprintf(stderr, "ota-controller: --http: %s\n", hp.error().c_str());
    return 2;
  }
  if (!allow_remote && !is_loopback_host(hp->host)) {
    std::fprintf(stderr,
                 "ota-controller: --http %s is not a loopback address; the API is plain "
                 "HTTP (token in clear), pass --http-allow-remote to expose it anyway\n",
                 http.c_str());
    return 2;
  }

  // Everything the controller creates (database and its WAL files, token file, images,
  // backups, directories) is for its own user only.
  ::umask(077);

  // Block the stop signals in every thread; the main thread waits for them.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  signal(SIGPIPE, SIG_IGN);

  if (!key_is_private("--signing-key", signing_key,
                      signing_role == "online" ? "can sign offers as the controller"
                                               : "can sign firmware that every device installs") ||
      (!mc.key.empty() &&
       !key_is_private("--key", mc.key, "can connect to the broker as the controller")))
    return 1;
  // A first start on a fresh machine: make the state directories (not their parents' owners).
  for (const std::filesystem::path& dir :
       {std::filesystem::path(cc.db_path).parent_path(), std::filesystem::path(cc.store_dir)}) {
    std::error_code ec;
    if (!dir.empty()) std::filesystem::create_directories(dir, ec);
    if (ec) {
      log_error("startup: create directory " + dir.string() + ": " + ec.message());
      return 1;
    }
  }
  make_database_private(cc.db_path);
  auto signer = Signer::load(signing_key);
  if (!signer) {
    log_error("startup: " + signer.error());
    return 1;
  }
  cc.keys.signing_key_online = signing_role == "online";
  if (!root_key.empty()) {
    auto pem = read_file_text(root_key, "--root-key");
    auto k = pem ? load_public_key_file(root_key, "--root-key") : Result<PkeyPtr>(pem.err());
    if (!k) {
      log_error("startup: " + k.error());
      return 1;
    }
    cc.keys.root_pub_pem = *pem;
  }
  for (const auto& path : release_pubs) {
    auto k = load_public_key_file(path, "--release-pub");
    if (!k) {
      log_error("startup: " + k.error());
      return 1;
    }
    cc.keys.release_pub_pems.push_back(*read_file_text(path, "--release-pub"));
  }
  if (token_file.empty()) token_file = cc.db_path + ".token";
  auto token = load_or_create_api_token(token_file);
  if (!token) {
    log_error("startup: " + token.error());
    return 1;
  }
  MqttClient mqtt(mc);
  auto ctl = Controller::create(cc, std::move(*signer), &mqtt);
  if (!ctl) {
    log_error("startup: " + ctl.error());
    return 1;
  }
  Controller& c = **ctl;
  mqtt.set_controller(&c);
  auto tokens = ApiTokens::open(cc.db_path, *token);
  if (!tokens) {
    log_error("startup: " + tokens.error());
    return 1;
  }
  HttpApi api(c, [&mqtt] { return mqtt.subscribed(); }, **tokens);
  auto port = api.start(hp->host, hp->port);
  if (!port) {
    log_error("startup: " + port.error());
    return 1;
  }
  std::string http_addr = (hp->host.find(':') != std::string::npos ? "[" + hp->host + "]" : hp->host) +
                          ":" + std::to_string(*port);
  log_info("http API listening on " + http_addr + " (bootstrap admin token in " + token_file +
           "); signing key id " + c.key_id());
  Status ms = mqtt.start();
  if (!ms) {
    log_error("startup: " + ms.error());
    api.stop();
    return 1;
  }

  bool ready_printed = false;
  long long last_tick = now_ms();
  int sig = 0;
  for (;;) {
    timespec ts{0, 100 * 1000 * 1000};
    sig = sigtimedwait(&sigs, nullptr, &ts);
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
  log_info(std::string("received ") + (sig == SIGTERM ? "SIGTERM" : "SIGINT") + ", shutting down");
  api.stop();
  mqtt.stop();
  mqtt.set_controller(nullptr);
  ctl->reset();  // flushes counters, closes the database
  log_info("stopped");
  return 0;
}
