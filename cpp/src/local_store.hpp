// A region store in a local directory (DESIGN.md §4):
//   <root>/chunks/<first two hex>/<hex>, <root>/manifests/<id>.json, <root>/images/<id>.json
// Every write goes to a temporary file in the same directory, is fsynced and renamed over
// the final name, and the directory is fsynced: readers never see a partial file.
// All methods may be called from several threads at once.
//
// Trust: a chunk file's modification time is set to kVerifiedStamp when the store writes it
// (its bytes were checked against its name by the caller). Any later write to the file
// changes that time, so a lookup that finds another time re-reads and checks the chunk
// before vouching for it (and re-stamps it, or quarantines it): one stat tells whether the
// bytes are still the ones that were checked. Scrub covers what this cannot see (media
// errors, a time forged on purpose).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "imagerelay/store.hpp"

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

class LocalStore : public Store, public ChunkSizeProbe {
 public:
  // `root` need not exist yet; `uri` is what uri() shows (the root itself if empty).
  explicit LocalStore(std::filesystem::path root, std::string uri = "");
  ~LocalStore() override;  // removes chunks written but never flushed

  std::string uri() const override { return uri_; }
  void Check() override;
  void RemoveLeftovers() override;

  // Disk I/O is short: the cancel tokens are checked between chunks, not inside these.
  bool HasChunk(const std::string& hash, const CancelToken* cancel = nullptr) override;
  bool HasChunkOfLength(const std::string& hash, uint64_t length,
                        const CancelToken* cancel = nullptr) override;
  void PutChunk(const std::string& hash, std::span<const std::byte> data,
                const CancelToken* cancel = nullptr) override;
  void Flush() override;
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

  const std::filesystem::path& root() const { return root_; }
  // Where a chunk's file lives (whether or not it exists). Validates the hash.
  std::filesystem::path ChunkPath(const std::string& hash) const;

 protected:
  // Cold directory lookups wait on the disk; several in flight keep its queue busy.
  size_t ExistenceCheckThreads() const override { return 8; }

 private:
  std::filesystem::path ChunkDir(const std::string& hash) const;
  void EnsureDir(const std::filesystem::path& dir, std::atomic<bool>& known);
  void EnsureChunkDirs();
  void WriteRecord(const std::filesystem::path& dir, std::atomic<bool>& known,
                   const std::string& image_id, const std::string& text, const char* what);
  std::optional<std::string> ReadRecord(const std::filesystem::path& dir,
                                        const std::string& image_id, const char* what);
  void DeleteRecord(const std::filesystem::path& dir, const std::string& image_id,
                    const char* what);
  std::vector<std::string> ListRecords(const std::filesystem::path& dir);
  void RemoveStaleTemps(const std::filesystem::path& dir);

  std::atomic<bool> direct_io_{true};  // false once the file system refused O_DIRECT
  std::filesystem::path root_;
  std::filesystem::path chunks_dir_;
  std::filesystem::path manifests_dir_;
  std::filesystem::path images_dir_;
  std::string uri_;
  // Directories known to exist, so that a write does not mkdir every time.
  std::atomic<bool> root_known_{false};
  std::atomic<bool> chunks_known_{false};
  std::atomic<bool> manifests_known_{false};
  std::atomic<bool> images_known_{false};
  std::atomic<bool> chunk_dirs_known_{false};

  // Group commit: chunks are written to temporary files and renamed into place in batches,
  // after one syncfs(2) for the whole batch, instead of an fsync (and a device cache flush)
  // per chunk file and per directory. A chunk is never visible before its bytes are on disk.
  struct PendingChunk {
    std::filesystem::path tmp;
    std::filesystem::path final_path;
    uint64_t bytes = 0;
  };
  void WriteChunkFile(const std::string& hash, std::span<const std::byte> data);
  // A chunk file not stamped by this store: reads and checks it; re-stamps it if right,
  // quarantines it (and reports the damage) if not. True if it is right.
  bool Recheck(const std::string& hash, uint64_t length);
  void CommitPending(std::vector<PendingChunk> batch);
  void SyncFilesystem();
  std::mutex pending_mutex_;
  std::vector<PendingChunk> pending_;
  uint64_t pending_bytes_ = 0;
  std::chrono::steady_clock::time_point pending_since_;  // when the oldest was written
  // Renames whose directory entries are not on disk yet: synced before any manifest.
  std::atomic<bool> renames_unsynced_{false};
};

}  // namespace imagerelay
