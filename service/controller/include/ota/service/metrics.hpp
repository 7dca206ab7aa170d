// /metrics: Prometheus text as a function over a snapshot the Controller gathers. The alert
// rules (service/monitoring/ota-alerts.yml) and the Grafana dashboard use these names; the
// integration test tests/integration/ops_test.cpp checks that every name they use is served.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "ota/service/health.hpp"
#include "ota/service/inbound.hpp"
#include "ota/service/rollout_policy.hpp"
#include "ota/service/store.hpp"
#include "ota/service/views.hpp"

namespace ota::service {

// A Prometheus label value with backslash, double quote and newline escaped.
std::string prometheus_label_value(const std::string& v);

struct MetricsSnapshot {
  // Known devices by liveness, running version and update state (a row bucket, or idle).
  long long online = 0, offline = 0;
  std::map<std::string, long long> by_version, by_state;
  long long in_flight = 0;  // rows in flight
  std::uint64_t bytes_served = 0, chunks_sent = 0, decode_errors = 0, ignored_messages = 0;
  // Chunk flow control (chunk_server.hpp): the send budget in use and its limit, chunks
  // waiting for it, frames counted lost, re-requests within the resend guard.
  std::uint64_t chunk_unacked_bytes = 0, chunk_unacked_peak = 0, chunk_unacked_limit = 0,
                chunk_queued = 0, chunk_frames_lost = 0, chunk_resends_avoided = 0;
  // Broadcast (PROTOCOL.md 17): image bytes published per device topic and per image topic,
  // frames on image topics and the chunks they delivered.
  std::uint64_t chunk_unicast_bytes = 0, chunk_broadcast_bytes = 0, chunk_broadcast_frames = 0,
                chunk_broadcast_deliveries = 0, chunk_broadcast_unreadable = 0;
  std::uint64_t device_messages_queued = 0;
  // Group commits of the device-message thread and the messages they applied.
  std::uint64_t device_message_batches = 0, device_messages_batched = 0;
  std::array<std::uint64_t, kDropReasonCount> dropped{};
  // Live rollouts (running, scheduled, paused, or ended with devices still reporting).
  struct Rollout {
    RolloutRec rec;
    RolloutPolicy policy;
    std::string version;
    RolloutSummary summary;
  };
  std::vector<Rollout> rollouts;
  std::map<std::string, long long> rollouts_by_state;  // every rollout in the database
  std::size_t deployments_active = 0;
  HealthSnapshot health;
};

std::string metrics_text(const MetricsSnapshot& s);

}  // namespace ota::service
