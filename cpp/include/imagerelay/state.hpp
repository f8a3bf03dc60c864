// State machines of DESIGN.md §3: one constexpr transition table each and a pure
// Transition(state, event) -> optional<state>. Every catalog update goes through these.
#pragma once

#include <optional>
#include <string_view>

#include "imagerelay/model.hpp"

namespace imagerelay {

enum class ImageEvent {
  kImportSucceeded,  // Creating -> Available
  kImportFailed,     // Creating -> CreateFailed
  kCopyStarted,      // Available -> Replicating (source with copies in flight)
  kCopiesSettled,    // Replicating -> Available (source: no copy in flight)
  kCopyCompleted,    // Replicating -> Available (destination)
  kCopyFailed,       // Replicating -> CreateFailed (destination)
  kCopyCancelled,    // Replicating -> Deleted (destination removed)
  kDeleted,          // Available | CreateFailed | NotAvailable -> Deleted
  kDamageFound,      // Available | Replicating (source) -> NotAvailable (a block it needs
                     // failed its check)
  kRepaired,         // NotAvailable -> Available (every block present and verified again)
};

enum class TaskEvent {
  kStart,     // Pending -> Running
  kComplete,  // Running -> Completed
  kFail,      // Running -> Failed
  kCancel,    // Pending | Running -> Cancelled
  kTakeOver,  // Running -> Running (new worker after an expired lease)
};

std::optional<ImageStatus> Transition(ImageStatus from, ImageEvent event);
std::optional<TaskState> Transition(TaskState from, TaskEvent event);
std::string_view ToString(ImageEvent e);
std::string_view ToString(TaskEvent e);

inline constexpr ImageEvent kAllImageEvents[] = {
    ImageEvent::kImportSucceeded, ImageEvent::kImportFailed,  ImageEvent::kCopyStarted,
    ImageEvent::kCopiesSettled,   ImageEvent::kCopyCompleted, ImageEvent::kCopyFailed,
    ImageEvent::kCopyCancelled,   ImageEvent::kDeleted,       ImageEvent::kDamageFound,
    ImageEvent::kRepaired};
inline constexpr TaskEvent kAllTaskEvents[] = {TaskEvent::kStart, TaskEvent::kComplete,
                                               TaskEvent::kFail, TaskEvent::kCancel,
                                               TaskEvent::kTakeOver};
inline constexpr ImageStatus kAllImageStatuses[] = {
    ImageStatus::kCreating,     ImageStatus::kAvailable, ImageStatus::kReplicating,
    ImageStatus::kCreateFailed, ImageStatus::kDeleted,   ImageStatus::kNotAvailable};
inline constexpr TaskState kAllTaskStates[] = {TaskState::kPending, TaskState::kRunning,
                                               TaskState::kCompleted, TaskState::kFailed,
                                               TaskState::kCancelled};

}  // namespace imagerelay
