// The case table of ota-conformance: one entry per behaviour of proto/PROTOCOL.md a device
// must show, each with the clauses it checks. Every case uses deployment ids of its own, so
// the DUT's kept final answers of earlier cases never get in the way.
#include <algorithm>
#include <cstdio>
#include <ctime>
#include <string>

#include "kit.hpp"

namespace ota::conformance {
namespace {

using proto::EventType;
using proto::ReasonCode;
using Spec = Kit::OfferSpec;

// Offers `spec` and expects the decline `why`.
void declined(Kit& k, const Spec& spec, ReasonCode why) {
  const Deployment& d = k.make_offer(spec);
  k.send_offer(d);
  k.expect_decline(d, why);
}

// A full update of a fresh image (with an optional chunk fault); returns it.
const Deployment& install(Kit& k, const Spec& spec = Spec{}, ChunkFault fault = ChunkFault::none) {
  const Deployment& d = k.make_offer(spec);
  k.serve(d, fault);
  k.send_offer(d);
  k.expect_update(d);
  return d;
}

// How many requests asked for chunk `index` of `d`.
int times_requested(const Kit& k, const Deployment& d, std::uint32_t index) {
  int n = 0;
  for (const auto& r : k.requests()) {
    if (r.req.deployment == d.id.c_str() &&
        std::find(r.wanted.begin(), r.wanted.end(), index) != r.wanted.end()) {
      ++n;
    }
  }
  return n;
}

// A chunk fault on chunk 2: the update must still complete, by asking for the chunk again.
void chunk_fault_case(Kit& k, ChunkFault fault, bool needs_rerequest) {
  const Deployment& d = install(k, Spec{}, fault);
  if (needs_rerequest) {
    k.require(times_requested(k, d, k.plan().fault_chunk) >= 2,
              "the device never asked for chunk " + std::to_string(k.plan().fault_chunk) +
                  " again after it was " +
                  (fault == ChunkFault::lose_once ? "lost" : "sent damaged") + " (§8.1, §8.3)");
  }
}

// Starts a download of `d` (of at least 2 x 64 chunks) and serves only the chunks below
// `held`; returns once a repeated request (the device's re-request timeout) shows it holds
// every one of them and waits for the rest.
void download_part(Kit& k, const Deployment& d, std::uint32_t held) {
  ServePlan& plan = k.serve(d);
  plan.serve_below = held;
  k.send_offer(d);
  const SeenEvent a = k.wait_answer(d.id);
  k.require(a.ev.type == EventType::accept, "expected accept, the device sent " + k.describe(a));
  k.wait_until(
      [&] {
        // A request that asks again for a chunk asked for before (only the re-request timeout
        // does that; a sliding window asks for each chunk once) and for none below `held`:
        // a re-request lists every chunk still missing, so the device holds all of those.
        std::vector<std::uint32_t> asked;
        for (const auto& r : k.requests()) {
          if (r.req.deployment != d.id.c_str()) continue;
          bool repeat = false;
          bool low = false;
          for (std::uint32_t i : r.wanted) {
            repeat = repeat || std::find(asked.begin(), asked.end(), i) != asked.end();
            low = low || i < held;
          }
          if (repeat && !low) return true;
          asked.insert(asked.end(), r.wanted.begin(), r.wanted.end());
        }
        return false;
      },
      "the device to ask again for the chunks from " + std::to_string(held) +
          " on after its re-request timeout (§8.1)");
}

// The chunks of `d` asked for in requests from index `from` of requests() on.
std::vector<std::uint32_t> asked_since(const Kit& k, const Deployment& d, std::size_t from) {
  std::vector<std::uint32_t> out;
  for (std::size_t i = from; i < k.requests().size(); ++i) {
    const auto& r = k.requests()[i];
    if (r.req.deployment == d.id.c_str()) out.insert(out.end(), r.wanted.begin(), r.wanted.end());
  }
  return out;
}

Spec resumable_image(const Kit& k) {
  Spec s;
  s.size = std::max<std::uint32_t>(k.options().image_size, 192 * k.options().chunk_size);
  return s;
}

// --- the cases ---------------------------------------------------------------------------

void valid_update(Kit& k) { install(k); }

void group_offer(Kit& k) {
  const auto& hello = k.dut().hello;
  if (hello.group_count == 0) k.skip("skipped (the device reports no groups in its hello)");
  Spec s;
  s.binding = Spec::Binding::own_group;
  s.group = hello.groups[0].c_str();
  const Deployment& d = k.make_offer(s);
  k.serve(d);
  k.send_group_offer(d, s.group);
  k.expect_update(d);
  k.clear_group_offer(s.group);
}

void undecodable_offer(Kit& k) {
  const Deployment& d = k.make_offer();
  std::string bad = d.offer_json;
  const auto at = bad.find("\"sig\":");
  k.require(at != std::string::npos, "kit error: no sig in the offer");
  bad.replace(at, 6, "\"sgi\":");  // the signature missing, an unknown member in its place
  k.send_raw_offer(bad);
  k.expect_silence(d.id, 0, "an undecodable offer must get no answer at all (§7 check 1)");
}

void unknown_key(Kit& k) {
  Spec s;
  s.foreign_key = true;
  declined(k, s, ReasonCode::unknown_key);
}

void bad_signature(Kit& k) {
  Spec s;
  s.corrupt_signature = true;
  declined(k, s, ReasonCode::bad_signature);
}

void unsigned_unsupported(Kit& k) {
  Spec s;
  s.corrupt_signature = true;
  s.kind = k.options().dut_kind == "firmware" ? "bundle" : "firmware";
  declined(k, s, ReasonCode::bad_signature);
}

void bad_manifest(Kit& k) {
  Spec s;
  s.image_id_mismatch = true;
  declined(k, s, ReasonCode::bad_manifest);
}

void wrong_deployment(Kit& k) {
  Spec s;
  s.bound_deployment = k.new_deployment_id();
  declined(k, s, ReasonCode::wrong_target);
}

void other_device(Kit& k) {
  Spec s;
  s.binding = Spec::Binding::other_device;
  declined(k, s, ReasonCode::wrong_target);
}

void other_group(Kit& k) {
  Spec s;
  s.binding = Spec::Binding::other_group;
  declined(k, s, ReasonCode::wrong_target);
}

void unbound(Kit& k) {
  Spec s;
  s.binding = Spec::Binding::unbound;
  declined(k, s, ReasonCode::wrong_target);
}

void wrong_hardware(Kit& k) {
  Spec s;
  s.hw = {"conformance-other-hw"};
  declined(k, s, ReasonCode::wrong_hardware);
}

// A version below the running one, or "" when there is none.
std::string lower_version(const Kit& k) {
  unsigned long v[3] = {0, 0, 0};
  if (std::sscanf(k.dut().hello.version.c_str(), "%lu.%lu.%lu", &v[0], &v[1], &v[2]) != 3) return "";
  if (v[0] > 0) return std::to_string(v[0] - 1) + ".0.0";
  if (v[1] > 0) return "0." + std::to_string(v[1] - 1) + ".0";
  if (v[2] > 0) return "0.0." + std::to_string(v[2] - 1);
  return "";
}

void downgrade_version(Kit& k) {
  Spec s;
  s.version = lower_version(k);
  if (s.version.empty()) k.skip("skipped (the device runs 0.0.0: no lower version)");
  declined(k, s, ReasonCode::downgrade);
}

void rollback_flag(Kit& k) {
  Spec s;
  s.version = lower_version(k);
  if (s.version.empty()) k.skip("skipped (the device runs 0.0.0: no lower version)");
  s.rollback = true;
  install(k, s);
}

void downgrade_counter(Kit& k) {
  const std::uint32_t counter = k.dut().hello.counter;
  Spec raise;
  raise.counter = counter + 1;
  install(k, raise);
  k.require(k.dut().hello.counter == counter + 1,
            "after confirming an image with counter " + std::to_string(counter + 1) +
                " the hello reports counter " + std::to_string(k.dut().hello.counter) + " (§7, §9)");
  Spec lower;
  lower.version = k.bumped_version();
  lower.counter = counter;
  declined(k, lower, ReasonCode::downgrade);
}

void expired(Kit& k) {
  if (!k.options().dut_has_clock) k.skip("skipped (--dut-no-clock: the device cannot tell)");
  Spec s;
  s.expires = static_cast<std::uint64_t>(std::time(nullptr)) - 3600;
  declined(k, s, ReasonCode::expired);
}

void unsupported_kind(Kit& k) {
  Spec s;
  s.kind = k.options().dut_kind == "firmware" ? "bundle" : "firmware";
  declined(k, s, ReasonCode::unsupported);
}

void unsupported_size(Kit& k) {
  Spec s;
  s.declared_size = 4294967296ull;  // one byte past what a u32 frame offset can address
  s.chunk_size = 65536;
  declined(k, s, ReasonCode::unsupported);
}

void no_space(Kit& k) {
  const std::uint64_t free = k.dut().hello.free;
  if (free >= 4294967295ull) {
    k.skip("skipped (the device reports " + std::to_string(free) +
           " bytes free: no version 1 image is larger)");
  }
  Spec s;
  s.declared_size = free + 1;
  s.chunk_size = 65536;
  const Deployment& d = k.make_offer(s);
  k.send_offer(d);
  const SeenEvent a = k.wait_answer(d.id);
  if (a.ev.type == EventType::decline && a.ev.reason == ReasonCode::unsupported) {
    k.skip("skipped (the device cannot track " + std::to_string(d.manifest.chunk_count()) +
           " chunks, check 7 answers first)");
  }
  k.require(a.ev.type == EventType::decline && a.ev.reason == ReasonCode::no_space,
            "expected decline no_space for " + std::to_string(free + 1) + " bytes (hello.free " +
                std::to_string(free) + "), the device sent " + k.describe(a));
}

void already_installed(Kit& k) {
  const Deployment& first = install(k);
  Spec again;
  again.same_image_as = &first;
  declined(k, again, ReasonCode::already_installed);
}

void busy(Kit& k) {
  const Deployment& first = k.make_offer();
  ServePlan& plan = k.serve(first);
  plan.serve_below = 0;  // withheld: the download stays open
  k.send_offer(first);
  k.wait_until([&] { return !k.requests().empty(); }, "a chunk_req for " + first.id);
  Spec other_spec;
  other_spec.version = k.bumped_version(2);
  const Deployment& other = k.make_offer(other_spec);
  k.send_offer(other);
  k.expect_decline(other, ReasonCode::busy);
  // busy is not final (§7 check 10, §10): once the first is done, the same offer is checked
  // afresh and taken.
  k.serve(first);
  k.wait_result(first.id);
  const std::size_t mark = k.events().size();
  k.serve(other);
  k.send_offer(other);
  k.expect_update(other, mark);
}

void chunk_lost(Kit& k) { chunk_fault_case(k, ChunkFault::lose_once, true); }
void chunk_duplicated(Kit& k) { chunk_fault_case(k, ChunkFault::duplicate, false); }
void chunk_reordered(Kit& k) { chunk_fault_case(k, ChunkFault::reorder, false); }
void chunk_bad_crc(Kit& k) { chunk_fault_case(k, ChunkFault::bad_crc_once, true); }
void chunk_oversize(Kit& k) { chunk_fault_case(k, ChunkFault::oversize_once, true); }
void chunk_foreign(Kit& k) { chunk_fault_case(k, ChunkFault::foreign_image_once, true); }

// §17: a device that asks with `bc` listens on that group's image topic (subscribed before
// it asks) and takes every chunk from there; the kit answers nothing by unicast.
void broadcast_download(Kit& k) {
  const Deployment& d = k.make_offer();
  ServePlan& plan = k.serve(d);
  plan.broadcast = true;
  k.send_offer(d);
  k.wait_until(
      [&] {
        for (const auto& r : k.requests())
          if (r.req.deployment == d.id.c_str()) return true;
        return false;
      },
      "a chunk_req for " + d.id);
  std::string group;
  for (const auto& r : k.requests()) {
    if (r.req.deployment == d.id.c_str()) {
      group = r.req.bc.c_str();
      break;
    }
  }
  if (group.empty()) k.skip("skipped (its chunk_req has no bc: the device does not implement §17)");
  const proto::Hello& h = k.dut().hello;
  bool member = false;
  for (std::size_t i = 0; i < h.group_count; ++i) member = member || group == h.groups[i].c_str();
  k.require(member, "bc names group '" + group + "', which is not one of the groups of its hello (§17)");
  k.expect_update(d);
  for (const auto& r : k.requests()) {
    k.require(r.req.deployment != d.id.c_str() || group == r.req.bc.c_str(),
              "a later chunk_req " + (r.req.bc.empty() ? std::string("left bc out (fell back to unicast)")
                                                        : "named group '" + std::string(r.req.bc.c_str()) + "'") +
                  " although every frame came on <prefix>/grp/" + group + "/img/" +
                  d.manifest.image.c_str() + "/chunk: did it subscribe before asking? (§17)");
  }
  k.require(plan.unicast_frames == 0 && plan.broadcast_frames >= d.manifest.chunk_count(),
            "expected the image by broadcast frames only, sent " + std::to_string(plan.broadcast_frames) +
                " broadcast and " + std::to_string(plan.unicast_frames) + " unicast frames");
}

void cancel_unknown(Kit& k) {
  k.send_cancel(k.new_deployment_id());
  k.expect_silence("", 0, "a cancel for an unknown deployment must be ignored (§5.2)");
}

// A cancel right behind the offer, before its answer arrived: the device takes the offer,
// then the cancel (one connection keeps their order), and ends it `cancelled`.
void cancel_offered(Kit& k) {
  const std::string before = k.dut().hello.version.c_str();
  const Deployment& d = k.make_offer();
  ServePlan& plan = k.serve(d);
  plan.serve_below = 0;
  k.send_offer(d);
  k.send_cancel(d.id);
  const SeenEvent a = k.wait_answer(d.id);
  k.require(a.ev.type == EventType::accept, "expected accept, the device sent " + k.describe(a));
  const SeenEvent r = k.wait_result(d.id);
  k.require(!r.ev.success && r.ev.reason == ReasonCode::cancelled && r.ev.version == before.c_str(),
            "expected result ok:false cancelled, version " + before + ", the device sent " +
                k.describe(r) + " (§5.2)");
}

void cancel_downloading(Kit& k) {
  const std::string before = k.dut().hello.version.c_str();
  const Deployment& d = k.make_offer();
  ServePlan& plan = k.serve(d);
  plan.serve_below = 2;
  k.send_offer(d);
  k.wait_until([&] { return !k.requests().empty(); }, "a chunk_req for " + d.id);
  k.send_cancel(d.id);
  const SeenEvent r = k.wait_result(d.id);
  k.require(!r.ev.success && r.ev.reason == ReasonCode::cancelled,
            "expected result ok:false cancelled, the device sent " + k.describe(r) + " (§5.2)");
  k.require(r.ev.version == before.c_str(),
            std::string("the cancelled result names version ") + r.ev.version.c_str() +
                ", the device ran " + before + " (§5.5)");
  // The partial image is discarded (§8.5): no resume in the hello that follows.
  k.wait_until(
      [&] {
        for (const auto& h : k.hellos()) {
          if (!h.retained && h.at >= r.at) return true;
        }
        return false;
      },
      "a hello after the cancelled result (§5.3: whenever a field changes)", 3000);
  for (const auto& h : k.hellos()) {
    if (!h.retained && h.at >= r.at) {
      k.require(!h.hello.resume.present,
                "the hello after the cancel still reports a resume point (§8.5: a cancel ends "
                "the download)");
    }
  }
}

void cancel_installing(Kit& k) {
  const Deployment& d = k.make_offer();
  k.serve(d);
  k.send_offer(d);
  k.wait_until(
      [&] {
        for (const auto& e : k.events()) {
          if (e.ev.deployment == d.id.c_str() && e.ev.type == EventType::status &&
              e.ev.state == proto::DeviceState::installing) {
            return true;
          }
        }
        return false;
      },
      "status installing (§9)");
  k.send_cancel(d.id);
  const SeenEvent r = k.wait_result(d.id);
  k.require(r.ev.success && r.ev.reason == ReasonCode::ok,
            "a cancel once installing has begun must be ignored and the update completed (§5.2); "
            "the device sent " + k.describe(r));
}

void cancel_finished(Kit& k) {
  const Deployment& d = install(k);
  k.send_cancel(d.id);
  k.expect_silence("", 0, "a cancel for a finished deployment must be ignored (§5.2)");
}

void repeat_offer_downloading(Kit& k) {
  const Deployment& d = k.make_offer(resumable_image(k));
  const std::uint32_t held = d.manifest.chunk_count() / 2 + 4;
  download_part(k, d, held);
  const std::size_t mark = k.requests().size();
  k.send_offer(d);
  k.expect_silence(d.id, 0, "a repeated offer of the deployment in progress must not be answered (§5.1)",
                   [](const SeenEvent& e) {
                     return e.ev.type == EventType::status || e.ev.type == EventType::progress;
                   });
  for (std::uint32_t i : asked_since(k, d, mark)) {
    k.require(i >= held, "after a repeated offer the device asked for chunk " + std::to_string(i) +
                             ", which it held: it started over (§5.1 MUST NOT)");
  }
  k.serve(d);
  const SeenEvent r = k.wait_result(d.id);
  k.require(r.ev.success, "expected result ok:true, the device sent " + k.describe(r));
  int accepts = 0;
  for (const auto& e : k.events()) {
    accepts += e.ev.deployment == d.id.c_str() && e.ev.type == EventType::accept ? 1 : 0;
  }
  k.require(accepts == 1, std::to_string(accepts) + " accept events for one deployment (§5.1)");
}

// Offers `d` again and expects its kept final event repeated unchanged (§3, §5.1, §10).
void expect_repeat(Kit& k, const Deployment& d, const SeenEvent& final_event) {
  const std::size_t mark = k.events().size();
  k.send_offer(d);
  const SeenEvent again = k.wait_event(
      d.id, {EventType::accept, EventType::decline, EventType::defer, EventType::result},
      "the kept final event repeated (§10)", mark);
  k.require(again.ev.type == final_event.ev.type && again.ev.seq == final_event.ev.seq &&
                again.ev.reason == final_event.ev.reason &&
                again.ev.success == final_event.ev.success &&
                again.ev.version == final_event.ev.version,
            "expected the final event " + k.describe(final_event) +
                " repeated unchanged, the device sent " + k.describe(again) + " (§10)");
  k.expect_silence(d.id, 300, "nothing but the repeat (§5.1 MUST NOT act on the offer)");
}

void repeat_final_result(Kit& k) {
  const Deployment& d = install(k);
  expect_repeat(k, d, k.wait_result(d.id));
}

void repeat_final_decline(Kit& k) {
  Spec s;
  s.hw = {"conformance-other-hw"};
  const Deployment& d = k.make_offer(s);
  k.send_offer(d);
  k.expect_decline(d, ReasonCode::wrong_hardware);
  expect_repeat(k, d, k.wait_answer(d.id));
}

void resume_disconnect(Kit& k) {
  const Deployment& d = k.make_offer(resumable_image(k));
  const std::uint32_t held = d.manifest.chunk_count() / 2 + 4;
  download_part(k, d, held);
  const std::size_t mark = k.requests().size();
  const std::size_t hello_mark = k.hellos().size();
  k.take_over_dut_session();
  bool resume_seen = false;
  for (std::size_t i = hello_mark; i < k.hellos().size(); ++i) {
    const auto& hh = k.hellos()[i].hello;
    if (hh.resume.present && hh.resume.deployment == d.id.c_str() &&
        hh.resume.image == d.manifest.image) {
      resume_seen = true;
    }
  }
  k.require(resume_seen, "the hello after the reconnect has no resume for " + d.id + " (§5.3, §8.5)");
  k.serve(d);
  const SeenEvent r = k.wait_result(d.id);
  k.require(r.ev.success, "expected result ok:true after the reconnect, the device sent " +
                              k.describe(r));
  for (std::uint32_t i : asked_since(k, d, mark)) {
    k.require(i >= held, "after the reconnect the device asked for chunk " + std::to_string(i) +
                             ", which it held before (§8.5: only the missing part)");
  }
}

void resume_power_cut(Kit& k) {
  const Deployment& d = k.make_offer(resumable_image(k));
  const std::uint32_t held = d.manifest.chunk_count() / 2 + 4;
  download_part(k, d, held);
  const std::uint32_t seq_before = k.events().back().ev.seq;
  const std::size_t mark = k.requests().size();
  const std::size_t hello_mark = k.hellos().size();
  k.restart_dut(Restart::power_cut);
  const proto::Hello hello = k.hellos()[hello_mark].hello;
  k.require(hello.resume.present && hello.resume.deployment == d.id.c_str() &&
                hello.resume.image == d.manifest.image,
            "the hello after the power cut has no resume for " + d.id +
                " (§8.4: progress persisted at least every few chunks; §8.5)");
  // §8.4: progress is persisted at least every 64 chunks, so a power cut loses at most the
  // last 64 of the `held` chunks.
  const std::uint64_t kept = hello.resume.received;
  const std::uint64_t chunk = d.manifest.chunk_size;
  const std::uint64_t must_keep = (held > 64 ? held - 64 : 0) * chunk;
  k.require(kept >= must_keep && kept <= held * chunk,
            "resume.received " + std::to_string(kept) + " after a power cut holding " +
                std::to_string(held) + " chunks of " + std::to_string(chunk) +
                " bytes: expected at least " + std::to_string(must_keep) +
                " (§8.4: at most the last 64 chunks lost) and at most what it had");
  k.serve(d);
  const SeenEvent r = k.wait_result(d.id);
  k.require(r.ev.success, "expected result ok:true after the power cut, the device sent " +
                              k.describe(r));
  const std::uint64_t kept_chunks = kept / d.manifest.chunk_size;
  for (std::uint32_t i : asked_since(k, d, mark)) {
    k.require(i >= kept_chunks,
              "after the power cut the device asked for chunk " + std::to_string(i) +
                  ", below its resume point of " + std::to_string(kept) + " bytes (§8.5)");
  }
  for (const auto& e : k.events()) {
    if (e.at > k.hellos()[hello_mark].at) {
      k.require(e.ev.seq > seq_before, "event " + k.describe(e) + " after the power cut is not above " +
                                           std::to_string(seq_before) + " (§10)");
      break;
    }
  }
}

void seq_power_cut(Kit& k) {
  Spec s;
  s.hw = {"conformance-other-hw"};
  const Deployment& first = k.make_offer(s);
  k.send_offer(first);
  k.expect_decline(first, ReasonCode::wrong_hardware);
  const SeenEvent before = k.wait_answer(first.id);
  k.restart_dut(Restart::power_cut);
  const Deployment& second = k.make_offer(s);
  k.send_offer(second);
  k.expect_decline(second, ReasonCode::wrong_hardware);
  const SeenEvent after = k.wait_answer(second.id);
  k.require(after.ev.seq > before.ev.seq,
            "seq " + std::to_string(after.ev.seq) + " after a power cut is not above " +
                std::to_string(before.ev.seq) + " before it (§10: persisted)");
  // The kept final answer survives the power cut too.
  expect_repeat(k, first, before);
}

// A device whose counter record is gone starts `seq` at the Unix time if it has a wall clock
// (§10), so that its numbers stay above the ones it used before.
void seq_fresh_start(Kit& k) {
  if (!k.options().dut_has_clock) k.skip("skipped (--dut-no-clock: a device without a clock starts at 0)");
  const auto started = static_cast<std::uint32_t>(std::time(nullptr));
  k.restart_dut(Restart::fresh);
  Spec s;
  s.hw = {"conformance-other-hw"};
  const Deployment& d = k.make_offer(s);
  k.send_offer(d);
  k.expect_decline(d, ReasonCode::wrong_hardware);
  const SeenEvent first = k.wait_answer(d.id);
  // A second of slack: the device may have read its clock just before the kit did.
  k.require(first.ev.seq + 1 >= started,
            "the first event after a factory reset has seq " + std::to_string(first.ev.seq) +
                ", below the Unix time " + std::to_string(started) +
                " (§10: a device with a wall clock starts there)");
}

}  // namespace

const std::vector<CaseSpec>& case_table() {
  static const std::vector<CaseSpec> cases = {
      {"update.valid", "valid offer: download, install, reboot, confirmed boot", "§5.5 §5.6 §7 §8 §9", false, false, valid_update},
      {"update.group_offer", "retained offer to one of the device's groups", "§1, §2, §3, §7 check 3a", false, false, group_offer},
      {"offer.undecodable", "an offer that does not decode gets no answer", "§7 check 1, §12", false, false, undecodable_offer},
      {"offer.unknown_key", "signed by a key the device does not trust", "§7 check 2", false, false, unknown_key},
      {"offer.bad_signature", "signature does not verify", "§7 check 3", false, false, bad_signature},
      {"offer.unsigned_unsupported", "nothing but bad_signature for an unsigned offer of an unsupported kind", "§7 (signatures first), check 3", false, false, unsigned_unsupported},
      {"offer.bad_manifest", "image id is not the SHA-256's first 16 digits", "§7 check 3c, §6.1", false, false, bad_manifest},
      {"offer.wrong_deployment", "manifest bound to another deployment id", "§7 check 3a", false, false, wrong_deployment},
      {"offer.other_device", "manifest bound to another device", "§7 check 3a", false, false, other_device},
      {"offer.other_group", "manifest bound to a group the device is not in", "§7 check 3a", false, false, other_group},
      {"offer.unbound", "manifest without a binding", "§7 check 3a, §6.2", false, false, unbound},
      {"offer.wrong_hardware", "hardware model not in hw", "§7 check 4", false, false, wrong_hardware},
      {"offer.downgrade_version", "lower version without rollback", "§7 check 5", false, false, downgrade_version},
      {"offer.rollback_flag", "lower version with rollback:true is installed", "§7 check 5, §6.1", false, false, rollback_flag},
      {"offer.downgrade_counter", "counter below the confirmed one", "§7 check 5, §9", false, false, downgrade_counter},
      {"offer.expired", "expires in the past", "§7 check 6", false, false, expired},
      {"offer.unsupported_kind", "a kind the device does not install", "§7 check 7, §6.1", false, false, unsupported_kind},
      {"offer.unsupported_size", "size above 2^32-1", "§7 check 7, §6.1, §15", false, false, unsupported_size},
      {"offer.no_space", "size above hello.free", "§7 check 9", false, false, no_space},
      {"offer.already_installed", "the running image offered again", "§7 check 8, §9", false, false, already_installed},
      {"offer.busy", "another deployment in progress; busy is not final", "§7 check 10, §5.1, §10", false, false, busy},
      {"chunks.lost", "a lost chunk is asked for again", "§8.1", false, false, chunk_lost},
      {"chunks.duplicated", "every chunk twice", "§8.1, §3", false, false, chunk_duplicated},
      {"chunks.reordered", "chunks in reverse order", "§8.1", false, false, chunk_reordered},
      {"chunks.bad_crc", "a chunk with a wrong CRC-32 is dropped and asked again", "§8.3", false, false, chunk_bad_crc},
      {"chunks.oversize", "a chunk longer than chunk_size is dropped", "§8.3", false, false, chunk_oversize},
      {"chunks.foreign_image", "a chunk of another image is dropped", "§8.3", false, false, chunk_foreign},
      {"broadcast.download", "asked with bc: every chunk taken from the group's image topic", "§17, §8.3", false, false, broadcast_download},
      {"cancel.unknown", "cancel for a deployment never offered: ignored", "§5.2", false, false, cancel_unknown},
      {"cancel.offered", "cancel right behind the offer: accepted, then cancelled", "§5.2, §3", false, false, cancel_offered},
      {"cancel.downloading", "cancel while downloading: result cancelled, partial image gone", "§5.2, §8.5", false, false, cancel_downloading},
      {"cancel.installing", "cancel once installing: ignored, update completes", "§5.2", false, false, cancel_installing},
      {"cancel.finished", "cancel after the result: ignored", "§5.2", false, false, cancel_finished},
      {"repeat.offer_downloading", "the same offer while downloading: no answer, no restart", "§5.1, §3", false, false, repeat_offer_downloading},
      {"repeat.final_result", "offer of a finished deployment: the result repeated unchanged", "§3, §5.1, §10", false, false, repeat_final_result},
      {"repeat.final_decline", "offer of a declined deployment: the decline repeated unchanged", "§3, §10", false, false, repeat_final_decline},
      {"resume.disconnect", "connection lost mid-download: resume, only the missing chunks", "§8.5, §5.3", false, true, resume_disconnect},
      {"resume.power_cut", "power cut mid-download: resume from the persisted point", "§8.4, §8.5, §10", true, false, resume_power_cut},
      {"seq.power_cut", "seq and kept final answers survive a power cut", "§10", true, false, seq_power_cut},
      {"seq.fresh_start", "after a factory reset seq starts at the Unix time", "§10", true, false, seq_fresh_start},
  };
  return cases;
}

}  // namespace ota::conformance
