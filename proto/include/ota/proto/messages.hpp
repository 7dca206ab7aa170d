// Typed wire messages and their codecs. See proto/PROTOCOL.md for the contract.
//
// Every struct here has fixed capacity (sizes are compile-time settings below) so the
// same codec runs in the device agent core (no heap, no exceptions) and in the controller.
// Decoders validate every field and return an Error naming the first bad one; on error the
// output struct is left in an unspecified but destructible state.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "ota/proto/error.hpp"

#ifndef OTA_PROTO_MAX_ID_LEN
#define OTA_PROTO_MAX_ID_LEN 64
#endif
#ifndef OTA_PROTO_MAX_HW_MODELS
#define OTA_PROTO_MAX_HW_MODELS 4
#endif
#ifndef OTA_PROTO_MAX_CHUNKS_PER_REQUEST
#define OTA_PROTO_MAX_CHUNKS_PER_REQUEST 256
#endif

namespace ota::proto {

constexpr int kProtocolVersion = 1;
constexpr std::size_t kMaxIdLen = OTA_PROTO_MAX_ID_LEN;  // device ids, deployment ids, models
constexpr std::size_t kMaxVersionLen = 32;
constexpr std::size_t kMaxReasonLen = 96;
constexpr std::size_t kMaxHwModels = OTA_PROTO_MAX_HW_MODELS;
constexpr std::size_t kMaxGroups = 4;
constexpr std::size_t kImageIdLen = 16;  // hex of the first 8 bytes of the image SHA-256
constexpr std::size_t kKeyIdLen = 16;    // hex of the first 8 bytes of SHA-256(public key DER)
constexpr std::size_t kSha256HexLen = 64;
constexpr std::size_t kSignatureHexLen = 128;  // raw r||s of ECDSA P-256, hex
constexpr std::uint32_t kMaxChunksPerRequest = OTA_PROTO_MAX_CHUNKS_PER_REQUEST;
constexpr std::uint32_t kMinChunkSize = 256;
constexpr std::uint32_t kMaxChunkSize = 65536;
// A chunk frame's `offset` is a u32, so no byte of a larger image could be sent (PROTOCOL.md 15).
constexpr std::uint64_t kMaxImageSize = 0xffffffffu;

// NUL-terminated string of fixed capacity N (N characters plus the terminator).
template <std::size_t N>
struct FixedString {
  char data[N + 1] = {};
  std::size_t size = 0;

  static constexpr std::size_t capacity() { return N; }
  const char* c_str() const { return data; }
  bool empty() const { return size == 0; }
  // Returns false (and leaves the string unchanged) when `len` exceeds the capacity.
  bool assign(const char* s, std::size_t len) {
    if (len > N) return false;
    std::memcpy(data, s, len);
    data[len] = '\0';
    size = len;
    return true;
  }
  bool assign(const char* s) { return assign(s, std::strlen(s)); }
  bool operator==(const char* s) const { return std::strcmp(data, s) == 0; }
  bool operator!=(const char* s) const { return !(*this == s); }
  template <std::size_t M>
  bool operator==(const FixedString<M>& o) const {
    return std::strcmp(data, o.data) == 0;
  }
  template <std::size_t M>
  bool operator!=(const FixedString<M>& o) const {
    return !(*this == o);
  }
};

using Id = FixedString<kMaxIdLen>;
using Version = FixedString<kMaxVersionLen>;
using Reason = FixedString<kMaxReasonLen>;
using ImageId = FixedString<kImageIdLen>;
using KeyId = FixedString<kKeyIdLen>;
using Sha256Hex = FixedString<kSha256HexLen>;
using SignatureHex = FixedString<kSignatureHexLen>;

// ---------------------------------------------------------------------------------------
// Reason codes carried by decline and result messages (documented in PROTOCOL.md).
enum class ReasonCode : std::uint8_t {
  ok = 0,
  bad_manifest,
  bad_signature,
  unknown_key,
  wrong_hardware,
  downgrade,  // security counter lower than the device's
  expired,
  unsupported,  // kind/compression/chunk size the device cannot handle
  no_space,
  busy,
  already_installed,
  size_mismatch,
  hash_mismatch,
  flash_error,
  self_test_failed,
  rolled_back,
  cancelled,
  timeout,
  internal_error,
  // Appended later (numeric values of the codes above never change).
  low_battery,    // defer/decline by the device's policy: not enough charge to update now
  not_in_window,  // defer/decline by the device's policy: outside its maintenance window
  wrong_target,   // the signed manifest is bound to another deployment, device or group
};
constexpr ReasonCode kLastReasonCode = ReasonCode::wrong_target;
const char* reason_name(ReasonCode code);
// Returns false when `name` is not a documented reason code.
bool reason_from_name(const char* name, std::size_t len, ReasonCode& out);

// ---------------------------------------------------------------------------------------
// Signed manifest. The signature covers canonical_manifest() of all fields but `sig`.
enum class ImageKind : std::uint8_t { firmware = 0, bundle };
enum class Compression : std::uint8_t { none = 0 };

struct Manifest {
  ImageId image;       // "image"
  Version version;     // "version", semver MAJOR.MINOR.PATCH[-pre][+build]
  Id hw[kMaxHwModels];  // "hw": compatible hardware models, at least one
  std::size_t hw_count = 0;
  std::uint64_t size = 0;        // "size": image bytes, > 0
  Sha256Hex sha256;              // "sha256": lower-case hex
  std::uint32_t chunk_size = 0;  // "chunk_size": kMinChunkSize..kMaxChunkSize
  std::uint32_t counter = 0;     // "counter": security counter (anti-rollback)
  std::uint64_t expires = 0;     // "expires": unix seconds after which the offer is void
  KeyId key;                     // "key": id of the release key that signed it
  ImageKind kind = ImageKind::firmware;       // "kind", optional, default "firmware"
  Compression compression = Compression::none;  // "compression", optional, default "none"
  SignatureHex sig;              // "sig": hex r||s over canonical_manifest()
  // Binding (optional on the wire, written only when set; a device refuses a manifest
  // without them, so a signed offer cannot be replayed under another deployment id, to
  // another device or to another group).
  Id deployment;                 // "deployment": the offer id it was signed for
  Id device;                     // "device": the one device it is for, or
  Id group;                      // "group": the group it is for (exactly one of the two)
  bool rollback = false;         // "rollback": true = a downgrade the operator ordered
  // Release signature (optional on the wire, written only when set; both or neither):
  // made offline by a release key over canonical_release(), so that the controller can sign
  // offers with an online key that cannot release software by itself (PROTOCOL.md 6.5).
  KeyId release_key;             // "release_key": id of the release key
  SignatureHex release_sig;      // "release_sig": hex r||s over canonical_release()

  std::uint32_t chunk_count() const {
    return chunk_size == 0 ? 0 : static_cast<std::uint32_t>((size + chunk_size - 1) / chunk_size);
  }
};

// Canonical bytes the signature covers: the manifest object without "sig", keys sorted,
// no white space (see PROTOCOL.md "Canonical encoding"). Returns the length written, or 0
// if `cap` is too small.
std::size_t canonical_manifest(const Manifest& m, char* out, std::size_t cap);

// Canonical bytes a release signature covers (PROTOCOL.md 6.5): compression, counter, hw,
// key (= m.release_key), kind, sha256, size, "type":"release", version. Returns the length
// written, or 0 if `cap` is too small.
std::size_t canonical_release(const Manifest& m, char* out, std::size_t cap);

// The release signature file written by `otactl image sign` (PROTOCOL.md 6.5):
// {"v":1,"type":"release", the release members, "key":release key id, "sig":...}. Uses and
// fills only the release members of `m` plus m.release_key / m.release_sig.
Error encode_release(const Manifest& m, char* out, std::size_t cap, std::size_t& len);
Error decode_release(const char* in, std::size_t len, Manifest& out);

// ---------------------------------------------------------------------------------------
// Key sets (PROTOCOL.md 6.6): the keys a device trusts, replaced as a whole by a `keys`
// message signed by the root key.
enum class KeyRole : std::uint8_t { root = 0, release, online };
const char* key_role_name(KeyRole r);
constexpr std::size_t kP256PointLen = 65;     // uncompressed point 04 || X || Y
constexpr std::size_t kP256SpkiDerLen = 91;   // DER SubjectPublicKeyInfo of a P-256 key
constexpr std::size_t kMaxKeySetKeys = 5;     // on the wire: 4 trusted keys + the next root

struct KeySetEntry {
  KeyId id;  // "id": key id (6.4) of `pub`
  KeyRole role = KeyRole::release;
  std::uint8_t pub[kP256PointLen] = {};  // "pub": 130 hex
};

struct KeySet {  // topic .../down/keys, "type":"keys"
  std::uint32_t version = 0;  // "version", >= 1
  KeySetEntry keys[kMaxKeySetKeys];
  std::size_t key_count = 0;
  KeyId key;         // "key": id of the root key that signed the set
  SignatureHex sig;  // "sig": hex r||s over canonical_keyset()
};

// Canonical bytes the key-set signature covers: the message without "sig" (members key,
// keys, type, v, version; each key as id, pub, role). Returns the length, or 0 if `cap` is
// too small.
std::size_t canonical_keyset(const KeySet& k, char* out, std::size_t cap);
// decode_keyset checks the field rules (1..5 keys, unique ids, at most one root, at least one
// release key, hex lengths, pub starts with 04) but not that ids match the keys (that needs
// SHA-256: hash p256_spki_der() and compare) nor the signature.
Error encode_keyset(const KeySet& k, char* out, std::size_t cap, std::size_t& len);
Error decode_keyset(const char* in, std::size_t len, KeySet& out);

// The 91-byte DER SubjectPublicKeyInfo of a P-256 point (a fixed 26-byte prefix + the
// point): SHA-256 of it gives the key id (6.4) without an ASN.1 library.
void p256_spki_der(const std::uint8_t point[kP256PointLen], std::uint8_t out[kP256SpkiDerLen]);

// ---------------------------------------------------------------------------------------
// Controller -> device messages (topics .../down/offer, .../down/cancel, grp/<g>/offer).
struct Offer {
  Id deployment;  // "deployment"
  Manifest manifest;
};

struct Cancel {
  Id deployment;
  Reason reason;  // optional free text
};

// ---------------------------------------------------------------------------------------
// Device -> controller messages.
enum class SlotState : std::uint8_t { confirmed = 0, pending, rolled_back };
const char* slot_state_name(SlotState s);

struct Resume {  // present in hello when an interrupted download is stored on the device
  bool present = false;
  Id deployment;
  ImageId image;
  std::uint64_t received = 0;  // bytes already written
};

struct Hello {  // topic .../up/presence, "type":"hello"
  Id device;
  Id hw;
  Version version;         // running version
  FixedString<1> slot;     // "a" or "b": the running slot
  SlotState slot_state = SlotState::confirmed;
  std::uint64_t free = 0;  // bytes free for an update
  std::uint32_t counter = 0;  // device security counter
  Id groups[kMaxGroups];      // groups the device belongs to (the broker ACL is the authority)
  std::size_t group_count = 0;
  std::uint32_t keys = 0;     // "keys": key-set version the device trusts (0 = provisioned)
  Resume resume;
};

// Last will, topic .../up/presence, "type":"offline". No fields besides v and type.

enum class EventType : std::uint8_t { accept = 0, decline, progress, status, result, defer };
const char* event_type_name(EventType t);

enum class DeviceState : std::uint8_t {
  idle = 0,
  downloading,
  verifying,
  installing,
  rebooting,
  confirming,
};
const char* device_state_name(DeviceState s);

// Topic .../up/event. One struct for the six event types; fields unused by a type are
// neither encoded nor decoded.
struct Event {
  EventType type = EventType::status;
  std::uint32_t seq = 0;  // per-device, increases by one per event, persisted on the device
  Id deployment;
  // decline, result, defer
  ReasonCode reason = ReasonCode::ok;
  Reason detail;  // optional human text
  // defer: seconds after which the controller may offer again (0 = the controller decides)
  std::uint32_t retry_after = 0;
  // progress
  std::uint64_t received = 0;
  std::uint64_t total = 0;
  // status
  DeviceState state = DeviceState::idle;
  // result
  bool success = false;
  Version version;  // result: version now running
};

// Topic .../up/req. Asks for chunks [first, first+count) of an image, optionally filtered
// by a bitmap (bit i set = chunk first+i wanted; LSB of byte 0 is chunk `first`).
struct ChunkRequest {
  Id deployment;
  ImageId image;
  std::uint32_t first = 0;
  std::uint32_t count = 0;  // 1..kMaxChunksPerRequest
  bool has_bitmap = false;
  std::uint8_t bitmap[(kMaxChunksPerRequest + 7) / 8] = {};
  // Broadcast (PROTOCOL.md 17): the group whose image topic <prefix>/grp/<bc>/img/<image>/chunk
  // the device listens on while it downloads; empty: unicast only (every device before 17).
  Id bc;

  bool wants(std::uint32_t i) const {  // i relative to first
    if (i >= count) return false;
    return !has_bitmap || (bitmap[i / 8] >> (i % 8)) & 1u;
  }
};

// ---------------------------------------------------------------------------------------
// JSON codecs. Encoders write into `out` (capacity `cap`) and set `len`; decoders read
// `len` bytes of `in` (need not be NUL-terminated).
Error encode_offer(const Offer& m, char* out, std::size_t cap, std::size_t& len);
Error decode_offer(const char* in, std::size_t len, Offer& out);
Error encode_cancel(const Cancel& m, char* out, std::size_t cap, std::size_t& len);
Error decode_cancel(const char* in, std::size_t len, Cancel& out);
Error encode_hello(const Hello& m, char* out, std::size_t cap, std::size_t& len);
Error decode_hello(const char* in, std::size_t len, Hello& out);
Error encode_offline(char* out, std::size_t cap, std::size_t& len);
Error encode_event(const Event& m, char* out, std::size_t cap, std::size_t& len);
Error decode_event(const char* in, std::size_t len, Event& out);
Error encode_chunk_request(const ChunkRequest& m, char* out, std::size_t cap, std::size_t& len);
Error decode_chunk_request(const char* in, std::size_t len, ChunkRequest& out);

// Topic .../up/presence, "type":"heartbeat": sent every few minutes while connected, QoS 0,
// not retained (the retained hello stays the presence record).
struct Heartbeat {
  Id device;
  DeviceState state = DeviceState::idle;  // the agent's state now
  std::uint64_t uptime = 0;               // seconds since the agent booted
};
Error encode_heartbeat(const Heartbeat& m, char* out, std::size_t cap, std::size_t& len);
Error decode_heartbeat(const char* in, std::size_t len, Heartbeat& out);

// Presence topic carries hello, heartbeat or offline; tells which without a full decode.
enum class PresenceType : std::uint8_t { hello, offline, heartbeat };
Error decode_presence_type(const char* in, std::size_t len, PresenceType& out);

// Semantic version check and ordering (MAJOR.MINOR.PATCH, optional -pre/+build).
bool is_semver(const char* s, std::size_t len);
// <0, 0, >0 like strcmp, by semver precedence; both must satisfy is_semver.
int compare_semver(const char* a, const char* b);

}  // namespace ota::proto
