// Internal, allocation-free JSON reader and writer used by the message codecs.
//
// Reader: a jsmn-style tokenizer that fills a fixed array of tokens (no heap, bounded
// recursion). It accepts exactly one RFC 8259 value surrounded by optional white space and
// rejects: malformed input (bad_json), input that ends early (truncated), nesting deeper than
// kMaxDepth or more than kMaxTokens tokens (bad_json), duplicate keys in an object (bad_json),
// invalid UTF-8 and lone surrogates (bad_json), inputs longer than kMaxInput (bad_json).
//
// Writer: appends to a caller-supplied char buffer, escaping strings minimally (", \ and
// control characters < 0x20 as \u00XX, lower-case hex); remembers overflow.
#pragma once

#include <cstddef>
#include <cstdint>

#include "ota/proto/error.hpp"

#ifndef OTA_PROTO_JSON_MAX_TOKENS
#define OTA_PROTO_JSON_MAX_TOKENS 128  // 8 bytes each; a Doc lives on the decoder's stack
#endif

namespace ota::proto::json {

constexpr std::size_t kMaxTokens = OTA_PROTO_JSON_MAX_TOKENS;
constexpr int kMaxDepth = 8;
constexpr std::size_t kMaxInput = 65535;  // token offsets are 16-bit
static_assert(kMaxTokens >= 16 && kMaxTokens < 65535, "token indices are 16-bit");
constexpr std::uint64_t kMaxSafeInteger = 9007199254740992ull;  // 2^53

enum class Type : std::uint8_t { object, array, string, number, boolean, null };

struct Token {
  std::uint16_t start = 0;  // first byte (for strings: after the opening quote)
  std::uint16_t end = 0;    // one past the last byte (for strings: the closing quote)
  std::uint16_t next = 0;   // index of the first token after this value's subtree
  Type type = Type::null;
  std::uint8_t escaped = 0;  // strings: contains at least one backslash escape
};

struct Doc {
  const char* src = nullptr;
  std::size_t len = 0;
  std::size_t count = 0;
  Token tok[kMaxTokens];
};

// Tokenizes `in`. On success doc.tok[0] is the root value.
Error parse(const char* in, std::size_t len, Doc& doc);

// Value token of `key` in object token `obj`, or -1.
int find(const Doc& doc, int obj, const char* key);
// Number of elements (arrays) or members (objects).
std::size_t child_count(const Doc& doc, int tok);
// First element of an array / first key of an object (or tok[..].next when empty).
inline int first_child(int tok) { return tok + 1; }
inline int next_sibling(const Doc& doc, int tok) { return doc.tok[tok].next; }
// For objects: the value token of key token `key_tok`, and the next key token.
inline int member_value(int key_tok) { return key_tok + 1; }
inline int next_member(const Doc& doc, int key_tok) { return doc.tok[key_tok + 1].next; }

// Compares the decoded string token with a NUL-terminated literal.
bool string_equals(const Doc& doc, int tok, const char* lit);
// Decoded (unescaped, UTF-8) byte length of a string token.
std::size_t string_length(const Doc& doc, int tok);
// Copies the decoded string into out (capacity cap, plus room for a NUL terminator, i.e. the
// buffer must hold cap + 1 bytes). Returns false if it does not fit or contains a NUL.
bool string_copy(const Doc& doc, int tok, char* out, std::size_t cap, std::size_t& len);

// Numbers. integer_u64 returns false unless the token is a non-negative integer literal (no
// fraction, no exponent) that is <= max.
enum class NumResult : std::uint8_t { ok, not_integer, negative, overflow };
NumResult integer_u64(const Doc& doc, int tok, std::uint64_t max, std::uint64_t& out);
bool boolean_value(const Doc& doc, int tok);

// True if [s, s+len) is well-formed UTF-8 without NUL bytes (what a string field may carry).
bool valid_text(const char* s, std::size_t len);

// ---------------------------------------------------------------------------------------
class Writer {
 public:
  Writer(char* out, std::size_t cap) : out_(out), cap_(cap) {}

  void begin_object();
  void end_object();
  void begin_array();
  void end_array();
  void key(const char* k);
  void string(const char* s, std::size_t len);
  void string(const char* s);
  void uint(std::uint64_t v);
  void boolean(bool v);

  bool overflow() const { return overflow_; }
  std::size_t size() const { return pos_; }
  // NUL-terminates when there is room (not counted in size()).
  void terminate();

 private:
  void put(char c);
  void raw(const char* s, std::size_t len);
  void value_prefix();

  char* out_;
  std::size_t cap_;
  std::size_t pos_ = 0;
  bool overflow_ = false;
  int depth_ = 0;
  std::uint32_t first_ = 0;    // bit d: no element written yet at depth d
  std::uint32_t array_ = 0;    // bit d: depth d is an array
  bool after_key_ = false;
};

}  // namespace ota::proto::json
