// The stored form of a manifest (docs/data-plane-v2.md): the block list as 32 raw bytes per
// block, written and read as a stream, so that a 200 GiB image (3.3 M blocks of 64 KiB,
// 105 MB of hashes) is never held in memory and opens in one sequential read.
//
// Layout (little endian):
//   "IRMANIF1" | block size (u32) | reserved (u32) | image size (u64) | image digest (32 B,
//   all zero while unknown) | block count (u64) | count * 32-byte hash (all zero = a hole)
//   | SHA-256 of everything before it (32 B)
// The trailing SHA-256 makes a torn or altered file fail as a whole when it is opened. The
// chunk-list digest (Manifest::ChunkListDigest, recorded in the catalog) is that of the
// first release's JSON form, so records of existing images carry over.
#pragma once

#include <cstdint>
#include <string>

#include "base/unique_fd.hpp"
#include "imagerelay/manifest.hpp"

namespace imagerelay {

inline constexpr uint64_t kManifestHeaderBytes = 64;

// Bytes of the stored form of a manifest of `count` blocks.
uint64_t BinaryManifestBytes(uint64_t count);
// Writes `m` to `fd` from offset 0 in windows of kManifestWindow blocks. Returns 0, or the
// errno of a failed write.
int WriteBinaryManifest(const Manifest& m, int fd);
// Reads the manifest stored in `fd`, checking the whole file first (one sequential read);
// its block list then reads from `fd`, kept open. Throws IntegrityError naming `what` when
// the file is torn, altered or inconsistent.
Manifest ReadBinaryManifest(UniqueFd fd, const std::string& what);
// A manifest of the first release (JSON, found in old homes); IntegrityError naming `what`
// when it is not a consistent one.
Manifest ReadFirstReleaseManifest(const std::string& text, const std::string& what);

}  // namespace imagerelay
