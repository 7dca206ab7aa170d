#include "ota/service/tag_expr.hpp"

#include <algorithm>
#include <cctype>

namespace ota::service {

struct TagExpr::Node {
  enum class Op { and_, or_, not_, eq, ne, has } op = Op::has;
  std::shared_ptr<const Node> a, b;
  std::string key, value;
};

namespace {

bool key_char(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.';
}
bool value_char(char c) {
  return key_char(c) || c == ':' || c == '/' || c == '*' || c == '+';
}

struct Token {
  enum class Kind { word, eq, ne, lparen, rparen, end } kind = Kind::end;
  std::string text;
  std::size_t pos = 0;
};

class Parser {
 public:
  explicit Parser(const std::string& s) : s_(s) {}

  Result<std::shared_ptr<const TagExpr::Node>> parse() {
    auto lex = tokenize();
    if (!lex) return lex.err();
    auto e = parse_or();
    if (!e) return e;
    if (peek().kind != Token::Kind::end)
      return fail("unexpected '" + peek().text + "'", peek().pos);
    return e;
  }

 private:
  using NodeP = std::shared_ptr<const TagExpr::Node>;

  Err fail(const std::string& what, std::size_t pos) const {
    return invalid_err("tag expression '" + s_ + "': " + what + " at position " +
                       std::to_string(pos + 1));
  }

  Status tokenize() {
    std::size_t i = 0;
    while (i < s_.size()) {
      const char c = s_[i];
      if (std::isspace(static_cast<unsigned char>(c))) {
        ++i;
      } else if (c == '(' || c == ')') {
        toks_.push_back({c == '(' ? Token::Kind::lparen : Token::Kind::rparen, std::string(1, c), i});
        ++i;
      } else if (c == '=') {
        toks_.push_back({Token::Kind::eq, "=", i});
        ++i;
      } else if (c == '!' && i + 1 < s_.size() && s_[i + 1] == '=') {
        toks_.push_back({Token::Kind::ne, "!=", i});
        i += 2;
      } else if (value_char(c)) {
        std::size_t j = i;
        while (j < s_.size() && value_char(s_[j])) ++j;
        toks_.push_back({Token::Kind::word, s_.substr(i, j - i), i});
        i = j;
      } else {
        return fail(std::string("unexpected character '") + c + "'", i);
      }
    }
    toks_.push_back({Token::Kind::end, "end of expression", s_.size()});
    return {};
  }

  const Token& peek() const { return toks_[pos_]; }
  bool is_word(const char* w) const {
    return peek().kind == Token::Kind::word && peek().text == w;
  }

  Result<NodeP> parse_or() {
    auto l = parse_and();
    if (!l) return l;
    NodeP left = *l;
    while (is_word("or")) {
      ++pos_;
      auto r = parse_and();
      if (!r) return r;
      auto n = std::make_shared<TagExpr::Node>();
      n->op = TagExpr::Node::Op::or_;
      n->a = left;
      n->b = *r;
      left = n;
    }
    return left;
  }

  Result<NodeP> parse_and() {
    auto l = parse_unary();
    if (!l) return l;
    NodeP left = *l;
    while (is_word("and")) {
      ++pos_;
      auto r = parse_unary();
      if (!r) return r;
      auto n = std::make_shared<TagExpr::Node>();
      n->op = TagExpr::Node::Op::and_;
      n->a = left;
      n->b = *r;
      left = n;
    }
    return left;
  }

  Result<NodeP> parse_unary() {
    if (++depth_ > 64) return fail("nested too deeply", peek().pos);
    if (is_word("not")) {
      ++pos_;
      auto e = parse_unary();
      if (!e) return e;
      auto n = std::make_shared<TagExpr::Node>();
      n->op = TagExpr::Node::Op::not_;
      n->a = *e;
      --depth_;
      return NodeP(n);
    }
    if (peek().kind == Token::Kind::lparen) {
      ++pos_;
      auto e = parse_or();
      if (!e) return e;
      if (peek().kind != Token::Kind::rparen) return fail("expected ')'", peek().pos);
      ++pos_;
      --depth_;
      return e;
    }
    if (peek().kind != Token::Kind::word || is_word("and") || is_word("or"))
      return fail("expected a tag name, 'not' or '(' but found '" + peek().text + "'", peek().pos);
    auto n = std::make_shared<TagExpr::Node>();
    n->key = peek().text;
    if (!valid_tag_key(n->key)) return fail("'" + n->key + "' is not a valid tag name", peek().pos);
    ++pos_;
    if (peek().kind == Token::Kind::eq || peek().kind == Token::Kind::ne) {
      n->op = peek().kind == Token::Kind::eq ? TagExpr::Node::Op::eq : TagExpr::Node::Op::ne;
      ++pos_;
      if (peek().kind != Token::Kind::word)
        return fail("expected a value after '" + n->key + "='", peek().pos);
      n->value = peek().text;
      const std::size_t star = n->value.find('*');
      if (star != std::string::npos && star + 1 != n->value.size())
        return fail("'*' may only end a value", peek().pos + star);
      ++pos_;
    } else {
      n->op = TagExpr::Node::Op::has;
    }
    --depth_;
    return NodeP(n);
  }

  const std::string& s_;
  std::vector<Token> toks_;
  std::size_t pos_ = 0;
  int depth_ = 0;
};

bool value_matches(const std::string& pattern, const std::string& v) {
  if (!pattern.empty() && pattern.back() == '*')
    return v.compare(0, pattern.size() - 1, pattern, 0, pattern.size() - 1) == 0 &&
           v.size() >= pattern.size() - 1;
  return pattern == v;
}

// Values of `key` for a device: built-ins first, then tags.
std::vector<std::string> values_of(const TagSubject& s, const std::string& key) {
  if (key == "id") return {s.id};
  if (key == "hw") return {s.hw};
  if (key == "version") return {s.version};
  if (key == "group") return s.groups;
  auto it = s.tags.find(key);
  if (it == s.tags.end()) return {};
  return {it->second};
}

bool eval(const TagExpr::Node& n, const TagSubject& s) {
  using Op = TagExpr::Node::Op;
  switch (n.op) {
    case Op::and_: return eval(*n.a, s) && eval(*n.b, s);
    case Op::or_: return eval(*n.a, s) || eval(*n.b, s);
    case Op::not_: return !eval(*n.a, s);
    case Op::has: {
      auto v = values_of(s, n.key);
      return std::any_of(v.begin(), v.end(), [](const std::string& x) { return !x.empty(); });
    }
    case Op::eq: {
      auto v = values_of(s, n.key);
      return std::any_of(v.begin(), v.end(), [&](const std::string& x) { return value_matches(n.value, x); });
    }
    case Op::ne: {
      auto v = values_of(s, n.key);
      return std::none_of(v.begin(), v.end(), [&](const std::string& x) { return value_matches(n.value, x); });
    }
  }
  return false;
}

}  // namespace

bool valid_tag_key(const std::string& k) {
  if (k.empty() || k.size() > 64) return false;
  if (k == "and" || k == "or" || k == "not") return false;
  return std::all_of(k.begin(), k.end(), key_char);
}

bool valid_tag_value(const std::string& v) {
  if (v.size() > 128) return false;
  return std::all_of(v.begin(), v.end(), [](char c) { return value_char(c) && c != '*'; });
}

Result<TagExpr> TagExpr::parse(const std::string& text) {
  if (text.find_first_not_of(" \t") == std::string::npos)
    return invalid_err("tag expression is empty (e.g. 'site=berlin and model=esp32')");
  if (text.size() > 1024) return invalid_err("tag expression longer than 1024 characters");
  Parser p(text);
  auto root = p.parse();
  if (!root) return root.err();
  TagExpr e;
  e.text_ = text;
  e.root_ = *root;
  return e;
}

bool TagExpr::matches(const TagSubject& s) const { return root_ && eval(*root_, s); }

}  // namespace ota::service
