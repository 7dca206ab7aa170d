// Where the controller sends MQTT messages (the real client, mqtt.hpp, or a recorder in
// tests), and the broker link's state as /api/v1/health and /metrics show it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

namespace ota::service {

struct LinkStatus {
  bool usable = true;     // connected and subscribed: offers and chunks can flow
  bool connected = true;  // the broker accepted the connection (CONNACK)
  std::uint64_t reconnects = 0;       // times the link became usable again after a loss
  std::uint64_t failed_attempts = 0;  // connection attempts that never became usable
  long long down_since_ms = 0;        // unix ms the link went down; 0 while usable
  long long last_outage_ms = -1;      // how long the last loss lasted; -1: none yet
  std::string last_error;             // why the link last went down or an attempt failed
  std::string broker;                 // mqtts://host:port
};

// Thread-safe: every component publishes from whichever thread it runs on.
class Publisher {
 public:
  virtual ~Publisher() = default;
  virtual bool publish(const std::string& topic, const void* data, std::size_t len, int qos,
                       bool retain) = 0;
  // False while the link is down: rollouts hold new offers instead of losing them.
  virtual bool ready() const { return true; }
  virtual LinkStatus link_status() const {
    LinkStatus s;
    s.usable = s.connected = ready();
    return s;
  }
  // Changes whenever the link to the broker was lost: messages published before are no
  // longer awaited (their `acked` callbacks will not run). 0 for a publisher without a link.
  virtual std::uint64_t link_generation() const { return 0; }
  // As publish(); `acked` runs once the broker acknowledged the message (QoS 1 PUBACK), on
  // any thread and possibly inside this call: it must not take the caller's locks.
  virtual bool publish_acked(const std::string& topic, const void* data, std::size_t len, int qos,
                             bool retain, std::function<void()> acked) {
    const bool ok = publish(topic, data, len, qos, retain);
    if (ok && acked) acked();
    return ok;
  }
};

// The topic of `kind` (a proto::TopicKind) for a device or group id under `prefix`.
std::string topic_for(const std::string& prefix, int kind, const std::string& id);

}  // namespace ota::service
