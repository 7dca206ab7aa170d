#include <gtest/gtest.h>

#include "ota/service/store.hpp"
#include "service_test_util.hpp"

using namespace ota::service;
using ota::service::testing::TempDir;

namespace {

ImageRec image(const std::string& id, const std::string& version) {
  ImageRec r;
  r.id = id;
  r.sha256 = id + std::string(48, '0');
  r.version = version;
  r.hw = {"m1", "m2"};
  r.size = 1000;
  r.chunk_size = 256;
  r.created_at = 1;
  return r;
}

class StoreTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(store.open(dir.file("ota.db")).ok()); }
  TempDir dir;
  Store store;
};

TEST_F(StoreTest, SchemaVersionRecordedAndReopenWorks) {
  EXPECT_EQ(store.schema_version(), kSchemaVersion);
  Store again;
  Status s = again.open(dir.file("ota.db"));
  ASSERT_TRUE(s.ok()) << s.error();
  EXPECT_EQ(again.schema_version(), kSchemaVersion);
}

TEST(StoreMigration, Version1DatabaseKeepsItsDeploymentsAfterUpgrade) {
  TempDir dir;
  {
    Store v1;
    ASSERT_TRUE(v1.open(dir.file("old.db"), 1).ok());
    EXPECT_EQ(v1.schema_version(), 1);
    ASSERT_TRUE(v1.insert_image(image("aaaaaaaaaaaaaaaa", "1.0.0")).ok());
    DeploymentRec d;
    d.id = "dep-1";
    d.image_id = "aaaaaaaaaaaaaaaa";
    d.target_kind = "group";
    d.target = "lab";
    d.state = DeploymentState::active;
    d.offer = "{}";
    d.created_at = 5;
    ASSERT_TRUE(v1.insert_deployment(d).ok());
  }
  {
    // Write the v1 row with plain SQL through a v1-only statement.
    Store raw;
    ASSERT_TRUE(raw.open(dir.file("old.db"), 1).ok());
    auto c = raw.count_by(
        "INSERT INTO deployment_devices(deployment_id, device_id, state, reason, received, total, "
        "bytes_sent, updated_at) VALUES ('dep-1', 'd1', 'downloading', '', 10, 1000, 20, 7) "
        "RETURNING 'n', 1");
    ASSERT_TRUE(c.ok()) << c.error();
  }
  Store v2;
  Status s = v2.open(dir.file("old.db"));
  ASSERT_TRUE(s.ok()) << s.error();
  EXPECT_EQ(v2.schema_version(), kSchemaVersion);
  auto dep = v2.deployment("dep-1");
  ASSERT_TRUE(dep.ok() && *dep);
  EXPECT_EQ((*dep)->target, "lab");
  auto rows = v2.rows("dep-1");
  ASSERT_TRUE(rows.ok());
  ASSERT_EQ(rows->size(), 1u);
  EXPECT_EQ((*rows)[0].state, RowState::downloading);
  EXPECT_EQ((*rows)[0].bytes_sent, 20u);
  EXPECT_EQ((*rows)[0].attempt, 1);
  // The new states and tables work.
  RowRec r = (*rows)[0];
  r.state = RowState::timed_out;
  EXPECT_TRUE(v2.upsert_row(r).ok());
  RolloutRec ro;
  ro.id = "ro-1";
  ro.image_id = "aaaaaaaaaaaaaaaa";
  ro.target_kind = "group";
  ro.target = "lab";
  ro.policy = "{}";
  ro.created_at = 1;
  EXPECT_TRUE(v2.insert_rollout(ro).ok());
  EXPECT_TRUE(v2.add_event("dep-1", "d1", "x", "y", "operator:me", "ro-1").ok());
  EventFilter f;
  f.rollout = "ro-1";
  auto evs = v2.events(f);
  ASSERT_TRUE(evs.ok());
  ASSERT_EQ(evs->size(), 1u);
  EXPECT_EQ((*evs)[0].actor, "operator:me");
}

TEST_F(StoreTest, OpenFailureNamesThePath) {
  Store bad;
  Status s = bad.open("/nonexistent-dir/x/ota.db");
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().find("/nonexistent-dir/x/ota.db"), std::string::npos) << s.error();
}

TEST_F(StoreTest, ImagesRoundTripAndUniqueness) {
  ASSERT_TRUE(store.insert_image(image("00112233aabbccdd", "1.0.0")).ok());
  auto by_id = store.image_by_id("00112233aabbccdd");
  ASSERT_TRUE(by_id.ok());
  ASSERT_TRUE(by_id->has_value());
  EXPECT_EQ((*by_id)->version, "1.0.0");
  EXPECT_EQ((*by_id)->hw, (std::vector<std::string>{"m1", "m2"}));
  auto by_ver = store.image_by_version("1.0.0");
  ASSERT_TRUE(by_ver.ok() && by_ver->has_value());
  EXPECT_FALSE(store.insert_image(image("00112233aabbccde", "1.0.0")).ok()) << "dup version";
  auto none = store.image_by_version("9.9.9");
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
  auto list = store.list_images();
  ASSERT_TRUE(list.ok());
  EXPECT_EQ(list->size(), 1u);
}

TEST_F(StoreTest, ImageChunkSizeCheckedByDatabase) {
  ImageRec r = image("00112233aabbccdd", "1.0.0");
  r.chunk_size = 100;
  EXPECT_FALSE(store.insert_image(r).ok());
}

TEST_F(StoreTest, DevicesUpsertFilterAndSeq) {
  DeviceRec d;
  d.id = "dev-1";
  d.hw = "m1";
  d.version = "1.0.0";
  d.groups = {"lab", "eu"};
  d.online = true;
  ASSERT_TRUE(store.upsert_device(d).ok());
  d.id = "dev-2";
  d.groups = {"us"};
  d.online = false;
  d.version = "1.1.0";
  ASSERT_TRUE(store.upsert_device(d).ok());

  DeviceFilter f;
  f.group = "lab";
  auto lab = store.list_devices(f);
  ASSERT_TRUE(lab.ok());
  ASSERT_EQ(lab->size(), 1u);
  EXPECT_EQ(lab->at(0).id, "dev-1");
  f = {};
  f.online = false;
  auto off = store.list_devices(f);
  ASSERT_EQ(off->size(), 1u);
  EXPECT_EQ(off->at(0).id, "dev-2");
  f = {};
  f.version = "1.0.0";
  EXPECT_EQ(store.list_devices(f)->size(), 1u);
  EXPECT_EQ(store.list_devices({})->size(), 2u);

  auto got = store.device("dev-1");
  ASSERT_TRUE(got.ok() && got->has_value());
  EXPECT_EQ((*got)->last_seq, -1);
  ASSERT_TRUE(store.set_device_last_seq("dev-1", 7).ok());
  ASSERT_TRUE(store.set_device_version("dev-1", "2.0.0").ok());
  got = store.device("dev-1");
  EXPECT_EQ((*got)->last_seq, 7);
  EXPECT_EQ((*got)->version, "2.0.0");
  ASSERT_TRUE((*got)->previous_version.has_value());
  EXPECT_EQ(*(*got)->previous_version, "1.0.0");
  // Upsert keeps last_seq.
  d.id = "dev-1";
  ASSERT_TRUE(store.upsert_device(d).ok());
  EXPECT_EQ((*store.device("dev-1"))->last_seq, 7);
}

TEST_F(StoreTest, DeploymentsRowsAndIds) {
  ASSERT_TRUE(store.insert_image(image("00112233aabbccdd", "1.0.0")).ok());
  auto id1 = store.next_deployment_id();
  ASSERT_TRUE(id1.ok());
  EXPECT_EQ(*id1, "dep-1");
  DeploymentRec d;
  d.id = *id1;
  d.image_id = "00112233aabbccdd";
  d.target_kind = "device";
  d.target = "dev-1";
  d.state = DeploymentState::active;
  d.offer = "{}";
  d.created_at = 5;
  ASSERT_TRUE(store.insert_deployment(d).ok());
  EXPECT_EQ(*store.next_deployment_id(), "dep-2");

  DeploymentRec bad = d;
  bad.id = "dep-9";
  bad.image_id = "ffffffffffffffff";
  EXPECT_FALSE(store.insert_deployment(bad).ok()) << "foreign key on image_id";
  bad.image_id = d.image_id;
  bad.target_kind = "fleet";
  EXPECT_FALSE(store.insert_deployment(bad).ok()) << "target_kind check";

  RowRec r;
  r.deployment_id = "dep-1";
  r.device_id = "dev-1";
  r.state = RowState::offered;
  ASSERT_TRUE(store.upsert_row(r).ok());
  r.state = RowState::downloading;
  r.received = 10;
  r.total = 1000;
  ASSERT_TRUE(store.upsert_row(r).ok());
  r.state = static_cast<RowState>(200);  // not a row state
  EXPECT_FALSE(store.upsert_row(r).ok());
  auto rows = store.rows("dep-1");
  ASSERT_EQ(rows->size(), 1u);
  EXPECT_EQ(rows->at(0).state, RowState::downloading);
  EXPECT_EQ(rows->at(0).received, 10u);

  ASSERT_TRUE(store.set_deployment_state("dep-1", DeploymentState::completed, 99).ok());
  auto dd = store.deployment("dep-1");
  EXPECT_EQ((*dd)->state, DeploymentState::completed);
  EXPECT_EQ((*dd)->finished_at, 99);
  EXPECT_EQ(store.list_deployments(DeploymentState::active)->size(), 0u);
  EXPECT_EQ(store.list_deployments(DeploymentState::completed)->size(), 1u);
}

TEST_F(StoreTest, TransactionRollsBack) {
  {
    Tx tx(store);
    ASSERT_TRUE(tx.status().ok());
    ASSERT_TRUE(store.insert_image(image("00112233aabbccdd", "1.0.0")).ok());
  }  // no commit
  EXPECT_FALSE(store.image_by_id("00112233aabbccdd")->has_value());
  {
    Tx tx(store);
    ASSERT_TRUE(store.insert_image(image("00112233aabbccdd", "1.0.0")).ok());
    ASSERT_TRUE(tx.commit().ok());
  }
  EXPECT_TRUE(store.image_by_id("00112233aabbccdd")->has_value());
}

// Group commit: inside a batch each Tx is a savepoint. A committed one stays, a rolled back
// one goes, and nothing is visible to another connection (durable) before end_batch().
TEST_F(StoreTest, BatchCommitsItsTransactionsTogether) {
  ASSERT_TRUE(store.begin_batch().ok());
  EXPECT_FALSE(store.begin_batch().ok()) << "batches do not nest";
  {
    Tx tx(store);
    ASSERT_TRUE(store.insert_image(image("00112233aabbccdd", "1.0.0")).ok());
    ASSERT_TRUE(tx.commit().ok());
  }
  {
    Tx tx(store);
    ASSERT_TRUE(tx.status().ok());
    ASSERT_TRUE(store.insert_image(image("1122334455667788", "1.1.0")).ok());
  }  // no commit: only this savepoint goes
  EXPECT_TRUE(store.image_by_id("00112233aabbccdd")->has_value());
  EXPECT_FALSE(store.image_by_id("1122334455667788")->has_value());
  Store other;
  ASSERT_TRUE(other.open(dir.file("ota.db")).ok());
  EXPECT_FALSE(other.image_by_id("00112233aabbccdd")->has_value()) << "visible before the batch committed";
  ASSERT_TRUE(store.end_batch().ok());
  EXPECT_TRUE(other.image_by_id("00112233aabbccdd")->has_value());
  EXPECT_FALSE(other.image_by_id("1122334455667788")->has_value());
  EXPECT_FALSE(store.end_batch().ok()) << "no batch is open";
}

TEST_F(StoreTest, EventsFilterAndLimit) {
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(store.add_event("dep-1", "dev-1", "e", std::to_string(i)).ok());
  ASSERT_TRUE(store.add_event("dep-2", "dev-2", "x", "").ok());
  EventFilter f;
  f.deployment = "dep-1";
  f.limit = 3;
  auto ev = store.events(f);
  ASSERT_EQ(ev->size(), 3u);
  EXPECT_EQ(ev->at(0).detail, "2");  // the latest three, oldest first
  EXPECT_EQ(ev->at(2).detail, "4");
  f = {};
  f.device = "dev-2";
  EXPECT_EQ(store.events(f)->size(), 1u);
}

TEST(RowStates, FinalStates) {
  for (const char* s : {"succeeded", "failed", "declined", "cancelled"}) {
    ASSERT_TRUE(row_state_from(s)) << s;
    EXPECT_TRUE(is_final(*row_state_from(s)));
  }
  for (const char* s : {"offered", "accepted", "downloading", "verifying", "installing", "rebooting",
                        "confirming"}) {
    ASSERT_TRUE(row_state_from(s)) << s;
    EXPECT_FALSE(is_final(*row_state_from(s)));
  }
  EXPECT_FALSE(row_state_from("done"));
  for (RowState s : all_row_states()) EXPECT_EQ(row_state_from(to_string(s)), s);
}

// ------------------------------------------------------------------ schema v4: API tokens

ApiTokenRec api_token(const std::string& name, const std::string& role, char fill) {
  ApiTokenRec t;
  t.name = name;
  t.role = role;
  t.sha256 = std::string(64, fill);
  t.created_at = 7;
  t.created_by = "token:bootstrap";
  return t;
}

TEST_F(StoreTest, ApiTokensInsertListDelete) {
  ASSERT_TRUE(store.insert_api_token(api_token("bob", "operator", 'b')).ok());
  ASSERT_TRUE(store.insert_api_token(api_token("alice", "read-only", 'a')).ok());
  auto dup = store.insert_api_token(api_token("bob", "admin", 'c'));
  ASSERT_FALSE(dup.ok());
  EXPECT_EQ(dup.kind(), ErrKind::conflict);
  EXPECT_NE(dup.error().find("'bob' exists"), std::string::npos) << dup.error();
  EXPECT_EQ(store.write_errors(), 0u) << "a taken name is not a database failure";
  EXPECT_FALSE(store.insert_api_token(api_token("eve", "root", 'e')).ok()) << "unknown role";
  EXPECT_FALSE(store.insert_api_token(api_token("eve", "admin", 'a')).ok()) << "same hash";
  auto list = store.list_api_tokens();
  ASSERT_TRUE(list.ok()) << list.error();
  ASSERT_EQ(list->size(), 2u);
  EXPECT_EQ((*list)[0].name, "alice");  // by name
  EXPECT_EQ((*list)[0].role, "read-only");
  EXPECT_EQ((*list)[0].sha256, std::string(64, 'a'));
  EXPECT_EQ((*list)[0].created_at, 7);
  EXPECT_EQ((*list)[0].created_by, "token:bootstrap");
  auto gone = store.delete_api_token("bob");
  ASSERT_TRUE(gone.ok());
  EXPECT_TRUE(*gone);
  gone = store.delete_api_token("bob");
  ASSERT_TRUE(gone.ok());
  EXPECT_FALSE(*gone);
  EXPECT_EQ(store.list_api_tokens()->size(), 1u);
}

TEST(StoreMigration, Version3DatabaseGetsTheTokenTable) {
  TempDir dir;
  {
    Store v3;
    ASSERT_TRUE(v3.open(dir.file("v3.db"), 3).ok());
    EXPECT_EQ(v3.schema_version(), 3);
    ASSERT_TRUE(v3.insert_image(image("aaaaaaaaaaaaaaaa", "1.0.0")).ok());
    EXPECT_FALSE(v3.list_api_tokens().ok()) << "no api_tokens table before v4";
  }
  Store v4;
  Status s = v4.open(dir.file("v3.db"));
  ASSERT_TRUE(s.ok()) << s.error();
  EXPECT_EQ(v4.schema_version(), kSchemaVersion);
  EXPECT_TRUE(v4.image_by_id("aaaaaaaaaaaaaaaa")->has_value());
  ASSERT_TRUE(v4.list_api_tokens().ok());
  EXPECT_TRUE(v4.insert_api_token(api_token("alice", "admin", 'a')).ok());
  // A second connection that skips the integrity check (ApiTokens) sees the same table.
  Store second;
  ASSERT_TRUE(second.open(dir.file("v3.db"), kSchemaVersion, /*check_integrity=*/false).ok());
  EXPECT_EQ(second.list_api_tokens()->size(), 1u);
}

}  // namespace

