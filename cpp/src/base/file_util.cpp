#include "base/file_util.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <new>
#include <random>

#include "base/fail_point.hpp"
#include "base/unique_fd.hpp"
#include "imagerelay/sha256.hpp"

namespace imagerelay {
namespace {

// Picks the right overload of GNU vs XSI strerror_r.
[[maybe_unused]] const char* StrerrorResult(int rc, const char* buf) {
  return rc == 0 ? buf : "unknown error";
}
[[maybe_unused]] const char* StrerrorResult(const char* msg, const char*) { return msg; }

}  // namespace

std::string ErrnoText(int err) {
  char buf[256] = {};
  return StrerrorResult(strerror_r(err, buf, sizeof(buf)), buf);
}

namespace {

// Where a pid names one process: this boot of this machine (its boot id, else its host
// name) and this process's pid namespace (containers on one machine have their own).
const std::string& WriterTag() {
  static const std::string tag = [] {
    std::string where;
    std::getline(std::ifstream("/proc/sys/kernel/random/boot_id"), where);
    if (where.empty()) {
      char host[256] = {};
      ::gethostname(host, sizeof(host) - 1);
      where = host;
    }
    char ns[64];
    ssize_t n = ::readlink("/proc/self/ns/pid", ns, sizeof(ns));
    if (n > 0) where.append(ns, static_cast<size_t>(n));
    return Sha256Hex(where.data(), where.size()).substr(0, 8);
  }();
  return tag;
}

}  // namespace

std::string TempName(std::string_view stem) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  char suffix[64];
  std::snprintf(suffix, sizeof(suffix), "-%s-%d-%016llx", WriterTag().c_str(),
                static_cast<int>(::getpid()), static_cast<unsigned long long>(rng()));
  std::string name(kTempPrefix);
  name += stem;
  name += suffix;
  return name;
}

bool TempWriterIsGone(std::string_view name) {
  if (!name.starts_with(kTempPrefix)) return false;
  // "-<writer>-<pid>-<random>" from the end: the stem may hold '-' itself.
  const size_t random_dash = name.rfind('-');
  if (random_dash == std::string_view::npos || random_dash == 0) return false;
  const size_t pid_dash = name.rfind('-', random_dash - 1);
  if (pid_dash == std::string_view::npos || pid_dash == 0) return false;
  const size_t writer_dash = name.rfind('-', pid_dash - 1);
  if (writer_dash == std::string_view::npos) return false;
  if (name.substr(writer_dash + 1, pid_dash - writer_dash - 1) != WriterTag()) return false;
  const std::string_view digits = name.substr(pid_dash + 1, random_dash - pid_dash - 1);
  pid_t pid = 0;
  auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), pid);
  if (ec != std::errc() || end != digits.data() + digits.size() || pid <= 0) return false;
  return ::kill(pid, 0) != 0 && errno == ESRCH;
}

int PwriteAll(int fd, const void* data, size_t len, off_t offset) {
  const auto* p = static_cast<const char*>(data);
  while (len > 0) {
    ssize_t n = ::pwrite(fd, p, len, offset);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    p += n;
    len -= static_cast<size_t>(n);
    offset += n;
  }
  return 0;
}

int PreadAll(int fd, void* out, size_t len, off_t offset) {
  auto* p = static_cast<char*>(out);
  while (len > 0) {
    ssize_t n = ::pread(fd, p, len, offset);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (n == 0) return -1;
    p += n;
    len -= static_cast<size_t>(n);
    offset += n;
  }
  return 0;
}

int PreadDirect(int fd, std::byte* buffer, size_t capacity, size_t wanted, off_t offset) {
  size_t done = 0;
  while (done < wanted) {
    const ssize_t n =
        ::pread(fd, buffer + done, capacity - done, offset + static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errno;
    done += static_cast<size_t>(n);
    // Nothing, or short of a whole page before `wanted`: the file ended.
    if (n == 0 || (done % kDirectIoAlign != 0 && done < wanted)) return -1;
  }
  return 0;
}

void UnmapDeleter::operator()(std::byte* p) const {
  if (p != nullptr) ::munmap(p, length);
}

DirectIoBuffer AllocateDirectIoBuffer(size_t size) {
  constexpr size_t kHugePage = 2 << 20;
  const size_t rounded = std::max<size_t>(
      kDirectIoAlign, (size + kDirectIoAlign - 1) / kDirectIoAlign * kDirectIoAlign);
  // Reserve a huge page more than needed, then give back what lies outside the aligned part.
  const size_t slack = rounded >= kHugePage ? kHugePage : 0;
  void* mapped =
      ::mmap(nullptr, rounded + slack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mapped == MAP_FAILED) throw std::bad_alloc();
  auto* base = static_cast<std::byte*>(mapped);
  std::byte* start = base;
  if (slack != 0) {
    const auto addr = reinterpret_cast<uintptr_t>(base);
    start = base + ((kHugePage - addr % kHugePage) % kHugePage);
    if (start != base) ::munmap(base, static_cast<size_t>(start - base));
    const size_t tail = static_cast<size_t>((base + rounded + slack) - (start + rounded));
    if (tail != 0) ::munmap(start + rounded, tail);
    ::madvise(start, rounded, MADV_HUGEPAGE);  // a hint: without huge pages it still works
  }
  return DirectIoBuffer(start, UnmapDeleter{rounded});
}

std::byte* ThreadDirectIoBuffer(size_t size) {
  thread_local DirectIoBuffer buffer;
  thread_local size_t capacity = 0;
  if (capacity < size) {
    try {
      buffer = AllocateDirectIoBuffer(size);
    } catch (const std::bad_alloc&) {
      return nullptr;
    }
    capacity = size;
  }
  return buffer.get();
}

std::optional<uint64_t> CachedPages(int fd, uint64_t offset, uint64_t length) {
  // Called by number: the C library headers of this distribution predate it.
  constexpr long kCachestat = 451;
  struct {
    uint64_t off;
    uint64_t len;
  } range{offset, length};
  struct {
    uint64_t nr_cache, nr_dirty, nr_writeback, nr_evicted, nr_recently_evicted;
  } stat{};
  if (length > 0 && ::syscall(kCachestat, fd, &range, &stat, 0) == 0) return stat.nr_cache;
  return std::nullopt;
}

int FsyncDir(const std::filesystem::path& dir) {
  UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd) return errno;
  // not a durable step by itself: each caller passes its own fail point around it
  if (::fsync(fd.get()) != 0) return errno;
  return 0;
}

std::string WriteFileAtomically(const std::filesystem::path& dir, const std::string& name,
                                std::span<const std::byte> data, mode_t mode) {
  UniqueFd dir_fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dir_fd) return "cannot open " + dir.string() + ": " + ErrnoText(errno);
  return WriteFileAtomicallyAt(dir_fd.get(), dir, name, data, mode);
}

std::string WriteFileAtomicallyAt(int dir_fd, const std::filesystem::path& dir,
                                  const std::string& name, std::span<const std::byte> data,
                                  mode_t mode) {
  return WriteFileAtomicallyAt(
      dir_fd, dir, name, [&](int fd) { return PwriteAll(fd, data.data(), data.size(), 0); }, mode);
}

std::string WriteFileAtomicallyAt(int dir_fd, const std::filesystem::path& dir,
                                  const std::string& name, const std::function<int(int fd)>& write,
                                  mode_t mode) {
  const std::string tmp_name = TempName(name);
  const std::filesystem::path tmp = dir / tmp_name;
  UniqueFd fd(::openat(dir_fd, tmp_name.c_str(),
                       O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode));
  if (!fd) return "cannot create " + tmp.string() + ": " + ErrnoText(errno);
  auto fail = [&](const std::string& what, int err) {
    fd.reset();
    ::unlinkat(dir_fd, tmp_name.c_str(), 0);
    return what + ": " + ErrnoText(err);
  };
  int err = 0;
  try {
    err = write(fd.get());
  } catch (...) {
    fd.reset();
    ::unlinkat(dir_fd, tmp_name.c_str(), 0);
    throw;
  }
  if (err != 0) return fail("cannot write " + tmp.string(), err);
  if (::fsync(fd.get()) != 0) return fail("cannot fsync " + tmp.string(), errno);
  if (int err = fd.Close(); err != 0) return fail("cannot close " + tmp.string(), err);
  FailPoint("file.synced");
  // renameat replaces a link named `name` rather than writing where it points.
  if (::renameat(dir_fd, tmp_name.c_str(), dir_fd, name.c_str()) != 0) {
    return fail("cannot rename " + tmp.string() + " to " + (dir / name).string(), errno);
  }
  FailPoint("file.renamed");
  if (::fsync(dir_fd) != 0) return "cannot fsync " + dir.string() + ": " + ErrnoText(errno);
  return "";
}

std::string_view FileTypeName(mode_t mode) {
  if (S_ISREG(mode)) return "a regular file";
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISLNK(mode)) return "a symbolic link";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  return "a special file";
}

}  // namespace imagerelay
