// otactl: command line client of the ota-controller HTTP API.
//
// Exit codes: 0 ok; 1 API error (4xx/5xx; 401: wrong token), no API token, unreachable
// controller, (deploy --wait) a device that failed/declined/was cancelled, or (watch) a rollout
// that was aborted or paused by its policy; 2 usage error; 3 deploy --wait timed out, or watch
// gave up on an unreachable controller.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <dirent.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <httplib.h>
#include <optional>
#include <nlohmann/json.hpp>
#include <sstream>
#include <sys/ioctl.h>
#include <string>
#include <thread>
#include <vector>

#include "api_client.hpp"
#include "args.hpp"
#include "format.hpp"
#include "ota/cli_config.hpp"
#include "ota/proto/bundle.hpp"
#include "ota/proto/messages.hpp"
#include "ota/proto/topics.hpp"
#include "ota/service/signing.hpp"

using nlohmann::json;
using otactl::fmt_age;
using otactl::fmt_duration;
using namespace otactl;

namespace {

// ------------------------------------------------------------------------------ output

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

// --------------------------------------------------------------------------- commands

// Reads DIR recursively into bundle files: regular files only (symlinks and special files
// are skipped with a warning), sorted by path by bundle::build.
bool read_bundle_dir(const std::string& root, const std::string& rel,
                     std::vector<ota::proto::bundle::InputFile>& out, std::string& error) {
  const std::string dir = rel.empty() ? root : root + "/" + rel;
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) {
    error = "cannot read directory " + dir + ": " + std::strerror(errno);
    return false;
  }
  std::vector<std::string> names;
  while (const dirent* e = ::readdir(d)) {
    if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) {
      names.emplace_back(e->d_name);
    }
  }
  ::closedir(d);
  std::sort(names.begin(), names.end());
  for (const auto& n : names) {
    const std::string r = rel.empty() ? n : rel + "/" + n;
    const std::string path = root + "/" + r;
    struct stat st {};
    if (::lstat(path.c_str(), &st) != 0) {
      error = "cannot stat " + path + ": " + std::strerror(errno);
      return false;
    }
    if (S_ISDIR(st.st_mode)) {
      if (!read_bundle_dir(root, r, out, error)) return false;
      continue;
    }
    if (!S_ISREG(st.st_mode)) {
      errorf("warning: skipping " + path + " (" + (S_ISLNK(st.st_mode) ? "symlink" : "not a regular file") + ")");
      continue;
    }
    if (std::string err = ota::proto::bundle::check_path(r); !err.empty()) {
      error = "cannot put " + path + " in a bundle: " + err;
      return false;
    }
    std::ifstream in(path, std::ios::binary);
    std::ostringstream ss;
    ss << in.rdbuf();
    if (!in) {
      error = "cannot read " + path + ": " + std::strerror(errno);
      return false;
    }
    out.push_back({r, static_cast<std::uint32_t>(st.st_mode & 0777), ss.str()});
  }
  return true;
}

// cmd_image_add's counter: -1 = the controller's default, this = a security release.
constexpr long long kCounterSecurityRelease = -2;

// The bytes `image add` / `image sign` upload or sign: a file as it is (a bundle file is
// checked), or the bundle built from a directory. kExitOk, or the exit code after the error
// was printed. `kind` is filled in when empty (bundle for a directory).
int load_image_bytes(const std::string& file, std::string& kind, const std::vector<std::string>& deletes,
                     std::string& bytes, std::size_t& bundle_files, bool& is_dir) {
  namespace bundle = ota::proto::bundle;
  struct stat st {};
  is_dir = ::stat(file.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
  if (kind.empty()) kind = is_dir ? "bundle" : "firmware";
  if (kind != "bundle" && (is_dir || !deletes.empty())) {
    errorf(is_dir ? file + " is a directory: only a bundle (--kind bundle) is built from one"
                  : std::string("--delete is for bundles (--kind bundle)"));
    return kExitUsage;
  }
  bundle_files = 0;
  if (is_dir) {
    std::vector<bundle::InputFile> files;
    std::string error;
    if (!read_bundle_dir(file, "", files, error)) {
      errorf(error);
      return kExitUsage;
    }
    bundle_files = files.size();
    if (std::string err = bundle::build(std::move(files), deletes, bytes); !err.empty()) {
      errorf("cannot build a bundle from " + file + ": " + err);
      return kExitUsage;
    }
  } else {
    std::ifstream in(file, std::ios::binary);
    if (!in) {
      errorf("cannot read image file " + file + ": " + std::strerror(errno));
      return kExitUsage;
    }
    std::ostringstream ss;
    ss << in.rdbuf();
    bytes = ss.str();
    if (bytes.empty()) {
      errorf("image file " + file + " is empty");
      return kExitUsage;
    }
    if (kind == "bundle") {  // a bundle built elsewhere: check it before uploading
      bundle::Index idx;
      if (std::string err = bundle::parse(bytes, idx, true); !err.empty()) {
        errorf(file + " is not a valid bundle: " + err);
        return kExitUsage;
      }
      if (!deletes.empty()) {
        errorf("--delete needs a directory (a built bundle already has its delete list)");
        return kExitUsage;
      }
      bundle_files = idx.files.size();
    }
  }
  return kExitOk;
}

// A file written whole or not at all (temp file, fsync, rename), with `mode`.
bool write_file_atomic(const std::string& path, const std::string& data, mode_t mode, std::string& why) {
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (fd < 0) {
    why = "cannot write " + tmp + ": " + std::strerror(errno);
    return false;
  }
  std::size_t off = 0;
  while (off < data.size()) {
    const ssize_t n = ::write(fd, data.data() + off, data.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      why = "cannot write " + tmp + ": " + std::strerror(errno);
      ::close(fd);
      ::unlink(tmp.c_str());
      return false;
    }
    off += static_cast<std::size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    why = "cannot write " + tmp + ": " + std::strerror(errno);
    ::unlink(tmp.c_str());
    return false;
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    why = "cannot rename " + tmp + " to " + path + ": " + std::strerror(errno);
    ::unlink(tmp.c_str());
    return false;
  }
  return true;
}

// A release file (`otactl image sign`, PROTOCOL.md 6.5), decoded; false with `why`.
bool read_release_file(const std::string& path, ota::proto::Manifest& m, std::string& text, std::string& why) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    why = "cannot read release file " + path + ": " + std::strerror(errno);
    return false;
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  text = ss.str();
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
  ota::proto::Error e = ota::proto::decode_release(text.data(), text.size(), m);
  if (e) {
    why = "release file " + path + " is not a release signature made by `otactl image sign` (" +
          ota::proto::errc_name(e.code) + (*e.field ? std::string(" ") + e.field : "") + ")";
    return false;
  }
  return true;
}

std::vector<std::string> hw_of(const ota::proto::Manifest& m) {
  std::vector<std::string> out;
  for (std::size_t i = 0; i < m.hw_count; ++i) out.emplace_back(m.hw[i].c_str());
  return out;
}

int cmd_image_add(Ctx& c, const std::string& file, const std::string& version,
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
    std::printf("image %s version %s (%s, chunk %lld, hw %s) %s%s\n", jstr(r.body, "id").c_str(),
                jstr(r.body, "version").c_str(), fmt_bytes(jint(r.body, "size")).c_str(),
                jint(r.body, "chunk_size"), jstr(r.body, "hw").c_str(),
                r.status == 201 ? "added" : "already present",
                jstr(r.body, "release_key").empty()
                    ? ""
                    : (", release signature by " + jstr(r.body, "release_key")).c_str());
  }
  return kExitOk;
}

// ------------------------------------------------------------- offline signing (no controller)

// Loads a private signing key: refused if group or others may read it (as the controller
// refuses its own), or if it is not a P-256 key.
bool load_private_key(const std::string& path, const std::string& what,
                      std::optional<ota::service::Signer>& signer) {
  ota::service::Status st = ota::service::check_private_key_file(path, what);
  if (!st) {
    errorf(st.error());
    return false;
  }
  auto s = ota::service::Signer::load(path);
  if (!s) {
    errorf(what + ": " + s.error());
    return false;
  }
  signer.emplace(std::move(*s));
  return true;
}

// otactl image sign: the release signature of an image (PROTOCOL.md 6.5), on a machine with
// the release key and without the controller. For a directory the bundle is built as
// `image add DIR` builds it and written next to the release file: that file is what to upload.
int cmd_image_sign(const std::string& file, const std::string& key_path, const std::string& version,
                   const std::vector<std::string>& hw, long long counter, std::string kind,
                   const std::vector<std::string>& deletes, std::string out_path, bool json_out) {
  auto usage = [](const std::string& m) {
    errorf("image sign: " + m);
    return kExitUsage;
  };
  if (version.size() > ota::proto::kMaxVersionLen || !ota::proto::is_semver(version.data(), version.size()))
    return usage("--version '" + version + "' is not a semantic version (MAJOR.MINOR.PATCH[-pre][+build], at most " +
                 std::to_string(ota::proto::kMaxVersionLen) + " characters)");
  if (hw.size() > ota::proto::kMaxHwModels)
    return usage("at most " + std::to_string(ota::proto::kMaxHwModels) + " --hw models");
  for (std::size_t i = 0; i < hw.size(); ++i) {
    if (!ota::proto::valid_id(hw[i].data(), hw[i].size()))
      return usage("--hw '" + hw[i] + "' is not a valid model name (1-64 of A-Z a-z 0-9 . _ -)");
    for (std::size_t j = 0; j < i; ++j)
      if (hw[j] == hw[i]) return usage("--hw '" + hw[i] + "' given twice");
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

int cmd_keys_push(Ctx& c, const std::string& file) {
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

int cmd_keys_show(Ctx& c) {
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

int cmd_device_revoke(Ctx& c, const std::string& id) {
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

int cmd_image_list(Ctx& c) {
  Reply r = c.api->get("/api/v1/images");
  if (!r.ok) return fail(r);
  if (c.json_out) return print_json(r.body), kExitOk;
  std::vector<std::vector<std::string>> rows;
  for (const auto& i : r.body)
    rows.push_back({jstr(i, "id"), jstr(i, "version"), i.contains("kind") ? jstr(i, "kind") : "firmware",
                    jstr(i, "hw"), std::to_string(jint(i, "size")), jstr(i, "chunk_size"),
                    jstr(i, "counter"), jstr(i, "release_key").empty() ? "-" : jstr(i, "release_key"),
                    fmt_time(jint(i, "created_at"))});
  print_table({"ID", "VERSION", "KIND", "HW", "SIZE", "CHUNK", "COUNTER", "RELEASE KEY", "CREATED"}, rows);
  return kExitOk;
}

int wait_deployment(Ctx& c, const std::string& id, double timeout_s) {
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
      const std::string st = jstr(d, "state");
      if (st != "active") break;
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
      std::string st = jstr(row, "state");
      if (st == "succeeded") {
        ++ok;
      } else {
        std::string why = jstr(row, "reason");
        bad.push_back(jstr(row, "device") + ": " + st + (why.empty() ? "" : " (" + why + ")"));
      }
    }
  const std::string st = jstr(d, "state");
  if (st == "completed" && bad.empty()) {
    if (!c.json_out) std::printf("deployment %s completed: %lld/%lld devices succeeded\n", id.c_str(), ok, n);
    return kExitOk;
  }
  std::fprintf(stderr, "deployment %s %s: %lld/%lld devices succeeded\n", id.c_str(), st.c_str(), ok, n);
  for (const auto& b : bad) std::fprintf(stderr, "  %s\n", b.c_str());
  return kExitFail;
}

int cmd_deploy(Ctx& c, const std::string& image, const std::string& device, const std::string& group,
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

int cmd_deployment_list(Ctx& c) {
  Reply r = c.api->get("/api/v1/deployments");
  if (!r.ok) return fail(r);
  if (c.json_out) return print_json(r.body), kExitOk;
  std::vector<std::vector<std::string>> rows;
  for (const auto& d : r.body)
    rows.push_back({jstr(d, "id"), jstr(d, "image"), jstr(d, "version"),
                    jstr(d, "target_kind") + ":" + jstr(d, "target"), jstr(d, "state"),
                    std::to_string(jint(d, "percent")) + "%", counts_text(d, false),
                    fmt_time(jint(d, "created_at"))});
  print_table({"ID", "IMAGE", "VERSION", "TARGET", "STATE", "PROGRESS", "DEVICES", "CREATED"}, rows);
  return kExitOk;
}

int cmd_deployment_show(Ctx& c, const std::string& id) {
  Reply r = c.api->get("/api/v1/deployments/" + url_encode(id));
  if (!r.ok) return fail(r);
  if (c.json_out) return print_json(r.body), kExitOk;
  print_deployment(r.body);
  return kExitOk;
}

int cmd_deployment_cancel(Ctx& c, const std::string& id) {
  Reply r = c.api->post("/api/v1/deployments/" + url_encode(id) + "/cancel", "", "application/json");
  if (!r.ok) return fail(r);
  if (c.json_out) return print_json(r.body), kExitOk;
  std::printf("deployment %s cancelled (%s)\n", id.c_str(), counts_text(r.body, false).c_str());
  return kExitOk;
}

int cmd_status(Ctx& c, const std::string& dep) {
  if (!dep.empty()) return cmd_deployment_show(c, dep);
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

// ---------------------------------------------------------------------------- rollouts

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

// "group g1", "tags site=berlin", "devices d1,d2,d3 +33 more" (at most `max_ids` ids).
std::string rollout_target(const json& ro, std::size_t max_ids = 3) {
  const json& t = jobj(ro, "target");
  if (t.contains("value") && t["value"].is_array() && t["value"].size() > max_ids) {
    std::string v;
    for (std::size_t i = 0; i < max_ids; ++i) v += (i ? "," : "") + jstr(json{{"v", t["value"][i]}}, "v");
    return jstr(t, "kind") + " " + v + " +" + std::to_string(t["value"].size() - max_ids) + " more";
  }
  return jstr(t, "kind") + " " + jstr(t, "value");
}

// ok 27 fail 1 run 12 pend 20 decl 0 tout 0 (plus "def N" / "canc N" when there are any).
std::string rollout_counts(const json& counts) {
  auto n = [&](const char* k) { return jint(counts, k); };
  std::string s = "ok " + std::to_string(n("succeeded")) + " fail " + std::to_string(n("failed")) +
                  " run " + std::to_string(n("offered") + n("downloading") + n("installing")) +
                  " pend " + std::to_string(n("pending") + n("deferred")) + " decl " +
                  std::to_string(n("declined")) + " tout " + std::to_string(n("timed_out"));
  if (n("deferred") > 0) s += " def " + std::to_string(n("deferred"));
  if (n("cancelled") > 0) s += " canc " + std::to_string(n("cancelled"));
  return s;
}

std::string wave_line(const json& w, std::size_t i, std::size_t total) {
  char head[64];
  std::snprintf(head, sizeof head, "wave %zu/%zu %-7s ", i + 1, total, jstr(w, "state").c_str());
  char pct[16];
  std::snprintf(pct, sizeof pct, "%3lld%%", std::clamp(jint(w, "percent"), 0LL, 100LL));
  std::string s = std::string(head) + bar(jint(w, "percent"), 20) + " " + pct + "  " +
                  std::to_string(jint(w, "devices")) + " devices  " + rollout_counts(jobj(w, "counts"));
  const bool has_threshold = jhas(w, "success_threshold") && w["success_threshold"].is_number();
  std::string extra = has_threshold ? "needs " + fmt_pct(jnum(w, "success_threshold"))
                                    : std::string("waits for all");
  if (jint(w, "soak") > 0) extra += ", soak " + fmt_duration(jint(w, "soak"));
  if (jstr(w, "state") != "waiting" && jhas(w, "success_rate"))
    extra = "success " + fmt_pct(jnum(w, "success_rate")) + ", " + extra;
  return s + "  (" + extra + ")";
}

// "failure 2.5% (max 5% total, 10% per wave, then pause)".
std::string failure_text(const json& ro) {
  const json& f = jobj(ro, "failure_rate");
  std::string s = "failure " + fmt_pct(jnum(f, "total"));
  std::vector<std::string> lim;
  if (jhas(f, "max_total_rate")) lim.push_back("max " + fmt_pct(jnum(f, "max_total_rate")) + " total");
  if (jhas(f, "max_wave_rate")) lim.push_back(fmt_pct(jnum(f, "max_wave_rate")) + " per wave");
  if (lim.empty() || (jnum(f, "max_total_rate") >= 100 && jnum(f, "max_wave_rate") >= 100))
    return s + " (no failure limit)";
  std::string l;
  for (const auto& x : lim) l += (l.empty() ? "" : ", ") + x;
  const std::string action = jstr(f, "action");
  return s + " (" + l + (action.empty() ? "" : ", then " + action) + ")";
}

// "wave 2/3" (or "wave -/3" before the first wave starts).
std::string current_wave(const json& ro) {
  const long long total = jint(ro, "waves_total");
  const long long cur = jint(ro, "current_wave");
  const std::string st = jstr(ro, "state");
  const bool started = st != "draft" && st != "scheduled";
  return "wave " + (started ? std::to_string(std::min(cur + 1, total)) : std::string("-")) + "/" +
         std::to_string(total);
}

std::string pause_text(const json& ro) {
  const std::string by = jstr(ro, "paused_by"), why = jstr(ro, "pause_reason");
  std::string s = "paused";
  if (!by.empty()) s += " by " + by;
  if (!why.empty()) s += ": " + why;
  return s;
}

// Header + one line per wave (the live view and `rollout show`).
std::vector<std::string> rollout_lines(const json& ro) {
  std::vector<std::string> out;
  const std::string name = jstr(ro, "name");
  char pct[16];
  std::snprintf(pct, sizeof pct, "%3lld%%", std::clamp(jint(ro, "percent"), 0LL, 100LL));
  out.push_back("rollout " + jstr(ro, "id") + (name.empty() ? "" : " \"" + name + "\"") + "  version " +
                jstr(ro, "version") + "  " + rollout_target(ro) + "  state " + jstr(ro, "state") + "  " +
                current_wave(ro));
  std::string line2 = "overall " + bar(jint(ro, "percent"), 20) + " " + pct + "  " +
                      std::to_string(jint(ro, "devices_total")) + " devices";
  if (jint(ro, "excluded") > 0) line2 += " (" + std::to_string(jint(ro, "excluded")) + " excluded)";
  line2 += "  " + rollout_counts(jobj(ro, "counts"));
  out.push_back(line2);
  out.push_back(failure_text(ro));
  if (jstr(ro, "state") == "paused") out.push_back(pause_text(ro));
  const json& waves = ro.is_object() && ro.contains("waves") && ro["waves"].is_array() ? ro["waves"] : json::array();
  for (std::size_t i = 0; i < waves.size(); ++i) out.push_back(wave_line(waves[i], i, waves.size()));
  return out;
}

std::string policy_text(const json& p) {
  std::vector<std::string> parts;
  if (jhas(p, "retries"))
    parts.push_back("retries " + std::to_string(jint(p, "retries")) +
                    (jint(p, "retries") > 0 && jint(p, "retry_delay") > 0
                         ? " after " + fmt_duration(jint(p, "retry_delay"))
                         : ""));
  if (jint(p, "timeout") > 0) parts.push_back("timeout " + fmt_duration(jint(p, "timeout")));
  if (jint(p, "max_concurrent") > 0) parts.push_back("max concurrent " + std::to_string(jint(p, "max_concurrent")));
  if (!jstr(p, "window").empty()) parts.push_back("window " + jstr(p, "window") + " UTC");
  if (jint(p, "start_at") > 0) parts.push_back("start at " + fmt_time(jint(p, "start_at")) + " UTC");
  if (jint(p, "defer_delay") > 0 || jhas(p, "max_defers"))
    parts.push_back("deferrals retried after " + fmt_duration(jint(p, "defer_delay")) +
                    (jhas(p, "max_defers") ? ", at most " + std::to_string(jint(p, "max_defers")) : ""));
  std::string s;
  for (const auto& x : parts) s += (s.empty() ? "" : ", ") + x;
  return s.empty() ? "-" : s;
}

void print_rollout(const json& ro, bool with_devices) {
  std::printf("rollout    %s%s\n", jstr(ro, "id").c_str(),
              jstr(ro, "name").empty() ? "" : (" \"" + jstr(ro, "name") + "\"").c_str());
  std::printf("image      %s (%s)\n", jstr(ro, "version").c_str(), jstr(ro, "image").c_str());
  std::printf("target     %s: %lld devices%s\n", rollout_target(ro, 8).c_str(), jint(ro, "devices_total"),
              jint(ro, "excluded") > 0 ? (", " + std::to_string(jint(ro, "excluded")) + " excluded").c_str() : "");
  std::printf("state      %s  %s\n", jstr(ro, "state").c_str(), current_wave(ro).c_str());
  if (jstr(ro, "state") == "paused") std::printf("           %s\n", pause_text(ro).c_str());
  if (!jstr(ro, "rollback_of").empty()) std::printf("rollback   of %s\n", jstr(ro, "rollback_of").c_str());
  if (!jstr(ro, "deployment").empty()) std::printf("deployment %s\n", jstr(ro, "deployment").c_str());
  std::printf("policy     %s\n", policy_text(jobj(ro, "policy")).c_str());
  std::printf("created    %s", fmt_time(jint(ro, "created_at")).c_str());
  if (jint(ro, "started_at") > 0) std::printf("  started %s", fmt_time(jint(ro, "started_at")).c_str());
  if (jint(ro, "finished_at") > 0) std::printf("  finished %s", fmt_time(jint(ro, "finished_at")).c_str());
  std::printf("\n\n");
  auto lines = rollout_lines(ro);
  for (std::size_t i = 1; i < lines.size(); ++i)  // the first line repeats the header above
    if (lines[i].rfind("paused", 0) != 0) std::printf("%s\n", lines[i].c_str());  // paused: above
  if (!with_devices) return;
  std::printf("\n");
  std::vector<std::vector<std::string>> rows;
  if (ro.contains("devices") && ro["devices"].is_array())
    for (const auto& d : ro["devices"]) {
      const long long ms = jint(d, "updated_at");
      rows.push_back({jstr(d, "device"), std::to_string(jint(d, "wave") + 1), jstr(d, "state"),
                      jstr(d, "attempt"), std::to_string(jint(d, "percent")) + "%",
                      ms > 0 ? fmt_time(ms / 1000) : "-", jstr(d, "reason")});
    }
  print_table({"DEVICE", "WAVE", "STATE", "ATTEMPT", "PERCENT", "UPDATED (UTC)", "REASON"}, rows);
}

int cmd_rollout_create(Ctx& c, const json& body) {
  Reply r = c.api->post_json("/api/v1/rollouts", body);
  if (!r.ok) return fail(r);
  if (c.json_out) return print_json(r.body), kExitOk;
  std::printf("rollout %s created (%s)\n\n", jstr(r.body, "id").c_str(), jstr(r.body, "state").c_str());
  print_rollout(r.body, false);
  return kExitOk;
}

int cmd_rollout_action(Ctx& c, const std::string& id, const std::string& action, const std::string& reason) {
  json body = json::object();
  if (!reason.empty()) body["reason"] = reason;
  Reply r = c.api->post_json("/api/v1/rollouts/" + url_encode(id) + "/" + action, body);
  if (!r.ok) return fail(r);
  if (c.json_out) return print_json(r.body), kExitOk;
  std::printf("rollout %s: %s done, state now %s\n\n", id.c_str(), action.c_str(), jstr(r.body, "state").c_str());
  print_rollout(r.body, false);
  return kExitOk;
}

int cmd_rollout_rollback(Ctx& c, const std::string& id, const std::string& image, bool start) {
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

int cmd_rollout_list(Ctx& c) {
  Reply r = c.api->get("/api/v1/rollouts");
  if (!r.ok) return fail(r);
  if (c.json_out) return print_json(r.body), kExitOk;
  std::vector<std::vector<std::string>> rows;
  for (const auto& ro : r.body) {
    const json& counts = jobj(ro, "counts");
    rows.push_back({jstr(ro, "id"), jstr(ro, "name"), jstr(ro, "version"), rollout_target(ro),
                    jstr(ro, "state") + (jstr(ro, "state") == "paused" && !jstr(ro, "paused_by").empty()
                                             ? " (" + jstr(ro, "paused_by") + ")"
                                             : ""),
                    current_wave(ro).substr(5), std::to_string(jint(ro, "percent")) + "%",
                    std::to_string(jint(ro, "devices_total")), std::to_string(jint(counts, "succeeded")),
                    std::to_string(jint(counts, "failed")), fmt_pct(jnum(jobj(ro, "failure_rate"), "total")),
                    fmt_time(jint(ro, "created_at"))});
  }
  print_table({"ID", "NAME", "VERSION", "TARGET", "STATE", "WAVE", "PROGRESS", "DEVICES", "OK", "FAILED",
               "FAILURE", "CREATED (UTC)"},
              rows);
  return kExitOk;
}

int cmd_rollout_show(Ctx& c, const std::string& id, bool devices) {
  Reply r = c.api->get("/api/v1/rollouts/" + url_encode(id) + (devices ? "?devices=1" : ""));
  if (!r.ok) return fail(r);
  if (c.json_out) return print_json(r.body), kExitOk;
  print_rollout(r.body, devices);
  return kExitOk;
}

bool paused_by_policy(const json& ro) {
  const std::string by = jstr(ro, "paused_by");
  return jstr(ro, "state") == "paused" && (by == "policy" || by == "threshold");
}

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

// The live view: polls the rollout (and its last events) every interval until it completes,
// is aborted or is paused by its policy.
int cmd_watch(Ctx& c, const std::string& id, int interval_ms, int events_shown, int retry_for_s) {
  const bool tty = isatty(STDOUT_FILENO) != 0 && !c.json_out;
  std::string last_block, last_json, last_err;
  std::size_t drawn = 0;  // lines of the block on screen (TTY)
  auto fail_since = std::chrono::steady_clock::time_point{};
  bool failing = false;
  json ro, events = json::array();
  auto draw = [&](const std::vector<std::string>& lines) {
    std::string block;
    for (const auto& l : lines) block += l + "\n";
    if (block == last_block) return;
    if (!tty) {
      if (!last_block.empty()) std::printf("\n");
      std::fputs(block.c_str(), stdout);
    } else {
      // Lines longer than the terminal would wrap and a block taller than it would scroll, and
      // then "cursor up" would miss the block's start: cut both (events go first).
      winsize ws{};
      const bool known = ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0;
      const std::size_t cols = known && ws.ws_col > 1 ? ws.ws_col : 200;
      const std::size_t rows = known && ws.ws_row > 3 ? ws.ws_row : 1000;
      std::string out;
      if (drawn > 0) out += "\033[" + std::to_string(drawn) + "A";
      std::size_t n = 0;
      for (const auto& l : lines) {
        if (n + 1 >= rows) break;
        out += "\r\033[2K" + (l.size() >= cols ? l.substr(0, cols - 1) : l) + "\n";
        ++n;
      }
      out += "\033[J";
      std::fputs(out.c_str(), stdout);
      drawn = n;
    }
    last_block = block;
    std::fflush(stdout);
  };
  auto render = [&](const std::string& note) {
    std::vector<std::string> lines = rollout_lines(ro);
    if (events_shown > 0 && events.is_array() && !events.empty()) {
      lines.push_back("recent events:");
      for (const auto& e : events) {
        char head[96];
        std::snprintf(head, sizeof head, "  %s  %-16s %-16s", event_time(jint(e, "ts"), false).c_str(),
                      jstr(e, "actor").c_str(), jstr(e, "what").c_str());
        std::string l = head;
        if (!jstr(e, "device").empty()) l += " " + jstr(e, "device");
        if (!jstr(e, "detail").empty()) l += "  " + jstr(e, "detail");
        lines.push_back(l);
      }
    }
    const std::string st = jstr(ro, "state");
    if (st == "draft")
      lines.push_back("(a draft: start it with otactl rollout start " + jstr(ro, "id") + ")");
    else if (st == "scheduled")
      lines.push_back("(scheduled: starts at " + fmt_time(jint(jobj(ro, "policy"), "start_at")) + " UTC)");
    else if (st == "paused" && !paused_by_policy(ro))
      lines.push_back("(waiting for: otactl rollout resume " + jstr(ro, "id") + ")");
    if (!note.empty()) lines.push_back(note);
    draw(lines);
  };
  for (;;) {
    Reply r = c.api->get("/api/v1/rollouts/" + url_encode(id));
    if (r.ok && events_shown > 0 && !c.json_out) {
      Reply e = c.api->get("/api/v1/events?rollout=" + url_encode(id) + "&limit=200");
      if (e.ok && e.body.is_array()) events = notable_events(e.body, static_cast<std::size_t>(events_shown));
    }
    if (r.ok) {
      failing = false;
      last_err.clear();
      ro = r.body;
      if (c.json_out) {
        std::string line = ro.dump();
        if (line != last_json) std::printf("%s\n", line.c_str()), std::fflush(stdout);
        last_json = line;
      } else {
        render("");
      }
      std::FILE* msg = c.json_out ? stderr : stdout;
      const std::string st = jstr(ro, "state");
      const std::string rid = jstr(ro, "id").empty() ? id : jstr(ro, "id");
      if (st == "completed") {
        std::fprintf(msg, "rollout %s completed: %lld of %lld devices succeeded\n", rid.c_str(),
                     jint(jobj(ro, "counts"), "succeeded"), jint(ro, "devices_total"));
        return kExitOk;
      }
      if (st == "aborted") {
        std::string why = jstr(ro, "pause_reason");
        for (const char* p : {"rollout aborted: ", "rollout aborted"})
          if (why.rfind(p, 0) == 0) why = why.substr(std::strlen(p));
        std::fprintf(stderr, "rollout %s aborted%s (%s)\n", rid.c_str(), why.empty() ? "" : (": " + why).c_str(),
                     rollout_counts(jobj(ro, "counts")).c_str());
        return kExitFail;
      }
      if (paused_by_policy(ro)) {
        std::fprintf(stderr, "rollout %s %s; resume it with: otactl rollout resume %s\n", rid.c_str(),
                     pause_text(ro).c_str(), rid.c_str());
        return kExitFail;
      }
    } else if (r.status == 0 || r.status >= 500) {  // unreachable or restarting: retry for a while
      const auto now = std::chrono::steady_clock::now();
      if (!failing) fail_since = now, failing = true;
      const double down = std::chrono::duration<double>(now - fail_since).count();
      if (down >= retry_for_s) {
        errorf(r.error + " (gave up after " + std::to_string(retry_for_s) + " s)");
        return r.status == 0 ? kExitTimeout : kExitFail;
      }
      if (r.error != last_err) {
        if (tty && ro.is_object())
          render("(" + r.error + "; retrying)");
        else
          errorf(r.error + " (retrying)");
        last_err = r.error;
      }
    } else {
      return fail(r);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(interval_ms));
  }
}

// Event rows; ROLLOUT / DEPLOYMENT / DEVICE / ACTOR columns only when some event has them.
void print_events(const json& evs) {
  const char* const keys[] = {"actor", "rollout", "deployment", "device"};
  const char* const heads[] = {"ACTOR", "ROLLOUT", "DEPLOYMENT", "DEVICE"};
  bool show[4] = {false, false, false, false};
  for (const auto& e : evs)
    for (int k = 0; k < 4; ++k)
      if (!jstr(e, keys[k]).empty()) show[k] = true;
  std::vector<std::string> head{"TIME (UTC)"};
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

int cmd_device_tag(Ctx& c, const std::string& id, const json& body) {
  Reply r = c.api->put_json("/api/v1/devices/" + url_encode(id) + "/tags", body);
  if (!r.ok) return fail(r);
  if (c.json_out) return print_json(r.body), kExitOk;
  const std::string tags = tags_text(r.body);
  std::printf("device %s tags: %s\n", id.c_str(), tags.empty() ? "(none)" : tags.c_str());
  return kExitOk;
}

int cmd_devices(Ctx& c, const std::string& query) {
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

int cmd_device_show(Ctx& c, const std::string& id) {
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

int cmd_events(Ctx& c, const std::string& rollout, const std::string& dep, const std::string& dev, int limit) {
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

// Each check of GET /api/v1/health as a table row; exit 1 while any fails.
int cmd_health(Ctx& c) {
  Reply r = c.api->get("/api/v1/health");
  if (!r.ok && !(r.status == 503 && r.body.is_object() && r.body.contains("checks"))) return fail(r);
  if (c.json_out) {
    print_json(r.body);
    return r.ok ? kExitOk : kExitFail;
  }
  const json& ch = r.body["checks"];
  std::vector<std::vector<std::string>> rows;
  auto verdict = [](const json& j) { return j.is_object() && j.value("ok", false) ? "ok" : "FAILING"; };
  if (ch.contains("mqtt")) {
    const json& m = ch["mqtt"];
    std::string detail = jstr(m, "state") + " " + jstr(m, "broker") + ", " +
                         std::to_string(jint(m, "reconnects")) + " reconnects";
    if (jhas(m, "down_for_s")) detail += ", down " + std::to_string(jint(m, "down_for_s")) + " s";
    if (jhas(m, "last_error")) detail += ", last error: " + jstr(m, "last_error");
    rows.push_back({"mqtt", verdict(m), detail});
  }
  if (ch.contains("database")) {
    const json& d = ch["database"];
    std::string detail = jstr(d, "path") + ", " + std::to_string(jint(d, "write_errors")) + " write errors";
    if (jhas(d, "last_error")) detail += ", last error: " + jstr(d, "last_error");
    rows.push_back({"database", verdict(d), detail});
  }
  if (ch.contains("disk")) {
    const json& d = ch["disk"];
    std::string detail;
    for (const auto& p : d.value("paths", json::array()))
      detail += (detail.empty() ? "" : ", ") + jstr(p, "path") + " " +
                (jhas(p, "free_bytes") ? fmt_bytes(jint(p, "free_bytes")) + " free" : jstr(p, "error"));
    detail += " (minimum " + fmt_bytes(jint(d, "min_free_bytes")) + ")";
    rows.push_back({"disk", verdict(d), detail});
  }
  std::printf("controller %s\n\n", jstr(r.body, "status").c_str());
  print_table({"CHECK", "STATE", "DETAIL"}, rows);
  return r.ok ? kExitOk : kExitFail;
}

// An online backup of the controller's database, written to `dest` (atomically: a partial
// download never carries the final name).
int cmd_backup(Ctx& c, const std::string& dest, bool force) {
  struct stat st {};
  if (!force && ::stat(dest.c_str(), &st) == 0) {
    errorf("backup: " + dest + " already exists (pass --force to replace it)");
    return kExitUsage;
  }
  std::string bytes;
  Reply r = c.api->download("/api/v1/backup", bytes);
  if (!r.ok) return fail(r);
  static const char kMagic[] = "SQLite format 3";  // and its NUL: the first 16 bytes of the file
  if (bytes.size() < 100 || std::memcmp(bytes.data(), kMagic, sizeof kMagic) != 0) {
    errorf("backup: the controller sent " + std::to_string(bytes.size()) +
           " bytes that are not an SQLite database; nothing written");
    return kExitFail;
  }
  const std::string tmp = dest + ".part";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    errorf("backup: create " + tmp + ": " + std::strerror(errno));
    return kExitFail;
  }
  std::size_t off = 0;
  while (off < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + off, bytes.size() - off);
    if (n <= 0) break;
    off += static_cast<std::size_t>(n);
  }
  const bool ok = off == bytes.size() && ::fsync(fd) == 0;
  const int saved = errno;
  ::close(fd);
  if (!ok || ::rename(tmp.c_str(), dest.c_str()) != 0) {
    const std::string why = std::strerror(ok ? errno : saved);
    ::unlink(tmp.c_str());
    errorf("backup: write " + dest + ": " + why + "; nothing written");
    return kExitFail;
  }
  if (c.json_out) {
    print_json(json{{"file", dest}, {"bytes", bytes.size()}});
  } else {
    std::printf("backup: %s written to %s (mode 0600)\n", fmt_bytes(static_cast<long long>(bytes.size())).c_str(),
                dest.c_str());
    std::printf("restore: stop the controller, copy it over the --db file, delete the db's -wal and "
                "-shm files, start the controller\n");
  }
  return kExitOk;
}

// ------------------------------------------------------------------------------- tokens

// The secret goes alone to stdout (`otactl token create ci --role operator > ci.token`), the
// explanation to stderr: it is shown once and the controller keeps only its hash.
int cmd_token_create(Ctx& c, const std::string& name, const std::string& role) {
  Reply r = c.api->post_json("/api/v1/tokens", json{{"name", name}, {"role", role}});
  if (!r.ok) return fail(r);
  if (c.json_out) return print_json(r.body), kExitOk;
  std::fprintf(stderr,
               "token %s (role %s) created. Its secret follows; it is shown only now (the "
               "controller keeps its SHA-256): store it in a file of mode 0600 and use it with "
               "--token-file, OTA_API_TOKEN_FILE or OTA_API_TOKEN\n",
               jstr(r.body, "name").c_str(), jstr(r.body, "role").c_str());
  std::printf("%s\n", jstr(r.body, "token").c_str());
  return kExitOk;
}

int cmd_token_list(Ctx& c) {
  Reply r = c.api->get("/api/v1/tokens");
  if (!r.ok) return fail(r);
  if (c.json_out) return print_json(r.body), kExitOk;
  std::vector<std::vector<std::string>> rows;
  for (const auto& t : r.body) {
    const bool bootstrap = t.is_object() && t.value("bootstrap", false);
    rows.push_back({jstr(t, "name"), jstr(t, "role"),
                    bootstrap ? "-" : fmt_time(jint(t, "created_at")),
                    bootstrap ? "(the controller's --api-token-file)" : jstr(t, "created_by")});
  }
  print_table({"NAME", "ROLE", "CREATED", "CREATED BY"}, rows);
  return kExitOk;
}

int cmd_token_revoke(Ctx& c, const std::string& name) {
  Reply r = c.api->del("/api/v1/tokens/" + url_encode(name));
  if (!r.ok) return fail(r);
  if (c.json_out) return print_json(r.body), kExitOk;
  std::printf("token %s revoked: the controller refuses it from now on\n", name.c_str());
  return kExitOk;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"otactl: control the OTA fleet controller over its HTTP API"};
  app.require_subcommand(1);
  app.fallthrough();  // global options (--json, --api) may also follow the subcommand
  app.set_version_flag("--version", std::string(ota::cli::version()));
  const char* env_api = std::getenv("OTA_API");
  std::string api = env_api && *env_api ? env_api : "http://127.0.0.1:8080";
  bool json_out = false;
  app.add_option("--api", api, "controller API URL (default: $OTA_API or http://127.0.0.1:8080)");
  app.add_flag("--json", json_out, "machine-readable output (the API's JSON)");
  std::string token_file;
  app.add_option("--token-file", token_file,
                 "file holding the API bearer token (the controller's --api-token-file, default "
                 "<db>.token); else $OTA_API_TOKEN (the token), else $OTA_API_TOKEN_FILE");

  auto* image = app.add_subcommand("image", "manage firmware images");
  image->require_subcommand(1);
  auto* image_add = image->add_subcommand("add", "upload an image");
  std::string file, version, release_file;
  std::vector<std::string> hw;
  long long chunk_size = -1, counter = -1;
  std::string image_kind;
  std::vector<std::string> image_deletes;
  image_add->add_option("FILE", file,
                        "image file, or a directory to build an application bundle from")
      ->required();
  image_add->add_option("--kind", image_kind,
                        "firmware (a whole image) or bundle (application files; the default for "
                        "a directory)")
      ->check(CLI::IsMember({"firmware", "bundle"}));
  image_add->add_option("--delete", image_deletes,
                        "bundle: a path (file or directory) the update removes from the device "
                        "(repeatable)");
  image_add->add_option("--version", version, "semantic version, e.g. 1.2.0 (required without --release)");
  image_add->add_option("--hw", hw, "compatible hardware model (repeatable; required without --release)");
  image_add->add_option("--release", release_file,
                        "the release file of `otactl image sign` (FILE.release.json): uploads the "
                        "image with its release signature; version, hw, counter and kind come "
                        "from it");
  image_add->add_option("--chunk-size", chunk_size, "chunk size in bytes (256..65536, default 4096)")
      ->check(CLI::Range(256LL, 65536LL));
  auto* counter_opt = image_add->add_option("--counter", counter, "security counter (default 0)")
      ->check(CLI::Range(0LL, 1000000LL));
  bool security_release = false;
  image_add->add_flag("--security-release", security_release,
                      "a security fix: the counter becomes the highest registered one + 1, so "
                      "devices that confirm this image refuse every earlier one")
      ->excludes(counter_opt);
  auto* image_list = image->add_subcommand("list", "list images");
  auto* image_sign = image->add_subcommand(
      "sign", "sign an image offline with a release key (no controller needed): writes FILE.release.json");
  std::string sign_key, sign_out, sign_kind;
  std::vector<std::string> sign_deletes;
  long long sign_counter = 0;
  image_sign->add_option("FILE", file, "image file, or a directory to build an application bundle from")
      ->required();
  image_sign->add_option("--key", sign_key, "release private key (PEM, P-256; mode 0600)")->required();
  image_sign->add_option("--version", version, "semantic version, e.g. 1.2.0")->required();
  image_sign->add_option("--hw", hw, "compatible hardware model (repeatable)")->required();
  image_sign->add_option("--counter", sign_counter, "security counter (default 0)")
      ->check(CLI::Range(0LL, 1000000LL));
  image_sign->add_option("--kind", sign_kind, "firmware or bundle (the default for a directory)")
      ->check(CLI::IsMember({"firmware", "bundle"}));
  image_sign->add_option("--delete", sign_deletes,
                         "bundle: a path the update removes from the device (repeatable)");
  image_sign->add_option("-o,--output", sign_out,
                         "release file to write (default FILE.release.json; for a directory DIR.bundle "
                         "is written next to it)");

  auto* keys_cmd = app.add_subcommand("keys", "key sets: the keys devices trust, signed by the root key");
  keys_cmd->require_subcommand(1);
  auto* keys_sign = keys_cmd->add_subcommand("sign", "sign a key set offline with the root key (no controller needed)");
  std::string ks_root, ks_next_root, ks_out, ks_file;
  std::vector<std::string> ks_release, ks_online;
  long long ks_version = 0;
  keys_sign->add_option("--root", ks_root, "the root private key (PEM, P-256; mode 0600) devices trust")->required();
  keys_sign->add_option("--version", ks_version, "key-set version: higher than the one devices hold (>= 1)")
      ->required()
      ->check(CLI::Range(1LL, 4294967295LL));
  keys_sign->add_option("--release", ks_release, "a release public key (PEM) of the set (repeatable, at least one)")
      ->allow_extra_args(false);
  keys_sign->add_option("--online", ks_online, "an online public key (PEM) of the set: the controller's --signing-key (repeatable)")
      ->allow_extra_args(false);
  keys_sign->add_option("--next-root", ks_next_root, "public key (PEM) that becomes the root for the next set (root rotation)");
  keys_sign->add_option("-o,--output", ks_out, "file to write the key set to")->required();
  auto* keys_push = keys_cmd->add_subcommand("push", "upload a key set to the controller (admin), which sends it to the devices");
  keys_push->add_option("FILE", ks_file, "key set file of `otactl keys sign`")->required();
  auto* keys_show = keys_cmd->add_subcommand("show", "the key set the controller holds and how many devices trust each version");

  auto* deploy = app.add_subcommand("deploy", "deploy an image to a device or a group");
  std::string dep_image, dep_device, dep_group;
  bool wait = false;
  double timeout_s = 1800;
  deploy->add_option("IMAGE", dep_image, "image id or version")->required();
  auto* o_dev = deploy->add_option("--device", dep_device, "target device id");
  auto* o_grp = deploy->add_option("--group", dep_group, "target group");
  o_dev->excludes(o_grp);
  o_grp->excludes(o_dev);
  auto* o_wait = deploy->add_flag("--wait", wait, "wait for the deployment to finish, showing progress");
  deploy->add_option("--timeout", timeout_s, "with --wait: give up after SECONDS (default 1800; exit 3)")
      ->needs(o_wait)
      ->check(CLI::PositiveNumber);

  auto* devices = app.add_subcommand("devices", "list devices");
  std::string f_group, f_version, f_tag, f_state;
  bool f_online = false, f_offline = false;
  devices->add_option("--group", f_group, "only members of this group");
  devices->add_option("--tag", f_tag, "only devices matching this tag expression, e.g. 'site=berlin and model=esp32'");
  devices->add_option("--version", f_version, "only devices running this version");
  devices->add_option("--state", f_state, "only devices in this update state (idle, offered, downloading, installing, ...; updating = not idle)");
  auto* o_on = devices->add_flag("--online", f_online, "only online devices");
  auto* o_off = devices->add_flag("--offline", f_offline, "only offline devices");
  o_on->excludes(o_off);
  o_off->excludes(o_on);

  auto* device = app.add_subcommand("device", "one device");
  device->require_subcommand(1);
  auto* device_show = device->add_subcommand("show", "show a device");
  std::string dev_id;
  device_show->add_option("ID", dev_id, "device id")->required();
  auto* device_revoke = device->add_subcommand(
      "revoke", "revoke a device (admin): the controller drops its messages and never targets it; prints the broker-side step");
  device_revoke->add_option("ID", dev_id, "device id")->required();
  auto* device_tag = device->add_subcommand("tag", "set or remove a device's tags");
  std::vector<std::string> tag_set, tag_remove;
  device_tag->add_option("ID", dev_id, "device id")->required();
  device_tag->add_option("KEY=VALUE", tag_set, "tags to set");
  device_tag->add_option("--remove", tag_remove, "tag key to remove (repeatable)")->allow_extra_args(false);

  auto* status = app.add_subcommand("status", "fleet summary, or one deployment's progress");
  std::string status_dep;
  status->add_option("DEPLOYMENT", status_dep, "deployment id");

  auto* deployment = app.add_subcommand("deployment", "manage deployments");
  deployment->require_subcommand(1);
  auto* dl = deployment->add_subcommand("list", "list deployments");
  auto* ds = deployment->add_subcommand("show", "show a deployment with per-device rows");
  auto* dc = deployment->add_subcommand("cancel", "cancel a deployment");
  std::string d_id;
  ds->add_option("ID", d_id, "deployment id")->required();
  dc->add_option("ID", d_id, "deployment id")->required();

  auto* events = app.add_subcommand("events", "event log");
  std::string e_rollout, e_dep, e_dev;
  int e_limit = 50;
  events->add_option("--rollout", e_rollout, "only this rollout");
  events->add_option("--deployment", e_dep, "only this deployment");
  events->add_option("--device", e_dev, "only this device");
  events->add_option("--limit", e_limit, "at most N events (1..10000, default 50)")->check(CLI::Range(1, 10000));

  // rollout create|start|pause|resume|abort|retry|rollback|list|show|events
  auto* rollout = app.add_subcommand("rollout", "staged rollouts");
  rollout->require_subcommand(1);
  auto* ro_create = rollout->add_subcommand("create", "create a rollout (a draft until `otactl rollout start`, unless --start)");
  std::string ro_image, ro_group, ro_tags, ro_name, ro_on_failure, ro_retry_delay, ro_timeout, ro_start_at,
      ro_window, ro_defer_delay;
  std::vector<std::string> ro_devices, ro_waves;
  double ro_max_wave = -1, ro_max_total = -1;
  long long ro_retries = -1, ro_max_conc = -1, ro_max_defers = -1;
  bool ro_start = false;
  ro_create->add_option("IMAGE", ro_image, "image id or version")->required();
  auto* t_grp = ro_create->add_option("--group", ro_group, "target: the members of group G");
  auto* t_dev = ro_create->add_option("--devices", ro_devices, "target: these devices (ID[,ID...])")
                    ->delimiter(',')
                    ->allow_extra_args(false);
  auto* t_tag = ro_create->add_option("--tags", ro_tags, "target: devices whose tags match EXPR, e.g. 'site=berlin and model=esp32'");
  t_grp->excludes(t_dev)->excludes(t_tag);
  t_dev->excludes(t_grp)->excludes(t_tag);
  t_tag->excludes(t_grp)->excludes(t_dev);
  ro_create->add_option("--name", ro_name, "a name for people");
  ro_create->add_option("--wave", ro_waves,
                 "a wave SIZE[:THRESHOLD[:SOAK]] (repeatable, in order): SIZE 10% of the remaining targets "
                 "or a count 5; THRESHOLD success percent before the next wave starts (default: none, the next wave waits until every device of this one has finished); SOAK a duration "
                 "(30s, 5m, 2h, 1d) to wait after it; the last wave takes all remaining targets (default: "
                 "one wave of 100%)")
      ->allow_extra_args(false);
  ro_create->add_option("--max-wave-failure", ro_max_wave, "failure policy: max failure percent in a wave")
      ->check(CLI::Range(0.0, 100.0));
  ro_create->add_option("--max-failure", ro_max_total, "failure policy: max failure percent over the whole rollout")
      ->check(CLI::Range(0.0, 100.0));
  ro_create->add_option("--on-failure", ro_on_failure, "pause|abort when a failure limit is crossed");
  ro_create->add_option("--retries", ro_retries, "retries per failed device")->check(CLI::Range(0LL, 1000LL));
  ro_create->add_option("--retry-delay", ro_retry_delay, "wait before a retry (duration)");
  ro_create->add_option("--timeout", ro_timeout, "in-progress timeout per device (duration)");
  ro_create->add_option("--max-concurrent", ro_max_conc, "at most N devices transferring at once")
      ->check(CLI::Range(1LL, 1000000LL));
  ro_create->add_option("--start-at", ro_start_at, "start time: YYYY-MM-DDTHH:MM[:SS]Z (or +HH:MM) or unix seconds");
  ro_create->add_option("--window", ro_window, "maintenance window HH:MM-HH:MM (UTC; offers only inside it)");
  ro_create->add_option("--defer-delay", ro_defer_delay, "retry a deferred offer after this duration");
  ro_create->add_option("--max-defers", ro_max_defers, "at most N deferrals per device")->check(CLI::Range(0LL, 1000000LL));
  ro_create->add_flag("--start", ro_start, "start at once (with --start-at: schedule it) instead of leaving a draft");

  std::string ro_id, ro_reason, rb_image;
  bool rb_no_start = false, rs_devices = false;
  struct Action {
    const char* name;
    const char* help;
    bool reason;
    CLI::App* cmd = nullptr;
  };
  Action actions[] = {{"start", "start a draft or scheduled rollout", false},
                      {"pause", "pause a rollout (devices in flight finish)", true},
                      {"resume", "resume a paused rollout", false},
                      {"abort", "abort a rollout (devices in flight are told to cancel)", true},
                      {"retry", "offer the image again to the rollout's failed devices", false}};
  for (auto& a : actions) {
    a.cmd = rollout->add_subcommand(a.name, a.help);
    a.cmd->add_option("ID", ro_id, "rollout id")->required();
    if (a.reason) a.cmd->add_option("--reason", ro_reason, "why (written to the event log)");
  }
  auto* rrb = rollout->add_subcommand("rollback", "create a rollout back to the previous (or another) version");
  rrb->add_option("ID", ro_id, "rollout id")->required();
  rrb->add_option("--image", rb_image, "image id or version (default: the version the targets ran before)");
  rrb->add_flag("--no-start", rb_no_start, "leave the rollback rollout as a draft");
  auto* rl = rollout->add_subcommand("list", "list rollouts");
  auto* rs = rollout->add_subcommand("show", "show a rollout: policy, waves, counts");
  rs->add_option("ID", ro_id, "rollout id")->required();
  rs->add_flag("--devices", rs_devices, "with one row per device");
  auto* re = rollout->add_subcommand("events", "a rollout's event log");
  re->add_option("ID", ro_id, "rollout id")->required();
  re->add_option("--limit", e_limit, "at most N events (1..10000, default 50)")->check(CLI::Range(1, 10000));

  auto* health = app.add_subcommand("health", "the controller's health checks (broker link, database, disk); exit 1 while one fails");
  auto* backup = app.add_subcommand("backup", "download an online backup of the controller's database");
  std::string backup_file;
  bool backup_force = false;
  backup->add_option("FILE", backup_file, "where to write the backup (an SQLite file)")->required();
  backup->add_flag("--force", backup_force, "replace FILE if it exists");
  auto* token_cmd = app.add_subcommand("token", "API tokens (admin): one per person or script, with a role");
  token_cmd->require_subcommand(1);
  auto* token_create = token_cmd->add_subcommand(
      "create", "create a token; prints its secret once (to stdout, alone on a line)");
  auto* token_list = token_cmd->add_subcommand("list", "list tokens (names and roles, never secrets)");
  auto* token_revoke = token_cmd->add_subcommand("revoke", "revoke a token: refused from the next request on");
  std::string token_name, token_role;
  token_create->add_option("NAME", token_name, "who or what uses it: 1-64 of A-Z a-z 0-9 . _ @ -")->required();
  token_create->add_option("--role", token_role,
                           "read-only (GETs and /metrics), operator (+ images, deployments, "
                           "rollouts, tags) or admin (+ tokens, backup, reset-seq)")
      ->required()
      ->check(CLI::IsMember({"read-only", "operator", "admin"}));
  token_revoke->add_option("NAME", token_name, "token name")->required();
  auto* watch = app.add_subcommand("watch", "live view of a rollout until it ends");
  std::string w_id;
  int w_interval = 500, w_events = 5, w_retry_for = 10;
  watch->add_option("ROLLOUT", w_id, "rollout id")->required();
  watch->add_option("--interval-ms", w_interval, "poll interval (50..60000 ms, default 500)")
      ->check(CLI::Range(50, 60000));
  watch->add_option("--retry-for", w_retry_for,
                    "keep retrying an unreachable controller for S seconds before giving up with exit 3 "
                    "(0..3600, default 10)")
      ->check(CLI::Range(0, 3600));
  watch->add_option("--events", w_events, "show the last N events (0..50, default 5)")->check(CLI::Range(0, 50));

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? kExitOk : kExitUsage;
  }
  if (deploy->parsed() && dep_device.empty() && dep_group.empty()) {
    errorf("deploy: give a target: --device ID or --group G");
    return kExitUsage;
  }
  if (image_add->parsed() && release_file.empty()) {
    if (version.empty()) {
      errorf("image add: --version is required (or --release FILE.release.json from `otactl image sign`)");
      return kExitUsage;
    }
    if (hw.empty()) {
      errorf("image add: --hw is required (or --release FILE.release.json from `otactl image sign`)");
      return kExitUsage;
    }
  }
  // Offline commands: they need neither the controller nor an API token.
  if (image_sign->parsed())
    return cmd_image_sign(file, sign_key, version, hw, sign_counter, sign_kind, sign_deletes, sign_out, json_out);
  if (keys_sign->parsed())
    return cmd_keys_sign(ks_root, ks_version, ks_release, ks_online, ks_next_root, ks_out, json_out);

  // Everything that can be checked without the controller is checked before it is asked.
  json ro_body;
  if (ro_create->parsed()) {
    auto usage = [](const std::string& m) {
      errorf("rollout create: " + m);
      return kExitUsage;
    };
    ro_body = {{"image", ro_image}};
    if (!ro_group.empty()) {
      ro_body["target"] = {{"group", ro_group}};
    } else if (!ro_devices.empty()) {
      for (const auto& d : ro_devices)
        if (d.empty()) return usage("--devices: empty device id in the list");
      ro_body["target"] = {{"devices", ro_devices}};
    } else if (!ro_tags.empty()) {
      ro_body["target"] = {{"tags", ro_tags}};
    } else {
      return usage("give a target: --group G, --devices ID[,ID...] or --tags EXPR");
    }
    if (!ro_name.empty()) ro_body["name"] = ro_name;
    json waves = json::array();
    for (const auto& w : ro_waves) {
      json wave;
      std::string why;
      if (!otactl::parse_wave(w, wave, why)) return usage("--wave '" + w + "': " + why);
      waves.push_back(wave);
    }
    if (waves.empty()) waves.push_back({{"size", "100%"}});
    ro_body["waves"] = waves;
    json failure = json::object();
    auto pct = [](double v) {
      return v == static_cast<double>(static_cast<long long>(v)) ? json(static_cast<long long>(v)) : json(v);
    };
    if (ro_max_wave >= 0) failure["max_wave_rate"] = pct(ro_max_wave);
    if (ro_max_total >= 0) failure["max_total_rate"] = pct(ro_max_total);
    if (!ro_on_failure.empty()) {
      if (ro_on_failure != "pause" && ro_on_failure != "abort")
        return usage("--on-failure must be pause or abort, not '" + ro_on_failure + "'");
      failure["action"] = ro_on_failure;
    }
    if (!failure.empty()) ro_body["failure"] = failure;
    if (ro_retries >= 0) ro_body["retries"] = ro_retries;
    if (ro_max_conc >= 0) ro_body["max_concurrent"] = ro_max_conc;
    if (ro_max_defers >= 0) ro_body["max_defers"] = ro_max_defers;
    const std::pair<const char*, const std::string*> durations[] = {
        {"retry_delay", &ro_retry_delay}, {"timeout", &ro_timeout}, {"defer_delay", &ro_defer_delay}};
    for (const auto& [key, val] : durations) {
      std::string opt = std::string("--") + key;
      std::replace(opt.begin(), opt.end(), '_', '-');
      if (ro_create->count(opt) == 0) continue;
      long long secs = 0;
      std::string why;
      if (!otactl::parse_duration(*val, secs, why)) return usage(opt + " '" + *val + "': " + why);
      ro_body[key] = secs;
    }
    if (ro_create->count("--start-at") > 0) {
      long long t = 0;
      std::string why;
      if (!otactl::parse_time(ro_start_at, t, why)) return usage("--start-at '" + ro_start_at + "': " + why);
      ro_body["start_at"] = t;
    }
    if (ro_create->count("--window") > 0) {
      std::string why;
      if (!otactl::parse_window(ro_window, why)) return usage("--window '" + ro_window + "': " + why);
      ro_body["window"] = ro_window;
    }
    ro_body["start"] = ro_start;
  }
  json tag_body = json::object();
  if (device_tag->parsed()) {
    for (const auto& kv : tag_set) {
      const auto eq = kv.find('=');
      if (eq == std::string::npos || eq == 0) {
        errorf("device tag: '" + kv + "' is not KEY=VALUE");
        return kExitUsage;
      }
      tag_body[kv.substr(0, eq)] = kv.substr(eq + 1);
    }
    for (const auto& k : tag_remove) {
      if (k.empty() || k.find('=') != std::string::npos) {
        errorf("device tag: --remove takes a tag KEY, not '" + k + "'");
        return kExitUsage;
      }
      if (tag_body.contains(k)) {
        errorf("device tag: tag '" + k + "' is both set and removed");
        return kExitUsage;
      }
      tag_body[k] = nullptr;
    }
    if (tag_body.empty()) {
      errorf("device tag: give KEY=VALUE to set and/or --remove KEY");
      return kExitUsage;
    }
  }
  Url u;
  std::string why;
  if (!parse_url(api, u, why)) {
    errorf("invalid --api URL '" + api + "': " + why);
    return kExitUsage;
  }
  std::string token;
  if (!find_token(token_file, token, why)) {
    errorf(why);
    return kExitFail;
  }
  Ctx c;
  c.api = std::make_unique<Api>(api, u, token);
  c.json_out = json_out;

  if (image_add->parsed()) {
    return cmd_image_add(c, file, version, hw, chunk_size, security_release ? kCounterSecurityRelease : counter, image_kind,
                         image_deletes, release_file);
  }
  if (image_list->parsed()) return cmd_image_list(c);
  if (deploy->parsed()) return cmd_deploy(c, dep_image, dep_device, dep_group, wait, timeout_s);
  if (devices->parsed()) {
    std::string q;
    auto add = [&q](const char* k, const std::string& v) {
      if (!v.empty()) q += (q.empty() ? "?" : "&") + std::string(k) + "=" + url_encode(v);
    };
    add("group", f_group);
    add("tag", f_tag);
    add("version", f_version);
    add("state", f_state);
    add("online", f_online ? "true" : f_offline ? "false" : "");
    return cmd_devices(c, q);
  }
  if (device_show->parsed()) return cmd_device_show(c, dev_id);
  if (device_revoke->parsed()) return cmd_device_revoke(c, dev_id);
  if (keys_push->parsed()) return cmd_keys_push(c, ks_file);
  if (keys_show->parsed()) return cmd_keys_show(c);
  if (device_tag->parsed()) return cmd_device_tag(c, dev_id, tag_body);
  if (ro_create->parsed()) return cmd_rollout_create(c, ro_body);
  for (const auto& a : actions)
    if (a.cmd->parsed()) return cmd_rollout_action(c, ro_id, a.name, ro_reason);
  if (rrb->parsed()) return cmd_rollout_rollback(c, ro_id, rb_image, !rb_no_start);
  if (rl->parsed()) return cmd_rollout_list(c);
  if (rs->parsed()) return cmd_rollout_show(c, ro_id, rs_devices);
  if (re->parsed()) return cmd_events(c, ro_id, "", "", e_limit);
  if (watch->parsed()) return cmd_watch(c, w_id, w_interval, w_events, w_retry_for);
  if (status->parsed()) return cmd_status(c, status_dep);
  if (health->parsed()) return cmd_health(c);
  if (backup->parsed()) return cmd_backup(c, backup_file, backup_force);
  if (token_create->parsed()) return cmd_token_create(c, token_name, token_role);
  if (token_list->parsed()) return cmd_token_list(c);
  if (token_revoke->parsed()) return cmd_token_revoke(c, token_name);
  if (dl->parsed()) return cmd_deployment_list(c);
  if (ds->parsed()) return cmd_deployment_show(c, d_id);
  if (dc->parsed()) return cmd_deployment_cancel(c, d_id);
  if (events->parsed()) return cmd_events(c, e_rollout, e_dep, e_dev, e_limit);
  errorf("no command given (try --help)");
  return kExitUsage;
}
