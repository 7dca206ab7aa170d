// Controller logic without a broker: a recording Publisher stands in for MQTT.
#include <gtest/gtest.h>

#include <fstream>
#include <regex>

#include "ota/proto/frame.hpp"
#include "ota/proto/messages.hpp"
#include "ota/service/controller.hpp"
#include "service_controller_fixture.hpp"
#include "service_test_util.hpp"

using namespace ota::service;
using ota::service::testing::make_ec_key_pem;
using ota::service::testing::TempDir;
using ota::service::testing::ControllerTest;
using ota::service::testing::Recorder;
using ota::service::testing::bytes_of;
namespace proto = ota::proto;

namespace {

TEST_F(ControllerTest, ImageAddValidation) {
  const std::string a = bytes_of(10000);
  ImageParams p;
  p.version = "1.0.0";
  p.hw = {"m1"};
  auto r = ctl->add_image(a, p);
  ASSERT_TRUE(r.ok()) << r.error();
  EXPECT_TRUE(r->created);
  EXPECT_EQ(r->image.id, r->image.sha256.substr(0, 16));
  EXPECT_EQ(r->image.size, 10000u);
  EXPECT_EQ(r->image.chunk_size, 4096u);
  std::ifstream f(dir.file("images/" + r->image.sha256 + ".bin"), std::ios::binary);
  std::string stored((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  EXPECT_EQ(stored, a);

  auto again = ctl->add_image(a, p);  // same bytes, same version: the existing image
  ASSERT_TRUE(again.ok());
  EXPECT_FALSE(again->created);
  EXPECT_EQ(again->image.id, r->image.id);

  auto other = ctl->add_image(bytes_of(10000, 2), p);  // same version, different bytes
  ASSERT_FALSE(other.ok());
  EXPECT_EQ(other.kind(), ErrKind::conflict);
  EXPECT_NE(other.error().find("1.0.0"), std::string::npos) << other.error();

  p.version = "1.0.1";  // same bytes under another version
  EXPECT_FALSE(ctl->add_image(a, p).ok());

  p.version = "one";
  auto bad = ctl->add_image(bytes_of(10, 3), p);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.kind(), ErrKind::invalid);
  EXPECT_EQ(bad.error().rfind("image add: ", 0), 0u) << bad.error();
  p.version = "2.0.0";
  p.hw = {};
  EXPECT_FALSE(ctl->add_image(bytes_of(10, 3), p).ok());
  p.hw = {"m1"};
  p.chunk_size = 128;
  EXPECT_FALSE(ctl->add_image(bytes_of(10, 3), p).ok());
  p.chunk_size = 4096;
  EXPECT_FALSE(ctl->add_image("", p).ok());
}

TEST_F(ControllerTest, DeployToUnknownOrIncompatibleDevice) {
  auto img = add(bytes_of(5000), "1.1.0");
  auto r = ctl->deploy(img.id, "device", "ghost");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.kind(), ErrKind::not_found);
  EXPECT_NE(r.error().find("unknown device ghost"), std::string::npos) << r.error();
  hello("d1", "1.0.0", {}, proto::SlotState::confirmed, "other-board");
  r = ctl->deploy(img.id, "device", "d1");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().find("other-board"), std::string::npos) << r.error();
  auto u = ctl->deploy("9.9.9", "device", "d1");
  ASSERT_FALSE(u.ok());
  EXPECT_NE(u.error().find("unknown image 9.9.9"), std::string::npos);
}

TEST_F(ControllerTest, DeviceDeploymentLifecycle) {
  auto img = add(bytes_of(10000), "1.1.0");
  hello("d1", "1.0.0");
  auto dep = ctl->deploy("1.1.0", "device", "d1");  // by version
  ASSERT_TRUE(dep.ok()) << dep.error();
  EXPECT_TRUE(std::regex_match(dep->id, std::regex("dep-[0-9a-f]{12}"))) << dep->id;
  const std::string id = dep->id;

  auto offers = pub.on("ota/v1/dev/d1/down/offer");
  ASSERT_EQ(offers.size(), 1u);
  EXPECT_EQ(offers[0].qos, 1);
  proto::Offer offer;
  ASSERT_FALSE(proto::decode_offer(offers[0].payload.data(), offers[0].payload.size(), offer));
  EXPECT_EQ(std::string(offer.deployment.c_str()), id);
  EXPECT_EQ(std::string(offer.manifest.image.c_str()), img.id);
  EXPECT_EQ(offer.manifest.size, 10000u);
  auto pub_key = public_key_from_pem(Signer::from_pem(key_pem)->public_pem());
  EXPECT_TRUE(verify_manifest(pub_key->get(), offer.manifest));

  // A second deployment to the same busy device is refused.
  auto img2 = add(bytes_of(3000, 9), "1.2.0");
  auto busy = ctl->deploy(img2.id, "device", "d1");
  ASSERT_FALSE(busy.ok());
  EXPECT_EQ(busy.kind(), ErrKind::conflict);

  event("d1", ev(proto::EventType::accept, 1, id));
  EXPECT_EQ(row_state(id, "d1"), "accepted");
  auto p = ev(proto::EventType::progress, 2, id);
  p.received = 4096;
  p.total = 10000;
  event("d1", p);
  EXPECT_EQ(row_state(id, "d1"), "downloading");
  auto js = ctl->deployment_json(id);
  EXPECT_EQ((*js)["devices"][0]["received"], 4096);
  EXPECT_EQ((*js)["devices"][0]["percent"], 40);

  // Replayed / duplicate seq is dropped: a stale "accept" does not move the row back.
  event("d1", ev(proto::EventType::accept, 2, id));
  event("d1", ev(proto::EventType::accept, 1, id));
  EXPECT_EQ(row_state(id, "d1"), "downloading");

  auto st = ev(proto::EventType::status, 3, id);
  st.state = proto::DeviceState::installing;
  event("d1", st);
  EXPECT_EQ(row_state(id, "d1"), "installing");

  auto res = ev(proto::EventType::result, 4, id);
  res.success = true;
  res.version.assign("1.1.0");
  event("d1", res);
  EXPECT_EQ(row_state(id, "d1"), "succeeded");
  auto d = ctl->deployment_json(id);
  EXPECT_EQ((*d)["state"], "completed");
  EXPECT_EQ((*d)["percent"], 100);
  auto dev = ctl->device_json("d1");
  EXPECT_EQ((*dev)["version"], "1.1.0");
  EXPECT_EQ((*dev)["previous_version"], "1.0.0");
  EXPECT_EQ((*dev)["last_seq"], 4);

  // The device is free again.
  EXPECT_TRUE(ctl->deploy(img2.id, "device", "d1").ok());
}

TEST_F(ControllerTest, FailureAndDeclineReasons) {
  add(bytes_of(1000), "1.1.0");
  hello("d1", "1.0.0");
  hello("d2", "1.0.0");
  hello("d3", "1.1.0");
  auto dep1 = ctl->deploy("1.1.0", "device", "d1");
  auto dep2 = ctl->deploy("1.1.0", "device", "d2");
  ASSERT_TRUE(dep1.ok() && dep2.ok());
  EXPECT_NE(dep1->id, dep2->id);
  auto dep3 = ctl->deploy("1.1.0", "device", "d3");
  ASSERT_TRUE(dep3.ok());
  // d3 already runs 1.1.0 and is confirmed: hello marks it succeeded.
  hello("d3", "1.1.0");
  EXPECT_EQ(row_state(dep3->id, "d3"), "succeeded");

  auto f = ev(proto::EventType::result, 1, dep1->id);
  f.success = false;
  f.reason = proto::ReasonCode::hash_mismatch;
  f.version.assign("1.0.0");
  event("d1", f);
  auto j = ctl->deployment_json(dep1->id);
  EXPECT_EQ((*j)["devices"][0]["state"], "failed");
  EXPECT_EQ((*j)["devices"][0]["reason"], "hash_mismatch");
  EXPECT_NE((*ctl->device_json("d1"))["last_error"].get<std::string>().find("hash_mismatch"),
            std::string::npos);

  auto dec = ev(proto::EventType::decline, 1, dep2->id);
  dec.reason = proto::ReasonCode::already_installed;
  event("d2", dec);
  auto j2 = ctl->deployment_json(dep2->id);
  EXPECT_EQ((*j2)["devices"][0]["state"], "succeeded");
  EXPECT_EQ((*j2)["devices"][0]["reason"], "already_installed");
}

TEST_F(ControllerTest, ChunkServingOffsetsAndAuthorization) {
  const std::string bytes = bytes_of(10000);
  auto img = add(bytes, "1.1.0", 4096);
  hello("d1", "1.0.0");
  hello("intruder", "1.0.0");
  auto dep = ctl->deploy(img.id, "device", "d1");
  ASSERT_TRUE(dep.ok());
  const std::string id = dep->id;
  event("d1", ev(proto::EventType::accept, 1, id));

  chunk_req("d1", id, img.id, 0, 256);
  auto frames = pub.on("ota/v1/dev/d1/down/chunk");
  ASSERT_EQ(frames.size(), 3u);
  std::uint32_t expect_off = 0;
  for (const auto& m : frames) {
    EXPECT_EQ(m.qos, 1);
    proto::ChunkFrame fr;
    ASSERT_FALSE(proto::decode_chunk_frame(reinterpret_cast<const std::uint8_t*>(m.payload.data()),
                                           m.payload.size(), 65536, fr));
    EXPECT_EQ(fr.offset, expect_off);
    EXPECT_EQ(fr.length, std::min<std::uint32_t>(4096, 10000 - expect_off));
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(fr.payload), fr.length),
              bytes.substr(fr.offset, fr.length));
    expect_off += fr.length;
  }
  EXPECT_EQ(expect_off, 10000u);
  EXPECT_EQ(row_state(id, "d1"), "downloading");
  EXPECT_EQ((*ctl->deployment_json(id))["devices"][0]["bytes_sent"], 10000);

  // Not part of the deployment / wrong image / unknown deployment: nothing is sent.
  chunk_req("intruder", id, img.id, 0, 1);
  chunk_req("d1", id, "0000000000000000", 0, 1);
  chunk_req("d1", "dep-77", img.id, 0, 1);
  EXPECT_TRUE(pub.on("ota/v1/dev/intruder/down/chunk").empty());
  EXPECT_EQ(pub.on("ota/v1/dev/d1/down/chunk").size(), 3u);
}

TEST_F(ControllerTest, DecodeErrorsAreCountedNotFatal) {
  const char junk[] = "{not json";
  ctl->on_message("ota/v1/dev/d1/up/event", junk, sizeof junk - 1);
  ctl->on_message("ota/v1/dev/d1/up/req", junk, sizeof junk - 1);
  ctl->on_message("ota/v1/dev/d1/up/presence", junk, sizeof junk - 1);
  EXPECT_EQ(ctl->decode_errors(), 3u);
  ctl->on_message("ota/v1/dev/d1/up/presence", "", 0);  // cleared retained message: ignored
  EXPECT_EQ(ctl->decode_errors(), 3u);
  hello("d1", "1.0.0");  // still serving
  EXPECT_TRUE(ctl->device_json("d1").ok());
}

TEST_F(ControllerTest, GroupDeploymentRetainedOfferLateMemberAndCompletion) {
  auto img = add(bytes_of(2000), "2.0.0");
  hello("g1", "1.0.0", {"lab"});
  hello("g2", "1.0.0", {"lab"});
  hello("x", "1.0.0", {"other"});
  auto dep = ctl->deploy(img.id, "group", "lab");
  ASSERT_TRUE(dep.ok()) << dep.error();
  auto offers = pub.on("ota/v1/grp/lab/offer");
  ASSERT_EQ(offers.size(), 1u);
  EXPECT_TRUE(offers[0].retain);
  auto j = ctl->deployment_json(dep->id);
  EXPECT_EQ((*j)["devices"].size(), 2u);

  // A member that was not known at deploy time joins and accepts: it gets a row.
  hello("g3", "1.0.0", {"lab"});
  event("g3", ev(proto::EventType::accept, 1, dep->id));
  EXPECT_EQ(row_state(dep->id, "g3"), "accepted");
  chunk_req("g3", dep->id, img.id, 0, 1);
  EXPECT_EQ(pub.on("ota/v1/dev/g3/down/chunk").size(), 1u);

  for (const char* d : {"g1", "g2", "g3"}) {
    auto r = ev(proto::EventType::result, 5, dep->id);
    r.success = true;
    r.version.assign("2.0.0");
    event(d, r);
  }
  j = ctl->deployment_json(dep->id);
  EXPECT_EQ((*j)["state"], "completed");
  offers = pub.on("ota/v1/grp/lab/offer");
  ASSERT_EQ(offers.size(), 2u);
  EXPECT_TRUE(offers[1].retain);
  EXPECT_TRUE(offers[1].payload.empty()) << "completion clears the retained offer";
}

TEST_F(ControllerTest, CancelNotifiesInFlightDevices) {
  add(bytes_of(2000), "2.0.0");
  hello("d1", "1.0.0");
  auto dep = ctl->deploy("2.0.0", "device", "d1");
  ASSERT_TRUE(dep.ok());
  auto c = ctl->cancel(dep->id);
  ASSERT_TRUE(c.ok()) << c.error();
  auto cancels = pub.on("ota/v1/dev/d1/down/cancel");
  ASSERT_EQ(cancels.size(), 1u);
  proto::Cancel msg;
  ASSERT_FALSE(proto::decode_cancel(cancels[0].payload.data(), cancels[0].payload.size(), msg));
  EXPECT_EQ(std::string(msg.deployment.c_str()), dep->id);
  EXPECT_EQ(row_state(dep->id, "d1"), "cancelled");
  EXPECT_EQ((*ctl->deployment_json(dep->id))["state"], "cancelled");
  auto again = ctl->cancel(dep->id);
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.kind(), ErrKind::conflict);
  EXPECT_EQ(ctl->cancel("dep-404").kind(), ErrKind::not_found);
}

TEST_F(ControllerTest, RestartResendsStoredOfferOnHelloAndKeepsSeq) {
  add(bytes_of(3000), "1.1.0");
  hello("d1", "1.0.0");
  auto dep = ctl->deploy("1.1.0", "device", "d1");
  ASSERT_TRUE(dep.ok());
  event("d1", ev(proto::EventType::accept, 7, dep->id));
  const std::string first_offer = pub.on("ota/v1/dev/d1/down/offer").at(0).payload;

  start();  // "restart" the controller on the same database and store
  pub.msgs.clear();
  hello("d1", "1.0.0");
  auto offers = pub.on("ota/v1/dev/d1/down/offer");
  ASSERT_EQ(offers.size(), 1u);
  EXPECT_EQ(offers[0].payload, first_offer) << "re-sent offers are byte-identical";
  // seq survives the restart: a replay of seq 7 (not a final event) is dropped.
  auto prog = ev(proto::EventType::progress, 7, dep->id);
  prog.received = 1;
  prog.total = 3000;
  event("d1", prog);
  EXPECT_EQ(row_state(dep->id, "d1"), "accepted");
  // Chunks are served after the restart.
  chunk_req("d1", dep->id, dep->image_id, 0, 1);
  EXPECT_EQ(pub.on("ota/v1/dev/d1/down/chunk").size(), 1u);
}

TEST_F(ControllerTest, RestartRepublishesGroupOffers) {
  add(bytes_of(3000), "1.1.0");
  hello("m1", "1.0.0", {"lab"});  // a group without a known device is refused
  ASSERT_TRUE(ctl->deploy("1.1.0", "group", "lab").ok());
  start();
  pub.msgs.clear();
  ctl->on_connected();
  auto offers = pub.on("ota/v1/grp/lab/offer");
  ASSERT_EQ(offers.size(), 1u);
  EXPECT_TRUE(offers[0].retain);
  EXPECT_FALSE(offers[0].payload.empty());
}

TEST_F(ControllerTest, RollbackSeenInHelloFailsTheRow) {
  add(bytes_of(3000), "1.1.0");
  hello("d1", "1.0.0");
  auto dep = ctl->deploy("1.1.0", "device", "d1");
  auto st = ev(proto::EventType::status, 1, dep->id);
  st.state = proto::DeviceState::rebooting;
  event("d1", st);
  hello("d1", "1.0.0", {}, proto::SlotState::rolled_back);
  auto j = ctl->deployment_json(dep->id);
  EXPECT_EQ((*j)["devices"][0]["state"], "failed");
  EXPECT_EQ((*j)["devices"][0]["reason"], "rolled_back");
  EXPECT_EQ((*j)["state"], "completed");
}

TEST_F(ControllerTest, ReflashResetsSeqAndRollbackReasonIsRefined) {
  add(bytes_of(3000), "1.1.0");
  hello("d1", "1.0.0");
  event("d1", ev(proto::EventType::accept, 40, "dep-x"));
  EXPECT_EQ((*ctl->device_json("d1"))["last_seq"], 40);
  // Unexplained version change (no deployment of ours): re-flashed, seq restarts.
  hello("d1", "0.9.0");
  EXPECT_EQ((*ctl->device_json("d1"))["last_seq"], -1);

  auto dep = ctl->deploy("1.1.0", "device", "d1");
  ASSERT_TRUE(dep.ok());
  event("d1", ev(proto::EventType::accept, 0, dep->id));
  EXPECT_EQ(row_state(dep->id, "d1"), "accepted");
  auto st = ev(proto::EventType::status, 1, dep->id);
  st.state = proto::DeviceState::confirming;
  event("d1", st);
  hello("d1", "0.9.0", {}, proto::SlotState::rolled_back);
  EXPECT_EQ((*ctl->device_json("d1"))["last_seq"], 1) << "a rollback is not a re-flash";
  auto r = ev(proto::EventType::result, 2, dep->id);
  r.reason = proto::ReasonCode::self_test_failed;
  r.version.assign("0.9.0");
  event("d1", r);
  auto j = ctl->deployment_json(dep->id);
  EXPECT_EQ((*j)["devices"][0]["state"], "failed");
  EXPECT_EQ((*j)["devices"][0]["reason"], "self_test_failed");

  ASSERT_TRUE(ctl->reset_seq("d1").ok());
  EXPECT_EQ((*ctl->device_json("d1"))["last_seq"], -1);
  EXPECT_EQ(ctl->reset_seq("ghost").kind(), ErrKind::not_found);
}

TEST_F(ControllerTest, QueriesAndFilters) {
  add(bytes_of(3000), "1.1.0");
  hello("a", "1.0.0", {"lab"});
  hello("b", "1.1.0", {"field"});
  const char offline[] = "{\"v\":1,\"type\":\"offline\"}";
  ctl->on_message("ota/v1/dev/b/up/presence", offline, sizeof offline - 1);
  DeviceFilter f;
  f.group = "lab";
  EXPECT_EQ(ctl->devices_json(f)->size(), 1u);
  f = {};
  f.online = true;
  auto on = ctl->devices_json(f);
  ASSERT_EQ(on->size(), 1u);
  EXPECT_EQ((*on)[0]["id"], "a");
  auto s = ctl->status_json();
  ASSERT_TRUE(s.ok());
  EXPECT_EQ((*s)["devices"]["total"], 2);
  EXPECT_EQ((*s)["devices"]["online"], 1);
  EXPECT_EQ((*s)["devices"]["by_version"]["1.1.0"], 1);
  EXPECT_EQ((*s)["images"], 1);
  EXPECT_EQ(ctl->device_json("nope").kind(), ErrKind::not_found);
  EXPECT_EQ(ctl->image_json("nope").kind(), ErrKind::not_found);
  EXPECT_TRUE(ctl->image_json("1.1.0").ok());
  EventFilter ef;
  ef.device = "a";
  EXPECT_GE(ctl->events_json(ef)->size(), 1u);
}


// ------------------------------------------------------------------ ACL group membership

TEST(AclGroups, ParsesUserSectionsAndGroupOfferLines) {
  const std::string text =
      "# comment\n"
      "pattern write ota/v1/dev/%u/up/#\n"
      "topic read ota/v1/grp/anon/offer\n"  // before any user: not a device's
      "user ota-controller\n"
      "topic readwrite ota/v1/#\n"
      "\n# device a\nuser a\n"
      "topic read ota/v1/grp/lab/offer\n"
      "topic read ota/v1/grp/field/offer\r\n"
      "topic write ota/v1/grp/writeonly/offer\n"
      "topic read other/v1/grp/wrongprefix/offer\n"
      "topic read ota/v1/grp/+/offer\n"
      "topic read ota/v1/grp/x/y/offer\n"
      "user b\n"
      "topic ota/v1/grp/lab/offer\n";
  AclGroups a = AclGroups::parse(text, "ota/v1");
  EXPECT_TRUE(a.is_member("a", "lab"));
  EXPECT_TRUE(a.is_member("a", "field"));
  EXPECT_FALSE(a.is_member("a", "writeonly"));
  EXPECT_FALSE(a.is_member("a", "wrongprefix"));
  EXPECT_FALSE(a.is_member("a", "+"));
  EXPECT_EQ(a.groups_of("a"), (std::vector<std::string>{"field", "lab"}));
  EXPECT_TRUE(a.is_member("b", "lab")) << "'topic T' is readwrite";
  EXPECT_FALSE(a.is_member("ota-controller", "lab"));
  EXPECT_FALSE(a.is_member("c", "lab"));
  EXPECT_TRUE(a.groups_of("nobody").empty());
}

TEST(BoundedKeySet, ForgetsTheOldestKeyWhenFull) {
  BoundedKeySet s(3);
  EXPECT_TRUE(s.insert("a"));
  EXPECT_FALSE(s.insert("a"));
  for (int i = 0; i < 1000; ++i) s.insert("k" + std::to_string(i));
  EXPECT_EQ(s.size(), 3u);
  EXPECT_FALSE(s.contains("a"));
  EXPECT_TRUE(s.contains("k999"));
}

class AclControllerTest : public ControllerTest {
 protected:
  void SetUp() override {
    key_pem = make_ec_key_pem();
    acl_file = dir.file("acl");
    write_acl("user g1\ntopic read ota/v1/grp/lab/offer\n"
              "user g2\ntopic read ota/v1/grp/lab/offer\n");
    start();
  }
  void write_acl(const std::string& text) {
    // Write a new file and rename it over the old one (new inode), as pki.sh does.
    std::ofstream(acl_file + ".tmp") << text;
    ASSERT_EQ(std::rename((acl_file + ".tmp").c_str(), acl_file.c_str()), 0);
  }
  long long ignored_count() { return (*ctl->status_json())["ignored_messages"].get<long long>(); }
};

TEST_F(AclControllerTest, MissingAclFileFailsStartup) {
  ctl.reset();
  acl_file = dir.file("no-such-acl");
  auto signer = Signer::from_pem(key_pem);
  ControllerConfig cfg;
  cfg.db_path = dir.file("ota.db");
  cfg.store_dir = dir.file("images");
  cfg.acl_file = acl_file;
  auto c = Controller::create(cfg, std::move(*signer), &pub);
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.error().find("no-such-acl"), std::string::npos) << c.error();
}

TEST_F(AclControllerTest, ClaimedGroupDoesNotBlockCompletionOrGrantAnything) {
  auto img = add(bytes_of(2000), "2.0.0");
  hello("g1", "1.0.0", {"lab"});
  hello("g2", "1.0.0", {});  // does not claim it, but the ACL grants it: a member
  hello("liar", "1.0.0", {"lab"});  // claims a group the broker never lets it read
  auto dep = ctl->deploy(img.id, "group", "lab");
  ASSERT_TRUE(dep.ok()) << dep.error();
  auto j = ctl->deployment_json(dep->id);
  ASSERT_EQ((*j)["devices"].size(), 2u) << j->dump();
  EXPECT_EQ(row_state(dep->id, "liar"), "none");
  // The claim is still stored and shown.
  EXPECT_EQ((*ctl->device_json("liar"))["groups"], nlohmann::json::array({"lab"}));

  // A non-member's accept (it guessed or learned the id) creates no row, its chunk
  // requests are refused; both are counted.
  const long long before = ignored_count();
  event("liar", ev(proto::EventType::accept, 1, dep->id));
  auto dec = ev(proto::EventType::decline, 2, dep->id);
  dec.reason = proto::ReasonCode::busy;
  event("liar", dec);
  chunk_req("liar", dep->id, img.id, 0, 1);
  EXPECT_EQ(row_state(dep->id, "liar"), "none");
  EXPECT_TRUE(pub.on("ota/v1/dev/liar/down/chunk").empty());
  EXPECT_EQ(ignored_count(), before + 3);

  // Both members finish: complete, although "liar" (claiming lab) never got a final row.
  for (const char* d : {"g1", "g2"}) {
    auto r = ev(proto::EventType::result, 5, dep->id);
    r.success = true;
    r.version.assign("2.0.0");
    event(d, r);
  }
  EXPECT_EQ((*ctl->deployment_json(dep->id))["state"], "completed");
}

TEST_F(AclControllerTest, AclChangesAreReReadOnTick) {
  auto img = add(bytes_of(2000), "2.0.0");
  hello("g1", "1.0.0");
  hello("late", "1.0.0");
  auto dep = ctl->deploy(img.id, "group", "lab");
  ASSERT_TRUE(dep.ok());
  chunk_req("late", dep->id, img.id, 0, 1);
  EXPECT_TRUE(pub.on("ota/v1/dev/late/down/chunk").empty());
  EXPECT_EQ((*ctl->deployment_json(dep->id))["pending_members"], 0);  // g2 never said hello

  write_acl("user g1\ntopic read ota/v1/grp/lab/offer\n"
            "user late\ntopic read ota/v1/grp/lab/offer\n");
  ctl->tick();
  EXPECT_EQ((*ctl->deployment_json(dep->id))["pending_members"], 1);  // now: late
  chunk_req("late", dep->id, img.id, 0, 1);
  EXPECT_EQ(pub.on("ota/v1/dev/late/down/chunk").size(), 1u);
  event("late", ev(proto::EventType::accept, 1, dep->id));
  EXPECT_EQ(row_state(dep->id, "late"), "accepted");
}

TEST_F(ControllerTest, WithoutAclAnAcceptStillJoinsAGroupDeployment) {
  auto img = add(bytes_of(2000), "2.0.0");
  hello("x", "1.0.0");
  hello("m", "1.0.0", {"lab"});  // a group without a known device is refused
  auto dep = ctl->deploy(img.id, "group", "lab");
  ASSERT_TRUE(dep.ok());
  event("x", ev(proto::EventType::accept, 1, dep->id));
  EXPECT_EQ(row_state(dep->id, "x"), "accepted");
}

// ------------------------------------------------------------- ignored-message flooding

TEST_F(ControllerTest, IgnoredMessagesAreCountedNotRecordedEachTime) {
  configure = [](ControllerConfig& c) { c.device_messages_burst = 1000; };  // 300 at once
  start();
  auto img = add(bytes_of(2000), "2.0.0");
  hello("d1", "1.0.0");
  hello("x", "1.0.0");
  auto dep = ctl->deploy(img.id, "device", "d1");
  ASSERT_TRUE(dep.ok());
  for (std::uint32_t i = 1; i <= 300; ++i) {
    event("x", ev(proto::EventType::accept, i, dep->id));
    chunk_req("x", dep->id, img.id, 0, 1);
  }
  EXPECT_EQ((*ctl->status_json())["ignored_messages"], 600);
  EventFilter f;
  f.device = "x";
  f.limit = 10000;
  int ignored_rows = 0;
  auto evs = ctl->events_json(f);
  ASSERT_TRUE(evs.ok());
  for (const auto& e : *evs)
    if (e["what"] == "ignored_event") ignored_rows++;
  EXPECT_EQ(ignored_rows, 1);
  // The seq still advances (persisted lazily): a replay of 300 stays dropped.
  EXPECT_EQ((*ctl->device_json("x"))["last_seq"], 300);
}

// ------------------------------------------------------------------ lost final outcomes

TEST_F(ControllerTest, HelloResendsTheOfferForAnyUnfinishedRow) {
  add(bytes_of(3000), "1.1.0");
  hello("d1", "1.0.0");
  auto dep = ctl->deploy("1.1.0", "device", "d1");
  ASSERT_TRUE(dep.ok());
  auto st = ev(proto::EventType::status, 1, dep->id);
  st.state = proto::DeviceState::installing;
  event("d1", st);
  ASSERT_EQ(row_state(dep->id, "d1"), "installing");
  pub.msgs.clear();
  // Still on the old version, confirmed: the outcome is unknown (the result may be lost).
  hello("d1", "1.0.0");
  EXPECT_EQ(pub.on("ota/v1/dev/d1/down/offer").size(), 1u);
  EXPECT_EQ(row_state(dep->id, "d1"), "installing");

  st = ev(proto::EventType::status, 2, dep->id);
  st.state = proto::DeviceState::confirming;
  event("d1", st);
  pub.msgs.clear();
  hello("d1", "1.1.0", {}, proto::SlotState::pending);  // trial boot, not proven yet
  EXPECT_EQ(pub.on("ota/v1/dev/d1/down/offer").size(), 1u);
  // Proven outcomes get no offer: confirmed on the target version.
  pub.msgs.clear();
  hello("d1", "1.1.0");
  EXPECT_TRUE(pub.on("ota/v1/dev/d1/down/offer").empty());
  EXPECT_EQ(row_state(dep->id, "d1"), "succeeded");
}

TEST_F(ControllerTest, ResentFinalEventWithOldSeqAppliesOnceToAnUnfinishedRow) {
  add(bytes_of(3000), "1.1.0");
  hello("d1", "1.0.0");
  auto dep = ctl->deploy("1.1.0", "device", "d1");
  ASSERT_TRUE(dep.ok());
  event("d1", ev(proto::EventType::accept, 5, dep->id));
  auto st = ev(proto::EventType::status, 9, dep->id);
  st.state = proto::DeviceState::installing;
  event("d1", st);
  // The result with seq 8 was lost (crash after PUBACK); seq 9 already advanced last_seq.
  // Non-final replays stay deduplicated.
  auto prog = ev(proto::EventType::progress, 8, dep->id);
  prog.received = 1;
  prog.total = 3000;
  event("d1", prog);
  EXPECT_EQ(row_state(dep->id, "d1"), "installing");
  auto r = ev(proto::EventType::result, 8, dep->id);
  r.success = false;
  r.reason = proto::ReasonCode::hash_mismatch;
  r.version.assign("1.0.0");
  event("d1", r);
  EXPECT_EQ(row_state(dep->id, "d1"), "failed");
  EXPECT_EQ((*ctl->deployment_json(dep->id))["state"], "completed");
  EXPECT_EQ((*ctl->device_json("d1"))["last_seq"], 9) << "a replay does not move seq back";

  // Never re-applied to a final row: a different outcome at an old seq changes nothing.
  auto dep2 = ctl->deploy("1.1.0", "device", "d1");
  ASSERT_TRUE(dep2.ok());
  auto ok = ev(proto::EventType::result, 10, dep2->id);
  ok.success = true;
  ok.version.assign("1.1.0");
  event("d1", ok);
  ASSERT_EQ(row_state(dep2->id, "d1"), "succeeded");
  auto dec = ev(proto::EventType::decline, 10, dep2->id);
  dec.reason = proto::ReasonCode::busy;
  event("d1", dec);
  EXPECT_EQ(row_state(dep2->id, "d1"), "succeeded");
  EXPECT_EQ(row_state(dep->id, "d1"), "failed");
}

// ------------------------------------------------------------ cancelled while offline

TEST_F(ControllerTest, RequestsForAFinishedDeploymentGetACancelRateLimited) {
  auto img = add(bytes_of(3000), "1.1.0");
  hello("d1", "1.0.0");
  auto dep = ctl->deploy("1.1.0", "device", "d1");
  ASSERT_TRUE(dep.ok());
  hello("d1", "1.0.0", {}, proto::SlotState::confirmed, "m1", dep->id);
  EXPECT_TRUE(pub.on("ota/v1/dev/d1/down/cancel").empty()) << "active: resume is fine";
  ASSERT_TRUE(ctl->cancel(dep->id).ok());
  ASSERT_EQ(pub.on("ota/v1/dev/d1/down/cancel").size(), 1u);  // the operator's cancel
  pub.msgs.clear();
  // The operator's cancel counts for the rate limit: in-flight requests get no second one.
  chunk_req("d1", dep->id, img.id, 0, 4);
  EXPECT_TRUE(pub.on("ota/v1/dev/d1/down/cancel").empty());

  // Another device, offline during the cancel of its deployment, comes back.
  hello("d2", "1.0.0");
  auto dep2 = ctl->deploy("1.1.0", "device", "d2");
  ASSERT_TRUE(dep2.ok());
  auto dec = ev(proto::EventType::decline, 1, dep2->id);
  dec.reason = proto::ReasonCode::busy;
  event("d2", dec);  // row final (completed) while a stale download is stored on the device
  pub.msgs.clear();
  hello("d2", "1.0.0", {}, proto::SlotState::confirmed, "m1", dep2->id);
  auto c = pub.on("ota/v1/dev/d2/down/cancel");
  ASSERT_EQ(c.size(), 1u);
  proto::Cancel msg;
  ASSERT_FALSE(proto::decode_cancel(c[0].payload.data(), c[0].payload.size(), msg));
  EXPECT_EQ(std::string(msg.deployment.c_str()), dep2->id);
  for (int i = 0; i < 50; ++i) chunk_req("d2", dep2->id, img.id, 0, 4);
  EXPECT_EQ(pub.on("ota/v1/dev/d2/down/cancel").size(), 1u) << "at most one per 5 s";
  EXPECT_TRUE(pub.on("ota/v1/dev/d2/down/chunk").empty());

  // A request for an unknown deployment id: cancelled too (d3 has no recent cancel).
  hello("d3", "1.0.0");
  chunk_req("d3", "dep-000000000000", img.id, 0, 1);
  EXPECT_EQ(pub.on("ota/v1/dev/d3/down/cancel").size(), 1u);
}

// ------------------------------------------------------------- broadcast (PROTOCOL.md 17)

// A device may listen only on image topics it can read (without an ACL file: its hello's
// groups). A request naming another group is served by unicast, counted, and logged once.
TEST_F(ControllerTest, BroadcastRequestForAGroupTheDeviceCannotReadIsServedByUnicast) {
  auto img = add(bytes_of(3 * 4096), "1.1.0");
  hello("d1", "1.0.0", {"g1"});
  auto dep = ctl->deploy(img.id, "device", "d1");
  ASSERT_TRUE(dep.ok()) << dep.error();
  chunk_req("d1", dep->id, img.id, 0, 2, "g2");
  EXPECT_EQ(pub.on("ota/v1/dev/d1/down/chunk").size(), 2u);
  EXPECT_EQ(pub.on("ota/v1/grp/g2/img/" + img.id + "/chunk").size(), 0u);
  EXPECT_EQ(ctl->broadcast_unreadable(), 1u);
  EXPECT_NE(ctl->metrics_text().find("ota_chunk_broadcast_unreadable_total 1\n"), std::string::npos);
  // Its own group is readable: not counted.
  chunk_req("d1", dep->id, img.id, 2, 1, "g1");
  EXPECT_EQ(pub.on("ota/v1/dev/d1/down/chunk").size(), 3u);
  EXPECT_EQ(ctl->broadcast_unreadable(), 1u);
}

// ------------------------------------------------------------- duplicate chunk requests

TEST_F(ControllerTest, IdenticalChunkRequestsWithin200msAreServedOnce) {
  auto img = add(bytes_of(40000), "1.1.0");
  hello("d1", "1.0.0");
  auto dep = ctl->deploy(img.id, "device", "d1");
  ASSERT_TRUE(dep.ok());
  chunk_req("d1", dep->id, img.id, 0, 4);
  chunk_req("d1", dep->id, img.id, 0, 4);
  chunk_req("d1", dep->id, img.id, 0, 4);
  EXPECT_EQ(pub.on("ota/v1/dev/d1/down/chunk").size(), 4u);
  EXPECT_EQ((*ctl->status_json())["duplicate_chunk_requests"], 2);
  chunk_req("d1", dep->id, img.id, 4, 4);  // a different request is served
  EXPECT_EQ(pub.on("ota/v1/dev/d1/down/chunk").size(), 8u);
  // No longer the last request, but its chunks were sent a moment ago: still on their way
  // (the resend guard, PROTOCOL.md 17), not sent twice.
  chunk_req("d1", dep->id, img.id, 0, 4);
  EXPECT_EQ(pub.on("ota/v1/dev/d1/down/chunk").size(), 8u);
  EXPECT_NE(ctl->metrics_text().find("ota_chunk_resends_avoided_total 4\n"), std::string::npos);
  // Connected again (a live hello): what was on its way went with the old link, so all of
  // it is served again.
  hello("d1", "1.0.0");
  chunk_req("d1", dep->id, img.id, 0, 8);
  EXPECT_EQ(pub.on("ota/v1/dev/d1/down/chunk").size(), 16u);
}

}  // namespace
