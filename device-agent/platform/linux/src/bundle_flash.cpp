#include "ota/agent/linux/bundle_flash.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <set>

#include "ota/agent/linux/atomic_file.hpp"
#include "ota/agent/linux/boot_state_file.hpp"
#include "ota/proto/frame.hpp"

namespace ota::agent::linux_port {
namespace {

namespace bundle = proto::bundle;

PortStatus status_of(int err) {
  switch (err) {
    case ENOSPC:
    case EFBIG:
    case EDQUOT:
      return PortStatus::no_space;
    case EROFS:
    case EACCES:
    case EPERM:
      return PortStatus::read_only;
    default:
      return PortStatus::error;
  }
}

bool is_dir(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool exists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

std::string strip_slashes(std::string p) {
  while (!p.empty() && p.back() == '/') p.pop_back();
  while (!p.empty() && p.front() == '/') p.erase(0, 1);
  return p;
}

constexpr std::size_t kSpillRecordHeader = 16;  // u64 offset, u32 length, u32 crc32

void put_le(std::uint8_t* p, std::uint64_t v, int n) {
  for (int i = 0; i < n; ++i) p[i] = static_cast<std::uint8_t>(v >> (8 * i));
}

std::uint64_t get_le(const std::uint8_t* p, int n) {
  std::uint64_t v = 0;
  for (int i = 0; i < n; ++i) v |= static_cast<std::uint64_t>(p[i]) << (8 * i);
  return v;
}

}  // namespace

BundleFlash::BundleFlash(BundleFlashConfig config) : cfg_(std::move(config)) {
  for (auto& p : cfg_.protect) p = strip_slashes(p);
  cfg_.protect.erase(std::remove(cfg_.protect.begin(), cfg_.protect.end(), std::string()),
                     cfg_.protect.end());
}

BundleFlash::~BundleFlash() { forget_target(); }

std::string BundleFlash::tree_path(char slot) const {
  return cfg_.root + (slot == 'b' ? "/trees/b" : "/trees/a");
}

// ---------------------------------------------------------------------------------------
// Filesystem operations, each counted for the power-cut hook.

bool BundleFlash::op() {
  if (dead_) {
    errno = EIO;
    return false;
  }
  ++ops_;
  if (cut_at_ != 0 && ops_ >= cut_at_) {
    dead_ = true;
    errno = EIO;
    return false;
  }
  return true;
}

bool BundleFlash::fs_write_all(int fd, const void* data, std::size_t len, std::uint64_t offset) {
  const auto* p = static_cast<const std::uint8_t*>(data);
  const bool torn = !dead_ && cut_at_ != 0 && ops_ + 1 == cut_at_;
  if (!op()) {
    if (torn && len / 2 > 0) {
      (void)!::pwrite(fd, p, len / 2, static_cast<off_t>(offset));  // the power fails mid-write
    }
    errno = EIO;
    return false;
  }
  std::size_t done = 0;
  while (done < len) {
    const ssize_t n = ::pwrite(fd, p + done, len - done, static_cast<off_t>(offset + done));
    if (n <= 0) return false;
    done += static_cast<std::size_t>(n);
  }
  return true;
}

bool BundleFlash::fs_write_file_atomically(const std::string& path, const std::string& data) {
  const std::string tmp = path + ".tmp";
  if (!op()) return false;
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return false;
  bool ok = fs_write_all(fd, data.data(), data.size(), 0);
  if (ok && cfg_.durable) ok = fs_fsync(fd);
  const int saved = errno;
  ::close(fd);
  errno = saved;
  return ok && fs_rename(tmp, path);
}

bool BundleFlash::fs_mkdir(const std::string& path) {
  if (!op()) return false;
  return ::mkdir(path.c_str(), 0755) == 0 || errno == EEXIST;
}

bool BundleFlash::fs_rename(const std::string& from, const std::string& to) {
  if (!op()) return false;
  if (std::rename(from.c_str(), to.c_str()) != 0) return false;
  if (!cfg_.durable) return true;
  const std::size_t slash = to.rfind('/');
  return fs_fsync_dir(slash == std::string::npos ? "." : to.substr(0, slash));
}

bool BundleFlash::fs_unlink(const std::string& path) {
  if (!op()) return false;
  return ::unlink(path.c_str()) == 0 || errno == ENOENT;
}

bool BundleFlash::fs_fsync(int fd) {
  if (!cfg_.durable) return true;
  if (!op()) return false;
  return ::fsync(fd) == 0;
}

bool BundleFlash::fs_fsync_dir(const std::string& path) {
  if (!cfg_.durable) return true;
  const int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return false;
  const bool ok = fs_fsync(fd);
  ::close(fd);
  return ok;
}

bool BundleFlash::fs_remove_tree(const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) return errno == ENOENT;
  if (S_ISDIR(st.st_mode)) {
    std::unique_ptr<DIR, int (*)(DIR*)> dir(::opendir(path.c_str()), &::closedir);
    if (!dir) return false;
    std::vector<std::string> names;
    while (const dirent* e = ::readdir(dir.get())) {
      if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) {
        names.emplace_back(e->d_name);
      }
    }
    for (const auto& n : names) {
      if (!fs_remove_tree(path + "/" + n)) return false;
    }
    if (!op()) return false;
    return ::rmdir(path.c_str()) == 0;
  }
  return fs_unlink(path);
}

int BundleFlash::fs_create(const std::string& path) {
  if (!op()) return -1;
  // O_EXCL, not O_TRUNC: a bundle file is always new in the freshly emptied tree. Whatever
  // is already there is a hard link into the running tree (or a symlink), and truncating it
  // would change the running application, protected files included, past any rollback.
  return ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
}

PortStatus BundleFlash::fail(const std::string& what) {
  const int err = errno;
  last_error_ = what + ": " + (dead_ ? "power cut (test hook)" : std::strerror(err));
  return status_of(err);
}

PortStatus BundleFlash::refuse(const std::string& what) {
  last_error_ = what;
  std::fprintf(stderr, "bundle flash %s: %s\n", cfg_.root.c_str(), what.c_str());
  return PortStatus::error;
}

// ---------------------------------------------------------------------------------------
// Boot state

bool BundleFlash::load_state() {
  std::string text;
  BootStateFile file;
  if (!read_whole_file(cfg_.root + "/boot.state", text) || !parse_boot_state(text, file)) {
    return false;
  }
  boot_.record() = file.record;
  writing_image_ = file.writing_image;
  return true;
}

bool BundleFlash::save_state() {
  BootStateFile file;
  file.record = boot_.record();
  file.bundle = true;
  file.writing_image = writing_image_;
  return fs_write_file_atomically(cfg_.root + "/boot.state", format_boot_state(file));
}

PortStatus BundleFlash::switch_current(char slot) {
  const std::string want = slot == 'b' ? "trees/b" : "trees/a";
  char buf[64];
  const ssize_t n = ::readlink(current_path().c_str(), buf, sizeof buf);
  if (n > 0 && std::string(buf, static_cast<std::size_t>(n)) == want) return PortStatus::ok;
  const std::string tmp = cfg_.root + "/current.tmp";
  if (!fs_unlink(tmp)) return fail("remove " + tmp);
  if (!op() || ::symlink(want.c_str(), tmp.c_str()) != 0) return fail("symlink " + tmp);
  // rename() replaces the link in one step: ROOT/current names the old tree or the new one.
  if (!fs_rename(tmp, current_path())) return fail("rename " + tmp + " over " + current_path());
  return PortStatus::ok;
}

PortStatus BundleFlash::power_on() {
  forget_target();
  reset_requested_ = false;
  if (!fs_mkdir(cfg_.root) || !fs_mkdir(cfg_.root + "/trees")) return fail("mkdir " + cfg_.root);
  if (!load_state()) {
    // Factory-fresh: the application as installed in ROOT/current (a plain directory) becomes
    // tree a, confirmed; without one tree a starts empty.
    boot_.factory(cfg_.initial_version.c_str());
    writing_image_.clear();
    if (is_dir(current_path()) && !exists(tree_path('a'))) {
      if (!fs_rename(current_path(), tree_path('a'))) return fail("adopt " + current_path());
    }
    if (!fs_mkdir(tree_path('a'))) return fail("mkdir " + tree_path('a'));
    if (!save_state()) return fail("save " + cfg_.root + "/boot.state");
  }
  if (sim_boot::BootLoader::changes_record(boot_.power_on()) && !save_state()) {
    return fail("save boot.state");
  }
  return switch_current(boot_.running());
}

PortStatus BundleFlash::read_state(ImageState& out) {
  out = ImageState{};
  out.kind = proto::ImageKind::bundle;
  boot_.report(out);
  struct statvfs vfs {};
  if (::statvfs(cfg_.root.c_str(), &vfs) == 0) {
    const std::uint64_t avail = static_cast<std::uint64_t>(vfs.f_bavail) * vfs.f_frsize;
    out.free_bytes = avail > cfg_.reserve_bytes ? avail - cfg_.reserve_bytes : 0;
  }
  return PortStatus::ok;
}

// ---------------------------------------------------------------------------------------
// Writing a bundle

void BundleFlash::close_files() {
  for (auto& f : fds_) ::close(f.second);
  fds_.clear();
  dirty_.clear();
}

void BundleFlash::forget_target() {
  close_files();
  if (spill_fd_ >= 0) ::close(spill_fd_);
  spill_fd_ = -1;
  spill_.clear();
  spill_bytes_ = 0;
  head_.clear();
  head_complete_ = false;
  index_ = bundle::Index{};
  target_ = 0;
  target_size_ = 0;
}

int BundleFlash::file_fd(std::size_t i) {
  auto it = fds_.find(i);
  if (it != fds_.end()) return it->second;
  if (fds_.size() >= 64) {  // bounded: make an evicted file durable before closing it
    auto victim = fds_.begin();
    if (dirty_[victim->first] && !fs_fsync(victim->second)) return -1;
    dirty_.erase(victim->first);
    ::close(victim->second);
    fds_.erase(victim);
  }
  const std::string path = tree_path(target_) + "/" + index_.files[i].path;
  const int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW);
  if (fd >= 0) fds_[i] = fd;
  return fd;
}

PortStatus BundleFlash::begin(const proto::Manifest& manifest, bool resume) {
  if (dead_) return PortStatus::error;
  last_error_.clear();
  if (boot_.record().pending != 0) {
    return refuse("a trial tree must be confirmed or reverted first");
  }
  if (manifest.kind != proto::ImageKind::bundle) return refuse("not a bundle manifest");
  forget_target();
  target_ = boot_.inactive();
  target_size_ = manifest.size;
  const std::string spill_path = cfg_.root + "/bundle.spill";
  const std::string head_path = cfg_.root + "/bundle.head";
  const bool keep =
      resume && boot_.record().writing == target_ && writing_image_ == manifest.sha256.c_str();
  if (keep) {
    std::string head;
    if (read_whole_file(head_path, head)) {
      // The tree was prepared before the head was saved: files continue where they stopped.
      std::uint32_t index_len = 0;
      const auto* p = reinterpret_cast<const std::uint8_t*>(head.data());
      if (bundle::parse_header(p, head.size(), index_len).empty() &&
          head.size() == bundle::kHeaderSize + index_len &&
          bundle::parse_index(head.data() + bundle::kHeaderSize, index_len, index_).empty() &&
          index_.total_size == target_size_) {
        head_ = std::move(head);
        head_complete_ = true;
        if (!fs_unlink(spill_path)) return fail("remove " + spill_path);
        return PortStatus::ok;
      }
    } else {
      // Not prepared yet: replay the spilled chunks (a torn last record was never synced, so
      // the agent does not count it), empty the tree again.
      std::string log;
      read_whole_file(spill_path, log);
      std::size_t pos = 0;
      const auto* p = reinterpret_cast<const std::uint8_t*>(log.data());
      while (pos + kSpillRecordHeader <= log.size()) {
        const std::uint64_t off = get_le(p + pos, 8);
        const auto len = static_cast<std::size_t>(get_le(p + pos + 8, 4));
        const auto crc = static_cast<std::uint32_t>(get_le(p + pos + 12, 4));
        if (len > log.size() - pos - kSpillRecordHeader || off + len > target_size_ ||
            proto::crc32(p + pos + kSpillRecordHeader, len) != crc) {
          break;
        }
        spill_[off] = log.substr(pos + kSpillRecordHeader, len);
        spill_bytes_ += len;
        pos += kSpillRecordHeader + len;
      }
      if (!fs_remove_tree(tree_path(target_)) || !fs_mkdir(tree_path(target_))) {
        return fail("empty " + tree_path(target_));
      }
      spill_fd_ = ::open(spill_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
      if (spill_fd_ < 0) return fail("open " + spill_path);
      if (::ftruncate(spill_fd_, static_cast<off_t>(pos)) != 0) return fail("truncate spill");
      return try_complete_head();
    }
  }
  // Afresh. The inactive tree stops being a fallback the moment it is emptied.
  boot_.start_writing(target_);
  writing_image_ = manifest.sha256.c_str();
  if (!save_state()) return fail("save boot.state");
  if (!fs_unlink(head_path) || !fs_unlink(spill_path)) return fail("remove staging files");
  if (!fs_remove_tree(tree_path(target_)) || !fs_mkdir(tree_path(target_))) {
    return fail("empty " + tree_path(target_));
  }
  if (!op()) return fail("create " + spill_path);
  spill_fd_ = ::open(spill_path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (spill_fd_ < 0) return fail("create " + spill_path);
  return resume ? PortStatus::not_found : PortStatus::ok;
}

bool BundleFlash::spill_covers(std::uint64_t offset, std::size_t len, std::uint8_t* out) const {
  std::uint64_t pos = offset;
  const std::uint64_t end = offset + len;
  while (pos < end) {
    auto it = spill_.upper_bound(pos);
    if (it == spill_.begin()) return false;
    --it;
    const std::uint64_t r_end = it->first + it->second.size();
    if (r_end <= pos) return false;
    const std::uint64_t n = std::min(end, r_end) - pos;
    if (out != nullptr) {
      std::memcpy(out + (pos - offset), it->second.data() + (pos - it->first),
                  static_cast<std::size_t>(n));
    }
    pos += n;
  }
  return true;
}

PortStatus BundleFlash::try_complete_head() {
  std::uint8_t header[bundle::kHeaderSize];
  if (!spill_covers(0, sizeof header, header)) return PortStatus::ok;
  std::uint32_t index_len = 0;
  if (std::string err = bundle::parse_header(header, sizeof header, index_len); !err.empty()) {
    return refuse(err);
  }
  const std::size_t head_len = bundle::kHeaderSize + index_len;
  if (head_len > target_size_) return refuse("bundle index is longer than the signed size");
  std::string head(head_len, '\0');
  if (!spill_covers(0, head_len, reinterpret_cast<std::uint8_t*>(&head[0]))) {
    return PortStatus::ok;  // the rest of the index is still on its way
  }
  bundle::Index index;
  if (std::string err = bundle::parse_index(head.data() + bundle::kHeaderSize, index_len, index);
      !err.empty()) {
    return refuse(err);
  }
  if (index.total_size != target_size_) {
    return refuse("bundle index adds up to " + std::to_string(index.total_size) +
                  " bytes, the signed manifest says " + std::to_string(target_size_));
  }
  for (const auto& p : cfg_.protect) {
    for (const auto& f : index.files) {
      if (bundle::paths_overlap(f.path, p)) {
        return refuse("bundle writes '" + f.path + "', which touches protected path '" + p + "'");
      }
    }
    for (const auto& d : index.deletes) {
      if (bundle::paths_overlap(d, p)) {
        return refuse("bundle deletes '" + d + "', which touches protected path '" + p + "'");
      }
    }
  }
  head_ = std::move(head);
  index_ = std::move(index);
  return prepare_tree();
}

PortStatus BundleFlash::link_old_tree(const std::string& from, const std::string& to,
                                      const std::string& rel) {
  std::unique_ptr<DIR, int (*)(DIR*)> dir(::opendir(from.c_str()), &::closedir);
  if (!dir) return fail("open " + from);
  std::vector<std::string> names;
  while (const dirent* e = ::readdir(dir.get())) {
    if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) {
      names.emplace_back(e->d_name);
    }
  }
  dir.reset();
  std::sort(names.begin(), names.end());
  for (const auto& name : names) {
    const std::string r = rel.empty() ? name : rel + "/" + name;
    const std::string src = from + "/" + name, dst = to + "/" + name;
    if (skip_.count(r) != 0) {
      continue;  // deleted (with everything under it) or replaced by the bundle
    }
    struct stat st {};
    if (::lstat(src.c_str(), &st) != 0) return fail("stat " + src);
    if (S_ISDIR(st.st_mode)) {
      if (!fs_mkdir(dst)) return fail("mkdir " + dst);
      if (PortStatus s = link_old_tree(src, dst, r); s != PortStatus::ok) return s;
    } else if (dirs_of_files_.count(r) != 0) {
      continue;  // a file where the bundle needs a directory
    } else if (S_ISLNK(st.st_mode)) {
      char target[4096];
      const ssize_t n = ::readlink(src.c_str(), target, sizeof target - 1);
      if (n < 0) return fail("readlink " + src);
      target[n] = '\0';
      if (!op() || ::symlink(target, dst.c_str()) != 0) return fail("symlink " + dst);
    } else if (S_ISREG(st.st_mode)) {
      // Unchanged files are shared with the running tree: no copy, no space.
      if (!op() || ::link(src.c_str(), dst.c_str()) != 0) return fail("link " + dst);
    }
  }
  return cfg_.durable && !fs_fsync_dir(to) ? fail("fsync " + to) : PortStatus::ok;
}

PortStatus BundleFlash::prepare_tree() {
  const std::string tree = tree_path(target_);
  skip_.clear();
  dirs_of_files_.clear();
  skip_.insert(index_.deletes.begin(), index_.deletes.end());
  for (const auto& f : index_.files) {
    skip_.insert(f.path);
    for (std::size_t s = f.path.find('/'); s != std::string::npos; s = f.path.find('/', s + 1)) {
      dirs_of_files_.insert(f.path.substr(0, s));
    }
  }
  const std::string running_tree = tree_path(boot_.running());
  if (PortStatus s = link_old_tree(running_tree, tree, ""); s != PortStatus::ok) return s;
  std::set<std::string> made_dirs;
  for (std::size_t i = 0; i < index_.files.size(); ++i) {
    const std::string& path = index_.files[i].path;
    for (std::size_t s = path.find('/'); s != std::string::npos; s = path.find('/', s + 1)) {
      const std::string dir = tree + "/" + path.substr(0, s);
      if (made_dirs.insert(dir).second && !is_dir(dir) && !fs_mkdir(dir)) {
        return fail("mkdir " + dir);
      }
    }
    const std::string file = tree + "/" + path;
    const int fd = fs_create(file);
    if (fd < 0 && errno == EEXIST) {
      return refuse("bundle file '" + path + "' is already in the new tree (shared with the "
                    "running tree): not overwritten");
    }
    if (fd < 0) return fail("create " + file);
    const bool ok = op() && ::ftruncate(fd, static_cast<off_t>(index_.files[i].size)) == 0;
    const int err = errno;
    ::close(fd);
    errno = err;
    if (!ok) return fail("size " + file);
  }
  for (const auto& d : made_dirs) {
    if (!fs_fsync_dir(d)) return fail("fsync " + d);
  }
  if (!fs_fsync_dir(tree)) return fail("fsync " + tree);
  head_complete_ = true;
  // The chunks that came early go to their files now.
  for (const auto& r : spill_) {
    const PortStatus s = write_files(r.first, reinterpret_cast<const std::uint8_t*>(r.second.data()),
                                     r.second.size());
    if (s != PortStatus::ok) return s;
  }
  for (auto& f : fds_) {
    if (dirty_[f.first] && !fs_fsync(f.second)) return fail("fsync " + index_.files[f.first].path);
  }
  dirty_.clear();
  // The tree is prepared once the head is saved (a restart before that prepares it again).
  if (!fs_write_file_atomically(cfg_.root + "/bundle.head", head_)) return fail("save bundle.head");
  if (spill_fd_ >= 0) ::close(spill_fd_);
  spill_fd_ = -1;
  spill_.clear();
  spill_bytes_ = 0;
  if (!fs_unlink(cfg_.root + "/bundle.spill")) return fail("remove bundle.spill");
  return PortStatus::ok;
}

PortStatus BundleFlash::write_files(std::uint64_t offset, const std::uint8_t* data,
                                    std::size_t len) {
  std::uint64_t pos = offset;
  const std::uint64_t end = offset + len;
  if (pos < head_.size()) pos = std::min<std::uint64_t>(head_.size(), end);  // index: have it
  while (pos < end) {
    auto it = std::upper_bound(index_.files.begin(), index_.files.end(), pos,
                               [](std::uint64_t v, const bundle::FileEntry& f) { return v < f.offset; });
    if (it == index_.files.begin()) return refuse("write outside the bundle");
    --it;
    const auto i = static_cast<std::size_t>(it - index_.files.begin());
    const std::uint64_t f_end = it->offset + it->size;
    if (pos >= f_end) return refuse("write beyond the last file of the bundle");
    const std::uint64_t n = std::min(end, f_end) - pos;
    const int fd = file_fd(i);
    if (fd < 0) return fail("open " + it->path);
    if (!fs_write_all(fd, data + (pos - offset), static_cast<std::size_t>(n), pos - it->offset)) {
      return fail("write " + it->path);
    }
    dirty_[i] = true;
    pos += n;
  }
  return PortStatus::ok;
}

PortStatus BundleFlash::write(std::uint32_t offset, const std::uint8_t* data, std::size_t len) {
  if (dead_) return PortStatus::error;
  if (target_ == 0 || offset + len > target_size_) return refuse("write outside the bundle");
  if (cfg_.write_delay_us > 0) ::usleep(cfg_.write_delay_us);
  if (head_complete_) return write_files(offset, data, len);
  // Before the index is complete there is nowhere to put file bytes: keep them (bounded) in
  // memory and in a log that sync() makes durable.
  if (spill_.count(offset) != 0) return PortStatus::ok;  // a repeat
  if (spill_bytes_ + len > cfg_.max_spill_bytes) {
    return refuse("more than " + std::to_string(cfg_.max_spill_bytes) +
                  " bytes arrived before the bundle index was complete");
  }
  std::string record(kSpillRecordHeader, '\0');
  auto* h = reinterpret_cast<std::uint8_t*>(&record[0]);
  put_le(h, offset, 8);
  put_le(h + 8, len, 4);
  put_le(h + 12, proto::crc32(data, len), 4);
  record.append(reinterpret_cast<const char*>(data), len);
  struct stat st {};
  if (spill_fd_ < 0 || ::fstat(spill_fd_, &st) != 0) return fail("spill log");
  if (!fs_write_all(spill_fd_, record.data(), record.size(), static_cast<std::uint64_t>(st.st_size))) {
    return fail("write spill log");
  }
  spill_[offset].assign(reinterpret_cast<const char*>(data), len);
  spill_bytes_ += len;
  return try_complete_head();
}

PortStatus BundleFlash::ensure_loaded() {
  if (dead_) return PortStatus::error;
  if (target_ != 0) return PortStatus::ok;
  // After a restart without begin() (the agent verifying again): the inactive tree.
  std::string head;
  if (!read_whole_file(cfg_.root + "/bundle.head", head)) return refuse("no bundle staged");
  std::uint32_t index_len = 0;
  const auto* p = reinterpret_cast<const std::uint8_t*>(head.data());
  if (std::string err = bundle::parse_header(p, head.size(), index_len); !err.empty()) {
    return refuse("bundle.head: " + err);
  }
  if (head.size() != bundle::kHeaderSize + index_len) return refuse("bundle.head truncated");
  if (std::string err = bundle::parse_index(head.data() + bundle::kHeaderSize, index_len, index_);
      !err.empty()) {
    return refuse("bundle.head: " + err);
  }
  target_ = boot_.inactive();
  target_size_ = index_.total_size;
  head_ = std::move(head);
  head_complete_ = true;
  return PortStatus::ok;
}

PortStatus BundleFlash::read(std::uint32_t offset, std::uint8_t* out, std::size_t len) {
  if (PortStatus s = ensure_loaded(); s != PortStatus::ok) return s;
  if (offset + len > target_size_) return refuse("read outside the bundle");
  if (!head_complete_) return spill_covers(offset, len, out) ? PortStatus::ok : PortStatus::error;
  std::uint64_t pos = offset;
  const std::uint64_t end = offset + len;
  if (pos < head_.size()) {
    const std::uint64_t n = std::min<std::uint64_t>(head_.size(), end) - pos;
    std::memcpy(out, head_.data() + pos, static_cast<std::size_t>(n));
    pos += n;
  }
  while (pos < end) {
    auto it = std::upper_bound(index_.files.begin(), index_.files.end(), pos,
                               [](std::uint64_t v, const bundle::FileEntry& f) { return v < f.offset; });
    --it;
    const auto i = static_cast<std::size_t>(it - index_.files.begin());
    const std::uint64_t n = std::min(end, it->offset + it->size) - pos;
    const int fd = file_fd(i);
    if (fd < 0) return fail("open " + it->path);
    const ssize_t got = ::pread(fd, out + (pos - offset), static_cast<std::size_t>(n),
                                static_cast<off_t>(pos - it->offset));
    if (got != static_cast<ssize_t>(n)) return refuse("short read of " + it->path);
    pos += n;
  }
  return PortStatus::ok;
}

PortStatus BundleFlash::sync() {
  if (dead_) return PortStatus::error;
  if (!head_complete_) {
    if (spill_fd_ >= 0 && !fs_fsync(spill_fd_)) return fail("fsync spill log");
    return PortStatus::ok;
  }
  for (auto& f : fds_) {
    if (dirty_[f.first] && !fs_fsync(f.second)) return fail("fsync " + index_.files[f.first].path);
  }
  dirty_.clear();
  return PortStatus::ok;
}

PortStatus BundleFlash::finish(const proto::Manifest& manifest) {
  if (dead_) return PortStatus::error;
  if (boot_.record().writing == 0 && boot_.version_of(boot_.inactive()) == manifest.version) {
    return PortStatus::ok;  // finished before a restart
  }
  if (PortStatus s = ensure_loaded(); s != PortStatus::ok) return s;
  if (!head_complete_) return refuse("bundle index never arrived");
  close_files();
  const std::string tree = tree_path(target_);
  std::vector<std::uint8_t> buf(64 * 1024);
  for (const auto& f : index_.files) {
    const std::string path = tree + "/" + f.path;
    const int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) return fail("open " + path);
    std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
    EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr);
    std::uint64_t total = 0;
    for (;;) {
      const ssize_t n = ::read(fd, buf.data(), buf.size());
      if (n < 0) {
        ::close(fd);
        return fail("read " + path);
      }
      if (n == 0) break;
      EVP_DigestUpdate(ctx.get(), buf.data(), static_cast<std::size_t>(n));
      total += static_cast<std::uint64_t>(n);
    }
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int dlen = 0;
    EVP_DigestFinal_ex(ctx.get(), digest, &dlen);
    std::string hex;
    static const char* kHex = "0123456789abcdef";
    for (unsigned int k = 0; k < dlen; ++k) {
      hex += kHex[digest[k] >> 4];
      hex += kHex[digest[k] & 15];
    }
    if (total != f.size || hex != f.sha256) {
      ::close(fd);
      return refuse("file '" + f.path + "' does not match the bundle index (" +
                    (total != f.size ? "size " + std::to_string(total) + " of " +
                                           std::to_string(f.size)
                                     : std::string("sha256")) +
                    ")");
    }
    const bool ok = op() && ::fchmod(fd, static_cast<mode_t>(f.mode)) == 0 && fs_fsync(fd);
    const int err = errno;
    ::close(fd);
    errno = err;
    if (!ok) return fail("seal " + path);
  }
  boot_.finish_writing(target_, manifest);
  writing_image_.clear();
  return save_state() ? PortStatus::ok : fail("save boot.state");
}

PortStatus BundleFlash::abort() {
  if (dead_) return PortStatus::error;
  const char slot = target_ != 0 ? target_ : boot_.inactive();
  forget_target();
  if (boot_.record().writing != slot) return PortStatus::ok;
  boot_.abandon_writing(slot);
  writing_image_.clear();
  if (!save_state()) return fail("save boot.state");
  if (!fs_unlink(cfg_.root + "/bundle.head") || !fs_unlink(cfg_.root + "/bundle.spill") ||
      !fs_remove_tree(tree_path(slot)) || !fs_mkdir(tree_path(slot))) {
    return fail("clean " + tree_path(slot));
  }
  return PortStatus::ok;
}

PortStatus BundleFlash::activate(const proto::Manifest& manifest) {
  return activate_trial(manifest, 1);
}

PortStatus BundleFlash::activate_trial(const proto::Manifest& manifest, std::uint32_t max_boots) {
  if (dead_) return PortStatus::error;
  const char slot = boot_.inactive();
  if (!boot_.holds_finished(slot, manifest.version)) {
    return refuse("only a finished tree may be activated");
  }
  forget_target();
  boot_.activate_trial(max_boots, manifest.counter);
  // boot.state first: a ROOT/current that points at a tree boot.state does not run is put
  // back by power_on().
  if (!save_state()) return fail("save boot.state");
  return switch_current(slot);
}

PortStatus BundleFlash::reject() {
  if (dead_) return PortStatus::error;
  if (!sim_boot::BootLoader::changes_record(boot_.reject())) return PortStatus::ok;
  return save_state() ? PortStatus::ok : fail("save boot.state");
}

PortStatus BundleFlash::confirm() {
  if (dead_) return PortStatus::error;
  if (!sim_boot::BootLoader::changes_record(boot_.confirm())) return PortStatus::ok;
  return save_state() ? PortStatus::ok : fail("save boot.state");
}

}  // namespace ota::agent::linux_port
