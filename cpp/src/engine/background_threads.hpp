// The threads an engine runs its background work on (copy workers, the digester, imports
// with wait=false): Engine::Close joins them all, and none starts after that.
#pragma once

#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace imagerelay {

class BackgroundThreads {
 public:
  BackgroundThreads() = default;
  ~BackgroundThreads() { JoinAll(); }
  BackgroundThreads(const BackgroundThreads&) = delete;
  BackgroundThreads& operator=(const BackgroundThreads&) = delete;

  // Runs `fn` on a new thread; false (and `fn` is dropped) once JoinAll was called.
  bool Spawn(std::function<void()> fn);
  // Refuses new threads from now on and waits for every thread to end: the work they run
  // is stopped first (its CancelToken, WorkerPool::Stop).
  void JoinAll();

 private:
  std::mutex mutex_;
  bool joining_ = false;              // under mutex_
  std::vector<std::thread> threads_;  // under mutex_
};

}  // namespace imagerelay
