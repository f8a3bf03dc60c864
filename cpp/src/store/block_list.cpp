#include "store/block_list.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <random>
#include <stdexcept>
#include <vector>

#include "base/binary_codec.hpp"
#include "base/file_util.hpp"
#include "imagerelay/error.hpp"

namespace imagerelay {
namespace {

void CheckRange(uint64_t first, size_t bytes, uint64_t count) {
  if (bytes % kHashBytes != 0 || first > count || bytes / kHashBytes > count - first) {
    throw std::out_of_range("block range outside the manifest");
  }
}

class MemoryList final : public BlockList {
 public:
  explicit MemoryList(uint64_t count) : bytes_(count * kHashBytes) {}
  uint64_t count() const override { return bytes_.size() / kHashBytes; }
  void Read(uint64_t first, std::span<std::byte> out) const override {
    CheckRange(first, out.size(), count());
    if (!out.empty()) std::memcpy(out.data(), bytes_.data() + first * kHashBytes, out.size());
  }
  void Write(uint64_t first, std::span<const std::byte> in) override {
    CheckRange(first, in.size(), count());
    if (!in.empty()) std::memcpy(bytes_.data() + first * kHashBytes, in.data(), in.size());
  }

 private:
  std::vector<std::byte> bytes_;
};

class FileList final : public BlockList {
 public:
  FileList(UniqueFd fd, uint64_t offset, uint64_t count, std::string what)
      : fd_(std::move(fd)), offset_(offset), count_(count), what_(std::move(what)) {}
  uint64_t count() const override { return count_; }
  void Read(uint64_t first, std::span<std::byte> out) const override {
    CheckRange(first, out.size(), count_);
    if (int err = PreadAll(fd_.get(), out.data(), out.size(), Offset(first)); err != 0) {
      // A short read (-1): the file shrank after it was checked.
      throw IntegrityError(codes::kIntegrityError,
                           "cannot read the block list of " + what_ + ": " +
                               (err < 0 ? std::string("it ends early") : ErrnoText(err)) +
                               "; it was truncated or damaged after it was opened");
    }
  }
  void Write(uint64_t first, std::span<const std::byte> in) override {
    CheckRange(first, in.size(), count_);
    if (int err = PwriteAll(fd_.get(), in.data(), in.size(), Offset(first)); err != 0) {
      throw TransferError(codes::kTransferFailed,
                          "cannot write the block list of " + what_ + ": " + ErrnoText(err) +
                              "; check free space in the home's cache directory");
    }
  }

 private:
  off_t Offset(uint64_t first) const { return static_cast<off_t>(offset_ + first * kHashBytes); }
  UniqueFd fd_;
  uint64_t offset_;
  uint64_t count_;
  std::string what_;
};

}  // namespace

std::shared_ptr<BlockList> MemoryBlockList(uint64_t count) {
  return std::make_shared<MemoryList>(count);
}

std::shared_ptr<BlockList> FileBlockList(UniqueFd fd, uint64_t offset, uint64_t count,
                                         std::string what) {
  return std::make_shared<FileList>(std::move(fd), offset, count, std::move(what));
}

UniqueFd OpenSpoolFile(const std::filesystem::path& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  UniqueFd fd(::open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600));
  if (fd) return fd;
  // No O_TMPFILE on this file system: a named file, unlinked at once.
  std::random_device random;
  for (int attempt = 0; attempt < 16; ++attempt) {
    const std::filesystem::path path = dir / (".spool-" + std::to_string(random()));
    fd.reset(::open(path.c_str(), O_CREAT | O_EXCL | O_RDWR | O_NOFOLLOW | O_CLOEXEC, 0600));
    if (fd) {
      ::unlink(path.c_str());
      return fd;
    }
    if (errno != EEXIST) break;
  }
  throw TransferError(codes::kTransferFailed, "cannot create a temporary file in " + dir.string() +
                                                  ": " + ErrnoText(errno));
}

std::shared_ptr<BlockList> NewBlockList(uint64_t count, const std::filesystem::path& spool_dir) {
  if (count <= kInMemoryBlocks || spool_dir.empty()) return MemoryBlockList(count);
  UniqueFd fd = OpenSpoolFile(spool_dir);
  // A sparse file of holes: all-zero entries until written.
  if (::ftruncate(fd.get(), static_cast<off_t>(count * kHashBytes)) != 0) {
    throw TransferError(codes::kTransferFailed, "cannot size a temporary file in " +
                                                    spool_dir.string() + ": " + ErrnoText(errno));
  }
  return FileBlockList(std::move(fd), 0, count, "an image being imported");
}

}  // namespace imagerelay
