// A region's byte store (DESIGN.md §4): content-addressed chunks, manifests and image
// records. One interface for local directories and S3 buckets.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <initializer_list>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <unordered_set>
#include <vector>

#include "imagerelay/cancel.hpp"
#include "imagerelay/error.hpp"
#include "imagerelay/manifest.hpp"

namespace imagerelay {

// How a store keeps a chunk's bytes: as they are, or zstd-compressed (a pack store's blocks).
// kZstdDelta: a block store's delta block (compressed against other blocks, its bases).
enum class ChunkCodec : uint8_t { kRaw = 0, kZstd = 1, kZstdDelta = 2 };

// A chunk's stored form, as a copy passes it from one store to another (GetChunkStoredInto,
// PutStoredChunk). `codec` is empty when the source cannot say (a chunk file of an earlier
// release, a store that does not compress); kRaw when it keeps the chunk uncompressed
// because compressing did not pay (`bytes` then empty: the stored form is the chunk);
// kZstd with the compressed bytes in `bytes`; kZstdDelta with a block store's delta in
// `bytes` and the hashes of its bases in `bases` (a store that holds those bases whole may
// keep the delta as it is; any other store writes the chunk itself).
struct StoredChunk {
  std::optional<ChunkCodec> codec;
  std::vector<std::byte> bytes;
  std::string bases;
};

struct SweepResult {
  size_t chunks_kept = 0;
  size_t chunks_removed = 0;
  uint64_t bytes_removed = 0;
};

// The chunks a sweep keeps: every chunk a manifest or a pinned copy names. Kept in a
// temporary on-disk table, not in memory: a 200 GiB image alone names 3.3 M blocks.
class MarkSet {
 public:
  MarkSet();
  MarkSet(std::initializer_list<std::string> hashes);
  ~MarkSet();
  MarkSet(const MarkSet&) = delete;
  MarkSet& operator=(const MarkSet&) = delete;
  void Add(const std::string& hash);  // 64 lowercase hex digits
  bool Contains(const std::string& hash) const;
  uint64_t size() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The home a store serves, written in its marker (store/store_marker.hpp says why a store
// serves one home): `id` is the home's identity (catalog setting home_id), `path` where it
// was, for messages only.
struct StoreOwner {
  std::string id;
  std::string path;
};

// How a store's marker is judged for the home that opens it (store/store_marker.hpp).
struct StoreClaim {
  StoreOwner me;      // an empty id: a caller that owns nothing (tests, tools), which leaves any
                      // owner in place
  std::string place;  // StorePlace::where of the store (store_place.hpp); "" unknown
  bool ours_by_place = false;  // it lies in me's own home directory, where no other home's
                               // store can be in use (a copied home's stores are copies):
                               // taken whoever marked it
  // Not empty: a store no home has marked is not claimed but refused, for this reason (the
  // store of a copied home's region outside it, taken for the original's).
  std::string unowned_is_theirs;
};

class Store {
 public:
  virtual ~Store() = default;

  // The store's URI for display (never a secret).
  virtual std::string uri() const = 0;
  // Takes the location as a store (it holds the store's marker, or is empty, or holds only
  // a store's layout of an earlier release: never someone else's files), creates the layout
  // if missing and proves the store is writable; throws TransferError(Region.StoreUnavailable)
  // with the reason otherwise.
  virtual void Check() = 0;
  // Check() for a store being made (a region being added): a local store's directory is
  // made if missing, and an empty one taken, which a store made already never does again
  // unless it lies in the home (OpenStore's `makes_local_root`).
  virtual void Create() { Check(); }
  // The home this store serves, before its first Check(): ClaimForOwner() and Create() claim
  // a store no home owns, and they and Check() refuse one another home owns
  // (Region.StoreUnavailable), as `claim` says. Its place is kept in the marker: a marker found at
  // another place is a copy's, no home's yet. Without an owner a store claims and refuses nothing.
  virtual void SetOwner(const StoreClaim& /*claim*/) {}
  // Throws TransferError(Region.StoreUnavailable) if the store's marker names another home
  // than SetOwner's; marks it as SetOwner's if it names none and `claim_unowned`. Asked when
  // a home opens the store, before any use. Nothing if there is no marker, or it cannot be
  // read now (Check() then says what is wrong).
  virtual void ClaimForOwner(bool /*claim_unowned*/ = true) {}
  // Gives the store up (its region removed): its marker names no home any more, so that
  // another home may take it. Nothing if this home does not own it.
  virtual void Release() {}
  // Throws TransferError(Region.StoreUnavailable) if the store's place no longer holds it (a
  // disk or share not mounted): asked before what seems gone is taken for lost. Nothing for
  // a store that cannot tell (an object store, a store made again where it is missing).
  virtual void RequirePresent() {}
  // Removes what writers that died left behind: temporary files of writers known to be gone
  // at once, others once older than an hour. Best effort; may list the whole store, so it
  // runs with sweeps, not on every Check().
  virtual void RemoveLeftovers() {}

  // The chunk calls take the copy's cancel token: a store that waits on the network aborts
  // a request in flight when it fires (throwing Cancelled); a local store may ignore it.
  virtual bool HasChunk(const std::string& hash, const CancelToken* cancel = nullptr) = 0;
  // True if chunk `hash` is stored with exactly `length` bytes and the store vouches for
  // them: their hash was checked when this store wrote them, or since. A chunk of another
  // length is damaged: a store that can tell says false (and PutChunk then writes it anew).
  // A local store re-reads a chunk file that was written to since it stored it, and
  // quarantines it (ReportDamage) if its bytes are wrong. The default, for stores that
  // cannot tell a length cheaply, is HasChunk.
  virtual bool HasChunkOfLength(const std::string& hash, uint64_t length,
                                const CancelToken* cancel = nullptr) {
    (void)length;
    return HasChunk(hash, cancel);
  }
  // One answer per hash, in order: HasChunk (HasChunkOfLength with lengths[i] when `lengths`
  // is given) over ExistenceCheckThreads() threads, or a bulk check where a store overrides
  // this.
  virtual std::vector<bool> HasChunks(const std::vector<std::string>& hashes,
                                      const CancelToken* cancel = nullptr,
                                      const std::vector<uint64_t>& lengths = {});
  // Stores the bytes under `hash` atomically: a reader sees all of them or no chunk.
  // The caller has verified that the bytes hash to `hash`. A store may group writes: the
  // chunk is durable and visible once PutChunk returns or, at the latest, once Flush()
  // (or PutManifest, which flushes first) returns. Returns the bytes the store writes for it
  // (compressed, if it compresses: what goes over the wire or onto the disk).
  virtual uint64_t PutChunk(const std::string& hash, std::span<const std::byte> data,
                            const CancelToken* cancel = nullptr) = 0;
  // Makes every chunk put so far durable and visible. `cancel`, if it fires, aborts a write
  // in flight (throwing Cancelled): the chunks it held are then simply not there.
  virtual void Flush(const CancelToken* /*cancel*/ = nullptr) {}
  // Reads a chunk into `out` (resized). Throws TransferError(Transfer.Failed) if missing.
  virtual void GetChunk(const std::string& hash, std::vector<std::byte>& out,
                        const CancelToken* cancel = nullptr) = 0;
  // Reads a chunk whose length the caller knows (a plan's, a manifest's) into the caller's
  // memory, `out` of exactly that length (a buffer of the data plane's pool): no vector is
  // resized, and a store that decodes chunks decodes straight into `out`. Returns the bytes
  // read (out.size()). A chunk of another length is damaged: DamagedChunkError, as for bytes
  // that do not match their name where the store checks its reads (ChecksReads). Missing:
  // TransferError(Transfer.Failed), as GetChunk. The default reads through GetChunk.
  virtual size_t GetChunkInto(const std::string& hash, std::span<std::byte> out,
                              const CancelToken* cancel = nullptr);
  // GetChunkInto, plus the chunk's stored form when the store keeps one (see StoredChunk):
  // the stored bytes are those that were decoded into `out` and checked against `hash`, so a
  // copy may write them as they are (PutStoredChunk) instead of compressing `out` again.
  // `stored.bytes` keeps its capacity from call to call.
  virtual size_t GetChunkStoredInto(const std::string& hash, std::span<std::byte> out,
                                    StoredChunk& stored, const CancelToken* cancel = nullptr) {
    stored.codec.reset();
    stored.bytes.clear();
    stored.bases.clear();
    return GetChunkInto(hash, out, cancel);
  }
  // Two chunks read and checked together, where the store does that for less than two reads
  // (ReadsPairs). True when both are in `out_a` and `out_b` with their stored forms, checked
  // as GetChunkStoredInto checks them. False when the store does not, or when either is not
  // a plain read (missing, damaged, moved, of another length, cancelled): nothing is reported
  // then, and the caller reads each alone (GetChunkStoredInto finds, retries and reports).
  virtual bool GetChunkPairStoredInto(const std::string& /*hash_a*/, std::span<std::byte> /*out_a*/,
                                      StoredChunk& /*stored_a*/, const std::string& /*hash_b*/,
                                      std::span<std::byte> /*out_b*/, StoredChunk& /*stored_b*/,
                                      const CancelToken* /*cancel*/ = nullptr) {
    return false;
  }
  // True if GetChunkPairStoredInto may succeed: a copy then hands it two chunks at once.
  virtual bool ReadsPairs() const { return false; }
  // GetChunk of two chunks at once, for a reader that does not know their lengths (a scrub):
  // as GetChunkPairStoredInto, true when both were read and checked together, false when the
  // store does not or either is not a plain read (nothing reported: read each alone).
  virtual bool GetChunkPair(const std::string& /*hash_a*/, std::vector<std::byte>& /*out_a*/,
                            const std::string& /*hash_b*/, std::vector<std::byte>& /*out_b*/,
                            const CancelToken* /*cancel*/ = nullptr) {
    return false;
  }
  // The chunk's bytes decoded into `out` WITHOUT checking them against `hash`: for a reader
  // that hashes every byte anyway and compares the SHA-256 of `out` with `hash` itself (a
  // verify, whose image digest names each block on the way: HashStoredImage). True where the
  // store read it plainly (a local pack store where ReadsPairs); false otherwise (missing,
  // damaged, moved, of another length, cancelled, another kind of store): nothing is
  // reported, and the caller reads it with GetChunkInto, which checks, retries and reports.
  // A caller whose hash does not match reads it again with GetChunkInto too.
  virtual bool GetChunkUncheckedInto(const std::string& /*hash*/, std::span<std::byte> /*out*/,
                                     const CancelToken* /*cancel*/ = nullptr) {
    return false;
  }
  // PutChunk of `data`, given also its stored form from GetChunkStoredInto of another store (it
  // decodes to exactly `data`, which the caller has verified hashes to `hash`): a store that
  // keeps chunks in that form writes its bytes as they are. The default writes `data`.
  virtual uint64_t PutStoredChunk(const std::string& hash, std::span<const std::byte> data,
                                  const StoredChunk& stored, const CancelToken* cancel = nullptr) {
    (void)stored;
    return PutChunk(hash, data, cancel);
  }
  // Tells the store which chunks are about to be read, in about that order (a copy's plan,
  // an export's chunk list): a store that keeps chunks side by side reads neighbours in one
  // request instead of one each. Only a hint; the reads may come in any order, or not at all.
  virtual void PlanReads(const std::vector<std::string>& /*hashes*/) {}
  // PlanReads for a reader free to choose the order (a scrub): first puts `hashes` in the
  // order that reads them fastest (a pack store's: by pack and offset, those it does not
  // hold last; the same names, only reordered), then plans them. The default keeps the order
  // given.
  virtual void PlanReadsInOrder(std::vector<std::string>& hashes) { PlanReads(hashes); }
  // True if GetChunk checks every chunk it returns against its name (throwing
  // DamagedChunkError otherwise): its callers need not hash the bytes again.
  virtual bool ChecksReads() const { return false; }
  // True if its reads and writes wait on a server (an object store): a copy keeps many in
  // flight to hide the wait. A store on a local disk hides its disk's own waits (read-ahead,
  // writes around the page cache): a copy between such stores is bound by its CPUs.
  virtual bool WaitsOnServer() const { return false; }
  // True if the caller is to write the chunk: as far as the store knows without a look at its
  // disk or server, it does not hold it (written lately by a writer of this process, or found
  // by a lookup since) and no other writer of this process is about to write it; the chunk
  // is then the caller's, and the others are told false until it is written or the store
  // flushed. A hint that may be wrong: a copy told false skips the chunk, and its confirmation
  // looks for it again (two copies into one region at once send each shared chunk once).
  virtual bool ClaimToWrite(const std::string& /*hash*/) { return true; }
  // Called when a lookup of the store itself finds a chunk damaged and quarantines it, so
  // that the owner marks the images that need it. Set once, before the store is shared.
  using DamageHandler = std::function<void(const std::string& hash, const std::string& why)>;
  void SetDamageHandler(DamageHandler handler) { damage_handler_ = std::move(handler); }

  // Server-side copy (S3 CopyObject when both stores live in one object store under the
  // same credentials): true if this store may be asked to copy chunks from `source`.
  virtual bool CanCopyChunksFrom(const Store& /*source*/) const { return false; }
  // Copies chunk `hash` (`length` bytes) from `source` without the bytes passing through
  // this process. Integrity as for GetChunk + PutChunk: the copy counts as written only
  // once the store proves its bytes hash to `hash`; one that does not is removed at once
  // (IntegrityError). Returns false when the stores cannot copy between them: the caller
  // then reads and verifies the bytes itself.
  virtual bool CopyChunkFrom(Store& /*source*/, const std::string& /*hash*/, uint64_t /*length*/,
                             const CancelToken* /*cancel*/) {
    return false;
  }
  virtual void DeleteChunk(const std::string& hash) = 0;
  // Takes a chunk whose bytes failed their check out of use: no lookup finds it any more,
  // so the next import or copy that needs it writes it anew. A local store keeps the bad
  // file aside under quarantine/ for inspection; the default deletes it.
  virtual void QuarantineChunk(const std::string& hash) { DeleteChunk(hash); }
  virtual std::vector<std::string> ListChunks() = 0;
  // Up to `limit` chunk names after `after` ("" = from the start), in order: a listing in
  // pages, so that a walk over a region's blocks needs the memory of a page. The default
  // slices ListChunks().
  virtual std::vector<std::string> ListChunksAfter(const std::string& after, size_t limit);
  // Removes every chunk not in `marked` (SweepStore below). The default lists the chunks and
  // deletes the unmarked ones; a store that packs chunks also rewrites packs mostly garbage.
  virtual SweepResult SweepUnmarked(const MarkSet& marked);

  virtual void PutManifest(const std::string& image_id, const Manifest& manifest) = 0;
  virtual std::optional<Manifest> GetManifest(const std::string& image_id) = 0;
  virtual void DeleteManifest(const std::string& image_id) = 0;
  virtual std::vector<std::string> ListManifests() = 0;  // image ids

  virtual void PutImageRecord(const std::string& image_id, const std::string& json) = 0;
  virtual std::optional<std::string> GetImageRecord(const std::string& image_id) = 0;
  virtual void DeleteImageRecord(const std::string& image_id) = 0;

 protected:
  // Lookups HasChunks runs at once: each waits on a disk or a server far more than it
  // computes, and a plan looks up every chunk of the image.
  virtual size_t ExistenceCheckThreads() const { return 1; }
  void ReportDamage(const std::string& hash, const std::string& why) {
    if (damage_handler_) damage_handler_(hash, why);
  }

 private:
  DamageHandler damage_handler_;
};

// The error GetChunkInto throws for a chunk of `found` bytes read where `expected` were.
DamagedChunkError WrongLengthChunk(const std::string& hash, const std::string& store_uri,
                                   uint64_t found, uint64_t expected);

// Opens the store behind a region URI: a path, a file:// URI or an s3:// URI (credentials
// from the environment). Local stores keep new chunks in packs (pack_store.hpp).
// Throws ValidationError(InvalidParameter) for a malformed URI.
std::unique_ptr<Store> OpenStore(const std::string& uri);

// Validates a store URI without touching it; returns a problem message or "" if fine.
std::string CheckStoreUri(const std::string& uri);

// The directory of a local store's URI (a path or a file:// URI), absolute; nullopt for an
// s3:// URI or one CheckStoreUri refuses.
std::optional<std::filesystem::path> LocalStoreDirectory(const std::string& uri);

// The distinct non-zero chunks of one window of a manifest (hashes from block `first`), with
// their lengths: what a window asks a store for.
struct DistinctChunks {
  std::vector<std::string> hashes;
  std::vector<uint64_t> lengths;
};
DistinctChunks DistinctChunksOf(const Manifest& manifest, uint64_t first,
                                const std::vector<std::string>& window);

// The non-zero chunks of `manifest` that `store` does not hold with their length: what must
// be there before the manifest may be committed. Looked up a window at a time.
struct MissingChunksReport {
  uint64_t count = 0;  // distinct within each window
  std::string first;   // the first one missing, if any
};
MissingChunksReport MissingChunks(Store& store, const Manifest& manifest,
                                  const CancelToken* cancel = nullptr);

// Mark and sweep: removes every chunk referenced by no manifest in the store and not in
// `pinned`. The caller guarantees no writer is in flight in this store.
SweepResult SweepStore(Store& store, const std::set<std::string>& pinned = {});

}  // namespace imagerelay
