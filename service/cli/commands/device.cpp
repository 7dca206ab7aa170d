// otactl devices [filters], device show | revoke | tag.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <ctime>
#include <memory>
#include <string>
#include <vector>

#include "../args.hpp"
#include "../commands.hpp"
#include "../format.hpp"

namespace otactl {

namespace {

// "site=berlin,model=esp32".
std::string tags_text(const json& d) {
  std::string s;
  if (d.is_object() && d.contains("tags") && d["tags"].is_object())
    for (auto it = d["tags"].begin(); it != d["tags"].end(); ++it)
      s += (s.empty() ? "" : ",") + it.key() + "=" + (it.value().is_string() ? it.value().get<std::string>()
                                                                             : it.value().dump());
  return s;
}

// "yes 12s" / "no 3h" (heartbeat age; else the age of last_seen).
std::string online_text(const json& d) {
  std::string s = jstr(d, "online");
  if (s.empty()) s = "?";
  if (jhas(d, "heartbeat_age") && d["heartbeat_age"].is_number()) {
    s += " " + fmt_age(d["heartbeat_age"].get<long long>());
  } else if (jint(d, "last_seen") > 0) {
    s += " " + fmt_age(static_cast<long long>(std::time(nullptr)) - jint(d, "last_seen"));
  }
  return s;
}

// "dep-xx downloading 45%" or "-".
std::string transfer_text(const json& d) {
  if (!d.is_object() || !d.contains("transfer") || !d["transfer"].is_object()) return "-";
  const json& t = d["transfer"];
  return jstr(t, "deployment") + " " + jstr(t, "state") + " " + std::to_string(jint(t, "percent")) + "%";
}

int cmd_devices(Context& c, const std::string& query) {
  Reply r = c.api->get("/api/v1/devices" + query);
  if (!r.ok) return fail(r);
  if (c.json_out) return print_json(r.body), kExitOk;
  std::vector<std::vector<std::string>> rows;
  for (const auto& d : r.body) {
    const std::string err = jstr(d, "last_error");
    // With --acl-file the broker grants membership (member_of); groups is what the device claims.
    const std::string groups = jstr(d, jhas(d, "member_of") ? "member_of" : "groups");
    rows.push_back({jstr(d, "id"), jhas(d, "revoked") && d["revoked"] == true ? "revoked" : online_text(d),
                    jstr(d, "version"),
                    jstr(d, "previous_version").empty() ? "-" : jstr(d, "previous_version"),
                    jstr(d, "slot") + "/" + jstr(d, "slot_state"), jhas(d, "keys") ? jstr(d, "keys") : "-",
                    groups.empty() ? "-" : groups,
                    tags_text(d).empty() ? "-" : tags_text(d), transfer_text(d), err.empty() ? "-" : err});
  }
  print_table({"ID", "ONLINE", "VERSION", "PREVIOUS", "SLOT", "KEYS", "GROUPS", "TAGS", "TRANSFER", "LAST ERROR"}, rows);
  return kExitOk;
}

int cmd_device_show(Context& c, const std::string& id) {
  Reply r = c.api->get("/api/v1/devices/" + url_encode(id));
  if (!r.ok) return fail(r);
  if (c.json_out) return print_json(r.body), kExitOk;
  const json& d = r.body;
  std::printf("device     %s\n", jstr(d, "id").c_str());
  std::printf("hw         %s\n", jstr(d, "hw").c_str());
  std::printf("version    %s (previous %s)\n", jstr(d, "version").c_str(),
              jstr(d, "previous_version").empty() ? "-" : jstr(d, "previous_version").c_str());
  std::printf("slot       %s (%s)\n", jstr(d, "slot").c_str(), jstr(d, "slot_state").c_str());
  std::printf("online     %s (last seen %s)\n", online_text(d).c_str(), fmt_time(jint(d, "last_seen")).c_str());
  if (jhas(d, "state")) std::printf("state      %s\n", jstr(d, "state").c_str());
  if (jhas(d, "transfer")) std::printf("transfer   %s\n", transfer_text(d).c_str());
  std::printf("groups     %s\n", jstr(d, "groups").c_str());
  if (jhas(d, "member_of") && jstr(d, "member_of") != jstr(d, "groups"))
    std::printf("member of  %s (the broker's ACL)\n", jstr(d, "member_of").c_str());
  if (jhas(d, "tags")) std::printf("tags       %s\n", tags_text(d).empty() ? "-" : tags_text(d).c_str());
  std::printf("free       %s\n", fmt_bytes(jint(d, "free")).c_str());
  std::printf("counter    %lld\n", jint(d, "counter"));
  std::printf("keys       key set version %lld\n", jint(d, "keys"));
  if (jhas(d, "revoked") && d["revoked"] == true)
    std::printf("revoked    %s\n", fmt_time(jint(d, "revoked_at")).c_str());
  std::printf("last error %s\n\n", jstr(d, "last_error").empty() ? "-" : jstr(d, "last_error").c_str());
  std::vector<std::vector<std::string>> rows;
  if (d.contains("deployments"))
    for (const auto& x : d["deployments"])
      rows.push_back({jstr(x, "deployment"), jstr(x, "state"), jstr(x, "reason")});
  print_table({"DEPLOYMENT", "STATE", "REASON"}, rows);
  return kExitOk;
}

int cmd_device_revoke(Context& c, const std::string& id) {
  Reply r = c.api->post("/api/v1/devices/" + url_encode(id) + "/revoke", "", "application/json");
  if (!r.ok) return fail(r);
  if (c.json_out) return print_json(r.body), kExitOk;
  std::printf("device %s revoked: the controller drops its messages and never targets it again\n", id.c_str());
  std::printf("now revoke its certificate on the broker (it can still connect until then):\n"
              "  broker-config/pki.sh revoke %s %s\n"
              "  kill -HUP <mosquitto pid>   # reload the CRL and the ACL; restart the broker to drop an open connection\n",
              "PKI_DIR", id.c_str());
  return kExitOk;
}

// DELETE /api/v1/devices/ID: its record and tags go, its deployment rows and events stay.
int cmd_device_decommission(Context& c, const std::string& id) {
  Reply r = c.api->del("/api/v1/devices/" + url_encode(id));
  if (!r.ok) return fail(r);
  if (c.json_out) return print_json(r.body), kExitOk;
  std::printf("device %s decommissioned: its record and tags are gone, its history stays; if it "
              "says hello again it comes back as a new device (revoke it to keep it out)\n",
              id.c_str());
  return kExitOk;
}

int cmd_device_tag(Context& c, const std::string& id, const json& body) {
  Reply r = c.api->put_json("/api/v1/devices/" + url_encode(id) + "/tags", body);
  if (!r.ok) return fail(r);
  if (c.json_out) return print_json(r.body), kExitOk;
  const std::string tags = tags_text(r.body);
  std::printf("device %s tags: %s\n", id.c_str(), tags.empty() ? "(none)" : tags.c_str());
  return kExitOk;
}

struct Filters {
  std::string group, version, tag, state;
  bool online = false, offline = false;
};

// "?group=g&online=true" from the filters given.
std::string devices_query(const Filters& f) {
  std::string q;
  auto add = [&q](const char* k, const std::string& v) {
    if (!v.empty()) q += (q.empty() ? "?" : "&") + std::string(k) + "=" + url_encode(v);
  };
  add("group", f.group);
  add("tag", f.tag);
  add("version", f.version);
  add("state", f.state);
  add("online", f.online ? "true" : f.offline ? "false" : "");
  return q;
}

// The PUT body of `device tag`: KEY=VALUE sets, --remove KEY clears (null); kExitOk or the
// usage error after it was printed.
int tag_body(const std::vector<std::string>& set, const std::vector<std::string>& remove, json& body) {
  body = json::object();
  for (const auto& kv : set) {
    const auto eq = kv.find('=');
    if (eq == std::string::npos || eq == 0) {
      errorf("device tag: '" + kv + "' is not KEY=VALUE");
      return kExitUsage;
    }
    body[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  for (const auto& k : remove) {
    if (k.empty() || k.find('=') != std::string::npos) {
      errorf("device tag: --remove takes a tag KEY, not '" + k + "'");
      return kExitUsage;
    }
    if (body.contains(k)) {
      errorf("device tag: tag '" + k + "' is both set and removed");
      return kExitUsage;
    }
    body[k] = nullptr;
  }
  if (body.empty()) {
    errorf("device tag: give KEY=VALUE to set and/or --remove KEY");
    return kExitUsage;
  }
  return kExitOk;
}

void add_devices(CLI::App& app, Context& ctx) {
  auto f = std::make_shared<Filters>();
  auto* devices = app.add_subcommand("devices", "list devices");
  devices->add_option("--group", f->group, "only members of this group");
  devices->add_option("--tag", f->tag, "only devices matching this tag expression, e.g. 'site=berlin and model=esp32'");
  devices->add_option("--version", f->version, "only devices running this version");
  devices->add_option("--state", f->state,
                      "only devices in this update state (idle, offered, downloading, installing, ...; updating = not idle)");
  auto* o_on = devices->add_flag("--online", f->online, "only online devices");
  auto* o_off = devices->add_flag("--offline", f->offline, "only offline devices");
  o_on->excludes(o_off);
  o_off->excludes(o_on);
  ctx.on_api(devices, [&ctx, f] { return cmd_devices(ctx, devices_query(*f)); });
}

struct TagOptions {
  std::string id;
  std::vector<std::string> set, remove;
};

}  // namespace

void add_device_commands(CLI::App& app, Context& ctx) {
  add_devices(app, ctx);
  auto* device = app.add_subcommand("device", "one device");
  device->require_subcommand(1);
  auto* show = device->add_subcommand("show", "show a device");
  auto id = std::make_shared<std::string>();
  show->add_option("ID", *id, "device id")->required();
  ctx.on_api(show, [&ctx, id] { return cmd_device_show(ctx, *id); });
  auto* revoke = device->add_subcommand(
      "revoke", "revoke a device (admin): the controller drops its messages and never targets it; prints the broker-side step");
  revoke->add_option("ID", *id, "device id")->required();
  ctx.on_api(revoke, [&ctx, id] { return cmd_device_revoke(ctx, *id); });
  auto* decommission = device->add_subcommand(
      "decommission", "remove a device (admin): its record and tags go, its history stays");
  decommission->add_option("ID", *id, "device id")->required();
  ctx.on_api(decommission, [&ctx, id] { return cmd_device_decommission(ctx, *id); });
  auto* tag = device->add_subcommand("tag", "set or remove a device's tags");
  auto t = std::make_shared<TagOptions>();
  tag->add_option("ID", t->id, "device id")->required();
  tag->add_option("KEY=VALUE", t->set, "tags to set");
  tag->add_option("--remove", t->remove, "tag key to remove (repeatable)")->allow_extra_args(false);
  ctx.on(tag, [&ctx, t] {
    json body;
    if (int rc = tag_body(t->set, t->remove, body); rc != kExitOk) return rc;
    if (int rc = ctx.connect(); rc != kExitOk) return rc;
    return cmd_device_tag(ctx, t->id, body);
  });
}

}  // namespace otactl
