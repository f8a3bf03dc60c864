#include "local_store.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <new>
#include <cstring>
#include <ctime>
#include <system_error>

#include "file_util.hpp"
#include "imagerelay/error.hpp"
#include "imagerelay/sha256.hpp"
#include "unique_fd.hpp"

namespace imagerelay {
namespace fs = std::filesystem;
namespace {

constexpr std::string_view kRecordSuffix = ".json";
// The modification time of a chunk file as this store wrote it (see local_store.hpp): one
// second after the epoch, a time no ordinary write gives a file.
constexpr timespec kVerifiedStamp{1, 0};

bool Stamped(const struct stat& st) {
  return st.st_mtim.tv_sec == kVerifiedStamp.tv_sec && st.st_mtim.tv_nsec == kVerifiedStamp.tv_nsec;
}

// Sets the stamp on an open chunk file; 0 or an errno value.
int Stamp(int fd) {
  const timespec times[2] = {{0, UTIME_OMIT}, kVerifiedStamp};
  return ::futimens(fd, times) == 0 ? 0 : errno;
}
constexpr auto kStaleTempAge = std::chrono::hours(1);

bool IsLowerHex(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); }

// A user-supplied name, printable and short, for an error message.
std::string Quote(std::string_view s) {
  std::string out = "\"";
  for (char c : s.substr(0, 80)) {
    if (c >= 0x20 && c < 0x7f) {
      out += c;
    } else {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", static_cast<unsigned char>(c));
      out += buf;
    }
  }
  if (s.size() > 80) out += "...";
  return out + "\"";
}

void RequireHash(const std::string& hash) {
  if (!IsChunkHash(hash)) {
    throw ValidationError(codes::kInvalidParameter,
                          "invalid chunk name " + Quote(hash) +
                              ": a chunk is named by its SHA-256 as 64 lowercase hex digits");
  }
}

void RequireImageId(const std::string& id) {
  if (!IsImageId(id)) {
    throw ValidationError(codes::kInvalidParameter,
                          "invalid image id " + Quote(id) +
                              ": an image id is \"m-\" followed by 8 of [0-9a-z]");
  }
}

[[noreturn]] void Unavailable(const std::string& uri, const fs::path& dir,
                              const std::string& what) {
  throw TransferError(codes::kStoreUnavailable,
                      "region store " + uri + " is unavailable: " + what +
                          "; make sure " + dir.string() +
                          " is a writable directory on a mounted file system, or change the "
                          "region's store URI");
}

[[noreturn]] void Failed(const std::string& what) {
  throw TransferError(codes::kTransferFailed, what);
}

}  // namespace

bool IsChunkHash(std::string_view s) {
  return s.size() == 64 && std::all_of(s.begin(), s.end(), IsLowerHex);
}

bool IsImageId(std::string_view s) {
  if (s.size() != 10 || !s.starts_with("m-")) return false;
  return std::all_of(s.begin() + 2, s.end(), [](char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z');
  });
}

LocalStore::LocalStore(fs::path root, std::string uri)
    : root_(std::move(root)),
      chunks_dir_(root_ / "chunks"),
      manifests_dir_(root_ / "manifests"),
      images_dir_(root_ / "images"),
      uri_(uri.empty() ? root_.string() : std::move(uri)) {}

fs::path LocalStore::ChunkDir(const std::string& hash) const {
  return chunks_dir_ / hash.substr(0, 2);
}

fs::path LocalStore::ChunkPath(const std::string& hash) const {
  RequireHash(hash);
  return ChunkDir(hash) / hash;
}

void LocalStore::EnsureDir(const fs::path& dir, std::atomic<bool>& known) {
  if (known.load(std::memory_order_acquire)) return;
  std::error_code ec;
  bool created = fs::create_directories(dir, ec);
  if (ec) Unavailable(uri_, dir, "cannot create directory " + dir.string() + ": " + ec.message());
  // A new directory entry must survive a crash like any file we rename into it.
  if (created) FsyncDir(dir.parent_path());
  known.store(true, std::memory_order_release);
}

// All 256 prefix directories at once: creating them one by one as chunks arrive would cost
// an fsync of chunks/ for nearly every chunk of a first import.
void LocalStore::EnsureChunkDirs() {
  if (chunk_dirs_known_.load(std::memory_order_acquire)) return;
  EnsureDir(root_, root_known_);
  EnsureDir(chunks_dir_, chunks_known_);
  bool created = false;
  for (int i = 0; i < 256; ++i) {
    char prefix[3];
    std::snprintf(prefix, sizeof(prefix), "%02x", i);
    const fs::path dir = chunks_dir_ / prefix;
    if (::mkdir(dir.c_str(), 0755) == 0) {
      created = true;
    } else if (errno != EEXIST) {
      Unavailable(uri_, dir, "cannot create directory " + dir.string() + ": " + ErrnoText(errno));
    }
  }
  if (created) FsyncDir(chunks_dir_);
  chunk_dirs_known_.store(true, std::memory_order_release);
}

void LocalStore::Check() {
  for (const fs::path& dir : {root_, chunks_dir_, manifests_dir_, images_dir_}) {
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) {
      Unavailable(uri_, dir, "cannot create directory " + dir.string() + ": " + ec.message());
    }
    if (!fs::is_directory(dir, ec)) Unavailable(uri_, dir, dir.string() + " is not a directory");
  }
  for (const fs::path& dir : {chunks_dir_, manifests_dir_, images_dir_}) {
    const fs::path probe = dir / TempName("probe");
    UniqueFd fd(::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
    if (!fd) {
      Unavailable(uri_, dir, "cannot create a file in " + dir.string() + ": " + ErrnoText(errno));
    }
    int err = PwriteAll(fd.get(), "x", 1, 0);
    if (err == 0) err = fd.Close();
    ::unlink(probe.c_str());
    if (err != 0) {
      Unavailable(uri_, dir, "cannot write to " + probe.string() + ": " + ErrnoText(err));
    }
  }
  root_known_ = chunks_known_ = manifests_known_ = images_known_ = true;
  // The store may have been removed and made again since we last looked: check anew.
  chunk_dirs_known_ = false;
  EnsureChunkDirs();

}

void LocalStore::RemoveLeftovers() {
  RemoveStaleTemps(root_);
  RemoveStaleTemps(manifests_dir_);
  RemoveStaleTemps(images_dir_);
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(chunks_dir_, ec)) {
    if (entry.is_directory(ec)) RemoveStaleTemps(entry.path());
  }
}

// Best effort: temporary files left by a process killed mid-write.
void LocalStore::RemoveStaleTemps(const fs::path& dir) {
  std::error_code ec;
  const auto cutoff = fs::file_time_type::clock::now() - kStaleTempAge;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    if (!entry.path().filename().string().starts_with(kTempPrefix)) continue;
    std::error_code time_ec;
    auto mtime = fs::last_write_time(entry.path(), time_ec);
    if (!time_ec && mtime < cutoff) fs::remove(entry.path(), time_ec);
  }
}

bool LocalStore::HasChunk(const std::string& hash, const CancelToken* /*cancel*/) {
  const fs::path path = ChunkPath(hash);
  struct stat st;
  if (::stat(path.c_str(), &st) == 0) return true;
  if (errno == ENOENT || errno == ENOTDIR) return false;
  Failed("cannot look up chunk " + hash + " in store " + uri_ + ": " + ErrnoText(errno));
}

std::optional<uint64_t> LocalStore::StoredChunkSize(const std::string& hash) {
  const fs::path path = ChunkPath(hash);
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return std::nullopt;
  return static_cast<uint64_t>(st.st_size);
}

bool LocalStore::HasChunkOfLength(const std::string& hash, uint64_t length,
                                  const CancelToken* /*cancel*/) {
  const fs::path path = ChunkPath(hash);
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT || errno == ENOTDIR) return false;
    Failed("cannot look up chunk " + hash + " in store " + uri_ + ": " + ErrnoText(errno));
  }
  if (!S_ISREG(st.st_mode) || static_cast<uint64_t>(st.st_size) != length) return false;
  return Stamped(st) || Recheck(hash, length);
}

bool LocalStore::Recheck(const std::string& hash, uint64_t length) {
  thread_local std::vector<std::byte> bytes;
  try {
    GetChunk(hash, bytes);
  } catch (const TransferError&) {
    return false;  // gone meanwhile, or unreadable: to be written anew
  }
  if (bytes.size() == length && Sha256Hex(bytes.data(), bytes.size()) == hash) {
    UniqueFd fd(::open(ChunkPath(hash).c_str(), O_WRONLY | O_CLOEXEC));
    if (fd) Stamp(fd.get());  // best effort: unstamped only costs another check
    return true;
  }
  QuarantineChunk(hash);
  ReportDamage(hash, "chunk " + hash + " in store " + uri_ +
                         " was written to after it was stored and its bytes no longer match "
                         "its name");
  return false;
}

void LocalStore::PutChunk(const std::string& hash, std::span<const std::byte> data,
                          const CancelToken* /*cancel*/) {
  // Content-addressed: the same name holds the same bytes. One of another length is damaged
  // (truncated, say) and is replaced by the rename below.
  if (HasChunkOfLength(hash, data.size())) return;
  EnsureChunkDirs();
  WriteChunkFile(hash, data);
}

namespace {

// Chunks are committed in batches of about this many bytes (see PendingChunk), or sooner
// when the oldest has waited this long: a slow copy still checkpoints its progress often,
// so that a crash costs little to resume.
constexpr uint64_t kCommitBatchBytes = 64ULL << 20;
constexpr auto kCommitBatchAge = std::chrono::milliseconds(250);

// An aligned copy of `data` in the calling thread's buffer.
std::span<const std::byte> BounceBuffer(std::span<const std::byte> data) {
  std::byte* buffer = ThreadDirectIoBuffer(data.size());
  if (buffer == nullptr) return data;  // no memory for a copy: write the original, buffered
  std::memcpy(buffer, data.data(), data.size());
  return {buffer, data.size()};
}

// Reads the `size` bytes of the file open with O_DIRECT at `fd` into `out`, through the
// calling thread's aligned buffer. Returns 0, an errno value, -1 when the file ended
// early, or EINVAL when the file system refused the direct read (then read it buffered).
int ReadDirect(int fd, size_t size, std::byte* out) {
  const size_t rounded = (size + kDirectIoAlign - 1) / kDirectIoAlign * kDirectIoAlign;
  std::byte* buffer = ThreadDirectIoBuffer(rounded);
  if (buffer == nullptr) return EINVAL;
  size_t done = 0;
  while (done < size) {
    // Whole aligned blocks: the last one may reach past the end, where the read stops.
    ssize_t n = ::pread(fd, buffer + done, rounded - done, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errno;
    if (n == 0) return -1;
    done += static_cast<size_t>(n);
  }
  std::memcpy(out, buffer, size);
  return 0;
}

}  // namespace

void LocalStore::WriteChunkFile(const std::string& hash, std::span<const std::byte> data) {
  const fs::path dir = ChunkDir(hash);
  const fs::path tmp = dir / TempName(hash);
  auto fail = [&](const std::string& what, int err) {
    ::unlink(tmp.c_str());
    Failed("cannot store chunk " + hash + " in store " + uri_ + ": " + what + ": " +
           ErrnoText(err) + "; check free space and permissions");
  };
  // Chunks go around the page cache (O_DIRECT): no dirty pages for the batch's syncfs to
  // write back, and a big copy does not push everything else out of memory. The unaligned
  // tail, if any, is written normally.
  // Unaligned bytes (a copy's buffers) are first copied to an aligned buffer: a memcpy in
  // place of the kernel's copy into the cache, and none of the cache's bookkeeping.
  const bool aligned_data = reinterpret_cast<uintptr_t>(data.data()) % kDirectIoAlign == 0;
  if (!aligned_data && direct_io_.load(std::memory_order_relaxed) &&
      data.size() >= kDirectIoAlign) {
    data = BounceBuffer(data);
  }
  const bool direct = direct_io_.load(std::memory_order_relaxed) && data.size() >= kDirectIoAlign &&
                      reinterpret_cast<uintptr_t>(data.data()) % kDirectIoAlign == 0;
  UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | (direct ? O_DIRECT : 0),
                     0644));
  if (!fd && direct && errno == EINVAL) {  // the file system has no O_DIRECT
    direct_io_.store(false, std::memory_order_relaxed);
    ::unlink(tmp.c_str());  // open may have created it before refusing O_DIRECT
    fd = UniqueFd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
  }
  if (!fd) fail("cannot create " + tmp.string(), errno);
  size_t written = 0;
  if (direct && direct_io_.load(std::memory_order_relaxed)) {
    const size_t aligned = data.size() / kDirectIoAlign * kDirectIoAlign;
    int err = PwriteAll(fd.get(), data.data(), aligned, 0);
    if (err == 0) {
      written = aligned;
    } else if (err != EINVAL) {
      fail("cannot write " + tmp.string(), err);
    }
    // Back to buffered writes for the tail, or for all of it if O_DIRECT was refused.
    ::fcntl(fd.get(), F_SETFL, ::fcntl(fd.get(), F_GETFL) & ~O_DIRECT);
  }
  if (int err = PwriteAll(fd.get(), data.data() + written, data.size() - written,
                          static_cast<off_t>(written));
      err != 0) {
    fail("cannot write " + tmp.string(), err);
  }
  if (int err = Stamp(fd.get()); err != 0) fail("cannot set the time of " + tmp.string(), err);
  if (int err = fd.Close(); err != 0) fail("cannot close " + tmp.string(), err);
  std::vector<PendingChunk> batch;
  {
    std::lock_guard lock(pending_mutex_);
    const auto now = std::chrono::steady_clock::now();
    if (pending_.empty()) pending_since_ = now;
    pending_.push_back({tmp, dir / hash, data.size()});
    pending_bytes_ += data.size();
    if (pending_bytes_ >= kCommitBatchBytes || now - pending_since_ >= kCommitBatchAge) {
      batch.swap(pending_);
      pending_bytes_ = 0;
    }
  }
  if (!batch.empty()) CommitPending(std::move(batch));
}

void LocalStore::CommitPending(std::vector<PendingChunk> batch) {
  try {
    SyncFilesystem();  // the bytes are on disk before the names are
  } catch (...) {
    for (const auto& chunk : batch) ::unlink(chunk.tmp.c_str());
    throw;
  }
  for (const auto& chunk : batch) {
    if (::rename(chunk.tmp.c_str(), chunk.final_path.c_str()) != 0) {
      int err = errno;
      for (const auto& left : batch) ::unlink(left.tmp.c_str());
      Failed("cannot rename " + chunk.tmp.string() + " to " + chunk.final_path.string() +
             " in store " + uri_ + ": " + ErrnoText(err));
    }
  }
  renames_unsynced_.store(true, std::memory_order_release);
}

void LocalStore::Flush() {
  std::vector<PendingChunk> batch;
  {
    std::lock_guard lock(pending_mutex_);
    batch.swap(pending_);
    pending_bytes_ = 0;
  }
  if (!batch.empty()) CommitPending(std::move(batch));
  // The new directory entries reach the disk before anything that names the chunks.
  if (renames_unsynced_.exchange(false, std::memory_order_acq_rel)) SyncFilesystem();
}

void LocalStore::SyncFilesystem() {
  UniqueFd fd(::open(root_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd || ::syncfs(fd.get()) != 0) {
    Failed("cannot flush store " + uri_ + " to disk: " + ErrnoText(errno) +
           "; check the disk and free space");
  }
}

LocalStore::~LocalStore() {
  for (const auto& chunk : pending_) ::unlink(chunk.tmp.c_str());
}

void LocalStore::GetChunk(const std::string& hash, std::vector<std::byte>& out,
                          const CancelToken* /*cancel*/) {
  const fs::path path = ChunkPath(hash);
  // Around the page cache, as chunks are written: a 4 MiB read reaches the disk whole, and
  // reading a big image does not push everything else out of memory.
  bool direct = direct_io_.load(std::memory_order_relaxed);
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | (direct ? O_DIRECT : 0)));
  if (!fd && direct && errno == EINVAL) {  // the file system has no O_DIRECT
    direct = false;
    fd = UniqueFd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  }
  if (!fd) {
    if (errno == ENOENT || errno == ENOTDIR) {
      Failed("chunk " + hash + " is missing from store " + uri_ +
             "; the image's bytes are incomplete, replicate or import it again");
    }
    Failed("cannot open chunk " + hash + " in store " + uri_ + ": " + ErrnoText(errno));
  }
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) {
    Failed("cannot stat chunk " + hash + " in store " + uri_ + ": " + ErrnoText(errno));
  }
  out.resize(static_cast<size_t>(st.st_size));
  int err = direct ? ReadDirect(fd.get(), out.size(), out.data()) : 0;
  if (!direct || err == EINVAL) {  // no O_DIRECT, or refused for this read: read buffered
    if (direct) ::fcntl(fd.get(), F_SETFL, ::fcntl(fd.get(), F_GETFL) & ~O_DIRECT);
    err = PreadAll(fd.get(), out.data(), out.size(), 0);
  }
  if (err != 0) {
    Failed("cannot read chunk " + hash + " in store " + uri_ + ": " +
           (err < 0 ? std::string("file ended early") : ErrnoText(err)));
  }
}

void LocalStore::DeleteChunk(const std::string& hash) {
  const fs::path path = ChunkPath(hash);
  if (::unlink(path.c_str()) != 0 && errno != ENOENT && errno != ENOTDIR) {
    Failed("cannot delete chunk " + hash + " from store " + uri_ + ": " + ErrnoText(errno));
  }
}

void LocalStore::QuarantineChunk(const std::string& hash) {
  const fs::path path = ChunkPath(hash);
  const fs::path dir = root_ / "quarantine";
  // Never through a symlink out of the store: only a real directory of ours takes it.
  ::mkdir(dir.c_str(), 0700);
  struct stat st;
  const bool own_dir = ::lstat(dir.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
  const fs::path aside = dir / (hash + "." + std::to_string(::time(nullptr)));
  if (!own_dir || ::rename(path.c_str(), aside.c_str()) != 0) {
    DeleteChunk(hash);  // no room aside: out of use is what matters
    return;
  }
  FsyncDir(path.parent_path());
}

std::vector<std::string> LocalStore::ListChunks() {
  std::vector<std::string> hashes;
  std::error_code ec;
  fs::directory_iterator top(chunks_dir_, ec);
  if (ec) {
    if (ec == std::errc::no_such_file_or_directory) return hashes;
    Failed("cannot list " + chunks_dir_.string() + " in store " + uri_ + ": " + ec.message());
  }
  for (const auto& prefix_entry : top) {
    const std::string prefix = prefix_entry.path().filename().string();
    if (prefix.size() != 2 || !IsLowerHex(prefix[0]) || !IsLowerHex(prefix[1])) continue;
    fs::directory_iterator inner(prefix_entry.path(), ec);
    if (ec) {
      if (ec == std::errc::not_a_directory) continue;
      Failed("cannot list " + prefix_entry.path().string() + " in store " + uri_ + ": " +
             ec.message());
    }
    for (const auto& entry : inner) {
      std::string name = entry.path().filename().string();
      // Temporary files start with '.', so they never pass this test.
      if (IsChunkHash(name) && name.compare(0, 2, prefix) == 0) hashes.push_back(std::move(name));
    }
  }
  std::sort(hashes.begin(), hashes.end());
  return hashes;
}

void LocalStore::WriteRecord(const fs::path& dir, std::atomic<bool>& known,
                             const std::string& image_id, const std::string& text,
                             const char* what) {
  RequireImageId(image_id);
  EnsureDir(root_, root_known_);
  EnsureDir(dir, known);
  std::string error = WriteFileAtomically(
      dir, image_id + std::string(kRecordSuffix),
      std::as_bytes(std::span<const char>(text.data(), text.size())));
  if (!error.empty()) {
    Failed(std::string("cannot store the ") + what + " of " + image_id + " in store " + uri_ +
           ": " + error + "; check free space and permissions");
  }
}

std::optional<std::string> LocalStore::ReadRecord(const fs::path& dir,
                                                  const std::string& image_id,
                                                  const char* what) {
  RequireImageId(image_id);
  const fs::path path = dir / (image_id + std::string(kRecordSuffix));
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) {
    if (errno == ENOENT || errno == ENOTDIR) return std::nullopt;
    Failed(std::string("cannot open the ") + what + " of " + image_id + " in store " + uri_ +
           ": " + ErrnoText(errno));
  }
  std::string text;
  char buf[64 * 1024];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      Failed(std::string("cannot read the ") + what + " of " + image_id + " in store " + uri_ +
             ": " + ErrnoText(errno));
    }
    if (n == 0) break;
    text.append(buf, static_cast<size_t>(n));
  }
  return text;
}

void LocalStore::DeleteRecord(const fs::path& dir, const std::string& image_id,
                              const char* what) {
  RequireImageId(image_id);
  const fs::path path = dir / (image_id + std::string(kRecordSuffix));
  if (::unlink(path.c_str()) != 0) {
    if (errno == ENOENT || errno == ENOTDIR) return;
    Failed(std::string("cannot delete the ") + what + " of " + image_id + " from store " + uri_ +
           ": " + ErrnoText(errno));
  }
  FsyncDir(dir);
}

std::vector<std::string> LocalStore::ListRecords(const fs::path& dir) {
  std::vector<std::string> ids;
  std::error_code ec;
  fs::directory_iterator it(dir, ec);
  if (ec) {
    if (ec == std::errc::no_such_file_or_directory) return ids;
    Failed("cannot list " + dir.string() + " in store " + uri_ + ": " + ec.message());
  }
  for (const auto& entry : it) {
    std::string name = entry.path().filename().string();
    if (!name.ends_with(kRecordSuffix)) continue;
    name.resize(name.size() - kRecordSuffix.size());
    if (IsImageId(name)) ids.push_back(std::move(name));
  }
  std::sort(ids.begin(), ids.end());
  return ids;
}

void LocalStore::PutManifest(const std::string& image_id, const Manifest& manifest) {
  Flush();  // every chunk it names is durable and visible first
  WriteRecord(manifests_dir_, manifests_known_, image_id, manifest.ToJson(), "manifest");
}

std::optional<Manifest> LocalStore::GetManifest(const std::string& image_id) {
  std::optional<std::string> text = ReadRecord(manifests_dir_, image_id, "manifest");
  if (!text) return std::nullopt;
  try {
    return Manifest::FromJson(*text);
  } catch (const Error& e) {
    throw IntegrityError(codes::kIntegrityError,
                         "the manifest of " + image_id + " in store " + uri_ +
                             " is damaged (" + e.message() + "); import or replicate the "
                             "image again");
  }
}

void LocalStore::DeleteManifest(const std::string& image_id) {
  DeleteRecord(manifests_dir_, image_id, "manifest");
}

std::vector<std::string> LocalStore::ListManifests() { return ListRecords(manifests_dir_); }

void LocalStore::PutImageRecord(const std::string& image_id, const std::string& json) {
  WriteRecord(images_dir_, images_known_, image_id, json, "image record");
}

std::optional<std::string> LocalStore::GetImageRecord(const std::string& image_id) {
  return ReadRecord(images_dir_, image_id, "image record");
}

void LocalStore::DeleteImageRecord(const std::string& image_id) {
  DeleteRecord(images_dir_, image_id, "image record");
}

}  // namespace imagerelay
