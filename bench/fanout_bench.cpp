// Raw fan-out ceiling for bench/fleet_bench.sh: one plain libmosquitto publisher (the
// controller's certificate) publishes an image's worth of chunk-sized frames once, QoS 1, on
// a group's image topic; N plain subscribers (device certificates, so the broker's ACL
// applies as to the devices) receive every frame. Prints one line: the time from the first
// publish until every subscriber had every frame, and the aggregate rate (N x image / time).
// No OTA code on either side: what the broker and TLS allow on this machine, the ceiling a
// broadcast wave of the same size is compared with.
//
//   fanout_bench --port P --ca CA --pub-cert CRT --pub-key KEY --pki DIR --ids-file FILE
//                --topic T [--size-bytes 1048576] [--chunk 4096] [--threads 2] [--sub-qos 1]
//
// --sub-qos: the QoS the subscribers ask for, so delivery's: 0 as the devices subscribe to
// image topics (PROTOCOL.md 17), 1 adds a PUBACK per frame and subscriber.
//
// Run it against the broker before the controller and the simulators connect: the broker
// makes a certificate's CN the client id, so these clients would take their connections over.
// Subscribers are driven from `--threads` epoll loops (mosquitto_loop_read/write/misc), as
// ota-devsim does, so descriptors above FD_SETSIZE work.
#include <mosquitto.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

struct Options {
  int port = 0;
  std::string ca, pub_cert, pub_key, pki, ids_file, topic;
  std::size_t size = 1u << 20;
  std::size_t chunk = 4096;
  unsigned threads = 2;
  int sub_qos = 1;  // the QoS the subscribers ask for: delivery is at most this
};

struct Subscriber {
  mosquitto* m = nullptr;
  std::uint32_t received = 0;  // touched by its worker thread only
};

std::atomic<unsigned> g_subscribed{0};
std::atomic<unsigned> g_refused{0};  // SUBACK 0x80: the broker (its ACL) refused the topic
std::atomic<unsigned> g_complete{0};  // subscribers that have every frame
std::uint32_t g_frames = 0;

[[noreturn]] void fail(const std::string& what) {
  std::fprintf(stderr, "fanout_bench: %s\n", what.c_str());
  std::exit(1);
}

mosquitto* tls_client(const std::string& id, const Options& o, const std::string& cert,
                      const std::string& key, void* userdata) {
  mosquitto* m = mosquitto_new(id.c_str(), true, userdata);
  if (m == nullptr) fail("mosquitto_new " + id);
  mosquitto_int_option(m, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V311);
  mosquitto_int_option(m, MOSQ_OPT_TCP_NODELAY, 1);
  mosquitto_max_inflight_messages_set(m, 1000);  // as the controller
  if (mosquitto_tls_set(m, o.ca.c_str(), nullptr, cert.c_str(), key.c_str(), nullptr) != MOSQ_ERR_SUCCESS)
    fail("TLS files of " + id);
  int rc = MOSQ_ERR_UNKNOWN;
  for (int attempt = 0; attempt < 5 && rc != MOSQ_ERR_SUCCESS; ++attempt)
    rc = mosquitto_connect(m, "127.0.0.1", o.port, 60);
  if (rc != MOSQ_ERR_SUCCESS) fail(id + " cannot connect: " + mosquitto_strerror(rc));
  return m;
}

void on_message(mosquitto*, void* self, const mosquitto_message*) {
  auto* s = static_cast<Subscriber*>(self);
  if (++s->received == g_frames) ++g_complete;
}

void on_subscribe(mosquitto*, void*, int, int count, const int* granted) {
  if (count < 1 || granted[0] < 0 || granted[0] > 2) ++g_refused;
  ++g_subscribed;
}

// One epoll loop over `subs` until `stop`.
void drive(std::vector<Subscriber*> subs, const std::atomic<bool>& stop) {
  const int ep = ::epoll_create1(EPOLL_CLOEXEC);
  for (Subscriber* s : subs) {
    epoll_event ev{};
    ev.events = EPOLLIN | (mosquitto_want_write(s->m) ? EPOLLOUT : 0u);
    ev.data.ptr = s;
    ::epoll_ctl(ep, EPOLL_CTL_ADD, mosquitto_socket(s->m), &ev);
  }
  std::vector<epoll_event> events(256);
  auto next_misc = Clock::now();
  while (!stop.load()) {
    const int n = ::epoll_wait(ep, events.data(), static_cast<int>(events.size()), 50);
    for (int i = 0; i < n; ++i) {
      auto* s = static_cast<Subscriber*>(events[i].data.ptr);
      if (events[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) mosquitto_loop_read(s->m, 64);
      if (mosquitto_want_write(s->m)) mosquitto_loop_write(s->m, 64);
      epoll_event ev{};
      ev.events = EPOLLIN | (mosquitto_want_write(s->m) ? EPOLLOUT : 0u);
      ev.data.ptr = s;
      ::epoll_ctl(ep, EPOLL_CTL_MOD, mosquitto_socket(s->m), &ev);
    }
    if (Clock::now() >= next_misc) {  // keepalive, and output queued outside a read
      for (Subscriber* s : subs) {
        mosquitto_loop_misc(s->m);
        if (mosquitto_want_write(s->m)) mosquitto_loop_write(s->m, 64);
      }
      next_misc = Clock::now() + std::chrono::milliseconds(100);
    }
  }
  ::close(ep);
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--port") o.port = std::atoi(v.c_str());
    else if (k == "--ca") o.ca = v;
    else if (k == "--pub-cert") o.pub_cert = v;
    else if (k == "--pub-key") o.pub_key = v;
    else if (k == "--pki") o.pki = v;
    else if (k == "--ids-file") o.ids_file = v;
    else if (k == "--topic") o.topic = v;
    else if (k == "--size-bytes") o.size = std::strtoull(v.c_str(), nullptr, 10);
    else if (k == "--chunk") o.chunk = std::strtoull(v.c_str(), nullptr, 10);
    else if (k == "--threads") o.threads = static_cast<unsigned>(std::atoi(v.c_str()));
    else if (k == "--sub-qos") o.sub_qos = std::atoi(v.c_str());
    else fail("unknown option '" + k + "' (see the header of bench/fanout_bench.cpp)");
  }
  if (o.port <= 0 || o.ca.empty() || o.pub_cert.empty() || o.pub_key.empty() || o.pki.empty() ||
      o.ids_file.empty() || o.topic.empty() || o.chunk == 0 || o.size == 0 || o.threads == 0)
    fail("missing option: --port, --ca, --pub-cert, --pub-key, --pki, --ids-file and --topic are required");
  if (o.sub_qos < 0 || o.sub_qos > 1) fail("--sub-qos must be 0 or 1");
  std::vector<std::string> ids;
  {
    std::ifstream in(o.ids_file);
    if (!in) fail("cannot read --ids-file " + o.ids_file);
    for (std::string line; std::getline(in, line);)
      if (!line.empty()) ids.push_back(line);
  }
  if (ids.empty()) fail("--ids-file " + o.ids_file + " names no device");
  rlimit lim{};
  if (::getrlimit(RLIMIT_NOFILE, &lim) == 0) {
    lim.rlim_cur = lim.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &lim);
  }
  mosquitto_lib_init();
  g_frames = static_cast<std::uint32_t>((o.size + o.chunk - 1) / o.chunk);

  // The publisher first: its network thread uses select(), so its descriptor must be low.
  mosquitto* pub = tls_client("ota-controller", o, o.pub_cert, o.pub_key, nullptr);
  mosquitto_loop_start(pub);

  std::vector<Subscriber> subs(ids.size());
  for (std::size_t i = 0; i < ids.size(); ++i) {
    const std::string base = o.pki + "/devices/" + ids[i];
    subs[i].m = tls_client(ids[i], o, base + ".crt", base + ".key", &subs[i]);
    mosquitto_message_callback_set(subs[i].m, on_message);
    mosquitto_subscribe_callback_set(subs[i].m, on_subscribe);
    mosquitto_subscribe(subs[i].m, nullptr, o.topic.c_str(), o.sub_qos);
  }
  std::atomic<bool> stop{false};
  std::vector<std::thread> workers;
  for (unsigned t = 0; t < o.threads; ++t) {
    std::vector<Subscriber*> share;
    for (std::size_t i = t; i < subs.size(); i += o.threads) share.push_back(&subs[i]);
    workers.emplace_back(drive, std::move(share), std::cref(stop));
  }
  const auto sub_deadline = Clock::now() + std::chrono::seconds(60);
  while (g_subscribed.load() < subs.size()) {
    if (Clock::now() > sub_deadline) fail("not every subscriber got its SUBACK within 60 s");
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  // A broker that refuses a subscription still acknowledges it (granted 0x80) and its client
  // would wait for frames that never come. (Mosquitto's ACL file accepts it and delivers
  // nothing: the frame deadline below reports that, with how many frames the poorest got.)
  if (g_refused.load() > 0)
    fail(std::to_string(g_refused.load()) + " of " + std::to_string(subs.size()) +
         " subscriptions to " + o.topic + " were refused by the broker");

  std::vector<unsigned char> frame(28 + o.chunk);
  std::mt19937 rng(1);
  for (auto& b : frame) b = static_cast<unsigned char>(rng());
  const auto start = Clock::now();
  for (std::uint32_t i = 0; i < g_frames; ++i) {
    const std::size_t len = 28 + std::min(o.chunk, o.size - i * o.chunk);
    if (mosquitto_publish(pub, nullptr, o.topic.c_str(), static_cast<int>(len), frame.data(), 1, false) !=
        MOSQ_ERR_SUCCESS)
      fail("publish failed");
  }
  const auto deadline = start + std::chrono::seconds(600);
  while (g_complete.load() < subs.size()) {
    if (Clock::now() > deadline) {
      stop = true;
      for (auto& w : workers) w.join();
      std::uint32_t fewest = g_frames;
      for (const auto& s : subs) fewest = std::min(fewest, s.received);
      fail(std::to_string(subs.size() - g_complete.load()) + " of " + std::to_string(subs.size()) +
           " subscribers lacked frames after 600 s (the fewest: " + std::to_string(fewest) + " of " +
           std::to_string(g_frames) + ")");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));  // polls the counter: a measurement
  }
  const double secs = std::chrono::duration<double>(Clock::now() - start).count();
  stop = true;
  for (auto& w : workers) w.join();
  std::printf("raw_fanout subscribers=%zu image_bytes=%zu chunk=%zu seconds=%.3f aggregate_MiBps=%.1f\n",
              subs.size(), o.size, o.chunk, secs,
              static_cast<double>(subs.size()) * static_cast<double>(o.size) / (1024.0 * 1024.0) / secs);
  for (auto& s : subs) {
    mosquitto_disconnect(s.m);
    mosquitto_destroy(s.m);
  }
  mosquitto_disconnect(pub);
  mosquitto_loop_stop(pub, false);
  mosquitto_destroy(pub);
  mosquitto_lib_cleanup();
  return 0;
}
