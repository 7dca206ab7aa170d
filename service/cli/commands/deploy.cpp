// otactl deploy IMAGE (--device ID | --group G) [--wait [--timeout S]].
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "../commands.hpp"
#include "../format.hpp"

namespace otactl {

namespace {

// Polls the deployment until it ends, showing its progress: 0 when every device succeeded, 1
// when one did not, 3 after `timeout_s` (0: no limit).
int wait_deployment(Context& c, const std::string& id, double timeout_s) {
  const bool tty = isatty(STDOUT_FILENO) != 0 && !c.json_out;
  std::FILE* out = c.json_out ? stderr : stdout;
  const auto start = std::chrono::steady_clock::now();
  std::string last_line, last_err;
  json d;
  for (;;) {
    Reply r = c.api->get("/api/v1/deployments/" + url_encode(id));
    if (r.ok) {
      d = r.body;
      last_err.clear();
      std::string line = progress_line(d);
      if (tty) {
        std::fprintf(out, "\r%s\033[K", line.c_str());
        std::fflush(out);
      } else if (line != last_line) {
        std::fprintf(out, "%s\n", line.c_str());
        std::fflush(out);
      }
      last_line = line;
      if (deployment_state(d) != ota::service::DeploymentState::active) break;
    } else if (r.status == 404) {
      if (tty) std::fprintf(out, "\n");
      return fail(r);
    } else if (r.error != last_err) {  // controller restarting? keep polling until the timeout
      if (tty) std::fprintf(out, "\n");
      errorf(r.error + " (still waiting)");
      last_err = r.error;
    }
    const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (timeout_s > 0 && el >= timeout_s) {
      if (tty) std::fprintf(out, "\n");
      errorf("timed out after " + std::to_string(static_cast<long long>(timeout_s)) +
             " s waiting for deployment " + id + (d.is_object() ? " (" + counts_text(d, false) + ")" : ""));
      if (c.json_out && d.is_object()) print_json(d);
      return kExitTimeout;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
  }
  if (tty) std::fprintf(out, "\n");
  if (c.json_out) print_json(d);
  std::vector<std::string> bad;
  long long ok = 0, n = 0;
  if (d.contains("devices"))
    for (const auto& row : d["devices"]) {
      ++n;
      if (row_state(row) == ota::service::RowState::succeeded) {
        ++ok;
      } else {
        std::string why = jstr(row, "reason");
        bad.push_back(jstr(row, "device") + ": " + jstr(row, "state") + (why.empty() ? "" : " (" + why + ")"));
      }
    }
  if (deployment_state(d) == ota::service::DeploymentState::completed && bad.empty()) {
    if (!c.json_out) std::printf("deployment %s completed: %lld/%lld devices succeeded\n", id.c_str(), ok, n);
    return kExitOk;
  }
  std::fprintf(stderr, "deployment %s %s: %lld/%lld devices succeeded\n", id.c_str(), jstr(d, "state").c_str(), ok, n);
  for (const auto& b : bad) std::fprintf(stderr, "  %s\n", b.c_str());
  return kExitFail;
}

int cmd_deploy(Context& c, const std::string& image, const std::string& device, const std::string& group,
               bool wait, double timeout_s) {
  json body{{"image", image}};
  if (!device.empty()) body["device"] = device;
  if (!group.empty()) body["group"] = group;
  Reply r = c.api->post("/api/v1/deployments", body.dump(), "application/json");
  if (!r.ok) return fail(r);
  const std::string id = jstr(r.body, "id");
  if (!wait) {
    if (c.json_out)
      print_json(r.body);
    else
      std::printf("deployment %s created: image %s (%s) to %s %s\n", id.c_str(), jstr(r.body, "image").c_str(),
                  jstr(r.body, "version").c_str(), jstr(r.body, "target_kind").c_str(),
                  jstr(r.body, "target").c_str());
    return kExitOk;
  }
  if (!c.json_out)
    std::printf("deployment %s created: image %s (%s) to %s %s; waiting\n", id.c_str(),
                jstr(r.body, "image").c_str(), jstr(r.body, "version").c_str(),
                jstr(r.body, "target_kind").c_str(), jstr(r.body, "target").c_str());
  std::fflush(stdout);
  return wait_deployment(c, id, timeout_s);
}

struct Options {
  std::string image, device, group;
  bool wait = false;
  double timeout_s = 1800;
};

}  // namespace

void add_deploy_command(CLI::App& app, Context& ctx) {
  auto o = std::make_shared<Options>();
  auto* deploy = app.add_subcommand("deploy", "deploy an image to a device or a group");
  deploy->add_option("IMAGE", o->image, "image id or version")->required();
  auto* o_dev = deploy->add_option("--device", o->device, "target device id");
  auto* o_grp = deploy->add_option("--group", o->group, "target group");
  o_dev->excludes(o_grp);
  o_grp->excludes(o_dev);
  auto* o_wait = deploy->add_flag("--wait", o->wait, "wait for the deployment to finish, showing progress");
  deploy->add_option("--timeout", o->timeout_s, "with --wait: give up after SECONDS (default 1800; exit 3)")
      ->needs(o_wait)
      ->check(CLI::PositiveNumber);
  ctx.on(deploy, [&ctx, o] {
    if (o->device.empty() && o->group.empty()) {
      errorf("deploy: give a target: --device ID or --group G");
      return kExitUsage;
    }
    if (int rc = ctx.connect(); rc != kExitOk) return rc;
    return cmd_deploy(ctx, o->image, o->device, o->group, o->wait, o->timeout_s);
  });
}

}  // namespace otactl
