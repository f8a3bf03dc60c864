// Byte buffers that grow without being zeroed first: for memory that is overwritten whole
// right away (a block decoded into it), where value-initialising would write it twice.
#pragma once

#include <sys/mman.h>

#include <cstddef>
#include <cstdlib>
#include <memory>
#include <new>
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

// Page-aligned memory, for reads and writes around the page cache (O_DIRECT). resize() does
// not zero it: its bytes are written over at once. Buffers of 2 MiB and more are asked to be
// backed by huge pages: a direct read or write of physically contiguous memory reaches the
// disk in requests of up to 4 MiB rather than a few hundred KiB (a copy's read-ahead, a
// pack's write; docs/data-plane-v2.md, items 1 and 5). Without huge pages it works all the
// same.
template <typename T>
struct PageAlignedAllocator : DefaultInitConstruct {
  using value_type = T;
  template <typename U>
  struct rebind {
    using other = PageAlignedAllocator<U>;
  };
  static constexpr size_t kPage = 4096;
  static constexpr size_t kHugePage = 2 << 20;
  PageAlignedAllocator() = default;
  template <typename U>
  PageAlignedAllocator(const PageAlignedAllocator<U>&) {}  // NOLINT: rebinding
  static bool OnHugePages(size_t bytes) { return bytes >= kHugePage; }
  T* allocate(size_t n) {
    const size_t bytes = n * sizeof(T);
    if (!OnHugePages(bytes)) {
      return static_cast<T*>(::operator new (bytes, std::align_val_t{kPage}));
    }
    // From a huge page boundary; a tail short of a whole huge page stays in small pages.
    const size_t rounded = (bytes + kPage - 1) / kPage * kPage;
    // posix_memalign, not aligned_alloc: the size need not be a multiple of the alignment.
    void* p = nullptr;
    if (::posix_memalign(&p, kHugePage, rounded) != 0) throw std::bad_alloc();
    ::madvise(p, rounded, MADV_HUGEPAGE);  // a hint
    return static_cast<T*>(p);
  }
  void deallocate(T* p, size_t n) noexcept {
    if (OnHugePages(n * sizeof(T))) {
      std::free(p);
    } else {
      ::operator delete (p, std::align_val_t{kPage});
    }
  }
  template <typename U>
  bool operator==(const PageAlignedAllocator<U>&) const {
    return true;
  }
};
using HugePageBytes = std::vector<std::byte, PageAlignedAllocator<std::byte>>;

}  // namespace imagerelay
