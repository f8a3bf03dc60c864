#include "engine/background_threads.hpp"

namespace imagerelay {

bool BackgroundThreads::Spawn(std::function<void()> fn) {
  std::lock_guard lock(mutex_);
  if (joining_) return false;
  threads_.emplace_back(std::move(fn));
  return true;
}

void BackgroundThreads::JoinAll() {
  std::vector<std::thread> threads;
  {
    std::lock_guard lock(mutex_);
    joining_ = true;
    threads.swap(threads_);
  }
  for (auto& thread : threads) {
    if (thread.joinable()) thread.join();
  }
}

}  // namespace imagerelay
