// The sweeper: frees the blocks no manifest of a region needs (SweepStore), once no writer
// is in flight there, under the region's sweep lease. A region is flagged when garbage may
// have been made (a delete, a failed or cancelled copy or import); the flag is cleared only
// if no new garbage came meanwhile.
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <set>
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

  // Sweeps a region's store if it has garbage and no writer is in flight there, and no
  // other thread of this process sweeps it already.
  void MaybeSweep(const std::string& region_id);
  // MaybeSweep for every region flagged as having garbage (sweeps put off earlier).
  void SweepPending();
  // Removes, in every region, the temporary files of writers that are gone (a process
  // killed mid-write). A sweep does it too, but a crash that made no garbage flags none.
  void RemoveLeftovers();

 private:
  const Parts parts_;
  // The regions a thread of this process sweeps now. The sweep lease is this process's
  // (its holder names the process), so it does not keep two of its threads apart: two
  // sweeps of one region at once repack the same packs, and the first to end releases the
  // lease while the other still deletes packs that another process's import then uses.
  std::mutex sweeping_mutex_;
  std::set<std::string> sweeping_;  // under sweeping_mutex_
};

}  // namespace imagerelay
