#include "engine/sweeper.hpp"

#include <vector>

#include "imagerelay/log.hpp"

namespace imagerelay {
namespace {

// How long a sweep lease lasts; it is not renewed.
constexpr TimeUs kSweepLeaseUs = 10 * 60 * 1'000'000LL;

}  // namespace

bool RegionHasWriters(CatalogTx& tx, const std::string& region, TimeUs now) {
  for (const auto& image : tx.ListImages({.region = region, .name = std::nullopt})) {
    if (image.status == ImageStatus::kCreating) return true;
  }
  for (const auto& task : tx.ListTasksInStates({TaskState::kRunning, TaskState::kCancelled,
                                                TaskState::kFailed, TaskState::kCompleted})) {
    if (task.region == region && !task.lease_owner.empty() && task.lease_expires_us >= now) {
      return true;
    }
  }
  return false;
}

std::mutex& Sweeper::RegionMutex(const std::string& region_id) {
  std::lock_guard lock(region_mutexes_mu_);
  std::unique_ptr<std::mutex>& mutex = region_mutexes_[region_id];
  if (!mutex) mutex = std::make_unique<std::mutex>();
  return *mutex;
}

void Sweeper::MaybeSweep(const std::string& region_id) {
  std::lock_guard one_at_a_time(RegionMutex(region_id));
  const std::string& holder = parts_.holder;
  bool acquired = false;
  std::string store_uri;
  int64_t mark = 0;
  parts_.catalog.Write([&](CatalogTx& tx) {
    mark = tx.SweepNeededMark(region_id);
    if (mark == 0) return;
    TimeUs now = NowUs();
    if (RegionHasWriters(tx, region_id, now)) return;
    auto region = tx.GetRegion(region_id);
    if (!region) return;
    // A sweeper killed mid-sweep holds the lease until it expires: a dead one on this host
    // gives it up at once.
    if (auto lease = tx.GetSweepLease(region_id);
        lease && !parts_.holder_alive(Lease{lease->first, lease->second}, now)) {
      tx.ReleaseSweepLease(region_id, lease->first);
    }
    if (!tx.AcquireSweepLease(region_id, holder, now + kSweepLeaseUs)) return;
    store_uri = region->store_uri;
    acquired = true;
  });
  if (!acquired) return;
  try {
    auto store = parts_.store_for_uri(store_uri, region_id);
    // Only a store this home owns and can reach is swept: another home's (a copy of this
    // one shares its image ids) would lose manifests and blocks it still needs.
    store->Check();
    // Manifests of images the catalog no longer lists (deleted, failed, cancelled) first.
    std::vector<std::string> stale;
    parts_.catalog.Read([&](CatalogTx& tx) {
      for (const auto& id : store->ListManifests()) {
        auto image = tx.GetImage(id);
        if (image && (image->status == ImageStatus::kDeleted ||
                      image->status == ImageStatus::kCreateFailed)) {
          stale.push_back(id);
        }
      }
    });
    for (const auto& id : stale) {
      store->DeleteManifest(id);
      store->DeleteImageRecord(id);
    }
    SweepStore(*store);
    // Cleared only now, and only if no garbage was made meanwhile: a sweep killed half-way
    // leaves the flag for the next open or worker.
    parts_.catalog.Write([&](CatalogTx& tx) { tx.ClearSweepNeeded(region_id, mark); });
  } catch (const std::exception&) {
    // The flag stays set: the next idle worker or open tries again.
  }
  parts_.catalog.Write([&](CatalogTx& tx) { tx.ReleaseSweepLease(region_id, holder); });
}

void Sweeper::SweepPending() {
  std::vector<std::string> regions;
  parts_.catalog.Read([&](CatalogTx& tx) { regions = tx.RegionsNeedingSweep(); });
  for (const auto& region : regions) MaybeSweep(region);
}

void Sweeper::RemoveLeftovers() {
  std::vector<Region> regions;
  parts_.catalog.Read([&](CatalogTx& tx) { regions = tx.ListRegions(); });
  for (const auto& region : regions) {
    try {
      parts_.store_for_uri(region.store_uri, region.id)->RemoveLeftovers();
    } catch (const std::exception& e) {
      Log(LogLevel::kWarning, "removing leftovers in region " + region.id + ": " + e.what());
    }
  }
}

}  // namespace imagerelay
