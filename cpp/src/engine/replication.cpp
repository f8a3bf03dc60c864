// Replication: jobs and tasks in the catalog, cancel, and the copies waiting for a worker
// (DESIGN.md §2, §3, §5). The workers (worker_pool.hpp) run what they claim as a CopyRun
// (copy_runner.hpp); the bytes move in transfer.cpp.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "engine/copy_runner.hpp"
#include "engine/engine_impl.hpp"
#include "imagerelay/error.hpp"
#include "imagerelay/ids.hpp"
#include "imagerelay/transfer.hpp"

namespace imagerelay {
namespace {

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

}  // namespace

// ---- requests -------------------------------------------------------------------------

Job Engine::Replicate(const std::string& account, const std::string& image_id,
                      const std::vector<std::string>& to, const std::optional<std::string>& name,
                      const std::optional<std::string>& client_token, bool validate_only) {
  // Impl::Request's order (evaluate, policies, evaluate again and apply in one transaction),
  // with a client token's replay before it and again inside the transaction.
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
      ThrowCode(codes::kIdempotentParameterMismatch, "client token " + Quote(*client_token) +
                                                         " was used with other arguments; " +
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
    ThrowIfAny(
        CheckReplicate(image, account, to, name ? &*name : nullptr, facts, impl->options.limits));
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
  impl_->CheckPolicies({.action = "replicate",
                        .account = account,
                        .image = view,
                        .to = Unique(to),
                        .accounts = {},
                        .name = name.value_or("")});
  if (validate_only) return Job{};

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
    for (const auto& copy : copies)
      regions.push_back({{"region", copy.region}, {"image_id", copy.id}});
    events.Append(tx, MakeEvent(event_type::kJobCreated, account, &source, job.id,
                                nlohmann::json{{"copies", regions}}));
    for (const auto& copy : copies) {
      events.Append(tx, MakeEvent(event_type::kImageCreated, account, &copy, job.id,
                                  nlohmann::json{{"source_image_id", source.id}}));
    }
  });
  impl_->workers->Wake();
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
    SettleJob(tx, job->id, events);
    region = task->region;
  });
  // Stop a copy running in this process and wait for it to let go of its bytes.
  impl_->running.CancelAndWaitGone(dest_image_id, std::chrono::seconds(5));
  impl_->sweeper->MaybeSweep(region);
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
    ThrowCode(codes::kImageStatusForbidden, "job " + job_id + " has no copy in flight" +
                                                (region ? " to region " + *region : std::string()) +
                                                "; nothing to cancel");
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

std::vector<std::string> Engine::CopiesWaitingForAWorker() {
  std::vector<std::string> orphaned;
  std::vector<std::string> pending;
  bool any_alive = false;
  impl_->catalog->Read([&](CatalogTx& tx) {
    const TimeUs now = NowUs();
    for (const auto& task : tx.ListTasksInStates({TaskState::kPending, TaskState::kRunning})) {
      if (task.state == TaskState::kPending) {
        pending.push_back(task.dest_image_id);
      } else if (impl_->LeaseHolderAlive({task.lease_owner, task.lease_expires_us}, now)) {
        any_alive = true;
      } else {
        orphaned.push_back(task.dest_image_id);
      }
    }
  });
  // A live worker takes the Pending ones next; without one they wait as the orphans do.
  if (!any_alive) orphaned.insert(orphaned.end(), pending.begin(), pending.end());
  return orphaned;
}

}  // namespace imagerelay
