#include "ota/agent/sim_boot.hpp"

namespace ota::agent::sim_boot {

void BootLoader::factory(const char* version) {
  record_ = Record{};
  record_.version_a.assign(version);
  running_ = 'a';
}

State BootLoader::state() const {
  if (record_.pending == 0) return State::settled;
  const bool boots_left = !record_.rejected && record_.trial_boots < record_.max_trial_boots;
  if (running_ != record_.pending) return boots_left ? State::armed : State::armed_spent;
  return boots_left ? State::on_trial : State::trial_spent;
}

Action BootLoader::next(Event event) const {
  const State from = state();
  for (const Transition& t : kTransitions) {
    if (t.from == from && t.event == event) return t.action;
  }
  return Action::none;
}

void BootLoader::apply(Action action, std::uint32_t max_boots, std::uint32_t counter) {
  Record& r = record_;
  switch (action) {
    case Action::none:
      break;
    case Action::boot_confirmed:
      running_ = r.active;
      break;
    case Action::boot_trial:
      ++r.trial_boots;
      r.rolled_back = false;
      running_ = r.pending;
      break;
    case Action::revert:
      r.pending = 0;
      r.trial_boots = 0;
      r.rejected = false;
      r.rolled_back = true;
      running_ = r.active;
      break;
    case Action::arm_trial:
      r.pending = inactive();
      r.trial_boots = 0;
      r.max_trial_boots = max_boots == 0 ? 1 : max_boots;
      r.rejected = false;
      r.pending_counter = counter;
      break;
    case Action::mark_rejected:
      r.rejected = true;
      break;
    case Action::make_permanent:
      r.active = r.pending;
      r.pending = 0;
      r.trial_boots = 0;
      r.rejected = false;
      r.rolled_back = false;
      if (r.pending_counter > r.counter) r.counter = r.pending_counter;
      break;
  }
}

Action BootLoader::power_on() {
  const Action a = next(Event::power_on);
  apply(a, 0, 0);
  return a;
}

Action BootLoader::activate_trial(std::uint32_t max_boots, std::uint32_t counter) {
  const Action a = next(Event::activate_trial);
  apply(a, max_boots, counter);
  return a;
}

Action BootLoader::reject() {
  const Action a = next(Event::reject);
  apply(a, 0, 0);
  return a;
}

Action BootLoader::confirm() {
  const Action a = next(Event::confirm);
  apply(a, 0, 0);
  return a;
}

void BootLoader::start_writing(char slot) {
  record_.writing = slot;
  version_of(slot) = proto::Version{};
  sha256_of(slot) = proto::Sha256Hex{};
  record_.rolled_back = false;
}

void BootLoader::finish_writing(char slot, const proto::Manifest& manifest) {
  record_.writing = 0;
  version_of(slot) = manifest.version;
  sha256_of(slot) = manifest.sha256;
}

void BootLoader::abandon_writing(char slot) {
  if (record_.writing == slot) record_.writing = 0;
  version_of(slot) = proto::Version{};
  sha256_of(slot) = proto::Sha256Hex{};
}

bool BootLoader::holds_finished(char slot, const proto::Version& version) const {
  return record_.writing != slot && version_of(slot) == version;
}

void BootLoader::report(ImageState& out) const {
  const bool on_trial = running_ == record_.pending;
  out.running_version = version_of(running_);
  out.running_sha256 = sha256_of(running_);
  out.running_slot = running_;
  out.slot_state = on_trial              ? proto::SlotState::pending
                   : record_.rolled_back ? proto::SlotState::rolled_back
                                         : proto::SlotState::confirmed;
  out.previous_version = version_of(other(running_));
  out.security_counter = record_.counter;
  out.trial_boots = on_trial ? record_.trial_boots : 0;
}

}  // namespace ota::agent::sim_boot
