// JSON views of the HTTP API, as functions over snapshots: records from the database plus
// what the components know in memory, gathered by the Controller under their locks. No
// view takes a lock or reads a component.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "ota/service/deployments.hpp"
#include "ota/service/rollout_policy.hpp"
#include "ota/service/store.hpp"

namespace ota::service {

nlohmann::json image_view(const ImageRec& r);
nlohmann::json device_record_view(const DeviceRec& r);

// What the controller knows of a device beyond its database record.
struct DeviceLive {
  bool online = false;
  long long last_ms = 0;  // its last message (unix ms)
  std::vector<std::string> member_of;
  std::optional<Transfer> transfer;  // its deployment row in flight
};
using DeviceTags = std::map<std::string, std::string>;
nlohmann::json device_view(const DeviceRec& d, const DeviceLive& live, const DeviceTags* tags,
                           long long now);

// pending_members: known group members without a row yet (active group deployments).
nlohmann::json deployment_view(const DeploymentRec& d, const std::optional<ImageRec>& img,
                               const std::vector<RowRec>& rows, int pending_members,
                               bool with_rows);

// A rollout's progress: device counts by bucket (count_bucket) and per wave, failure rates.
struct WaveSummary {
  int devices = 0;
  std::string state;  // waiting running done cancelled
  std::map<std::string, long long> counts;  // by bucket name
  double success_rate = 0, failure_rate = 0;  // percent, one decimal
  int percent = 0;  // devices with a final result
};
struct RolloutSummary {
  std::map<std::string, long long> counts;  // by bucket name, every bucket
  std::vector<WaveSummary> waves;
  std::size_t devices = 0;
  int percent = 0;
  // Percent of the devices of the started waves with a final failure, one decimal: those
  // the policy judges (waves the operator accepted on resume left out), and all.
  double failure_total = 0, failure_all = 0;
};
RolloutSummary summarize_rollout(const RolloutRec& r, const RolloutPolicy& p,
                                 const std::vector<RowRec>& rows);
nlohmann::json rollout_view(const RolloutRec& r, const RolloutPolicy& p, const std::string& version,
                            const std::vector<RowRec>& rows, bool with_devices);

nlohmann::json events_view(const std::vector<EventRec>& events);

}  // namespace ota::service
