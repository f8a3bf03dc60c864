// The engine's background threads on their own.
#include "engine/background_threads.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>

namespace imagerelay {
namespace {

TEST(BackgroundThreadsTest, JoinAllWaitsForEveryThreadAndRefusesNewOnes) {
  BackgroundThreads threads;
  std::atomic<int> done{0};
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(threads.Spawn([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));  // still busy at JoinAll
      ++done;
    }));
  }
  threads.JoinAll();
  EXPECT_EQ(done, 3);

  bool ran = false;
  EXPECT_FALSE(threads.Spawn([&] { ran = true; }));  // closed: dropped, never run
  threads.JoinAll();                                 // again: nothing to join
  EXPECT_FALSE(ran);
}

}  // namespace
}  // namespace imagerelay
