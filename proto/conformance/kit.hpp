// ota-conformance: a scripted controller that drives ONE device under test (DUT) through the
// cases of proto/PROTOCOL.md and checks its answers (proto/conformance/README.md).
//
// The Kit owns the broker link, the signing key, the DUT's life (DeviceControl) and what the
// DUT said during the current case (events, chunk requests, hellos). It plays the controller:
// it signs offers, serves the DUT's chunk requests itself (with the fault a case injects) and
// checks every message against the protocol as it arrives (sequence numbers, `accept` before
// `chunk_req`, the hello's identity). Single-threaded: everything runs on the main thread; the
// link's network thread only fills the inbox.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "device_control.hpp"
#include "link.hpp"
#include "ota/proto/messages.hpp"
#include "ota/service/signing.hpp"

namespace ota::conformance {

struct KitOptions {
  LinkSettings broker;            // --broker-host/--broker-port/--ca/--cert/--key
  std::string prefix = "ota/v1";  // --prefix
  std::string device_id;          // --device-id: the DUT
  std::string signing_key;        // --signing-key: a release key the DUT trusts (PEM)
  std::string dut_cert, dut_key;  // --dut-cert/--dut-key: the DUT's identity (disconnect case)
  std::string dut_kind = "firmware";  // --dut-kind: what the DUT installs
  bool dut_has_clock = true;      // --dut-no-clock: expiry is not checked (7 check 6)
  int case_timeout_s = 15;        // --case-timeout
  int quiet_ms = 1000;            // --quiet-ms: how long "no answer" is watched
  std::uint32_t image_size = 4096;  // --image-size
  std::uint32_t chunk_size = 256;   // --chunk-size
  DeviceControlSettings control;
};

enum class Verdict { pass, fail, skip };
const char* verdict_name(Verdict v);

// Thrown by a case (through Kit::fail / Kit::skip) to end it.
struct CaseEnd : std::runtime_error {
  CaseEnd(Verdict v, const std::string& detail) : std::runtime_error(detail), verdict(v) {}
  Verdict verdict;
};

class Kit;
struct CaseSpec {
  const char* id;
  const char* title;
  const char* clause;  // PROTOCOL.md sections the case checks
  bool needs_restart;  // skipped without --device-cmd / --reset-cmd / --prompt-reset
  bool needs_dut_identity;  // skipped without --dut-cert/--dut-key
  void (*run)(Kit&);
};
const std::vector<CaseSpec>& case_table();

struct CaseReport {
  const CaseSpec* spec = nullptr;
  Verdict verdict = Verdict::pass;
  std::string detail;
  double seconds = 0;
};

// What the DUT said about itself in its last hello.
struct DutState {
  bool known = false;
  proto::Hello hello;
};

// An image and the offer the kit made for it.
struct Deployment {
  std::string id;
  proto::Manifest manifest;
  std::string image;  // the bytes
  std::string offer_json;
};

// How the kit answers chunk requests of one deployment (set by a case).
enum class ChunkFault {
  none,
  lose_once,        // the first request of chunk `fault_chunk` gets no frame
  duplicate,        // every frame is sent twice
  reorder,          // the frames of each request are sent in reverse order
  bad_crc_once,     // chunk `fault_chunk` is first sent with a wrong CRC-32
  oversize_once,    // chunk `fault_chunk` is first sent one byte longer than chunk_size
  foreign_image_once,  // chunk `fault_chunk` is first sent with another image id
};

struct ServePlan {
  const Deployment* dep = nullptr;
  ChunkFault fault = ChunkFault::none;
  std::uint32_t fault_chunk = 2;
  bool fault_done = false;
  std::uint32_t serve_below = UINT32_MAX;  // chunks at or above are not answered (withheld)
  // Answer a request that names a group (`bc`, §17) on that group's image topic with flag
  // bit0, as a controller broadcasting; requests without `bc` are answered by unicast.
  bool broadcast = false;
  std::uint32_t broadcast_frames = 0, unicast_frames = 0;  // frames published so far
};

struct SeenEvent {
  proto::Event ev;
  SteadyClock::time_point at;
};
struct SeenRequest {
  proto::ChunkRequest req;
  std::vector<std::uint32_t> wanted;  // chunk indexes the request asks for
  SteadyClock::time_point at;
};
struct SeenHello {
  proto::Hello hello;
  bool retained = false;
  SteadyClock::time_point at;
};

class Kit {
 public:
  explicit Kit(KitOptions options);
  ~Kit();

  // Connects, subscribes to the DUT's topics, starts the DUT (--device-cmd) and waits for its
  // hello. False with `error`.
  bool open(std::string& error);
  CaseReport run_case(const CaseSpec& spec);

  // --- used by the cases ---------------------------------------------------------------
  const KitOptions& options() const { return opt_; }
  [[noreturn]] void fail(const std::string& detail);
  [[noreturn]] void skip(const std::string& detail);
  void require(bool condition, const std::string& detail) {
    if (!condition) fail(detail);
  }
  const DutState& dut() const { return dut_; }
  bool can_restart() const { return control_.can_restart(); }
  // Restarts the DUT (power cut: same state; fresh: factory state) and waits for its new
  // hello. Fails the case when the DUT does not come back.
  void restart_dut(Restart kind);
  // Cuts the DUT's broker connection by connecting with its identity (the broker drops the
  // older connection of the same client id); the DUT reconnects by itself.
  void take_over_dut_session();

  // Offers. `version` empty: a version above the running one.
  struct OfferSpec {
    std::string version;
    std::optional<std::uint32_t> counter;  // default: the DUT's counter
    std::uint32_t size = 0;                // default: options image_size
    std::uint64_t declared_size = 0;       // manifest size if not the image's (0: the image's)
    std::uint32_t chunk_size = 0;          // default: options chunk_size
    std::string kind;                      // default: the DUT's kind
    std::vector<std::string> hw;           // default: the DUT's model
    std::optional<std::uint64_t> expires;  // default: in an hour
    enum class Binding { this_device, own_group, other_device, other_group, unbound } binding =
        Binding::this_device;
    std::string group;             // Binding::own_group: the group
    std::string bound_deployment;  // manifest `deployment` if not the offer's
    bool rollback = false;
    bool corrupt_signature = false;  // flip one hex digit of `sig`
    bool foreign_key = false;        // sign with a key the DUT does not know
    bool image_id_mismatch = false;  // `image` != sha256[:16]
    const Deployment* same_image_as = nullptr;  // this image and version again
  };
  // The deployment lives for the whole run (a ServePlan points at it).
  const Deployment& make_offer(const OfferSpec& spec);
  const Deployment& make_offer() { return make_offer(OfferSpec{}); }
  std::string new_deployment_id();
  void send_offer(const Deployment& d);
  void send_raw_offer(const std::string& payload);
  // A group offer: retained on <prefix>/grp/<group>/offer (§3); cleared with an empty
  // retained message (clear_group_offer, also after the case whatever its end).
  void send_group_offer(const Deployment& d, const std::string& group);
  void clear_group_offer(const std::string& group);
  void send_cancel(const std::string& deployment);
  std::string bumped_version(int major_steps = 1) const;

  // Chunk serving for one deployment at a time.
  ServePlan& serve(const Deployment& d, ChunkFault fault = ChunkFault::none);
  ServePlan& plan() { return plan_; }

  // Waiting. Every wait ends at the case deadline at the latest and fails the case with
  // "no answer within N s: <what>".
  // The first event about `deployment` of one of `types` at index `since` or later of
  // events().
  SeenEvent wait_event(const std::string& deployment, std::initializer_list<proto::EventType> types,
                       const std::string& what, std::size_t since = 0);
  // The device's answer to an offer (accept, decline or defer).
  SeenEvent wait_answer(const std::string& deployment, std::size_t since = 0);
  SeenEvent wait_result(const std::string& deployment, std::size_t since = 0);
  void expect_decline(const Deployment& d, proto::ReasonCode reason);
  // Runs the deployment to a confirmed boot: accept, download, result ok, hello on the new
  // version and confirmed.
  void expect_update(const Deployment& d, std::size_t since = 0);
  // Pumps for `ms` (quiet_ms when 0) and fails if the DUT sent an event about `deployment`
  // (any event when empty) that `allowed` does not accept.
  void expect_silence(const std::string& deployment, int ms, const std::string& what,
                      const std::function<bool(const SeenEvent&)>& allowed = nullptr);
  // Pumps until `cond` holds; fails with `what` at the deadline.
  void wait_until(const std::function<bool()>& cond, const std::string& what,
                  int max_ms = -1);
  // A hello received live (not the retained one) after `since`.
  SeenHello wait_fresh_hello(std::size_t since, const std::string& what);

  const std::vector<SeenEvent>& events() const { return events_; }
  const std::vector<SeenRequest>& requests() const { return requests_; }
  const std::vector<SeenHello>& hellos() const { return hellos_; }
  // "decline wrong_target (seq 12)": an event as a detail text names it.
  std::string describe(const SeenEvent& e) const;

 private:
  void pump_until(SteadyClock::time_point until);
  void handle(const LinkMessage& m);
  // `at`: when the message arrived (the network thread's clock reading), so that the order
  // of times is the order of arrival on every topic.
  void on_event(const std::string& payload, SteadyClock::time_point at);
  void on_request(const std::string& payload, SteadyClock::time_point at);
  void on_presence(const LinkMessage& m);
  void serve_request(const SeenRequest& r);
  // `bc_group` non-empty: on that group's image topic with flag bit0 (§17).
  void publish_frame(const Deployment& d, std::uint32_t index, ChunkFault variant,
                     const std::string& bc_group = "");
  void violation(const std::string& what);
  void cleanup();
  SteadyClock::time_point deadline(int max_ms = -1) const;
  std::string topic(const char* suffix) const;
  std::string no_answer(const std::string& what, SteadyClock::duration waited) const;

  KitOptions opt_;
  Link link_;
  DeviceControl control_;
  std::unique_ptr<service::Signer> signer_;
  std::unique_ptr<service::Signer> foreign_signer_;
  DutState dut_;
  std::string run_tag_;
  int deployments_made_ = 0;
  std::uint64_t image_seed_ = 1;

  // The current case.
  const CaseSpec* case_ = nullptr;
  SteadyClock::time_point case_start_{};
  SteadyClock::time_point case_deadline_{};
  std::vector<SeenEvent> events_;
  std::vector<SeenRequest> requests_;
  std::vector<SeenHello> hellos_;
  std::vector<std::string> violations_;
  std::vector<const Deployment*> offered_;
  std::vector<std::unique_ptr<Deployment>> deployments_;  // kept for the whole run
  ServePlan plan_;
  std::set<std::string> accepted_;  // deployments the DUT sent `accept` for (whole run)
  std::set<std::string> retained_groups_;  // group offers to clear

  // Sequence numbers of the DUT's current life (reset by a fresh start).
  std::optional<std::uint32_t> last_seq_;
  std::map<std::uint32_t, std::string> final_events_;  // seq -> encoded final event
};

}  // namespace ota::conformance
