// Directory helpers of the local store: fd-relative listings that never follow a link,
// the write stamp that tells a file is as the store wrote it, stale temporary files.
#pragma once

#include <fcntl.h>
#include <sys/stat.h>

#include <string>
#include <string_view>
#include <vector>

#include "base/unique_fd.hpp"

namespace imagerelay {

inline constexpr int kDirFlags = O_RDONLY | O_DIRECTORY | O_CLOEXEC;
// How a store opens a file of its own to read it: never through a link, and without waiting
// (O_NONBLOCK) when a FIFO was put in its place, so that it is refused as not a regular file
// instead of hanging the reader; O_NONBLOCK does nothing to a regular file.
inline constexpr int kOpenStoreFile = O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK;

// The modification time of a file as the store wrote it (see local_store.hpp): one second
// after the epoch, a time no ordinary write gives a file.
inline constexpr timespec kVerifiedStamp{1, 0};
bool Stamped(const struct stat& st);
// Sets the stamp on an open file; 0 or an errno value.
int Stamp(int fd);
// A file's device, inode, size and change time as text: what tells its bytes from any it may
// hold later. Unlike the modification time (the stamp above), the change time cannot be set
// by hand: a write, truncation, rename, link or time change moves it to the present.
std::string FileMark(const struct stat& st);

enum class EntryKind { kFile, kDirectory, kOther };
struct DirEntry {
  std::string name;
  EntryKind kind;  // as lstat tells it: a symbolic link is kOther
};

// The entries of the directory open at `dir_fd`, or an errno value.
int ListDirectory(int dir_fd, std::vector<DirEntry>& out);

// Two lowercase hex digits: the name of a fan-out directory (chunks/ab, packs/ab).
bool IsPrefixName(std::string_view name);

// Calls fn(prefix, fd) for every chunk prefix directory in the directory open at
// `chunks_fd` that is a real directory: a link in place of one is skipped, never followed.
// Returns 0 or an errno value.
template <typename Fn>
int ForEachPrefixDir(int chunks_fd, Fn fn) {
  std::vector<DirEntry> entries;
  if (int err = ListDirectory(chunks_fd, entries); err != 0) return err;
  for (const DirEntry& entry : entries) {
    if (entry.kind != EntryKind::kDirectory || !IsPrefixName(entry.name)) continue;
    UniqueFd fd(::openat(chunks_fd, entry.name.c_str(), kDirFlags | O_NOFOLLOW));
    if (fd) fn(entry.name, fd.get());
  }
  return 0;
}

// Best effort: temporary files left by writers that died, at once when the writer is known
// to be gone, else once an hour old (it may be another machine's writer, still at work).
void RemoveStaleTemps(int dir_fd);

}  // namespace imagerelay
