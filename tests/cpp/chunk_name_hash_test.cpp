#include "base/chunk_name_hash.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>

#include "scratch_dir.hpp"

namespace imagerelay {
namespace {

const std::string kName = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
constexpr const char* kChildOut = "IMAGERELAY_TEST_CHUNK_NAME_HASH_OUT";

// A block name's hash depends on a seed of the process's own: names picked to collide in a
// plan's table cannot be computed ahead (each process places them anew). The test runs
// itself again in a new process (a forked one would share the seed), which writes its hash of
// the name where the variable says and stops there.
TEST(ChunkNameHashTest, EachProcessHashesANameItsOwnWay) {
  const size_t here = ChunkNameHash()(kName);
  if (const char* out = std::getenv(kChildOut)) {
    std::ofstream(out) << here;
    return;
  }
  EXPECT_EQ(ChunkNameHash()(kName), here);  // the same within one process
  testing_util::ScratchDir dir;
  const std::string out = (dir.path() / "hash").string();
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::setenv(kChildOut, out.c_str(), 1);
    // Its own gtest report is not this run's.
    const int null = ::open("/dev/null", O_WRONLY);
    if (null >= 0) ::dup2(null, STDOUT_FILENO);
    ::execl("/proc/self/exe", "/proc/self/exe",
            "--gtest_filter=ChunkNameHashTest.EachProcessHashesANameItsOwnWay", nullptr);
    ::_exit(127);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  std::string there;
  std::ifstream(out) >> there;
  ASSERT_FALSE(there.empty());
  EXPECT_NE(std::stoull(there), here);
}

}  // namespace
}  // namespace imagerelay
