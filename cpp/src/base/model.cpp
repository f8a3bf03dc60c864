#include "imagerelay/model.hpp"

#include <array>
#include <chrono>
#include <utility>

namespace imagerelay {
namespace {

template <typename E, size_t N>
std::string_view Lookup(const std::array<std::pair<E, std::string_view>, N>& table, E value) {
  for (const auto& [e, name] : table) {
    if (e == value) return name;
  }
  return "?";
}

template <typename E, size_t N>
std::optional<E> Parse(const std::array<std::pair<E, std::string_view>, N>& table,
                       std::string_view text) {
  for (const auto& [e, name] : table) {
    if (name == text) return e;
  }
  return std::nullopt;
}

constexpr std::array<std::pair<ImageType, std::string_view>, 2> kImageTypes{{
    {ImageType::kSystem, "System"},
    {ImageType::kCustom, "Custom"},
}};
constexpr std::array<std::pair<ImageStatus, std::string_view>, 6> kImageStatuses{{
    {ImageStatus::kCreating, "Creating"},
    {ImageStatus::kAvailable, "Available"},
    {ImageStatus::kReplicating, "Replicating"},
    {ImageStatus::kCreateFailed, "CreateFailed"},
    {ImageStatus::kDeleted, "Deleted"},
    {ImageStatus::kNotAvailable, "NotAvailable"},
}};
constexpr std::array<std::pair<TaskState, std::string_view>, 5> kTaskStates{{
    {TaskState::kPending, "Pending"},
    {TaskState::kRunning, "Running"},
    {TaskState::kCompleted, "Completed"},
    {TaskState::kFailed, "Failed"},
    {TaskState::kCancelled, "Cancelled"},
}};
constexpr std::array<std::pair<JobState, std::string_view>, 5> kJobStates{{
    {JobState::kRunning, "Running"},
    {JobState::kCompleted, "Completed"},
    {JobState::kFailed, "Failed"},
    {JobState::kCancelled, "Cancelled"},
    {JobState::kPartiallyCompleted, "PartiallyCompleted"},
}};

}  // namespace

std::string_view ToString(ImageType v) { return Lookup(kImageTypes, v); }
std::string_view ToString(ImageStatus v) { return Lookup(kImageStatuses, v); }
std::string_view ToString(TaskState v) { return Lookup(kTaskStates, v); }
std::string_view ToString(JobState v) { return Lookup(kJobStates, v); }
std::optional<ImageType> ParseImageType(std::string_view s) { return Parse(kImageTypes, s); }
std::optional<ImageStatus> ParseImageStatus(std::string_view s) { return Parse(kImageStatuses, s); }
std::optional<TaskState> ParseTaskState(std::string_view s) { return Parse(kTaskStates, s); }

TimeUs NowUs() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

JobState StateOfJob(const std::vector<Task>& tasks) {
  size_t completed = 0, failed = 0, cancelled = 0;
  for (const auto& t : tasks) {
    switch (t.state) {
      case TaskState::kPending:
      case TaskState::kRunning: return JobState::kRunning;
      case TaskState::kCompleted: ++completed; break;
      case TaskState::kFailed: ++failed; break;
      case TaskState::kCancelled: ++cancelled; break;
    }
  }
  if (failed > 0) return JobState::kFailed;
  if (cancelled == tasks.size()) return JobState::kCancelled;
  if (cancelled > 0) return JobState::kPartiallyCompleted;
  return JobState::kCompleted;
}

std::string WorkerOf(const Task& task) {
  if (task.state != TaskState::kRunning || task.lease_owner.empty()) return "";
  // The lease's "<host>:<pid>:<nonce>" without its nonce.
  const size_t nonce = task.lease_owner.rfind(':');
  return nonce == std::string::npos || nonce == 0 ? task.lease_owner
                                                  : task.lease_owner.substr(0, nonce);
}

}  // namespace imagerelay
