// Byte buffers that grow without being zeroed first: for memory that is overwritten whole
// right away (a block decoded into it), where value-initialising would write it twice.
#pragma once

#include <cstddef>
#include <memory>
#include <utility>
#include <vector>

namespace imagerelay {

// The construct() of an allocator whose vectors grow without zeroing: resize() constructs new
// elements with no arguments, and they are left as they are (default-init).
struct DefaultInitConstruct {
  template <typename U>
  void construct(U* p) noexcept {
    ::new (static_cast<void*>(p)) U;
  }
  template <typename U, typename... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
};

template <typename T>
struct DefaultInitAllocator : std::allocator<T>, DefaultInitConstruct {
  template <typename U>
  struct rebind {
    using other = DefaultInitAllocator<U>;
  };
  using std::allocator<T>::allocator;
};

using UninitializedBytes = std::vector<std::byte, DefaultInitAllocator<std::byte>>;

}  // namespace imagerelay
