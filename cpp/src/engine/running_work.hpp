// The cancel tokens of work running in this process: copies by destination image id, imports
// by ImportKey(image id) (lease.hpp). CancelCopy fires one and waits for its work to let go;
// Engine::Close fires them all, and any registered after it starts cancelled. Work
// unregisters when it has finished with its bytes (a failed copy after its sweep).
#pragma once

#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "imagerelay/cancel.hpp"

namespace imagerelay {

class RunningWork {
 public:
  RunningWork() = default;
  RunningWork(const RunningWork&) = delete;
  RunningWork& operator=(const RunningWork&) = delete;

  // Registers work under `key` (replacing what was there); its token also counts as
  // cancelled once `parent` (which must outlive it) is. Cancelled at once when closing.
  std::shared_ptr<CancelToken> Register(const std::string& key,
                                        const CancelToken* parent = nullptr);
  // The work of `key` is over (nothing if none is registered).
  void Unregister(const std::string& key);
  // Fires the token of `key`; false if no work is registered under it.
  bool Cancel(const std::string& key);
  // Cancel, then waits until the work unregisters or `timeout` passes; false if it is still
  // registered then.
  bool CancelAndWaitGone(const std::string& key, std::chrono::milliseconds timeout);
  // Closing: fires every token, and every token registered from now on starts cancelled.
  // False if it was called before.
  bool CancelAll();
  // Whether CancelAll was called: no new work is to start.
  bool Closing() const;
  bool Contains(const std::string& key) const;
  // The keys of the work registered now.
  std::vector<std::string> Keys() const;

  // Registers work for as long as it lives.
  class Scope {
   public:
    Scope(RunningWork& work, std::string key, const CancelToken* parent = nullptr)
        : work_(work), key_(std::move(key)), token_(work_.Register(key_, parent)) {}
    ~Scope() { work_.Unregister(key_); }
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;
    const CancelToken& token() const { return *token_; }

   private:
    RunningWork& work_;
    const std::string key_;
    const std::shared_ptr<CancelToken> token_;
  };

 private:
  mutable std::mutex mutex_;
  std::condition_variable gone_;                                // notified when work unregisters
  bool closing_ = false;                                        // under mutex_
  std::map<std::string, std::shared_ptr<CancelToken>> tokens_;  // under mutex_
};

}  // namespace imagerelay
