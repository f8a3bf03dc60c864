// The importer: runs an import (file or URL -> a region's store) of an image that
// Engine::ImportImage recorded as Creating with an import lease, and fails the imports whose
// process died (RecoverInterrupted). docs/architecture.md, "Data flow of an import".
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>

#include "engine/events.hpp"
#include "engine/lease.hpp"
#include "engine/running_work.hpp"
#include "imagerelay/cancel.hpp"
#include "imagerelay/catalog.hpp"
#include "imagerelay/image_io.hpp"
#include "imagerelay/store.hpp"

namespace imagerelay {

class Importer {
 public:
  // What the importer works with, given by the engine.
  struct Parts {
    Catalog& catalog;
    // Runs a change in a write transaction and publishes its events after the commit.
    std::function<void(const std::function<void(CatalogTx&, PendingEvents&)>&)> write;
    // The store of a region (throws if the region is gone).
    std::function<std::shared_ptr<Store>(const std::string& region_id)> store_for;
    // Sweeps a region whose failed import left garbage (Sweeper::MaybeSweep).
    std::function<void(const std::string& region_id)> sweep;
    // Computes the digests imports left for later (Digester::Schedule).
    std::function<void()> schedule_digest;
    // Where an import's cancel token is registered: Engine::Close stops it.
    RunningWork& running;
    Limits limits;                     // chunk size and buffer memory
    int64_t lease_ms;                  // an import's lease is renewed every third of it
    uint64_t defer_digest_hole_bytes;  // ImportOptions
    std::filesystem::path cache_dir;   // spools a large image's block list
    std::string worker_id;             // the import lease's holder
    // Whether a lease's holder may still be working, as this process can tell.
    std::function<bool(const Lease& lease, TimeUs now)> holder_alive;
  };
  explicit Importer(Parts parts) : parts_(std::move(parts)) {}
  Importer(const Importer&) = delete;
  Importer& operator=(const Importer&) = delete;

  // Imports `source_path` into the Creating image `image_id`: Available once every chunk is
  // confirmed in its region's store. On failure the image becomes CreateFailed with the
  // reason (event image.create_failed), its region is swept and the error is thrown;
  // `stop` (the caller's, may be null) or Engine::Close ends it as Error(Transfer.Failed).
  void Run(const std::string& image_id, const std::string& source_path,
           const CancelToken* stop = nullptr, const ProgressFn& progress = {});
  // Every Creating image whose import lease holder is gone (a process that died
  // mid-import) becomes CreateFailed; its region is swept.
  void RecoverInterrupted();

 private:
  // Ends an import that failed (its lease with it): CreateFailed with `code`, region
  // flagged for a sweep.
  static void MarkFailed(CatalogTx& tx, PendingEvents& events, Image& image,
                         const std::string& code, const std::string& message);

  const Parts parts_;
};

}  // namespace imagerelay
