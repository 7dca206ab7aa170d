// Inbound: presence messages (.../up/presence): hello, heartbeat, and the broker's last will.
#include <memory>

#include "ota/proto/messages.hpp"
#include "ota/service/inbound.hpp"
#include "ota/service/log.hpp"
#include "ota/service/util.hpp"

namespace ota::service {

namespace {

// Whether a version change is one of ours (a deployment of that version to the device) or a
// rollback to its previous version.
bool explained_version(Store& store, const std::string& dev, const std::string& version,
                       const std::optional<std::string>& previous) {
  if (previous && *previous == version) return true;
  auto rows = store.rows_for_device(dev, 50);
  if (!rows) return true;
  for (const auto& r : *rows) {
    auto d = store.deployment(r.deployment_id);
    if (!d || !*d) continue;
    auto img = store.image_by_id((*d)->image_id);
    if (img && *img && (*img)->version == version) return true;
  }
  return false;
}

DeviceRec device_of(const std::string& dev, const proto::Hello& h,
                    const std::optional<DeviceRec>& existing) {
  DeviceRec d;
  d.id = dev;
  d.hw = h.hw.c_str();
  d.version = h.version.c_str();
  d.slot = h.slot.c_str();
  d.slot_state = proto::slot_state_name(h.slot_state);
  d.free = h.free;
  d.counter = h.counter;
  d.keys = h.keys;
  for (std::size_t i = 0; i < h.group_count; ++i) d.groups.emplace_back(h.groups[i].c_str());
  d.online = true;
  d.last_seen = now_s();
  if (existing) {
    d.previous_version = existing->previous_version;
    if (!existing->version.empty() && existing->version != d.version)
      d.previous_version = existing->version;
  }
  return d;
}

}  // namespace

void Inbound::handle_presence(const std::string& dev, const char* p, std::size_t len,
                              const char* topic, bool retained) {
  if (len == 0) return;  // a cleared retained message
  proto::PresenceType pt{};
  proto::Error e = proto::decode_presence_type(p, len, pt);
  if (e) return decode_error(dev, topic, "presence", static_cast<int>(e.code), e.field);
  if (pt == proto::PresenceType::heartbeat) return handle_heartbeat(dev, p, len, topic);
  if (pt == proto::PresenceType::offline) return handle_last_will(dev);
  handle_hello(dev, p, len, topic, retained);
}

void Inbound::handle_heartbeat(const std::string& dev, const char* p, std::size_t len,
                               const char* topic) {
  proto::Heartbeat hb;
  proto::Error e = proto::decode_heartbeat(p, len, hb);
  if (e) return decode_error(dev, topic, "heartbeat", static_cast<int>(e.code), e.field);
  if (hb.device != dev.c_str()) {  // as for a hello: the topic's id is the one vouched for
    ignored_unlocked("hb-id|" + dev, "", dev, "", "",
                     std::string("heartbeat names device '") + hb.device.c_str() +
                         "', not the topic's; ignored",
                     DropReason::device_id_mismatch);
    return;
  }
  if (!registry_.known(dev)) {  // never said hello: nothing to keep alive
    ignored_unlocked("hb|" + dev, "", dev, "", "", "heartbeat from a device that never said hello");
    return;
  }
  registry_.note_alive(dev, now());
  if (!registry_.heartbeat_after_last_will(dev)) return;
  DbLock db(db_);
  Status s = db.store().set_device_online(dev, true, now() / 1000);
  if (!s) log_error("device " + dev + ": heartbeat: " + s.error());
}

void Inbound::handle_last_will(const std::string& dev) {
  registry_.last_will(dev);
  chunks_.link_restarted(dev);  // what was on its way to it is gone with the link
  DbLock db(db_);
  auto existing = db.store().device(dev);
  if (existing && *existing) {
    Status s = db.store().set_device_online(dev, false, now_s());
    if (!s) log_error("device " + dev + ": offline: " + s.error());
    log_info("device " + dev + " offline");
  }
}

void Inbound::handle_hello(const std::string& dev, const char* p, std::size_t len,
                           const char* topic, bool retained) {
  auto h = std::make_unique<proto::Hello>();
  proto::Error e = proto::decode_hello(p, len, *h);
  if (e) return decode_error(dev, topic, "hello", static_cast<int>(e.code), e.field);
  DbLock db(db_);
  if (*h->device.c_str() && h->device != dev.c_str()) {
    // The topic's id is the one the broker vouches for (its ACL pins a certificate to its
    // own topics); a hello naming someone else is a lie or a mix-up: apply nothing.
    ignored(db, "hello-id|" + dev, "", dev, "", "",
            std::string("hello names device '") + h->device.c_str() + "', not the topic's; ignored",
            DropReason::device_id_mismatch);
    return;
  }
  // A live hello is a new connection: chunks published before it were lost with the old
  // one, so its re-requests are served at once (a retained hello is an old connection's).
  if (!retained) chunks_.link_restarted(dev);
  Store& store = db.store();
  auto existing = store.device(dev);
  if (!existing) {
    log_error("device " + dev + ": hello: " + existing.error());
    registry_.keep_unapplied_hello(dev, std::string(p, len), retained);
    return;
  }
  const DeviceRec d = device_of(dev, *h, *existing);
  const std::optional<DeviceRec>& old = *existing;
  // A version change we cannot explain (not one of our deployments, not a rollback to the
  // previous version) means the device was re-flashed: its persisted seq restarted at 0.
  const bool reflashed = old && !old->version.empty() && old->version != d.version &&
                         h->slot_state == proto::SlotState::confirmed &&
                         !explained_version(store, dev, d.version, old->previous_version);
  const std::uint32_t key_version = keys_.version();
  Tx tx(store);
  Status s = tx.status();
  if (s) s = store.upsert_device(d);
  if (s && reflashed) {
    s = store.set_device_last_seq(dev, -1);
    if (s) {
      registry_.set_seq(dev, -1);
      db.event("", dev, "seq_reset", "re-flash detected: " + old->version + " -> " + d.version);
      log_warn("device " + dev + ": re-flashed (" + old->version + " -> " + d.version +
               "); event sequence reset");
    }
  }
  if (s && (!old || old->version != d.version || !old->online || old->keys != d.keys))
    db.event("", dev, "hello",
             "version " + d.version + " hw " + d.hw + " slot " + d.slot + " " + d.slot_state +
                 (d.groups.empty() ? "" : " groups " + join(d.groups, ",")) +
                 (d.keys || key_version ? " keys " + std::to_string(d.keys) : std::string()));
  std::vector<std::string> touched;
  if (s) {
    registry_.hello_seen(dev, d.groups, d.version, old ? old->last_seq : -1);
    s = deployments_.on_hello(db, dev, d.version, h->slot_state, retained, &touched);
  }
  if (s) s = tx.commit();
  if (!s) {
    log_error("device " + dev + ": hello: " + s.error() + " (applied again once the database takes writes)");
    registry_.keep_unapplied_hello(dev, std::string(p, len), retained);
    return;
  }
  after_hello(db, dev, *h, touched);
}

void Inbound::after_hello(DbLock& db, const std::string& dev, const proto::Hello& h,
                          const std::vector<std::string>& touched) {
  registry_.hello_committed(dev, now());
  const std::uint32_t key_version = keys_.version();
  log_info("device " + dev + " hello version " + h.version.c_str() + " " +
           proto::slot_state_name(h.slot_state) +
           (h.keys || key_version ? " keys " + std::to_string(h.keys) : std::string()));
  // A device that trusts an older key set gets the newest one (PROTOCOL.md 6.6).
  if (h.keys < key_version) keys_.send_keys(dev, /*force=*/false, h.keys);
  if (h.resume.present) {
    // An interrupted download of a deployment that ended while the device was away: tell it
    // to drop the partial image now instead of letting it time out.
    const std::string rdep = h.resume.deployment.c_str();
    if (auto why = deployments_.resume_refusal(dev, rdep)) deployments_.send_cancel(dev, rdep, *why);
  }
  for (const auto& id : touched) complete(db, id);
}

}  // namespace ota::service
