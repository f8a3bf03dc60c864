// Moving an image between a file and a store: import cuts a file into chunks (skipping
// holes), export writes the bytes back (holes for zero chunks).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "imagerelay/cancel.hpp"
#include "imagerelay/manifest.hpp"
#include "imagerelay/retry_policy.hpp"
#include "imagerelay/store.hpp"

namespace imagerelay {

// Where import reads from: a local file or block device (OpenFileSource), or an http(s)://
// or s3:// URL (url_source.cpp).
class ByteSource {
 public:
  virtual ~ByteSource() = default;
  virtual uint64_t size() const = 0;
  // True if [offset, offset+len) is known to hold only zeros (a hole) without reading it.
  virtual bool IsHole(uint64_t offset, uint64_t len) = 0;
  // Reads exactly len bytes at offset; throws TransferError on a short read.
  virtual void ReadAt(uint64_t offset, std::byte* out, size_t len) = 0;
  // Reads the first len bytes (len <= size()) for a look at the header, apart from the reads
  // that follow: a URL asks for them in one request of their own, outside its read-ahead.
  virtual void ReadHead(std::byte* out, size_t len) { ReadAt(0, out, len); }
  virtual std::string describe() const = 0;  // for messages
  // Bytes outside holes, if the source can tell cheaply (a sparse file can).
  virtual std::optional<uint64_t> DataBytes() { return std::nullopt; }
  // True if ReadAt may be called from several threads at once (for different ranges);
  // import then reads chunks in parallel. Otherwise one thread reads, in order.
  virtual bool ConcurrentReads() const { return false; }
  // Called once every byte has been read: throws TransferError if the source turned out not
  // to hold exactly size() bytes (a file truncated or grown while it was read, whose holes
  // past a new end would otherwise read as zeros). By default the size is trusted.
  virtual void CheckUnchanged() {}
};

// Opens a regular file or a block device; throws ValidationError(InvalidParameter) naming the
// path when it is missing, unreadable, of another kind (a directory, FIFO, socket, character
// device) or on a pseudo file system (proc, sysfs, ...: their sizes say nothing of what
// reading them yields).
std::unique_ptr<ByteSource> OpenFileSource(const std::filesystem::path& path);

// An http://, https:// or s3:// URL (s3://bucket/key?endpoint=...&region=..., credentials
// from the environment), read without a temporary copy: by parallel ranged GETs when the
// server takes ranges, else by one streamed GET; memory bounded either way. Throws
// ValidationError(InvalidParameter) when the object is missing or unreadable. `cancel`, if
// given, aborts its requests (a read then throws Cancelled); it must outlive the source.
std::unique_ptr<ByteSource> OpenUrlSource(const std::string& url,
                                          const CancelToken* cancel = nullptr);
bool IsUrlSource(const std::string& source);
// OpenUrlSource for a URL, else OpenFileSource.
std::unique_ptr<ByteSource> OpenImportSource(const std::string& source,
                                             const CancelToken* cancel = nullptr);

struct IoProgress {
  uint64_t bytes_total = 0;
  uint64_t bytes_done = 0;         // covered, holes and present chunks included
  uint64_t bytes_transferred = 0;  // of the image, written to the store (not there before)
  uint64_t bytes_sent = 0;         // what the store wrote for them, compressed: the wire
  uint64_t chunks_total = 0;
  uint64_t chunks_skipped = 0;  // zero or already present
};
using ProgressFn = std::function<void(const IoProgress&)>;

struct ImportOptions {
  uint64_t chunk_size = 64ULL << 10;
  int threads = 2;                        // hashing/writing workers
  uint64_t buffer_memory = 256ULL << 20;  // cap on chunk buffers in flight
  // Hashing a hole's zeros into the whole-image digest costs as much as hashing data, so a
  // mostly-empty image would import at the speed of its virtual size. When the source's
  // holes exceed both its data and this many bytes, the import leaves the digest empty
  // (computed afterwards from the stored chunks, see HashStoredImage). 0 = never defer.
  uint64_t defer_digest_hole_bytes = 0;
  RetryPolicy retry;  // around each store call
  // Where the block list of a large image is kept while it is imported (an unnamed file);
  // empty: in memory.
  std::filesystem::path spool_dir;
};

// Cuts the source into chunks, stores those the store lacks (never all-zero ones) and
// returns the manifest with the whole-image digest. Does not write the manifest.
// Throws Cancelled if the token fires.
Manifest ImportToStore(ByteSource& source, Store& store, const ImportOptions& options,
                       const CancelToken& cancel, const ProgressFn& progress);

// Reads every chunk of the manifest back from the store, checks each against its name and
// returns the whole-image digest ("sha256:<hex>"). `what` names the image in errors
// (IntegrityError for a corrupt or short chunk). Throws Cancelled if the token fires.
// `progress` (bytes hashed, of the image's size) is called about every 100 ms.
// `buffer_memory` caps the chunks read ahead (Limits.buffer_memory; at least 2 chunks).
std::string HashStoredImage(Store& store, const Manifest& manifest, const std::string& what,
                            const CancelToken& cancel, const ProgressFn& progress = {},
                            uint64_t buffer_memory = 256ULL << 20);

// Writes the image to `path` atomically (temporary file, fsync, rename): byte-identical,
// with holes where chunks are zero. Every chunk is checked against its hash
// (TransferError/IntegrityError on mismatch). Throws Cancelled if the token fires.
// Writes only regular files: a new one, or with `force` an existing one, which keeps its mode
// (and owner, as root). Refuses with ValidationError(InvalidParameter) an existing `path`
// without `force`, and always a symbolic link or anything but a regular file. The temporary
// file is ".<name>.imagerelay-export-<pid>.partial" beside `path`; those of killed exports
// in that directory are removed. `buffer_memory` caps the chunks in flight
// (Limits.buffer_memory; at least one).
void ExportFromStore(Store& store, const Manifest& manifest, const std::filesystem::path& path,
                     const CancelToken& cancel, const ProgressFn& progress, bool force = false,
                     uint64_t buffer_memory = 256ULL << 20);

}  // namespace imagerelay
