// The one buffer pool of the data plane: the chunk buffers of an import, export, verify or
// copy. A bounded set of equal, page-aligned buffers (fit for O_DIRECT), mapped once when the
// operation starts and handed out again and again: no allocation per block.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <span>
#include <vector>

#include "base/file_util.hpp"
#include "imagerelay/cancel.hpp"

namespace imagerelay {

class BufferPool {
 public:
  // A buffer taken from the pool, given back when the handle is released or destroyed.
  // Empty (false) when none was taken.
  class Buffer {
   public:
    Buffer() = default;
    Buffer(Buffer&& other) noexcept { *this = std::move(other); }
    Buffer& operator=(Buffer&& other) noexcept;
    Buffer(const Buffer&) = delete;
    Buffer& operator=(const Buffer&) = delete;
    ~Buffer() { Release(); }

    explicit operator bool() const { return pool_ != nullptr; }
    std::byte* data() const { return data_; }
    size_t size() const { return size_; }
    // The first `length` bytes; std::length_error beyond size().
    std::span<std::byte> first(size_t length) const;
    // Stable for the pool's life: callers may keep per-buffer state in an array.
    size_t index() const { return index_; }
    void Release();

   private:
    friend class BufferPool;
    BufferPool* pool_ = nullptr;
    std::byte* data_ = nullptr;
    size_t size_ = 0;
    size_t index_ = 0;
  };

  // `count` buffers (at least one) of `buffer_size` bytes each, rounded up to whole pages.
  // Memory is mapped, not touched: a buffer never used costs no resident memory.
  BufferPool(size_t buffer_size, size_t count);
  BufferPool(const BufferPool&) = delete;
  BufferPool& operator=(const BufferPool&) = delete;
  // Every buffer must have been given back.
  ~BufferPool() = default;

  // How many buffers of `unit` bytes `memory` holds, within [at_least, at_most]: at_least
  // wins over the memory (an operation cannot run on fewer buffers).
  static size_t CountFor(uint64_t memory, uint64_t unit, size_t at_least, size_t at_most);

  // Blocks until a buffer is free. Gives up (an empty handle) once Close() was called (the
  // crew stopped) or `cancel` fires; the token is looked at every kCancelCheck.
  Buffer Acquire(const CancelToken* cancel = nullptr);
  // Acquire, giving up also after `timeout`: for a caller that reports progress while it
  // waits.
  Buffer AcquireFor(std::chrono::milliseconds timeout, const CancelToken* cancel = nullptr);
  // A free buffer at once, or an empty handle.
  Buffer TryAcquire();
  // Wakes every waiter; from now on nothing is handed out (buffers may still be released).
  void Close();
  // Makes this pool the one that `Crew::ClosesOnStop` closes: once per pool, for its life.
  // std::logic_error on a second time: a pool closed by one crew would starve the next one,
  // forever (a pool shared by the windows of one digest did). Build a pool per crew.
  void BindToCrew();
  bool closed() const;

  size_t buffer_size() const { return buffer_size_; }
  size_t count() const { return count_; }
  size_t available() const;

  static constexpr auto kCancelCheck = std::chrono::milliseconds(50);

 private:
  Buffer TakeLocked(size_t index);
  void Give(size_t index);

  const size_t buffer_size_;
  const size_t count_;
  DirectIoBuffer memory_;  // count_ buffers back to back

  mutable std::mutex mu_;
  std::condition_variable freed_;
  std::vector<size_t> free_;  // indices, the last released on top: its pages are warm
  bool closed_ = false;
  bool bound_to_crew_ = false;
};

}  // namespace imagerelay
