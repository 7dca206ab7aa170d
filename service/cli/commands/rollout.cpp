// otactl rollout create | start | pause | resume | abort | retry | rollback | list | show | events.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "../args.hpp"
#include "../commands.hpp"
#include "../rollout_view.hpp"

namespace otactl {

namespace {

int cmd_rollout_create(Context& c, const json& body) {
  Reply r = c.api->post_json("/api/v1/rollouts", body);
  if (!r.ok) return fail(r);
  if (c.json_out) return print_json(r.body), kExitOk;
  std::printf("rollout %s created (%s)\n\n", jstr(r.body, "id").c_str(), jstr(r.body, "state").c_str());
  print_rollout(r.body, false);
  return kExitOk;
}

int cmd_rollout_action(Context& c, const std::string& id, const std::string& action, const std::string& reason) {
  json body = json::object();
  if (!reason.empty()) body["reason"] = reason;
  Reply r = c.api->post_json("/api/v1/rollouts/" + url_encode(id) + "/" + action, body);
  if (!r.ok) return fail(r);
  if (c.json_out) return print_json(r.body), kExitOk;
  std::printf("rollout %s: %s done, state now %s\n\n", id.c_str(), action.c_str(), jstr(r.body, "state").c_str());
  print_rollout(r.body, false);
  return kExitOk;
}

int cmd_rollout_rollback(Context& c, const std::string& id, const std::string& image, bool start) {
  json body{{"start", start}};
  if (!image.empty()) body["image"] = image;
  Reply r = c.api->post_json("/api/v1/rollouts/" + url_encode(id) + "/rollback", body);
  if (!r.ok) return fail(r);
  if (c.json_out) return print_json(r.body), kExitOk;
  std::printf("rollout %s created: rollback of %s to %s (%s)\n\n", jstr(r.body, "id").c_str(), id.c_str(),
              jstr(r.body, "version").c_str(), jstr(r.body, "state").c_str());
  print_rollout(r.body, false);
  return kExitOk;
}

int cmd_rollout_list(Context& c) {
  Reply r = c.api->get("/api/v1/rollouts");
  if (!r.ok) return fail(r);
  if (c.json_out) return print_json(r.body), kExitOk;
  std::vector<std::vector<std::string>> rows;
  for (const auto& ro : r.body) {
    const json& counts = jobj(ro, "counts");
    rows.push_back(
        {jstr(ro, "id"), jstr(ro, "name"), jstr(ro, "version"), rollout_target(ro),
         jstr(ro, "state") + (rollout_status(ro) == ota::service::RolloutStatus::paused &&
                                      !jstr(ro, "paused_by").empty()
                                  ? " (" + jstr(ro, "paused_by") + ")"
                                  : ""),
         current_wave(ro).substr(5), std::to_string(jint(ro, "percent")) + "%",
         std::to_string(jint(ro, "devices_total")), std::to_string(jint(counts, "succeeded")),
         std::to_string(jint(counts, "failed")), fmt_pct(failure_all(ro)),
         cell_time(jint(ro, "created_at"))});
  }
  print_table({"ID", "NAME", "VERSION", "TARGET", "STATE", "WAVE", "PROGRESS", "DEVICES", "OK",
               "FAILED", "FAILURE", time_head("CREATED")},
              rows);
  return kExitOk;
}

int cmd_rollout_show(Context& c, const std::string& id, bool devices) {
  Reply r = c.api->get("/api/v1/rollouts/" + url_encode(id) + (devices ? "?devices=1" : ""));
  if (!r.ok) return fail(r);
  if (c.json_out) return print_json(r.body), kExitOk;
  print_rollout(r.body, devices);
  return kExitOk;
}

// ------------------------------------------------------------------------------ create

struct CreateOptions {
  CLI::App* cmd = nullptr;
  std::string image, group, tags, name, on_failure, retry_delay, timeout, start_at, window, defer_delay;
  std::vector<std::string> devices, waves;
  double max_wave = -1, max_total = -1;
  long long retries = -1, max_conc = -1, max_defers = -1;
  bool start = false;
};

int usage(const std::string& m) {
  errorf("rollout create: " + m);
  return kExitUsage;
}

int add_target(const CreateOptions& o, json& body) {
  if (!o.group.empty()) {
    body["target"] = {{"group", o.group}};
  } else if (!o.devices.empty()) {
    for (const auto& d : o.devices)
      if (d.empty()) return usage("--devices: empty device id in the list");
    body["target"] = {{"devices", o.devices}};
  } else if (!o.tags.empty()) {
    body["target"] = {{"tags", o.tags}};
  } else {
    return usage("give a target: --group G, --devices ID[,ID...] or --tags EXPR");
  }
  return kExitOk;
}

int add_waves(const CreateOptions& o, json& body) {
  json waves = json::array();
  for (const auto& w : o.waves) {
    json wave;
    std::string why;
    if (!otactl::parse_wave(w, wave, why)) return usage("--wave '" + w + "': " + why);
    waves.push_back(wave);
  }
  if (waves.empty()) waves.push_back({{"size", "100%"}});
  body["waves"] = waves;
  return kExitOk;
}

int add_failure(const CreateOptions& o, json& body) {
  json failure = json::object();
  auto pct = [](double v) {
    return v == static_cast<double>(static_cast<long long>(v)) ? json(static_cast<long long>(v)) : json(v);
  };
  if (o.max_wave >= 0) failure["max_wave_rate"] = pct(o.max_wave);
  if (o.max_total >= 0) failure["max_total_rate"] = pct(o.max_total);
  if (!o.on_failure.empty()) {
    if (o.on_failure != "pause" && o.on_failure != "abort")
      return usage("--on-failure must be pause or abort, not '" + o.on_failure + "'");
    failure["action"] = o.on_failure;
  }
  if (!failure.empty()) body["failure"] = failure;
  return kExitOk;
}

// Durations, start time and window: only those given.
int add_timing(const CreateOptions& o, json& body) {
  const std::pair<const char*, const std::string*> durations[] = {
      {"retry_delay", &o.retry_delay}, {"timeout", &o.timeout}, {"defer_delay", &o.defer_delay}};
  for (const auto& [key, val] : durations) {
    std::string opt = std::string("--") + key;
    std::replace(opt.begin(), opt.end(), '_', '-');
    if (o.cmd->count(opt) == 0) continue;
    long long secs = 0;
    std::string why;
    if (!otactl::parse_duration(*val, secs, why)) return usage(opt + " '" + *val + "': " + why);
    body[key] = secs;
  }
  if (o.cmd->count("--start-at") > 0) {
    long long t = 0;
    std::string why;
    if (!otactl::parse_time(o.start_at, t, why)) return usage("--start-at '" + o.start_at + "': " + why);
    body["start_at"] = t;
  }
  if (o.cmd->count("--window") > 0) {
    std::string why;
    if (!otactl::parse_window(o.window, why)) return usage("--window '" + o.window + "': " + why);
    body["window"] = o.window;
  }
  return kExitOk;
}

// The POST /api/v1/rollouts body, checked before the controller is asked: kExitOk, or the
// usage error after it was printed.
int rollout_body(const CreateOptions& o, json& body) {
  body = {{"image", o.image}};
  if (int rc = add_target(o, body); rc != kExitOk) return rc;
  if (!o.name.empty()) body["name"] = o.name;
  if (int rc = add_waves(o, body); rc != kExitOk) return rc;
  if (int rc = add_failure(o, body); rc != kExitOk) return rc;
  if (o.retries >= 0) body["retries"] = o.retries;
  if (o.max_conc >= 0) body["max_concurrent"] = o.max_conc;
  if (o.max_defers >= 0) body["max_defers"] = o.max_defers;
  if (int rc = add_timing(o, body); rc != kExitOk) return rc;
  body["start"] = o.start;
  return kExitOk;
}

void add_target_options(CLI::App& create, CreateOptions& o) {
  auto* t_grp = create.add_option("--group", o.group, "target: the members of group G");
  auto* t_dev = create.add_option("--devices", o.devices, "target: these devices (ID[,ID...])")
                    ->delimiter(',')
                    ->allow_extra_args(false);
  auto* t_tag =
      create.add_option("--tags", o.tags, "target: devices whose tags match EXPR, e.g. 'site=berlin and model=esp32'");
  t_grp->excludes(t_dev)->excludes(t_tag);
  t_dev->excludes(t_grp)->excludes(t_tag);
  t_tag->excludes(t_grp)->excludes(t_dev);
}

void add_policy_options(CLI::App& create, CreateOptions& o) {
  create.add_option("--wave", o.waves,
                    "a wave SIZE[:THRESHOLD[:SOAK]] (repeatable, in order): SIZE 10% of the remaining targets "
                    "or a count 5; THRESHOLD success percent before the next wave starts (default: none, the next wave waits until every device of this one has finished); SOAK a duration "
                    "(30s, 5m, 2h, 1d) to wait after it; the last wave takes all remaining targets (default: "
                    "one wave of 100%)")
      ->allow_extra_args(false);
  create.add_option("--max-wave-failure", o.max_wave, "failure policy: max failure percent in a wave")
      ->check(CLI::Range(0.0, 100.0));
  create.add_option("--max-failure", o.max_total, "failure policy: max failure percent over the whole rollout")
      ->check(CLI::Range(0.0, 100.0));
  create.add_option("--on-failure", o.on_failure, "pause|abort when a failure limit is crossed");
  create.add_option("--retries", o.retries, "retries per failed device")->check(CLI::Range(0LL, 1000LL));
  create.add_option("--retry-delay", o.retry_delay, "wait before a retry (duration)");
  create.add_option("--timeout", o.timeout, "in-progress timeout per device (duration)");
  create.add_option("--max-concurrent", o.max_conc, "at most N devices transferring at once")
      ->check(CLI::Range(1LL, 1000000LL));
  create.add_option("--start-at", o.start_at, "start time: YYYY-MM-DDTHH:MM[:SS]Z (or +HH:MM) or unix seconds");
  create.add_option("--window", o.window, "maintenance window HH:MM-HH:MM (UTC; offers only inside it)");
  create.add_option("--defer-delay", o.defer_delay, "retry a deferred offer after this duration");
  create.add_option("--max-defers", o.max_defers, "at most N deferrals per device")->check(CLI::Range(0LL, 1000000LL));
}

void add_create(CLI::App& rollout, Context& ctx) {
  auto o = std::make_shared<CreateOptions>();
  o->cmd = rollout.add_subcommand("create", "create a rollout (a draft until `otactl rollout start`, unless --start)");
  o->cmd->add_option("IMAGE", o->image, "image id or version")->required();
  add_target_options(*o->cmd, *o);
  o->cmd->add_option("--name", o->name, "a name for people");
  add_policy_options(*o->cmd, *o);
  o->cmd->add_flag("--start", o->start, "start at once (with --start-at: schedule it) instead of leaving a draft");
  ctx.on(o->cmd, [&ctx, o] {
    json body;
    if (int rc = rollout_body(*o, body); rc != kExitOk) return rc;
    if (int rc = ctx.connect(); rc != kExitOk) return rc;
    return cmd_rollout_create(ctx, body);
  });
}

// ------------------------------------------------------------------------ the others

struct IdOptions {
  std::string id, reason, image;
  bool no_start = false, devices = false;
  int limit = 50;
};

void add_actions(CLI::App& rollout, Context& ctx) {
  struct Action {
    const char* name;
    const char* help;
    bool reason;
  };
  static const Action actions[] = {{"start", "start a draft or scheduled rollout", false},
                                   {"pause", "pause a rollout (devices in flight finish)", true},
                                   {"resume", "resume a paused rollout", false},
                                   {"abort", "abort a rollout (devices in flight are told to cancel)", true},
                                   {"retry", "offer the image again to the rollout's failed devices", false}};
  for (const auto& a : actions) {
    auto o = std::make_shared<IdOptions>();
    auto* cmd = rollout.add_subcommand(a.name, a.help);
    cmd->add_option("ID", o->id, "rollout id")->required();
    if (a.reason) cmd->add_option("--reason", o->reason, "why (written to the event log)");
    const std::string name = a.name;
    ctx.on_api(cmd, [&ctx, o, name] { return cmd_rollout_action(ctx, o->id, name, o->reason); });
  }
}

// DELETE /api/v1/rollouts/ID: only a rollout that never started (a draft, or scheduled).
int cmd_rollout_delete(Context& c, const std::string& id) {
  Reply r = c.api->del("/api/v1/rollouts/" + url_encode(id));
  if (!r.ok) return fail(r);
  if (c.json_out) return print_json(r.body), kExitOk;
  std::printf("rollout %s deleted\n", id.c_str());
  return kExitOk;
}

void add_views(CLI::App& rollout, Context& ctx) {
  auto o = std::make_shared<IdOptions>();
  auto* list = rollout.add_subcommand("list", "list rollouts");
  ctx.on_api(list, [&ctx] { return cmd_rollout_list(ctx); });
  auto* show = rollout.add_subcommand("show", "show a rollout: policy, waves, counts");
  show->add_option("ID", o->id, "rollout id")->required();
  show->add_flag("--devices", o->devices, "with one row per device");
  ctx.on_api(show, [&ctx, o] { return cmd_rollout_show(ctx, o->id, o->devices); });
  auto* events = rollout.add_subcommand("events", "a rollout's event log");
  events->add_option("ID", o->id, "rollout id")->required();
  events->add_option("--limit", o->limit, "at most N events (1..10000, default 50)")->check(CLI::Range(1, 10000));
  ctx.on_api(events, [&ctx, o] { return show_events(ctx, o->id, "", "", o->limit); });
  auto* del = rollout.add_subcommand("delete", "delete a rollout that never started (a draft or a scheduled one)");
  del->add_option("ID", o->id, "rollout id")->required();
  ctx.on_api(del, [&ctx, o] { return cmd_rollout_delete(ctx, o->id); });
}

}  // namespace

void add_rollout_commands(CLI::App& app, Context& ctx) {
  auto* rollout = app.add_subcommand("rollout", "staged rollouts");
  rollout->require_subcommand(1);
  add_create(*rollout, ctx);
  add_actions(*rollout, ctx);
  auto o = std::make_shared<IdOptions>();
  auto* rollback = rollout->add_subcommand("rollback", "create a rollout back to the previous (or another) version");
  rollback->add_option("ID", o->id, "rollout id")->required();
  rollback->add_option("--image", o->image, "image id or version (default: the version the targets ran before)");
  rollback->add_flag("--no-start", o->no_start, "leave the rollback rollout as a draft");
  ctx.on_api(rollback, [&ctx, o] { return cmd_rollout_rollback(ctx, o->id, o->image, !o->no_start); });
  add_views(*rollout, ctx);
}

}  // namespace otactl
