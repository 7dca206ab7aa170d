#include "files.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "api_client.hpp"
#include "ota/proto/bundle.hpp"

namespace otactl {

namespace {

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

}  // namespace

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

}  // namespace otactl
