// Runs every fixture under tests/fixtures/proto through the decoder its name selects.
//   valid/      must decode; unless the name contains "_alt", re-encoding gives the same bytes
//   truncated/  must fail with Errc::truncated
//   corrupt/    must fail with the errc and field listed in corrupt/expected.txt
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "ota/proto/frame.hpp"
#include "ota/proto/messages.hpp"

using namespace ota::proto;
namespace fs = std::filesystem;

namespace {

const fs::path kDir = OTA_PROTO_FIXTURE_DIR;
constexpr std::size_t kMaxPayload = 65536;

std::string read_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

bool starts_with(const std::string& s, const char* p) { return s.rfind(p, 0) == 0; }

std::vector<fs::path> files_in(const char* sub) {
  std::vector<fs::path> out;
  for (const auto& e : fs::directory_iterator(kDir / sub)) {
    if (e.is_regular_file() && e.path().filename() != "expected.txt") out.push_back(e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Decodes `data` with the decoder the file name selects; on success and when `reencoded` is
// non-null, stores the encoder's output for the decoded message.
Error decode_by_name(const std::string& name, const std::string& data, std::string* reencoded) {
  static char buf[4096];
  std::size_t len = 0;
  Error e;
  if (starts_with(name, "offer")) {
    Offer m;
    if ((e = decode_offer(data.data(), data.size(), m))) return e;
    e = encode_offer(m, buf, sizeof(buf), len);
  } else if (starts_with(name, "cancel")) {
    Cancel m;
    if ((e = decode_cancel(data.data(), data.size(), m))) return e;
    e = encode_cancel(m, buf, sizeof(buf), len);
  } else if (starts_with(name, "hello")) {
    Hello m;
    if ((e = decode_hello(data.data(), data.size(), m))) return e;
    PresenceType t;
    EXPECT_TRUE(decode_presence_type(data.data(), data.size(), t).ok());
    EXPECT_EQ(t, PresenceType::hello);
    e = encode_hello(m, buf, sizeof(buf), len);
  } else if (starts_with(name, "heartbeat")) {
    Heartbeat m;
    if ((e = decode_heartbeat(data.data(), data.size(), m))) return e;
    PresenceType t = PresenceType::hello;
    EXPECT_TRUE(decode_presence_type(data.data(), data.size(), t).ok());
    EXPECT_EQ(t, PresenceType::heartbeat) << name;
    e = encode_heartbeat(m, buf, sizeof(buf), len);
  } else if (starts_with(name, "offline") || starts_with(name, "presence")) {
    PresenceType t = PresenceType::hello;
    if ((e = decode_presence_type(data.data(), data.size(), t))) return e;
    if (starts_with(name, "offline")) {
      EXPECT_EQ(t, PresenceType::offline) << name;
      e = encode_offline(buf, sizeof(buf), len);
    }
  } else if (starts_with(name, "event")) {
    Event m;
    if ((e = decode_event(data.data(), data.size(), m))) return e;
    e = encode_event(m, buf, sizeof(buf), len);
  } else if (starts_with(name, "chunk_req")) {
    ChunkRequest m;
    if ((e = decode_chunk_request(data.data(), data.size(), m))) return e;
    e = encode_chunk_request(m, buf, sizeof(buf), len);
  } else if (starts_with(name, "keys")) {
    static KeySet m;  // ~600 bytes
    m = KeySet{};
    if ((e = decode_keyset(data.data(), data.size(), m))) return e;
    e = encode_keyset(m, buf, sizeof(buf), len);
  } else if (starts_with(name, "release")) {
    Manifest m;
    if ((e = decode_release(data.data(), data.size(), m))) return e;
    e = encode_release(m, buf, sizeof(buf), len);
  } else if (starts_with(name, "frame")) {
    ChunkFrame f;
    const auto* p = reinterpret_cast<const std::uint8_t*>(data.data());
    if ((e = decode_chunk_frame(p, data.size(), kMaxPayload, f))) return e;
    static std::uint8_t fb[kFrameHeaderLen + kMaxPayload];
    len = encode_chunk_frame(f.image_id, f.offset, f.payload, f.length, f.flags, fb, sizeof(fb));
    EXPECT_NE(len, 0u);
    std::memcpy(buf, fb, len < sizeof(buf) ? len : sizeof(buf));
  } else {
    ADD_FAILURE() << "no decoder for fixture " << name;
    return Error{Errc::bad_value, "fixture-name"};
  }
  EXPECT_TRUE(e.ok()) << name << ": re-encoding failed: " << errc_name(e.code) << " " << e.field;
  if (reencoded != nullptr) reencoded->assign(buf, len);
  return kOk;
}

}  // namespace

TEST(ProtoFixtures, ValidDecodeAndReencode) {
  auto files = files_in("valid");
  ASSERT_GE(files.size(), 20u);
  std::map<std::string, int> kinds;
  for (const auto& p : files) {
    std::string name = p.filename().string();
    std::string data = read_file(p);
    std::string again;
    Error e = decode_by_name(name, data, &again);
    EXPECT_TRUE(e.ok()) << name << ": " << errc_name(e.code) << " " << e.field;
    if (e.ok() && name.find("_alt") == std::string::npos) {
      EXPECT_EQ(again, data) << name << " is not byte-identical after re-encoding";
    }
    if (e.ok() && !again.empty()) {  // the re-encoded form decodes too
      std::string third;
      EXPECT_TRUE(decode_by_name(name, again, &third).ok()) << name;
      EXPECT_EQ(third, again) << name;
    }
    kinds[name.substr(0, name.find_first_of("_."))]++;
  }
  for (const char* k :
       {"offer", "cancel", "hello", "heartbeat", "offline", "event", "chunk", "frame", "keys",
        "release"}) {
    EXPECT_GT(kinds[k], 0) << "no valid fixture for " << k;
  }
}

TEST(ProtoFixtures, TruncatedFail) {
  auto files = files_in("truncated");
  ASSERT_GE(files.size(), 40u);
  for (const auto& p : files) {
    std::string name = p.filename().string();
    Error e = decode_by_name(name, read_file(p), nullptr);
    EXPECT_EQ(e.code, Errc::truncated) << name << ": " << errc_name(e.code) << " " << e.field;
  }
}

TEST(ProtoFixtures, CorruptFailWithExpectedError) {
  std::ifstream idx(kDir / "corrupt" / "expected.txt");
  ASSERT_TRUE(idx.good());
  std::map<std::string, std::pair<std::string, std::string>> expected;
  std::string line;
  while (std::getline(idx, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream ss(line);
    std::string file, errc, field;
    ss >> file >> errc >> field;
    if (field == "-") field.clear();
    expected[file] = {errc, field};
  }
  auto files = files_in("corrupt");
  ASSERT_GE(files.size(), 50u);
  EXPECT_EQ(files.size(), expected.size());
  for (const auto& p : files) {
    std::string name = p.filename().string();
    auto it = expected.find(name);
    if (it == expected.end()) {
      ADD_FAILURE() << name << " missing from expected.txt";
      continue;
    }
    Error e = decode_by_name(name, read_file(p), nullptr);
    EXPECT_EQ(std::string(errc_name(e.code)) + " " + e.field,
              it->second.first + " " + it->second.second)
        << name;
  }
}

TEST(ProtoFixtures, SignedOfferCanonicalBytes) {
  // The bytes signed by tests/fixtures/proto/example_release_key.pub.pem (PROTOCOL.md 6.2).
  std::string data = read_file(kDir / "valid" / "offer_signed.json");
  Offer o;
  ASSERT_TRUE(decode_offer(data.data(), data.size(), o).ok());
  char buf[512];
  std::size_t n = canonical_manifest(o.manifest, buf, sizeof(buf));
  EXPECT_EQ(std::string(buf, n),
            "{\"chunk_size\":4096,\"compression\":\"none\",\"counter\":3,\"expires\":4102444800,"
            "\"hw\":[\"esp32-s3-devkit\"],\"image\":\"3f2a9c1b7d4e8f60\",\"key\":"
            "\"69bb99837e187bdb\",\"kind\":\"firmware\",\"sha256\":"
            "\"3f2a9c1b7d4e8f60a7c1e09b55d2f3846e1b0c9d7a35f2e84c61b0d9e2f7a3c5\","
            "\"size\":1048576,\"version\":\"1.4.2\"}");
  EXPECT_EQ(n, 277u);
  EXPECT_EQ(o.manifest.key, "69bb99837e187bdb");
}
