// Private state of the Engine, shared by engine.cpp (catalog calls), replication.cpp and
// copy_runner.cpp (copies) and waits.cpp: what every request needs, and the engine's parts,
// each with its own header and test (README.md). Not part of the public headers.
#pragma once

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "engine/background_threads.hpp"
#include "engine/change_notifier.hpp"
#include "engine/credentials_files.hpp"
#include "engine/digester.hpp"
#include "engine/event_bus.hpp"
#include "engine/events.hpp"
#include "engine/image_record.hpp"
#include "engine/importer.hpp"
#include "engine/integrity.hpp"
#include "engine/lease.hpp"
#include "engine/policy_set.hpp"
#include "engine/running_work.hpp"
#include "engine/store_registry.hpp"
#include "engine/sweeper.hpp"
#include "engine/worker_pool.hpp"
#include "imagerelay/cancel.hpp"
#include "imagerelay/catalog.hpp"
#include "imagerelay/engine.hpp"
#include "imagerelay/store.hpp"

namespace imagerelay {

struct Engine::Impl {
  EngineOptions options;
  std::unique_ptr<Catalog> catalog;
  std::unique_ptr<CredentialsFiles> credentials;  // S3 keys given to add_region
  EventBus bus;
  std::string worker_id;  // "<host>:<pid>:<nonce>"
  std::string host;

  PolicySet policies;

  std::unique_ptr<StoreRegistry> stores;  // the region stores, by URI

  // Signalled after every write by this process, so that waiters re-read at once.
  ChangeNotifier changes;
  void NotifyChanged() { changes.Notify(); }
  // The one loop of every Engine::Wait* (waits.cpp): calls `done` until it returns true,
  // again after each change; false when the timeout passes or `cancel` fires first. A
  // `Catalog.Unavailable` from `done` is waited out (thrown at the deadline if it lasts).
  bool WaitUntil(const std::function<bool()>& done, std::optional<double> timeout_s,
                 const CancelToken* cancel);

  // Runs fn in a write transaction and publishes the events it appended after commit.
  void Write(const std::function<void(CatalogTx&, PendingEvents&)>& fn);
  // The one way a request on an image changes the home: the acting account must exist and
  // see the image; `rules` throws every rule that fails (over facts read in the same
  // transaction); the policies see the request (`action` on the image, with `accounts` and
  // `name`); then, unless only validating, all of it runs again and `apply` changes the home
  // in that write transaction (the facts may have changed meanwhile).
  void Request(const std::string& account, const std::string& image_id, const char* action,
               std::vector<std::string> accounts, std::string name,
               const std::function<void(CatalogTx&, const Image&)>& rules, bool validate_only,
               const std::function<void(CatalogTx&, PendingEvents&, const Image&)>& apply);
  // A change of the home itself (a region, an account): `check` throws every rule that
  // fails; unless only validating, it runs again in the write transaction, then `apply`.
  void CheckedWrite(const std::function<void(CatalogTx&)>& check, bool validate_only,
                    const std::function<void(CatalogTx&, PendingEvents&)>& apply);
  std::shared_ptr<Store> StoreFor(const std::string& region_id);
  // Local caches of the home (the block index of each S3 region).
  std::filesystem::path CacheDir() const {
    return std::filesystem::absolute(options.home) / "cache";
  }
  // The cached store of a URI; an s3:// store opened here uses the credentials saved for
  // `region_id` (if any), else the environment's.
  std::shared_ptr<Store> StoreForUri(const std::string& uri, const std::string& region_id = "") {
    return stores->ForUri(uri, region_id);
  }
  // Homes made before credentials files kept them in the catalog's settings: moves them
  // to their files and scrubs the catalog.
  void MoveCredentialsOutOfCatalog();
  // Runs every policy; throws ValidationError(PolicyViolation) on the first rejection.
  void CheckPolicies(const PolicyRequest& request) const { policies.Check(request); }

  // Cancel tokens of the copies and imports running in this process.
  RunningWork running;
  // The parts, made by Open once the catalog and the stores are.
  // Digests computed after the image became Available.
  std::unique_ptr<Digester> digester;
  // Frees the blocks nothing needs any more.
  std::unique_ptr<Sweeper> sweeper;
  // Integrity of stored bytes: checked manifests, damage, scrub.
  std::unique_ptr<Integrity> integrity;
  // Runs imports and fails those whose process died.
  std::unique_ptr<Importer> importer;
  // The copy workers; started only with options.start_workers.
  std::unique_ptr<WorkerPool> workers;
  // The threads of background work (workers, the digester, imports with wait=false): last,
  // so that they are joined before anything they use goes.
  BackgroundThreads background;

  // Copies claimed by this process's workers and not finished yet: a worker claims at most
  // options.workers minus these (its free slots), so that the copies of one job spread over
  // the workers of several hosts. Claims in this process take claim_mutex, so that two of
  // its workers do not both count the same free slots.
  std::mutex claim_mutex;
  std::atomic<int> copies_running{0};
  // Whether this process's workers reach a region (options.worker_regions).
  bool Reaches(const std::string& region) const {
    return options.worker_regions.empty() ||
           std::ranges::find(options.worker_regions, region) != options.worker_regions.end();
  }

  // Whether a lease's holder may still be working (lease.hpp), as this worker can tell.
  bool LeaseHolderAlive(const Lease& lease, TimeUs now) const {
    return imagerelay::LeaseHolderAlive(lease, now, host, worker_id);
  }
  // True while a live sweeper holds the region's sweep lease: a sweeper killed mid-sweep on
  // this host sweeps nothing, and nobody waits out its lease (ten minutes).
  bool SweepRunning(CatalogTx& tx, const std::string& region, TimeUs now) const {
    std::optional<std::pair<std::string, TimeUs>> lease = tx.GetSweepLease(region);
    return lease && LeaseHolderAlive(Lease{lease->first, lease->second}, now);
  }
};

// NoSuchAccount unless the acting account exists.
void RequireAccount(CatalogTx& tx, const std::string& account);
// The image if `account` may see it; NoSuchImage otherwise (its existence is not revealed).
Image LoadVisible(CatalogTx& tx, const std::string& account, const std::string& image_id);

}  // namespace imagerelay
