#include "dataplane/buffer_pool.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <future>
#include <set>
#include <stdexcept>
#include <thread>
#include <vector>

#include "dataplane/crew.hpp"

namespace imagerelay {
namespace {

using std::chrono::milliseconds;

uintptr_t AddressOf(const BufferPool::Buffer& buffer) {
  return reinterpret_cast<uintptr_t>(buffer.data());
}

TEST(BufferPoolTest, HandsOutAtMostItsBuffers) {
  BufferPool pool(64 << 10, 3);
  EXPECT_EQ(pool.count(), 3u);
  std::vector<BufferPool::Buffer> taken;
  for (int i = 0; i < 3; ++i) {
    taken.push_back(pool.TryAcquire());
    ASSERT_TRUE(taken.back());
  }
  EXPECT_EQ(pool.available(), 0u);
  EXPECT_FALSE(pool.TryAcquire());
  EXPECT_FALSE(pool.AcquireFor(milliseconds(20)));
  // Three distinct buffers that do not overlap.
  std::set<uintptr_t> starts;
  for (const auto& b : taken) starts.insert(AddressOf(b));
  ASSERT_EQ(starts.size(), 3u);
  for (auto it = std::next(starts.begin()); it != starts.end(); ++it) {
    EXPECT_GE(*it - *std::prev(it), 64u << 10);
  }
  taken.pop_back();  // given back by the handle's destructor
  EXPECT_EQ(pool.available(), 1u);
  EXPECT_TRUE(pool.TryAcquire());
}

TEST(BufferPoolTest, BuffersArePageAlignedWholePages) {
  for (size_t size : {size_t{1}, size_t{4096}, size_t{65536}, size_t{65537}, size_t{4} << 20}) {
    BufferPool pool(size, 4);
    EXPECT_EQ(pool.buffer_size() % kDirectIoAlign, 0u) << size;
    EXPECT_GE(pool.buffer_size(), size);
    std::vector<BufferPool::Buffer> all;
    for (size_t i = 0; i < pool.count(); ++i) all.push_back(pool.TryAcquire());
    for (const auto& b : all) {
      EXPECT_EQ(AddressOf(b) % kDirectIoAlign, 0u) << size;
      EXPECT_EQ(b.size(), pool.buffer_size());
      b.data()[b.size() - 1] = std::byte{1};  // the whole buffer is usable
    }
  }
}

TEST(BufferPoolTest, TheBufferGivenBackLastIsTakenNext) {
  // Its pages are the ones most likely still resident: a pass over a big image touches no
  // more memory than it keeps in flight.
  BufferPool pool(8192, 4);
  auto a = pool.TryAcquire();
  auto b = pool.TryAcquire();
  const uintptr_t b_at = AddressOf(b);
  const size_t b_index = b.index();
  b.Release();
  EXPECT_FALSE(b);
  auto again = pool.TryAcquire();
  EXPECT_EQ(AddressOf(again), b_at);
  EXPECT_EQ(again.index(), b_index);
  // A thousand rounds take the same buffer.
  std::set<uintptr_t> seen;
  for (int i = 0; i < 1000; ++i) {
    auto x = pool.TryAcquire();
    seen.insert(AddressOf(x));
  }
  EXPECT_EQ(seen.size(), 1u);
}

TEST(BufferPoolTest, AcquireWaitsForABufferGivenBack) {
  BufferPool pool(4096, 1);
  auto held = pool.TryAcquire();
  std::atomic<bool> got{false};
  auto waiter = std::async(std::launch::async, [&] {
    auto b = pool.Acquire();
    got = static_cast<bool>(b);
    return AddressOf(b);
  });
  EXPECT_EQ(waiter.wait_for(milliseconds(100)), std::future_status::timeout);
  EXPECT_FALSE(got);
  const uintptr_t at = AddressOf(held);
  held.Release();
  EXPECT_EQ(waiter.get(), at);
  EXPECT_TRUE(got);
}

TEST(BufferPoolTest, AcquireGivesUpWhenTheTokenFires) {
  BufferPool pool(4096, 1);
  auto held = pool.TryAcquire();
  CancelToken cancel;
  auto waiter = std::async(std::launch::async, [&] { return !pool.Acquire(&cancel); });
  EXPECT_EQ(waiter.wait_for(milliseconds(100)), std::future_status::timeout);
  cancel.Cancel();
  EXPECT_TRUE(waiter.get());  // an empty handle
  // A fired token gets nothing even from a pool with buffers free.
  held.Release();
  EXPECT_FALSE(pool.Acquire(&cancel));
  EXPECT_TRUE(pool.Acquire());
}

TEST(BufferPoolTest, AStoppedCrewClosesItsPoolAndWakesTheWaiters) {
  BufferPool pool(4096, 1);
  auto held = pool.TryAcquire();
  std::atomic<bool> waited_out{false};
  {
    Crew crew;
    crew.ClosesOnStop(pool);
    crew.Start([&] { waited_out = !pool.Acquire(); });  // waits: the one buffer is held
    crew.Start([] { throw std::runtime_error("a worker fails"); });
    EXPECT_THROW(crew.Finish(), std::runtime_error);  // joined: the waiter gave up
  }
  EXPECT_TRUE(waited_out);
  EXPECT_TRUE(pool.closed());
  EXPECT_FALSE(pool.TryAcquire());
  held.Release();  // a closed pool still takes its buffers back
  EXPECT_EQ(pool.available(), 0u);
}

// A pool that one crew closes cannot serve a second crew: shared, it hung the digest of an
// image of several manifest windows (the first window's crew closed it, the second's readers
// then never got a buffer). The second binding fails at once instead.
TEST(BufferPoolTest, APoolServesOneCrewOnly) {
  BufferPool pool(4096, 2);
  {
    Crew first;
    first.ClosesOnStop(pool);
  }
  Crew second;
  EXPECT_THROW(second.ClosesOnStop(pool), std::logic_error);
}

TEST(BufferPoolTest, ABufferIsCutToAChunkNeverPastItsEnd) {
  BufferPool pool(65536, 1);
  auto b = pool.TryAcquire();
  EXPECT_EQ(b.first(100).size(), 100u);
  EXPECT_EQ(b.first(100).data(), b.data());
  EXPECT_EQ(b.first(65536).size(), 65536u);
  EXPECT_THROW(b.first(65537), std::length_error);
}

TEST(BufferPoolTest, MovedHandlesGiveTheBufferBackOnce) {
  BufferPool pool(4096, 2);
  auto a = pool.TryAcquire();
  BufferPool::Buffer b = std::move(a);
  EXPECT_FALSE(a);  // NOLINT(bugprone-use-after-move): moved-from handles are empty
  EXPECT_TRUE(b);
  auto c = pool.TryAcquire();
  c = std::move(b);  // c's own buffer goes back first
  EXPECT_EQ(pool.available(), 1u);
  c.Release();
  c.Release();
  EXPECT_EQ(pool.available(), 2u);
}

TEST(BufferPoolTest, CountFollowsTheMemoryWithinBounds) {
  constexpr uint64_t kMiB = 1 << 20;
  EXPECT_EQ(BufferPool::CountFor(256 * kMiB, 4 * kMiB, 2, 12), 12u);  // capped
  EXPECT_EQ(BufferPool::CountFor(16 * kMiB, 4 * kMiB, 2, 12), 4u);    // by memory
  EXPECT_EQ(BufferPool::CountFor(1 * kMiB, 4 * kMiB, 2, 12), 2u);     // never under the floor
  EXPECT_EQ(BufferPool::CountFor(0, 0, 0, 0), 1u);                    // at least one
}

}  // namespace
}  // namespace imagerelay
