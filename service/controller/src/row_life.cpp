#include "ota/service/row_life.hpp"

namespace ota::service {

namespace {

// A set of row states as a bit mask.
using StateSet = std::uint32_t;
constexpr StateSet S(RowState s) { return StateSet{1} << static_cast<unsigned>(s); }

constexpr StateSet kNotStarted = S(RowState::pending) | S(RowState::deferred);
constexpr StateSet kBeforeInstall =
    S(RowState::offered) | S(RowState::accepted) | S(RowState::downloading) | S(RowState::verifying);
constexpr StateSet kInstalling = S(RowState::installing) | S(RowState::rebooting) | S(RowState::confirming);
constexpr StateSet kInFlight = kBeforeInstall | kInstalling;
constexpr StateSet kNotFinal = kNotStarted | kInFlight;
constexpr StateSet kRetryable = S(RowState::failed) | S(RowState::timed_out);

// `to` kStay: the event applies and the row keeps its state; kReported: the state the device
// reported (RowEvent::report).
enum class To : std::uint8_t { state, stay, reported };

struct RowTransition {
  StateSet from;
  RowEvent event;
  To kind;
  RowState to;
};

constexpr RowTransition go(StateSet from, RowEvent ev, RowState to) { return {from, ev, To::state, to}; }
constexpr RowTransition stay(StateSet from, RowEvent ev) { return {from, ev, To::stay, RowState::pending}; }

constexpr RowTransition kRowLife[] = {
    // from                                   event                        to
    go(S(RowState::offered),                  RowEvent::accept,            RowState::accepted),
    stay(kInFlight,                           RowEvent::accept),
    go(S(RowState::offered) | S(RowState::accepted), RowEvent::transfer,   RowState::downloading),
    stay(kInFlight,                           RowEvent::transfer),  // progress counted
    {kInFlight,                               RowEvent::report, To::reported, RowState::pending},
    go(kInFlight,                             RowEvent::defer,             RowState::deferred),
    go(kInFlight,                             RowEvent::defer_exhausted,   RowState::declined),
    go(kInFlight,                             RowEvent::decline,           RowState::declined),
    go(kInFlight,                             RowEvent::decline_installed, RowState::succeeded),
    // The result of an attempt the rollout gave up waiting for (timed out, or timed out and
    // already pending a retry) is still the truth.
    go(kInFlight | S(RowState::pending) | S(RowState::timed_out), RowEvent::result_ok,
       RowState::succeeded),
    go(kInFlight | S(RowState::pending) | S(RowState::timed_out), RowEvent::result_failed,
       RowState::failed),
    // A hello already showed the rollback: the result names the precise reason.
    stay(S(RowState::failed),                 RowEvent::result_failed),
    go(kInFlight,                             RowEvent::hello_confirmed,   RowState::succeeded),
    go(kInstalling,                           RowEvent::hello_rolled_back, RowState::failed),
    go(kNotStarted,                           RowEvent::offer,             RowState::offered),
    go(kInFlight,                             RowEvent::timeout,           RowState::timed_out),
    go(kRetryable,                            RowEvent::retry,             RowState::pending),
    go(kNotFinal,                             RowEvent::cancel,            RowState::cancelled),
    // Installing, rebooting, confirming cannot be stopped safely: they finish and report.
    go(kNotStarted | kBeforeInstall,          RowEvent::abort,             RowState::cancelled),
};

std::optional<RowState> row_state_of(proto::DeviceState s) {
  switch (s) {
    case proto::DeviceState::idle: return std::nullopt;
    case proto::DeviceState::downloading: return RowState::downloading;
    case proto::DeviceState::verifying: return RowState::verifying;
    case proto::DeviceState::installing: return RowState::installing;
    case proto::DeviceState::rebooting: return RowState::rebooting;
    case proto::DeviceState::confirming: return RowState::confirming;
  }
  return std::nullopt;
}

}  // namespace

const char* to_string(RowEvent e) {
  static const char* const kNames[] = {
      "accept",          "transfer",          "report",  "defer",          "defer_exhausted",
      "decline",         "decline_installed", "result_ok", "result_failed", "hello_confirmed",
      "hello_rolled_back", "offer",           "timeout", "retry",          "cancel",
      "abort"};
  const auto i = static_cast<std::size_t>(e);
  return i < sizeof kNames / sizeof kNames[0] ? kNames[i] : "?";
}

std::optional<RowState> next_row_state(RowState from, RowEvent ev, proto::DeviceState reported) {
  for (const RowTransition& t : kRowLife) {
    if (t.event != ev || (t.from & S(from)) == 0) continue;
    switch (t.kind) {
      case To::state: return t.to;
      case To::stay: return from;
      case To::reported: return row_state_of(reported).value_or(from);  // idle: no news
    }
  }
  return std::nullopt;
}

}  // namespace ota::service
