// otactl health, backup FILE: operating the controller.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "../commands.hpp"
#include "../format.hpp"

namespace otactl {

namespace {

// Each check of GET /api/v1/health as a table row; exit 1 while any fails.
int cmd_health(Context& c) {
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
int cmd_backup(Context& c, const std::string& dest, bool force) {
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

struct BackupOptions {
  std::string file;
  bool force = false;
};

}  // namespace

void add_ops_commands(CLI::App& app, Context& ctx) {
  auto* health = app.add_subcommand("health", "the controller's health checks (broker link, database, disk); exit 1 while one fails");
  ctx.on_api(health, [&ctx] { return cmd_health(ctx); });
  auto o = std::make_shared<BackupOptions>();
  auto* backup = app.add_subcommand("backup", "download an online backup of the controller's database");
  backup->add_option("FILE", o->file, "where to write the backup (an SQLite file)")->required();
  backup->add_flag("--force", o->force, "replace FILE if it exists");
  ctx.on_api(backup, [&ctx, o] { return cmd_backup(ctx, o->file, o->force); });
}

}  // namespace otactl
