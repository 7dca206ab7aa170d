#include "ota/service/deferring_publisher.hpp"

namespace ota::service {

bool DeferringPublisher::publish(const std::string& topic, const void* data, std::size_t len,
                                 int qos, bool retain) {
  if (!holding()) return link_.publish(topic, data, len, qos, retain);
  if (!link_.ready()) return false;
  held_.push_back(Held{topic, std::string(static_cast<const char*>(data), len), qos, retain, false, {}});
  return true;
}

bool DeferringPublisher::publish_acked(const std::string& topic, const void* data, std::size_t len,
                                       int qos, bool retain, std::function<void()> acked) {
  if (!holding()) return link_.publish_acked(topic, data, len, qos, retain, std::move(acked));
  if (!link_.ready()) return false;
  held_.push_back(
      Held{topic, std::string(static_cast<const char*>(data), len), qos, retain, true, std::move(acked)});
  return true;
}

void DeferringPublisher::hold() { holder_.store(std::this_thread::get_id()); }

std::size_t DeferringPublisher::send_held() {
  holder_.store(std::thread::id{});
  std::size_t failed = 0;
  for (Held& h : held_) {
    const bool ok = h.with_ack ? link_.publish_acked(h.topic, h.payload.data(), h.payload.size(),
                                                     h.qos, h.retain, std::move(h.acked))
                               : link_.publish(h.topic, h.payload.data(), h.payload.size(), h.qos,
                                               h.retain);
    if (!ok) ++failed;
  }
  held_.clear();
  return failed;
}

std::size_t DeferringPublisher::drop_held() {
  holder_.store(std::thread::id{});
  const std::size_t n = held_.size();
  held_.clear();
  return n;
}

}  // namespace ota::service
