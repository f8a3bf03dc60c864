#include "engine/running_work.hpp"

namespace imagerelay {

std::shared_ptr<CancelToken> RunningWork::Register(const std::string& key,
                                                   const CancelToken* parent) {
  auto token = std::make_shared<CancelToken>(parent);
  std::lock_guard lock(mutex_);
  if (closing_) token->Cancel();  // CancelAll may have fired the others already
  tokens_[key] = token;
  return token;
}

void RunningWork::Unregister(const std::string& key) {
  {
    std::lock_guard lock(mutex_);
    if (tokens_.erase(key) == 0) return;
  }
  gone_.notify_all();
}

bool RunningWork::Cancel(const std::string& key) {
  std::lock_guard lock(mutex_);
  auto it = tokens_.find(key);
  if (it == tokens_.end()) return false;
  it->second->Cancel();
  return true;
}

bool RunningWork::CancelAndWaitGone(const std::string& key, std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex_);
  auto it = tokens_.find(key);
  if (it == tokens_.end()) return true;
  it->second->Cancel();
  return gone_.wait_for(lock, timeout, [&] { return !tokens_.contains(key); });
}

bool RunningWork::Closing() const {
  std::lock_guard lock(mutex_);
  return closing_;
}

bool RunningWork::CancelAll() {
  std::lock_guard lock(mutex_);
  if (closing_) return false;
  closing_ = true;
  for (auto& [key, token] : tokens_) token->Cancel();
  return true;
}

bool RunningWork::Contains(const std::string& key) const {
  std::lock_guard lock(mutex_);
  return tokens_.contains(key);
}

std::vector<std::string> RunningWork::Keys() const {
  std::lock_guard lock(mutex_);
  std::vector<std::string> keys;
  keys.reserve(tokens_.size());
  for (const auto& [key, token] : tokens_) keys.push_back(key);
  return keys;
}

}  // namespace imagerelay
