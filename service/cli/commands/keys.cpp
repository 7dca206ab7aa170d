// otactl keys sign | push | show.
#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "../commands.hpp"
#include "../files.hpp"
#include "../format.hpp"
#include "ota/proto/messages.hpp"
#include "ota/service/signing.hpp"

namespace otactl {

namespace {

// otactl keys sign: a key set (PROTOCOL.md 6.6) signed by the root key, offline.
int cmd_keys_sign(const std::string& root_path, long long version, const std::vector<std::string>& release,
                  const std::vector<std::string>& online, const std::string& next_root,
                  const std::string& out_path, bool json_out) {
  auto usage = [](const std::string& m) {
    errorf("keys sign: " + m);
    return kExitUsage;
  };
  if (release.empty())
    return usage("give at least one --release PUB.pem: a key set without a release key would "
                 "leave devices unable to accept any software");
  const std::size_t total = release.size() + online.size() + (next_root.empty() ? 0 : 1);
  if (release.size() + online.size() > ota::proto::kMaxKeySetKeys - 1 || total > ota::proto::kMaxKeySetKeys)
    return usage("too many keys: at most " + std::to_string(ota::proto::kMaxKeySetKeys - 1) +
                 " release and online keys, plus one --next-root");
  std::optional<ota::service::Signer> root;
  if (!load_private_key(root_path, "--root", root)) return kExitUsage;
  auto ks = std::make_unique<ota::proto::KeySet>();
  ks->version = static_cast<std::uint32_t>(version);
  std::vector<std::pair<std::string, std::string>> listed;  // id, what
  auto add = [&](const std::string& path, ota::proto::KeyRole role, const char* opt) -> bool {
    auto k = ota::service::load_public_key_file(path, opt);
    if (!k) {
      errorf("keys sign: " + k.error());
      return false;
    }
    auto pt = ota::service::p256_point_of(k->get());
    if (!pt) {
      errorf(std::string("keys sign: ") + opt + " " + path + ": " + pt.error());
      return false;
    }
    const std::string id = ota::service::key_id_of_point(*pt);
    const std::string what = std::string(opt) + " " + path;
    if (id == root->key_id() && role != ota::proto::KeyRole::root) {
      errorf("keys sign: " + what + " is the root key (" + id +
             "): the root signs key sets only; give release and online keys of their own");
      return false;
    }
    for (const auto& [have, where] : listed)
      if (have == id) {
        errorf("keys sign: " + what + " is the same key (" + id + ") as " + where +
               ": a key has one role in a set");
        return false;
      }
    listed.emplace_back(id, what);
    ota::proto::KeySetEntry& e = ks->keys[ks->key_count++];
    e.id.assign(id.c_str());
    e.role = role;
    std::memcpy(e.pub, pt->data(), pt->size());
    return true;
  };
  for (const auto& p : release)
    if (!add(p, ota::proto::KeyRole::release, "--release")) return kExitUsage;
  for (const auto& p : online)
    if (!add(p, ota::proto::KeyRole::online, "--online")) return kExitUsage;
  if (!next_root.empty() && !add(next_root, ota::proto::KeyRole::root, "--next-root")) return kExitUsage;
  ota::service::Status st = root->sign_keyset(*ks);
  if (!st) {
    errorf("keys sign: " + st.error());
    return kExitFail;
  }
  std::vector<char> buf(16384);
  std::size_t len = 0;
  ota::proto::Error e = ota::proto::encode_keyset(*ks, buf.data(), buf.size(), len);
  if (e) {
    errorf(std::string("keys sign: encode: ") + ota::proto::errc_name(e.code) + " " + e.field);
    return kExitFail;
  }
  std::string why;
  if (!write_file_atomic(out_path, std::string(buf.data(), len) + "\n", 0644, why)) {
    errorf("keys sign: " + why);
    return kExitFail;
  }
  if (json_out) {
    json keys = json::array();
    for (std::size_t i = 0; i < ks->key_count; ++i)
      keys.push_back(json{{"id", ks->keys[i].id.c_str()}, {"role", ota::proto::key_role_name(ks->keys[i].role)}});
    print_json(json{{"file", out_path}, {"version", ks->version}, {"signed_by", root->key_id()}, {"keys", keys}});
    return kExitOk;
  }
  std::printf("key set version %u signed by root key %s -> %s\n", ks->version, root->key_id().c_str(),
              out_path.c_str());
  std::vector<std::vector<std::string>> rows;
  for (std::size_t i = 0; i < ks->key_count; ++i)
    rows.push_back({ks->keys[i].id.c_str(), ota::proto::key_role_name(ks->keys[i].role)});
  print_table({"KEY", "ROLE"}, rows);
  std::printf("upload with: otactl keys push %s\n", out_path.c_str());
  return kExitOk;
}

int cmd_keys_push(Context& c, const std::string& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) {
    errorf("keys push: cannot read " + file + ": " + std::strerror(errno));
    return kExitUsage;
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  std::string body = ss.str();
  while (!body.empty() && (body.back() == '\n' || body.back() == '\r')) body.pop_back();
  Reply r = c.api->put_raw("/api/v1/keys", body);
  if (!r.ok) return fail(r);
  if (c.json_out) return print_json(r.body), kExitOk;
  std::printf("key set version %lld accepted; sent to the online devices that hold an older one "
              "(the others get it at their next hello)\n",
              jint(r.body, "version"));
  return kExitOk;
}

int cmd_keys_show(Context& c) {
  Reply r = c.api->get("/api/v1/keys");
  if (!r.ok) return fail(r);
  if (c.json_out) return print_json(r.body), kExitOk;
  const json& k = r.body;
  std::printf("key set    version %lld%s\n", jint(k, "version"),
              jint(k, "version") == 0 ? " (none pushed: devices trust the keys they were provisioned with)" : "");
  if (jint(k, "version") > 0)
    std::printf("uploaded   %s by %s, signed by root key %s\n", fmt_time(jint(k, "uploaded_at")).c_str(),
                jstr(k, "uploaded_by").c_str(), jstr(k, "signed_by").c_str());
  const json& root = k.contains("root") ? k["root"] : json();
  std::printf("root       %s\n", root.is_object() ? (jstr(root, "id") + " (" + jstr(root, "source") + ")").c_str()
                                                      : "none (start the controller with --root-key to push key sets)");
  const json& sk = k.contains("signing_key") ? k["signing_key"] : json();
  std::printf("signing    %s role %s (%s)\n\n", jstr(sk, "id").c_str(), jstr(sk, "role").c_str(),
              jstr(sk, "source").c_str());
  std::vector<std::vector<std::string>> rows;
  if (k.contains("keys"))
    for (const auto& e : k["keys"]) rows.push_back({jstr(e, "id"), jstr(e, "role")});
  print_table({"KEY", "ROLE"}, rows);
  std::printf("\n");
  rows.clear();
  if (k.contains("devices_by_version") && k["devices_by_version"].is_object())
    for (auto it = k["devices_by_version"].begin(); it != k["devices_by_version"].end(); ++it)
      rows.push_back({it.key(), it.value().dump()});
  print_table({"KEYS VERSION", "DEVICES"}, rows);
  return kExitOk;
}

struct SignOptions {
  std::string root, next_root, out;
  std::vector<std::string> release, online;
  long long version = 0;
};

void add_keys_sign(CLI::App& keys, Context& ctx) {
  auto o = std::make_shared<SignOptions>();
  auto* sign = keys.add_subcommand("sign", "sign a key set offline with the root key (no controller needed)");
  sign->add_option("--root", o->root, "the root private key (PEM, P-256; mode 0600) devices trust")->required();
  sign->add_option("--version", o->version, "key-set version: higher than the one devices hold (>= 1)")
      ->required()
      ->check(CLI::Range(1LL, 4294967295LL));
  sign->add_option("--release", o->release, "a release public key (PEM) of the set (repeatable, at least one)")
      ->allow_extra_args(false);
  sign->add_option("--online", o->online,
                   "an online public key (PEM) of the set: the controller's --signing-key (repeatable)")
      ->allow_extra_args(false);
  sign->add_option("--next-root", o->next_root,
                   "public key (PEM) that becomes the root for the next set (root rotation)");
  sign->add_option("-o,--output", o->out, "file to write the key set to")->required();
  // Offline: needs neither the controller nor an API token.
  ctx.on(sign, [&ctx, o] {
    return cmd_keys_sign(o->root, o->version, o->release, o->online, o->next_root, o->out, ctx.json_out);
  });
}

}  // namespace

void add_keys_commands(CLI::App& app, Context& ctx) {
  auto* keys = app.add_subcommand("keys", "key sets: the keys devices trust, signed by the root key");
  keys->require_subcommand(1);
  add_keys_sign(*keys, ctx);
  auto* push = keys->add_subcommand("push", "upload a key set to the controller (admin), which sends it to the devices");
  auto file = std::make_shared<std::string>();
  push->add_option("FILE", *file, "key set file of `otactl keys sign`")->required();
  ctx.on_api(push, [&ctx, file] { return cmd_keys_push(ctx, *file); });
  auto* show = keys->add_subcommand("show", "the key set the controller holds and how many devices trust each version");
  ctx.on_api(show, [&ctx] { return cmd_keys_show(ctx); });
}

}  // namespace otactl
