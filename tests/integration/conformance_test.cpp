// The conformance kit (ota-conformance, proto/conformance/) on a real mosquitto from
// broker-config/: it starts the device under test itself (--device-cmd) and runs every case.
//  - ota-agent and one ota-devsim device pass every case (none failed, none skipped);
//  - an ota-devsim device broken on purpose (--conformance-fault skip-signature-check,
//    ignore-cancel,ignore-broadcast) fails exactly the cases those faults break, and the
//    kit exits 1.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "test_env.hpp"

namespace {

using json = nlohmann::json;
using ota::test::Broker;
using ota::test::Pki;
using ota::test::TempDir;

const std::string kAgentId = "conf-agent";
const std::string kSimPrefix = "conf";  // ota-devsim --count 1 --id-prefix conf: conf-001
const std::string kSimId = "conf-001";

struct KitRun {
  int exit_code = -1;
  json report;  // --json output
  std::string output;
  std::string device_log;
  std::set<std::string> with_result(const std::string& result) const {
    std::set<std::string> ids;
    for (const auto& c : report.value("cases", json::array())) {
      if (c.value("result", "") == result) ids.insert(c.value("id", ""));
    }
    return ids;
  }
};

class ConformanceKit : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    pki_ = &ota::test::shared_pki({{kAgentId, {"lab"}}, {kSimId, {"lab"}}});
  }
  void SetUp() override { broker_ = std::make_unique<Broker>(*pki_); }

  // Runs the kit against the device `device_id` started with `device_cmd`.
  KitRun run_kit(const std::string& device_id, const std::string& device_cmd,
                 int case_timeout_s = 8) {
    const std::vector<std::string> argv = {
        OTA_CONFORMANCE_BIN, "--device-id", device_id, "--broker-port",
        std::to_string(broker_->port()), "--ca", pki_->ca_cert(), "--cert",
        pki_->controller_cert(), "--key", pki_->controller_key(), "--signing-key",
        pki_->release_key(), "--dut-cert", pki_->device_cert(device_id), "--dut-key",
        pki_->device_key(device_id), "--work-dir", work_.path(), "--case-timeout",
        std::to_string(case_timeout_s), "--quiet-ms", "300", "--json", "--device-cmd", device_cmd};
    KitRun run;
    const auto result = ota::test::run_command(argv);
    run.exit_code = result.exit_code;
    run.output = result.output;
    // The device's own output (under ASan/UBSan in CI: its reports land there).
    run.device_log = ota::test::read_file(work_.path() + "/device.log");
    // The JSON report, between the kit's other lines (stderr: where it left the work dir).
    const auto start = result.output.find("{\n");
    const auto end = result.output.rfind("\n}");
    if (start != std::string::npos && end != std::string::npos && end > start) {
      run.report = json::parse(result.output.substr(start, end + 2 - start), nullptr, false);
    }
    return run;
  }

  std::string agent_cmd() const {
    return std::string(OTA_AGENT_BIN) + " --device-id " + kAgentId +
           " --hw conf-board --group lab --data {state} --port " +
           std::to_string(broker_->port()) + " --ca " + pki_->ca_cert() + " --cert " +
           pki_->device_cert(kAgentId) + " --key " + pki_->device_key(kAgentId) +
           " --trusted-key " + pki_->release_pub() + " --request-timeout-ms 300 --heartbeat-ms 0";
  }
  std::string devsim_cmd(const std::string& extra = "") const {
    return std::string(OTA_DEVSIM_BIN) + " --count 1 --id-prefix " + kSimPrefix + " --pki " +
           pki_->dir + " --data {state} --port " + std::to_string(broker_->port()) +
           " --group lab --request-timeout-ms 300 --heartbeat-ms 0 --no-fsync " + extra;
  }

  static const Pki* pki_;
  std::unique_ptr<Broker> broker_;
  TempDir work_{"conformance"};
};
const Pki* ConformanceKit::pki_ = nullptr;

// Every case of the table, from --list.
std::set<std::string> all_cases() {
  const auto listed = ota::test::run_command({OTA_CONFORMANCE_BIN, "--list"});
  std::set<std::string> ids;
  std::size_t pos = 0;
  while (pos < listed.output.size()) {
    const auto end = listed.output.find('\n', pos);
    const std::string line = listed.output.substr(pos, end - pos);
    if (!line.empty()) ids.insert(line.substr(0, line.find(' ')));
    if (end == std::string::npos) break;
    pos = end + 1;
  }
  return ids;
}

// Sanitizer reports of the device programs the kit started.
void expect_clean_device_log(const KitRun& run) {
  for (const char* marker : {"Sanitizer", "runtime error"}) {
    EXPECT_EQ(run.device_log.find(marker), std::string::npos) << run.device_log;
  }
}

void expect_all_pass(const KitRun& run) {
  expect_clean_device_log(run);
  ASSERT_TRUE(run.report.is_object()) << run.output;
  EXPECT_EQ(run.exit_code, 0) << run.output;
  EXPECT_EQ(run.with_result("PASS"), all_cases()) << run.report.dump(2);
  EXPECT_TRUE(run.with_result("FAIL").empty()) << run.report.dump(2);
  EXPECT_TRUE(run.with_result("SKIP").empty()) << run.report.dump(2);
}

TEST_F(ConformanceKit, AgentPassesEveryCase) {
  const KitRun run = run_kit(kAgentId, agent_cmd());
  expect_all_pass(run);
  std::printf("ota-agent: %zu cases in %.1f s\n", run.with_result("PASS").size(),
              run.report.value("seconds", 0.0));
}

TEST_F(ConformanceKit, DevsimPassesEveryCase) {
  const KitRun run = run_kit(kSimId, devsim_cmd());
  expect_all_pass(run);
  // The log checked for sanitizer reports is the device's (it started once per fresh state).
  EXPECT_NE(run.device_log.find("ota-devsim running 1 devices"), std::string::npos);
  std::printf("ota-devsim: %zu cases in %.1f s\n", run.with_result("PASS").size(),
              run.report.value("seconds", 0.0));
}

// A device that accepts any signature, ignores cancels and never takes a broadcast frame:
// the kit must name exactly the cases these three faults break (and no other), and exit 1.
TEST_F(ConformanceKit, BrokenDeviceFailsExactlyTheCasesItBreaks) {
  const KitRun run = run_kit(
      kSimId, devsim_cmd("--conformance-fault skip-signature-check,ignore-cancel,ignore-broadcast"), 4);
  ASSERT_TRUE(run.report.is_object()) << run.output;
  expect_clean_device_log(run);
  EXPECT_EQ(run.exit_code, 1) << run.output;
  const std::set<std::string> broken = {
      "offer.bad_signature",         // accepts an offer whose signature does not verify
      "offer.unsigned_unsupported",  // answers `unsupported` to an unsigned offer
      "cancel.offered",              // never answers the cancel...
      "cancel.downloading",          // ...whenever it comes
      "broadcast.download",          // asks with bc, gets nothing, falls back to unicast
  };
  EXPECT_EQ(run.with_result("FAIL"), broken) << run.report.dump(2);
  std::set<std::string> rest = all_cases();
  for (const auto& id : broken) rest.erase(id);
  EXPECT_EQ(run.with_result("PASS"), rest) << run.report.dump(2);
  for (const auto& c : run.report["cases"]) {
    if (c["id"] == "offer.bad_signature") {
      EXPECT_NE(c["detail"].get<std::string>().find("expected decline bad_signature"),
                std::string::npos)
          << c.dump();
    }
    if (c["id"] == "broadcast.download") {
      EXPECT_NE(c["detail"].get<std::string>().find("fell back to unicast"), std::string::npos)
          << c.dump();
    }
  }
}

}  // namespace
