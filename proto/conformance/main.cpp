// ota-conformance: checks a device (an agent port, or an agent written from PROTOCOL.md)
// against proto/PROTOCOL.md by playing the controller toward it. proto/conformance/README.md.
#include <fnmatch.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <iostream>
#include <sstream>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "ota/cli_config.hpp"

#include "kit.hpp"

namespace {

using ota::conformance::CaseReport;
using ota::conformance::CaseSpec;
using ota::conformance::Verdict;

constexpr const char* kContract = R"(
Device command contract (--device-cmd CMD):
  The kit runs `/bin/sh -c CMD` in a process group of its own and appends its output to the
  device log (--device-log, default WORK/device.log). Every {state} in CMD is replaced by a
  state directory (also in $OTA_CONFORMANCE_STATE) where the device keeps everything it
  persists: flash slots, state record, sequence counter. The device must connect to the same
  broker with the certificate of --device-id, trust the release key of --signing-key and
  reboot into a new image by itself (ota-agent and ota-devsim do so in-process).
    fresh start: SIGTERM to the group, a new empty state directory, start (factory state)
    power cut:   SIGKILL to the group, start again with the same directory
  Examples:
    --device-cmd 'ota-agent --device-id dut-1 --hw board-x --data {state} --port 8883
                  --ca pki/ca.crt --cert pki/devices/dut-1.crt --key pki/devices/dut-1.key
                  --trusted-key pki/release.pub --request-timeout-ms 300'
    --device-cmd 'ota-devsim --count 1 --id-prefix dut --pki pki --data {state} --port 8883
                  --request-timeout-ms 300'          (device id dut-001)
  A real board: --reset-cmd CMD is run with $OTA_CONFORMANCE_RESET=power-cut (cut the power,
  keep the flash) or fresh (erase the agent's record and update state, power on); or
  --prompt-reset asks on the terminal. Without any of them the cases that need a restart are
  reported SKIP. resume.disconnect needs the device's own certificate (--dut-cert, --dut-key):
  the kit connects with it, which makes the broker drop the device's connection.

Exit status: 0 every case passed or was skipped, 1 a case failed, 2 bad usage or no device.
)";

std::vector<std::string> split(const std::string& list) {
  std::vector<std::string> out;
  std::stringstream in(list);
  std::string item;
  while (std::getline(in, item, ',')) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

bool selected(const CaseSpec& c, const std::vector<std::string>& patterns) {
  if (patterns.empty()) return true;
  for (const auto& p : patterns) {
    if (fnmatch(p.c_str(), c.id, 0) == 0) return true;
  }
  return false;
}

// Characters, not bytes: the clauses carry "§" (two bytes of UTF-8).
std::size_t display_width(const std::string& s) {
  std::size_t n = 0;
  for (unsigned char c : s) n += (c & 0xc0) != 0x80 ? 1 : 0;
  return n;
}

std::string padded(const std::string& s, std::size_t width) {
  const std::size_t w = display_width(s);
  return w >= width ? s : s + std::string(width - w, ' ');
}

void print_table(const std::vector<CaseReport>& reports) {
  std::size_t id_w = 4, clause_w = 6;
  for (const auto& r : reports) {
    id_w = std::max(id_w, display_width(r.spec->id));
    clause_w = std::max(clause_w, display_width(r.spec->clause));
  }
  std::printf("%s  %s  %-6s %6s  %s\n", padded("CASE", id_w).c_str(),
              padded("CLAUSE", clause_w).c_str(), "RESULT", "TIME", "DETAIL");
  for (const auto& r : reports) {
    std::printf("%s  %s  %-6s %5.1fs  %s\n", padded(r.spec->id, id_w).c_str(),
                padded(r.spec->clause, clause_w).c_str(), verdict_name(r.verdict), r.seconds,
                r.detail.empty() ? r.spec->title : r.detail.c_str());
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ota-conformance: checks one device against proto/PROTOCOL.md by playing the "
               "controller toward it (a scripted controller: signed offers, chunks with "
               "injected faults, cancels, restarts)"};
  app.footer(kContract);
  ota::conformance::KitOptions o;
  std::string cases, work_dir;
  bool json = false, list = false, keep = false, no_clock = false;
  app.add_option("--device-id", o.device_id, "the device under test (its certificate's CN)");
  app.add_option("--broker-host", o.broker.host, "MQTT broker host")->capture_default_str();
  app.add_option("--broker-port", o.broker.port, "MQTT broker TLS port")->capture_default_str()
      ->check(CLI::Range(1, 65535));
  app.add_option("--ca", o.broker.ca, "CA certificate (PEM) of the broker")->check(CLI::ExistingFile);
  app.add_option("--cert", o.broker.cert, "controller client certificate (PEM, CN=ota-controller)")
      ->check(CLI::ExistingFile);
  app.add_option("--key", o.broker.key, "controller client key (PEM)")->check(CLI::ExistingFile);
  app.add_option("--signing-key", o.signing_key,
                 "release key (PEM, EC P-256) the device trusts: the kit signs its offers with it")
      ->check(CLI::ExistingFile);
  app.add_option("--prefix", o.prefix, "MQTT topic prefix")->capture_default_str();
  app.add_option("--device-cmd", o.control.device_cmd,
                 "start the device with this shell command ({state}: its state directory; see "
                 "below)");
  app.add_option("--reset-cmd", o.control.reset_cmd,
                 "a real board: run this to power-cycle it ($OTA_CONFORMANCE_RESET=power-cut|fresh)");
  app.add_flag("--prompt-reset", o.control.prompt, "a real board: ask on the terminal to reset it");
  app.add_option("--device-log", o.control.device_log, "output of --device-cmd (default WORK/device.log)");
  app.add_option("--work-dir", work_dir, "state directories and the device log (default: a new "
                 "directory under /tmp, removed at exit unless --keep-work-dir or a case failed)");
  app.add_flag("--keep-work-dir", keep, "keep the work directory");
  app.add_option("--dut-cert", o.dut_cert, "the device's certificate (resume.disconnect)")
      ->check(CLI::ExistingFile);
  app.add_option("--dut-key", o.dut_key, "the device's key (resume.disconnect)")
      ->check(CLI::ExistingFile);
  app.add_option("--dut-kind", o.dut_kind, "what the device installs: firmware or bundle")
      ->capture_default_str()->check(CLI::IsMember({"firmware", "bundle"}));
  app.add_flag("--dut-no-clock", no_clock, "the device has no wall clock (offer.expired is skipped)");
  app.add_option("--case", cases, "run only these cases: comma-separated ids or globs (offer.*)");
  app.add_flag("--list", list, "list the cases and exit");
  app.add_flag("--json", json, "print the results as JSON");
  app.add_option("--case-timeout", o.case_timeout_s,
                 "seconds a case may take; a device silent for that long fails it")
      ->capture_default_str()->check(CLI::Range(1, 3600));
  app.add_option("--quiet-ms", o.quiet_ms,
                 "how long the kit watches for an answer that must not come")
      ->capture_default_str()->check(CLI::Range(50, 60000));
  app.add_option("--image-size", o.image_size, "bytes of the test images")->capture_default_str()
      ->check(CLI::Range(1u, 64u << 20));
  app.add_option("--chunk-size", o.chunk_size, "chunk size of the test images")->capture_default_str()
      ->check(CLI::Range(256u, 65536u));
  // Its own variable prefix: OTA_CA, OTA_KEY... belong to the daemons (and the device command
  // inherits the kit's environment).
  bool print_config = false;
  ota::cli::add_config_sources(app, print_config, "OTA_CONFORMANCE_");
  CLI11_PARSE(app, argc, argv);
  if (print_config) {
    ota::cli::print_config(app);
    return 0;
  }
  o.dut_has_clock = !no_clock;
  const auto patterns = split(cases);
  std::vector<const CaseSpec*> chosen;
  for (const auto& c : ota::conformance::case_table()) {
    if (selected(c, patterns)) chosen.push_back(&c);
  }
  if (list) {
    for (const auto* c : chosen) std::printf("%-28s %-32s %s\n", c->id, c->clause, c->title);
    return 0;
  }
  if (chosen.empty()) {
    std::fprintf(stderr, "ota-conformance: --case '%s' matches no case (--list shows them)\n",
                 cases.c_str());
    return 2;
  }
  for (const auto& [value, name] :
       {std::pair{o.device_id, "--device-id"}, {o.broker.ca, "--ca"}, {o.broker.cert, "--cert"},
        {o.broker.key, "--key"}, {o.signing_key, "--signing-key"}}) {
    if (value.empty()) {
      std::fprintf(stderr, "ota-conformance: %s is required\n", name);
      return 2;
    }
  }
  if (o.image_size < 4u * o.chunk_size) {
    std::fprintf(stderr, "ota-conformance: --image-size %u must be at least 4 chunks (--chunk-size %u)\n",
                 o.image_size, o.chunk_size);
    return 2;
  }
  if (!o.control.device_cmd.empty() && !o.control.reset_cmd.empty()) {
    std::fprintf(stderr, "ota-conformance: --device-cmd and --reset-cmd exclude each other\n");
    return 2;
  }
  bool own_work_dir = false;
  if (work_dir.empty()) {
    char tmpl[] = "/tmp/ota-conformance-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) {
      std::perror("ota-conformance: mkdtemp");
      return 2;
    }
    work_dir = tmpl;
    own_work_dir = true;
  } else {
    std::error_code ec;
    std::filesystem::create_directories(work_dir, ec);
    if (ec) {
      std::fprintf(stderr, "ota-conformance: --work-dir %s: %s\n", work_dir.c_str(),
                   ec.message().c_str());
      return 2;
    }
  }
  o.control.work_dir = work_dir;
  o.broker.client_id = "ota-conformance";

  std::vector<CaseReport> reports;
  int failed = 0, skipped = 0;
  {
    ota::conformance::Kit kit(o);
    std::string error;
    if (!kit.open(error)) {
      std::fprintf(stderr, "ota-conformance: %s\n", error.c_str());
      // The device's log stays for a look; an empty work directory does not.
      if (own_work_dir && o.control.device_cmd.empty()) {
        std::error_code ec;
        std::filesystem::remove_all(work_dir, ec);
      }
      return 2;
    }
    const auto& dut = kit.dut().hello;
    if (!json) {
      std::printf("device %s: hw %s, version %s, counter %u, %llu bytes free\n", o.device_id.c_str(),
                  dut.hw.c_str(), dut.version.c_str(), dut.counter,
                  static_cast<unsigned long long>(dut.free));
      std::fflush(stdout);
    }
    for (const auto* c : chosen) {
      CaseReport r = kit.run_case(*c);
      failed += r.verdict == Verdict::fail ? 1 : 0;
      skipped += r.verdict == Verdict::skip ? 1 : 0;
      if (!json) {
        std::fprintf(stderr, "%s %s %s\n", verdict_name(r.verdict), c->id, r.detail.c_str());
      }
      reports.push_back(std::move(r));
    }
  }
  // Before the report: a JSON report on stdout must not be split by this note on stderr.
  if (own_work_dir && !keep && failed == 0) {
    std::error_code ec;
    std::filesystem::remove_all(work_dir, ec);
  } else if (failed > 0 || keep) {
    std::fprintf(stderr, "ota-conformance: work directory (device log, states): %s\n", work_dir.c_str());
  }
  const int total = static_cast<int>(reports.size());
  double seconds = 0;
  for (const auto& r : reports) seconds += r.seconds;
  if (json) {
    nlohmann::json out;
    out["device"] = o.device_id;
    out["passed"] = total - failed - skipped;
    out["failed"] = failed;
    out["skipped"] = skipped;
    out["seconds"] = seconds;
    out["cases"] = nlohmann::json::array();
    for (const auto& r : reports) {
      out["cases"].push_back({{"id", r.spec->id}, {"title", r.spec->title},
                              {"clause", r.spec->clause}, {"result", verdict_name(r.verdict)},
                              {"detail", r.detail}, {"seconds", r.seconds}});
    }
    std::printf("%s\n", out.dump(2).c_str());
  } else {
    print_table(reports);
    std::printf("%d cases: %d passed, %d failed, %d skipped (%.1f s)\n", total,
                total - failed - skipped, failed, skipped, seconds);
  }
  return failed == 0 ? 0 : 1;
}
