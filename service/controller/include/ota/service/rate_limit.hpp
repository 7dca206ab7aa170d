// Per-key token buckets: at most `rate_per_s` messages a second per key on average, bursts of
// up to `burst`. The controller keeps one per kind of device message so that one device
// (a stolen certificate, a firmware bug in a loop) cannot flood the controller's database,
// log or network thread and starve the rest of the fleet.
//
// Thread-safe (one mutex); admit() is O(log n). Memory is bounded: beyond `max_keys` keys the
// buckets that have refilled completely (they hold no state worth keeping) are forgotten.
#pragma once

#include <cstddef>
#include <map>
#include <mutex>
#include <string>

namespace ota::service {

class RateLimiter {
 public:
  RateLimiter(double rate_per_s, double burst, std::size_t max_keys = 100000);

  // True if `key` may send one more message at `now_ms` (a monotonic clock); takes a token.
  bool admit(const std::string& key, long long now_ms);
  std::size_t keys() const;

 private:
  struct Bucket {
    double tokens = 0;
    long long last_ms = 0;
  };
  void refill(Bucket& b, long long now_ms) const;
  void forget_full_buckets(long long now_ms);

  double rate_per_ms_;
  double burst_;
  std::size_t max_keys_;
  mutable std::mutex mu_;
  std::map<std::string, Bucket> buckets_;
};

}  // namespace ota::service
