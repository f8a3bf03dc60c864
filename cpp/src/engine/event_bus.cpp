#include "engine/event_bus.hpp"

#include <vector>

#include "imagerelay/log.hpp"

namespace imagerelay {

EventBus::EventBus() : thread_([this] { Run(); }) {}

EventBus::~EventBus() { Stop(); }

int64_t EventBus::Add(const std::string& type, Callback fn) {
  std::lock_guard lock(mutex_);
  int64_t handle = next_handle_++;
  listeners_[handle] = Listener{type, std::move(fn)};
  return handle;
}

void EventBus::Remove(int64_t handle) {
  Callback doomed;  // destroyed outside the lock: it may hold foreign resources
  {
    std::lock_guard lock(mutex_);
    auto it = listeners_.find(handle);
    if (it == listeners_.end()) return;
    doomed = std::move(it->second.fn);
    listeners_.erase(it);
  }
}

bool EventBus::HasListeners() const {
  std::lock_guard lock(mutex_);
  return !listeners_.empty();
}

void EventBus::Publish(Event event) {
  {
    std::lock_guard lock(mutex_);
    if (stopping_ || listeners_.empty()) return;
    queue_.push_back(std::move(event));
  }
  wake_.notify_one();
}

void EventBus::Flush() {
  std::unique_lock lock(mutex_);
  drained_.wait(lock, [this] { return (queue_.empty() && !delivering_) || stopping_; });
}

void EventBus::Stop() {
  {
    std::lock_guard lock(mutex_);
    if (stopping_ && !thread_.joinable()) return;
    stopping_ = true;
  }
  wake_.notify_all();
  drained_.notify_all();
  if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
  std::map<int64_t, Listener> doomed;
  {
    std::lock_guard lock(mutex_);
    doomed.swap(listeners_);
  }
}

void EventBus::Run() {
  std::unique_lock lock(mutex_);
  while (true) {
    wake_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
    if (queue_.empty() && stopping_) break;
    Event event = std::move(queue_.front());
    queue_.pop_front();
    std::vector<Callback> targets;
    for (const auto& [handle, listener] : listeners_) {
      if (listener.type == "*" || listener.type == event.type) targets.push_back(listener.fn);
    }
    delivering_ = true;
    lock.unlock();
    for (const auto& fn : targets) {
      try {
        fn(event);
      } catch (const std::exception& e) {
        Log(LogLevel::kError, "event callback for " + event.type + " failed: " + e.what());
      } catch (...) {
        Log(LogLevel::kError, "event callback for " + event.type + " failed");
      }
    }
    targets.clear();
    lock.lock();
    delivering_ = false;
    if (queue_.empty()) drained_.notify_all();
  }
  drained_.notify_all();
}

}  // namespace imagerelay
