// The block store (docs/data-plane-v2.md, issue #12): a region's chunks ("blocks", 64 KiB
// by default) kept inside large pack files / objects with a per-region index, instead of one
// file or object per chunk. Wraps the region's LocalStore or S3Store (`base`), which keeps the
// manifests, the image records and the chunk files of earlier releases (still read, never
// written: new chunks go into packs) and offers its pack area (PackFiles).
//
// Writes: PutChunk encodes the block (zstd when it pays) in the caller's thread and appends
// it to the pack being assembled; a pack of pack_size bytes is written as a whole (staged);
// a background thread commits groups of staged packs (one flush of the disk, then renames,
// then one index transaction). Flush() writes the pack in progress and waits for those
// being written and committed. A block is looked up only once indexed.
// Reads: the index gives the pack and range; the block is decoded and checked against its
// hash (DamagedChunkError otherwise). On a store whose reads cost a request, neighbouring
// blocks are read in one ranged request and kept for the readers that come for them.
// Trust: a pack whose mark (PackStat::mark: a local file's inode, size and change time) is
// not the one the index recorded when its bytes were known right (written by this store, or
// re-read whole and found right) is re-read whole before a lookup vouches for its blocks; a
// pack indexed from its footer has no mark until then. A vanished pack's blocks are reported
// damaged.
// The index is a cache of the packs' footers: packs missing from it are indexed from their
// footers when the store is opened, packs gone are dropped from it.
// All methods may be called from several threads at once.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <stop_token>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "base/uninitialized_bytes.hpp"
#include "imagerelay/store.hpp"
#include "store/block_index.hpp"
#include "store/local_store.hpp"  // ChunkSizeProbe
#include "store/pack.hpp"
#include "store/pack_files.hpp"

namespace imagerelay {

struct PackStoreOptions {
  uint64_t pack_size = 16ULL << 20;  // a pack is written once its blocks reach this many bytes
  int zstd_level = 1;                // 0: store blocks raw
  // A sweep rewrites the live blocks of packs whose live bytes fall below this share.
  double repack_below = 0.5;
  // A pack is also written once its first block has waited this long (a slow copy).
  std::chrono::milliseconds max_pack_age{1000};
  // Planned reads (PlanReads) of neighbouring blocks are merged into requests of up to this
  // many bytes.
  uint64_t read_span = 4ULL << 20;
  // A span read ahead (a local store's plan) is let go once its readers have taken this many
  // blocks from other spans since they last took one from it: the rest of its blocks were
  // read another way (a delta's base from the cache of bases), or are no longer needed. (A
  // pack may interleave the blocks of a few regions of an image: an import's workers add
  // theirs side by side. The spans of such a pack serve their readers by turns.)
  uint64_t read_ahead_idle = 4096;
  // The buffers kept for the next spans read ahead are freed once there has been nothing to
  // read ahead for this long.
  std::chrono::milliseconds read_ahead_release{2000};
  // A new block that compresses is stored as a delta against the (at most 2) committed whole
  // blocks it resembles most, when that saves at least an eighth (docs/data-plane-v2.md).
  bool deltas = true;
};

class PackStore final : public Store, public ChunkSizeProbe {
 public:
  // `packs` is the pack area of `base` (the same object for the local and the S3 store).
  PackStore(std::unique_ptr<Store> base, PackFiles& packs, PackStoreOptions options = {});
  ~PackStore() override;  // blocks never flushed are dropped (no pack is written)

  std::string uri() const override { return base_->uri(); }
  void Check() override;
  void Create() override;
  void RemoveLeftovers() override { base_->RemoveLeftovers(); }
  void SetOwner(const StoreClaim& claim) override { base_->SetOwner(claim); }
  void ClaimForOwner(bool claim_unowned = true) override { base_->ClaimForOwner(claim_unowned); }
  void Release() override { base_->Release(); }

  bool HasChunk(const std::string& hash, const CancelToken* cancel = nullptr) override;
  bool HasChunkOfLength(const std::string& hash, uint64_t length,
                        const CancelToken* cancel = nullptr) override;
  std::vector<bool> HasChunks(const std::vector<std::string>& hashes,
                              const CancelToken* cancel = nullptr,
                              const std::vector<uint64_t>& lengths = {}) override;
  uint64_t PutChunk(const std::string& hash, std::span<const std::byte> data,
                    const CancelToken* cancel = nullptr) override;
  void PlanReads(const std::vector<std::string>& hashes) override;
  void PlanReadsInOrder(std::vector<std::string>& hashes) override;
  void Flush(const CancelToken* cancel = nullptr) override;
  void GetChunk(const std::string& hash, std::vector<std::byte>& out,
                const CancelToken* cancel = nullptr) override;
  // Decodes a block straight into `out` (a raw block is read into it).
  size_t GetChunkInto(const std::string& hash, std::span<std::byte> out,
                      const CancelToken* cancel = nullptr) override;
  // A block's stored form comes with it (a chunk file of an earlier release has none).
  size_t GetChunkStoredInto(const std::string& hash, std::span<std::byte> out, StoredChunk& stored,
                            const CancelToken* cancel = nullptr) override;
  // Both blocks decoded, then checked together (base/sha256_pair.hpp); on a local disk only
  // (an object store's reads wait on the server: one worker waiting on two would halve them).
  bool GetChunkPairStoredInto(const std::string& hash_a, std::span<std::byte> out_a,
                              StoredChunk& stored_a, const std::string& hash_b,
                              std::span<std::byte> out_b, StoredChunk& stored_b,
                              const CancelToken* cancel = nullptr) override;
  bool ReadsPairs() const override;
  bool GetChunkPair(const std::string& hash_a, std::vector<std::byte>& out_a,
                    const std::string& hash_b, std::vector<std::byte>& out_b,
                    const CancelToken* cancel = nullptr) override;
  // Decoded as GetChunkInto decodes, its bases unchecked too; local disks only, as pairs.
  bool GetChunkUncheckedInto(const std::string& hash, std::span<std::byte> out,
                             const CancelToken* cancel = nullptr) override;
  // Writes a compressed block's bytes as they are, and an incompressible one raw without
  // trying to compress it again; a delta as it is if this store holds its bases whole; a
  // block of unknown form (or a delta whose bases it lacks) is encoded as PutChunk does.
  uint64_t PutStoredChunk(const std::string& hash, std::span<const std::byte> data,
                          const StoredChunk& stored, const CancelToken* cancel = nullptr) override;
  bool ChecksReads() const override { return true; }
  bool WaitsOnServer() const override { return packs_.RemoteReads(); }
  bool ClaimToWrite(const std::string& hash) override;
  void DeleteChunk(const std::string& hash) override;
  // Forgets the block (its bytes stay in the pack until a sweep rewrites it) or quarantines
  // the chunk file of an earlier release.
  void QuarantineChunk(const std::string& hash) override;
  std::vector<std::string> ListChunks() override;
  // From the index, a page at a time (a store that still holds chunk files lists them all).
  std::vector<std::string> ListChunksAfter(const std::string& after, size_t limit) override;
  SweepResult SweepUnmarked(const MarkSet& marked) override;

  void PutManifest(const std::string& image_id, const Manifest& manifest) override;
  std::optional<Manifest> GetManifest(const std::string& image_id) override {
    return base_->GetManifest(image_id);
  }
  void DeleteManifest(const std::string& image_id) override { base_->DeleteManifest(image_id); }
  std::vector<std::string> ListManifests() override { return base_->ListManifests(); }
  void PutImageRecord(const std::string& image_id, const std::string& json) override {
    base_->PutImageRecord(image_id, json);
  }
  std::optional<std::string> GetImageRecord(const std::string& image_id) override {
    return base_->GetImageRecord(image_id);
  }
  void DeleteImageRecord(const std::string& image_id) override {
    base_->DeleteImageRecord(image_id);
  }

  std::optional<uint64_t> StoredChunkSize(const std::string& hash) override;

  Store& base() { return *base_; }
  // Buffers of spans gone kept for the next ones (see read_ahead_release).
  size_t KeptReadBuffers();

 private:
  // Blocks found lost (hash, why): reported once no lock is held (the handler reads manifests).
  using Lost = std::vector<std::pair<std::string, std::string>>;
  std::unique_ptr<PackBuilder> NewBuilder();
  BlockIndex& Index();  // opened, and brought in line, on first use
  // Brings the index in line with the packs the store holds (see above).
  void Reconcile();
  Lost ReconcileLocked();  // under index_mutex_
  void ReportLost(const Lost& lost);
  // Indexes a pack from its footer; false if it is not a whole pack (then quarantined).
  bool IndexFromFooter(const std::string& pack, uint64_t size);
  // A pack written, not yet committed (PackFiles::StagePack).
  using Staged = IndexedPack;
  // Writes a full builder's pack (staged); WriterLoop commits the staged packs once they are
  // many. The caller counted it in sealing_.
  void Seal(std::unique_ptr<PackBuilder> builder, const CancelToken* cancel);
  // Commits staged packs and indexes them (counted in committing_ by the caller).
  void CommitStaged(std::vector<Staged> batch);
  void CommitAllStaged(const CancelToken* cancel = nullptr);
  // A local store's flush: writes the pack being built and commits it with every staged
  // pack, their index rows prepared while the packs are written and synced.
  void CommitEverything();
  // Waits until no pack is being written or committed; throws Cancelled if `cancel` fires
  // first.
  void WaitWritesLocked(std::unique_lock<std::mutex>& lock, const CancelToken* cancel);
  // True if the store still vouches for `pack` (see Trust above). Re-reads a touched pack.
  bool Vouch(const std::string& pack);
  // The mark of a pack this store has just written (empty on an object store).
  std::string MarkOfWritten(const std::string& pack);
  // Re-reads every indexed block of a pack; those found wrong are forgotten and reported.
  // True if every block was right; then `mark` (taken before the reads) is recorded.
  bool RecheckPack(const std::string& pack, const std::string& mark);
  // A pack that the index names and the store does not hold: forgets it, reports its blocks.
  void PackVanished(const std::string& pack);
  void ForgetVanishedLocked(const std::string& pack, Lost& lost);  // under index_mutex_
  // Where block `hash` is: the index, after a flush if it is still being written, after a
  // reconcile on an object store (another host may have written it). nullopt: not in a pack.
  std::optional<BlockLocation> Locate(const std::string& hash);
  // Reads a chunk file of an earlier release into `out` (checked); TransferError if none.
  void ReadLegacy(const std::string& hash, std::vector<std::byte>& out, const CancelToken* cancel);
  // GetChunk(Stored)Into: where the block was read, `stored` holding its bytes if compressed;
  // nullopt for a chunk file of an earlier release (read into `out` all the same).
  std::optional<BlockLocation> ReadChunk(const std::string& hash, std::span<std::byte> out,
                                         std::vector<std::byte>& stored, const CancelToken* cancel);
  // Reads the block at `where` into `out` (its length): where the index says now if a sweep
  // moved it meanwhile. Returns where it was read.
  BlockLocation ReadLocated(BlockLocation where, const std::string& hash, std::span<std::byte> out,
                            std::vector<std::byte>& stored, const CancelToken* cancel);
  // Reads a block's stored bytes (into `out` itself if raw, else into `stored`) and decodes
  // them into `out` (checked).
  void ReadBlock(const BlockLocation& where, const std::string& hash, std::span<std::byte> out,
                 std::vector<std::byte>& stored, const CancelToken* cancel);
  // ReadBlock but for the check against the hash, which the caller makes at once
  // (GetChunkPairStoredInto); false if the pack holds less than the block.
  bool ReadBlockUnchecked(const BlockLocation& where, const std::string& hash,
                          std::span<std::byte> out, std::vector<std::byte>& stored,
                          const CancelToken* cancel);
  // Where two blocks are (each nullopt when not found, both when the lookup failed).
  std::pair<std::optional<BlockLocation>, std::optional<BlockLocation>> LocatePair(
      const std::string& hash_a, const std::string& hash_b);
  // Two located blocks read, then checked together (GetChunkPairStoredInto, GetChunkPair);
  // false for anything but a plain read of both (nothing reported).
  bool ReadPairLocated(const BlockLocation& a, const std::string& hash_a,
                       std::span<std::byte> out_a, StoredChunk& stored_a, const BlockLocation& b,
                       const std::string& hash_b, std::span<std::byte> out_b, StoredChunk& stored_b,
                       const CancelToken* cancel);
  // Where a block's stored bytes are read: `out` itself for a raw block, else `stored`.
  static std::span<std::byte> StoredTarget(const BlockLocation& where, std::span<std::byte> out,
                                           std::vector<std::byte>& stored);
  // Sets `stored`'s codec and bases (and empties its bytes where the stored form is the
  // block itself) as GetChunkStoredInto gives them for a block read from `where` (nullopt: a
  // chunk file of an earlier release).
  void DescribeStored(const std::optional<BlockLocation>& where, StoredChunk& stored);
  // Appends an encoded block of `raw_length` bytes to the pack being built (PutChunk), with
  // a delta's bases, or a whole block's resemblance features.
  uint64_t PutEncoded(const std::string& hash, EncodedBlock encoded, uint32_t raw_length,
                      const CancelToken* cancel, const std::string& bases = {},
                      const std::vector<uint64_t>& features = {});
  // Writes `raw`, compressed as `whole` (kZstd), as a delta against the blocks it resembles
  // if that pays, else whole and sketched (a base for the blocks that come).
  // Whether a block of this length is sketched and may be a delta (deltas on, at most 1 MiB).
  bool Sketches(std::span<const std::byte> raw) const;
  // The block's resemblance features, keyed by the writer's scope (valid until the thread's
  // next call).
  static const std::vector<uint64_t>& ScopedSketch(std::span<const std::byte> raw);
  uint64_t PutCompressed(const std::string& hash, std::span<const std::byte> raw,
                         EncodedBlock whole, const CancelToken* cancel);
  // How a delta's bases are read. kChecked: each decoded and checked against its hash like
  // any block (what a writer encodes against). kUnchecked: decoded only, for a read that then
  // checks the delta's own bytes against its hash (a wrong base cannot make them match); if
  // they do not match, the bases are read again kChecked, which finds a bad one. (A base
  // costs a delta's read a decompression and, checked, a SHA-256 as long again.)
  enum class BaseCheck { kChecked, kUnchecked };
  // The raw bytes of a delta's bases, joined, as ReadBases gives them: one base is its cached
  // copy itself (held here while in use: no copy), two are copied side by side (zstd takes one
  // prefix). Reused by its owner from read to read.
  class JoinedBases {
   public:
    std::span<const std::byte> bytes() const { return bytes_; }

   private:
    friend class PackStore;
    std::vector<std::shared_ptr<const UninitializedBytes>> held_;
    std::vector<std::byte> joined_;
    std::span<const std::byte> bytes_;
  };
  // The raw bytes of a delta's bases (`bases`: PackEntry::bases), joined into `out` (each kept
  // in base_cache_ for the next deltas). A base found damaged or missing by a checked read is
  // forgotten with the deltas built on it (reported); then DamagedChunkError naming `delta`.
  // `direct`: read from the packs without the read path's retries and reconciles (a sweep,
  // which holds the layout lock).
  void ReadBases(const std::string& delta, const std::string& bases, JoinedBases& out,
                 const CancelToken* cancel, BaseCheck check, bool direct = false);
  // One base read unchecked into `out`; false if it could not be (then it is read checked).
  bool ReadBaseUnchecked(const std::string& base, UninitializedBytes& out,
                         const CancelToken* cancel, bool direct);
  // One base read checked into `out` (see ReadBases).
  void ReadBaseChecked(const std::string& delta, const std::string& base, UninitializedBytes& out,
                       const CancelToken* cancel, bool direct);
  // Forgets a block found damaged, reports it (unless its caller does) and the deltas built
  // on it (gone with it).
  void ForgetDamaged(const std::string& hash, const std::string& why, bool report_self = true);
  // Decodes a block of a pack (`stored`: its bytes as stored), its bases read if a delta.
  void DecodeEntry(std::span<const std::byte> stored, const PackEntry& entry,
                   std::vector<std::byte>& out, const std::string& pack, bool direct = false);
  // Whole blocks recently read as bases, most recent first; `checked`: found to match their
  // hash (an unchecked one is hashed before a writer uses it).
  struct CachedBase {
    std::string hash;
    std::shared_ptr<const UninitializedBytes> bytes;
    bool checked = false;
  };
  std::mutex base_cache_mutex_;
  std::list<CachedBase> base_cache_;
  uint64_t base_cache_bytes_ = 0;
  // Reads [offset, offset + out.size()) of a pack: with the rest of its planned run if it has
  // one (see PlanReads), else alone.
  bool ReadRange(const std::string& pack, uint64_t offset, std::span<std::byte> out,
                 const CancelToken* cancel);
  bool HasLegacyChunks();
  std::string Where(const std::string& pack) const;

  // The base store's first-release chunk files' marks, kept in the block index.
  class IndexMarks final : public FileMarks {
   public:
    explicit IndexMarks(PackStore& store) : store_(store) {}
    std::string MarkOf(const std::string& file) override { return store_.Index().MarkOf(file); }
    void SetMark(const std::string& file, const std::string& mark) override {
      store_.Index().SetMark(file, mark);
    }

   private:
    PackStore& store_;
  };
  IndexMarks chunk_marks_{*this};  // before base_: it outlives the store that uses it
  std::unique_ptr<Store> base_;
  PackFiles& packs_;
  const PackStoreOptions options_;

  // An object store's index cache is brought in line with the bucket at the first lookup
  // after a flush (see HasChunks).
  std::atomic<bool> reconcile_due_{true};
  // Held by a sweep from its first change to its last, and by Reconcile: a reconcile that
  // saw a pack on disk before a sweep dropped it (and the index after) would index it again,
  // and its blocks would then point into a pack that is gone.
  std::mutex layout_mutex_;
  std::mutex index_mutex_;
  std::unique_ptr<BlockIndex> index_;
  std::optional<bool> legacy_chunks_;  // does base_ hold chunk files of an earlier release?

  std::mutex write_mutex_;  // guards the members below
  std::condition_variable sealed_cv_;
  std::unique_ptr<PackBuilder> builder_;
  std::vector<PackBytes> spare_buffers_;  // of packs written, for the next builders
  std::vector<Staged> staged_;
  uint64_t staged_bytes_ = 0;
  std::chrono::steady_clock::time_point staged_since_;   // when the oldest was staged
  std::chrono::steady_clock::time_point builder_since_;  // when its first block came
  std::unordered_set<std::string> pending_;              // blocks added, not indexed yet
  std::unordered_set<std::string> claimed_;              // ClaimToWrite's, until written or a flush
  int sealing_ = 0;                                      // packs being written
  int committing_ = 0;                                   // groups of staged packs being committed
  std::string write_error_;                              // the last failed pack write, for Flush()
  // Commits each group of staged packs (kCommitBytes), and writes the pack in progress once
  // it has waited max_pack_age, even when no more blocks come (a stalled source): started
  // with the first block.
  void WriterLoop(std::stop_token stop);
  std::condition_variable_any writer_cv_;
  std::jthread writer_thread_;  // last: stopped and joined before the members it uses go

  // Planned reads (PlanReads): runs of neighbouring blocks to read in one request, per pack,
  // sorted by start. On an object store a run is read when the first of its blocks is asked
  // for, into a span that the readers of its other blocks take their bytes from. On a local
  // store two threads read the runs ahead of the readers, in the plan's order, into such
  // spans, around the page cache (PackFiles::ReadPackAhead) into huge pages: the disk gets
  // ~1 MiB reads, not the few hundred KiB of the page cache's read-ahead, and the copy no
  // kernel copy out of the cache (a cold 2 GiB replicate 2.3-3.0 s instead of 3.0-4.5;
  // docs/data-plane-v2.md, item 5).
  struct Run {
    uint64_t begin = 0;
    uint64_t end = 0;
    uint32_t blocks = 1;
  };
  struct Span {
    std::string pack;
    uint64_t begin = 0;
    uint64_t length = 0;
    HugePageBytes buffer;  // the run's bytes start at `skip` (a direct read starts at a page)
    size_t skip = 0;
    uint64_t plan = 0;      // the plan it was read for (plan_ then)
    bool ahead = false;     // read ahead (else by a reader, for itself and the others)
    uint64_t last_use = 0;  // read ahead: served_ when it was read, or last served from
    bool loading = true;    // being read; its readers wait for it
    bool failed = false;
    // Blocks of its run not served yet. A span serves the plan it was read for only: taken
    // out once they all are, and by the next plan, so that a later read (a verify after a
    // copy) goes to the store again and finds damage done since.
    uint32_t unread = 0;
    const std::byte* at(uint64_t offset) const {
      return buffer.data() + skip + static_cast<size_t>(offset - begin);
    }
  };
  // Buffers of spans gone, for the next ones (the kernel zeroes a fresh buffer as it is first
  // touched: a copy allocating one per span spent as long on that as on reading). Before
  // spans_: its spans come back here.
  std::mutex spare_spans_mutex_;
  std::vector<HugePageBytes> spare_spans_;
  // A span for `run` of `pack`, for the current plan, its buffer reused if one is kept.
  // Under read_mutex_.
  std::shared_ptr<Span> NewSpan(const std::string& pack, const Run& run);
  // Its own lock: every read looks here first, and would otherwise wait on the spans' lock.
  std::mutex planned_mutex_;  // guards the two below
  // Where the planned blocks are, by hash, taken out when read (bounded: a plan nobody reads
  // is dropped by the next one that would not fit).
  std::unordered_map<std::string, BlockLocation> planned_where_;
  // Where the planned deltas' bases are (kept, not taken: a base serves many deltas). Only a
  // hint for unchecked reads: a stale one fails the delta's check, and the bases are then
  // looked up afresh and read checked.
  std::unordered_map<std::string, BlockLocation> planned_bases_;
  std::mutex read_mutex_;  // guards the members below
  std::condition_variable span_cv_;
  std::unordered_map<std::string, std::vector<Run>> runs_;
  size_t planned_runs_ = 0;
  uint64_t plan_ = 0;                       // the current plan's number
  std::list<std::shared_ptr<Span>> spans_;  // most recent first
  // The run of `runs` (sorted by start) that holds [offset, offset + length), if one does.
  // PlanReads of `hashes` already located (`found`, nullopt: not held), in reading order.
  void PlanLocated(const std::vector<std::string>& hashes,
                   std::vector<std::optional<BlockLocation>> found);
  static std::optional<size_t> RunHolding(const std::vector<Run>& runs, uint64_t offset,
                                          uint64_t length);
  // The run planned for a block at [offset, offset + length) of `pack`, taken out of the
  // plan (nullopt if none). Under read_mutex_.
  std::optional<Run> TakeRun(const std::string& pack, uint64_t offset, uint64_t length);
  // Serves [offset, offset + out.size()) of `pack` from a span of the current plan: true if
  // one held it, false if none does. Waits for a span being read. Called under `lock`, which
  // it lets go of to copy the bytes (it holds the span meanwhile).
  bool ServeFromSpan(std::unique_lock<std::mutex>& lock, const std::string& pack, uint64_t offset,
                     std::span<std::byte> out, const CancelToken* cancel);
  // Makes every plan so far void: a sweep has deleted or rewritten packs they read from.
  void DropPlannedReads();

  // The read-ahead of a local store's plan: its runs in the order of their first blocks (and
  // their bases) in the plan, read once the plan's first block is (damage done between a plan
  // and its reads is found by them), at most kAheadSpans spans not yet served.
  std::deque<std::pair<std::string, Run>> ahead_;
  bool ahead_started_ = false;
  uint64_t served_ = 0;  // blocks served from spans read ahead
  size_t AheadSpansLocked() const;
  // A span's read is done (`skip`: where its bytes start; nullopt: it failed). Under
  // read_mutex_.
  void FinishLoadingLocked(const std::shared_ptr<Span>& span, std::optional<size_t> skip);
  void ReadAheadLoop(std::stop_token stop);
  std::condition_variable_any ahead_cv_;
  std::vector<std::jthread> ahead_threads_;  // last: stopped and joined before the members go
};

}  // namespace imagerelay
