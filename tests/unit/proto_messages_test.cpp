// Message codecs: round trips, canonical manifest bytes, validation, names, semver.
#include <gtest/gtest.h>

#include <cstring>
#include <string>

#include "ota/proto/frame.hpp"
#include "ota/proto/messages.hpp"

using namespace ota::proto;

namespace {

const char* kImage = "3f2a9c1b7d4e8f60";
const char* kSha = "3f2a9c1b7d4e8f60a7c1e09b55d2f3846e1b0c9d7a35f2e84c61b0d9e2f7a3c5";
const char* kKey = "a1b2c3d4e5f60718";
std::string sig() { return std::string(64, '5').replace(0, 64, 64, 'a') + std::string(64, '0'); }

Manifest sample_manifest() {
  Manifest m;
  m.image.assign(kImage);
  m.version.assign("1.4.2");
  m.hw[0].assign("esp32-s3-devkit");
  m.hw_count = 1;
  m.size = 1048576;
  m.sha256.assign(kSha);
  m.chunk_size = 4096;
  m.counter = 3;
  m.expires = 1767225600;
  m.key.assign(kKey);
  m.kind = ImageKind::firmware;
  m.compression = Compression::none;
  m.sig.assign(sig().c_str());
  return m;
}

Offer sample_offer() {
  Offer o;
  o.deployment.assign("dep-2025-001");
  o.manifest = sample_manifest();
  return o;
}

Hello sample_hello() {
  Hello h;
  h.device.assign("dev-0001");
  h.hw.assign("esp32-s3-devkit");
  h.version.assign("1.4.1");
  h.slot.assign("a");
  h.slot_state = SlotState::pending;
  h.free = 2097152;
  h.counter = 3;
  h.groups[0].assign("canary");
  h.groups[1].assign("lab.floor-2");
  h.group_count = 2;
  h.resume.present = true;
  h.resume.deployment.assign("dep-2025-001");
  h.resume.image.assign(kImage);
  h.resume.received = 65536;
  return h;
}

void expect_manifest_eq(const Manifest& a, const Manifest& b) {
  EXPECT_EQ(a.image, b.image);
  EXPECT_EQ(a.version, b.version);
  ASSERT_EQ(a.hw_count, b.hw_count);
  for (std::size_t i = 0; i < a.hw_count; ++i) EXPECT_EQ(a.hw[i], b.hw[i]);
  EXPECT_EQ(a.size, b.size);
  EXPECT_EQ(a.sha256, b.sha256);
  EXPECT_EQ(a.chunk_size, b.chunk_size);
  EXPECT_EQ(a.counter, b.counter);
  EXPECT_EQ(a.expires, b.expires);
  EXPECT_EQ(a.key, b.key);
  EXPECT_EQ(a.kind, b.kind);
  EXPECT_EQ(a.compression, b.compression);
  EXPECT_EQ(a.sig, b.sig);
}

void expect_event_eq(const Event& a, const Event& b) {
  EXPECT_EQ(a.type, b.type);
  EXPECT_EQ(a.seq, b.seq);
  EXPECT_EQ(a.deployment, b.deployment);
  EXPECT_EQ(a.reason, b.reason);
  EXPECT_EQ(a.detail, b.detail);
  EXPECT_EQ(a.received, b.received);
  EXPECT_EQ(a.total, b.total);
  EXPECT_EQ(a.state, b.state);
  EXPECT_EQ(a.success, b.success);
  EXPECT_EQ(a.version, b.version);
  EXPECT_EQ(a.retry_after, b.retry_after);
}

std::string err_str(Error e) { return std::string(errc_name(e.code)) + " " + e.field; }

}  // namespace

TEST(ProtoMessages, CanonicalManifestExactBytes) {
  Manifest m = sample_manifest();
  char buf[1024];
  std::size_t n = canonical_manifest(m, buf, sizeof(buf));
  const std::string want =
      "{\"chunk_size\":4096,\"compression\":\"none\",\"counter\":3,\"expires\":1767225600,"
      "\"hw\":[\"esp32-s3-devkit\"],\"image\":\"3f2a9c1b7d4e8f60\",\"key\":\"a1b2c3d4e5f60718\","
      "\"kind\":\"firmware\",\"sha256\":\"" +
      std::string(kSha) + "\",\"size\":1048576,\"version\":\"1.4.2\"}";
  ASSERT_EQ(n, want.size());
  EXPECT_EQ(std::string(buf, n), want);
  // Too small: 0, for every capacity below the exact size.
  EXPECT_EQ(canonical_manifest(m, buf, want.size() - 1), 0u);
  EXPECT_EQ(canonical_manifest(m, buf, 0), 0u);
  EXPECT_EQ(canonical_manifest(m, buf, want.size()), want.size());
  // The signature is not part of it.
  m.sig.assign(std::string(128, 'f').c_str());
  EXPECT_EQ(canonical_manifest(m, buf, sizeof(buf)), want.size());
  EXPECT_EQ(std::string(buf, want.size()), want);
}

TEST(ProtoMessages, CanonicalManifestBundleMultiHw) {
  Manifest m = sample_manifest();
  m.kind = ImageKind::bundle;
  m.hw[1].assign("rpi-4b");
  m.hw_count = 2;
  m.version.assign("2.0.0-rc.1+b.5");
  char buf[1024];
  std::size_t n = canonical_manifest(m, buf, sizeof(buf));
  std::string s(buf, n);
  EXPECT_NE(s.find("\"hw\":[\"esp32-s3-devkit\",\"rpi-4b\"]"), std::string::npos);
  EXPECT_NE(s.find("\"kind\":\"bundle\""), std::string::npos);
  EXPECT_NE(s.find("\"version\":\"2.0.0-rc.1+b.5\"}"), std::string::npos);
}

TEST(ProtoMessages, OfferRoundTrip) {
  Offer o = sample_offer();
  char buf[2048];
  std::size_t len = 0;
  ASSERT_TRUE(encode_offer(o, buf, sizeof(buf), len).ok());
  EXPECT_EQ(buf[len], '\0');
  Offer d;
  Error e = decode_offer(buf, len, d);
  ASSERT_TRUE(e.ok()) << err_str(e);
  EXPECT_EQ(d.deployment, o.deployment);
  expect_manifest_eq(d.manifest, o.manifest);
  EXPECT_EQ(d.manifest.chunk_count(), 256u);
  // The manifest inside the offer is the canonical encoding with "sig" in its sorted place.
  char canon[1024];
  std::size_t cn = canonical_manifest(o.manifest, canon, sizeof(canon));
  std::string with_sig(canon, cn);
  with_sig.insert(with_sig.find(",\"size\":"), ",\"sig\":\"" + sig() + "\"");
  EXPECT_EQ(std::string(buf, len),
            "{\"v\":1,\"type\":\"offer\",\"deployment\":\"dep-2025-001\",\"manifest\":" +
                with_sig + "}");
}

TEST(ProtoMessages, OfferBufferTooSmall) {
  Offer o = sample_offer();
  char buf[2048];
  std::size_t full = 0;
  ASSERT_TRUE(encode_offer(o, buf, sizeof(buf), full).ok());
  for (std::size_t cap : {std::size_t{0}, std::size_t{1}, full / 2, full - 1}) {
    std::size_t len = 99;
    Error e = encode_offer(o, buf, cap, len);
    EXPECT_EQ(e.code, Errc::buffer_too_small) << cap;
    EXPECT_EQ(len, 0u);
  }
  std::size_t len = 0;
  EXPECT_TRUE(encode_offer(o, buf, full, len).ok());  // exact fit, no room for NUL is fine
  EXPECT_EQ(len, full);
}

TEST(ProtoMessages, OfferEncoderValidates) {
  char buf[2048];
  std::size_t len = 0;
  struct Case {
    void (*mutate)(Offer&);
    Errc code;
    const char* field;
  };
  const Case cases[] = {
      {[](Offer& o) { o.deployment.assign("a b"); }, Errc::bad_value, "deployment"},
      {[](Offer& o) { o.manifest.image.assign("3F2A9C1B7D4E8F60"); }, Errc::bad_value,
       "manifest.image"},
      {[](Offer& o) { o.manifest.version.assign("1.4"); }, Errc::bad_value, "manifest.version"},
      {[](Offer& o) { o.manifest.hw_count = 0; }, Errc::bad_value, "manifest.hw"},
      {[](Offer& o) { o.manifest.hw_count = kMaxHwModels + 1; }, Errc::field_too_long,
       "manifest.hw"},
      {[](Offer& o) { o.manifest.size = 0; }, Errc::bad_value, "manifest.size"},
      {[](Offer& o) { o.manifest.sha256.assign("00"); }, Errc::bad_value, "manifest.sha256"},
      {[](Offer& o) { o.manifest.chunk_size = 255; }, Errc::bad_value, "manifest.chunk_size"},
      {[](Offer& o) { o.manifest.chunk_size = 65537; }, Errc::bad_value, "manifest.chunk_size"},
      {[](Offer& o) { o.manifest.key.assign(""); }, Errc::bad_value, "manifest.key"},
      {[](Offer& o) { o.manifest.sig.assign("zz"); }, Errc::bad_value, "manifest.sig"},
      {[](Offer& o) { o.manifest.kind = static_cast<ImageKind>(9); }, Errc::bad_value,
       "manifest.kind"},
  };
  for (const Case& c : cases) {
    Offer o = sample_offer();
    c.mutate(o);
    Error e = encode_offer(o, buf, sizeof(buf), len);
    EXPECT_EQ(e.code, c.code) << c.field;
    EXPECT_STREQ(e.field, c.field);
  }
}

TEST(ProtoMessages, OfferChunkSizeLimits) {
  char buf[2048];
  std::size_t len = 0;
  for (std::uint32_t cs : {kMinChunkSize, kMaxChunkSize}) {
    Offer o = sample_offer();
    o.manifest.chunk_size = cs;
    ASSERT_TRUE(encode_offer(o, buf, sizeof(buf), len).ok());
    Offer d;
    ASSERT_TRUE(decode_offer(buf, len, d).ok());
    EXPECT_EQ(d.manifest.chunk_size, cs);
  }
}

TEST(ProtoMessages, OfferDefaultsKindAndCompression) {
  std::string m = "{\"v\":1,\"type\":\"offer\",\"deployment\":\"d\",\"manifest\":{"
                  "\"chunk_size\":256,\"counter\":0,\"expires\":0,\"hw\":[\"x\"],"
                  "\"image\":\"" + std::string(kImage) + "\",\"key\":\"" + kKey +
                  "\",\"sha256\":\"" + kSha + "\",\"sig\":\"" + sig() +
                  "\",\"size\":1,\"version\":\"0.0.1\"}}";
  Offer d;
  d.manifest.kind = ImageKind::bundle;
  Error e = decode_offer(m.data(), m.size(), d);
  ASSERT_TRUE(e.ok()) << err_str(e);
  EXPECT_EQ(d.manifest.kind, ImageKind::firmware);
  EXPECT_EQ(d.manifest.compression, Compression::none);
  EXPECT_EQ(d.manifest.chunk_count(), 1u);
}

// The binding members: round trip, written only when set, and refused when hostile.
TEST(ProtoMessages, ManifestBindingMembers) {
  Offer o = sample_offer();
  char plain[1024], bound[1024];
  const std::size_t plain_len = canonical_manifest(o.manifest, plain, sizeof plain);
  o.manifest.deployment.assign("dep-2025-001");
  o.manifest.device.assign("dev-7");
  o.manifest.rollback = true;
  const std::size_t bound_len = canonical_manifest(o.manifest, bound, sizeof bound);
  EXPECT_EQ(std::string(plain, plain_len).find("device"), std::string::npos);
  const std::string b(bound, bound_len);
  EXPECT_NE(b.find(R"("counter":3,"deployment":"dep-2025-001","device":"dev-7","expires")"),
            std::string::npos) << b;
  EXPECT_NE(b.find(R"("kind":"firmware","rollback":true,"sha256")"), std::string::npos) << b;
  char buf[2048];
  std::size_t len = 0;
  ASSERT_TRUE(encode_offer(o, buf, sizeof buf, len).ok());
  Offer d;
  ASSERT_TRUE(decode_offer(buf, len, d).ok());
  EXPECT_EQ(d.manifest.device, o.manifest.device);
  EXPECT_EQ(d.manifest.deployment, o.manifest.deployment);
  EXPECT_TRUE(d.manifest.rollback);
  EXPECT_TRUE(d.manifest.group.empty());

  const std::string good(buf, len);
  struct Case {
    std::string from, to;
    Errc code;
    const char* field;
  };
  const Case cases[] = {
      {R"("rollback":true)", R"("rollback":false)", Errc::bad_value, "manifest.rollback"},
      {R"("rollback":true)", R"("rollback":"yes")", Errc::bad_field_type, "manifest.rollback"},
      {R"("device":"dev-7")", R"("device":"dev/7")", Errc::bad_value, "manifest.device"},
      {R"("device":"dev-7")", R"("device":"dev\u00007")", Errc::bad_value, "manifest.device"},
      {R"("device":"dev-7")", R"("device":"dev-7","group":"fleet")", Errc::bad_value, "manifest.group"},
      {R"("deployment":"dep-2025-001","device")", R"("deployment":7,"device")", Errc::bad_field_type,
       "manifest.deployment"},
  };
  for (const auto& c : cases) {
    std::string m = good;
    const auto at = m.find(c.from);
    ASSERT_NE(at, std::string::npos) << c.from;
    m.replace(at, c.from.size(), c.to);
    Offer out;
    Error e = decode_offer(m.data(), m.size(), out);
    EXPECT_EQ(e.code, c.code) << c.to << ": " << err_str(e);
    EXPECT_STREQ(e.field, c.field) << c.to;
  }
}

TEST(ProtoMessages, UnknownTopLevelFieldsIgnored) {
  std::string s = R"({"future":{"x":[1,2,{"y":null}]},"v":1,"deployment":"d-1","type":"cancel","z":1.5})";
  Cancel c;
  Error e = decode_cancel(s.data(), s.size(), c);
  ASSERT_TRUE(e.ok()) << err_str(e);
  EXPECT_EQ(c.deployment, "d-1");
  EXPECT_TRUE(c.reason.empty());
}

TEST(ProtoMessages, CancelRoundTrip) {
  Cancel c;
  c.deployment.assign("dep-1");
  c.reason.assign("stop \"now\" \\ \x01 caf\xc3\xa9");
  char buf[512];
  std::size_t len = 0;
  ASSERT_TRUE(encode_cancel(c, buf, sizeof(buf), len).ok());
  EXPECT_EQ(std::string(buf, len),
            "{\"v\":1,\"type\":\"cancel\",\"deployment\":\"dep-1\","
            "\"reason\":\"stop \\\"now\\\" \\\\ \\u0001 caf\xc3\xa9\"}");
  Cancel d;
  ASSERT_TRUE(decode_cancel(buf, len, d).ok());
  EXPECT_EQ(d.deployment, c.deployment);
  EXPECT_EQ(d.reason, c.reason);
  // Without reason the field is omitted.
  c.reason.assign("");
  ASSERT_TRUE(encode_cancel(c, buf, sizeof(buf), len).ok());
  EXPECT_EQ(std::string(buf, len), "{\"v\":1,\"type\":\"cancel\",\"deployment\":\"dep-1\"}");
  // Invalid UTF-8 in free text is refused by the encoder.
  c.reason.assign("\xff");
  EXPECT_EQ(encode_cancel(c, buf, sizeof(buf), len).code, Errc::bad_value);
}

TEST(ProtoMessages, CancelReasonAtCapacity) {
  Cancel c;
  c.deployment.assign("d");
  std::string r(kMaxReasonLen, 'r');
  ASSERT_TRUE(c.reason.assign(r.c_str()));
  char buf[512];
  std::size_t len = 0;
  ASSERT_TRUE(encode_cancel(c, buf, sizeof(buf), len).ok());
  Cancel d;
  ASSERT_TRUE(decode_cancel(buf, len, d).ok());
  EXPECT_EQ(d.reason.size, kMaxReasonLen);
  // An escaped string is measured after unescaping.
  std::string esc = "{\"v\":1,\"type\":\"cancel\",\"deployment\":\"d\",\"reason\":\"";
  for (std::size_t i = 0; i < kMaxReasonLen; ++i) esc += "\\u0041";
  esc += "\"}";
  ASSERT_TRUE(decode_cancel(esc.data(), esc.size(), d).ok());
  EXPECT_EQ(d.reason.size, kMaxReasonLen);
}

TEST(ProtoMessages, HelloRoundTrip) {
  Hello h = sample_hello();
  char buf[1024];
  std::size_t len = 0;
  ASSERT_TRUE(encode_hello(h, buf, sizeof(buf), len).ok());
  EXPECT_EQ(std::string(buf, len),
            "{\"v\":1,\"type\":\"hello\",\"device\":\"dev-0001\",\"hw\":\"esp32-s3-devkit\","
            "\"version\":\"1.4.1\",\"slot\":\"a\",\"slot_state\":\"pending\",\"free\":2097152,"
            "\"counter\":3,\"groups\":[\"canary\",\"lab.floor-2\"],\"resume\":{\"deployment\":"
            "\"dep-2025-001\",\"image\":\"3f2a9c1b7d4e8f60\",\"received\":65536}}");
  Hello d;
  ASSERT_TRUE(decode_hello(buf, len, d).ok());
  EXPECT_EQ(d.device, h.device);
  EXPECT_EQ(d.hw, h.hw);
  EXPECT_EQ(d.version, h.version);
  EXPECT_EQ(d.slot, "a");
  EXPECT_EQ(d.slot_state, SlotState::pending);
  EXPECT_EQ(d.free, h.free);
  EXPECT_EQ(d.counter, h.counter);
  ASSERT_EQ(d.group_count, 2u);
  EXPECT_EQ(d.groups[1], "lab.floor-2");
  EXPECT_TRUE(d.resume.present);
  EXPECT_EQ(d.resume.deployment, h.resume.deployment);
  EXPECT_EQ(d.resume.image, h.resume.image);
  EXPECT_EQ(d.resume.received, h.resume.received);
  PresenceType pt = PresenceType::offline;
  ASSERT_TRUE(decode_presence_type(buf, len, pt).ok());
  EXPECT_EQ(pt, PresenceType::hello);
}

TEST(ProtoMessages, HelloMinimal) {
  Hello h = sample_hello();
  h.group_count = 0;
  h.resume.present = false;
  h.slot.assign("b");
  h.slot_state = SlotState::rolled_back;
  char buf[1024];
  std::size_t len = 0;
  ASSERT_TRUE(encode_hello(h, buf, sizeof(buf), len).ok());
  Hello d;
  d.group_count = 3;
  d.resume.present = true;
  ASSERT_TRUE(decode_hello(buf, len, d).ok());
  EXPECT_EQ(d.group_count, 0u);
  EXPECT_FALSE(d.resume.present);
  EXPECT_EQ(d.slot, "b");
  EXPECT_EQ(d.slot_state, SlotState::rolled_back);
}

TEST(ProtoMessages, HelloEncoderValidates) {
  char buf[1024];
  std::size_t len = 0;
  Hello h = sample_hello();
  h.slot.assign("c");
  EXPECT_EQ(err_str(encode_hello(h, buf, sizeof(buf), len)), "bad_value slot");
  h = sample_hello();
  h.group_count = kMaxGroups + 1;
  EXPECT_EQ(err_str(encode_hello(h, buf, sizeof(buf), len)), "field_too_long groups");
  h = sample_hello();
  h.resume.image.assign("abc");
  EXPECT_EQ(err_str(encode_hello(h, buf, sizeof(buf), len)), "bad_value resume.image");
  h = sample_hello();
  h.free = (1ull << 53) + 1;
  EXPECT_EQ(err_str(encode_hello(h, buf, sizeof(buf), len)), "bad_value free");
}

TEST(ProtoMessages, Offline) {
  char buf[64];
  std::size_t len = 0;
  ASSERT_TRUE(encode_offline(buf, sizeof(buf), len).ok());
  EXPECT_EQ(std::string(buf, len), "{\"v\":1,\"type\":\"offline\"}");
  PresenceType pt = PresenceType::hello;
  ASSERT_TRUE(decode_presence_type(buf, len, pt).ok());
  EXPECT_EQ(pt, PresenceType::offline);
  EXPECT_EQ(encode_offline(buf, 10, len).code, Errc::buffer_too_small);
  Hello h;
  EXPECT_EQ(err_str(decode_hello("{\"v\":1,\"type\":\"offline\"}", 24, h)), "wrong_type type");
}

TEST(ProtoMessages, EventRoundTripAllTypes) {
  Event base;
  base.seq = 4294967295u;
  base.deployment.assign("dep-9");
  Event evs[6];
  for (Event& e : evs) e = base;
  evs[0].type = EventType::accept;
  evs[1].type = EventType::decline;
  evs[1].reason = ReasonCode::wrong_hardware;
  evs[1].detail.assign("not for me");
  evs[2].type = EventType::progress;
  evs[2].received = 1;
  evs[2].total = 9007199254740992ull;
  evs[3].type = EventType::status;
  evs[3].state = DeviceState::confirming;
  evs[4].type = EventType::result;
  evs[4].success = true;
  evs[4].reason = ReasonCode::ok;
  evs[4].version.assign("1.0.0+x");
  evs[5].type = EventType::result;
  evs[5].success = false;
  evs[5].reason = ReasonCode::rolled_back;
  evs[5].detail.assign("boot loop");
  evs[5].version.assign("0.9.9");
  const char* expect[] = {
      "{\"v\":1,\"type\":\"accept\",\"seq\":4294967295,\"deployment\":\"dep-9\"}",
      "{\"v\":1,\"type\":\"decline\",\"seq\":4294967295,\"deployment\":\"dep-9\","
      "\"reason\":\"wrong_hardware\",\"detail\":\"not for me\"}",
      "{\"v\":1,\"type\":\"progress\",\"seq\":4294967295,\"deployment\":\"dep-9\","
      "\"received\":1,\"total\":9007199254740992}",
      "{\"v\":1,\"type\":\"status\",\"seq\":4294967295,\"deployment\":\"dep-9\","
      "\"state\":\"confirming\"}",
      "{\"v\":1,\"type\":\"result\",\"seq\":4294967295,\"deployment\":\"dep-9\",\"ok\":true,"
      "\"reason\":\"ok\",\"version\":\"1.0.0+x\"}",
      "{\"v\":1,\"type\":\"result\",\"seq\":4294967295,\"deployment\":\"dep-9\",\"ok\":false,"
      "\"reason\":\"rolled_back\",\"detail\":\"boot loop\",\"version\":\"0.9.9\"}",
  };
  for (int i = 0; i < 6; ++i) {
    char buf[512];
    std::size_t len = 0;
    ASSERT_TRUE(encode_event(evs[i], buf, sizeof(buf), len).ok()) << i;
    EXPECT_EQ(std::string(buf, len), expect[i]);
    Event d;
    d.detail.assign("stale");
    Error e = decode_event(buf, len, d);
    ASSERT_TRUE(e.ok()) << i << " " << err_str(e);
    expect_event_eq(d, evs[i]);
  }
}

TEST(ProtoMessages, DeferRoundTrip) {
  Event e;
  e.type = EventType::defer;
  e.seq = 7;
  e.deployment.assign("dep-9");
  e.reason = ReasonCode::low_battery;
  e.detail.assign("battery 12%");
  e.retry_after = 4294967295u;
  char buf[512];
  std::size_t len = 0;
  ASSERT_TRUE(encode_event(e, buf, sizeof(buf), len).ok());
  EXPECT_EQ(std::string(buf, len),
            "{\"v\":1,\"type\":\"defer\",\"seq\":7,\"deployment\":\"dep-9\","
            "\"reason\":\"low_battery\",\"detail\":\"battery 12%\",\"retry_after\":4294967295}");
  Event d;
  ASSERT_TRUE(decode_event(buf, len, d).ok());
  expect_event_eq(d, e);
  // Without detail, retry_after 0 (the controller decides when to offer again).
  e.detail.assign("");
  e.reason = ReasonCode::not_in_window;
  e.retry_after = 0;
  ASSERT_TRUE(encode_event(e, buf, sizeof(buf), len).ok());
  EXPECT_EQ(std::string(buf, len),
            "{\"v\":1,\"type\":\"defer\",\"seq\":7,\"deployment\":\"dep-9\","
            "\"reason\":\"not_in_window\",\"retry_after\":0}");
  d.retry_after = 99;
  ASSERT_TRUE(decode_event(buf, len, d).ok());
  expect_event_eq(d, e);
  // retry_after is only a field of defer: other types neither write nor read it.
  e.type = EventType::decline;
  e.retry_after = 5;
  ASSERT_TRUE(encode_event(e, buf, sizeof(buf), len).ok());
  EXPECT_EQ(std::string(buf, len).find("retry_after"), std::string::npos);
  auto dec = [&](const std::string& s) { return err_str(decode_event(s.data(), s.size(), d)); };
  EXPECT_EQ(dec(R"({"v":1,"type":"defer","seq":1,"deployment":"d","reason":"busy"})"),
            "missing_field retry_after");
  EXPECT_EQ(dec(R"({"v":1,"type":"defer","seq":1,"deployment":"d","retry_after":1})"),
            "missing_field reason");
  EXPECT_EQ(dec(R"({"v":1,"type":"defer","seq":1,"deployment":"d","reason":"busy","retry_after":4294967296})"),
            "bad_value retry_after");
  EXPECT_EQ(dec(R"({"v":1,"type":"defer","seq":1,"deployment":"d","reason":"busy","retry_after":"1"})"),
            "bad_field_type retry_after");
  EXPECT_EQ(dec(R"({"v":1,"type":"defer","seq":1,"deployment":"d","reason":"sleepy","retry_after":1})"),
            "bad_value reason");
  EXPECT_EQ(dec(R"({"v":1,"type":"decline","seq":1,"deployment":"d","reason":"low_battery"})"),
            "ok ");
  EXPECT_EQ(d.reason, ReasonCode::low_battery);
}

TEST(ProtoMessages, HeartbeatRoundTrip) {
  Heartbeat h;
  h.device.assign("dev-0001");
  h.state = DeviceState::downloading;
  h.uptime = 9007199254740992ull;
  char buf[256];
  std::size_t len = 0;
  ASSERT_TRUE(encode_heartbeat(h, buf, sizeof(buf), len).ok());
  EXPECT_EQ(std::string(buf, len),
            "{\"v\":1,\"type\":\"heartbeat\",\"device\":\"dev-0001\",\"state\":\"downloading\","
            "\"uptime\":9007199254740992}");
  PresenceType pt = PresenceType::hello;
  ASSERT_TRUE(decode_presence_type(buf, len, pt).ok());
  EXPECT_EQ(pt, PresenceType::heartbeat);
  Heartbeat d;
  ASSERT_TRUE(decode_heartbeat(buf, len, d).ok());
  EXPECT_EQ(d.device, "dev-0001");
  EXPECT_EQ(d.state, DeviceState::downloading);
  EXPECT_EQ(d.uptime, h.uptime);
  // A heartbeat is not a hello and vice versa.
  Hello hello;
  EXPECT_EQ(err_str(decode_hello(buf, len, hello)), "wrong_type type");
  auto dec = [&](const std::string& s) { return err_str(decode_heartbeat(s.data(), s.size(), d)); };
  EXPECT_EQ(dec(R"({"v":1,"type":"offline"})"), "wrong_type type");
  EXPECT_EQ(dec(R"({"v":1,"type":"heartbeat","device":"d","state":"idle"})"),
            "missing_field uptime");
  EXPECT_EQ(dec(R"({"v":1,"type":"heartbeat","device":"d","uptime":1})"), "missing_field state");
  EXPECT_EQ(dec(R"({"v":1,"type":"heartbeat","state":"idle","uptime":1})"),
            "missing_field device");
  EXPECT_EQ(dec(R"({"v":1,"type":"heartbeat","device":"d","state":"napping","uptime":1})"),
            "bad_value state");
  EXPECT_EQ(dec(R"({"v":1,"type":"heartbeat","device":"d","state":"idle","uptime":-1})"),
            "bad_value uptime");
  EXPECT_EQ(dec(R"({"v":1,"type":"heartbeat","device":"d d","state":"idle","uptime":1})"),
            "bad_value device");
  EXPECT_EQ(dec(R"({"v":2,"type":"heartbeat","device":"d","state":"idle","uptime":1})"),
            "unsupported_version v");
  EXPECT_EQ(dec(R"({"v":1,"type":"heartbeat","device":"d","state":"idle","uptime":0,"x":[]})"),
            "ok ");
  // The encoder validates too and reports a short buffer.
  h.uptime = (1ull << 53) + 1;
  EXPECT_EQ(err_str(encode_heartbeat(h, buf, sizeof(buf), len)), "bad_value uptime");
  h.uptime = 1;
  h.device.assign("");
  EXPECT_EQ(err_str(encode_heartbeat(h, buf, sizeof(buf), len)), "bad_value device");
  h.device.assign("dev-0001");
  EXPECT_EQ(encode_heartbeat(h, buf, 20, len).code, Errc::buffer_too_small);
}

TEST(ProtoMessages, EventFieldsOfOtherTypesIgnored) {
  std::string s = R"({"v":1,"type":"accept","seq":1,"deployment":"d","reason":"nonsense","state":5})";
  Event d;
  ASSERT_TRUE(decode_event(s.data(), s.size(), d).ok());
  EXPECT_EQ(d.type, EventType::accept);
  EXPECT_EQ(d.reason, ReasonCode::ok);
}

TEST(ProtoMessages, EventEncoderValidates) {
  Event e;
  e.type = EventType::progress;
  e.deployment.assign("d");
  e.received = 5;
  e.total = 4;
  char buf[256];
  std::size_t len = 0;
  EXPECT_EQ(err_str(encode_event(e, buf, sizeof(buf), len)), "bad_value received");
  e.type = EventType::result;
  e.version.assign("x");
  EXPECT_EQ(err_str(encode_event(e, buf, sizeof(buf), len)), "bad_value version");
  e.type = static_cast<EventType>(17);
  EXPECT_EQ(encode_event(e, buf, sizeof(buf), len).code, Errc::wrong_type);
}

TEST(ProtoMessages, ChunkRequestRoundTrip) {
  ChunkRequest r;
  r.deployment.assign("dep-1");
  r.image.assign(kImage);
  r.first = 100;
  r.count = 12;
  char buf[512];
  std::size_t len = 0;
  ASSERT_TRUE(encode_chunk_request(r, buf, sizeof(buf), len).ok());
  EXPECT_EQ(std::string(buf, len),
            "{\"v\":1,\"type\":\"chunk_req\",\"deployment\":\"dep-1\",\"image\":"
            "\"3f2a9c1b7d4e8f60\",\"first\":100,\"count\":12}");
  ChunkRequest d;
  ASSERT_TRUE(decode_chunk_request(buf, len, d).ok());
  EXPECT_FALSE(d.has_bitmap);
  EXPECT_EQ(d.first, 100u);
  EXPECT_EQ(d.count, 12u);
  for (std::uint32_t i = 0; i < 12; ++i) EXPECT_TRUE(d.wants(i));
  EXPECT_FALSE(d.wants(12));

  r.has_bitmap = true;
  r.bitmap[0] = 0x81;  // chunks 100 and 107
  r.bitmap[1] = 0x08;  // chunk 111
  ASSERT_TRUE(encode_chunk_request(r, buf, sizeof(buf), len).ok());
  EXPECT_NE(std::string(buf, len).find("\"bitmap\":\"8108\""), std::string::npos);
  ASSERT_TRUE(decode_chunk_request(buf, len, d).ok());
  ASSERT_TRUE(d.has_bitmap);
  for (std::uint32_t i = 0; i < 12; ++i) EXPECT_EQ(d.wants(i), i == 0 || i == 7 || i == 11) << i;

  r.bitmap[1] = 0x10;  // bit 12: beyond count
  EXPECT_EQ(err_str(encode_chunk_request(r, buf, sizeof(buf), len)), "bad_value bitmap");
}

// Broadcast (PROTOCOL.md 17): `bc` names the group whose image topic the device listens on.
TEST(ProtoMessages, ChunkRequestBroadcastGroup) {
  const char* with_bc =
      "{\"v\":1,\"type\":\"chunk_req\",\"deployment\":\"dep-1\",\"image\":\"3f2a9c1b7d4e8f60\","
      "\"first\":0,\"count\":4,\"bc\":\"lab\"}";
  ChunkRequest d;
  ASSERT_TRUE(decode_chunk_request(with_bc, std::strlen(with_bc), d).ok());
  EXPECT_EQ(std::string(d.bc.c_str()), "lab");
  char buf[512];
  std::size_t len = 0;
  ASSERT_TRUE(encode_chunk_request(d, buf, sizeof(buf), len).ok());
  EXPECT_EQ(std::string(buf, len), with_bc);
  // Absent: unicast only, and nothing is written.
  d.bc.assign("");
  ASSERT_TRUE(encode_chunk_request(d, buf, sizeof(buf), len).ok());
  EXPECT_EQ(std::string(buf, len).find("bc"), std::string::npos);
  const char* bad_group =
      "{\"v\":1,\"type\":\"chunk_req\",\"deployment\":\"dep-1\",\"image\":\"3f2a9c1b7d4e8f60\","
      "\"first\":0,\"count\":4,\"bc\":\"a/b\"}";
  EXPECT_EQ(err_str(decode_chunk_request(bad_group, std::strlen(bad_group), d)), "bad_value bc");
  const char* not_string =
      "{\"v\":1,\"type\":\"chunk_req\",\"deployment\":\"dep-1\",\"image\":\"3f2a9c1b7d4e8f60\","
      "\"first\":0,\"count\":4,\"bc\":true}";
  EXPECT_EQ(err_str(decode_chunk_request(not_string, std::strlen(not_string), d)), "bad_field_type bc");
  // Hostile: a group name past 64 characters, and one with a NUL byte in it.
  const std::string too_long =
      "{\"v\":1,\"type\":\"chunk_req\",\"deployment\":\"dep-1\",\"image\":\"3f2a9c1b7d4e8f60\","
      "\"first\":0,\"count\":4,\"bc\":\"" + std::string(65, 'g') + "\"}";
  EXPECT_EQ(err_str(decode_chunk_request(too_long.data(), too_long.size(), d)), "field_too_long bc");
  const char* with_nul =
      "{\"v\":1,\"type\":\"chunk_req\",\"deployment\":\"dep-1\",\"image\":\"3f2a9c1b7d4e8f60\","
      "\"first\":0,\"count\":4,\"bc\":\"la\\u0000b\"}";
  EXPECT_EQ(err_str(decode_chunk_request(with_nul, std::strlen(with_nul), d)), "bad_value bc");
}

TEST(ProtoMessages, ChunkRequestMaxWindow) {
  ChunkRequest r;
  r.deployment.assign("d");
  r.image.assign(kImage);
  r.first = 0xFFFFFFFFu - 255u;
  r.count = kMaxChunksPerRequest;
  r.has_bitmap = true;
  std::memset(r.bitmap, 0xA5, sizeof(r.bitmap));
  char buf[512];
  std::size_t len = 0;
  ASSERT_TRUE(encode_chunk_request(r, buf, sizeof(buf), len).ok());
  ChunkRequest d;
  ASSERT_TRUE(decode_chunk_request(buf, len, d).ok());
  EXPECT_EQ(std::memcmp(d.bitmap, r.bitmap, sizeof(r.bitmap)), 0);
  r.first += 1;
  EXPECT_EQ(err_str(encode_chunk_request(r, buf, sizeof(buf), len)), "bad_value count");
  r.first = 0;
  r.count = 0;
  EXPECT_EQ(err_str(encode_chunk_request(r, buf, sizeof(buf), len)), "bad_value count");
}

TEST(ProtoMessages, VersionAndTypeChecks) {
  Cancel c;
  auto dec = [&](const std::string& s) { return err_str(decode_cancel(s.data(), s.size(), c)); };
  EXPECT_EQ(dec(R"({"type":"cancel","deployment":"d"})"), "missing_field v");
  EXPECT_EQ(dec(R"({"v":2,"type":"cancel","deployment":"d"})"), "unsupported_version v");
  EXPECT_EQ(dec(R"({"v":0,"type":"cancel","deployment":"d"})"), "unsupported_version v");
  EXPECT_EQ(dec(R"({"v":1.0,"type":"cancel","deployment":"d"})"), "unsupported_version v");
  EXPECT_EQ(dec(R"({"v":-1,"type":"cancel","deployment":"d"})"), "unsupported_version v");
  EXPECT_EQ(dec(R"({"v":"1","type":"cancel","deployment":"d"})"), "bad_field_type v");
  EXPECT_EQ(dec(R"({"v":1,"deployment":"d"})"), "missing_field type");
  EXPECT_EQ(dec(R"({"v":1,"type":null,"deployment":"d"})"), "bad_field_type type");
  EXPECT_EQ(dec(R"({"v":1,"type":"offer","deployment":"d"})"), "wrong_type type");
  EXPECT_EQ(dec(R"({"v":1,"type":"cancel","deployment":""})"), "bad_value deployment");
  EXPECT_EQ(dec(R"(["v",1])"), "bad_json json");
  EXPECT_EQ(dec(R"("x")"), "bad_json json");
}

TEST(ProtoMessages, Names) {
  EXPECT_STREQ(reason_name(ReasonCode::bad_signature), "bad_signature");
  EXPECT_STREQ(reason_name(ReasonCode::already_installed), "already_installed");
  EXPECT_STREQ(reason_name(ReasonCode::internal_error), "internal_error");
  EXPECT_STREQ(reason_name(static_cast<ReasonCode>(200)), "unknown");
  EXPECT_STREQ(reason_name(ReasonCode::low_battery), "low_battery");
  EXPECT_STREQ(reason_name(ReasonCode::not_in_window), "not_in_window");
  // Appended codes keep the numeric values of the earlier ones (stored in device records).
  EXPECT_EQ(static_cast<int>(ReasonCode::internal_error), 18);
  EXPECT_EQ(static_cast<int>(ReasonCode::low_battery), 19);
  EXPECT_EQ(static_cast<int>(ReasonCode::not_in_window), 20);
  EXPECT_EQ(static_cast<int>(EventType::result), 4);
  EXPECT_EQ(static_cast<int>(EventType::defer), 5);
  EXPECT_STREQ(event_type_name(EventType::defer), "defer");
  EXPECT_EQ(static_cast<int>(ReasonCode::wrong_target), 21);
  EXPECT_STREQ(reason_name(ReasonCode::wrong_target), "wrong_target");
  EXPECT_STREQ(reason_name(static_cast<ReasonCode>(22)), "unknown");
  for (int i = 0; i <= static_cast<int>(kLastReasonCode); ++i) {
    ReasonCode rc = static_cast<ReasonCode>(i);
    const char* n = reason_name(rc);
    ReasonCode back = ReasonCode::ok;
    ASSERT_TRUE(reason_from_name(n, std::strlen(n), back)) << n;
    EXPECT_EQ(back, rc);
  }
  ReasonCode out;
  EXPECT_FALSE(reason_from_name("bad_sig", 7, out));
  EXPECT_FALSE(reason_from_name("bad_signaturex", 14, out));
  EXPECT_TRUE(reason_from_name("busyXYZ", 4, out));
  EXPECT_EQ(out, ReasonCode::busy);
  EXPECT_STREQ(slot_state_name(SlotState::rolled_back), "rolled_back");
  EXPECT_STREQ(event_type_name(EventType::progress), "progress");
  EXPECT_STREQ(device_state_name(DeviceState::rebooting), "rebooting");
  EXPECT_STREQ(errc_name(Errc::crc_mismatch), "crc_mismatch");
  EXPECT_STREQ(errc_name(Errc::buffer_too_small), "buffer_too_small");
  EXPECT_STREQ(errc_name(Errc::ok), "ok");
}

TEST(ProtoSemver, Validity) {
  const char* good[] = {"0.0.0", "1.2.3", "10.20.30", "1.0.0-alpha", "1.0.0-alpha.1",
                        "1.0.0-0.3.7", "1.0.0-x.7.z.92", "1.0.0-x-y-z.--", "1.0.0+20130313144700",
                        "1.0.0-beta+exp.sha.5114f85", "1.0.0+21AF26D3----117B344092BD",
                        "1.0.0-rc.1+build.001", "99999999999999999999.0.0"};
  const char* bad[] = {"", "1", "1.2", "1.2.3.4", "01.2.3", "1.02.3", "1.2.03", "v1.2.3",
                       "1.2.3-", "1.2.3+", "1.2.3-01", "1.2.3-a..b", "1.2.3-a.", "1.2.3+a..b",
                       "1.2.3-a_b", " 1.2.3", "1.2.3 ", "1.2.-3", "a.b.c", "1.2.3-+"};
  for (const char* s : good) EXPECT_TRUE(is_semver(s, std::strlen(s))) << s;
  for (const char* s : bad) EXPECT_FALSE(is_semver(s, std::strlen(s))) << s;
  EXPECT_TRUE(is_semver("1.2.3xyz", 5));  // length-bounded
}

TEST(ProtoSemver, Precedence) {
  // Strictly increasing, from semver.org plus numeric edge cases.
  const char* order[] = {"0.0.1",        "0.1.0",       "0.9.0",          "0.10.0",
                         "1.0.0-0",      "1.0.0-1",     "1.0.0-2",        "1.0.0-10",
                         "1.0.0-alpha",  "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta",
                         "1.0.0-beta.2", "1.0.0-beta.11", "1.0.0-rc.1",   "1.0.0",
                         "1.0.1",        "1.1.0",       "2.0.0",          "10.0.0",
                         "100000000000000000000.0.0"};
  const std::size_t n = sizeof(order) / sizeof(order[0]);
  for (std::size_t i = 0; i < n; ++i) {
    ASSERT_TRUE(is_semver(order[i], std::strlen(order[i]))) << order[i];
    EXPECT_EQ(compare_semver(order[i], order[i]), 0) << order[i];
    for (std::size_t j = i + 1; j < n; ++j) {
      EXPECT_LT(compare_semver(order[i], order[j]), 0) << order[i] << " < " << order[j];
      EXPECT_GT(compare_semver(order[j], order[i]), 0) << order[j] << " > " << order[i];
    }
  }
  // Build metadata is ignored.
  EXPECT_EQ(compare_semver("1.0.0+a", "1.0.0+b"), 0);
  EXPECT_EQ(compare_semver("1.0.0-rc.1+a", "1.0.0-rc.1"), 0);
  EXPECT_LT(compare_semver("1.0.0-rc.1+zzz", "1.0.0"), 0);
  EXPECT_LT(compare_semver("1.0.0-A", "1.0.0-a"), 0);  // ASCII order
  EXPECT_LT(compare_semver("1.0.0-alpha", "1.0.0-alpha-1"), 0);
}
