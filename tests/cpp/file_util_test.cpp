#include "base/file_util.hpp"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "base/local_dir.hpp"
#include "base/unique_fd.hpp"
#include "scratch_dir.hpp"

namespace imagerelay {
namespace {

using testing_util::ScratchDir;

uintptr_t Address(const DirectIoBuffer& buffer) {
  return reinterpret_cast<uintptr_t>(buffer.get());
}

TEST(DirectIoBufferTest, SmallBuffersArePageAligned) {
  for (size_t size :
       {size_t{1}, size_t{4095}, size_t{4096}, size_t{65537}, size_t{(2 << 20) - 1}}) {
    DirectIoBuffer buffer = AllocateDirectIoBuffer(size);
    ASSERT_NE(buffer.get(), nullptr);
    EXPECT_EQ(Address(buffer) % kDirectIoAlign, 0u) << size;
    std::memset(buffer.get(), 0xab, size);  // all of it is writable
  }
}

TEST(DirectIoBufferTest, LargeBuffersStartOnAHugePage) {
  for (size_t size : {size_t{2} << 20, size_t{4} << 20, (size_t{4} << 20) + 4096 + 17}) {
    DirectIoBuffer buffer = AllocateDirectIoBuffer(size);
    ASSERT_NE(buffer.get(), nullptr);
    EXPECT_EQ(Address(buffer) % (2 << 20), 0u) << size;
    std::memset(buffer.get(), 0x5a, size);
    EXPECT_EQ(buffer[size - 1], std::byte{0x5a});
  }
}

// The process's mapped memory (VmSize of /proc/self/status), in KiB.
long MappedKib() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmSize:", 0) == 0) return std::stol(line.substr(7));
  }
  return -1;
}

TEST(DirectIoBufferTest, ManyBuffersComeAndGoWithoutLeaking) {
  // Every mapping, with the slack around the aligned part, is given back: 2000 leaked
  // 4 MiB buffers would map 8 GiB more.
  const long before = MappedKib();
  ASSERT_GT(before, 0);
  for (int i = 0; i < 2000; ++i) {
    DirectIoBuffer a = AllocateDirectIoBuffer(4 << 20);
    DirectIoBuffer b = AllocateDirectIoBuffer(12345);
    std::memset(a.get(), i & 0xff, 4 << 20);
    std::memset(b.get(), i & 0xff, 12345);
  }
  EXPECT_LT(MappedKib() - before, 64 * 1024);
}

TEST(DirectIoBufferTest, TakesAnODirectRoundTrip) {
  // The scratch directory may be on tmpfs, which has no O_DIRECT: then the working
  // directory (the build tree, on a disk) takes the file.
  ScratchDir dir;
  constexpr size_t kSize = 4 << 20;
  DirectIoBuffer out = AllocateDirectIoBuffer(kSize);
  for (size_t i = 0; i < kSize; ++i) out[i] = static_cast<std::byte>(i * 7 + 3);
  for (const std::filesystem::path& place : {dir.path(), std::filesystem::current_path()}) {
    const auto path = place / ("direct-" + std::to_string(::getpid()) + ".bin");
    UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_DIRECT, 0644));
    if (!fd && errno == EINVAL) {
      ::unlink(path.c_str());  // open may create the file before refusing O_DIRECT
      continue;
    }
    ASSERT_TRUE(fd) << path;
    int write_err = PwriteAll(fd.get(), out.get(), kSize, 0);
    DirectIoBuffer in = AllocateDirectIoBuffer(kSize);
    int read_err = PreadAll(fd.get(), in.get(), kSize, 0);
    ::unlink(path.c_str());
    ASSERT_EQ(write_err, 0);
    ASSERT_EQ(read_err, 0);
    EXPECT_EQ(std::memcmp(in.get(), out.get(), kSize), 0);
    return;
  }
  GTEST_SKIP() << "neither " << dir.path() << " nor the working directory takes O_DIRECT";
}

TEST(TempNameTest, TellsWhetherTheWriterIsGone) {
  const std::string mine = TempName("m-abcd1234.json");
  EXPECT_TRUE(mine.starts_with(".tmp-m-abcd1234.json-")) << mine;
  EXPECT_NE(mine.find("-" + std::to_string(::getpid()) + "-"), std::string::npos) << mine;
  EXPECT_FALSE(TempWriterIsGone(mine));  // this process is alive

  std::string theirs;  // the name a child process gives, once it has exited
  int pipe_fds[2];
  ASSERT_EQ(::pipe(pipe_fds), 0);
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    const std::string name = TempName("m-abcd1234.json");
    ::_exit(::write(pipe_fds[1], name.data(), name.size()) == static_cast<ssize_t>(name.size())
                ? 0
                : 1);
  }
  ::close(pipe_fds[1]);
  char buf[256];
  ssize_t n = ::read(pipe_fds[0], buf, sizeof(buf));
  ::close(pipe_fds[0]);
  ASSERT_GT(n, 0);
  theirs.assign(buf, static_cast<size_t>(n));
  ASSERT_EQ(::waitpid(pid, nullptr, 0), pid);
  EXPECT_TRUE(TempWriterIsGone(theirs)) << theirs;

  // Names whose writer cannot be told: an older release's, another machine's, others.
  const std::string other_machine =
      theirs.substr(0, theirs.size() - 16 - 1 - std::to_string(pid).size() - 1 - 8) + "00000000-" +
      std::to_string(pid) + "-0123456789abcdef";
  ASSERT_EQ(other_machine.size(), theirs.size());
  for (const std::string& name :
       {other_machine, std::string(".tmp-m-abcd1234.json-1-2"), std::string(".tmp-x"),
        std::string(".tmp--"), std::string("m-abcd1234.json"), std::string("")}) {
    EXPECT_FALSE(TempWriterIsGone(name)) << name;
  }
}

// A live writer's temporary file, stamped (its mtime set to the fixed "verified" time)
// before it is renamed, is not another process's stale leftover.
TEST(RemoveStaleTempsTest, KeepsAStampedTempOfALiveWriter) {
  ScratchDir dir;
  const std::string name = TempName("pack");
  UniqueFd fd(::open((dir.path() / name).c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644));
  ASSERT_TRUE(fd);
  ASSERT_EQ(Stamp(fd.get()), 0);
  UniqueFd dir_fd(::open(dir.path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  RemoveStaleTemps(dir_fd.get());
  EXPECT_TRUE(std::filesystem::exists(dir.path() / name));
}

}  // namespace
}  // namespace imagerelay
