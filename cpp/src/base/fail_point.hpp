// Fail points at the durable steps of the home (issue #16): every write that survives a
// crash (a file renamed into place, a directory synced, a catalog or index commit, a pack
// or object deleted) passes one, named, so that the crash tests can kill the process right
// there and check what a restart finds. docs/reliability.md lists them; the layout test
// checks that list against the code, and that every durable primitive has one beside it.
//
// Off unless the environment arms them when the process starts:
//   IMAGERELAY_FAIL_AT=NAME@N   the N-th passing of NAME ends the process (`*` = any point)
//   IMAGERELAY_FAIL_LOG=FILE    every passing is appended to FILE ("NAME\n"), to count steps
// Ending the process is _exit(kFailPointExitCode): no destructor, no flush, as kill -9.
// When off, a fail point costs one relaxed atomic load.
#pragma once

#include <atomic>
#include <string>
#include <string_view>

namespace imagerelay {

inline constexpr int kFailPointExitCode = 86;

namespace fail_point_detail {
extern std::atomic<bool> armed;
void Pass(std::string_view name);
// As IMAGERELAY_FAIL_AT=spec, from now on: for a test's forked child, which cannot set the
// environment its process started with.
void ArmInThisProcess(const std::string& spec);
}  // namespace fail_point_detail

inline void FailPoint(std::string_view name) {
  if (fail_point_detail::armed.load(std::memory_order_relaxed)) fail_point_detail::Pass(name);
}

}  // namespace imagerelay
