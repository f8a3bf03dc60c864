// Whose writes the current thread makes (docs/data-plane-v2.md, "Delta blocks"; docs/serve.md).
// A block store keeps a new block as a delta against stored blocks it resembles; the size of
// that delta (a copy's bytes_sent) tells how close the new block is to them. Bases are
// therefore looked for only among blocks written in the same scope: the account whose data
// is written. Set by the engine around an import, a copy or a repair; a Crew's threads take
// the scope of the thread that starts them. Threads that set none share the default scope.
#pragma once

#include <cstdint>
#include <string_view>

namespace imagerelay {

class WriteScope {
 public:
  // The scope of `owner`'s data (an account id; empty for System images) for this thread,
  // until destroyed (the scope before it comes back).
  explicit WriteScope(std::string_view owner);
  // The scope `value` (another thread's Current()).
  static WriteScope Inherit(uint64_t value) { return WriteScope(value); }
  ~WriteScope();
  WriteScope(const WriteScope&) = delete;
  WriteScope& operator=(const WriteScope&) = delete;

  // This thread's scope: a stable value (the same for an owner in every process and
  // release, as it names rows on disk).
  static uint64_t Current();

 private:
  explicit WriteScope(uint64_t value);
  uint64_t previous_;
};

}  // namespace imagerelay
