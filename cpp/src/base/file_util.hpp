// Small POSIX helpers shared by the local store and image export: error text, temporary
// names, full reads/writes and the write-fsync-rename-fsync sequence.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace imagerelay {

// O_DIRECT needs file offsets, lengths and buffer addresses aligned to this.
inline constexpr size_t kDirectIoAlign = 4096;

// Anonymous memory mapped by AllocateDirectIoBuffer, given back with munmap.
struct UnmapDeleter {
  size_t length = 0;
  void operator()(std::byte* p) const;
};
using DirectIoBuffer = std::unique_ptr<std::byte[], UnmapDeleter>;
// At least `size` bytes (rounded up to kDirectIoAlign) at a kDirectIoAlign-aligned address,
// fit for O_DIRECT reads and writes. Buffers of 2 MiB and more start on a 2 MiB boundary and
// ask for transparent huge pages: an O_DIRECT request from 4 KiB pages is split by the
// block layer into several (a virtio disk takes at most 254 segments per request); from
// huge pages it goes to the disk whole. On this project's VM disk that made a 2 GiB import
// a quarter faster. Throws std::bad_alloc.
DirectIoBuffer AllocateDirectIoBuffer(size_t size);
// A direct-I/O buffer of at least `size` bytes that belongs to the calling thread and is kept
// (grown when needed) for its next use; nullptr when there is no memory for it. Whatever it
// holds lasts until the thread's next call: use it within one read or write.
std::byte* ThreadDirectIoBuffer(size_t size);
// How many pages of [offset, offset + length) of the file at `fd` the page cache holds
// (cachestat(2), Linux 6.5); nullopt where the kernel cannot tell.
std::optional<uint64_t> CachedPages(int fd, uint64_t offset, uint64_t length);

// Temporary files start with this; listings skip them.
inline constexpr std::string_view kTempPrefix = ".tmp-";

// strerror(err), thread-safe.
std::string ErrnoText(int err);

// A fresh temporary file name for `stem` in the same directory:
// ".tmp-<stem>-<writer>-<pid>-<random hex>", where <writer> is 8 hex digits that stand for
// this boot of this machine and this process's pid namespace: where <pid> names the writer.
std::string TempName(std::string_view stem);

// True if `name` is a TempName whose writer is gone: made in this boot of this machine and
// pid namespace by a process that no longer exists, so that its file is garbage at once.
// False when that cannot be told (another machine's writer, a name of an older release):
// such a file is only garbage once it is old.
bool TempWriterIsGone(std::string_view name);

// Full-length pwrite/pread, retrying on EINTR. Return 0 or an errno value; PreadAll returns
// -1 when the file ends first.
int PwriteAll(int fd, const void* data, size_t len, off_t offset);
int PreadAll(int fd, void* out, size_t len, off_t offset);
// Reads at least `wanted` bytes from `offset` (a page boundary) of a file open with O_DIRECT
// into `buffer` (page-aligned, `capacity` bytes: `wanted` rounded up to whole pages), in
// whole pages: the last read may stop at the file's end. Returns 0, an errno value (EINVAL:
// the file system refused the direct read), or -1 when the file ends first.
int PreadDirect(int fd, std::byte* buffer, size_t capacity, size_t wanted, off_t offset);

// fsync of a directory, so that a rename or a new entry in it survives a crash.
int FsyncDir(const std::filesystem::path& dir);

// Writes `data` to dir/name atomically: a temporary file in `dir` created with `mode`,
// fsync, rename over `name`, fsync of `dir`. Returns "" on success, else what failed and
// why (the temporary file is removed).
std::string WriteFileAtomically(const std::filesystem::path& dir, const std::string& name,
                                std::span<const std::byte> data, mode_t mode = 0644);
// The same in the directory open at `dir_fd` (not O_PATH); `dir` only names it in messages.
// Follows no symbolic link in place of the temporary file or `name`.
std::string WriteFileAtomicallyAt(int dir_fd, const std::filesystem::path& dir,
                                  const std::string& name, std::span<const std::byte> data,
                                  mode_t mode = 0644);
// The same with the content written by `write(fd)`, which returns 0 or an errno: a file too
// large to hold in memory goes to disk as it is produced.
std::string WriteFileAtomicallyAt(int dir_fd, const std::filesystem::path& dir,
                                  const std::string& name, const std::function<int(int fd)>& write,
                                  mode_t mode = 0644);

// What kind of file `mode` (st_mode) describes, for messages: "a regular file", "a directory",
// "a symbolic link", "a FIFO", "a socket", "a character device", "a block device".
std::string_view FileTypeName(mode_t mode);

// True if the string holds a NUL byte (never valid in a path).
inline bool HasNul(std::string_view s) { return s.find('\0') != std::string_view::npos; }

}  // namespace imagerelay
