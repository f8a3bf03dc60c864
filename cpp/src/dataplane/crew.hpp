// The one worker crew of the data plane: the threads of an import, export, verify or copy
// pass, with the lock and condition variables their work queue uses.
#pragma once

#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "base/write_scope.hpp"
#include "dataplane/buffer_pool.hpp"

namespace imagerelay {

// Threads of one operation. The destructor stops and joins them, so that no thread
// outlives the call whichever way it ends; the first exception a thread throws is kept and
// rethrown on the calling thread by Finish().
class Crew {
 public:
  ~Crew() {
    Stop();
    for (auto& t : threads_) t.join();
  }

  template <typename Fn>
  void Start(Fn fn) {
    {
      std::lock_guard lock(mu);
      ++running_;
    }
    try {
      threads_.emplace_back(MakeBody(std::move(fn)));
    } catch (...) {
      std::lock_guard lock(mu);
      --running_;
      throw;
    }
  }

  // Under `mu`.
  bool idle() const { return running_ == 0; }

  void Stop() {
    {
      std::lock_guard lock(mu);
      stop = true;
    }
    NotifyAll();
  }

  // The buffers the crew's threads (and its caller) wait for: closed when the crew stops, so
  // that nobody waits for a buffer that a failed thread will never give back. The pool is
  // this crew's alone (BufferPool::BindToCrew throws for a pool that served another crew).
  void ClosesOnStop(BufferPool& pool) {
    pool.BindToCrew();
    pool_ = &pool;
  }

  // A condition variable of the caller's that the crew's threads wait on (under `mu`, for a
  // predicate that checks `stop`): woken when the crew stops. Before the threads start.
  void WakesOnStop(std::condition_variable& cv) { more_cvs_.push_back(&cv); }

  void NotifyAll() {
    {
      std::lock_guard lock(mu);
      if (stop && pool_ != nullptr) pool_->Close();
    }
    work_cv.notify_all();
    digest_cv.notify_all();
    caller_cv.notify_all();
    for (std::condition_variable* cv : more_cvs_) cv->notify_all();
  }

  void Finish() {
    for (auto& t : threads_) t.join();
    threads_.clear();
    if (error_) std::rethrow_exception(error_);
  }

  std::mutex mu;
  std::condition_variable work_cv;    // workers wait for jobs
  std::condition_variable digest_cv;  // an import's digest thread waits for the next chunk
  std::condition_variable caller_cv;  // the calling thread waits for a buffer or the end
  bool stop = false;                  // under mu

 private:
  template <typename Fn>
  auto MakeBody(Fn fn) {
    // The crew writes for whom its starter writes (WriteScope).
    return [this, fn = std::move(fn), scope = WriteScope::Current()]() mutable {
      const auto writes_for = WriteScope::Inherit(scope);
      try {
        fn();
      } catch (...) {
        std::lock_guard lock(mu);
        if (!error_) error_ = std::current_exception();
        stop = true;
      }
      {
        std::lock_guard lock(mu);
        --running_;
      }
      NotifyAll();
    };
  }

  std::vector<std::thread> threads_;
  BufferPool* pool_ = nullptr;
  std::vector<std::condition_variable*> more_cvs_;
  std::exception_ptr error_;  // under mu until the threads are joined
  int running_ = 0;           // under mu
};

}  // namespace imagerelay
