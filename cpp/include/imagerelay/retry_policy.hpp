// How the data plane retries a transient error (a store or network hiccup): exponential
// backoff with full jitter, a bounded number of tries (retry.hpp runs it).
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <random>

namespace imagerelay {

struct RetryPolicy {
  int max_attempts = 5;         // tries in all, for transient errors
  int backoff_initial_ms = 50;  // doubled per attempt...
  int backoff_max_ms = 5'000;   // ...up to this

  // Full jitter: uniform in [0, min(max, initial * 2^(n-1))], so that many workers retrying
  // against one slowed-down store spread out instead of hitting it in waves.
  std::chrono::steady_clock::duration Backoff(int failed_attempts, std::mt19937& rng) const {
    const double initial = std::max(0, backoff_initial_ms);
    const double cap = std::max(0, backoff_max_ms);
    const double ceiling =
        std::min(cap, initial * std::ldexp(1.0, std::min(failed_attempts - 1, 30)));
    if (ceiling <= 0) return std::chrono::steady_clock::duration::zero();
    std::uniform_real_distribution<double> jitter(0.0, ceiling);
    return std::chrono::duration_cast<std::chrono::steady_clock::duration>(
        std::chrono::duration<double, std::milli>(jitter(rng)));
  }
};

}  // namespace imagerelay
