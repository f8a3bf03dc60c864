// The rule both catalogs (sqlite_catalog.cpp, postgres_catalog.cpp) keep for their one
// connection: one transaction at a time, and none from inside another's callback (that
// would wait for itself on the mutex: it is refused with an error instead).
#pragma once

#include <atomic>
#include <mutex>
#include <thread>
#include <utility>

#include "imagerelay/error.hpp"

namespace imagerelay {

class OneTransactionAtATime {
 public:
  // Runs `body` holding the connection; throws if this thread is inside `body` already.
  template <class Body>
  void Run(Body&& body) {
    if (owner_.load() == std::this_thread::get_id()) {
      throw Error(codes::kTransferFailed,
                  "catalog: Write()/Read() called from inside a Write()/Read() callback; use the "
                  "CatalogTx you were given");
    }
    std::lock_guard lock(mu_);
    owner_.store(std::this_thread::get_id());
    struct OwnerReset {
      std::atomic<std::thread::id>& owner;
      ~OwnerReset() { owner.store(std::thread::id()); }
    } owner_reset{owner_};
    std::forward<Body>(body)();
  }

  // For the catalog's other uses of its connection (outside any transaction).
  std::mutex& mutex() { return mu_; }

 private:
  std::mutex mu_;
  std::atomic<std::thread::id> owner_;  // the thread inside Run(), to refuse nested calls
};

}  // namespace imagerelay
