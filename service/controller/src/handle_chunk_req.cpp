// Inbound: chunk requests (.../up/req). Which deployment and row may get chunks is the
// deployments' call; reading and publishing is the chunk server's. No database lock unless
// the row moves on (its first chunks).
#include "ota/proto/messages.hpp"
#include "ota/service/inbound.hpp"
#include "ota/service/log.hpp"

namespace ota::service {

void Inbound::handle_chunk_request(const std::string& dev, const char* p, std::size_t len,
                                   const char* topic) {
  proto::ChunkRequest req;
  proto::Error e = proto::decode_chunk_request(p, len, req);
  if (e) return decode_error(dev, topic, "chunk request", static_cast<int>(e.code), e.field);
  const std::string dep_id = req.deployment.c_str();
  registry_.note_alive(dev, now());
  const ChunkGrant grant = deployments_.chunk_grant(dev, dep_id, req.image.c_str());
  if (!grant.file) {
    ignored_unlocked("req|" + dev + "|" + dep_id, dep_id, dev, "", "",
                     "refusing chunk requests for deployment '" + dep_id + "': " + grant.refusal);
    // Cancelled, finished or superseded while the device was away: make it drop the
    // partial image.
    if (!grant.cancel.empty()) deployments_.send_cancel(dev, dep_id, grant.cancel);
    return;
  }
  // After an outage a device may re-request the same window several times in a row;
  // serving each copy would multiply the traffic.
  if (chunks_.repeated(dev, req, now_ms())) return;
  // Broadcast only on a topic the broker lets the device read (PROTOCOL.md 17); otherwise
  // its chunks are unicast, as for a device that did not ask.
  std::string bc_group;
  if (!req.bc.empty()) {
    if (registry_.reads_group_images(dev, req.bc.c_str())) {
      bc_group = req.bc.c_str();
    } else {
      // Broadcast frames would never reach it: the broker does not let it read the topic.
      broadcast_unreadable_++;
      if (first_time("bc|" + dev + "|" + req.bc.c_str()))
        log_warn("device " + dev + ": asks for broadcast chunks on group '" + req.bc.c_str() +
                 "', whose image topic it may not read (ACL, or not in its hello's groups): served "
                 "by unicast (logged once; counted in ota_chunk_broadcast_unreadable_total)");
    }
  }
  // Queued within the send budget; the chunk server's senders publish them and account the
  // unicast bytes to the row (Controller's served hook).
  chunks_.request(dev, dep_id, grant.file, req, bc_group);
}

}  // namespace ota::service
