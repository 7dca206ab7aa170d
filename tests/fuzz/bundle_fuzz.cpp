// libFuzzer harness for the application bundle decoder (ota::proto::bundle, PROTOCOL.md
// section 16): the controller runs it on uploads and the Linux port on what arrives over the
// air, so whatever it accepts must be safe to hand to open() and must mean one thing only.
//
// Each input is tried three ways: as a whole bundle (header, index, contents); as index JSON
// behind a correct header, with contents synthesized to the sizes the index names (so the
// mutations reach the index checks instead of dying on the length field); and as one path.
// Whatever decodes must hold the format's promises: paths check_path accepts (no NUL, no
// "..", relative), no duplicates, offsets that add up to the bundle's size, and a bundle
// built again from the decoded files decodes to the same files.
//
// A real fuzzer (clang with libFuzzer; on Debian 12: apt-get install clang-14 libclang-rt-14-dev):
//   clang++-14 -std=c++17 -g -O1 -fsanitize=fuzzer,address,undefined -Iproto/bundle/include
//     tests/fuzz/bundle_fuzz.cpp proto/bundle/src/bundle.cpp -lcrypto -o bundle_fuzz
//   mkdir -p /tmp/bundle-corpus && ./bundle_fuzz -max_total_time=300 -max_len=8192
//     -timeout=10 /tmp/bundle-corpus tests/fuzz/corpus/bundle
// (about 7000 inputs a second with ASan on one core).
// Built with -DOTA_FUZZ_REPLAY_MAIN (gcc, CI: test bundle_fuzz_replay) the main() of
// replay_driver.hpp replays the corpus and runs a fixed number of deterministic mutations.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "ota/proto/bundle.hpp"

namespace bundle = ota::proto::bundle;

namespace {

// How far the inputs got (printed by the replay main: mutations that never decode test little).
std::uint64_t g_bundles_decoded = 0, g_indexes_decoded = 0;

void check(bool ok) {
  if (!ok) std::abort();
}

std::string header_for(std::size_t index_len) {
  std::string h(bundle::kMagic, 4);
  const auto put = [&h](std::uint32_t v) {
    for (int i = 0; i < 4; ++i) h += static_cast<char>((v >> (8 * i)) & 0xffu);
  };
  put(bundle::kFormatVersion);
  put(static_cast<std::uint32_t>(index_len));
  return h;
}

// What a decoded index promises, whatever the input was.
void check_index(const bundle::Index& idx, std::size_t bundle_size) {
  check(idx.files.size() <= bundle::kMaxFiles && idx.deletes.size() <= bundle::kMaxDeletes);
  check(idx.data_offset >= bundle::kHeaderSize);
  std::uint64_t offset = idx.data_offset;
  std::set<std::string> paths;
  for (const auto& f : idx.files) {
    check(bundle::check_path(f.path).empty());
    check(std::memchr(f.path.data(), '\0', f.path.size()) == nullptr);
    check(f.path.size() <= bundle::kMaxPathLen && f.path[0] != '/');
    check(f.mode <= 0777 && f.sha256.size() == 64);
    check(f.offset == offset);
    offset += f.size;
    check(paths.insert(f.path).second);
  }
  // No file is also a directory of another file.
  for (const auto& p : paths) {
    for (std::size_t s = p.find('/'); s != std::string::npos; s = p.find('/', s + 1)) {
      check(paths.count(p.substr(0, s)) == 0);
    }
  }
  check(offset == idx.total_size);
  if (bundle_size != 0) check(idx.total_size == bundle_size);
  std::set<std::string> deletes;
  for (const auto& d : idx.deletes) {
    check(bundle::check_path(d).empty());
    check(deletes.insert(d).second);
  }
}

// Decoded files, built again, decode to the same files (in path order) and deletes.
void check_rebuild(const bundle::Index& idx, const std::string& bytes) {
  std::vector<bundle::InputFile> files;
  for (const auto& f : idx.files) {
    files.push_back({f.path, f.mode,
                     bytes.substr(static_cast<std::size_t>(f.offset), static_cast<std::size_t>(f.size))});
  }
  std::string again;
  const std::string err = bundle::build(files, idx.deletes, again);
  if (!err.empty()) {
    // Only the index size limit may stop a rebuild (build writes "mode" for every file).
    check(err.find("larger than 4 MiB") != std::string::npos);
    return;
  }
  bundle::Index back;
  check(bundle::parse(again, back, true).empty());
  check(back.files.size() == idx.files.size());
  std::set<std::string> want, got;
  for (const auto& f : idx.files) want.insert(f.path + '\n' + f.sha256 + '\n' + std::to_string(f.size));
  for (const auto& f : back.files) got.insert(f.path + '\n' + f.sha256 + '\n' + std::to_string(f.size));
  check(want == got);
  check(std::set<std::string>(back.deletes.begin(), back.deletes.end()) ==
        std::set<std::string>(idx.deletes.begin(), idx.deletes.end()));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);

  // 1. The input as a whole bundle.
  bundle::Index idx;
  if (bundle::parse(input, idx, true).empty()) {
    ++g_bundles_decoded;
    check_index(idx, input.size());
    check_rebuild(idx, input);
  }
  std::uint32_t index_len = 0;
  if (size >= bundle::kHeaderSize && bundle::parse_header(data, size, index_len).empty()) {
    check(index_len >= 1 && index_len <= bundle::kMaxIndexSize);
  }

  // 2. The input as index JSON behind a correct header, contents of the sizes it names.
  if (size >= 1 && size <= bundle::kMaxIndexSize) {
    bundle::Index index;
    if (bundle::parse_index(input.data(), input.size(), index).empty()) {
      ++g_indexes_decoded;
      check_index(index, 0);
      check(index.data_offset == bundle::kHeaderSize + size);
      const std::uint64_t content = index.total_size - index.data_offset;
      if (content <= (1u << 16)) {
        std::string whole = header_for(size) + input;
        whole.append(static_cast<std::size_t>(content), 'x');
        bundle::Index again;
        check(bundle::parse(whole, again, false).empty());
        check(again.total_size == whole.size() && again.files.size() == index.files.size());
        // The contents are not what the hashes say (unless every file is empty or all 'x').
        const std::string err = bundle::parse(whole, again, true);
        check(err.empty() || err.find("content does not match its sha256") != std::string::npos);
        // One byte more or less is never a bundle.
        check(!bundle::parse(whole + 'x', again, false).empty());
        check(!bundle::parse(whole.substr(0, whole.size() - 1), again, false).empty());
      }
    }
  }

  // 3. The input as one path, and as two for the protected-path overlap.
  if (bundle::check_path(input).empty()) {
    check(!input.empty() && input.size() <= bundle::kMaxPathLen);
    check(std::memchr(input.data(), '\0', input.size()) == nullptr);
    check(input[0] != '/' && input.back() != '/' && input.find("//") == std::string::npos);
  }
  const std::size_t half = size / 2;
  const std::string a = input.substr(0, half), b = input.substr(half);
  check(bundle::paths_overlap(a, b) == bundle::paths_overlap(b, a));
  if (a == b) check(bundle::paths_overlap(a, b));
  return 0;
}

#ifdef OTA_FUZZ_REPLAY_MAIN
#include "replay_driver.hpp"
#include <cstdio>
int main(int argc, char** argv) {
  const int rc = ota_fuzz_replay::replay_main(argc, argv, "bundle_fuzz_replay");
  std::printf("bundle_fuzz_replay: %llu inputs decoded as bundles, %llu as indexes\n",
              static_cast<unsigned long long>(g_bundles_decoded),
              static_cast<unsigned long long>(g_indexes_decoded));
  return rc;
}
#endif
