// The simulated boot loader's table (sim_boot.hpp) and the boot.state text of the Linux
// flashes (boot_state_file.hpp). The boot behaviour itself is tested through the flashes
// (agent_test, agent_power_test, agent_linux_test, bundle_test).
#include <gtest/gtest.h>

#include <set>
#include <utility>

#include "ota/agent/linux/boot_state_file.hpp"
#include "ota/agent/sim_boot.hpp"

namespace ota::agent {
namespace {

using sim_boot::Action;
using sim_boot::BootLoader;
using sim_boot::Event;

TEST(SimBoot, EveryStateAndEventHasAtMostOneRow) {
  std::set<std::pair<int, int>> seen;
  for (const auto& t : BootLoader::kTransitions) {
    EXPECT_TRUE(seen.insert({static_cast<int>(t.from), static_cast<int>(t.event)}).second)
        << "state " << static_cast<int>(t.from) << " event " << static_cast<int>(t.event);
  }
}

TEST(SimBoot, ConfirmAndRejectCountOnlyFromTheRunningTrialImage) {
  BootLoader boot;
  boot.factory("1.0.0");
  EXPECT_EQ(boot.power_on(), Action::boot_confirmed);
  EXPECT_EQ(boot.confirm(), Action::none);
  EXPECT_EQ(boot.activate_trial(2, 3), Action::arm_trial);
  EXPECT_EQ(boot.confirm(), Action::none);  // armed, not running: proved nothing
  EXPECT_EQ(boot.reject(), Action::none);
  EXPECT_EQ(boot.power_on(), Action::boot_trial);
  EXPECT_EQ(boot.power_on(), Action::boot_trial);  // second of two trial boots
  EXPECT_EQ(boot.power_on(), Action::revert);
  EXPECT_EQ(boot.running(), 'a');
  EXPECT_TRUE(boot.record().rolled_back);
  EXPECT_EQ(boot.record().counter, 0u);
}

TEST(BootStateFile, RoundTripsBothLayouts) {
  linux_port::BootStateFile f;
  f.record.active = 'b';
  f.record.pending = 'a';
  f.record.trial_boots = 2;
  f.record.max_trial_boots = 3;
  f.record.writing = 'a';
  f.record.counter = 7;
  f.record.version_b.assign("1.2.3");
  f.record.sha256_b.assign(std::string(64, 'e').c_str());
  for (const bool bundle : {false, true}) {
    f.bundle = bundle;
    f.writing_image = bundle ? std::string(64, 'c') : std::string();
    linux_port::BootStateFile back;
    ASSERT_TRUE(linux_port::parse_boot_state(linux_port::format_boot_state(f), back));
    EXPECT_EQ(linux_port::format_boot_state(back), linux_port::format_boot_state(f));
  }
}

TEST(BootStateFile, OlderFilesLoadAndGarbageIsRefused) {
  linux_port::BootStateFile f;
  // A BundleFlash file from before the per-tree SHA-256 was kept.
  ASSERT_TRUE(linux_port::parse_boot_state(
      "kind=bundle\nactive=a\npending=\ntrial_boots=0\nmax_trial_boots=1\nrejected=0\n"
      "rolled_back=0\nwriting=\nwriting_image=\nversion_a=1.0.0\nversion_b=\ncounter=4\n"
      "pending_counter=4\n",
      f));
  EXPECT_TRUE(f.bundle);
  EXPECT_EQ(f.record.counter, 4u);
  EXPECT_TRUE(f.record.sha256_a.empty());
  EXPECT_FALSE(linux_port::parse_boot_state("active=a\ncounter=x\n", f));
  EXPECT_FALSE(linux_port::parse_boot_state("active=c\n", f));
  EXPECT_FALSE(linux_port::parse_boot_state("active=a\nversion_a=" + std::string(40, '1'), f));
}

}  // namespace
}  // namespace ota::agent
