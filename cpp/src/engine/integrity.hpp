// Integrity of what is stored (issue "trust nothing stored"): a block is trusted only if its
// bytes were checked against its name when this store wrote them, or re-checked since.
//
// - A manifest read back from a store must match the chunk-list digest the catalog recorded
//   when it was committed (LoadManifest): chunks swapped or replaced in a stored manifest are
//   never trusted, so exports and replicas carry exactly the bytes that were imported.
// - A chunk found damaged by any read (verify, export, a copy's source, the digester, an
//   import's re-check, a scrub) is quarantined, so that no lookup finds it and the next
//   import or copy that needs it writes it anew, and every image of its region that needs it
//   becomes NotAvailable (event image.damaged) until a scrub repairs it.
// - Scrub reads every stored chunk of a region, quarantines the bad ones, and repairs the
//   images that need them from any region that holds the same content, verified on the way.
#pragma once

#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/events.hpp"
#include "imagerelay/cancel.hpp"
#include "imagerelay/catalog.hpp"
#include "imagerelay/engine.hpp"
#include "imagerelay/image_io.hpp"
#include "imagerelay/manifest.hpp"
#include "imagerelay/store.hpp"

namespace imagerelay {

class Integrity {
 public:
  // What the integrity checks work with, given by the engine.
  struct Parts {
    Catalog& catalog;
    // The store of a region (throws if the region is gone).
    std::function<std::shared_ptr<Store>(const std::string& region_id)> store_for;
    // Runs a change in a write transaction and publishes its events after the commit.
    std::function<void(const std::function<void(CatalogTx&, PendingEvents&)>&)> write;
    uint64_t buffer_memory = 256ULL << 20;  // Limits.buffer_memory: a repair's read-back
  };
  explicit Integrity(Parts parts) : parts_(std::move(parts)) {}
  Integrity(const Integrity&) = delete;
  Integrity& operator=(const Integrity&) = delete;

  // The image's manifest, checked against the chunk-list digest recorded at its commit; a
  // missing or changed one marks the image NotAvailable and throws IntegrityError.
  // `chunk_list_digest`, if given, receives the digest checked (a copy records the same one
  // for its destination rather than hashing the whole list again).
  Manifest LoadManifest(const Image& image, Store& store, std::string* chunk_list_digest = nullptr);
  // Available -> NotAvailable with `why` (event image.damaged); no-op in any other status.
  void MarkDamaged(const std::string& image_id, const std::string& why);
  // Quarantines chunk `hash` in `region`'s store and marks every Available image there
  // that needs it.
  void ReportDamagedChunk(const std::string& region, Store& store, const std::string& hash,
                          const std::string& why);
  // A store's DamageHandler: the store quarantined the chunk; mark what needs it.
  void OnStoreDamage(const std::string& store_uri, const std::string& hash, const std::string& why);
  // ReportDamagedChunk if `error` is a DamagedChunkError; nothing otherwise.
  void NoteDamage(const std::exception& error, const std::string& region, Store& store);
  // Checks every stored chunk of `region` (quarantining the bad ones) and repairs its images
  // from the other regions; the report names only the images `account` may see.
  ScrubReport ScrubRegion(const std::string& account, const std::string& region,
                          const CancelToken& cancel, const ProgressFn& progress);

 private:
  // Marks every Available image of `region` whose manifest names `hash`.
  void MarkImagesNeeding(const std::string& region, Store& store, const std::string& hash,
                         const std::string& why);
  // Scrub: puts back, from the other regions, the chunks of one window of `manifest` that
  // `store` lacks.
  void RepairWindow(Store& store, const Manifest& manifest, uint64_t first,
                    const std::vector<std::string>& window, const std::vector<Region>& others,
                    const CancelToken& cancel, ScrubReport& report);

  const Parts parts_;
};

}  // namespace imagerelay
