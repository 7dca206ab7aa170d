#include "json.hpp"

#include <cstring>

namespace ota::proto::json {

namespace {

constexpr Error kBadJson{Errc::bad_json, "json"};
constexpr Error kTruncated{Errc::truncated, "json"};

bool is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
bool is_digit(char c) { return c >= '0' && c <= '9'; }

int hex_val(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Iterates over the decoded bytes of a (validated) string token.
class StrIter {
 public:
  StrIter(const Doc& doc, int tok)
      : p_(doc.src + doc.tok[tok].start), e_(doc.src + doc.tok[tok].end) {}

  // Next decoded byte, or -1 at the end.
  int next() {
    if (bi_ < bn_) return buf_[bi_++];
    if (p_ >= e_) return -1;
    unsigned char c = static_cast<unsigned char>(*p_++);
    if (c != '\\') return c;
    char esc = *p_++;
    switch (esc) {
      case '"': return '"';
      case '\\': return '\\';
      case '/': return '/';
      case 'b': return '\b';
      case 'f': return '\f';
      case 'n': return '\n';
      case 'r': return '\r';
      case 't': return '\t';
      default: break;
    }
    // 'u': validated by the tokenizer.
    std::uint32_t cp = read4();
    if (cp >= 0xD800 && cp <= 0xDBFF) {
      p_ += 2;  // "\u"
      std::uint32_t lo = read4();
      cp = 0x10000u + ((cp - 0xD800u) << 10) + (lo - 0xDC00u);
    }
    bi_ = 0;
    if (cp < 0x80) {
      bn_ = 0;
      return static_cast<int>(cp);
    }
    if (cp < 0x800) {
      buf_[0] = static_cast<std::uint8_t>(0xC0u | (cp >> 6));
      buf_[1] = static_cast<std::uint8_t>(0x80u | (cp & 0x3Fu));
      bn_ = 2;
    } else if (cp < 0x10000) {
      buf_[0] = static_cast<std::uint8_t>(0xE0u | (cp >> 12));
      buf_[1] = static_cast<std::uint8_t>(0x80u | ((cp >> 6) & 0x3Fu));
      buf_[2] = static_cast<std::uint8_t>(0x80u | (cp & 0x3Fu));
      bn_ = 3;
    } else {
      buf_[0] = static_cast<std::uint8_t>(0xF0u | (cp >> 18));
      buf_[1] = static_cast<std::uint8_t>(0x80u | ((cp >> 12) & 0x3Fu));
      buf_[2] = static_cast<std::uint8_t>(0x80u | ((cp >> 6) & 0x3Fu));
      buf_[3] = static_cast<std::uint8_t>(0x80u | (cp & 0x3Fu));
      bn_ = 4;
    }
    return buf_[bi_++];
  }

 private:
  std::uint32_t read4() {
    std::uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v = (v << 4) | static_cast<std::uint32_t>(hex_val(*p_++));
    return v;
  }

  const char* p_;
  const char* e_;
  std::uint8_t buf_[4] = {};
  std::uint8_t bi_ = 0;
  std::uint8_t bn_ = 0;
};

bool keys_equal(const Doc& doc, int a, int b) {
  const Token& ta = doc.tok[a];
  const Token& tb = doc.tok[b];
  if (!ta.escaped && !tb.escaped) {
    std::size_t la = static_cast<std::size_t>(ta.end - ta.start);
    std::size_t lb = static_cast<std::size_t>(tb.end - tb.start);
    return la == lb && std::memcmp(doc.src + ta.start, doc.src + tb.start, la) == 0;
  }
  StrIter ia(doc, a);
  StrIter ib(doc, b);
  for (;;) {
    int ca = ia.next();
    int cb = ib.next();
    if (ca != cb) return false;
    if (ca < 0) return true;
  }
}

class Parser {
 public:
  Parser(const char* s, std::size_t n, Doc& doc) : s_(s), n_(n), doc_(doc) {}

  Error run() {
    doc_.src = s_;
    doc_.len = n_;
    doc_.count = 0;
    if (n_ > kMaxInput) return kBadJson;
    skip_ws();
    if (pos_ >= n_) return kTruncated;
    if (!value(1)) return err_;
    skip_ws();
    if (pos_ != n_) return kBadJson;
    return kOk;
  }

 private:
  bool fail(Error e) {
    err_ = e;
    return false;
  }
  void skip_ws() {
    while (pos_ < n_ && is_ws(s_[pos_])) ++pos_;
  }
  int add(Type t) {
    if (doc_.count >= kMaxTokens) return -1;
    int idx = static_cast<int>(doc_.count++);
    Token& tk = doc_.tok[idx];
    tk.type = t;
    tk.start = static_cast<std::uint16_t>(pos_);
    tk.end = tk.start;
    tk.next = static_cast<std::uint16_t>(doc_.count);
    tk.escaped = 0;
    return idx;
  }
  void close(int idx) {
    doc_.tok[idx].end = static_cast<std::uint16_t>(pos_);
    doc_.tok[idx].next = static_cast<std::uint16_t>(doc_.count);
  }

  bool value(int depth) {
    // pos_ < n_ and not white space
    char c = s_[pos_];
    switch (c) {
      case '{': return object(depth);
      case '[': return array(depth);
      case '"': return string();
      case 't': return literal("true", Type::boolean);
      case 'f': return literal("false", Type::boolean);
      case 'n': return literal("null", Type::null);
      default:
        if (c == '-' || is_digit(c)) return number();
        return fail(kBadJson);
    }
  }

  bool object(int depth) {
    if (depth > kMaxDepth) return fail(kBadJson);
    int idx = add(Type::object);
    if (idx < 0) return fail(kBadJson);
    ++pos_;
    skip_ws();
    if (pos_ >= n_) return fail(kTruncated);
    if (s_[pos_] == '}') {
      ++pos_;
      close(idx);
      return true;
    }
    for (;;) {
      skip_ws();
      if (pos_ >= n_) return fail(kTruncated);
      if (s_[pos_] != '"') return fail(kBadJson);
      int key = static_cast<int>(doc_.count);
      if (!string()) return false;
      for (int k = idx + 1; k < key; k = doc_.tok[k + 1].next) {
        if (keys_equal(doc_, k, key)) return fail(kBadJson);  // duplicate key
      }
      skip_ws();
      if (pos_ >= n_) return fail(kTruncated);
      if (s_[pos_] != ':') return fail(kBadJson);
      ++pos_;
      skip_ws();
      if (pos_ >= n_) return fail(kTruncated);
      if (!value(depth + 1)) return false;
      skip_ws();
      if (pos_ >= n_) return fail(kTruncated);
      if (s_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (s_[pos_] == '}') {
        ++pos_;
        close(idx);
        return true;
      }
      return fail(kBadJson);
    }
  }

  bool array(int depth) {
    if (depth > kMaxDepth) return fail(kBadJson);
    int idx = add(Type::array);
    if (idx < 0) return fail(kBadJson);
    ++pos_;
    skip_ws();
    if (pos_ >= n_) return fail(kTruncated);
    if (s_[pos_] == ']') {
      ++pos_;
      close(idx);
      return true;
    }
    for (;;) {
      skip_ws();
      if (pos_ >= n_) return fail(kTruncated);
      if (!value(depth + 1)) return false;
      skip_ws();
      if (pos_ >= n_) return fail(kTruncated);
      if (s_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (s_[pos_] == ']') {
        ++pos_;
        close(idx);
        return true;
      }
      return fail(kBadJson);
    }
  }

  bool hex4(std::uint32_t& v) {
    v = 0;
    for (int i = 0; i < 4; ++i) {
      if (pos_ >= n_) return fail(kTruncated);
      int h = hex_val(s_[pos_]);
      if (h < 0) return fail(kBadJson);
      v = (v << 4) | static_cast<std::uint32_t>(h);
      ++pos_;
    }
    return true;
  }

  bool utf8() {
    // s_[pos_] >= 0x80
    unsigned char c = static_cast<unsigned char>(s_[pos_]);
    int extra;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) {
      extra = 1;
    } else if (c >= 0xE0 && c <= 0xEF) {
      extra = 2;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      extra = 3;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else {
      return fail(kBadJson);
    }
    ++pos_;
    for (int i = 0; i < extra; ++i) {
      if (pos_ >= n_) return fail(kTruncated);
      unsigned char d = static_cast<unsigned char>(s_[pos_]);
      if (i == 0 ? (d < lo || d > hi) : (d < 0x80 || d > 0xBF)) return fail(kBadJson);
      ++pos_;
    }
    return true;
  }

  bool string() {
    ++pos_;  // opening quote
    int idx = add(Type::string);
    if (idx < 0) return fail(kBadJson);
    for (;;) {
      if (pos_ >= n_) return fail(kTruncated);
      unsigned char c = static_cast<unsigned char>(s_[pos_]);
      if (c == '"') {
        doc_.tok[idx].end = static_cast<std::uint16_t>(pos_);
        ++pos_;
        return true;
      }
      if (c < 0x20) return fail(kBadJson);
      if (c >= 0x80) {
        if (!utf8()) return false;
        continue;
      }
      if (c != '\\') {
        ++pos_;
        continue;
      }
      doc_.tok[idx].escaped = 1;
      ++pos_;
      if (pos_ >= n_) return fail(kTruncated);
      char e = s_[pos_++];
      switch (e) {
        case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
          continue;
        case 'u': break;
        default: return fail(kBadJson);
      }
      std::uint32_t cp;
      if (!hex4(cp)) return false;
      if (cp >= 0xDC00 && cp <= 0xDFFF) return fail(kBadJson);  // lone low surrogate
      if (cp >= 0xD800 && cp <= 0xDBFF) {
        if (pos_ >= n_ || (pos_ + 1 >= n_ && s_[pos_] == '\\')) return fail(kTruncated);
        if (s_[pos_] != '\\' || s_[pos_ + 1] != 'u') return fail(kBadJson);
        pos_ += 2;
        std::uint32_t lo;
        if (!hex4(lo)) return false;
        if (lo < 0xDC00 || lo > 0xDFFF) return fail(kBadJson);
      }
    }
  }

  bool digits() {  // at least one digit
    if (pos_ >= n_) return fail(kTruncated);
    if (!is_digit(s_[pos_])) return fail(kBadJson);
    while (pos_ < n_ && is_digit(s_[pos_])) ++pos_;
    return true;
  }

  bool number() {
    int idx = add(Type::number);
    if (idx < 0) return fail(kBadJson);
    if (s_[pos_] == '-') ++pos_;
    if (pos_ >= n_) return fail(kTruncated);
    if (s_[pos_] == '0') {
      ++pos_;
      if (pos_ < n_ && is_digit(s_[pos_])) return fail(kBadJson);  // leading zero
    } else if (!digits()) {
      return false;
    }
    if (pos_ < n_ && s_[pos_] == '.') {
      ++pos_;
      if (!digits()) return false;
    }
    if (pos_ < n_ && (s_[pos_] == 'e' || s_[pos_] == 'E')) {
      ++pos_;
      if (pos_ < n_ && (s_[pos_] == '+' || s_[pos_] == '-')) ++pos_;
      if (!digits()) return false;
    }
    doc_.tok[idx].end = static_cast<std::uint16_t>(pos_);
    return true;
  }

  bool literal(const char* word, Type t) {
    int idx = add(t);
    if (idx < 0) return fail(kBadJson);
    for (const char* w = word; *w; ++w) {
      if (pos_ >= n_) return fail(kTruncated);
      if (s_[pos_] != *w) return fail(kBadJson);
      ++pos_;
    }
    doc_.tok[idx].end = static_cast<std::uint16_t>(pos_);
    return true;
  }

  const char* s_;
  std::size_t n_;
  std::size_t pos_ = 0;
  Doc& doc_;
  Error err_ = kBadJson;
};

}  // namespace

Error parse(const char* in, std::size_t len, Doc& doc) {
  if (in == nullptr && len != 0) return kBadJson;
  Parser p(in, len, doc);
  return p.run();
}

int find(const Doc& doc, int obj, const char* key) {
  if (obj < 0 || doc.tok[obj].type != Type::object) return -1;
  int end = doc.tok[obj].next;
  for (int k = obj + 1; k < end; k = next_member(doc, k)) {
    if (string_equals(doc, k, key)) return k + 1;
  }
  return -1;
}

std::size_t child_count(const Doc& doc, int tok) {
  const Token& t = doc.tok[tok];
  if (t.type != Type::object && t.type != Type::array) return 0;
  std::size_t n = 0;
  int end = t.next;
  for (int c = tok + 1; c < end; c = doc.tok[c].next) {
    ++n;
    if (t.type == Type::object) c = c + 1;  // skip to the value; its next is the next key
  }
  return n;
}

bool string_equals(const Doc& doc, int tok, const char* lit) {
  const Token& t = doc.tok[tok];
  if (t.type != Type::string) return false;
  if (!t.escaped) {
    std::size_t n = static_cast<std::size_t>(t.end - t.start);
    return std::strlen(lit) == n && std::memcmp(doc.src + t.start, lit, n) == 0;
  }
  StrIter it(doc, tok);
  const unsigned char* l = reinterpret_cast<const unsigned char*>(lit);
  for (;; ++l) {
    int c = it.next();
    if (c < 0) return *l == 0;
    if (*l == 0 || c != *l) return false;
  }
}

std::size_t string_length(const Doc& doc, int tok) {
  const Token& t = doc.tok[tok];
  if (!t.escaped) return static_cast<std::size_t>(t.end - t.start);
  StrIter it(doc, tok);
  std::size_t n = 0;
  while (it.next() >= 0) ++n;
  return n;
}

bool string_copy(const Doc& doc, int tok, char* out, std::size_t cap, std::size_t& len) {
  StrIter it(doc, tok);
  std::size_t n = 0;
  for (;;) {
    int c = it.next();
    if (c < 0) break;
    if (c == 0 || n >= cap) return false;
    out[n++] = static_cast<char>(c);
  }
  out[n] = '\0';
  len = n;
  return true;
}

NumResult integer_u64(const Doc& doc, int tok, std::uint64_t max, std::uint64_t& out) {
  const Token& t = doc.tok[tok];
  const char* p = doc.src + t.start;
  const char* e = doc.src + t.end;
  for (const char* q = p; q < e; ++q) {
    if (*q == '.' || *q == 'e' || *q == 'E') return NumResult::not_integer;
  }
  if (*p == '-') {
    // "-0" is still not a valid non-negative integer literal for us.
    return NumResult::negative;
  }
  std::uint64_t v = 0;
  for (; p < e; ++p) {
    std::uint64_t d = static_cast<std::uint64_t>(*p - '0');
    if (d > max || v > (max - d) / 10) return NumResult::overflow;
    v = v * 10 + d;
  }
  out = v;
  return NumResult::ok;
}

bool boolean_value(const Doc& doc, int tok) { return doc.src[doc.tok[tok].start] == 't'; }

bool valid_text(const char* s, std::size_t len) {
  std::size_t i = 0;
  while (i < len) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c == 0) return false;
    if (c < 0x80) {
      ++i;
      continue;
    }
    int extra;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) {
      extra = 1;
    } else if (c >= 0xE0 && c <= 0xEF) {
      extra = 2;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      extra = 3;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else {
      return false;
    }
    ++i;
    for (int k = 0; k < extra; ++k, ++i) {
      if (i >= len) return false;
      unsigned char d = static_cast<unsigned char>(s[i]);
      if (k == 0 ? (d < lo || d > hi) : (d < 0x80 || d > 0xBF)) return false;
    }
  }
  return true;
}

// ---------------------------------------------------------------------------------------
void Writer::put(char c) {
  if (pos_ < cap_) {
    out_[pos_++] = c;
  } else {
    overflow_ = true;
  }
}

void Writer::raw(const char* s, std::size_t len) {
  for (std::size_t i = 0; i < len; ++i) put(s[i]);
}

void Writer::value_prefix() {
  if (after_key_) {
    after_key_ = false;
    return;
  }
  if (depth_ > 0 && (array_ >> depth_) & 1u) {
    if (!((first_ >> depth_) & 1u)) put(',');
    first_ &= ~(1u << depth_);
  }
}

void Writer::begin_object() {
  value_prefix();
  put('{');
  ++depth_;
  first_ |= 1u << depth_;
  array_ &= ~(1u << depth_);
}

void Writer::end_object() {
  --depth_;
  put('}');
}

void Writer::begin_array() {
  value_prefix();
  put('[');
  ++depth_;
  first_ |= 1u << depth_;
  array_ |= 1u << depth_;
}

void Writer::end_array() {
  --depth_;
  put(']');
}

void Writer::key(const char* k) {
  if (!((first_ >> depth_) & 1u)) put(',');
  first_ &= ~(1u << depth_);
  string(k);
  after_key_ = true;
  put(':');
}

void Writer::string(const char* s, std::size_t len) {
  static constexpr char kHex[] = "0123456789abcdef";
  value_prefix();
  put('"');
  for (std::size_t i = 0; i < len; ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c == '"' || c == '\\') {
      put('\\');
      put(static_cast<char>(c));
    } else if (c < 0x20) {
      raw("\\u00", 4);
      put(kHex[c >> 4]);
      put(kHex[c & 0xF]);
    } else {
      put(static_cast<char>(c));
    }
  }
  put('"');
}

void Writer::string(const char* s) { string(s, std::strlen(s)); }

void Writer::uint(std::uint64_t v) {
  value_prefix();
  char buf[20];
  std::size_t n = 0;
  do {
    buf[n++] = static_cast<char>('0' + v % 10);
    v /= 10;
  } while (v != 0);
  while (n > 0) put(buf[--n]);
}

void Writer::boolean(bool v) {
  value_prefix();
  if (v) {
    raw("true", 4);
  } else {
    raw("false", 5);
  }
}

void Writer::terminate() {
  if (pos_ < cap_) out_[pos_] = '\0';
}

}  // namespace ota::proto::json
