// otactl status [DEPLOYMENT], deployment list | show | cancel.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "../commands.hpp"
#include "../format.hpp"

namespace otactl {

namespace {

void print_deployment(const json& d) {
  std::printf("deployment %s  state %s\n", jstr(d, "id").c_str(), jstr(d, "state").c_str());
  std::printf("image      %s (%s)\n", jstr(d, "image").c_str(), jstr(d, "version").c_str());
  std::printf("target     %s %s\n", jstr(d, "target_kind").c_str(), jstr(d, "target").c_str());
  std::printf("created    %s\n", fmt_time(jint(d, "created_at")).c_str());
  if (jint(d, "finished_at") > 0) std::printf("finished   %s\n", fmt_time(jint(d, "finished_at")).c_str());
  std::printf("progress   %s\n\n", progress_line(d).c_str());
  std::vector<std::vector<std::string>> rows;
  if (d.contains("devices"))
    for (const auto& r : d["devices"])
      rows.push_back({jstr(r, "device"), jstr(r, "state"), jstr(r, "percent") + "%",
                      fmt_bytes(jint(r, "received")) + " / " + fmt_bytes(jint(r, "total")),
                      jstr(r, "reason")});
  print_table({"DEVICE", "STATE", "PERCENT", "RECEIVED", "REASON"}, rows);
}

int cmd_deployment_list(Context& c) {
  Reply r = c.api->get("/api/v1/deployments");
  if (!r.ok) return fail(r);
  if (c.json_out) return print_json(r.body), kExitOk;
  std::vector<std::vector<std::string>> rows;
  for (const auto& d : r.body)
    rows.push_back({jstr(d, "id"), jstr(d, "image"), jstr(d, "version"),
                    jstr(d, "target_kind") + ":" + jstr(d, "target"), jstr(d, "state"),
                    std::to_string(jint(d, "percent")) + "%", counts_text(d, false),
                    cell_time(jint(d, "created_at"))});
  print_table(
      {"ID", "IMAGE", "VERSION", "TARGET", "STATE", "PROGRESS", "DEVICES", time_head("CREATED")},
      rows);
  return kExitOk;
}

int cmd_deployment_cancel(Context& c, const std::string& id) {
  Reply r = c.api->post("/api/v1/deployments/" + url_encode(id) + "/cancel", "", "application/json");
  if (!r.ok) return fail(r);
  if (c.json_out) return print_json(r.body), kExitOk;
  const std::string counts = counts_text(r.body, false);
  std::printf("deployment %s cancelled: %s\n", id.c_str(),
              counts.empty() ? "no device had started it" : counts.c_str());
  return kExitOk;
}

int cmd_status(Context& c, const std::string& dep) {
  if (!dep.empty()) return show_deployment(c, dep);
  Reply r = c.api->get("/api/v1/status");
  if (!r.ok) return fail(r);
  if (c.json_out) return print_json(r.body), kExitOk;
  const json& s = r.body;
  const json& dv = s.contains("devices") ? s["devices"] : json::object();
  std::printf("controller  mqtt %s, %lld images, %lld decode errors\n", jstr(s, "mqtt").c_str(),
              jint(s, "images"), jint(s, "decode_errors"));
  std::printf("devices     %lld total, %lld online\n", jint(dv, "total"), jint(dv, "online"));
  const json& dp = s.contains("deployments") ? s["deployments"] : json::object();
  std::printf("deployments %lld active, %lld completed, %lld cancelled\n\n", jint(dp, "active"),
              jint(dp, "completed"), jint(dp, "cancelled"));
  std::vector<std::vector<std::string>> rows;
  if (dv.contains("by_version"))
    for (auto it = dv["by_version"].begin(); it != dv["by_version"].end(); ++it)
      rows.push_back({it.key().empty() ? "(unknown)" : it.key(), it.value().dump()});
  print_table({"VERSION", "DEVICES"}, rows);
  return kExitOk;
}

}  // namespace

int show_deployment(Context& c, const std::string& id) {
  Reply r = c.api->get("/api/v1/deployments/" + url_encode(id));
  if (!r.ok) return fail(r);
  if (c.json_out) return print_json(r.body), kExitOk;
  print_deployment(r.body);
  return kExitOk;
}

void add_deployment_commands(CLI::App& app, Context& ctx) {
  auto* status = app.add_subcommand("status", "fleet summary, or one deployment's progress");
  auto status_dep = std::make_shared<std::string>();
  status->add_option("DEPLOYMENT", *status_dep, "deployment id");
  ctx.on_api(status, [&ctx, status_dep] { return cmd_status(ctx, *status_dep); });

  auto* deployment = app.add_subcommand("deployment", "manage deployments");
  deployment->require_subcommand(1);
  auto* list = deployment->add_subcommand("list", "list deployments");
  auto* show = deployment->add_subcommand("show", "show a deployment with per-device rows");
  auto* cancel = deployment->add_subcommand("cancel", "cancel a deployment");
  auto id = std::make_shared<std::string>();
  show->add_option("ID", *id, "deployment id")->required();
  cancel->add_option("ID", *id, "deployment id")->required();
  ctx.on_api(list, [&ctx] { return cmd_deployment_list(ctx); });
  ctx.on_api(show, [&ctx, id] { return show_deployment(ctx, *id); });
  ctx.on_api(cancel, [&ctx, id] { return cmd_deployment_cancel(ctx, *id); });
}

}  // namespace otactl
