// DeferringPublisher: the controller's publisher as its components see it. While the
// device-message thread applies a batch of device messages in one transaction (group
// commit, inbound.hpp), whatever that thread publishes is held and sent, in order, once the
// transaction committed; if the commit fails nothing of it is sent. So a decision still
// goes out only after it is durable, as with one commit per message. Every other thread
// publishes straight through.
//
// Owns: the publishes held for the open batch.
// Threads: any thread publishes; hold(), send_held() and drop_held() run on the thread that
//   holds (the device-message thread), which alone touches the held list.
#pragma once

#include <atomic>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "ota/service/publisher.hpp"

namespace ota::service {

class DeferringPublisher final : public Publisher {
 public:
  explicit DeferringPublisher(Publisher& link) : link_(link) {}
  DeferringPublisher(const DeferringPublisher&) = delete;
  DeferringPublisher& operator=(const DeferringPublisher&) = delete;

  // While held, a publish from the holding thread returns whether the link is up (a publish
  // on a link that is down fails as it would have) and waits for send_held().
  bool publish(const std::string& topic, const void* data, std::size_t len, int qos,
               bool retain) override;
  bool publish_acked(const std::string& topic, const void* data, std::size_t len, int qos,
                     bool retain, std::function<void()> acked) override;
  bool ready() const override { return link_.ready(); }
  LinkStatus link_status() const override { return link_.link_status(); }
  std::uint64_t link_generation() const override { return link_.link_generation(); }

  // From now on this thread's publishes wait.
  void hold();
  // Publishes what waits, in order, and stops holding; returns how many failed.
  std::size_t send_held();
  // Forgets what waits (its transaction did not commit) and stops holding; returns how many.
  std::size_t drop_held();

 private:
  struct Held {
    std::string topic;
    std::string payload;
    int qos = 1;
    bool retain = false;
    bool with_ack = false;
    std::function<void()> acked;
  };
  bool holding() const { return holder_.load() == std::this_thread::get_id(); }

  Publisher& link_;
  std::atomic<std::thread::id> holder_{};
  std::vector<Held> held_;
};

}  // namespace ota::service
