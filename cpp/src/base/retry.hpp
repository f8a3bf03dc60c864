// The one retry policy of the data plane: a TransientError (a store or network hiccup) is
// retried with exponential backoff and full jitter, in sleeps that a cancel cuts short. Used
// by copies, imports, exports and verifies around every store call, and by the HTTP client
// around each request.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <exception>
#include <optional>
#include <random>
#include <string>
#include <thread>

#include "imagerelay/cancel.hpp"
#include "imagerelay/error.hpp"
#include "imagerelay/retry_policy.hpp"

namespace imagerelay {

// Sleeps `duration` in short slices; returns false as soon as `alive()` no longer holds.
template <typename Alive>
bool SleepWhile(std::chrono::steady_clock::duration duration, Alive&& alive) {
  using Clock = std::chrono::steady_clock;
  constexpr auto kSlice = std::chrono::milliseconds(10);
  const Clock::time_point deadline = Clock::now() + duration;
  for (;;) {
    if (!alive()) return false;
    const Clock::time_point now = Clock::now();
    if (now >= deadline) return true;
    std::this_thread::sleep_for(std::min<Clock::duration>(deadline - now, kSlice));
  }
}

// Why an operation did not succeed: a failure to report, or nothing when the work was
// abandoned (cancelled, or no longer wanted).
struct AttemptFailure {
  std::string code;
  std::string message;
};
struct AttemptResult {
  bool ok = true;
  std::optional<AttemptFailure> failure;
};

inline std::string Plural(int n, const char* word) {
  return std::to_string(n) + " " + word + (n == 1 ? "" : "s");
}

// Runs `op`, retrying a TransientError per `policy` while `alive()` holds. `action` names
// what was tried in the failure's message ("writing chunk <hash> to <store>").
template <typename Op, typename Alive>
AttemptResult Attempt(const RetryPolicy& policy, Op&& op, Alive&& alive, const std::string& action,
                      std::mt19937& rng) {
  const int max_attempts = std::max(1, policy.max_attempts);
  for (int attempt = 1;; ++attempt) {
    try {
      op();
      return {};
    } catch (const Cancelled&) {
      return {false, std::nullopt};  // a request in flight was aborted by a cancel
    } catch (const TransientError& e) {
      if (attempt >= max_attempts) {
        return {false, AttemptFailure{codes::kTransferFailed, action + " failed after " +
                                                                  Plural(attempt, "attempt") +
                                                                  ": " + e.what()}};
      }
    } catch (const Error& e) {
      return {false, AttemptFailure{e.code(), action + " failed: " + e.message()}};
    } catch (const std::exception& e) {
      return {false, AttemptFailure{codes::kTransferFailed, action + " failed: " + e.what()}};
    } catch (...) {
      return {false, AttemptFailure{codes::kTransferFailed, action + " failed: unknown error"}};
    }
    if (!SleepWhile(policy.Backoff(attempt, rng), alive)) return {false, std::nullopt};
  }
}

// Attempt for a caller that throws: the op's value, or Cancelled when `cancel` fired, or a
// TransferError (with the failing op's code) after the last attempt.
template <typename Op>
void Retried(const RetryPolicy& policy, Op&& op, const CancelToken* cancel,
             const std::string& action) {
  thread_local std::mt19937 rng{std::random_device{}()};
  std::exception_ptr permanent;
  AttemptResult result = Attempt(
      policy,
      [&] {
        try {
          op();
        } catch (const TransientError&) {
          throw;
        } catch (const Cancelled&) {
          throw;
        } catch (...) {
          permanent = std::current_exception();  // not retried: rethrown as it was
        }
      },
      [&] { return cancel == nullptr || !cancel->cancelled(); }, action, rng);
  if (permanent) std::rethrow_exception(permanent);
  if (result.ok) return;
  if (!result.failure) throw Cancelled{};
  throw TransferError(result.failure->code, result.failure->message);
}

}  // namespace imagerelay
