// Device selectors: `site=berlin and (model=esp32 or model=esp32s3) and not beta`.
//
//   expr   := or
//   or     := and ("or" and)*
//   and    := unary ("and" unary)*
//   unary  := "not" unary | "(" expr ")" | term
//   term   := KEY "=" VALUE | KEY "!=" VALUE | KEY        (KEY alone: the tag is set)
// VALUE may end in '*' for a prefix match. Besides the operator's tags, the keys `id`, `hw`,
// `version` and `group` (membership, a device may have several) are built in.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "ota/service/result.hpp"

namespace ota::service {

struct TagSubject {
  std::string id, hw, version;
  std::vector<std::string> groups;
  std::map<std::string, std::string> tags;
};

class TagExpr {
 public:
  // Errors name the position and what was expected.
  static Result<TagExpr> parse(const std::string& text);
  bool matches(const TagSubject& s) const;
  const std::string& text() const { return text_; }

  struct Node;

 private:
  std::string text_;
  std::shared_ptr<const Node> root_;
};

bool valid_tag_key(const std::string& k);
bool valid_tag_value(const std::string& v);

}  // namespace ota::service
