#include "ota/proto/topics.hpp"

#include <cstring>

#include "ota/proto/messages.hpp"

namespace ota::proto {

namespace {

struct Suffix {
  TopicKind kind;
  const char* text;  // after "<prefix>/dev/<id>/"
};

constexpr Suffix kDeviceSuffixes[] = {
    {TopicKind::presence, "up/presence"}, {TopicKind::event, "up/event"},
    {TopicKind::chunk_request, "up/req"}, {TopicKind::offer, "down/offer"},
    {TopicKind::cancel, "down/cancel"},   {TopicKind::chunk, "down/chunk"},
    {TopicKind::keys, "down/keys"},
};

const char* suffix_of(TopicKind kind) {
  for (const Suffix& s : kDeviceSuffixes) {
    if (s.kind == kind) return s.text;
  }
  return nullptr;
}

class Out {
 public:
  Out(char* out, std::size_t cap) : out_(out), cap_(cap) {}
  void add(const char* s) {
    std::size_t n = std::strlen(s);
    if (!ok_ || cap_ == 0 || n > cap_ - 1 - pos_) {
      ok_ = false;
      return;
    }
    std::memcpy(out_ + pos_, s, n);
    pos_ += n;
    out_[pos_] = '\0';
  }
  std::size_t result() const { return ok_ ? pos_ : 0; }

 private:
  char* out_;
  std::size_t cap_;
  std::size_t pos_ = 0;
  bool ok_ = true;
};

bool topic_level_ok(const char* id) {
  if (id == nullptr || *id == '\0') return false;
  for (const char* p = id; *p; ++p) {
    if (*p == '/' || *p == '+' || *p == '#') return false;
  }
  return true;
}

// "img/<16 lower-case hex>/chunk", the rest of a group chunk topic after "<group>/".
bool is_image_chunk_suffix(const char* p) {
  if (std::strncmp(p, "img/", 4) != 0) return false;
  p += 4;
  for (std::size_t i = 0; i < kImageIdLen; ++i, ++p) {
    if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f'))) return false;
  }
  return std::strcmp(p, "/chunk") == 0;
}

}  // namespace

std::size_t make_group_chunk_topic(const char* prefix, const char* group, const char* image,
                                   char* out, std::size_t cap) {
  if (prefix == nullptr) prefix = kDefaultPrefix;
  if (*prefix == '\0' || out == nullptr || cap == 0 || group == nullptr || image == nullptr) return 0;
  if (!valid_id(group, std::strlen(group))) return 0;
  for (const char* p = prefix; *p; ++p) {
    if (*p == '+' || *p == '#') return 0;
  }
  Out o(out, cap);
  o.add(prefix);
  o.add("/grp/");
  o.add(group);
  o.add("/img/");
  o.add(image);
  o.add("/chunk");
  const std::size_t n = o.result();
  // The image level is checked the way a receiver parses it ("img/<image>/chunk" at the end).
  const std::size_t suffix_len = 4 + kImageIdLen + 6;
  if (std::strlen(image) != kImageIdLen || n < suffix_len) return 0;
  return is_image_chunk_suffix(out + n - suffix_len) ? n : 0;
}

std::size_t make_topic(const char* prefix, TopicKind kind, const char* id, char* out,
                       std::size_t cap) {
  if (prefix == nullptr) prefix = kDefaultPrefix;
  if (*prefix == '\0' || out == nullptr || cap == 0) return 0;
  if (!topic_level_ok(id)) return 0;
  for (const char* p = prefix; *p; ++p) {
    if (*p == '+' || *p == '#') return 0;
  }
  Out o(out, cap);
  if (kind == TopicKind::group_offer) {
    o.add(prefix);
    o.add("/grp/");
    o.add(id);
    o.add("/offer");
    return o.result();
  }
  const char* suffix = suffix_of(kind);
  if (suffix == nullptr) return 0;
  o.add(prefix);
  o.add("/dev/");
  o.add(id);
  o.add("/");
  o.add(suffix);
  return o.result();
}

TopicKind parse_topic(const char* prefix, const char* topic, const char** id,
                      std::size_t* id_len) {
  if (id != nullptr) *id = nullptr;
  if (id_len != nullptr) *id_len = 0;
  if (prefix == nullptr) prefix = kDefaultPrefix;
  if (topic == nullptr || *prefix == '\0') return TopicKind::unknown;
  std::size_t plen = std::strlen(prefix);
  if (std::strncmp(topic, prefix, plen) != 0 || topic[plen] != '/') return TopicKind::unknown;
  const char* p = topic + plen + 1;
  bool group;
  if (std::strncmp(p, "dev/", 4) == 0) {
    group = false;
  } else if (std::strncmp(p, "grp/", 4) == 0) {
    group = true;
  } else {
    return TopicKind::unknown;
  }
  p += 4;
  const char* id_start = p;
  while (*p != '\0' && *p != '/') {
    if (*p == '+' || *p == '#') return TopicKind::unknown;
    ++p;
  }
  std::size_t n = static_cast<std::size_t>(p - id_start);
  if (n == 0 || *p != '/') return TopicKind::unknown;
  ++p;  // rest is the suffix, compared exactly (so extra levels are rejected)
  TopicKind kind = TopicKind::unknown;
  if (group) {
    if (std::strcmp(p, "offer") == 0) kind = TopicKind::group_offer;
    if (is_image_chunk_suffix(p)) kind = TopicKind::group_chunk;
  } else {
    for (const Suffix& s : kDeviceSuffixes) {
      if (std::strcmp(p, s.text) == 0) {
        kind = s.kind;
        break;
      }
    }
  }
  if (kind == TopicKind::unknown) return kind;
  if (id != nullptr) *id = id_start;
  if (id_len != nullptr) *id_len = n;
  return kind;
}

bool valid_id(const char* id, std::size_t len) {
  if (id == nullptr || len == 0 || len > kMaxIdLen) return false;
  for (std::size_t i = 0; i < len; ++i) {
    char c = id[i];
    bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

}  // namespace ota::proto
