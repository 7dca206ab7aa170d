// A simulator that scales (issue 15, item 4), against a real mosquitto from broker-config/ and
// the real ota-controller:
//  - one ota-devsim process keeps 600 devices connected at once (the controller sees every
//    one online) on two worker threads, started with a soft descriptor limit of 1024 that it
//    raises itself (select()-based loops cannot use descriptors past 1023);
//  - --count beyond what the hard descriptor limit allows is refused up front (exit 2);
//  - pki.sh devices names certificates NAME-%03d at any count (NAME-999, NAME-1000), the
//    rule ota-devsim uses to find them, and its certificates, keys and ACL sections are the
//    ones `pki.sh device` makes.
#include <sys/stat.h>

#include <fstream>
#include <regex>
#include <sstream>

#include "fleet_fixture.hpp"

namespace {

using namespace fleet_test;

// argv run by bash after `ulimit LIMITS` (e.g. "-Sn 1024"), exec'd so the pid stays the same.
std::vector<std::string> with_ulimit(const std::string& limits, const std::vector<std::string>& argv) {
  std::vector<std::string> out{"/bin/bash", "-c", "ulimit " + limits + " && exec \"$@\"", "bash"};
  out.insert(out.end(), argv.begin(), argv.end());
  return out;
}

// "Threads:" of /proc/PID/status, -1 if unreadable.
int thread_count(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("Threads:", 0) == 0) return std::atoi(line.c_str() + 8);
  }
  return -1;
}

class SimScale : public FleetTest {
 protected:
  std::vector<std::string> devsim_argv(int count, const std::string& name, const std::string& pki_dir) {
    return {OTA_DEVSIM_BIN, "--count", std::to_string(count), "--id-prefix", name, "--pki", pki_dir,
            "--data", dir_.path() + "/fleet", "--port", std::to_string(broker_port()), "--hw",
            "board-x", "--group", group_, "--no-fsync"};
  }
};

TEST_F(SimScale, OneProcessKeeps600DevicesConnectedOnTwoThreads) {
  constexpr int kDevices = 600;
  start_env("scale", kDevices, "scale");
  if (HasFatalFailure()) return;
  auto argv = devsim_argv(kDevices, "scale", pki_->dir);
  argv.insert(argv.end(), {"--threads", "2", "--connect-rate", "400"});
  // 600 devices need about 1,800 descriptors: more than the soft limit this starts with.
  fleets_.push_back(std::make_unique<Child>(with_ulimit("-Sn 1024", argv), dir_.path() + "/devsim.log"));
  ASSERT_GT(fleets_.back()->pid(), 0);
  ASSERT_TRUE(wait_until([&] { return online_count() == kDevices; }, 180s, 250ms))
      << online_count() << " of " << kDevices << " devices online";
  // Event loops, not a thread per device: main + 2 workers.
  EXPECT_LE(thread_count(fleets_.back()->pid()), 3);
  EXPECT_TRUE(fleets_.back()->alive());
  // Connected once, not in a reconnect storm: the broker accepted about one connection per
  // device (a few retries after a late CONNACK on a loaded machine are fine).
  const std::string broker_log = read_file(broker_->log_path());
  int accepted = 0;
  for (auto at = broker_log.find(" as scale-"); at != std::string::npos; at = broker_log.find(" as scale-", at + 1))
    ++accepted;
  EXPECT_GE(accepted, kDevices);
  EXPECT_LE(accepted, kDevices + kDevices / 20) << "connections accepted by the broker";
  // A clean stop of the whole process: every device says offline itself.
  fleets_.back()->signal(SIGTERM);
  int code = -1;
  ASSERT_TRUE(wait_until([&] { return fleets_.back()->exited(&code); }, 30s, 20ms));
  EXPECT_EQ(code, 0);
  EXPECT_TRUE(wait_until([&] { return online_count() == 0; }, 30s, 250ms)) << online_count();
}

TEST_F(SimScale, CountBeyondTheHardDescriptorLimitIsRefused) {
  TempDir empty_pki("simpki");
  group_ = "g";
  broker_port_ = ota::test::free_loopback_port();  // nothing listens: it never gets that far
  auto argv = devsim_argv(100, "lim", empty_pki.path());
  CommandResult r = ota::test::run_command(with_ulimit("-n 256", argv));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("--count 100 needs"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("hard RLIMIT_NOFILE is 256"), std::string::npos) << r.output;
  // Within the limit the count is accepted (and the missing certificate is what stops it).
  r = ota::test::run_command(with_ulimit("-n 256", devsim_argv(40, "lim", empty_pki.path())));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_EQ(r.output.find("RLIMIT_NOFILE"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("no certificate for lim-001"), std::string::npos) << r.output;
}

mode_t file_mode(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 ? (st.st_mode & 07777) : 0;
}

// `openssl x509 -text` of a certificate with what differs between any two certificates of one
// profile left out: serial, dates, key and signature bytes, key identifiers, the CN.
std::string profile_of(const std::string& cert, const std::string& cn) {
  CommandResult r = ota::test::run_command({"openssl", "x509", "-in", cert, "-noout", "-text",
                                            "-nameopt", "show_type"});
  std::istringstream in(r.output);
  std::string line, out;
  const std::regex bytes(R"(^\s*([0-9a-fA-F]{2}:)+([0-9a-fA-F]{2})?$)");
  bool serial_next = false;
  while (std::getline(in, line)) {
    if (serial_next || std::regex_match(line, bytes) || line.find("Not Before") != std::string::npos ||
        line.find("Not After") != std::string::npos) {
      serial_next = false;
      continue;
    }
    if (line.find("Serial Number:") != std::string::npos) {
      serial_next = line.find("Serial Number:") + 14 == line.size();  // value on the next line
      continue;
    }
    const auto at = line.find(cn);
    if (at != std::string::npos) line.replace(at, cn.size(), "<CN>");
    out += line + "\n";
  }
  return out;
}

TEST_F(SimScale, PkiNamesDevicesPast999AsTheSimulatorFindsThem) {
  Pki pki = ota::test::make_pki(dir_.path() + "/pki", {{"solo", {}}});
  const auto t0 = std::chrono::steady_clock::now();
  pki.add_devices(1001, "big", {"g"});
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::fprintf(stderr, "pki.sh devices: 1001 certificates in %.2f s\n", seconds);
  for (const char* id : {"big-001", "big-099", "big-999", "big-1000", "big-1001"}) {
    EXPECT_TRUE(pki.has_device(id)) << id;
    EXPECT_EQ(file_mode(pki.device_key(id)), 0600u) << id;
    EXPECT_EQ(file_mode(pki.device_cert(id)), 0644u) << id;
  }
  EXPECT_FALSE(pki.has_device("big-0001"));
  EXPECT_FALSE(pki.has_device("big-1002"));

  // Same profile, issuer, key type and encoding as a certificate of `pki.sh device`.
  const std::string reference = profile_of(pki.device_cert("solo"), "solo");
  ASSERT_NE(reference.find("TLS Web Client Authentication"), std::string::npos) << reference;
  EXPECT_EQ(profile_of(pki.device_cert("big-1000"), "big-1000"), reference);
  CommandResult v = ota::test::run_command({"openssl", "verify", "-CAfile", pki.ca_cert(), "-purpose",
                                            "sslclient", pki.device_cert("big-1000")});
  EXPECT_EQ(v.exit_code, 0) << v.output;
  const std::string key = read_file(pki.device_key("big-1000"));
  EXPECT_EQ(key.rfind("-----BEGIN PRIVATE KEY-----", 0), 0u);
  EXPECT_EQ(read_file(pki.device_key("solo")).rfind("-----BEGIN PRIVATE KEY-----", 0), 0u);
  CommandResult match = ota::test::run_command(
      {"bash", "-c", "cmp <(openssl pkey -in \"$1\" -pubout) <(openssl x509 -in \"$2\" -noout -pubkey)",
       "bash", pki.device_key("big-1000"), pki.device_cert("big-1000")});
  EXPECT_EQ(match.exit_code, 0) << "key and certificate do not match: " << match.output;

  // One ACL section per device with its group line, as `pki.sh device ID --group g` writes it.
  const std::string acl = read_file(pki.acl_path());
  EXPECT_NE(acl.find("\n# device big-1000: group offers\nuser big-1000\ntopic read ota/v1/grp/g/offer\n"),
            std::string::npos);
  EXPECT_EQ(acl.find("user big-0001"), std::string::npos);
  EXPECT_EQ(file_mode(pki.acl_path()), 0644u);

  // ota-devsim looks for the same names: with big-1001's certificate gone it names that one.
  ASSERT_EQ(::unlink(pki.device_cert("big-1001").c_str()), 0);
  group_ = "g";
  broker_port_ = ota::test::free_loopback_port();
  CommandResult r = ota::test::run_command(devsim_argv(1001, "big", pki.dir));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("no certificate for big-1001"), std::string::npos) << r.output;
}

TEST_F(SimScale, PkiDevicesAgainAddsOnlyMissingAclLines) {
  Pki pki = ota::test::make_pki(dir_.path() + "/pki", {});
  pki.add_devices(3, "few", {"g"});
  pki.add_device("few-002", {"h"});            // one section already has h
  pki.add_devices(4, "few", {"g", "h"});        // few-004 is new, the others lack lines
  const std::string acl = read_file(pki.acl_path());
  // Per group its offer line and its broadcast image line (PROTOCOL.md 17); a line added to
  // an existing section goes right after its "user" line.
  const std::string old_section = "topic read ota/v1/grp/h/img/+/chunk\ntopic read ota/v1/grp/h/offer\n"
                                  "topic read ota/v1/grp/g/offer\ntopic read ota/v1/grp/g/img/+/chunk\n";
  const std::string want =
      "\n# device few-001: group offers\nuser few-001\n" + old_section +
      "\n# device few-002: group offers\nuser few-002\n" + old_section +
      "\n# device few-003: group offers\nuser few-003\n" + old_section +
      "\n# device few-004: group offers\nuser few-004\ntopic read ota/v1/grp/g/offer\n"
      "topic read ota/v1/grp/g/img/+/chunk\ntopic read ota/v1/grp/h/offer\n"
      "topic read ota/v1/grp/h/img/+/chunk\n";
  ASSERT_GE(acl.size(), want.size());
  EXPECT_EQ(acl.substr(acl.size() - want.size()), want) << acl;
  EXPECT_TRUE(pki.has_device("few-004"));
}

}  // namespace
