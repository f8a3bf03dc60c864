#include "engine/policy_set.hpp"

#include <vector>

#include "imagerelay/error.hpp"

namespace imagerelay {

int64_t PolicySet::Add(PolicyFn fn) {
  std::lock_guard lock(mutex_);
  const int64_t handle = next_++;
  policies_[handle] = std::move(fn);
  return handle;
}

void PolicySet::Remove(int64_t handle) {
  PolicyFn doomed;  // destroyed after the lock is released (it may hold a Python callable)
  std::lock_guard lock(mutex_);
  auto it = policies_.find(handle);
  if (it == policies_.end()) return;
  doomed = std::move(it->second);
  policies_.erase(it);
}

void PolicySet::Check(const PolicyRequest& request) const {
  std::vector<PolicyFn> fns;
  {
    std::lock_guard lock(mutex_);
    for (const auto& [handle, fn] : policies_) fns.push_back(fn);
  }
  for (const auto& fn : fns) {
    if (auto rejection = fn(request)) ThrowCode(codes::kPolicyViolation, *rejection);
  }
}

}  // namespace imagerelay
