// Topic tree (see PROTOCOL.md "Topics"). The device id is always one whole topic level so
// the broker ACL can pin a device to its own subtree with the %u pattern.
//
//   <prefix>/dev/<device>/up/presence    device -> controller  hello / offline (last will)
//   <prefix>/dev/<device>/up/event       device -> controller  accept, decline, progress, status, result
//   <prefix>/dev/<device>/up/req         device -> controller  chunk requests
//   <prefix>/dev/<device>/down/offer     controller -> device  offer (signed manifest)
//   <prefix>/dev/<device>/down/cancel    controller -> device  cancel
//   <prefix>/dev/<device>/down/chunk     controller -> device  binary chunk frames
//   <prefix>/dev/<device>/down/keys      controller -> device  keys (a root-signed key set)
//   <prefix>/grp/<group>/offer           controller -> group   offer to every member
//   <prefix>/grp/<group>/img/<image>/chunk  controller -> group  broadcast chunk frames
//                                        (PROTOCOL.md 17: members downloading <image> that asked)
#pragma once

#include <cstddef>

namespace ota::proto {

constexpr const char* kDefaultPrefix = "ota/v1";
constexpr std::size_t kMaxTopicLen = 192;

enum class TopicKind : unsigned char {
  unknown = 0,
  presence,
  event,
  chunk_request,
  offer,
  cancel,
  chunk,
  group_offer,
  keys,  // .../down/keys: a key set signed by the root key (PROTOCOL.md 6.6)
  group_chunk,  // <prefix>/grp/<group>/img/<image>/chunk: broadcast frames (PROTOCOL.md 17)
};

// Builds "<prefix>/dev/<device>/<suffix>" for a device topic kind, or
// "<prefix>/grp/<device-or-group>/offer" for group_offer. Returns length, 0 if it does not
// fit in `cap` or an id is empty or contains '/', '+', '#'.
std::size_t make_topic(const char* prefix, TopicKind kind, const char* id, char* out,
                       std::size_t cap);

// Builds "<prefix>/grp/<group>/img/<image>/chunk". Returns length, 0 if it does not fit in
// `cap`, the group is not a valid id or the image is not 16 lower-case hex digits.
std::size_t make_group_chunk_topic(const char* prefix, const char* group, const char* image,
                                   char* out, std::size_t cap);

// Splits a received topic. On success sets kind and id (pointer into `topic`, not
// terminated, `id_len` bytes; for group_chunk the group, the image level is checked but not
// returned). Unknown shapes give TopicKind::unknown.
TopicKind parse_topic(const char* prefix, const char* topic, const char** id,
                      std::size_t* id_len);

// True if `id` is usable as a device id / group name: 1..kMaxIdLen chars of
// [A-Za-z0-9._-].
bool valid_id(const char* id, std::size_t len);

}  // namespace ota::proto
