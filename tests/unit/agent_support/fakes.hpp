// Test doubles for the agent ports that stand where hardware would be: flash, network,
// clock and the persistent record store. Crypto is the real OpenSSL port.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <ostream>
#include <string>
#include <vector>

#include "ota/agent/ports.hpp"
#include "ota/agent/sim_boot.hpp"
#include "ota/proto/frame.hpp"
#include "ota/proto/messages.hpp"
#include "ota/proto/topics.hpp"

namespace ota::proto {
// Readable gtest output for the enums the tests compare.
inline void PrintTo(ReasonCode c, std::ostream* os) { *os << reason_name(c); }
inline void PrintTo(DeviceState s, std::ostream* os) { *os << device_state_name(s); }
inline void PrintTo(EventType t, std::ostream* os) { *os << event_type_name(t); }
inline void PrintTo(SlotState s, std::ostream* os) { *os << slot_state_name(s); }
}  // namespace ota::proto

namespace ota::agent::test {

// ---------------------------------------------------------------------------------------
// The power supply of one simulated device, shared by its fakes. Every operation that
// changes persistent state (flash erase/program/sync/seal, boot-state writes, record saves)
// is counted; an armed cut makes the k-th one the last: it is torn (a flash write programs
// half its buffer, a record save leaves half the new bytes over the old) or, for operations
// that are atomic on real parts (boot-state updates), does not happen. From then on the
// device is dead: the fakes change nothing and the transport sends nothing, until the test
// powers it on again (restore()).
class PowerRail {
 public:
  enum class Op : std::uint8_t { full, torn, dead };
  // The `n`-th operation from now (1 = the next one) is cut; 0 disarms.
  void cut_after(std::uint64_t n) { cut_at_ = n == 0 ? 0 : ops_ + n; }
  // `what` names the operation ("write", "save", ...) for the test's reports.
  Op next_op(const char* what) {
    if (dead_) return Op::dead;
    ++ops_;
    if (cut_at_ != 0 && ops_ == cut_at_) {
      dead_ = true;
      ++cuts_;
      cut_what_ = what;
      return Op::torn;
    }
    return Op::full;
  }
  const char* cut_what() const { return cut_what_; }  // the operation of the last cut
  bool dead() const { return dead_; }
  void restore() {
    dead_ = false;
    cut_at_ = 0;
  }
  std::uint64_t ops() const { return ops_; }
  std::uint64_t cuts() const { return cuts_; }

 private:
  std::uint64_t ops_ = 0;
  std::uint64_t cut_at_ = 0;
  std::uint64_t cuts_ = 0;
  bool dead_ = false;
  const char* cut_what_ = "";
};

// ---------------------------------------------------------------------------------------
// In-memory A/B flash on the simulated boot loader linux_port::FileFlash uses (sim_boot.hpp):
//  - power_on() picks the confirmed slot, or an activated one on trial, counting its trial
//    boots; a trial slot that used up its boots (activate_trial) without being confirmed, or
//    was rejected, reverts (slot_state rolled_back). The boot record lives in RAM.
//  - writes are volatile until sync()/finish(); power_cut() drops what was not made durable.
// Copyable, so a test can snapshot the whole device.
class FakeFlash final : public FlashPort {
 public:
  struct Counts {
    int power_on = 0, begin = 0, write = 0, read = 0, sync = 0, finish = 0, abort = 0,
        activate = 0, confirm = 0, reset = 0, read_state = 0, reject = 0;
  };

  explicit FakeFlash(std::uint64_t capacity = 1u << 20, std::string initial_version = "1.0.0");

  // Simulated power-on / bootloader. Call before Agent::boot().
  PortStatus power_on();
  // Loses every write since the last sync()/finish() (RAM of the flash driver).
  void power_cut();

  PortStatus begin(const proto::Manifest& manifest, bool resume) override;
  PortStatus write(std::uint32_t offset, const std::uint8_t* data, std::size_t len) override;
  PortStatus read(std::uint32_t offset, std::uint8_t* out, std::size_t len) override;
  PortStatus sync() override;
  PortStatus finish(const proto::Manifest& manifest) override;
  PortStatus abort() override;
  PortStatus activate(const proto::Manifest& manifest) override;
  PortStatus activate_trial(const proto::Manifest& manifest, std::uint32_t max_boots) override;
  PortStatus reject() override;
  PortStatus confirm() override;
  void reset() override;
  PortStatus read_state(ImageState& out) override;

  // Fault injection: the `nth` write() from now on (1-based) returns `status`.
  void fail_write(int nth, PortStatus status) {
    fail_write_at_ = counts_.write + nth;
    fail_status_ = status;
  }
  // Fault injection: every call of one operation returns `status` (ok = stop failing).
  enum class FailOp : std::uint8_t { none, begin, sync, finish, activate, confirm };
  void fail_always(FailOp op, PortStatus status) {
    fail_op_ = status == PortStatus::ok ? FailOp::none : op;
    fail_op_status_ = status;
  }
  // The power supply this flash hangs on (nullptr: never cut).
  void attach(PowerRail* rail) { rail_ = rail; }
  void set_capacity(std::uint64_t c) { capacity_ = c; }
  void set_security_counter(std::uint32_t c) { boot_.record().counter = c; }
  void record_writes(bool on) { record_writes_ = on; }

  const Counts& counts() const { return counts_; }
  const std::vector<std::uint32_t>& write_offsets() const { return write_offsets_; }
  const sim_boot::Record& boot_state() const { return boot_.record(); }
  char running_slot() const { return boot_.running(); }
  bool reset_requested() const { return reset_requested_; }
  const std::vector<std::uint8_t>& slot_data(char slot) const { return slot == 'b' ? b_ : a_; }
  std::string version_of(char slot) const { return boot_.version_of(slot).c_str(); }

 private:
  bool failing(FailOp op) const { return fail_op_ == op; }
  // Counts an operation on the rail: false when it must not happen (cut or dead).
  bool powered(const char* what, bool* torn = nullptr);
  std::vector<std::uint8_t>& data_of(char slot) { return slot == 'b' ? b_ : a_; }
  std::vector<std::uint8_t>& durable_of(char slot) { return slot == 'b' ? durable_b_ : durable_a_; }

  std::uint64_t capacity_;
  std::string initial_version_;
  bool fresh_ = true;
  sim_boot::BootLoader boot_;
  char target_ = 0;
  std::uint64_t target_size_ = 0;
  std::vector<std::uint8_t> a_, b_, durable_a_, durable_b_;
  bool reset_requested_ = false;
  Counts counts_;
  int fail_write_at_ = 0;
  PortStatus fail_status_ = PortStatus::error;
  bool record_writes_ = false;
  std::vector<std::uint32_t> write_offsets_;
  FailOp fail_op_ = FailOp::none;
  PortStatus fail_op_status_ = PortStatus::ok;
  PowerRail* rail_ = nullptr;
};

// ---------------------------------------------------------------------------------------
// Storage in memory. The record survives an agent "restart" when the test reuses the object.
class MemStorage final : public Storage {
 public:
  PortStatus load(void* out, std::size_t cap, std::size_t& len) override;
  PortStatus save(const void* data, std::size_t len) override;
  PortStatus erase() override;

  bool fail_saves = false;
  PortStatus fail_status = PortStatus::error;  // what a failing save returns
  PowerRail* rail = nullptr;                   // a cut save leaves a torn record
  int saves = 0;
  bool has_record = false;
  std::vector<std::uint8_t> record;
  // Called after every successful save with the new record.
  std::function<void(const std::vector<std::uint8_t>&)> on_save;
};

// ---------------------------------------------------------------------------------------
class FakeClock final : public Clock {
 public:
  std::uint64_t now_ms() override { return now_ms_; }
  std::uint64_t unix_seconds() override { return unix_; }
  void advance_ms(std::uint64_t ms) {
    now_ms_ += ms;
    unix_ += ms / 1000;
  }
  void set_unix(std::uint64_t s) { unix_ = s; }
  std::uint64_t now_ms_ = 1000;
  std::uint64_t unix_ = 1'800'000'000;
};

// ---------------------------------------------------------------------------------------
struct Published {
  std::string topic;
  std::vector<std::uint8_t> payload;
  int qos = 0;
  bool retain = false;
  proto::TopicKind kind = proto::TopicKind::unknown;
};

// Records what the agent publishes and subscribes; the test plays the controller.
class ScriptedTransport final : public Transport {
 public:
  explicit ScriptedTransport(std::string prefix = proto::kDefaultPrefix) : prefix_(std::move(prefix)) {}

  bool connected() const override { return connected_ && (rail == nullptr || !rail->dead()); }
  bool subscribe(const char* topic, int qos) override;
  bool unsubscribe(const char* topic) override;
  bool publish(const char* topic, const void* payload, std::size_t len, int qos,
               bool retain) override;

  bool connected_ = true;
  const PowerRail* rail = nullptr;  // a dead device sends nothing
  std::vector<Published> published;
  std::vector<std::pair<std::string, int>> subscriptions;
  std::vector<std::string> unsubscriptions;

  // Decoded views (decode failures make the test fail via ADD_FAILURE in the .cpp).
  std::vector<proto::Event> events(std::size_t from = 0) const;
  std::vector<proto::Hello> hellos(std::size_t from = 0) const;  // heartbeats skipped
  struct HeartbeatSeen {
    proto::Heartbeat hb;
    int qos = 0;
    bool retain = false;
    std::size_t index = 0;  // in `published`
  };
  std::vector<HeartbeatSeen> heartbeats(std::size_t from = 0) const;
  std::vector<proto::ChunkRequest> chunk_requests(std::size_t from = 0) const;
  std::size_t count(proto::TopicKind kind, std::size_t from = 0) const;

 private:
  std::string prefix_;
};

// The controller's side of the chunk transfer for one image buffer.
class ChunkServer {
 public:
  struct Frame {
    std::uint32_t index = 0;
    std::vector<std::uint8_t> bytes;
  };
  ChunkServer(std::vector<std::uint8_t> image, std::uint32_t chunk_size, const char* image_id_hex);

  std::uint32_t chunk_count() const {
    return static_cast<std::uint32_t>((image_.size() + chunk_size_ - 1) / chunk_size_);
  }
  Frame frame(std::uint32_t index) const;
  // Frames for every chunk the request wants, in index order.
  std::vector<Frame> frames_for(const proto::ChunkRequest& req) const;
  // Wanted chunk indexes of a request.
  static std::vector<std::uint32_t> wanted(const proto::ChunkRequest& req);

 private:
  std::vector<std::uint8_t> image_;
  std::uint32_t chunk_size_;
  std::uint8_t id_[8] = {};
};

}  // namespace ota::agent::test
