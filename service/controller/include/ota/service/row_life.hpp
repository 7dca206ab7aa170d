// The life of a deployment row: which event moves a row from which state to which, as one
// declarative table (kRowLife in row_life.cpp, read top to bottom, first match wins), like
// the device agent's kTransitions. The device message handlers, the operator actions and the
// rollout engine ask it (next_row_state) and carry out the rest themselves: persisting the
// row, the event log, messages to the device. An event the table has no entry for in a
// state does not apply to a row in that state: the message is ignored (and counted), the
// engine leaves the row alone.
#pragma once

#include <cstdint>
#include <optional>

#include "ota/proto/messages.hpp"
#include "ota/service/states.hpp"

namespace ota::service {

enum class RowEvent : std::uint8_t {
  // Device messages.
  accept,             // event accept
  transfer,           // event progress, or chunks served for the row
  report,             // event status: the device's own state (next_row_state's `reported`)
  defer,              // event defer
  defer_exhausted,    // event defer beyond the policy's max_defers
  decline,            // event decline
  decline_installed,  // event decline with reason already_installed
  result_ok,          // event result, success
  result_failed,      // event result, failure
  hello_confirmed,    // hello: runs the deployment's version, confirmed
  hello_rolled_back,  // hello: went back to its previous image
  // Controller decisions.
  offer,    // offered (again): a rollout's wave or retry, a plain deployment's deferral ended
  timeout,  // a rollout's timeout passed without a final result
  retry,    // a failed or timed-out attempt of a rollout goes back to pending
  cancel,   // the operator cancelled the deployment, or revoked the device
  abort,    // the rollout was aborted: what has not reached installation stops
};
const char* to_string(RowEvent e);

// The state a row in `from` moves to on `ev` (== from: the event applies and changes
// nothing), or nullopt: the event does not apply in that state. For RowEvent::report,
// `reported` is the state the device reported (idle: the row stays).
std::optional<RowState> next_row_state(RowState from, RowEvent ev,
                                       proto::DeviceState reported = proto::DeviceState::idle);
inline bool applies(RowState from, RowEvent ev,
                    proto::DeviceState reported = proto::DeviceState::idle) {
  return next_row_state(from, ev, reported).has_value();
}

}  // namespace ota::service
