// Small helpers shared by the controller's components (util.hpp, publisher.hpp,
// controller_config.hpp).
#include "ota/service/util.hpp"

#include <openssl/rand.h>

#include "ota/proto/topics.hpp"
#include "ota/service/controller_config.hpp"
#include "ota/service/log.hpp"
#include "ota/service/publisher.hpp"

namespace ota::service {

std::string random_hex(std::size_t nbytes) {
  std::vector<unsigned char> b(nbytes);
  if (RAND_bytes(b.data(), static_cast<int>(b.size())) != 1) return {};
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned char c : b) {
    out += hex[c >> 4];
    out += hex[c & 15];
  }
  return out;
}

std::string topic_for(const std::string& prefix, int kind, const std::string& id) {
  char buf[proto::kMaxTopicLen + 1];
  std::size_t n = proto::make_topic(prefix.c_str(), static_cast<proto::TopicKind>(kind), id.c_str(),
                                    buf, sizeof buf);
  return std::string(buf, n);
}

long long controller_now(const ControllerConfig& cfg) { return cfg.clock ? cfg.clock() : now_ms(); }

}  // namespace ota::service
