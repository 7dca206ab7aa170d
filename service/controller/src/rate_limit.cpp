#include "ota/service/rate_limit.hpp"

#include <algorithm>

namespace ota::service {

RateLimiter::RateLimiter(double rate_per_s, double burst, std::size_t max_keys)
    : rate_per_ms_(rate_per_s / 1000.0), burst_(burst < 1 ? 1 : burst), max_keys_(max_keys ? max_keys : 1) {}

void RateLimiter::refill(Bucket& b, long long now_ms) const {
  if (now_ms > b.last_ms) {
    b.tokens = std::min(burst_, b.tokens + static_cast<double>(now_ms - b.last_ms) * rate_per_ms_);
    b.last_ms = now_ms;
  }
}

void RateLimiter::forget_full_buckets(long long now_ms) {
  for (auto it = buckets_.begin(); it != buckets_.end();) {
    refill(it->second, now_ms);
    it = it->second.tokens >= burst_ ? buckets_.erase(it) : std::next(it);
  }
}

bool RateLimiter::admit(const std::string& key, long long now_ms) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = buckets_.find(key);
  if (it == buckets_.end()) {
    if (buckets_.size() >= max_keys_) forget_full_buckets(now_ms);
    // Still full of busy keys: the newcomer gets a bucket anyway (a full bucket, as every
    // new key does); the map may grow past max_keys only while that many keys are active.
    it = buckets_.emplace(key, Bucket{burst_, now_ms}).first;
  }
  Bucket& b = it->second;
  refill(b, now_ms);
  if (b.tokens < 1.0) return false;
  b.tokens -= 1.0;
  return true;
}

std::size_t RateLimiter::keys() const {
  std::lock_guard<std::mutex> lock(mu_);
  return buckets_.size();
}

}  // namespace ota::service
