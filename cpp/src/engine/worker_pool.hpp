// The copy workers of this process (DESIGN.md §5): each one claims and runs queued copies
// until none is left, then does the idle work (the sweeps put off while copies wrote; once
// nothing has run for a while, the housekeeping: imports whose process died are failed, the
// catalog is checkpointed) and waits to be woken (a new job)
// or for its next look, when it finds copies another process queued or left behind.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>

#include "imagerelay/model.hpp"

namespace imagerelay {

// The idle workers' checkpoint rule: after a second with no copy run, at most every five
// seconds (a checkpoint's fsyncs then delay nobody's call).
bool CheckpointDue(TimeUs now, TimeUs last_worked_us, TimeUs last_checkpoint_us);

class WorkerPool {
 public:
  // What the workers work with, given by the engine.
  struct Parts {
    int workers = 1;  // how many threads (at least one)
    // Runs `fn` on a background thread the engine joins when it closes.
    std::function<void(std::function<void()> fn)> spawn;
    // Claims and runs one batch of queued copies; false if nothing was claimable.
    std::function<bool()> run_one_claim;
    // Idle work: the sweeps put off earlier (Sweeper::SweepPending).
    std::function<void()> sweep_pending;
    // Idle work at the checkpoint's pace (CheckpointDue): fails the imports whose process
    // died (Importer::RecoverInterrupted: an open engine would otherwise leave them Creating,
    // and their region unswept, until the next open), then moves the catalog's write-ahead
    // log into the database.
    std::function<void()> housekeeping;
    // How long an idle worker waits before it looks for copies again unless woken.
    std::chrono::milliseconds idle_wait{500};
    // The clock of the checkpoint's "idle for a second, at most every five seconds".
    std::function<TimeUs()> now = NowUs;
  };
  explicit WorkerPool(Parts parts) : parts_(std::move(parts)) {}
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  // Starts the workers (through `spawn`).
  void Start();
  // An idle worker looks for copies at once (a job was queued).
  void Wake();
  // The workers end once what they run is over (its cancel tokens stop it); whoever owns
  // their threads joins them.
  void Stop();

 private:
  void Loop();
  void MaybeCheckpoint();

  const Parts parts_;
  std::atomic<bool> stopping_{false};
  std::atomic<TimeUs> last_worked_us_{0};      // when a worker last ran a copy
  std::atomic<TimeUs> last_checkpoint_us_{0};  // when a worker last checkpointed the catalog
  std::mutex wake_mutex_;
  std::condition_variable wake_;
  uint64_t wakes_ = 0;  // under wake_mutex_: a Wake before a worker waits is not lost
};

}  // namespace imagerelay
