// A kill -9 at a durable step, for a test: `step` runs in a forked child with the fail point
// `spec` armed (as IMAGERELAY_FAIL_AT=spec), which ends the child where it is reached.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <functional>
#include <string>

#include "base/fail_point.hpp"

namespace imagerelay::testing_util {

// The child's exit code: kFailPointExitCode if the fail point was reached, 1 if `step` ended
// (returned or threw) before it; -1 if the child did not exit (a signal). The child only
// _exits, never back into the test framework.
inline int ExitCodeOfStepKilledAt(const std::string& spec, const std::function<void()>& step) {
  const pid_t pid = ::fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    fail_point_detail::ArmInThisProcess(spec);
    try {
      step();
    } catch (...) {
    }
    ::_exit(1);
  }
  int status = 0;
  if (::waitpid(pid, &status, 0) != pid || !WIFEXITED(status)) return -1;
  return WEXITSTATUS(status);
}

}  // namespace imagerelay::testing_util
