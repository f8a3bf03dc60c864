// The engine's waits: for a job's copies, an image's status and digest (read from the
// digester's progress and failures), new events and the whole home to be idle. Each is one
// condition read from the catalog under WaitUntil, which is woken by this process's changes
// (NotifyChanged) rather than polling for them.
#include <algorithm>
#include <chrono>
#include <exception>
#include <map>
#include <string>

#include "engine/copy_runner.hpp"
#include "engine/engine_impl.hpp"
#include "imagerelay/error.hpp"

namespace imagerelay {
namespace {

using Clock = std::chrono::steady_clock;

// Other processes write to the same catalog without waking this one: look again this often.
constexpr auto kLookForOtherProcesses = std::chrono::milliseconds(100);

// A timeout longer than this (about 31 years) is no deadline: a time_point cannot hold it.
constexpr double kLongestTimeoutS = 1e9;

std::optional<Clock::time_point> DeadlineOf(std::optional<double> timeout_s) {
  if (!timeout_s || !(*timeout_s < kLongestTimeoutS)) return std::nullopt;
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(
                            std::chrono::duration<double>(std::max(*timeout_s, 0.0)));
}

}  // namespace

bool Engine::Impl::WaitUntil(const std::function<bool()>& done, std::optional<double> timeout_s,
                             const CancelToken* cancel) {
  const auto deadline = DeadlineOf(timeout_s);
  for (;;) {
    const uint64_t seen = changes.Generation();  // before reading: a change meanwhile is not lost
    std::exception_ptr unavailable;
    try {
      if (done()) return true;
    } catch (const Error& e) {
      // A shared catalog gone for a moment (its server restarted): a wait only reads, and
      // goes on once the catalog answers again; at its deadline it says why it saw nothing.
      if (e.code() != codes::kCatalogUnavailable) throw;
      unavailable = std::current_exception();
    }
    const auto now = Clock::now();
    if ((deadline && now >= *deadline) || (cancel && cancel->cancelled())) {
      if (unavailable) std::rethrow_exception(unavailable);
      return false;
    }
    const auto wake = now + kLookForOtherProcesses;
    changes.WaitForChange(seen, deadline ? std::min(wake, *deadline) : wake);
  }
}

ImageView Engine::WaitImage(const std::string& account, const std::string& image_id,
                            const std::vector<ImageStatus>& busy, std::optional<double> timeout_s,
                            const CancelToken* cancel) {
  ImageView view;
  const bool left = impl_->WaitUntil(
      [&] {
        view = GetImage(account, image_id);
        return std::ranges::find(busy, view.image.status) == busy.end();
      },
      timeout_s, cancel);
  if (!left) {
    ThrowCode(codes::kTimeout, "image " + image_id + " is still " +
                                   std::string(ToString(view.image.status)) + " after " +
                                   std::to_string(timeout_s.value_or(0)) + " s");
  }
  return view;
}

Job Engine::WaitJob(const std::string& account, const std::string& job_id,
                    std::optional<double> timeout_s, const CancelToken* cancel) {
  Job job;
  const bool ended = impl_->WaitUntil(
      [&] {
        job = GetJob(account, job_id);
        return StateOfJob(job.tasks) != JobState::kRunning;
      },
      timeout_s, cancel);
  if (!ended) {
    ThrowCode(codes::kTimeout, "job " + job_id + " is still running after " +
                                   std::to_string(timeout_s.value_or(0)) + " s; its copies go on");
  }
  return job;
}

bool Engine::WaitIdle(std::optional<double> timeout_s, const CancelToken* cancel) {
  return impl_->WaitUntil(
      [&] {
        bool idle = false;
        impl_->catalog->Read([&](CatalogTx& tx) {
          // A worker that reaches only some regions is idle once nothing it reaches is left.
          std::map<std::string, bool> reach;
          idle = std::ranges::none_of(
              tx.ListTasksInStates({TaskState::kPending, TaskState::kRunning}),
              [&](const Task& task) { return ReachesCopy(*impl_, tx, task, reach); });
        });
        if (idle) {
          // A copy that just ended still sweeps what a failed or cancelled copy left behind.
          idle = std::ranges::all_of(impl_->running.Keys(), IsImportKey);
        }
        if (idle) idle = !impl_->digester->Running();
        return idle;
      },
      timeout_s, cancel);
}

std::vector<Event> Engine::WaitEvents(const std::string& account, int64_t since,
                                      const std::optional<std::string>& image_id,
                                      std::optional<double> timeout_s, const CancelToken* cancel) {
  std::vector<Event> events;
  impl_->WaitUntil(
      [&] {
        events = Events(account, since, image_id);
        return !events.empty();
      },
      timeout_s, cancel);
  return events;
}

std::string Engine::WaitDigest(const std::string& account, const std::string& image_id,
                               std::optional<double> timeout_s, const CancelToken* cancel,
                               const ProgressFn& progress) {
  bool scheduled = false;
  bool reported = false;
  Image image;
  const bool known = impl_->WaitUntil(
      [&] {
        impl_->catalog->Read([&](CatalogTx& tx) {
          RequireAccount(tx, account);
          image = LoadVisible(tx, account, image_id);
        });
        if (!image.digest.empty()) {
          if (reported) {  // the end, which the digester's last report may not have said
            IoProgress end;
            end.bytes_total = end.bytes_done = image.size;
            progress(end);
          }
          return true;
        }
        if (image.status != ImageStatus::kAvailable && image.status != ImageStatus::kReplicating) {
          ThrowCode(codes::kImageStatusForbidden, "image " + image.id + " is " +
                                                      std::string(ToString(image.status)) +
                                                      "; it has no digest");
        }
        if (auto failure = impl_->digester->Failure(image.id)) {
          ThrowCode(failure->code, "the digest of image " + image.id +
                                       " could not be computed: " + failure->message);
        }
        // A copy of an image without a digest gets its source's (Digester::Record).
        std::optional<IoProgress> hashed = impl_->digester->Progress(image.id);
        if (!hashed) hashed = impl_->digester->Progress(image.source_image_id);
        if (hashed && progress) {
          progress(*hashed);
          reported = true;
        }
        if (image.status == ImageStatus::kAvailable && !scheduled) {
          impl_->digester->Schedule();  // in case no digester runs in this process yet
          scheduled = true;
        }
        return false;
      },
      timeout_s, cancel);
  if (!known) {
    ThrowCode(codes::kTimeout, "the digest of image " + image.id +
                                   " is still being "
                                   "computed after " +
                                   std::to_string(timeout_s.value_or(0)) + " s");
  }
  return image.digest;
}

void Engine::RunUntilIdle() { WaitIdle(std::nullopt); }

}  // namespace imagerelay
