// ByteSource over a local file or block device, with hole detection through SEEK_DATA.
#include <fcntl.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <limits>
#include <string>

#include "base/file_util.hpp"
#include "base/parse_util.hpp"
#include "base/unique_fd.hpp"
#include "imagerelay/error.hpp"
#include "imagerelay/image_io.hpp"

namespace imagerelay {
namespace {

constexpr uint64_t kNoEnd = std::numeric_limits<uint64_t>::max();

// The bytes a regular file or a block device holds now (st_size is 0 for a block device).
// Returns 0 or an errno value.
int CurrentSize(int fd, uint64_t* size) {
  struct stat st;
  if (::fstat(fd, &st) != 0) return errno;
  off_t end = S_ISBLK(st.st_mode) ? ::lseek(fd, 0, SEEK_END) : st.st_size;
  if (end < 0) return errno;
  *size = static_cast<uint64_t>(end);
  return 0;
}

// The name of the pseudo file system `fd` lives on, or nullptr for one that stores bytes.
// Their files are kernel state, not images, and their sizes lie: proc's are 0 bytes yet read
// as text, sysfs's are 4096 whatever they hold. (tmpfs and devtmpfs store bytes: allowed.)
const char* PseudoFileSystem(int fd) {
  struct statfs fs;
  if (::fstatfs(fd, &fs) != 0) return nullptr;
  switch (static_cast<uint32_t>(fs.f_type)) {
    case PROC_SUPER_MAGIC: return "proc";
    case SYSFS_MAGIC: return "sysfs";
    case DEBUGFS_MAGIC: return "debugfs";
    case TRACEFS_MAGIC: return "tracefs";
    case SECURITYFS_MAGIC: return "securityfs";
    case CGROUP_SUPER_MAGIC:
    case CGROUP2_SUPER_MAGIC: return "cgroup";
    case BPF_FS_MAGIC: return "bpf";
    case PSTOREFS_MAGIC: return "pstore";
    case EFIVARFS_MAGIC: return "efivarfs";
    case SELINUX_MAGIC: return "selinuxfs";
    case SMACK_MAGIC: return "smackfs";
    case BINFMTFS_MAGIC: return "binfmt_misc";
    case NSFS_MAGIC: return "nsfs";
    case ANON_INODE_FS_MAGIC: return "anon_inodefs";
    default: return nullptr;
  }
}

// Refuses anything but a regular file or a block device, naming what it is.
void RequireImageFileType(const std::string& p, mode_t mode) {
  if (S_ISDIR(mode)) Invalid(p + " is a directory; give the path of an image file");
  if (!S_ISREG(mode) && !S_ISBLK(mode)) {
    Invalid(p + " is " + std::string(FileTypeName(mode)) +
            ", not a regular file or a block device; copy the image to a file first");
  }
}

class FileSource : public ByteSource {
 public:
  FileSource(UniqueFd fd, uint64_t size, std::string path)
      : fd_(std::move(fd)), size_(size), path_(std::move(path)) {
    // The same open file again, around the page cache: an image is read once, so caching
    // it only costs a copy and pushes out what else is cached. /proc/self/fd reopens the
    // very file validated by the caller, even if the path changed since.
    const std::string self = "/proc/self/fd/" + std::to_string(fd_.get());
    direct_fd_ = UniqueFd(::open(self.c_str(), O_RDONLY | O_CLOEXEC | O_DIRECT));
  }

  bool ConcurrentReads() const override { return true; }

  // Reading stops at size(): that the file still ends there is checked once it is read.
  void CheckUnchanged() override {
    uint64_t now = 0;
    int err = CurrentSize(fd_.get(), &now);
    char probe;
    ssize_t beyond = 0;  // bytes found past the old end
    if (err == 0) beyond = ::pread(fd_.get(), &probe, 1, static_cast<off_t>(size_));
    if (err == 0 && beyond < 0) err = errno;
    if (err != 0) {
      throw TransferError(codes::kTransferFailed,
                          "cannot check the end of " + path_ + ": " + ErrnoText(err));
    }
    if (now == size_ && beyond == 0) return;
    throw TransferError(codes::kTransferFailed, path_ + " changed while it was read: it had " +
                                                    std::to_string(size_) + " bytes and now has " +
                                                    std::to_string(now) +
                                                    "; import it again once nothing writes to it");
  }

  uint64_t size() const override { return size_; }
  std::string describe() const override { return path_; }

  // IsHole and DataBytes are called by one thread at a time (import's reader); lseek moves
  // the shared file offset, which pread ignores. ReadAt may run on several threads.
  bool IsHole(uint64_t offset, uint64_t len) override {
    if (len == 0) return true;
    if (!seek_works_) return false;
    if (!(offset >= hole_begin_ && offset < data_end_)) Lookup(offset);
    if (!seek_works_) return false;
    return offset + len <= data_begin_;
  }

  // Walks the extents once; a file system without SEEK_DATA answers "all data".
  std::optional<uint64_t> DataBytes() override {
    uint64_t data = 0;
    off_t pos = 0;
    while (static_cast<uint64_t>(pos) < size_) {
      off_t begin = ::lseek(fd_.get(), pos, SEEK_DATA);
      if (begin < 0) {
        if (errno == ENXIO) break;  // holes up to the end
        return size_;
      }
      off_t end = ::lseek(fd_.get(), begin, SEEK_HOLE);
      if (end < 0) return size_;
      end = std::min<off_t>(end, static_cast<off_t>(size_));
      if (end <= begin) return size_;  // no progress: do not trust the answers
      data += static_cast<uint64_t>(end - begin);
      pos = end;
    }
    return data;
  }

  void ReadAt(uint64_t offset, std::byte* out, size_t len) override {
    int err = EINVAL;
    if (direct_fd_ && direct_ok_.load(std::memory_order_relaxed) && offset % kDirectIoAlign == 0 &&
        len % kDirectIoAlign == 0 && reinterpret_cast<uintptr_t>(out) % kDirectIoAlign == 0) {
      err = PreadAll(direct_fd_.get(), out, len, static_cast<off_t>(offset));
      if (err == EINVAL) direct_ok_.store(false, std::memory_order_relaxed);  // not supported
    }
    if (err == EINVAL) err = PreadAll(fd_.get(), out, len, static_cast<off_t>(offset));
    if (err == 0) return;
    throw TransferError(codes::kTransferFailed,
                        "cannot read " + std::to_string(len) + " bytes at offset " +
                            std::to_string(offset) + " of " + path_ + ": " +
                            (err < 0 ? std::string("the file ended early (was it truncated "
                                                   "during the import?)")
                                     : ErrnoText(err)));
  }

 private:
  // Caches the extents around `offset`: [hole_begin_, data_begin_) is a hole and
  // [data_begin_, data_end_) holds data, so most queries need no system call.
  void Lookup(uint64_t offset) {
    hole_begin_ = offset;
    off_t data = ::lseek(fd_.get(), static_cast<off_t>(offset), SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) {  // nothing but hole up to the end
        data_begin_ = data_end_ = kNoEnd;
      } else {  // the file system cannot tell: treat everything as data
        seek_works_ = false;
      }
      return;
    }
    data_begin_ = static_cast<uint64_t>(data);
    off_t hole = ::lseek(fd_.get(), data, SEEK_HOLE);
    data_end_ = hole < 0 ? kNoEnd : static_cast<uint64_t>(hole);
    if (data_end_ <= data_begin_) data_end_ = data_begin_ + 1;
  }

  UniqueFd fd_;
  UniqueFd direct_fd_;  // invalid if the file system has no O_DIRECT
  std::atomic<bool> direct_ok_{true};
  uint64_t size_;
  std::string path_;
  bool seek_works_ = true;
  uint64_t hole_begin_ = 0;
  uint64_t data_begin_ = 0;
  uint64_t data_end_ = 0;  // empty cache
};

}  // namespace

std::unique_ptr<ByteSource> OpenFileSource(const std::filesystem::path& path) {
  const std::string& p = path.native();
  if (p.empty()) Invalid("the image file path is empty; give the path of an image file");
  if (HasNul(p)) {
    std::string shown;
    for (char c : p) shown += c == '\0' ? std::string("\\0") : std::string(1, c);
    Invalid("image file path \"" + shown + "\" contains a NUL byte; fix the path");
  }

  struct stat st;
  if (::stat(p.c_str(), &st) != 0) {
    int err = errno;
    if (err == ENOENT || err == ENOTDIR) {
      Invalid("image file " + p + " does not exist; check the path");
    }
    Invalid("cannot access image file " + p + ": " + ErrnoText(err) +
            "; check the path and its permissions");
  }
  // Checked before open too: opening a FIFO or a device can block or act on the device.
  RequireImageFileType(p, st.st_mode);
  // O_NONBLOCK: should the path have been swapped for a FIFO since stat, open must not hang.
  UniqueFd fd(::open(p.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
  if (!fd) {
    Invalid("cannot open image file " + p + ": " + ErrnoText(errno) +
            "; make it readable by this user");
  }
  if (::fstat(fd.get(), &st) != 0) {
    Invalid("cannot access image file " + p + ": " + ErrnoText(errno));
  }
  RequireImageFileType(p, st.st_mode);
  if (const char* pseudo = PseudoFileSystem(fd.get())) {
    Invalid(p + " is on " + pseudo + ", a pseudo file system whose files are kernel state, " +
            "not an image; copy the image to a regular file first");
  }
  ::fcntl(fd.get(), F_SETFL, ::fcntl(fd.get(), F_GETFL) & ~O_NONBLOCK);

  uint64_t size = 0;
  if (int err = CurrentSize(fd.get(), &size); err != 0) {
    Invalid("cannot tell the size of " + p + ": " + ErrnoText(err));
  }
  ::posix_fadvise(fd.get(), 0, 0, POSIX_FADV_SEQUENTIAL);
  return std::make_unique<FileSource>(std::move(fd), size, p);
}

}  // namespace imagerelay
