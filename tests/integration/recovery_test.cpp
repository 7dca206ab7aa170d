// The controller recovers from faults by itself: a broker SIGKILLed and restarted (during a
// rollout and while idle), a broker that is not up when the controller starts, a damaged
// database, a full disk, and a restore from an online backup. Real mosquitto (broker-config/,
// TLS, ACLs), the ota-controller process with its SQLite file, ota-devsim fleets, otactl.
// Outages are modelled with real time (a broker stays down N seconds); everything else
// waits on conditions with deadlines.
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <thread>

#include "fleet_fixture.hpp"

namespace {

using namespace fleet_test;
using ota::test::BrokerOptions;

// User + system CPU seconds the process has used so far (/proc/PID/stat fields 14, 15).
double cpu_seconds(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto close = stat.rfind(')');
  if (close == std::string::npos) return -1;
  std::istringstream rest(stat.substr(close + 2));
  std::string field;
  long long utime = 0, stime = 0;
  for (int i = 3; i <= 15 && rest >> field; ++i) {
    if (i == 14) utime = std::atoll(field.c_str());
    if (i == 15) stime = std::atoll(field.c_str());
  }
  return static_cast<double>(utime + stime) / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

long long steady_now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

struct Spread {
  long long min = 0, median = 0, max = 0;
};
Spread spread(std::vector<long long> v) {
  Spread s;
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  s.min = v.front();
  s.max = v.back();
  s.median = v[v.size() / 2];
  return s;
}

// The value of an unlabelled Prometheus sample, -1 if absent.
long long metric_value(const std::string& text, const std::string& name) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(name + " ", 0) == 0) return std::atoll(line.c_str() + name.size() + 1);
  return -1;
}

class Recovery : public FleetTest {
 protected:
  void TearDown() override {
    FleetTest::TearDown();
    if (!tmpfs_.empty()) ::umount2(tmpfs_.c_str(), MNT_DETACH);
  }

  // Models an outage: the broker is SIGKILLed (no persistence save) and comes back on the
  // same port with the same data directory `down` later.
  void broker_outage(std::chrono::milliseconds down) {
    broker_->kill9();
    std::this_thread::sleep_for(down);  // the outage itself, not a synchronisation
    broker_->start();
  }

  // Devices -> how many events of the deployment moved the device's row into a final state.
  std::map<std::string, int> final_transitions(const std::string& deployment) {
    std::map<std::string, int> out;
    json evs = get("/api/v1/events?deployment=" + deployment + "&limit=10000");
    for (const auto& e : evs) {
      if (e.value("what", "") != "state") continue;
      const std::string d = e.value("detail", "");
      for (const char* fin : {"-> succeeded", "-> failed", "-> declined", "-> cancelled", "-> timed_out"})
        if (d.find(fin) != std::string::npos) out[e.value("device", "")]++;
    }
    return out;
  }

  void expect_fleet_boots(const std::string& version) {
    ASSERT_TRUE(wait_fleet_settled(60s));
    for (const auto& dev : fleet_ids()) EXPECT_EQ(boot_record(dev).boots(), version) << dev;
  }

  std::string tmpfs_;
};

// ------------------------------------------------------------------------------------------

TEST_F(Recovery, RolloutCompletesThroughTenBrokerKills) {
  start_env("bk", 50, "fleet");
  if (HasFatalFailure()) return;
  const std::size_t image_size = 512 * 1024 + 100;
  add_image(random_bytes(image_size, 21), "1.1.0");
  if (HasFatalFailure()) return;
  // Slow flash (80 ms a chunk, ~10 s a device) so the rollout spans the outages.
  start_fleet({"--flash-write-delay-us", "80000"});
  if (HasFatalFailure()) return;
  wait_fleet_online();
  if (HasFatalFailure()) return;
  json created = otactl_json({"rollout", "create", "1.1.0", "--group", "fleet", "--wave", "20%",
                              "--wave", "100%", "--start"});
  const std::string id = created.value("id", "");
  ASSERT_EQ(created.value("state", ""), "running") << created.dump();

  // Between two outages the fleet must move at least 1/25 of all the bytes, so every kill
  // falls on a rollout that is really running (and one that stalls is caught here).
  const long long total_bytes = static_cast<long long>(image_size) * 50;
  const std::vector<int> down_s = {1, 3, 30, 2, 8, 1, 15, 5, 1, 4};
  std::vector<long long> reconnect_ms;
  int kills_during_rollout = 0;
  for (std::size_t k = 0; k < down_s.size(); ++k) {
    if (rollout(id).value("state", "") == "running") kills_during_rollout++;
    broker_outage(std::chrono::seconds(down_s[k]));
    const long long back = steady_now_ms();
    ASSERT_TRUE(wait_until([&] { return health_status() == 200; }, 30s, 20ms))
        << "kill " << k + 1 << ": the controller did not reconnect";
    reconnect_ms.push_back(steady_now_ms() - back);
    const long long served = metric_value(metrics(), "ota_bytes_served_total");
    ASSERT_TRUE(wait_until(
        [&] {
          return rollout(id).value("state", "") != "running" ||
                 metric_value(metrics(), "ota_bytes_served_total") >= served + total_bytes / 25;
        },
        60s, 100ms))
        << "kill " << k + 1 << " (down " << down_s[k] << " s): the rollout made no progress afterwards: "
        << rollout(id).dump();
  }
  const Spread r = spread(reconnect_ms);
  std::printf("[ reconnect ] 10 broker kills during a rollout: controller healthy again %lld / %lld / %lld ms "
              "(min / median / max) after the broker was back; %d kills while the rollout ran\n",
              r.min, r.median, r.max, kills_during_rollout);
  EXPECT_GE(kills_during_rollout, 5) << "the rollout ended too early to test anything";

  json end = wait_rollout_settles(id, 240s);
  ASSERT_EQ(end.value("state", ""), "completed") << end.dump(1);
  EXPECT_EQ(count_of(end["counts"], "succeeded"), 50) << end["counts"].dump();
  expect_fleet_boots("1.1.0");

  // Exactly one final result per device, on the first attempt.
  const auto finals = final_transitions(end.value("deployment", ""));
  for (const auto& dev : fleet_ids()) {
    auto it = finals.find(dev);
    EXPECT_EQ(it == finals.end() ? 0 : it->second, 1) << dev << " final transitions";
  }
  json api = rollout(id, true);
  for (const auto& row : api["devices"]) EXPECT_EQ(row.value("attempt", 0), 1) << row.dump();
  const std::string m = metrics();
  EXPECT_EQ(metric_value(m, "ota_mqtt_reconnects_total"), 10) << m;
  EXPECT_EQ(metric_value(m, "ota_mqtt_up"), 1);
}

TEST_F(Recovery, IdleControllerHealthyAgainAfterEachOfTwentyBrokerKills) {
  start_env("idle", 1, "fleet");
  if (HasFatalFailure()) return;
  std::vector<long long> times;
  for (int k = 0; k < 20; ++k) {
    broker_outage(std::chrono::milliseconds(100 * (k % 5)));
    const long long back = steady_now_ms();
    ASSERT_TRUE(wait_until([&] { return health_status() == 200; }, 15s, 20ms))
        << "kill " << k + 1 << ": /health not ok 15 s after the broker came back";
    times.push_back(steady_now_ms() - back);
  }
  const Spread r = spread(times);
  std::printf("[ reconnect ] 20 broker kills, idle controller: healthy again %lld / %lld / %lld ms "
              "(min / median / max) after the broker was back\n",
              r.min, r.median, r.max);
  json h;
  ASSERT_EQ(health_status(&h), 200);
  EXPECT_EQ(h["checks"]["mqtt"].value("reconnects", 0), 20) << h.dump();
  // Each outage was seen and logged; the controller never needed a restart.
  EXPECT_TRUE(controller_->alive());
  const std::string log = read_file(dir_.path() + "/controller.log");
  std::size_t lost = 0;
  for (auto p = log.find("lost the link"); p != std::string::npos; p = log.find("lost the link", p + 1)) lost++;
  EXPECT_EQ(lost, 20u);
}

TEST_F(Recovery, ControllerComesBackAfterItsSessionWasTakenOver) {
  start_env("to", 1, "fleet");
  if (HasFatalFailure()) return;
  // Another client with the controller's client id (a second controller started by mistake):
  // the broker drops ours, which must come back by itself.
  auto opts = ota::test::ClientOptions::controller(*pki_, broker_->port());
  opts.client_id = "ota-controller";
  auto intruder = std::make_unique<MqttTestClient>(opts);
  ASSERT_TRUE(intruder->connect().ok());
  ASSERT_TRUE(wait_until(
      [&] {
        json h;
        return health_status(&h) == 200 && h["checks"]["mqtt"].value("reconnects", 0) >= 1;
      },
      15s, 20ms))
      << "the controller did not take its session back";
  intruder.reset();  // disconnects for good
  ASSERT_TRUE(wait_until([&] { return health_status() == 200; }, 15s, 20ms));
  const std::string log = read_file(dir_.path() + "/controller.log");
  EXPECT_NE(log.find("lost the link"), std::string::npos) << log;
}

TEST_F(Recovery, NoBrokerAtStartWaitsQuietlyStopsAtOnceAndConnectsLater) {
  prepare_env("nb", 1, "fleet");
  broker_port_ = ota::test::free_loopback_port();
  ASSERT_TRUE(start_controller(/*wait_healthy=*/false));
  json h;
  ASSERT_TRUE(wait_until([&] { return health_status(&h) == 503; }, 10s, 20ms))
      << "the HTTP API did not come up while the broker is down";
  EXPECT_EQ(h.value("status", ""), "starting") << h.dump();
  EXPECT_EQ(h["failing"], json::array({"mqtt"})) << h.dump();

  // CPU while waiting for a broker: a 5 s measurement window.
  const double cpu0 = cpu_seconds(controller_->pid());
  std::this_thread::sleep_for(5s);
  const double cpu = cpu_seconds(controller_->pid()) - cpu0;
  std::printf("[ cpu ] controller waiting for a broker: %.3f s CPU in 5 s\n", cpu);
  EXPECT_LT(cpu, 0.2);

  // SIGTERM ends it within 2 s, cleanly.
  const long long t0 = steady_now_ms();
  controller_->signal(SIGTERM);
  int code = -1;
  EXPECT_TRUE(wait_until([&] { return controller_->exited(&code); }, 2s, 5ms))
      << "still running 2 s after SIGTERM";
  std::printf("[ stop ] SIGTERM with no broker: exited after %lld ms\n", steady_now_ms() - t0);
  EXPECT_EQ(code, 0);

  // Started again with no broker, it connects once the broker comes up, and serves devices.
  ASSERT_TRUE(start_controller(/*wait_healthy=*/false));
  ASSERT_TRUE(wait_until([&] { return health_status() == 503; }, 10s, 20ms));
  BrokerOptions bo;
  bo.port = broker_port_;
  broker_ = std::make_unique<Broker>(*pki_, bo);
  ASSERT_TRUE(wait_until([&] { return health_status() == 200; }, 20s, 20ms))
      << "no connection after the broker came up";
  std::ifstream tf(token_file());
  std::getline(tf, token_);
  start_fleet();
  if (HasFatalFailure()) return;
  wait_fleet_online();
}

TEST_F(Recovery, DamagedDatabaseIsRefusedWithRestoreAdvice) {
  start_env("db", 3, "fleet");
  if (HasFatalFailure()) return;
  start_fleet();
  if (HasFatalFailure()) return;
  wait_fleet_online();
  if (HasFatalFailure()) return;
  fleets_.clear();
  controller_->stop();  // clean stop: the WAL is checkpointed into the file
  ASSERT_FALSE(controller_->alive());
  CommandResult root = ota::test::run_command(
      {"sqlite3", db_path_, "SELECT rootpage FROM sqlite_master WHERE name = 'devices'"});
  ASSERT_EQ(root.exit_code, 0) << root.output;
  const long long page = std::atoll(root.output.c_str());
  ASSERT_GT(page, 1);
  {
    std::string bytes = read_file(db_path_);
    ASSERT_GT(bytes.size(), 100u);
    const std::size_t page_size =
        (static_cast<unsigned char>(bytes[16]) << 8 | static_cast<unsigned char>(bytes[17]));
    std::fstream f(db_path_, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(static_cast<std::size_t>(page - 1) * page_size));
    const std::string junk(page_size, '\x5a');
    f.write(junk.data(), static_cast<std::streamsize>(junk.size()));
  }
  ASSERT_TRUE(start_controller(/*wait_healthy=*/false));
  int code = -1;
  ASSERT_TRUE(wait_until([&] { return controller_->exited(&code); }, 15s, 10ms))
      << "the controller runs on a damaged database";
  EXPECT_EQ(code, 1);
  const std::string log = read_file(dir_.path() + "/controller.log");
  EXPECT_NE(log.find(db_path_), std::string::npos) << log;
  EXPECT_NE(log.find("damaged"), std::string::npos) << log;
  EXPECT_NE(log.find("backup"), std::string::npos) << log;
  EXPECT_NE(log.find("-wal"), std::string::npos) << "restore steps missing:\n" << log;
}

TEST_F(Recovery, BackupTakenDuringRolloutRestoresAndTheRolloutContinues) {
  start_env("bu", 20, "fleet");
  if (HasFatalFailure()) return;
  add_image(random_bytes(256 * 1024 + 7, 5), "1.1.0");
  if (HasFatalFailure()) return;
  start_fleet({"--flash-write-delay-us", "40000"});
  if (HasFatalFailure()) return;
  wait_fleet_online();
  if (HasFatalFailure()) return;
  json created = otactl_json({"rollout", "create", "1.1.0", "--group", "fleet", "--wave", "25%",
                              "--wave", "100%", "--start"});
  const std::string id = created.value("id", "");
  ASSERT_EQ(created.value("state", ""), "running") << created.dump();
  ASSERT_TRUE(wait_until([&] { return count_of(rollout(id)["counts"], "downloading") > 0; }, 30s, 50ms));

  const std::string backup = dir_.path() + "/backup.db";
  CommandResult b = otactl({"backup", backup});
  ASSERT_EQ(b.exit_code, 0) << b.output;
  EXPECT_NE(b.output.find("written to " + backup), std::string::npos) << b.output;
  CommandResult again = otactl({"backup", backup});
  EXPECT_EQ(again.exit_code, 2) << "an existing backup was overwritten:\n" << again.output;
  CommandResult check = ota::test::run_command({"sqlite3", backup, "PRAGMA integrity_check"});
  EXPECT_EQ(check.output, "ok\n");
  CommandResult state = ota::test::run_command(
      {"sqlite3", backup, "SELECT state FROM rollouts WHERE id = '" + id + "'"});
  EXPECT_EQ(state.output, "running\n") << "the backup does not hold the running rollout";

  // The controller host is lost; the backup goes in place of the database.
  controller_->kill9();
  for (const char* suffix : {"", "-wal", "-shm"}) ::unlink((db_path_ + suffix).c_str());
  std::ifstream src(backup, std::ios::binary);
  std::ofstream dst(db_path_, std::ios::binary);
  dst << src.rdbuf();
  dst.close();
  ASSERT_TRUE(start_controller());
  json end = wait_rollout_settles(id, 180s);
  ASSERT_EQ(end.value("state", ""), "completed") << end.dump(1);
  EXPECT_EQ(count_of(end["counts"], "succeeded"), 20) << end["counts"].dump();
  expect_fleet_boots("1.1.0");
}

TEST_F(Recovery, FullDiskFailsHealthKeepsTheDatabaseConsistentAndRecovers) {
  prepare_env("fd", 2, "fleet");
  tmpfs_ = dir_.path() + "/small-disk";
  ::mkdir(tmpfs_.c_str(), 0700);
  if (::mount("tmpfs", tmpfs_.c_str(), "tmpfs", 0, "size=4m") != 0) {
    const std::string why = std::strerror(errno);
    tmpfs_.clear();
    GTEST_SKIP() << "cannot mount a tmpfs here (" << why << "); needs root";
  }
  db_path_ = tmpfs_ + "/ctl.db";
  controller_args_ = {"--min-free-mb", "1"};
  broker_ = std::make_unique<Broker>(*pki_);
  ASSERT_TRUE(start_controller());
  start_fleet();  // two devices now, two more while the disk is full
  if (HasFatalFailure()) return;
  wait_fleet_online();
  if (HasFatalFailure()) return;

  // Fill the disk.
  const std::string filler = tmpfs_ + "/filler";
  {
    std::ofstream f(filler, std::ios::binary);
    const std::string block(64 * 1024, '\0');
    while (f.write(block.data(), static_cast<std::streamsize>(block.size())) && f.flush()) {
    }
  }
  json h;
  ASSERT_TRUE(wait_until([&] { return health_status(&h) == 503; }, 15s, 50ms)) << h.dump();
  EXPECT_FALSE(h["checks"]["disk"].value("ok", true)) << h.dump();
  // New devices say hello: the database has to grow and cannot.
  pki_->add_devices(2, "fdnew", {group_});
  broker_->reload();
  fleets_.push_back(std::make_unique<Child>(
      std::vector<std::string>{OTA_DEVSIM_BIN, "--count", "2", "--id-prefix", "fdnew", "--pki", pki_->dir,
                               "--data", dir_.path() + "/fleet-new", "--port", std::to_string(broker_->port()),
                               "--hw", "board-x", "--group", group_, "--no-fsync"},
      dir_.path() + "/devsim-new.log"));
  ASSERT_TRUE(wait_until([&] { return health_status(&h) == 503 && !h["checks"]["database"].value("ok", true); },
                         20s, 50ms))
      << "the database never reported the failed writes: " << h.dump();
  std::string m = metrics();
  EXPECT_EQ(metric_value(m, "ota_db_writable"), 0) << m;
  EXPECT_GT(metric_value(m, "ota_db_write_errors_total"), 0) << m;
  EXPECT_LT(metric_sum(m, "ota_disk_free_bytes", "path=\"" + tmpfs_ + "\""), 1024 * 1024) << m;
  // An upload fails cleanly and leaves nothing behind.
  const std::string fw = dir_.path() + "/fw.bin";
  std::ofstream(fw, std::ios::binary) << random_bytes(8 * 1024, 3);
  EXPECT_NE(otactl({"image", "add", fw, "--version", "9.9.9", "--hw", "board-x"}).exit_code, 0);
  // The devices known before are all still there; the service answers.
  json before = get("/api/v1/devices?group=fleet");
  ASSERT_TRUE(before.is_array()) << before.dump();
  EXPECT_GE(before.size(), 2u);

  // Space returns: health recovers by itself, the new devices get registered.
  ASSERT_EQ(::unlink(filler.c_str()), 0);
  ASSERT_TRUE(wait_until([&] { return health_status(&h) == 200; }, 20s, 50ms)) << h.dump();
  m = metrics();
  EXPECT_EQ(metric_value(m, "ota_db_writable"), 1) << m;
  json images = get("/api/v1/images");
  for (const auto& img : images) EXPECT_NE(img.value("version", ""), "9.9.9") << "a half-written upload is listed";
  ASSERT_TRUE(wait_until(
      [&] {
        json d = get("/api/v1/devices?group=fleet&online=true");
        return d.is_array() && d.size() == 4u;
      },
      60s, 200ms))
      << get("/api/v1/devices").dump();
  const std::string copy = dir_.path() + "/after.db";
  ASSERT_EQ(otactl({"backup", copy}).exit_code, 0);
  EXPECT_EQ(ota::test::run_command({"sqlite3", copy, "PRAGMA integrity_check"}).output, "ok\n");
}

}  // namespace
