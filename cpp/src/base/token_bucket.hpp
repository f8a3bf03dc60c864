// A token bucket for the transfer engine's bandwidth cap, shared by the workers. Reserve()
// takes the tokens at once (the balance may go negative) and says how long the caller must
// wait before sending, so a chunk larger than the burst still passes, at the right rate.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <utility>

namespace imagerelay {

class TokenBucket {
 public:
  using Clock = std::chrono::steady_clock;
  using NowFn = std::function<Clock::time_point()>;

  // `rate` in bytes per second, 0 = unlimited; `burst` is the most a quiet bucket holds
  // (0 = one second's worth). The clock is injectable for tests.
  explicit TokenBucket(uint64_t rate, uint64_t burst = 0, NowFn now = &Clock::now)
      : rate_(rate),
        burst_(burst != 0 ? burst : rate),
        now_(std::move(now)),
        tokens_(static_cast<double>(burst_)),
        last_(now_()) {}

  bool unlimited() const { return rate_ == 0; }

  // Takes `bytes` tokens and returns how long to wait before sending them (zero if the
  // bucket held enough).
  Clock::duration Reserve(uint64_t bytes) {
    if (unlimited()) return Clock::duration::zero();
    std::lock_guard lock(mu_);
    Refill();
    tokens_ -= static_cast<double>(bytes);
    if (tokens_ >= 0) return Clock::duration::zero();
    std::chrono::duration<double> wait(-tokens_ / static_cast<double>(rate_));
    return std::chrono::ceil<Clock::duration>(wait);
  }

  // The current balance (negative while callers wait on reserved tokens).
  double tokens() {
    std::lock_guard lock(mu_);
    Refill();
    return tokens_;
  }

 private:
  void Refill() {
    Clock::time_point now = now_();
    if (now > last_) {
      std::chrono::duration<double> elapsed = now - last_;
      tokens_ = std::min(static_cast<double>(burst_),
                         tokens_ + elapsed.count() * static_cast<double>(rate_));
      last_ = now;
    }
  }

  const uint64_t rate_;
  const uint64_t burst_;
  const NowFn now_;
  std::mutex mu_;
  double tokens_;
  Clock::time_point last_;
};

}  // namespace imagerelay
