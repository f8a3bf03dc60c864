// Wakes this process's waiters (Engine::Wait*) after every change it makes, so that they
// read the catalog again at once instead of at their next look. A waiter takes the
// generation before it reads what it waits for, then waits for a later one: no wake-up is
// lost between the read and the wait.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>

namespace imagerelay {

class ChangeNotifier {
 public:
  void Notify() {
    {
      std::lock_guard lock(mutex_);
      ++generation_;
    }
    changed_.notify_all();
  }
  uint64_t Generation() {
    std::lock_guard lock(mutex_);
    return generation_;
  }
  // Returns after a change since `seen`, or at `until`.
  void WaitForChange(uint64_t seen, std::chrono::steady_clock::time_point until) {
    std::unique_lock lock(mutex_);
    changed_.wait_until(lock, until, [&] { return generation_ != seen; });
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  uint64_t generation_ = 0;  // under mutex_
};

}  // namespace imagerelay
