// A region store in a local directory (docs/architecture.md, "Storage layout"):
//   <root>/manifests/<id>.bin, <root>/images/<id>.json, <root>/quarantine/
//   <root>/.imagerelay-store, the marker that tells the directory is a store
//   <root>/packs/, <root>/index/: the block store (PackFiles here, PackStore on top)
//   <root>/chunks/<first two hex>/<hex>, <root>/manifests/<id>.json: the first release's
//   chunk files and manifests, still read
// Every write goes to a temporary file in the same directory, is fsynced and renamed over
// the final name, and the directory is fsynced: readers never see a partial file.
// Confined to its root: the root's own path may lead through symbolic links (the user's
// choice), but below it every directory is opened with O_NOFOLLOW and every file relative
// to it, so that no read, write, listing or delete follows a link out of the store. A link
// in place of one of its directories makes the store unavailable; links and other files it
// did not write are never listed as chunks nor deleted.
// All methods may be called from several threads at once.
//
// Trust: a chunk file's modification time is set to kVerifiedStamp when the store writes it
// (its bytes were checked against its name by the caller). Any later write to the file
// changes that time, so a lookup that finds another time re-reads and checks the chunk
// before vouching for it (and re-stamps it, or quarantines it): one stat tells whether the
// bytes are still the ones that were checked. Scrub covers what this cannot see (media
// errors, a time forged on purpose).
#pragma once

#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <list>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "base/unique_fd.hpp"
#include "imagerelay/store.hpp"
#include "store/pack_files.hpp"
#include "store/store_marker.hpp"

namespace imagerelay {

// Optional capability of a store that can tell a stored chunk's size cheaply; SweepStore
// uses it to report the bytes it frees.
class ChunkSizeProbe {
 public:
  virtual ~ChunkSizeProbe() = default;
  virtual std::optional<uint64_t> StoredChunkSize(const std::string& hash) = 0;
};

// True for names the store accepts: 64 lowercase hex digits / "m-" and 8 of [0-9a-z].
bool IsChunkHash(std::string_view s);
bool IsImageId(std::string_view s);

// The layout shared by the stores. A store's root (an S3 store's prefix) holds the marker
// (store_marker.hpp); a store of an earlier release, without the marker, holds only the
// directories below: it is adopted.
// Where the block store keeps its packs and its index (docs/data-plane-v2.md).
inline constexpr const char* kPacksDir = "packs";
inline constexpr const char* kIndexDir = "index";
// Damaged chunks and blocks, and packs cut short, kept for inspection (never read again).
inline constexpr const char* kQuarantineDir = "quarantine";
// chunks, packs, index, manifests, images and quarantine: the directories a store keeps at
// its root.
bool IsStoreDirName(std::string_view name);
// Why a root without the marker is not taken, naming a few of the `foreign` entries it
// holds that a store does not; "" if there are none.
std::string ForeignEntriesProblem(std::vector<std::string> foreign);

class LocalStore : public Store, public ChunkSizeProbe, public PackFiles {
 public:
  // Where new bytes go: one file per chunk under chunks/ (the first release's layout, which
  // this class's own tests exercise), or packs under packs/ when a PackStore writes through
  // it; chunks/ is then only read (a first-release store's chunks) and never made.
  enum class Writes { kChunks, kPacks };
  // What a missing root means: made anew (a store in the home, or a test's), or an
  // unavailable store (one made when its region was added, maybe on a disk or share not
  // mounted now: made again in its place, it would take writes that vanish when the disk
  // is mounted, and its images would look damaged). Create() makes it either way.
  enum class Root { kMadeIfMissing, kMustExist };
  // `root` need not exist yet; `uri` is what uri() shows (the root itself if empty).
  explicit LocalStore(std::filesystem::path root, std::string uri = "",
                      Writes writes = Writes::kChunks, Root root_policy = Root::kMadeIfMissing);
  ~LocalStore() override;  // removes chunks written but never flushed

  std::string uri() const override { return uri_; }
  void Check() override;
  void Create() override;
  void RequirePresent() override;
  void RemoveLeftovers() override;
  void SetOwner(const StoreClaim& claim) override;
  void ClaimForOwner(bool claim_unowned = true) override;
  void Release() override;

  // Disk I/O is short: the cancel tokens are checked between chunks, not inside these.
  bool HasChunk(const std::string& hash, const CancelToken* cancel = nullptr) override;
  bool HasChunkOfLength(const std::string& hash, uint64_t length,
                        const CancelToken* cancel = nullptr) override;
  uint64_t PutChunk(const std::string& hash, std::span<const std::byte> data,
                    const CancelToken* cancel = nullptr) override;
  void Flush(const CancelToken* cancel = nullptr) override;
  void GetChunk(const std::string& hash, std::vector<std::byte>& out,
                const CancelToken* cancel = nullptr) override;
  void DeleteChunk(const std::string& hash) override;
  // Moves the chunk to quarantine/<hash>.<time>: out of every lookup, kept for inspection.
  void QuarantineChunk(const std::string& hash) override;
  std::vector<std::string> ListChunks() override;

  void PutManifest(const std::string& image_id, const Manifest& manifest) override;
  std::optional<Manifest> GetManifest(const std::string& image_id) override;
  void DeleteManifest(const std::string& image_id) override;
  std::vector<std::string> ListManifests() override;

  void PutImageRecord(const std::string& image_id, const std::string& json) override;
  std::optional<std::string> GetImageRecord(const std::string& image_id) override;
  void DeleteImageRecord(const std::string& image_id) override;

  std::optional<uint64_t> StoredChunkSize(const std::string& hash) override;

  // Packs (local_pack_files.cpp): <root>/packs/<first two hex>/<name>, written like chunk
  // files (temporary file, stamp, fsync, rename, fsync of the directory); the index in
  // <root>/index/blocks.sqlite.
  void PutPack(const std::string& name, std::span<const std::byte> bytes,
               const CancelToken* cancel) override;
  bool ReadPack(const std::string& name, uint64_t offset, std::span<std::byte> out,
                const CancelToken* cancel) override;
  // Staged packs are temporary files; a commit is one syncfs, the renames, and one fsync
  // of each directory they went into (as chunk files are committed in batches).
  void StagePack(const std::string& name, std::span<const std::byte> bytes,
                 const CancelToken* cancel) override;
  void CommitPacks(const std::vector<std::string>& names) override;
  void DiscardStaged(const std::vector<std::string>& names) override;
  std::optional<PackStat> StatPack(const std::string& name) override;
  void KeepChunkMarksIn(FileMarks* marks) override {
    chunk_marks_.store(marks, std::memory_order_release);
  }
  // With O_DIRECT (buffered where the file system refuses it): a copy reading packs through
  // the page cache while it writes others ran slower than reading around it.
  std::optional<size_t> ReadPackAhead(const std::string& name, uint64_t offset, size_t length,
                                      HugePageBytes& buffer, const CancelToken* cancel) override;
  void Prefetch(const std::string& name, uint64_t offset, uint64_t length) override;
  void DeletePack(const std::string& name) override;
  void QuarantinePack(const std::string& name) override;
  void KeepAside(const std::string& hash, std::span<const std::byte> bytes) override;
  std::vector<std::pair<std::string, uint64_t>> ListPacks() override;
  std::filesystem::path IndexFile() override;

  const std::filesystem::path& root() const { return root_; }
  // Where a chunk's file lives (whether or not it exists). Validates the hash.
  std::filesystem::path ChunkPath(const std::string& hash) const;

 protected:
  // Cold directory lookups wait on the disk; several in flight keep its queue busy.
  size_t ExistenceCheckThreads() const override { return 8; }

 private:
  // The store's directory root/sub[/inner], opened without following a link below the
  // root; an invalid fd if it does not exist. Throws StoreUnavailable if something other
  // than a directory is in its place.
  UniqueFd OpenStoreDir(const char* sub, const std::string& inner = "") const;
  UniqueFd OpenChunkDir(const std::string& hash) const;
  // packs/<first two hex of name>, created if `create`; invalid fd if absent.
  UniqueFd OpenPackDir(const std::string& name, bool create);
  // Makes a staged pack's temporary file durable, and packs/ (which names its directory):
  // CommitPacks' sync of a pack committed alone.
  void SyncStagedPack(const std::string& name, const std::string& tmp);
  // The pack open for reading, from a small cache of open packs (a copy reads many blocks
  // of a pack in a row: one open, not one per block); nullptr if there is no such pack.
  // Packs never change once written, so a cached descriptor always reads the right bytes.
  std::shared_ptr<UniqueFd> OpenPackForReading(const std::string& name);
  void ForgetOpenPack(const std::string& name);
  // Writes the temporary file of pack `name` (not synced); returns its name.
  std::string WritePackTemp(int dir_fd, const std::string& name, std::span<const std::byte> bytes);
  std::mutex staged_mutex_;
  std::unordered_map<std::string, std::string> staged_;  // pack name -> its temporary file
  std::mutex open_packs_mutex_;
  std::list<std::pair<std::string, std::shared_ptr<UniqueFd>>> open_packs_;  // recent first
  // Moves `name` from the directory open at `dir_fd` to quarantine/<name>.<time>; false if
  // it could not (the caller then deletes it).
  bool MoveToQuarantine(int dir_fd, const std::string& name);
  UniqueFd OpenRoot() const;
  // Takes the root as a store (store_marker.hpp: its marker, and its owner) or throws
  // StoreUnavailable saying why not.
  void ClaimRoot(int root_fd, MarkerUse use);
  std::optional<std::string> ReadMarker(int root_fd) const;
  // Throws StoreUnavailable if `verdict` on `marker_text` refuses a valid marker of another
  // home.
  void RefuseIfAnotherHomes(const std::string& marker_text, const MarkerVerdict& verdict) const;
  void WriteMarker(int root_fd, const std::string& text) const;
  // Makes the root if missing and `may_make`; else throws StoreUnavailable unless it holds
  // a store.
  void EnsureRoot(bool may_make);
  void EnsureRoot() { EnsureRoot(root_policy_ == Root::kMadeIfMissing); }
  // Check() and Create().
  void CheckRoot(bool may_make, MarkerUse use);
  // Throws StoreUnavailable unless the root is a directory holding a store (its marker, or
  // an earlier release's manifests/).
  void RequireRootHoldsAStore() const;
  void EnsureDir(const char* sub, std::atomic<bool>& known);
  void EnsureChunkDirs();
  // Size of the chunk's file, nullopt if there is none (a link or anything but a regular
  // file does not count).
  std::optional<uint64_t> ChunkFileSize(int dir_fd, const std::string& hash);
  // The chunk file's stat if it is a regular file (never through a link).
  std::optional<struct stat> ChunkFileStat(int dir_fd, const std::string& hash);
  // Records are files <sub>/<image id><suffix> (".json"; manifests ".bin", or ".json" as the
  // first release wrote them).
  void WriteRecord(const char* sub, std::atomic<bool>& known, const std::string& image_id,
                   std::string_view suffix, const std::function<int(int fd)>& write,
                   const char* what);
  // An invalid fd when there is no such record.
  UniqueFd OpenRecord(const char* sub, const std::string& image_id, std::string_view suffix,
                      const char* what);
  std::optional<std::string> ReadRecord(const char* sub, const std::string& image_id,
                                        const char* what);
  void DeleteRecord(const char* sub, const std::string& image_id, std::string_view suffix,
                    const char* what);
  // Image ids with a record of any suffix, sorted, once each.
  std::vector<std::string> ListRecords(const char* sub);

  std::atomic<bool> direct_io_{true};  // false once the file system refused O_DIRECT
  // Where chunk files' marks are kept (KeepChunkMarksIn); null: trusted by their stamp.
  std::atomic<FileMarks*> chunk_marks_{nullptr};
  std::filesystem::path root_;
  std::string uri_;
  const Writes writes_;
  const Root root_policy_;
  // The home it serves and its place (SetOwner's, before the first Check): set once, then
  // only read.
  StoreClaim claim_;
  // Directories known to exist, so that a write does not mkdir every time.
  std::atomic<bool> root_known_{false};
  std::atomic<bool> chunks_known_{false};
  std::atomic<bool> manifests_known_{false};
  std::atomic<bool> images_known_{false};
  std::atomic<bool> chunk_dirs_known_{false};
  std::atomic<bool> packs_known_{false};
  std::atomic<bool> index_known_{false};

  // Group commit: chunks are written to temporary files and renamed into place in batches,
  // after one syncfs(2) for the whole batch, instead of an fsync (and a device cache flush)
  // per chunk file and per directory. A chunk is never visible before its bytes are on disk.
  // Names only, not directory fds: a batch of small chunks would hold too many open.
  struct PendingChunk {
    std::string hash;
    std::string tmp;  // the temporary file's name in the chunk's directory
    uint64_t bytes = 0;
  };
  void WriteChunkFile(int dir_fd, const std::string& hash, std::span<const std::byte> data);
  // Creates the temporary file dir_fd/tmp_name (`tmp` names it in messages), writes `data`
  // to it around the page cache where the file system allows, stamps it and returns it
  // open; calls fail(what, errno) (which throws) on an error.
  UniqueFd CreateWritten(int dir_fd, const std::string& tmp_name, const std::filesystem::path& tmp,
                         std::span<const std::byte> data,
                         const std::function<void(const std::string&, int)>& fail);
  // A chunk file not known right: reads and checks it; re-stamps it if right (and `stamp`),
  // quarantines it (and reports the damage) if not. True if it is right.
  bool Recheck(const std::string& hash, uint64_t length, bool stamp);
  void CommitPending(std::vector<PendingChunk> batch);
  void DiscardPending(const std::vector<PendingChunk>& batch) noexcept;
  void SyncFilesystem();
  std::mutex pending_mutex_;
  std::vector<PendingChunk> pending_;
  uint64_t pending_bytes_ = 0;
  std::chrono::steady_clock::time_point pending_since_;  // when the oldest was written
  // Renames whose directory entries are not on disk yet: synced before any manifest.
  std::atomic<bool> renames_unsynced_{false};
};

}  // namespace imagerelay
