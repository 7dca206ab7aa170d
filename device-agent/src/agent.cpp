#include "ota/agent/agent.hpp"

#include <cstring>
#include <new>
#include <type_traits>

namespace ota::agent {
namespace {

using proto::DeviceState;
using proto::ReasonCode;

constexpr std::uint32_t kStateMagic = 0x4f544153;  // "OTAS"
constexpr std::uint32_t kStateLayout = 5;
constexpr std::uint32_t kKeysMagic = 0x4f54414b;  // "OTAK"
constexpr std::uint32_t kKeysLayout = 1;
// Sequence numbers skipped at every boot: events whose record could not be saved before a
// crash must not have their numbers reused (the controller drops seq <= last seen).
constexpr std::uint32_t kSeqBootMargin = 8;
// Re-request back-off: the timeout doubles per stalled request up to this factor.
constexpr std::uint32_t kMaxBackoffShift = 4;
// Re-requests without progress after which a download that has not received one broadcast
// frame asks by unicast only: a device whose broadcast frames never arrive (its ACL lacks
// the group's image topic) must not depend on them: it unsubscribes. One that did receive
// them keeps listening. Later than the controller's longest hold (10 x 500 ms by default,
// PROTOCOL.md 17) with the default request timeout (2 s, then 4 s).
constexpr std::uint32_t kBroadcastStallLimit = 2;
// Bytes of already-written image hashed back from flash per call, so a resumed download
// catches up its hash without stalling the message loop.
constexpr std::size_t kHashCatchUpPerCall = 256 * 1024;

// Besides the CRC: guards against a record from another build.
bool plausible(const PersistedState& s) {
  if (s.magic != kStateMagic || s.layout != kStateLayout) return false;
  if (s.state > DeviceState::confirming) return false;
  if (s.state == DeviceState::idle) return true;
  const proto::Manifest& m = s.manifest;
  return m.chunk_size >= proto::kMinChunkSize && m.chunk_size <= kMaxChunkSize && m.size > 0 &&
         m.chunk_count() <= kMaxImageChunks && s.received_chunks <= m.chunk_count();
}

// Appends `s` to out[pos..cap); returns the new position or cap+1 on overflow.
std::size_t append(char* out, std::size_t cap, std::size_t pos, const char* s) {
  std::size_t n = std::strlen(s);
  if (pos > cap || n + 1 > cap - pos) return cap + 1;
  std::memcpy(out + pos, s, n + 1);
  return pos + n;
}

const char* const kDetailTexts[] = {
    "",
    "confirm timeout: the self-test did not pass in time",
    "boot count exceeded: the image was not confirmed within its trial boots",
    "state record could not be saved",
};

ReasonCode reason_for(PortStatus s) {
  switch (s) {
    case PortStatus::no_space:
      return ReasonCode::no_space;
    default:
      return ReasonCode::flash_error;
  }
}

}  // namespace

const char* detail_text(Detail d) {
  const auto i = static_cast<std::size_t>(d);
  return i < sizeof kDetailTexts / sizeof kDetailTexts[0] ? kDetailTexts[i] : "";
}

// The whole update life cycle. dispatch() enters `to` (persisting it) and then runs the
// action, whose returned trigger is dispatched from the new state.
const Agent::Transition Agent::kTransitions[] = {
    // from                     trigger                   to                        action
    {DeviceState::idle, Trigger::offer_accepted, DeviceState::downloading, &Agent::start_download},
    // A trial image with no record of how it got there (record lost, or written by an agent
    // with another layout): it still has to prove itself, or it would revert unseen.
    {DeviceState::idle, Trigger::booted_trial, DeviceState::confirming, &Agent::run_self_test},
    {DeviceState::downloading, Trigger::resume_download, DeviceState::downloading,
     &Agent::resume_download},
    {DeviceState::downloading, Trigger::all_received, DeviceState::verifying, &Agent::verify_image},
    {DeviceState::downloading, Trigger::failed, DeviceState::idle, &Agent::fail_update},
    {DeviceState::downloading, Trigger::cancelled, DeviceState::idle, &Agent::cancel_update},
    {DeviceState::verifying, Trigger::resume_verify, DeviceState::verifying, &Agent::verify_image},
    {DeviceState::verifying, Trigger::verified, DeviceState::installing, &Agent::install_image},
    {DeviceState::verifying, Trigger::failed, DeviceState::idle, &Agent::fail_update},
    {DeviceState::verifying, Trigger::cancelled, DeviceState::idle, &Agent::cancel_update},
    {DeviceState::installing, Trigger::resume_install, DeviceState::installing,
     &Agent::install_image},
    {DeviceState::installing, Trigger::activated, DeviceState::rebooting, &Agent::restart_device},
    // Power lost after activate() but before the record said so: the new image runs on trial.
    {DeviceState::installing, Trigger::booted_trial, DeviceState::confirming,
     &Agent::run_self_test},
    {DeviceState::installing, Trigger::failed, DeviceState::idle, &Agent::fail_update},
    {DeviceState::rebooting, Trigger::booted_trial, DeviceState::confirming, &Agent::run_self_test},
    {DeviceState::rebooting, Trigger::self_test_passed, DeviceState::idle, &Agent::confirm_image},
    {DeviceState::rebooting, Trigger::failed, DeviceState::idle, &Agent::fail_update},
    {DeviceState::confirming, Trigger::booted_trial, DeviceState::confirming,
     &Agent::run_self_test},
    {DeviceState::confirming, Trigger::self_test_passed, DeviceState::idle, &Agent::confirm_image},
    {DeviceState::confirming, Trigger::self_test_failed, DeviceState::rebooting,
     &Agent::revert_image},
    {DeviceState::confirming, Trigger::confirm_timeout, DeviceState::rebooting,
     &Agent::revert_image},
    {DeviceState::confirming, Trigger::failed, DeviceState::idle, &Agent::fail_update},
};

Agent::Agent(const AgentConfig& config, FlashPort& flash, Transport& transport, Clock& clock,
             Storage& storage, Storage& key_storage, Crypto& crypto)
    : cfg_(config),
      flash_(flash),
      transport_(transport),
      clock_(clock),
      storage_(storage),
      key_storage_(key_storage),
      crypto_(crypto) {}

void Agent::dispatch(Trigger trigger) {
  while (trigger != Trigger::none) {
    const Transition* row = nullptr;
    for (const auto& t : kTransitions) {
      if (t.from == st_.state && t.trigger == trigger) {
        row = &t;
        break;
      }
    }
    if (row == nullptr) return;  // not meaningful in this state: ignored by design
    st_.state = row->to;
    // Entering idle is persisted by the action itself, after its side effect (confirm,
    // abort) and together with the outcome, so a power cut cannot lose either.
    if (row->to != DeviceState::idle) {
      const bool saved = persist();
      if (!saved && (row->to == DeviceState::downloading || row->to == DeviceState::verifying ||
                     row->to == DeviceState::installing)) {
        // Before activation an update whose state cannot be recorded stops cleanly: the old
        // image is untouched and the failure is reported.
        reason_ = persist_reason_;
        detail_ = persist_detail_;
        trigger = Trigger::failed;
        continue;
      }
      if (cfg_.on_state != nullptr) cfg_.on_state(cfg_.on_state_ctx, row->to);
    }
    trigger = (this->*(row->action))();
    if (row->to == DeviceState::idle && st_.state == DeviceState::idle &&
        cfg_.on_state != nullptr) {
      cfg_.on_state(cfg_.on_state_ctx, DeviceState::idle);
    }
  }
}

// ---------------------------------------------------------------------------------------
// Boot and connection

void Agent::boot() {
  static_assert(std::is_trivially_copyable<PersistedState>::value, "stored as bytes");
  std::size_t len = 0;
  // Loaded in place: the record is kilobytes, too big for a firmware stack. Saved records
  // stop after the bitmap bytes in use; the rest stays zero.
  std::memset(static_cast<void*>(&st_), 0, sizeof st_);
  const PortStatus loaded = storage_.load(&st_, sizeof st_, len);
  if (loaded != PortStatus::ok || len > sizeof st_ || !plausible(st_) || len != record_len() ||
      st_.crc != record_crc(len)) {
    if (loaded != PortStatus::not_found) ++stats_.discarded_records;  // torn, foreign, damaged
    // All-zero is the factory state of every field (a temporary would cost kilobytes of stack).
    std::memset(static_cast<void*>(&st_), 0, sizeof st_);
    // A lost record must not restart the sequence below numbers already used (the
    // controller drops seq <= last seen): start at the wall clock in seconds, which stays
    // ahead unless the device averaged more than one event per second over its life.
    const std::uint64_t now_s = clock_.unix_seconds();
    st_.seq = now_s > 0xffff0000u ? 0xffff0000u : static_cast<std::uint32_t>(now_s);
  }
  persisted_seq_ = st_.seq;  // what the stored record says (or the wall-clock start)
  st_.seq += kSeqBootMargin;
  load_keys();
  if (flash_.read_state(image_) != PortStatus::ok) image_ = ImageState{};
  reset_requested_ = false;
  boot_ms_ = clock_.now_ms();
  last_heartbeat_ms_ = boot_ms_;
  reset_transfer_memory();

  switch (st_.state) {
    case DeviceState::idle:
      if (image_.slot_state == proto::SlotState::pending) dispatch(Trigger::booted_trial);
      break;
    case DeviceState::downloading:
    case DeviceState::verifying:
      // A key set that revoked the manifest's keys was stored just before the power went.
      if (check_keys(st_.manifest, false) != ReasonCode::ok) {
        reason_ = ReasonCode::unknown_key;
        dispatch(Trigger::failed);
      } else {
        dispatch(st_.state == DeviceState::downloading ? Trigger::resume_download
                                                       : Trigger::resume_verify);
      }
      break;
    case DeviceState::installing:
      if (runs_image(st_.manifest) && image_.slot_state == proto::SlotState::pending) {
        dispatch(Trigger::booted_trial);  // activated just before the power was lost
      } else {
        dispatch(Trigger::resume_install);
      }
      break;
    case DeviceState::rebooting:
    case DeviceState::confirming: {
      // By hash too where the port can tell: a same-version image that was reverted leaves
      // the device on an image with the same version.
      const bool runs_new = runs_image(st_.manifest);
      if (runs_new && image_.slot_state == proto::SlotState::pending) {
        dispatch(Trigger::booted_trial);
      } else if (runs_new && image_.slot_state == proto::SlotState::confirmed) {
        dispatch(Trigger::self_test_passed);  // confirmed before the record was written
      } else {
        // Back on the old image: the agent gave up the trial (revert_reason says why) or the
        // boot loader did, after the trial boots ran out without a confirmation.
        if (st_.revert_reason != ReasonCode::ok) {
          reason_ = st_.revert_reason;
          detail_ = st_.revert_detail;
        } else {
          reason_ = ReasonCode::rolled_back;
          detail_ = image_.slot_state == proto::SlotState::rolled_back ? Detail::boot_limit
                                                                      : Detail::none;
        }
        dispatch(Trigger::failed);
      }
      break;
    }
  }
}

void Agent::on_connected() {
  char topic[proto::kMaxTopicLen];
  std::size_t pos = append(topic, sizeof topic, 0, cfg_.prefix);
  pos = append(topic, sizeof topic, pos, "/dev/");
  pos = append(topic, sizeof topic, pos, cfg_.device_id);
  pos = append(topic, sizeof topic, pos, "/down/#");
  if (pos <= sizeof topic) transport_.subscribe(topic, 1);
  for (std::size_t i = 0; i < cfg_.group_count; ++i) {
    if (proto::make_topic(cfg_.prefix, proto::TopicKind::group_offer, cfg_.groups[i], topic,
                          sizeof topic) != 0) {
      transport_.subscribe(topic, 1);
    }
  }
  // Results go before the hello: the controller should learn why the version changed
  // before it sees the new version (flush_outcomes sends the hello after a result).
  if (!flush_outcomes()) send_hello();
  if (st_.state == DeviceState::downloading) {
    // Subscribed before the request goes out: the broker handles both in order, so no
    // broadcast answering it can come before the subscription.
    start_listening();
    request_chunks(true);
  }
}

void Agent::on_message(const char* topic, const std::uint8_t* payload, std::size_t len) {
  const char* id = nullptr;
  std::size_t id_len = 0;
  const proto::TopicKind kind = proto::parse_topic(cfg_.prefix, topic, &id, &id_len);
  if (kind == proto::TopicKind::group_chunk) {
    // Broadcast frames: handle_chunk checks the image and the flag like any frame.
    if (listening_) handle_chunk(payload, len);
    return;
  }
  if (kind == proto::TopicKind::group_offer) {
    bool member = false;
    for (std::size_t i = 0; i < cfg_.group_count; ++i) {
      if (std::strlen(cfg_.groups[i]) == id_len && std::memcmp(cfg_.groups[i], id, id_len) == 0) {
        member = true;
      }
    }
    if (member && len > 0) handle_offer(payload, len);  // empty = retained offer cleared
    return;
  }
  if (id == nullptr || std::strlen(cfg_.device_id) != id_len ||
      std::memcmp(cfg_.device_id, id, id_len) != 0) {
    return;
  }
  switch (kind) {
    case proto::TopicKind::chunk:
      handle_chunk(payload, len);
      break;
    case proto::TopicKind::offer:
      handle_offer(payload, len);
      break;
    case proto::TopicKind::cancel:
      handle_cancel(payload, len);
      break;
    case proto::TopicKind::keys:
      handle_keys(payload, len);
      break;
    default:
      break;
  }
}

void Agent::tick() {
  maybe_send_heartbeat();
  if (st_.state == DeviceState::confirming && !reset_requested_) {
    dispatch(check_self_test());  // an asynchronous self-test, or its timeout
    return;
  }
  if (st_.state != DeviceState::downloading) return;
  advance_hash(kHashCatchUpPerCall);
  if (!transport_.connected()) {
    last_chunk_ms_ = clock_.now_ms();  // a stall while offline is not the server's fault
    return;
  }
  const std::uint64_t now = clock_.now_ms();
  if (now - last_chunk_ms_ < effective_timeout_ms()) return;
  ++stats_.timeouts;
  if (++stalled_requests_ > cfg_.max_stalled_requests) {
    reason_ = ReasonCode::timeout;
    dispatch(Trigger::failed);
    return;
  }
  request_chunks(true);
}

// ---------------------------------------------------------------------------------------
// Offers and cancels

ReasonCode Agent::check_offer(const proto::Offer& offer) {
  const proto::Manifest& m = offer.manifest;
  // Keys and signatures come first: nothing else in an unsigned manifest can be trusted.
  const ReasonCode keys = check_keys(m, true);
  if (keys != ReasonCode::ok) return keys;
  // Check 3c: frames name the image by `image`, the download is verified by `sha256`; a
  // manifest where they disagree describes no image at all.
  if (std::strncmp(m.image.c_str(), m.sha256.c_str(), proto::kImageIdLen) != 0) {
    return ReasonCode::bad_manifest;
  }
  // Check 3a: signed for this offer id and for this device or one of its groups, so a
  // captured offer replayed under another deployment id, or to another device, is useless.
  if (m.deployment != offer.deployment.c_str()) return ReasonCode::wrong_target;
  if (!m.device.empty()) {
    if (m.device != cfg_.device_id) return ReasonCode::wrong_target;
  } else {
    bool member = false;
    for (std::size_t i = 0; i < cfg_.group_count && !m.group.empty(); ++i)
      member = member || m.group == cfg_.groups[i];
    if (!member) return ReasonCode::wrong_target;
  }
  bool hw_ok = false;
  for (std::size_t i = 0; i < m.hw_count; ++i) hw_ok = hw_ok || m.hw[i] == cfg_.hw_model;
  if (!hw_ok) return ReasonCode::wrong_hardware;
  if (m.counter < image_.security_counter) return ReasonCode::downgrade;
  // A lower version only when the signed manifest says the operator ordered a rollback.
  if (!m.rollback && proto::is_semver(image_.running_version.c_str(), image_.running_version.size) &&
      proto::compare_semver(m.version.c_str(), image_.running_version.c_str()) < 0) {
    return ReasonCode::downgrade;
  }
  if (m.expires != 0 && clock_.unix_seconds() > m.expires) return ReasonCode::expired;
  if (m.kind != image_.kind || m.compression != proto::Compression::none ||
      m.chunk_size > kMaxChunkSize || m.chunk_count() > kMaxImageChunks ||
      m.size > proto::kMaxImageSize) {
    return ReasonCode::unsupported;
  }
  if (runs_image(m)) return ReasonCode::already_installed;
  if (m.size > image_.free_bytes) return ReasonCode::no_space;
  return ReasonCode::ok;
}

const TrustedKey* Agent::find_key(const proto::KeyId& id) const {
  for (std::uint32_t i = 0; i < keys_.key_count && i < kMaxTrustedKeys; ++i) {
    if (keys_.keys[i].id == id) return &keys_.keys[i];
  }
  return nullptr;
}

// Verifies `sig` over the first `canon_len` bytes of msg_.
bool Agent::verify(const std::uint8_t* pub, std::size_t canon_len, const proto::SignatureHex& sig) {
  std::uint8_t raw[64];
  if (canon_len == 0 || !proto::hex_decode(sig.c_str(), sig.size, raw, sizeof raw)) return false;
  return crypto_.verify_p256(pub, reinterpret_cast<const std::uint8_t*>(msg_), canon_len, raw) ==
         Crypto::Verify::ok;
}

ReasonCode Agent::check_keys(const proto::Manifest& m, bool verify_sigs) {
  // Check 2: `key` is a release or online key of the set (revoked keys are not in it).
  const TrustedKey* key = find_key(m.key);
  if (key == nullptr) return ReasonCode::unknown_key;
  // Check 3: the manifest signature.
  if (verify_sigs) {
    const std::size_t n = proto::canonical_manifest(m, msg_, sizeof msg_);
    if (n == 0) return ReasonCode::bad_manifest;
    if (!verify(key->pub, n, m.sig)) return ReasonCode::bad_signature;
  }
  // Check 3b: an online key cannot release software by itself; a release signature that is
  // present must hold whoever signed the manifest.
  if (m.release_key.empty()) {
    return key->role == proto::KeyRole::online ? ReasonCode::bad_signature : ReasonCode::ok;
  }
  const TrustedKey* release = find_key(m.release_key);
  if (release == nullptr || release->role != proto::KeyRole::release) {
    return ReasonCode::unknown_key;
  }
  if (verify_sigs) {
    const std::size_t n = proto::canonical_release(m, msg_, sizeof msg_);
    if (n == 0) return ReasonCode::bad_manifest;
    if (!verify(release->pub, n, m.release_sig)) return ReasonCode::bad_signature;
  }
  return ReasonCode::ok;
}

bool Agent::runs_image(const proto::Manifest& m) const {
  if (image_.running_version != m.version) return false;
  // PROTOCOL.md section 7, check 8: the same image is the same version and SHA-256. A port
  // that cannot tell the running hash leaves the version alone to decide.
  return image_.running_sha256.empty() || image_.running_sha256 == m.sha256;
}

void Agent::handle_offer(const std::uint8_t* payload, std::size_t len) {
  proto::Offer& offer = *new (&scratch_.offer) proto::Offer();
  if (proto::decode_offer(reinterpret_cast<const char*>(payload), len, offer)) {
    ++stats_.bad_messages;
    return;  // no trustworthy deployment id to answer to
  }
  if (Outcome* done = find_outcome(offer.deployment)) {
    send_outcome(*done);  // asked again: the answer was lost somewhere, repeat it as it was
    return;
  }
  if (st_.state != DeviceState::idle) {
    if (offer.deployment == st_.deployment) return;  // a duplicate: the work goes on
    // Check 10 comes after the signature checks like every other answer: `busy` to an
    // unsigned offer would already tell an impostor something (PROTOCOL.md section 7).
    const ReasonCode keys = check_keys(offer.manifest, true);
    if (keys != ReasonCode::ok) {
      record_outcome(proto::EventType::decline, offer.deployment, false, keys);
    } else {
      decline(offer.deployment, ReasonCode::busy);
    }
    return;
  }
  flash_.read_state(image_);
  const ReasonCode reason = check_offer(offer);
  if (reason != ReasonCode::ok) {
    record_outcome(proto::EventType::decline, offer.deployment, false, reason);
    return;
  }
  // Every check passed: the integrator decides whether now is a good time.
  if (cfg_.offer_policy != nullptr) {
    const OfferDecision d = cfg_.offer_policy(cfg_.offer_policy_ctx, offer.manifest);
    if (d.answer == OfferAnswer::decline) {
      record_outcome(proto::EventType::decline, offer.deployment, false,
                     d.reason == ReasonCode::ok ? ReasonCode::internal_error : d.reason);
      return;
    }
    if (d.answer == OfferAnswer::defer) {
      defer(offer.deployment, d.reason == ReasonCode::ok ? ReasonCode::busy : d.reason,
            d.retry_after_s);
      return;
    }
  }
  st_.deployment = offer.deployment;
  st_.manifest = offer.manifest;
  st_.received_chunks = 0;
  std::memset(st_.received, 0, sizeof st_.received);
  chunks_since_checkpoint_ = 0;  // nothing unsynced in an empty bitmap (see persist())
  st_.revert_reason = ReasonCode::ok;
  chunks_since_checkpoint_ = 0;
  dispatch(Trigger::offer_accepted);
}

void Agent::handle_cancel(const std::uint8_t* payload, std::size_t len) {
  proto::Cancel cancel;
  if (proto::decode_cancel(reinterpret_cast<const char*>(payload), len, cancel)) {
    ++stats_.bad_messages;
    return;
  }
  // Once the new image is activated the cancel is too late; the result will tell.
  if (cancel.deployment == st_.deployment) dispatch(Trigger::cancelled);
}

// ---------------------------------------------------------------------------------------
// Key sets (PROTOCOL.md 6.6)

void Agent::key_id_of(const std::uint8_t pub[proto::kP256PointLen], proto::KeyId& out) {
  std::uint8_t der[proto::kP256SpkiDerLen];
  proto::p256_spki_der(pub, der);
  Sha256State s;
  std::uint8_t digest[32];
  crypto_.sha256_init(s);
  crypto_.sha256_update(s, der, sizeof der);
  crypto_.sha256_final(s, digest);
  proto::hex_encode(digest, proto::kKeyIdLen / 2, out.data);
  out.data[proto::kKeyIdLen] = '\0';
  out.size = proto::kKeyIdLen;
}

std::uint32_t Agent::key_record_crc() {
  const std::uint32_t stored = keys_.crc;
  keys_.crc = 0;
  const std::uint32_t crc =
      proto::crc32(reinterpret_cast<const std::uint8_t*>(&keys_), sizeof keys_);
  keys_.crc = stored;
  return crc;
}

// The keys the device was built with: version 0, nothing stored (a firmware update may bring
// other provisioned keys as long as no key set was ever applied).
void Agent::provision_keys() {
  std::memset(static_cast<void*>(&keys_), 0, sizeof keys_);
  for (std::size_t i = 0; i < cfg_.key_count && cfg_.keys != nullptr; ++i) {
    const ProvisionedKey& p = cfg_.keys[i];
    TrustedKey* slot = nullptr;
    if (p.role == proto::KeyRole::root) {
      if (keys_.has_root == 0) slot = &keys_.root;
      keys_.has_root = 1;
    } else if (keys_.key_count < kMaxTrustedKeys) {
      slot = &keys_.keys[keys_.key_count++];
    }
    if (slot == nullptr) continue;  // a second root, or more keys than the agent holds
    slot->role = p.role;
    std::memcpy(slot->pub, p.pub, sizeof slot->pub);
    key_id_of(slot->pub, slot->id);
  }
}

// Which key set is trusted after a power-on. The key record is written only by
// apply_keyset(), always before the state record notes the version (st_.keys_version), so:
//  - no record and nothing noted: the device never applied a set; the provisioned keys hold.
//  - a valid record at least as new as the note: that set holds.
//  - a torn, foreign or older record while the note says a set was applied: the Storage port
//    broke its promise of atomic old-or-new writes. Falling back to the provisioned keys
//    would silently trust again every key a set revoked (a power cut would undo a
//    revocation), so the agent fails closed instead: it trusts no release or online key and
//    declines every offer (unknown_key), reports `keys` 0 so the controller re-sends its
//    newest set, and accepts a set signed by the provisioned root with a version at least
//    the noted one (the lost set itself) — unless a set had rotated the root away, in
//    which case only reprovisioning helps. Losing both records (the state record too) looks
//    like a device that never applied a set: that trade-off is the price of a port that
//    cannot keep either record.
void Agent::load_keys() {
  static_assert(std::is_trivially_copyable<KeyRecord>::value, "stored as bytes");
  std::memset(static_cast<void*>(&keys_), 0, sizeof keys_);
  std::size_t len = 0;
  const PortStatus loaded = key_storage_.load(&keys_, sizeof keys_, len);
  keys_lost_ = false;
  if (loaded == PortStatus::ok && len == sizeof keys_ && keys_.magic == kKeysMagic &&
      keys_.layout == kKeysLayout && keys_.crc == key_record_crc() &&
      keys_.key_count <= kMaxTrustedKeys && keys_.has_root <= 1 &&
      keys_.version >= st_.keys_version && keys_.version > 0) {
    return;
  }
  if (loaded != PortStatus::not_found) ++stats_.discarded_key_records;
  provision_keys();
  if (st_.keys_version == 0) return;
  keys_lost_ = true;
  keys_.key_count = 0;
  if (st_.keys_root_rotated != 0) keys_.has_root = 0;
}

// Field rules, key ids, the root signature, the version (PROTOCOL.md 6.6, in that order).
bool Agent::keyset_acceptable(const proto::KeySet& set) {
  std::size_t trusted = 0;
  for (std::size_t i = 0; i < set.key_count; ++i) {
    proto::KeyId id;
    key_id_of(set.keys[i].pub, id);
    if (id != set.keys[i].id) return false;  // the id must be the key's own
    if (set.keys[i].role != proto::KeyRole::root) ++trusted;
  }
  if (trusted > kMaxTrustedKeys) return false;  // more keys than this device can hold
  if (keys_.has_root == 0 || set.key != keys_.root.id) return false;
  const std::size_t n = proto::canonical_keyset(set, msg_, sizeof msg_);
  if (!verify(keys_.root.pub, n, set.sig)) return false;
  // Only forward; after a lost record the lost version itself is welcome again.
  return keys_lost_ ? set.version >= st_.keys_version : set.version > keys_.version;
}

// Stores the set (and the next root), then uses it. False when it could not be stored: the
// old set stays in force.
bool Agent::apply_keyset(const proto::KeySet& set) {
  const TrustedKey old_root = keys_.root;
  std::memset(static_cast<void*>(&keys_), 0, sizeof keys_);
  keys_.magic = kKeysMagic;
  keys_.layout = kKeysLayout;
  keys_.version = set.version;
  keys_.has_root = 1;
  keys_.root = old_root;  // signs the next set too, unless this one names a new root
  for (std::size_t i = 0; i < set.key_count; ++i) {
    if (set.keys[i].role == proto::KeyRole::root) {
      keys_.root = set.keys[i];
    } else if (keys_.key_count < kMaxTrustedKeys) {
      keys_.keys[keys_.key_count++] = set.keys[i];
    }
  }
  keys_.crc = key_record_crc();
  if (key_storage_.save(&keys_, sizeof keys_) != PortStatus::ok) {
    ++stats_.storage_failures;
    load_keys();  // back to what is stored
    return false;
  }
  keys_lost_ = false;
  // Noted in the state record after the key record is durable (see load_keys()). The root
  // before the first set is the provisioned one; once it changed, it stays "rotated".
  st_.keys_version = keys_.version;
  if (keys_.root.id != old_root.id) st_.keys_root_rotated = 1;
  persist();
  ++stats_.keysets_applied;
  return true;
}

void Agent::handle_keys(const std::uint8_t* payload, std::size_t len) {
  if (keys_.has_root == 0) return;  // provisioned without a root: the set never changes
  proto::KeySet& set = *new (&scratch_.keyset) proto::KeySet();
  const bool ok = !proto::decode_keyset(reinterpret_cast<const char*>(payload), len, set) &&
                  keyset_acceptable(set) && apply_keyset(set);
  if (!ok) {
    ++stats_.keysets_refused;
  } else if ((st_.state == DeviceState::downloading || st_.state == DeviceState::verifying) &&
             check_keys(st_.manifest, false) != ReasonCode::ok) {
    // The image being downloaded was signed by a key the new set revokes: it will not be
    // installed. (Once activated, the trial boot finishes as usual.)
    reason_ = ReasonCode::unknown_key;
    dispatch(Trigger::failed);
  }
  send_hello();  // the version now held, also after a refusal
}

void Agent::decline(const proto::Id& deployment, ReasonCode reason) {
  proto::Event ev;
  ev.type = proto::EventType::decline;
  ev.deployment = deployment;
  ev.reason = reason;
  send_event(ev);
}

// Not now: no outcome is kept, so the same deployment offered again asks the policy again.
void Agent::defer(const proto::Id& deployment, ReasonCode reason, std::uint32_t retry_after_s) {
  proto::Event ev;
  ev.type = proto::EventType::defer;
  ev.deployment = deployment;
  ev.reason = reason;
  ev.retry_after = retry_after_s;
  send_event(ev);
}

// Liveness only: QoS 0, not retained (the retained hello stays), no seq, no storage write.
void Agent::maybe_send_heartbeat() {
  if (cfg_.heartbeat_interval_ms == 0 || !transport_.connected()) return;
  const std::uint64_t now = clock_.now_ms();
  if (now - last_heartbeat_ms_ < cfg_.heartbeat_interval_ms) return;
  proto::Heartbeat hb;
  hb.device.assign(cfg_.device_id);
  hb.state = st_.state;
  hb.uptime = (now - boot_ms_) / 1000u;
  std::size_t len = 0;
  if (proto::encode_heartbeat(hb, msg_, sizeof msg_, len)) return;
  if (publish(proto::TopicKind::presence, msg_, len, 0, false)) ++stats_.heartbeats;
  last_heartbeat_ms_ = now;
}

// ---------------------------------------------------------------------------------------
// Actions

Trigger Agent::start_download() {
  proto::image_id_to_bytes(st_.manifest.image.c_str(), image_id_bytes_);
  proto::Event ev;
  ev.type = proto::EventType::accept;
  ev.deployment = st_.deployment;
  send_event(ev);
  send_status(DeviceState::downloading);
  const PortStatus s = flash_.begin(st_.manifest, false);
  if (s != PortStatus::ok) {
    reason_ = reason_for(s);
    return Trigger::failed;
  }
  reset_transfer_memory();
  start_listening();
  request_chunks(true);
  return Trigger::none;
}

Trigger Agent::resume_download() {
  proto::image_id_to_bytes(st_.manifest.image.c_str(), image_id_bytes_);
  const PortStatus s = flash_.begin(st_.manifest, true);
  if (s == PortStatus::not_found) {
    // The partial image is gone (the slot was prepared afresh): so are the chunks.
    st_.received_chunks = 0;
    std::memset(st_.received, 0, sizeof st_.received);
    chunks_since_checkpoint_ = 0;
    persist();
  } else if (s != PortStatus::ok) {
    reason_ = reason_for(s);
    return Trigger::failed;
  }
  reset_transfer_memory();
  last_progress_percent_ = st_.received_chunks * 100u / st_.manifest.chunk_count();
  if (st_.received_chunks == st_.manifest.chunk_count()) return Trigger::all_received;
  return Trigger::none;  // chunks are requested once connected
}

Trigger Agent::verify_image() {
  stop_listening();
  send_status(DeviceState::verifying);
  advance_hash(static_cast<std::size_t>(-1));
  if (hashed_bytes_ != st_.manifest.size) {
    reason_ = ReasonCode::size_mismatch;
    return Trigger::failed;
  }
  std::uint8_t digest[32];
  std::uint8_t expected[32];
  crypto_.sha256_final(sha_, digest);
  if (!proto::hex_decode(st_.manifest.sha256.c_str(), st_.manifest.sha256.size, expected,
                         sizeof expected) ||
      std::memcmp(digest, expected, sizeof digest) != 0) {
    reason_ = ReasonCode::hash_mismatch;
    return Trigger::failed;
  }
  const PortStatus s = flash_.finish(st_.manifest);
  if (s != PortStatus::ok) {
    reason_ = reason_for(s);
    return Trigger::failed;
  }
  return Trigger::verified;
}

Trigger Agent::install_image() {
  send_status(DeviceState::installing);
  const PortStatus s =
      flash_.activate_trial(st_.manifest, cfg_.max_trial_boots == 0 ? 1 : cfg_.max_trial_boots);
  if (s != PortStatus::ok) {
    reason_ = reason_for(s);
    return Trigger::failed;
  }
  return Trigger::activated;
}

Trigger Agent::restart_device() {
  send_status(DeviceState::rebooting);
  reset_requested_ = true;
  flash_.reset();
  return Trigger::none;
}

Trigger Agent::run_self_test() {
  trial_started_ms_ = clock_.now_ms();
  return check_self_test();
}

// Not an action: asks the self-test hook (again) and watches the confirm timeout.
Trigger Agent::check_self_test() {
  SelfTestStatus s;
  if (cfg_.self_test_poll != nullptr) {
    s = cfg_.self_test_poll(cfg_.self_test_ctx);
  } else {
    const bool healthy = cfg_.self_test == nullptr || cfg_.self_test(cfg_.self_test_ctx);
    s = healthy ? SelfTestStatus::passed : SelfTestStatus::failed;
  }
  if (s == SelfTestStatus::passed) return Trigger::self_test_passed;
  if (s == SelfTestStatus::failed) {
    reason_ = ReasonCode::self_test_failed;
    detail_ = Detail::none;
    return Trigger::self_test_failed;
  }
  if (cfg_.confirm_timeout_ms != 0 &&
      clock_.now_ms() - trial_started_ms_ >= cfg_.confirm_timeout_ms) {
    reason_ = ReasonCode::timeout;
    detail_ = Detail::confirm_timeout;
    return Trigger::confirm_timeout;
  }
  return Trigger::none;  // still running: tick() asks again
}

Trigger Agent::confirm_image() {
  const PortStatus s = flash_.confirm();
  flash_.read_state(image_);
  if (st_.deployment.empty()) {  // no deployment to answer: the retained hello tells
    persist();
    return Trigger::none;
  }
  if (s != PortStatus::ok) {
    set_result(false, reason_for(s));
  } else {
    set_result(true, ReasonCode::ok);
  }
  return Trigger::none;
}

Trigger Agent::revert_image() {
  // Not confirming is what reverts; reject() makes a boot loader that would give the image
  // more trial boots return to the previous slot at once.
  st_.revert_reason = reason_;
  st_.revert_detail = detail_;
  detail_ = Detail::none;
  persist();
  flash_.reject();
  reset_requested_ = true;
  flash_.reset();
  return Trigger::none;
}

Trigger Agent::fail_update() {
  stop_listening();
  flash_.abort();
  flash_.read_state(image_);
  const Detail detail = detail_;
  detail_ = Detail::none;
  set_result(false, reason_, detail);
  return Trigger::none;
}

Trigger Agent::cancel_update() {
  reason_ = ReasonCode::cancelled;
  return fail_update();
}

// ---------------------------------------------------------------------------------------
// Transfer

void Agent::reset_transfer_memory() {
  crypto_.sha256_init(sha_);
  hashed_bytes_ = 0;
  requested_upto_ = 0;
  outstanding_ = 0;
  last_chunk_ms_ = clock_.now_ms();
  stalled_requests_ = 0;
  chunks_since_checkpoint_ = 0;
  last_progress_percent_ = 0;
  progress_sent_ = false;
  broadcast_seen_ = false;
}

bool Agent::chunk_received(std::uint32_t index) const {
  return (st_.received[index / 8] >> (index % 8)) & 1u;
}

void Agent::mark_received(std::uint32_t index) {
  st_.received[index / 8] = static_cast<std::uint8_t>(st_.received[index / 8] | (1u << (index % 8)));
  ++st_.received_chunks;
}

std::uint32_t Agent::expected_chunk_len(std::uint32_t index) const {
  const std::uint64_t offset = static_cast<std::uint64_t>(index) * st_.manifest.chunk_size;
  const std::uint64_t rest = st_.manifest.size - offset;
  return static_cast<std::uint32_t>(rest < st_.manifest.chunk_size ? rest
                                                                   : st_.manifest.chunk_size);
}

void Agent::request_chunks(bool restart_window) {
  const std::uint32_t count = st_.manifest.chunk_count();
  if (restart_window) {
    requested_upto_ = static_cast<std::uint32_t>(hashed_bytes_ / st_.manifest.chunk_size);
    while (requested_upto_ < count && chunk_received(requested_upto_)) ++requested_upto_;
    outstanding_ = 0;
  }
  proto::ChunkRequest req;
  req.deployment = st_.deployment;
  req.image = st_.manifest.image;
  // Falling back means no longer listening: frames that still came would duplicate the
  // unicast answers.
  if (listening_ && !broadcast_seen_ && stalled_requests_ >= kBroadcastStallLimit) stop_listening();
  if (listening_) req.bc.assign(broadcast_group());
  while (outstanding_ < cfg_.window_chunks && requested_upto_ < count) {
    req.first = requested_upto_;
    req.count = 0;
    req.has_bitmap = false;
    std::memset(req.bitmap, 0, sizeof req.bitmap);
    std::uint32_t wanted = 0;
    std::uint32_t span = 0;
    while (span < proto::kMaxChunksPerRequest && req.first + span < count &&
           outstanding_ + wanted < cfg_.window_chunks) {
      if (chunk_received(req.first + span)) {
        req.has_bitmap = true;
      } else {
        req.bitmap[span / 8] = static_cast<std::uint8_t>(req.bitmap[span / 8] | (1u << (span % 8)));
        ++wanted;
      }
      ++span;
    }
    requested_upto_ += span;
    if (wanted == 0) continue;
    req.count = span;
    std::size_t len = 0;
    if (proto::encode_chunk_request(req, msg_, sizeof msg_, len)) return;
    publish(proto::TopicKind::chunk_request, msg_, len, 1, false);
    ++stats_.requests_sent;
    outstanding_ += wanted;
  }
  last_chunk_ms_ = clock_.now_ms();
}

const char* Agent::broadcast_group() const {
  if (!cfg_.broadcast || cfg_.group_count == 0) return nullptr;
  for (std::size_t i = 0; i < cfg_.group_count; ++i) {
    if (st_.manifest.group == cfg_.groups[i]) return cfg_.groups[i];
  }
  return cfg_.groups[0];
}

void Agent::start_listening() {
  const char* group = broadcast_group();
  if (group == nullptr || proto::make_group_chunk_topic(cfg_.prefix, group, st_.manifest.image.c_str(),
                                                        listening_topic_, sizeof listening_topic_) == 0) {
    return;
  }
  // QoS 0 (PROTOCOL.md 17): a frame missed is asked for again anyway, and with a clean
  // session QoS 1 would only add a PUBACK per frame for the device and the broker to handle.
  listening_ = transport_.subscribe(listening_topic_, 0);
}

void Agent::stop_listening() {
  if (!listening_) return;
  listening_ = false;
  transport_.unsubscribe(listening_topic_);
}

void Agent::advance_hash(std::size_t budget_bytes) {
  const std::uint32_t chunk = st_.manifest.chunk_size;
  while (budget_bytes > 0 && hashed_bytes_ < st_.manifest.size) {
    const std::uint32_t index = static_cast<std::uint32_t>(hashed_bytes_ / chunk);
    if (!chunk_received(index)) return;
    const std::uint64_t chunk_end = static_cast<std::uint64_t>(index) * chunk +
                                    expected_chunk_len(index);
    std::size_t n = static_cast<std::size_t>(chunk_end - hashed_bytes_);
    if (n > sizeof hash_buf_) n = sizeof hash_buf_;
    if (flash_.read(static_cast<std::uint32_t>(hashed_bytes_), hash_buf_, n) != PortStatus::ok) {
      return;  // verification will report the shortfall
    }
    crypto_.sha256_update(sha_, hash_buf_, n);
    hashed_bytes_ += n;
    budget_bytes = n >= budget_bytes ? 0 : budget_bytes - n;
  }
}

void Agent::handle_chunk(const std::uint8_t* payload, std::size_t len) {
  if (st_.state != DeviceState::downloading) return;  // late chunks of a finished transfer
  proto::ChunkFrame frame;
  // Broadcast frames (bit0) only while this download listens (it asked with `bc`,
  // PROTOCOL.md 8.3, 17). It does not implement compressed payloads (14), so a frame
  // carrying bit1 is as unknown to it as one with bits 2-7 set: written as it is, it would
  // land in flash as garbage.
  const std::uint8_t known_flags = listening_ ? proto::kFrameFlagBroadcast : 0;
  if (proto::decode_chunk_frame(payload, len, st_.manifest.chunk_size, frame) ||
      (frame.flags & ~known_flags) != 0 ||
      std::memcmp(frame.image_id, image_id_bytes_, sizeof image_id_bytes_) != 0) {
    ++stats_.bad_frames;  // corrupt or foreign: the timeout re-requests what is missing
    return;
  }
  ++stats_.chunks_received;
  stats_.bytes_received += frame.length;
  if ((frame.flags & proto::kFrameFlagBroadcast) != 0) {
    broadcast_seen_ = true;
    ++stats_.broadcast_chunks;
  }
  const std::uint32_t index = frame.offset / st_.manifest.chunk_size;
  if (frame.offset % st_.manifest.chunk_size != 0 || index >= st_.manifest.chunk_count() ||
      frame.length != expected_chunk_len(index)) {
    ++stats_.bad_frames;  // not a chunk of the signed image: dropped, re-requested later
    return;
  }
  if (chunk_received(index)) {
    ++stats_.duplicate_chunks;
    return;
  }
  const PortStatus s = flash_.write(frame.offset, frame.payload, frame.length);
  if (s != PortStatus::ok) {
    reason_ = reason_for(s);
    dispatch(Trigger::failed);
    return;
  }
  mark_received(index);
  if (index < requested_upto_ && outstanding_ > 0) --outstanding_;
  last_chunk_ms_ = clock_.now_ms();
  stalled_requests_ = 0;
  // Hash what the flash holds, not what arrived: a bad write must fail verification.
  advance_hash(kHashCatchUpPerCall);

  if (++chunks_since_checkpoint_ >= cfg_.checkpoint_chunks && !persist()) {  // syncs flash first
    reason_ = persist_reason_;
    detail_ = persist_detail_;
    dispatch(Trigger::failed);
    return;
  }
  maybe_report_progress();
  if (st_.received_chunks == st_.manifest.chunk_count()) {
    flash_.sync();
    dispatch(Trigger::all_received);
  } else if (outstanding_ <= cfg_.window_chunks / 2) {
    request_chunks(false);
  }
}

void Agent::maybe_report_progress() {
  const std::uint32_t percent = st_.received_chunks * 100u / st_.manifest.chunk_count();
  const std::uint32_t step = cfg_.progress_step_percent == 0 ? 1 : cfg_.progress_step_percent;
  if (percent / step == last_progress_percent_ / step) return;
  // Too soon after the last one: the step is reported with a chunk after the interval.
  const std::uint64_t now = clock_.now_ms();
  if (percent < 100 && progress_sent_ && now - last_progress_ms_ < cfg_.progress_interval_ms) return;
  last_progress_percent_ = percent;
  last_progress_ms_ = now;
  progress_sent_ = true;
  proto::Event ev;
  ev.type = proto::EventType::progress;
  ev.deployment = st_.deployment;
  const std::uint64_t bytes = static_cast<std::uint64_t>(st_.received_chunks) *
                              st_.manifest.chunk_size;
  ev.received = bytes > st_.manifest.size ? st_.manifest.size : bytes;
  ev.total = st_.manifest.size;
  send_event(ev);
}

// ---------------------------------------------------------------------------------------
// Reporting and persistence

bool Agent::publish(proto::TopicKind kind, const char* data, std::size_t len, int qos,
                    bool retain) {
  char topic[proto::kMaxTopicLen];
  if (proto::make_topic(cfg_.prefix, kind, cfg_.device_id, topic, sizeof topic) == 0) return false;
  return transport_.connected() && transport_.publish(topic, data, len, qos, retain);
}

void Agent::send_event(proto::Event& ev) {
  ev.seq = ++st_.seq;
  // A sequence number is never reused, even across a power cut: boot() skips
  // kSeqBootMargin numbers past the stored one, so the record needs saving only every
  // kSeqBootMargin events (flash wear), not for each one.
  if (st_.seq - persisted_seq_ >= kSeqBootMargin) persist();
  std::size_t len = 0;
  if (proto::encode_event(ev, msg_, sizeof msg_, len)) return;
  publish(proto::TopicKind::event, msg_, len, 1, false);
}

void Agent::send_status(DeviceState s) {
  proto::Event ev;
  ev.type = proto::EventType::status;
  ev.deployment = st_.deployment;
  ev.state = s;
  send_event(ev);
}

void Agent::send_hello() {
  flash_.read_state(image_);
  proto::Hello h;
  h.device.assign(cfg_.device_id);
  h.hw.assign(cfg_.hw_model);
  h.version = image_.running_version;
  h.slot.assign(image_.running_slot == 'b' ? "b" : "a");
  h.slot_state = image_.slot_state;
  h.free = image_.free_bytes;
  h.counter = image_.security_counter;
  h.keys = keys_.version;
  for (std::size_t i = 0; i < cfg_.group_count && i < proto::kMaxGroups; ++i) {
    h.groups[h.group_count++].assign(cfg_.groups[i]);
  }
  if (st_.state == DeviceState::downloading) {
    h.resume.present = true;
    h.resume.deployment = st_.deployment;
    h.resume.image = st_.manifest.image;
    const std::uint64_t bytes = static_cast<std::uint64_t>(st_.received_chunks) *
                                st_.manifest.chunk_size;
    h.resume.received = bytes > st_.manifest.size ? st_.manifest.size : bytes;
  }
  std::size_t len = 0;
  if (proto::encode_hello(h, msg_, sizeof msg_, len)) return;
  publish(proto::TopicKind::presence, msg_, len, 1, true);
}

void Agent::set_result(bool ok, ReasonCode reason, Detail detail) {
  st_.received_chunks = 0;
  st_.revert_reason = ReasonCode::ok;
  st_.revert_detail = Detail::none;
  record_outcome(proto::EventType::result, st_.deployment, ok, reason, detail);
}

bool Agent::has_unsent_outcome() const {
  for (const auto& o : st_.outcomes) {
    if (o.unsent) return true;
  }
  return false;
}

Outcome* Agent::find_outcome(const proto::Id& deployment) {
  for (auto& o : st_.outcomes) {
    if (!o.deployment.empty() && o.deployment == deployment) return &o;
  }
  return nullptr;
}

void Agent::record_outcome(proto::EventType type, const proto::Id& deployment, bool ok,
                           ReasonCode reason, Detail detail) {
  if (Outcome* done = find_outcome(deployment)) {
    // One final answer per deployment (e.g. a confirm that failed on one trial boot and is
    // tried again on the next): the first one stands.
    persist();
    if (done->unsent) send_outcome(*done);
    return;
  }
  flash_.read_state(image_);
  Outcome& o = st_.outcomes[st_.outcome_next % kRememberedOutcomes];
  st_.outcome_next = (st_.outcome_next + 1) % kRememberedOutcomes;
  o.deployment = deployment;
  o.type = type;
  o.ok = ok;
  o.reason = reason;
  o.version = image_.running_version;
  o.seq = ++st_.seq;
  o.unsent = true;
  o.detail = detail;
  persist();
  if (send_outcome(o) && type == proto::EventType::result) send_hello();
}

bool Agent::send_outcome(Outcome& o) {
  proto::Event ev;
  ev.type = o.type;
  ev.seq = o.seq;
  ev.deployment = o.deployment;
  ev.success = o.ok;
  ev.reason = o.reason;
  ev.version = o.version;
  ev.detail.assign(detail_text(o.detail));
  std::size_t len = 0;
  if (proto::encode_event(ev, msg_, sizeof msg_, len)) return false;
  if (!publish(proto::TopicKind::event, msg_, len, 1, false)) return false;
  if (o.unsent) {
    o.unsent = false;
    persist();
  }
  return true;
}

bool Agent::flush_outcomes() {
  bool result_sent = false;
  for (std::uint32_t i = 0; i < kRememberedOutcomes; ++i) {  // oldest first
    Outcome& o = st_.outcomes[(st_.outcome_next + i) % kRememberedOutcomes];
    if (o.unsent && send_outcome(o) && o.type == proto::EventType::result) result_sent = true;
  }
  // The retained presence now shows the version that really runs.
  if (result_sent) send_hello();
  return result_sent;
}

std::uint32_t Agent::effective_timeout_ms() const {
  return request_timeout_for(cfg_, stalled_requests_);
}

std::uint32_t request_timeout_for(const AgentConfig& cfg, std::uint32_t stalled_requests) {
  const std::uint32_t shift =
      stalled_requests < kMaxBackoffShift ? stalled_requests : kMaxBackoffShift;
  const std::uint32_t base = cfg.request_timeout_ms << shift;
  if (stalled_requests == 0) return base;  // a lost chunk is asked for again promptly
  // FNV-1a of the device id and the attempt: a fraction in [0, 1) in 16 bits.
  std::uint32_t h = 2166136261u;
  for (const char* p = cfg.device_id; p != nullptr && *p != '\0'; ++p)
    h = (h ^ static_cast<std::uint8_t>(*p)) * 16777619u;
  h = (h ^ stalled_requests) * 16777619u;
  const std::uint32_t fraction = (h ^ (h >> 16)) & 0xFFFFu;
  return base + static_cast<std::uint32_t>((std::uint64_t{base / 2} * fraction) >> 16);
}

std::size_t Agent::record_len() const {
  const auto* base = reinterpret_cast<const std::uint8_t*>(&st_);
  const std::size_t head = static_cast<std::size_t>(st_.received - base);
  if (st_.state == DeviceState::idle) return head;
  const std::uint32_t chunks = st_.manifest.chunk_count();
  return head + (chunks >= kMaxImageChunks ? sizeof st_.received : (chunks + 7u) / 8u);
}

std::uint32_t Agent::record_crc(std::size_t len) {
  const std::uint32_t stored = st_.crc;
  st_.crc = 0;
  const std::uint32_t crc = proto::crc32(reinterpret_cast<const std::uint8_t*>(&st_), len);
  st_.crc = stored;
  return crc;
}

bool Agent::persist() {
  // The record may only claim chunks the flash holds durably. Any persist (progress events,
  // declines), not only a checkpoint, saves the bitmap, so sync the chunks written since.
  if (st_.state == DeviceState::downloading && chunks_since_checkpoint_ > 0) {
    const PortStatus s = flash_.sync();
    if (s != PortStatus::ok) {  // keep the last durable record
      persist_reason_ = reason_for(s);
      persist_detail_ = Detail::none;
      return false;
    }
    chunks_since_checkpoint_ = 0;
  }
  st_.magic = kStateMagic;
  st_.layout = kStateLayout;
  const std::size_t len = record_len();
  st_.crc = record_crc(len);
  const PortStatus s = storage_.save(&st_, len);
  if (s == PortStatus::ok) {
    persisted_seq_ = st_.seq;
    return true;
  }
  ++stats_.storage_failures;
  persist_reason_ = s == PortStatus::no_space ? ReasonCode::no_space : ReasonCode::internal_error;
  persist_detail_ = Detail::storage_failed;
  return false;
}

}  // namespace ota::agent
