// One claimed batch of copies of one source image, run by a copy worker (DESIGN.md §5) in
// named steps: Claim (tasks taken under their region's limits, with a lease) -> Transfer
// (CopyImage to every destination, progress and lease renewed in the catalog) -> per
// destination, as soon as it is done: Commit (manifest and image record into its store) ->
// Settle (the task's and the copy's transitions and events; the job's when it was the last).
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/engine_impl.hpp"
#include "imagerelay/transfer.hpp"

namespace imagerelay {

// After a task of `job_id` ended: the source returns to Available when nothing of it is in
// flight, and the job reports that it finished when its last task ended.
void SettleJob(CatalogTx& tx, const std::string& job_id, PendingEvents& events);

// A copy worker's one round (WorkerPool's run_one_claim): claims queued copies and runs them
// as a CopyRun, then the sweeps put off while they wrote; false if nothing was claimable.
bool RunOneClaim(Engine::Impl& engine);

// Whether this process's workers reach both ends of `task`'s copy (its job's source region
// and its destination; EngineOptions::worker_regions). `reach` caches each job's answer
// across calls in one transaction.
bool ReachesCopy(const Engine::Impl& engine, CatalogTx& tx, const Task& task,
                 std::map<std::string, bool>& reach);

class CopyRun {
 public:
  // What one worker took from the queue: tasks of one job, run together so that each
  // source chunk is read once for all of them.
  struct Claim {
    Job job;
    Image source;
    std::vector<Task> tasks;
  };
  // Takes claimable tasks of one job (pending, or whose lease holder is gone; reachable from
  // here), as many as this process has free copy slots; nullopt when there is none.
  static std::optional<Claim> ClaimTasks(Engine::Impl& engine);

  CopyRun(Engine::Impl& engine, Claim claim);
  ~CopyRun();  // the copies' cancel tokens go
  CopyRun(const CopyRun&) = delete;
  CopyRun& operator=(const CopyRun&) = delete;

  // Transfers, then settles every destination not settled yet.
  void Run();

 private:
  // The source's manifest to every destination store; each one settles as soon as nothing
  // more is written to it. Returns the outcomes, or fails every copy with why it could not
  // start (no source manifest, say).
  std::vector<TransferOutcome> Transfer();
  // Progress and lease of the running copies into the catalog (at most every 250 ms unless
  // forced); a copy cancelled or taken over elsewhere is stopped.
  void RecordProgress(bool force);
  // Commit, then Settle; once per destination.
  void Finish(size_t i, TransferOutcome outcome);
  // Writes the manifest and image record into destination i's store. Returns false (and
  // makes `outcome` a failure) when the store refuses them.
  bool Commit(size_t i, TransferOutcome& outcome);
  // The catalog side of destination i's end; true if its bytes must be swept.
  bool Settle(size_t i, const TransferOutcome& outcome, bool committed);

  Engine::Impl& engine_;
  Claim claim_;
  std::vector<std::shared_ptr<CancelToken>> tokens_;
  std::shared_ptr<Store> source_store_;
  std::optional<Manifest> manifest_;
  std::string chunk_list_digest_;  // manifest_'s, as checked when it was loaded
  std::vector<std::shared_ptr<Store>> dest_stores_;
  std::vector<bool> finished_;
  std::vector<std::string> copy_digest_;  // the digest each committed copy was given
  std::vector<IoProgress> latest_;
  // What earlier attempts of each copy wrote (a takeover after a kill, say): the task's
  // bytes_transferred and bytes_sent count every attempt, so they never go backwards.
  std::vector<IoProgress> earlier_;
  std::atomic<int> slots_released_{0};  // of engine_.copies_running, by the copies finished
  std::chrono::steady_clock::time_point started_;
  std::chrono::steady_clock::time_point last_record_;
};

}  // namespace imagerelay
