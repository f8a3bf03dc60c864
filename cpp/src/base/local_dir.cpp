#include "base/local_dir.hpp"

#include <dirent.h>
#include <unistd.h>

#include <cerrno>
#include <ctime>
#include <memory>

#include "base/file_util.hpp"
#include "imagerelay/ids.hpp"

namespace imagerelay {
namespace {

// Temporary files whose writer cannot be told gone (TempWriterIsGone) wait this long.
constexpr time_t kStaleTempAgeSeconds = 3600;

}  // namespace

bool Stamped(const struct stat& st) {
  return st.st_mtim.tv_sec == kVerifiedStamp.tv_sec && st.st_mtim.tv_nsec == kVerifiedStamp.tv_nsec;
}

int Stamp(int fd) {
  const timespec times[2] = {{0, UTIME_OMIT}, kVerifiedStamp};
  return ::futimens(fd, times) == 0 ? 0 : errno;
}

std::string FileMark(const struct stat& st) {
  return std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino) + ":" +
         std::to_string(st.st_size) + ":" + std::to_string(st.st_ctim.tv_sec) + "." +
         std::to_string(st.st_ctim.tv_nsec);
}

int ListDirectory(int dir_fd, std::vector<DirEntry>& out) {
  // fdopendir owns the fd it is given and reads from its offset: a fresh one.
  int fd = ::openat(dir_fd, ".", kDirFlags);
  if (fd < 0) return errno;
  DIR* dir = ::fdopendir(fd);
  if (dir == nullptr) {
    int err = errno;
    ::close(fd);
    return err;
  }
  std::unique_ptr<DIR, int (*)(DIR*)> closer(dir, &::closedir);
  for (;;) {
    errno = 0;
    const dirent* entry = ::readdir(dir);
    if (entry == nullptr) return errno;
    std::string_view name = entry->d_name;
    if (name == "." || name == "..") continue;
    EntryKind kind = entry->d_type == DT_REG   ? EntryKind::kFile
                     : entry->d_type == DT_DIR ? EntryKind::kDirectory
                                               : EntryKind::kOther;
    struct stat st;
    if (entry->d_type == DT_UNKNOWN &&
        ::fstatat(dir_fd, entry->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
      kind = S_ISREG(st.st_mode)   ? EntryKind::kFile
             : S_ISDIR(st.st_mode) ? EntryKind::kDirectory
                                   : EntryKind::kOther;
    }
    out.push_back({std::string(name), kind});
  }
}

bool IsPrefixName(std::string_view name) { return IsLowerHex(name, 2); }

void RemoveStaleTemps(int dir_fd) {
  std::vector<DirEntry> entries;
  if (ListDirectory(dir_fd, entries) != 0) return;
  const time_t now = std::time(nullptr);
  for (const DirEntry& entry : entries) {
    if (entry.kind != EntryKind::kFile || !entry.name.starts_with(kTempPrefix)) continue;
    struct stat st;
    // A stamped file's age by its ctime: a writer stamps its temporary file's mtime (Stamp)
    // with a fixed old time before renaming it, which made a live writer's file look old to
    // another process's sweep (a pack then failed to commit: "No such file or directory").
    if (!TempWriterIsGone(entry.name) &&
        (::fstatat(dir_fd, entry.name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0 ||
         now - (Stamped(st) ? st.st_ctime : st.st_mtime) < kStaleTempAgeSeconds)) {
      continue;
    }
    ::unlinkat(dir_fd, entry.name.c_str(), 0);  // not a durable step: a dead writer's temp
  }
}

}  // namespace imagerelay
