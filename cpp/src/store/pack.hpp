// Pack files of the block store (docs/data-plane-v2.md, issue #12): small
// content-addressed blocks (64 KiB by default) written back to back into one large object,
// each stored raw or zstd-compressed, followed by a footer that lists them. The footer is the
// truth a region's index is rebuilt from, so it is self-checking: a torn or altered pack is
// refused as a whole, and every block is checked against its hash when it is decoded.
//
// Layout:
//   block bytes ... | entry * count | count (u32 LE) | SHA-256 of the entries (32 B) | "IRPACK01"
//   entry: block hash (32 B) | offset (u64 LE) | stored length (u32 LE) | raw length (u32 LE)
//          | codec (u8)
// A pack holding a delta block (codec kZstdDelta: a zstd frame compressed against the raw
// bytes of one or two other blocks, its bases, joined) ends in "IRPACK02" instead: each entry
// then goes on with the number of its bases (u8, 0-2) and their hashes (32 B each), and the
// trailer's first field is the entries' length in bytes rather than their count.
#pragma once

#include <cstddef>
#include <cstdint>
#include <new>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "base/uninitialized_bytes.hpp"
#include "imagerelay/store.hpp"  // ChunkCodec

namespace imagerelay {

using BlockCodec = ChunkCodec;

// A pack is written to disk straight from page-aligned memory with O_DIRECT, on huge pages:
// a 16 MiB pack in small pages reaches a virtio disk in ~33 requests of ~500 KiB (254
// segments each), on huge pages in 4 of 4 MiB.
using PackBytes = HugePageBytes;

struct PackEntry {
  std::string hash;  // SHA-256 of the raw bytes, 64 lowercase hex digits
  uint64_t offset = 0;
  uint32_t stored_length = 0;
  uint32_t raw_length = 0;
  BlockCodec codec = BlockCodec::kRaw;
  // A delta block's bases, their hashes joined (64 or 128 hex digits); empty otherwise. A
  // base is always a block stored whole, so that a read never follows a chain.
  std::string bases;
  bool operator==(const PackEntry&) const = default;
};

// The hashes in a PackEntry::bases (or BlockLocation::bases).
std::vector<std::string> SplitBases(const std::string& bases);
inline constexpr size_t kMaxBases = 2;

inline constexpr size_t kPackEntrySize = 32 + 8 + 4 + 4 + 1;  // of an IRPACK01 entry
// The largest block a pack holds: the largest chunk size (Limits.chunk_size <= 256 MiB).
inline constexpr uint32_t kMaxBlockBytes = 256U << 20;
// count + entries digest + magic.
inline constexpr size_t kPackTrailerSize = 4 + 32 + 8;

// A block as it goes into a pack: raw, or zstd-compressed when that saves at least an eighth
// (incompressible data is stored as it is). `bytes` views `raw` or the encoder's buffer.
struct EncodedBlock {
  BlockCodec codec = BlockCodec::kRaw;
  std::span<const std::byte> bytes;
};
// Encodes `raw` with `zstd_level` (0 = never compress) into `scratch` when it pays. Uses a
// compression context kept per thread: callers encode in parallel, outside any lock.
EncodedBlock EncodeBlock(std::span<const std::byte> raw, int zstd_level,
                         std::vector<std::byte>& scratch);
// Encodes `raw` as a delta against `bases` (the raw bytes of its bases, joined) into
// `scratch`, if the delta is shorter than `limit` bytes; nullopt otherwise.
std::optional<EncodedBlock> EncodeDelta(std::span<const std::byte> raw,
                                        std::span<const std::byte> bases, int zstd_level,
                                        size_t limit, std::vector<std::byte>& scratch);

// Assembles one pack in memory (the caller bounds it by size, e.g. 8-16 MiB).
class PackBuilder {
 public:
  // `expected_size`: room reserved at once, so that the pack is never moved as it grows.
  explicit PackBuilder(int zstd_level = 1, size_t expected_size = 0) : zstd_level_(zstd_level) {
    data_.reserve(expected_size);
  }
  // Builds into `buffer` (emptied; its memory reused: no page of it is faulted in again).
  PackBuilder(int zstd_level, PackBytes buffer)
      : zstd_level_(zstd_level), data_(std::move(buffer)) {
    data_.clear();
  }

  // Adds a block whose bytes the caller has hashed to `hash`. It is stored compressed only
  // if that saves at least an eighth: incompressible data is stored as it is.
  void Add(const std::string& hash, std::span<const std::byte> raw);
  // Adds a block encoded already (EncodeBlock) from `raw_length` bytes hashing to `hash`.
  // `bases`: a delta block's (PackEntry::bases).
  void AddEncoded(const std::string& hash, EncodedBlock block, uint32_t raw_length,
                  const std::string& bases = {});
  // Bytes of blocks so far (without the footer).
  uint64_t size() const { return data_.size(); }
  bool empty() const { return entries_.empty(); }
  const std::vector<PackEntry>& entries() const { return entries_; }
  // Resemblance features of the block added last (BlockSketch), for the region's index.
  void AddFeatures(const std::vector<uint64_t>& features);
  // (feature, index in entries()) of the blocks added so far.
  const std::vector<std::pair<uint64_t, uint32_t>>& features() const { return features_; }
  // The whole pack (blocks, then the footer); the builder is empty afterwards.
  PackBytes Finish();

 private:
  int zstd_level_;
  PackBytes data_;
  std::vector<PackEntry> entries_;
  std::vector<std::pair<uint64_t, uint32_t>> features_;
  std::vector<std::byte> scratch_;
};

// The entries of a pack of `pack_size` bytes, from its last bytes (`tail`, at least the
// footer; the whole pack will do). Throws IntegrityError naming `what` when the pack is torn,
// not a pack, or its footer does not match its digest or its size.
std::vector<PackEntry> ParsePackFooter(std::span<const std::byte> tail, uint64_t pack_size,
                                       const std::string& what);
// How many bytes from the end of a pack hold its footer, given its last kPackTrailerSize
// bytes (for a ranged read of the rest).
uint64_t PackFooterSize(std::span<const std::byte> trailer, const std::string& what);

// Decodes one block from its stored bytes into `out` and checks it against the entry's hash
// and raw length: throws DamagedChunkError (the block's hash) if anything is wrong. A delta
// block needs its bases' raw bytes, joined, in `bases` (the caller read and checked them).
void DecodeBlock(std::span<const std::byte> stored, const PackEntry& entry,
                 std::vector<std::byte>& out, const std::string& what,
                 std::span<const std::byte> bases = {});
// The same into the caller's memory: `out` holds exactly the block's raw length (else the
// block is damaged). A raw block may have been read straight into `out` (`stored` is `out`
// then): it is only checked.
void DecodeBlockInto(std::span<const std::byte> stored, const PackEntry& entry,
                     std::span<std::byte> out, const std::string& what,
                     std::span<const std::byte> bases = {});
// DecodeBlockInto but for the check against the hash: for a caller that checks the block
// itself at once (two blocks hashed together, base/sha256_pair.hpp) and, if it does not
// match, reads it again through a checked path before anything else sees it.
void DecodeBlockUnchecked(std::span<const std::byte> stored, const PackEntry& entry,
                          std::span<std::byte> out, const std::string& what,
                          std::span<const std::byte> bases = {});
// Decodes a whole block (raw or zstd, not a delta) into `out` (its raw length) WITHOUT
// checking it against its hash; false if it does not decode to that length. Only for a
// delta's base whose use is checked afterwards: the delta decoded against it is checked
// against the delta's own hash, which a wrong base cannot make match.
bool DecodeBaseUnchecked(std::span<const std::byte> stored, const PackEntry& entry,
                         std::span<std::byte> out);

}  // namespace imagerelay
