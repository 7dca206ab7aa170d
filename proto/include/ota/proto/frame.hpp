// Binary chunk frame (topic .../down/chunk, reserved: img/<image>/chunk for broadcast).
//
// Layout, all integers big-endian (see PROTOCOL.md "Chunk frame"):
//   0  4  magic "OTAC"
//   4  1  frame version (1)
//   5  1  flags (bit0 broadcast, bit1 compressed payload; others must be 0)
//   6  2  header length in bytes (28 for version 1; a reader skips unknown extra header bytes)
//   8  8  image id (first 8 bytes of the image SHA-256)
//  16  4  chunk offset in the image, bytes
//  20  4  payload length, bytes
//  24  4  CRC32 (IEEE 802.3, as zlib) of the payload
//  28  .. payload
#pragma once

#include <cstddef>
#include <cstdint>

#include "ota/proto/error.hpp"

namespace ota::proto {

constexpr std::size_t kFrameHeaderLen = 28;
constexpr std::uint8_t kFrameVersion = 1;
constexpr std::uint8_t kFrameFlagBroadcast = 0x01;
constexpr std::uint8_t kFrameFlagCompressed = 0x02;

struct ChunkFrame {
  std::uint8_t flags = 0;
  std::uint8_t image_id[8] = {};
  std::uint32_t offset = 0;
  std::uint32_t length = 0;
  std::uint32_t crc32 = 0;
  const std::uint8_t* payload = nullptr;  // points into the decoded buffer
};

// Writes header + payload into `out`. Computes the CRC. Returns the frame length, or 0 if
// `cap` is too small.
std::size_t encode_chunk_frame(const std::uint8_t image_id[8], std::uint32_t offset,
                               const std::uint8_t* payload, std::uint32_t length,
                               std::uint8_t flags, std::uint8_t* out, std::size_t cap);
// Writes only the 28-byte header for a payload the caller places right after it
// (lets a server read the file straight into the message buffer).
void encode_chunk_header(const std::uint8_t image_id[8], std::uint32_t offset,
                         const std::uint8_t* payload, std::uint32_t length, std::uint8_t flags,
                         std::uint8_t out[kFrameHeaderLen]);

// Validates magic, version, flags, lengths and CRC. `max_payload` bounds the payload length
// (the receiver's chunk buffer).
Error decode_chunk_frame(const std::uint8_t* in, std::size_t len, std::size_t max_payload,
                         ChunkFrame& out);

std::uint32_t crc32(const std::uint8_t* data, std::size_t len, std::uint32_t crc = 0);

// Hex helpers shared by the codec users.
bool hex_decode(const char* hex, std::size_t hex_len, std::uint8_t* out, std::size_t out_len);
void hex_encode(const std::uint8_t* in, std::size_t len, char* out);  // writes 2*len chars
// Image id (16 hex chars) <-> 8 bytes.
bool image_id_to_bytes(const char* hex16, std::uint8_t out[8]);

}  // namespace ota::proto
