#include "ota/proto/messages.hpp"

#include <cstring>

#include "json.hpp"
#include "ota/proto/frame.hpp"
#include "ota/proto/topics.hpp"

namespace ota::proto {

namespace {

using json::Doc;
using json::Type;
using json::Writer;

constexpr std::uint64_t kMaxU32 = 0xFFFFFFFFull;
constexpr std::uint64_t kMaxU53 = json::kMaxSafeInteger;

constexpr Error err(Errc c, const char* f) { return Error{c, f}; }

// ----------------------------------------------------------------------- names
constexpr const char* kReasonNames[] = {
    "ok",           "bad_manifest",  "bad_signature", "unknown_key",       "wrong_hardware",
    "downgrade",    "expired",       "unsupported",   "no_space",          "busy",
    "already_installed", "size_mismatch", "hash_mismatch", "flash_error", "self_test_failed",
    "rolled_back",  "cancelled",     "timeout",       "internal_error",    "low_battery",
    "not_in_window", "wrong_target",
};
constexpr std::size_t kReasonCount = sizeof(kReasonNames) / sizeof(kReasonNames[0]);
static_assert(kReasonCount == static_cast<std::size_t>(kLastReasonCode) + 1,
              "reason name table out of sync");

constexpr const char* kSlotStateNames[] = {"confirmed", "pending", "rolled_back"};
constexpr const char* kEventTypeNames[] = {"accept", "decline", "progress",
                                           "status", "result",  "defer"};
constexpr const char* kDeviceStateNames[] = {"idle",       "downloading", "verifying",
                                             "installing", "rebooting",   "confirming"};
constexpr const char* kKindNames[] = {"firmware", "bundle"};
constexpr const char* kCompressionNames[] = {"none"};
constexpr const char* kKeyRoleNames[] = {"root", "release", "online"};

template <std::size_t N>
constexpr std::size_t count_of(const char* const (&)[N]) {
  return N;
}

template <std::size_t N>
const char* name_at(const char* const (&names)[N], std::size_t i) {
  return i < N ? names[i] : "unknown";
}

// ----------------------------------------------------------------------- validators
bool is_lower_hex(const char* s, std::size_t len, std::size_t want) {
  if (len != want) return false;
  for (std::size_t i = 0; i < len; ++i) {
    char c = s[i];
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

template <std::size_t N>
bool fs_ok(const FixedString<N>& s) {  // size consistent with the terminator
  return s.size <= N && s.data[s.size] == '\0';
}
template <std::size_t N>
bool fs_hex(const FixedString<N>& s, std::size_t want) {
  return fs_ok(s) && is_lower_hex(s.data, s.size, want);
}
template <std::size_t N>
bool fs_id(const FixedString<N>& s) {
  return fs_ok(s) && valid_id(s.data, s.size);
}
template <std::size_t N>
bool fs_semver(const FixedString<N>& s) {
  return fs_ok(s) && is_semver(s.data, s.size);
}
template <std::size_t N>
bool fs_text(const FixedString<N>& s) {
  return fs_ok(s) && json::valid_text(s.data, s.size);
}

Error validate_manifest(const Manifest& m) {
  if (!fs_hex(m.image, kImageIdLen)) return err(Errc::bad_value, "manifest.image");
  if (!fs_semver(m.version)) return err(Errc::bad_value, "manifest.version");
  if (m.hw_count == 0) return err(Errc::bad_value, "manifest.hw");
  if (m.hw_count > kMaxHwModels) return err(Errc::field_too_long, "manifest.hw");
  for (std::size_t i = 0; i < m.hw_count; ++i) {
    if (!fs_id(m.hw[i])) return err(Errc::bad_value, "manifest.hw");
  }
  if (m.size == 0 || m.size > kMaxU53) return err(Errc::bad_value, "manifest.size");
  if (!fs_hex(m.sha256, kSha256HexLen)) return err(Errc::bad_value, "manifest.sha256");
  if (m.chunk_size < kMinChunkSize || m.chunk_size > kMaxChunkSize)
    return err(Errc::bad_value, "manifest.chunk_size");
  if (m.expires > kMaxU53) return err(Errc::bad_value, "manifest.expires");
  if (!fs_hex(m.key, kKeyIdLen)) return err(Errc::bad_value, "manifest.key");
  if (static_cast<std::size_t>(m.kind) >= count_of(kKindNames))
    return err(Errc::bad_value, "manifest.kind");
  if (static_cast<std::size_t>(m.compression) >= count_of(kCompressionNames))
    return err(Errc::bad_value, "manifest.compression");
  if (!fs_hex(m.sig, kSignatureHexLen)) return err(Errc::bad_value, "manifest.sig");
  if (!m.deployment.empty() && !fs_id(m.deployment)) return err(Errc::bad_value, "manifest.deployment");
  if (!m.device.empty() && !fs_id(m.device)) return err(Errc::bad_value, "manifest.device");
  if (!m.group.empty() && !fs_id(m.group)) return err(Errc::bad_value, "manifest.group");
  if (!m.device.empty() && !m.group.empty()) return err(Errc::bad_value, "manifest.group");
  // Release signature: both members or neither (PROTOCOL.md 6.5).
  if (!m.release_key.empty() && !fs_hex(m.release_key, kKeyIdLen))
    return err(Errc::bad_value, "manifest.release_key");
  if (!m.release_sig.empty() && !fs_hex(m.release_sig, kSignatureHexLen))
    return err(Errc::bad_value, "manifest.release_sig");
  if (m.release_key.empty() != m.release_sig.empty())
    return err(Errc::bad_value, m.release_key.empty() ? "manifest.release_key" : "manifest.release_sig");
  return kOk;
}

// The members a release signature covers, plus the release key id and signature.
Error validate_release(const Manifest& m) {
  if (static_cast<std::size_t>(m.compression) >= count_of(kCompressionNames))
    return err(Errc::bad_value, "compression");
  if (m.hw_count == 0) return err(Errc::bad_value, "hw");
  if (m.hw_count > kMaxHwModels) return err(Errc::field_too_long, "hw");
  for (std::size_t i = 0; i < m.hw_count; ++i) {
    if (!fs_id(m.hw[i])) return err(Errc::bad_value, "hw");
  }
  if (!fs_hex(m.release_key, kKeyIdLen)) return err(Errc::bad_value, "key");
  if (static_cast<std::size_t>(m.kind) >= count_of(kKindNames)) return err(Errc::bad_value, "kind");
  if (!fs_hex(m.sha256, kSha256HexLen)) return err(Errc::bad_value, "sha256");
  if (m.size == 0 || m.size > kMaxU53) return err(Errc::bad_value, "size");
  if (!fs_semver(m.version)) return err(Errc::bad_value, "version");
  if (!fs_hex(m.release_sig, kSignatureHexLen)) return err(Errc::bad_value, "sig");
  return kOk;
}

bool is_p256_point(const std::uint8_t* p) { return p[0] == 0x04; }

Error validate_keyset(const KeySet& k) {
  if (k.version == 0) return err(Errc::bad_value, "version");
  if (k.key_count == 0) return err(Errc::bad_value, "keys");
  if (k.key_count > kMaxKeySetKeys) return err(Errc::field_too_long, "keys");
  std::size_t roots = 0;
  std::size_t releases = 0;
  for (std::size_t i = 0; i < k.key_count; ++i) {
    const KeySetEntry& e = k.keys[i];
    if (!fs_hex(e.id, kKeyIdLen)) return err(Errc::bad_value, "keys.id");
    for (std::size_t j = 0; j < i; ++j) {
      if (k.keys[j].id == e.id) return err(Errc::bad_value, "keys.id");  // ids are unique
    }
    if (static_cast<std::size_t>(e.role) >= count_of(kKeyRoleNames))
      return err(Errc::bad_value, "keys.role");
    roots += e.role == KeyRole::root ? 1u : 0u;
    releases += e.role == KeyRole::release ? 1u : 0u;
    if (!is_p256_point(e.pub)) return err(Errc::bad_value, "keys.pub");
  }
  // At most one next root; a set that could release nothing is a mistake, not a policy.
  if (roots > 1 || releases == 0) return err(Errc::bad_value, "keys.role");
  if (!fs_hex(k.key, kKeyIdLen)) return err(Errc::bad_value, "key");
  if (!fs_hex(k.sig, kSignatureHexLen)) return err(Errc::bad_value, "sig");
  return kOk;
}

Error validate_offer(const Offer& m) {
  if (!fs_id(m.deployment)) return err(Errc::bad_value, "deployment");
  return validate_manifest(m.manifest);
}

Error validate_cancel(const Cancel& m) {
  if (!fs_id(m.deployment)) return err(Errc::bad_value, "deployment");
  if (!fs_text(m.reason)) return err(Errc::bad_value, "reason");
  return kOk;
}

Error validate_hello(const Hello& m) {
  if (!fs_id(m.device)) return err(Errc::bad_value, "device");
  if (!fs_id(m.hw)) return err(Errc::bad_value, "hw");
  if (!fs_semver(m.version)) return err(Errc::bad_value, "version");
  if (!fs_ok(m.slot) || !(m.slot == "a" || m.slot == "b")) return err(Errc::bad_value, "slot");
  if (static_cast<std::size_t>(m.slot_state) >= count_of(kSlotStateNames))
    return err(Errc::bad_value, "slot_state");
  if (m.free > kMaxU53) return err(Errc::bad_value, "free");
  if (m.group_count > kMaxGroups) return err(Errc::field_too_long, "groups");
  for (std::size_t i = 0; i < m.group_count; ++i) {
    if (!fs_id(m.groups[i])) return err(Errc::bad_value, "groups");
  }
  if (m.resume.present) {
    if (!fs_id(m.resume.deployment)) return err(Errc::bad_value, "resume.deployment");
    if (!fs_hex(m.resume.image, kImageIdLen)) return err(Errc::bad_value, "resume.image");
    if (m.resume.received > kMaxU53) return err(Errc::bad_value, "resume.received");
  }
  return kOk;
}

Error validate_event(const Event& m) {
  if (static_cast<std::size_t>(m.type) >= count_of(kEventTypeNames))
    return err(Errc::wrong_type, "type");
  if (!fs_id(m.deployment)) return err(Errc::bad_value, "deployment");
  switch (m.type) {
    case EventType::accept:
      break;
    case EventType::decline:
      if (static_cast<std::size_t>(m.reason) >= kReasonCount) return err(Errc::bad_value, "reason");
      if (!fs_text(m.detail)) return err(Errc::bad_value, "detail");
      break;
    case EventType::progress:
      if (m.total > kMaxU53) return err(Errc::bad_value, "total");
      if (m.received > m.total) return err(Errc::bad_value, "received");
      break;
    case EventType::status:
      if (static_cast<std::size_t>(m.state) >= count_of(kDeviceStateNames))
        return err(Errc::bad_value, "state");
      break;
    case EventType::result:
      if (static_cast<std::size_t>(m.reason) >= kReasonCount) return err(Errc::bad_value, "reason");
      if (!fs_text(m.detail)) return err(Errc::bad_value, "detail");
      if (!fs_semver(m.version)) return err(Errc::bad_value, "version");
      break;
    case EventType::defer:
      if (static_cast<std::size_t>(m.reason) >= kReasonCount) return err(Errc::bad_value, "reason");
      if (!fs_text(m.detail)) return err(Errc::bad_value, "detail");
      break;
  }
  return kOk;
}

Error validate_heartbeat(const Heartbeat& m) {
  if (!fs_id(m.device)) return err(Errc::bad_value, "device");
  if (static_cast<std::size_t>(m.state) >= count_of(kDeviceStateNames))
    return err(Errc::bad_value, "state");
  if (m.uptime > kMaxU53) return err(Errc::bad_value, "uptime");
  return kOk;
}

std::size_t bitmap_bytes(std::uint32_t count) { return (count + 7u) / 8u; }

Error validate_chunk_request(const ChunkRequest& m) {
  if (!fs_id(m.deployment)) return err(Errc::bad_value, "deployment");
  if (!fs_hex(m.image, kImageIdLen)) return err(Errc::bad_value, "image");
  if (m.count == 0 || m.count > kMaxChunksPerRequest) return err(Errc::bad_value, "count");
  if (static_cast<std::uint64_t>(m.first) + m.count > kMaxU32 + 1)
    return err(Errc::bad_value, "count");
  if (!m.bc.empty() && !fs_id(m.bc)) return err(Errc::bad_value, "bc");
  if (m.has_bitmap) {
    std::size_t nbytes = bitmap_bytes(m.count);
    std::uint32_t used_bits = m.count % 8u;
    if (used_bits != 0) {
      std::uint8_t last = m.bitmap[nbytes - 1];
      if ((last >> used_bits) != 0) return err(Errc::bad_value, "bitmap");
    }
  }
  return kOk;
}

// ----------------------------------------------------------------------- reading helpers
Error require(const Doc& d, int obj, const char* key, const char* path, int& idx) {
  idx = json::find(d, obj, key);
  if (idx < 0) return err(Errc::missing_field, path);
  return kOk;
}

template <std::size_t N>
Error read_string(const Doc& d, int idx, const char* path, FixedString<N>& out) {
  if (d.tok[idx].type != Type::string) return err(Errc::bad_field_type, path);
  if (json::string_length(d, idx) > N) return err(Errc::field_too_long, path);
  std::size_t len = 0;
  if (!json::string_copy(d, idx, out.data, N, len)) return err(Errc::bad_value, path);
  out.size = len;
  return kOk;
}

template <std::size_t N>
Error req_string(const Doc& d, int obj, const char* key, const char* path, FixedString<N>& out) {
  int idx;
  if (Error e = require(d, obj, key, path, idx)) return e;
  return read_string(d, idx, path, out);
}

template <std::size_t N>
Error opt_string(const Doc& d, int obj, const char* key, const char* path, FixedString<N>& out) {
  int idx = json::find(d, obj, key);
  if (idx < 0) {
    out.assign("", 0);
    return kOk;
  }
  return read_string(d, idx, path, out);
}

Error read_uint(const Doc& d, int idx, const char* path, std::uint64_t max, std::uint64_t& out) {
  if (d.tok[idx].type != Type::number) return err(Errc::bad_field_type, path);
  if (json::integer_u64(d, idx, max, out) != json::NumResult::ok) return err(Errc::bad_value, path);
  return kOk;
}

Error req_u64(const Doc& d, int obj, const char* key, const char* path, std::uint64_t& out) {
  int idx;
  if (Error e = require(d, obj, key, path, idx)) return e;
  return read_uint(d, idx, path, kMaxU53, out);
}

Error req_u32(const Doc& d, int obj, const char* key, const char* path, std::uint32_t& out) {
  int idx;
  if (Error e = require(d, obj, key, path, idx)) return e;
  std::uint64_t v = 0;
  if (Error e = read_uint(d, idx, path, kMaxU32, v)) return e;
  out = static_cast<std::uint32_t>(v);
  return kOk;
}

Error req_bool(const Doc& d, int obj, const char* key, const char* path, bool& out) {
  int idx;
  if (Error e = require(d, obj, key, path, idx)) return e;
  if (d.tok[idx].type != Type::boolean) return err(Errc::bad_field_type, path);
  out = json::boolean_value(d, idx);
  return kOk;
}

// Reads a string naming one of `names`; stores its index.
template <std::size_t N>
Error read_name(const Doc& d, int idx, const char* path, const char* const (&names)[N],
                std::size_t& out) {
  if (d.tok[idx].type != Type::string) return err(Errc::bad_field_type, path);
  for (std::size_t i = 0; i < N; ++i) {
    if (json::string_equals(d, idx, names[i])) {
      out = i;
      return kOk;
    }
  }
  return err(Errc::bad_value, path);
}

template <std::size_t N>
Error req_name(const Doc& d, int obj, const char* key, const char* path,
               const char* const (&names)[N], std::size_t& out) {
  int idx;
  if (Error e = require(d, obj, key, path, idx)) return e;
  return read_name(d, idx, path, names, out);
}

// Parses, checks that the root is an object and "v" is 1.
Error open_message(const char* in, std::size_t len, Doc& d) {
  if (Error e = json::parse(in, len, d)) return e;
  if (d.tok[0].type != Type::object) return err(Errc::bad_json, "json");
  int idx;
  if (Error e = require(d, 0, "v", "v", idx)) return e;
  if (d.tok[idx].type != Type::number) return err(Errc::bad_field_type, "v");
  std::uint64_t v = 0;
  if (json::integer_u64(d, idx, kMaxU32, v) != json::NumResult::ok ||
      v != static_cast<std::uint64_t>(kProtocolVersion))
    return err(Errc::unsupported_version, "v");
  return kOk;
}

Error type_token(const Doc& d, int& idx) {
  if (Error e = require(d, 0, "type", "type", idx)) return e;
  if (d.tok[idx].type != Type::string) return err(Errc::bad_field_type, "type");
  return kOk;
}

Error expect_type(const Doc& d, const char* type) {
  int idx;
  if (Error e = type_token(d, idx)) return e;
  if (!json::string_equals(d, idx, type)) return err(Errc::wrong_type, "type");
  return kOk;
}

// ----------------------------------------------------------------------- writing helpers
template <std::size_t N>
void put(Writer& w, const FixedString<N>& s) {
  w.string(s.data, s.size <= N ? s.size : N);
}

void write_header(Writer& w, const char* type) {
  w.begin_object();
  w.key("v");
  w.uint(static_cast<std::uint64_t>(kProtocolVersion));
  w.key("type");
  w.string(type);
}

Error finish(Writer& w, std::size_t& len) {
  if (w.overflow()) {
    len = 0;
    return err(Errc::buffer_too_small, "");
  }
  w.terminate();
  len = w.size();
  return kOk;
}

// Keys in byte-wise sorted order (the canonical order).
void write_manifest(Writer& w, const Manifest& m, bool with_sig) {
  w.begin_object();
  w.key("chunk_size");
  w.uint(m.chunk_size);
  w.key("compression");
  w.string(name_at(kCompressionNames, static_cast<std::size_t>(m.compression)));
  w.key("counter");
  w.uint(m.counter);
  // The binding members only when set: manifests signed without them keep their bytes.
  if (!m.deployment.empty()) {
    w.key("deployment");
    put(w, m.deployment);
  }
  if (!m.device.empty()) {
    w.key("device");
    put(w, m.device);
  }
  w.key("expires");
  w.uint(m.expires);
  if (!m.group.empty()) {
    w.key("group");
    put(w, m.group);
  }
  w.key("hw");
  w.begin_array();
  std::size_t n = m.hw_count <= kMaxHwModels ? m.hw_count : kMaxHwModels;
  for (std::size_t i = 0; i < n; ++i) put(w, m.hw[i]);
  w.end_array();
  w.key("image");
  put(w, m.image);
  w.key("key");
  put(w, m.key);
  w.key("kind");
  w.string(name_at(kKindNames, static_cast<std::size_t>(m.kind)));
  // The release signature only when set: single-key manifests keep their bytes.
  if (!m.release_key.empty() || !m.release_sig.empty()) {
    w.key("release_key");
    put(w, m.release_key);
    w.key("release_sig");
    put(w, m.release_sig);
  }
  if (m.rollback) {
    w.key("rollback");
    w.boolean(true);
  }
  w.key("sha256");
  put(w, m.sha256);
  if (with_sig) {
    w.key("sig");
    put(w, m.sig);
  }
  w.key("size");
  w.uint(m.size);
  w.key("version");
  put(w, m.version);
  w.end_object();
}

constexpr const char* kManifestKeys[] = {
    "chunk_size", "compression", "counter",     "deployment",  "device",   "expires",
    "group",      "hw",          "image",       "key",         "kind",     "release_key",
    "release_sig", "rollback",   "sha256",      "sig",         "size",     "version"};

// Release members in canonical (sorted) order, "type":"release" in its place (PROTOCOL.md 6.5).
void write_release_members(Writer& w, const Manifest& m) {
  w.key("compression");
  w.string(name_at(kCompressionNames, static_cast<std::size_t>(m.compression)));
  w.key("counter");
  w.uint(m.counter);
  w.key("hw");
  w.begin_array();
  std::size_t n = m.hw_count <= kMaxHwModels ? m.hw_count : kMaxHwModels;
  for (std::size_t i = 0; i < n; ++i) put(w, m.hw[i]);
  w.end_array();
  w.key("key");
  put(w, m.release_key);
  w.key("kind");
  w.string(name_at(kKindNames, static_cast<std::size_t>(m.kind)));
  w.key("sha256");
  put(w, m.sha256);
  w.key("size");
  w.uint(m.size);
}

void write_hex(Writer& w, const std::uint8_t* data, std::size_t n) {
  char hex[kP256PointLen * 2];
  if (n > kP256PointLen) n = kP256PointLen;
  hex_encode(data, n, hex);
  w.string(hex, n * 2);
}

// One key-set entry; `canonical` = the members in sorted order (id, pub, role).
void write_keyset_entry(Writer& w, const KeySetEntry& e, bool canonical) {
  w.begin_object();
  w.key("id");
  put(w, e.id);
  if (!canonical) {
    w.key("role");
    w.string(name_at(kKeyRoleNames, static_cast<std::size_t>(e.role)));
  }
  w.key("pub");
  write_hex(w, e.pub, kP256PointLen);
  if (canonical) {
    w.key("role");
    w.string(name_at(kKeyRoleNames, static_cast<std::size_t>(e.role)));
  }
  w.end_object();
}

// Reads an optional hex member that, when present, must not be empty (an empty string
// would give the same canonical bytes as an absent member).
template <std::size_t N>
Error opt_hex(const Doc& d, int obj, const char* key, const char* path, FixedString<N>& out) {
  int idx = json::find(d, obj, key);
  out.assign("", 0);
  if (idx < 0) return kOk;
  if (Error e = read_string(d, idx, path, out)) return e;
  if (!is_lower_hex(out.data, out.size, N)) return err(Errc::bad_value, path);
  return kOk;
}

Error decode_manifest(const Doc& d, int obj, Manifest& m) {
  if (d.tok[obj].type != Type::object) return err(Errc::bad_field_type, "manifest");
  // Every member must be known: the signature only covers the canonical fields.
  int end = d.tok[obj].next;
  for (int k = obj + 1; k < end; k = json::next_member(d, k)) {
    bool known = false;
    for (const char* name : kManifestKeys) {
      if (json::string_equals(d, k, name)) {
        known = true;
        break;
      }
    }
    if (!known) return err(Errc::bad_value, "manifest");
  }
  if (Error e = req_string(d, obj, "image", "manifest.image", m.image)) return e;
  if (Error e = req_string(d, obj, "version", "manifest.version", m.version)) return e;
  int hw;
  if (Error e = require(d, obj, "hw", "manifest.hw", hw)) return e;
  if (d.tok[hw].type != Type::array) return err(Errc::bad_field_type, "manifest.hw");
  std::size_t nhw = json::child_count(d, hw);
  if (nhw == 0) return err(Errc::bad_value, "manifest.hw");
  if (nhw > kMaxHwModels) return err(Errc::field_too_long, "manifest.hw");
  m.hw_count = 0;
  for (int i = json::first_child(hw); i < d.tok[hw].next; i = json::next_sibling(d, i)) {
    if (Error e = read_string(d, i, "manifest.hw", m.hw[m.hw_count])) return e;
    ++m.hw_count;
  }
  if (Error e = req_u64(d, obj, "size", "manifest.size", m.size)) return e;
  if (Error e = req_string(d, obj, "sha256", "manifest.sha256", m.sha256)) return e;
  if (Error e = req_u32(d, obj, "chunk_size", "manifest.chunk_size", m.chunk_size)) return e;
  if (Error e = req_u32(d, obj, "counter", "manifest.counter", m.counter)) return e;
  if (Error e = req_u64(d, obj, "expires", "manifest.expires", m.expires)) return e;
  if (Error e = req_string(d, obj, "key", "manifest.key", m.key)) return e;
  int idx = json::find(d, obj, "kind");
  m.kind = ImageKind::firmware;
  if (idx >= 0) {
    std::size_t v = 0;
    if (Error e = read_name(d, idx, "manifest.kind", kKindNames, v)) return e;
    m.kind = static_cast<ImageKind>(v);
  }
  idx = json::find(d, obj, "compression");
  m.compression = Compression::none;
  if (idx >= 0) {
    std::size_t v = 0;
    if (Error e = read_name(d, idx, "manifest.compression", kCompressionNames, v)) return e;
    m.compression = static_cast<Compression>(v);
  }
  if (Error e = req_string(d, obj, "sig", "manifest.sig", m.sig)) return e;
  if (Error e = opt_string(d, obj, "deployment", "manifest.deployment", m.deployment)) return e;
  if (Error e = opt_string(d, obj, "device", "manifest.device", m.device)) return e;
  if (Error e = opt_string(d, obj, "group", "manifest.group", m.group)) return e;
  m.rollback = false;
  idx = json::find(d, obj, "rollback");
  if (idx >= 0) {
    if (d.tok[idx].type != Type::boolean) return err(Errc::bad_field_type, "manifest.rollback");
    m.rollback = json::boolean_value(d, idx);
    // Only `true` is ever written: a `false` would give one manifest two encodings.
    if (!m.rollback) return err(Errc::bad_value, "manifest.rollback");
  }
  if (Error e = opt_hex(d, obj, "release_key", "manifest.release_key", m.release_key)) return e;
  if (Error e = opt_hex(d, obj, "release_sig", "manifest.release_sig", m.release_sig)) return e;
  return validate_manifest(m);
}

// ----------------------------------------------------------------------- semver helpers
bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_ident_char(char c) {
  return is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-';
}

// Compares two decimal digit strings without leading zeros.
int compare_numeric(const char* a, std::size_t alen, const char* b, std::size_t blen) {
  if (alen != blen) return alen < blen ? -1 : 1;
  int c = std::memcmp(a, b, alen);
  return c < 0 ? -1 : (c > 0 ? 1 : 0);
}

bool all_digits(const char* s, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) {
    if (!is_digit(s[i])) return false;
  }
  return n > 0;
}

}  // namespace

// ========================================================================= names
const char* reason_name(ReasonCode code) {
  return name_at(kReasonNames, static_cast<std::size_t>(code));
}

bool reason_from_name(const char* name, std::size_t len, ReasonCode& out) {
  if (name == nullptr) return false;
  for (std::size_t i = 0; i < kReasonCount; ++i) {
    if (std::strlen(kReasonNames[i]) == len && std::memcmp(kReasonNames[i], name, len) == 0) {
      out = static_cast<ReasonCode>(i);
      return true;
    }
  }
  return false;
}

const char* slot_state_name(SlotState s) {
  return name_at(kSlotStateNames, static_cast<std::size_t>(s));
}
const char* event_type_name(EventType t) {
  return name_at(kEventTypeNames, static_cast<std::size_t>(t));
}
const char* device_state_name(DeviceState s) {
  return name_at(kDeviceStateNames, static_cast<std::size_t>(s));
}
const char* key_role_name(KeyRole r) {
  return name_at(kKeyRoleNames, static_cast<std::size_t>(r));
}

// ========================================================================= manifest
std::size_t canonical_manifest(const Manifest& m, char* out, std::size_t cap) {
  if (out == nullptr) return 0;
  Writer w(out, cap);
  write_manifest(w, m, false);
  if (w.overflow()) return 0;
  w.terminate();
  return w.size();
}

// ========================================================================= release
std::size_t canonical_release(const Manifest& m, char* out, std::size_t cap) {
  if (out == nullptr) return 0;
  Writer w(out, cap);
  w.begin_object();
  write_release_members(w, m);
  w.key("type");
  w.string("release");
  w.key("version");
  put(w, m.version);
  w.end_object();
  if (w.overflow()) return 0;
  w.terminate();
  return w.size();
}

Error encode_release(const Manifest& m, char* out, std::size_t cap, std::size_t& len) {
  len = 0;
  if (Error e = validate_release(m)) return e;
  Writer w(out, cap);
  write_header(w, "release");
  write_release_members(w, m);
  w.key("version");
  put(w, m.version);
  w.key("sig");
  put(w, m.release_sig);
  w.end_object();
  return finish(w, len);
}

constexpr const char* kReleaseKeys[] = {"v",    "type",   "compression", "counter", "hw", "key",
                                        "kind", "sha256", "size",        "version", "sig"};

Error decode_release(const char* in, std::size_t len, Manifest& out) {
  Doc d;
  if (Error e = open_message(in, len, d)) return e;
  if (Error e = expect_type(d, "release")) return e;
  // Signed content: a member the signature does not cover is refused, as in the manifest.
  for (int k = 1; k < d.tok[0].next; k = json::next_member(d, k)) {
    bool known = false;
    for (const char* name : kReleaseKeys) known = known || json::string_equals(d, k, name);
    if (!known) return err(Errc::bad_value, "release");
  }
  std::size_t v = 0;
  if (Error e = req_name(d, 0, "compression", "compression", kCompressionNames, v)) return e;
  out.compression = static_cast<Compression>(v);
  if (Error e = req_u32(d, 0, "counter", "counter", out.counter)) return e;
  int hw;
  if (Error e = require(d, 0, "hw", "hw", hw)) return e;
  if (d.tok[hw].type != Type::array) return err(Errc::bad_field_type, "hw");
  const std::size_t nhw = json::child_count(d, hw);
  if (nhw == 0) return err(Errc::bad_value, "hw");
  if (nhw > kMaxHwModels) return err(Errc::field_too_long, "hw");
  out.hw_count = 0;
  for (int i = json::first_child(hw); i < d.tok[hw].next; i = json::next_sibling(d, i)) {
    if (Error e = read_string(d, i, "hw", out.hw[out.hw_count])) return e;
    ++out.hw_count;
  }
  if (Error e = req_string(d, 0, "key", "key", out.release_key)) return e;
  if (Error e = req_name(d, 0, "kind", "kind", kKindNames, v)) return e;
  out.kind = static_cast<ImageKind>(v);
  if (Error e = req_string(d, 0, "sha256", "sha256", out.sha256)) return e;
  if (Error e = req_u64(d, 0, "size", "size", out.size)) return e;
  if (Error e = req_string(d, 0, "version", "version", out.version)) return e;
  if (Error e = req_string(d, 0, "sig", "sig", out.release_sig)) return e;
  return validate_release(out);
}

// ========================================================================= key sets
std::size_t canonical_keyset(const KeySet& k, char* out, std::size_t cap) {
  if (out == nullptr) return 0;
  Writer w(out, cap);
  w.begin_object();
  w.key("key");
  put(w, k.key);
  w.key("keys");
  w.begin_array();
  const std::size_t n = k.key_count <= kMaxKeySetKeys ? k.key_count : kMaxKeySetKeys;
  for (std::size_t i = 0; i < n; ++i) write_keyset_entry(w, k.keys[i], true);
  w.end_array();
  w.key("type");
  w.string("keys");
  w.key("v");
  w.uint(static_cast<std::uint64_t>(kProtocolVersion));
  w.key("version");
  w.uint(k.version);
  w.end_object();
  if (w.overflow()) return 0;
  w.terminate();
  return w.size();
}

Error encode_keyset(const KeySet& k, char* out, std::size_t cap, std::size_t& len) {
  len = 0;
  if (Error e = validate_keyset(k)) return e;
  Writer w(out, cap);
  write_header(w, "keys");
  w.key("version");
  w.uint(k.version);
  w.key("keys");
  w.begin_array();
  for (std::size_t i = 0; i < k.key_count; ++i) write_keyset_entry(w, k.keys[i], false);
  w.end_array();
  w.key("key");
  put(w, k.key);
  w.key("sig");
  put(w, k.sig);
  w.end_object();
  return finish(w, len);
}

Error decode_keyset(const char* in, std::size_t len, KeySet& out) {
  Doc d;
  if (Error e = open_message(in, len, d)) return e;
  if (Error e = expect_type(d, "keys")) return e;
  if (Error e = req_u32(d, 0, "version", "version", out.version)) return e;
  int ks;
  if (Error e = require(d, 0, "keys", "keys", ks)) return e;
  if (d.tok[ks].type != Type::array) return err(Errc::bad_field_type, "keys");
  const std::size_t n = json::child_count(d, ks);
  if (n == 0) return err(Errc::bad_value, "keys");
  if (n > kMaxKeySetKeys) return err(Errc::field_too_long, "keys");
  out.key_count = 0;
  for (int i = json::first_child(ks); i < d.tok[ks].next; i = json::next_sibling(d, i)) {
    if (d.tok[i].type != Type::object) return err(Errc::bad_field_type, "keys");
    KeySetEntry& e = out.keys[out.key_count];
    if (Error x = req_string(d, i, "id", "keys.id", e.id)) return x;
    std::size_t role = 0;
    if (Error x = req_name(d, i, "role", "keys.role", kKeyRoleNames, role)) return x;
    e.role = static_cast<KeyRole>(role);
    FixedString<kP256PointLen * 2> pub;
    if (Error x = req_string(d, i, "pub", "keys.pub", pub)) return x;
    if (!is_lower_hex(pub.data, pub.size, kP256PointLen * 2) ||
        !hex_decode(pub.data, pub.size, e.pub, kP256PointLen))
      return err(Errc::bad_value, "keys.pub");
    ++out.key_count;
  }
  if (Error e = req_string(d, 0, "key", "key", out.key)) return e;
  if (Error e = req_string(d, 0, "sig", "sig", out.sig)) return e;
  return validate_keyset(out);
}

void p256_spki_der(const std::uint8_t point[kP256PointLen], std::uint8_t out[kP256SpkiDerLen]) {
  // SEQUENCE { SEQUENCE { OID id-ecPublicKey, OID prime256v1 }, BIT STRING (0 unused bits) }
  static constexpr std::uint8_t kPrefix[] = {
      0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01,
      0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00};
  static_assert(sizeof kPrefix + kP256PointLen == kP256SpkiDerLen, "SPKI layout");
  std::memcpy(out, kPrefix, sizeof kPrefix);
  std::memcpy(out + sizeof kPrefix, point, kP256PointLen);
}

// ========================================================================= offer
Error encode_offer(const Offer& m, char* out, std::size_t cap, std::size_t& len) {
  len = 0;
  if (Error e = validate_offer(m)) return e;
  Writer w(out, cap);
  write_header(w, "offer");
  w.key("deployment");
  put(w, m.deployment);
  w.key("manifest");
  write_manifest(w, m.manifest, true);
  w.end_object();
  return finish(w, len);
}

Error decode_offer(const char* in, std::size_t len, Offer& out) {
  Doc d;
  if (Error e = open_message(in, len, d)) return e;
  if (Error e = expect_type(d, "offer")) return e;
  if (Error e = req_string(d, 0, "deployment", "deployment", out.deployment)) return e;
  int mi;
  if (Error e = require(d, 0, "manifest", "manifest", mi)) return e;
  if (Error e = decode_manifest(d, mi, out.manifest)) return e;
  return validate_offer(out);
}

// ========================================================================= cancel
Error encode_cancel(const Cancel& m, char* out, std::size_t cap, std::size_t& len) {
  len = 0;
  if (Error e = validate_cancel(m)) return e;
  Writer w(out, cap);
  write_header(w, "cancel");
  w.key("deployment");
  put(w, m.deployment);
  if (!m.reason.empty()) {
    w.key("reason");
    put(w, m.reason);
  }
  w.end_object();
  return finish(w, len);
}

Error decode_cancel(const char* in, std::size_t len, Cancel& out) {
  Doc d;
  if (Error e = open_message(in, len, d)) return e;
  if (Error e = expect_type(d, "cancel")) return e;
  if (Error e = req_string(d, 0, "deployment", "deployment", out.deployment)) return e;
  if (Error e = opt_string(d, 0, "reason", "reason", out.reason)) return e;
  return validate_cancel(out);
}

// ========================================================================= hello
Error encode_hello(const Hello& m, char* out, std::size_t cap, std::size_t& len) {
  len = 0;
  if (Error e = validate_hello(m)) return e;
  Writer w(out, cap);
  write_header(w, "hello");
  w.key("device");
  put(w, m.device);
  w.key("hw");
  put(w, m.hw);
  w.key("version");
  put(w, m.version);
  w.key("slot");
  put(w, m.slot);
  w.key("slot_state");
  w.string(slot_state_name(m.slot_state));
  w.key("free");
  w.uint(m.free);
  w.key("counter");
  w.uint(m.counter);
  w.key("groups");
  w.begin_array();
  for (std::size_t i = 0; i < m.group_count; ++i) put(w, m.groups[i]);
  w.end_array();
  if (m.keys != 0) {  // only when set: hellos of devices on their provisioned keys keep their bytes
    w.key("keys");
    w.uint(m.keys);
  }
  if (m.resume.present) {
    w.key("resume");
    w.begin_object();
    w.key("deployment");
    put(w, m.resume.deployment);
    w.key("image");
    put(w, m.resume.image);
    w.key("received");
    w.uint(m.resume.received);
    w.end_object();
  }
  w.end_object();
  return finish(w, len);
}

Error decode_hello(const char* in, std::size_t len, Hello& out) {
  Doc d;
  if (Error e = open_message(in, len, d)) return e;
  if (Error e = expect_type(d, "hello")) return e;
  if (Error e = req_string(d, 0, "device", "device", out.device)) return e;
  if (Error e = req_string(d, 0, "hw", "hw", out.hw)) return e;
  if (Error e = req_string(d, 0, "version", "version", out.version)) return e;
  if (Error e = req_string(d, 0, "slot", "slot", out.slot)) return e;
  std::size_t v = 0;
  if (Error e = req_name(d, 0, "slot_state", "slot_state", kSlotStateNames, v)) return e;
  out.slot_state = static_cast<SlotState>(v);
  if (Error e = req_u64(d, 0, "free", "free", out.free)) return e;
  if (Error e = req_u32(d, 0, "counter", "counter", out.counter)) return e;
  out.group_count = 0;
  int g = json::find(d, 0, "groups");
  if (g >= 0) {
    if (d.tok[g].type != Type::array) return err(Errc::bad_field_type, "groups");
    if (json::child_count(d, g) > kMaxGroups) return err(Errc::field_too_long, "groups");
    for (int i = json::first_child(g); i < d.tok[g].next; i = json::next_sibling(d, i)) {
      if (Error e = read_string(d, i, "groups", out.groups[out.group_count])) return e;
      ++out.group_count;
    }
  }
  out.keys = 0;
  if (json::find(d, 0, "keys") >= 0) {
    if (Error e = req_u32(d, 0, "keys", "keys", out.keys)) return e;
  }
  out.resume.present = false;
  int r = json::find(d, 0, "resume");
  if (r >= 0) {
    if (d.tok[r].type != Type::object) return err(Errc::bad_field_type, "resume");
    if (Error e = req_string(d, r, "deployment", "resume.deployment", out.resume.deployment))
      return e;
    if (Error e = req_string(d, r, "image", "resume.image", out.resume.image)) return e;
    if (Error e = req_u64(d, r, "received", "resume.received", out.resume.received)) return e;
    out.resume.present = true;
  }
  return validate_hello(out);
}

Error encode_offline(char* out, std::size_t cap, std::size_t& len) {
  len = 0;
  Writer w(out, cap);
  write_header(w, "offline");
  w.end_object();
  return finish(w, len);
}

Error decode_presence_type(const char* in, std::size_t len, PresenceType& out) {
  Doc d;
  if (Error e = open_message(in, len, d)) return e;
  int idx;
  if (Error e = type_token(d, idx)) return e;
  if (json::string_equals(d, idx, "hello")) {
    out = PresenceType::hello;
    return kOk;
  }
  if (json::string_equals(d, idx, "offline")) {
    out = PresenceType::offline;
    return kOk;
  }
  if (json::string_equals(d, idx, "heartbeat")) {
    out = PresenceType::heartbeat;
    return kOk;
  }
  return err(Errc::wrong_type, "type");
}

// ========================================================================= heartbeat
Error encode_heartbeat(const Heartbeat& m, char* out, std::size_t cap, std::size_t& len) {
  len = 0;
  if (Error e = validate_heartbeat(m)) return e;
  Writer w(out, cap);
  write_header(w, "heartbeat");
  w.key("device");
  put(w, m.device);
  w.key("state");
  w.string(device_state_name(m.state));
  w.key("uptime");
  w.uint(m.uptime);
  w.end_object();
  return finish(w, len);
}

Error decode_heartbeat(const char* in, std::size_t len, Heartbeat& out) {
  Doc d;
  if (Error e = open_message(in, len, d)) return e;
  if (Error e = expect_type(d, "heartbeat")) return e;
  if (Error e = req_string(d, 0, "device", "device", out.device)) return e;
  std::size_t v = 0;
  if (Error e = req_name(d, 0, "state", "state", kDeviceStateNames, v)) return e;
  out.state = static_cast<DeviceState>(v);
  if (Error e = req_u64(d, 0, "uptime", "uptime", out.uptime)) return e;
  return validate_heartbeat(out);
}

// ========================================================================= event
Error encode_event(const Event& m, char* out, std::size_t cap, std::size_t& len) {
  len = 0;
  if (Error e = validate_event(m)) return e;
  Writer w(out, cap);
  write_header(w, event_type_name(m.type));
  w.key("seq");
  w.uint(m.seq);
  w.key("deployment");
  put(w, m.deployment);
  switch (m.type) {
    case EventType::accept:
      break;
    case EventType::decline:
      w.key("reason");
      w.string(reason_name(m.reason));
      if (!m.detail.empty()) {
        w.key("detail");
        put(w, m.detail);
      }
      break;
    case EventType::progress:
      w.key("received");
      w.uint(m.received);
      w.key("total");
      w.uint(m.total);
      break;
    case EventType::status:
      w.key("state");
      w.string(device_state_name(m.state));
      break;
    case EventType::result:
      w.key("ok");
      w.boolean(m.success);
      w.key("reason");
      w.string(reason_name(m.reason));
      if (!m.detail.empty()) {
        w.key("detail");
        put(w, m.detail);
      }
      w.key("version");
      put(w, m.version);
      break;
    case EventType::defer:
      w.key("reason");
      w.string(reason_name(m.reason));
      if (!m.detail.empty()) {
        w.key("detail");
        put(w, m.detail);
      }
      w.key("retry_after");
      w.uint(m.retry_after);
      break;
  }
  w.end_object();
  return finish(w, len);
}

Error decode_event(const char* in, std::size_t len, Event& out) {
  Doc d;
  if (Error e = open_message(in, len, d)) return e;
  int t;
  if (Error e = type_token(d, t)) return e;
  std::size_t ti = 0;
  if (read_name(d, t, "type", kEventTypeNames, ti)) return err(Errc::wrong_type, "type");
  out.type = static_cast<EventType>(ti);
  if (Error e = req_u32(d, 0, "seq", "seq", out.seq)) return e;
  if (Error e = req_string(d, 0, "deployment", "deployment", out.deployment)) return e;
  out.reason = ReasonCode::ok;
  out.detail.assign("", 0);
  out.received = 0;
  out.total = 0;
  out.state = DeviceState::idle;
  out.success = false;
  out.version.assign("", 0);
  out.retry_after = 0;
  std::size_t v = 0;
  switch (out.type) {
    case EventType::accept:
      break;
    case EventType::decline:
      if (Error e = req_name(d, 0, "reason", "reason", kReasonNames, v)) return e;
      out.reason = static_cast<ReasonCode>(v);
      if (Error e = opt_string(d, 0, "detail", "detail", out.detail)) return e;
      break;
    case EventType::progress:
      if (Error e = req_u64(d, 0, "received", "received", out.received)) return e;
      if (Error e = req_u64(d, 0, "total", "total", out.total)) return e;
      break;
    case EventType::status:
      if (Error e = req_name(d, 0, "state", "state", kDeviceStateNames, v)) return e;
      out.state = static_cast<DeviceState>(v);
      break;
    case EventType::result:
      if (Error e = req_bool(d, 0, "ok", "ok", out.success)) return e;
      if (Error e = req_name(d, 0, "reason", "reason", kReasonNames, v)) return e;
      out.reason = static_cast<ReasonCode>(v);
      if (Error e = opt_string(d, 0, "detail", "detail", out.detail)) return e;
      if (Error e = req_string(d, 0, "version", "version", out.version)) return e;
      break;
    case EventType::defer:
      if (Error e = req_name(d, 0, "reason", "reason", kReasonNames, v)) return e;
      out.reason = static_cast<ReasonCode>(v);
      if (Error e = opt_string(d, 0, "detail", "detail", out.detail)) return e;
      if (Error e = req_u32(d, 0, "retry_after", "retry_after", out.retry_after)) return e;
      break;
  }
  return validate_event(out);
}

// ========================================================================= chunk request
Error encode_chunk_request(const ChunkRequest& m, char* out, std::size_t cap, std::size_t& len) {
  len = 0;
  if (Error e = validate_chunk_request(m)) return e;
  Writer w(out, cap);
  write_header(w, "chunk_req");
  w.key("deployment");
  put(w, m.deployment);
  w.key("image");
  put(w, m.image);
  w.key("first");
  w.uint(m.first);
  w.key("count");
  w.uint(m.count);
  if (m.has_bitmap) {
    char hex[sizeof(m.bitmap) * 2];
    std::size_t n = bitmap_bytes(m.count);
    hex_encode(m.bitmap, n, hex);
    w.key("bitmap");
    w.string(hex, n * 2);
  }
  if (!m.bc.empty()) {
    w.key("bc");
    put(w, m.bc);
  }
  w.end_object();
  return finish(w, len);
}

Error decode_chunk_request(const char* in, std::size_t len, ChunkRequest& out) {
  Doc d;
  if (Error e = open_message(in, len, d)) return e;
  if (Error e = expect_type(d, "chunk_req")) return e;
  if (Error e = req_string(d, 0, "deployment", "deployment", out.deployment)) return e;
  if (Error e = req_string(d, 0, "image", "image", out.image)) return e;
  if (Error e = req_u32(d, 0, "first", "first", out.first)) return e;
  if (Error e = req_u32(d, 0, "count", "count", out.count)) return e;
  if (out.count == 0 || out.count > kMaxChunksPerRequest) return err(Errc::bad_value, "count");
  out.has_bitmap = false;
  std::memset(out.bitmap, 0, sizeof(out.bitmap));
  int b = json::find(d, 0, "bitmap");
  if (b >= 0) {
    if (d.tok[b].type != Type::string) return err(Errc::bad_field_type, "bitmap");
    std::size_t n = json::string_length(d, b);
    if (n > sizeof(out.bitmap) * 2) return err(Errc::field_too_long, "bitmap");
    const json::Token& tk = d.tok[b];
    std::size_t want = bitmap_bytes(out.count);
    if (tk.escaped || n != want * 2 || !is_lower_hex(d.src + tk.start, n, want * 2) ||
        !hex_decode(d.src + tk.start, n, out.bitmap, want))
      return err(Errc::bad_value, "bitmap");
    out.has_bitmap = true;
  }
  if (Error e = opt_string(d, 0, "bc", "bc", out.bc)) return e;
  return validate_chunk_request(out);
}

// ========================================================================= semver
bool is_semver(const char* s, std::size_t len) {
  if (s == nullptr) return false;
  std::size_t i = 0;
  for (int part = 0; part < 3; ++part) {
    if (i >= len || !is_digit(s[i])) return false;
    if (s[i] == '0' && i + 1 < len && is_digit(s[i + 1])) return false;
    while (i < len && is_digit(s[i])) ++i;
    if (part < 2) {
      if (i >= len || s[i] != '.') return false;
      ++i;
    }
  }
  if (i < len && s[i] == '-') {
    ++i;
    for (;;) {
      std::size_t start = i;
      while (i < len && is_ident_char(s[i])) ++i;
      std::size_t n = i - start;
      if (n == 0) return false;
      if (n > 1 && s[start] == '0' && all_digits(s + start, n)) return false;
      if (i < len && s[i] == '.') {
        ++i;
        continue;
      }
      break;
    }
  }
  if (i < len && s[i] == '+') {
    ++i;
    for (;;) {
      std::size_t start = i;
      while (i < len && is_ident_char(s[i])) ++i;
      if (i == start) return false;
      if (i < len && s[i] == '.') {
        ++i;
        continue;
      }
      break;
    }
  }
  return i == len;
}

int compare_semver(const char* a, const char* b) {
  // Numeric core.
  for (int part = 0; part < 3; ++part) {
    std::size_t na = 0, nb = 0;
    while (is_digit(a[na])) ++na;
    while (is_digit(b[nb])) ++nb;
    int c = compare_numeric(a, na, b, nb);
    if (c != 0) return c;
    a += na;
    b += nb;
    if (part < 2) {
      if (*a == '.') ++a;
      if (*b == '.') ++b;
    }
  }
  bool pa = *a == '-';
  bool pb = *b == '-';
  if (!pa && !pb) return 0;
  if (!pa) return 1;  // a release ranks above any pre-release of the same core
  if (!pb) return -1;
  ++a;
  ++b;
  for (;;) {
    bool ea = *a == '\0' || *a == '+';
    bool eb = *b == '\0' || *b == '+';
    if (ea && eb) return 0;
    if (ea) return -1;  // fewer identifiers ranks lower
    if (eb) return 1;
    std::size_t na = 0, nb = 0;
    while (is_ident_char(a[na])) ++na;
    while (is_ident_char(b[nb])) ++nb;
    if (na == 0 && nb == 0) return 0;  // not semver (precondition violated); stop
    bool da = all_digits(a, na);
    bool db = all_digits(b, nb);
    int c;
    if (da && db) {
      c = compare_numeric(a, na, b, nb);
    } else if (da) {
      c = -1;  // numeric identifiers rank below alphanumeric ones
    } else if (db) {
      c = 1;
    } else {
      std::size_t n = na < nb ? na : nb;
      c = std::memcmp(a, b, n);
      if (c == 0 && na != nb) c = na < nb ? -1 : 1;
      c = c < 0 ? -1 : (c > 0 ? 1 : 0);
    }
    if (c != 0) return c;
    a += na;
    b += nb;
    if (*a == '.') ++a;
    if (*b == '.') ++b;
  }
}

}  // namespace ota::proto
