// Delivers events to in-process listeners on one dispatcher thread, so that callbacks never
// run on a caller's thread or under an engine lock. A callback that throws is reported to
// the error sink and the bus goes on.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>

#include "imagerelay/model.hpp"

namespace imagerelay {

class EventBus {
 public:
  using Callback = std::function<void(const Event&)>;
  EventBus();
  ~EventBus();  // drains what is queued, then stops

  int64_t Add(const std::string& type, Callback fn);  // "*" = every type
  void Remove(int64_t handle);
  bool HasListeners() const;
  void Publish(Event event);
  // Waits until everything published so far has been delivered.
  void Flush();
  void Stop();

 private:
  void Run();

  struct Listener {
    std::string type;
    Callback fn;
  };
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable drained_;
  std::deque<Event> queue_;
  std::map<int64_t, Listener> listeners_;
  int64_t next_handle_ = 1;
  bool delivering_ = false;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace imagerelay
