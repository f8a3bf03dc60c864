// The copy workers on their own: claims, idle work and the clock are the test's, the
// workers' threads are joined by the test. An idle worker looks again only when woken (its
// idle wait is an hour), so every look the tests see was made by Wake.
#include "engine/worker_pool.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

namespace imagerelay {
namespace {

class WorkerPoolTest : public ::testing::Test {
 protected:
  ~WorkerPoolTest() override {
    if (pool_) pool_->Stop();
    JoinAll();
  }

  WorkerPool& Pool(int workers) {
    pool_ = std::make_unique<WorkerPool>(WorkerPool::Parts{
        .workers = workers,
        .spawn = [this](std::function<void()> fn) { threads_.emplace_back(std::move(fn)); },
        .run_one_claim =
            [this] {
              std::function<void()> during;
              {
                std::lock_guard lock(mutex_);
                if (queued_ == 0) return false;
                --queued_;
                during = during_claim_;
              }
              if (during) during();  // as the copy runs
              Changed([&] { ++claims_run_; });
              return true;
            },
        .sweep_pending =
            [this] {
              std::function<void()> when_idle;
              {
                std::lock_guard lock(mutex_);
                when_idle = when_idle_;
              }
              if (when_idle) when_idle();
              Changed([&] { ++idle_rounds_; });
            },
        .housekeeping = [this] { Changed([&] { ++checkpoints_; }); },
        .idle_wait = std::chrono::hours(1),
        .now = [this] { return now_.load(); }});
    return *pool_;
  }

  void Queue(int claims) {
    Changed([&] { queued_ += claims; });
  }
  void Changed(const std::function<void()>& change) {
    {
      std::lock_guard lock(mutex_);
      change();
    }
    changed_.notify_all();
  }
  // Waits until `done` holds (under mutex_); false if it never does (a worker that is not
  // woken would wait an hour).
  bool WaitFor(const std::function<bool()>& done) {
    std::unique_lock lock(mutex_);
    return changed_.wait_for(lock, std::chrono::minutes(1), done);
  }
  void JoinAll() {
    for (auto& thread : threads_) thread.join();
    threads_.clear();
  }

  std::unique_ptr<WorkerPool> pool_;
  std::vector<std::thread> threads_;
  std::atomic<TimeUs> now_{100'000'000};  // the pool's clock
  std::mutex mutex_;
  std::condition_variable changed_;
  int queued_ = 0;  // claims waiting, under mutex_ (as are the counts below)
  int claims_run_ = 0;
  int idle_rounds_ = 0;
  int checkpoints_ = 0;
  std::function<void()> during_claim_;
  std::function<void()> when_idle_;
};

TEST_F(WorkerPoolTest, RunsClaimsUntilNoneIsLeftThenTheIdleWorkThenStops) {
  Queue(7);
  WorkerPool& pool = Pool(3);
  pool.Start();
  EXPECT_EQ(threads_.size(), 3u);
  ASSERT_TRUE(WaitFor([&] { return idle_rounds_ == 3; })) << "the workers never went idle";
  pool.Stop();
  JoinAll();  // each worker ends
  std::lock_guard lock(mutex_);
  EXPECT_EQ(claims_run_, 7);
  EXPECT_EQ(queued_, 0);
  EXPECT_EQ(idle_rounds_, 3);
  EXPECT_EQ(checkpoints_, 0);  // copies ran just now (the pool's clock stands still)
}

TEST_F(WorkerPoolTest, AnIdleWorkerLooksAgainWhenWoken) {
  WorkerPool& pool = Pool(1);
  pool.Start();
  ASSERT_TRUE(WaitFor([&] { return idle_rounds_ == 1; }));
  Queue(2);     // a job was queued...
  pool.Wake();  // ...and the worker told
  ASSERT_TRUE(WaitFor([&] { return claims_run_ == 2 && idle_rounds_ == 2; }))
      << "the worker was not woken";
}

TEST_F(WorkerPoolTest, AWakeBeforeTheWorkerWaitsIsNotLost) {
  WorkerPool& pool = Pool(1);
  when_idle_ = [&] {
    // A job queued after the worker found none, before it waits.
    Changed([&] {
      when_idle_ = nullptr;
      queued_ += 1;
    });
    pool.Wake();
  };
  pool.Start();
  ASSERT_TRUE(WaitFor([&] { return claims_run_ == 1 && idle_rounds_ == 2; }))
      << "the wake-up was lost";
}

TEST(CheckpointDueTest, AfterASecondIdleAtMostEveryFiveSeconds) {
  constexpr TimeUs kSecond = 1'000'000;
  const TimeUs now = 100 * kSecond;
  EXPECT_TRUE(CheckpointDue(now, 0, 0));  // never: at once
  EXPECT_TRUE(CheckpointDue(now, now - kSecond, now - 5 * kSecond));
  EXPECT_FALSE(CheckpointDue(now, now - kSecond + 1, 0));      // a copy ran just now
  EXPECT_FALSE(CheckpointDue(now, 0, now - 5 * kSecond + 1));  // checkpointed just now
  EXPECT_FALSE(CheckpointDue(now, now, now));
}

TEST_F(WorkerPoolTest, AClaimThatThrowsIsLoggedAndTheWorkerGoesOn) {
  WorkerPool& pool = Pool(1);
  int calls = 0;
  during_claim_ = [&] {
    if (++calls == 1) throw std::runtime_error("the catalog is locked");
  };
  Queue(3);
  pool.Start();
  ASSERT_TRUE(WaitFor([&] { return idle_rounds_ == 1; }));  // as when nothing is claimable
  pool.Wake();
  ASSERT_TRUE(WaitFor([&] { return idle_rounds_ == 2; }));
  std::lock_guard lock(mutex_);
  EXPECT_EQ(queued_, 0);
  EXPECT_EQ(claims_run_, 2);  // the one that threw did not run
}

TEST_F(WorkerPoolTest, AnIdlePoolCheckpointsTheCatalogOnce) {
  WorkerPool& pool = Pool(3);
  pool.Start();
  // Nothing ran for long: one worker checkpoints, the others find it done (the pool's clock
  // stands still).
  ASSERT_TRUE(WaitFor([&] { return idle_rounds_ == 3 && checkpoints_ == 1; }));
  pool.Stop();
  JoinAll();
  std::lock_guard lock(mutex_);
  EXPECT_EQ(checkpoints_, 1);
}

TEST_F(WorkerPoolTest, StopEndsAWorkerAfterTheCopyItRuns) {
  WorkerPool& pool = Pool(1);
  during_claim_ = [&] { pool.Stop(); };  // the engine closes during a copy
  Queue(3);
  pool.Start();
  JoinAll();
  std::lock_guard lock(mutex_);
  EXPECT_EQ(claims_run_, 1);
  EXPECT_EQ(queued_, 2);  // left for the next process
  EXPECT_EQ(idle_rounds_, 0);
}

TEST_F(WorkerPoolTest, StopWakesIdleWorkers) {
  WorkerPool& pool = Pool(2);
  pool.Start();
  ASSERT_TRUE(WaitFor([&] { return idle_rounds_ == 2; }));
  pool.Stop();
  JoinAll();  // would wait an hour if Stop did not wake them
  std::lock_guard lock(mutex_);
  EXPECT_EQ(idle_rounds_, 2);
}

}  // namespace
}  // namespace imagerelay
