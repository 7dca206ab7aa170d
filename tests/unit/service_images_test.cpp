#include <gtest/gtest.h>

#include "ota/service/http_api.hpp"
#include "ota/service/images.hpp"

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
