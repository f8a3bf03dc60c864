// A cancellation flag checked between chunks and inside transfers.
#pragma once

#include <atomic>

namespace imagerelay {

// A token made with a parent also counts as cancelled once the parent is (the parent
// must outlive it): a caller's token then stops the work a component cancels on its own.
class CancelToken {
 public:
  explicit CancelToken(const CancelToken* parent = nullptr) : parent_(parent) {}
  CancelToken(const CancelToken&) = delete;
  CancelToken& operator=(const CancelToken&) = delete;

  void Cancel() { cancelled_.store(true, std::memory_order_relaxed); }
  bool cancelled() const {
    return cancelled_.load(std::memory_order_relaxed) || (parent_ && parent_->cancelled());
  }

 private:
  std::atomic<bool> cancelled_{false};
  const CancelToken* parent_;
};

// Thrown inside a worker when its CancelToken fires; caught by the engine, never by users.
struct Cancelled {};

}  // namespace imagerelay
