// libFuzzer harness for ota::proto: feeds the input to every decoder (key sets and release
// files included) and checks that whatever decodes re-encodes to something that decodes to
// the same bytes again.
//
//   clang++ -std=c++17 -g -O1 -fsanitize=fuzzer,address,undefined -Iproto/include
//     tests/fuzz/proto_fuzz.cpp proto/src/*.cpp -o proto_fuzz
//   ./proto_fuzz tests/fixtures/proto/valid
//
// Built with -DOTA_FUZZ_REPLAY_MAIN it gets a main() that runs every file given on the command
// line (directories recursively) through the harness once: that is how CI exercises it
// without clang (test proto_fuzz_replay).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "ota/proto/frame.hpp"
#include "ota/proto/messages.hpp"
#include "ota/proto/topics.hpp"

using namespace ota::proto;

namespace {

void check(bool ok) {
  if (!ok) std::abort();
}

char g_out[8192];
char g_again[8192];

template <typename Msg, typename Dec, typename Enc>
void round_trip(const char* in, std::size_t len, Dec dec, Enc enc) {
  static Msg m;
  m = Msg{};
  if (!dec(in, len, m).ok()) return;
  std::size_t n = 0;
  check(enc(m, g_out, sizeof(g_out), n).ok());
  static Msg m2;
  m2 = Msg{};
  check(dec(g_out, n, m2).ok());
  std::size_t n2 = 0;
  check(enc(m2, g_again, sizeof(g_again), n2).ok());
  check(n == n2 && std::memcmp(g_out, g_again, n) == 0);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const char* in = reinterpret_cast<const char*>(data);

  round_trip<Offer>(in, size, decode_offer, encode_offer);
  round_trip<Cancel>(in, size, decode_cancel, encode_cancel);
  round_trip<Hello>(in, size, decode_hello, encode_hello);
  round_trip<Heartbeat>(in, size, decode_heartbeat, encode_heartbeat);
  round_trip<Event>(in, size, decode_event, encode_event);
  round_trip<ChunkRequest>(in, size, decode_chunk_request, encode_chunk_request);
  round_trip<KeySet>(in, size, decode_keyset, encode_keyset);
  round_trip<Manifest>(in, size, decode_release, encode_release);

  PresenceType pt;
  if (decode_presence_type(in, size, pt).ok() && pt == PresenceType::offline) {
    std::size_t n = 0;
    check(encode_offline(g_out, sizeof(g_out), n).ok());
  }

  static Offer offer;
  offer = Offer{};
  if (decode_offer(in, size, offer).ok()) {
    std::size_t n = canonical_manifest(offer.manifest, g_out, sizeof(g_out));
    check(n > 0);
    // A manifest with a release signature has the bytes that signature covers.
    if (!offer.manifest.release_key.empty()) {
      check(canonical_release(offer.manifest, g_out, sizeof(g_out)) > 0);
    }
  }
  static KeySet keys;
  keys = KeySet{};
  if (decode_keyset(in, size, keys).ok()) {
    check(keys.key_count >= 1 && keys.key_count <= kMaxKeySetKeys && keys.version >= 1);
    check(canonical_keyset(keys, g_out, sizeof(g_out)) > 0);
    std::uint8_t der[kP256SpkiDerLen];
    p256_spki_der(keys.keys[0].pub, der);
    check(der[0] == 0x30 && der[26] == 0x04);
  }
  static Manifest release;
  release = Manifest{};
  if (decode_release(in, size, release).ok()) {
    check(canonical_release(release, g_out, sizeof(g_out)) > 0);
  }

  ChunkFrame f;
  static const std::size_t kMax[] = {0, 256, 65536};
  for (std::size_t max : kMax) {
    if (decode_chunk_frame(data, size, max, f).ok()) {
      check(f.length <= max);
      check(crc32(f.payload, f.length) == f.crc32);
      static std::uint8_t buf[kFrameHeaderLen + 65536];
      std::size_t n = encode_chunk_frame(f.image_id, f.offset, f.payload, f.length, f.flags,
                                         buf, sizeof(buf));
      check(n == kFrameHeaderLen + f.length);
      ChunkFrame g;
      check(decode_chunk_frame(buf, n, max, g).ok());
      check(g.length == f.length && g.offset == f.offset && g.crc32 == f.crc32);
    }
  }

  // String-based APIs want NUL-terminated input.
  static char text[1024];
  std::size_t tn = size < sizeof(text) - 1 ? size : sizeof(text) - 1;
  if (tn != 0) std::memcpy(text, data, tn);
  text[tn] = '\0';
  const char* id = nullptr;
  std::size_t id_len = 0;
  TopicKind k = parse_topic(kDefaultPrefix, text, &id, &id_len);
  if (k != TopicKind::unknown) {
    check(id != nullptr && id_len > 0);
    static char idbuf[1024];
    std::memcpy(idbuf, id, id_len);
    idbuf[id_len] = '\0';
    static char topic[1100];
    std::size_t n = make_topic(kDefaultPrefix, k, idbuf, topic, sizeof(topic));
    check(n == std::strlen(text) && std::strcmp(topic, text) == 0);
  }
  std::size_t slen = std::strlen(text);
  if (is_semver(text, slen)) {
    check(compare_semver(text, text) == 0);
    check(compare_semver(text, "0.0.0-0") >= 0);  // the lowest version there is
    check(compare_semver(text, "1.0.0") == -compare_semver("1.0.0", text));
  }
  (void)valid_id(text, slen);
  ReasonCode rc;
  if (reason_from_name(text, slen, rc)) check(std::strcmp(reason_name(rc), text) == 0);
  std::uint8_t bytes[8];
  (void)image_id_to_bytes(text, bytes);
  return 0;
}

#ifdef OTA_FUZZ_REPLAY_MAIN
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <vector>

namespace {

int run_file(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::vector<char> buf((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  LLVMFuzzerTestOneInput(reinterpret_cast<const std::uint8_t*>(buf.data()), buf.size());
  // Every prefix too: cheap extra coverage of the truncation paths.
  for (std::size_t n = 0; n < buf.size(); n += 1 + buf.size() / 64) {
    LLVMFuzzerTestOneInput(reinterpret_cast<const std::uint8_t*>(buf.data()), n);
  }
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  int files = 0;
  for (int i = 1; i < argc; ++i) {
    std::filesystem::path p(argv[i]);
    if (std::filesystem::is_directory(p)) {
      for (const auto& e : std::filesystem::recursive_directory_iterator(p)) {
        if (e.is_regular_file()) files += run_file(e.path());
      }
    } else {
      files += run_file(p);
    }
  }
  std::printf("proto_fuzz_replay: %d inputs ran clean\n", files);
  return files > 0 ? 0 : 1;
}
#endif
