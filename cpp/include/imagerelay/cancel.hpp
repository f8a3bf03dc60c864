// A cancellation flag checked between chunks and inside transfers.
#pragma once

#include <atomic>

namespace imagerelay {

class CancelToken {
 public:
  void Cancel() { cancelled_.store(true, std::memory_order_relaxed); }
  bool cancelled() const { return cancelled_.load(std::memory_order_relaxed); }

 private:
  std::atomic<bool> cancelled_{false};
};

// Thrown inside a worker when its CancelToken fires; caught by the engine, never by users.
struct Cancelled {};

}  // namespace imagerelay
