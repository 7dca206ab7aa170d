// The broker configuration in broker-config/ against a real mosquitto: TLS client-certificate
// authentication, the ACL (device isolation, group offers), payload limit, latency, and the
// broker lifecycle (stop by pid, restart with persistence, crash).
//
// Non-delivery is proven with a marker: after the message that must NOT arrive, the same
// publisher sends an allowed marker to the same subscriber; the broker forwards one
// publisher's messages in order, so once the marker is in, the forbidden message would have
// been too. (A PUBACK proves nothing: MQTT 3.1.1 acks ACL-denied and oversize publishes.)
#include <gtest/gtest.h>
#include <mosquitto.h>
#include <signal.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "test_env.hpp"

namespace ota::test {
namespace {

using namespace std::chrono_literals;

constexpr auto kWait = 5000ms;

// dev-1 in group g-a, dev-2 in group g-b, dev-3 in no group.
const Pki& pki() {
  return shared_pki({{"dev-1", {"g-a"}}, {"dev-2", {"g-b"}}, {"dev-3", {}}});
}

std::string dev_topic(const std::string& id, const std::string& suffix) {
  return pki().prefix + "/dev/" + id + "/" + suffix;
}
std::string grp_offer(const std::string& group) { return pki().prefix + "/grp/" + group + "/offer"; }
// A group's broadcast image topic (PROTOCOL.md 17).
std::string grp_image(const std::string& group, const std::string& image = "3f2a9c1b7d4e8f60") {
  return pki().prefix + "/grp/" + group + "/img/" + image + "/chunk";
}

bool any_on_topic(const std::vector<Message>& msgs, const std::string& topic) {
  return std::any_of(msgs.begin(), msgs.end(), [&](const Message& m) { return m.topic == topic; });
}

std::unique_ptr<MqttTestClient> connected_client(ClientOptions o) {
  auto c = std::make_unique<MqttTestClient>(std::move(o));
  ConnectResult r = c->connect(kWait);
  EXPECT_TRUE(r.ok()) << r.describe();
  return c;
}

class BrokerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    try {
      broker_ = new Broker(pki());
    } catch (const std::exception& e) {
      std::cerr << e.what() << "\n";
      broker_ = nullptr;
    }
  }
  static void TearDownTestSuite() {
    delete broker_;
    broker_ = nullptr;
  }
  void SetUp() override { ASSERT_NE(broker_, nullptr) << "broker did not start (see above)"; }
  void TearDown() override {
    if (HasFailure() && broker_ != nullptr) {
      std::cerr << "--- broker log tail ---\n" << broker_->log_tail(30) << "\n";
    }
  }
  static int port() { return broker_->port(); }
  static std::unique_ptr<MqttTestClient> controller() {
    return connected_client(ClientOptions::controller(pki(), port()));
  }
  static std::unique_ptr<MqttTestClient> device(const std::string& id) {
    return connected_client(ClientOptions::device(pki(), id, port()));
  }
  static Broker* broker_;
};
Broker* BrokerTest::broker_ = nullptr;

// ------------------------------------------------------------------------------------------
// Authentication

TEST_F(BrokerTest, ControllerAndDeviceConnectWithTheirCertificates) {
  MqttTestClient ctl(ClientOptions::controller(pki(), port()));
  ConnectResult r = ctl.connect(kWait);
  EXPECT_TRUE(r.ok()) << r.describe();
  MqttTestClient dev(ClientOptions::device(pki(), "dev-1", port()));
  r = dev.connect(kWait);
  EXPECT_TRUE(r.ok()) << r.describe();
  EXPECT_TRUE(ctl.connected());
  EXPECT_TRUE(dev.connected());
}

TEST_F(BrokerTest, ClientWithoutCertificateIsRefused) {
  ClientOptions o = ClientOptions::controller(pki(), port());
  o.cert_file.clear();
  o.key_file.clear();
  MqttTestClient c(o);
  ConnectResult r = c.connect(kWait);
  EXPECT_FALSE(r.ok()) << r.describe();
  EXPECT_NE(r.connack, 0) << r.describe();
  EXPECT_FALSE(c.connected());
}

TEST_F(BrokerTest, CertificateFromAnotherCaIsRefused) {
  // Same CN ("ota-controller") and a valid chain, but issued by a different CA.
  TempDir other_dir("pki-other");
  Pki other = make_pki(other_dir.path(), {});
  ClientOptions o = ClientOptions::controller(pki(), port());  // trusts OUR CA for the server
  o.cert_file = other.controller_cert();
  o.key_file = other.controller_key();
  MqttTestClient c(o);
  ConnectResult r = c.connect(kWait);
  EXPECT_FALSE(r.ok()) << r.describe();
  EXPECT_NE(r.connack, 0) << r.describe();
}

TEST_F(BrokerTest, PlainTcpConnectionFails) {
  ClientOptions o;
  o.port = port();
  o.tls = false;
  MqttTestClient c(o);
  ConnectResult r = c.connect(kWait);
  EXPECT_FALSE(r.ok()) << r.describe();
  EXPECT_NE(r.connack, 0) << r.describe();
}

TEST_F(BrokerTest, ServerCertificateFromAnotherCaIsRejectedByClient) {
  // The broker presents the server certificate of OUR CA; a client trusting only another CA
  // must not complete the handshake (proves the client really verifies the broker).
  TempDir other_dir("pki-other2");
  Pki other = make_pki(other_dir.path(), {});
  ClientOptions o = ClientOptions::controller(pki(), port());
  o.ca_file = other.ca_cert();
  MqttTestClient c(o);
  ConnectResult r = c.connect(kWait);
  EXPECT_FALSE(r.ok()) << r.describe();
}

// ------------------------------------------------------------------------------------------
// ACL: device -> controller

TEST_F(BrokerTest, DeviceEventReachesController) {
  auto ctl = controller();
  ASSERT_EQ(ctl->subscribe(pki().prefix + "/#", 1), 1);
  auto dev = device("dev-1");
  ASSERT_EQ(dev->publish(dev_topic("dev-1", "up/event"), "{\"t\":\"progress\"}"),
            MOSQ_ERR_SUCCESS);
  auto m = ctl->wait_for_topic(dev_topic("dev-1", "up/event"), kWait);
  ASSERT_TRUE(m.has_value());
  EXPECT_EQ(m->payload, "{\"t\":\"progress\"}");
}

TEST_F(BrokerTest, DeviceCannotPublishOutsideItsUpTree) {
  auto ctl = controller();
  ASSERT_EQ(ctl->subscribe(pki().prefix + "/#", 1), 1);
  ASSERT_EQ(ctl->subscribe("#", 1), 1);  // also catches anything outside the prefix
  auto dev = device("dev-1");

  const std::vector<std::string> forbidden = {
      dev_topic("dev-2", "up/event"),     // impersonate another device
      dev_topic("dev-1", "down/offer"),   // forge an offer to itself
      dev_topic("dev-2", "down/chunk"),   // inject chunks into another device
      grp_offer("g-a"),                   // forge a group offer
      "elsewhere/topic",                  // outside the prefix
  };
  for (const auto& t : forbidden) {
    // The broker acknowledges (MQTT 3.1.1 cannot signal the deny) but must not forward.
    EXPECT_EQ(dev->publish(t, "spoof"), MOSQ_ERR_SUCCESS) << t;
  }
  const std::string marker_topic = dev_topic("dev-1", "up/event");
  ASSERT_EQ(dev->publish(marker_topic, "marker"), MOSQ_ERR_SUCCESS);
  ASSERT_TRUE(ctl->wait_for_message(
      [&](const Message& m) { return m.topic == marker_topic && m.payload == "marker"; }, kWait));
  for (const auto& m : ctl->messages()) {
    EXPECT_NE(m.payload, "spoof") << "delivered despite ACL: " << m.topic;
  }
}

// ------------------------------------------------------------------------------------------
// ACL: controller -> device

TEST_F(BrokerTest, DeviceCannotReadAnotherDevicesChunks) {
  auto ctl = controller();
  auto dev1 = device("dev-1");
  auto dev2 = device("dev-2");
  const std::string chunk1 = dev_topic("dev-1", "down/chunk");
  const std::string chunk2 = dev_topic("dev-2", "down/chunk");
  ASSERT_EQ(dev1->subscribe(chunk1, 1), 1);
  // Whether mosquitto refuses these SUBSCRIBEs or grants them and filters on delivery is
  // its business; what matters is that nothing of dev-1's arrives.
  (void)dev2->subscribe(chunk1, 1);
  (void)dev2->subscribe(pki().prefix + "/dev/+/down/#", 1);
  (void)dev2->subscribe("#", 1);
  ASSERT_EQ(dev2->subscribe(chunk2, 1), 1);

  const std::string secret(1000, 'S');
  ASSERT_EQ(ctl->publish(chunk1, secret), MOSQ_ERR_SUCCESS);
  ASSERT_EQ(ctl->publish(dev_topic("dev-1", "down/offer"), "offer-for-dev-1"), MOSQ_ERR_SUCCESS);
  ASSERT_EQ(ctl->publish(chunk2, "marker"), MOSQ_ERR_SUCCESS);

  auto got = dev1->wait_for_topic(chunk1, kWait);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->payload, secret);
  ASSERT_TRUE(dev2->wait_for_message(
      [&](const Message& m) { return m.topic == chunk2 && m.payload == "marker"; }, kWait));
  for (const auto& m : dev2->messages()) {
    EXPECT_EQ(m.topic, chunk2) << "dev-2 received " << m.topic;
  }
}

TEST_F(BrokerTest, DeviceReadsOnlyItsGroupsOffers) {
  auto ctl = controller();
  auto dev1 = device("dev-1");  // member of g-a
  auto dev3 = device("dev-3");  // member of nothing
  for (auto* d : {dev1.get(), dev3.get()}) {
    (void)d->subscribe(grp_offer("g-a"), 1);
    (void)d->subscribe(grp_offer("g-b"), 1);
  }
  const std::string marker3 = dev_topic("dev-3", "down/offer");
  ASSERT_EQ(dev3->subscribe(marker3, 1), 1);

  ASSERT_EQ(ctl->publish(grp_offer("g-b"), "offer-g-b"), MOSQ_ERR_SUCCESS);
  ASSERT_EQ(ctl->publish(grp_offer("g-a"), "offer-g-a"), MOSQ_ERR_SUCCESS);
  ASSERT_EQ(ctl->publish(marker3, "marker"), MOSQ_ERR_SUCCESS);

  // dev-1 gets its group's offer; g-b's was published before it and never arrives.
  ASSERT_TRUE(dev1->wait_for_topic(grp_offer("g-a"), kWait));
  EXPECT_FALSE(any_on_topic(dev1->messages(), grp_offer("g-b")));
  // dev-3 gets neither.
  ASSERT_TRUE(dev3->wait_for_topic(marker3, kWait));
  EXPECT_FALSE(any_on_topic(dev3->messages(), grp_offer("g-a")));
  EXPECT_FALSE(any_on_topic(dev3->messages(), grp_offer("g-b")));
}

// Broadcast chunk frames (PROTOCOL.md 17): a device reads the image topics of its own groups
// (pki.sh writes the line with the offer's) and of no other group, whatever it subscribes to.
TEST_F(BrokerTest, DeviceReadsOnlyItsGroupsImageTopics) {
  auto ctl = controller();
  auto dev1 = device("dev-1");  // member of g-a
  auto dev2 = device("dev-2");  // member of g-b
  auto dev3 = device("dev-3");  // member of nothing
  for (auto* d : {dev1.get(), dev2.get(), dev3.get()}) {
    (void)d->subscribe(grp_image("g-a"), 1);
    (void)d->subscribe(pki().prefix + "/grp/+/img/+/chunk", 1);
    (void)d->subscribe(pki().prefix + "/grp/g-a/#", 1);
  }
  ASSERT_EQ(dev2->subscribe(grp_image("g-b"), 1), 1);
  const std::string marker1 = dev_topic("dev-1", "down/chunk");
  const std::string marker3 = dev_topic("dev-3", "down/chunk");
  ASSERT_EQ(dev1->subscribe(marker1, 1), 1);
  ASSERT_EQ(dev3->subscribe(marker3, 1), 1);

  const std::string frame(4096 + 28, 'F');
  ASSERT_EQ(ctl->publish(grp_image("g-a"), frame), MOSQ_ERR_SUCCESS);
  ASSERT_EQ(ctl->publish(grp_image("g-b"), "frame-g-b"), MOSQ_ERR_SUCCESS);
  ASSERT_EQ(ctl->publish(marker1, "marker"), MOSQ_ERR_SUCCESS);
  ASSERT_EQ(ctl->publish(marker3, "marker"), MOSQ_ERR_SUCCESS);

  // dev-1 reads its group's image topic, and g-b's (before its marker) never arrives.
  auto got = dev1->wait_for_topic(grp_image("g-a"), kWait);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->payload, frame);
  ASSERT_TRUE(dev1->wait_for_topic(marker1, kWait));
  EXPECT_FALSE(any_on_topic(dev1->messages(), grp_image("g-b")));
  // dev-2 got its own group's marker, published after g-a's frame: g-a's never arrives.
  ASSERT_TRUE(dev2->wait_for_topic(grp_image("g-b"), kWait));
  EXPECT_FALSE(any_on_topic(dev2->messages(), grp_image("g-a")));
  // dev-3, in no group, reads no image topic.
  ASSERT_TRUE(dev3->wait_for_topic(marker3, kWait));
  EXPECT_FALSE(any_on_topic(dev3->messages(), grp_image("g-a")));
  EXPECT_FALSE(any_on_topic(dev3->messages(), grp_image("g-b")));
}

TEST_F(BrokerTest, DeviceAddedLaterWithGroupReadsOfferAfterReload) {
  pki().add_device("dev-late", {"g-late"});
  auto ctl = controller();
  auto dev = device("dev-late");
  (void)dev->subscribe(grp_offer("g-late"), 1);
  ASSERT_TRUE(broker_->reload());  // SIGHUP: mosquitto re-reads the ACL file
  // Re-publish until one arrives (each attempt is bounded).
  EXPECT_TRUE(wait_until(
      [&] {
        if (ctl->publish(grp_offer("g-late"), "late-offer") != MOSQ_ERR_SUCCESS) return false;
        return dev->wait_for_topic(grp_offer("g-late"), 50ms).has_value();
      },
      kWait, 1ms));
  // ... and still nothing else.
  const std::string marker = dev_topic("dev-late", "down/offer");
  ASSERT_EQ(dev->subscribe(marker, 1), 1);
  (void)dev->subscribe(grp_offer("g-a"), 1);
  ASSERT_EQ(ctl->publish(grp_offer("g-a"), "offer-g-a"), MOSQ_ERR_SUCCESS);
  ASSERT_EQ(ctl->publish(marker, "marker"), MOSQ_ERR_SUCCESS);
  ASSERT_TRUE(dev->wait_for_topic(marker, kWait));
  EXPECT_FALSE(any_on_topic(dev->messages(), grp_offer("g-a")));
}

// ------------------------------------------------------------------------------------------
// Limits and latency

TEST_F(BrokerTest, MessageSizeLimitIsOneMiB) {
  auto ctl = controller();
  auto dev = device("dev-1");
  const std::string topic = dev_topic("dev-1", "down/chunk");
  ASSERT_EQ(dev->subscribe(topic, 1), 1);

  const std::string max_chunk(64 * 1024 + 28, 'c');  // largest chunk frame we send
  const std::string at_limit(1048576, 'L');
  const std::string over_limit(1048577, 'X');
  ASSERT_EQ(ctl->publish(topic, max_chunk), MOSQ_ERR_SUCCESS);
  ASSERT_EQ(ctl->publish(topic, at_limit), MOSQ_ERR_SUCCESS);
  ASSERT_EQ(ctl->publish(topic, over_limit), MOSQ_ERR_SUCCESS);  // acked, but dropped
  ASSERT_EQ(ctl->publish(topic, "marker"), MOSQ_ERR_SUCCESS);

  ASSERT_TRUE(dev->wait_for_message([](const Message& m) { return m.payload == "marker"; },
                                    kWait));
  std::vector<std::size_t> sizes;
  for (const auto& m : dev->messages()) sizes.push_back(m.payload.size());
  EXPECT_EQ(sizes, (std::vector<std::size_t>{max_chunk.size(), at_limit.size(), 6}));
}

TEST_F(BrokerTest, RequestResponseRoundTripIsNotDelayedByNagle) {
  // Chunk request (device -> controller) then chunk (controller -> device), as the download
  // loop does. Without set_tcp_nodelay each round trip stalls ~40 ms on loopback.
  auto ctl = controller();
  auto dev = device("dev-1");
  const std::string req = dev_topic("dev-1", "up/req");
  const std::string chunk = dev_topic("dev-1", "down/chunk");
  ASSERT_EQ(ctl->subscribe(req, 1), 1);
  ASSERT_EQ(dev->subscribe(chunk, 1), 1);
  constexpr int kRounds = 40;
  const std::string payload(4096, 'p');
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < kRounds; ++i) {
    const std::string n = std::to_string(i);
    ASSERT_EQ(dev->publish(req, n), MOSQ_ERR_SUCCESS);
    ASSERT_TRUE(ctl->wait_for_message([&](const Message& m) { return m.payload == n; }, kWait));
    ASSERT_EQ(ctl->publish(chunk, n + payload), MOSQ_ERR_SUCCESS);
    ASSERT_TRUE(
        dev->wait_for_message([&](const Message& m) { return m.payload == n + payload; }, kWait));
  }
  const auto per_round = std::chrono::duration_cast<std::chrono::microseconds>(
                             std::chrono::steady_clock::now() - t0) /
                         kRounds;
  std::cout << "round trip: " << per_round.count() << " us\n";
  EXPECT_LT(per_round, 30ms);
}

// ------------------------------------------------------------------------------------------
// Lifecycle (own broker per test)

TEST(BrokerLifecycle, StopByPidAndRestartOnSamePortKeepsQueuedMessages) {
  Broker broker(pki());
  const int port = broker.port();
  const pid_t first_pid = broker.pid();
  ASSERT_GT(first_pid, 0);

  const std::string offer = dev_topic("dev-1", "down/offer");
  ClientOptions dev_opts = ClientOptions::device(pki(), "dev-1", port);
  dev_opts.clean_session = false;  // the session is "dev-1": the broker uses the certificate CN
  {
    MqttTestClient dev(dev_opts);
    ASSERT_TRUE(dev.connect(kWait).ok());
    ASSERT_EQ(dev.subscribe(offer, 1), 1);
    dev.disconnect();
  }
  {
    MqttTestClient ctl(ClientOptions::controller(pki(), port));
    ASSERT_TRUE(ctl.connect(kWait).ok());
    ASSERT_EQ(ctl.publish(offer, "queued-offer"), MOSQ_ERR_SUCCESS);
  }

  broker.stop();
  EXPECT_EQ(broker.pid(), -1);
  EXPECT_EQ(::kill(first_pid, 0), -1) << "process still exists";
  EXPECT_EQ(errno, ESRCH);
  {
    MqttTestClient probe(ClientOptions::controller(pki(), port));
    EXPECT_FALSE(probe.connect(1000ms).ok()) << "port still served after stop()";
  }

  broker.start();
  EXPECT_EQ(broker.port(), port);
  EXPECT_NE(broker.pid(), first_pid);
  MqttTestClient dev(dev_opts);
  ASSERT_TRUE(dev.connect(kWait).ok()) << broker.log_tail();
  auto m = dev.wait_for_topic(offer, kWait);
  ASSERT_TRUE(m.has_value()) << "queued QoS1 message lost across restart\n" << broker.log_tail();
  EXPECT_EQ(m->payload, "queued-offer");
}

TEST(BrokerLifecycle, Kill9ThenRestart) {
  Broker broker(pki());
  const int port = broker.port();
  MqttTestClient ctl(ClientOptions::controller(pki(), port));
  ASSERT_TRUE(ctl.connect(kWait).ok());
  broker.kill9();
  EXPECT_FALSE(broker.running());
  EXPECT_TRUE(wait_until([&] { return !ctl.connected(); }, kWait));
  // Stop its automatic reconnects: `again` has the same certificate, hence the same client
  // id, and the two would keep taking the connection from each other.
  ctl.disconnect();
  broker.restart();
  EXPECT_TRUE(broker.running());
  MqttTestClient again(ClientOptions::controller(pki(), port));
  EXPECT_TRUE(again.connect(kWait).ok());
}

TEST(BrokerLifecycle, BadPkiDirectoryFailsWithLogInError) {
  TempDir empty("pki-empty");
  Pki bogus;
  bogus.dir = empty.path();
  BrokerOptions o;
  o.start_deadline = 3000ms;
  try {
    Broker b(bogus, o);
    FAIL() << "broker started without a PKI";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("missing"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace ota::test
