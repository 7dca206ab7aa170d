// Binary chunk frame, CRC32 and hex helpers.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "ota/proto/frame.hpp"

using namespace ota::proto;

namespace {

const std::uint8_t kId[8] = {0x3f, 0x2a, 0x9c, 0x1b, 0x7d, 0x4e, 0x8f, 0x60};

std::vector<std::uint8_t> make_frame(const std::string& payload, std::uint32_t offset = 4096,
                                     std::uint8_t flags = 0) {
  std::vector<std::uint8_t> out(kFrameHeaderLen + payload.size());
  std::size_t n = encode_chunk_frame(kId, offset,
                                     reinterpret_cast<const std::uint8_t*>(payload.data()),
                                     static_cast<std::uint32_t>(payload.size()), flags,
                                     out.data(), out.size());
  EXPECT_EQ(n, out.size());
  return out;
}

std::string err_str(Error e) { return std::string(errc_name(e.code)) + " " + e.field; }

}  // namespace

TEST(ProtoFrame, LayoutIsBigEndian) {
  auto f = make_frame("hello, ota chunk", 0x01020304, kFrameFlagBroadcast);
  const std::uint8_t want[28] = {'O',  'T',  'A',  'C',  1,    1,    0,    28,   0x3f, 0x2a,
                                 0x9c, 0x1b, 0x7d, 0x4e, 0x8f, 0x60, 1,    2,    3,    4,
                                 0,    0,    0,    16,   0,    0,    0,    0};
  EXPECT_EQ(std::memcmp(f.data(), want, 24), 0);
  std::uint32_t crc = crc32(f.data() + 28, 16);
  EXPECT_EQ(f[24], crc >> 24);
  EXPECT_EQ(f[27], crc & 0xFF);
  EXPECT_EQ(std::memcmp(f.data() + 28, "hello, ota chunk", 16), 0);
}

TEST(ProtoFrame, RoundTrip) {
  auto f = make_frame("hello, ota chunk");
  ChunkFrame cf;
  ASSERT_TRUE(decode_chunk_frame(f.data(), f.size(), 65536, cf).ok());
  EXPECT_EQ(cf.flags, 0);
  EXPECT_EQ(std::memcmp(cf.image_id, kId, 8), 0);
  EXPECT_EQ(cf.offset, 4096u);
  EXPECT_EQ(cf.length, 16u);
  EXPECT_EQ(cf.payload, f.data() + 28);
  EXPECT_EQ(cf.crc32, crc32(cf.payload, 16));
}

TEST(ProtoFrame, HeaderOnlyMatchesFullEncoder) {
  std::string p(1000, 'x');
  auto f = make_frame(p, 77);
  std::uint8_t hdr[kFrameHeaderLen];
  encode_chunk_header(kId, 77, reinterpret_cast<const std::uint8_t*>(p.data()), 1000, 0, hdr);
  EXPECT_EQ(std::memcmp(hdr, f.data(), kFrameHeaderLen), 0);
}

TEST(ProtoFrame, EncodeCapacity) {
  std::uint8_t buf[64];
  const std::uint8_t p[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  EXPECT_EQ(encode_chunk_frame(kId, 0, p, 8, 0, buf, 35), 0u);
  EXPECT_EQ(encode_chunk_frame(kId, 0, p, 8, 0, buf, 36), 36u);
  EXPECT_EQ(encode_chunk_frame(kId, 0, p, 0, 0, buf, 28), 28u);
  EXPECT_EQ(encode_chunk_frame(kId, 0, p, 8, 0, buf, 0), 0u);
}

TEST(ProtoFrame, EmptyPayload) {
  auto f = make_frame("");
  ChunkFrame cf;
  ASSERT_TRUE(decode_chunk_frame(f.data(), f.size(), 0, cf).ok());
  EXPECT_EQ(cf.length, 0u);
}

TEST(ProtoFrame, Rejections) {
  auto good = make_frame("hello, ota chunk");
  ChunkFrame cf;
  auto check = [&](std::vector<std::uint8_t> f, const char* want, std::size_t max = 65536) {
    EXPECT_EQ(err_str(decode_chunk_frame(f.data(), f.size(), max, cf)), want);
  };
  auto f = good;
  f[0] = 'X';
  check(f, "bad_magic magic");
  check({'O', 'T', 'A', 'X'}, "bad_magic magic");
  check({'O', 'T'}, "truncated header");
  check({}, "truncated header");
  f = good;
  f[4] = 2;
  check(f, "unsupported_version version");
  f = good;
  f[5] = 0x04;
  check(f, "bad_value flags");
  f = good;
  f[5] = 0x80;
  check(f, "bad_value flags");
  f = good;
  f[5] = kFrameFlagCompressed | kFrameFlagBroadcast;  // known bits: accepted here
  EXPECT_TRUE(decode_chunk_frame(f.data(), f.size(), 65536, cf).ok());
  f = good;
  f[7] = 27;
  check(f, "bad_value header_length");
  f = good;
  f[6] = 0x10;  // header length 4124 > frame
  check(f, "truncated header");
  f = good;
  f.push_back(0);
  check(f, "bad_value length");
  f = good;
  f.pop_back();
  check(f, "truncated payload");
  check(std::vector<std::uint8_t>(good.begin(), good.begin() + 27), "truncated header");
  check(good, "field_too_long length", 15);
  EXPECT_TRUE(decode_chunk_frame(good.data(), good.size(), 16, cf).ok());
  f = good;
  f[30] ^= 1;
  check(f, "crc_mismatch crc32");
  f = good;
  f[25] ^= 1;
  check(f, "crc_mismatch crc32");
  EXPECT_EQ(decode_chunk_frame(nullptr, 0, 16, cf).code, Errc::truncated);
}

TEST(ProtoFrame, ExtendedHeaderSkipped) {
  auto good = make_frame("abcdef", 512);
  std::vector<std::uint8_t> f(good.begin(), good.begin() + 28);
  f[7] = 36;
  for (int i = 0; i < 8; ++i) f.push_back(0xEE);  // future header fields
  f.insert(f.end(), good.begin() + 28, good.end());
  ChunkFrame cf;
  ASSERT_TRUE(decode_chunk_frame(f.data(), f.size(), 64, cf).ok());
  EXPECT_EQ(cf.payload, f.data() + 36);
  EXPECT_EQ(std::memcmp(cf.payload, "abcdef", 6), 0);
  EXPECT_EQ(cf.offset, 512u);
}

TEST(ProtoHex, EncodeDecode) {
  const std::uint8_t b[4] = {0x00, 0xab, 0x7f, 0xff};
  char h[9] = {};
  hex_encode(b, 4, h);
  EXPECT_STREQ(h, "00ab7fff");
  std::uint8_t out[4];
  ASSERT_TRUE(hex_decode("00ab7fff", 8, out, 4));
  EXPECT_EQ(std::memcmp(out, b, 4), 0);
  EXPECT_TRUE(hex_decode("00AB7FFF", 8, out, 4));
  EXPECT_FALSE(hex_decode("00ab7ff", 7, out, 4));
  EXPECT_FALSE(hex_decode("00ab7fffff", 10, out, 4));
  EXPECT_FALSE(hex_decode("00ab7fgf", 8, out, 4));
  std::uint8_t id[8];
  ASSERT_TRUE(image_id_to_bytes("3f2a9c1b7d4e8f60", id));
  EXPECT_EQ(std::memcmp(id, kId, 8), 0);
  EXPECT_FALSE(image_id_to_bytes("3f2a9c1b7d4e8f", id));
  EXPECT_FALSE(image_id_to_bytes("3f2a9c1b7d4e8fzz", id));
}
