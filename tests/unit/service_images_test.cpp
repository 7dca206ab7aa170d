#include <dirent.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <string>
#include <vector>

#include "ota/service/http_api.hpp"
#include "ota/service/images.hpp"
#include "ota/service/signing.hpp"
#include "service_controller_fixture.hpp"

using namespace ota::service;

namespace {

ota::proto::ChunkRequest req(std::uint32_t first, std::uint32_t count) {
  ota::proto::ChunkRequest r;
  r.first = first;
  r.count = count;
  return r;
}

TEST(ChunkPlan, OffsetsAndLastPartialChunk) {
  // 10000 bytes in 4096-byte chunks: 0..4095, 4096..8191, 8192..9999 (1808 bytes).
  auto p = plan_chunks(10000, 4096, req(0, 3));
  ASSERT_EQ(p.size(), 3u);
  EXPECT_EQ(p[0].offset, 0u);
  EXPECT_EQ(p[0].length, 4096u);
  EXPECT_EQ(p[1].offset, 4096u);
  EXPECT_EQ(p[2].index, 2u);
  EXPECT_EQ(p[2].offset, 8192u);
  EXPECT_EQ(p[2].length, 1808u);
}

TEST(ChunkPlan, StopsAtImageEnd) {
  auto p = plan_chunks(10000, 4096, req(1, 100));
  ASSERT_EQ(p.size(), 2u);
  EXPECT_EQ(p[0].index, 1u);
  EXPECT_EQ(p[1].index, 2u);
  EXPECT_TRUE(plan_chunks(10000, 4096, req(3, 5)).empty());
  EXPECT_TRUE(plan_chunks(0, 4096, req(0, 5)).empty());
}

TEST(ChunkPlan, ExactMultipleHasNoEmptyChunk) {
  auto p = plan_chunks(8192, 4096, req(0, 10));
  ASSERT_EQ(p.size(), 2u);
  EXPECT_EQ(p[1].length, 4096u);
}

TEST(ChunkPlan, BitmapSelectsChunks) {
  auto r = req(4, 8);
  r.has_bitmap = true;
  r.bitmap[0] = 0x05;  // chunks 4 and 6
  auto p = plan_chunks(1u << 20, 256, r);
  ASSERT_EQ(p.size(), 2u);
  EXPECT_EQ(p[0].index, 4u);
  EXPECT_EQ(p[0].offset, 4u * 256u);
  EXPECT_EQ(p[1].index, 6u);
}

TEST(ImageParams, Validation) {
  ImageParams p;
  p.version = "1.2.3";
  p.hw = {"board-a"};
  EXPECT_TRUE(validate_image_params(p).ok());

  auto bad = p;
  bad.version = "1.2";
  Status s = validate_image_params(bad);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().find("'1.2'"), std::string::npos) << s.error();
  EXPECT_EQ(s.kind(), ErrKind::invalid);
  bad.version = "";
  EXPECT_FALSE(validate_image_params(bad).ok());

  bad = p;
  bad.hw = {};
  s = validate_image_params(bad);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().find("hw"), std::string::npos);
  bad.hw = {""};
  EXPECT_FALSE(validate_image_params(bad).ok());
  bad.hw = {"a/b"};
  EXPECT_FALSE(validate_image_params(bad).ok());
  bad.hw = {"a", "a"};
  EXPECT_FALSE(validate_image_params(bad).ok());
  bad.hw = {"a", "b", "c", "d", "e"};
  EXPECT_FALSE(validate_image_params(bad).ok());

  bad = p;
  bad.chunk_size = 255;
  s = validate_image_params(bad);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().find("255"), std::string::npos);
  bad.chunk_size = 65537;
  EXPECT_FALSE(validate_image_params(bad).ok());
  bad.chunk_size = 256;
  EXPECT_TRUE(validate_image_params(bad).ok());
  bad.chunk_size = 65536;
  EXPECT_TRUE(validate_image_params(bad).ok());
}

// PROTOCOL.md 15: a frame's offset is a u32, so a bigger image is refused at upload.
TEST(ImageSize, LargerThanAFrameOffsetCanAddressIsRefusedWithTheLimit) {
  EXPECT_TRUE(validate_image_size(1).ok());
  EXPECT_TRUE(validate_image_size(ota::proto::kMaxImageSize).ok());
  Status s = validate_image_size(ota::proto::kMaxImageSize + 1);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().find("4294967296 bytes"), std::string::npos) << s.error();
  EXPECT_NE(s.error().find("4294967295"), std::string::npos) << s.error();
}

TEST(RequestValidation, DeployBody) {
  auto r = parse_deploy_request(R"({"image":"1.0.0","device":"dev-1"})");
  ASSERT_TRUE(r.ok()) << r.error();
  EXPECT_EQ(r->kind, "device");
  EXPECT_EQ(r->target, "dev-1");
  r = parse_deploy_request(R"({"image":"abc","group":"lab"})");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->kind, "group");

  EXPECT_FALSE(parse_deploy_request("not json").ok());
  EXPECT_FALSE(parse_deploy_request("[]").ok());
  EXPECT_FALSE(parse_deploy_request(R"({"device":"d"})").ok());
  EXPECT_FALSE(parse_deploy_request(R"({"image":"x"})").ok());
  EXPECT_FALSE(parse_deploy_request(R"({"image":"x","device":"d","group":"g"})").ok());
  EXPECT_FALSE(parse_deploy_request(R"({"image":"x","device":"a/b"})").ok());
  EXPECT_FALSE(parse_deploy_request(R"({"image":"x","device":7})").ok());
  auto extra = parse_deploy_request(R"({"image":"x","device":"d","force":true})");
  ASSERT_FALSE(extra.ok());
  EXPECT_NE(extra.error().find("force"), std::string::npos);
}

TEST(RequestValidation, NumbersAndAddresses) {
  EXPECT_EQ(*parse_u32("n", "4096", 256, 65536), 4096u);
  EXPECT_FALSE(parse_u32("n", "-1", 0, 10).ok());
  EXPECT_FALSE(parse_u32("n", "12x", 0, 100).ok());
  EXPECT_FALSE(parse_u32("n", "", 0, 100).ok());
  EXPECT_FALSE(parse_u32("n", "99999999999", 0, 0xFFFFFFFFu).ok());
  auto e = parse_u32("chunk_size", "100", 256, 65536);
  ASSERT_FALSE(e.ok());
  EXPECT_NE(e.error().find("chunk_size"), std::string::npos);

  auto hp = parse_host_port("127.0.0.1:8080");
  ASSERT_TRUE(hp.ok());
  EXPECT_EQ(hp->host, "127.0.0.1");
  EXPECT_EQ(hp->port, 8080);
  hp = parse_host_port("[::1]:0");
  ASSERT_TRUE(hp.ok());
  EXPECT_EQ(hp->host, "::1");
  EXPECT_FALSE(parse_host_port("8080").ok());
  EXPECT_FALSE(parse_host_port(":8080").ok());
  EXPECT_FALSE(parse_host_port("h:70000").ok());
  EXPECT_TRUE(is_loopback_host("127.0.0.1"));
  EXPECT_TRUE(is_loopback_host("localhost"));
  EXPECT_TRUE(is_loopback_host("::1"));
  EXPECT_FALSE(is_loopback_host("0.0.0.0"));
  EXPECT_FALSE(is_loopback_host("192.168.1.2"));
}

}  // namespace

namespace {

// ------------------------------------------------------------------ bundles at registration
// Each attack below was registered and signed by the controller API (only otactl and the
// device checked bundles). The controller must refuse, naming the problem, everything the
// device's decoder refuses, and store nothing.

// A bundle with this index JSON and content, built by hand (the way an attacker would).
std::string bundle_with_index(const std::string& index, const std::string& content = "") {
  std::string b = "OTAB";
  const auto put_u32 = [&b](std::uint32_t v) {
    for (int i = 0; i < 4; ++i) b += static_cast<char>((v >> (8 * i)) & 0xffu);
  };
  put_u32(1);
  put_u32(static_cast<std::uint32_t>(index.size()));
  return b + index + content;
}

std::string file_entry(const std::string& json_path, std::size_t size, const std::string& sha) {
  return "{\"path\":\"" + json_path + "\",\"sha256\":\"" + sha + "\",\"size\":" +
         std::to_string(size) + "}";
}

// One file "main.py" with `content`, correctly hashed.
std::string good_bundle(const std::string& content = "print('hi')\n") {
  return bundle_with_index(
      "{\"files\":[" + file_entry("main.py", content.size(),
                                  sha256_hex(content.data(), content.size())) + "]}",
      content);
}

std::size_t bin_files_in(const std::string& dir) {
  std::size_t n = 0;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (const dirent* e = ::readdir(d)) {
      const std::string name = e->d_name;
      if (name.size() > 4 && name.compare(name.size() - 4, 4, ".bin") == 0) ++n;
    }
    ::closedir(d);
  }
  return n;
}

class BundleUploadTest : public ota::service::testing::ControllerTest {
 protected:
  // add_image with kind=bundle must fail as invalid, with an error containing `expect`, and
  // leave neither an image record nor a file in the store.
  void expect_refused(const std::string& bytes, const std::string& expect) {
    ImageParams p;
    p.version = "2.0.0";
    p.hw = {"m1"};
    p.kind = "bundle";
    auto r = ctl->add_image(bytes, p);
    ASSERT_FALSE(r.ok()) << "registered a bundle that should fail with: " << expect;
    EXPECT_EQ(r.kind(), ErrKind::invalid) << r.error();
    EXPECT_NE(r.error().find(expect), std::string::npos) << r.error();
    EXPECT_EQ(r.error().find('\0'), std::string::npos) << "raw NUL in the error";
    auto list = ctl->images_json();
    ASSERT_TRUE(list.ok());
    EXPECT_TRUE(list->empty()) << list->dump();
    EXPECT_EQ(bin_files_in(dir.file("images")), 0u);
  }
};

// The check add_image runs (validate_image), on its own: every attack, and what stays allowed.
TEST(ImageValidation, BundleBytesAreCheckedWithTheDevicesDecoder) {
  ImageParams p;
  p.version = "2.0.0";
  p.hw = {"m1"};
  p.kind = "bundle";
  EXPECT_TRUE(validate_image(good_bundle(), p).ok());
  const std::string sha = sha256_hex("x", 1);
  std::string lying = good_bundle();
  lying.back() = '!';
  const std::vector<std::pair<std::string, std::string>> attacks = {
      {bundle_with_index("{\"files\":[" + file_entry("a/../../etc/x", 1, sha) + "]}", "x"),
       "has a '..' component"},
      {bundle_with_index("{\"files\":[" + file_entry("/etc/x", 1, sha) + "]}", "x"),
       "is absolute"},
      {bundle_with_index("{\"files\":[" + file_entry("a", 1, sha) + "," + file_entry("a", 1, sha) +
                         "]}", "xx"),
       "duplicate file 'a'"},
      {bundle_with_index("{\"files\":[" + file_entry("wifi.json\\u0000", 1, sha) + "]}", "x"),
       "path 'wifi.json\\x00' has a character outside"},
      {lying, "content does not match its sha256"},
      {good_bundle() + "x", "its index says"},
      {"firmware", "header truncated"},
  };
  for (const auto& [bytes, expect] : attacks) {
    Status s = validate_image(bytes, p);
    ASSERT_FALSE(s.ok()) << expect;
    EXPECT_EQ(s.kind(), ErrKind::invalid);
    EXPECT_EQ(s.error().rfind("invalid bundle: ", 0), 0u) << s.error();
    EXPECT_NE(s.error().find(expect), std::string::npos) << s.error();
    EXPECT_FALSE(validate_bundle(bytes).ok()) << expect;
    p.kind = "firmware";  // any bytes are a firmware image
    EXPECT_TRUE(validate_image(bytes, p).ok()) << expect;
    p.kind = "bundle";
  }
  p.counter = 4294967295u;  // the parameters are checked too
  EXPECT_FALSE(validate_image(good_bundle(), p).ok());
}

TEST_F(BundleUploadTest, AValidBundleIsRegistered) {
  ImageParams p;
  p.version = "2.0.0";
  p.hw = {"m1"};
  p.kind = "bundle";
  auto r = ctl->add_image(good_bundle(), p);
  ASSERT_TRUE(r.ok()) << r.error();
  EXPECT_EQ(r->image.kind, "bundle");
}

TEST_F(BundleUploadTest, PathWithDotDotIsRefused) {
  const std::string c = "x";
  expect_refused(bundle_with_index("{\"files\":[" +
                                   file_entry("lib/../../etc/passwd", 1, sha256_hex("x", 1)) +
                                   "]}", c),
                 "invalid bundle: bundle index: files[0].path: path 'lib/../../etc/passwd' has a "
                 "'..' component");
  expect_refused(bundle_with_index("{\"files\":[],\"delete\":[\"..\"]}"), "delete[0]");
}

TEST_F(BundleUploadTest, AbsolutePathIsRefused) {
  expect_refused(bundle_with_index("{\"files\":[" + file_entry("/etc/passwd", 1, sha256_hex("x", 1)) +
                                   "]}", "x"),
                 "path '/etc/passwd' is absolute");
  expect_refused(bundle_with_index("{\"files\":[],\"delete\":[\"/\"]}"), "is absolute");
}

TEST_F(BundleUploadTest, DuplicatePathsAreRefused) {
  const std::string sha = sha256_hex("x", 1);
  expect_refused(bundle_with_index("{\"files\":[" + file_entry("a.py", 1, sha) + "," +
                                   file_entry("a.py", 1, sha) + "]}", "xx"),
                 "duplicate file 'a.py'");
  expect_refused(bundle_with_index("{\"files\":[],\"delete\":[\"old\",\"old\"]}"),
                 "duplicate delete 'old'");
  expect_refused(bundle_with_index("{\"files\":[" + file_entry("a", 1, sha) + "," +
                                   file_entry("a/b", 1, sha) + "]}", "xx"),
                 "'a' is also a directory of 'a/b'");
  // One object with "path" twice: one decoder keeps the first, another the last.
  expect_refused(bundle_with_index("{\"files\":[{\"path\":\"main.py\",\"path\":\"wifi.json\","
                                   "\"sha256\":\"" + sha + "\",\"size\":1}]}", "x"),
                 "duplicate member 'path'");
}

TEST_F(BundleUploadTest, NulByteInAPathIsRefused) {
  const std::string evil = "{\"ssid\":\"evil\"}";
  expect_refused(bundle_with_index("{\"files\":[" +
                                   file_entry("wifi.json\\u0000", evil.size(),
                                              sha256_hex(evil.data(), evil.size())) + "]}",
                                   evil),
                 "files[0].path: path 'wifi.json\\x00' has a character outside");
  expect_refused(bundle_with_index("{\"files\":[],\"delete\":[\"certs\\u0000\"]}"),
                 "delete[0]: path 'certs\\x00'");
}

TEST_F(BundleUploadTest, AFileThatDoesNotMatchItsHashIsRefused) {
  std::string lying = good_bundle("print('hi')\n");
  lying.back() = '!';
  expect_refused(lying, "file 'main.py': content does not match its sha256");
}

TEST_F(BundleUploadTest, SizesThatDoNotAddUpAreRefused) {
  expect_refused(good_bundle() + "trailing", "its index says");
  const std::string g = good_bundle();
  expect_refused(g.substr(0, g.size() - 1), "its index says");
  expect_refused(g.substr(0, 20), "bundle index truncated");
  expect_refused(g.substr(0, 7), "header truncated");
}

TEST_F(BundleUploadTest, TooManyFilesAreRefused) {
  // 65,537 real entries do not fit the 4 MiB index limit: refused by its size.
  const std::string sha = sha256_hex("", 0);
  std::string index = "{\"files\":[";
  for (int i = 0; i < 65537; ++i) {
    char name[16];
    std::snprintf(name, sizeof name, "f%05d", i);
    index += (i == 0 ? "" : ",") + file_entry(name, 0, sha);
  }
  index += "]}";
  ASSERT_GT(index.size(), 4u << 20);
  expect_refused(bundle_with_index(index), "index length " + std::to_string(index.size()) +
                                               " is outside 1..4194304");
  // The file count limit on its own (entries too short to be valid are counted first).
  std::string many = "{\"files\":[{}";
  for (int i = 1; i < 65537; ++i) many += ",{}";
  many += "]}";
  expect_refused(bundle_with_index(many), "more than 65536 files");
}

TEST_F(BundleUploadTest, SomethingThatIsNotABundleIsRefused) {
  expect_refused(ota::service::testing::bytes_of(5000), "not a bundle: magic is not \"OTAB\"");
  expect_refused(bundle_with_index("{\"files\":[],\"exec\":\"rm -rf /\"}"), "unknown key 'exec'");
  std::string v2 = good_bundle();
  v2[4] = 2;
  expect_refused(v2, "format version 2");
}

TEST_F(BundleUploadTest, FirmwareImagesAreNotParsedAsBundles) {
  auto r = ctl->add_image(ota::service::testing::bytes_of(5000), [] {
    ImageParams p;
    p.version = "2.0.0";
    p.hw = {"m1"};
    return p;
  }());
  ASSERT_TRUE(r.ok()) << r.error();
}

// ------------------------------------------------------------------ anti-rollback counter

TEST(ImageParams, CounterAboveTheBoundIsRefused) {
  ImageParams p;
  p.version = "1.2.3";
  p.hw = {"board-a"};
  p.counter = kMaxImageCounter;
  EXPECT_TRUE(validate_image_params(p).ok());
  for (std::uint32_t c : {kMaxImageCounter + 1, 4294967295u}) {
    p.counter = c;
    Status s = validate_image_params(p);
    ASSERT_FALSE(s.ok()) << c;
    EXPECT_EQ(s.kind(), ErrKind::invalid);
    EXPECT_NE(s.error().find("counter " + std::to_string(c)), std::string::npos) << s.error();
    EXPECT_NE(s.error().find(std::to_string(kMaxImageCounter)), std::string::npos) << s.error();
  }
}

TEST_F(BundleUploadTest, CounterThatBurnsTheAntiRollbackRangeIsRefused) {
  ImageParams p;
  p.version = "2.0.0";
  p.hw = {"m1"};
  p.counter = 4294967295u;
  auto r = ctl->add_image(ota::service::testing::bytes_of(5000), p);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.kind(), ErrKind::invalid);
  EXPECT_NE(r.error().find("counter 4294967295"), std::string::npos) << r.error();
  EXPECT_EQ(bin_files_in(dir.file("images")), 0u);
}

// ------------------------------------------------------------------ store permissions

mode_t mode_of(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return st.st_mode & 07777;
}

TEST(ImageStore, DirectoryIsPrivateAndImageFilesAreOwnerOnly) {
  ota::service::testing::TempDir tmp;
  const std::string dir = tmp.file("var/images");
  ASSERT_TRUE(ensure_dir(dir).ok());
  EXPECT_EQ(mode_of(dir), 0700u);
  const std::string sha(64, 'a');
  auto path = write_image_file(dir, sha, "firmware", 8);
  ASSERT_TRUE(path.ok()) << path.error();
  EXPECT_EQ(mode_of(*path), 0600u);
}

TEST(ImageStore, AnExistingWorldReadableStoreIsMadePrivate) {
  ota::service::testing::TempDir tmp;
  const std::string dir = tmp.file("images");
  ASSERT_EQ(::mkdir(dir.c_str(), 0755), 0);
  ASSERT_EQ(::chmod(dir.c_str(), 0755), 0);  // whatever the umask
  const std::string sha(64, 'b');
  const std::string old_file = image_path(dir, sha);
  {
    std::FILE* f = std::fopen(old_file.c_str(), "wb");
    ASSERT_NE(f, nullptr);
    std::fputs("firmware", f);
    std::fclose(f);
  }
  ASSERT_EQ(::chmod(old_file.c_str(), 0644), 0);
  ASSERT_TRUE(ensure_dir(dir).ok());
  EXPECT_EQ(mode_of(dir), 0700u);
  auto path = write_image_file(dir, sha, "firmware", 8);  // already there: kept, made private
  ASSERT_TRUE(path.ok()) << path.error();
  EXPECT_EQ(mode_of(*path), 0600u);
}

TEST_F(BundleUploadTest, ControllerStoreIsPrivate) {
  EXPECT_EQ(mode_of(dir.file("images")), 0700u);
  const ImageRec rec = add(ota::service::testing::bytes_of(3000), "3.0.0");
  EXPECT_EQ(mode_of(image_path(dir.file("images"), rec.sha256)), 0600u);
}

}  // namespace
