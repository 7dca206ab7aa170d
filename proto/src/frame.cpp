#include "ota/proto/frame.hpp"

#include <cstring>

#ifdef OTA_PROTO_CRC32_LIBDEFLATE
#include <libdeflate.h>
#endif

namespace ota::proto {

namespace {

#ifndef OTA_PROTO_CRC32_LIBDEFLATE
// CRC-32 (IEEE, reflected) by slicing: table k holds the CRC of a byte followed by k zero
// bytes, so eight input bytes cost eight lookups and no data-dependent loop. 8 KiB of
// constant tables; a firmware build short of flash defines OTA_PROTO_CRC32_SMALL and gets
// the single 1 KiB table and a byte at a time (about 5x slower).
#ifdef OTA_PROTO_CRC32_SMALL
constexpr int kCrcSlices = 1;
#else
constexpr int kCrcSlices = 8;
#endif
struct CrcTable {
  std::uint32_t v[kCrcSlices][256];
  constexpr CrcTable() : v() {
    for (std::uint32_t i = 0; i < 256; ++i) {
      std::uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1u) ? (0xEDB88320u ^ (c >> 1)) : (c >> 1);
      v[0][i] = c;
    }
    for (int s = 1; s < kCrcSlices; ++s)
      for (std::uint32_t i = 0; i < 256; ++i) v[s][i] = (v[s - 1][i] >> 8) ^ v[0][v[s - 1][i] & 0xFFu];
  }
};
constexpr CrcTable kCrcTable{};
#endif

constexpr std::uint8_t kMagic[4] = {'O', 'T', 'A', 'C'};
constexpr std::uint8_t kKnownFlags = kFrameFlagBroadcast | kFrameFlagCompressed;

void put_u16(std::uint8_t* p, std::uint16_t v) {
  p[0] = static_cast<std::uint8_t>(v >> 8);
  p[1] = static_cast<std::uint8_t>(v);
}
void put_u32(std::uint8_t* p, std::uint32_t v) {
  p[0] = static_cast<std::uint8_t>(v >> 24);
  p[1] = static_cast<std::uint8_t>(v >> 16);
  p[2] = static_cast<std::uint8_t>(v >> 8);
  p[3] = static_cast<std::uint8_t>(v);
}
std::uint16_t get_u16(const std::uint8_t* p) {
  return static_cast<std::uint16_t>((p[0] << 8) | p[1]);
}
std::uint32_t get_u32(const std::uint8_t* p) {
  return (static_cast<std::uint32_t>(p[0]) << 24) | (static_cast<std::uint32_t>(p[1]) << 16) |
         (static_cast<std::uint32_t>(p[2]) << 8) | static_cast<std::uint32_t>(p[3]);
}

int hex_nibble(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

std::uint32_t crc32(const std::uint8_t* data, std::size_t len, std::uint32_t crc) {
#ifdef OTA_PROTO_CRC32_LIBDEFLATE
  // Same convention as ours and zlib's (the pre- and post-inversion happen inside).
  if (len == 0) return crc;  // libdeflate wants a readable buffer; ours takes nullptr, 0
  return libdeflate_crc32(crc, data, len);
#else
  crc = ~crc;
  std::size_t i = 0;
#ifndef OTA_PROTO_CRC32_SMALL
  const auto& t = kCrcTable.v;
  for (; i + 8 <= len; i += 8) {
    // Little-endian order of the reflected CRC, independent of the host's byte order.
    const std::uint32_t lo = crc ^ (static_cast<std::uint32_t>(data[i]) |
                                    static_cast<std::uint32_t>(data[i + 1]) << 8 |
                                    static_cast<std::uint32_t>(data[i + 2]) << 16 |
                                    static_cast<std::uint32_t>(data[i + 3]) << 24);
    crc = t[7][lo & 0xFFu] ^ t[6][(lo >> 8) & 0xFFu] ^ t[5][(lo >> 16) & 0xFFu] ^ t[4][lo >> 24] ^
          t[3][data[i + 4]] ^ t[2][data[i + 5]] ^ t[1][data[i + 6]] ^ t[0][data[i + 7]];
  }
#endif
  for (; i < len; ++i) crc = kCrcTable.v[0][(crc ^ data[i]) & 0xFFu] ^ (crc >> 8);
  return ~crc;
#endif
}

void encode_chunk_header(const std::uint8_t image_id[8], std::uint32_t offset,
                         const std::uint8_t* payload, std::uint32_t length, std::uint8_t flags,
                         std::uint8_t out[kFrameHeaderLen]) {
  std::memcpy(out, kMagic, 4);
  out[4] = kFrameVersion;
  out[5] = flags;
  put_u16(out + 6, static_cast<std::uint16_t>(kFrameHeaderLen));
  std::memcpy(out + 8, image_id, 8);
  put_u32(out + 16, offset);
  put_u32(out + 20, length);
  put_u32(out + 24, length == 0 ? 0u : crc32(payload, length));
}

std::size_t encode_chunk_frame(const std::uint8_t image_id[8], std::uint32_t offset,
                               const std::uint8_t* payload, std::uint32_t length,
                               std::uint8_t flags, std::uint8_t* out, std::size_t cap) {
  if (out == nullptr || cap < kFrameHeaderLen || cap - kFrameHeaderLen < length) return 0;
  if (length != 0 && payload == nullptr) return 0;
  encode_chunk_header(image_id, offset, payload, length, flags, out);
  if (length != 0) std::memmove(out + kFrameHeaderLen, payload, length);
  return kFrameHeaderLen + length;
}

Error decode_chunk_frame(const std::uint8_t* in, std::size_t len, std::size_t max_payload,
                         ChunkFrame& out) {
  if (in == nullptr) len = 0;
  std::size_t m = len < 4 ? len : 4;
  if (std::memcmp(in == nullptr ? kMagic : in, kMagic, m) != 0) return {Errc::bad_magic, "magic"};
  if (len < 5) return {Errc::truncated, "header"};
  if (in[4] != kFrameVersion) return {Errc::unsupported_version, "version"};
  if (len < 6) return {Errc::truncated, "header"};
  if ((in[5] & ~kKnownFlags) != 0) return {Errc::bad_value, "flags"};
  if (len < 8) return {Errc::truncated, "header"};
  std::size_t hlen = get_u16(in + 6);
  if (hlen < kFrameHeaderLen) return {Errc::bad_value, "header_length"};
  if (len < kFrameHeaderLen || len < hlen) return {Errc::truncated, "header"};
  std::uint32_t plen = get_u32(in + 20);
  if (plen > max_payload) return {Errc::field_too_long, "length"};
  std::size_t remain = len - hlen;
  if (plen > remain) return {Errc::truncated, "payload"};
  if (plen < remain) return {Errc::bad_value, "length"};
  std::uint32_t crc = get_u32(in + 24);
  const std::uint8_t* payload = in + hlen;
  if (crc32(payload, plen) != crc) return {Errc::crc_mismatch, "crc32"};
  out.flags = in[5];
  std::memcpy(out.image_id, in + 8, 8);
  out.offset = get_u32(in + 16);
  out.length = plen;
  out.crc32 = crc;
  out.payload = payload;
  return kOk;
}

bool hex_decode(const char* hex, std::size_t hex_len, std::uint8_t* out, std::size_t out_len) {
  if (hex_len != out_len * 2) return false;
  if (hex_len != 0 && (hex == nullptr || out == nullptr)) return false;
  for (std::size_t i = 0; i < hex_len; ++i) {
    if (hex_nibble(hex[i]) < 0) return false;
  }
  for (std::size_t i = 0; i < out_len; ++i) {
    out[i] = static_cast<std::uint8_t>((hex_nibble(hex[2 * i]) << 4) | hex_nibble(hex[2 * i + 1]));
  }
  return true;
}

void hex_encode(const std::uint8_t* in, std::size_t len, char* out) {
  static constexpr char kHex[] = "0123456789abcdef";
  for (std::size_t i = 0; i < len; ++i) {
    out[2 * i] = kHex[in[i] >> 4];
    out[2 * i + 1] = kHex[in[i] & 0xF];
  }
}

bool image_id_to_bytes(const char* hex16, std::uint8_t out[8]) {
  if (hex16 == nullptr) return false;
  for (std::size_t i = 0; i < 16; ++i) {
    if (hex16[i] == '\0') return false;
  }
  return hex_decode(hex16, 16, out, 8);
}

}  // namespace ota::proto
