// The sweeper: frees the blocks no manifest of a region needs (SweepStore), once no writer
// is in flight there, under the region's sweep lease. A region is flagged when garbage may
// have been made (a delete, a failed or cancelled copy or import); the flag is cleared only
// if no new garbage came meanwhile.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "engine/lease.hpp"
#include "imagerelay/catalog.hpp"
#include "imagerelay/store.hpp"

namespace imagerelay {

// The sweeper's rule: is `region` being written to right now (an import, or a copy holding
// a lease)? Its blocks are not swept then.
bool RegionHasWriters(CatalogTx& tx, const std::string& region, TimeUs now);

class Sweeper {
 public:
  // What the sweeper works with, given by the engine.
  struct Parts {
    Catalog& catalog;
    std::string holder;  // the sweep lease's holder: "<worker id>:sweep"
    // Whether a lease's holder may still be working, as this process can tell.
    std::function<bool(const Lease& lease, TimeUs now)> holder_alive;
    // The store at `uri` of region `region_id`.
    std::function<std::shared_ptr<Store>(const std::string& uri, const std::string& region_id)>
        store_for_uri;
  };

  explicit Sweeper(Parts parts) : parts_(std::move(parts)) {}

  // Sweeps a region's store if it has garbage and no writer is in flight there. Threads of
  // this engine sweep a region one at a time (the sweep lease is this engine's for all of
  // them): two sweeps side by side would repack the same pack twice, and the second one's
  // delete of it would drop blocks the first had just re-indexed.
  void MaybeSweep(const std::string& region_id);
  // MaybeSweep for every region flagged as having garbage (sweeps put off earlier).
  void SweepPending();
  // Removes, in every region, the temporary files of writers that are gone (a process
  // killed mid-write). A sweep does it too, but a crash that made no garbage flags none.
  void RemoveLeftovers();

 private:
  std::mutex& RegionMutex(const std::string& region_id);

  const Parts parts_;
  std::mutex region_mutexes_mu_;
  std::map<std::string, std::unique_ptr<std::mutex>> region_mutexes_;  // one per region swept
};

}  // namespace imagerelay
