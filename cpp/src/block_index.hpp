// A region's block index for the block store to come (docs/data-plane-v2.md, issue #12):
// block hash -> (pack, offset, lengths, codec). Kept on disk (SQLite, a table keyed by the
// hash), so that a region of millions of blocks costs the memory of SQLite's page cache, not
// of its entries (restic's best-known complaint is an index held whole in memory). It holds
// nothing that the packs' footers do not: it can be dropped and rebuilt from them.
//
// Not wired into the stores yet. Safe to call from several threads of one process.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "pack.hpp"

namespace imagerelay {

struct BlockLocation {
  std::string pack;  // the pack's id
  uint64_t offset = 0;
  uint32_t stored_length = 0;
  uint32_t raw_length = 0;
  BlockCodec codec = BlockCodec::kRaw;
  bool operator==(const BlockLocation&) const = default;
};

class BlockIndex {
 public:
  // Opens (creating) the index at `file`. Throws TransferError(Region.StoreUnavailable)
  // naming the file when it cannot.
  static std::unique_ptr<BlockIndex> Open(const std::filesystem::path& file);
  ~BlockIndex();

  // Indexes every block of a pack, in one transaction: all or none after a crash. A block
  // already indexed in another pack keeps its place (the first copy is as good as any).
  void AddPack(const std::string& pack_id, const std::vector<PackEntry>& entries);
  // Forgets the blocks located in a pack (before the pack is deleted, after a repack).
  void RemovePack(const std::string& pack_id);
  // One answer per hash, in order, from one read; nullopt where the block is not indexed.
  std::vector<std::optional<BlockLocation>> Lookup(const std::vector<std::string>& hashes);
  uint64_t BlockCount();
  // The packs with at least one indexed block, sorted.
  std::vector<std::string> Packs();

 private:
  struct Db;
  explicit BlockIndex(std::unique_ptr<Db> db);
  std::mutex mutex_;
  std::unique_ptr<Db> db_;
};

}  // namespace imagerelay
