// The registry of running work's cancel tokens on its own, with the threads a test joins.
#include "engine/running_work.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <thread>

namespace imagerelay {
namespace {

using std::chrono::milliseconds;

TEST(RunningWorkTest, CancelFiresTheTokenOfOneKeyOnly) {
  RunningWork work;
  auto copy = work.Register("m-aaaaaaa1");
  auto other = work.Register("m-bbbbbbb1");
  EXPECT_TRUE(work.Contains("m-aaaaaaa1"));
  EXPECT_TRUE(work.Cancel("m-aaaaaaa1"));
  EXPECT_TRUE(copy->cancelled());
  EXPECT_FALSE(other->cancelled());
  EXPECT_FALSE(work.Cancel("m-ccccccc1"));  // nothing runs under it

  work.Unregister("m-aaaaaaa1");
  EXPECT_FALSE(work.Contains("m-aaaaaaa1"));
  EXPECT_EQ(work.Keys(), std::vector<std::string>{"m-bbbbbbb1"});
  work.Unregister("m-aaaaaaa1");  // twice: nothing
}

TEST(RunningWorkTest, ATokenAlsoStopsWithItsParent) {
  RunningWork work;
  CancelToken caller;  // e.g. Ctrl-C of the caller of an import
  auto token = work.Register("import:m-aaaaaaa1", &caller);
  EXPECT_FALSE(token->cancelled());
  caller.Cancel();
  EXPECT_TRUE(token->cancelled());
}

TEST(RunningWorkTest, CancelAllFiresEveryTokenAndLaterOnesStartCancelled) {
  RunningWork work;
  auto copy = work.Register("m-aaaaaaa1");
  auto import = work.Register("import:m-bbbbbbb1");
  EXPECT_FALSE(work.Closing());
  EXPECT_TRUE(work.CancelAll());
  EXPECT_TRUE(work.Closing());  // the workers claim nothing more
  EXPECT_TRUE(copy->cancelled());
  EXPECT_TRUE(import->cancelled());
  // Registered after the engine began closing (a worker claiming as Close runs).
  auto late = work.Register("m-ccccccc1");
  EXPECT_TRUE(late->cancelled());
  EXPECT_TRUE(work.Contains("m-ccccccc1"));
  EXPECT_FALSE(work.CancelAll());  // closing already
}

TEST(RunningWorkTest, AScopeRegistersForAsLongAsItLives) {
  RunningWork work;
  {
    RunningWork::Scope scope(work, "import:m-aaaaaaa1");
    EXPECT_TRUE(work.Contains("import:m-aaaaaaa1"));
    EXPECT_FALSE(scope.token().cancelled());
    work.CancelAll();
    EXPECT_TRUE(scope.token().cancelled());
  }
  EXPECT_FALSE(work.Contains("import:m-aaaaaaa1"));
  EXPECT_TRUE(work.Keys().empty());
}

TEST(RunningWorkTest, CancelAndWaitGoneReturnsOnceTheWorkLetGo) {
  RunningWork work;
  auto token = work.Register("m-aaaaaaa1");
  bool swept = false;
  std::thread copy([&] {
    while (!token->cancelled()) std::this_thread::sleep_for(milliseconds(1));
    swept = true;  // what a cancelled copy does before it lets go of its key
    work.Unregister("m-aaaaaaa1");
  });
  EXPECT_TRUE(work.CancelAndWaitGone("m-aaaaaaa1", std::chrono::minutes(1)));
  EXPECT_TRUE(swept);
  EXPECT_FALSE(work.Contains("m-aaaaaaa1"));
  copy.join();
  EXPECT_TRUE(work.CancelAndWaitGone("m-aaaaaaa1", milliseconds(0)));  // nothing runs: at once
}

TEST(RunningWorkTest, CancelAndWaitGoneGivesUpOnWorkThatDoesNotStop) {
  RunningWork work;
  auto token = work.Register("m-aaaaaaa1");
  EXPECT_FALSE(work.CancelAndWaitGone("m-aaaaaaa1", milliseconds(1)));
  EXPECT_TRUE(token->cancelled());
  EXPECT_TRUE(work.Contains("m-aaaaaaa1"));
}

}  // namespace
}  // namespace imagerelay
