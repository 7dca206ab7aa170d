// otactl watch ROLLOUT: the live view. Polls the rollout (and its last events) every interval
// until it completes (exit 0), is aborted or is paused by its policy (exit 1), or the controller
// stays unreachable for --retry-for seconds (exit 3). A draft exits 1 at once saying how to
// start it (--wait-start: watched from before its start); a scheduled one is watched.
#include <sys/ioctl.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "../commands.hpp"
#include "../rollout_view.hpp"

namespace otactl {

namespace {

struct Options {
  std::string id;
  int interval_ms = 500, events = 5, retry_for_s = 10;
  bool wait_start = false;  // a draft: wait for its start instead of exiting 1
};

class Watch {
 public:
  Watch(Context& c, const Options& o) : c_(c), o_(o), tty_(isatty(STDOUT_FILENO) != 0 && !c.json_out) {}
  int run();

 private:
  void draw(const std::vector<std::string>& lines);
  void draw_tty(const std::vector<std::string>& lines);
  void render(const std::string& note);
  void show();
  std::optional<int> ended() const;
  std::optional<int> unreachable(const Reply& r);

  Context& c_;
  const Options& o_;
  const bool tty_;
  std::string last_block_, last_json_, last_err_;
  std::size_t drawn_ = 0;  // lines of the block on screen (TTY)
  std::chrono::steady_clock::time_point fail_since_{};
  bool failing_ = false;
  json ro_, events_ = json::array();
};

void Watch::draw(const std::vector<std::string>& lines) {
  std::string block;
  for (const auto& l : lines) block += l + "\n";
  if (block == last_block_) return;
  if (!tty_) {
    if (!last_block_.empty()) std::printf("\n");
    std::fputs(block.c_str(), stdout);
  } else {
    draw_tty(lines);
  }
  last_block_ = block;
  std::fflush(stdout);
}

// Over the block drawn before. Lines longer than the terminal would wrap and a block taller
// than it would scroll, and then "cursor up" would miss the block's start: cut both (events
// go first).
void Watch::draw_tty(const std::vector<std::string>& lines) {
  winsize ws{};
  const bool known = ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0;
  const std::size_t cols = known && ws.ws_col > 1 ? ws.ws_col : 200;
  const std::size_t rows = known && ws.ws_row > 3 ? ws.ws_row : 1000;
  std::string out;
  if (drawn_ > 0) out += "\033[" + std::to_string(drawn_) + "A";
  std::size_t n = 0;
  for (const auto& l : lines) {
    if (n + 1 >= rows) break;
    out += "\r\033[2K" + (l.size() >= cols ? l.substr(0, cols - 1) : l) + "\n";
    ++n;
  }
  out += "\033[J";
  std::fputs(out.c_str(), stdout);
  drawn_ = n;
}

void Watch::render(const std::string& note) {
  std::vector<std::string> lines = rollout_lines(ro_);
  if (o_.events > 0 && events_.is_array() && !events_.empty()) {
    lines.push_back("recent events (" + zone_name() + "):");
    // Columns as wide as their widest entry (event names run to 22 characters and more).
    const char* const keys[] = {"actor", "what", "device"};
    std::size_t width[3] = {0, 0, 0};
    for (const auto& e : events_)
      for (std::size_t k = 0; k < 3; ++k) width[k] = std::max(width[k], jstr(e, keys[k]).size());
    for (const auto& e : events_) {
      std::string l = "  " + event_time(jint(e, "ts"), false);
      for (std::size_t k = 0; k < 3; ++k) {
        const std::string cell = jstr(e, keys[k]);
        if (width[k] > 0) l += "  " + cell + std::string(width[k] - cell.size(), ' ');
      }
      l += "  " + jstr(e, "detail");
      while (!l.empty() && l.back() == ' ') l.pop_back();
      lines.push_back(l);
    }
  }
  using ota::service::RolloutStatus;
  const auto st = rollout_status(ro_);
  if (st == RolloutStatus::draft)
    lines.push_back("(a draft: waiting for otactl rollout start " + jstr(ro_, "id") + ")");
  else if (st == RolloutStatus::scheduled)
    lines.push_back("(scheduled: starts at " + fmt_time(jint(jobj(ro_, "policy"), "start_at")) +
                    ")");
  else if (st == RolloutStatus::paused && !paused_by_policy(ro_))
    lines.push_back("(waiting for: otactl rollout resume " + jstr(ro_, "id") + ")");
  if (!note.empty()) lines.push_back(note);
  draw(lines);
}

// The rollout just read: one JSON line when it changed (--json), else the view.
void Watch::show() {
  if (c_.json_out) {
    std::string line = ro_.dump();
    if (line != last_json_) std::printf("%s\n", line.c_str()), std::fflush(stdout);
    last_json_ = line;
  } else {
    render("");
  }
}

// The exit code once the rollout completed, was aborted or was paused by its policy, or at
// once for a draft: nothing happens to a draft until someone starts it, so there is nothing
// to watch (exit 1 with the command that starts it, rather than wait without a word).
std::optional<int> Watch::ended() const {
  std::FILE* msg = c_.json_out ? stderr : stdout;
  using ota::service::RolloutStatus;
  const auto st = rollout_status(ro_);
  const std::string rid = jstr(ro_, "id").empty() ? o_.id : jstr(ro_, "id");
  if (st == RolloutStatus::draft && !o_.wait_start) {
    std::fprintf(
        stderr,
        "rollout %s is a draft: nothing happens until it is started: otactl rollout start %s\n",
        rid.c_str(), rid.c_str());
    return kExitFail;
  }
  if (st == RolloutStatus::completed) {
    std::fprintf(msg, "rollout %s completed: %lld of %lld devices succeeded\n", rid.c_str(),
                 jint(jobj(ro_, "counts"), "succeeded"), jint(ro_, "devices_total"));
    return kExitOk;
  }
  if (st == RolloutStatus::aborted) {
    std::string why = jstr(ro_, "pause_reason");
    for (const char* p : {"rollout aborted: ", "rollout aborted"})
      if (why.rfind(p, 0) == 0) why = why.substr(std::strlen(p));
    std::fprintf(stderr, "rollout %s aborted%s (%s)\n", rid.c_str(), why.empty() ? "" : (": " + why).c_str(),
                 rollout_counts(jobj(ro_, "counts")).c_str());
    return kExitFail;
  }
  if (paused_by_policy(ro_)) {
    std::fprintf(stderr, "rollout %s %s; resume it with: otactl rollout resume %s\n", rid.c_str(),
                 pause_text(ro_).c_str(), rid.c_str());
    return kExitFail;
  }
  return std::nullopt;
}

// Unreachable or restarting: retried for a while; the exit code once that is over.
std::optional<int> Watch::unreachable(const Reply& r) {
  const auto now = std::chrono::steady_clock::now();
  if (!failing_) fail_since_ = now, failing_ = true;
  const double down = std::chrono::duration<double>(now - fail_since_).count();
  if (down >= o_.retry_for_s) {
    errorf(r.error + " (gave up after " + std::to_string(o_.retry_for_s) + " s)");
    return r.status == 0 ? kExitTimeout : kExitFail;
  }
  if (r.error != last_err_) {
    if (tty_ && ro_.is_object())
      render("(" + r.error + "; retrying)");
    else
      errorf(r.error + " (retrying)");
    last_err_ = r.error;
  }
  return std::nullopt;
}

int Watch::run() {
  for (;;) {
    Reply r = c_.api->get("/api/v1/rollouts/" + url_encode(o_.id));
    if (r.ok && o_.events > 0 && !c_.json_out) {
      Reply e = c_.api->get("/api/v1/events?rollout=" + url_encode(o_.id) + "&limit=200");
      if (e.ok && e.body.is_array()) events_ = notable_events(e.body, static_cast<std::size_t>(o_.events));
    }
    if (r.ok) {
      failing_ = false;
      last_err_.clear();
      ro_ = r.body;
      show();
      if (auto rc = ended()) return *rc;
    } else if (r.status == 0 || r.status >= 500) {
      if (auto rc = unreachable(r)) return *rc;
    } else {
      return fail(r);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(o_.interval_ms));
  }
}

}  // namespace

void add_watch_command(CLI::App& app, Context& ctx) {
  auto o = std::make_shared<Options>();
  auto* watch = app.add_subcommand("watch", "live view of a rollout until it ends");
  watch->add_option("ROLLOUT", o->id, "rollout id")->required();
  watch->add_option("--interval-ms", o->interval_ms, "poll interval (50..60000 ms, default 500)")
      ->check(CLI::Range(50, 60000));
  watch->add_option("--retry-for", o->retry_for_s,
                    "keep retrying an unreachable controller for S seconds before giving up with exit 3 "
                    "(0..3600, default 10)")
      ->check(CLI::Range(0, 3600));
  watch->add_flag(
      "--wait-start", o->wait_start,
      "a draft: wait until it is started (default: exit 1 at once, saying how to start it)");
  watch->add_option("--events", o->events, "show the last N events (0..50, default 5)")->check(CLI::Range(0, 50));
  ctx.on_api(watch, [&ctx, o] { return Watch(ctx, *o).run(); });
}

}  // namespace otactl
