#include "imagerelay/transfer.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <exception>
#include <limits>
#include <mutex>
#include <optional>
#include <random>
#include <span>
#include <string_view>
#include <thread>
#include <tuple>
#include <unordered_map>
#include <utility>

#include "base/chunk_name_hash.hpp"
#include "base/retry.hpp"
#include "base/token_bucket.hpp"
#include "dataplane/buffer_pool.hpp"
#include "dataplane/crew.hpp"
#include "dataplane/progress_throttle.hpp"
#include "imagerelay/error.hpp"
#include "imagerelay/sha256.hpp"

namespace imagerelay {
namespace {

using Clock = std::chrono::steady_clock;

// The distinct non-zero chunks of one window of an image (kManifestWindow blocks): the unit
// of reading and writing. A window is planned, copied, flushed and confirmed before the
// next, so that memory is that of a window whatever the image's size.
struct ChunkPlan {
  uint64_t first = 0;                // the window's first block
  std::vector<std::string> hashes;   // first-appearance order
  std::vector<uint64_t> length;      // bytes of the chunk
  std::vector<uint64_t> covered;     // bytes of every manifest entry naming it
  std::vector<uint64_t> entries;     // manifest entries naming it
  std::vector<int64_t> entry_chunk;  // per manifest entry: index in `hashes`, -1 = zero
};

ChunkPlan PlanChunks(const Manifest& manifest, uint64_t first) {
  ChunkPlan plan;
  plan.first = first;
  std::vector<std::string> window = manifest.Hashes(first, kManifestWindow);
  plan.entry_chunk.reserve(window.size());
  // Each name is moved into plan.hashes from the window, not copied. The names already
  // there are found through an open-addressed table of their positions (a power of two at
  // least twice the window, probed linearly): no node allocated per name, as a map's were
  // (~3 ms of a no-op copy of 32,768 blocks).
  plan.hashes.reserve(window.size());
  constexpr uint32_t kFree = std::numeric_limits<uint32_t>::max();
  size_t capacity = 16;
  while (capacity < 2 * window.size()) capacity <<= 1;
  std::vector<uint32_t> slots(capacity, kFree);
  const ChunkNameHash name_hash;
  for (size_t i = 0; i < window.size(); ++i) {
    std::string& hash = window[i];
    const uint64_t length = manifest.ChunkLength(first + i);
    if (hash.empty()) {
      plan.entry_chunk.push_back(-1);
      continue;
    }
    size_t at = name_hash(hash) & (capacity - 1);
    while (slots[at] != kFree && plan.hashes[slots[at]] != hash) at = (at + 1) & (capacity - 1);
    if (slots[at] == kFree) {
      slots[at] = static_cast<uint32_t>(plan.hashes.size());
      plan.hashes.push_back(std::move(hash));
      plan.length.push_back(length);
      plan.covered.push_back(0);
      plan.entries.push_back(0);
    }
    const uint32_t chunk = slots[at];
    plan.covered[chunk] += length;
    ++plan.entries[chunk];
    plan.entry_chunk.push_back(static_cast<int64_t>(chunk));
  }
  return plan;
}

struct Failure {
  Failure(std::string code_, std::string message_, std::string damaged = "")
      : code(std::move(code_)),
        message(std::move(message_)),
        damaged_source_chunk(std::move(damaged)) {}
  Failure(const AttemptFailure& f) : code(f.code), message(f.message) {}  // NOLINT
  std::string code;
  std::string message;
  std::string damaged_source_chunk;  // see TransferOutcome
};

// One destination's state, shared by the workers and the calling thread.
struct Dest {
  TransferDestination* spec = nullptr;
  std::string uri;
  std::vector<bool> needs;  // per distinct chunk of the window; written before workers start
  // Per distinct chunk of the window: found held or claimed after the plan (Store::ClaimToWrite:
  // another copy wrote it meanwhile, or is writing it), so not written. Set by the one worker that
  // takes the chunk, read once the pass is over.
  std::vector<char> held;
  std::atomic<uint64_t> entries_held{0};  // manifest entries of those: skipped, as planned ones
  bool server_copy = false;  // chunks are copied inside the object store (CopyChunkFrom)
  IoProgress fixed;          // totals and skips, known after planning
  std::atomic<uint64_t> bytes_done{0};
  std::atomic<uint64_t> bytes_transferred{0};
  std::atomic<uint64_t> bytes_sent{0};
  std::atomic<bool> failed{false};
  std::atomic<int> writing{0};   // writes that passed the liveness check and have not ended
  bool finish_reported = false;  // touched by the calling thread only
  std::optional<ProgressThrottle> throttle;  // the calling thread's
  const std::atomic<bool>* aborted = nullptr;
  std::mutex mu;  // guards the failure fields below
  std::string error_code;
  std::string error;
  std::string damaged_source_chunk;

  bool cancelled() const { return spec->cancel != nullptr && spec->cancel->cancelled(); }
  bool Active() const {
    return !failed.load(std::memory_order_acquire) && !cancelled() &&
           !aborted->load(std::memory_order_relaxed);
  }
  // The first failure wins; nothing is recorded once the destination is cancelled.
  void Fail(const Failure& failure) {
    std::lock_guard lock(mu);
    if (!Active()) return;
    error_code = failure.code;
    error = failure.message;
    damaged_source_chunk = failure.damaged_source_chunk;
    failed.store(true, std::memory_order_release);
  }
  IoProgress Progress() const {
    IoProgress p = fixed;
    p.chunks_skipped += entries_held.load(std::memory_order_relaxed);
    p.bytes_done = bytes_done.load(std::memory_order_relaxed);
    p.bytes_transferred = bytes_transferred.load(std::memory_order_relaxed);
    p.bytes_sent = bytes_sent.load(std::memory_order_relaxed);
    return p;
  }
};

// A chunk in flight: a buffer of the pool and what goes with it. One per pool buffer (at the
// buffer's index), so that nothing is allocated per block.
struct Slot {
  BufferPool::Buffer buffer;  // empty while the slot is free
  std::span<std::byte> data;  // the chunk's bytes: the start of `buffer`
  // The source's stored form of `data`, written as it is where it fits. A vector per slot,
  // not pool memory: its length is known only once read (mostly empty: raw blocks' stored
  // form is `data` itself), and it keeps its capacity from chunk to chunk.
  StoredChunk stored;
  size_t chunk = 0;
  size_t pending_writes = 0;  // guarded by the crew's mutex
};

struct WriteTask {
  Slot* slot;
  size_t dest;
};

class Copier {
 public:
  Copier(Store& source, const Manifest& manifest, std::vector<TransferDestination>& specs,
         const TransferOptions& options, const FinishedFn& finished)
      : finished_(finished),
        source_(source),
        source_uri_(source.uri()),
        source_reads_pairs_(source.ReadsPairs()),
        manifest_(manifest),
        options_(options),
        dests_(specs.size()),
        bucket_(options.bandwidth) {
    for (size_t d = 0; d < specs.size(); ++d) {
      dests_[d].spec = &specs[d];
      dests_[d].aborted = &aborted_;
    }
  }

  std::vector<TransferOutcome> Run();

 private:
  TransferOutcome OutcomeOf(Dest& dest);
  // Reports destinations that will get no more writes (all: every one not yet reported).
  void ReportFinished(bool all);

  const FinishedFn& finished_;
  void SetUpDestinations();
  // Looks up, in each active destination, the chunks of the window in plan_.
  void PlanWindow(std::mt19937& rng);
  // Asks `dest` which chunks of plan_ it holds, with their lengths, retrying transient
  // failures. Nullopt if it failed (then `dest` has failed) or stopped. `action` names the
  // question in errors ("listing the chunks of", "confirming the chunks in").
  std::optional<std::vector<bool>> AskPresence(Dest& dest, const std::string& action,
                                               std::mt19937& rng);
  // Reads and writes every chunk some active destination needs, then flushes them.
  void RunPass(uint32_t seed, std::vector<IoProgress>& last);
  // Asks each active destination for every chunk of the image, with its length: nothing is
  // committed on the strength of a plan (a chunk may have vanished or been damaged since it
  // was looked up or written). Chunks found missing become the destination's needs for
  // another pass; after the last pass they fail it. True if another pass is needed.
  bool ConfirmDestinations(bool last_pass, std::mt19937& rng);
  void Worker(uint32_t seed);
  // Under crew_->mu: a free buffer for the next job's chunk, counted as a read in flight.
  Slot* TakeReadSlot();
  // Under crew_->mu: the read of `slot` has ended; queues its writes (or frees its buffer)
  // and returns how many.
  size_t QueueWrites(Slot& slot, const std::vector<size_t>& targets);
  // The destinations that need chunk k's bytes read from the source: none once the hints say
  // it is held, or every one that wanted it took it by a server-side copy (CopyInsideStores).
  std::vector<size_t> ReadersOf(size_t k, std::mt19937& rng);
  // Reads chunk slot.chunk, verifies it and returns the destinations to write it to. Copies
  // it server-side first to the destinations that can take it so.
  std::vector<size_t> ReadChunk(Slot& slot, std::mt19937& rng);
  // ReadChunk of two chunks, read and checked together where the source can
  // (Store::GetChunkPairStoredInto), else each alone.
  std::pair<std::vector<size_t>, std::vector<size_t>> ReadChunkPair(Slot& a, Slot& b,
                                                                    std::mt19937& rng);
  // Reads slot.chunk for `by_bytes` (retrying what is transient) and returns those of them to
  // write it to; on a corrupt or failed read fails them all and returns none.
  std::vector<size_t> ReadFor(Slot& slot, const std::vector<size_t>& by_bytes, std::mt19937& rng);
  std::vector<size_t> ActiveAmong(const std::vector<size_t>& dests) const;
  // Server-side copies of chunk k; returns the destinations that still need its bytes, or
  // nullopt when the source proved corrupt (every destination needing it has failed).
  std::optional<std::vector<size_t>> CopyInsideStores(size_t k, std::mt19937& rng);
  void WriteChunk(const Slot& slot, Dest& dest, std::mt19937& rng);
  // After a failed read: true if the source does not hold the chunk at all.
  bool SourceLacks(const std::string& hash);
  // `sent`: the bytes the store wrote for it (Store::PutChunk), or the chunk's length.
  void CountWritten(Dest& dest, size_t chunk, uint64_t sent);
  // Workers take buffers without blocking (TryAcquire): a worker waiting for a buffer would
  // not run the writes that give buffers back.
  bool CanRead() const {
    return !crew_->stop && next_job_ < jobs_.size() && pool_->available() != 0;
  }
  bool NoWorkLeft() const {
    return (crew_->stop || next_job_ >= jobs_.size()) && writes_.empty() && reads_in_flight_ == 0;
  }
  // Under crew_->mu: wakes `n` workers for the work just queued, or all of them once none is
  // left (each must see that and end). One wake per block, not a stampede of every worker.
  void Wake(size_t n) {
    if (NoWorkLeft() || n >= threads_) {
      crew_->work_cv.notify_all();
    } else {
      for (size_t i = 0; i < n; ++i) crew_->work_cv.notify_one();
    }
  }
  bool AnyActive() const;
  // The destination is to get the chunk (planned as missing, not found held since, active).
  static bool Wants(const Dest& dest, size_t chunk);
  bool AnyActiveNeeding(size_t chunk) const;
  // Marks the destinations that hold the chunk by now, or that another copy is writing it to
  // (Store::ClaimToWrite), as not wanting it.
  void SkipHeld(size_t chunk);
  void ReportProgress(std::vector<IoProgress>& last, bool force);

  template <typename Op, typename Alive>
  AttemptResult Attempt(Op&& op, Alive&& alive, const std::string& action, std::mt19937& rng) {
    return imagerelay::Attempt(options_.retry, std::forward<Op>(op), std::forward<Alive>(alive),
                               action, rng);
  }

  Store& source_;
  const std::string source_uri_;
  // Workers take two chunks at once (Store::ReadsPairs): asked once, not at every read.
  const bool source_reads_pairs_;
  const Manifest& manifest_;
  const TransferOptions& options_;
  ChunkPlan plan_;  // the window being copied
  std::vector<Dest> dests_;
  TokenBucket bucket_;
  std::atomic<bool> aborted_{false};  // the caller's progress callback threw
  // Fired when no destination wants anything more: aborts source reads in flight.
  CancelToken reads_cancel_;

  size_t threads_ = 1;
  std::vector<size_t> jobs_;  // distinct chunks some destination lacks
  std::optional<BufferPool> pool_;
  std::vector<Slot> slots_;  // per pool buffer
  Crew* crew_ = nullptr;     // the pass's workers; its mutex guards everything below

  std::deque<WriteTask> writes_;
  size_t next_job_ = 0;
  size_t reads_in_flight_ = 0;
  bool use_hints_ = false;  // the pass may skip chunks held since the plan (SkipHeld)
};

bool Copier::AnyActive() const {
  return std::any_of(dests_.begin(), dests_.end(), [](const Dest& d) { return d.Active(); });
}

bool Copier::Wants(const Dest& dest, size_t chunk) {
  return dest.needs[chunk] && dest.held[chunk] == 0 && dest.Active();
}

bool Copier::AnyActiveNeeding(size_t chunk) const {
  return std::any_of(dests_.begin(), dests_.end(),
                     [chunk](const Dest& d) { return Wants(d, chunk); });
}

void Copier::SkipHeld(size_t chunk) {
  const std::string& hash = plan_.hashes[chunk];
  for (Dest& dest : dests_) {
    if (!Wants(dest, chunk) || dest.spec->store->ClaimToWrite(hash)) continue;
    dest.held[chunk] = 1;
    dest.bytes_done.fetch_add(plan_.covered[chunk], std::memory_order_relaxed);
    dest.entries_held.fetch_add(plan_.entries[chunk], std::memory_order_relaxed);
  }
}

void Copier::SetUpDestinations() {
  for (Dest& dest : dests_) {
    dest.throttle.emplace(dest.spec->progress);
    dest.fixed.bytes_total = manifest_.size;
    dest.fixed.chunks_total = manifest_.count();
    if (dest.spec->store == nullptr) {
      dest.Fail({codes::kTransferFailed, "a transfer destination has no store"});
      continue;
    }
    dest.uri = dest.spec->store->uri();
    dest.server_copy = dest.spec->store->CanCopyChunksFrom(source_);
  }
}

std::optional<std::vector<bool>> Copier::AskPresence(Dest& dest, const std::string& action,
                                                     std::mt19937& rng) {
  std::vector<bool> present;
  AttemptResult result = Attempt(
      [&] { present = dest.spec->store->HasChunks(plan_.hashes, dest.spec->cancel, plan_.length); },
      [&] { return dest.Active(); }, action + " " + dest.uri, rng);
  if (result.ok) return present;
  if (result.failure) dest.Fail(*result.failure);
  return std::nullopt;
}

void Copier::PlanWindow(std::mt19937& rng) {
  const std::vector<std::string>& hashes = plan_.hashes;
  for (Dest& dest : dests_) {
    dest.needs.assign(hashes.size(), false);
    dest.held.assign(hashes.size(), 0);
    if (!dest.Active()) continue;

    std::optional<std::vector<bool>> answer = AskPresence(dest, "listing the chunks of", rng);
    if (!answer) continue;
    const std::vector<bool>& present = *answer;
    if (present.size() != hashes.size()) {
      dest.Fail({codes::kTransferFailed, "listing the chunks of " + dest.uri + " gave " +
                                             std::to_string(present.size()) + " answers for " +
                                             std::to_string(hashes.size()) + " chunks"});
      continue;
    }
    uint64_t done = 0;
    uint64_t skipped = 0;
    for (size_t i = 0; i < plan_.entry_chunk.size(); ++i) {
      int64_t chunk = plan_.entry_chunk[i];
      if (chunk < 0 || present[chunk]) {
        done += manifest_.ChunkLength(plan_.first + i);
        ++skipped;
      }
    }
    for (size_t k = 0; k < hashes.size(); ++k) dest.needs[k] = !present[k];
    dest.fixed.chunks_skipped += skipped;
    dest.bytes_done.fetch_add(done, std::memory_order_relaxed);
  }
}

void Copier::Worker(uint32_t seed) {
  std::mt19937 rng(seed);
  std::unique_lock lock(crew_->mu);
  for (;;) {
    crew_->work_cv.wait(lock, [&] { return !writes_.empty() || CanRead() || NoWorkLeft(); });
    // Writes first: they give buffers back to the pool.
    if (!writes_.empty()) {
      WriteTask task = writes_.front();
      writes_.pop_front();
      lock.unlock();
      WriteChunk(*task.slot, dests_[task.dest], rng);
      lock.lock();
      if (--task.slot->pending_writes == 0) {
        task.slot->buffer.Release();
        Wake(1);
      }
      continue;
    }
    if (CanRead()) {
      Slot* slot = TakeReadSlot();
      // Two at once where the source checks two chunks for less than two reads.
      Slot* second = source_reads_pairs_ && CanRead() ? TakeReadSlot() : nullptr;
      lock.unlock();
      std::vector<size_t> targets;
      std::vector<size_t> second_targets;
      if (second == nullptr) {
        targets = ReadChunk(*slot, rng);
      } else {
        std::tie(targets, second_targets) = ReadChunkPair(*slot, *second, rng);
      }
      lock.lock();
      size_t wakes = QueueWrites(*slot, targets);
      if (second != nullptr) wakes += QueueWrites(*second, second_targets);
      Wake(std::max<size_t>(1, wakes));
      continue;
    }
    break;  // NoWorkLeft()
  }
}

Slot* Copier::TakeReadSlot() {
  BufferPool::Buffer buffer = pool_->TryAcquire();  // free: only workers take, under mu
  Slot* slot = &slots_[buffer.index()];
  slot->buffer = std::move(buffer);
  slot->chunk = jobs_[next_job_++];
  slot->data = slot->buffer.first(static_cast<size_t>(plan_.length[slot->chunk]));
  ++reads_in_flight_;
  return slot;
}

size_t Copier::QueueWrites(Slot& slot, const std::vector<size_t>& targets) {
  --reads_in_flight_;
  if (targets.empty()) {
    slot.buffer.Release();
  } else {
    slot.pending_writes = targets.size();
    for (size_t d : targets) writes_.push_back({&slot, d});
  }
  return targets.size();
}

std::vector<size_t> Copier::ReadersOf(size_t k, std::mt19937& rng) {
  // Written since the plan by another copy into the same region (two versions replicated at
  // once), or being written by it: not read nor written again. Only in a pass's first go: the
  // confirmation looks at the store itself, and what it finds missing is written whatever a hint
  // says.
  if (use_hints_) SkipHeld(k);
  if (!AnyActiveNeeding(k)) return {};
  std::optional<std::vector<size_t>> by_bytes = CopyInsideStores(k, rng);
  return by_bytes ? std::move(*by_bytes) : std::vector<size_t>();
}

std::vector<size_t> Copier::ReadChunk(Slot& slot, std::mt19937& rng) {
  const std::vector<size_t> by_bytes = ReadersOf(slot.chunk, rng);
  return by_bytes.empty() ? by_bytes : ReadFor(slot, by_bytes, rng);
}

std::pair<std::vector<size_t>, std::vector<size_t>> Copier::ReadChunkPair(Slot& a, Slot& b,
                                                                          std::mt19937& rng) {
  const std::vector<size_t> by_a = ReadersOf(a.chunk, rng);
  const std::vector<size_t> by_b = ReadersOf(b.chunk, rng);
  if (!by_a.empty() && !by_b.empty() &&
      source_.GetChunkPairStoredInto(plan_.hashes[a.chunk], a.data, a.stored, plan_.hashes[b.chunk],
                                     b.data, b.stored, &reads_cancel_)) {
    return {ActiveAmong(by_a), ActiveAmong(by_b)};
  }
  // Either not a plain read: each alone, which retries and reports.
  return {by_a.empty() ? by_a : ReadFor(a, by_a, rng), by_b.empty() ? by_b : ReadFor(b, by_b, rng)};
}

std::vector<size_t> Copier::ActiveAmong(const std::vector<size_t>& dests) const {
  std::vector<size_t> active;
  for (size_t d : dests) {
    if (dests_[d].Active()) active.push_back(d);
  }
  return active;
}

std::vector<size_t> Copier::ReadFor(Slot& slot, const std::vector<size_t>& by_bytes,
                                    std::mt19937& rng) {
  const std::string& hash = plan_.hashes[slot.chunk];
  auto wanted = [&] {
    return std::any_of(by_bytes.begin(), by_bytes.end(),
                       [&](size_t d) { return dests_[d].Active(); });
  };
  // Into the slot's buffer, of the plan's length: a chunk of another length is damaged
  // (DamagedChunkError, an IntegrityError), as are bytes that do not match their name.
  AttemptResult result =
      Attempt([&] { source_.GetChunkStoredInto(hash, slot.data, slot.stored, &reads_cancel_); },
              wanted, "reading chunk " + hash + " from " + source_uri_, rng);
  std::optional<Failure> failure;
  if (result.failure) failure = Failure(*result.failure);
  if (result.ok) {
    // A store that checks what it reads has done so (else it threw DamagedChunkError).
    std::string actual =
        source_.ChecksReads() ? hash : Sha256Hex(slot.data.data(), slot.data.size());
    if (actual != hash) {
      failure = Failure{codes::kIntegrityError,
                        "chunk " + hash + " read from " + source_uri_ +
                            " is corrupt: its bytes hash to " + actual,
                        hash};
    }
  } else if (!failure) {
    return {};  // abandoned: every destination that wanted it is gone
  } else if (failure->code == codes::kIntegrityError) {
    failure->damaged_source_chunk = hash;  // the store found its stored bytes wrong
  } else if (SourceLacks(hash)) {
    failure->code = codes::kIntegrityError;  // the source image is incomplete
    failure->damaged_source_chunk = hash;
  }

  if (!failure) return ActiveAmong(by_bytes);
  // Never writes the bytes of a corrupt or failed read.
  for (size_t d : by_bytes) dests_[d].Fail(*failure);
  return {};
}

bool Copier::SourceLacks(const std::string& hash) {
  try {
    return !source_.HasChunk(hash, &reads_cancel_);
  } catch (const std::exception&) {
    return false;  // the store itself fails: that is not the image's damage
  }
}

std::optional<std::vector<size_t>> Copier::CopyInsideStores(size_t k, std::mt19937& rng) {
  const std::string& hash = plan_.hashes[k];
  std::vector<size_t> by_bytes;
  for (size_t d = 0; d < dests_.size(); ++d) {
    Dest& dest = dests_[d];
    if (!Wants(dest, k)) continue;
    if (!dest.server_copy) {
      by_bytes.push_back(d);
      continue;
    }
    // Counted as a write in flight, like WriteChunk, for ReportFinished.
    dest.writing.fetch_add(1, std::memory_order_acq_rel);
    bool copied = false;
    AttemptResult result = Attempt(
        [&] {
          copied =
              dest.spec->store->CopyChunkFrom(source_, hash, plan_.length[k], dest.spec->cancel);
        },
        [&] { return dest.Active(); },
        "copying chunk " + hash + " from " + source_uri_ + " to " + dest.uri + " server-side", rng);
    if (result.ok && copied) CountWritten(dest, k, plan_.length[k]);
    if (result.ok && !copied) by_bytes.push_back(d);  // the source could not prove it: read it
    dest.writing.fetch_sub(1, std::memory_order_acq_rel);
    if (!result.failure) continue;
    if (result.failure->code == codes::kIntegrityError) {
      // A corrupt source fails every destination that needed the chunk, as a read would.
      const Failure corrupt(result.failure->code, result.failure->message, hash);
      for (Dest& other : dests_) {
        if (other.needs[k]) other.Fail(corrupt);
      }
      return std::nullopt;
    }
    dest.Fail(*result.failure);
  }
  return by_bytes;
}

void Copier::CountWritten(Dest& dest, size_t chunk, uint64_t sent) {
  // Counted even if a cancel arrived during the write: the bytes are there.
  dest.bytes_transferred.fetch_add(plan_.length[chunk], std::memory_order_relaxed);
  dest.bytes_sent.fetch_add(sent, std::memory_order_relaxed);
  dest.bytes_done.fetch_add(plan_.covered[chunk], std::memory_order_relaxed);
}

void Copier::WriteChunk(const Slot& slot, Dest& dest, std::mt19937& rng) {
  // Counted before the liveness check, so that "inactive and nothing writing" means no
  // byte will reach this destination any more.
  dest.writing.fetch_add(1, std::memory_order_acq_rel);
  struct Done {
    Dest& dest;
    ~Done() { dest.writing.fetch_sub(1, std::memory_order_acq_rel); }
  } done{dest};
  auto alive = [&] { return dest.Active(); };
  if (!alive()) return;
  const std::string& hash = plan_.hashes[slot.chunk];
  const std::span<const std::byte> bytes(slot.data);
  if (!SleepWhile(bucket_.Reserve(bytes.size()), alive)) return;

  uint64_t sent = 0;
  AttemptResult result = Attempt(
      [&] { sent = dest.spec->store->PutStoredChunk(hash, bytes, slot.stored, dest.spec->cancel); },
      alive, "writing chunk " + hash + " to " + dest.uri, rng);
  if (!result.ok) {
    if (result.failure) dest.Fail(*result.failure);
    return;
  }
  CountWritten(dest, slot.chunk, sent);
}

void Copier::ReportProgress(std::vector<IoProgress>& last, bool force) {
  for (size_t d = 0; d < dests_.size(); ++d) {
    IoProgress now = dests_[d].Progress();
    bool changed =
        now.bytes_done != last[d].bytes_done || now.bytes_transferred != last[d].bytes_transferred;
    if (force || (changed && dests_[d].throttle->Due())) dests_[d].throttle->Report(now);
    last[d] = now;
  }
}

TransferOutcome Copier::OutcomeOf(Dest& dest) {
  TransferOutcome outcome;
  outcome.progress = dest.Progress();
  std::lock_guard lock(dest.mu);
  if (dest.failed) {
    outcome.kind = TransferOutcome::Kind::kFailed;
    outcome.error_code = dest.error_code;
    outcome.error = dest.error;
    outcome.damaged_source_chunk = dest.damaged_source_chunk;
  } else if (dest.cancelled()) {
    outcome.kind = TransferOutcome::Kind::kCancelled;
  } else {
    outcome.kind = TransferOutcome::Kind::kCompleted;
  }
  return outcome;
}

void Copier::ReportFinished(bool all) {
  if (!finished_) return;
  for (size_t d = 0; d < dests_.size(); ++d) {
    Dest& dest = dests_[d];
    if (dest.finish_reported) continue;
    if (!all && (dest.Active() || dest.writing.load(std::memory_order_acquire) != 0)) continue;
    dest.finish_reported = true;
    finished_(d, OutcomeOf(dest));
  }
}

bool Copier::ConfirmDestinations(bool last_pass, std::mt19937& rng) {
  const std::vector<std::string>& hashes = plan_.hashes;
  bool again = false;
  for (Dest& dest : dests_) {
    if (!dest.Active() || dest.finish_reported) continue;
    std::optional<std::vector<bool>> answer = AskPresence(dest, "confirming the chunks in", rng);
    if (!answer) continue;
    const std::vector<bool>& present = *answer;
    std::vector<size_t> missing;  // a short answer counts the chunks it leaves out as missing
    for (size_t k = 0; k < hashes.size(); ++k) {
      if (k >= present.size() || !present[k]) missing.push_back(k);
    }
    if (missing.empty()) {
      dest.needs.assign(hashes.size(), false);
      continue;
    }
    if (last_pass) {
      dest.Fail({codes::kTransferFailed,
                 Plural(static_cast<int>(missing.size()), "chunk") + " of the image (chunk " +
                     hashes[missing.front()] + " first) are still missing from " + dest.uri +
                     " after they were written; the store loses what it is given; check it and "
                     "replicate again"});
      continue;
    }
    // Written again: counted again (each was counted once, as skipped, held or written).
    uint64_t skipped_entries = 0;
    uint64_t held_entries = 0;
    for (size_t k : missing) {
      dest.bytes_done.fetch_sub(plan_.covered[k], std::memory_order_relaxed);
      if (!dest.needs[k]) skipped_entries += plan_.entries[k];
      if (dest.needs[k] && dest.held[k] != 0) held_entries += plan_.entries[k];
    }
    dest.fixed.chunks_skipped -= std::min(dest.fixed.chunks_skipped, skipped_entries);
    dest.entries_held.fetch_sub(held_entries, std::memory_order_relaxed);
    dest.needs.assign(hashes.size(), false);
    dest.held.assign(hashes.size(), 0);
    for (size_t k : missing) dest.needs[k] = true;
    again = true;
  }
  return again;
}

void Copier::RunPass(uint32_t seed, std::vector<IoProgress>& last) {
  jobs_.clear();
  std::vector<std::string> reads;
  for (size_t k = 0; k < plan_.hashes.size(); ++k) {
    if (AnyActiveNeeding(k)) {
      jobs_.push_back(k);
      reads.emplace_back(plan_.hashes[k]);
    }
  }
  try {
    source_.PlanReads(reads);  // only a hint: reads go on without it
  } catch (const std::exception&) {
  }
  next_job_ = 0;
  Crew crew;  // ~Crew stops and joins the workers, whichever way this ends
  crew_ = &crew;
  try {
    const size_t workers = std::min(threads_, jobs_.size());
    for (size_t i = 0; i < workers; ++i) {
      crew.Start([this, s = seed + static_cast<uint32_t>(i)] { Worker(s); });
    }
    std::unique_lock lock(crew.mu);
    while (!crew.idle()) {
      if (crew.caller_cv.wait_for(lock, kProgressInterval, [&] { return crew.idle(); })) break;
      if (!crew.stop && !AnyActive()) {
        crew.stop = true;  // every destination cancelled or failed: read nothing more
        reads_cancel_.Cancel();
        crew.work_cv.notify_all();
      }
      lock.unlock();
      ReportProgress(last, false);
      if (!aborted_) ReportFinished(false);
      lock.lock();
    }
  } catch (...) {
    // A progress callback (or thread creation) threw: stop the workers before unwinding.
    aborted_ = true;
    reads_cancel_.Cancel();
    crew.Stop();
    throw;
  }
  crew.Finish();  // rethrows what a worker threw
  // A store may hold writes back (group commit): a destination is complete once flushed.
  for (Dest& dest : dests_) {
    if (!dest.Active() || dest.finish_reported) continue;
    try {
      dest.spec->store->Flush(dest.spec->cancel);
    } catch (const Cancelled&) {
      // cancelled while its last pack was written: the outcome says Cancelled
    } catch (const std::exception& e) {
      dest.Fail({codes::kTransferFailed, "cannot flush " + dest.uri + ": " + e.what()});
    }
  }
}

std::vector<TransferOutcome> Copier::Run() {
  std::random_device random_device;
  const uint32_t seed = random_device();
  std::mt19937 rng(seed);
  SetUpDestinations();

  // Server-side copies hold no buffer and mostly wait on the store: twice the requests in
  // flight when every destination takes them (slots then stay empty: no memory used).
  const bool all_server_side = std::all_of(
      dests_.begin(), dests_.end(), [](const Dest& d) { return d.server_copy || !d.Active(); });
  threads_ = static_cast<size_t>(std::max(1, options_.threads)) * (all_server_side ? 2 : 1);
  // Between local disks a copy decodes and hashes: a worker per CPU and one more (for the one
  // sealing a pack); more only take turns (on 2 CPUs, 8 made an update copy 5% slower).
  const bool any_server =
      source_.WaitsOnServer() || std::any_of(dests_.begin(), dests_.end(), [](const Dest& d) {
        return d.spec->store != nullptr && d.spec->store->WaitsOnServer();
      });
  if (!any_server) threads_ = std::min(threads_, size_t{std::thread::hardware_concurrency()} + 1);
  // Chunk buffers: as many as buffer_memory holds, at most 2 per worker, at least 2. Memory
  // is touched as buffers are first used: a small image's copy touches few.
  const uint64_t chunk_size = std::max<uint64_t>(1, manifest_.chunk_size);
  pool_.emplace(static_cast<size_t>(chunk_size),
                BufferPool::CountFor(options_.buffer_memory, chunk_size, 2, 2 * threads_));
  slots_.resize(pool_->count());

  std::vector<IoProgress> last(dests_.size());
  // A second pass writes what the confirmation found missing; after it, missing is failure.
  constexpr int kPasses = 2;
  for (uint64_t first = 0; first < manifest_.count() && AnyActive(); first += kManifestWindow) {
    plan_ = PlanChunks(manifest_, first);
    PlanWindow(rng);
    for (int pass = 1; pass <= kPasses; ++pass) {
      use_hints_ = pass == 1;
      RunPass(seed + static_cast<uint32_t>(pass) * 1000, last);
      if (!ConfirmDestinations(pass == kPasses, rng)) break;
    }
  }
  ReportProgress(last, true);
  ReportFinished(true);

  std::vector<TransferOutcome> outcomes;
  for (Dest& dest : dests_) outcomes.push_back(OutcomeOf(dest));
  return outcomes;
}

}  // namespace

std::vector<TransferOutcome> CopyImage(Store& source, const Manifest& manifest,
                                       std::vector<TransferDestination>& destinations,
                                       const TransferOptions& options, const FinishedFn& finished) {
  Copier copier(source, manifest, destinations, options, finished);
  return copier.Run();
}

}  // namespace imagerelay
