// An image's manifest (DESIGN.md §4, docs/data-plane-v2.md): size, block (chunk) size,
// whole-image digest and the list of block hashes, where an all-zero entry is a block of
// zeros that is never stored. A 200 GiB image has 3.3 M blocks of 64 KiB: the list lives in
// a BlockList (a file, 32 bytes per block, for stored manifests and large imports) and is
// read in windows, never held whole.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace imagerelay {

// Blocks per window when a manifest is walked: 4 GiB of image at 64 KiB, 2 MiB of hashes.
inline constexpr size_t kManifestWindow = 65536;

// The hashes of an image's blocks, 32 raw bytes each (all zero = a hole).
class BlockList {
 public:
  virtual ~BlockList() = default;
  virtual uint64_t count() const = 0;
  // Hashes of blocks [first, first + out.size() / 32).
  virtual void Read(uint64_t first, std::span<std::byte> out) const = 0;
  // Sets them; distinct ranges may be written from several threads at once.
  virtual void Write(uint64_t first, std::span<const std::byte> in) = 0;
};

struct Manifest {
  uint64_t size = 0;
  uint64_t chunk_size = 0;
  std::string digest;  // "sha256:<hex>" of the whole image; empty while it is computed later
  std::shared_ptr<BlockList> blocks;  // count() == ceil(size / chunk_size)

  // A manifest over `hashes` (64 lowercase hex digits each, "" = hole), held in memory.
  static Manifest InMemory(uint64_t size, uint64_t chunk_size,
                           const std::vector<std::string>& hashes, std::string digest = "");

  uint64_t count() const { return blocks ? blocks->count() : 0; }
  // Bytes in chunk i (the last one may be short).
  uint64_t ChunkLength(uint64_t i) const;
  uint64_t ChunkOffset(uint64_t i) const { return i * chunk_size; }
  // Hex hashes of blocks [first, first + n) ("" = hole); n is clipped at the end.
  std::vector<std::string> Hashes(uint64_t first, size_t n) const;
  std::string Hash(uint64_t i) const;
  void SetHash(uint64_t i, const std::string& hex);
  // Calls fn(first, hashes) for consecutive windows of at most kManifestWindow blocks.
  void ForEachWindow(
      const std::function<void(uint64_t first, const std::vector<std::string>& hashes)>& fn) const;
  // SHA-256 of size, chunk size and chunk list (not of `digest`, which may be filled in
  // later): recorded in the catalog when the manifest is committed, and compared with every
  // manifest read back, so that chunks swapped or replaced in a stored manifest are caught.
  // Every chunk is checked against its name when read, so this binds the whole image's
  // bytes: the order of valid chunks is what the per-chunk checks cannot see.
  std::string ChunkListDigest() const;
  // A manifest of the first release (JSON, one hex string per chunk), read from old homes.
  // Throws Error(InvalidParameter) when the text is not a consistent manifest.
  static Manifest FromJson(const std::string& text);
  // Same size, chunk size, digest and hashes.
  bool operator==(const Manifest& other) const;
};

uint64_t ChunkCount(uint64_t size, uint64_t chunk_size);

}  // namespace imagerelay
