// libFuzzer harness for the controller's inbound device messages (Controller::on_message):
// everything a device, or whoever holds a device certificate, can send. It must not crash,
// leak, hang or publish anything a device could not decode.
//
// One controller (SQLite database and image store in a temporary directory, /dev/shm when
// there is one) lives across inputs, as in the field, so a run also fuzzes sequences: it knows
// devices dev-0001..dev-0003 (hello sent), holds an image and two deployments (dev-0001 on its
// own, dev-0002 and dev-0003 through group "canary"), and is re-created from its database every
// 4096 inputs (the load path sees fuzzed state) and from scratch every 16384.
//
// Input: records separated by the byte 0x1E (never raw in JSON text), at most 8. A record
// whose first byte is below 0x20 (and not 0x1E) chooses the topic: bits 0-1 the kind
// (presence, event, chunk request, another topic), bits 2-3 the device (dev-0001..dev-0003, a
// 64-character id), bit 4 "retained"; the rest is the payload. Any other record (a plain
// fixture file) goes to presence, event and chunk request of dev-0001. The fixtures'
// deployment id "dep-2025-001" and image id "3f2a9c1b7d4e8f60" are replaced by the ones the
// controller uses for that device, so fixture-shaped requests reach the chunk server.
//
// A real fuzzer (clang with libFuzzer; on Debian 12: apt-get install clang-14 libclang-rt-14-dev),
// from the repository root (every object instrumented, so ASan sees the controller's memory):
//   F="-std=c++17 -g -O1 -fsanitize=fuzzer-no-link,address,undefined"
//   I="-Iproto/include -Iproto/src -Iproto/bundle/include -Iservice/controller/include"
//   I="$I -Itests/unit"
//   mkdir -p /tmp/cf && for f in proto/src/{error,json,messages,frame,topics}.cpp
//     proto/bundle/src/bundle.cpp service/controller/src/{log,store,signing,images,controller,
//     rollout,rollouts,tag_expr,health,rate_limit}.cpp; do clang++-14 $F $I -c $f -o /tmp/cf/$(basename $f).o; done
//   clang++-14 -std=c++17 -g -O1 -fsanitize=fuzzer,address,undefined $I
//     tests/fuzz/controller_fuzz.cpp /tmp/cf/*.o -lsqlite3 -lssl -lcrypto -lpthread
//     -o controller_fuzz
//   mkdir -p /tmp/ctl-corpus && ./controller_fuzz -max_total_time=300 -max_len=4096
//     -timeout=10 /tmp/ctl-corpus tests/fixtures/proto/valid tests/fuzz/corpus/controller
// (about 9000 inputs a second with ASan on one core).
// Built with -DOTA_FUZZ_REPLAY_MAIN (gcc, CI: test controller_fuzz_replay) the main() of
// replay_driver.hpp replays the corpus and runs a fixed number of deterministic mutations.
#include <stdlib.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "ota/proto/frame.hpp"
#include "ota/proto/messages.hpp"
#include "ota/proto/topics.hpp"
#include "ota/service/controller.hpp"
#include "ota/service/log.hpp"
#include "service_test_util.hpp"

namespace svc = ota::service;
namespace proto = ota::proto;

namespace {

void check(bool ok) {
  if (!ok) std::abort();
}

const char* const kDevices[4] = {
    "dev-0001", "dev-0002", "dev-0003",
    "d123456789012345678901234567890123456789012345678901234567890123"};  // 64: the longest id
const char* const kHw = "esp32-s3-devkit";  // the fixtures' hardware model
const char* const kFixtureDeployment = "dep-2025-001";
const char* const kFixtureImage = "3f2a9c1b7d4e8f60";

// Whatever the controller publishes must be something a device decodes.
class CheckingPublisher final : public svc::Publisher {
 public:
  bool publish(const std::string& topic, const void* data, std::size_t len, int qos,
               bool retain) override {
    (void)qos;
    (void)retain;
    const char* id = nullptr;
    std::size_t id_len = 0;
    const proto::TopicKind kind = proto::parse_topic("ota/v1", topic.c_str(), &id, &id_len);
    check(kind != proto::TopicKind::unknown && id != nullptr);
    const std::string target(id, id_len);
    const char* p = static_cast<const char*>(data);
    switch (kind) {
      case proto::TopicKind::offer:
      case proto::TopicKind::group_offer: {
        if (len == 0) break;  // a retained offer cleared
        static proto::Offer offer;
        offer = proto::Offer{};
        check(!proto::decode_offer(p, len, offer));
        (kind == proto::TopicKind::offer ? device_offer : group_offer)[target] =
            offer.deployment.c_str();
        image = offer.manifest.image.c_str();
        break;
      }
      case proto::TopicKind::cancel: {
        proto::Cancel c;
        check(!proto::decode_cancel(p, len, c));
        break;
      }
      case proto::TopicKind::chunk: {
        proto::ChunkFrame f;
        check(!proto::decode_chunk_frame(static_cast<const std::uint8_t*>(data), len, 65536, f));
        break;
      }
      default:
        check(false);  // the controller publishes offers, cancels and chunks only
    }
    ++published;
    return true;
  }
  std::map<std::string, std::string> device_offer, group_offer;  // target -> offer id
  std::string image;
  std::uint64_t published = 0;
};

long long g_now_ms = 1'700'000'000'000LL;
std::uint64_t g_chunks_served = 0;  // by controllers already replaced

struct World {
  std::string dir;
  std::string key_pem;
  CheckingPublisher pub;
  std::unique_ptr<svc::Controller> ctl;
  std::uint64_t inputs = 0;

  ~World() {
    ctl.reset();
    remove_dir();
  }

  void remove_dir() {
    if (dir.empty()) return;
    const std::string cmd = "rm -rf '" + dir + "'";
    if (std::system(cmd.c_str()) != 0) {
    }
    dir.clear();
  }

  void open_controller() {
    if (ctl) g_chunks_served += ctl->chunks_sent();
    ctl.reset();
    auto signer = svc::Signer::from_pem(key_pem);
    check(signer.ok());
    svc::ControllerConfig cfg;
    cfg.chunk_flow.sender_threads = 0;  // deterministic: chunks sent inside on_message
    cfg.inbound_queue = 0;              // and every message applied inside it
    cfg.db_path = dir + "/ota.db";
    cfg.store_dir = dir + "/images";
    cfg.clock = [] { return g_now_ms; };
    cfg.min_free_bytes = 0;
    // The budgets are tested elsewhere; here they would drop most inputs unseen.
    cfg.device_messages_per_s = cfg.device_messages_burst = 1e12;
    cfg.device_requests_per_s = cfg.device_requests_burst = 1e12;
    auto c = svc::Controller::create(cfg, std::move(*signer), &pub);
    check(c.ok());
    ctl = std::move(*c);
  }

  void hello(const char* dev, const char* group) {
    proto::Hello h;
    h.device.assign(dev);
    h.hw.assign(kHw);
    h.version.assign("1.4.1");
    h.slot.assign("a");
    h.slot_state = proto::SlotState::confirmed;
    h.free = 1 << 24;
    h.counter = 3;
    if (group != nullptr) h.groups[h.group_count++].assign(group);
    char buf[1024];
    std::size_t len = 0;
    check(!proto::encode_hello(h, buf, sizeof buf, len));
    char topic[proto::kMaxTopicLen];
    check(proto::make_topic("ota/v1", proto::TopicKind::presence, dev, topic, sizeof topic) > 0);
    ctl->on_message(topic, buf, len);
  }

  void fresh() {
    if (ctl) g_chunks_served += ctl->chunks_sent();
    ctl.reset();
    remove_dir();
    char tmpl_shm[] = "/dev/shm/ota-ctl-fuzz-XXXXXX";
    char tmpl_tmp[] = "/tmp/ota-ctl-fuzz-XXXXXX";
    const char* made = ::mkdtemp(tmpl_shm);  // no disk flushes: SQLite syncs every commit
    if (made == nullptr) made = ::mkdtemp(tmpl_tmp);
    check(made != nullptr);
    dir = made;
    pub.device_offer.clear();
    pub.group_offer.clear();
    open_controller();
    // A 20 KiB firmware image (5 chunks of 4096), the version the fixtures' results name.
    std::string image(20000, '\0');
    for (std::size_t i = 0; i < image.size(); ++i) image[i] = static_cast<char>(i * 131 + 7);
    svc::ImageParams p;
    p.version = "1.4.2";
    p.hw = {kHw};
    p.counter = 3;
    check(ctl->add_image(image, p).ok());
    hello("dev-0001", nullptr);
    hello("dev-0002", "canary");
    hello("dev-0003", "canary");
    check(ctl->deploy("1.4.2", "device", "dev-0001").ok());
    check(ctl->deploy("1.4.2", "group", "canary").ok());
  }
};

World* g_world = nullptr;

World& world() {
  if (g_world == nullptr) {
    svc::set_log_level(svc::LogLevel::error);  // every bad message is logged: too much output
    g_world = new World;
    g_world->key_pem = svc::testing::make_ec_key_pem();
    check(!g_world->key_pem.empty());
    g_world->fresh();
    // The database and the store go at exit (LeakSanitizer checks after atexit handlers).
    std::atexit([] {
      delete g_world;
      g_world = nullptr;
    });
  }
  return *g_world;
}

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  if (to.empty() || from == to) return s;
  for (std::size_t at = s.find(from); at != std::string::npos; at = s.find(from, at + to.size())) {
    s.replace(at, from.size(), to);
  }
  return s;
}

void deliver(World& w, proto::TopicKind kind, const char* dev, const std::string& payload,
             bool retained) {
  char topic[proto::kMaxTopicLen + 1];
  std::size_t n = proto::make_topic("ota/v1", kind, dev, topic, sizeof topic);
  check(n > 0);
  w.ctl->on_message(topic, payload.data(), payload.size(), retained);
}

void deliver_elsewhere(World& w, const char* dev, const std::string& payload) {
  // Topics the controller does not serve, or serves only for well-formed ids.
  static const char* const others[] = {"ota/v1/dev/%s/down/offer", "ota/v1/grp/canary/offer",
                                       "ota/v1/dev/%s/up/bogus", "ota/v1/dev//up/event",
                                       "ota/v1/dev/a+b/up/event", "ota/v2/dev/%s/up/event", ""};
  const char* pattern = others[payload.size() % (sizeof others / sizeof *others)];
  char topic[256];
  std::snprintf(topic, sizeof topic, pattern, dev);
  w.ctl->on_message(topic, payload.data(), payload.size());
}

void run_record(World& w, const std::uint8_t* data, std::size_t size) {
  bool explicit_topic = size > 0 && data[0] < 0x20;
  const std::uint8_t selector = explicit_topic ? data[0] : 0;
  std::string payload(reinterpret_cast<const char*>(data) + (explicit_topic ? 1 : 0),
                      size - (explicit_topic ? 1 : 0));
  const char* dev = kDevices[(selector >> 2) & 3];
  const std::string& dep = w.pub.device_offer.count(dev) != 0 ? w.pub.device_offer[dev]
                           : w.pub.group_offer.count("canary") != 0 ? w.pub.group_offer["canary"]
                                                                    : std::string();
  payload = replace_all(std::move(payload), kFixtureDeployment, dep);
  payload = replace_all(std::move(payload), kFixtureImage, w.pub.image);
  const bool retained = (selector & 0x10) != 0;
  g_now_ms += 100;
  if (!explicit_topic) {
    deliver(w, proto::TopicKind::presence, dev, payload, false);
    deliver(w, proto::TopicKind::event, dev, payload, false);
    deliver(w, proto::TopicKind::chunk_request, dev, payload, false);
    return;
  }
  switch (selector & 3) {
    case 0: deliver(w, proto::TopicKind::presence, dev, payload, retained); break;
    case 1: deliver(w, proto::TopicKind::event, dev, payload, retained); break;
    case 2: deliver(w, proto::TopicKind::chunk_request, dev, payload, retained); break;
    default: deliver_elsewhere(w, dev, payload); break;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  World& w = world();
  ++w.inputs;
  if (w.inputs % 16384 == 0) {
    w.fresh();
  } else if (w.inputs % 4096 == 0) {
    w.open_controller();  // load() from what the inputs left in the database
  }
  std::size_t start = 0;
  int records = 0;
  for (std::size_t i = 0; i <= size && records < 8; ++i) {
    if (i == size || data[i] == 0x1e) {
      run_record(w, data + start, i - start);
      ++records;
      start = i + 1;
    }
  }
  if (w.inputs % 32 == 0) {
    g_now_ms += 5000;
    w.ctl->tick();
  }
  return 0;
}

#ifdef OTA_FUZZ_REPLAY_MAIN
#include "replay_driver.hpp"
#include <cstdio>
int main(int argc, char** argv) {
  const int rc = ota_fuzz_replay::replay_main(argc, argv, "controller_fuzz_replay");
  // How far the inputs got: messages that all fail to decode would test little.
  World& w = world();
  std::printf("controller_fuzz_replay: %llu inputs, %llu messages published (offers, cancels, "
              "chunks), %llu chunks served; this controller: %llu decode errors, %llu ignored\n",
              static_cast<unsigned long long>(w.inputs),
              static_cast<unsigned long long>(w.pub.published),
              static_cast<unsigned long long>(g_chunks_served + w.ctl->chunks_sent()),
              static_cast<unsigned long long>(w.ctl->decode_errors()),
              static_cast<unsigned long long>(w.ctl->ignored_messages()));
  return rc;
}
#endif
