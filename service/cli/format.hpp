// otactl's output: reading fields of the API's JSON leniently, times, sizes, percentages,
// progress bars and aligned tables.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "ota/service/states.hpp"

namespace otactl {

using nlohmann::json;

std::string join(const std::vector<std::string>& v, const std::string& sep);

// A field as text: "" when missing or null, "yes"/"no", arrays comma-joined, numbers dumped.
std::string jstr(const json& j, const char* key);
// A numeric field, 0 when missing or not a number.
long long jint(const json& j, const char* key);
double jnum(const json& j, const char* key);
bool jhas(const json& j, const char* key);  // present and not null
// An object field, or an empty object.
const json& jobj(const json& j, const char* key);

// The "state" (and "paused_by") the API returns, read at this edge with the controller's own
// parsers: nullopt (PausedBy::none) when missing or not a state this otactl knows.
std::optional<ota::service::RolloutStatus> rollout_status(const json& rollout);
std::optional<ota::service::DeploymentState> deployment_state(const json& deployment);
std::optional<ota::service::RowState> row_state(const json& row);
ota::service::PausedBy paused_by(const json& rollout);

// Times are UTC unless --local-time chose the local zone; every time shown says which.
void use_local_time(bool local);
std::string zone_name();                // "UTC", or the local zone's abbreviation ("CET")
std::string fmt_time(long long secs);   // "2026-11-26 02:00:00 UTC", "-" for <= 0
std::string cell_time(long long secs);  // the same without the zone: a column headed by time_head
std::string time_head(const std::string& head);           // "CREATED (UTC)"
std::string event_time(long long ts_ms, bool with_date);  // cell_time + ".mmm", date optional
std::string fmt_bytes(long long b);          // "512 B", "1.5 KiB", "2.0 MiB"
std::string fmt_pct(double v);               // "5%", "2.5%"
std::string bar(long long pct, int width);   // "[#####-----]"

// Columns padded to the widest cell, two spaces apart; "(none)" after the head if no rows.
void print_table(const std::vector<std::string>& head, const std::vector<std::vector<std::string>>& rows);
void print_json(const json& j);

// A deployment's device counts per state: "downloading 1  succeeded 3  not-yet-seen 2"
// (succeeded and failed always shown when `always_sf`).
std::string counts_text(const json& d, bool always_sf);
// "[#####.....]  55%  " + counts_text(d, true).
std::string progress_line(const json& d);

}  // namespace otactl
