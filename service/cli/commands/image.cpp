// otactl image add | list | sign.
#include <sys/stat.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "../commands.hpp"
#include "../files.hpp"
#include "../format.hpp"
#include "ota/proto/messages.hpp"
#include "ota/proto/topics.hpp"
#include "ota/service/signing.hpp"

namespace otactl {

namespace {

// What is wrong with --version / --hw, checked as the controller checks them, so that a bad
// value exits 2 before anything is sent; nullopt: nothing.
std::optional<std::string> bad_version_or_hw(const std::string& version,
                                             const std::vector<std::string>& hw) {
  if (version.size() > ota::proto::kMaxVersionLen ||
      !ota::proto::is_semver(version.data(), version.size()))
    return "--version '" + version +
           "' is not a semantic version (MAJOR.MINOR.PATCH[-pre][+build], at most " +
           std::to_string(ota::proto::kMaxVersionLen) + " characters)";
  if (hw.size() > ota::proto::kMaxHwModels)
    return "at most " + std::to_string(ota::proto::kMaxHwModels) + " --hw models";
  for (std::size_t i = 0; i < hw.size(); ++i) {
    if (!ota::proto::valid_id(hw[i].data(), hw[i].size()))
      return "--hw '" + hw[i] + "' is not a valid model name (1-64 of A-Z a-z 0-9 . _ -)";
    for (std::size_t j = 0; j < i; ++j)
      if (hw[j] == hw[i]) return "--hw '" + hw[i] + "' given twice";
  }
  return std::nullopt;
}

// cmd_image_add's counter: -1 = the controller's default, this = a security release.
constexpr long long kCounterSecurityRelease = -2;

std::vector<std::string> hw_of(const ota::proto::Manifest& m) {
  std::vector<std::string> out;
  for (std::size_t i = 0; i < m.hw_count; ++i) out.emplace_back(m.hw[i].c_str());
  return out;
}

int cmd_image_add(Context& c, const std::string& file, const std::string& version,
                  const std::vector<std::string>& hw, long long chunk_size, long long counter,
                  std::string kind, const std::vector<std::string>& deletes,
                  const std::string& release_path) {
  // With a release file, what it signed is the image's identity; flags may only repeat it.
  std::string release_text;
  auto rel = std::make_unique<ota::proto::Manifest>();
  if (!release_path.empty()) {
    std::string why;
    if (!read_release_file(release_path, *rel, release_text, why)) {
      errorf(why);
      return kExitUsage;
    }
    const std::string rkind = rel->kind == ota::proto::ImageKind::bundle ? "bundle" : "firmware";
    auto conflict = [&](const std::string& flag, const std::string& given, const std::string& signed_value) {
      errorf("image add: " + flag + " " + given + " conflicts with the release file " + release_path +
             ", which signed " + signed_value +
             " (the release signature covers it: sign the image again with `otactl image sign` to change it)");
      return kExitUsage;
    };
    if (!version.empty() && version != rel->version.c_str())
      return conflict("--version", version, std::string("version ") + rel->version.c_str());
    if (!hw.empty() && hw != hw_of(*rel))
      return conflict("--hw", join(hw, ","), "hw " + join(hw_of(*rel), ","));
    if (counter >= 0 && static_cast<std::uint64_t>(counter) != rel->counter)
      return conflict("--counter", std::to_string(counter), "counter " + std::to_string(rel->counter));
    if (counter == kCounterSecurityRelease)
      return conflict("--security-release", "", "counter " + std::to_string(rel->counter));
    if (!kind.empty() && kind != rkind) return conflict("--kind", kind, "kind " + rkind);
    kind = rkind;
  }
  std::string bytes;
  std::size_t bundle_files = 0;
  bool is_dir = false;
  if (int rc = load_image_bytes(file, kind, deletes, bytes, bundle_files, is_dir); rc != kExitOk) return rc;
  std::string q;
  if (!release_path.empty()) {
    const std::string sha = ota::service::sha256_hex(bytes.data(), bytes.size());
    if (sha != rel->sha256.c_str() || bytes.size() != rel->size) {
      errorf("image add: " + file + " (sha256 " + sha + ", " + std::to_string(bytes.size()) +
             " bytes) is not the image the release file " + release_path + " signed (sha256 " +
             rel->sha256.c_str() + ", " + std::to_string(rel->size) + " bytes)" +
             (is_dir ? ": upload the .bundle `otactl image sign` wrote next to the release file" : ""));
      return kExitUsage;
    }
    q = "/api/v1/images?release=" + url_encode(release_text);
  } else {
    q = "/api/v1/images?version=" + url_encode(version);
    for (const auto& h : hw) q += "&hw=" + url_encode(h);
  }
  for (const auto& h : hw) q += "&hw=" + url_encode(h);
  if (chunk_size >= 0) q += "&chunk_size=" + std::to_string(chunk_size);
  if (release_path.empty() && counter >= 0) q += "&counter=" + std::to_string(counter);
  if (release_path.empty() && counter == kCounterSecurityRelease) q += "&counter=next";
  if (kind == "bundle") {
    if (release_path.empty()) q += "&kind=bundle";
    if (!c.json_out) {
      std::printf("bundle of %zu files, %zu deletes, %s\n", bundle_files, deletes.size(),
                  fmt_bytes(static_cast<long long>(bytes.size())).c_str());
    }
  }
  Reply r = c.api->post(q, bytes, "application/octet-stream");
  if (!r.ok) return fail(r);
  if (c.json_out) {
    print_json(r.body);
  } else {
    std::printf("image %s version %s (%s, chunk %s, hw %s) %s%s\n", jstr(r.body, "id").c_str(),
                jstr(r.body, "version").c_str(), fmt_bytes(jint(r.body, "size")).c_str(),
                fmt_bytes(jint(r.body, "chunk_size")).c_str(), jstr(r.body, "hw").c_str(),
                r.status == 201 ? "added" : "already present",
                jstr(r.body, "release_key").empty()
                    ? ""
                    : (", release signature by " + jstr(r.body, "release_key")).c_str());
  }
  return kExitOk;
}

// otactl image sign: the release signature of an image (PROTOCOL.md 6.5), on a machine with
// the release key and without the controller. For a directory the bundle is built as
// `image add DIR` builds it and written next to the release file: that file is what to upload.
int cmd_image_sign(const std::string& file, const std::string& key_path, const std::string& version,
                   const std::vector<std::string>& hw, long long counter, std::string kind,
                   const std::vector<std::string>& deletes, std::string out_path, bool json_out) {
  if (auto bad = bad_version_or_hw(version, hw)) {
    errorf("image sign: " + *bad);
    return kExitUsage;
  }
  std::optional<ota::service::Signer> signer;
  if (!load_private_key(key_path, "--key", signer)) return kExitUsage;
  std::string bytes;
  std::size_t bundle_files = 0;
  bool is_dir = false;
  if (int rc = load_image_bytes(file, kind, deletes, bytes, bundle_files, is_dir); rc != kExitOk) return rc;
  std::string image_file = file;
  if (is_dir) {
    std::string base = file;
    while (base.size() > 1 && base.back() == '/') base.pop_back();
    if (out_path.empty()) {
      image_file = base + ".bundle";
    } else {
      const auto slash = out_path.rfind('/');
      const std::string dir = slash == std::string::npos ? "." : out_path.substr(0, slash);
      const auto bslash = base.rfind('/');
      image_file = dir + "/" + (bslash == std::string::npos ? base : base.substr(bslash + 1)) + ".bundle";
    }
  }
  if (out_path.empty()) out_path = image_file + ".release.json";

  auto m = std::make_unique<ota::proto::Manifest>();
  m->version.assign(version.c_str());
  for (const auto& h : hw) m->hw[m->hw_count++].assign(h.c_str());
  m->size = bytes.size();
  const std::string sha = ota::service::sha256_hex(bytes.data(), bytes.size());
  m->sha256.assign(sha.c_str());
  m->counter = static_cast<std::uint32_t>(counter < 0 ? 0 : counter);
  m->kind = kind == "bundle" ? ota::proto::ImageKind::bundle : ota::proto::ImageKind::firmware;
  ota::service::Status st = signer->sign_release(*m);
  if (!st) {
    errorf("image sign: " + st.error());
    return kExitFail;
  }
  char buf[4096];
  std::size_t len = 0;
  ota::proto::Error e = ota::proto::encode_release(*m, buf, sizeof buf, len);
  if (e) {
    errorf(std::string("image sign: encode the release file: ") + ota::proto::errc_name(e.code) + " " + e.field);
    return kExitFail;
  }
  std::string why;
  if (is_dir && !write_file_atomic(image_file, bytes, 0644, why)) {
    errorf("image sign: " + why);
    return kExitFail;
  }
  if (!write_file_atomic(out_path, std::string(buf, len) + "\n", 0644, why)) {
    errorf("image sign: " + why);
    return kExitFail;
  }
  if (json_out) {
    print_json(json{{"release", out_path}, {"image", image_file}, {"sha256", sha}, {"size", bytes.size()},
                    {"version", version}, {"hw", hw}, {"counter", m->counter}, {"kind", kind},
                    {"release_key", signer->key_id()}});
  } else {
    if (is_dir)
      std::printf("bundle of %zu files, %zu deletes written to %s\n", bundle_files, deletes.size(),
                  image_file.c_str());
    std::printf("signed %s (sha256 %s, %s) version %s hw %s counter %u kind %s with release key %s\n",
                image_file.c_str(), sha.c_str(), fmt_bytes(static_cast<long long>(bytes.size())).c_str(),
                version.c_str(), join(hw, ",").c_str(), m->counter, kind.c_str(), signer->key_id().c_str());
    std::printf("release file %s; upload with: otactl image add %s --release %s\n", out_path.c_str(),
                image_file.c_str(), out_path.c_str());
  }
  return kExitOk;
}

int cmd_image_list(Context& c) {
  Reply r = c.api->get("/api/v1/images");
  if (!r.ok) return fail(r);
  if (c.json_out) return print_json(r.body), kExitOk;
  std::vector<std::vector<std::string>> rows;
  for (const auto& i : r.body)
    rows.push_back(
        {jstr(i, "id"), jstr(i, "version"), i.contains("kind") ? jstr(i, "kind") : "firmware",
         jstr(i, "hw"), fmt_bytes(jint(i, "size")), fmt_bytes(jint(i, "chunk_size")),
         jstr(i, "counter"), jstr(i, "release_key").empty() ? "-" : jstr(i, "release_key"),
         cell_time(jint(i, "created_at"))});
  print_table({"ID", "VERSION", "KIND", "HW", "SIZE", "CHUNK", "COUNTER", "RELEASE KEY",
               time_head("CREATED")},
              rows);
  return kExitOk;
}

struct AddOptions {
  std::string file, version, release, kind;
  std::vector<std::string> hw, deletes;
  long long chunk_size = -1, counter = -1;
  bool security_release = false;
};

struct SignOptions {
  std::string file, key, version, kind, out;
  std::vector<std::string> hw, deletes;
  long long counter = 0;
};

int run_image_add(Context& c, const AddOptions& o) {
  if (o.release.empty()) {
    if (o.version.empty()) {
      errorf("image add: --version is required (or --release FILE.release.json from `otactl image sign`)");
      return kExitUsage;
    }
    if (o.hw.empty()) {
      errorf("image add: --hw is required (or --release FILE.release.json from `otactl image sign`)");
      return kExitUsage;
    }
    if (auto bad = bad_version_or_hw(o.version, o.hw)) {
      errorf("image add: " + *bad);
      return kExitUsage;
    }
  }
  if (int rc = c.connect(); rc != kExitOk) return rc;
  return cmd_image_add(c, o.file, o.version, o.hw, o.chunk_size,
                       o.security_release ? kCounterSecurityRelease : o.counter, o.kind, o.deletes, o.release);
}

void add_image_add(CLI::App& image, Context& ctx) {
  auto o = std::make_shared<AddOptions>();
  auto* add = image.add_subcommand("add", "upload an image");
  add->add_option("FILE", o->file, "image file, or a directory to build an application bundle from")->required();
  add->add_option("--kind", o->kind,
                  "firmware (a whole image) or bundle (application files; the default for "
                  "a directory)")
      ->check(CLI::IsMember({"firmware", "bundle"}));
  add->add_option("--delete", o->deletes,
                  "bundle: a path (file or directory) the update removes from the device "
                  "(repeatable)");
  add->add_option("--version", o->version, "semantic version, e.g. 1.2.0 (required without --release)");
  add->add_option("--hw", o->hw, "compatible hardware model (repeatable; required without --release)");
  add->add_option("--release", o->release,
                  "the release file of `otactl image sign` (FILE.release.json): uploads the "
                  "image with its release signature; version, hw, counter and kind come "
                  "from it");
  add->add_option("--chunk-size", o->chunk_size, "chunk size in bytes (256..65536, default 4096)")
      ->check(CLI::Range(256LL, 65536LL));
  auto* counter_opt = add->add_option("--counter", o->counter, "security counter (default 0)")
                          ->check(CLI::Range(0LL, 1000000LL));
  add->add_flag("--security-release", o->security_release,
                "a security fix: the counter becomes the highest registered one + 1, so "
                "devices that confirm this image refuse every earlier one")
      ->excludes(counter_opt);
  ctx.on(add, [&ctx, o] { return run_image_add(ctx, *o); });
}

void add_image_sign(CLI::App& image, Context& ctx) {
  auto o = std::make_shared<SignOptions>();
  auto* sign = image.add_subcommand(
      "sign", "sign an image offline with a release key (no controller needed): writes FILE.release.json");
  sign->add_option("FILE", o->file, "image file, or a directory to build an application bundle from")->required();
  sign->add_option("--key", o->key, "release private key (PEM, P-256; mode 0600)")->required();
  sign->add_option("--version", o->version, "semantic version, e.g. 1.2.0")->required();
  sign->add_option("--hw", o->hw, "compatible hardware model (repeatable)")->required();
  sign->add_option("--counter", o->counter, "security counter (default 0)")->check(CLI::Range(0LL, 1000000LL));
  sign->add_option("--kind", o->kind, "firmware or bundle (the default for a directory)")
      ->check(CLI::IsMember({"firmware", "bundle"}));
  sign->add_option("--delete", o->deletes, "bundle: a path the update removes from the device (repeatable)");
  sign->add_option("-o,--output", o->out,
                   "release file to write (default FILE.release.json; for a directory DIR.bundle "
                   "is written next to it)");
  // Offline: needs neither the controller nor an API token.
  ctx.on(sign, [&ctx, o] {
    return cmd_image_sign(o->file, o->key, o->version, o->hw, o->counter, o->kind, o->deletes, o->out,
                          ctx.json_out);
  });
}

}  // namespace

// DELETE /api/v1/images/REF: refused (409, naming the user) while a deployment or rollout uses it.
int cmd_image_delete(Context& c, const std::string& ref) {
  Reply r = c.api->del("/api/v1/images/" + url_encode(ref));
  if (!r.ok) return fail(r);
  if (c.json_out) return print_json(r.body), kExitOk;
  std::printf("image %s (%s) deleted\n", jstr(r.body, "version").c_str(), jstr(r.body, "id").c_str());
  return kExitOk;
}

void add_image_commands(CLI::App& app, Context& ctx) {
  auto* image = app.add_subcommand("image", "manage firmware images");
  image->require_subcommand(1);
  add_image_add(*image, ctx);
  auto* list = image->add_subcommand("list", "list images");
  ctx.on_api(list, [&ctx] { return cmd_image_list(ctx); });
  auto ref = std::make_shared<std::string>();
  auto* del = image->add_subcommand("delete", "delete an image no deployment or rollout uses");
  del->add_option("IMAGE", *ref, "image id or version")->required();
  ctx.on_api(del, [&ctx, ref] { return cmd_image_delete(ctx, *ref); });
  add_image_sign(*image, ctx);
}

}  // namespace otactl
