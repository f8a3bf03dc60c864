#include "imagerelay/state.hpp"

namespace imagerelay {
namespace {

template <typename S, typename E>
struct Edge {
  S from;
  E event;
  S to;
};

using ImageEdge = Edge<ImageStatus, ImageEvent>;
using TaskEdge = Edge<TaskState, TaskEvent>;

// DESIGN.md §3. Anything not listed is refused.
constexpr ImageEdge kImageTable[] = {
    {ImageStatus::kCreating, ImageEvent::kImportSucceeded, ImageStatus::kAvailable},
    {ImageStatus::kCreating, ImageEvent::kImportFailed, ImageStatus::kCreateFailed},
    {ImageStatus::kAvailable, ImageEvent::kCopyStarted, ImageStatus::kReplicating},
    {ImageStatus::kReplicating, ImageEvent::kCopiesSettled, ImageStatus::kAvailable},
    {ImageStatus::kReplicating, ImageEvent::kCopyCompleted, ImageStatus::kAvailable},
    {ImageStatus::kReplicating, ImageEvent::kCopyFailed, ImageStatus::kCreateFailed},
    {ImageStatus::kReplicating, ImageEvent::kCopyCancelled, ImageStatus::kDeleted},
    {ImageStatus::kAvailable, ImageEvent::kDeleted, ImageStatus::kDeleted},
    {ImageStatus::kCreateFailed, ImageEvent::kDeleted, ImageStatus::kDeleted},
    {ImageStatus::kNotAvailable, ImageEvent::kDeleted, ImageStatus::kDeleted},
    {ImageStatus::kAvailable, ImageEvent::kDamageFound, ImageStatus::kNotAvailable},
    {ImageStatus::kReplicating, ImageEvent::kDamageFound, ImageStatus::kNotAvailable},
    {ImageStatus::kNotAvailable, ImageEvent::kRepaired, ImageStatus::kAvailable},
};

constexpr TaskEdge kTaskTable[] = {
    {TaskState::kPending, TaskEvent::kStart, TaskState::kRunning},
    {TaskState::kRunning, TaskEvent::kComplete, TaskState::kCompleted},
    {TaskState::kRunning, TaskEvent::kFail, TaskState::kFailed},
    {TaskState::kPending, TaskEvent::kCancel, TaskState::kCancelled},
    {TaskState::kRunning, TaskEvent::kCancel, TaskState::kCancelled},
    {TaskState::kRunning, TaskEvent::kTakeOver, TaskState::kRunning},
};

template <typename S, typename E, size_t N>
constexpr std::optional<S> Find(const Edge<S, E> (&table)[N], S from, E event) {
  for (const auto& edge : table) {
    if (edge.from == from && edge.event == event) return edge.to;
  }
  return std::nullopt;
}

}  // namespace

std::optional<ImageStatus> Transition(ImageStatus from, ImageEvent event) {
  return Find(kImageTable, from, event);
}

std::optional<TaskState> Transition(TaskState from, TaskEvent event) {
  return Find(kTaskTable, from, event);
}

std::string_view ToString(ImageEvent e) {
  switch (e) {
    case ImageEvent::kImportSucceeded: return "ImportSucceeded";
    case ImageEvent::kImportFailed: return "ImportFailed";
    case ImageEvent::kCopyStarted: return "CopyStarted";
    case ImageEvent::kCopiesSettled: return "CopiesSettled";
    case ImageEvent::kCopyCompleted: return "CopyCompleted";
    case ImageEvent::kCopyFailed: return "CopyFailed";
    case ImageEvent::kCopyCancelled: return "CopyCancelled";
    case ImageEvent::kDeleted: return "Deleted";
    case ImageEvent::kDamageFound: return "DamageFound";
    case ImageEvent::kRepaired: return "Repaired";
  }
  return "?";
}

std::string_view ToString(TaskEvent e) {
  switch (e) {
    case TaskEvent::kStart: return "Start";
    case TaskEvent::kComplete: return "Complete";
    case TaskEvent::kFail: return "Fail";
    case TaskEvent::kCancel: return "Cancel";
    case TaskEvent::kTakeOver: return "TakeOver";
  }
  return "?";
}

}  // namespace imagerelay
