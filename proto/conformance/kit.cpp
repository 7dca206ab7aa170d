#include "kit.hpp"

#include <openssl/evp.h>
#include <openssl/pem.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <random>

#include "ota/proto/frame.hpp"
#include "ota/proto/topics.hpp"

namespace ota::conformance {
namespace {

using proto::EventType;
using proto::ReasonCode;

std::string encode(const proto::Event& ev) {
  char buf[1024];
  std::size_t len = 0;
  if (proto::encode_event(ev, buf, sizeof buf, len)) return {};
  return std::string(buf, len);
}

bool is_final(const proto::Event& ev) {
  return ev.type == EventType::result ||
         (ev.type == EventType::decline && ev.reason != ReasonCode::busy);
}

// A fresh P-256 private key as PEM: the "foreign" key no DUT trusts.
std::string generate_key_pem() {
  EVP_PKEY* key = EVP_EC_gen("P-256");
  std::string pem;
  BIO* bio = BIO_new(BIO_s_mem());
  if (key != nullptr && bio != nullptr &&
      PEM_write_bio_PrivateKey(bio, key, nullptr, nullptr, 0, nullptr, nullptr) == 1) {
    char* data = nullptr;
    const long n = BIO_get_mem_data(bio, &data);
    pem.assign(data, static_cast<std::size_t>(n));
  }
  BIO_free(bio);
  EVP_PKEY_free(key);
  return pem;
}

std::uint64_t unix_now() { return static_cast<std::uint64_t>(std::time(nullptr)); }

}  // namespace

const char* verdict_name(Verdict v) {
  switch (v) {
    case Verdict::pass: return "PASS";
    case Verdict::fail: return "FAIL";
    case Verdict::skip: return "SKIP";
  }
  return "?";
}

Kit::Kit(KitOptions options) : opt_(std::move(options)), control_(opt_.control) {
  std::random_device rd;
  char tag[16];
  std::snprintf(tag, sizeof tag, "%06x", rd() & 0xffffffu);
  run_tag_ = tag;
}

Kit::~Kit() {
  control_.stop();
  link_.disconnect();
}

std::string Kit::topic(const char* suffix) const {
  return opt_.prefix + "/dev/" + opt_.device_id + "/" + suffix;
}

void Kit::fail(const std::string& detail) { throw CaseEnd(Verdict::fail, detail); }
void Kit::skip(const std::string& detail) { throw CaseEnd(Verdict::skip, detail); }

void Kit::violation(const std::string& what) {
  if (case_ != nullptr) violations_.push_back(what);
}

std::string Kit::no_answer(const std::string& what, SteadyClock::duration waited) const {
  char secs[32];
  std::snprintf(secs, sizeof secs, "%.1f", std::chrono::duration<double>(waited).count());
  return std::string("no answer within ") + secs + " s: expected " + what;
}

SteadyClock::time_point Kit::deadline(int max_ms) const {
  if (max_ms < 0) return case_deadline_;
  return std::min(case_deadline_, SteadyClock::now() + std::chrono::milliseconds(max_ms));
}

bool Kit::open(std::string& error) {
  auto signer = service::Signer::load(opt_.signing_key);
  if (!signer) {
    error = "--signing-key " + opt_.signing_key + ": " + signer.error();
    return false;
  }
  signer_ = std::make_unique<service::Signer>(std::move(*signer));
  auto foreign = service::Signer::from_pem(generate_key_pem());
  if (!foreign) {
    error = "cannot make a throwaway key: " + foreign.error();
    return false;
  }
  foreign_signer_ = std::make_unique<service::Signer>(std::move(*foreign));
  if (!proto::valid_id(opt_.device_id.c_str(), opt_.device_id.size())) {
    error = "--device-id '" + opt_.device_id + "' is not a device id (1-64 of [A-Za-z0-9._-])";
    return false;
  }
  if (opt_.dut_kind != "firmware" && opt_.dut_kind != "bundle") {
    error = "--dut-kind '" + opt_.dut_kind + "': firmware or bundle";
    return false;
  }
  if (!link_.connect(opt_.broker, std::chrono::seconds(10), error)) return false;
  if (!link_.subscribe(topic("up/#"), std::chrono::seconds(10), error)) return false;
  // Before any case: the DUT started from its factory state, or as it is.
  case_start_ = SteadyClock::now();
  case_deadline_ = case_start_ + std::chrono::seconds(opt_.case_timeout_s);
  try {
    if (control_.can_restart()) {
      std::string why;
      if (!control_.restart(Restart::fresh, why)) {
        error = "cannot start the device: " + why;
        return false;
      }
      wait_fresh_hello(0, "a hello from " + opt_.device_id + " after it started");
    } else {
      wait_until([&] { return dut_.known; },
                 "a hello from " + opt_.device_id + " (is it connected to this broker, with "
                 "topic prefix " + opt_.prefix + "?)");
    }
  } catch (const CaseEnd& e) {
    error = e.what();
    if (control_.owns_process() && error.find(control_.log_path()) == std::string::npos) {
      error += " (device log: " + control_.log_path() + ")";
    }
    return false;
  }
  return true;
}

// ---------------------------------------------------------------------------------------
// Messages from the DUT

void Kit::handle(const LinkMessage& m) {
  const std::string prefix = opt_.prefix + "/dev/" + opt_.device_id + "/up/";
  if (m.topic.compare(0, prefix.size(), prefix) != 0) return;
  const std::string leaf = m.topic.substr(prefix.size());
  if (leaf == "event") {
    on_event(m.payload, m.at);
  } else if (leaf == "req") {
    on_request(m.payload, m.at);
  } else if (leaf == "presence") {
    on_presence(m);
  }
}

void Kit::on_presence(const LinkMessage& m) {
  if (m.payload.empty()) return;  // a cleared retained message
  proto::PresenceType type{};
  if (auto e = proto::decode_presence_type(m.payload.data(), m.payload.size(), type)) {
    violation("undecodable presence message (" + std::string(proto::errc_name(e.code)) + " " +
              e.field + ") (§5.3)");
    return;
  }
  if (type == proto::PresenceType::hello) {
    SeenHello h;
    if (auto e = proto::decode_hello(m.payload.data(), m.payload.size(), h.hello)) {
      violation("undecodable hello (" + std::string(proto::errc_name(e.code)) + " " + e.field +
                ") (§5.3)");
      return;
    }
    if (h.hello.device != opt_.device_id.c_str()) {
      violation("hello names device '" + std::string(h.hello.device.c_str()) +
                "' on the topic of '" + opt_.device_id + "' (§5.3: MUST equal the topic level)");
    }
    h.retained = m.retained;
    h.at = m.at;
    dut_.known = true;
    dut_.hello = h.hello;
    hellos_.push_back(h);
  } else if (type == proto::PresenceType::heartbeat) {
    proto::Heartbeat hb;
    if (auto e = proto::decode_heartbeat(m.payload.data(), m.payload.size(), hb)) {
      violation("undecodable heartbeat (" + std::string(proto::errc_name(e.code)) + " " +
                e.field + ") (§5.7)");
    } else if (hb.device != opt_.device_id.c_str()) {
      violation("heartbeat names device '" + std::string(hb.device.c_str()) + "' (§5.7)");
    }
  }
}

void Kit::on_event(const std::string& payload, SteadyClock::time_point at) {
  SeenEvent e;
  e.at = at;
  if (auto err = proto::decode_event(payload.data(), payload.size(), e.ev)) {
    violation("undecodable event (" + std::string(proto::errc_name(err.code)) + " " + err.field +
              "): " + payload.substr(0, 120) + " (§5.5)");
    return;
  }
  const std::string enc = encode(e.ev);
  if (last_seq_ && e.ev.seq <= *last_seq_) {
    auto it = final_events_.find(e.ev.seq);
    if (it == final_events_.end() || it->second != enc) {
      violation("event " + describe(e) + " for " + e.ev.deployment.c_str() +
                " does not have a seq above the last one (" + std::to_string(*last_seq_) +
                ") and is not an unchanged repeat of a kept final event (§10)");
    }
  } else {
    last_seq_ = e.ev.seq;
  }
  if (is_final(e.ev)) final_events_.emplace(e.ev.seq, enc);
  if (e.ev.type == EventType::accept) accepted_.insert(e.ev.deployment.c_str());
  events_.push_back(e);
}

void Kit::on_request(const std::string& payload, SteadyClock::time_point at) {
  SeenRequest r;
  r.at = at;
  if (auto err = proto::decode_chunk_request(payload.data(), payload.size(), r.req)) {
    violation("undecodable chunk_req (" + std::string(proto::errc_name(err.code)) + " " +
              err.field + "): " + payload.substr(0, 120) + " (§5.6)");
    return;
  }
  const std::string dep = r.req.deployment.c_str();
  const Deployment* d = nullptr;
  for (const auto& owned : deployments_) {
    if (owned->id == dep) d = owned.get();
  }
  if (d != nullptr && accepted_.count(dep) == 0) {
    violation("chunk_req for " + dep + " before the device accepted it (§5.6)");
  }
  if (d != nullptr && r.req.image != d->manifest.image) {
    violation("chunk_req for " + dep + " names image " + r.req.image.c_str() +
              ", the manifest's is " + d->manifest.image.c_str() + " (§5.6)");
  }
  const std::uint32_t chunks = d != nullptr ? d->manifest.chunk_count() : 0;
  for (std::uint32_t i = 0; i < r.req.count; ++i) {
    if (r.req.wants(i) && r.req.first + i < chunks) r.wanted.push_back(r.req.first + i);
  }
  requests_.push_back(r);
  if (plan_.dep != nullptr && plan_.dep == d) {
    serve_request(requests_.back());
  } else if (d == nullptr ||
             std::find(offered_.begin(), offered_.end(), d) == offered_.end()) {
    // What a controller does for a deployment it does not serve (§5.6).
    send_cancel(dep);
  }
}

void Kit::serve_request(const SeenRequest& r) {
  const std::string bc_group = plan_.broadcast ? r.req.bc.c_str() : "";
  std::vector<std::uint32_t> order;
  for (std::uint32_t idx : r.wanted) {
    if (idx < plan_.serve_below) order.push_back(idx);
  }
  if (plan_.fault == ChunkFault::reorder) std::reverse(order.begin(), order.end());
  for (std::uint32_t idx : order) {
    const bool target = idx == plan_.fault_chunk && !plan_.fault_done;
    switch (plan_.fault) {
      case ChunkFault::lose_once:
        if (target) {
          plan_.fault_done = true;
          continue;
        }
        break;
      case ChunkFault::bad_crc_once:
      case ChunkFault::oversize_once:
      case ChunkFault::foreign_image_once:
        if (target) {
          plan_.fault_done = true;
          publish_frame(*plan_.dep, idx, plan_.fault);
          continue;
        }
        break;
      case ChunkFault::duplicate:
        publish_frame(*plan_.dep, idx, ChunkFault::none);
        break;
      default:
        break;
    }
    publish_frame(*plan_.dep, idx, ChunkFault::none, bc_group);
  }
}

void Kit::publish_frame(const Deployment& d, std::uint32_t index, ChunkFault variant,
                        const std::string& bc_group) {
  const proto::Manifest& m = d.manifest;
  const std::uint64_t offset = static_cast<std::uint64_t>(index) * m.chunk_size;
  if (offset >= d.image.size()) return;
  std::uint32_t len = static_cast<std::uint32_t>(
      std::min<std::uint64_t>(m.chunk_size, d.image.size() - offset));
  std::string payload = d.image.substr(static_cast<std::size_t>(offset), len);
  if (variant == ChunkFault::oversize_once) {
    payload.push_back('\x5a');  // one byte more than any chunk of this image may have
    ++len;
  }
  std::uint8_t id[8];
  proto::image_id_to_bytes(m.image.c_str(), id);
  if (variant == ChunkFault::foreign_image_once) id[0] = static_cast<std::uint8_t>(id[0] ^ 0xff);
  std::string frame(proto::kFrameHeaderLen + len, '\0');
  auto* out = reinterpret_cast<std::uint8_t*>(&frame[0]);
  proto::encode_chunk_frame(id, static_cast<std::uint32_t>(offset),
                            reinterpret_cast<const std::uint8_t*>(payload.data()), len,
                            bc_group.empty() ? 0 : proto::kFrameFlagBroadcast, out, frame.size());
  if (variant == ChunkFault::bad_crc_once) out[24] = static_cast<std::uint8_t>(out[24] ^ 0xff);
  char image_topic[proto::kMaxTopicLen];
  if (!bc_group.empty() && proto::make_group_chunk_topic(opt_.prefix.c_str(), bc_group.c_str(),
                                                         m.image.c_str(), image_topic,
                                                         sizeof image_topic) != 0) {
    ++plan_.broadcast_frames;
    link_.publish(image_topic, frame);
    return;
  }
  ++plan_.unicast_frames;
  link_.publish(topic("down/chunk"), frame);
}

// ---------------------------------------------------------------------------------------
// Waiting

void Kit::wait_until(const std::function<bool()>& cond, const std::string& what, int max_ms) {
  const auto until = deadline(max_ms);
  // The case's whole time when its deadline is the limit, else this wait's.
  const auto since = max_ms < 0 ? case_start_ : SteadyClock::now();
  while (!cond()) {
    int code = 0;
    if (control_.owns_process() && !control_.alive(&code)) {
      fail("the device command ended (exit status " + std::to_string(code) + ") while waiting for " +
           what + "; its output: " + control_.log_path());
    }
    if (SteadyClock::now() >= until) fail(no_answer(what, until - since));
    auto m = link_.next(std::min(until, SteadyClock::now() + std::chrono::milliseconds(100)));
    if (m) handle(*m);
  }
}

void Kit::pump_until(SteadyClock::time_point until) {
  while (SteadyClock::now() < until) {
    auto m = link_.next(until);
    if (m) handle(*m);
  }
}

SeenEvent Kit::wait_event(const std::string& deployment,
                          std::initializer_list<proto::EventType> types, const std::string& what,
                          std::size_t since) {
  const std::vector<EventType> wanted(types);
  std::optional<SeenEvent> found;
  wait_until(
      [&] {
        for (std::size_t i = since; i < events_.size(); ++i) {
          const SeenEvent& e = events_[i];
          if (e.ev.deployment == deployment.c_str() &&
              std::find(wanted.begin(), wanted.end(), e.ev.type) != wanted.end()) {
            found = e;
            return true;
          }
        }
        return false;
      },
      what);
  return *found;
}

SeenEvent Kit::wait_answer(const std::string& deployment, std::size_t since) {
  return wait_event(deployment, {EventType::accept, EventType::decline, EventType::defer},
                    "an answer (accept, decline or defer) to the offer of " + deployment, since);
}

SeenEvent Kit::wait_result(const std::string& deployment, std::size_t since) {
  return wait_event(deployment, {EventType::result}, "a result for " + deployment, since);
}

std::string Kit::describe(const SeenEvent& e) const {
  std::string s = proto::event_type_name(e.ev.type);
  switch (e.ev.type) {
    case EventType::decline:
    case EventType::defer:
      s += std::string(" ") + proto::reason_name(e.ev.reason);
      break;
    case EventType::result:
      s += std::string(e.ev.success ? " ok:true " : " ok:false ") + proto::reason_name(e.ev.reason) +
           " version " + e.ev.version.c_str();
      break;
    case EventType::status:
      s += std::string(" ") + proto::device_state_name(e.ev.state);
      break;
    case EventType::progress:
      s += " " + std::to_string(e.ev.received) + "/" + std::to_string(e.ev.total);
      break;
    default:
      break;
  }
  return s + " (seq " + std::to_string(e.ev.seq) + ")";
}

void Kit::expect_decline(const Deployment& d, proto::ReasonCode reason) {
  const SeenEvent a = wait_answer(d.id);
  require(a.ev.type == EventType::decline && a.ev.reason == reason,
          std::string("expected decline ") + proto::reason_name(reason) + ", the device sent " +
              describe(a));
  // Nothing else may follow a final decline: no chunk request, no status.
  for (const auto& r : requests_) {
    require(r.req.deployment != d.id.c_str(),
            "the device asked for chunks of " + d.id + ", which it declined");
  }
}

void Kit::expect_update(const Deployment& d, std::size_t since) {
  const SeenEvent a = wait_answer(d.id, since);
  require(a.ev.type == EventType::accept,
          "expected accept of a valid offer, the device sent " + describe(a) + " (§7)");
  const SeenEvent r = wait_result(d.id, since);
  require(r.ev.success && r.ev.reason == ReasonCode::ok,
          "expected result ok:true ok, the device sent " + describe(r));
  require(r.ev.version == d.manifest.version,
          std::string("result names version ") + r.ev.version.c_str() + ", the image's is " +
              d.manifest.version.c_str() + " (§5.5)");
  // §9: after the result, a hello on the new version, confirmed.
  const std::string want = d.manifest.version.c_str();
  wait_until(
      [&] {
        for (const auto& h : hellos_) {
          if (!h.retained && h.at >= r.at && h.hello.version == want.c_str() &&
              h.hello.slot_state == proto::SlotState::confirmed) {
            return true;
          }
        }
        return false;
      },
      "a hello with version " + want + " and slot_state confirmed after the result (§9)");
  // Status order (§9) and progress (§5.5) of this deployment.
  int last_state = -1;
  std::uint64_t last_received = 0;
  int progress_events = 0;
  for (const auto& e : events_) {
    if (e.ev.deployment != d.id.c_str()) continue;
    if (e.ev.type == EventType::status) {
      const int st = static_cast<int>(e.ev.state);
      require(st != 0 && st >= last_state,
              std::string("status ") + proto::device_state_name(e.ev.state) +
                  " out of the order downloading, verifying, installing, rebooting, confirming (§9)");
      last_state = st;
    } else if (e.ev.type == EventType::progress) {
      ++progress_events;
      require(e.ev.total == d.manifest.size,
              "progress total " + std::to_string(e.ev.total) + ", the image has " +
                  std::to_string(d.manifest.size) + " bytes (§5.5)");
      require(e.ev.received <= e.ev.total && e.ev.received >= last_received,
              "progress " + std::to_string(e.ev.received) + " after " +
                  std::to_string(last_received) + " (§5.5: received <= total, never backwards)");
      last_received = e.ev.received;
    }
  }
  require(progress_events <= 100, std::to_string(progress_events) +
                                      " progress events: more than one per 1 % (§5.5)");
}

void Kit::expect_silence(const std::string& deployment, int ms, const std::string& what,
                         const std::function<bool(const SeenEvent&)>& allowed) {
  const std::size_t mark = events_.size();
  pump_until(deadline(ms > 0 ? ms : opt_.quiet_ms));
  for (std::size_t i = mark; i < events_.size(); ++i) {
    const SeenEvent& e = events_[i];
    if (!deployment.empty() && e.ev.deployment != deployment.c_str()) continue;
    if (allowed && allowed(e)) continue;
    fail(what + ": the device sent " + describe(e) + " for " + e.ev.deployment.c_str());
  }
}

SeenHello Kit::wait_fresh_hello(std::size_t since, const std::string& what) {
  std::optional<SeenHello> found;
  wait_until(
      [&] {
        for (std::size_t i = since; i < hellos_.size(); ++i) {
          if (!hellos_[i].retained) {
            found = hellos_[i];
            return true;
          }
        }
        return false;
      },
      what);
  return *found;
}

// ---------------------------------------------------------------------------------------
// The DUT's life

void Kit::restart_dut(Restart kind) {
  const std::size_t mark = hellos_.size();
  std::string error;
  if (!control_.restart(kind, error)) fail("cannot restart the device: " + error);
  if (kind == Restart::fresh) {
    last_seq_.reset();
    final_events_.clear();
  }
  wait_fresh_hello(mark, std::string("a hello after the ") +
                             (kind == Restart::fresh ? "fresh start" : "power cut"));
}

void Kit::take_over_dut_session() {
  const std::size_t mark = hellos_.size();
  LinkSettings s = opt_.broker;
  s.cert = opt_.dut_cert;
  s.key = opt_.dut_key;
  s.client_id = opt_.device_id;
  {
    Link impostor;
    std::string error;
    if (!impostor.connect(s, std::chrono::seconds(5), error)) {
      fail("cannot connect with the DUT's identity (--dut-cert/--dut-key): " + error);
    }
    impostor.disconnect();
  }
  wait_fresh_hello(mark, "a hello after the device's connection was cut (it must reconnect, §8.5)");
}

// ---------------------------------------------------------------------------------------
// Offers

std::string Kit::new_deployment_id() {
  return "conf-" + run_tag_ + "-" + std::to_string(++deployments_made_);
}

std::string Kit::bumped_version(int major_steps) const {
  unsigned long major = 0;
  std::sscanf(dut_.hello.version.c_str(), "%lu", &major);
  return std::to_string(major + static_cast<unsigned long>(major_steps)) + ".0.0";
}

const Deployment& Kit::make_offer(const OfferSpec& s) {
  auto d = std::make_unique<Deployment>();
  d->id = new_deployment_id();
  const std::uint32_t size = s.same_image_as != nullptr
                                ? static_cast<std::uint32_t>(s.same_image_as->image.size())
                                : (s.size != 0 ? s.size : opt_.image_size);
  if (s.same_image_as != nullptr) {
    d->image = s.same_image_as->image;
  } else {
    std::mt19937_64 rng(image_seed_++ * 0x9e3779b97f4a7c15ull);
    d->image.resize(size);
    for (auto& c : d->image) c = static_cast<char>(rng() & 0xff);
  }
  const std::string sha = service::sha256_hex(d->image.data(), d->image.size());
  proto::Manifest& m = d->manifest;
  m.sha256.assign(sha.c_str());
  std::string image_id = sha.substr(0, proto::kImageIdLen);
  if (s.image_id_mismatch) image_id[0] = image_id[0] == '0' ? '1' : '0';
  m.image.assign(image_id.c_str());
  if (s.same_image_as != nullptr) {
    m.version = s.same_image_as->manifest.version;
  } else {
    m.version.assign((s.version.empty() ? bumped_version() : s.version).c_str());
  }
  const std::vector<std::string> hw =
      s.hw.empty() ? std::vector<std::string>{dut_.hello.hw.c_str()} : s.hw;
  for (const auto& h : hw) m.hw[m.hw_count++].assign(h.c_str());
  m.size = s.declared_size != 0 ? s.declared_size : size;
  m.chunk_size = s.chunk_size != 0 ? s.chunk_size : opt_.chunk_size;
  m.counter = s.counter.value_or(dut_.hello.counter);
  m.expires = s.expires.value_or(unix_now() + 3600);
  const std::string kind = s.kind.empty() ? opt_.dut_kind : s.kind;
  m.kind = kind == "bundle" ? proto::ImageKind::bundle : proto::ImageKind::firmware;
  m.deployment.assign((s.bound_deployment.empty() ? d->id : s.bound_deployment).c_str());
  switch (s.binding) {
    case OfferSpec::Binding::this_device:
      m.device.assign(opt_.device_id.c_str());
      break;
    case OfferSpec::Binding::own_group:
      m.group.assign(s.group.c_str());
      break;
    case OfferSpec::Binding::other_device:
      m.device.assign((opt_.device_id == "conformance-other" ? "conformance-other2"
                                                              : "conformance-other"));
      break;
    case OfferSpec::Binding::other_group:
      m.group.assign("conformance-not-a-member");
      break;
    case OfferSpec::Binding::unbound:
      m.deployment.assign("");
      break;
  }
  m.rollback = s.rollback;
  const service::Signer& signer = s.foreign_key ? *foreign_signer_ : *signer_;
  if (auto st = signer.sign_manifest(m); !st) fail("cannot sign the offer: " + st.error());
  if (s.corrupt_signature) m.sig.data[10] = m.sig.data[10] == '0' ? '1' : '0';
  auto offer = std::make_unique<proto::Offer>();
  offer->deployment.assign(d->id.c_str());
  offer->manifest = m;
  char buf[4096];
  std::size_t len = 0;
  if (auto e = proto::encode_offer(*offer, buf, sizeof buf, len)) {
    fail(std::string("cannot encode the offer: ") + proto::errc_name(e.code) + " " + e.field);
  }
  d->offer_json.assign(buf, len);
  deployments_.push_back(std::move(d));
  return *deployments_.back();
}

void Kit::send_offer(const Deployment& d) {
  if (std::find(offered_.begin(), offered_.end(), &d) == offered_.end()) offered_.push_back(&d);
  link_.publish(topic("down/offer"), d.offer_json);
}

void Kit::send_raw_offer(const std::string& payload) { link_.publish(topic("down/offer"), payload); }

void Kit::send_group_offer(const Deployment& d, const std::string& group) {
  if (std::find(offered_.begin(), offered_.end(), &d) == offered_.end()) offered_.push_back(&d);
  retained_groups_.insert(group);
  link_.publish(opt_.prefix + "/grp/" + group + "/offer", d.offer_json, true);
}

void Kit::clear_group_offer(const std::string& group) {
  link_.publish(opt_.prefix + "/grp/" + group + "/offer", "", true);
  retained_groups_.erase(group);
}

void Kit::send_cancel(const std::string& deployment) {
  proto::Cancel c;
  c.deployment.assign(deployment.c_str());
  c.reason.assign("ota-conformance");
  char buf[512];
  std::size_t len = 0;
  if (!proto::encode_cancel(c, buf, sizeof buf, len)) {
    link_.publish(topic("down/cancel"), std::string(buf, len));
  }
}

ServePlan& Kit::serve(const Deployment& d, ChunkFault fault) {
  plan_ = ServePlan{};
  plan_.dep = &d;
  plan_.fault = fault;
  return plan_;
}

// ---------------------------------------------------------------------------------------
// Cases

// After a case that passed (or failed on a board the kit cannot restart): whatever it left
// running is cancelled (the DUT answers `cancelled`); a DUT the kit starts itself that still
// has an unfinished deployment is started afresh, so that the next case begins from a known
// state.
void Kit::cleanup() {
  std::vector<std::string> open;
  for (const Deployment* d : offered_) {
    bool finished = false;
    for (const auto& e : events_) {
      if (e.ev.deployment == d->id.c_str() && is_final(e.ev)) finished = true;
    }
    if (!finished && accepted_.count(d->id)) open.push_back(d->id);
  }
  plan_ = ServePlan{};
  while (!retained_groups_.empty()) clear_group_offer(*retained_groups_.begin());
  for (const auto& id : open) send_cancel(id);
  bool settled = true;
  if (!open.empty()) {
    // A conforming device answers a cancel at once; one the kit starts itself is restarted
    // when it does not (cheap), a board is given longer before the next case begins.
    case_start_ = SteadyClock::now();
    case_deadline_ = case_start_ + std::chrono::seconds(control_.owns_process() ? 1 : 5);
    try {
      for (const auto& id : open) wait_result(id);
    } catch (const CaseEnd&) {
      settled = false;
    }
  }
  if (!settled && control_.owns_process()) {
    case_start_ = SteadyClock::now();
    case_deadline_ = case_start_ + std::chrono::seconds(std::max(opt_.case_timeout_s, 10));
    try {
      restart_dut(Restart::fresh);
    } catch (const CaseEnd&) {
    }
  }
}

CaseReport Kit::run_case(const CaseSpec& spec) {
  CaseReport report;
  report.spec = &spec;
  const auto start = SteadyClock::now();
  case_ = &spec;
  events_.clear();
  requests_.clear();
  hellos_.clear();
  violations_.clear();
  offered_.clear();
  plan_ = ServePlan{};
  case_start_ = start;
  case_deadline_ = start + std::chrono::seconds(opt_.case_timeout_s);
  try {
    if (spec.needs_restart && !control_.can_restart()) {
      skip("skipped (no device command: --device-cmd, --reset-cmd or --prompt-reset)");
    }
    if (spec.needs_dut_identity && (opt_.dut_cert.empty() || opt_.dut_key.empty())) {
      skip("skipped (needs the device's identity: --dut-cert and --dut-key)");
    }
    spec.run(*this);
    report.verdict = Verdict::pass;
  } catch (const CaseEnd& e) {
    report.verdict = e.verdict;
    report.detail = e.what();
  } catch (const std::exception& e) {
    report.verdict = Verdict::fail;
    report.detail = std::string("kit error: ") + e.what();
  }
  if (report.verdict == Verdict::pass && !violations_.empty()) {
    report.verdict = Verdict::fail;
    report.detail = violations_.front();
  }
  case_ = nullptr;  // what cleanup sees is not held against this case
  // A device the kit starts itself is started afresh after a failure (no point asking it to
  // tidy up first); otherwise what the case left open is cancelled.
  const bool fresh_start = report.verdict == Verdict::fail && control_.owns_process();
  if (report.verdict != Verdict::skip && !fresh_start) cleanup();
  if (fresh_start) {
    plan_ = ServePlan{};
    while (!retained_groups_.empty()) clear_group_offer(*retained_groups_.begin());
    case_start_ = SteadyClock::now();
    case_deadline_ = case_start_ + std::chrono::seconds(std::max(opt_.case_timeout_s, 10));
    try {
      restart_dut(Restart::fresh);
    } catch (const CaseEnd&) {
    }
  }
  report.seconds = std::chrono::duration<double>(SteadyClock::now() - start).count();
  return report;
}

}  // namespace ota::conformance
