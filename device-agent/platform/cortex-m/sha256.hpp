// Small software SHA-256 (FIPS 180-4) for the example firmware and the on-target tests.
// A product would use its SDK's (mbedTLS, a hardware hash engine); this one lets the core's
// hash check run for real under qemu without any SDK.
#pragma once

#include <cstddef>
#include <cstdint>

namespace fw {

struct Sha256 {
  std::uint32_t h[8];
  std::uint64_t bytes;
  std::uint8_t block[64];
};

void sha256_init(Sha256& s);
void sha256_update(Sha256& s, const std::uint8_t* data, std::size_t len);
void sha256_final(Sha256& s, std::uint8_t digest[32]);

}  // namespace fw
