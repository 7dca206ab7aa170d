#include "sha256.hpp"

#include <cstring>

namespace fw {
namespace {

constexpr std::uint32_t kK[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
    0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
    0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
    0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
    0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
    0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
    0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2};

std::uint32_t rotr(std::uint32_t x, unsigned n) { return (x >> n) | (x << (32u - n)); }

void compress(Sha256& s, const std::uint8_t* p) {
  std::uint32_t w[64];
  for (unsigned i = 0; i < 16; ++i) {
    w[i] = static_cast<std::uint32_t>(p[4 * i]) << 24 | static_cast<std::uint32_t>(p[4 * i + 1]) << 16 |
           static_cast<std::uint32_t>(p[4 * i + 2]) << 8 | p[4 * i + 3];
  }
  for (unsigned i = 16; i < 64; ++i) {
    const std::uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
    const std::uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
    w[i] = w[i - 16] + s0 + w[i - 7] + s1;
  }
  std::uint32_t v[8];
  std::memcpy(v, s.h, sizeof v);
  for (unsigned i = 0; i < 64; ++i) {
    const std::uint32_t e = v[4], a = v[0];
    const std::uint32_t t1 = v[7] + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) +
                             ((e & v[5]) ^ (~e & v[6])) + kK[i] + w[i];
    const std::uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) +
                             ((a & v[1]) ^ (a & v[2]) ^ (v[1] & v[2]));
    std::memmove(v + 1, v, 7 * sizeof v[0]);
    v[4] += t1;
    v[0] = t1 + t2;
  }
  for (unsigned i = 0; i < 8; ++i) s.h[i] += v[i];
}

}  // namespace

void sha256_init(Sha256& s) {
  static constexpr std::uint32_t kInit[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                             0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  std::memcpy(s.h, kInit, sizeof s.h);
  s.bytes = 0;
}

void sha256_update(Sha256& s, const std::uint8_t* data, std::size_t len) {
  while (len > 0) {
    const std::size_t used = static_cast<std::size_t>(s.bytes % 64);
    const std::size_t n = len < 64 - used ? len : 64 - used;
    std::memcpy(s.block + used, data, n);
    s.bytes += n;
    data += n;
    len -= n;
    if (used + n == 64) compress(s, s.block);
  }
}

void sha256_final(Sha256& s, std::uint8_t digest[32]) {
  const std::uint64_t bits = s.bytes * 8;
  static constexpr std::uint8_t kPad[64] = {0x80};
  const std::size_t used = static_cast<std::size_t>(s.bytes % 64);
  sha256_update(s, kPad, used < 56 ? 56 - used : 120 - used);
  std::uint8_t len_be[8];
  for (unsigned i = 0; i < 8; ++i) len_be[i] = static_cast<std::uint8_t>(bits >> (56 - 8 * i));
  sha256_update(s, len_be, sizeof len_be);
  for (unsigned i = 0; i < 8; ++i) {
    digest[4 * i] = static_cast<std::uint8_t>(s.h[i] >> 24);
    digest[4 * i + 1] = static_cast<std::uint8_t>(s.h[i] >> 16);
    digest[4 * i + 2] = static_cast<std::uint8_t>(s.h[i] >> 8);
    digest[4 * i + 3] = static_cast<std::uint8_t>(s.h[i]);
  }
}

}  // namespace fw
