// A stand-in for libFuzzer's main() where there is no libFuzzer (gcc, CI): include this from a
// harness built with -DOTA_FUZZ_REPLAY_MAIN. It runs LLVMFuzzerTestOneInput over
//   1. every corpus file given on the command line (directories recursively, in sorted
//      order), and every prefix of each (the truncation paths);
//   2. then deterministic random mutations of those inputs (bit flips, interesting bytes and
//      numbers, JSON and protocol tokens, deleted / repeated / inserted ranges, splices of
//      two inputs), as many as --mutations=N, stopping early after --seconds=T.
// The sequence depends only on the corpus and --seed, so a failure is reproduced by running
// again with the same arguments; the input that failed is also written to the file named by
// OTA_FUZZ_CRASH_FILE (default fuzz-crash.bin in the working directory) when the process
// dies (abort, a signal, or a sanitizer report), so it can be replayed on its own:
//   ./bundle_fuzz_replay fuzz-crash.bin
//
//   usage: HARNESS [--mutations=N] [--seconds=T] [--seed=S] PATH...
#pragma once

#ifdef OTA_FUZZ_REPLAY_MAIN

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);
// Optional in libFuzzer, called once before the first input.
extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) __attribute__((weak));
// Sanitizer runtimes call this just before they end the process after a report.
extern "C" void __sanitizer_set_death_callback(void (*callback)(void)) __attribute__((weak));

namespace ota_fuzz_replay {

// The input being run, kept where a dying process can still write it out.
inline std::vector<std::uint8_t> g_current;
inline const char* g_crash_file = "fuzz-crash.bin";
inline const char* g_what = "corpus";
inline unsigned long long g_number = 0;

inline void dump_current() {
  const int fd = ::open(g_crash_file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return;
  std::size_t done = 0;
  while (done < g_current.size()) {
    const ssize_t n = ::write(fd, g_current.data() + done, g_current.size() - done);
    if (n <= 0) break;
    done += static_cast<std::size_t>(n);
  }
  ::close(fd);
  char msg[160];
  const int len = std::snprintf(msg, sizeof msg, "fuzz replay: died on %s input #%llu; saved to %s\n",
                                g_what, g_number, g_crash_file);
  if (len > 0) (void)!::write(2, msg, static_cast<std::size_t>(len));
}

extern "C" inline void on_fatal_signal(int sig) {
  dump_current();
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}

inline void run(const std::vector<std::uint8_t>& input) {
  g_current = input;
  // A copy of exactly `size` bytes on the heap, as libFuzzer does: reads past the end are
  // caught by AddressSanitizer.
  std::unique_ptr<std::uint8_t[]> copy(new std::uint8_t[input.size() + (input.empty() ? 1 : 0)]);
  if (!input.empty()) std::memcpy(copy.get(), input.data(), input.size());
  LLVMFuzzerTestOneInput(copy.get(), input.size());
}

// Tokens a mutation may insert: JSON syntax, the members of the messages and of the bundle
// index, escapes that decode to NUL or to surrogates, and numbers at the edges of u32/u64/2^53.
inline const std::vector<std::string>& dictionary() {
  static const std::vector<std::string> words = {
      "{", "}", "[", "]", ",", ":", "\"", "\\", "\\u0000", "\\ud800", "\\udc00", "\\n",
      "\xc3\xa9", "\xff", "\xed\xa0\x80", "null", "true", "false", "0", "-1", "1.0", "1e3",
      "255", "256", "65536", "65537", "4294967295", "4294967296", "9007199254740992",
      "9007199254740993", "18446744073709551615", "18446744073709551616", "\"v\":1",
      "\"type\":", "\"hello\"", "\"event\"", "\"chunk_req\"", "\"heartbeat\"", "\"offline\"",
      "\"device\":", "\"deployment\":", "\"image\":", "\"seq\":", "\"first\":", "\"count\":",
      "\"bitmap\":", "\"accept\"", "\"decline\"", "\"defer\"", "\"progress\"", "\"result\"",
      "\"status\"", "\"state\":", "\"reason\":", "\"version\":", "\"resume\":", "\"received\":",
      "\"total\":", "\"ok\":", "\"groups\":", "\"counter\":", "\"free\":", "\"slot_state\":",
      "\"files\":", "\"delete\":", "\"path\":", "\"size\":", "\"sha256\":", "\"mode\":",
      "\"..\"", "..", "/", "./", "//", "wifi.json", "certs/", ".1", ".99", "OTAB",
      std::string("\x01\x00\x00\x00", 4), std::string("\xff\xff\xff\xff", 4),
      std::string("\x00", 1), std::string("\x1e", 1)};
  return words;
}

inline void mutate(std::vector<std::uint8_t>& d, const std::vector<std::vector<std::uint8_t>>& all,
                   std::mt19937_64& rng) {
  auto pick = [&rng](std::size_t n) { return n == 0 ? std::size_t{0} : static_cast<std::size_t>(rng() % n); };
  // One change most of the time: JSON rarely survives several.
  const int ops = rng() % 2 == 0 ? 1 : 2 + static_cast<int>(rng() % 3);
  for (int k = 0; k < ops; ++k) {
    switch (rng() % 9) {
      case 0:  // flip one bit
        if (!d.empty()) d[pick(d.size())] ^= static_cast<std::uint8_t>(1u << (rng() % 8));
        break;
      case 1: {  // an interesting byte
        static const std::uint8_t bytes[] = {0, 1, 0x1e, 0x1f, 0x20, 0x7f, 0x80, 0xff, '"', '\\',
                                             '/', '.', '{', '}', '[', ']', ',', ':', '0', '9'};
        if (!d.empty()) d[pick(d.size())] = bytes[pick(sizeof bytes)];
        break;
      }
      case 2: {  // delete a range
        if (d.empty()) break;
        const std::size_t at = pick(d.size());
        const std::size_t n = 1 + pick(std::min<std::size_t>(16, d.size() - at));
        d.erase(d.begin() + static_cast<std::ptrdiff_t>(at),
                d.begin() + static_cast<std::ptrdiff_t>(at + n));
        break;
      }
      case 3: {  // insert random bytes
        const std::size_t at = pick(d.size() + 1);
        const std::size_t n = 1 + pick(8);
        std::vector<std::uint8_t> r(n);
        for (auto& b : r) b = static_cast<std::uint8_t>(rng());
        d.insert(d.begin() + static_cast<std::ptrdiff_t>(at), r.begin(), r.end());
        break;
      }
      case 4: {  // repeat a range (duplicate members, deep nesting, long strings)
        if (d.empty() || d.size() > 1u << 16) break;
        const std::size_t at = pick(d.size());
        const std::size_t n = 1 + pick(std::min<std::size_t>(64, d.size() - at));
        const std::vector<std::uint8_t> r(d.begin() + static_cast<std::ptrdiff_t>(at),
                                          d.begin() + static_cast<std::ptrdiff_t>(at + n));
        const std::size_t times = 1 + pick(rng() % 8 == 0 ? 200 : 3);
        for (std::size_t t = 0; t < times; ++t) {
          d.insert(d.begin() + static_cast<std::ptrdiff_t>(at), r.begin(), r.end());
        }
        break;
      }
      case 5:
      case 6: {  // insert or overwrite with a dictionary word
        const std::string& w = dictionary()[pick(dictionary().size())];
        const std::size_t at = pick(d.size() + 1);
        if (rng() % 2 == 0 || at + w.size() > d.size()) {
          d.insert(d.begin() + static_cast<std::ptrdiff_t>(at), w.begin(), w.end());
        } else {
          std::memcpy(d.data() + at, w.data(), w.size());
        }
        break;
      }
      case 7: {  // replace a run of digits with another number
        if (d.empty()) break;
        std::size_t at = pick(d.size());
        while (at < d.size() && !(d[at] >= '0' && d[at] <= '9')) ++at;
        if (at == d.size()) break;
        std::size_t end = at;
        while (end < d.size() && d[end] >= '0' && d[end] <= '9') ++end;
        static const char* numbers[] = {"0", "1", "00", "-0", "255", "4294967295", "4294967296",
                                        "9007199254740993", "18446744073709551616", "1e9", "0.5"};
        const std::string n = numbers[pick(sizeof numbers / sizeof *numbers)];
        d.erase(d.begin() + static_cast<std::ptrdiff_t>(at), d.begin() + static_cast<std::ptrdiff_t>(end));
        d.insert(d.begin() + static_cast<std::ptrdiff_t>(at), n.begin(), n.end());
        break;
      }
      default: {  // splice: the head of this input, the tail of another
        const auto& other = all[pick(all.size())];
        if (other.empty()) break;
        const std::size_t cut = pick(d.size() + 1), from = pick(other.size());
        d.resize(cut);
        d.insert(d.end(), other.begin() + static_cast<std::ptrdiff_t>(from), other.end());
        break;
      }
    }
  }
  if (d.size() > 1u << 20) d.resize(1u << 20);  // libFuzzer's default -max_len is far lower
}

inline bool flag(const char* arg, const char* name, unsigned long long& value) {
  const std::size_t n = std::strlen(name);
  if (std::strncmp(arg, name, n) != 0) return false;
  value = std::strtoull(arg + n, nullptr, 10);
  return true;
}

inline int replay_main(int argc, char** argv, const char* name) {
  unsigned long long mutations = 0, seconds = 0, seed = 1;
  if (const char* f = std::getenv("OTA_FUZZ_CRASH_FILE")) g_crash_file = f;
  if (LLVMFuzzerInitialize != nullptr) LLVMFuzzerInitialize(&argc, &argv);
  std::vector<std::filesystem::path> files;
  for (int i = 1; i < argc; ++i) {
    if (flag(argv[i], "--mutations=", mutations) || flag(argv[i], "--seconds=", seconds) ||
        flag(argv[i], "--seed=", seed)) {
      continue;
    }
    const std::filesystem::path p(argv[i]);
    if (std::filesystem::is_directory(p)) {
      for (const auto& e : std::filesystem::recursive_directory_iterator(p)) {
        if (e.is_regular_file()) files.push_back(e.path());
      }
    } else {
      files.push_back(p);
    }
  }
  std::sort(files.begin(), files.end());
  std::vector<std::vector<std::uint8_t>> corpus;
  for (const auto& p : files) {
    std::ifstream f(p, std::ios::binary);
    corpus.emplace_back((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  }
  if (corpus.empty()) {
    std::fprintf(stderr, "%s: no corpus files given\n", name);
    return 1;
  }
  if (__sanitizer_set_death_callback != nullptr) __sanitizer_set_death_callback(&dump_current);
  for (int sig : {SIGABRT, SIGSEGV, SIGBUS, SIGFPE, SIGILL}) std::signal(sig, &on_fatal_signal);

  const auto start = std::chrono::steady_clock::now();
  unsigned long long runs = 0;
  g_what = "corpus";
  for (const auto& input : corpus) {
    g_number = runs;
    run(input);
    ++runs;
    for (std::size_t n = 0; n < input.size(); n += 1 + input.size() / 64) {
      run(std::vector<std::uint8_t>(input.begin(), input.begin() + static_cast<std::ptrdiff_t>(n)));
    }
  }
  std::mt19937_64 rng(seed);
  g_what = "mutated";
  unsigned long long mutated = 0;
  for (; mutated < mutations; ++mutated) {
    if (seconds != 0 && (mutated & 63) == 0 &&
        std::chrono::steady_clock::now() - start > std::chrono::seconds(seconds)) {
      break;
    }
    std::vector<std::uint8_t> d = corpus[static_cast<std::size_t>(rng() % corpus.size())];
    mutate(d, corpus, rng);
    g_number = mutated;
    run(d);
  }
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("%s: %zu corpus inputs (and their prefixes) and %llu mutations (seed %llu) ran "
              "clean in %.1f s\n",
              name, corpus.size(), mutated, seed, took);
  return 0;
}

}  // namespace ota_fuzz_replay

#endif  // OTA_FUZZ_REPLAY_MAIN
