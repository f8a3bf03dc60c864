// An image's manifest (DESIGN.md §4): size, chunk size, whole-image digest and the chunk
// list, where an empty entry is an all-zero chunk that is never stored.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace imagerelay {

struct Manifest {
  uint64_t size = 0;
  uint64_t chunk_size = 0;
  std::string digest;               // "sha256:<hex>" of the whole image; empty (null in the
                                    // JSON) while it is computed after the import
  std::vector<std::string> chunks;  // sha256 hex per chunk, "" = all zero

  // Bytes in chunk i (the last one may be short).
  uint64_t ChunkLength(size_t i) const;
  uint64_t ChunkOffset(size_t i) const { return i * chunk_size; }
  // SHA-256 of size, chunk size and chunk list (not of `digest`, which may be filled in
  // later): recorded in the catalog when the manifest is committed, and compared with every
  // manifest read back, so that chunks swapped or replaced in a stored manifest are caught.
  // Every chunk is checked against its name when read, so this binds the whole image's
  // bytes: the order of valid chunks is what the per-chunk checks cannot see.
  std::string ChunkListDigest() const;
  std::string ToJson() const;
  // Throws Error(InvalidParameter) when the text is not a consistent manifest.
  static Manifest FromJson(const std::string& text);
  bool operator==(const Manifest&) const = default;
};

}  // namespace imagerelay
