// The policies a user added (API.md add_rule): each sees every request after the rules
// passed, and one rejection refuses it (PolicyViolation with the policy's text).
#pragma once

#include <cstdint>
#include <map>
#include <mutex>

#include "imagerelay/engine.hpp"

namespace imagerelay {

class PolicySet {
 public:
  int64_t Add(PolicyFn fn);
  void Remove(int64_t handle);
  // Runs every policy, outside the set's lock; throws ValidationError(PolicyViolation) on
  // the first rejection.
  void Check(const PolicyRequest& request) const;

 private:
  mutable std::mutex mutex_;
  std::map<int64_t, PolicyFn> policies_;  // by handle, in the order they were added
  int64_t next_ = 1;
};

}  // namespace imagerelay
