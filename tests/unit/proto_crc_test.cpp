// CRC-32 of chunk frames. Built twice: against ota::proto as the host links it (CRC from
// libdeflate) and against the codec sources compiled without it (the sliced tables that
// firmware ports compile), so both implementations answer to the same definition.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "ota/proto/frame.hpp"

using ota::proto::crc32;

TEST(ProtoCrc, KnownVectors) {
  const char* s = "123456789";
  EXPECT_EQ(crc32(reinterpret_cast<const std::uint8_t*>(s), 9), 0xCBF43926u);
  EXPECT_EQ(crc32(nullptr, 0), 0u);
  const char* q = "The quick brown fox jumps over the lazy dog";
  EXPECT_EQ(crc32(reinterpret_cast<const std::uint8_t*>(q), std::strlen(q)), 0x414FA339u);
  // Incremental use.
  std::uint32_t c = crc32(reinterpret_cast<const std::uint8_t*>(s), 4);
  c = crc32(reinterpret_cast<const std::uint8_t*>(s) + 4, 5, c);
  EXPECT_EQ(c, 0xCBF43926u);
}

// The CRC against the definition (one bit at a time), at every length around the
// 8-byte stride, at unaligned starts, and split at every point (incremental use).
TEST(ProtoCrc, MatchesTheBitwiseDefinition) {
  auto bitwise = [](const std::uint8_t* d, std::size_t n) {
    std::uint32_t c = 0xFFFFFFFFu;
    for (std::size_t i = 0; i < n; ++i) {
      c ^= d[i];
      for (int k = 0; k < 8; ++k) c = (c & 1u) ? (0xEDB88320u ^ (c >> 1)) : (c >> 1);
    }
    return ~c;
  };
  std::vector<std::uint8_t> buf(4096 + 16);
  std::uint32_t x = 12345;
  for (auto& b : buf) b = static_cast<std::uint8_t>((x = x * 1103515245u + 12345u) >> 16);
  for (std::size_t start = 0; start < 8; ++start)
    for (std::size_t n : {0u, 1u, 7u, 8u, 9u, 15u, 16u, 17u, 63u, 64u, 65u, 4095u, 4096u}) {
      const std::uint8_t* d = buf.data() + start;
      EXPECT_EQ(crc32(d, n), bitwise(d, n)) << "start " << start << " len " << n;
    }
  const std::uint32_t whole = bitwise(buf.data(), 100);
  for (std::size_t cut = 0; cut <= 100; ++cut)
    EXPECT_EQ(crc32(buf.data() + cut, 100 - cut, crc32(buf.data(), cut)), whole) << cut;
}
