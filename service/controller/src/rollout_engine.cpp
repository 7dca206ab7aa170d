#include "ota/service/rollout_engine.hpp"

#include <openssl/sha.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <set>

#include "ota/service/row_life.hpp"

namespace ota::service {

using nlohmann::json;

namespace {

std::string pct_text(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f%%", v);
  return buf;
}

std::string duration_text(long long s) {
  if (s % 86400 == 0 && s) return std::to_string(s / 86400) + "d";
  if (s % 3600 == 0 && s) return std::to_string(s / 3600) + "h";
  if (s % 60 == 0 && s) return std::to_string(s / 60) + "m";
  return std::to_string(s) + "s";
}

EngineAction log_action(std::string what, std::string detail, std::string device = "") {
  EngineAction a;
  a.kind = EngineAction::Kind::log;
  a.what = std::move(what);
  a.detail = std::move(detail);
  a.device = std::move(device);
  return a;
}

int total_attempts(const RolloutRow& r, const RolloutPolicy& p) {
  return 1 + p.retries + r.extra_attempts;
}

bool is_failure_state(RowState s) { return s == RowState::failed || s == RowState::timed_out; }

}  // namespace

// ---------------------------------------------------------------------------- counting

bool row_is_final(const RolloutRow& r, const RolloutPolicy& p) {
  if (r.state == RowState::succeeded || r.state == RowState::declined ||
      r.state == RowState::cancelled)
    return true;
  return is_failure_state(r.state) && r.attempt >= total_attempts(r, p);
}

double WaveCounts::success_rate() const {
  const int denom = devices - declined;
  return denom > 0 ? 100.0 * succeeded / denom : 100.0;
}

double WaveCounts::failure_rate() const { return devices ? 100.0 * failed / devices : 0.0; }

std::vector<WaveCounts> wave_counts(const std::vector<RolloutRow>& rows, const RolloutPolicy& p) {
  std::vector<WaveCounts> out(p.waves.size());
  for (const auto& r : rows) {
    if (r.wave < 0 || static_cast<std::size_t>(r.wave) >= out.size()) continue;
    WaveCounts& c = out[static_cast<std::size_t>(r.wave)];
    c.devices++;
    if (is_in_flight(r.state)) c.in_flight++;
    if (!row_is_final(r, p)) continue;
    c.final_count++;
    if (r.state == RowState::succeeded) c.succeeded++;
    else if (r.state == RowState::declined) c.declined++;
    else if (is_failure_state(r.state)) c.failed++;
  }
  return out;
}

std::vector<RolloutRow> assign_waves(const std::string& rollout_id,
                                     const std::vector<std::string>& devices,
                                     const RolloutPolicy& p) {
  std::vector<std::pair<std::string, std::string>> keyed;  // (hash, device)
  for (const auto& d : std::set<std::string>(devices.begin(), devices.end())) {
    const std::string in = rollout_id + "/" + d;
    unsigned char md[SHA256_DIGEST_LENGTH];
    SHA256(reinterpret_cast<const unsigned char*>(in.data()), in.size(), md);
    keyed.emplace_back(std::string(reinterpret_cast<char*>(md), sizeof md), d);
  }
  std::sort(keyed.begin(), keyed.end());
  std::vector<RolloutRow> rows;
  std::size_t next = 0;
  const std::size_t n = keyed.size();
  for (std::size_t w = 0; w < p.waves.size() && next < n; ++w) {
    const std::size_t remaining = n - next;
    std::size_t take;
    if (w + 1 == p.waves.size()) {
      take = remaining;
    } else if (p.waves[w].percent) {
      take = static_cast<std::size_t>(std::ceil(p.waves[w].size * static_cast<double>(remaining) / 100.0 - 1e-9));
    } else {
      take = static_cast<std::size_t>(p.waves[w].size);
    }
    take = std::max<std::size_t>(1, std::min(take, remaining));
    for (std::size_t i = 0; i < take; ++i, ++next) {
      RolloutRow r;
      r.device = keyed[next].second;
      r.wave = static_cast<int>(w);
      r.order = static_cast<int>(next);
      r.changed = true;
      rows.push_back(r);
    }
  }
  return rows;
}

// ------------------------------------------------------------------------------ advance

namespace {

// Moves the row as the row life table says `ev` does (the callers only pass events that
// apply: they checked with applies()).
void transition(RolloutRow& r, RowEvent ev, const std::string& reason) {
  if (auto to = next_row_state(r.state, ev)) r.state = *to;
  r.reason = reason;
  r.changed = true;
}

void abort_rows(std::vector<RolloutRow>& rows, const std::string& why,
                std::vector<EngineAction>& out) {
  for (auto& r : rows) {
    if (!applies(r.state, RowEvent::abort)) continue;
    if (!is_in_flight(r.state)) {
      transition(r, RowEvent::abort, "not offered: " + why);
      continue;
    }
    EngineAction c;
    c.kind = EngineAction::Kind::cancel;
    c.device = r.device;
    c.attempt = r.attempt;
    c.detail = why;
    out.push_back(c);
    transition(r, RowEvent::abort,
               why + " (was " + to_string(r.state) + "; keeps its running image)");
  }
}

}  // namespace

namespace {

EngineAction cancel_action(const RolloutRow& r, const std::string& why) {
  EngineAction c;
  c.kind = EngineAction::Kind::cancel;
  c.device = r.device;
  c.attempt = r.attempt;
  c.detail = why;
  return c;
}

// A scheduled rollout whose start time came starts its first wave. False: not yet.
bool start_if_due(RolloutState& st, const RolloutPolicy& p, long long now,
                  std::vector<EngineAction>& out) {
  if (now < p.start_at_s * 1000) return false;
  st.state = RolloutStatus::running;
  st.current_wave = 0;
  st.wave_started_ms = now;
  st.threshold_met_ms = 0;
  out.push_back(log_action("rollout_started", "start time reached; wave 1/" +
                                                  std::to_string(p.waves.size()) + " started"));
  return true;
}

// Timeouts apply in every live state: a device that never answers must not hold a wave.
void time_out_rows(std::vector<RolloutRow>& rows, const RolloutPolicy& p, long long now,
                   std::vector<EngineAction>& out) {
  if (p.timeout_s <= 0) return;
  for (auto& r : rows) {
    if (!applies(r.state, RowEvent::timeout) || now - r.offered_at_ms < p.timeout_s * 1000) continue;
    out.push_back(cancel_action(r, "timed out"));
    const RowState was = r.state;
    transition(r, RowEvent::timeout, "no result within " + duration_text(p.timeout_s) +
                                         " (last state " + to_string(was) + ")");
    out.push_back(log_action("device_timed_out", "attempt " + std::to_string(r.attempt) + ": " + r.reason,
                             r.device));
  }
}

// Failed attempts with attempts left go back to pending after the retry delay.
void schedule_retries(std::vector<RolloutRow>& rows, const RolloutPolicy& p, long long now,
                      std::vector<EngineAction>& out) {
  for (auto& r : rows) {
    if (!applies(r.state, RowEvent::retry) || r.attempt >= total_attempts(r, p)) continue;
    const std::string why = r.reason;
    transition(r, RowEvent::retry,
               "retry " + std::to_string(r.attempt + 1) + "/" + std::to_string(total_attempts(r, p)) +
                   " after: " + why);
    r.next_at_ms = now + p.retry_delay_s * 1000;
    out.push_back(log_action("device_retry_scheduled",
                             "attempt " + std::to_string(r.attempt + 1) + " in " +
                                 duration_text(p.retry_delay_s) + " after: " + why,
                             r.device));
  }
}

// Why the failure policy trips over the started waves the operator has not accepted ("":
// it does not).
std::string failure_policy_verdict(const RolloutState& st, const std::vector<WaveCounts>& counts,
                                   const RolloutPolicy& p) {
  int fails = 0, devs = 0;
  std::string tripped;
  for (int w = 0; w <= st.current_wave && w < static_cast<int>(counts.size()); ++w) {
    if (w <= st.accepted_through) continue;
    const WaveCounts& c = counts[static_cast<std::size_t>(w)];
    fails += c.failed;
    devs += c.devices;
    if (tripped.empty() && c.failed > 0 && c.failure_rate() > p.max_wave_failure_pct)
      tripped = "wave " + std::to_string(w + 1) + " failure rate " + pct_text(c.failure_rate()) +
                " (" + std::to_string(c.failed) + "/" + std::to_string(c.devices) + ") exceeds " +
                pct_text(p.max_wave_failure_pct);
  }
  const double total_rate = devs ? 100.0 * fails / devs : 0.0;
  if (tripped.empty() && fails > 0 && total_rate > p.max_total_failure_pct)
    tripped = "overall failure rate " + pct_text(total_rate) + " (" + std::to_string(fails) + "/" +
              std::to_string(devs) + ") exceeds " + pct_text(p.max_total_failure_pct);
  return tripped;
}

// Aborts or pauses the rollout as its failure policy says. True: it stopped.
bool apply_failure_policy(RolloutState& st, std::vector<RolloutRow>& rows,
                          const std::vector<WaveCounts>& counts, const RolloutPolicy& p,
                          std::vector<EngineAction>& out) {
  if (st.state != RolloutStatus::running && st.state != RolloutStatus::paused) return false;
  const std::string tripped = failure_policy_verdict(st, counts, p);
  if (tripped.empty()) return false;
  if (p.abort_on_failure) {
    st.state = RolloutStatus::aborted;
    st.pause_reason = tripped;
    st.paused_by = PausedBy::policy;
    abort_rows(rows, "rollout aborted by failure policy", out);
    out.push_back(log_action("rollout_aborted", "failure policy: " + tripped));
    return true;
  }
  if (st.state != RolloutStatus::running) return false;
  st.state = RolloutStatus::paused;
  st.pause_reason = tripped;
  st.paused_by = PausedBy::policy;
  out.push_back(log_action("rollout_paused", "failure policy: " + tripped));
  return true;
}

// Wave progression: the next wave starts once this one reached its threshold (or is done)
// and soaked; the last one completes the rollout. True: the rollout paused or completed.
bool progress_waves(RolloutState& st, std::size_t devices, const std::vector<WaveCounts>& counts,
                    const RolloutPolicy& p, long long now, std::vector<EngineAction>& out) {
  const int last = static_cast<int>(p.waves.size()) - 1;
  while (st.current_wave >= 0 && st.current_wave <= last) {
    const int w = st.current_wave;
    const WaveCounts& c = counts[static_cast<std::size_t>(w)];
    const WaveSpec& spec = p.waves[static_cast<std::size_t>(w)];
    const bool accepted = w <= st.accepted_through;
    const bool all_final = c.final_count == c.devices;
    if (!accepted && spec.success_threshold < 0 && !all_final) break;
    if (!accepted && c.success_rate() + 1e-9 < spec.success_threshold) {
      if (!all_final || c.devices == 0) break;
      st.state = RolloutStatus::paused;
      st.paused_by = PausedBy::threshold;
      st.pause_reason = "wave " + std::to_string(w + 1) + " finished with " +
                        pct_text(c.success_rate()) + " succeeded, below its threshold " +
                        pct_text(spec.success_threshold);
      out.push_back(log_action("rollout_paused", st.pause_reason));
      return true;
    }
    if (w == last) {
      if (!all_final) break;
      st.state = RolloutStatus::completed;
      int ok = 0, failed = 0, declined = 0;
      for (const auto& wc : counts) ok += wc.succeeded, failed += wc.failed, declined += wc.declined;
      out.push_back(log_action("rollout_completed",
                               "succeeded " + std::to_string(ok) + ", failed " + std::to_string(failed) +
                                   ", declined " + std::to_string(declined) + " of " +
                                   std::to_string(devices)));
      return true;
    }
    if (st.threshold_met_ms == 0) {
      st.threshold_met_ms = now;
      if (spec.soak_s > 0)
        out.push_back(log_action("wave_soaking", "wave " + std::to_string(w + 1) + " reached " +
                                                     pct_text(c.success_rate()) + "; soaking " +
                                                     duration_text(spec.soak_s)));
    }
    if (now - st.threshold_met_ms < spec.soak_s * 1000) break;
    st.current_wave = w + 1;
    st.wave_started_ms = now;
    st.threshold_met_ms = 0;
    out.push_back(log_action(
        "wave_started", "wave " + std::to_string(w + 2) + "/" + std::to_string(last + 1) + ": " +
                            std::to_string(counts[static_cast<std::size_t>(w + 1)].devices) +
                            " devices (wave " + std::to_string(w + 1) + ": " +
                            pct_text(c.success_rate()) + " succeeded" +
                            (accepted ? ", accepted by operator" : "") + ")"));
  }
  return false;
}

// Offers: started waves in order, up to the concurrency cap, inside the window.
void offer_due_rows(RolloutState& st, std::vector<RolloutRow>& rows, const RolloutPolicy& p,
                    long long now, std::vector<EngineAction>& out) {
  int in_flight = 0;
  for (const auto& r : rows)
    if (is_in_flight(r.state)) in_flight++;
  std::vector<RolloutRow*> due;
  for (auto& r : rows)
    if (r.wave <= st.current_wave && applies(r.state, RowEvent::offer) && r.next_at_ms <= now)
      due.push_back(&r);
  if (due.empty()) return;
  if (p.window && !p.window->contains(now)) {
    if (!st.held_by_window) {
      st.held_by_window = true;
      out.push_back(log_action("offers_held", std::to_string(due.size()) +
                                                  " devices wait for the maintenance window " +
                                                  p.window->text() + " UTC"));
    }
    return;
  }
  if (st.held_by_window) {
    st.held_by_window = false;
    out.push_back(log_action("offers_released", "maintenance window " + p.window->text() + " UTC opened"));
  }
  std::sort(due.begin(), due.end(), [](const RolloutRow* a, const RolloutRow* b) {
    return a->wave != b->wave ? a->wave < b->wave : a->order < b->order;
  });
  for (RolloutRow* r : due) {
    if (p.max_concurrent > 0 && in_flight >= p.max_concurrent) break;
    // A deferral keeps its attempt (same offer id): the device asks its policy again.
    if (r->state != RowState::deferred || r->attempt == 0) r->attempt++;
    r->offered_at_ms = now;
    r->next_at_ms = 0;
    transition(*r, RowEvent::offer, "");
    in_flight++;
    EngineAction a;
    a.kind = EngineAction::Kind::offer;
    a.device = r->device;
    a.attempt = r->attempt;
    a.detail = "wave " + std::to_string(r->wave + 1) + ", attempt " + std::to_string(r->attempt);
    out.push_back(a);
  }
}

}  // namespace

std::vector<EngineAction> advance(RolloutState& st, std::vector<RolloutRow>& rows,
                                  const RolloutPolicy& p, long long now) {
  std::vector<EngineAction> out;
  if (st.state == RolloutStatus::draft || st.state == RolloutStatus::completed) return out;
  if (st.state == RolloutStatus::scheduled && !start_if_due(st, p, now, out)) return out;
  time_out_rows(rows, p, now, out);
  if (st.state == RolloutStatus::aborted) return out;
  schedule_retries(rows, p, now, out);
  const auto counts = wave_counts(rows, p);
  if (apply_failure_policy(st, rows, counts, p, out)) return out;
  if (st.state != RolloutStatus::running) return out;
  if (progress_waves(st, rows.size(), counts, p, now, out)) return out;
  offer_due_rows(st, rows, p, now, out);
  return out;
}

// ------------------------------------------------------------------------ operator ops

Result<std::vector<EngineAction>> op_start(RolloutState& st, const RolloutPolicy& p,
                                           long long now) {
  if (st.state != RolloutStatus::draft)
    return conflict_err("rollout " + st.id + " is " + to_string(st.state) +
                        "; only a draft can be started");
  std::vector<EngineAction> out;
  if (p.start_at_s * 1000 > now) {
    st.state = RolloutStatus::scheduled;
    out.push_back(log_action("rollout_scheduled", "starts at unix " + std::to_string(p.start_at_s)));
    return out;
  }
  st.state = RolloutStatus::running;
  st.current_wave = 0;
  st.wave_started_ms = now;
  st.threshold_met_ms = 0;
  out.push_back(log_action("rollout_started", "wave 1/" + std::to_string(p.waves.size()) + " started"));
  return out;
}

Result<std::vector<EngineAction>> op_pause(RolloutState& st, const std::string& reason) {
  if (st.state != RolloutStatus::running && st.state != RolloutStatus::scheduled)
    return conflict_err("rollout " + st.id + " is " + to_string(st.state) +
                        "; only a running or scheduled rollout can be paused");
  st.state = RolloutStatus::paused;
  st.paused_by = PausedBy::operator_action;
  st.pause_reason = reason.empty() ? "paused by operator" : reason;
  return std::vector<EngineAction>{log_action("rollout_paused", st.pause_reason)};
}

Result<std::vector<EngineAction>> op_resume(RolloutState& st) {
  if (st.state != RolloutStatus::paused)
    return conflict_err("rollout " + st.id + " is " + to_string(st.state) +
                        "; only a paused rollout can be resumed");
  std::string detail = "resumed";
  if ((st.paused_by == PausedBy::policy || st.paused_by == PausedBy::threshold) &&
      st.current_wave >= 0) {
    // The operator looked at the failures and accepts them: the waves so far no longer hold
    // the rollout back, so the next wave starts.
    st.accepted_through = st.current_wave;
    detail += "; failures in waves 1.." + std::to_string(st.current_wave + 1) +
              " accepted (" + st.pause_reason + ")";
  }
  if (st.current_wave < 0) {
    st.state = RolloutStatus::scheduled;  // paused before its start time
  } else {
    st.state = RolloutStatus::running;
  }
  st.pause_reason.clear();
  st.paused_by = PausedBy::none;
  return std::vector<EngineAction>{log_action("rollout_resumed", detail)};
}

Result<std::vector<EngineAction>> op_abort(RolloutState& st, std::vector<RolloutRow>& rows,
                                           const std::string& reason) {
  if (is_terminal(st.state))
    return conflict_err("rollout " + st.id + " is already " + to_string(st.state));
  std::vector<EngineAction> out;
  const std::string why = reason.empty() ? "rollout aborted by operator" : "rollout aborted: " + reason;
  abort_rows(rows, why, out);
  st.state = RolloutStatus::aborted;
  st.paused_by = PausedBy::operator_action;
  st.pause_reason = why;
  out.push_back(log_action("rollout_aborted", why));
  return out;
}

Result<std::vector<EngineAction>> op_retry(RolloutState& st, std::vector<RolloutRow>& rows,
                                           const RolloutPolicy& p, long long now) {
  if (st.state == RolloutStatus::aborted || st.state == RolloutStatus::draft)
    return conflict_err("rollout " + st.id + " is " + to_string(st.state) +
                        "; retry applies to a started rollout that is not aborted");
  int n = 0;
  for (auto& r : rows) {
    if (!applies(r.state, RowEvent::retry) || !row_is_final(r, p)) continue;
    r.extra_attempts = r.attempt - p.retries;  // exactly one more attempt from now
    transition(r, RowEvent::retry, "retry by operator after: " + r.reason);
    r.next_at_ms = now;
    ++n;
  }
  if (n == 0) return conflict_err("rollout " + st.id + " has no failed or timed-out devices to retry");
  if (st.state == RolloutStatus::completed) st.state = RolloutStatus::running;
  return std::vector<EngineAction>{
      log_action("rollout_retry", std::to_string(n) + " failed or timed-out devices get one more attempt")};
}

}  // namespace ota::service
