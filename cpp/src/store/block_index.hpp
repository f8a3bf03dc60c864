// A region's block index (docs/data-plane-v2.md, issue #12):
// block hash -> (pack, offset, lengths, codec). Kept on disk (SQLite, a table keyed by the
// hash), so that a region of millions of blocks costs the memory of SQLite's page cache, not
// of its entries (restic's best-known complaint is an index held whole in memory). It holds
// nothing that the packs' footers do not: it can be dropped and rebuilt from them.
// Safe to call from several threads of one process, and from several processes (SQLite WAL).
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "base/chunk_name_hash.hpp"
#include "store/block_key_map.hpp"
#include "store/pack.hpp"

namespace imagerelay {

struct BlockLocation {
  std::string pack;  // the pack's id
  uint64_t offset = 0;
  uint32_t stored_length = 0;
  uint32_t raw_length = 0;
  BlockCodec codec = BlockCodec::kRaw;
  std::string bases;  // a delta block's bases (PackEntry::bases)
  bool operator==(const BlockLocation&) const = default;
};

// The pack entry of block `hash` found at `where` (what DecodeBlock checks it against).
inline PackEntry EntryAt(const std::string& hash, const BlockLocation& where) {
  return PackEntry{hash,        where.offset, where.stored_length, where.raw_length,
                   where.codec, where.bases};
}

// What a presence check needs of a batch of blocks, without a location (and its pack's name)
// per block: for each hash, its pack as an index into `packs` (-1: not indexed) and its
// length.
struct BlockPresence {
  // The distinct packs of the blocks found, and of the bases of those that are deltas (a
  // delta is there only while its bases are).
  std::vector<std::string> packs;
  std::vector<int32_t> pack_of;      // per hash
  std::vector<uint32_t> raw_length;  // per hash, 0 where not indexed
};

// A pack as the index lists it: its name, size and footer entries, and its mark (PackStat)
// when it was written, if the storage gives one.
struct IndexedPack {
  std::string name;
  uint64_t size = 0;
  std::vector<PackEntry> entries;
  std::string mark;
  // Resemblance features (BlockSketch) of its whole blocks: (feature, index in entries).
  std::vector<std::pair<uint64_t, uint32_t>> features;
};

class BlockIndex {
 public:
  // Opens (creating) the index at `file`; one that is not a database or is corrupt is set
  // aside (`<file>.damaged-<time>`) and a new one made, for the caller to fill from the
  // packs' footers. Throws TransferError(Region.StoreUnavailable) naming the file when it
  // cannot.
  static std::unique_ptr<BlockIndex> Open(const std::filesystem::path& file);
  ~BlockIndex();

  // Indexes every block of a pack, in one transaction: all or none after a crash. A block
  // already indexed in another pack keeps its place (the first copy is as good as any).
  // `replaced` packs are forgotten in the same transaction (a repack's old packs), so that
  // a crash leaves either the old packs' entries or the new one's.
  void AddPack(const std::string& pack_id, uint64_t pack_size,
               const std::vector<PackEntry>& entries,
               const std::vector<std::string>& replaced = {});
  // Indexes several packs in one transaction: one write of the pages they touch (the blocks
  // of a group commit land all over the table, keyed by hash). A delta block whose bases are
  // not all indexed whole (one forgotten since the writer chose it) is left out: a delta is
  // indexed only while its bases are. `before_commit`, if given, runs inside the transaction
  // once every row is in: it may wait for the packs to become durable (their rows are
  // prepared meanwhile) and returns each pack's mark (IndexedPack::mark is used without it),
  // or throws: then nothing is indexed.
  void AddPacks(const std::vector<IndexedPack>& packs,
                const std::function<std::vector<std::string>()>& before_commit = {});
  // A file's mark (PackStat::mark) when its bytes were last known right: a pack's (by its
  // name) when it was written or re-read whole and found right, a first-release chunk file's
  // (by its hash) when it was re-read and found right. Empty if none is recorded (a pack
  // indexed from its footer, by an earlier release, or rebuilt): then nothing vouches for
  // the file unread.
  std::string MarkOf(const std::string& file);
  void SetMark(const std::string& file, const std::string& mark);
  // Forgets a pack (and its mark) and the blocks located in it (before the pack is deleted).
  void RemovePack(const std::string& pack_id);
  // Forgets one block (found damaged): the next writer of its hash stores it anew. The delta
  // blocks built on it go with it (returned): nothing could decode them.
  std::vector<std::string> RemoveBlock(const std::string& hash);
  // Forgets blocks nothing needs any more, in one transaction (their bytes stay in their
  // packs until a sweep rewrites them), and the deltas built on them.
  void RemoveBlocks(const std::vector<std::string>& hashes);
  // Forgets the delta blocks one of whose bases is no longer indexed (a pack gone, an index
  // rebuilt from footers in which a base's pack is missing); returns them.
  std::vector<std::string> RemoveOrphanDeltas();
  // Calls fn(delta, base) for every base of every indexed delta block.
  void ForEachDeltaBase(const std::function<void(const std::string&, const std::string&)>& fn);
  // Up to `limit` whole blocks (not deltas) whose recorded features most of `features` name,
  // most named first: candidates for the bases of a new block. Only a hint: an entry may be
  // stale (then ignored) or lost (a hash collision overwrote it).
  std::vector<std::string> SimilarBlocks(const std::vector<uint64_t>& features, size_t limit);
  // Drops resemblance rows that name a block no longer indexed, looking at up to `rows` of
  // them from where the last call stopped (wrapping around): a sweep's share, in proportion
  // to the blocks it removed (PackStore::SweepUnmarked). Returns the rows dropped.
  size_t PruneFeatures(size_t rows);
  // The indexed blocks of a pack, by offset (a pack's blocks no longer indexed are garbage).
  // `left_out`, if given, counts the pack's rows that name no block (RowNamesABlock).
  std::vector<PackEntry> EntriesOf(const std::string& pack_id, size_t* left_out = nullptr);
  // Every indexed block's hash, sorted.
  std::vector<std::string> Hashes();
  // Up to `limit` hashes after `after`, in order: a listing in pages.
  std::vector<std::string> HashesAfter(const std::string& after, size_t limit);
  // One answer per hash, in order, from one read; nullopt where the block is not indexed.
  std::vector<std::optional<BlockLocation>> Lookup(const std::vector<std::string>& hashes);
  // Lookup's answers, from those kept by earlier lookups when every hash has one (no SQLite,
  // and no look at the `changes` count: stale after a removal until the next Lookup or
  // Presence asks), so only for a hint that a later check settles (the bases of a delta block
  // are checked again when its pack is indexed, AddPacks).
  std::vector<std::optional<BlockLocation>> LookupHint(const std::vector<std::string>& hashes);
  // True if a kept answer has the block (indexed when last asked or committed): a hint, as
  // LookupHint's.
  bool Kept(const std::string& hash);
  // The same answers as Lookup, as a presence check needs them.
  BlockPresence Presence(const std::vector<std::string>& hashes);
  uint64_t BlockCount();
  // Packs that blocks of an index moved from format 1 name but that index did not list (their
  // size unknown until a reconcile reads their footers).
  std::vector<std::string> UnlistedPacks();
  // Every indexed pack (with its size), sorted by name, whether or not blocks of it are
  // still indexed.
  std::vector<std::pair<std::string, uint64_t>> Packs();

 private:
  struct Db;
  explicit BlockIndex(std::unique_ptr<Db> db);
  static std::unique_ptr<BlockIndex> OpenOrThrow(const std::filesystem::path& file);
  void ForgetPack(const std::string& pack_id);  // inside a transaction, under mutex_
  void PutMark(const std::string& file, const std::string& mark);  // under mutex_
  // The rows a transaction indexed (pack, entry: both the caller's), and the `changes` count
  // it committed under.
  struct Added {
    std::vector<std::pair<const std::string*, const PackEntry*>> rows;
    std::optional<int64_t> changes;
  };
  // Inside a transaction, under mutex_; the entries it indexed are appended to `added`.
  void InsertPack(const std::string& pack_id, uint64_t pack_size,
                  const std::vector<PackEntry>& entries,
                  const std::vector<std::pair<uint64_t, uint32_t>>& features = {},
                  bool require_bases = false, Added* added = nullptr);
  // Keeps what a committed transaction indexed as lookups' answers (known_): a copy's
  // confirmation then finds the blocks it wrote without asking SQLite. Under mutex_.
  void Remember(const Added& added);
  // Deletes blocks and their delta_bases rows, and the deltas built on them (appended to
  // `removed`); inside a transaction, under mutex_.
  void ForgetBlocks(const std::vector<std::string>& hashes, std::vector<std::string>& removed);
  // A block found, its pack named by an index into known_packs_.
  struct Found {
    uint32_t pack = 0;
    uint64_t offset = 0;
    uint32_t stored_length = 0;
    uint32_t raw_length = 0;
    BlockCodec codec = BlockCodec::kRaw;
    std::string bases;
  };
  // Calls found(i, where) for each hashes[i] indexed, in key order, under read_mutex_.
  void Find(const std::vector<std::string>& hashes,
            const std::function<void(size_t i, const Found& where)>& found);
  uint32_t PackId(std::string_view pack);  // interned in known_packs_, under read_mutex_
  // Drops every kept answer; those kept from now on are of `changes`. Under read_mutex_.
  void ForgetKeptLocked(int64_t changes);
  BlockLocation LocationOf(const Found& where) const;  // under read_mutex_

  std::mutex mutex_;       // writes
  std::mutex read_mutex_;  // reads
  std::unique_ptr<Db> db_;
  // Blocks found by earlier lookups, answered again without SQLite while no block has left
  // the index or moved since: the `changes` count, which triggers in the database itself bump
  // on every DELETE or UPDATE of `blocks`, by any process of any release (a copy's
  // confirmation then asks SQLite about none: what it wrote is kept as it commits, Remember).
  // Under read_mutex_.
  // Keyed by the hashes' bytes: no string per answer, half the memory.
  BlockKeyMap<Found> known_;
  std::vector<std::string> known_packs_;  // the packs of known_ (and of the last batch)
  // Pack names are hex too; looked up by string_view: no string per block found.
  std::unordered_map<std::string, uint32_t, ChunkNameHash, std::equal_to<>> known_pack_ids_;
  int64_t known_at_ = -1;
  // The feature PruneFeatures looks at next (under mutex_; each process starts at the first).
  int64_t pruned_to_ = std::numeric_limits<int64_t>::min();
};

}  // namespace imagerelay
