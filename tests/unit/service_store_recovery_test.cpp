// Store recovery features against real SQLite files: the integrity check at open, online
// backup, write health on a full disk, the v3 migration and event retention.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "ota/service/log.hpp"
#include "ota/service/rollout_engine.hpp"
#include "ota/service/store.hpp"
#include "service_test_util.hpp"

using namespace ota::service;
using ota::service::testing::TempDir;
namespace fs = std::filesystem;

namespace {

ImageRec image(int n) {
  ImageRec r;
  char id[17];
  std::snprintf(id, sizeof id, "%016x", n + 1);
  r.id = id;
  r.sha256 = r.id + std::string(48, '0');
  r.version = "1." + std::to_string(n) + ".0";
  r.hw = {"m1"};
  r.size = 1000;
  r.chunk_size = 256;
  r.created_at = 1;
  return r;
}

std::string device_id(int i) { return "dev-" + std::to_string(i); }

DeviceRec device(int i) {
  DeviceRec d;
  d.id = device_id(i);
  d.hw = "m1";
  d.version = "1.0.0";
  d.groups = {"lab"};
  d.online = true;
  d.last_seen = 1;
  return d;
}

DeploymentRec deployment(const std::string& id, const std::string& image_id,
                         DeploymentState state) {
  DeploymentRec d;
  d.id = id;
  d.image_id = image_id;
  d.target_kind = "group";
  d.target = "lab";
  d.state = state;
  d.offer = "{}";
  d.created_at = 1;
  return d;
}

RolloutRec rollout(const std::string& id, const std::string& image_id, RolloutStatus state) {
  RolloutRec r;
  r.id = id;
  r.image_id = image_id;
  r.target_kind = "group";
  r.target = "lab";
  r.policy = "{}";
  r.state = state;
  r.created_at = 1;
  return r;
}

// One number from SQL, through the Store's own connection (count_by wants (text, integer)
// rows; an UPDATE ... RETURNING also works this way).
long long sql_number(Store& s, const std::string& expr) {
  auto r = s.count_by("SELECT 'v', (" + expr + ")");
  EXPECT_TRUE(r.ok()) << expr << ": " << r.error();
  return r.ok() && r->count("v") ? r->at("v") : -1;
}

void sql_write(Store& s, const std::string& sql_with_returning) {
  auto r = s.count_by(sql_with_returning);
  ASSERT_TRUE(r.ok()) << sql_with_returning << ": " << r.error();
}

long long file_size_or_zero(const std::string& path) {
  std::error_code ec;
  auto n = fs::file_size(path, ec);
  return ec ? 0 : static_cast<long long>(n);
}

std::string read_bytes(const std::string& path, long long offset, std::size_t n) {
  std::ifstream f(path, std::ios::binary);
  f.seekg(offset);
  std::string out(n, '\0');
  f.read(&out[0], static_cast<std::streamsize>(n));
  return out;
}

void write_bytes(const std::string& path, long long offset, const std::string& bytes) {
  std::fstream f(path, std::ios::binary | std::ios::in | std::ios::out);
  ASSERT_TRUE(f.good()) << path;
  f.seekp(offset);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(f.good()) << path;
}

std::string garbage(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::string out(n, '\0');
  for (char& c : out) c = static_cast<char>(rng() & 0xff);
  return out;
}

// ------------------------------------------------------------------- integrity check at open

// A database with a few hundred devices and events, closed (so everything is checkpointed into
// the main file), with its page size, page count and the devices table's root page.
class StoreDamageTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path = dir.file("ota.db");
    Store s;
    Status st = s.open(path);
    ASSERT_TRUE(st.ok()) << st.error();
    {
      Tx tx(s);
      ASSERT_TRUE(tx.status().ok());
      for (int i = 0; i < 300; ++i) {
        ASSERT_TRUE(s.upsert_device(device(i)).ok());
        ASSERT_TRUE(s.add_event("", device_id(i), "hello", std::string(100, 'x')).ok());
      }
      ASSERT_TRUE(tx.commit().ok());
    }
    devices_root_page = sql_number(s, "SELECT rootpage FROM sqlite_master WHERE name = 'devices'");
    // s closes here: the last connection checkpoints the WAL into the file and removes it.
  }
  void TearDown() override {}

  void read_layout() {
    const std::string header = read_bytes(path, 0, 100);
    page_size =
        (static_cast<unsigned char>(header[16]) << 8) | static_cast<unsigned char>(header[17]);
    if (page_size == 1) page_size = 65536;
    page_count = file_size_or_zero(path) / page_size;
  }
  void overwrite_page(long long page_number /* 1-based */) {
    write_bytes(path, (page_number - 1) * page_size,
                garbage(static_cast<std::size_t>(page_size), static_cast<unsigned>(page_number)));
  }
  void expect_refused_as_damaged() {
    Store s;
    Status st = s.open(path);
    ASSERT_FALSE(st.ok()) << "a damaged database was opened";
    const std::string& m = st.error();
    EXPECT_TRUE(s.damaged()) << m;
    EXPECT_EQ(m.rfind(kDatabaseDamagedPrefix, 0), 0u) << m;
    EXPECT_NE(m.find(path + ":"), std::string::npos) << "names the file: " << m;
    EXPECT_NE(m.find("stop the controller"), std::string::npos) << m;
    EXPECT_NE(m.find("newest backup"), std::string::npos) << m;
    EXPECT_NE(m.find("otactl backup FILE"), std::string::npos) << m;
    EXPECT_NE(m.find("delete " + path + "-wal and " + path + "-shm"), std::string::npos) << m;
    EXPECT_NE(m.find("start the controller again"), std::string::npos) << m;
    std::printf("refused: %s\n", m.c_str());
    Status v = Store::verify_file(path);
    EXPECT_FALSE(v.ok());
    EXPECT_EQ(v.error().rfind(kDatabaseDamagedPrefix, 0), 0u) << v.error();
  }

  TempDir dir;
  std::string path;
  long long devices_root_page = 0;
  long long page_size = 0;
  long long page_count = 0;
};

TEST_F(StoreDamageTest, IntactDatabaseOpensAndVerifies) {
  Store s;
  Status st = s.open(path);
  ASSERT_TRUE(st.ok()) << st.error();
  EXPECT_FALSE(s.damaged());
  EXPECT_EQ(s.list_devices({})->size(), 300u);
  EXPECT_TRUE(Store::verify_file(path).ok());
}

TEST_F(StoreDamageTest, GarbageInAPageInTheMiddleIsRefused) {
  read_layout();
  ASSERT_GT(page_count, 20) << "the fixture should span many pages";
  overwrite_page(page_count / 2);
  expect_refused_as_damaged();
  // The message carries what quick_check found, not just a generic error.
  Store s;
  EXPECT_NE(s.open(path).error().find("quick_check"), std::string::npos);
}

TEST_F(StoreDamageTest, GarbageInTheDevicesRootPageIsRefused) {
  read_layout();
  ASSERT_GT(devices_root_page, 1);
  overwrite_page(devices_root_page);
  expect_refused_as_damaged();
}

TEST_F(StoreDamageTest, GarbageInTheCellsOfAPageIsReportedLineByLine) {
  // The page header stays, the cells (at the end of the page) do not: quick_check walks the
  // page and reports each bad cell.
  read_layout();
  ASSERT_GT(devices_root_page, 1);
  write_bytes(path, (devices_root_page - 1) * page_size + page_size / 2,
              garbage(static_cast<std::size_t>(page_size / 2), 3));
  expect_refused_as_damaged();
  Store s;
  const std::string m = s.open(path).error();
  EXPECT_NE(m.find("PRAGMA quick_check reported: "), std::string::npos) << m;
  EXPECT_NE(m.find("page " + std::to_string(devices_root_page)), std::string::npos) << m;
}

TEST_F(StoreDamageTest, DamagedHeaderIsRefused) {
  write_bytes(path, 0, garbage(100, 7));
  expect_refused_as_damaged();
  Store s;
  EXPECT_NE(s.open(path).error().find("not a database"), std::string::npos);
}

// ------------------------------------------------------------------------------------ backup

TEST(StoreBackup, CopyHoldsEveryCommittedTransactionIncludingTheWal) {
  TempDir dir;
  const std::string path = dir.file("ota.db");
  Store s;
  ASSERT_TRUE(s.open(path).ok());
  ASSERT_TRUE(s.insert_image(image(0)).ok());
  {
    Tx tx(s);
    for (int i = 0; i < 200; ++i) ASSERT_TRUE(s.upsert_device(device(i)).ok());
    ASSERT_TRUE(tx.commit().ok());
  }
  for (int i = 0; i < 50; ++i) ASSERT_TRUE(s.add_event("", device_id(i), "hello", "").ok());
  // No checkpoint: the committed rows are in the WAL, not yet in the main file.
  ASSERT_GT(file_size_or_zero(path + "-wal"), 0);

  const std::string backup = dir.file("backup.db");
  Status b = s.backup_to(backup);
  ASSERT_TRUE(b.ok()) << b.error();
  EXPECT_FALSE(fs::exists(backup + ".tmp"));
  EXPECT_FALSE(fs::exists(backup + "-wal")) << "a backup is one stand-alone file";
  EXPECT_EQ(fs::status(backup).permissions() & fs::perms::all,
            fs::perms::owner_read | fs::perms::owner_write);
  EXPECT_TRUE(Store::verify_file(backup).ok()) << Store::verify_file(backup).error();

  // What the backup is compared with: a plain copy of the main file, taken now, misses them.
  const std::string plain = dir.file("plain-copy.db");
  fs::copy_file(path, plain);

  // A write after the backup is not in it.
  ASSERT_TRUE(s.add_event("", "dev-0", "after_backup", "").ok());

  Store restored;
  Status o = restored.open(backup);
  ASSERT_TRUE(o.ok()) << o.error();
  EXPECT_EQ(restored.list_devices({})->size(), 200u);
  EXPECT_TRUE(restored.image_by_id(image(0).id)->has_value());
  EXPECT_EQ(sql_number(restored, "SELECT COUNT(*) FROM events"), 50);
  EXPECT_EQ(sql_number(restored, "SELECT COUNT(*) FROM events WHERE what = 'after_backup'"), 0);

  Store copied;
  Status c = copied.open(plain);  // intact, but its rows were still in the WAL
  ASSERT_TRUE(c.ok()) << c.error();
  EXPECT_LT(copied.list_devices({})->size(), 200u) << "the test would not tell a backup that "
                                                      "ignored the WAL from a correct one";
  EXPECT_LT(sql_number(copied, "SELECT COUNT(*) FROM events"), 50);
}

TEST(StoreBackup, NeverOverwritesAnExistingFile) {
  TempDir dir;
  Store s;
  ASSERT_TRUE(s.open(dir.file("ota.db")).ok());
  const std::string dest = dir.file("backup.db");
  {
    std::ofstream f(dest);
    f << "precious";
  }
  Status b = s.backup_to(dest);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.kind(), ErrKind::conflict);
  EXPECT_NE(b.error().find(dest), std::string::npos) << b.error();
  EXPECT_NE(b.error().find("already exists"), std::string::npos) << b.error();
  std::ifstream f(dest);
  std::string content;
  f >> content;
  EXPECT_EQ(content, "precious");
  EXPECT_FALSE(fs::exists(dest + ".tmp"));
}

TEST(StoreBackup, RefusedInsideATransaction) {
  TempDir dir;
  Store s;
  ASSERT_TRUE(s.open(dir.file("ota.db")).ok());
  Tx tx(s);
  ASSERT_TRUE(s.upsert_device(device(1)).ok());  // uncommitted: must not reach a backup
  EXPECT_FALSE(s.backup_to(dir.file("backup.db")).ok());
  EXPECT_FALSE(fs::exists(dir.file("backup.db")));
}

TEST(StoreBackup, VerifyFileRejectsWhatIsNotAControllerDatabase) {
  TempDir dir;
  EXPECT_FALSE(Store::verify_file(dir.file("missing.db")).ok());
  {
    std::ofstream f(dir.file("text.db"));
    f << std::string(4096, 'x');
  }
  EXPECT_FALSE(Store::verify_file(dir.file("text.db")).ok());
  {
    Store s;  // schema version 1..kSchemaVersion
    ASSERT_TRUE(s.open(dir.file("ota.db")).ok());
    // While open (WAL and -shm present) it verifies too.
    EXPECT_TRUE(Store::verify_file(dir.file("ota.db")).ok())
        << Store::verify_file(dir.file("ota.db")).error();
  }
  EXPECT_TRUE(Store::verify_file(dir.file("ota.db")).ok())
      << Store::verify_file(dir.file("ota.db")).error();
}

// ------------------------------------------------------------------ schema v3, write health

TEST(StoreMigration, Version2DatabaseMigratesToVersion3) {
  TempDir dir;
  const std::string path = dir.file("v2.db");
  {
    Store v2;
    ASSERT_TRUE(v2.open(path, 2).ok());
    EXPECT_EQ(v2.schema_version(), 2);
    ASSERT_TRUE(v2.insert_image(image(0)).ok());
    ASSERT_TRUE(v2.upsert_device(device(1)).ok());
    ASSERT_TRUE(v2.insert_deployment(deployment("dep-1", image(0).id, DeploymentState::active)).ok());
    ASSERT_TRUE(v2.add_event("dep-1", "dev-1", "offered", "").ok());
    EXPECT_FALSE(v2.probe_write(5).ok()) << "no health_probe table before v3";
  }
  Store v3;
  Status s = v3.open(path, 3);
  ASSERT_TRUE(s.ok()) << s.error();
  EXPECT_EQ(v3.schema_version(), 3);
  EXPECT_TRUE(v3.device("dev-1")->has_value());
  EXPECT_EQ((*v3.deployment("dep-1"))->state, DeploymentState::active);
  EXPECT_EQ(v3.events({})->size(), 1u);
  EXPECT_EQ(sql_number(v3, "SELECT COUNT(*) FROM sqlite_master WHERE name = 'events_ts'"), 1);
  ASSERT_TRUE(v3.probe_write(1234).ok());
  EXPECT_EQ(sql_number(v3, "SELECT ts FROM health_probe WHERE id = 1"), 1234);
}

TEST(StoreMigration, Version1DatabaseMigratesToTheCurrentVersion) {
  TempDir dir;
  {
    Store v1;
    ASSERT_TRUE(v1.open(dir.file("v1.db"), 1).ok());
    ASSERT_TRUE(v1.insert_image(image(0)).ok());
  }
  Store now;
  Status s = now.open(dir.file("v1.db"));
  ASSERT_TRUE(s.ok()) << s.error();
  EXPECT_EQ(now.schema_version(), kSchemaVersion);
  EXPECT_TRUE(now.image_by_id(image(0).id)->has_value());
  EXPECT_TRUE(now.probe_write(1).ok());
}

TEST(StoreHealth, ProbeWriteKeepsOneRowAndDataErrorsAreNotHealthErrors) {
  TempDir dir;
  Store s;
  ASSERT_TRUE(s.open(dir.file("ota.db")).ok());
  EXPECT_TRUE(s.writable());
  for (long long t = 1; t <= 3; ++t) ASSERT_TRUE(s.probe_write(t * 1000).ok());
  EXPECT_EQ(sql_number(s, "SELECT COUNT(*) FROM health_probe"), 1);
  EXPECT_EQ(sql_number(s, "SELECT ts FROM health_probe"), 3000);
  // A duplicate is the caller's problem, not the database's.
  ASSERT_TRUE(s.insert_image(image(0)).ok());
  EXPECT_FALSE(s.insert_image(image(0)).ok());
  EXPECT_EQ(s.write_errors(), 0u);
  EXPECT_TRUE(s.writable());
  EXPECT_EQ(s.last_error(), "");
}

// A small tmpfs that the test fills up: unmounted (lazily) however the test ends.
class SmallTmpfs {
 public:
  explicit SmallTmpfs(const std::string& dir) : dir_(dir) {
    ::mkdir(dir_.c_str(), 0700);
    if (::mount("tmpfs", dir_.c_str(), "tmpfs", 0, "size=2m") == 0)
      mounted_ = true;
    else
      error_ = std::strerror(errno);
  }
  ~SmallTmpfs() {
    if (mounted_) ::umount2(dir_.c_str(), MNT_DETACH);
  }
  SmallTmpfs(const SmallTmpfs&) = delete;
  SmallTmpfs& operator=(const SmallTmpfs&) = delete;
  bool mounted() const { return mounted_; }
  const std::string& error() const { return error_; }

 private:
  std::string dir_;
  bool mounted_ = false;
  std::string error_;
};

// Writes to path until the file system has no space left; returns the bytes written.
long long fill_file_system(const std::string& path) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return -1;
  long long written = 0;
  for (std::size_t chunk : {std::size_t{65536}, std::size_t{4096}, std::size_t{512}}) {
    const std::string block(chunk, 'f');
    while (true) {
      const ssize_t n = ::write(fd, block.data(), block.size());
      if (n <= 0) break;
      written += n;
      if (static_cast<std::size_t>(n) < block.size()) break;
    }
  }
  ::close(fd);
  return written;
}

TEST(StoreHealth, FullDiskIsReportedNothingHalfWrittenAndRecoveryIsSeen) {
  TempDir dir;
  SmallTmpfs tmpfs(dir.file("mnt"));  // declared after dir: unmounted before dir is removed
  if (!tmpfs.mounted())
    GTEST_SKIP() << "cannot mount a 2 MiB tmpfs at " << dir.file("mnt") << " (" << tmpfs.error()
                 << "): needs root / CAP_SYS_ADMIN";
  const std::string path = dir.file("mnt/ota.db");
  const std::string filler = dir.file("mnt/filler");
  Store s;
  ASSERT_TRUE(s.open(path).ok());
  {
    Tx tx(s);
    for (int i = 0; i < 50; ++i) ASSERT_TRUE(s.upsert_device(device(i)).ok());
    ASSERT_TRUE(tx.commit().ok());
  }
  ASSERT_TRUE(s.probe_write(1).ok());
  EXPECT_TRUE(s.writable());
  // An empty WAL: the next commit has to allocate space for it.
  ASSERT_TRUE(s.checkpoint_wal().ok());
  ASSERT_EQ(file_size_or_zero(path + "-wal"), 0);

  ASSERT_GT(fill_file_system(filler), 0);
  const std::uint64_t errors_before = s.write_errors();
  Status p = s.probe_write(2);
  ASSERT_FALSE(p.ok()) << "the disk is full, the probe must fail";
  std::printf("probe on a full disk: %s\n", p.error().c_str());
  EXPECT_FALSE(s.writable());
  EXPECT_GT(s.write_errors(), errors_before);
  EXPECT_NE(s.last_error().find("full"), std::string::npos) << s.last_error();

  // A bigger transaction fails as a whole: the prior committed state stays.
  bool all_written = true;
  {
    Tx tx(s);
    if (tx.status().ok()) {
      for (int i = 50; i < 150 && all_written; ++i) all_written = s.upsert_device(device(i)).ok();
      if (all_written) all_written = tx.commit().ok();
    } else {
      all_written = false;
    }
  }
  EXPECT_FALSE(all_written);
  EXPECT_FALSE(s.writable());
  EXPECT_EQ(s.list_devices({})->size(), 50u);

  // Still consistent and readable, by this connection and by a new one.
  {
    Store reader;
    Status o = reader.open(path);
    ASSERT_TRUE(o.ok()) << o.error();
    EXPECT_EQ(reader.list_devices({})->size(), 50u);
  }
  EXPECT_TRUE(Store::verify_file(path).ok()) << Store::verify_file(path).error();

  // Space again: the next probe sees it.
  ASSERT_EQ(::unlink(filler.c_str()), 0);
  const std::uint64_t errors_while_full = s.write_errors();
  Status again = s.probe_write(3);
  ASSERT_TRUE(again.ok()) << again.error();
  EXPECT_TRUE(s.writable());
  EXPECT_EQ(s.write_errors(), errors_while_full) << "a counter: it does not go back";
  {
    Tx tx(s);
    for (int i = 50; i < 150; ++i) ASSERT_TRUE(s.upsert_device(device(i)).ok());
    ASSERT_TRUE(tx.commit().ok());
  }
  EXPECT_EQ(s.list_devices({})->size(), 150u);
}

// --------------------------------------------------------------------------------- retention

class StoreRetentionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(store.open(dir.file("ota.db")).ok());
    ASSERT_TRUE(store.insert_image(image(0)).ok());
    ASSERT_TRUE(store.insert_deployment(deployment("dep-done", image(0).id, DeploymentState::completed)).ok());
    ASSERT_TRUE(store.insert_deployment(deployment("dep-active", image(0).id, DeploymentState::active)).ok());
  }
  // n events with the given owner, then dated ts.
  void add_events(int n, const std::string& dep, const std::string& ro, const std::string& tag,
                  long long ts) {
    for (int i = 0; i < n; ++i)
      ASSERT_TRUE(store.add_event(dep, "dev-1", tag, std::to_string(i), "", ro).ok());
    sql_write(store, "UPDATE events SET ts = " + std::to_string(ts) + " WHERE what = '" + tag +
                         "' RETURNING 'n', 1");
  }
  long long count(const std::string& where) {
    return sql_number(store, "SELECT COUNT(*) FROM events WHERE " + where);
  }

  TempDir dir;
  Store store;
  const long long now = 10LL * 86400 * 1000;
  const long long hour = 3600 * 1000;
};

TEST_F(StoreRetentionTest, AgeLimitKeepsActiveDeploymentsAndRunningRollouts) {
  ASSERT_TRUE(store.insert_rollout(rollout("ro-running", image(0).id, RolloutStatus::running)).ok());
  ASSERT_TRUE(store.insert_rollout(rollout("ro-done", image(0).id, RolloutStatus::completed)).ok());
  add_events(10, "dep-done", "", "old_done", now - 5 * hour);
  add_events(5, "dep-active", "", "old_active", now - 5 * hour);
  add_events(5, "", "ro-running", "old_running", now - 5 * hour);
  add_events(5, "", "ro-done", "old_rollout_done", now - 5 * hour);
  add_events(7, "", "", "recent", now - hour / 2);

  auto n = store.prune_events(EventRetention{2 * hour, 0}, now);
  ASSERT_TRUE(n.ok()) << n.error();
  EXPECT_EQ(*n, 15);
  EXPECT_EQ(count("what = 'old_done'"), 0);
  EXPECT_EQ(count("what = 'old_rollout_done'"), 0);
  EXPECT_EQ(count("what = 'old_active'"), 5);
  EXPECT_EQ(count("what = 'old_running'"), 5);
  EXPECT_EQ(count("what = 'recent'"), 7);
  EXPECT_EQ(*store.prune_events(EventRetention{2 * hour, 0}, now), 0);

  // Once finished they go like any other.
  ASSERT_TRUE(store.set_deployment_state("dep-active", DeploymentState::completed, now).ok());
  auto ro = *store.rollout("ro-running");
  ro->state = RolloutStatus::aborted;
  ASSERT_TRUE(store.update_rollout(*ro).ok());
  EXPECT_EQ(*store.prune_events(EventRetention{2 * hour, 0}, now), 10);
  EXPECT_EQ(count("1"), 7);
}

TEST_F(StoreRetentionTest, CountLimitKeepsTheNewestAndProtectedOnes) {
  add_events(10, "dep-active", "", "active", now);
  add_events(50, "dep-done", "", "done", now);
  auto n = store.prune_events(EventRetention{0, 20}, now);
  ASSERT_TRUE(n.ok()) << n.error();
  EXPECT_EQ(*n, 30);
  EXPECT_EQ(count("what = 'active'"), 10) << "older than the newest 20, but active";
  EXPECT_EQ(count("what = 'done'"), 20);
  // The newest ones stayed: details 30..49.
  EXPECT_EQ(count("what = 'done' AND CAST(detail AS INTEGER) >= 30"), 20);
  EXPECT_EQ(*store.prune_events(EventRetention{0, 20}, now), 0);
  // No limits: nothing to do.
  EXPECT_EQ(*store.prune_events(EventRetention{}, now), 0);
  EXPECT_FALSE(store.prune_events(EventRetention{0, 20}, now, 0).ok());
}

TEST_F(StoreRetentionTest, DeletesInBatchesOldestFirst) {
  add_events(11, "dep-done", "", "old", now - 5 * hour);
  std::vector<long long> batches;
  while (true) {
    auto n = store.prune_events(EventRetention{hour, 0}, now, 4);
    ASSERT_TRUE(n.ok()) << n.error();
    batches.push_back(*n);
    if (*n == 4) {
      // Whatever is left is the newer end.
      EXPECT_EQ(sql_number(store, "SELECT MIN(CAST(detail AS INTEGER)) FROM events"),
                static_cast<long long>(batches.size()) * 4);
    }
    if (*n < 4) break;
  }
  EXPECT_EQ(batches, (std::vector<long long>{4, 4, 3}));
  EXPECT_EQ(count("1"), 0);
}

TEST_F(StoreRetentionTest, ProtectedRolloutStatesAreTheNonTerminalOnes) {
  const std::vector<std::string> states = {"draft",   "scheduled", "running",
                                           "paused",  "completed", "aborted"};
  ASSERT_EQ(states.size(), all_rollout_statuses().size());
  for (const auto& st : states) {
    ASSERT_TRUE(rollout_status_from(st)) << st;
    ASSERT_TRUE(store.insert_rollout(rollout("ro-" + st, image(0).id, *rollout_status_from(st))).ok()) << st;
    add_events(1, "", "ro-" + st, "ev-" + st, 1);
  }
  ASSERT_TRUE(store.prune_events(EventRetention{hour, 0}, now).ok());
  for (const auto& st : states)
    EXPECT_EQ(count("what = 'ev-" + st + "'"), is_terminal(*rollout_status_from(st)) ? 0 : 1) << st;
}

// 100 rollouts of 200 devices through the Store API, with and without retention: with it the
// database stops growing with the event log; without it, it grows with every rollout.
struct SizeRun {
  long long bytes_after_30 = 0;
  long long bytes_after_100 = 0;
  long long events_at_end = 0;
};

long long database_bytes(Store& s, const std::string& path) {
  EXPECT_TRUE(s.checkpoint_wal().ok());
  return file_size_or_zero(path) + file_size_or_zero(path + "-wal");
}

SizeRun simulate_rollouts(const std::string& path, const EventRetention* retention) {
  constexpr int kRollouts = 100;
  constexpr int kDevices = 200;
  constexpr int kBatch = 5000;
  const char* const kSteps[] = {"offered",    "accepted",  "downloading", "verifying",
                                "installing", "rebooting", "confirming",  "succeeded"};
  SizeRun run;
  Store s;
  Status o = s.open(path);
  EXPECT_TRUE(o.ok()) << o.error();
  for (int k = 0; k < kRollouts; ++k) {
    const ImageRec img = image(k);
    const std::string dep = "dep-" + std::to_string(k + 1);
    const std::string ro = "ro-" + std::to_string(k + 1);
    Tx tx(s);
    EXPECT_TRUE(tx.status().ok());
    EXPECT_TRUE(s.insert_image(img).ok());
    RolloutRec r = rollout(ro, img.id, RolloutStatus::running);
    r.deployment_id = dep;
    EXPECT_TRUE(s.insert_rollout(r).ok());
    DeploymentRec d = deployment(dep, img.id, DeploymentState::active);
    d.target_kind = "rollout";
    d.offer = std::string(600, 'o');  // about a signed offer
    EXPECT_TRUE(s.insert_deployment(d).ok());
    for (int i = 0; i < kDevices; ++i) {
      if (k == 0) {
        EXPECT_TRUE(s.upsert_device(device(i)).ok());
      }
      RowRec row;
      row.deployment_id = dep;
      row.device_id = device_id(i);
      row.state = RowState::pending;
      row.total = img.size;
      EXPECT_TRUE(s.upsert_row(row).ok());
      std::string prev = "pending";
      for (const char* step : kSteps) {
        EXPECT_TRUE(s.add_event(dep, row.device_id, "state", prev + " -> " + step, "", ro).ok());
        prev = step;
      }
      row.state = RowState::succeeded;
      row.received = img.size;
      row.bytes_sent = img.size;
      EXPECT_TRUE(s.upsert_row(row).ok());
    }
    EXPECT_TRUE(s.set_deployment_state(dep, DeploymentState::completed, k).ok());
    r.state = RolloutStatus::completed;
    EXPECT_TRUE(s.update_rollout(r).ok());
    EXPECT_TRUE(tx.commit().ok());
    if (retention) {
      while (true) {
        auto n = s.prune_events(*retention, ota::service::now_ms(), kBatch);
        EXPECT_TRUE(n.ok()) << n.error();
        if (!n.ok() || *n < kBatch) break;
      }
    }
    if (k + 1 == 30) run.bytes_after_30 = database_bytes(s, path);
  }
  run.bytes_after_100 = database_bytes(s, path);
  run.events_at_end = sql_number(s, "SELECT COUNT(*) FROM events");
  return run;
}

TEST(StoreRetentionSize, PrunedDatabaseStopsGrowingWithTheEventLog) {
  TempDir dir;
  const EventRetention retention{0, 20000};
  const SizeRun pruned = simulate_rollouts(dir.file("pruned.db"), &retention);
  const SizeRun unpruned = simulate_rollouts(dir.file("unpruned.db"), nullptr);
  std::printf("retention max_count=%lld: %lld bytes after 30 rollouts, %lld after 100 "
              "(x%.2f), %lld events\n",
              retention.max_count, pruned.bytes_after_30, pruned.bytes_after_100,
              static_cast<double>(pruned.bytes_after_100) /
                  static_cast<double>(pruned.bytes_after_30),
              pruned.events_at_end);
  std::printf("no retention:           %lld bytes after 30 rollouts, %lld after 100 (x%.2f), "
              "%lld events\n",
              unpruned.bytes_after_30, unpruned.bytes_after_100,
              static_cast<double>(unpruned.bytes_after_100) /
                  static_cast<double>(unpruned.bytes_after_30),
              unpruned.events_at_end);
  EXPECT_LE(pruned.events_at_end, retention.max_count);
  EXPECT_LE(static_cast<double>(pruned.bytes_after_100),
            1.5 * static_cast<double>(pruned.bytes_after_30));
  EXPECT_LT(pruned.bytes_after_100 * 2, unpruned.bytes_after_100);
  EXPECT_EQ(unpruned.events_at_end, 100LL * 200 * 8);
}

}  // namespace
