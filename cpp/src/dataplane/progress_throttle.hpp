// The one progress throttle of the data plane: a callback called at most every
// kProgressInterval (import, export, verify, and each destination of a copy).
#pragma once

#include <chrono>

#include "imagerelay/image_io.hpp"

namespace imagerelay {

inline constexpr auto kProgressInterval = std::chrono::milliseconds(100);

// Due() says whether the callback may be called again; Report() calls it (a final report is
// made without asking).
class ProgressThrottle {
 public:
  explicit ProgressThrottle(const ProgressFn& fn) : fn_(fn) {}
  bool Due() const { return fn_ && std::chrono::steady_clock::now() - last_ >= kProgressInterval; }
  void Report(const IoProgress& p) {
    if (!fn_) return;
    last_ = std::chrono::steady_clock::now();
    fn_(p);
  }

 private:
  const ProgressFn& fn_;
  std::chrono::steady_clock::time_point last_{};
};

}  // namespace imagerelay
