// ByteSource over a local file or block device, with hole detection through SEEK_DATA.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <limits>
#include <string>

#include "file_util.hpp"
#include "imagerelay/error.hpp"
#include "imagerelay/image_io.hpp"
#include "unique_fd.hpp"

namespace imagerelay {
namespace {

constexpr uint64_t kNoEnd = std::numeric_limits<uint64_t>::max();

[[noreturn]] void Invalid(const std::string& message) {
  throw ValidationError(codes::kInvalidParameter, message);
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
  if (S_ISDIR(st.st_mode)) Invalid(p + " is a directory; give the path of an image file");
  if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
    Invalid(p + " is not a regular file or a block device; copy the image to a file first");
  }
  // O_NONBLOCK: should the path have been swapped for a FIFO since stat, open must not hang.
  UniqueFd fd(::open(p.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
  if (!fd) {
    Invalid("cannot open image file " + p + ": " + ErrnoText(errno) +
            "; make it readable by this user");
  }
  if (::fstat(fd.get(), &st) != 0 || !(S_ISREG(st.st_mode) || S_ISBLK(st.st_mode))) {
    Invalid(p + " is not a regular file or a block device; copy the image to a file first");
  }
  ::fcntl(fd.get(), F_SETFL, ::fcntl(fd.get(), F_GETFL) & ~O_NONBLOCK);

  uint64_t size = static_cast<uint64_t>(st.st_size);
  if (S_ISBLK(st.st_mode)) {
    off_t end = ::lseek(fd.get(), 0, SEEK_END);
    if (end < 0) Invalid("cannot tell the size of block device " + p + ": " + ErrnoText(errno));
    size = static_cast<uint64_t>(end);
  }
  ::posix_fadvise(fd.get(), 0, 0, POSIX_FADV_SEQUENTIAL);
  return std::make_unique<FileSource>(std::move(fd), size, p);
}

}  // namespace imagerelay
