#include "imagerelay/state.hpp"

#include <gtest/gtest.h>

#include <map>
#include <utility>

namespace imagerelay {
namespace {

// The whole table, written out once more by hand: every (state, event) pair not listed
// here must be refused.
const std::map<std::pair<ImageStatus, ImageEvent>, ImageStatus> kExpectedImage{
    {{ImageStatus::kCreating, ImageEvent::kImportSucceeded}, ImageStatus::kAvailable},
    {{ImageStatus::kCreating, ImageEvent::kImportFailed}, ImageStatus::kCreateFailed},
    {{ImageStatus::kAvailable, ImageEvent::kCopyStarted}, ImageStatus::kReplicating},
    {{ImageStatus::kReplicating, ImageEvent::kCopiesSettled}, ImageStatus::kAvailable},
    {{ImageStatus::kReplicating, ImageEvent::kCopyCompleted}, ImageStatus::kAvailable},
    {{ImageStatus::kReplicating, ImageEvent::kCopyFailed}, ImageStatus::kCreateFailed},
    {{ImageStatus::kReplicating, ImageEvent::kCopyCancelled}, ImageStatus::kDeleted},
    {{ImageStatus::kAvailable, ImageEvent::kDeleted}, ImageStatus::kDeleted},
    {{ImageStatus::kCreateFailed, ImageEvent::kDeleted}, ImageStatus::kDeleted},
    {{ImageStatus::kNotAvailable, ImageEvent::kDeleted}, ImageStatus::kDeleted},
    {{ImageStatus::kAvailable, ImageEvent::kDamageFound}, ImageStatus::kNotAvailable},
    {{ImageStatus::kReplicating, ImageEvent::kDamageFound}, ImageStatus::kNotAvailable},
    {{ImageStatus::kNotAvailable, ImageEvent::kRepaired}, ImageStatus::kAvailable},
};

const std::map<std::pair<TaskState, TaskEvent>, TaskState> kExpectedTask{
    {{TaskState::kPending, TaskEvent::kStart}, TaskState::kRunning},
    {{TaskState::kRunning, TaskEvent::kComplete}, TaskState::kCompleted},
    {{TaskState::kRunning, TaskEvent::kFail}, TaskState::kFailed},
    {{TaskState::kPending, TaskEvent::kCancel}, TaskState::kCancelled},
    {{TaskState::kRunning, TaskEvent::kCancel}, TaskState::kCancelled},
    {{TaskState::kRunning, TaskEvent::kTakeOver}, TaskState::kRunning},
};

TEST(StateTest, ImageTableIsExactlyTheDesign) {
  int allowed = 0;
  for (auto from : kAllImageStatuses) {
    for (auto event : kAllImageEvents) {
      auto got = Transition(from, event);
      auto it = kExpectedImage.find({from, event});
      if (it == kExpectedImage.end()) {
        EXPECT_FALSE(got.has_value()) << ToString(from) << " + " << ToString(event);
      } else {
        ASSERT_TRUE(got.has_value()) << ToString(from) << " + " << ToString(event);
        EXPECT_EQ(*got, it->second) << ToString(from) << " + " << ToString(event);
        ++allowed;
      }
    }
  }
  EXPECT_EQ(allowed, static_cast<int>(kExpectedImage.size()));
}

TEST(StateTest, TaskTableIsExactlyTheDesign) {
  int allowed = 0;
  for (auto from : kAllTaskStates) {
    for (auto event : kAllTaskEvents) {
      auto got = Transition(from, event);
      auto it = kExpectedTask.find({from, event});
      if (it == kExpectedTask.end()) {
        EXPECT_FALSE(got.has_value()) << ToString(from) << " + " << ToString(event);
      } else {
        ASSERT_TRUE(got.has_value());
        EXPECT_EQ(*got, it->second);
        ++allowed;
      }
    }
  }
  EXPECT_EQ(allowed, static_cast<int>(kExpectedTask.size()));
}

TEST(StateTest, TerminalStatesHaveNoWayOut) {
  for (auto event : kAllImageEvents) EXPECT_FALSE(Transition(ImageStatus::kDeleted, event));
  for (auto terminal : {TaskState::kCompleted, TaskState::kFailed, TaskState::kCancelled}) {
    for (auto event : kAllTaskEvents) EXPECT_FALSE(Transition(terminal, event));
  }
}

TEST(StateTest, NamesRoundTrip) {
  for (auto s : kAllImageStatuses) EXPECT_EQ(ParseImageStatus(ToString(s)), s);
  for (auto s : kAllTaskStates) EXPECT_EQ(ParseTaskState(ToString(s)), s);
  EXPECT_EQ(ParseImageType("System"), ImageType::kSystem);
  EXPECT_EQ(ParseImageType("Custom"), ImageType::kCustom);
  EXPECT_FALSE(ParseImageType("Sharing"));
}

Task WithState(TaskState s) {
  Task t;
  t.state = s;
  return t;
}

TEST(StateTest, JobStateFollowsItsTasks) {
  using S = TaskState;
  EXPECT_EQ(StateOfJob({WithState(S::kPending), WithState(S::kCompleted)}), JobState::kRunning);
  EXPECT_EQ(StateOfJob({WithState(S::kCompleted), WithState(S::kCompleted)}), JobState::kCompleted);
  EXPECT_EQ(StateOfJob({WithState(S::kFailed), WithState(S::kCompleted)}), JobState::kFailed);
  EXPECT_EQ(StateOfJob({WithState(S::kCancelled), WithState(S::kCancelled)}), JobState::kCancelled);
  EXPECT_EQ(StateOfJob({WithState(S::kCancelled), WithState(S::kCompleted)}),
            JobState::kPartiallyCompleted);
  EXPECT_EQ(StateOfJob({WithState(S::kRunning), WithState(S::kFailed)}), JobState::kRunning);
}

}  // namespace
}  // namespace imagerelay
