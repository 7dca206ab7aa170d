// Edge cases of the internal allocation-free JSON reader/writer (proto/src/json.hpp).
#include <gtest/gtest.h>

#include <cstring>
#include <string>

#include "json.hpp"

using namespace ota::proto;
using namespace ota::proto::json;

namespace {

// The Doc points into the input, so the input must outlive it: take literals only.
Error parse_str(const char* s, Doc& d) { return parse(s, std::strlen(s), d); }

Errc parse_code(const std::string& s) {
  Doc d;
  return parse(s.data(), s.size(), d).code;
}

std::string get_string(const Doc& d, int tok) {
  char buf[256];
  std::size_t len = 0;
  EXPECT_TRUE(string_copy(d, tok, buf, sizeof(buf) - 1, len));
  return std::string(buf, len);
}

}  // namespace

TEST(ProtoJson, ParsesScalarsAndContainers) {
  Doc d;
  ASSERT_TRUE(parse_str(R"( {"a":1,"b":[true,false,null,"x"],"c":{"d":-2.5e+3}} )", d).ok());
  EXPECT_EQ(d.tok[0].type, Type::object);
  EXPECT_EQ(child_count(d, 0), 3u);
  int b = find(d, 0, "b");
  ASSERT_GE(b, 0);
  EXPECT_EQ(d.tok[b].type, Type::array);
  EXPECT_EQ(child_count(d, b), 4u);
  int c = find(d, 0, "c");
  ASSERT_GE(c, 0);
  int dd = find(d, c, "d");
  ASSERT_GE(dd, 0);
  EXPECT_EQ(d.tok[dd].type, Type::number);
  EXPECT_EQ(find(d, 0, "zz"), -1);
  EXPECT_EQ(find(d, 0, "d"), -1);  // nested keys are not members of the root
  int e = first_child(b);
  EXPECT_TRUE(boolean_value(d, e));
  e = next_sibling(d, e);
  EXPECT_FALSE(boolean_value(d, e));
  e = next_sibling(d, e);
  EXPECT_EQ(d.tok[e].type, Type::null);
  e = next_sibling(d, e);
  EXPECT_EQ(get_string(d, e), "x");
  EXPECT_EQ(next_sibling(d, e), d.tok[b].next);
}

TEST(ProtoJson, EmptyContainers) {
  Doc d;
  ASSERT_TRUE(parse_str(R"({"a":[],"b":{}})", d).ok());
  EXPECT_EQ(child_count(d, find(d, 0, "a")), 0u);
  EXPECT_EQ(child_count(d, find(d, 0, "b")), 0u);
  EXPECT_EQ(child_count(d, 0), 2u);
}

TEST(ProtoJson, Escapes) {
  Doc d;
  ASSERT_TRUE(
      parse_str(R"({"s":"q\"b\\s\/n\nt\tb\bf\fr\r-\u0041\u00e9\u20ac\ud83d\ude00"})", d).ok());
  int s = find(d, 0, "s");
  std::string want = "q\"b\\s/n\nt\tb\bf\fr\r-A\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80";
  EXPECT_EQ(get_string(d, s), want);
  EXPECT_EQ(string_length(d, s), want.size());
  EXPECT_TRUE(string_equals(d, s, want.c_str()));
  EXPECT_FALSE(string_equals(d, s, "q"));
}

TEST(ProtoJson, EscapedKeysMatch) {
  Doc d;
  ASSERT_TRUE(parse_str(R"({"\u0074ype":"x"})", d).ok());
  EXPECT_GE(find(d, 0, "type"), 0);
}

TEST(ProtoJson, RejectsBadEscapesAndSurrogates) {
  EXPECT_EQ(parse_code(R"({"s":"\x"})"), Errc::bad_json);
  EXPECT_EQ(parse_code(R"({"s":"\u12g4"})"), Errc::bad_json);
  EXPECT_EQ(parse_code(R"({"s":"\ud800"})"), Errc::bad_json);
  EXPECT_EQ(parse_code(R"({"s":"\ud800\u0041"})"), Errc::bad_json);
  EXPECT_EQ(parse_code(R"({"s":"\udc00"})"), Errc::bad_json);
  EXPECT_EQ(parse_code(R"({"s":"\u12)"), Errc::truncated);
  EXPECT_EQ(parse_code(R"({"s":"\ud83d\u)"), Errc::truncated);
}

TEST(ProtoJson, RejectsRawControlCharsAndBadUtf8) {
  EXPECT_EQ(parse_code(std::string("{\"s\":\"a\nb\"}")), Errc::bad_json);
  EXPECT_EQ(parse_code(std::string("{\"s\":\"\xff\"}")), Errc::bad_json);
  EXPECT_EQ(parse_code(std::string("{\"s\":\"\xc0\xaf\"}")), Errc::bad_json);       // overlong
  EXPECT_EQ(parse_code(std::string("{\"s\":\"\xed\xa0\x80\"}")), Errc::bad_json);   // surrogate
  EXPECT_EQ(parse_code(std::string("{\"s\":\"\xf4\x90\x80\x80\"}")), Errc::bad_json);  // >10FFFF
  EXPECT_EQ(parse_code(std::string("{\"s\":\"\xe2\x82")), Errc::truncated);
  EXPECT_EQ(parse_code(std::string("{\"s\":\"\xe2\x82\xac\"}")), Errc::ok);
}

TEST(ProtoJson, NulInStringIsNotCopied) {
  Doc d;
  ASSERT_TRUE(parse_str(R"({"s":"a\u0000b"})", d).ok());
  char buf[16];
  std::size_t len = 0;
  EXPECT_FALSE(string_copy(d, find(d, 0, "s"), buf, 15, len));
}

TEST(ProtoJson, StringCopyRespectsCapacity) {
  Doc d;
  ASSERT_TRUE(parse_str(R"({"s":"abcdef"})", d).ok());
  char buf[8];
  std::size_t len = 0;
  EXPECT_FALSE(string_copy(d, find(d, 0, "s"), buf, 5, len));
  EXPECT_TRUE(string_copy(d, find(d, 0, "s"), buf, 6, len));
  EXPECT_EQ(len, 6u);
  EXPECT_STREQ(buf, "abcdef");
}

TEST(ProtoJson, DuplicateKeys) {
  EXPECT_EQ(parse_code(R"({"a":1,"a":2})"), Errc::bad_json);
  EXPECT_EQ(parse_code(R"({"a":1,"b":{"a":2},"a":3})"), Errc::bad_json);
  EXPECT_EQ(parse_code(R"({"a":1,"\u0061":2})"), Errc::bad_json);
  EXPECT_EQ(parse_code(R"({"a":1,"b":{"a":2}})"), Errc::ok);  // same key, other object
  EXPECT_EQ(parse_code(R"([{"a":1},{"a":1}])"), Errc::ok);
}

TEST(ProtoJson, Depth) {
  std::string ok8 = "[[[[[[[[1]]]]]]]]";
  std::string bad9 = "[[[[[[[[[1]]]]]]]]]";
  EXPECT_EQ(parse_code(ok8), Errc::ok);
  EXPECT_EQ(parse_code(bad9), Errc::bad_json);
  EXPECT_EQ(parse_code(R"({"a":{"b":{"c":{"d":{"e":{"f":{"g":{"h":1}}}}}}}})"), Errc::ok);
  EXPECT_EQ(parse_code(R"({"a":{"b":{"c":{"d":{"e":{"f":{"g":{"h":{}}}}}}}}})"), Errc::bad_json);
}

TEST(ProtoJson, TokenLimit) {
  std::string s = "[";
  for (std::size_t i = 0; i < kMaxTokens - 1; ++i) s += (i ? ",1" : "1");
  s += "]";
  EXPECT_EQ(parse_code(s), Errc::ok);
  s.insert(1, "1,");
  EXPECT_EQ(parse_code(s), Errc::bad_json);
}

TEST(ProtoJson, Numbers) {
  EXPECT_EQ(parse_code("0"), Errc::ok);
  EXPECT_EQ(parse_code("-0"), Errc::ok);
  EXPECT_EQ(parse_code("01"), Errc::bad_json);
  EXPECT_EQ(parse_code("-01"), Errc::bad_json);
  EXPECT_EQ(parse_code("1."), Errc::truncated);
  EXPECT_EQ(parse_code("1.x"), Errc::bad_json);
  EXPECT_EQ(parse_code("-"), Errc::truncated);
  EXPECT_EQ(parse_code("1e"), Errc::truncated);
  EXPECT_EQ(parse_code("+1"), Errc::bad_json);
  EXPECT_EQ(parse_code(".5"), Errc::bad_json);
  EXPECT_EQ(parse_code("1.5e-3"), Errc::ok);
  EXPECT_EQ(parse_code("[1,]"), Errc::bad_json);
  EXPECT_EQ(parse_code("[01]"), Errc::bad_json);
}

TEST(ProtoJson, IntegerConversion) {
  auto conv = [](const std::string& s, std::uint64_t max, std::uint64_t& v) {
    Doc d;
    EXPECT_TRUE(parse(s.data(), s.size(), d).ok()) << s;
    return integer_u64(d, 0, max, v);
  };
  std::uint64_t v = 0;
  EXPECT_EQ(conv("0", kMaxSafeInteger, v), NumResult::ok);
  EXPECT_EQ(v, 0u);
  EXPECT_EQ(conv("9007199254740992", kMaxSafeInteger, v), NumResult::ok);
  EXPECT_EQ(v, 9007199254740992u);
  EXPECT_EQ(conv("9007199254740993", kMaxSafeInteger, v), NumResult::overflow);
  EXPECT_EQ(conv("18446744073709551615", ~0ull, v), NumResult::ok);
  EXPECT_EQ(v, ~0ull);
  EXPECT_EQ(conv("18446744073709551616", ~0ull, v), NumResult::overflow);
  EXPECT_EQ(conv("99999999999999999999999", ~0ull, v), NumResult::overflow);
  EXPECT_EQ(conv("4294967295", 0xFFFFFFFFu, v), NumResult::ok);
  EXPECT_EQ(conv("4294967296", 0xFFFFFFFFu, v), NumResult::overflow);
  EXPECT_EQ(conv("-1", ~0ull, v), NumResult::negative);
  EXPECT_EQ(conv("-0", ~0ull, v), NumResult::negative);
  EXPECT_EQ(conv("1.0", ~0ull, v), NumResult::not_integer);
  EXPECT_EQ(conv("1e3", ~0ull, v), NumResult::not_integer);
  EXPECT_EQ(conv("5", 0, v), NumResult::overflow);
}

TEST(ProtoJson, TrailingGarbageAndTruncation) {
  EXPECT_EQ(parse_code("{} x"), Errc::bad_json);
  EXPECT_EQ(parse_code("{}{}"), Errc::bad_json);
  EXPECT_EQ(parse_code("{} \n\t"), Errc::ok);
  EXPECT_EQ(parse_code(""), Errc::truncated);
  EXPECT_EQ(parse_code("   "), Errc::truncated);
  EXPECT_EQ(parse_code("{"), Errc::truncated);
  EXPECT_EQ(parse_code(R"({"a")"), Errc::truncated);
  EXPECT_EQ(parse_code(R"({"a":)"), Errc::truncated);
  EXPECT_EQ(parse_code(R"({"a":tr)"), Errc::truncated);
  EXPECT_EQ(parse_code(R"({"a":trux})"), Errc::bad_json);
  EXPECT_EQ(parse_code(R"({"a":1,)"), Errc::truncated);
  EXPECT_EQ(parse_code(R"({"a" 1})"), Errc::bad_json);
  EXPECT_EQ(parse_code(R"({a:1})"), Errc::bad_json);
  EXPECT_EQ(parse_code(R"({'a':1})"), Errc::bad_json);
  EXPECT_EQ(parse_code("[1 2]"), Errc::bad_json);
}

TEST(ProtoJson, InputNotNulTerminated) {
  const char buf[] = {'{', '"', 'a', '"', ':', '1', '}', '9', '9'};
  Doc d;
  EXPECT_TRUE(parse(buf, 7, d).ok());
  EXPECT_EQ(parse(buf, 8, d).code, Errc::bad_json);
  EXPECT_EQ(parse(buf, 6, d).code, Errc::truncated);
}

TEST(ProtoJson, ValidText) {
  EXPECT_TRUE(valid_text("abc", 3));
  EXPECT_TRUE(valid_text("caf\xc3\xa9", 5));
  EXPECT_FALSE(valid_text("a\0b", 3));
  EXPECT_FALSE(valid_text("\xc3", 1));
  EXPECT_FALSE(valid_text("\xff", 1));
}

TEST(ProtoJson, WriterEscapesAndStructure) {
  char buf[128];
  Writer w(buf, sizeof(buf));
  w.begin_object();
  w.key("s");
  w.string("a\"b\\c\x01\x1f\n/\xc3\xa9");
  w.key("n");
  w.uint(18446744073709551615ull);
  w.key("a");
  w.begin_array();
  w.uint(0);
  w.boolean(true);
  w.begin_object();
  w.end_object();
  w.begin_array();
  w.end_array();
  w.boolean(false);
  w.end_array();
  w.end_object();
  ASSERT_FALSE(w.overflow());
  w.terminate();
  EXPECT_EQ(std::string(buf, w.size()),
            "{\"s\":\"a\\\"b\\\\c\\u0001\\u001f\\u000a/\xc3\xa9\",\"n\":18446744073709551615,"
            "\"a\":[0,true,{},[],false]}");
  // What the writer produces, the reader accepts and decodes back.
  Doc d;
  ASSERT_TRUE(parse(buf, w.size(), d).ok());
  EXPECT_EQ(get_string(d, find(d, 0, "s")), "a\"b\\c\x01\x1f\n/\xc3\xa9");
}

TEST(ProtoJson, WriterOverflow) {
  for (std::size_t cap = 0; cap < 9; ++cap) {
    char buf[16];
    Writer w(buf, cap);
    w.begin_object();
    w.key("ab");
    w.uint(12);
    w.end_object();
    EXPECT_TRUE(w.overflow()) << cap;  // {"ab":12} is 9 bytes
  }
  char buf[9];
  Writer w(buf, sizeof(buf));
  w.begin_object();
  w.key("ab");
  w.uint(12);
  w.end_object();
  EXPECT_FALSE(w.overflow());
  EXPECT_EQ(std::string(buf, w.size()), "{\"ab\":12}");
}
