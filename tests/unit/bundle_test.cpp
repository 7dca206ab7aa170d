// Application bundles: the format (ota::proto_bundle) and the Linux port that installs them as
// a file tree (BundleFlash), including a power cut at every filesystem operation of an update.
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstdio>
#include <fstream>
#include <map>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "ota/agent/linux/bundle_flash.hpp"
#include "ota/proto/bundle.hpp"
#include "test_env.hpp"

namespace {

namespace bundle = ota::proto::bundle;
using ota::agent::ImageState;
using ota::agent::PortStatus;
using ota::agent::linux_port::BundleFlash;
using ota::agent::linux_port::BundleFlashConfig;

using Tree = std::map<std::string, std::string>;  // path -> "file:<bytes>", "dir", "link:<t>"

void snapshot(const std::string& dir, const std::string& rel, Tree& out) {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return;
  std::vector<std::string> names;
  while (const dirent* e = ::readdir(d)) {
    if (std::string(e->d_name) != "." && std::string(e->d_name) != "..") names.push_back(e->d_name);
  }
  ::closedir(d);
  for (const auto& n : names) {
    const std::string path = dir + "/" + n, r = rel.empty() ? n : rel + "/" + n;
    struct stat st {};
    ::lstat(path.c_str(), &st);
    if (S_ISDIR(st.st_mode)) {
      out[r] = "dir";
      snapshot(path, r, out);
    } else if (S_ISLNK(st.st_mode)) {
      char buf[512];
      const ssize_t len = ::readlink(path.c_str(), buf, sizeof buf);
      out[r] = "link:" + std::string(buf, static_cast<std::size_t>(len < 0 ? 0 : len));
    } else {
      std::ifstream in(path, std::ios::binary);
      std::ostringstream ss;
      ss << in.rdbuf();
      out[r] = "file:" + ss.str();
    }
  }
}

Tree snapshot(const std::string& dir) {
  Tree t;
  snapshot(dir, "", t);
  return t;
}

void write_file(const std::string& path, const std::string& data) {
  for (std::size_t s = path.find('/', 1); s != std::string::npos; s = path.find('/', s + 1)) {
    ::mkdir(path.substr(0, s).c_str(), 0755);
  }
  std::ofstream(path, std::ios::binary) << data;
}

std::string pattern(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng() & 0xff);
  return s;
}

// The factory application tree and the update to it.
struct Fixture {
  Tree old_tree, new_tree;
  std::string bytes;
  ota::proto::Manifest manifest;
};

Fixture make_fixture(std::uint32_t chunk_size, std::size_t extra_files = 0) {
  Fixture f;
  const std::map<std::string, std::string> old_files = {
      {"main.py", "print('v1')\n"},
      {"lib/util.py", "def f(): return 1\n"},
      {"old.py", "obsolete\n"},
      {"wifi.json", "{\"ssid\":\"home\",\"psk\":\"secret\"}"},
      {"certs/ca.pem", "-----BEGIN CERTIFICATE-----\n"},
      {"data/keep.txt", "unchanged data\n"},
      {"legacy/a.py", "a\n"},
  };
  for (const auto& [p, d] : old_files) {
    f.old_tree[p] = "file:" + d;
    for (std::size_t s = p.find('/'); s != std::string::npos; s = p.find('/', s + 1)) {
      f.old_tree[p.substr(0, s)] = "dir";
    }
  }
  std::vector<bundle::InputFile> files = {
      {"main.py", 0644, "print('v2')\n"},
      {"lib/util.py", 0644, "def f(): return 2\n"},
      {"lib/new.py", 0755, "#!/usr/bin/env python3\n"},
      {"assets/big.bin", 0644, pattern(9000, 7)},
      {"empty.txt", 0644, ""},
  };
  for (std::size_t i = 0; i < extra_files; ++i) {
    char name[64];
    std::snprintf(name, sizeof name, "pkg/module_with_a_long_name_%03zu.py", i);
    files.push_back({name, 0644, "x = " + std::to_string(i) + "\n"});
  }
  const std::vector<std::string> deletes = {"old.py", "legacy"};
  EXPECT_EQ(bundle::build(files, deletes, f.bytes), "");
  f.new_tree = f.old_tree;
  f.new_tree.erase("old.py");
  f.new_tree.erase("legacy");
  f.new_tree.erase("legacy/a.py");
  for (const auto& file : files) {
    f.new_tree[file.path] = "file:" + file.data;
    for (std::size_t s = file.path.find('/'); s != std::string::npos;
         s = file.path.find('/', s + 1)) {
      f.new_tree[file.path.substr(0, s)] = "dir";
    }
  }
  auto& m = f.manifest;
  m.kind = ota::proto::ImageKind::bundle;
  m.version.assign("2.0.0");
  m.size = f.bytes.size();
  m.chunk_size = chunk_size;
  m.counter = 3;
  const std::string sha = bundle::sha256_hex(f.bytes.data(), f.bytes.size());
  m.sha256.assign(sha.c_str());
  m.image.assign(sha.substr(0, 16).c_str());
  return f;
}

void seed_tree(const std::string& root, const Tree& tree) {
  ::mkdir(root.c_str(), 0755);
  ::mkdir((root + "/current").c_str(), 0755);
  for (const auto& [p, v] : tree) {
    if (v == "dir") ::mkdir((root + "/current/" + p).c_str(), 0755);
  }
  for (const auto& [p, v] : tree) {
    if (v.rfind("file:", 0) == 0) write_file(root + "/current/" + p, v.substr(5));
  }
}

BundleFlashConfig config(const std::string& root) {
  BundleFlashConfig c;
  c.root = root;
  c.protect = {"wifi.json", "certs/"};
  return c;
}

// What the agent does with a bundle: begin, chunks in a shuffled order (the agent writes what
// arrives), sync, read back in order for the hash, finish, activate on trial.
bool install(BundleFlash& flash, const Fixture& f, unsigned seed, bool resume,
             std::string* readback = nullptr) {
  const PortStatus b = flash.begin(f.manifest, resume);
  if (b != PortStatus::ok && b != PortStatus::not_found) return false;
  const std::uint32_t n = f.manifest.chunk_count();
  std::vector<std::uint32_t> order(n);
  std::iota(order.begin(), order.end(), 0u);
  std::shuffle(order.begin(), order.end(), std::mt19937(seed));
  for (std::uint32_t i : order) {
    const std::size_t off = std::size_t{i} * f.manifest.chunk_size;
    const std::size_t len = std::min<std::size_t>(f.manifest.chunk_size, f.bytes.size() - off);
    if (flash.write(static_cast<std::uint32_t>(off),
                    reinterpret_cast<const std::uint8_t*>(f.bytes.data() + off),
                    len) != PortStatus::ok) {
      return false;
    }
  }
  if (flash.sync() != PortStatus::ok) return false;
  std::string back(f.bytes.size(), '\0');
  for (std::size_t off = 0; off < back.size(); off += 1000) {
    const std::size_t len = std::min<std::size_t>(1000, back.size() - off);
    if (flash.read(static_cast<std::uint32_t>(off), reinterpret_cast<std::uint8_t*>(&back[off]),
                   len) != PortStatus::ok) {
      return false;
    }
  }
  if (readback != nullptr) *readback = back;
  if (back != f.bytes) return false;  // the agent's hash would fail
  return flash.finish(f.manifest) == PortStatus::ok &&
         flash.activate_trial(f.manifest, 1) == PortStatus::ok;
}

ino_t inode_of(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 ? st.st_ino : 0;
}

// ---------------------------------------------------------------------------------------
// Format

TEST(BundleFormat, BuildParseRoundTripIsDeterministic) {
  std::vector<bundle::InputFile> files = {{"b.py", 0644, "bee"}, {"a/x.bin", 0755, "xx"},
                                          {"e", 0600, ""}};
  std::string one, two;
  ASSERT_EQ(bundle::build(files, {"z", "old/dir"}, one), "");
  std::reverse(files.begin(), files.end());
  ASSERT_EQ(bundle::build(files, {"old/dir", "z"}, two), "");
  EXPECT_EQ(one, two);
  EXPECT_EQ(one.substr(0, 4), "OTAB");
  bundle::Index idx;
  ASSERT_EQ(bundle::parse(one, idx, true), "");
  ASSERT_EQ(idx.files.size(), 3u);
  EXPECT_EQ(idx.files[0].path, "a/x.bin");
  EXPECT_EQ(idx.files[0].mode, 0755u);
  EXPECT_EQ(idx.files[0].sha256, bundle::sha256_hex("xx", 2));
  EXPECT_EQ(one.substr(static_cast<std::size_t>(idx.files[0].offset), 2), "xx");
  EXPECT_EQ(one.substr(static_cast<std::size_t>(idx.files[1].offset), 3), "bee");
  EXPECT_EQ(idx.files[2].size, 0u);
  EXPECT_EQ(idx.deletes, (std::vector<std::string>{"old/dir", "z"}));
  EXPECT_EQ(idx.total_size, one.size());
}

TEST(BundleFormat, BadPathsAreNamed) {
  EXPECT_EQ(bundle::check_path("lib/main.py"), "");
  EXPECT_EQ(bundle::check_path(".config/x"), "");
  EXPECT_NE(bundle::check_path("").find("empty"), std::string::npos);
  EXPECT_NE(bundle::check_path("/etc/passwd").find("absolute"), std::string::npos);
  EXPECT_NE(bundle::check_path("a/../b").find("'..'"), std::string::npos);
  EXPECT_NE(bundle::check_path("..").find("'..'"), std::string::npos);
  EXPECT_NE(bundle::check_path("./a").find("'.'"), std::string::npos);
  EXPECT_NE(bundle::check_path("a//b").find("empty component"), std::string::npos);
  EXPECT_NE(bundle::check_path("a/").find("empty component"), std::string::npos);
  EXPECT_NE(bundle::check_path("a b").find("character"), std::string::npos);
  EXPECT_NE(bundle::check_path("a\\b").find("character"), std::string::npos);
  EXPECT_NE(bundle::check_path(std::string(300, 'a')).find("longer than 255"), std::string::npos);
  std::string out;
  EXPECT_NE(bundle::build({{"../x", 0644, ""}}, {}, out).find("'../x'"), std::string::npos);
  EXPECT_NE(bundle::build({{"a", 0644, ""}, {"a", 0644, ""}}, {}, out).find("duplicate file 'a'"),
            std::string::npos);
  EXPECT_NE(bundle::build({{"a", 0644, ""}, {"a/b", 0644, ""}}, {}, out)
                .find("'a' is also a directory of 'a/b'"),
            std::string::npos);
  EXPECT_NE(bundle::build({}, {"x", "x"}, out).find("duplicate delete 'x'"), std::string::npos);
  EXPECT_NE(bundle::build({}, {"/x"}, out).find("absolute"), std::string::npos);
  EXPECT_NE(bundle::build({{"a", 01777, ""}}, {}, out).find("mode"), std::string::npos);
}

std::string with_index(const std::string& json, const std::string& data = "") {
  std::string b = "OTAB";
  const std::uint32_t v = 1, n = static_cast<std::uint32_t>(json.size());
  for (int i = 0; i < 4; ++i) b += static_cast<char>((v >> (8 * i)) & 0xff);
  for (int i = 0; i < 4; ++i) b += static_cast<char>((n >> (8 * i)) & 0xff);
  return b + json + data;
}

TEST(BundleFormat, TruncatedAndCorruptBundlesAreNamed) {
  std::string good;
  ASSERT_EQ(bundle::build({{"a.py", 0644, "hello"}}, {}, good), "");
  bundle::Index idx;
  EXPECT_NE(bundle::parse(good.substr(0, 7), idx, false).find("header truncated: 7 of 12"),
            std::string::npos);
  EXPECT_NE(bundle::parse("XXXX" + good.substr(4), idx, false).find("magic"), std::string::npos);
  std::string v2 = good;
  v2[4] = 2;
  EXPECT_NE(bundle::parse(v2, idx, false).find("format version 2"), std::string::npos);
  EXPECT_NE(bundle::parse(good.substr(0, 20), idx, false).find("index truncated"),
            std::string::npos);
  EXPECT_NE(bundle::parse(good.substr(0, good.size() - 1), idx, false).find("its index says"),
            std::string::npos);
  std::string flipped = good;
  flipped.back() ^= 1;
  EXPECT_EQ(bundle::parse(flipped, idx, false), "");
  EXPECT_NE(bundle::parse(flipped, idx, true).find("file 'a.py': content does not match"),
            std::string::npos);
  EXPECT_NE(bundle::parse(with_index("{\"files\":[}"), idx, false).find("not valid JSON"),
            std::string::npos);
  EXPECT_NE(bundle::parse(with_index("[]"), idx, false).find("not a JSON object"),
            std::string::npos);
  EXPECT_NE(bundle::parse(with_index("{\"files\":[],\"extra\":1}"), idx, false)
                .find("unknown key 'extra'"),
            std::string::npos);
  EXPECT_NE(bundle::parse(with_index("{\"delete\":[]}"), idx, false).find("\"files\" is missing"),
            std::string::npos);
  const std::string sha(64, 'a');
  EXPECT_NE(bundle::parse(with_index("{\"files\":[{\"path\":\"x\",\"size\":1,\"sha256\":\"AB\"}]}",
                                     "z"),
                          idx, false)
                .find("files[0].sha256"),
            std::string::npos);
  EXPECT_NE(bundle::parse(with_index("{\"files\":[{\"path\":\"x\",\"size\":-1,\"sha256\":\"" +
                                     sha + "\"}]}"),
                          idx, false)
                .find("files[0].size"),
            std::string::npos);
  EXPECT_NE(bundle::parse(with_index("{\"files\":[{\"path\":\"/x\",\"size\":0,\"sha256\":\"" +
                                     sha + "\"}]}"),
                          idx, false)
                .find("files[0].path: path '/x' is absolute"),
            std::string::npos);
  EXPECT_NE(bundle::parse(with_index("{\"files\":[],\"delete\":[\"a/../../etc\"]}"), idx, false)
                .find("delete[0]"),
            std::string::npos);
  EXPECT_NE(bundle::parse(with_index("{\"files\":[{\"path\":\"x\",\"size\":0,\"mode\":4095,"
                                     "\"sha256\":\"" + sha + "\"}]}"),
                          idx, false)
                .find("files[0].mode"),
            std::string::npos);
}

// C-string pitfalls in the index: a NUL byte must never pass as a path character (the device
// opens paths with their C string, so "wifi.json\0" would name "wifi.json"), a raw NUL must not
// end the JSON early, and a member given twice must not silently mean its last value.
TEST(BundleFormat, NulBytesInPathsAreRefused) {
  const std::string nul(1, '\0');
  EXPECT_NE(bundle::check_path("wifi.json" + nul).find("character"), std::string::npos);
  EXPECT_NE(bundle::check_path(nul).find("character"), std::string::npos);
  EXPECT_NE(bundle::check_path("a" + nul + "b/c").find("character"), std::string::npos);
  // The error shows the byte escaped: the message is printed and sent as JSON text.
  EXPECT_NE(bundle::check_path("wifi.json" + nul).find("'wifi.json\\x00'"), std::string::npos)
      << bundle::check_path("wifi.json" + nul);
  std::string out;
  EXPECT_NE(bundle::build({{"wifi.json" + nul, 0644, "x"}}, {}, out).find("character"),
            std::string::npos);
  EXPECT_NE(bundle::build({}, {"certs" + nul}, out).find("character"), std::string::npos);

  // The attack as sent: JSON escapes "\u0000" into the path of a file and of a delete.
  const std::string evil = "{\"ssid\":\"evil\"}";
  const std::string sha = bundle::sha256_hex(evil.data(), evil.size());
  bundle::Index idx;
  std::string err = bundle::parse(
      with_index("{\"files\":[{\"path\":\"wifi.json\\u0000\",\"size\":" +
                     std::to_string(evil.size()) + ",\"sha256\":\"" + sha + "\"}]}",
                 evil),
      idx, true);
  EXPECT_NE(err.find("files[0].path"), std::string::npos) << err;
  EXPECT_NE(err.find("character"), std::string::npos) << err;
  EXPECT_EQ(err.find(nul), std::string::npos) << "raw NUL in the error message";
  err = bundle::parse(with_index("{\"files\":[],\"delete\":[\"certs\\u0000\"]}"), idx, false);
  EXPECT_NE(err.find("delete[0]"), std::string::npos) << err;
  EXPECT_NE(err.find("character"), std::string::npos) << err;
}

TEST(BundleFormat, RawNulByteInTheIndexIsRefused) {
  // The JSON reader stops at a raw NUL: without a check, whatever follows it inside the index
  // would be carried along unparsed.
  bundle::Index idx;
  const std::string json = std::string("{\"files\":[]}") + '\0' + "{\"files\":[{\"junk\":1}]}";
  const std::string err = bundle::parse(with_index(json), idx, false);
  EXPECT_NE(err.find("NUL byte at index offset 12"), std::string::npos) << err;
  EXPECT_NE(bundle::parse(with_index(std::string(1, '\0')), idx, false).find("NUL byte"),
            std::string::npos);
}

TEST(BundleFormat, DuplicateMembersAndDeepNestingAreRefused) {
  const std::string a = "a", b = "bb";
  const std::string sha_a = bundle::sha256_hex(a.data(), a.size());
  bundle::Index idx;
  // A path given twice: the reader would keep the last one, another decoder the first.
  std::string err = bundle::parse(
      with_index("{\"files\":[{\"path\":\"main.py\",\"path\":\"wifi.json\",\"size\":1,"
                 "\"sha256\":\"" + sha_a + "\"}]}",
                 a),
      idx, true);
  EXPECT_NE(err.find("duplicate member 'path'"), std::string::npos) << err;
  err = bundle::parse(with_index("{\"files\":[],\"files\":[]}"), idx, false);
  EXPECT_NE(err.find("duplicate member 'files'"), std::string::npos) << err;
  // Equal after unescaping is equal.
  err = bundle::parse(with_index("{\"files\":[],\"delete\":[],\"d\\u0065lete\":[\"x\"]}"), idx,
                      false);
  EXPECT_NE(err.find("duplicate member 'delete'"), std::string::npos) << err;
  // Nothing in the index nests deeper than index > files > file.
  err = bundle::parse(with_index("{\"files\":[[[{}]]]}"), idx, false);
  EXPECT_NE(err.find("nested deeper than 3"), std::string::npos) << err;
  err = bundle::parse(with_index("{\"files\":[" + std::string(100000, '[') +
                                 std::string(100000, ']') + "]}"),
                      idx, false);
  EXPECT_NE(err.find("nested deeper than 3"), std::string::npos) << err;
  // Sizes and counts.
  err = bundle::parse(with_index("{\"files\":[{\"path\":\"x\",\"size\":1.0,\"sha256\":\"" +
                                 sha_a + "\"}]}", a),
                      idx, false);
  EXPECT_NE(err.find("files[0].size"), std::string::npos) << err;
  err = bundle::parse(with_index("{\"files\":[{\"path\":\"x\",\"size\":18446744073709551616,"
                                 "\"sha256\":\"" + sha_a + "\"}]}", a),
                      idx, false);
  EXPECT_NE(err.find("files[0].size"), std::string::npos) << err;
  err = bundle::parse(with_index("{\"files\":[{\"path\":\"x\",\"size\":1,\"sha256\":\"" + sha_a +
                                 "\"},{\"path\":\"y\",\"size\":2,\"sha256\":\"" +
                                 bundle::sha256_hex(b.data(), b.size()) + "\"}]}",
                                 a + b + "extra"),
                      idx, true);
  EXPECT_NE(err.find("its index says"), std::string::npos) << err;
  // A non-ASCII path in an error is escaped, not cut in the middle of a UTF-8 sequence.
  std::string long_path;
  for (int i = 0; i < 150; ++i) long_path += "\xc3\xa9";  // é, 300 bytes
  err = bundle::check_path(long_path);
  EXPECT_NE(err.find("longer than 255"), std::string::npos) << err;
  for (char c : err) EXPECT_LT(static_cast<unsigned char>(c), 0x80) << err;
}

TEST(BundleFormat, ProtectedPathOverlap) {
  EXPECT_TRUE(bundle::paths_overlap("certs", "certs"));
  EXPECT_TRUE(bundle::paths_overlap("certs/ca.pem", "certs"));
  EXPECT_TRUE(bundle::paths_overlap("certs", "certs/ca.pem"));
  EXPECT_FALSE(bundle::paths_overlap("certs2", "certs"));
  EXPECT_FALSE(bundle::paths_overlap("certs.bak/x", "certs"));
}

// ---------------------------------------------------------------------------------------
// BundleFlash

TEST(BundleFlash, InstallsTheNewTreeWithHardLinksAndSwitchesOnActivate) {
  ota::test::TempDir tmp("bundle");
  const std::string root = tmp.path() + "/app";
  const Fixture f = make_fixture(1024);
  seed_tree(root, f.old_tree);
  {
    BundleFlash flash(config(root));
    ASSERT_EQ(flash.power_on(), PortStatus::ok) << flash.last_error();
    ImageState st;
    ASSERT_EQ(flash.read_state(st), PortStatus::ok);
    EXPECT_EQ(st.kind, ota::proto::ImageKind::bundle);
    EXPECT_STREQ(st.running_version.c_str(), "1.0.0");
    EXPECT_GT(st.free_bytes, f.bytes.size());
    EXPECT_EQ(snapshot(root + "/current/"), f.old_tree);  // adopted as tree a
    EXPECT_TRUE(st.running_sha256.empty()) << "the factory tree's bundle hash is unknown";
    std::string back;
    ASSERT_TRUE(install(flash, f, 1, false, &back)) << flash.last_error();
    EXPECT_EQ(back, f.bytes);
    // Activated: ROOT/current names the new tree; the old one is kept for a revert.
    EXPECT_EQ(snapshot(root + "/current/"), f.new_tree);
    EXPECT_EQ(snapshot(root + "/trees/a"), f.old_tree);
    // Unchanged and protected files are hard links to the old tree: no new space.
    for (const char* p : {"data/keep.txt", "wifi.json", "certs/ca.pem"}) {
      EXPECT_EQ(inode_of(root + "/trees/a/" + p), inode_of(root + "/trees/b/" + p)) << p;
    }
    EXPECT_NE(inode_of(root + "/trees/a/main.py"), inode_of(root + "/trees/b/main.py"));
    struct stat st_new {};
    ASSERT_EQ(::stat((root + "/trees/b/lib/new.py").c_str(), &st_new), 0);
    EXPECT_EQ(st_new.st_mode & 0777, 0755u);
  }
  BundleFlash rebooted(config(root));
  ASSERT_EQ(rebooted.power_on(), PortStatus::ok);
  ImageState st;
  rebooted.read_state(st);
  EXPECT_STREQ(st.running_version.c_str(), "2.0.0");
  EXPECT_EQ(st.slot_state, ota::proto::SlotState::pending);
  EXPECT_STREQ(st.previous_version.c_str(), "1.0.0");
  ASSERT_EQ(rebooted.confirm(), PortStatus::ok);
  rebooted.read_state(st);
  EXPECT_EQ(st.slot_state, ota::proto::SlotState::confirmed);
  EXPECT_EQ(st.security_counter, 3u);
  EXPECT_EQ(snapshot(root + "/current/"), f.new_tree);
  // The same version again: already installed. The agent compares the version and the
  // bundle's SHA-256, which boot.state keeps per tree across reboots.
  EXPECT_STREQ(st.running_version.c_str(), f.manifest.version.c_str());
  EXPECT_EQ(st.running_sha256, f.manifest.sha256.c_str());
  BundleFlash again(config(root));
  ASSERT_EQ(again.power_on(), PortStatus::ok);
  again.read_state(st);
  EXPECT_EQ(st.running_sha256, f.manifest.sha256.c_str());
}

TEST(BundleFlash, UnconfirmedTrialRevertsToTheOldTree) {
  ota::test::TempDir tmp("bundle");
  const std::string root = tmp.path() + "/app";
  const Fixture f = make_fixture(1024);
  seed_tree(root, f.old_tree);
  {
    BundleFlash flash(config(root));
    ASSERT_EQ(flash.power_on(), PortStatus::ok);
    ASSERT_TRUE(install(flash, f, 2, false)) << flash.last_error();
  }
  {
    BundleFlash trial(config(root));
    ASSERT_EQ(trial.power_on(), PortStatus::ok);
    EXPECT_EQ(snapshot(root + "/current/"), f.new_tree);
    ASSERT_EQ(trial.reject(), PortStatus::ok);  // self-test failed
  }
  BundleFlash back(config(root));
  ASSERT_EQ(back.power_on(), PortStatus::ok);
  ImageState st;
  back.read_state(st);
  EXPECT_STREQ(st.running_version.c_str(), "1.0.0");
  EXPECT_EQ(st.slot_state, ota::proto::SlotState::rolled_back);
  EXPECT_EQ(snapshot(root + "/current/"), f.old_tree);
}

TEST(BundleFlash, ABundleTouchingAProtectedPathIsRefusedAndNothingChanges) {
  ota::test::TempDir tmp("bundle");
  const std::string root = tmp.path() + "/app";
  const Fixture f = make_fixture(1024);
  seed_tree(root, f.old_tree);
  struct Case {
    std::vector<bundle::InputFile> files;
    std::vector<std::string> deletes;
    std::string expect;
  };
  const std::vector<Case> cases = {
      {{{"wifi.json", 0644, "{\"ssid\":\"evil\"}"}}, {}, "writes 'wifi.json'"},
      {{{"certs/ca.pem", 0644, "x"}}, {}, "protected path 'certs'"},
      {{{"main.py", 0644, "x"}}, {"certs"}, "deletes 'certs'"},
      {{{"certs", 0644, "x"}}, {}, "writes 'certs'"},
  };
  BundleFlash flash(config(root));
  ASSERT_EQ(flash.power_on(), PortStatus::ok);
  for (const auto& c : cases) {
    Fixture bad = f;
    ASSERT_EQ(bundle::build(c.files, c.deletes, bad.bytes), "");
    bad.manifest.size = bad.bytes.size();
    EXPECT_FALSE(install(flash, bad, 3, false)) << c.expect;
    EXPECT_NE(flash.last_error().find(c.expect), std::string::npos) << flash.last_error();
    EXPECT_NE(flash.last_error().find("protected path"), std::string::npos) << flash.last_error();
    ASSERT_EQ(flash.abort(), PortStatus::ok);
    EXPECT_EQ(snapshot(root + "/current/"), f.old_tree);
    EXPECT_EQ(snapshot(root + "/trees/b"), Tree{});
  }
  ImageState st;
  flash.read_state(st);
  EXPECT_STREQ(st.running_version.c_str(), "1.0.0");
}

// The attack from the field: a file "wifi.json\0" passed the path and protected-path checks, the
// device opened it as "wifi.json" with O_TRUNC, and since the new tree hard-links the running
// tree's file, the running (protected) file was overwritten in both trees. The bundle must be
// refused before anything is written, and the protected file must stay as it was.
TEST(BundleFlash, ABundlePathWithANulByteNeverTouchesTheProtectedFile) {
  ota::test::TempDir tmp("bundle");
  const std::string root = tmp.path() + "/app";
  const Fixture f = make_fixture(1024);
  seed_tree(root, f.old_tree);
  const std::string evil = "{\"ssid\":\"evil\",\"psk\":\"attacker\"}";
  Fixture bad = f;
  bad.bytes = with_index("{\"delete\":[],\"files\":[{\"mode\":420,\"path\":\"wifi.json\\u0000\","
                         "\"sha256\":\"" + bundle::sha256_hex(evil.data(), evil.size()) +
                             "\",\"size\":" + std::to_string(evil.size()) + "}]}",
                         evil);
  bad.manifest.size = bad.bytes.size();
  const std::string sha = bundle::sha256_hex(bad.bytes.data(), bad.bytes.size());
  bad.manifest.sha256.assign(sha.c_str());
  bad.manifest.image.assign(sha.substr(0, 16).c_str());
  {
    BundleFlash flash(config(root));
    ASSERT_EQ(flash.power_on(), PortStatus::ok);
    EXPECT_FALSE(install(flash, bad, 4, false)) << "the bundle was installed";
    EXPECT_NE(flash.last_error().find("files[0].path"), std::string::npos) << flash.last_error();
    EXPECT_NE(flash.last_error().find("character"), std::string::npos) << flash.last_error();
    flash.abort();
    EXPECT_EQ(snapshot(root + "/trees/a"), f.old_tree);
  }
  BundleFlash rebooted(config(root));
  ASSERT_EQ(rebooted.power_on(), PortStatus::ok);
  rebooted.reject();  // had it been activated: revert; the running file must still be intact
  BundleFlash again(config(root));
  ASSERT_EQ(again.power_on(), PortStatus::ok);
  EXPECT_EQ(snapshot(root + "/current/"), f.old_tree);
  EXPECT_EQ(snapshot(root + "/current/").at("wifi.json"), f.old_tree.at("wifi.json"));
}

TEST(BundleFlash, ChunksBeforeTheIndexAreHeldAndAResumeKeepsThem) {
  ota::test::TempDir tmp("bundle");
  const std::string root = tmp.path() + "/app";
  const Fixture f = make_fixture(256, 40);  // an index of several chunks
  bundle::Index idx;
  ASSERT_EQ(bundle::parse(f.bytes, idx, true), "");
  ASSERT_GT(idx.data_offset, 3u * 256u);
  seed_tree(root, f.old_tree);
  const std::uint32_t n = f.manifest.chunk_count();
  auto put = [&](BundleFlash& fl, std::uint32_t i) {
    const std::size_t off = std::size_t{i} * 256;
    const std::size_t len = std::min<std::size_t>(256, f.bytes.size() - off);
    return fl.write(static_cast<std::uint32_t>(off),
                    reinterpret_cast<const std::uint8_t*>(f.bytes.data() + off), len);
  };
  {
    BundleFlash flash(config(root));
    ASSERT_EQ(flash.power_on(), PortStatus::ok);
    ASSERT_EQ(flash.begin(f.manifest, false), PortStatus::ok);
    // Last chunks first, chunk 0 never: everything waits for the index.
    for (std::uint32_t i = n - 1; i >= 2; --i) ASSERT_EQ(put(flash, i), PortStatus::ok) << i;
    std::uint8_t b[16];
    ASSERT_EQ(flash.read(static_cast<std::uint32_t>((n - 1) * 256), b, 1), PortStatus::ok);
    EXPECT_EQ(b[0], static_cast<std::uint8_t>(f.bytes[(n - 1) * 256]));
    ASSERT_EQ(flash.sync(), PortStatus::ok);  // the agent's checkpoint: now durable
  }
  {  // power lost before the index was complete: the spilled chunks come back
    BundleFlash flash(config(root));
    ASSERT_EQ(flash.power_on(), PortStatus::ok);
    ASSERT_EQ(flash.begin(f.manifest, true), PortStatus::ok) << flash.last_error();
    ASSERT_EQ(put(flash, 1), PortStatus::ok);
    ASSERT_EQ(put(flash, 0), PortStatus::ok) << flash.last_error();  // index complete
    ASSERT_EQ(flash.sync(), PortStatus::ok);
    EXPECT_EQ(snapshot(root + "/trees/b").count("pkg/module_with_a_long_name_039.py"), 1u);
  }
  BundleFlash flash(config(root));
  ASSERT_EQ(flash.power_on(), PortStatus::ok);
  ASSERT_EQ(flash.begin(f.manifest, true), PortStatus::ok) << flash.last_error();
  std::string back(f.bytes.size(), '\0');
  ASSERT_EQ(flash.read(0, reinterpret_cast<std::uint8_t*>(&back[0]), back.size()), PortStatus::ok);
  EXPECT_EQ(back, f.bytes);
  ASSERT_EQ(flash.finish(f.manifest), PortStatus::ok) << flash.last_error();
  ASSERT_EQ(flash.activate(f.manifest), PortStatus::ok);
  Tree want = f.new_tree;
  EXPECT_EQ(snapshot(root + "/current/"), want);
}

TEST(BundleFlash, SpillIsBounded) {
  ota::test::TempDir tmp("bundle");
  const std::string root = tmp.path() + "/app";
  const Fixture f = make_fixture(1024);
  seed_tree(root, f.old_tree);
  BundleFlashConfig c = config(root);
  c.max_spill_bytes = 2048;
  BundleFlash flash(c);
  ASSERT_EQ(flash.power_on(), PortStatus::ok);
  ASSERT_EQ(flash.begin(f.manifest, false), PortStatus::ok);
  const auto* p = reinterpret_cast<const std::uint8_t*>(f.bytes.data());
  ASSERT_EQ(flash.write(4096, p + 4096, 1024), PortStatus::ok);
  ASSERT_EQ(flash.write(5120, p + 5120, 1024), PortStatus::ok);
  EXPECT_EQ(flash.write(6144, p + 6144, 1024), PortStatus::error);
  EXPECT_NE(flash.last_error().find("before the bundle index was complete"), std::string::npos);
}

TEST(BundleFlash, AFileThatDoesNotMatchItsHashFailsFinishAndTheOldTreeStays) {
  ota::test::TempDir tmp("bundle");
  const std::string root = tmp.path() + "/app";
  const Fixture f = make_fixture(1024);
  seed_tree(root, f.old_tree);
  {
    BundleFlash flash(config(root));
    ASSERT_EQ(flash.power_on(), PortStatus::ok);
    ASSERT_EQ(flash.begin(f.manifest, false), PortStatus::ok);
    for (std::size_t off = 0; off < f.bytes.size(); off += 1024) {
      const std::size_t len = std::min<std::size_t>(1024, f.bytes.size() - off);
      ASSERT_EQ(flash.write(static_cast<std::uint32_t>(off),
                            reinterpret_cast<const std::uint8_t*>(f.bytes.data() + off), len),
                PortStatus::ok);
    }
    ASSERT_EQ(flash.sync(), PortStatus::ok);
    // The flash changes one byte of one file after it was written (bit rot, a bad block).
    const int fd = ::open((root + "/trees/b/lib/util.py").c_str(), O_WRONLY);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::pwrite(fd, "X", 1, 3), 1);
    ::close(fd);
    EXPECT_EQ(flash.finish(f.manifest), PortStatus::error);
    EXPECT_NE(flash.last_error().find("file 'lib/util.py' does not match the bundle index (sha256)"),
              std::string::npos)
        << flash.last_error();
    EXPECT_NE(flash.activate(f.manifest), PortStatus::ok);  // never bootable
    ASSERT_EQ(flash.abort(), PortStatus::ok);
  }
  BundleFlash rebooted(config(root));
  ASSERT_EQ(rebooted.power_on(), PortStatus::ok);
  ImageState st;
  rebooted.read_state(st);
  EXPECT_STREQ(st.running_version.c_str(), "1.0.0");
  EXPECT_EQ(snapshot(root + "/current/"), f.old_tree);
}

TEST(BundleFlash, AFirmwareManifestIsNotABundle) {
  ota::test::TempDir tmp("bundle");
  const std::string root = tmp.path() + "/app";
  Fixture f = make_fixture(1024);
  f.manifest.kind = ota::proto::ImageKind::firmware;
  BundleFlash flash(config(root));
  ASSERT_EQ(flash.power_on(), PortStatus::ok);  // factory-fresh, no tree: an empty one
  EXPECT_EQ(snapshot(root + "/current/"), Tree{});
  EXPECT_EQ(flash.begin(f.manifest, false), PortStatus::error);
  EXPECT_NE(flash.last_error().find("not a bundle"), std::string::npos);
}

// Power cut at filesystem operation k, for every k of a whole update (install, activate,
// the trial boot, confirm): after the reboot ROOT/current is exactly the old tree or exactly
// the new one, with the matching version, and the update then completes.
TEST(BundleFlash, PowerCutAtEveryOperationLeavesTheOldOrTheNewTree) {
  ota::test::TempDir tmp("bundle-power");
  const Fixture f = make_fixture(1024);
  auto fresh_root = [&](int k) {
    const std::string root = tmp.path() + "/k" + std::to_string(k);
    seed_tree(root, f.old_tree);
    BundleFlash factory(config(root));
    EXPECT_EQ(factory.power_on(), PortStatus::ok);
    return root;
  };
  // Operations of a clean run, per boot.
  std::uint64_t ops_install = 0, ops_trial = 0;
  {
    const std::string root = fresh_root(0);
    BundleFlash a(config(root));
    ASSERT_EQ(a.power_on(), PortStatus::ok);
    a.cut_power_at(0);
    ASSERT_TRUE(install(a, f, 5, false)) << a.last_error();
    ops_install = a.ops();
    BundleFlash b(config(root));
    b.cut_power_at(0);
    ASSERT_EQ(b.power_on(), PortStatus::ok);
    ASSERT_EQ(b.confirm(), PortStatus::ok);
    ops_trial = b.ops();
    ota::test::remove_tree(root);
  }
  ASSERT_GT(ops_install, 20u);
  int ended_old = 0, ended_new = 0;
  for (std::uint64_t k = 1; k <= ops_install + ops_trial; ++k) {
    SCOPED_TRACE("power cut at operation " + std::to_string(k));
    const std::string root = fresh_root(static_cast<int>(k));
    {
      BundleFlash a(config(root));
      ASSERT_EQ(a.power_on(), PortStatus::ok);
      a.cut_power_at(k);
      const bool done = install(a, f, 5, false);  // the same operations as the clean run
      if (k <= ops_install) {
        ASSERT_FALSE(done);
        ASSERT_TRUE(a.powered_off());
      } else {
        ASSERT_TRUE(done) << a.last_error();
        BundleFlash b(config(root));
        b.cut_power_at(k - ops_install);
        if (b.power_on() == PortStatus::ok) b.confirm();
        ASSERT_TRUE(b.powered_off());
      }
    }
    // Reboot. (The recovery skips fsync: only the cut run's operations are counted.)
    BundleFlashConfig fast = config(root);
    fast.durable = false;
    BundleFlash c(fast);
    ASSERT_EQ(c.power_on(), PortStatus::ok) << c.last_error();
    ImageState st;
    c.read_state(st);
    const Tree now = snapshot(root + "/current/");
    if (now == f.new_tree) {
      EXPECT_STREQ(st.running_version.c_str(), "2.0.0");
      ++ended_new;
      if (std::getenv("OTA_BUNDLE_TRACE")) std::printf("k=%llu new\n", static_cast<unsigned long long>(k));
    } else {
      ASSERT_EQ(now, f.old_tree) << "a mix of the old and the new tree";
      EXPECT_STREQ(st.running_version.c_str(), "1.0.0");
      ++ended_old;
      if (std::getenv("OTA_BUNDLE_TRACE")) std::printf("k=%llu old\n", static_cast<unsigned long long>(k));
    }
    // The agent then finishes or restarts the update.
    if (now == f.old_tree) {
      ASSERT_TRUE(install(c, f, static_cast<unsigned>(k) + 1000, true)) << c.last_error();
      BundleFlash d(fast);
      ASSERT_EQ(d.power_on(), PortStatus::ok);
      ASSERT_EQ(d.confirm(), PortStatus::ok);
    } else {
      ASSERT_EQ(c.confirm(), PortStatus::ok);
    }
    BundleFlash e(fast);
    ASSERT_EQ(e.power_on(), PortStatus::ok);
    e.read_state(st);
    EXPECT_STREQ(st.running_version.c_str(), "2.0.0");
    EXPECT_EQ(st.slot_state, ota::proto::SlotState::confirmed);
    EXPECT_EQ(snapshot(root + "/current/"), f.new_tree);
    if (!HasFailure()) ota::test::remove_tree(root);
  }
  std::printf("power cut at %llu operations (install %llu, trial boot + confirm %llu): "
              "%d ended on the old tree, %d on the new one, none mixed\n",
              static_cast<unsigned long long>(ops_install + ops_trial),
              static_cast<unsigned long long>(ops_install),
              static_cast<unsigned long long>(ops_trial), ended_old, ended_new);
  RecordProperty("cuts", static_cast<int>(ops_install + ops_trial));
  RecordProperty("ended_old", ended_old);
  RecordProperty("ended_new", ended_new);
}

}  // namespace

namespace {

// Several power cuts at random operations in one update, cuts during the recovery (power-on,
// resumed install, trial boot, confirm) included: every boot sees exactly the old or the new
// tree, and the update ends confirmed on the new one.
TEST(BundleFlash, RandomMultiplePowerCutsIncludingDuringRecovery) {
  ota::test::TempDir tmp("bundle-random");
  const Fixture f = make_fixture(1024);
  int runs = 0, boots = 0, cuts = 0;
  for (unsigned seed = 1; seed <= 300; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    const std::string root = tmp.path() + "/s" + std::to_string(seed);
    seed_tree(root, f.old_tree);
    BundleFlashConfig cfg = config(root);
    cfg.durable = false;  // the cut model is the process's view; fsync adds nothing here
    std::mt19937 rng(seed);
    int cuts_left = 1 + static_cast<int>(rng() % 4);
    bool done = false;
    for (int boot = 0; boot < 40 && !done; ++boot) {
      ++boots;
      BundleFlash flash(cfg);
      if (cuts_left > 0) flash.cut_power_at(1 + rng() % 110);
      if (flash.power_on() == PortStatus::ok) {
        const Tree now = snapshot(root + "/current/");
        ImageState st;
        flash.read_state(st);
        ASSERT_TRUE(now == f.old_tree || now == f.new_tree) << "a mix at boot " << boot;
        ASSERT_STREQ(st.running_version.c_str(), now == f.new_tree ? "2.0.0" : "1.0.0");
        if (now == f.new_tree && st.slot_state == ota::proto::SlotState::confirmed) {
          done = true;
        } else if (now == f.new_tree) {
          flash.confirm();
        } else {
          install(flash, f, seed + static_cast<unsigned>(boot), true);
        }
      }
      if (flash.powered_off()) {
        --cuts_left;
        ++cuts;
      }
    }
    ASSERT_TRUE(done) << "did not converge";
    ++runs;
    ota::test::remove_tree(root);
  }
  std::printf("%d runs, %d boots, %d power cuts: every boot saw the old or the new tree, every "
              "run ended confirmed on the new one\n",
              runs, boots, cuts);
}

}  // namespace
