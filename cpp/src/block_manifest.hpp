// The binary manifest of the block store to come (docs/data-plane-v2.md, issue #12): an
// image's block list as 32 raw bytes per block, written and read as a stream, so that a
// 200 GiB image (3.3 M blocks of 64 KiB, 105 MB of hashes) is never held in memory and opens
// at once (only its fixed-size header is read up front).
//
// Layout (little endian):
//   "IRMANIF1" | block size (u32) | reserved (u32) | image size (u64) | image digest (32 B,
//   all zero while unknown) | block count (u64) | count * 32-byte hash (all zero = a hole)
//   | SHA-256 of everything before it (32 B)
// The trailing SHA-256 makes a torn or altered file fail as a whole when read to its end.
// ChunkListDigest() is the same value as Manifest::ChunkListDigest() for the same list, so
// the catalog's record of a committed manifest (docs/integrity.md) carries over.
//
// Not wired into the stores yet.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "imagerelay/sha256.hpp"
#include "unique_fd.hpp"

namespace imagerelay {

struct BlockManifestHeader {
  uint32_t block_size = 0;
  uint64_t size = 0;
  std::string digest;  // "sha256:<hex>" or empty while unknown
  uint64_t count = 0;  // blocks: ceil(size / block_size)
};

// Writes a manifest to `path` (created or truncated) block by block. Finish() makes it
// durable (fsync) and returns the chunk-list digest; a writer destroyed unfinished leaves an
// incomplete file that no reader accepts.
class BlockManifestWriter {
 public:
  BlockManifestWriter(const std::filesystem::path& path, uint64_t size, uint32_t block_size);
  ~BlockManifestWriter();
  // The next block's hash: 64 lowercase hex digits, or "" for a hole.
  void Append(const std::string& hash);
  std::string Finish(const std::string& digest);

 private:
  void Write(const void* data, size_t n);
  void FlushBuffer();
  std::filesystem::path path_;
  UniqueFd fd_;
  BlockManifestHeader header_;
  uint64_t appended_ = 0;
  uint64_t written_ = 0;  // bytes of the file written so far
  std::vector<std::byte> buffer_;
  Sha256 file_hash_;
  Sha256 list_hash_;
};

// Reads a manifest as a stream: the header at Open, then one block at a time. Reading past
// the last block checks the trailing SHA-256 (IntegrityError naming the file if it fails).
class BlockManifestReader {
 public:
  static std::unique_ptr<BlockManifestReader> Open(const std::filesystem::path& path);
  const BlockManifestHeader& header() const { return header_; }
  // The next block's hash ("" for a hole); false after the last one, once the file checked.
  bool Next(std::string& hash);
  // Valid once Next() returned false.
  const std::string& chunk_list_digest() const { return list_digest_; }

 private:
  BlockManifestReader() = default;
  bool Read(void* out, size_t n);  // false at end of file
  std::filesystem::path path_;
  UniqueFd fd_;
  BlockManifestHeader header_;
  uint64_t read_ = 0;
  std::vector<std::byte> buffer_;
  size_t buffer_pos_ = 0;
  Sha256 file_hash_;
  Sha256 list_hash_;
  std::string list_digest_;
};

}  // namespace imagerelay
