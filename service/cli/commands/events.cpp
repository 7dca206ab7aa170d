// otactl events [--rollout R] [--deployment D] [--device ID] [--limit N].
#include <CLI/CLI.hpp>
#include <algorithm>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "../commands.hpp"
#include "../format.hpp"

namespace otactl {

namespace {

// Event rows; ROLLOUT / DEPLOYMENT / DEVICE / ACTOR columns only when some event has them.
void print_events(const json& evs) {
  const char* const keys[] = {"actor", "rollout", "deployment", "device"};
  const char* const heads[] = {"ACTOR", "ROLLOUT", "DEPLOYMENT", "DEVICE"};
  bool show[4] = {false, false, false, false};
  for (const auto& e : evs)
    for (int k = 0; k < 4; ++k)
      if (!jstr(e, keys[k]).empty()) show[k] = true;
  std::vector<std::string> head{time_head("TIME")};
  for (int k = 0; k < 4; ++k)
    if (show[k]) head.push_back(heads[k]);
  head.push_back("WHAT");
  head.push_back("DETAIL");
  std::vector<std::vector<std::string>> rows;
  for (const auto& e : evs) {
    std::vector<std::string> row{event_time(jint(e, "ts"), true)};
    for (int k = 0; k < 4; ++k)
      if (show[k]) row.push_back(jstr(e, keys[k]));
    row.push_back(jstr(e, "what"));
    row.push_back(jstr(e, "detail"));
    rows.push_back(std::move(row));
  }
  print_table(head, rows);
}

struct Options {
  std::string rollout, dep, dev;
  int limit = 50;
};

}  // namespace

// The last `n` events worth an operator's eye: rollout decisions and actions, and device
// failures, declines, deferrals, timeouts and retries, not every state step of every device.
json notable_events(const json& evs, std::size_t n) {
  static const char* const kRoutine[] = {"state", "accept", "offered", "offer_resent", "hello", "late_event"};
  std::vector<json> keep;
  for (const auto& e : evs) {
    const std::string what = jstr(e, "what");
    if (!jstr(e, "device").empty()) {
      if (std::any_of(std::begin(kRoutine), std::end(kRoutine), [&](const char* w) { return what == w; }))
        continue;
      if (what == "result" && jstr(e, "detail").find("reason") == std::string::npos) continue;  // success
    }
    keep.push_back(e);
  }
  json out = json::array();
  for (std::size_t i = keep.size() > n ? keep.size() - n : 0; i < keep.size(); ++i) out.push_back(keep[i]);
  return out;
}

int show_events(Context& c, const std::string& rollout, const std::string& dep, const std::string& dev, int limit) {
  std::string q = "/api/v1/events?limit=" + std::to_string(limit);
  if (!rollout.empty()) q += "&rollout=" + url_encode(rollout);
  if (!dep.empty()) q += "&deployment=" + url_encode(dep);
  if (!dev.empty()) q += "&device=" + url_encode(dev);
  Reply r = c.api->get(q);
  if (!r.ok) return fail(r);
  if (c.json_out) return print_json(r.body), kExitOk;
  print_events(r.body);
  return kExitOk;
}

void add_events_command(CLI::App& app, Context& ctx) {
  auto o = std::make_shared<Options>();
  auto* events = app.add_subcommand("events", "event log");
  events->add_option("--rollout", o->rollout, "only this rollout");
  events->add_option("--deployment", o->dep, "only this deployment");
  events->add_option("--device", o->dev, "only this device");
  events->add_option("--limit", o->limit, "at most N events (1..10000, default 50)")->check(CLI::Range(1, 10000));
  ctx.on_api(events, [&ctx, o] { return show_events(ctx, o->rollout, o->dep, o->dev, o->limit); });
}

}  // namespace otactl
