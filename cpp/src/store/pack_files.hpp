// Where a block store keeps its packs (docs/data-plane-v2.md): the raw object operations a
// region's storage offers, implemented by the local and the S3 store for their packs/ area.
// Packs are immutable once written; a pack's name is 32 lowercase hex digits.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/uninitialized_bytes.hpp"
#include "imagerelay/cancel.hpp"

namespace imagerelay {

struct PackStat {
  uint64_t size = 0;
  // What tells these bytes from any others the pack may hold later, or empty if the storage
  // cannot tell (an object store's objects are as written). A local pack file's mark is its
  // device, inode, size and change time (FileMark): nothing can set a change time back, so
  // any write, truncation, rename over it or time change since gives another mark. The block
  // index keeps each pack's mark from when its bytes were known right (BlockIndex::MarkOf).
  std::string mark;
};

// Where a store keeps the marks (PackStat::mark) of files it reads but no longer writes: the
// first release's chunk files. The block index of the pack store above it.
class FileMarks {
 public:
  virtual ~FileMarks() = default;
  virtual std::string MarkOf(const std::string& file) = 0;  // empty if none is recorded
  virtual void SetMark(const std::string& file, const std::string& mark) = 0;
};

class PackFiles {
 public:
  virtual ~PackFiles() = default;
  // From now on the store vouches for its chunk files of the first release by their marks
  // in `marks` (which outlives it), not by the modification time they were stamped with,
  // which a hand can set back.
  virtual void KeepChunkMarksIn(FileMarks* /*marks*/) {}
  // Stores a whole pack under `name`, durably and atomically (a reader sees all of it or no
  // pack). Throws TransferError (or TransientError for a retryable failure).
  virtual void PutPack(const std::string& name, std::span<const std::byte> bytes,
                       const CancelToken* cancel) = 0;
  // Group commit: StagePack writes a pack that is not a pack yet (no reader sees it);
  // CommitPacks makes staged packs durable and visible, all of them with one flush of the
  // disk rather than one per pack; DiscardStaged drops staged packs never committed. By
  // default a staged pack is put at once and the others do nothing (an object store's PUT
  // is durable and atomic).
  virtual void StagePack(const std::string& name, std::span<const std::byte> bytes,
                         const CancelToken* cancel) {
    PutPack(name, bytes, cancel);
  }
  virtual void CommitPacks(const std::vector<std::string>& /*names*/) {}
  virtual void DiscardStaged(const std::vector<std::string>& /*names*/) {}
  // Reads out.size() bytes at `offset`: false when the pack is missing or ends first (it is
  // damaged); throws TransferError when the storage fails.
  virtual bool ReadPack(const std::string& name, uint64_t offset, std::span<std::byte> out,
                        const CancelToken* cancel) = 0;
  virtual std::optional<PackStat> StatPack(const std::string& name) = 0;
  virtual void DeletePack(const std::string& name) = 0;
  // Takes a damaged pack out of use; a local store keeps it under quarantine/.
  virtual void QuarantinePack(const std::string& name) { DeletePack(name); }
  // Keeps the stored bytes of a block taken out of use (damaged) for inspection: a local
  // store writes them to quarantine/<hash>.<time>. Best effort.
  virtual void KeepAside(const std::string& /*hash*/, std::span<const std::byte> /*bytes*/) {}
  // Every pack with its size (temporary files of writers excluded).
  virtual std::vector<std::pair<std::string, uint64_t>> ListPacks() = 0;
  // The local file of the region's block index (a cache of the packs' footers).
  virtual std::filesystem::path IndexFile() = 0;
  // Reads [offset, offset + length) of a pack that is read once, ahead of the reads of its
  // blocks, into `buffer`: returns where in it the range starts (a local file is read around
  // the page cache, from a page boundary), or nullopt when the pack is missing or ends first;
  // throws as ReadPack. By default it is ReadPack.
  virtual std::optional<size_t> ReadPackAhead(const std::string& name, uint64_t offset,
                                              size_t length, HugePageBytes& buffer,
                                              const CancelToken* cancel) {
    buffer.resize(length);
    if (!ReadPack(name, offset, buffer, cancel)) return std::nullopt;
    return 0;
  }
  // Starts reading [offset, offset + length) of a pack in the background, for the reads of
  // its blocks that follow (a local file: the page cache). Best effort.
  virtual void Prefetch(const std::string& /*name*/, uint64_t /*offset*/, uint64_t /*length*/) {}
  // Reading a range costs a request (S3): reads of neighbouring blocks are worth merging.
  virtual bool RemoteReads() const { return false; }
};

bool IsPackName(std::string_view name);
// A new random pack name.
std::string NewPackName();

}  // namespace imagerelay
