#include "engine/worker_pool.hpp"

#include <algorithm>
#include <exception>
#include <string>

#include "imagerelay/log.hpp"

namespace imagerelay {

void WorkerPool::Start() {
  for (int i = 0; i < std::max(1, parts_.workers); ++i) parts_.spawn([this] { Loop(); });
}

void WorkerPool::Wake() {
  {
    std::lock_guard lock(wake_mutex_);
    ++wakes_;
  }
  wake_.notify_all();
}

void WorkerPool::Stop() {
  {
    std::lock_guard lock(wake_mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
}

void WorkerPool::Loop() {
  while (!stopping_) {
    uint64_t seen = 0;
    {
      std::lock_guard lock(wake_mutex_);
      seen = wakes_;  // before looking: a Wake meanwhile makes the wait return at once
    }
    bool worked = false;
    try {
      worked = parts_.run_one_claim();
    } catch (const std::exception& e) {
      Log(LogLevel::kError, std::string("copy worker: ") + e.what());
    }
    if (worked) {
      last_worked_us_.store(parts_.now());
      continue;
    }
    try {
      parts_.sweep_pending();
      MaybeCheckpoint();
    } catch (const std::exception& e) {
      Log(LogLevel::kWarning, std::string("sweep: ") + e.what());
    }
    std::unique_lock lock(wake_mutex_);
    wake_.wait_for(lock, parts_.idle_wait, [&] { return stopping_ || wakes_ != seen; });
  }
}

bool CheckpointDue(TimeUs now, TimeUs last_worked_us, TimeUs last_checkpoint_us) {
  constexpr TimeUs kIdleUs = 1'000'000;
  constexpr TimeUs kEveryUs = 5'000'000;
  return now - last_worked_us >= kIdleUs && now - last_checkpoint_us >= kEveryUs;
}

void WorkerPool::MaybeCheckpoint() {
  const TimeUs now = parts_.now();
  TimeUs last = last_checkpoint_us_.load();
  if (!CheckpointDue(now, last_worked_us_.load(), last)) return;
  if (!last_checkpoint_us_.compare_exchange_strong(last, now)) return;  // another worker does it
  parts_.housekeeping();
}

}  // namespace imagerelay
