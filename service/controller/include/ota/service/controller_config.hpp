// The controller's settings (command line, config file, tests).
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "ota/service/chunk_server.hpp"
#include "ota/service/keys.hpp"
#include "ota/service/store.hpp"

namespace ota::service {

struct ControllerConfig {
  std::string db_path;
  std::string store_dir;
  // mosquitto acl_file the broker uses; when set, group membership comes from it (re-read
  // when its mtime changes) and hello "groups" are informative only. Empty: hello claims.
  std::string acl_file;
  std::string prefix = "ota/v1";
  long long offer_ttl = 604800;
  // Lazy flush of progress/bytes_sent: a dirty row is written by the tick once it is this old
  // (and by every query first).
  long long flush_interval_ms = 1000;
  // A device is shown offline when nothing (heartbeat, event, request) arrived for this long,
  // even before the broker publishes its last will. 0: trust the last will only.
  long long heartbeat_timeout_s = 180;
  // Wall clock in unix ms; tests drive rollouts with their own. Empty: the system clock.
  std::function<long long()> clock;
  // Health: the disks holding the database and the image store must keep this much free.
  std::uint64_t min_free_bytes = 64ull * 1024 * 1024;
  // How often tick() proves the database writable when nothing else wrote (health).
  long long db_probe_interval_ms = 5000;
  // Event history kept: older / more events are deleted, except those of active
  // deployments and live rollouts. 0 = no limit of that kind.
  EventRetention event_retention{90LL * 86400 * 1000, 1000000};
  long long prune_interval_ms = 60000;
  // Per-device message budgets (token buckets): presence and events, and chunk requests (an
  // agent at full speed asks about 600 times a second with 4 KiB chunks). Messages beyond
  // them are dropped and counted (ota_device_messages_dropped_total{reason="rate_limited"}).
  double device_messages_per_s = 20, device_messages_burst = 200;
  double device_requests_per_s = 2000, device_requests_burst = 2000;
  // Offline signing and key sets (PROTOCOL.md 6.5, 6.6): the root key, release keys and the
  // signing key's role (keys.hpp).
  KeyRingConfig keys;
  // Chunk serving: the send budget and the sender threads (chunk_server.hpp).
  ChunkFlowConfig chunk_flow;
  // Device messages that write the database (hellos, events, last wills) are applied by a
  // thread of their own, in arrival order, so the MQTT network thread never waits on a
  // commit; at most this many wait their turn (then the network thread waits too: a few
  // KiB each at most, so the queue stays within tens of MiB; 10,000 devices' retained hellos
  // at start fit).
  // 0: applied by the thread that receives them (tests look at the result at once).
  std::size_t inbound_queue = 16384;
};

// The controller's clock: cfg.clock if set, else the system's (unix ms). Events, liveness,
// offer expiry and rollouts run on it; tests drive it.
long long controller_now(const ControllerConfig& cfg);

}  // namespace ota::service
