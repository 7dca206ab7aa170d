// Topic tree build/parse.
#include <gtest/gtest.h>

#include <cstring>
#include <string>

#include "ota/proto/topics.hpp"

using namespace ota::proto;

namespace {

std::string make(const char* prefix, TopicKind k, const char* id, std::size_t cap = 192) {
  char buf[256];
  std::size_t n = make_topic(prefix, k, id, buf, cap);
  if (n == 0) return "<none>";
  EXPECT_EQ(buf[n], '\0');
  return std::string(buf, n);
}

}  // namespace

TEST(ProtoTopics, Build) {
  EXPECT_EQ(make("ota/v1", TopicKind::presence, "dev-1"), "ota/v1/dev/dev-1/up/presence");
  EXPECT_EQ(make("ota/v1", TopicKind::event, "dev-1"), "ota/v1/dev/dev-1/up/event");
  EXPECT_EQ(make("ota/v1", TopicKind::chunk_request, "dev-1"), "ota/v1/dev/dev-1/up/req");
  EXPECT_EQ(make("ota/v1", TopicKind::offer, "dev-1"), "ota/v1/dev/dev-1/down/offer");
  EXPECT_EQ(make("ota/v1", TopicKind::cancel, "dev-1"), "ota/v1/dev/dev-1/down/cancel");
  EXPECT_EQ(make("ota/v1", TopicKind::chunk, "dev-1"), "ota/v1/dev/dev-1/down/chunk");
  EXPECT_EQ(make("ota/v1", TopicKind::group_offer, "canary"), "ota/v1/grp/canary/offer");
  EXPECT_EQ(make("site7/ota/v1", TopicKind::event, "d"), "site7/ota/v1/dev/d/up/event");
  EXPECT_EQ(make(nullptr, TopicKind::event, "d"), "ota/v1/dev/d/up/event");
  EXPECT_EQ(make(kDefaultPrefix, TopicKind::unknown, "d"), "<none>");
  EXPECT_EQ(make("ota/v1", TopicKind::event, ""), "<none>");
  EXPECT_EQ(make("ota/v1", TopicKind::event, "a/b"), "<none>");
  EXPECT_EQ(make("ota/v1", TopicKind::event, "a+"), "<none>");
  EXPECT_EQ(make("ota/v1", TopicKind::event, "#"), "<none>");
  EXPECT_EQ(make("ota/v1", TopicKind::event, nullptr), "<none>");
  EXPECT_EQ(make("", TopicKind::event, "d"), "<none>");
  EXPECT_EQ(make("ota/+", TopicKind::event, "d"), "<none>");
  // Capacity includes the terminator: "ota/v1/dev/d/up/event" is 21 chars.
  EXPECT_EQ(make("ota/v1", TopicKind::event, "d", 21), "<none>");
  EXPECT_EQ(make("ota/v1", TopicKind::event, "d", 22), "ota/v1/dev/d/up/event");
}

TEST(ProtoTopics, ParseRoundTrip) {
  const TopicKind kinds[] = {TopicKind::presence, TopicKind::event,  TopicKind::chunk_request,
                             TopicKind::offer,    TopicKind::cancel, TopicKind::chunk,
                             TopicKind::group_offer};
  for (TopicKind k : kinds) {
    std::string t = make("ota/v1", k, "dev_42.x");
    const char* id = nullptr;
    std::size_t n = 0;
    EXPECT_EQ(parse_topic("ota/v1", t.c_str(), &id, &n), k) << t;
    ASSERT_NE(id, nullptr);
    EXPECT_EQ(std::string(id, n), "dev_42.x");
  }
}

TEST(ProtoTopics, ParseRejects) {
  const char* bad[] = {
      "ota/v1/dev/d/up/event/x", "ota/v1/dev/d/up", "ota/v1/dev//up/event", "ota/v1/dev/d",
      "ota/v2/dev/d/up/event",   "ota/v1x/dev/d/up/event", "xota/v1/dev/d/up/event",
      "ota/v1/grp/g/offer/x",    "ota/v1/grp//offer", "ota/v1/grp/g/cancel",
      "ota/v1/img/3f2a9c1b7d4e8f60/chunk", "ota/v1/dev/d/down/req", "ota/v1/dev/d/up/offer",
      "ota/v1", "ota/v1/", "", "ota/v1/dev/d+/up/event", "/ota/v1/dev/d/up/event",
      "ota/v1/dev/d/up/event/"};
  for (const char* t : bad) {
    const char* id = reinterpret_cast<const char*>(1);
    std::size_t n = 99;
    EXPECT_EQ(parse_topic("ota/v1", t, &id, &n), TopicKind::unknown) << t;
    EXPECT_EQ(id, nullptr);
    EXPECT_EQ(n, 0u);
  }
  EXPECT_EQ(parse_topic("ota/v1", nullptr, nullptr, nullptr), TopicKind::unknown);
  EXPECT_EQ(parse_topic("ota/v1", "ota/v1/dev/d/up/event", nullptr, nullptr), TopicKind::event);
  EXPECT_EQ(parse_topic(nullptr, "ota/v1/grp/g/offer", nullptr, nullptr), TopicKind::group_offer);
}

TEST(ProtoTopics, ValidId) {
  EXPECT_TRUE(valid_id("dev-1_A.b", 9));
  EXPECT_TRUE(valid_id(std::string(64, 'a').c_str(), 64));
  EXPECT_FALSE(valid_id(std::string(65, 'a').c_str(), 65));
  EXPECT_FALSE(valid_id("", 0));
  EXPECT_FALSE(valid_id(nullptr, 3));
  EXPECT_FALSE(valid_id("a b", 3));
  EXPECT_FALSE(valid_id("a/b", 3));
  EXPECT_FALSE(valid_id("a+", 2));
  EXPECT_FALSE(valid_id("caf\xc3\xa9", 5));
  EXPECT_TRUE(valid_id("ab/", 2));  // length-bounded
}

// Broadcast image topics (PROTOCOL.md 17): <prefix>/grp/<group>/img/<image>/chunk.
TEST(ProtoTopics, GroupImageChunkTopic) {
  char t[kMaxTopicLen];
  ASSERT_EQ(make_group_chunk_topic("ota/v1", "lab", "3f2a9c1b7d4e8f60", t, sizeof t),
            std::strlen("ota/v1/grp/lab/img/3f2a9c1b7d4e8f60/chunk"));
  EXPECT_STREQ(t, "ota/v1/grp/lab/img/3f2a9c1b7d4e8f60/chunk");
  const char* id = nullptr;
  std::size_t n = 0;
  EXPECT_EQ(parse_topic("ota/v1", t, &id, &n), TopicKind::group_chunk);
  EXPECT_EQ(std::string(id, n), "lab");
  // Not an image id, not a group, too small a buffer.
  EXPECT_EQ(make_group_chunk_topic("ota/v1", "lab", "3F2A9C1B7D4E8F60", t, sizeof t), 0u);
  EXPECT_EQ(make_group_chunk_topic("ota/v1", "lab", "3f2a9c1b7d4e8f6", t, sizeof t), 0u);
  EXPECT_EQ(make_group_chunk_topic("ota/v1", "lab", "", t, sizeof t), 0u);
  EXPECT_EQ(make_group_chunk_topic("ota/v1", "l/b", "3f2a9c1b7d4e8f60", t, sizeof t), 0u);
  EXPECT_EQ(make_group_chunk_topic("ota/v1", "+", "3f2a9c1b7d4e8f60", t, sizeof t), 0u);
  EXPECT_EQ(make_group_chunk_topic("ota/v1", "lab", "3f2a9c1b7d4e8f60", t, 20), 0u);
  for (const char* bad : {"ota/v1/grp/lab/img/3f2a9c1b7d4e8f60/chunk/x", "ota/v1/grp/lab/img/3f2a9c1b7d4e8f6/chunk",
                          "ota/v1/grp/lab/img/3f2a9c1b7d4e8f600/chunk", "ota/v1/grp/lab/img/+/chunk",
                          "ota/v1/grp/lab/img/3f2a9c1b7d4e8f60", "ota/v1/grp//img/3f2a9c1b7d4e8f60/chunk",
                          "ota/v1/dev/lab/img/3f2a9c1b7d4e8f60/chunk"}) {
    EXPECT_EQ(parse_topic("ota/v1", bad, nullptr, nullptr), TopicKind::unknown) << bad;
  }
}
