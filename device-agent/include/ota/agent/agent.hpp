// The portable OTA agent core. Firmware code: no exceptions, no RTTI, no heap, no OS calls.
// Everything outside the core goes through the ports in ports.hpp.
//
// Threading: single-threaded. The platform loop calls on_connected(), on_message() and
// tick() from the same thread that owns the transport.
#pragma once

#include <cstddef>
#include <cstdint>

#include "ota/agent/ports.hpp"
#include "ota/proto/frame.hpp"
#include "ota/proto/messages.hpp"
#include "ota/proto/topics.hpp"

// Compile-time capacity settings (override with -D for a target; keep them equal in every
// translation unit of one program).
#ifndef OTA_AGENT_MAX_CHUNK_SIZE
#define OTA_AGENT_MAX_CHUNK_SIZE 65536
#endif
#ifndef OTA_AGENT_MAX_IMAGE_CHUNKS
#define OTA_AGENT_MAX_IMAGE_CHUNKS 16384
#endif
#ifndef OTA_AGENT_MESSAGE_BUFFER
#define OTA_AGENT_MESSAGE_BUFFER 1024
#endif
// Read-back buffer for hashing (a member of Agent): one flash read per this many bytes. The
// default suits Linux ports, where each read is a system call; firmware sets its own (the
// Cortex-M build: 512).
#ifndef OTA_AGENT_HASH_READ_BUFFER
#define OTA_AGENT_HASH_READ_BUFFER 16384
#endif
// Release and online keys the agent trusts besides the root key (PROTOCOL.md 6.6).
#ifndef OTA_AGENT_MAX_TRUSTED_KEYS
#define OTA_AGENT_MAX_TRUSTED_KEYS 4
#endif

namespace ota::agent {

constexpr std::uint32_t kMaxChunkSize = OTA_AGENT_MAX_CHUNK_SIZE;
constexpr std::uint32_t kMaxImageChunks = OTA_AGENT_MAX_IMAGE_CHUNKS;
constexpr std::size_t kMessageBuffer = OTA_AGENT_MESSAGE_BUFFER;
constexpr std::size_t kHashReadBuffer = OTA_AGENT_HASH_READ_BUFFER;
constexpr std::size_t kMaxTrustedKeys = OTA_AGENT_MAX_TRUSTED_KEYS;
static_assert(kMaxTrustedKeys >= 1, "a device needs at least one release key");

// A key the device is built or provisioned with (AgentConfig::keys): its role and its public
// key as an uncompressed P-256 point (04 || X || Y). The agent computes its id (PROTOCOL.md
// 6.4) with proto::p256_spki_der and the Crypto port's SHA-256.
struct ProvisionedKey {
  proto::KeyRole role = proto::KeyRole::release;
  std::uint8_t pub[proto::kP256PointLen] = {};
};

// One trusted key: id, role and point (the root key, or a release or online key).
using TrustedKey = proto::KeySetEntry;

// Integrator hook run after booting a new image on trial; return true when the image works.
using SelfTest = bool (*)(void* ctx);
// Asynchronous form (e.g. "reached the server", "sensor answered"): polled from boot() and
// tick() until it is no longer `running`; bounded by AgentConfig::confirm_timeout_ms.
enum class SelfTestStatus : std::uint8_t { passed, failed, running };
using SelfTestPoll = SelfTestStatus (*)(void* ctx);

// Integrator policy for offers that passed every check (signature, key, hardware, counter,
// expiry, kind, version, size, busy): accept now, decline for good, or defer ("not now").
enum class OfferAnswer : std::uint8_t { accept, decline, defer };
struct OfferDecision {
  OfferAnswer answer = OfferAnswer::accept;
  // decline/defer: the reason sent (e.g. low_battery, not_in_window, busy). A decline with
  // `ok` is sent as internal_error, a defer with `ok` as busy.
  proto::ReasonCode reason = proto::ReasonCode::ok;
  std::uint32_t retry_after_s = 0;  // defer: when the controller may offer again (0: it decides)
};
// Called before anything of the offer is written. A decline is a final answer (kept and
// repeated like a failed check); a defer is not recorded: the agent stays idle and asks again
// when the controller offers the same deployment again.
using OfferPolicy = OfferDecision (*)(void* ctx, const proto::Manifest& manifest);

struct AgentConfig {
  const char* prefix = proto::kDefaultPrefix;
  const char* device_id = "";
  const char* hw_model = "";
  const char* const* groups = nullptr;
  std::size_t group_count = 0;
  std::uint32_t window_chunks = 64;         // chunk requests kept outstanding
  std::uint32_t request_timeout_ms = 2000;  // re-request when no chunk arrived for this long
  std::uint32_t max_stalled_requests = 30;  // consecutive re-requests without progress -> fail
  std::uint32_t checkpoint_chunks = 32;     // persist progress every N new chunks
  std::uint32_t progress_step_percent = 5;  // progress event granularity
  // And at most one progress event per this long (the one at 100 % always goes): a fast
  // download would otherwise send all its steps within seconds, each a message through the
  // broker to the controller, 20,000 for a wave of 1,000 devices.
  std::uint32_t progress_interval_ms = 1000;
  SelfTest self_test = nullptr;             // nullptr: the image is considered healthy
  SelfTestPoll self_test_poll = nullptr;    // used instead of self_test when set
  void* self_test_ctx = nullptr;            // for either hook
  // A trial image must pass its self-test within this time after booting (0 = no limit),
  // or it is rolled back and reported with reason `timeout`.
  std::uint32_t confirm_timeout_ms = 300000;
  // Boots a trial image gets (counted by the boot loader, FlashPort::activate_trial) before
  // the boot loader returns to the previous slot; reported as `rolled_back`.
  std::uint32_t max_trial_boots = 3;
  // Observer called after a new state was persisted (UI, logging, fault injection).
  void (*on_state)(void* ctx, proto::DeviceState entered) = nullptr;
  void* on_state_ctx = nullptr;
  // Liveness: a heartbeat on the presence topic (QoS 0, not retained) every interval while
  // connected; 0 = never. It uses no event sequence number and writes no storage.
  std::uint32_t heartbeat_interval_ms = 60000;
  OfferPolicy offer_policy = nullptr;  // nullptr: accept every offer that passed the checks
  void* offer_policy_ctx = nullptr;
  // Trust anchors (PROTOCOL.md 6.6): the keys the device is provisioned with, key-set version
  // 0. At most one `root` entry (the key that signs key sets; without one the set never
  // changes and `keys` messages are ignored) and up to kMaxTrustedKeys `release` / `online`
  // keys (further ones are ignored). Used until a root-signed key set has been applied; the
  // agent copies them in boot(), the array need not outlive that call.
  const ProvisionedKey* keys = nullptr;
  std::size_t key_count = 0;
  // Broadcast (PROTOCOL.md 17): while downloading, listen on one group's image topic
  // (the offer's group when it came to a group, else the first configured group) and say so
  // in chunk requests (`bc`), so chunks that several members want are published once. Needs
  // the broker ACL line `topic read <prefix>/grp/<group>/img/+/chunk` for the device.
  bool broadcast = false;
};

// Why a trigger fired is kept in the agent (reason_) so the table stays small.
enum class Trigger : std::uint8_t {
  none = 0,
  offer_accepted,   // a valid offer passed every check
  all_received,     // every chunk written
  verified,         // size and SHA-256 match
  activated,        // flash switched to the new slot on trial
  booted_trial,     // came up in the new image, not yet confirmed
  self_test_passed,
  self_test_failed,
  failed,           // reason_ says why
  cancelled,
  resume_download,  // boot found an interrupted download
  resume_verify,    // boot found an image that was being verified
  resume_install,   // boot found an image that was being activated
  confirm_timeout,  // the trial image did not pass its self-test in time
};

// Fixed detail texts of outcomes (kept as a code in the persisted record).
enum class Detail : std::uint8_t {
  none = 0,
  confirm_timeout,  // "confirm timeout: ..."
  boot_limit,       // "boot count exceeded: ..."
  storage_failed,   // "state record could not be saved"
};
const char* detail_text(Detail d);

// A final answer (result or decline) to one deployment. Kept, with its sequence number, so
// that it can be repeated when the controller asks again (a re-sent offer) and re-sent after
// a reconnect while the transport had not taken it.
struct Outcome {
  proto::Id deployment;
  proto::EventType type = proto::EventType::result;  // result or decline
  bool ok = false;
  proto::ReasonCode reason = proto::ReasonCode::ok;
  proto::Version version;  // running version when the outcome was made
  std::uint32_t seq = 0;
  bool unsent = false;
  Detail detail = Detail::none;
};
constexpr std::size_t kRememberedOutcomes = 4;

// Persisted across reboots through the Storage port (one record, CRC-checked on load).
// Only the bytes that matter are saved: everything up to the bitmap, plus the bitmap bytes
// of the image being downloaded (none when idle), so a save writes about 1 KiB instead of
// the whole capacity-sized bitmap.
struct PersistedState {
  std::uint32_t magic = 0;
  std::uint32_t layout = 0;
  std::uint32_t crc = 0;  // CRC-32 of the whole record with this field 0
  std::uint32_t seq = 0;  // last event sequence number used
  proto::DeviceState state = proto::DeviceState::idle;
  proto::Id deployment;
  proto::Manifest manifest;
  std::uint32_t received_chunks = 0;
  // Why the trial image is being abandoned (self_test_failed), reported after the revert.
  proto::ReasonCode revert_reason = proto::ReasonCode::ok;
  Detail revert_detail = Detail::none;
  // The last few final outcomes, oldest overwritten first.
  Outcome outcomes[kRememberedOutcomes];
  std::uint32_t outcome_next = 0;
  // Key-set version last applied (0: never; the key record holds the set itself) and whether
  // that set made another key than the provisioned one the root. Kept here too so that a
  // lost key record is noticed instead of silently trusting the provisioned keys again.
  std::uint32_t keys_version = 0;
  std::uint8_t keys_root_rotated = 0;
  // Chunks written and synced; last, so that a record is saved only as far as it is used.
  std::uint8_t received[(kMaxImageChunks + 7) / 8] = {};
};

// The key set the agent trusts, persisted through the key Storage port as one CRC-checked
// record of its own (written only when a root-signed key set is applied, not with every
// progress save of the state record).
struct KeyRecord {
  std::uint32_t magic = 0;
  std::uint32_t layout = 0;
  std::uint32_t crc = 0;      // CRC-32 of the whole record with this field 0
  std::uint32_t version = 0;  // key-set version; 0 = the provisioned keys
  std::uint32_t has_root = 0;  // 1: `root` may sign the next key set
  TrustedKey root;
  std::uint32_t key_count = 0;
  TrustedKey keys[kMaxTrustedKeys];  // release and online keys
};

struct AgentStats {
  std::uint64_t chunks_received = 0;
  std::uint64_t bytes_received = 0;   // payload bytes, duplicates included
  std::uint64_t duplicate_chunks = 0;
  std::uint64_t broadcast_chunks = 0;  // frames that came on a group's image topic
  std::uint64_t bad_frames = 0;       // CRC, magic, foreign image...
  std::uint64_t requests_sent = 0;
  std::uint64_t timeouts = 0;
  std::uint64_t bad_messages = 0;     // undecodable offers/cancels
  std::uint64_t heartbeats = 0;       // heartbeats handed to the transport
  std::uint64_t storage_failures = 0; // record saves the Storage port refused
  std::uint64_t discarded_records = 0;  // records found torn/foreign at boot (CRC, magic)
  std::uint64_t keysets_applied = 0;    // root-signed key sets stored and in use
  std::uint64_t keysets_refused = 0;    // keys messages refused (format, id, root, signature, version)
  std::uint64_t discarded_key_records = 0;  // key records found torn/foreign at boot
};

// The wait before the download asks again after `stalled_requests` unanswered requests
// (Agent::request_timeout_ms()).
std::uint32_t request_timeout_for(const AgentConfig& cfg, std::uint32_t stalled_requests);

class Agent {
 public:
  // `storage` keeps the state record, `key_storage` the key-set record (two records, so that
  // the frequent progress saves never rewrite the keys).
  Agent(const AgentConfig& config, FlashPort& flash, Transport& transport, Clock& clock,
        Storage& storage, Storage& key_storage, Crypto& crypto);

  // Power-on: reads flash and persisted state, handles a trial boot (self-test, confirm or
  // revert) and an interrupted download, verification or installation.
  void boot();
  // The transport (re)connected: subscribe, say hello, flush a pending result, resume.
  void on_connected();
  void on_message(const char* topic, const std::uint8_t* payload, std::size_t len);
  // Timeouts and re-requests. Call at least every few hundred milliseconds.
  void tick();

  proto::DeviceState state() const { return st_.state; }
  bool reset_requested() const { return reset_requested_; }
  const AgentStats& stats() const { return stats_; }
  // How long the download waits for a chunk before asking again: request_timeout_ms at
  // first, then doubling per request that went unanswered (up to 16x), plus a jitter of up
  // to half of that which depends on the device id and the attempt, so that devices of a
  // fleet whose answers were late together do not ask again together.
  std::uint32_t request_timeout_ms() const { return effective_timeout_ms(); }
  const PersistedState& persisted() const { return st_; }
  bool has_unsent_outcome() const;
  proto::ReasonCode last_reason() const { return reason_; }
  // The key set in use (after boot()); its version is the hello's `keys`.
  const KeyRecord& trusted_keys() const { return keys_; }
  // A key set was applied once but its record is gone or older than that (a Storage port
  // that broke its old-or-new promise): no offer is accepted until a root-signed set of at
  // least the applied version arrives again.
  bool keys_lost() const { return keys_lost_; }

 private:
  using Action = Trigger (Agent::*)();
  struct Transition {
    proto::DeviceState from;
    Trigger trigger;
    proto::DeviceState to;
    Action action;
  };
  static const Transition kTransitions[];

  void dispatch(Trigger trigger);

  // Actions (table entries). Each returns the follow-up trigger or Trigger::none.
  Trigger start_download();
  Trigger resume_download();
  Trigger verify_image();
  Trigger install_image();
  Trigger restart_device();
  Trigger run_self_test();
  Trigger confirm_image();
  Trigger revert_image();
  Trigger fail_update();
  Trigger cancel_update();
  Trigger check_self_test();

  void handle_offer(const std::uint8_t* payload, std::size_t len);
  void handle_cancel(const std::uint8_t* payload, std::size_t len);
  void handle_chunk(const std::uint8_t* payload, std::size_t len);
  void handle_keys(const std::uint8_t* payload, std::size_t len);
  proto::ReasonCode check_offer(const proto::Offer& offer);
  // Checks 2, 3 and 3b of PROTOCOL.md section 7 (key roles, the signature, the release
  // signature); with `verify` false only whether the keys are (still) trusted in their roles.
  proto::ReasonCode check_keys(const proto::Manifest& m, bool verify_sigs);
  const TrustedKey* find_key(const proto::KeyId& id) const;  // release or online keys
  bool verify(const std::uint8_t* pub, std::size_t canon_len, const proto::SignatureHex& sig);
  void key_id_of(const std::uint8_t pub[proto::kP256PointLen], proto::KeyId& out);
  bool keyset_acceptable(const proto::KeySet& set);
  bool apply_keyset(const proto::KeySet& set);
  void load_keys();
  void provision_keys();
  std::uint32_t key_record_crc();
  // The running image (image_) is the one `m` describes: same version, and same SHA-256 when
  // the port can tell it (ImageState::running_sha256).
  bool runs_image(const proto::Manifest& m) const;
  void decline(const proto::Id& deployment, proto::ReasonCode reason);
  void defer(const proto::Id& deployment, proto::ReasonCode reason, std::uint32_t retry_after_s);
  void maybe_send_heartbeat();

  void request_chunks(bool restart_window);
  // The group whose image topic the download listens on; nullptr: unicast only.
  const char* broadcast_group() const;
  void start_listening();
  void stop_listening();
  void advance_hash(std::size_t budget_bytes);
  bool chunk_received(std::uint32_t index) const;
  void mark_received(std::uint32_t index);
  std::uint32_t expected_chunk_len(std::uint32_t index) const;
  void maybe_report_progress();
  void reset_transfer_memory();

  void send_event(proto::Event& ev);
  void send_status(proto::DeviceState s);
  void send_hello();
  bool flush_outcomes();
  bool send_outcome(Outcome& outcome);
  Outcome* find_outcome(const proto::Id& deployment);
  void record_outcome(proto::EventType type, const proto::Id& deployment, bool ok,
                      proto::ReasonCode reason, Detail detail = Detail::none);
  void set_result(bool ok, proto::ReasonCode reason, Detail detail = Detail::none);
  std::uint32_t effective_timeout_ms() const;
  bool persist();
  std::size_t record_len() const;
  std::uint32_t record_crc(std::size_t len);
  bool publish(proto::TopicKind kind, const char* data, std::size_t len, int qos, bool retain);

  const AgentConfig cfg_;
  FlashPort& flash_;
  Transport& transport_;
  Clock& clock_;
  Storage& storage_;
  Storage& key_storage_;
  Crypto& crypto_;

  PersistedState st_;
  ImageState image_;
  proto::ReasonCode reason_ = proto::ReasonCode::ok;
  Detail detail_ = Detail::none;             // goes with reason_ into the outcome
  proto::ReasonCode persist_reason_ = proto::ReasonCode::ok;  // why the last persist() failed
  Detail persist_detail_ = Detail::none;
  std::uint64_t trial_started_ms_ = 0;       // when the self-test of a trial image began
  std::uint32_t persisted_seq_ = 0;          // seq in the last record saved (or loaded)
  // Decoded messages, one at a time (too big for a firmware stack).
  union Scratch {
    Scratch() : offer() {}
    proto::Offer offer;
    proto::KeySet keyset;
  } scratch_;
  KeyRecord keys_;         // the trusted key set (as stored)
  bool keys_lost_ = false;
  bool reset_requested_ = false;
  std::uint64_t boot_ms_ = 0;            // clock at boot(): uptime in heartbeats
  std::uint64_t last_heartbeat_ms_ = 0;  // last heartbeat sent (or boot)

  // Transfer (RAM only; rebuilt from st_.received after a restart).
  Sha256State sha_;
  std::uint64_t hashed_bytes_ = 0;
  std::uint32_t requested_upto_ = 0;   // chunks below were requested in this window cycle
  std::uint32_t outstanding_ = 0;      // requested and not yet received
  std::uint64_t last_chunk_ms_ = 0;    // last time a new chunk arrived (or a request left)
  std::uint32_t stalled_requests_ = 0;
  std::uint32_t chunks_since_checkpoint_ = 0;
  std::uint32_t last_progress_percent_ = 0;
  std::uint64_t last_progress_ms_ = 0;  // when the last progress event of this download went
  bool progress_sent_ = false;          // one went since this download (re)started
  std::uint8_t image_id_bytes_[8] = {};
  // Subscribed to broadcast_group()'s image topic for this download (subscriptions end with
  // the connection; on_connected() subscribes again). The topic is kept as subscribed: the
  // unsubscribe must name it even if the manifest or the groups changed since.
  bool listening_ = false;
  char listening_topic_[proto::kMaxTopicLen] = {};
  bool broadcast_seen_ = false;  // a broadcast frame of this download arrived (since boot)

  AgentStats stats_;
  char msg_[kMessageBuffer];
  std::uint8_t hash_buf_[kHashReadBuffer];
};

}  // namespace ota::agent
