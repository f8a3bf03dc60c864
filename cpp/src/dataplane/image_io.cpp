#include "imagerelay/image_io.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <semaphore>
#include <string_view>
#include <thread>
#include <tuple>
#include <vector>

#include "base/binary_codec.hpp"
#include "base/fail_point.hpp"
#include "base/file_util.hpp"
#include "base/retry.hpp"
#include "base/sha256_pair.hpp"
#include "base/unique_fd.hpp"
#include "dataplane/buffer_pool.hpp"
#include "dataplane/crew.hpp"
#include "dataplane/image_digest.hpp"
#include "dataplane/progress_throttle.hpp"
#include "imagerelay/error.hpp"
#include "imagerelay/sha256.hpp"
#include "store/block_list.hpp"

namespace imagerelay {
namespace {

using Clock = std::chrono::steady_clock;
// Workers of an export or a verify: each waits on a read (exporting, then a write) far
// longer than it hashes. A 2 GiB export here: 2 workers 3.1-3.7 s, 4 workers 2.5-2.7 s,
// 8 no faster.
constexpr int kExportThreads = 4;
// An export writes up to this much at once (a worker's buffer).
constexpr uint64_t kExportWriteUnit = 4ULL << 20;
constexpr int kMaxThreads = 64;
// Chunk writes in flight: a durable write waits on the disk far longer than it computes, and
// the store flushes concurrent writes together, so more workers run than hash at once (only
// `threads` of them hash at a time). 10 workers hold 12 buffers: 48 MiB at 4 MiB chunks.
constexpr int kMinWorkers = 10;
// Read units the reader may run ahead of the whole-image hash.
constexpr size_t kMaxDigestLag = 64;
// Import reads the source in units of this many bytes (a whole number of chunks): chunks of
// 64 KiB read one by one would cost a request each (an O_DIRECT read, a ranged GET).
constexpr uint64_t kImportReadUnit = 4ULL << 20;

class HashPermit {
 public:
  explicit HashPermit(std::counting_semaphore<kMaxThreads>& permits) : permits_(permits) {
    permits_.acquire();
  }
  ~HashPermit() { permits_.release(); }
  HashPermit(const HashPermit&) = delete;
  HashPermit& operator=(const HashPermit&) = delete;

 private:
  std::counting_semaphore<kMaxThreads>& permits_;
};

// The blocks of a read unit that are not all zero: their names, lengths and chunk indexes.
struct UnitNames {
  std::vector<std::string> hashes;
  std::vector<uint64_t> lengths;
  std::vector<size_t> at;
};

struct ChunkJob {
  size_t index;  // the first chunk of the read unit
  int slot;      // the pool buffer's index, -1 for a hole
  size_t len;    // bytes of the unit
};

// Import: the calling thread walks the chunks in order, skipping holes, and hands each a
// buffer of a bounded pool; workers read (or, for a source that reads in order only, the
// calling thread reads), name and store them; one digest thread feeds every byte, in
// order, to the whole-image hash. With SHA-NI the digest thread names the blocks too, each
// block's rounds interleaved with the image's (Sha256PairedStream: the names cost about
// nothing beside the digest), and the workers wait for the names of their unit. A buffer
// returns to the pool once both its worker and the digest thread are done.
class ImportPipeline {
 public:
  ImportPipeline(ByteSource& source, Store& store, const ImportOptions& options,
                 const CancelToken& cancel, const ProgressFn& progress)
      : source_(source),
        store_(store),
        cancel_(cancel),
        throttle_(progress),
        chunk_size_(options.chunk_size),
        unit_chunks_(
            std::max<uint64_t>(1, kImportReadUnit / std::max<uint64_t>(1, options.chunk_size))),
        hashers_(std::clamp(options.threads, 1, kMaxThreads)),
        workers_(std::max(hashers_, kMinWorkers)),  // capped by the buffer count below
        hash_permits_(hashers_),
        retry_(options.retry),
        with_digest_(!DeferDigest(source, options)),
        names_with_digest_(with_digest_ && image_hash_.names()),
        parallel_reads_(source.ConcurrentReads()) {
    if (chunk_size_ == 0) {
      throw ValidationError(codes::kInvalidParameter, "the chunk size must be greater than 0");
    }
    manifest_.size = source.size();
    manifest_.chunk_size = chunk_size_;
    manifest_.blocks = NewBlockList(ChunkCount(manifest_.size, chunk_size_), options.spool_dir);
    progress_.bytes_total = manifest_.size;
    progress_.chunks_total = manifest_.count();

    // Read units: as many as buffer_memory holds, at most one per worker and 2 more, at
    // least 2 (or one per unit of a smaller image). Aligned: the source and a local store
    // read and write them with O_DIRECT.
    const uint64_t unit_size = chunk_size_ * unit_chunks_;
    const uint64_t units = ChunkCount(manifest_.size, unit_size);
    const size_t slots = static_cast<size_t>(
        std::min<uint64_t>(BufferPool::CountFor(options.buffer_memory, unit_size, 2,
                                                static_cast<size_t>(workers_) + 2),
                           std::max<uint64_t>(1, units)));
    pool_.emplace(static_cast<size_t>(std::min(unit_size, manifest_.size)), slots);
    crew_.ClosesOnStop(*pool_);
    held_.resize(slots);
    refs_.assign(slots, 0);
    loaded_.assign(slots, 0);
    names_.resize(slots);
    named_.assign(slots, 0);
    named_cv_ = std::vector<std::condition_variable>(slots);
    for (auto& cv : named_cv_) crew_.WakesOnStop(cv);
    workers_ = static_cast<int>(std::min<uint64_t>(workers_, slots));
  }

  Manifest Run() {
    if (manifest_.count() != 0) {
      for (int i = 0; i < workers_; ++i) crew_.Start([this] { WorkerLoop(); });
      if (with_digest_) crew_.Start([this] { DigestLoop(); });
      ReadLoop();
      WaitForCrew();
    }
    crew_.Finish();
    if (with_digest_) manifest_.digest = "sha256:" + image_hash_.FinishHex();
    progress_.bytes_done = progress_.bytes_total;
    throttle_.Report(progress_);
    return std::move(manifest_);
  }

 private:
  void CheckCancel() {
    if (cancel_.cancelled()) throw Cancelled{};
  }

  void MaybeReport() {
    if (!throttle_.Due()) return;
    IoProgress snapshot;
    {
      std::lock_guard lock(crew_.mu);
      snapshot = progress_;
    }
    throttle_.Report(snapshot);
  }

  // Waits until `ready` holds (under crew_.mu), checking the token and reporting progress
  // meanwhile. Returns false when the crew stopped (a thread failed).
  template <typename Pred>
  bool WaitUntil(Pred ready) {
    for (;;) {
      {
        std::unique_lock lock(crew_.mu);
        crew_.caller_cv.wait_for(lock, kProgressInterval, [&] { return crew_.stop || ready(); });
        if (crew_.stop) return false;
        if (ready()) return true;
      }
      CheckCancel();
      MaybeReport();
    }
  }

  static bool DeferDigest(ByteSource& source, const ImportOptions& options) {
    if (options.defer_digest_hole_bytes == 0) return false;
    auto data = source.DataBytes();
    if (!data) return false;
    const uint64_t holes = source.size() - std::min(*data, source.size());
    return holes > *data && holes >= options.defer_digest_hole_bytes;
  }

  // Takes a buffer of the pool (reporting progress while it waits) and returns its index, or
  // -1 when the crew stopped (a thread failed: the crew closed the pool).
  int AcquireSlot() {
    for (;;) {
      BufferPool::Buffer buffer = pool_->AcquireFor(kProgressInterval, &cancel_);
      if (buffer) {
        const size_t slot = buffer.index();
        std::lock_guard lock(crew_.mu);
        held_[slot] = std::move(buffer);
        return static_cast<int>(slot);
      }
      if (pool_->closed()) return -1;
      CheckCancel();
      MaybeReport();
    }
  }

  std::byte* BufferOf(int slot) const { return held_[static_cast<size_t>(slot)].data(); }

  // Chunks [first, first + count) of the read unit starting at chunk `first`.
  size_t UnitChunks(size_t first) const {
    return static_cast<size_t>(std::min<uint64_t>(unit_chunks_, manifest_.count() - first));
  }

  void ReadLoop() {
    for (uint64_t i = 0; i < manifest_.count(); i += unit_chunks_) {
      CheckCancel();
      MaybeReport();
      const uint64_t offset = manifest_.ChunkOffset(i);
      const size_t last = i + UnitChunks(i) - 1;
      const size_t len =
          static_cast<size_t>(manifest_.ChunkOffset(last) + manifest_.ChunkLength(last) - offset);
      if (source_.IsHole(offset, len)) {
        if (!with_digest_) {
          std::lock_guard lock(crew_.mu);
          progress_.bytes_done += len;
          progress_.chunks_skipped += UnitChunks(i);
          continue;
        }
        // Holes need no buffer, but hashing their zeros takes time: keep the reader close.
        if (!WaitUntil([&] { return digest_queue_.size() < kMaxDigestLag; })) break;
        {
          std::lock_guard lock(crew_.mu);
          digest_queue_.push_back({i, -1, len});
        }
        crew_.digest_cv.notify_one();
        continue;
      }
      int slot = AcquireSlot();
      if (slot < 0) break;
      // A source that takes parallel reads is read by the workers (several requests in
      // flight); any other by this thread, in order.
      if (!parallel_reads_) source_.ReadAt(offset, BufferOf(slot), len);
      {
        std::lock_guard lock(crew_.mu);
        loaded_[slot] = !parallel_reads_;
        refs_[slot] = with_digest_ ? 2 : 1;
        work_queue_.push_back({i, slot, len});
        if (with_digest_) digest_queue_.push_back({i, slot, len});
      }
      crew_.work_cv.notify_one();
      if (with_digest_) crew_.digest_cv.notify_one();
    }
    {
      std::lock_guard lock(crew_.mu);
      reading_done_ = true;
    }
    crew_.NotifyAll();
  }

  void WaitForCrew() {
    WaitUntil([&] { return crew_.idle(); });
  }

  // Under crew_.mu.
  void ReleaseSlot(int slot) {
    if (--refs_[slot] == 0) held_[static_cast<size_t>(slot)].Release();
  }

  void WorkerLoop() {
    for (;;) {
      ChunkJob job;
      {
        std::unique_lock lock(crew_.mu);
        crew_.work_cv.wait(lock,
                           [&] { return crew_.stop || !work_queue_.empty() || reading_done_; });
        if (crew_.stop || work_queue_.empty()) return;
        job = work_queue_.front();
        work_queue_.pop_front();
      }
      if (parallel_reads_) {
        source_.ReadAt(manifest_.ChunkOffset(job.index), BufferOf(job.slot), job.len);
        {
          std::lock_guard lock(crew_.mu);
          loaded_[job.slot] = true;
        }
        crew_.digest_cv.notify_all();
      }
      // The unit's chunks are named, looked up in one batch, and the missing ones stored.
      const size_t count = UnitChunks(job.index);
      std::optional<UnitNames> names = names_with_digest_ ? AwaitNames(job.slot) : NameUnit(job);
      if (!names) return;  // the crew stopped
      const std::vector<std::string>& hashes = names->hashes;
      const std::vector<uint64_t>& lengths = names->lengths;
      const std::vector<size_t>& at = names->at;
      // Present with its length and untouched since written (Store::HasChunkOfLength).
      std::vector<bool> present;
      Retried(
          retry_, [&] { present = store_.HasChunks(hashes, &cancel_, lengths); }, &cancel_,
          "looking up blocks in store " + store_.uri());
      uint64_t stored_raw = 0;
      uint64_t stored_bytes = 0;
      uint64_t stored = 0;
      for (size_t h = 0; h < hashes.size(); ++h) {
        if (!present[h]) {
          Retried(
              retry_,
              [&] {
                stored_bytes += store_.PutChunk(
                    hashes[h], std::span(ChunkData(job, at[h]), static_cast<size_t>(lengths[h])),
                    &cancel_);
              },
              &cancel_, "writing chunk " + hashes[h] + " to store " + store_.uri());
          stored_raw += lengths[h];
          ++stored;
        }
      }
      const uint64_t skipped = count - stored;  // zero, or there already
      // The unit's entries in the block list, holes left all zero (one writer per unit).
      std::vector<std::byte> entries(count * kHashBytes);
      for (size_t h = 0; h < hashes.size(); ++h) {
        HashToBytes(hashes[h], entries.data() + (at[h] - job.index) * kHashBytes);
      }
      manifest_.blocks->Write(job.index, entries);
      std::lock_guard lock(crew_.mu);
      progress_.bytes_done += job.len;
      progress_.bytes_transferred += stored_raw;
      progress_.bytes_sent += stored_bytes;
      progress_.chunks_skipped += skipped;
      ReleaseSlot(job.slot);
    }
  }

  void DigestLoop() {
    for (;;) {
      ChunkJob job;
      {
        std::unique_lock lock(crew_.mu);
        // The next chunk in order, once its bytes are in (a worker may still be reading it).
        crew_.digest_cv.wait(lock, [&] {
          if (crew_.stop) return true;
          if (digest_queue_.empty()) return reading_done_;
          const int slot = digest_queue_.front().slot;
          return slot < 0 || loaded_[slot] != 0;
        });
        if (crew_.stop || digest_queue_.empty()) return;
        job = digest_queue_.front();
        digest_queue_.pop_front();
        if (digest_queue_.size() + 1 == kMaxDigestLag) crew_.caller_cv.notify_one();
      }
      if (job.slot < 0) {
        image_hash_.UpdateZeros(job.len);
        std::lock_guard lock(crew_.mu);
        progress_.bytes_done += job.len;
        progress_.chunks_skipped += UnitChunks(job.index);
        continue;
      }
      if (!names_with_digest_) {
        image_hash_.Update(std::span(BufferOf(job.slot), job.len));
        std::lock_guard lock(crew_.mu);
        ReleaseSlot(job.slot);
        continue;
      }
      UnitNames names = DigestAndNameUnit(job);
      {
        std::lock_guard lock(crew_.mu);
        names_[job.slot] = std::move(names);
        named_[job.slot] = 1;
        ReleaseSlot(job.slot);
      }
      // Only the worker waiting for this unit: waking all of them (notify_all on work_cv)
      // cost the digest thread ~0.5 ms a unit on 2 CPUs, preempted by workers that went
      // back to sleep (0.3 s of a 1.7 s import of 2 GiB).
      named_cv_[static_cast<size_t>(job.slot)].notify_one();
    }
  }

  std::byte* ChunkData(const ChunkJob& job, size_t chunk) const {
    return BufferOf(job.slot) + (manifest_.ChunkOffset(chunk) - manifest_.ChunkOffset(job.index));
  }

  std::span<const std::byte> ChunkSpan(const ChunkJob& job, size_t chunk) const {
    return {ChunkData(job, chunk), static_cast<size_t>(manifest_.ChunkLength(chunk))};
  }

  // A worker's naming of its unit (no SHA-NI, or no digest): two blocks at a time, their
  // SHA-256 rounds interleaved where the CPU can (base/sha256_pair.hpp).
  UnitNames NameUnit(const ChunkJob& job) {
    HashPermit permit(hash_permits_);
    UnitNames names;
    for (size_t chunk = job.index; chunk < job.index + UnitChunks(job.index); ++chunk) {
      const auto data = ChunkSpan(job, chunk);
      if (IsAllZero(data.data(), data.size())) continue;
      names.lengths.push_back(data.size());
      names.at.push_back(chunk);
    }
    names.hashes.resize(names.at.size());
    auto span_of = [&](size_t h) { return ChunkSpan(job, names.at[h]); };
    for (size_t h = 0; h + 1 < names.at.size(); h += 2) {
      Sha256HexPair(span_of(h), span_of(h + 1), names.hashes[h], names.hashes[h + 1]);
    }
    if (names.at.size() % 2 == 1) {
      const auto last = span_of(names.at.size() - 1);
      names.hashes.back() = Sha256Hex(last.data(), last.size());
    }
    return names;
  }

  // The digest thread's, with SHA-NI: the unit into the image's digest, each block that is
  // not all zero named on the way.
  UnitNames DigestAndNameUnit(const ChunkJob& job) {
    UnitNames names;
    for (size_t chunk = job.index; chunk < job.index + UnitChunks(job.index); ++chunk) {
      const auto data = ChunkSpan(job, chunk);
      if (IsAllZero(data.data(), data.size())) {
        image_hash_.Update(data);
        continue;
      }
      names.hashes.emplace_back();
      image_hash_.UpdateAndName(data, names.hashes.back());
      names.lengths.push_back(data.size());
      names.at.push_back(chunk);
    }
    return names;
  }

  // A worker's wait for the digest thread to name its unit; nullopt if the crew stopped.
  std::optional<UnitNames> AwaitNames(int slot) {
    std::unique_lock lock(crew_.mu);
    named_cv_[static_cast<size_t>(slot)].wait(lock,
                                              [&] { return crew_.stop || named_[slot] != 0; });
    if (crew_.stop) return std::nullopt;
    named_[slot] = 0;
    return std::move(names_[slot]);
  }

  ByteSource& source_;
  Store& store_;
  const CancelToken& cancel_;
  ProgressThrottle throttle_;
  const uint64_t chunk_size_;
  const uint64_t unit_chunks_;  // chunks per read unit
  const int hashers_;
  int workers_;
  std::counting_semaphore<kMaxThreads> hash_permits_;
  const RetryPolicy retry_;
  ImageDigest image_hash_;        // the digest thread's; before names_with_digest_, which asks it
  const bool with_digest_;        // false: the digest is left for HashStoredImage
  const bool names_with_digest_;  // the digest thread names the blocks (SHA-NI)
  const bool parallel_reads_;     // workers read their chunks (ByteSource::ConcurrentReads)
  Manifest manifest_;

  std::optional<BufferPool> pool_;  // the read units

  // Guarded by crew_.mu.
  IoProgress progress_;
  std::vector<BufferPool::Buffer> held_;  // per pool buffer: taken for a unit in flight
  std::vector<int> refs_;
  std::vector<char> loaded_;      // per slot: its chunk's bytes have been read
  std::vector<UnitNames> names_;  // per slot, with SHA-NI: its blocks' names, once named_
  std::vector<char> named_;
  std::vector<std::condition_variable> named_cv_;  // per slot: its worker waits for names_
  std::deque<ChunkJob> work_queue_;
  std::deque<ChunkJob> digest_queue_;  // in chunk order
  bool reading_done_ = false;

  Crew crew_;  // last: destroyed (threads joined) before the buffers they use
};

void ValidateManifest(const Manifest& m) {
  if (m.chunk_size == 0 || m.count() != ChunkCount(m.size, m.chunk_size)) {
    throw ValidationError(codes::kInvalidParameter,
                          "the manifest is inconsistent: " + std::to_string(m.count()) +
                              " chunks for " + std::to_string(m.size) + " bytes in chunks of " +
                              std::to_string(m.chunk_size));
  }
}

// One window of a manifest (kManifestWindow blocks from `first`) and its stored blocks.
struct ManifestWindow {
  uint64_t first = 0;
  std::vector<std::string> hashes;  // "" = hole
  std::vector<size_t> todo;         // positions in `hashes` of stored blocks, in order

  ManifestWindow(const Manifest& manifest, uint64_t first_block)
      : first(first_block), hashes(manifest.Hashes(first_block, kManifestWindow)) {
    for (size_t i = 0; i < hashes.size(); ++i) {
      if (!hashes[i].empty()) todo.push_back(i);
    }
  }
  // Tells the store the chunks a reader is about to read, in order (Store::PlanReads).
  void PlanReads(Store& store) const {
    std::vector<std::string> reads;
    reads.reserve(todo.size());
    for (size_t i : todo) reads.push_back(hashes[i]);
    store.PlanReads(reads);
  }
};

std::span<std::byte> AllOf(const BufferPool::Buffer& buffer) {
  return {buffer.data(), buffer.size()};
}

// The first ChunkLength(i) bytes of `room`; std::length_error if it is shorter.
std::span<std::byte> ChunkRoom(const Manifest& manifest, uint64_t i, std::span<std::byte> room) {
  const auto len = static_cast<size_t>(manifest.ChunkLength(i));
  if (len > room.size()) throw std::length_error("a chunk is larger than its buffer");
  return room.first(len);
}

// Reads chunk i of the manifest (named `hash`) into the start of `room` and checks its
// length and hash; a mismatch is an IntegrityError naming the chunk, its place in `what`
// (the image) and the store. Returns the chunk's bytes.
std::span<std::byte> ReadVerifiedChunk(Store& store, const Manifest& manifest, uint64_t i,
                                       const std::string& hash, std::span<std::byte> room,
                                       const std::string& what, const CancelToken* cancel) {
  const uint64_t offset = manifest.ChunkOffset(i);
  const uint64_t len = manifest.ChunkLength(i);
  const std::string where = "chunk " + hash + " (bytes " + std::to_string(offset) + ".." +
                            std::to_string(offset + len) + " of " + what + ") in store " +
                            store.uri();
  const std::span<std::byte> out = ChunkRoom(manifest, i, room);
  try {
    Retried(
        RetryPolicy{}, [&] { store.GetChunkInto(hash, out, cancel); }, cancel, "reading " + where);
  } catch (const TransferError&) {
    // Missing is damage as much as corrupt; any other failure is the store's, not the image's.
    if (store.HasChunk(hash, cancel)) throw;
    throw DamagedChunkError(hash, where +
                                      " is missing; the image's bytes are incomplete, run "
                                      "`imagerelay scrub` to repair it from another region");
  }
  if (!store.ChecksReads() && Sha256Hex(out.data(), out.size()) != hash) {
    throw DamagedChunkError(hash, where +
                                      " is corrupt: its content does not match its name; "
                                      "run `imagerelay scrub` to repair it from another "
                                      "region");
  }
  return out;
}

// ReadVerifiedChunk of chunks i and j at once: checked together where the store can
// (Store::GetChunkPairStoredInto: two blocks' SHA-256 rounds interleaved); else, or when either
// is not a plain read, each alone (which names, retries and reports as ever).
std::pair<std::span<std::byte>, std::span<std::byte>> ReadVerifiedChunkPair(
    Store& store, const Manifest& manifest, uint64_t i, const std::string& hash_i,
    std::span<std::byte> room_i, uint64_t j, const std::string& hash_j, std::span<std::byte> room_j,
    const std::string& what, const CancelToken* cancel) {
  const std::span<std::byte> out_i = ChunkRoom(manifest, i, room_i);
  const std::span<std::byte> out_j = ChunkRoom(manifest, j, room_j);
  thread_local StoredChunk stored_i;  // their stored forms: not wanted here
  thread_local StoredChunk stored_j;
  if (store.GetChunkPairStoredInto(hash_i, out_i, stored_i, hash_j, out_j, stored_j, cancel)) {
    return {out_i, out_j};
  }
  return {ReadVerifiedChunk(store, manifest, i, hash_i, out_i, what, cancel),
          ReadVerifiedChunk(store, manifest, j, hash_j, out_j, what, cancel)};
}

// Writes an export's chunks: the aligned part of each with O_DIRECT straight from its pool
// buffer (page-aligned), the rest (all of it once direct writes are refused) buffered.
struct ExportWriter {
  int fd;
  int direct_fd;
  std::atomic<bool> direct;

  // Returns 0 or an errno value. `offset` is a multiple of kDirectIoAlign; `bytes` starts a
  // chunk's place in a pool buffer (page-aligned where direct_fd is open: whole pages).
  int Write(std::span<const std::byte> bytes, off_t offset) {
    const size_t whole = bytes.size() / kDirectIoAlign * kDirectIoAlign;
    size_t done = 0;
    if (whole != 0 && direct.load(std::memory_order_relaxed)) {
      int err = PwriteAll(direct_fd, bytes.data(), whole, offset);
      if (err == 0) {
        done = whole;
      } else if (err == EINVAL) {
        direct.store(false, std::memory_order_relaxed);  // not for this file system
      } else {
        return err;
      }
    }
    return PwriteAll(fd, bytes.data() + done, bytes.size() - done,
                     offset + static_cast<off_t>(done));
  }
};

// Removes the temporary file unless the export committed it.
class TempFileGuard {
 public:
  TempFileGuard(int dir_fd, std::string name) : dir_fd_(dir_fd), name_(std::move(name)) {}
  ~TempFileGuard() {
    // not a durable step: the export's own temporary file
    if (!name_.empty()) ::unlinkat(dir_fd_, name_.c_str(), 0);
  }
  TempFileGuard(const TempFileGuard&) = delete;
  TempFileGuard& operator=(const TempFileGuard&) = delete;
  void Commit() { name_.clear(); }

 private:
  int dir_fd_;
  std::string name_;
};

[[noreturn]] void ExportFailed(const std::filesystem::path& path, const std::string& what,
                               int err) {
  throw TransferError(codes::kTransferFailed, "cannot export to " + path.string() + ": " + what +
                                                  ": " + ErrnoText(err) +
                                                  "; check free space and permissions");
}

[[noreturn]] void ExportRefused(const std::string& message) {
  throw ValidationError(codes::kInvalidParameter, message);
}

// An export writes a temporary file beside its target (so that the rename stays in one file
// system), named for whoever lists the directory to see what it is and whose:
// ".<target>.imagerelay-export-<pid>.partial".
constexpr std::string_view kExportTempTag = ".imagerelay-export-";
constexpr std::string_view kExportTempEnd = ".partial";
constexpr size_t kExportTempStem = 200;  // of the target's name: the whole fits in NAME_MAX

std::string ExportTempName(const std::string& target, pid_t pid) {
  std::string name = ".";
  name.append(target, 0, kExportTempStem);
  name += kExportTempTag;
  name += std::to_string(pid);
  name += kExportTempEnd;
  return name;
}

// The writer's pid if `name` is the name of an export's temporary file.
std::optional<pid_t> ExportTempWriter(std::string_view name) {
  if (!name.starts_with('.') || !name.ends_with(kExportTempEnd)) return std::nullopt;
  name.remove_suffix(kExportTempEnd.size());
  const size_t tag = name.rfind(kExportTempTag);
  if (tag == std::string_view::npos || tag == 0) return std::nullopt;
  const std::string_view digits = name.substr(tag + kExportTempTag.size());
  pid_t pid = 0;
  const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), pid);
  if (ec != std::errc() || end != digits.data() + digits.size() || pid <= 0) return std::nullopt;
  return pid;
}

// True if process `pid` exists on this host (EPERM: it does, as another user).
bool ProcessExists(pid_t pid) { return ::kill(pid, 0) == 0 || errno == EPERM; }

// True if `name`, an export's temporary file written by `writer`, is a leftover of an export
// that was killed. A live writer holds an exclusive flock on its temporary file until the
// rename. A live pid (not ours) is enough to leave the file alone; the lock also tells this
// process's exports in flight from the leftover of an earlier process that had our pid, and
// protects a writer whose pid this host's check cannot see (another pid namespace).
bool IsStaleExportTemp(int dir_fd, const std::string& name, pid_t writer) {
  const bool ours = writer == ::getpid();
  if (!ours && ProcessExists(writer)) return false;
  struct stat st;
  if (::fstatat(dir_fd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode)) {
    return false;  // not a file this code wrote
  }
  UniqueFd fd(::openat(dir_fd, name.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
  if (!fd) return !ours;  // the lock cannot be probed: the pid decides
  if (::flock(fd.get(), LOCK_EX | LOCK_NB) == 0) return true;  // nobody writes it
  return errno != EWOULDBLOCK && !ours;                        // held: a writer is at work
}

// Within this process, a temporary file must never be seen between its creation and its lock
// (it would look like a leftover): creating and cleaning up take turns.
std::mutex export_temp_mutex;

// Removes, best effort, the leftovers of killed exports in the directory, then creates and
// locks this export's temporary file.
UniqueFd CreateExportTemp(int dir_fd, const std::filesystem::path& dir, const std::string& tmp,
                          mode_t mode, const std::filesystem::path& path) {
  std::lock_guard lock(export_temp_mutex);
  std::error_code ec;
  for (std::filesystem::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    const std::optional<pid_t> writer = ExportTempWriter(name);
    // not a durable step: a dead export's temporary file
    if (writer && IsStaleExportTemp(dir_fd, name, *writer)) ::unlinkat(dir_fd, name.c_str(), 0);
  }
  UniqueFd fd(
      ::openat(dir_fd, tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode));
  if (!fd) {
    const int err = errno;
    const std::string shown = (dir / tmp).string();
    if (err == EEXIST) {
      throw TransferError(codes::kTransferFailed,
                          "cannot export to " + path.string() + ": " + shown + " exists: " +
                              "another export to it is running in this process; wait for it");
    }
    ExportFailed(path, "cannot create " + shown, err);
  }
  ::flock(fd.get(), LOCK_EX | LOCK_NB);  // if the file system has no locks, the pid tells
  return fd;
}

// What an export to `name` would replace: nothing (nullopt), or the regular file there when
// `force` allows it. Refuses, naming it, a symbolic link (even a dangling one: an export
// never writes through a link), anything that is not a regular file (a device node, FIFO,
// socket or directory is never replaced) and, without `force`, an existing file.
std::optional<struct stat> CheckExportTarget(int dir_fd, const std::string& name,
                                             const std::filesystem::path& path, bool force) {
  struct stat st;
  if (::fstatat(dir_fd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
    if (errno == ENOENT) return std::nullopt;
    ExportFailed(path, "cannot inspect it", errno);
  }
  const std::string shown = path.string();
  if (S_ISLNK(st.st_mode)) {
    ExportRefused("cannot export to " + shown + ": it is a symbolic link, and an export never " +
                  "writes through one; give the path of the file itself");
  }
  if (!S_ISREG(st.st_mode)) {
    ExportRefused("cannot export to " + shown + ": it is " + std::string(FileTypeName(st.st_mode)) +
                  ", and an export writes only regular files; give another path");
  }
  if (!force) ExportRefused(shown + " exists; pass --force (force=True) to overwrite it");
  return st;
}

// A replaced file keeps its mode, and its owner when this process may give it (root). Set on
// the temporary file (created 0600, so its bytes are never more readable than the old file's)
// before the rename; the owner first, as chown clears set-user-ID and set-group-ID.
void KeepModeAndOwner(int fd, const struct stat& old, const std::filesystem::path& path,
                      const std::filesystem::path& tmp) {
  if (::geteuid() == 0 && ::fchown(fd, old.st_uid, old.st_gid) != 0) {
    ExportFailed(path, "cannot give " + tmp.string() + " the owner of the file it replaces", errno);
  }
  if (::fchmod(fd, old.st_mode & 07777) != 0) {
    ExportFailed(path, "cannot give " + tmp.string() + " the mode of the file it replaces", errno);
  }
}

// Renames the finished temporary file to the target, which is checked again first: it may
// have changed during the export. Where nothing is to be replaced, RENAME_NOREPLACE makes sure
// nothing that appears meanwhile is (a file system without it gets the check alone).
void CommitExport(int dir_fd, const std::string& tmp, const std::string& name,
                  const std::filesystem::path& path, bool force) {
  FailPoint("export.synced");
  if (!CheckExportTarget(dir_fd, name, path, force)) {
    if (::renameat2(dir_fd, tmp.c_str(), dir_fd, name.c_str(), RENAME_NOREPLACE) == 0) return;
    if (errno == EEXIST) {
      // Something appeared: refused, unless a regular file that `force` lets it replace.
      CheckExportTarget(dir_fd, name, path, force);
    } else if (errno != EINVAL) {
      ExportFailed(path, "cannot rename " + tmp + " to it", errno);
    }
  }
  if (::renameat(dir_fd, tmp.c_str(), dir_fd, name.c_str()) != 0) {
    ExportFailed(path, "cannot rename " + tmp + " over it", errno);
  }
}

// Chunks a verify reads ahead of its hash, at most.
constexpr size_t kHashAhead = 8;

// Feeds one window of the image, in order, to `whole`: readers fetch and check chunks ahead,
// each into a buffer of `pool` (at most kHashAhead ahead); the calling thread hashes them in
// order (zeros for holes) and gives the buffers back. Where the digest names blocks (SHA-NI)
// and the store reads them unchecked (Store::GetChunkUncheckedInto), the readers leave the
// check to the calling thread: each block's name comes with the digest's rounds, and a block
// that does not match is read again with its check, which names and reports it.
void HashWindow(Store& store, const Manifest& manifest, const ManifestWindow& window,
                const std::string& what, const CancelToken& cancel, ProgressThrottle& throttle,
                IoProgress& prog, ImageDigest& whole, uint64_t buffer_memory) {
  // A pool per window, as for an export: the window's crew closes it when it stops, so that
  // no reader waits for a buffer a failed thread holds.
  BufferPool pool(static_cast<size_t>(manifest.chunk_size),
                  BufferPool::CountFor(buffer_memory, manifest.chunk_size, 2, kHashAhead));
  struct Slot {
    BufferPool::Buffer buffer;
    std::span<std::byte> bytes;
    bool ready = false;
    bool checked = true;  // false: read unchecked, checked by `whole`
  };
  std::vector<Slot> ring(kHashAhead);
  // Never more chunks ahead than buffers: the buffers of chunks read ahead are held until
  // hashed, so a reader must never wait for one while the chunk to hash next waits for it.
  const size_t ahead = std::min(kHashAhead, pool.count());
  const std::vector<size_t>& todo = window.todo;
  window.PlanReads(store);
  size_t next_fetch = 0;  // under crew.mu: position in todo of the next chunk to fetch
  size_t next_hash = 0;   // under crew.mu: position in todo of the next chunk to hash
  Crew crew;              // destroyed first: its readers are joined before `ring` goes
  crew.ClosesOnStop(pool);
  const bool unchecked = whole.names();
  const bool pairs = !unchecked && store.ReadsPairs();
  auto reader = [&] {
    for (;;) {
      size_t k;
      std::optional<size_t> k2;  // the next chunk too, read and checked with k
      {
        std::unique_lock lock(crew.mu);
        crew.work_cv.wait(lock, [&] {
          return crew.stop || next_fetch == todo.size() || next_fetch < next_hash + ahead;
        });
        if (crew.stop || next_fetch == todo.size()) return;
        k = next_fetch++;
        if (pairs && next_fetch < todo.size() && next_fetch < next_hash + ahead) k2 = next_fetch++;
      }
      // Within `ahead` (at most the pool's count) each chunk fetched finds a buffer.
      BufferPool::Buffer buffer = pool.Acquire(&cancel);
      if (!buffer) return;  // stopped or cancelled: the caller sees which
      BufferPool::Buffer buffer2;
      std::span<std::byte> bytes;
      std::span<std::byte> bytes2;
      bool checked = true;
      const uint64_t chunk = window.first + todo[k];
      const std::span<std::byte> out = ChunkRoom(manifest, chunk, AllOf(buffer));
      if (unchecked && store.GetChunkUncheckedInto(window.hashes[todo[k]], out, &cancel)) {
        bytes = out;
        checked = false;
      } else if (k2) {
        buffer2 = pool.Acquire(&cancel);
        if (!buffer2) return;
        std::tie(bytes, bytes2) = ReadVerifiedChunkPair(
            store, manifest, window.first + todo[k], window.hashes[todo[k]], AllOf(buffer),
            window.first + todo[*k2], window.hashes[todo[*k2]], AllOf(buffer2), what, &cancel);
      } else {
        bytes =
            ReadVerifiedChunk(store, manifest, chunk, window.hashes[todo[k]], out, what, &cancel);
      }
      std::lock_guard lock(crew.mu);
      Slot& slot = ring[k % kHashAhead];
      slot.buffer = std::move(buffer);
      slot.bytes = bytes;
      slot.checked = checked;
      slot.ready = true;
      if (k2) {
        Slot& second = ring[*k2 % kHashAhead];
        second.buffer = std::move(buffer2);
        second.bytes = bytes2;
        second.ready = true;
      }
      crew.caller_cv.notify_one();
    }
  };
  const int threads = static_cast<int>(std::min<size_t>(kExportThreads, todo.size()));
  for (int t = 0; t < threads; ++t) crew.Start(reader);
  size_t k = 0;  // position in todo of the next stored chunk in image order
  for (size_t i = 0; i < window.hashes.size(); ++i) {
    if (cancel.cancelled()) throw Cancelled{};  // ~Crew stops and joins the readers
    if (throttle.Due()) throttle.Report(prog);
    if (window.hashes[i].empty()) {
      const uint64_t len = manifest.ChunkLength(window.first + i);
      whole.UpdateZeros(len);
      prog.bytes_done += len;
      ++prog.chunks_skipped;
      continue;
    }
    Slot* slot = &ring[k % kHashAhead];
    {
      std::unique_lock lock(crew.mu);
      // Readers all gone and the chunk not read (the pool closed under them): never wait for
      // it.
      while (!crew.caller_cv.wait_for(lock, kProgressInterval,
                                      [&] { return crew.stop || slot->ready || crew.idle(); })) {
        if (cancel.cancelled()) throw Cancelled{};
        if (throttle.Due()) throttle.Report(prog);
      }
      if (!slot->ready) break;  // a reader failed: Finish() rethrows its error
    }
    if (slot->checked) {
      whole.Update(slot->bytes);
    } else if (!whole.UpdateIfNamed(slot->bytes, window.hashes[i])) {
      // Not what its name says (damaged, or moved by a sweep since it was located): read
      // again with its check, which names and reports what is wrong.
      slot->bytes = ReadVerifiedChunk(store, manifest, window.first + i, window.hashes[i],
                                      AllOf(slot->buffer), what, &cancel);
      whole.Update(slot->bytes);
    }
    prog.bytes_done += slot->bytes.size();
    {
      std::lock_guard lock(crew.mu);
      slot->buffer.Release();
      slot->ready = false;
      next_hash = ++k;
    }
    // One more block may be fetched: one reader (waking all of them for it took the hashing
    // thread's CPU on 2 cores; a reader that is busy sees the room when it asks again).
    crew.work_cv.notify_one();
  }
  crew.Finish();
  if (k != todo.size()) {
    // Readers give up on a cancel too (no buffer for them): stopped, not failed.
    if (cancel.cancelled()) throw Cancelled{};
    throw TransferError(codes::kTransferFailed, "reading " + what + " stopped early");
  }
}

}  // namespace

Manifest ImportToStore(ByteSource& source, Store& store, const ImportOptions& options,
                       const CancelToken& cancel, const ProgressFn& progress) {
  ImportPipeline importer(source, store, options, cancel, progress);
  Manifest manifest = importer.Run();
  source.CheckUnchanged();  // not an image of a file that changed under the reader
  store.Flush();            // every chunk it names is durable and visible when the import returns
  return manifest;
}

std::string HashStoredImage(Store& store, const Manifest& manifest, const std::string& what,
                            const CancelToken& cancel, const ProgressFn& progress,
                            uint64_t buffer_memory) {
  ValidateManifest(manifest);
  ProgressThrottle throttle(progress);
  IoProgress prog;  // the calling thread's
  prog.bytes_total = manifest.size;
  prog.chunks_total = manifest.count();
  ImageDigest whole;
  for (uint64_t first = 0; first < manifest.count(); first += kManifestWindow) {
    HashWindow(store, manifest, ManifestWindow(manifest, first), what, cancel, throttle, prog,
               whole, buffer_memory);
  }
  throttle.Report(prog);
  return "sha256:" + whole.FinishHex();
}

void ExportFromStore(Store& store, const Manifest& manifest, const std::filesystem::path& path,
                     const CancelToken& cancel, const ProgressFn& progress, bool force,
                     uint64_t buffer_memory) {
  ValidateManifest(manifest);
  if (path.empty() || HasNul(path.native())) {
    throw ValidationError(codes::kInvalidParameter,
                          "the export path is empty or contains a NUL byte; give a file path");
  }
  if (!path.has_filename()) {
    throw ValidationError(codes::kInvalidParameter, "cannot export to " + path.string() +
                                                        ": give a file path, not a "
                                                        "directory");
  }
  std::filesystem::path dir = path.parent_path();
  if (dir.empty()) dir = ".";
  const std::string name = path.filename().string();
  // The directory is opened once; the target and the temporary file are named within it.
  UniqueFd dir_fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dir_fd) {
    int err = errno;
    if (err == ENOENT || err == ENOTDIR) {
      throw ValidationError(codes::kInvalidParameter, "cannot export to " + path.string() +
                                                          ": directory " + dir.string() +
                                                          " does not exist; create it first");
    }
    ExportFailed(path, "cannot open directory " + dir.string(), err);
  }
  const std::optional<struct stat> replaced = CheckExportTarget(dir_fd.get(), name, path, force);
  const std::string tmp_name = ExportTempName(name, ::getpid());
  const std::filesystem::path tmp = dir / tmp_name;
  UniqueFd fd = CreateExportTemp(dir_fd.get(), dir, tmp_name, replaced ? 0600 : 0644, path);
  TempFileGuard guard(dir_fd.get(), tmp_name);
  // Zero chunks are never written: they stay holes of the truncated file.
  if (::ftruncate(fd.get(), static_cast<off_t>(manifest.size)) != 0) {
    ExportFailed(path, "cannot size " + tmp.string(), errno);
  }

  ProgressThrottle throttle(progress);
  IoProgress prog;  // under crew.mu while the crew runs
  prog.bytes_total = manifest.size;
  prog.chunks_total = manifest.count();

  // Chunks reach the file around the page cache (O_DIRECT), each from an aligned copy: no
  // page-cache pages to find for an image-sized write, nothing dirty left for the fsync.
  // Chunk offsets are aligned; a last chunk's unaligned tail goes through `fd`.
  UniqueFd direct_fd;
  if (manifest.chunk_size % kDirectIoAlign == 0) {
    direct_fd = UniqueFd(
        ::openat(dir_fd.get(), tmp_name.c_str(), O_WRONLY | O_NOFOLLOW | O_CLOEXEC | O_DIRECT));
  }
  ExportWriter writer{fd.get(), direct_fd.get(), static_cast<bool>(direct_fd)};
  // A worker reads a unit of neighbouring chunks into its buffer and writes each run of
  // stored chunks in it with one write: 64 KiB writes into the file's holes cost ext4 an
  // allocation each (2 GiB: 4.0 s in 64 KiB O_DIRECT writes, 1.3 s in 4 MiB ones). Units fit
  // the memory a worker may hold.
  const uint64_t unit_chunks = std::clamp<uint64_t>(
      std::min(kExportWriteUnit, buffer_memory / kExportThreads) / manifest.chunk_size, 1,
      kManifestWindow);
  const uint64_t unit_size = unit_chunks * manifest.chunk_size;
  const size_t buffers = BufferPool::CountFor(buffer_memory, unit_size, 1, kExportThreads);

  for (uint64_t first = 0; first < manifest.count(); first += kManifestWindow) {
    const ManifestWindow window(manifest, first);
    for (size_t i = 0; i < window.hashes.size(); ++i) {
      if (window.hashes[i].empty()) {
        prog.bytes_done += manifest.ChunkLength(first + i);
        ++prog.chunks_skipped;
      }
    }
    // The window's units that hold a stored chunk: ranges of positions in window.todo.
    std::vector<std::pair<size_t, size_t>> units;
    for (size_t k = 0; k < window.todo.size(); ++k) {
      if (units.empty() ||
          window.todo[k] / unit_chunks != window.todo[units.back().first] / unit_chunks) {
        units.emplace_back(k, k);
      }
      units.back().second = k + 1;
    }
    window.PlanReads(store);
    // One pool per window: a crew closes its pool when it stops.
    BufferPool pool(static_cast<size_t>(unit_size), buffers);
    Crew crew;  // destroyed first: its workers give their buffers back before the pool goes
    crew.ClosesOnStop(pool);
    size_t next = 0;  // under crew.mu
    const bool pairs = store.ReadsPairs();
    // Chunks at positions todo[from, to) of the window, side by side in the file and in
    // `bytes`: one write.
    auto write_run = [&](size_t from, size_t to, const std::byte* bytes) {
      const uint64_t begin = manifest.ChunkOffset(first + window.todo[from]);
      const uint64_t last = first + window.todo[to - 1];
      const uint64_t end = manifest.ChunkOffset(last) + manifest.ChunkLength(last);
      int err = writer.Write(std::span(bytes, static_cast<size_t>(end - begin)),
                             static_cast<off_t>(begin));
      if (err != 0) ExportFailed(path, "cannot write " + tmp.string(), err);
      std::lock_guard lock(crew.mu);
      prog.bytes_done += end - begin;
      prog.bytes_transferred += end - begin;
    };
    auto worker = [&] {
      for (;;) {
        std::pair<size_t, size_t> unit;
        {
          std::lock_guard lock(crew.mu);
          if (crew.stop || next == units.size()) return;
          unit = units[next++];
        }
        const BufferPool::Buffer buffer = pool.Acquire(&cancel);
        if (!buffer) return;  // stopped or cancelled: the caller sees which
        const size_t unit_start = window.todo[unit.first] / unit_chunks * unit_chunks;
        auto room = [&](size_t k) {
          return AllOf(buffer).subspan((window.todo[k] - unit_start) * manifest.chunk_size);
        };
        // Read, two at a time where the store checks two for less than two reads.
        for (size_t k = unit.first; k < unit.second;) {
          const uint64_t i = first + window.todo[k];
          if (pairs && k + 1 < unit.second) {
            ReadVerifiedChunkPair(store, manifest, i, window.hashes[window.todo[k]], room(k),
                                  first + window.todo[k + 1], window.hashes[window.todo[k + 1]],
                                  room(k + 1), "the image", &cancel);
            k += 2;
          } else {
            ReadVerifiedChunk(store, manifest, i, window.hashes[window.todo[k]], room(k),
                              "the image", &cancel);
            ++k;
          }
        }
        // Written a run of neighbours at a time (holes between runs stay holes).
        for (size_t from = unit.first; from < unit.second;) {
          size_t to = from + 1;
          while (to < unit.second && window.todo[to] == window.todo[to - 1] + 1) ++to;
          write_run(from, to, room(from).data());
          from = to;
        }
      }
    };
    int threads = static_cast<int>(std::min<size_t>(kExportThreads, units.size()));
    for (int t = 0; t < threads; ++t) crew.Start(worker);
    for (;;) {
      IoProgress snapshot;
      {
        std::unique_lock lock(crew.mu);
        crew.caller_cv.wait_for(lock, kProgressInterval, [&] { return crew.idle(); });
        if (crew.idle()) break;
        snapshot = prog;
      }
      if (cancel.cancelled()) throw Cancelled{};  // ~Crew stops and joins the workers
      if (throttle.Due()) throttle.Report(snapshot);
    }
    crew.Finish();
  }
  if (cancel.cancelled()) throw Cancelled{};

  if (replaced) KeepModeAndOwner(fd.get(), *replaced, path, tmp);
  // not a durable step of the home: the user's file, committed by CommitExport below
  if (::fsync(fd.get()) != 0) ExportFailed(path, "cannot fsync " + tmp.string(), errno);
  // `fd` stays open, locked, until after the rename: closed before, the temporary file would
  // look like a leftover to another export's clean-up. fsync has reported any write error.
  CommitExport(dir_fd.get(), tmp_name, name, path, force);
  guard.Commit();
  FailPoint("export.renamed");
  if (::fsync(dir_fd.get()) != 0) ExportFailed(path, "cannot fsync " + dir.string(), errno);
  throttle.Report(prog);
}

}  // namespace imagerelay
