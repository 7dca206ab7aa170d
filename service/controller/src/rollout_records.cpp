#include "ota/service/rollout_records.hpp"

namespace ota::service {

RolloutRow engine_row(const RowRec& r) {
  RolloutRow x;
  x.device = r.device_id;
  x.wave = r.wave;
  x.order = r.ord;
  x.state = r.state;
  x.reason = r.reason;
  x.attempt = r.attempt;
  x.extra_attempts = r.extra_attempts;
  x.defers = r.defers;
  x.next_at_ms = r.next_at;
  x.offered_at_ms = r.offered_at;
  return x;
}

void store_engine_row(const RolloutRow& e, RowRec& r) {
  r.state = e.state;
  r.reason = e.reason;
  r.wave = e.wave;
  r.ord = e.order;
  r.attempt = e.attempt;
  r.extra_attempts = e.extra_attempts;
  r.defers = e.defers;
  r.next_at = e.next_at_ms;
  r.offered_at = e.offered_at_ms;
}

RolloutState engine_state(const RolloutRec& r) {
  RolloutState st;
  st.id = r.id;
  st.state = r.state;
  st.current_wave = r.current_wave;
  st.wave_started_ms = r.wave_started_ms;
  st.threshold_met_ms = r.threshold_met_ms;
  st.accepted_through = r.accepted_through;
  st.pause_reason = r.pause_reason;
  st.paused_by = r.paused_by;
  return st;
}

void store_engine_state(const RolloutState& st, RolloutRec& r) {
  r.state = st.state;
  r.current_wave = st.current_wave;
  r.wave_started_ms = st.wave_started_ms;
  r.threshold_met_ms = st.threshold_met_ms;
  r.accepted_through = st.accepted_through;
  r.pause_reason = st.pause_reason;
  r.paused_by = st.paused_by;
}

}  // namespace ota::service
