#include "fakes.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>

namespace ota::agent::test {

// =========================================================================== FakeFlash
FakeFlash::FakeFlash(std::uint64_t capacity, std::string initial_version)
    : capacity_(capacity), initial_version_(std::move(initial_version)) {}

bool FakeFlash::powered(const char* what, bool* torn) {
  if (rail_ == nullptr) return true;
  const PowerRail::Op op = rail_->next_op(what);
  if (torn != nullptr) *torn = op == PowerRail::Op::torn;
  return op == PowerRail::Op::full;
}

PortStatus FakeFlash::power_on() {
  ++counts_.power_on;
  reset_requested_ = false;
  target_ = 0;
  if (fresh_) {
    // Factory-fresh device: slot a holds the initial image, confirmed.
    fresh_ = false;
    boot_.factory(initial_version_.c_str());
    const std::string image = "factory image " + initial_version_ + "\n";
    a_.assign(image.begin(), image.end());
    durable_a_ = a_;
  }
  // A boot that changes the record (the trial boot counter, a revert) is the operation.
  if (sim_boot::BootLoader::changes_record(boot_.next(sim_boot::Event::power_on)) &&
      !powered("boot-state")) {
    return PortStatus::error;
  }
  boot_.power_on();
  return PortStatus::ok;
}

void FakeFlash::power_cut() {
  a_ = durable_a_;
  b_ = durable_b_;
  target_ = 0;
}

PortStatus FakeFlash::read_state(ImageState& out) {
  ++counts_.read_state;
  out = ImageState{};
  boot_.report(out);
  out.free_bytes = capacity_;
  return PortStatus::ok;
}

PortStatus FakeFlash::begin(const proto::Manifest& manifest, bool resume) {
  ++counts_.begin;
  if (failing(FailOp::begin)) return fail_op_status_;
  if (boot_.record().pending != 0) return PortStatus::error;  // a trial image must be settled first
  if (manifest.size > capacity_) return PortStatus::no_space;
  const char slot = boot_.inactive();
  const bool keep = resume && boot_.record().writing == slot;
  if (!keep) {
    if (!powered("erase")) return PortStatus::error;  // erase + "writing" marker: atomic
    boot_.start_writing(slot);
    data_of(slot).clear();
    durable_of(slot).clear();
  }
  target_ = slot;
  target_size_ = manifest.size;
  return keep || !resume ? PortStatus::ok : PortStatus::not_found;
}

PortStatus FakeFlash::write(std::uint32_t offset, const std::uint8_t* data, std::size_t len) {
  ++counts_.write;
  if (record_writes_) write_offsets_.push_back(offset);
  if (fail_write_at_ != 0 && counts_.write == fail_write_at_) return fail_status_;
  if (target_ == 0 || offset + len > target_size_) return PortStatus::error;
  bool torn = false;
  if (!powered("write", &torn)) {
    if (torn) {  // programming stopped half way: those cells hold the new bytes for good
      const std::size_t half = len / 2;
      for (auto* v : {&data_of(target_), &durable_of(target_)}) {
        if (v->size() < offset + half) v->resize(offset + half, 0);
        std::memcpy(v->data() + offset, data, half);
      }
    }
    return PortStatus::error;
  }
  auto& d = data_of(target_);
  if (d.size() < offset + len) d.resize(offset + len, 0);
  std::memcpy(d.data() + offset, data, len);
  return PortStatus::ok;
}

PortStatus FakeFlash::read(std::uint32_t offset, std::uint8_t* out, std::size_t len) {
  ++counts_.read;
  if (rail_ != nullptr && rail_->dead()) return PortStatus::error;
  const char slot = target_ != 0 ? target_ : boot_.inactive();
  const auto& d = data_of(slot);
  if (offset + len > d.size()) return PortStatus::error;
  std::memcpy(out, d.data() + offset, len);
  return PortStatus::ok;
}

PortStatus FakeFlash::sync() {
  ++counts_.sync;
  if (failing(FailOp::sync)) return fail_op_status_;
  if (!powered("sync")) return PortStatus::error;
  const char slot = target_ != 0 ? target_ : boot_.inactive();
  durable_of(slot) = data_of(slot);
  return PortStatus::ok;
}

PortStatus FakeFlash::finish(const proto::Manifest& manifest) {
  ++counts_.finish;
  if (failing(FailOp::finish)) return fail_op_status_;
  if (!powered("finish")) return PortStatus::error;
  const char slot = target_ != 0 ? target_ : boot_.inactive();
  target_ = slot;
  durable_of(slot) = data_of(slot);
  boot_.finish_writing(slot, manifest);
  return PortStatus::ok;
}

PortStatus FakeFlash::abort() {
  ++counts_.abort;
  if (target_ == 0 || boot_.record().writing != target_) return PortStatus::ok;
  if (!powered("abort")) return PortStatus::error;
  boot_.abandon_writing(target_);
  data_of(target_).clear();
  durable_of(target_).clear();
  return PortStatus::ok;
}

PortStatus FakeFlash::activate(const proto::Manifest& manifest) {
  return activate_trial(manifest, 1);
}

PortStatus FakeFlash::activate_trial(const proto::Manifest& manifest, std::uint32_t max_boots) {
  ++counts_.activate;
  if (failing(FailOp::activate)) return fail_op_status_;
  if (!boot_.holds_finished(boot_.inactive(), manifest.version)) {
    return PortStatus::error;  // only a finished image may become bootable
  }
  if (!powered("activate")) return PortStatus::error;
  boot_.activate_trial(max_boots, manifest.counter);
  return PortStatus::ok;
}

PortStatus FakeFlash::reject() {
  ++counts_.reject;
  if (boot_.next(sim_boot::Event::reject) == sim_boot::Action::none) return PortStatus::ok;
  if (!powered("reject")) return PortStatus::error;
  boot_.reject();
  return PortStatus::ok;
}

PortStatus FakeFlash::confirm() {
  ++counts_.confirm;
  if (failing(FailOp::confirm)) return fail_op_status_;
  if (boot_.next(sim_boot::Event::confirm) == sim_boot::Action::none) return PortStatus::ok;
  if (!powered("confirm")) return PortStatus::error;
  boot_.confirm();
  return PortStatus::ok;
}

void FakeFlash::reset() {
  ++counts_.reset;
  if (rail_ != nullptr && rail_->dead()) return;
  reset_requested_ = true;
}

// ========================================================================== MemStorage
PortStatus MemStorage::load(void* out, std::size_t cap, std::size_t& len) {
  if (!has_record) return PortStatus::not_found;
  len = record.size();
  if (len > cap) return PortStatus::error;
  std::memcpy(out, record.data(), len);
  return PortStatus::ok;
}

PortStatus MemStorage::save(const void* data, std::size_t len) {
  if (fail_saves) return fail_status;
  const auto* p = static_cast<const std::uint8_t*>(data);
  if (rail != nullptr) {
    const PowerRail::Op op = rail->next_op("save");
    if (op == PowerRail::Op::torn) {  // half the new record over the old one
      record.resize(std::max(record.size(), len), 0);
      std::memcpy(record.data(), p, len / 2);
      has_record = true;
    }
    if (op != PowerRail::Op::full) return PortStatus::error;
  }
  ++saves;
  record.assign(p, p + len);
  has_record = true;
  if (on_save) on_save(record);
  return PortStatus::ok;
}

PortStatus MemStorage::erase() {
  record.clear();
  has_record = false;
  return PortStatus::ok;
}

// =================================================================== ScriptedTransport
bool ScriptedTransport::subscribe(const char* topic, int qos) {
  subscriptions.emplace_back(topic, qos);
  return connected_;
}

bool ScriptedTransport::unsubscribe(const char* topic) {
  unsubscriptions.emplace_back(topic);
  return connected_;
}

bool ScriptedTransport::publish(const char* topic, const void* payload, std::size_t len, int qos,
                                bool retain) {
  if (!connected()) return false;
  Published p;
  p.topic = topic;
  const auto* b = static_cast<const std::uint8_t*>(payload);
  p.payload.assign(b, b + len);
  p.qos = qos;
  p.retain = retain;
  const char* id = nullptr;
  std::size_t id_len = 0;
  p.kind = proto::parse_topic(prefix_.c_str(), topic, &id, &id_len);
  published.push_back(std::move(p));
  return true;
}

std::size_t ScriptedTransport::count(proto::TopicKind kind, std::size_t from) const {
  std::size_t n = 0;
  for (std::size_t i = from; i < published.size(); ++i) n += published[i].kind == kind ? 1 : 0;
  return n;
}

std::vector<proto::Event> ScriptedTransport::events(std::size_t from) const {
  std::vector<proto::Event> out;
  for (std::size_t i = from; i < published.size(); ++i) {
    const auto& p = published[i];
    if (p.kind != proto::TopicKind::event) continue;
    proto::Event ev;
    const proto::Error e =
        proto::decode_event(reinterpret_cast<const char*>(p.payload.data()), p.payload.size(), ev);
    if (e) {
      ADD_FAILURE() << "undecodable event: " << proto::errc_name(e.code) << " " << e.field;
      continue;
    }
    out.push_back(ev);
  }
  return out;
}

std::vector<proto::Hello> ScriptedTransport::hellos(std::size_t from) const {
  std::vector<proto::Hello> out;
  for (std::size_t i = from; i < published.size(); ++i) {
    const auto& p = published[i];
    if (p.kind != proto::TopicKind::presence) continue;
    proto::PresenceType type = proto::PresenceType::hello;
    const char* text = reinterpret_cast<const char*>(p.payload.data());
    if (!proto::decode_presence_type(text, p.payload.size(), type) &&
        type != proto::PresenceType::hello) {
      continue;  // heartbeat (or offline)
    }
    proto::Hello h;
    const proto::Error e =
        proto::decode_hello(reinterpret_cast<const char*>(p.payload.data()), p.payload.size(), h);
    if (e) {
      ADD_FAILURE() << "undecodable hello: " << proto::errc_name(e.code) << " " << e.field;
      continue;
    }
    out.push_back(h);
  }
  return out;
}

std::vector<ScriptedTransport::HeartbeatSeen> ScriptedTransport::heartbeats(std::size_t from) const {
  std::vector<HeartbeatSeen> out;
  for (std::size_t i = from; i < published.size(); ++i) {
    const auto& p = published[i];
    if (p.kind != proto::TopicKind::presence) continue;
    const char* text = reinterpret_cast<const char*>(p.payload.data());
    proto::PresenceType type = proto::PresenceType::hello;
    if (proto::decode_presence_type(text, p.payload.size(), type) ||
        type != proto::PresenceType::heartbeat) {
      continue;
    }
    HeartbeatSeen h;
    h.qos = p.qos;
    h.retain = p.retain;
    h.index = i;
    const proto::Error e = proto::decode_heartbeat(text, p.payload.size(), h.hb);
    if (e) {
      ADD_FAILURE() << "undecodable heartbeat: " << proto::errc_name(e.code) << " " << e.field;
      continue;
    }
    out.push_back(h);
  }
  return out;
}

std::vector<proto::ChunkRequest> ScriptedTransport::chunk_requests(std::size_t from) const {
  std::vector<proto::ChunkRequest> out;
  for (std::size_t i = from; i < published.size(); ++i) {
    const auto& p = published[i];
    if (p.kind != proto::TopicKind::chunk_request) continue;
    proto::ChunkRequest r;
    const proto::Error e = proto::decode_chunk_request(
        reinterpret_cast<const char*>(p.payload.data()), p.payload.size(), r);
    if (e) {
      ADD_FAILURE() << "undecodable chunk request: " << proto::errc_name(e.code) << " "
                    << e.field;
      continue;
    }
    out.push_back(r);
  }
  return out;
}

// ========================================================================= ChunkServer
ChunkServer::ChunkServer(std::vector<std::uint8_t> image, std::uint32_t chunk_size,
                         const char* image_id_hex)
    : image_(std::move(image)), chunk_size_(chunk_size) {
  EXPECT_TRUE(proto::image_id_to_bytes(image_id_hex, id_));
}

ChunkServer::Frame ChunkServer::frame(std::uint32_t index) const {
  Frame f;
  f.index = index;
  const std::size_t offset = static_cast<std::size_t>(index) * chunk_size_;
  const std::size_t len = offset >= image_.size() ? 0 : std::min<std::size_t>(chunk_size_, image_.size() - offset);
  f.bytes.resize(proto::kFrameHeaderLen + len);
  const std::size_t n = proto::encode_chunk_frame(
      id_, static_cast<std::uint32_t>(offset), image_.data() + offset,
      static_cast<std::uint32_t>(len), 0, f.bytes.data(), f.bytes.size());
  EXPECT_EQ(n, f.bytes.size());
  return f;
}

std::vector<std::uint32_t> ChunkServer::wanted(const proto::ChunkRequest& req) {
  std::vector<std::uint32_t> out;
  for (std::uint32_t i = 0; i < req.count; ++i) {
    if (req.wants(i)) out.push_back(req.first + i);
  }
  return out;
}

std::vector<ChunkServer::Frame> ChunkServer::frames_for(const proto::ChunkRequest& req) const {
  std::vector<Frame> out;
  for (std::uint32_t index : wanted(req)) {
    if (index < chunk_count()) out.push_back(frame(index));
  }
  return out;
}

}  // namespace ota::agent::test
