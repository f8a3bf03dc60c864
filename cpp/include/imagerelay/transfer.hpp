// The transfer engine's data plane (DESIGN.md §5): copies the chunks of one source image
// to one or more destination stores. Plans per destination (only the chunks it lacks, never
// zero chunks), reads each needed source chunk once for all destinations, verifies every
// chunk's hash before writing it, retries transient errors with backoff and jitter, and
// keeps memory bounded by a pool of buffers whatever the image size. A destination that
// can copy from the source inside its object store (Store::CopyChunkFrom) gets chunks
// that way, outside the bandwidth cap; the others get the bytes read once for them.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "imagerelay/cancel.hpp"
#include "imagerelay/image_io.hpp"
#include "imagerelay/manifest.hpp"
#include "imagerelay/retry_policy.hpp"
#include "imagerelay/store.hpp"

namespace imagerelay {

struct TransferOptions {
  int threads = 8;                        // parallel readers/writers (each mostly waits on I/O)
  uint64_t buffer_memory = 256ULL << 20;  // cap on chunk buffers in flight
  uint64_t bandwidth = 0;                 // bytes/s over all destinations, 0 = unlimited
  RetryPolicy retry;                      // per chunk, for transient errors
};

// One destination of a transfer. The caller owns the store and the token; the token
// cancels this destination only (the others go on).
struct TransferDestination {
  Store* store = nullptr;
  const CancelToken* cancel = nullptr;
  ProgressFn progress;  // called from the thread that runs CopyImage, throttled
};

struct TransferOutcome;
// Called once per destination, from the thread that runs CopyImage, as soon as nothing more
// will be written to it: early for a destination that was cancelled or failed (no write to
// it still in flight) while the others go on, at the end for the rest.
using FinishedFn = std::function<void(size_t index, const TransferOutcome& outcome)>;

// The outcome for one destination.
struct TransferOutcome {
  enum class Kind { kCompleted, kFailed, kCancelled } kind = Kind::kCompleted;
  std::string error_code;  // Transfer.Failed, Transfer.IntegrityError, Region.StoreUnavailable
  std::string error;       // message naming the chunk/store and the cause
  IoProgress progress;     // final counters
  // A source chunk found corrupt or missing (the failure's cause): the caller quarantines
  // it and marks the source image damaged. Empty otherwise.
  std::string damaged_source_chunk;
};

// Copies every chunk of `manifest` from `source` to each destination that lacks it. Does not
// write manifests (the caller commits). A chunk read from the source whose bytes do not hash
// to its name fails every destination that needed it with Transfer.IntegrityError; a
// failing destination does not stop the others. Returns one outcome per destination, in
// order. Never throws for per-destination problems; no thread outlives the call.
std::vector<TransferOutcome> CopyImage(Store& source, const Manifest& manifest,
                                       std::vector<TransferDestination>& destinations,
                                       const TransferOptions& options,
                                       const FinishedFn& finished = nullptr);

}  // namespace imagerelay
