// Replication: jobs and tasks in the catalog, the copy workers with their leases, cancel,
// failure and crash-resume (DESIGN.md §2, §3, §5). The bytes move in transfer.cpp.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <thread>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "engine_impl.hpp"
#include "imagerelay/error.hpp"
#include "imagerelay/ids.hpp"
#include "imagerelay/log.hpp"
#include "imagerelay/transfer.hpp"

namespace imagerelay {
namespace {

using Clock = std::chrono::steady_clock;

std::vector<std::string> SortedUnique(const std::vector<std::string>& values) {
  std::vector<std::string> out = Unique(values);
  std::ranges::sort(out);
  return out;
}

std::string Fingerprint(const std::string& image_id, const std::vector<std::string>& to,
                        const std::optional<std::string>& name) {
  nlohmann::json j{{"image", image_id}, {"to", SortedUnique(to)}, {"name", name.value_or("")}};
  return j.dump();
}

bool InFlight(TaskState s) { return s == TaskState::kPending || s == TaskState::kRunning; }

Job LoadOwnJob(CatalogTx& tx, const std::string& account, const std::string& job_id) {
  ThrowIfAny(CheckJobIdFormat(job_id));
  auto job = tx.GetJob(job_id);
  if (!job || job->account != account) {
    ThrowCode(codes::kNoSuchJob, "job " + Quote(job_id) + " does not exist or is not yours; " +
                                     "list jobs to see yours");
  }
  return *job;
}

// After a task of `job` ended: the source returns to Available when nothing of it is in
// flight, and the job reports that it finished when its last task ended.
void Settle(CatalogTx& tx, const std::string& job_id, PendingEvents& events) {
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

}  // namespace

// ---- requests -------------------------------------------------------------------------

Job Engine::Replicate(const std::string& account, const std::string& image_id,
                      const std::vector<std::string>& to, const std::optional<std::string>& name,
                      const std::optional<std::string>& client_token) {
  const std::string fingerprint = Fingerprint(image_id, to, name);
  if (client_token && (client_token->empty() || client_token->size() > 64)) {
    ThrowCode(codes::kInvalidParameter, "client token must be 1-64 characters");
  }
  // The same token with the same arguments answers the first job and starts nothing.
  auto replay = [&](CatalogTx& tx) -> std::optional<Job> {
    if (!client_token) return std::nullopt;
    auto record = tx.GetClientToken(account, *client_token);
    if (!record) return std::nullopt;
    if (record->fingerprint != fingerprint) {
      ThrowCode(codes::kIdempotentParameterMismatch,
                "client token " + Quote(*client_token) + " was used with other arguments; " +
                    "use a new token for a new request");
    }
    return tx.GetJob(record->job_id);
  };
  auto evaluate = [&](CatalogTx& tx) {
    auto* impl = impl_.get();
    RequireAccount(tx, account);
    Image image = LoadVisible(tx, account, image_id);
    ReplicateFacts facts;
    for (const auto& region : tx.ListRegions()) facts.known_regions.insert(region.id);
    ThrowIfAny(CheckReplicate(image, account, to, name ? &*name : nullptr, facts,
                              impl->options.limits));
    return image;
  };

  std::optional<Job> existing;
  std::optional<ImageView> view;
  impl_->catalog->Read([&](CatalogTx& tx) {
    existing = replay(tx);
    if (existing) return;
    Image image = evaluate(tx);
    view = ImageView{image, TypeSeenBy(image, account), std::nullopt};
  });
  if (existing) return *existing;
  impl_->CheckPolicies({.action = "replicate", .account = account, .image = view,
                        .to = Unique(to), .accounts = {}, .name = name.value_or("")});

  Job job;
  impl_->Write([&](CatalogTx& tx, PendingEvents& events) {
    if (auto again = replay(tx)) {
      job = *again;
      return;
    }
    Image source = evaluate(tx);
    job = Job{};
    do {
      job.id = NewJobId();
    } while (tx.GetJob(job.id));
    job.account = account;
    job.source_image_id = source.id;
    job.source_region = source.region;
    job.name = name.value_or("");
    job.client_token = client_token.value_or("");
    job.created_us = NowUs();
    std::vector<Image> copies;
    for (const auto& region : SortedUnique(to)) {
      Image copy = source;
      copy.region = region;
      copy.name = name.value_or(source.name);
      copy.status = ImageStatus::kReplicating;
      copy.created_us = job.created_us;
      copy.source_image_id = source.id;
      copy.source_region = source.region;
      copy.error.clear();
      do {
        copy.id = NewImageId();
      } while (!tx.InsertImage(copy));
      Task task;
      task.job_id = job.id;
      task.region = region;
      task.dest_image_id = copy.id;
      task.bytes_total = source.size;
      job.tasks.push_back(task);
      copies.push_back(copy);
    }
    if (!tx.TransitionImage(source.id, ImageStatus::kAvailable, ImageEvent::kCopyStarted)) {
      ThrowCode(codes::kImageStatusForbidden,
                "image " + source.id + " is busy; wait for its copies or cancel them");
    }
    tx.InsertJob(job);
    if (client_token) tx.InsertClientToken(account, *client_token, {job.id, fingerprint});
    nlohmann::json regions = nlohmann::json::array();
    for (const auto& copy : copies) regions.push_back({{"region", copy.region}, {"image_id", copy.id}});
    events.Append(tx, MakeEvent(event_type::kJobCreated, account, &source, job.id,
                                nlohmann::json{{"copies", regions}}));
    for (const auto& copy : copies) {
      events.Append(tx, MakeEvent(event_type::kImageCreated, account, &copy, job.id,
                                  nlohmann::json{{"source_image_id", source.id}}));
    }
  });
  impl_->wake_workers.notify_all();
  return job;
}

void Engine::CancelCopy(const std::string& account, const std::string& dest_image_id) {
  std::string region;
  impl_->Write([&](CatalogTx& tx, PendingEvents& events) {
    RequireAccount(tx, account);
    Image image = LoadVisible(tx, account, dest_image_id);
    if (image.type == ImageType::kCustom && image.owner != account) {
      ThrowCode(codes::kAccessDenied, "image " + dest_image_id + " belongs to another account; " +
                                          "only its owner may cancel the copy");
    }
    auto task = tx.GetTaskByDestImage(dest_image_id);
    if (!task || !InFlight(task->state) || image.status != ImageStatus::kReplicating) {
      ThrowCode(codes::kImageStatusForbidden,
                "image " + dest_image_id + " is " + std::string(ToString(image.status)) +
                    " and no copy to it is in flight; only a copy in flight can be cancelled");
    }
    if (!tx.TransitionTask(task->dest_image_id, task->state, TaskEvent::kCancel) ||
        !tx.TransitionImage(image.id, ImageStatus::kReplicating, ImageEvent::kCopyCancelled)) {
      ThrowCode(codes::kImageStatusForbidden,
                "the copy to " + dest_image_id + " changed while it was being cancelled");
    }
    task->state = TaskState::kCancelled;
    task->finished_us = NowUs();
    tx.UpdateTaskFields(*task);
    tx.SetSweepNeeded(task->region, true);
    auto job = tx.GetJob(task->job_id);
    events.Append(tx, MakeTaskEvent(event_type::kTaskCancelled, *job, *task));
    events.Append(tx, MakeEvent(event_type::kImageDeleted, account, &image, job->id,
                                nlohmann::json{{"reason", "copy cancelled"}}));
    Settle(tx, job->id, events);
    region = task->region;
  });
  // Stop a copy running in this process and wait for it to let go of its bytes.
  std::shared_ptr<CancelToken> token;
  {
    std::lock_guard lock(impl_->running_mutex);
    auto it = impl_->running.find(dest_image_id);
    if (it != impl_->running.end()) token = it->second;
  }
  if (token) {
    token->Cancel();
    auto deadline = Clock::now() + std::chrono::seconds(5);
    while (Clock::now() < deadline) {
      {
        std::lock_guard lock(impl_->running_mutex);
        if (!impl_->running.contains(dest_image_id)) break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  impl_->MaybeSweep(region);
}

void Engine::CancelJob(const std::string& account, const std::string& job_id,
                       const std::optional<std::string>& region) {
  Job job;
  impl_->catalog->Read([&](CatalogTx& tx) { job = LoadOwnJob(tx, account, job_id); });
  std::vector<std::string> targets;
  for (const auto& task : job.tasks) {
    if (InFlight(task.state) && (!region || task.region == *region)) {
      targets.push_back(task.dest_image_id);
    }
  }
  if (targets.empty()) {
    ThrowCode(codes::kImageStatusForbidden,
              "job " + job_id + " has no copy in flight" +
                  (region ? " to region " + *region : std::string()) + "; nothing to cancel");
  }
  for (const auto& id : targets) {
    try {
      CancelCopy(account, id);
    } catch (const ImageBusyError&) {
      // It finished or was cancelled in the meantime.
    }
  }
}

Job Engine::GetJob(const std::string& account, const std::string& job_id) {
  Job job;
  impl_->catalog->Read([&](CatalogTx& tx) { job = LoadOwnJob(tx, account, job_id); });
  return job;
}

std::vector<Job> Engine::Jobs(const std::string& account, std::optional<bool> active) {
  std::vector<Job> out;
  impl_->catalog->Read([&](CatalogTx& tx) {
    for (auto& job : tx.ListJobs(account)) {
      bool running = StateOfJob(job.tasks) == JobState::kRunning;
      if (!active || *active == running) out.push_back(std::move(job));
    }
  });
  return out;
}

Job Engine::WaitJob(const std::string& account, const std::string& job_id,
                    std::optional<double> timeout_s) {
  auto deadline = Clock::now() + std::chrono::milliseconds(
                                     static_cast<int64_t>(timeout_s.value_or(0) * 1000));
  while (true) {
    const uint64_t seen = impl_->Generation();
    Job job = GetJob(account, job_id);
    if (StateOfJob(job.tasks) != JobState::kRunning) return job;
    if (timeout_s && Clock::now() >= deadline) {
      ThrowCode(codes::kTimeout, "job " + job_id + " is still running after " +
                                     std::to_string(*timeout_s) + " s; its copies go on");
    }
    // Another process's changes are seen by polling.
    auto wake = Clock::now() + std::chrono::milliseconds(100);
    impl_->WaitForChange(seen, timeout_s ? std::min(wake, deadline) : wake);
  }
}

bool Engine::WaitIdle(std::optional<double> timeout_s) {
  auto deadline = Clock::now() + std::chrono::milliseconds(
                                     static_cast<int64_t>(timeout_s.value_or(0) * 1000));
  while (true) {
    bool idle = false;
    impl_->catalog->Read([&](CatalogTx& tx) {
      idle = tx.ListTasksInStates({TaskState::kPending, TaskState::kRunning}).empty();
    });
    if (idle) {
      // A copy that just ended still sweeps what a failed or cancelled copy left behind.
      std::lock_guard lock(impl_->running_mutex);
      idle = std::ranges::none_of(impl_->running, [](const auto& entry) {
        return !entry.first.starts_with(kImportKeyPrefix);
      });
    }
    if (idle) {
      std::lock_guard lock(impl_->digest_mutex);
      idle = !impl_->digester_running;
    }
    if (idle) return true;
    if (timeout_s && Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

void Engine::RunUntilIdle() { WaitIdle(std::nullopt); }

size_t Engine::CopiesWaitingForAWorker() {
  size_t orphaned = 0;
  size_t pending = 0;
  bool any_alive = false;
  impl_->catalog->Read([&](CatalogTx& tx) {
    const TimeUs now = NowUs();
    for (const auto& task : tx.ListTasksInStates({TaskState::kPending, TaskState::kRunning})) {
      if (task.state == TaskState::kPending) {
        ++pending;
      } else if (impl_->LeaseHolderAlive(task.lease_owner, task.lease_expires_us, now)) {
        any_alive = true;
      } else {
        ++orphaned;
      }
    }
  });
  return orphaned + (any_alive ? 0 : pending);
}

// ---- workers --------------------------------------------------------------------------

void Engine::Impl::StartWorkers() {
  for (int i = 0; i < std::max(1, options.workers); ++i) {
    SpawnBackground([this] { WorkerLoop(); });
  }
}

// The chunks named by the manifests of the region's newest Available images: a new version
// of an image mostly repeats one of them, and one manifest read answers for hundreds of
// chunk lookups. Best effort: a manifest that cannot be read only costs those lookups.
// After a second of idleness, at most every few seconds: a checkpoint's fsyncs then delay
// nobody's call.
void Engine::Impl::MaybeCheckpoint() {
  constexpr TimeUs kIdleUs = 1'000'000;
  constexpr TimeUs kEveryUs = 5'000'000;
  const TimeUs now = NowUs();
  TimeUs last = last_checkpoint_us.load();
  if (now - last_worked_us.load() < kIdleUs || now - last < kEveryUs) return;
  if (!last_checkpoint_us.compare_exchange_strong(last, now)) return;  // another worker does it
  catalog->Checkpoint();
}

void Engine::Impl::WorkerLoop() {
  while (!closing) {
    bool worked = false;
    try {
      worked = RunOneClaim();
    } catch (const std::exception& e) {
      Log(LogLevel::kError, std::string("copy worker: ") + e.what());
    }
    if (worked) {
      last_worked_us.store(NowUs());
      continue;
    }
    try {
      SweepPending();
      MaybeCheckpoint();
    } catch (const std::exception& e) {
      Log(LogLevel::kWarning, std::string("sweep: ") + e.what());
    }
    std::unique_lock lock(wake_mutex);
    wake_workers.wait_for(lock, std::chrono::milliseconds(500));
  }
}

namespace {

// What one worker took from the queue: tasks of one job, run together so that each source
// chunk is read once for all of them.
struct Claim {
  Job job;
  Image source;
  std::vector<Task> tasks;
};

}  // namespace

bool Engine::Impl::RunOneClaim() {
  // A cheap read first: idle workers must not queue for the catalog's write lock.
  bool anything = false;
  catalog->Read([&](CatalogTx& tx) {
    TimeUs now = NowUs();
    for (const auto& task : tx.ListTasksInStates({TaskState::kPending, TaskState::kRunning})) {
      if (task.state == TaskState::kPending ||
          !LeaseHolderAlive(task.lease_owner, task.lease_expires_us, now)) {
        anything = true;
        break;
      }
    }
  });
  if (!anything) return false;
  Claim claim;
  Write([&](CatalogTx& tx, PendingEvents& events) {
    TimeUs now = NowUs();
    auto active = tx.ListTasksInStates({TaskState::kPending, TaskState::kRunning});
    std::map<std::string, int> running_per_region;
    std::vector<Task> claimable;
    for (const auto& task : active) {
      bool alive = task.state == TaskState::kRunning &&
                   LeaseHolderAlive(task.lease_owner, task.lease_expires_us, now);
      if (alive) {
        ++running_per_region[task.region];
      } else {
        claimable.push_back(task);
      }
    }
    std::string job_id;
    for (const auto& task : claimable) {
      if (!job_id.empty() && task.job_id != job_id) continue;
      if (running_per_region[task.region] >= options.limits.max_tasks_per_region) continue;
      if (tx.SweepLeaseHeld(task.region, now)) continue;
      if (job_id.empty()) {
        job_id = task.job_id;
        claim.job = *tx.GetJob(job_id);
        claim.source = *tx.GetImage(claim.job.source_image_id);
      }
      TaskEvent event = task.state == TaskState::kPending ? TaskEvent::kStart : TaskEvent::kTakeOver;
      if (!tx.TransitionTask(task.dest_image_id, task.state, event)) continue;
      // Its writer stopped mid-copy (maybe killed): the sweep after this copy removes the
      // temporary files it left.
      if (event == TaskEvent::kTakeOver) tx.SetSweepNeeded(task.region, true);
      Task claimed = task;
      claimed.state = TaskState::kRunning;
      claimed.lease_owner = worker_id;
      claimed.lease_expires_us = now + options.lease_ms * 1000;
      claimed.attempts += 1;
      if (claimed.started_us == 0) claimed.started_us = now;
      tx.UpdateTaskFields(claimed);
      ++running_per_region[task.region];
      events.Append(tx, MakeTaskEvent(event_type::kTaskStarted, claim.job, claimed));
      claim.tasks.push_back(claimed);
    }
  });
  if (claim.tasks.empty()) return false;

  // Register cancel tokens before anything moves.
  std::vector<std::shared_ptr<CancelToken>> tokens;
  {
    std::lock_guard lock(running_mutex);
    for (const auto& task : claim.tasks) {
      tokens.push_back(std::make_shared<CancelToken>());
      running[task.dest_image_id] = tokens.back();
      if (closing) tokens.back()->Cancel();
    }
  }
  auto unregister = [&] {
    std::lock_guard lock(running_mutex);
    for (const auto& task : claim.tasks) running.erase(task.dest_image_id);
  };

  std::optional<Manifest> manifest;
  std::vector<std::shared_ptr<Store>> dest_stores;
  // Settles one destination: commit (manifest, then catalog) or give its region back.
  // Runs as soon as the transfer is done with it, while the other destinations go on.
  std::vector<bool> finished(claim.tasks.size(), false);
  std::vector<std::string> copy_digest(claim.tasks.size());
  std::shared_ptr<Store> source_store;
  auto finish = [&](size_t i, TransferOutcome outcome) {
    if (finished[i]) return;
    finished[i] = true;
    if (!outcome.damaged_source_chunk.empty() && source_store) {
      // Before the copy settles: the source goes NotAvailable, not back to Available.
      ReportDamagedChunk(claim.source.region, *source_store, outcome.damaged_source_chunk,
                         "chunk " + outcome.damaged_source_chunk + " of " + claim.source.id +
                             " in region " + claim.source.region +
                             " is corrupt or missing (found by a copy)");
    }
    Task& task = claim.tasks[i];
    task.bytes_total = outcome.progress.bytes_total;
    task.bytes_done = outcome.progress.bytes_done;
    task.bytes_transferred = outcome.progress.bytes_transferred;
    task.bytes_sent = outcome.progress.bytes_sent;
    task.chunks_total = outcome.progress.chunks_total;
    task.chunks_skipped = outcome.progress.chunks_skipped;
    bool sweep = false;
    bool committed_manifest = false;
    if (outcome.kind == TransferOutcome::Kind::kCompleted) {
      try {
        Image copy;
        std::string source_digest;
        catalog->Read([&](CatalogTx& tx) {
          copy = *tx.GetImage(task.dest_image_id);
          if (auto source = tx.GetImage(claim.source.id)) source_digest = source->digest;
        });
        copy.status = ImageStatus::kAvailable;
        // The source's digest may have been computed since the job started (digester.cpp).
        if (copy.digest.empty()) copy.digest = source_digest;
        Manifest committed = *manifest;
        if (committed.digest.empty()) committed.digest = copy.digest;
        copy_digest[i] = copy.digest;
        dest_stores[i]->PutManifest(task.dest_image_id, committed);
        dest_stores[i]->PutImageRecord(task.dest_image_id, ImageRecordJson(copy));
        committed_manifest = true;
      } catch (const Error& e) {
        outcome = {TransferOutcome::Kind::kFailed, e.code(), e.message(), outcome.progress, {}};
      }
    }
    bool user_cancelled = false;
    bool digest_missing = false;
    Write([&](CatalogTx& tx, PendingEvents& events) {
      auto current = tx.GetTaskByDestImage(task.dest_image_id);
      if (!current) return;
      bool ours = current->state == TaskState::kRunning && current->lease_owner == worker_id;
      task.finished_us = NowUs();
      if (ours) events.Append(tx, MakeTaskEvent(event_type::kTaskProgress, claim.job, task));  // the last
      if (ours && outcome.kind == TransferOutcome::Kind::kCompleted) {
        tx.TransitionTask(task.dest_image_id, TaskState::kRunning, TaskEvent::kComplete);
        tx.TransitionImage(task.dest_image_id, ImageStatus::kReplicating,
                           ImageEvent::kCopyCompleted);
        tx.PutManifestDigest(task.dest_image_id, manifest->ChunkListDigest());
        task.state = TaskState::kCompleted;
        task.lease_owner.clear();
        tx.UpdateTaskFields(task);
        auto copy = tx.GetImage(task.dest_image_id);
        if (copy->digest.empty() && !copy_digest[i].empty()) {
          copy->digest = copy_digest[i];
          tx.UpdateImageFields(*copy);
        }
        digest_missing = copy->digest.empty();
        events.Append(tx, MakeTaskEvent(event_type::kTaskCompleted, claim.job, task));
        events.Append(tx, MakeEvent(event_type::kImageAvailable, claim.job.account, &*copy, claim.job.id));
        Settle(tx, claim.job.id, events);
      } else if (ours && outcome.kind == TransferOutcome::Kind::kFailed) {
        tx.TransitionTask(task.dest_image_id, TaskState::kRunning, TaskEvent::kFail);
        tx.TransitionImage(task.dest_image_id, ImageStatus::kReplicating,
                           ImageEvent::kCopyFailed);
        task.state = TaskState::kFailed;
        task.error_code = outcome.error_code.empty() ? codes::kTransferFailed : outcome.error_code;
        task.error = outcome.error;
        task.lease_owner.clear();
        tx.UpdateTaskFields(task);
        auto copy = tx.GetImage(task.dest_image_id);
        copy->error = task.error;
        tx.UpdateImageFields(*copy);
        tx.SetSweepNeeded(task.region, true);
        events.Append(tx, MakeTaskEvent(event_type::kTaskFailed, claim.job, task));
        events.Append(tx, MakeEvent(event_type::kImageCreateFailed, claim.job.account, &*copy, claim.job.id,
                                    nlohmann::json{{"code", task.error_code}}));
        Settle(tx, claim.job.id, events);
      } else if (ours) {
        // Stopped by Close(): hand the task back so that the next process resumes it.
        current->lease_owner.clear();
        current->lease_expires_us = 0;
        tx.UpdateTaskFields(*current);
      } else {
        // Cancelled (or taken over) meanwhile: let go of the region.
        user_cancelled = current->state == TaskState::kCancelled;
        if (current->lease_owner == worker_id) {
          current->lease_owner.clear();
          current->lease_expires_us = 0;
          tx.UpdateTaskFields(*current);
        }
      }
    });
    if (user_cancelled || outcome.kind == TransferOutcome::Kind::kFailed) {
      if (committed_manifest) {
        try {
          dest_stores[i]->DeleteManifest(task.dest_image_id);
          dest_stores[i]->DeleteImageRecord(task.dest_image_id);
        } catch (const std::exception&) {
        }
      }
      sweep = true;
    }
    if (sweep) MaybeSweep(task.region);
    if (digest_missing) ScheduleDigests();
    // Last: CancelCopy waits for this, so that its caller finds the bytes gone.
    std::lock_guard lock(running_mutex);
    running.erase(task.dest_image_id);
  };

  std::vector<TransferOutcome> outcomes;
  std::string setup_code, setup_error;
  try {
    source_store = StoreFor(claim.source.region);
    manifest = LoadManifest(claim.source, *source_store);
    std::vector<TransferDestination> destinations;
    std::vector<size_t> task_of;  // destination position -> task index
    dest_stores.resize(claim.tasks.size());
    for (size_t i = 0; i < claim.tasks.size(); ++i) {
      try {
        dest_stores[i] = StoreFor(claim.tasks[i].region);
        dest_stores[i]->Check();
        task_of.push_back(i);
      } catch (const Error& e) {
        // A broken destination fails its own copy only; the others go on.
        finish(i, {TransferOutcome::Kind::kFailed, e.code(), e.message(), {}, {}});
      }
    }
    auto last_flush = Clock::now();
    auto started = Clock::now();
    std::vector<IoProgress> latest(claim.tasks.size());
    auto flush = [&](bool force) {
      auto now = Clock::now();
      if (!force && now - last_flush < std::chrono::milliseconds(250)) return;
      last_flush = now;
      double seconds = std::chrono::duration<double>(now - started).count();
      Write([&](CatalogTx& tx, PendingEvents& events) {
        for (size_t i = 0; i < claim.tasks.size(); ++i) {
          if (finished[i]) continue;
          auto current = tx.GetTaskByDestImage(claim.tasks[i].dest_image_id);
          // Cancelled elsewhere, or taken over after our lease lapsed: stop this copy.
          if (!current || current->state != TaskState::kRunning ||
              current->lease_owner != worker_id) {
            tokens[i]->Cancel();
            continue;
          }
          Task& t = claim.tasks[i];
          t.bytes_total = latest[i].bytes_total;
          t.bytes_done = latest[i].bytes_done;
          t.bytes_transferred = latest[i].bytes_transferred;
          t.bytes_sent = latest[i].bytes_sent;
          t.chunks_total = latest[i].chunks_total;
          t.chunks_skipped = latest[i].chunks_skipped;
          t.rate = seconds > 0 ? static_cast<double>(t.bytes_transferred) / seconds : 0;
          t.lease_expires_us = NowUs() + options.lease_ms * 1000;
          tx.UpdateTaskFields(t);
          events.Append(tx, MakeTaskEvent(event_type::kTaskProgress, claim.job, t));
        }
      });
    };
    for (size_t i : task_of) {
      TransferDestination dest;
      dest.store = dest_stores[i].get();
      dest.cancel = tokens[i].get();
      dest.progress = [&, i](const IoProgress& p) {
        latest[i] = p;
        flush(false);
      };
      destinations.push_back(std::move(dest));
    }
    TransferOptions transfer;
    transfer.buffer_memory = options.limits.buffer_memory;
    transfer.bandwidth = options.limits.bandwidth;
    auto moved = CopyImage(*source_store, *manifest, destinations, transfer,
                           [&](size_t d, const TransferOutcome& outcome) {
                             latest[task_of[d]] = outcome.progress;
                             finish(task_of[d], outcome);
                           });
    outcomes.resize(claim.tasks.size());
    for (size_t d = 0; d < moved.size(); ++d) outcomes[task_of[d]] = moved[d];
    flush(true);
  } catch (const Error& e) {
    setup_code = e.code();
    setup_error = e.message();
  } catch (const std::exception& e) {
    setup_code = codes::kTransferFailed;
    setup_error = e.what();
  }
  if (outcomes.size() != claim.tasks.size()) {
    // Nothing moved (no source manifest, say): every copy not settled yet fails with why.
    outcomes.assign(claim.tasks.size(), TransferOutcome{TransferOutcome::Kind::kFailed,
                                                        setup_code, setup_error, {}, {}});
  }

  for (size_t i = 0; i < claim.tasks.size(); ++i) finish(i, outcomes[i]);
  unregister();
  SweepPending();  // sweeps put off while this copy was writing
  return true;
}

}  // namespace imagerelay
