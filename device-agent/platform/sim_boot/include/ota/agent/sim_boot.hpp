// The simulated boot loader: which slot of an A/B flash runs after power-on, written once for
// every flash that simulates one (linux_port::FileFlash and BundleFlash, the unit tests'
// FakeFlash, the Cortex-M test flash). It owns the boot record, what a real boot loader keeps
// next to the images (MCUboot's image trailers, U-Boot's bootcount environment), and the
// rules that change it: one table, kTransitions (state x event -> action), in the manner of
// MCUboot's swap tables. It owns no storage: the owner persists the record after every step
// that changes it (a boot.state file, RAM) and may refuse a step before it is taken (a
// simulated power cut). Firmware-safe: no heap, no exceptions, no OS calls.
#pragma once

#include <cstdint>

#include "ota/agent/ports.hpp"
#include "ota/proto/messages.hpp"

namespace ota::agent::sim_boot {

// What the boot loader keeps across power cycles. Slots are 'a' and 'b', 0 for none.
struct Record {
  char active = 'a';                  // the confirmed slot
  char pending = 0;                   // the slot activated on trial
  std::uint32_t trial_boots = 0;      // boots of the pending slot so far
  std::uint32_t max_trial_boots = 1;  // boots it gets before the boot loader reverts
  bool rejected = false;              // it failed its self-test: the next boot reverts
  bool rolled_back = false;           // the last trial reverted (reported until the next update)
  char writing = 0;                   // the slot holding a partial image
  std::uint32_t counter = 0;          // highest security counter confirmed on the device
  std::uint32_t pending_counter = 0;  // the trial image's; confirm() raises counter to it
  // Per slot, from the verified manifest the image was written from: lets the agent tell a
  // same-version image with other bytes from the running one (PROTOCOL.md section 7, check 8).
  // Empty when unknown (the factory image, a record from before the hash was kept).
  proto::Version version_a, version_b;
  proto::Sha256Hex sha256_a, sha256_b;
};

// The record as the boot loader's decisions see it.
enum class State : std::uint8_t {
  settled,      // no trial image: the confirmed slot boots
  armed,        // a trial image waits for its first boot while another slot runs
  armed_spent,  // a waiting trial image without boots left (only a record of an older layout)
  on_trial,     // the trial image runs and has boots left: a reset boots it again
  trial_spent,  // the trial image runs, used its last boot or was rejected: a reset reverts
};

enum class Event : std::uint8_t { power_on, activate_trial, reject, confirm };

enum class Action : std::uint8_t {
  none,            // nothing changes (a confirm or reject while the trial image is not running)
  boot_confirmed,  // run the confirmed slot
  boot_trial,      // run the trial slot, counting one more trial boot
  revert,          // drop the trial image and run the confirmed slot, reported as rolled back
  arm_trial,       // the finished inactive slot boots next, on trial
  mark_rejected,   // the next boot reverts
  make_permanent,  // the trial image becomes the confirmed one; its counter is stored
};

class BootLoader {
 public:
  struct Transition {
    State from;
    Event event;
    Action action;
  };
  // The boot loader's rules. A trial image gets max_trial_boots boots (U-Boot bootlimit; 1 is
  // MCUboot's test swap and ESP-IDF's app rollback); booted again after the last one without
  // confirm(), or after reject(), it is dropped and the confirmed slot runs. confirm() and
  // reject() count only from the trial image itself: an image that has not run has proved
  // nothing. activate_trial() re-arms from any state, the owner having checked the slot holds a
  // finished image. Every (state, event) pair not listed is Action::none.
  // clang-format off
  static constexpr Transition kTransitions[] = {
      // from              event                  action
      {State::settled,     Event::power_on,       Action::boot_confirmed},
      {State::settled,     Event::activate_trial, Action::arm_trial},
      {State::armed,       Event::power_on,       Action::boot_trial},
      {State::armed,       Event::activate_trial, Action::arm_trial},
      {State::armed_spent, Event::power_on,       Action::revert},
      {State::armed_spent, Event::activate_trial, Action::arm_trial},
      {State::on_trial,    Event::power_on,       Action::boot_trial},
      {State::on_trial,    Event::activate_trial, Action::arm_trial},
      {State::on_trial,    Event::reject,         Action::mark_rejected},
      {State::on_trial,    Event::confirm,        Action::make_permanent},
      {State::trial_spent, Event::power_on,       Action::revert},
      {State::trial_spent, Event::activate_trial, Action::arm_trial},
      {State::trial_spent, Event::reject,         Action::mark_rejected},
      {State::trial_spent, Event::confirm,        Action::make_permanent},
  };
  // clang-format on

  // Factory-fresh: slot a holds `version`, confirmed (and is what runs).
  void factory(const char* version);

  // The owner loads the record into this and persists it after a step that changed it.
  Record& record() { return record_; }
  const Record& record() const { return record_; }
  char running() const { return running_; }
  char inactive() const { return other(running_); }  // the slot updates are written to
  State state() const;

  // What `event` would do now, without doing it: for an owner that must check first.
  Action next(Event event) const;
  // Each takes its event and returns the action taken; changes_record() says whether the
  // owner has to persist the record.
  Action power_on();
  Action activate_trial(std::uint32_t max_boots, std::uint32_t counter);  // max_boots 0 is 1
  Action reject();
  Action confirm();
  static bool changes_record(Action action) {
    return action != Action::none && action != Action::boot_confirmed;
  }

  // Writing the inactive slot: not a boot decision, but it changes the same record.
  void start_writing(char slot);  // the slot stops being a fallback the moment it is overwritten
  void finish_writing(char slot, const proto::Manifest& manifest);
  void abandon_writing(char slot);
  // Only a finished image may become bootable: activate_trial()'s precondition.
  bool holds_finished(char slot, const proto::Version& version) const;

  proto::Version& version_of(char slot) {
    return slot == 'b' ? record_.version_b : record_.version_a;
  }
  const proto::Version& version_of(char slot) const {
    return slot == 'b' ? record_.version_b : record_.version_a;
  }
  proto::Sha256Hex& sha256_of(char slot) {
    return slot == 'b' ? record_.sha256_b : record_.sha256_a;
  }
  const proto::Sha256Hex& sha256_of(char slot) const {
    return slot == 'b' ? record_.sha256_b : record_.sha256_a;
  }
  // Fills what the boot loader knows of ImageState; free_bytes and kind are the owner's.
  void report(ImageState& out) const;

  static char other(char slot) { return slot == 'a' ? 'b' : 'a'; }

 private:
  void apply(Action action, std::uint32_t max_boots, std::uint32_t counter);

  Record record_;
  char running_ = 'a';  // the slot power_on() chose
};

}  // namespace ota::agent::sim_boot
