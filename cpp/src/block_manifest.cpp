#include "block_manifest.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cstring>

#include "binary_codec.hpp"
#include "file_util.hpp"
#include "imagerelay/error.hpp"

namespace imagerelay {
namespace {

constexpr char kMagic[8] = {'I', 'R', 'M', 'A', 'N', 'I', 'F', '1'};
constexpr size_t kHeaderBytes = 8 + 4 + 4 + 8 + kHashBytes + 8;
constexpr size_t kBufferBytes = 1 << 20;  // the stream's only memory
constexpr std::string_view kDigestPrefix = "sha256:";

void StartListHash(Sha256& hash, uint64_t size, uint32_t block_size) {
  // As Manifest::ChunkListDigest, so the catalog's record applies to either form.
  const std::string head = "imagerelay chunk list v1\n" + std::to_string(size) + "\n" +
                           std::to_string(block_size) + "\n";
  hash.Update(head.data(), head.size());
}

[[noreturn]] void Damaged(const std::filesystem::path& path, const std::string& why) {
  throw IntegrityError(codes::kIntegrityError,
                       "manifest " + path.string() + " is damaged (" + why +
                           "); run `imagerelay scrub`, or replicate or import the image again");
}

[[noreturn]] void IoFailed(const std::filesystem::path& path, const std::string& what, int err) {
  throw TransferError(codes::kTransferFailed,
                      "cannot " + what + " manifest " + path.string() + ": " + ErrnoText(err));
}

uint64_t BlockCount(uint64_t size, uint32_t block_size) {
  return block_size == 0 ? 0 : (size + block_size - 1) / block_size;
}

}  // namespace

BlockManifestWriter::BlockManifestWriter(const std::filesystem::path& path, uint64_t size,
                                         uint32_t block_size)
    : path_(path) {
  if (block_size == 0) throw std::invalid_argument("the block size must be greater than 0");
  header_ = {block_size, size, "", BlockCount(size, block_size)};
  fd_.reset(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644));
  if (!fd_) IoFailed(path, "create", errno);
  buffer_.reserve(kBufferBytes);
  // The header's digest is filled in by Finish(); it is hashed then, not now.
  buffer_.resize(kHeaderBytes);
  StartListHash(list_hash_, size, block_size);
}

BlockManifestWriter::~BlockManifestWriter() = default;

void BlockManifestWriter::Write(const void* data, size_t n) {
  const auto* p = static_cast<const std::byte*>(data);
  buffer_.insert(buffer_.end(), p, p + n);
  if (buffer_.size() >= kBufferBytes) FlushBuffer();
}

void BlockManifestWriter::FlushBuffer() {
  if (int err = PwriteAll(fd_.get(), buffer_.data(), buffer_.size(),
                          static_cast<off_t>(written_));
      err != 0) {
    IoFailed(path_, "write", err);
  }
  written_ += buffer_.size();
  buffer_.clear();
}

void BlockManifestWriter::Append(const std::string& hash) {
  if (appended_ == header_.count) throw std::logic_error("more blocks than the image has");
  std::byte bytes[kHashBytes];
  HashToBytes(hash, bytes);
  list_hash_.Update(hash.data(), hash.size());
  list_hash_.Update("\n", 1);
  Write(bytes, kHashBytes);
  ++appended_;
}

std::string BlockManifestWriter::Finish(const std::string& digest) {
  if (appended_ != header_.count) throw std::logic_error("fewer blocks than the image has");
  FlushBuffer();
  // The header, now that the digest is known; then the file's own hash over all of it.
  std::byte header[kHeaderBytes];
  std::memcpy(header, kMagic, 8);
  PutLe(header + 8, header_.block_size, 4);
  PutLe(header + 12, 0, 4);
  PutLe(header + 16, header_.size, 8);
  HashToBytes(digest.starts_with(kDigestPrefix) ? digest.substr(kDigestPrefix.size()) : "",
             header + 24);
  PutLe(header + 24 + kHashBytes, header_.count, 8);
  if (int err = PwriteAll(fd_.get(), header, kHeaderBytes, 0); err != 0) {
    IoFailed(path_, "write", err);
  }
  // One more pass over the file for its hash: the header is written last (a pass over
  // 32 bytes per block, once per commit).
  UniqueFd in(::open(path_.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
  if (!in) IoFailed(path_, "reopen", errno);
  std::vector<std::byte> chunk(kBufferBytes);
  for (;;) {
    ssize_t n = ::read(in.get(), chunk.data(), chunk.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) IoFailed(path_, "read back", errno);
    if (n == 0) break;
    file_hash_.Update(chunk.data(), static_cast<size_t>(n));
  }
  std::byte trailer[kHashBytes];
  HashToBytes(file_hash_.FinishHex(), trailer);
  if (int err = PwriteAll(fd_.get(), trailer, kHashBytes, static_cast<off_t>(written_));
      err != 0) {
    IoFailed(path_, "write", err);
  }
  if (::fsync(fd_.get()) != 0) IoFailed(path_, "sync", errno);
  if (int err = fd_.Close(); err != 0) IoFailed(path_, "close", err);
  return list_hash_.FinishHex();
}

std::unique_ptr<BlockManifestReader> BlockManifestReader::Open(
    const std::filesystem::path& path) {
  std::unique_ptr<BlockManifestReader> reader(new BlockManifestReader());
  reader->path_ = path;
  reader->fd_.reset(::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
  if (!reader->fd_) IoFailed(path, "open", errno);
  std::byte header[kHeaderBytes];
  if (!reader->Read(header, kHeaderBytes) || std::memcmp(header, kMagic, 8) != 0) {
    Damaged(path, "not a manifest of this format");
  }
  BlockManifestHeader& h = reader->header_;
  h.block_size = static_cast<uint32_t>(GetLe(header + 8, 4));
  h.size = GetLe(header + 16, 8);
  const std::string digest = BytesToHash(header + 24);
  h.digest = digest.empty() ? "" : std::string(kDigestPrefix) + digest;
  h.count = GetLe(header + 24 + kHashBytes, 8);
  if (h.block_size == 0 || h.count != BlockCount(h.size, h.block_size)) {
    Damaged(path, "its block count does not fit its size");
  }
  StartListHash(reader->list_hash_, h.size, h.block_size);
  return reader;
}

bool BlockManifestReader::Read(void* out, size_t n) {
  auto* p = static_cast<std::byte*>(out);
  while (n > 0) {
    if (buffer_pos_ == buffer_.size()) {
      buffer_.resize(kBufferBytes);
      ssize_t got;
      do {
        got = ::read(fd_.get(), buffer_.data(), buffer_.size());
      } while (got < 0 && errno == EINTR);
      if (got < 0) IoFailed(path_, "read", errno);
      buffer_.resize(static_cast<size_t>(got));
      buffer_pos_ = 0;
      if (got == 0) return false;
    }
    const size_t take = std::min(n, buffer_.size() - buffer_pos_);
    std::memcpy(p, buffer_.data() + buffer_pos_, take);
    file_hash_.Update(p, take);
    buffer_pos_ += take;
    p += take;
    n -= take;
  }
  return true;
}

bool BlockManifestReader::Next(std::string& hash) {
  if (read_ == header_.count) {
    if (!list_digest_.empty()) return false;
    const std::string expected = file_hash_.FinishHex();
    std::byte trailer[kHashBytes];
    // The trailer is not part of what it hashes: read it around file_hash_.
    Sha256 ignored;
    std::swap(ignored, file_hash_);
    if (!Read(trailer, kHashBytes)) Damaged(path_, "it ends before its checksum");
    std::byte extra;
    if (Read(&extra, 1)) Damaged(path_, "bytes after its checksum");
    if (BytesToHash(trailer) != expected) Damaged(path_, "its checksum does not match");
    list_digest_ = list_hash_.FinishHex();
    return false;
  }
  std::byte bytes[kHashBytes];
  if (!Read(bytes, kHashBytes)) Damaged(path_, "it ends before its last block");
  hash = BytesToHash(bytes);
  list_hash_.Update(hash.data(), hash.size());
  list_hash_.Update("\n", 1);
  ++read_;
  return true;
}

}  // namespace imagerelay
