#include "store/local_store.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <memory>
#include <new>
#include <system_error>

#include <nlohmann/json.hpp>

#include "base/fail_point.hpp"
#include "base/file_util.hpp"
#include "base/local_dir.hpp"
#include "base/unique_fd.hpp"
#include "imagerelay/error.hpp"
#include "imagerelay/ids.hpp"
#include "imagerelay/log.hpp"
#include "imagerelay/sha256.hpp"
#include "store/block_manifest.hpp"

namespace imagerelay {
namespace fs = std::filesystem;
namespace {

constexpr std::string_view kRecordSuffix = ".json";
constexpr std::string_view kManifestSuffix = ".bin";
constexpr const char* kChunksDir = "chunks";
constexpr const char* kManifestsDir = "manifests";
constexpr const char* kImagesDir = "images";

// A user-supplied name, printable and short, for an error message.
std::string QuoteName(std::string_view s) {
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
                          "invalid chunk name " + QuoteName(hash) +
                              ": a chunk is named by its SHA-256 as 64 lowercase hex digits");
  }
}

void RequireImageId(const std::string& id) {
  if (!IsImageId(id)) {
    throw ValidationError(
        codes::kInvalidParameter,
        "invalid image id " + QuoteName(id) + ": an image id is \"m-\" followed by 8 of [0-9a-z]");
  }
}

[[noreturn]] void Unavailable(const std::string& uri, const fs::path& dir,
                              const std::string& what) {
  throw TransferError(codes::kStoreUnavailable,
                      "region store " + uri + " is unavailable: " + what + "; make sure " +
                          dir.string() +
                          " is a writable directory on a mounted file system, or change the "
                          "region's store URI");
}

[[noreturn]] void Failed(const std::string& what) {
  throw TransferError(codes::kTransferFailed, what);
}

[[noreturn]] void NotAStore(const std::string& uri, const fs::path& root, const std::string& why) {
  throw TransferError(codes::kStoreUnavailable,
                      "region store " + uri + " is unavailable: " + root.string() +
                          " is not an imagerelay store: " + why +
                          "; give a new or empty directory, or one that holds a store");
}

// `path` could not be opened as a directory of the store (`err` from open).
[[noreturn]] void NotADirectory(const std::string& uri, const fs::path& path, int err) {
  struct stat st;
  if ((err == ENOTDIR || err == ELOOP) && ::lstat(path.c_str(), &st) == 0) {
    const char* what = S_ISLNK(st.st_mode) ? " is a symbolic link" : " is not a directory";
    throw TransferError(codes::kStoreUnavailable,
                        "region store " + uri + " is unavailable: " + path.string() + what +
                            "; a store keeps its files in real directories below its root "
                            "and never follows a link out of it: put a directory there (move "
                            "in what the link points to), or change the region's store URI");
  }
  Unavailable(uri, path, "cannot open " + path.string() + ": " + ErrnoText(err));
}

}  // namespace

bool IsChunkHash(std::string_view s) { return IsLowerHex(s, 64); }

bool IsImageId(std::string_view s) {
  if (s.size() != 10 || !s.starts_with("m-")) return false;
  return std::all_of(s.begin() + 2, s.end(),
                     [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z'); });
}

bool IsStoreDirName(std::string_view name) {
  return name == kChunksDir || name == kManifestsDir || name == kImagesDir || name == kPacksDir ||
         name == kIndexDir || name == kQuarantineDir;
}

std::string ForeignEntriesProblem(std::vector<std::string> foreign) {
  if (foreign.empty()) return "";
  std::sort(foreign.begin(), foreign.end());
  std::string listed;
  for (size_t i = 0; i < std::min<size_t>(foreign.size(), 3); ++i) {
    listed += (i == 0 ? "" : ", ") + QuoteName(foreign[i]);
  }
  if (foreign.size() > 3) listed += " and " + std::to_string(foreign.size() - 3) + " more";
  return "it holds " + listed + " and no " + std::string(kStoreMarker);
}

LocalStore::LocalStore(fs::path root, std::string uri, Writes writes, Root root_policy)
    : root_(std::move(root)),
      uri_(uri.empty() ? root_.string() : std::move(uri)),
      writes_(writes),
      root_policy_(root_policy) {}

fs::path LocalStore::ChunkPath(const std::string& hash) const {
  RequireHash(hash);
  return root_ / kChunksDir / hash.substr(0, 2) / hash;
}

UniqueFd LocalStore::OpenRoot() const {
  UniqueFd fd(::open(root_.c_str(), kDirFlags));
  if (!fd) Unavailable(uri_, root_, "cannot open " + root_.string() + ": " + ErrnoText(errno));
  return fd;
}

UniqueFd LocalStore::OpenStoreDir(const char* sub, const std::string& inner) const {
  // The root's own path may lead through links; `sub` and `inner` may not (O_NOFOLLOW).
  fs::path path = root_ / sub;
  UniqueFd fd(::open(path.c_str(), kDirFlags | O_NOFOLLOW));
  int err = errno;
  if (fd && !inner.empty()) {
    path /= inner;
    int inner_fd = ::openat(fd.get(), inner.c_str(), kDirFlags | O_NOFOLLOW);
    err = errno;
    fd.reset(inner_fd);
  }
  if (fd || err == ENOENT) return fd;
  NotADirectory(uri_, path, err);
}

UniqueFd LocalStore::OpenChunkDir(const std::string& hash) const {
  RequireHash(hash);
  return OpenStoreDir(kChunksDir, hash.substr(0, 2));
}

// Why a store that must exist is not made again in its place, and what to do.
constexpr const char* kMadeOnce =
    "; a region's store is made once, when the region is added, and never again in its "
    "place: if it lives on a disk or share, mount it";

void LocalStore::RequireRootHoldsAStore() const {
  // Made when its region was added: now missing or empty, it is a disk or share not mounted
  // (or removed by hand), never a store to make again in its place.
  UniqueFd root(::open(root_.c_str(), kDirFlags));
  if (!root) {
    Unavailable(uri_, root_, root_.string() + " is missing (" + ErrnoText(errno) + ")" + kMadeOnce);
  }
  if (::faccessat(root.get(), kStoreMarker.data(), F_OK, AT_SYMLINK_NOFOLLOW) != 0 &&
      ::faccessat(root.get(), kManifestsDir, F_OK, AT_SYMLINK_NOFOLLOW) != 0) {
    Unavailable(
        uri_, root_,
        root_.string() + " holds no store (no " + std::string(kStoreMarker) + ")" + kMadeOnce);
  }
}

void LocalStore::RequirePresent() {
  if (root_policy_ == Root::kMustExist) RequireRootHoldsAStore();
}

void LocalStore::EnsureRoot(bool may_make) {
  if (root_known_.load(std::memory_order_acquire)) return;
  if (!may_make) {
    RequireRootHoldsAStore();
    root_known_.store(true, std::memory_order_release);
    return;
  }
  std::error_code ec;
  bool created = fs::create_directories(root_, ec);
  if (ec) {
    Unavailable(uri_, root_, "cannot create directory " + root_.string() + ": " + ec.message());
  }
  // A new directory entry must survive a crash like any file we rename into it.
  if (created) FailPoint("store.dir_created");
  if (created) FsyncDir(root_.parent_path());
  root_known_.store(true, std::memory_order_release);
}

void LocalStore::EnsureDir(const char* sub, std::atomic<bool>& known) {
  if (known.load(std::memory_order_acquire)) return;
  EnsureRoot();
  UniqueFd root = OpenRoot();
  if (::mkdirat(root.get(), sub, 0755) == 0) {
    FailPoint("store.dir_created");
    ::fsync(root.get());
  } else if (errno != EEXIST) {
    Unavailable(uri_, root_ / sub,
                "cannot create directory " + (root_ / sub).string() + ": " + ErrnoText(errno));
  }
  if (!OpenStoreDir(sub)) {  // throws if not a real directory
    Unavailable(uri_, root_ / sub, (root_ / sub).string() + " vanished as it was created");
  }
  known.store(true, std::memory_order_release);
}

// All 256 prefix directories at once: creating them one by one as chunks arrive would cost
// an fsync of chunks/ for nearly every chunk of a first import.
void LocalStore::EnsureChunkDirs() {
  if (chunk_dirs_known_.load(std::memory_order_acquire)) return;
  EnsureDir(kChunksDir, chunks_known_);
  UniqueFd chunks = OpenStoreDir(kChunksDir);
  if (!chunks) Unavailable(uri_, root_ / kChunksDir, (root_ / kChunksDir).string() + " vanished");
  bool created = false;
  for (int i = 0; i < 256; ++i) {
    char prefix[3];
    std::snprintf(prefix, sizeof(prefix), "%02x", i);
    struct stat st;
    if (::mkdirat(chunks.get(), prefix, 0755) == 0) {
      created = true;
    } else if (errno != EEXIST) {
      Unavailable(uri_, root_ / kChunksDir / prefix,
                  "cannot create directory " + (root_ / kChunksDir / prefix).string() + ": " +
                      ErrnoText(errno));
    } else if (::fstatat(chunks.get(), prefix, &st, AT_SYMLINK_NOFOLLOW) != 0 ||
               !S_ISDIR(st.st_mode)) {
      NotADirectory(uri_, root_ / kChunksDir / prefix, ENOTDIR);
    }
  }
  if (created) FailPoint("store.dir_created");
  if (created) ::fsync(chunks.get());
  chunk_dirs_known_.store(true, std::memory_order_release);
}

void LocalStore::SetOwner(const StoreClaim& claim) { claim_ = claim; }

// The marker's text, or nullopt if there is none (any other failure throws).
std::optional<std::string> LocalStore::ReadMarker(int root_fd) const {
  UniqueFd marker(::openat(root_fd, kStoreMarker.data(), kOpenStoreFile));
  if (!marker) {
    if (errno == ENOENT) return std::nullopt;
    NotAStore(uri_, root_,
              "its " + std::string(kStoreMarker) + " cannot be read (" + ErrnoText(errno) + ")");
  }
  char text[4096];
  ssize_t n = ::pread(marker.get(), text, sizeof(text), 0);
  if (n < 0) {
    Unavailable(uri_, root_,
                "cannot read " + (root_ / kStoreMarker).string() + ": " + ErrnoText(errno));
  }
  return std::string(text, static_cast<size_t>(n));
}

void LocalStore::WriteMarker(int root_fd, const std::string& text) const {
  std::string error = WriteFileAtomicallyAt(root_fd, root_, std::string(kStoreMarker),
                                            std::as_bytes(std::span(text)));
  if (!error.empty()) Unavailable(uri_, root_, error);
}

void LocalStore::Release() {
  UniqueFd root(::open(root_.c_str(), kDirFlags));
  if (!root) return;  // nothing there to release
  const std::optional<std::string> text = ReadMarker(root.get());
  if (!text) return;
  if (std::string released = ReleasedMarker(*text, claim_); !released.empty()) {
    // What a release killed before its rename left (the marker's temporary file, in the
    // root): once released, no open of this home looks in the store again to remove it.
    RemoveStaleTemps(root.get());
    WriteMarker(root.get(), released);
  }
}

void LocalStore::RefuseIfAnotherHomes(const std::string& marker_text,
                                      const MarkerVerdict& verdict) const {
  // Another home's store is there and fine: unavailable to this one, not "not a store".
  if (verdict.action == MarkerVerdict::Action::kRefuse && CheckStoreMarker(marker_text).empty()) {
    throw TransferError(codes::kStoreUnavailable,
                        "region store " + uri_ + " is unavailable: " + verdict.problem);
  }
}

void LocalStore::ClaimForOwner(bool claim_unowned) {
  UniqueFd root(::open(root_.c_str(), kDirFlags));
  if (!root) return;
  std::optional<std::string> text;
  try {
    text = ReadMarker(root.get());
  } catch (const Error&) {
    return;  // Check() says what is wrong
  }
  if (!text) return;
  const MarkerVerdict verdict =
      JudgeMarker(*text, claim_, claim_unowned ? MarkerUse::kClaim : MarkerUse::kCheck);
  RefuseIfAnotherHomes(*text, verdict);
  try {  // a store that cannot be written now may still be read; Check() claims it later
    if (verdict.action == MarkerVerdict::Action::kRewrite) WriteMarker(root.get(), verdict.text);
  } catch (const Error&) {
  }
}

void LocalStore::ClaimRoot(int root_fd, MarkerUse use) {
  if (const std::optional<std::string> text = ReadMarker(root_fd)) {
    const MarkerVerdict verdict = JudgeMarker(*text, claim_, use);
    RefuseIfAnotherHomes(*text, verdict);
    if (verdict.action == MarkerVerdict::Action::kRefuse) NotAStore(uri_, root_, verdict.problem);
    if (verdict.action == MarkerVerdict::Action::kRewrite) WriteMarker(root_fd, verdict.text);
    return;
  }
  // No marker: a new or empty directory, or a store of an earlier release.
  if (const std::string& theirs = UnmarkedIsTheirs(claim_); !theirs.empty()) {
    throw TransferError(codes::kStoreUnavailable,
                        "region store " + uri_ + " is unavailable: " + theirs);
  }
  std::vector<DirEntry> entries;
  if (int err = ListDirectory(root_fd, entries); err != 0) {
    Unavailable(uri_, root_, "cannot list " + root_.string() + ": " + ErrnoText(err));
  }
  std::vector<std::string> foreign;
  for (const DirEntry& entry : entries) {
    const bool ours =
        entry.kind == EntryKind::kDirectory
            ? IsStoreDirName(entry.name) || entry.name == "lost+found"  // a new file system's
            : entry.kind == EntryKind::kFile && entry.name.starts_with(kTempPrefix);
    if (!ours) foreign.push_back(entry.name);
  }
  if (std::string problem = ForeignEntriesProblem(std::move(foreign)); !problem.empty()) {
    NotAStore(uri_, root_, problem);
  }
  WriteMarker(root_fd, StoreMarkerText(claim_.me, claim_.place));
}

void LocalStore::Check() { CheckRoot(root_policy_ == Root::kMadeIfMissing, MarkerUse::kCheck); }

void LocalStore::Create() { CheckRoot(true, MarkerUse::kClaim); }

void LocalStore::CheckRoot(bool may_make, MarkerUse use) {
  // The store may have been removed and made again since we last looked: check anew.
  root_known_ = chunks_known_ = manifests_known_ = images_known_ = false;
  chunk_dirs_known_ = packs_known_ = index_known_ = false;
  EnsureRoot(may_make);  // a store that must exist is there: only an earlier release's is taken
  ClaimRoot(OpenRoot().get(), use);
  const bool packs = writes_ == Writes::kPacks;
  const char* data_dir = packs ? kPacksDir : kChunksDir;
  EnsureDir(data_dir, packs ? packs_known_ : chunks_known_);
  EnsureDir(kManifestsDir, manifests_known_);
  EnsureDir(kImagesDir, images_known_);
  for (const char* sub : {data_dir, kManifestsDir, kImagesDir}) {
    const fs::path dir = root_ / sub;
    UniqueFd dir_fd = OpenStoreDir(sub);
    const std::string probe = TempName("probe");
    UniqueFd fd(
        ::openat(dir_fd.get(), probe.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
    if (!fd) {
      Unavailable(uri_, dir, "cannot create a file in " + dir.string() + ": " + ErrnoText(errno));
    }
    int err = PwriteAll(fd.get(), "x", 1, 0);
    if (err == 0) err = fd.Close();
    ::unlinkat(dir_fd.get(), probe.c_str(), 0);  // not a durable step: the probe goes
    if (err != 0) {
      Unavailable(uri_, dir, "cannot write to " + (dir / probe).string() + ": " + ErrnoText(err));
    }
  }
  if (!packs) {
    EnsureChunkDirs();
  } else {
    OpenStoreDir(kChunksDir);  // a first release's chunks/, if any: a real directory or refused
  }
}

void LocalStore::RemoveLeftovers() {
  try {
    if (UniqueFd root{::open(root_.c_str(), kDirFlags)}) RemoveStaleTemps(root.get());
    // quarantine/: a damaged block set aside by a writer that was killed (KeepAside).
    for (const char* sub : {kManifestsDir, kImagesDir, kPacksDir, kQuarantineDir}) {
      if (UniqueFd dir = OpenStoreDir(sub)) RemoveStaleTemps(dir.get());
    }
    for (const char* fanned_out : {kChunksDir, kPacksDir}) {
      if (UniqueFd dir = OpenStoreDir(fanned_out)) {
        ForEachPrefixDir(dir.get(), [](const std::string&, int fd) { RemoveStaleTemps(fd); });
      }
    }
  } catch (const TransferError&) {
    // Best effort: a directory that is not a real one is the next Check's to report.
  }
}

std::optional<struct stat> LocalStore::ChunkFileStat(int dir_fd, const std::string& hash) {
  struct stat st;
  if (::fstatat(dir_fd, hash.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) {
    if (!S_ISREG(st.st_mode)) return std::nullopt;
    return st;
  }
  if (errno == ENOENT) return std::nullopt;
  Failed("cannot look up chunk " + hash + " in store " + uri_ + ": " + ErrnoText(errno));
}

std::optional<uint64_t> LocalStore::ChunkFileSize(int dir_fd, const std::string& hash) {
  auto st = ChunkFileStat(dir_fd, hash);
  if (!st) return std::nullopt;
  return static_cast<uint64_t>(st->st_size);
}

bool LocalStore::HasChunk(const std::string& hash, const CancelToken* /*cancel*/) {
  UniqueFd dir = OpenChunkDir(hash);
  return dir && ChunkFileSize(dir.get(), hash).has_value();
}

std::optional<uint64_t> LocalStore::StoredChunkSize(const std::string& hash) {
  UniqueFd dir = OpenChunkDir(hash);
  return dir ? ChunkFileSize(dir.get(), hash) : std::nullopt;
}

bool LocalStore::HasChunkOfLength(const std::string& hash, uint64_t length,
                                  const CancelToken* /*cancel*/) {
  UniqueFd dir = OpenChunkDir(hash);
  if (!dir) return false;
  auto st = ChunkFileStat(dir.get(), hash);
  if (!st || static_cast<uint64_t>(st->st_size) != length) return false;
  FileMarks* marks = chunk_marks_.load(std::memory_order_acquire);
  if (marks == nullptr) return Stamped(*st) || Recheck(hash, length, /*stamp=*/true);
  // Known right while its mark is the one recorded; else read, checked and marked with the
  // mark taken before the read (a write meanwhile leaves it to be read again).
  const std::string mark = FileMark(*st);
  if (marks->MarkOf(hash) == mark) return true;
  if (!Recheck(hash, length, /*stamp=*/false)) return false;
  marks->SetMark(hash, mark);
  return true;
}

bool LocalStore::Recheck(const std::string& hash, uint64_t length, bool stamp) {
  thread_local std::vector<std::byte> bytes;
  try {
    GetChunk(hash, bytes);
  } catch (const TransferError&) {
    return false;  // gone meanwhile, or unreadable: to be written anew
  }
  if (bytes.size() == length && Sha256Hex(bytes.data(), bytes.size()) == hash) {
    if (UniqueFd dir = stamp ? OpenChunkDir(hash) : UniqueFd()) {
      UniqueFd fd(::openat(dir.get(), hash.c_str(), O_WRONLY | O_NOFOLLOW | O_CLOEXEC));
      if (fd) Stamp(fd.get());  // best effort: unstamped only costs another check
    }
    return true;
  }
  QuarantineChunk(hash);
  ReportDamage(hash, "chunk " + hash + " in store " + uri_ +
                         " was written to after it was stored and its bytes no longer match "
                         "its name");
  return false;
}

uint64_t LocalStore::PutChunk(const std::string& hash, std::span<const std::byte> data,
                              const CancelToken* /*cancel*/) {
  RequireHash(hash);
  EnsureChunkDirs();
  // Content-addressed: the same name holds the same bytes. One of another length, or no
  // longer right, is damaged and is replaced by the rename of the new file.
  if (HasChunkOfLength(hash, data.size())) return 0;
  UniqueFd dir = OpenChunkDir(hash);
  if (!dir) {
    Unavailable(uri_, ChunkPath(hash).parent_path(),
                ChunkPath(hash).parent_path().string() + " does not exist");
  }
  WriteChunkFile(dir.get(), hash, data);
  return data.size();
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
  if (int err = PreadDirect(fd, buffer, rounded, size, 0); err != 0) return err;
  std::memcpy(out, buffer, size);
  return 0;
}

}  // namespace

void LocalStore::WriteChunkFile(int dir_fd, const std::string& hash,
                                std::span<const std::byte> data) {
  const std::string tmp_name = TempName(hash);
  const fs::path tmp = ChunkPath(hash).parent_path() / tmp_name;
  auto fail = [&](const std::string& what, int err) {
    ::unlinkat(dir_fd, tmp_name.c_str(), 0);  // not a durable step: a temporary file
    Failed("cannot store chunk " + hash + " in store " + uri_ + ": " + what + ": " +
           ErrnoText(err) + "; check free space and permissions");
  };
  UniqueFd fd = CreateWritten(dir_fd, tmp_name, tmp, data, fail);
  if (int err = fd.Close(); err != 0) fail("cannot close " + tmp.string(), err);
  std::vector<PendingChunk> batch;
  {
    std::lock_guard lock(pending_mutex_);
    const auto now = std::chrono::steady_clock::now();
    if (pending_.empty()) pending_since_ = now;
    pending_.push_back({hash, tmp_name, data.size()});
    pending_bytes_ += data.size();
    if (pending_bytes_ >= kCommitBatchBytes || now - pending_since_ >= kCommitBatchAge) {
      batch.swap(pending_);
      pending_bytes_ = 0;
    }
  }
  if (!batch.empty()) CommitPending(std::move(batch));
}

UniqueFd LocalStore::CreateWritten(int dir_fd, const std::string& tmp_name, const fs::path& tmp,
                                   std::span<const std::byte> data,
                                   const std::function<void(const std::string&, int)>& fail) {
  // Files go around the page cache (O_DIRECT): no dirty pages for the batch's syncfs to
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
  constexpr int kCreate = O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC;
  UniqueFd fd(::openat(dir_fd, tmp_name.c_str(), kCreate | (direct ? O_DIRECT : 0), 0644));
  if (!fd && direct && errno == EINVAL) {  // the file system has no O_DIRECT
    direct_io_.store(false, std::memory_order_relaxed);
    // not a durable step: open may have created the temporary file before refusing
    ::unlinkat(dir_fd, tmp_name.c_str(), 0);
    fd = UniqueFd(::openat(dir_fd, tmp_name.c_str(), kCreate, 0644));
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
  return fd;
}

void LocalStore::CommitPending(std::vector<PendingChunk> batch) {
  try {
    SyncFilesystem();  // the bytes are on disk before the names are
    FailPoint("chunk.synced");
    for (const auto& chunk : batch) {
      UniqueFd dir = OpenChunkDir(chunk.hash);
      if (!dir || ::renameat(dir.get(), chunk.tmp.c_str(), dir.get(), chunk.hash.c_str()) != 0) {
        const fs::path dir_path = ChunkPath(chunk.hash).parent_path();
        Failed("cannot rename " + (dir_path / chunk.tmp).string() + " to " +
               (dir_path / chunk.hash).string() + " in store " + uri_ + ": " +
               ErrnoText(dir ? errno : ENOENT));
      }
    }
  } catch (...) {
    DiscardPending(batch);
    throw;
  }
  renames_unsynced_.store(true, std::memory_order_release);
}

// Best effort: the temporary files of chunks that will not be committed.
void LocalStore::DiscardPending(const std::vector<PendingChunk>& batch) noexcept {
  for (const auto& chunk : batch) {
    try {
      // not a durable step: a temporary file that nothing names
      if (UniqueFd dir = OpenChunkDir(chunk.hash)) ::unlinkat(dir.get(), chunk.tmp.c_str(), 0);
    } catch (const std::exception&) {
    }
  }
}

void LocalStore::Flush(const CancelToken* /*cancel*/) {
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
  // not a durable step by itself: each caller passes its own fail point around it
  if (!fd || ::syncfs(fd.get()) != 0) {
    Failed("cannot flush store " + uri_ + " to disk: " + ErrnoText(errno) +
           "; check the disk and free space");
  }
}

LocalStore::~LocalStore() { DiscardPending(pending_); }

void LocalStore::GetChunk(const std::string& hash, std::vector<std::byte>& out,
                          const CancelToken* /*cancel*/) {
  UniqueFd dir = OpenChunkDir(hash);
  // Around the page cache, as chunks are written: a 4 MiB read reaches the disk whole, and
  // reading a big image does not push everything else out of memory.
  bool direct = direct_io_.load(std::memory_order_relaxed);
  UniqueFd fd;
  if (dir) fd.reset(::openat(dir.get(), hash.c_str(), kOpenStoreFile | (direct ? O_DIRECT : 0)));
  if (dir && !fd && direct && errno == EINVAL) {  // the file system has no O_DIRECT
    direct = false;
    fd.reset(::openat(dir.get(), hash.c_str(), kOpenStoreFile));
  }
  if (!fd) {
    if (!dir || errno == ENOENT) {
      Failed("chunk " + hash + " is missing from store " + uri_ +
             "; the image's bytes are incomplete, replicate or import it again");
    }
    Failed("cannot open chunk " + hash + " in store " + uri_ + ": " + ErrnoText(errno));
  }
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) {
    Failed("cannot stat chunk " + hash + " in store " + uri_ + ": " + ErrnoText(errno));
  }
  if (!S_ISREG(st.st_mode)) {
    Failed("chunk " + hash + " in store " + uri_ +
           " is not a regular file; remove it and "
           "replicate or import the image again");
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
  UniqueFd dir = OpenChunkDir(hash);
  // Only a chunk file is deleted: a link or anything else in its place is not the store's.
  if (!dir || !ChunkFileSize(dir.get(), hash)) return;
  FailPoint("store.delete");
  if (::unlinkat(dir.get(), hash.c_str(), 0) != 0 && errno != ENOENT) {
    Failed("cannot delete chunk " + hash + " from store " + uri_ + ": " + ErrnoText(errno));
  }
}

void LocalStore::QuarantineChunk(const std::string& hash) {
  UniqueFd dir = OpenChunkDir(hash);
  if (!dir || !ChunkFileStat(dir.get(), hash)) return;  // nothing of ours to take aside
  if (MoveToQuarantine(dir.get(), hash)) return;
  DeleteChunk(hash);  // out of use is what matters
}

bool LocalStore::MoveToQuarantine(int dir_fd, const std::string& name) {
  // Never through a symlink out of the store: only a real directory of ours takes it.
  UniqueFd quarantine;
  try {
    ::mkdirat(OpenRoot().get(), kQuarantineDir, 0700);
    quarantine = OpenStoreDir(kQuarantineDir);
  } catch (const TransferError&) {
    return false;  // a link or a file in its place
  }
  const std::string aside = name + "." + std::to_string(::time(nullptr));
  FailPoint("store.quarantine");
  if (!quarantine || ::renameat(dir_fd, name.c_str(), quarantine.get(), aside.c_str()) != 0) {
    return false;
  }
  ::fsync(dir_fd);
  return true;
}

std::vector<std::string> LocalStore::ListChunks() {
  std::vector<std::string> hashes;
  UniqueFd chunks = OpenStoreDir(kChunksDir);
  if (!chunks) return hashes;
  int err = ForEachPrefixDir(chunks.get(), [&](const std::string& prefix, int fd) {
    std::vector<DirEntry> entries;
    if (int err = ListDirectory(fd, entries); err != 0) {
      Failed("cannot list " + (root_ / kChunksDir / prefix).string() + " in store " + uri_ + ": " +
             ErrnoText(err));
    }
    for (DirEntry& entry : entries) {
      // Temporary files start with '.', so they never pass this test.
      if (entry.kind == EntryKind::kFile && IsChunkHash(entry.name) &&
          entry.name.compare(0, 2, prefix) == 0) {
        hashes.push_back(std::move(entry.name));
      }
    }
  });
  if (err != 0) {
    Failed("cannot list " + (root_ / kChunksDir).string() + " in store " + uri_ + ": " +
           ErrnoText(err));
  }
  std::sort(hashes.begin(), hashes.end());
  return hashes;
}

void LocalStore::WriteRecord(const char* sub, std::atomic<bool>& known, const std::string& image_id,
                             std::string_view suffix, const std::function<int(int fd)>& write,
                             const char* what) {
  RequireImageId(image_id);
  EnsureDir(sub, known);
  UniqueFd dir = OpenStoreDir(sub);
  std::string error =
      dir ? WriteFileAtomicallyAt(dir.get(), root_ / sub, image_id + std::string(suffix), write)
          : (root_ / sub).string() + " does not exist";
  if (!error.empty()) {
    Failed(std::string("cannot store the ") + what + " of " + image_id + " in store " + uri_ +
           ": " + error + "; check free space and permissions");
  }
}

UniqueFd LocalStore::OpenRecord(const char* sub, const std::string& image_id,
                                std::string_view suffix, const char* what) {
  RequireImageId(image_id);
  UniqueFd dir = OpenStoreDir(sub);
  if (!dir) return {};
  const std::string name = image_id + std::string(suffix);
  UniqueFd fd(::openat(dir.get(), name.c_str(), kOpenStoreFile));
  struct stat st;
  // A link, a FIFO or a directory in its place is no record of this store: taken as missing
  // (the image's record or manifest is gone: damage), never followed or waited on.
  if ((!fd && errno == ELOOP) || (fd && (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)))) {
    Log(LogLevel::kWarning, std::string("the ") + what + " of " + image_id + " in store " + uri_ +
                                " is not a regular file; taken as missing");
    return {};
  }
  if (!fd && errno != ENOENT) {
    Failed(std::string("cannot open the ") + what + " of " + image_id + " in store " + uri_ + ": " +
           ErrnoText(errno));
  }
  return fd;
}

std::optional<std::string> LocalStore::ReadRecord(const char* sub, const std::string& image_id,
                                                  const char* what) {
  UniqueFd fd = OpenRecord(sub, image_id, kRecordSuffix, what);
  if (!fd) return std::nullopt;
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

void LocalStore::DeleteRecord(const char* sub, const std::string& image_id, std::string_view suffix,
                              const char* what) {
  RequireImageId(image_id);
  UniqueFd dir = OpenStoreDir(sub);
  if (!dir) return;
  const std::string name = image_id + std::string(suffix);
  FailPoint("store.delete");
  if (::unlinkat(dir.get(), name.c_str(), 0) != 0) {
    if (errno == ENOENT) return;
    Failed(std::string("cannot delete the ") + what + " of " + image_id + " from store " + uri_ +
           ": " + ErrnoText(errno));
  }
  ::fsync(dir.get());
}

std::vector<std::string> LocalStore::ListRecords(const char* sub) {
  std::vector<std::string> ids;
  UniqueFd dir = OpenStoreDir(sub);
  if (!dir) return ids;
  std::vector<DirEntry> entries;
  if (int err = ListDirectory(dir.get(), entries); err != 0) {
    Failed("cannot list " + (root_ / sub).string() + " in store " + uri_ + ": " + ErrnoText(err));
  }
  for (DirEntry& entry : entries) {
    if (entry.kind != EntryKind::kFile) continue;
    for (std::string_view suffix : {kRecordSuffix, kManifestSuffix}) {
      if (!entry.name.ends_with(suffix)) continue;
      entry.name.resize(entry.name.size() - suffix.size());
      if (IsImageId(entry.name)) ids.push_back(std::move(entry.name));
      break;
    }
  }
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  return ids;
}

void LocalStore::PutManifest(const std::string& image_id, const Manifest& manifest) {
  Flush();  // every chunk it names is durable and visible first
  WriteRecord(
      kManifestsDir, manifests_known_, image_id, kManifestSuffix,
      [&](int fd) { return WriteBinaryManifest(manifest, fd); }, "manifest");
  // A first-release manifest of the same image would be read no more; it goes.
  DeleteRecord(kManifestsDir, image_id, kRecordSuffix, "manifest");
}

std::optional<Manifest> LocalStore::GetManifest(const std::string& image_id) {
  const std::string what = image_id + " in store " + uri_;
  if (UniqueFd fd = OpenRecord(kManifestsDir, image_id, kManifestSuffix, "manifest")) {
    return ReadBinaryManifest(std::move(fd), what);
  }
  std::optional<std::string> text = ReadRecord(kManifestsDir, image_id, "manifest");
  if (!text) return std::nullopt;
  return ReadFirstReleaseManifest(*text, what);
}

void LocalStore::DeleteManifest(const std::string& image_id) {
  DeleteRecord(kManifestsDir, image_id, kManifestSuffix, "manifest");
  DeleteRecord(kManifestsDir, image_id, kRecordSuffix, "manifest");
}

std::vector<std::string> LocalStore::ListManifests() { return ListRecords(kManifestsDir); }

void LocalStore::PutImageRecord(const std::string& image_id, const std::string& json) {
  WriteRecord(
      kImagesDir, images_known_, image_id, kRecordSuffix,
      [&](int fd) { return PwriteAll(fd, json.data(), json.size(), 0); }, "image record");
}

std::optional<std::string> LocalStore::GetImageRecord(const std::string& image_id) {
  return ReadRecord(kImagesDir, image_id, "image record");
}

void LocalStore::DeleteImageRecord(const std::string& image_id) {
  DeleteRecord(kImagesDir, image_id, kRecordSuffix, "image record");
}

}  // namespace imagerelay
