// A region's block index (docs/data-plane-v2.md, issue #12):
// block hash -> (pack, offset, lengths, codec). Kept on disk (SQLite, a table keyed by the
// hash), so that a region of millions of blocks costs the memory of SQLite's page cache, not
// of its entries (restic's best-known complaint is an index held whole in memory). It holds
// nothing that the packs' footers do not: it can be dropped and rebuilt from them.
// Safe to call from several threads of one process, and from several processes (SQLite WAL).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "store/pack.hpp"

namespace imagerelay {

struct BlockLocation {
  std::string pack;  // the pack's id
  uint64_t offset = 0;
  uint32_t stored_length = 0;
  uint32_t raw_length = 0;
  BlockCodec codec = BlockCodec::kRaw;
  bool operator==(const BlockLocation&) const = default;
};

// What a presence check needs of a batch of blocks, without a location (and its pack's name)
// per block: for each hash, its pack as an index into `packs` (-1: not indexed) and its
// length.
struct BlockPresence {
  std::vector<std::string> packs;    // the distinct packs of the blocks found
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
  // of a group commit land all over the table, keyed by hash).
  void AddPacks(const std::vector<IndexedPack>& packs);
  // A file's mark (PackStat::mark) when its bytes were last known right: a pack's (by its
  // name) when it was written or re-read whole and found right, a first-release chunk file's
  // (by its hash) when it was re-read and found right. Empty if none is recorded (a pack
  // indexed from its footer, by an earlier release, or rebuilt): then nothing vouches for
  // the file unread.
  std::string MarkOf(const std::string& file);
  void SetMark(const std::string& file, const std::string& mark);
  // Forgets a pack (and its mark) and the blocks located in it (before the pack is deleted).
  void RemovePack(const std::string& pack_id);
  // Forgets one block (found damaged): the next writer of its hash stores it anew.
  void RemoveBlock(const std::string& hash);
  // Forgets blocks nothing needs any more, in one transaction (their bytes stay in their
  // packs until a sweep rewrites them).
  void RemoveBlocks(const std::vector<std::string>& hashes);
  // The indexed blocks of a pack, by offset (a pack's blocks no longer indexed are garbage).
  std::vector<PackEntry> EntriesOf(const std::string& pack_id);
  // Every indexed block's hash, sorted.
  std::vector<std::string> Hashes();
  // Up to `limit` hashes after `after`, in order: a listing in pages.
  std::vector<std::string> HashesAfter(const std::string& after, size_t limit);
  // One answer per hash, in order, from one read; nullopt where the block is not indexed.
  std::vector<std::optional<BlockLocation>> Lookup(const std::vector<std::string>& hashes);
  // The same answers as Lookup, as a presence check needs them.
  BlockPresence Presence(const std::vector<std::string>& hashes);
  uint64_t BlockCount();
  // Every indexed pack (with its size), sorted by name, whether or not blocks of it are
  // still indexed.
  std::vector<std::pair<std::string, uint64_t>> Packs();

 private:
  struct Db;
  explicit BlockIndex(std::unique_ptr<Db> db);
  static std::unique_ptr<BlockIndex> OpenOrThrow(const std::filesystem::path& file);
  void ForgetPack(const std::string& pack_id);  // inside a transaction, under mutex_
  void PutMark(const std::string& file, const std::string& mark);  // under mutex_
  void InsertPack(const std::string& pack_id, uint64_t pack_size,
                  const std::vector<PackEntry>& entries);  // likewise
  // A block found, its pack named by an index into known_packs_.
  struct Found {
    uint32_t pack = 0;
    uint64_t offset = 0;
    uint32_t stored_length = 0;
    uint32_t raw_length = 0;
    BlockCodec codec = BlockCodec::kRaw;
  };
  // Calls found(i, where) for each hashes[i] indexed, in key order, under read_mutex_.
  void Find(const std::vector<std::string>& hashes,
            const std::function<void(size_t i, const Found& where)>& found);
  uint32_t PackId(std::string_view pack);  // interned in known_packs_, under read_mutex_

  std::mutex mutex_;       // writes
  std::mutex read_mutex_;  // reads
  std::unique_ptr<Db> db_;
  // Blocks found by earlier lookups, answered again without SQLite while no block has left
  // the index or moved since: the `changes` count, which triggers in the database itself bump
  // on every DELETE or UPDATE of `blocks`, by any process of any release (a copy's
  // confirmation then asks SQLite only about the blocks it wrote). Under read_mutex_.
  std::unordered_map<std::string, Found> known_;
  std::vector<std::string> known_packs_;  // the packs of known_ (and of the last batch)
  struct NameHash {
    using is_transparent = void;  // looked up by string_view: no string per block found
    size_t operator()(std::string_view name) const { return std::hash<std::string_view>()(name); }
  };
  std::unordered_map<std::string, uint32_t, NameHash, std::equal_to<>> known_pack_ids_;
  int64_t known_at_ = -1;
};

}  // namespace imagerelay
