#include "dataplane/buffer_pool.hpp"

#include <algorithm>
#include <cstdint>
#include <new>
#include <stdexcept>
#include <utility>

namespace imagerelay {

BufferPool::Buffer& BufferPool::Buffer::operator=(Buffer&& other) noexcept {
  if (this != &other) {
    Release();
    pool_ = std::exchange(other.pool_, nullptr);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    index_ = std::exchange(other.index_, 0);
  }
  return *this;
}

std::span<std::byte> BufferPool::Buffer::first(size_t length) const {
  if (length > size_) throw std::length_error("a chunk is larger than the pool's buffers");
  return {data_, length};
}

void BufferPool::Buffer::Release() {
  if (pool_ == nullptr) return;
  std::exchange(pool_, nullptr)->Give(index_);
  data_ = nullptr;
  size_ = 0;
}

namespace {

size_t RoundToPages(size_t size) {
  return std::max<size_t>(1, (size + kDirectIoAlign - 1) / kDirectIoAlign) * kDirectIoAlign;
}

}  // namespace

BufferPool::BufferPool(size_t buffer_size, size_t count)
    : buffer_size_(RoundToPages(buffer_size)), count_(std::max<size_t>(1, count)) {
  if (buffer_size_ > SIZE_MAX / count_) throw std::bad_alloc();
  memory_ = AllocateDirectIoBuffer(buffer_size_ * count_);
  free_.reserve(count_);
  // Handed out from the top: buffer 0 first.
  for (size_t i = count_; i > 0; --i) free_.push_back(i - 1);
}

size_t BufferPool::CountFor(uint64_t memory, uint64_t unit, size_t at_least, size_t at_most) {
  const uint64_t by_memory = memory / std::max<uint64_t>(1, unit);
  const uint64_t within = std::min<uint64_t>(by_memory, std::max(at_least, at_most));
  return static_cast<size_t>(std::max<uint64_t>(within, std::max<size_t>(1, at_least)));
}

BufferPool::Buffer BufferPool::TakeLocked(size_t index) {
  Buffer buffer;
  buffer.pool_ = this;
  buffer.data_ = memory_.get() + index * buffer_size_;
  buffer.size_ = buffer_size_;
  buffer.index_ = index;
  return buffer;
}

BufferPool::Buffer BufferPool::TryAcquire() {
  std::lock_guard lock(mu_);
  if (closed_ || free_.empty()) return {};
  const size_t index = free_.back();
  free_.pop_back();
  return TakeLocked(index);
}

BufferPool::Buffer BufferPool::Acquire(const CancelToken* cancel) {
  for (;;) {
    Buffer buffer = AcquireFor(kCancelCheck, cancel);
    if (buffer || closed() || (cancel != nullptr && cancel->cancelled())) return buffer;
  }
}

BufferPool::Buffer BufferPool::AcquireFor(std::chrono::milliseconds timeout,
                                          const CancelToken* cancel) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::unique_lock lock(mu_);
  for (;;) {
    if (closed_ || (cancel != nullptr && cancel->cancelled())) return {};
    if (!free_.empty()) {
      const size_t index = free_.back();
      free_.pop_back();
      return TakeLocked(index);
    }
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline) return {};
    // The token cannot wake us: look at it again every kCancelCheck.
    freed_.wait_until(lock, std::min(deadline, now + kCancelCheck));
  }
}

void BufferPool::Give(size_t index) {
  {
    std::lock_guard lock(mu_);
    free_.push_back(index);  // never reallocates: reserved for every buffer
  }
  freed_.notify_one();
}

void BufferPool::Close() {
  {
    std::lock_guard lock(mu_);
    closed_ = true;
  }
  freed_.notify_all();
}

void BufferPool::BindToCrew() {
  std::lock_guard lock(mu_);
  if (bound_to_crew_) {
    throw std::logic_error("a buffer pool serves one crew: this one already has its crew");
  }
  bound_to_crew_ = true;
}

bool BufferPool::closed() const {
  std::lock_guard lock(mu_);
  return closed_;
}

size_t BufferPool::available() const {
  std::lock_guard lock(mu_);
  return closed_ ? 0 : free_.size();
}

}  // namespace imagerelay
