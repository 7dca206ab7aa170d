// The one mapping between what the database stores (RowRec, RolloutRec: store.hpp) and what
// the rollout engine works on (RolloutRow, RolloutState: rollout_engine.hpp). Every conversion in
// either direction goes through these four functions.
#pragma once

#include "ota/service/rollout_engine.hpp"
#include "ota/service/store.hpp"

namespace ota::service {

// The engine's view of a stored row (changed = false).
RolloutRow engine_row(const RowRec& r);
// Writes the engine's fields of `e` back into the stored row (everything but the transfer
// counters and the ids).
void store_engine_row(const RolloutRow& e, RowRec& r);

// The engine's view of a stored rollout (held_by_window = false).
RolloutState engine_state(const RolloutRec& r);
// Writes the engine's fields of `st` back into the stored rollout.
void store_engine_state(const RolloutState& st, RolloutRec& r);

}  // namespace ota::service
