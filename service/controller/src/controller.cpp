#include "ota/service/controller.hpp"

#include <fcntl.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "ota/proto/frame.hpp"
#include "ota/proto/messages.hpp"
#include "ota/proto/topics.hpp"
#include "ota/service/log.hpp"

namespace ota::service {

using nlohmann::json;

struct ImageFile {
  int fd = -1;
  std::uint64_t size = 0;
  std::uint32_t chunk_size = 0;
  std::uint8_t id[8] = {};
  std::string path;
  ~ImageFile() {
    if (fd >= 0) ::close(fd);
  }
};

namespace {

std::string str(const char* p, std::size_t n) { return std::string(p, n); }


bool is_late_state(const std::string& s) {
  return s == "installing" || s == "rebooting" || s == "confirming";
}

std::string reason_text(proto::ReasonCode code, const proto::Reason& detail) {
  std::string r = proto::reason_name(code);
  if (!detail.empty()) r += ": " + std::string(detail.c_str());
  return r;
}

bool contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

std::string join(const std::vector<std::string>& v, const char* sep) {
  std::string out;
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (i) out += sep;
    out += v[i];
  }
  return out;
}

std::string random_hex(std::size_t nbytes) {
  std::vector<unsigned char> b(nbytes);
  if (RAND_bytes(b.data(), static_cast<int>(b.size())) != 1) return {};
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned char c : b) {
    out += hex[c >> 4];
    out += hex[c & 15];
  }
  return out;
}

std::string chunk_request_key(const proto::ChunkRequest& r) {
  std::string k = std::string(r.deployment.c_str()) + "|" + r.image.c_str() + "|" +
                  std::to_string(r.first) + "|" + std::to_string(r.count) + "|";
  if (r.has_bitmap) {
    static const char* hex = "0123456789abcdef";
    const std::size_t n = (r.count + 7) / 8;
    for (std::size_t i = 0; i < n && i < sizeof r.bitmap; ++i) {
      k += hex[r.bitmap[i] >> 4];
      k += hex[r.bitmap[i] & 15];
    }
  }
  return k;
}

}  // namespace

// ------------------------------------------------------------------------ helpers types

bool BoundedKeySet::insert(const std::string& key) {
  if (set_.count(key)) return false;
  while (set_.size() >= cap_ && !order_.empty()) {
    set_.erase(order_.front());
    order_.pop_front();
  }
  set_.insert(key);
  order_.push_back(key);
  return true;
}

AclGroups AclGroups::parse(const std::string& text, const std::string& prefix) {
  AclGroups a;
  std::istringstream in(text);
  std::string line;
  std::string user;  // current `user` section; empty: none (anonymous / pattern lines)
  const std::string head = prefix + "/grp/";
  const std::string tail = "/offer";
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
    if (topic.size() <= head.size() + tail.size() || topic.compare(0, head.size(), head) != 0 ||
        topic.compare(topic.size() - tail.size(), tail.size(), tail) != 0)
      continue;
    const std::string g = topic.substr(head.size(), topic.size() - head.size() - tail.size());
    if (!proto::valid_id(g.data(), g.size())) continue;  // wildcards, extra levels
    a.groups_[user].insert(g);
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

std::vector<std::string> AclGroups::groups_of(const std::string& dev) const {
  auto it = groups_.find(dev);
  if (it == groups_.end()) return {};
  return std::vector<std::string>(it->second.begin(), it->second.end());
}

Controller::Controller(ControllerConfig cfg, Signer signer, KeyRing keys, Publisher* pub)
    : cfg_(std::move(cfg)),
      signer_(std::move(signer)),
      keys_(std::move(keys)),
      pub_(pub),
      message_budget_(cfg_.device_messages_per_s, cfg_.device_messages_burst),
      request_budget_(cfg_.device_requests_per_s, cfg_.device_requests_burst) {}

const char* drop_reason_name(DropReason r) {
  switch (r) {
    case DropReason::decode_error: return "decode_error";
    case DropReason::rate_limited: return "rate_limited";
    case DropReason::device_id_mismatch: return "device_id_mismatch";
    case DropReason::result_mismatch: return "result_mismatch";
    case DropReason::progress_backwards: return "progress_backwards";
    case DropReason::not_applicable: return "not_applicable";
    case DropReason::duplicate: return "duplicate";
    case DropReason::revoked: return "revoked";
  }
  return "unknown";
}

Controller::~Controller() {
  std::lock_guard<std::mutex> lock(mu_);
  flush_dirty(true);
}

Result<std::unique_ptr<Controller>> Controller::create(const ControllerConfig& cfg, Signer signer,
                                                       Publisher* pub) {
  Status d = ensure_dir(cfg.store_dir);
  if (!d) return d.context("image store " + cfg.store_dir);
  auto point = p256_point_of(signer.key());
  if (!point) return point.context("signing key");
  auto ring = KeyRing::create(cfg.keys, signer.key_id(), *point);
  if (!ring) return ring.err();
  std::unique_ptr<Controller> c(new Controller(cfg, std::move(signer), std::move(*ring), pub));
  Status s = c->store_.open(cfg.db_path);
  if (!s) return s.context("database");
  std::lock_guard<std::mutex> lock(c->mu_);
  auto sets = c->store_.key_sets();
  if (!sets) return sets.context("key sets");
  Status k = c->keys_.load(*sets);
  if (!k) return k.err();
  if (c->keys_.version() > 0 && c->keys_.signing_role() == "none")
    log_error("key set version " + std::to_string(c->keys_.version()) +
              " does not list the signing key " + c->keys_.signing_key_id() +
              ": devices that hold it decline every offer (unknown_key); start the controller "
              "with a signing key of that set");
  log_info("signing key " + c->keys_.signing_key_id() + " role " + c->keys_.signing_role() + " (" +
           c->keys_.signing_role_source() + "); key set version " +
           std::to_string(c->keys_.version()) +
           (c->keys_.has_root() ? "; root key " + c->keys_.root_id() + " (" + c->keys_.root_source() + ")"
                                : "; no root key (--root-key): key-set uploads are refused"));
  if (!cfg.acl_file.empty()) {
    c->acl_enabled_ = true;
    Status a = c->reload_acl_if_changed(true);
    if (!a) return a.context("--acl-file");
  } else {
    log_warn("no --acl-file: group membership is taken from the groups devices claim in "
             "their hello (a device can join any group deployment); pass the broker's "
             "acl_file to make the ACL the authority");
  }
  Status l = c->load();
  if (!l) return l.context("load state");
  return c;
}

Status Controller::load() {
  auto devs = store_.list_devices({});
  if (!devs) return devs.context("devices");
  for (const auto& d : *devs) {
    dev_groups_[d.id] = d.groups;
    dev_seq_[d.id] = d.last_seq;
    dev_version_[d.id] = d.version;
    dev_keys_[d.id] = d.keys;
    if (d.revoked_at > 0) revoked_.insert(d.id);
  }
  auto deps = store_.list_deployments("active");
  if (!deps) return deps.context("deployments");
  for (const auto& d : *deps) {
    auto img = store_.image_by_id(d.image_id);
    if (!img) return img.context("deployment " + d.id);
    if (!*img) return internal_err("deployment " + d.id + ": image " + d.image_id + " missing");
    auto f = open_image(**img);
    if (!f) return f.context("deployment " + d.id);
    DepMem m;
    m.rec = d;
    if (d.target_kind == "rollout") m.rollout_id = d.target;
    m.image = **img;
    m.file = *f;
    auto rows = store_.rows(d.id);
    if (!rows) return rows.context("deployment " + d.id);
    for (const auto& r : *rows) {
      RowMem rm;
      rm.rec = r;
      rm.last_flush_ms = now_ms();
      m.rows[r.device_id] = rm;
    }
    active_[d.id] = std::move(m);
  }
  Status r = load_rollouts();
  if (!r) return r.context("rollouts");
  log_info("loaded " + std::to_string(devs->size()) + " devices, " +
           std::to_string(active_.size()) + " active deployments, " +
           std::to_string(rollouts_.size()) + " live rollouts");
  return {};
}

Result<std::shared_ptr<ImageFile>> Controller::open_image(const ImageRec& img) {
  auto it = files_.find(img.id);
  if (it != files_.end()) return it->second;
  auto f = std::make_shared<ImageFile>();
  f->path = image_path(cfg_.store_dir, img.sha256);
  f->fd = ::open(f->path.c_str(), O_RDONLY | O_CLOEXEC);
  if (f->fd < 0) return internal_err("open image " + f->path + ": " + std::strerror(errno));
  f->size = img.size;
  f->chunk_size = img.chunk_size;
  if (!proto::image_id_to_bytes(img.id.c_str(), f->id))
    return internal_err("bad image id " + img.id);
  files_[img.id] = f;
  return f;
}

std::string Controller::topic_for(int kind, const std::string& id) const {
  char buf[proto::kMaxTopicLen + 1];
  std::size_t n = proto::make_topic(cfg_.prefix.c_str(), static_cast<proto::TopicKind>(kind),
                                    id.c_str(), buf, sizeof buf);
  return std::string(buf, n);
}

void Controller::event(const std::string& dep, const std::string& dev, const std::string& what,
                       const std::string& detail, const std::string& actor,
                       const std::string& rollout) {
  std::string ro = rollout;
  if (ro.empty() && !dep.empty()) {
    auto it = active_.find(dep);
    if (it != active_.end()) ro = it->second.rollout_id;
  }
  Status s = store_.add_event(dep, dev, what, detail, actor, ro, now());
  if (!s) log_error("event log: " + s.error());
}

std::optional<RowRec> Controller::finished_row(const std::string& dep_id, const std::string& dev) {
  auto rows = store_.rows(dep_id);
  if (!rows) return std::nullopt;
  for (const auto& r : *rows)
    if (r.device_id == dev) return r;
  return std::nullopt;
}

bool Controller::explained_version(const std::string& dev, const std::string& version,
                                   const std::optional<std::string>& previous) {
  if (previous && *previous == version) return true;
  auto rows = store_.rows_for_device(dev, 50);
  if (!rows) return true;
  for (const auto& r : *rows) {
    auto d = store_.deployment(r.deployment_id);
    if (!d || !*d) continue;
    auto img = store_.image_by_id((*d)->image_id);
    if (img && *img && (*img)->version == version) return true;
  }
  return false;
}

Status Controller::reset_seq(const std::string& dev, const std::string& actor) {
  std::lock_guard<std::mutex> lock(mu_);
  auto d = store_.device(dev);
  if (!d) return d.context("reset seq");
  if (!*d) return not_found_err("unknown device " + dev);
  Tx tx(store_);
  Status s = tx.status();
  if (s) s = store_.set_device_last_seq(dev, -1);
  if (s) event("", dev, "seq_reset", "by operator (was " + std::to_string((*d)->last_seq) + ")", actor);
  if (s) s = tx.commit();
  if (!s) return s.context("reset seq");
  dev_seq_[dev] = -1;
  return {};
}

// -------------------------------------------------------------------------------- key sets

void Controller::send_keys(const std::string& dev, bool force) {
  const KeySetRec* cur = keys_.current_rec();
  if (!cur || !pub_) return;
  const long long t = now_ms();
  KeysSent& ks = keys_sent_[dev];
  if (!force && ks.version == cur->version && ks.count >= kKeysQuickResends &&
      t - ks.ms < kKeysResendMs)
    return;
  const std::string topic = topic_for(static_cast<int>(proto::TopicKind::keys), dev);
  if (!pub_->publish(topic, cur->body.data(), cur->body.size(), 1, false)) {
    log_warn("device " + dev + ": publish key set version " + std::to_string(cur->version) +
             " failed");
    return;
  }
  if (ks.version != cur->version) ks.count = 0;
  ks.version = cur->version;
  ks.ms = t;
  ks.count++;
  if (ks.count == kKeysQuickResends + 1)
    log_warn("device " + dev + " still reports key set version " +
             std::to_string(dev_keys_[dev]) + " after " + std::to_string(kKeysQuickResends) +
             " deliveries of version " + std::to_string(cur->version) +
             ": it refuses the set (another root key?); sending it again at most every " +
             std::to_string(kKeysResendMs / 60000) + " minutes");
  log(LogLevel::debug, "device " + dev + ": sent key set version " + std::to_string(cur->version));
}

Result<json> Controller::push_keys(const std::string& body, const std::string& actor) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto ks = keys_.verify(body);
    if (!ks) return ks.err();
    // Devices get the set re-encoded by the reference codec: the same members, canonical order.
    std::vector<char> buf(16384);
    std::size_t len = 0;
    proto::Error e = proto::encode_keyset(*ks, buf.data(), buf.size(), len);
    if (e)
      return internal_err(std::string("key set: encode: ") + proto::errc_name(e.code) + " " + e.field);
    KeySetRec rec;
    rec.version = ks->version;
    rec.body.assign(buf.data(), len);
    rec.signed_by = ks->key.c_str();
    rec.uploaded_by = actor.empty() ? "controller" : actor;
    rec.uploaded_at = now_s();
    std::string listing;
    for (std::size_t i = 0; i < ks->key_count; ++i)
      listing += std::string(listing.empty() ? "" : " ") + ks->keys[i].id.c_str() + ":" +
                 proto::key_role_name(ks->keys[i].role);
    Tx tx(store_);
    Status s = tx.status();
    if (s) s = store_.insert_key_set(rec);
    if (s)
      event("", "", "keys_pushed",
            "key set version " + std::to_string(rec.version) + " signed by " + rec.signed_by +
                ": " + listing,
            actor);
    if (s) s = tx.commit();
    if (!s) return s.context("key set: db");
    const std::vector<std::string> before = keys_.release_ids();
    keys_.adopt(rec, *ks);
    std::string revoked;
    for (const auto& id : before)
      if (!keys_.release_key(id)) revoked += (revoked.empty() ? "" : ", ") + id;
    log_info("key set version " + std::to_string(rec.version) + " (" + listing + ") pushed by " +
             rec.uploaded_by + (revoked.empty() ? "" : "; release keys revoked: " + revoked));
    // Online devices that trust an older set get it now, the others at their next hello.
    auto devs = store_.list_devices({});
    if (!devs) return devs.context("key set: devices");
    std::size_t sent = 0;
    const long long t = now();
    for (const auto& d : *devs) {
      if (d.keys >= rec.version || revoked_.count(d.id) || !is_online(d, t, nullptr)) continue;
      send_keys(d.id, /*force=*/true);
      sent++;
    }
    log_info("key set version " + std::to_string(rec.version) + " sent to " +
             std::to_string(sent) + " online devices");
  }
  return keys_json();
}

Result<json> Controller::keys_json() {
  std::lock_guard<std::mutex> lock(mu_);
  json out;
  const KeySetRec* rec = keys_.current_rec();
  const proto::KeySet* cur = keys_.current();
  out["version"] = keys_.version();
  json jkeys = json::array();
  if (cur) {
    for (std::size_t i = 0; i < cur->key_count; ++i)
      jkeys.push_back(json{{"id", cur->keys[i].id.c_str()},
                           {"role", proto::key_role_name(cur->keys[i].role)},
                           {"pub", hex_of(cur->keys[i].pub, proto::kP256PointLen)}});
    out["signed_by"] = rec->signed_by;
    out["uploaded_by"] = rec->uploaded_by;
    out["uploaded_at"] = rec->uploaded_at;
  } else {
    // No set yet: what devices were provisioned with, as far as the controller knows.
    for (const auto& id : keys_.release_ids()) jkeys.push_back(json{{"id", id}, {"role", "release"}});
    if (keys_.signing_online())
      jkeys.push_back(json{{"id", keys_.signing_key_id()}, {"role", "online"}});
    out["signed_by"] = nullptr;
    out["uploaded_by"] = nullptr;
    out["uploaded_at"] = nullptr;
  }
  out["keys"] = jkeys;
  out["root"] = keys_.has_root() ? json{{"id", keys_.root_id()}, {"source", keys_.root_source()}} : json();
  out["signing_key"] = json{{"id", keys_.signing_key_id()},
                            {"role", keys_.signing_role()},
                            {"source", keys_.signing_role_source()}};
  json hist = json::array();
  for (const auto& h : keys_.history())
    hist.push_back(json{{"version", h.version},
                        {"signed_by", h.signed_by},
                        {"uploaded_by", h.uploaded_by},
                        {"uploaded_at", h.uploaded_at}});
  out["history"] = hist;
  auto by = store_.count_by("SELECT CAST(keyset AS TEXT), COUNT(*) FROM devices GROUP BY keyset");
  if (!by) return by.context("keys");
  out["devices_by_version"] = *by;
  return out;
}

Result<json> Controller::revoke_device(const std::string& dev, const std::string& actor) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto d = store_.device(dev);
    if (!d) return d.context("revoke");
    if (!*d) return not_found_err("revoke: unknown device " + dev);
    if ((*d)->revoked_at > 0) return conflict_err("revoke: device " + dev + " is already revoked");
    flush_dirty(true);
    const long long ts = now_ms();
    std::vector<std::string> touched;
    Tx tx(store_);
    Status s = tx.status();
    if (s) s = store_.set_device_revoked(dev, now_s());
    for (auto& kv : active_) {
      if (!s) break;
      auto r = kv.second.rows.find(dev);
      if (r == kv.second.rows.end() || is_final_row_state(r->second.rec.state)) continue;
      r->second.rec.state = "cancelled";
      r->second.rec.reason = "device revoked";
      r->second.rec.updated_at = ts;
      s = store_.upsert_row(r->second.rec);
      if (s) event(kv.first, dev, "state", "-> cancelled (device revoked)", actor);
      touched.push_back(kv.first);
    }
    if (s) event("", dev, "device_revoked", "its messages are dropped from now on", actor);
    if (s) s = tx.commit();
    if (!s) return s.context("revoke: db");
    revoked_.insert(dev);
    log_warn("device " + dev + " revoked by " + (actor.empty() ? "controller" : actor) +
             "; revoke its certificate on the broker too (broker-config/pki.sh revoke)");
    for (const auto& id : touched) maybe_complete(id);
  }
  return device_json(dev);
}

bool Controller::in_group(const std::string& dev, const std::string& group) const {
  if (acl_enabled_) return acl_.is_member(dev, group);
  auto it = dev_groups_.find(dev);
  return it != dev_groups_.end() && contains(it->second, group);
}

std::vector<std::string> Controller::known_members(const std::string& group) const {
  std::vector<std::string> out;
  for (const auto& kv : dev_groups_)
    if (!revoked_.count(kv.first) && in_group(kv.first, group)) out.push_back(kv.first);
  return out;
}

Status Controller::reload_acl_if_changed(bool force) {
  if (!acl_enabled_) return {};
  struct stat st {};
  if (::stat(cfg_.acl_file.c_str(), &st) != 0)
    return invalid_err("acl file " + cfg_.acl_file + ": " + std::strerror(errno));
  FileStamp stamp;
  stamp.mtime_ns = static_cast<long long>(st.st_mtim.tv_sec) * 1000000000LL + st.st_mtim.tv_nsec;
  stamp.size = static_cast<long long>(st.st_size);
  stamp.ino = static_cast<long long>(st.st_ino);
  if (!force && stamp == acl_stamp_) return {};
  auto a = AclGroups::load(cfg_.acl_file, cfg_.prefix);
  if (!a) return a.err();
  acl_ = std::move(*a);
  acl_stamp_ = stamp;
  log_info("group membership from acl file " + cfg_.acl_file + " (" +
           std::to_string(acl_.users()) + " devices with groups)");
  return {};
}

void Controller::ignored(const std::string& key, const std::string& dep, const std::string& dev,
                         const std::string& what, const std::string& detail,
                         const std::string& msg, DropReason reason) {
  ignored_messages_++;
  count_drop(reason);
  if (!logged_once_.insert(key)) return;
  log_warn("device " + dev + ": " + msg + " (logged once; further ones are only counted)");
  if (!what.empty()) event(dep, dev, what, detail);
}

void Controller::send_cancel(const std::string& dev, const std::string& dep_id,
                             const std::string& why) {
  const long long now = now_ms();
  auto it = last_cancel_ms_.find(dev);
  if (it != last_cancel_ms_.end() && now - it->second < kCancelIntervalMs) return;
  if (last_cancel_ms_.size() >= 10000)  // bound: forget entries that no longer limit anything
    for (auto i = last_cancel_ms_.begin(); i != last_cancel_ms_.end();)
      i = now - i->second >= kCancelIntervalMs ? last_cancel_ms_.erase(i) : std::next(i);
  last_cancel_ms_[dev] = now;
  proto::Cancel c;
  c.deployment.assign(dep_id.c_str());
  c.reason.assign(why.c_str());
  char buf[512];
  std::size_t len = 0;
  proto::Error e = proto::encode_cancel(c, buf, sizeof buf, len);
  if (e) {
    log_error(std::string("cancel: encode: ") + proto::errc_name(e.code) + " " + e.field);
    return;
  }
  const std::string t = topic_for(static_cast<int>(proto::TopicKind::cancel), dev);
  if (!pub_ || !pub_->publish(t, buf, len, 1, false)) {
    log_warn("cancel " + dep_id + ": publish to " + dev + " failed");
    return;
  }
  cancels_sent_++;
  log_info("device " + dev + ": sent cancel for deployment '" + dep_id + "' (" + why + ")");
}

// ------------------------------------------------------------------------------ images

Result<AddImageResult> Controller::add_image(const std::string& bytes, const ImageParams& params,
                                             const std::string& actor) {
  if (bytes.empty()) return invalid_err("image add: image is empty");
  if (bytes.size() > 0xFFFFFFFFull) return invalid_err("image add: image larger than 4 GiB");
  const std::string sha = sha256_hex(bytes.data(), bytes.size());
  const std::string id = sha.substr(0, proto::kImageIdLen);
  ImageParams p = params;
  std::string release_key, release_sig;
  if (!p.release.empty()) {
    std::lock_guard<std::mutex> lock(mu_);
    auto rel = check_release(sha, bytes.size(), p);
    if (!rel) return rel.context("image add");
    release_key = rel->first;
    release_sig = rel->second;
  }
  Status v = validate_image(bytes, p);
  if (!v) return v.context("image add");

  // An image that is already stored: the same one again, or the same one with a (new) release
  // signature, which is attached to it (signed after the upload, or again after a rotation).
  auto same_image = [&](const ImageRec& have) -> Result<std::optional<ImageRec>> {
    if (release_sig.empty() || (have.release_key == release_key && have.release_sig == release_sig))
      return std::optional<ImageRec>(have);
    if (have.counter != p.counter || have.hw != p.hw || have.kind != p.kind)
      return conflict_err("image add: image " + have.id + " version " + have.version +
                          " is stored with counter " + std::to_string(have.counter) + ", hw " +
                          join(have.hw, ",") + ", kind " + have.kind +
                          "; the release file says counter " + std::to_string(p.counter) +
                          ", hw " + join(p.hw, ",") + ", kind " + p.kind +
                          ": sign it again with the stored values");
    Tx tx(store_);
    Status s = tx.status();
    if (s) s = store_.set_image_release(have.id, release_key, release_sig);
    if (s)
      event("", "", "image_release_signed",
            have.id + " version " + have.version + " release key " + release_key +
                (have.release_key.empty() ? "" : " (was " + have.release_key + ")"),
            actor);
    if (s) s = tx.commit();
    if (!s) return s.context("image add: db");
    log_info("image " + have.id + " version " + have.version + ": release signature by " +
             release_key + " stored");
    ImageRec out = have;
    out.release_key = release_key;
    out.release_sig = release_sig;
    return std::optional<ImageRec>(out);
  };
  auto check = [&]() -> Result<std::optional<ImageRec>> {
    auto by_sha = store_.image_by_sha(sha);
    if (!by_sha) return by_sha.context("image add: store");
    if (*by_sha) {
      if ((*by_sha)->version == p.version) return same_image(**by_sha);
      return conflict_err("image add: these bytes are already image " + (*by_sha)->id +
                          " with version " + (*by_sha)->version);
    }
    auto by_ver = store_.image_by_version(p.version);
    if (!by_ver) return by_ver.context("image add: store");
    if (*by_ver)
      return conflict_err("image add: version " + p.version + " already exists as image " +
                          (*by_ver)->id + " with different content (sha256 " +
                          (*by_ver)->sha256 + ")");
    return std::optional<ImageRec>();
  };
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto c = check();
    if (!c) return c.err();
    if (*c) return AddImageResult{**c, false};
  }
  auto path = write_image_file(cfg_.store_dir, sha, bytes.data(), bytes.size());
  if (!path) return path.context("image add: store");

  std::lock_guard<std::mutex> lock(mu_);
  auto c = check();  // re-check: another request may have raced us
  if (!c) return c.err();
  if (*c) return AddImageResult{**c, false};
  ImageRec rec;
  rec.id = id;
  rec.sha256 = sha;
  rec.version = p.version;
  rec.hw = p.hw;
  rec.size = bytes.size();
  rec.chunk_size = p.chunk_size;
  rec.counter = p.counter;
  if (p.security_release) {
    auto images = store_.list_images();
    if (!images) return images.context("image add: store");
    std::uint32_t highest = 0;
    for (const auto& i : *images) highest = std::max(highest, i.counter);
    if (highest >= kMaxImageCounter)
      return invalid_err("image add: security release: the highest counter is already " +
                         std::to_string(highest) + " (the limit)");
    rec.counter = highest + 1;
  }
  rec.kind = p.kind;
  rec.created_at = now_s();
  rec.release_key = release_key;
  rec.release_sig = release_sig;
  Tx tx(store_);
  if (!tx.status()) return tx.status().context("image add: db");
  Status s = store_.insert_image(rec);
  if (!s) return s.context("image add: db");
  event("", "", "image_added",
        rec.id + " version " + rec.version + " hw " + join(rec.hw, ",") + " size " +
            std::to_string(rec.size) +
            (rec.release_key.empty() ? "" : " release key " + rec.release_key),
        actor);
  s = tx.commit();
  if (!s) return s.context("image add: db");
  log_info("image added " + rec.id + " version " + rec.version + " (" +
           std::to_string(rec.size) + " bytes)");
  return AddImageResult{rec, true};
}

Result<std::pair<std::string, std::string>> Controller::check_release(const std::string& sha,
                                                                      std::size_t size,
                                                                      ImageParams& p) const {
  auto m = std::make_unique<proto::Manifest>();
  proto::Error e = proto::decode_release(p.release.data(), p.release.size(), *m);
  if (e)
    return invalid_err(std::string("release file: not a valid release signature (") +
                       proto::errc_name(e.code) + (*e.field ? std::string(" ") + e.field : "") +
                       "; made by `otactl image sign`, PROTOCOL.md 6.5)");
  // What the release signature covers is the image's identity: the file decides, and values
  // also given must agree (a mistake, or an attempt to register it as something else).
  std::vector<std::string> hw;
  for (std::size_t i = 0; i < m->hw_count; ++i) hw.emplace_back(m->hw[i].c_str());
  const std::string kind = m->kind == proto::ImageKind::bundle ? "bundle" : "firmware";
  auto conflict = [](const std::string& what, const std::string& given, const std::string& file) {
    return invalid_err(what + " " + given + " conflicts with the release file's " + what + " " +
                       file + " (the release signature covers it; sign the image again to change it)");
  };
  if (!p.version.empty() && p.version != m->version.c_str())
    return conflict("version", p.version, m->version.c_str());
  if (!p.hw.empty() && p.hw != hw) return conflict("hw", join(p.hw, ","), join(hw, ","));
  if (p.counter_given && p.counter != m->counter)
    return conflict("counter", std::to_string(p.counter), std::to_string(m->counter));
  if (p.security_release)
    return invalid_err("counter 'next' (a security release) cannot be used with a release file: "
                       "its counter is signed (sign it with --counter N)");
  if (p.kind_given && p.kind != kind) return conflict("kind", p.kind, kind);
  p.version = m->version.c_str();
  p.hw = hw;
  p.counter = m->counter;
  p.kind = kind;
  if (sha != m->sha256.c_str() || size != m->size)
    return invalid_err(std::string("release file is for sha256 ") + m->sha256.c_str() + " (" +
                       std::to_string(m->size) + " bytes), but the uploaded image is sha256 " +
                       sha + " (" + std::to_string(size) +
                       " bytes): upload the file that was signed (for a directory, the .bundle "
                       "`otactl image sign` wrote next to the release file)");
  const std::string rkey = m->release_key.c_str();
  EVP_PKEY* key = keys_.release_key(rkey);
  if (!key)
    return invalid_err("release signature refused: " + keys_.why_not_release_key(rkey) +
                       "; devices would decline it unknown_key");
  if (!verify_release(key, *m))
    return invalid_err("release signature does not verify with release key " + rkey +
                       ": the release file was altered after signing, or the image's version, "
                       "hw, counter or kind differ from what was signed");
  return std::make_pair(rkey, std::string(m->release_sig.c_str()));
}

Status Controller::check_deployable(const ImageRec& img) const {
  if (img.release_sig.empty()) {
    if (!keys_.signing_online()) return {};
    return invalid_err(
        "image " + img.id + " (version " + img.version +
        ") has no release signature, and the controller signs offers with online key " +
        keys_.signing_key_id() + " (" + keys_.signing_role_source() +
        "), which devices accept only together with a release signature. On the signing "
        "machine run `otactl image sign FILE --key RELEASE.pem --version " + img.version +
        " --hw " + join(img.hw, " --hw ") +
        (img.counter ? " --counter " + std::to_string(img.counter) : std::string()) +
        (img.kind == "bundle" ? std::string(" --kind bundle") : std::string()) +
        "`, then upload it with `otactl image add FILE --release FILE.release.json`");
  }
  if (!keys_.release_key(img.release_key))
    return invalid_err("image " + img.id + " (version " + img.version + ") is signed by " +
                       keys_.why_not_release_key(img.release_key) +
                       ": devices would decline it unknown_key. Sign it again with a current "
                       "release key (`otactl image sign`) and upload the new release file "
                       "(`otactl image add FILE --release FILE.release.json`)");
  return {};
}

Result<ImageRec> Controller::resolve_image(const std::string& ref) {
  if (ref.empty()) return invalid_err("image is required (id or version)");
  auto byid = store_.image_by_id(ref);
  if (!byid) return byid.err();
  if (*byid) return **byid;
  auto byver = store_.image_by_version(ref);
  if (!byver) return byver.err();
  if (*byver) return **byver;
  return not_found_err("unknown image " + ref);
}

// ------------------------------------------------------------------------- deployments

Result<DeploymentRec> Controller::deploy(const std::string& image_ref, const std::string& kind,
                                         const std::string& target, const std::string& actor) {
  std::lock_guard<std::mutex> lock(mu_);
  auto img = resolve_image(image_ref);
  if (!img) return img.context("deploy");
  Status deployable = check_deployable(*img);
  if (!deployable) return deployable.context("deploy");
  if (kind != "device" && kind != "group")
    return invalid_err("deploy: target must be a device or a group");
  if (!proto::valid_id(target.data(), target.size()))
    return invalid_err("deploy: " + kind + " '" + target +
                       "' is not a valid id (1-64 chars of A-Z a-z 0-9 . _ -)");
  std::vector<std::string> members;
  if (kind == "device") {
    auto dev = store_.device(target);
    if (!dev) return dev.context("deploy");
    if (!*dev) return not_found_err("deploy: unknown device " + target);
    if (revoked_.count(target)) return invalid_err("deploy: device " + target + " is revoked");
    if (!contains(img->hw, (*dev)->hw))
      return invalid_err("deploy: image " + img->id + " (" + img->version + ") is for hw " +
                         join(img->hw, ",") + " but device " + target + " is hw '" +
                         (*dev)->hw + "'");
    for (const auto& kv : active_) {
      auto r = kv.second.rows.find(target);
      if (r != kv.second.rows.end() && !is_final_row_state(r->second.rec.state))
        return conflict_err("deploy: device " + target + " is already in active deployment " +
                            kv.first + " (state " + r->second.rec.state +
                            "); cancel it first");
    }
    members.push_back(target);
  } else {
    members = known_members(target);
  }
  // Unguessable ids: a device must not be able to address a deployment it was not offered.
  std::optional<std::string> depid;
  for (int attempt = 0; attempt < 8 && !depid; ++attempt) {
    const std::string hex = random_hex(6);
    if (hex.empty()) return internal_err("deploy: no randomness for the deployment id");
    auto existing = store_.deployment("dep-" + hex);
    if (!existing) return existing.context("deploy: db");
    if (!*existing) depid = "dep-" + hex;
  }
  if (!depid) return internal_err("deploy: could not pick a free deployment id");

  auto file = open_image(*img);
  if (!file) return file.context("deploy");

  OfferTarget bound;
  (kind == "device" ? bound.device : bound.group) = target;
  auto offer = build_offer(*img, *depid, bound);
  if (!offer) return offer.context("deploy");

  DepMem dm;
  dm.rec.id = *depid;
  dm.rec.image_id = img->id;
  dm.rec.target_kind = kind;
  dm.rec.target = target;
  dm.rec.state = "active";
  dm.rec.offer = *offer;
  dm.rec.created_at = now_s();
  dm.image = *img;
  dm.file = *file;
  const long long ts = now_ms();
  Tx tx(store_);
  if (!tx.status()) return tx.status().context("deploy: db");
  Status s = store_.insert_deployment(dm.rec);
  if (!s) return s.context("deploy: db");
  for (const auto& dev : members) {
    RowMem rm;
    rm.rec.deployment_id = dm.rec.id;
    rm.rec.device_id = dev;
    rm.rec.state = "offered";
    rm.rec.total = img->size;
    rm.rec.updated_at = ts;
    rm.last_flush_ms = ts;
    s = store_.upsert_row(rm.rec);
    if (!s) return s.context("deploy: db");
    dm.rows[dev] = rm;
  }
  event(dm.rec.id, kind == "device" ? target : "", "deployment_created",
        "image " + img->id + " version " + img->version + " to " + kind + " " + target + " (" +
            std::to_string(members.size()) + " known devices)",
        actor);
  s = tx.commit();
  if (!s) return s.context("deploy: db");

  auto& d = active_[dm.rec.id] = std::move(dm);
  if (kind == "device") {
    publish_offer_to_device(d, target);
  } else {
    publish_group_offer(d, false);
  }
  log_info("deployment " + d.rec.id + ": image " + img->id + " (" + img->version + ") to " +
           kind + " " + target);
  return d.rec;
}

Result<std::string> Controller::build_offer(const ImageRec& img, const std::string& offer_id,
                                            const OfferTarget& target) {
  auto offer = std::make_unique<proto::Offer>();
  offer->deployment.assign(offer_id.c_str());
  proto::Manifest& m = offer->manifest;
  m.deployment.assign(offer_id.c_str());
  m.device.assign(target.device.c_str());
  m.group.assign(target.group.c_str());
  m.rollback = target.rollback;
  m.image.assign(img.id.c_str());
  m.version.assign(img.version.c_str());
  for (const auto& h : img.hw) {
    if (m.hw_count >= proto::kMaxHwModels) break;
    m.hw[m.hw_count++].assign(h.c_str());
  }
  m.size = img.size;
  m.sha256.assign(img.sha256.c_str());
  m.chunk_size = img.chunk_size;
  m.counter = img.counter;
  m.expires = static_cast<std::uint64_t>(now() / 1000 + cfg_.offer_ttl);
  m.kind = img.kind == "bundle" ? proto::ImageKind::bundle : proto::ImageKind::firmware;
  if (!img.release_sig.empty()) {
    if (!m.release_key.assign(img.release_key.c_str()) || !m.release_sig.assign(img.release_sig.c_str()))
      return internal_err("image " + img.id + ": malformed release signature in the database");
  } else if (keys_.signing_online()) {
    return invalid_err("image " + img.id + " has no release signature; an online key cannot "
                       "offer it (otactl image sign)");
  }
  Status sg = signer_.sign_manifest(m);
  if (!sg) return sg.err();
  std::vector<char> buf(16384);
  std::size_t len = 0;
  proto::Error e = proto::encode_offer(*offer, buf.data(), buf.size(), len);
  if (e)
    return internal_err(std::string("encode offer: ") + proto::errc_name(e.code) + " " + e.field);
  return std::string(buf.data(), len);
}

long long Controller::now() const { return cfg_.clock ? cfg_.clock() : now_ms(); }

std::string Controller::offer_id(const std::string& dep_id, int attempt) {
  return attempt <= 1 ? dep_id : dep_id + "." + std::to_string(attempt);
}

Controller::DepMem* Controller::find_dep(const std::string& id, int* attempt) {
  *attempt = 1;
  auto it = active_.find(id);
  if (it != active_.end()) return &it->second;
  const auto dot = id.rfind('.');
  if (dot == std::string::npos || dot + 1 >= id.size() || id.size() - dot > 6 ||
      id.find_first_not_of("0123456789", dot + 1) != std::string::npos)
    return nullptr;
  it = active_.find(id.substr(0, dot));
  if (it == active_.end() || it->second.rollout_id.empty()) return nullptr;
  *attempt = std::atoi(id.c_str() + dot + 1);
  return &it->second;
}

bool Controller::publish_offer_attempt(DepMem& d, const std::string& dev, int attempt,
                                       bool tracked) {
  if (!tracked && d.rollout_id.empty()) return publish_offer_to_device(d, dev);
  std::string offer = d.rec.offer;
  if (!d.rollout_id.empty()) {
    // A rollout offers each device its own manifest, bound to the device and the attempt.
    OfferTarget bound;
    bound.device = dev;
    bound.rollback = is_rollback(d);
    auto built = build_offer(d.image, offer_id(d.rec.id, attempt), bound);
    if (!built) {
      log_error("deployment " + d.rec.id + ": offer to " + dev + ": " + built.error());
      return false;
    }
    offer = *built;
  }
  std::string t = topic_for(static_cast<int>(proto::TopicKind::offer), dev);
  std::function<void()> acked;
  if (tracked)
    acked = [this, dep = d.rec.id, dev, attempt] {
      std::lock_guard<std::mutex> lock(ack_mu_);
      offer_acks_.push_back({dep, dev, attempt});
    };
  bool ok = pub_ && pub_->publish_acked(t, offer.data(), offer.size(), 1, false, std::move(acked));
  if (!ok) log_warn("deployment " + d.rec.id + ": publish offer to " + dev + " failed");
  return ok;
}

void Controller::note_alive(const std::string& dev) {
  const long long t = now();
  seen_ms_[dev] = t;
}

bool Controller::is_rollback(const DepMem& d) const {
  auto ro = rollouts_.find(d.rollout_id);
  return ro != rollouts_.end() && !ro->second.rec.rollback_of.empty();
}

bool Controller::publish_offer_to_device(const DepMem& d, const std::string& dev) {
  std::string t = topic_for(static_cast<int>(proto::TopicKind::offer), dev);
  bool ok = !t.empty() && pub_ && pub_->publish(t, d.rec.offer.data(), d.rec.offer.size(), 1, false);
  if (!ok) log_warn("deployment " + d.rec.id + ": publish offer to " + dev + " failed");
  return ok;
}

void Controller::publish_group_offer(const DepMem& d, bool clear) {
  std::string t = topic_for(static_cast<int>(proto::TopicKind::group_offer), d.rec.target);
  if (t.empty() || !pub_) return;
  bool ok = clear ? pub_->publish(t, "", 0, 1, true)
                  : pub_->publish(t, d.rec.offer.data(), d.rec.offer.size(), 1, true);
  if (!ok)
    log_warn("deployment " + d.rec.id + ": publish " + (clear ? "clear of " : "") +
             "group offer to " + t + " failed");
}

Result<DeploymentRec> Controller::cancel(const std::string& deployment_id, const std::string& actor) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = active_.find(deployment_id);
  if (it == active_.end()) {
    auto d = store_.deployment(deployment_id);
    if (!d) return d.context("cancel: db");
    if (!*d) return not_found_err("cancel: unknown deployment " + deployment_id);
    return conflict_err("cancel: deployment " + deployment_id + " is already " + (*d)->state);
  }
  DepMem& d = it->second;
  if (!d.rollout_id.empty())
    return conflict_err("cancel: deployment " + deployment_id + " belongs to rollout " +
                        d.rollout_id + "; use `otactl rollout abort " + d.rollout_id + "`");
  flush_dirty(true);
  std::vector<std::string> notify;
  const long long ts = now_ms();
  Tx tx(store_);
  if (!tx.status()) return tx.status().context("cancel: db");
  for (auto& kv : d.rows) {
    if (is_final_row_state(kv.second.rec.state)) continue;
    notify.push_back(kv.first);
    kv.second.rec.state = "cancelled";
    kv.second.rec.reason = "cancelled by operator";
    kv.second.rec.updated_at = ts;
    Status s = store_.upsert_row(kv.second.rec);
    if (!s) return s.context("cancel: db");
  }
  if (d.rec.target_kind == "group")
    for (const auto& m : known_members(d.rec.target))
      if (!d.rows.count(m)) notify.push_back(m);
  Status s = store_.set_deployment_state(d.rec.id, "cancelled", now_s());
  if (!s) return s.context("cancel: db");
  event(d.rec.id, "", "deployment_cancelled",
        "by operator; " + std::to_string(notify.size()) + " devices notified", actor);
  s = tx.commit();
  if (!s) return s.context("cancel: db");
  d.rec.state = "cancelled";
  d.rec.finished_at = now_s();

  proto::Cancel c;
  c.deployment.assign(d.rec.id.c_str());
  c.reason.assign("cancelled by operator");
  char buf[512];
  std::size_t len = 0;
  proto::Error e = proto::encode_cancel(c, buf, sizeof buf, len);
  if (e) {
    log_error(std::string("cancel: encode: ") + proto::errc_name(e.code) + " " + e.field);
  } else {
    const long long now = now_ms();
    for (const auto& dev : notify) {
      std::string t = topic_for(static_cast<int>(proto::TopicKind::cancel), dev);
      if (!pub_ || !pub_->publish(t, buf, len, 1, false))
        log_warn("cancel " + d.rec.id + ": publish to " + dev + " failed");
      else
        last_cancel_ms_[dev] = now;  // its in-flight requests need no second cancel
    }
  }
  if (d.rec.target_kind == "group") publish_group_offer(d, true);
  DeploymentRec out = d.rec;
  active_.erase(it);
  log_info("deployment " + out.id + " cancelled");
  return out;
}

Status Controller::write_row(RowMem& row) {
  row.rec.updated_at = now_ms();
  Status s = store_.upsert_row(row.rec);
  if (s) {
    row.dirty = false;
    row.last_flush_ms = row.rec.updated_at;
  }
  return s;
}

Status Controller::set_row_state(DepMem& d, RowMem& row, const std::string& state,
                                 const std::string& reason) {
  const std::string old = row.rec.state;
  row.rec.state = state;
  row.rec.reason = reason;
  if (state == "succeeded" && row.rec.total == 0) row.rec.total = d.image.size;
  if (state == "succeeded") row.rec.received = row.rec.total;
  Status s = write_row(row);
  if (!s) return s;
  if (old != state)
    event(d.rec.id, row.rec.device_id, "state",
          old + " -> " + state + (reason.empty() ? "" : " (" + reason + ")"));
  return {};
}

void Controller::maybe_complete(const std::string& dep_id) {
  auto it = active_.find(dep_id);
  if (it == active_.end()) return;
  DepMem& d = it->second;
  std::string final_state = "completed";
  if (!d.rollout_id.empty()) {
    // A rollout's deployment lives as long as the rollout (retries reopen rows) and then
    // until the devices that could not be stopped have reported.
    auto ro = rollouts_.find(d.rollout_id);
    if (ro != rollouts_.end() && !is_terminal_rollout_state(ro->second.rec.state)) return;
    if (ro != rollouts_.end() && ro->second.rec.state == "aborted") final_state = "cancelled";
  }
  if (d.rows.empty() && d.rollout_id.empty()) return;
  std::map<std::string, int> counts;
  for (const auto& kv : d.rows) {
    if (!is_final_row_state(kv.second.rec.state)) return;
    counts[kv.second.rec.state]++;
  }
  if (d.rec.target_kind == "group") {
    for (const auto& m : known_members(d.rec.target))
      if (!d.rows.count(m)) return;
  }
  flush_dirty(true);
  Tx tx(store_);
  Status s = tx.status();
  if (s) s = store_.set_deployment_state(d.rec.id, final_state, now_s());
  std::string summary;
  for (const auto& c : counts)
    summary += (summary.empty() ? "" : " ") + c.first + "=" + std::to_string(c.second);
  if (s) event(d.rec.id, "", "deployment_" + final_state, summary);
  if (s) s = tx.commit();
  if (!s) {
    log_error("deployment " + d.rec.id + ": complete: " + s.error());
    return;
  }
  if (d.rec.target_kind == "group") publish_group_offer(d, true);
  log_info("deployment " + d.rec.id + " " + final_state + ": " + summary);
  if (!d.rollout_id.empty()) rollouts_.erase(d.rollout_id);
  active_.erase(it);
}

void Controller::flush_dirty(bool force) {
  const long long now = now_ms();
  // last_seen only says "when did we last hear of it" across restarts: written when it moved
  // by kSeenSaveS, not on every message (the live figure is seen_ms_).
  constexpr long long kSeenSaveS = 30;
  std::vector<std::pair<std::string, long long>> seen;
  for (const auto& kv : seen_ms_) {
    const long long s = kv.second / 1000;
    auto saved = saved_seen_.find(kv.first);
    if (force ? (saved == saved_seen_.end() || saved->second != s)
              : (saved == saved_seen_.end() || s - saved->second >= kSeenSaveS))
      seen.emplace_back(kv.first, s);
  }
  bool any = !dirty_seq_.empty() || !seen.empty();
  for (auto& dkv : active_)
    for (auto& rkv : dkv.second.rows)
      if (rkv.second.dirty && (force || now - rkv.second.last_flush_ms >= cfg_.flush_interval_ms))
        any = true;
  if (!any) return;
  Tx tx(store_);
  if (!tx.status()) {
    log_error("flush: " + tx.status().error());
    return;
  }
  for (auto& dkv : active_)
    for (auto& rkv : dkv.second.rows)
      if (rkv.second.dirty && (force || now - rkv.second.last_flush_ms >= cfg_.flush_interval_ms)) {
        Status s = write_row(rkv.second);
        if (!s) log_error("flush row " + dkv.first + "/" + rkv.first + ": " + s.error());
      }
  for (const auto& dev : dirty_seq_) {
    auto it = dev_seq_.find(dev);
    if (it == dev_seq_.end()) continue;
    Status s = store_.set_device_last_seq(dev, it->second);
    if (!s) log_error("flush seq " + dev + ": " + s.error());
  }
  dirty_seq_.clear();
  for (const auto& kv : seen) {
    Status s = store_.set_device_last_seen(kv.first, kv.second);
    if (!s) log_error("flush last_seen " + kv.first + ": " + s.error());
    saved_seen_[kv.first] = kv.second;
  }
  Status c = tx.commit();
  if (!c) log_error("flush: " + c.error());
}

void Controller::keep_unapplied_hello(const std::string& dev, const char* p, std::size_t len,
                                      bool retained) {
  if (unapplied_hellos_.size() >= kMaxUnappliedHellos && !unapplied_hellos_.count(dev)) return;
  unapplied_hellos_[dev] = {std::string(p, len), retained};
}

void Controller::retry_unapplied_hellos() {
  std::map<std::string, std::pair<std::string, bool>> retry;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (unapplied_hellos_.empty() || !store_.writable()) return;
    retry.swap(unapplied_hellos_);
  }
  log_info("applying " + std::to_string(retry.size()) + " device hellos the database could not take before");
  for (const auto& [dev, hello] : retry) {
    const std::string topic = cfg_.prefix + "/dev/" + dev + "/up/presence";
    handle_presence(dev, hello.first.data(), hello.first.size(), topic.c_str(), hello.second);
  }
}

void Controller::tick() {
  retry_unapplied_hellos();
  const bool link_up = !pub_ || pub_->ready();
  if (link_up) rollout_tick(now());
  std::lock_guard<std::mutex> lock(mu_);
  if (link_up) {
    const long long t = now();
    for (auto& kv : active_) {
      if (!kv.second.rollout_id.empty()) continue;  // the rollout engine re-offers its own
      for (auto& r : kv.second.rows) {
        RowMem& row = r.second;
        if (row.rec.state != "deferred" || row.rec.next_at > t) continue;
        row.rec.next_at = 0;
        Status s = set_row_state(kv.second, row, "offered", "offered again after a deferral");
        if (!s) {
          log_error("deployment " + kv.first + ": re-offer to " + r.first + ": " + s.error());
          continue;
        }
        publish_offer_to_device(kv.second, r.first);
      }
    }
  }
  flush_dirty(false);
  probe_database(now());
  prune_history(now());
  if (acl_enabled_) {
    Status s = reload_acl_if_changed(false);
    if (!s) log_error(s.error() + " (keeping the memberships read before)");
  }
}

void Controller::on_connected(bool after_link_loss) {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& kv : active_)
    if (kv.second.rec.target_kind == "group") publish_group_offer(kv.second, false);
  if (!after_link_loss) return;
  // Whatever crossed the broker around the loss may be gone: an offer or an answer the
  // broker acknowledged but never delivered (a broker killed before it saved), a device's
  // hello delivered to nobody (our session lost, so we got only the retained copy). Every
  // device still in flight gets its offer again; by the protocol it works on from where it
  // is, or repeats its final answer, so no row waits for an answer that will never come.
  for (auto& kv : active_) {
    std::size_t resent = 0;
    for (auto& r : kv.second.rows) {
      if (!is_in_flight_state(r.second.rec.state)) continue;
      publish_offer_attempt(kv.second, r.first, r.second.rec.attempt, /*tracked=*/true);
      resent++;
    }
    if (resent > 0)
      event(kv.first, "", "offers_resent",
            std::to_string(resent) + " devices in flight: the link to the broker was restored",
            "controller", kv.second.rollout_id);
  }
}

// ---------------------------------------------------------------------- device messages

void Controller::decode_error(const std::string& dev, const char* topic, const char* what,
                              int code, const char* field) {
  decode_errors_++;
  count_drop(DropReason::decode_error);
  log_warn("device " + dev + ": bad " + what + " on " + topic + ": " +
           proto::errc_name(static_cast<proto::Errc>(code)) +
           (field && *field ? std::string(" (field ") + field + ")" : std::string()));
}

void Controller::on_message(const char* topic, const void* payload, std::size_t len,
                            bool retained) {
  const char* idp = nullptr;
  std::size_t idlen = 0;
  proto::TopicKind k = proto::parse_topic(cfg_.prefix.c_str(), topic, &idp, &idlen);
  if (k != proto::TopicKind::presence && k != proto::TopicKind::event &&
      k != proto::TopicKind::chunk_request)
    return;
  if (!idp || !proto::valid_id(idp, idlen)) {
    decode_errors_++;
    count_drop(DropReason::decode_error);
    log_warn(std::string("ignoring message on topic with invalid device id: ") + topic);
    return;
  }
  const std::string dev = str(idp, idlen);
  const char* p = static_cast<const char*>(payload);
  // Retained copies come from the broker's store (we subscribed), not from the device now.
  RateLimiter& budget = k == proto::TopicKind::chunk_request ? request_budget_ : message_budget_;
  if (!retained && !budget.admit(dev, steady_now_ms())) {
    count_drop(DropReason::rate_limited);
    ignored_messages_++;
    std::lock_guard<std::mutex> lock(mu_);
    if (logged_once_.insert("rate|" + dev))
      log_warn("device " + dev + ": over its message budget; dropping messages (logged once, counted "
               "in ota_device_messages_dropped_total{reason=\"rate_limited\"})");
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (revoked_.count(dev)) {
      count_drop(DropReason::revoked);
      ignored_messages_++;
      if (logged_once_.insert("revoked|" + dev))
        log_warn("device " + dev + " is revoked; dropping its messages (logged once, counted in "
                 "ota_device_messages_dropped_total{reason=\"revoked\"}); revoke its "
                 "certificate on the broker (broker-config/pki.sh revoke)");
      return;
    }
  }
  switch (k) {
    case proto::TopicKind::presence: handle_presence(dev, p, len, topic, retained); break;
    case proto::TopicKind::event: handle_event(dev, p, len, topic); break;
    case proto::TopicKind::chunk_request: handle_chunk_request(dev, p, len, topic); break;
    default: break;
  }
}

void Controller::handle_presence(const std::string& dev, const char* p, std::size_t len,
                                 const char* topic, bool retained) {
  if (len == 0) return;  // a cleared retained message
  proto::PresenceType pt{};
  proto::Error e = proto::decode_presence_type(p, len, pt);
  if (e) return decode_error(dev, topic, "presence", static_cast<int>(e.code), e.field);
  std::lock_guard<std::mutex> lock(mu_);
  if (pt == proto::PresenceType::heartbeat) {
    proto::Heartbeat hb;
    e = proto::decode_heartbeat(p, len, hb);
    if (e) return decode_error(dev, topic, "heartbeat", static_cast<int>(e.code), e.field);
    if (!dev_seq_.count(dev)) {  // never said hello: nothing to keep alive
      ignored("hb|" + dev, "", dev, "", "", "heartbeat from a device that never said hello");
      return;
    }
    note_alive(dev);
    if (offline_devs_.erase(dev)) {
      Status s = store_.set_device_online(dev, true, now() / 1000);
      if (!s) log_error("device " + dev + ": heartbeat: " + s.error());
    }
    return;
  }
  if (pt == proto::PresenceType::offline) {
    seen_ms_.erase(dev);
    saved_seen_.erase(dev);
    offline_devs_.insert(dev);
    auto existing = store_.device(dev);
    if (existing && *existing) {
      Status s = store_.set_device_online(dev, false, now_s());
      if (!s) log_error("device " + dev + ": offline: " + s.error());
      log_info("device " + dev + " offline");
    }
    return;
  }
  auto h = std::make_unique<proto::Hello>();
  e = proto::decode_hello(p, len, *h);
  if (e) return decode_error(dev, topic, "hello", static_cast<int>(e.code), e.field);
  if (*h->device.c_str() && h->device != dev.c_str()) {
    // The topic's id is the one the broker vouches for (its ACL pins a certificate to its
    // own topics); a hello naming someone else is a lie or a mix-up: apply nothing.
    ignored("hello-id|" + dev, "", dev, "", "",
            std::string("hello names device '") + h->device.c_str() +
                "', not the topic's; ignored",
            DropReason::device_id_mismatch);
    return;
  }
  auto existing = store_.device(dev);
  if (!existing) {
    log_error("device " + dev + ": hello: " + existing.error());
    keep_unapplied_hello(dev, p, len, retained);
    return;
  }
  DeviceRec d;
  d.id = dev;
  d.hw = h->hw.c_str();
  d.version = h->version.c_str();
  d.slot = h->slot.c_str();
  d.slot_state = proto::slot_state_name(h->slot_state);
  d.free = h->free;
  d.counter = h->counter;
  d.keys = h->keys;
  for (std::size_t i = 0; i < h->group_count; ++i) d.groups.emplace_back(h->groups[i].c_str());
  d.online = true;
  d.last_seen = now_s();
  if (*existing) {
    const DeviceRec& old = **existing;
    d.previous_version = old.previous_version;
    if (!old.version.empty() && old.version != d.version) d.previous_version = old.version;
  }
  // A version change we cannot explain (not one of our deployments, not a rollback to the
  // previous version) means the device was re-flashed: its persisted seq restarted at 0.
  bool reflashed = *existing && !(*existing)->version.empty() &&
                   (*existing)->version != d.version &&
                   h->slot_state == proto::SlotState::confirmed &&
                   !explained_version(dev, d.version, (*existing)->previous_version);
  Tx tx(store_);
  Status s = tx.status();
  if (s) s = store_.upsert_device(d);
  if (s && reflashed) {
    s = store_.set_device_last_seq(dev, -1);
    if (s) {
      dev_seq_[dev] = -1;
      event("", dev, "seq_reset",
            "re-flash detected: " + (*existing)->version + " -> " + d.version);
      log_warn("device " + dev + ": re-flashed (" + (*existing)->version + " -> " + d.version +
               "); event sequence reset");
    }
  }
  if (s && (!*existing || (*existing)->version != d.version || !(*existing)->online ||
            (*existing)->keys != d.keys))
    event("", dev, "hello",
          "version " + d.version + " hw " + d.hw + " slot " + d.slot + " " + d.slot_state +
              (d.groups.empty() ? "" : " groups " + join(d.groups, ",")) +
              (d.keys || keys_.version() ? " keys " + std::to_string(d.keys) : std::string()));
  std::vector<std::string> touched;
  if (s) {
    dev_groups_[dev] = d.groups;
    dev_version_[dev] = d.version;
    if (!dev_seq_.count(dev)) dev_seq_[dev] = *existing ? (*existing)->last_seq : -1;
    for (auto& kv : active_) {
      DepMem& dep = kv.second;
      auto r = dep.rows.find(dev);
      if (r == dep.rows.end()) {
        if (dep.rec.target_kind == "group") touched.push_back(kv.first);
        continue;
      }
      RowMem& row = r->second;
      if (is_final_row_state(row.rec.state)) continue;
      if (!is_in_flight_state(row.rec.state)) continue;  // a rollout has not offered it yet
      const bool runs_target = d.version == dep.image.version;
      if (runs_target && h->slot_state == proto::SlotState::confirmed) {
        s = set_row_state(dep, row, "succeeded", "running " + d.version + " (confirmed)");
        touched.push_back(kv.first);
      } else if (!runs_target && h->slot_state == proto::SlotState::rolled_back &&
                 is_late_state(row.rec.state)) {
        s = set_row_state(dep, row, "failed", "rolled_back");
        if (s) s = store_.set_device_last_error(dev, "rolled back from " + dep.image.version);
        touched.push_back(kv.first);
      } else if (!retained) {
        // The hello does not prove the outcome. Whatever state we last saw, the device may
        // have finished meanwhile and its final event may be lost (PUBACKed before we
        // committed it): re-offering makes it work on, or re-send its final event. A
        // retained hello is not a reconnect (we re-subscribed): the device is still working
        // on what it was offered and its events reach our persistent session.
        publish_offer_attempt(dep, dev, row.rec.attempt);
        event(dep.rec.id, dev, "offer_resent",
              "device said hello running " + d.version + "; row " + row.rec.state);
      }
      if (!s) break;
    }
  }
  if (s) s = tx.commit();
  if (!s) {
    log_error("device " + dev + ": hello: " + s.error() + " (applied again once the database takes writes)");
    keep_unapplied_hello(dev, p, len, retained);
    return;
  }
  unapplied_hellos_.erase(dev);
  note_alive(dev);
  offline_devs_.erase(dev);
  dev_keys_[dev] = d.keys;
  log_info("device " + dev + " hello version " + d.version + " " + d.slot_state +
           (d.keys || keys_.version() ? " keys " + std::to_string(d.keys) : std::string()));
  // A device that trusts an older key set gets the newest one (PROTOCOL.md 6.6).
  if (d.keys < keys_.version()) send_keys(dev, /*force=*/false);
  if (h->resume.present) {
    // An interrupted download of a deployment that ended while the device was away: tell it
    // to drop the partial image now instead of letting it time out.
    const std::string rdep = h->resume.deployment.c_str();
    int attempt = 1;
    DepMem* dp = find_dep(rdep, &attempt);
    if (!dp) {
      send_cancel(dev, rdep, "deployment is no longer active");
    } else {
      auto r = dp->rows.find(dev);
      if (r != dp->rows.end() && is_final_row_state(r->second.rec.state))
        send_cancel(dev, rdep, "device's row is " + r->second.rec.state);
      else if (r != dp->rows.end() && r->second.rec.attempt != attempt)
        send_cancel(dev, rdep, "superseded by attempt " + std::to_string(r->second.rec.attempt));
    }
  }
  for (const auto& id : touched) maybe_complete(id);
}

void Controller::handle_event(const std::string& dev, const char* p, std::size_t len,
                              const char* topic) {
  proto::Event ev;
  proto::Error e = proto::decode_event(p, len, ev);
  if (e) return decode_error(dev, topic, "event", static_cast<int>(e.code), e.field);
  std::lock_guard<std::mutex> lock(mu_);
  auto seq_it = dev_seq_.find(dev);
  const long long last = seq_it == dev_seq_.end() ? -1 : seq_it->second;
  const bool is_final_event =
      ev.type == proto::EventType::result || ev.type == proto::EventType::decline;
  // A final event at an old seq is the device re-sending its outcome (it got an offer for a
  // deployment it already finished): the first copy may have been lost by a crash after the
  // PUBACK. It is applied to a non-final row; it never re-applies to a final one.
  const bool replay = static_cast<long long>(ev.seq) <= last;
  if (replay && !is_final_event) {
    log(LogLevel::debug, "device " + dev + ": dropping event seq " + std::to_string(ev.seq) +
                             " (last " + std::to_string(last) + ")");
    return;
  }
  note_alive(dev);
  int attempt = 1;
  DepMem* dp = find_dep(ev.deployment.c_str(), &attempt);
  const std::string dep_id = dp ? dp->rec.id : std::string(ev.deployment.c_str());
  const std::string type = proto::event_type_name(ev.type);
  const bool is_progress = ev.type == proto::EventType::progress;
  auto note_seq = [&] {
    if (replay) return;
    dev_seq_[dev] = ev.seq;
    dirty_seq_.insert(dev);
  };

  RowMem* row = nullptr;
  bool non_member = false;
  bool stale_attempt = false;
  if (dp) {
    DepMem& dep = *dp;
    auto r = dep.rows.find(dev);
    if (r != dep.rows.end() && r->second.rec.attempt != attempt) {
      stale_attempt = true;  // an earlier attempt of a rollout: superseded, ignore
    } else if (r != dep.rows.end()) {
      row = &r->second;
    } else if (dep.rec.target_kind == "group" &&
               (in_group(dev, dep.rec.target) ||
                (!acl_enabled_ &&
                 (ev.type == proto::EventType::accept || ev.type == proto::EventType::decline)))) {
      RowMem rm;
      rm.rec.deployment_id = dep_id;
      rm.rec.device_id = dev;
      rm.rec.state = "offered";
      rm.rec.total = dep.image.size;
      row = &(dep.rows[dev] = rm);
    } else if (dep.rec.target_kind == "group") {
      non_member = true;
    }
  }

  if (!row) {
    std::optional<RowRec> late;
    const bool refinement = ev.type == proto::EventType::result && !ev.success;
    if (!dp && !replay &&
        (refinement || (!logged_once_.contains("late|" + dev + "|" + dep_id) &&
                        !logged_once_.contains("ignored|" + dev + "|" + dep_id))))
      late = finished_row(dep_id, dev);
    if (late && late->state == "failed" && ev.type == proto::EventType::result && !ev.success) {
      // The hello already showed the rollback (and finished the row); the result names the
      // precise reason.
      late->reason = reason_text(ev.reason, ev.detail);
      late->updated_at = now_ms();
      Tx tx(store_);
      Status s = tx.status();
      if (s) s = store_.upsert_row(*late);
      if (s) s = store_.set_device_last_seq(dev, ev.seq);
      if (s) event(dep_id, dev, "result", "seq " + std::to_string(ev.seq) + " reason " + late->reason);
      if (s) s = tx.commit();
      if (!s) {
        log_error("device " + dev + ": " + type + " event: " + s.error());
        return;
      }
      dev_seq_[dev] = ev.seq;
      return;
    }
    // Ignored: counted, logged and recorded once per (device, deployment, reason); the seq is
    // persisted lazily (flush), so a flood of such events costs no database write each.
    note_seq();
    if (replay) {
      ignored_messages_++;
    } else if (late) {
      ignored("late|" + dev + "|" + dep_id, dep_id, dev, "late_event",
              type + " seq " + std::to_string(ev.seq),
              type + " event for finished deployment " + dep_id + "; ignored");
    } else if (stale_attempt) {
      ignored("stale|" + dev + "|" + std::string(ev.deployment.c_str()), dep_id, dev,
              "ignored_event", type + " seq " + std::to_string(ev.seq) + " for superseded " +
              std::string(ev.deployment.c_str()),
              type + " event for superseded attempt " + ev.deployment.c_str() + "; ignored");
    } else if (non_member) {
      ignored("nonmember|" + dev + "|" + dep_id, dep_id, dev, "ignored_event",
              type + " seq " + std::to_string(ev.seq) + ": not a member of group " +
                  dp->rec.target,
              type + " event for group deployment " + dep_id + " of group '" +
                  dp->rec.target + "', which the ACL does not grant it; ignored");
    } else {
      ignored("ignored|" + dev + "|" + dep_id, dep_id, dev, "ignored_event",
              type + " seq " + std::to_string(ev.seq),
              type + " event for deployment '" + dep_id +
                  "' it is not part of (or not active); ignored");
    }
    return;
  }
  if (replay && is_final_row_state(row->rec.state)) {
    ignored_messages_++;  // the outcome we already have, re-sent: nothing to do
    count_drop(DropReason::duplicate);
    return;
  }
  // Claims the controller can check against what it knows are not taken at face value.
  if (ev.type == proto::EventType::result && ev.success && !ev.version.empty() &&
      dp->image.version != ev.version.c_str()) {
    ignored("result-version|" + dev + "|" + dep_id, dep_id, dev, "refused_result",
            std::string("success result claims version ") + ev.version.c_str() +
                ", the deployment's image is " + dp->image.version,
            std::string("success result for deployment ") + dep_id + " claims version " +
                ev.version.c_str() + ", not the image's " + dp->image.version + "; ignored",
            DropReason::result_mismatch);
    return;
  }
  if (ev.type == proto::EventType::progress && row->rec.attempt == attempt &&
      ev.received < row->rec.received && row->rec.state == "downloading") {
    count_drop(DropReason::progress_backwards);
    ignored_messages_++;
    return;
  }

  Tx tx(store_);
  Status s = tx.status();
  if (s) s = store_.ensure_device(dev, now_s());
  if (s && !replay) s = store_.set_device_last_seq(dev, ev.seq);
  bool final_now = false;
  if (s && row && row->rec.state == "failed" && ev.type == proto::EventType::result &&
      !ev.success) {
    // The hello already showed the rollback; the result names the precise reason.
    row->rec.reason = reason_text(ev.reason, ev.detail);
    s = write_row(*row);
    if (s) event(dep_id, dev, "result", "seq " + std::to_string(ev.seq) + " reason " + row->rec.reason);
    row = nullptr;
  } else if (s && row && (row->rec.state == "timed_out" || row->rec.state == "pending") &&
             row->rec.attempt > 0 && ev.type == proto::EventType::result) {
    // The result of an attempt the rollout gave up waiting for: it is still the truth.
  } else if (s && row && (row->rec.state == "pending" || row->rec.state == "deferred")) {
    log_info("device " + dev + ": " + type + " event for deployment " + dep_id +
             " while its row is " + row->rec.state + "; ignored");
    row = nullptr;
  } else if (s && row && is_final_row_state(row->rec.state)) {
    log_info("device " + dev + ": " + type + " event for deployment " + dep_id +
             " after its row became " + row->rec.state + "; ignored");
    row = nullptr;
  }
  if (s && row) {
    DepMem& dep = *dp;
    switch (ev.type) {
      case proto::EventType::accept:
        if (row->rec.state == "offered") s = set_row_state(dep, *row, "accepted", "");
        break;
      case proto::EventType::decline: {
        std::string reason = reason_text(ev.reason, ev.detail);
        if (ev.reason == proto::ReasonCode::already_installed) {
          s = set_row_state(dep, *row, "succeeded", reason);
        } else {
          s = set_row_state(dep, *row, "declined", reason);
          if (s) s = store_.set_device_last_error(dev, "declined " + dep_id + ": " + reason);
        }
        final_now = true;
        break;
      }
      case proto::EventType::defer: {
        // Not a failure and not final: offered again later (the rollout engine, or tick()
        // for a plain deployment), when the device said or after the policy's delay.
        std::string reason = reason_text(ev.reason, ev.detail);
        long long delay_s = ev.retry_after;
        int max_defers = 10;
        if (!dep.rollout_id.empty()) {
          auto ro = rollouts_.find(dep.rollout_id);
          if (ro != rollouts_.end()) {
            if (!delay_s) delay_s = ro->second.policy.defer_delay_s;
            max_defers = ro->second.policy.max_defers;
          }
        }
        if (!delay_s) delay_s = 300;
        row->rec.defers++;
        if (row->rec.defers > max_defers) {
          s = set_row_state(dep, *row, "declined",
                            "deferred " + std::to_string(row->rec.defers) + " times (last: " +
                                reason + ")");
          final_now = true;
        } else {
          row->rec.next_at = now() + delay_s * 1000;
          s = set_row_state(dep, *row, "deferred",
                            reason + "; offered again in " + std::to_string(delay_s) + " s");
        }
        break;
      }
      case proto::EventType::progress: {
        row->rec.received = ev.received;
        if (ev.total) row->rec.total = ev.total;
        if (row->rec.state == "offered" || row->rec.state == "accepted") {
          s = set_row_state(dep, *row, "downloading", "");
        } else {
          const int bucket =
              row->rec.total ? static_cast<int>(row->rec.received * 10 / row->rec.total) : -1;
          row->dirty = true;
          if (bucket != row->last_pct_bucket ||
              now_ms() - row->last_flush_ms >= cfg_.flush_interval_ms)
            s = write_row(*row);
          row->last_pct_bucket = bucket;
        }
        break;
      }
      case proto::EventType::status:
        if (ev.state != proto::DeviceState::idle) {
          std::string st = proto::device_state_name(ev.state);
          if (is_row_state(st) && st != row->rec.state) s = set_row_state(dep, *row, st, "");
        }
        break;
      case proto::EventType::result:
        if (ev.success) {
          std::string ver = ev.version.empty() ? dep.image.version : ev.version.c_str();
          s = set_row_state(dep, *row, "succeeded", "");
          if (s) s = store_.set_device_version(dev, ver);
          if (s) dev_version_[dev] = ver;
        } else {
          std::string reason = reason_text(ev.reason, ev.detail);
          s = set_row_state(dep, *row, "failed", reason);
          if (s) s = store_.set_device_last_error(dev, dep_id + ": " + reason);
          if (s && !ev.version.empty() && dev_version_[dev] != ev.version.c_str()) {
            s = store_.set_device_version(dev, ev.version.c_str());
            if (s) dev_version_[dev] = ev.version.c_str();
          }
        }
        final_now = true;
        break;
    }
    if (s && !is_progress && ev.type != proto::EventType::status)
      event(dep_id, dev, type,
            "seq " + std::to_string(ev.seq) +
                (ev.type == proto::EventType::decline || ev.type == proto::EventType::defer ||
                         (ev.type == proto::EventType::result && !ev.success)
                     ? " reason " + reason_text(ev.reason, ev.detail)
                     : std::string()));
  }
  if (s) s = tx.commit();
  if (!s) {
    log_error("device " + dev + ": " + type + " event: " + s.error());
    return;  // not committed: the device will resend (QoS 1) and we will apply it then
  }
  if (!replay) {
    dev_seq_[dev] = ev.seq;
    dirty_seq_.erase(dev);
  } else {
    log_info("device " + dev + ": re-sent " + type + " (seq " + std::to_string(ev.seq) +
             ") for deployment " + dep_id + " applied");
  }
  if (final_now) {
    log_info("device " + dev + ": deployment " + dep_id + " -> " + row->rec.state +
             (row->rec.reason.empty() ? "" : " (" + row->rec.reason + ")"));
    maybe_complete(dep_id);
  }
}

void Controller::handle_chunk_request(const std::string& dev, const char* p, std::size_t len,
                                      const char* topic) {
  proto::ChunkRequest req;
  proto::Error e = proto::decode_chunk_request(p, len, req);
  if (e) return decode_error(dev, topic, "chunk request", static_cast<int>(e.code), e.field);
  std::shared_ptr<ImageFile> file;
  const std::string dep_id = req.deployment.c_str();
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto refuse = [&](const std::string& why) {
      ignored("req|" + dev + "|" + dep_id, dep_id, dev, "", "",
              "refusing chunk requests for deployment '" + dep_id + "': " + why);
    };
    note_alive(dev);
    int attempt = 1;
    DepMem* dp = find_dep(dep_id, &attempt);
    if (!dp) {
      refuse("no such active deployment");
      // Cancelled or finished while the device was away: make it drop the partial image.
      return send_cancel(dev, dep_id, "deployment is no longer active");
    }
    DepMem& dep = *dp;
    if (req.image != dep.image.id.c_str())
      return refuse(std::string("image ") + req.image.c_str() + " is not the deployment's image " +
                    dep.image.id);
    auto r = dep.rows.find(dev);
    if (r != dep.rows.end()) {
      if (is_final_row_state(r->second.rec.state) || r->second.rec.attempt != attempt ||
          !is_in_flight_state(r->second.rec.state)) {
        const std::string why = r->second.rec.attempt != attempt
                                    ? "superseded by attempt " + std::to_string(r->second.rec.attempt)
                                    : "device's row is " + r->second.rec.state;
        refuse(why);
        return send_cancel(dev, dep_id, why);
      }
    } else if (!(dep.rec.target_kind == "group" && in_group(dev, dep.rec.target))) {
      return refuse("device is not part of it");
    }
    // After an outage a device may re-request the same window several times in a row;
    // serving each copy would multiply the traffic. Identical requests within
    // kDuplicateRequestMs are answered once.
    const long long now = now_ms();
    const std::string key = chunk_request_key(req);
    LastRequest& lr = last_request_[dev];
    if (lr.key == key && now - lr.ms < kDuplicateRequestMs) {
      duplicate_requests_++;
      return;
    }
    lr.key = key;
    lr.ms = now;
    file = dep.file;
  }
  std::vector<ChunkSlice> plan = plan_chunks(file->size, file->chunk_size, req);
  if (plan.empty()) return;
  thread_local std::vector<std::uint8_t> buf;
  if (buf.size() < proto::kFrameHeaderLen + file->chunk_size)
    buf.resize(proto::kFrameHeaderLen + file->chunk_size);
  const std::string t = topic_for(static_cast<int>(proto::TopicKind::chunk), dev);
  std::uint64_t sent = 0;
  for (const ChunkSlice& c : plan) {
    std::uint8_t* payload = buf.data() + proto::kFrameHeaderLen;
    std::size_t got = 0;
    while (got < c.length) {
      ssize_t n = ::pread(file->fd, payload + got, c.length - got,
                          static_cast<off_t>(c.offset + got));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      got += static_cast<std::size_t>(n);
    }
    if (got != c.length) {
      log_error("image " + file->path + ": short read at offset " + std::to_string(c.offset) +
                ": " + (got < c.length ? std::strerror(errno) : "?"));
      break;
    }
    proto::encode_chunk_header(file->id, c.offset, payload, c.length, 0, buf.data());
    if (!pub_ || !pub_->publish(t, buf.data(), proto::kFrameHeaderLen + c.length, 1, false)) {
      log_warn("device " + dev + ": publish chunk " + std::to_string(c.index) + " failed");
      break;
    }
    sent += c.length;
    chunks_sent_++;
  }
  if (sent == 0) return;
  bytes_served_ += sent;
  std::lock_guard<std::mutex> lock(mu_);
  int attempt = 1;
  DepMem* dp = find_dep(dep_id, &attempt);
  if (!dp) return;
  auto r = dp->rows.find(dev);
  if (r == dp->rows.end()) return;
  r->second.rec.bytes_sent += sent;
  r->second.dirty = true;
  if (r->second.rec.state == "offered" || r->second.rec.state == "accepted") {
    Status s = set_row_state(*dp, r->second, "downloading", "");
    if (!s) log_error("device " + dev + ": chunk accounting: " + s.error());
  }
}

// ------------------------------------------------------------------------------ queries

json Controller::to_json(const ImageRec& r) {
  return json{{"id", r.id},         {"sha256", r.sha256},         {"version", r.version},
              {"hw", r.hw},         {"size", r.size},             {"chunk_size", r.chunk_size},
              {"counter", r.counter}, {"kind", r.kind},           {"created_at", r.created_at},
              {"release_key", r.release_key.empty() ? json() : json(r.release_key)},
              {"release_sig", r.release_sig.empty() ? json() : json(r.release_sig)}};
}

json Controller::to_json(const DeviceRec& r) {
  return json{{"id", r.id},
              {"hw", r.hw},
              {"version", r.version},
              {"previous_version", r.previous_version ? json(*r.previous_version) : json()},
              {"slot", r.slot},
              {"slot_state", r.slot_state},
              {"free", r.free},
              {"counter", r.counter},
              {"groups", r.groups},
              {"online", r.online},
              {"last_seen", r.last_seen},
              {"last_error", r.last_error},
              {"last_seq", r.last_seq},
              {"keys", r.keys},
              {"revoked", r.revoked_at > 0},
              {"revoked_at", r.revoked_at > 0 ? json(r.revoked_at) : json()}};
}

Result<json> Controller::images_json() {
  std::lock_guard<std::mutex> lock(mu_);
  auto imgs = store_.list_images();
  if (!imgs) return imgs.context("images");
  json out = json::array();
  for (const auto& i : *imgs) out.push_back(to_json(i));
  return out;
}

Result<json> Controller::image_json(const std::string& id_or_version) {
  std::lock_guard<std::mutex> lock(mu_);
  auto img = resolve_image(id_or_version);
  if (!img) return img.err();
  return to_json(*img);
}

json Controller::deployment_to_json(const DeploymentRec& d, bool with_rows) {
  json j{{"id", d.id},          {"image", d.image_id},  {"target_kind", d.target_kind},
         {"target", d.target},  {"state", d.state},     {"created_at", d.created_at},
         {"finished_at", d.finished_at}};
  auto img = store_.image_by_id(d.image_id);
  std::uint64_t img_size = 0;
  if (img && *img) {
    j["version"] = (*img)->version;
    img_size = (*img)->size;
  }
  auto rows = store_.rows(d.id);
  json counts = json::object();
  for (const char* s : {"pending", "offered", "accepted", "downloading", "verifying",
                        "installing", "rebooting", "confirming", "deferred", "succeeded",
                        "failed", "declined", "timed_out", "cancelled"})
    counts[s] = 0;
  std::uint64_t sum_total = 0, sum_recv = 0, sum_sent = 0;
  json jrows = json::array();
  if (rows) {
    for (const auto& r : *rows) {
      counts[r.state] = counts.value(r.state, 0LL) + 1;
      const std::uint64_t total = r.total ? r.total : img_size;
      const std::uint64_t recv =
          r.state == "succeeded" ? total : std::min<std::uint64_t>(r.received, total);
      sum_total += total;
      sum_recv += recv;
      sum_sent += r.bytes_sent;
      if (with_rows)
        jrows.push_back(json{{"device", r.device_id},
                             {"state", r.state},
                             {"reason", r.reason},
                             {"received", r.received},
                             {"total", r.total},
                             {"percent", total ? static_cast<int>(recv * 100 / total) : 0},
                             {"bytes_sent", r.bytes_sent},
                             {"final", is_final_row_state(r.state)},
                             {"updated_at", r.updated_at}});
    }
  }
  int pending_members = 0;
  if (d.state == "active" && d.target_kind == "group") {
    auto it = active_.find(d.id);
    for (const auto& m : known_members(d.target))
      if (it == active_.end() || !it->second.rows.count(m)) pending_members++;
  }
  j["counts"] = counts;
  j["devices_total"] = (rows ? rows->size() : 0) + static_cast<std::size_t>(pending_members);
  j["pending_members"] = pending_members;
  j["bytes_total"] = sum_total;
  j["bytes_received"] = sum_recv;
  j["bytes_sent"] = sum_sent;
  j["percent"] = sum_total ? static_cast<int>(sum_recv * 100 / sum_total) : (d.state == "active" ? 0 : 100);
  if (with_rows) j["devices"] = jrows;
  return j;
}

Result<json> Controller::deployments_json() {
  std::lock_guard<std::mutex> lock(mu_);
  flush_dirty(true);
  auto deps = store_.list_deployments();
  if (!deps) return deps.context("deployments");
  json out = json::array();
  for (const auto& d : *deps) out.push_back(deployment_to_json(d, false));
  return out;
}

Result<json> Controller::deployment_json(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  flush_dirty(true);
  auto d = store_.deployment(id);
  if (!d) return d.context("deployment");
  if (!*d) return not_found_err("unknown deployment " + id);
  return deployment_to_json(**d, true);
}

Result<json> Controller::devices_json(const DeviceFilter& f, const std::string& tag_expr,
                                      const std::string& state) {
  std::optional<TagExpr> expr;
  if (!tag_expr.empty()) {
    auto e = TagExpr::parse(tag_expr);
    if (!e) return e.err();
    expr = *e;
  }
  static const std::set<std::string> kStates{
      "idle", "online", "offline", "updating", "offered", "accepted", "downloading",
      "verifying", "installing", "rebooting", "confirming"};
  if (!state.empty() && !kStates.count(state))
    return invalid_err("state '" + state +
                       "' is not one of idle, updating, online, offline, offered, accepted, "
                       "downloading, verifying, installing, rebooting, confirming");
  std::lock_guard<std::mutex> lock(mu_);
  auto devs = store_.list_devices(DeviceFilter{f.group, f.version, std::nullopt});
  if (!devs) return devs.context("devices");
  std::map<std::string, TagSubject> subjects;
  if (expr) subjects = tag_subjects();
  auto tags = store_.all_tags();
  json out = json::array();
  for (const auto& d : *devs) {
    if (expr) {
      auto it = subjects.find(d.id);
      if (it == subjects.end() || !expr->matches(it->second)) continue;
    }
    json j = device_view(d, tags ? &*tags : nullptr);
    if (f.online && j["online"].get<bool>() != *f.online) continue;
    if (!state.empty()) {
      const std::string st = j["state"].get<std::string>();
      const bool on = j["online"].get<bool>();
      const bool ok = state == st || (state == "updating" && st != "idle") ||
                      (state == "online" && on) || (state == "offline" && !on);
      if (!ok) continue;
    }
    out.push_back(std::move(j));
  }
  return out;
}

bool Controller::is_online(const DeviceRec& d, long long now_ms, long long* last_ms) const {
  auto seen = seen_ms_.find(d.id);
  const long long last = std::max(d.last_seen * 1000, seen == seen_ms_.end() ? 0 : seen->second);
  if (last_ms) *last_ms = last;
  return d.online &&
         (cfg_.heartbeat_timeout_s <= 0 || now_ms - last <= cfg_.heartbeat_timeout_s * 1000);
}

json Controller::device_view(const DeviceRec& d,
                             const std::map<std::string, std::map<std::string, std::string>>* tags) {
  json j = to_json(d);
  const long long t = now();
  long long last = 0;
  j["online"] = is_online(d, t, &last);
  j["last_seen"] = last / 1000;
  j["heartbeat_age"] = last ? json(std::max(0LL, (t - last) / 1000)) : json();
  // "groups" is what the device claims; with an ACL file, membership is what the broker grants.
  j["member_of"] = acl_enabled_ ? json(acl_.groups_of(d.id)) : j["groups"];
  json jt = json::object();
  if (tags) {
    auto it = tags->find(d.id);
    if (it != tags->end())
      for (const auto& kv : it->second) jt[kv.first] = kv.second;
  }
  j["tags"] = jt;
  j["state"] = "idle";
  j["transfer"] = nullptr;
  for (const auto& kv : active_) {
    auto r = kv.second.rows.find(d.id);
    if (r == kv.second.rows.end() || !is_in_flight_state(r->second.rec.state)) continue;
    const RowRec& rr = r->second.rec;
    const std::uint64_t total = rr.total ? rr.total : kv.second.image.size;
    j["state"] = rr.state;
    j["transfer"] = json{{"deployment", kv.first},
                         {"rollout", kv.second.rollout_id},
                         {"version", kv.second.image.version},
                         {"state", rr.state},
                         {"percent", total ? static_cast<int>(std::min(rr.received, total) * 100 / total) : 0}};
    break;
  }
  return j;
}

Result<json> Controller::device_json(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  flush_dirty(true);
  auto d = store_.device(id);
  if (!d) return d.context("device");
  if (!*d) return not_found_err("unknown device " + id);
  auto tags = store_.all_tags();
  json j = device_view(**d, tags ? &*tags : nullptr);
  auto rows = store_.rows_for_device(id, 20);
  json jr = json::array();
  if (rows)
    for (const auto& r : *rows)
      jr.push_back(json{{"deployment", r.deployment_id},
                        {"state", r.state},
                        {"reason", r.reason},
                        {"received", r.received},
                        {"total", r.total},
                        {"updated_at", r.updated_at}});
  j["deployments"] = jr;
  return j;
}

Result<json> Controller::status_json() {
  std::lock_guard<std::mutex> lock(mu_);
  auto by_version = store_.count_by("SELECT version, COUNT(*) FROM devices GROUP BY version");
  if (!by_version) return by_version.context("status");
  auto online = store_.count_by("SELECT CAST(online AS TEXT), COUNT(*) FROM devices GROUP BY online");
  if (!online) return online.context("status");
  auto deps = store_.count_by("SELECT state, COUNT(*) FROM deployments GROUP BY state");
  if (!deps) return deps.context("status");
  auto imgs = store_.count_by("SELECT 'n', COUNT(*) FROM images");
  if (!imgs) return imgs.context("status");
  long long total = 0;
  for (const auto& kv : *by_version) total += kv.second;
  json dep_states{{"active", 0}, {"completed", 0}, {"cancelled", 0}};
  for (const auto& kv : *deps) dep_states[kv.first] = kv.second;
  return json{{"devices",
               {{"total", total},
                {"online", online->count("1") ? online->at("1") : 0},
                {"by_version", *by_version}}},
              {"deployments", dep_states},
              {"images", imgs->count("n") ? imgs->at("n") : 0},
              {"decode_errors", decode_errors_.load()},
              {"chunks_sent", chunks_sent_.load()},
              {"ignored_messages", ignored_messages_.load()},
              {"duplicate_chunk_requests", duplicate_requests_.load()},
              {"cancels_sent", cancels_sent_.load()}};
}

Result<json> Controller::events_json(const EventFilter& f) {
  std::lock_guard<std::mutex> lock(mu_);
  auto evs = store_.events(f);
  if (!evs) return evs.context("events");
  json out = json::array();
  for (const auto& e : *evs)
    out.push_back(json{{"id", e.id},
                       {"ts", e.ts},
                       {"deployment", e.deployment},
                       {"device", e.device},
                       {"what", e.what},
                       {"detail", e.detail},
                       {"actor", e.actor},
                       {"rollout", e.rollout}});
  return out;
}

}  // namespace ota::service
