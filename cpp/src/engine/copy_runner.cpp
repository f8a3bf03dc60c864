#include "engine/copy_runner.hpp"

#include <chrono>
#include <map>
#include <utility>

#include <nlohmann/json.hpp>

#include "base/write_scope.hpp"
#include "engine/events.hpp"
#include "imagerelay/error.hpp"
#include "imagerelay/state.hpp"

namespace imagerelay {
namespace {

using Clock = std::chrono::steady_clock;
constexpr auto kRecordInterval = std::chrono::milliseconds(250);

// `p`: this attempt's progress; `earlier`: what the attempts before it wrote.
void CopyProgress(Task& task, const IoProgress& p, const IoProgress& earlier) {
  task.bytes_total = p.bytes_total;
  task.bytes_done = p.bytes_done;
  task.bytes_transferred = earlier.bytes_transferred + p.bytes_transferred;
  task.bytes_sent = earlier.bytes_sent + p.bytes_sent;
  task.chunks_total = p.chunks_total;
  task.chunks_skipped = p.chunks_skipped;
}

TransferOutcome Failed(std::string code, std::string message, IoProgress progress = {}) {
  return {TransferOutcome::Kind::kFailed, std::move(code), std::move(message), progress, {}};
}

}  // namespace

void SettleJob(CatalogTx& tx, const std::string& job_id, PendingEvents& events) {
  auto job = tx.GetJob(job_id);
  if (!job) return;
  bool source_busy = false;
  std::map<std::string, std::string> source_of_job;
  for (const auto& task : tx.ListTasksInStates({TaskState::kPending, TaskState::kRunning})) {
    auto& source = source_of_job[task.job_id];
    if (source.empty()) {
      auto other = tx.GetJob(task.job_id);
      source = other ? other->source_image_id : "?";
    }
    if (source == job->source_image_id) source_busy = true;
  }
  if (!source_busy) {
    auto source = tx.GetImage(job->source_image_id);
    if (source && source->status == ImageStatus::kReplicating &&
        tx.TransitionImage(source->id, ImageStatus::kReplicating, ImageEvent::kCopiesSettled)) {
      source->status = ImageStatus::kAvailable;
    }
  }
  JobState state = StateOfJob(job->tasks);
  if (state != JobState::kRunning) {
    events.Append(tx, MakeJobEvent(event_type::kJobFinished, *job, {{"state", ToString(state)}}));
  }
}

bool ReachesCopy(const Engine::Impl& engine, CatalogTx& tx, const Task& task,
                 std::map<std::string, bool>& reach) {
  if (engine.options.worker_regions.empty()) return true;
  if (!engine.Reaches(task.region)) return false;
  auto [it, added] = reach.try_emplace(task.job_id, false);
  if (added) {
    auto job = tx.GetJob(task.job_id);
    it->second = job && engine.Reaches(job->source_region);
  }
  return it->second;
}

std::optional<CopyRun::Claim> CopyRun::ClaimTasks(Engine::Impl& engine) {
  // One claim at a time in this process: each counts the slots the others left free.
  std::lock_guard claiming(engine.claim_mutex);
  const int free_slots = engine.options.workers - engine.copies_running.load();
  if (free_slots <= 0) return std::nullopt;
  // A cheap read first: idle workers must not queue for the catalog's write lock.
  bool anything = false;
  engine.catalog->Read([&](CatalogTx& tx) {
    TimeUs now = NowUs();
    std::map<std::string, bool> reach;
    for (const auto& task : tx.ListTasksInStates({TaskState::kPending, TaskState::kRunning})) {
      const bool free = task.state == TaskState::kPending ||
                        !engine.LeaseHolderAlive({task.lease_owner, task.lease_expires_us}, now);
      if (free && ReachesCopy(engine, tx, task, reach)) {
        anything = true;
        break;
      }
    }
  });
  if (!anything) return std::nullopt;
  Claim claim;
  engine.Write([&](CatalogTx& tx, PendingEvents& events) {
    // Closing: a copy handed back by Close() stays for the next process (one attempt).
    if (engine.running.Closing()) return;
    TimeUs now = NowUs();
    auto active = tx.ListTasksInStates({TaskState::kPending, TaskState::kRunning});
    std::map<std::string, int> running_per_region;
    std::map<std::string, bool> reach;
    std::vector<Task> claimable;
    for (const auto& task : active) {
      bool alive = task.state == TaskState::kRunning &&
                   engine.LeaseHolderAlive({task.lease_owner, task.lease_expires_us}, now);
      if (alive) {
        ++running_per_region[task.region];
      } else if (ReachesCopy(engine, tx, task, reach)) {
        claimable.push_back(task);
      }
    }
    std::string job_id;
    for (const auto& task : claimable) {
      // As many copies as this process has free slots: the rest of the job stays queued
      // for the workers of other hosts (or this one's, once a slot frees).
      if (std::cmp_greater_equal(claim.tasks.size(), free_slots)) break;
      if (!job_id.empty() && task.job_id != job_id) continue;
      if (running_per_region[task.region] >= engine.options.limits.max_tasks_per_region) continue;
      if (engine.SweepRunning(tx, task.region, now)) continue;
      if (job_id.empty()) {
        job_id = task.job_id;
        claim.job = *tx.GetJob(job_id);
        claim.source = *tx.GetImage(claim.job.source_image_id);
      }
      TaskEvent event =
          task.state == TaskState::kPending ? TaskEvent::kStart : TaskEvent::kTakeOver;
      if (!tx.TransitionTask(task.dest_image_id, task.state, event)) continue;
      // Its writer stopped mid-copy (maybe killed): the sweep after this copy removes the
      // temporary files it left.
      if (event == TaskEvent::kTakeOver) tx.SetSweepNeeded(task.region, true);
      Task claimed = task;
      claimed.state = TaskState::kRunning;
      claimed.lease_owner = engine.worker_id;
      claimed.lease_expires_us = now + engine.options.lease_ms * 1000;
      claimed.attempts += 1;
      if (claimed.started_us == 0) claimed.started_us = now;
      tx.UpdateTaskFields(claimed);
      ++running_per_region[task.region];
      events.Append(tx, MakeTaskEvent(event_type::kTaskStarted, claim.job, claimed));
      claim.tasks.push_back(claimed);
    }
  });
  if (claim.tasks.empty()) return std::nullopt;
  // Taken while still under claim_mutex: the next claim here sees these slots used.
  engine.copies_running += static_cast<int>(claim.tasks.size());
  return claim;
}

bool RunOneClaim(Engine::Impl& engine) {
  std::optional<CopyRun::Claim> claim = CopyRun::ClaimTasks(engine);
  if (!claim) return false;
  CopyRun(engine, std::move(*claim)).Run();
  engine.sweeper->SweepPending();  // sweeps put off while this copy was writing
  return true;
}

CopyRun::CopyRun(Engine::Impl& engine, Claim claim)
    : engine_(engine),
      claim_(std::move(claim)),
      dest_stores_(claim_.tasks.size()),
      finished_(claim_.tasks.size(), false),
      copy_digest_(claim_.tasks.size()),
      latest_(claim_.tasks.size()),
      earlier_(claim_.tasks.size()) {
  for (size_t i = 0; i < claim_.tasks.size(); ++i) {
    earlier_[i].bytes_transferred = claim_.tasks[i].bytes_transferred;
    earlier_[i].bytes_sent = claim_.tasks[i].bytes_sent;
  }
  // Cancel tokens are registered before anything moves: CancelCopy and Close() fire them.
  for (const auto& task : claim_.tasks) {
    tokens_.push_back(engine_.running.Register(task.dest_image_id));
  }
}

CopyRun::~CopyRun() {
  for (const auto& task : claim_.tasks) engine_.running.Unregister(task.dest_image_id);
  // The slots of copies whose Finish did not get to its end (the catalog failed, say).
  engine_.copies_running -= static_cast<int>(claim_.tasks.size()) - slots_released_.load();
}

void CopyRun::Run() {
  std::vector<TransferOutcome> outcomes = Transfer();
  for (size_t i = 0; i < claim_.tasks.size(); ++i) Finish(i, outcomes[i]);
}

std::vector<TransferOutcome> CopyRun::Transfer() {
  // The copies hold the source owner's data: its blocks' bases are found among that owner's.
  const WriteScope writes_for(claim_.source.owner);
  std::vector<TransferOutcome> outcomes;
  std::string setup_code, setup_error;
  try {
    source_store_ = engine_.StoreFor(claim_.source.region);
    manifest_ = engine_.integrity->LoadManifest(claim_.source, *source_store_, &chunk_list_digest_);
    std::vector<TransferDestination> destinations;
    std::vector<size_t> task_of;  // destination position -> task index
    for (size_t i = 0; i < claim_.tasks.size(); ++i) {
      try {
        dest_stores_[i] = engine_.StoreFor(claim_.tasks[i].region);
        dest_stores_[i]->Check();
        task_of.push_back(i);
      } catch (const Error& e) {
        // A broken destination fails its own copy only; the others go on.
        Finish(i, Failed(e.code(), e.message()));
      }
    }
    started_ = last_record_ = Clock::now();
    for (size_t i : task_of) {
      TransferDestination dest;
      dest.store = dest_stores_[i].get();
      dest.cancel = tokens_[i].get();
      dest.progress = [this, i](const IoProgress& p) {
        latest_[i] = p;
        RecordProgress(false);
      };
      destinations.push_back(std::move(dest));
    }
    TransferOptions transfer;
    transfer.buffer_memory = engine_.options.limits.buffer_memory;
    transfer.bandwidth = engine_.options.limits.bandwidth;
    auto moved = CopyImage(*source_store_, *manifest_, destinations, transfer,
                           [&](size_t d, const TransferOutcome& outcome) {
                             latest_[task_of[d]] = outcome.progress;
                             Finish(task_of[d], outcome);
                           });
    outcomes.resize(claim_.tasks.size());
    for (size_t d = 0; d < moved.size(); ++d) outcomes[task_of[d]] = moved[d];
    RecordProgress(true);
  } catch (const Error& e) {
    setup_code = e.code();
    setup_error = e.message();
  } catch (const std::exception& e) {
    setup_code = codes::kTransferFailed;
    setup_error = e.what();
  }
  if (outcomes.size() != claim_.tasks.size()) {
    // Nothing moved (no source manifest, say): every copy not settled yet fails with why.
    outcomes.assign(claim_.tasks.size(), Failed(setup_code, setup_error));
  }
  return outcomes;
}

void CopyRun::RecordProgress(bool force) {
  const auto now = Clock::now();
  if (!force && now - last_record_ < kRecordInterval) return;
  last_record_ = now;
  const double seconds = std::chrono::duration<double>(now - started_).count();
  engine_.Write([&](CatalogTx& tx, PendingEvents& events) {
    for (size_t i = 0; i < claim_.tasks.size(); ++i) {
      if (finished_[i]) continue;
      auto current = tx.GetTaskByDestImage(claim_.tasks[i].dest_image_id);
      // Cancelled elsewhere, or taken over after our lease lapsed: stop this copy.
      if (!current || current->state != TaskState::kRunning ||
          current->lease_owner != engine_.worker_id) {
        tokens_[i]->Cancel();
        continue;
      }
      Task& t = claim_.tasks[i];
      CopyProgress(t, latest_[i], earlier_[i]);
      // This attempt's pace: the bytes written since it started.
      t.rate = seconds > 0 ? static_cast<double>(latest_[i].bytes_transferred) / seconds : 0;
      t.lease_expires_us = NowUs() + engine_.options.lease_ms * 1000;
      tx.UpdateTaskFields(t);
      events.Append(tx, MakeTaskEvent(event_type::kTaskProgress, claim_.job, t));
    }
  });
}

void CopyRun::Finish(size_t i, TransferOutcome outcome) {
  if (finished_[i]) return;
  finished_[i] = true;
  if (!outcome.damaged_source_chunk.empty() && source_store_) {
    // Before the copy settles: the source goes NotAvailable, not back to Available.
    const std::string& hash = outcome.damaged_source_chunk;
    engine_.integrity->ReportDamagedChunk(claim_.source.region, *source_store_, hash,
                                          "chunk " + hash + " of " + claim_.source.id +
                                              " in region " + claim_.source.region +
                                              " is corrupt or missing (found by a "
                                              "copy)");
  }
  Task& task = claim_.tasks[i];
  CopyProgress(task, outcome.progress, earlier_[i]);
  const bool committed = outcome.kind == TransferOutcome::Kind::kCompleted && Commit(i, outcome);
  if (Settle(i, outcome, committed)) engine_.sweeper->MaybeSweep(task.region);
  // Last: CancelCopy waits for this, so that its caller finds the bytes gone.
  engine_.running.Unregister(task.dest_image_id);
  ++slots_released_;
  --engine_.copies_running;  // another copy may start in this slot
}

bool CopyRun::Commit(size_t i, TransferOutcome& outcome) {
  const Task& task = claim_.tasks[i];
  try {
    Image copy;
    std::string source_digest;
    bool still_ours = false;
    engine_.catalog->Read([&](CatalogTx& tx) {
      auto current = tx.GetTaskByDestImage(task.dest_image_id);
      still_ours = current && current->state == TaskState::kRunning &&
                   current->lease_owner == engine_.worker_id;
      copy = *tx.GetImage(task.dest_image_id);
      if (auto source = tx.GetImage(claim_.source.id)) source_digest = source->digest;
    });
    if (!still_ours) {
      // Cancelled, or taken over while this process was cut off past its lease: the copy
      // is another's now (Settle leaves it alone); write nothing into its store.
      outcome = Failed(codes::kTransferFailed, "the copy's lease was lost", outcome.progress);
      return false;
    }
    copy.status = ImageStatus::kAvailable;
    // The source's digest may have been computed since the job started (digester.cpp).
    if (copy.digest.empty()) copy.digest = source_digest;
    Manifest committed = *manifest_;
    if (committed.digest.empty()) committed.digest = copy.digest;
    copy_digest_[i] = copy.digest;
    PutManifestAndRecord(*dest_stores_[i], copy, committed);
    return true;
  } catch (const Error& e) {
    outcome = Failed(e.code(), e.message(), outcome.progress);
    return false;
  }
}

bool CopyRun::Settle(size_t i, const TransferOutcome& outcome, bool committed) {
  Task& task = claim_.tasks[i];
  const Job& job = claim_.job;
  bool user_cancelled = false;
  bool digest_missing = false;
  engine_.Write([&](CatalogTx& tx, PendingEvents& events) {
    auto current = tx.GetTaskByDestImage(task.dest_image_id);
    if (!current) return;
    const bool ours =
        current->state == TaskState::kRunning && current->lease_owner == engine_.worker_id;
    task.finished_us = NowUs();
    if (ours) events.Append(tx, MakeTaskEvent(event_type::kTaskProgress, job, task));  // last
    if (ours && outcome.kind == TransferOutcome::Kind::kCompleted) {
      tx.TransitionTask(task.dest_image_id, TaskState::kRunning, TaskEvent::kComplete);
      tx.TransitionImage(task.dest_image_id, ImageStatus::kReplicating, ImageEvent::kCopyCompleted);
      tx.PutManifestDigest(task.dest_image_id, chunk_list_digest_);
      task.state = TaskState::kCompleted;
      task.lease_owner.clear();
      tx.UpdateTaskFields(task);
      auto copy = tx.GetImage(task.dest_image_id);
      if (copy->digest.empty() && !copy_digest_[i].empty()) {
        copy->digest = copy_digest_[i];
        tx.UpdateImageFields(*copy);
      }
      digest_missing = copy->digest.empty();
      events.Append(tx, MakeTaskEvent(event_type::kTaskCompleted, job, task));
      events.Append(tx, MakeEvent(event_type::kImageAvailable, job.account, &*copy, job.id));
      SettleJob(tx, job.id, events);
    } else if (ours && outcome.kind == TransferOutcome::Kind::kFailed) {
      tx.TransitionTask(task.dest_image_id, TaskState::kRunning, TaskEvent::kFail);
      tx.TransitionImage(task.dest_image_id, ImageStatus::kReplicating, ImageEvent::kCopyFailed);
      task.state = TaskState::kFailed;
      task.error_code = outcome.error_code.empty() ? codes::kTransferFailed : outcome.error_code;
      task.error = outcome.error;
      task.lease_owner.clear();
      tx.UpdateTaskFields(task);
      auto copy = tx.GetImage(task.dest_image_id);
      copy->error = task.error;
      tx.UpdateImageFields(*copy);
      tx.SetSweepNeeded(task.region, true);
      events.Append(tx, MakeTaskEvent(event_type::kTaskFailed, job, task));
      events.Append(tx, MakeEvent(event_type::kImageCreateFailed, job.account, &*copy, job.id,
                                  {{"code", task.error_code}}));
      SettleJob(tx, job.id, events);
    } else if (ours) {
      // Stopped by Close(): hand the task back so that the next process resumes it.
      current->lease_owner.clear();
      current->lease_expires_us = 0;
      tx.UpdateTaskFields(*current);
    } else {
      // Cancelled (or taken over) meanwhile: let go of the region.
      user_cancelled = current->state == TaskState::kCancelled;
      if (current->lease_owner == engine_.worker_id) {
        current->lease_owner.clear();
        current->lease_expires_us = 0;
        tx.UpdateTaskFields(*current);
      }
    }
  });
  if (digest_missing) engine_.digester->Schedule();
  if (!user_cancelled && outcome.kind != TransferOutcome::Kind::kFailed) return false;
  if (committed) {
    // The copy will not be: its manifest and record go, its blocks with the sweep.
    try {
      dest_stores_[i]->DeleteManifest(task.dest_image_id);
      dest_stores_[i]->DeleteImageRecord(task.dest_image_id);
    } catch (const std::exception&) {
    }
  }
  return true;
}

}  // namespace imagerelay
