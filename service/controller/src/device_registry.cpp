#include "ota/service/device_registry.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "ota/proto/topics.hpp"
#include "ota/service/log.hpp"
#include "ota/service/util.hpp"

namespace ota::service {

// ------------------------------------------------------------------------------ ACL file

AclGroups AclGroups::parse(const std::string& text, const std::string& prefix) {
  AclGroups a;
  std::istringstream in(text);
  std::string line;
  std::string user;  // current `user` section; empty: none (anonymous / pattern lines)
  const std::string head = prefix + "/grp/";
  const std::string tail = "/offer";
  const std::string image_tail = "/img/+/chunk";
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    std::istringstream ls(line);
    std::string kw;
    if (!(ls >> kw) || kw[0] == '#') continue;
    if (kw == "user") {
      std::string rest;
      std::getline(ls, rest);
      const auto b = rest.find_first_not_of(" \t");
      user = b == std::string::npos ? "" : rest.substr(b);
      while (!user.empty() && (user.back() == ' ' || user.back() == '\t')) user.pop_back();
      continue;
    }
    if (kw != "topic" || user.empty()) continue;
    std::string access, topic;
    ls >> access;
    if (access == "read" || access == "readwrite") {
      ls >> topic;
    } else if (access == "write" || access == "deny") {
      continue;
    } else {
      topic = access;  // "topic T" means readwrite
    }
    if (topic.size() <= head.size() || topic.compare(0, head.size(), head) != 0) continue;
    auto ends_with = [&](const std::string& t) {
      return topic.size() > head.size() + t.size() &&
             topic.compare(topic.size() - t.size(), t.size(), t) == 0;
    };
    const bool offer = ends_with(tail), images = !offer && ends_with(image_tail);
    if (!offer && !images) continue;
    const std::size_t tail_len = offer ? tail.size() : image_tail.size();
    const std::string g = topic.substr(head.size(), topic.size() - head.size() - tail_len);
    if (!proto::valid_id(g.data(), g.size())) continue;  // wildcards, extra levels
    (offer ? a.groups_ : a.image_groups_)[user].insert(g);
  }
  return a;
}

Result<AclGroups> AclGroups::load(const std::string& path, const std::string& prefix) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return invalid_err("acl file " + path + ": " + std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return internal_err("acl file " + path + ": read error");
  return parse(ss.str(), prefix);
}

bool AclGroups::is_member(const std::string& dev, const std::string& group) const {
  auto it = groups_.find(dev);
  return it != groups_.end() && it->second.count(group) != 0;
}

bool AclGroups::reads_images_of(const std::string& dev, const std::string& group) const {
  auto it = image_groups_.find(dev);
  return it != image_groups_.end() && it->second.count(group) != 0;
}

std::vector<std::string> AclGroups::groups_of(const std::string& dev) const {
  auto it = groups_.find(dev);
  if (it == groups_.end()) return {};
  return std::vector<std::string>(it->second.begin(), it->second.end());
}

// ------------------------------------------------------------------------------ registry

DeviceRegistry::DeviceRegistry(const ControllerConfig& cfg)
    : cfg_(cfg),
      acl_enabled_(!cfg.acl_file.empty()),
      message_budget_(cfg.device_messages_per_s, cfg.device_messages_burst),
      request_budget_(cfg.device_requests_per_s, cfg.device_requests_burst) {}

Result<std::size_t> DeviceRegistry::load(DbLock& db) {
  auto devs = db.store().list_devices({});
  if (!devs) return devs.context("devices");
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& d : *devs) {
    groups_[d.id] = d.groups;
    seq_[d.id] = d.last_seq;
    version_[d.id] = d.version;
    if (d.revoked_at > 0) revoked_.insert(d.id);
  }
  return devs->size();
}

Status DeviceRegistry::reload_acl_if_changed(bool force) {
  if (!acl_enabled_) return {};
  struct stat st {};
  if (::stat(cfg_.acl_file.c_str(), &st) != 0)
    return invalid_err("acl file " + cfg_.acl_file + ": " + std::strerror(errno));
  FileStamp stamp;
  stamp.mtime_ns = static_cast<long long>(st.st_mtim.tv_sec) * 1000000000LL + st.st_mtim.tv_nsec;
  stamp.size = static_cast<long long>(st.st_size);
  stamp.ino = static_cast<long long>(st.st_ino);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!force && stamp == acl_stamp_) return {};
  }
  auto a = AclGroups::load(cfg_.acl_file, cfg_.prefix);
  if (!a) return a.err();
  std::lock_guard<std::mutex> lock(mu_);
  acl_ = std::move(*a);
  acl_stamp_ = stamp;
  log_info("group membership from acl file " + cfg_.acl_file + " (" +
           std::to_string(acl_.users()) + " devices with groups)");
  return {};
}

bool DeviceRegistry::in_group_locked(const std::string& dev, const std::string& group) const {
  if (acl_enabled_) return acl_.is_member(dev, group);
  auto it = groups_.find(dev);
  return it != groups_.end() && contains(it->second, group);
}

bool DeviceRegistry::in_group(const std::string& dev, const std::string& group) const {
  std::lock_guard<std::mutex> lock(mu_);
  return in_group_locked(dev, group);
}

bool DeviceRegistry::reads_group_images(const std::string& dev, const std::string& group) const {
  std::lock_guard<std::mutex> lock(mu_);
  if (acl_enabled_) return acl_.reads_images_of(dev, group);
  auto it = groups_.find(dev);
  return it != groups_.end() && contains(it->second, group);
}

std::vector<std::string> DeviceRegistry::known_members_locked(const std::string& group) const {
  std::vector<std::string> out;
  for (const auto& kv : groups_)
    if (!revoked_.count(kv.first) && in_group_locked(kv.first, group)) out.push_back(kv.first);
  return out;
}

std::vector<std::string> DeviceRegistry::known_members(const std::string& group) const {
  std::lock_guard<std::mutex> lock(mu_);
  return known_members_locked(group);
}

std::vector<std::string> DeviceRegistry::member_of(const DeviceRec& d) const {
  if (!acl_enabled_) return d.groups;
  std::lock_guard<std::mutex> lock(mu_);
  return acl_.groups_of(d.id);
}

bool DeviceRegistry::revoked(const std::string& dev) const {
  std::lock_guard<std::mutex> lock(mu_);
  return revoked_.count(dev) != 0;
}

void DeviceRegistry::forget(const std::string& dev) {
  std::lock_guard<std::mutex> lock(mu_);
  groups_.erase(dev);
  seq_.erase(dev);
  dirty_seq_.erase(dev);
  version_.erase(dev);
  revoked_.erase(dev);
  seen_ms_.erase(dev);
  saved_seen_.erase(dev);
  offline_.erase(dev);
  unapplied_hellos_.erase(dev);
}

void DeviceRegistry::set_revoked(const std::string& dev) {
  std::lock_guard<std::mutex> lock(mu_);
  revoked_.insert(dev);
}

bool DeviceRegistry::known(const std::string& dev) const {
  std::lock_guard<std::mutex> lock(mu_);
  return seq_.count(dev) != 0;
}

long long DeviceRegistry::last_seq(const std::string& dev) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = seq_.find(dev);
  return it == seq_.end() ? -1 : it->second;
}

void DeviceRegistry::set_seq(const std::string& dev, long long seq) {
  std::lock_guard<std::mutex> lock(mu_);
  seq_[dev] = seq;
  dirty_seq_.erase(dev);
}

void DeviceRegistry::set_seq_lazily(const std::string& dev, long long seq) {
  std::lock_guard<std::mutex> lock(mu_);
  seq_[dev] = seq;
  dirty_seq_.insert(dev);
}

void DeviceRegistry::hello_seen(const std::string& dev, const std::vector<std::string>& groups,
                                const std::string& version, long long stored_seq) {
  std::lock_guard<std::mutex> lock(mu_);
  groups_[dev] = groups;
  version_[dev] = version;
  if (!seq_.count(dev)) seq_[dev] = stored_seq;
}

void DeviceRegistry::hello_committed(const std::string& dev, long long now) {
  std::lock_guard<std::mutex> lock(mu_);
  unapplied_hellos_.erase(dev);
  seen_ms_[dev] = now;
  offline_.erase(dev);
}

std::string DeviceRegistry::version(const std::string& dev) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = version_.find(dev);
  return it == version_.end() ? std::string() : it->second;
}

void DeviceRegistry::set_version(const std::string& dev, const std::string& version) {
  std::lock_guard<std::mutex> lock(mu_);
  version_[dev] = version;
}

void DeviceRegistry::note_alive(const std::string& dev, long long now) {
  std::lock_guard<std::mutex> lock(mu_);
  seen_ms_[dev] = now;
}

bool DeviceRegistry::heartbeat_after_last_will(const std::string& dev) {
  std::lock_guard<std::mutex> lock(mu_);
  return offline_.erase(dev) != 0;
}

void DeviceRegistry::last_will(const std::string& dev) {
  std::lock_guard<std::mutex> lock(mu_);
  seen_ms_.erase(dev);
  saved_seen_.erase(dev);
  offline_.insert(dev);
}

bool DeviceRegistry::is_online(const DeviceRec& d, long long now, long long* last_ms) const {
  long long seen_ms = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto seen = seen_ms_.find(d.id);
    if (seen != seen_ms_.end()) seen_ms = seen->second;
  }
  const long long last = std::max(d.last_seen * 1000, seen_ms);
  if (last_ms) *last_ms = last;
  return d.online &&
         (cfg_.heartbeat_timeout_s <= 0 || now - last <= cfg_.heartbeat_timeout_s * 1000);
}

namespace {
// last_seen only says "when did we last hear of it" across restarts: written when it moved
// by kSeenSaveS, not on every message (the live figure is seen_ms_).
constexpr long long kSeenSaveS = 30;

bool seen_moved(const std::map<std::string, long long>& saved, const std::string& dev, long long s,
                bool force) {
  auto it = saved.find(dev);
  if (it == saved.end()) return true;
  return force ? it->second != s : s - it->second >= kSeenSaveS;
}
}  // namespace

bool DeviceRegistry::needs_flush(bool force) const {
  std::lock_guard<std::mutex> lock(mu_);
  if (!dirty_seq_.empty()) return true;
  for (const auto& kv : seen_ms_)
    if (seen_moved(saved_seen_, kv.first, kv.second / 1000, force)) return true;
  return false;
}

void DeviceRegistry::flush(DbLock& db, bool force) {
  std::lock_guard<std::mutex> lock(mu_);
  Store& store = db.store();
  for (const auto& dev : dirty_seq_) {
    auto it = seq_.find(dev);
    if (it == seq_.end()) continue;
    Status s = store.set_device_last_seq(dev, it->second);
    if (!s) log_error("flush seq " + dev + ": " + s.error());
  }
  dirty_seq_.clear();
  for (const auto& kv : seen_ms_) {
    const long long s = kv.second / 1000;
    if (!seen_moved(saved_seen_, kv.first, s, force)) continue;
    Status st = store.set_device_last_seen(kv.first, s);
    if (!st) log_error("flush last_seen " + kv.first + ": " + st.error());
    saved_seen_[kv.first] = s;
  }
}

void DeviceRegistry::keep_unapplied_hello(const std::string& dev, std::string payload, bool retained) {
  std::lock_guard<std::mutex> lock(mu_);
  if (unapplied_hellos_.size() >= kMaxUnappliedHellos && !unapplied_hellos_.count(dev)) return;
  unapplied_hellos_[dev] = UnappliedHello{std::move(payload), retained};
}

void DeviceRegistry::forget_unapplied_hello(const std::string& dev) {
  std::lock_guard<std::mutex> lock(mu_);
  unapplied_hellos_.erase(dev);
}

std::map<std::string, DeviceRegistry::UnappliedHello> DeviceRegistry::take_unapplied_hellos() {
  std::lock_guard<std::mutex> lock(mu_);
  std::map<std::string, UnappliedHello> out;
  out.swap(unapplied_hellos_);
  return out;
}

bool DeviceRegistry::admit(const std::string& dev, bool chunk_request, long long steady_ms) {
  return (chunk_request ? request_budget_ : message_budget_).admit(dev, steady_ms);
}

std::map<std::string, TagSubject> tag_subjects(Store& store, const DeviceRegistry& registry) {
  std::map<std::string, TagSubject> out;
  auto devs = store.list_devices({});
  if (!devs) return out;
  auto tags = store.all_tags();
  for (const auto& d : *devs) {
    TagSubject& t = out[d.id];
    t.id = d.id;
    t.hw = d.hw;
    t.version = d.version;
    t.groups = registry.member_of(d);
    if (tags) {
      auto it = tags->find(d.id);
      if (it != tags->end()) t.tags = it->second;
    }
  }
  return out;
}

}  // namespace ota::service
