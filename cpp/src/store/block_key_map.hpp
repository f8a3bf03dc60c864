// A map from blocks' keys (their SHA-256 digests' 32 bytes) to values, in one array of slots
// probed linearly (open addressing): a lookup reads one slot, the value in it. (The node map
// it replaced read a bucket, then a node, then its key: three dependent cache misses for each
// of the kept answers' lookups, BlockIndex::Find, in every copy's plan and confirmation.)
// Entries are only added; the map is emptied whole.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "base/chunk_name_hash.hpp"

namespace imagerelay {

// A block's hash as the index keys it: its 32 bytes.
using BlockKey = std::array<char, 32>;

template <typename Value>
class BlockKeyMap {
 public:
  size_t size() const { return size_; }

  const Value* Find(const BlockKey& key) const {
    if (slots_.empty()) return nullptr;
    for (size_t at = SlotOf(key);; at = (at + 1) & mask_) {
      const Slot& slot = slots_[at];
      if (!slot.used) return nullptr;
      if (slot.key == key) return &slot.value;
    }
  }

  bool Contains(const BlockKey& key) const { return Find(key) != nullptr; }

  // Brings the slot `key` starts at into the cache, for a lookup a few keys later.
  void Prefetch(const BlockKey& key) const {
    if (!slots_.empty()) __builtin_prefetch(&slots_[SlotOf(key)]);
  }

  // Adds `value` under `key` unless the key is there; false if it was.
  bool TryEmplace(const BlockKey& key, Value value) {
    if (2 * (size_ + 1) > slots_.size()) Grow();
    for (size_t at = SlotOf(key);; at = (at + 1) & mask_) {
      Slot& slot = slots_[at];
      if (slot.used) {
        if (slot.key == key) return false;
        continue;
      }
      slot.used = true;
      slot.key = key;
      slot.value = std::move(value);
      ++size_;
      return true;
    }
  }

  // Room for `count` entries without growing (at most half the slots used).
  void Reserve(size_t count) {
    size_t slots = std::max<size_t>(kMinSlots, slots_.size());
    while (slots < 2 * count) slots *= 2;
    if (slots > slots_.size()) Rehash(slots);
  }

  void Clear() {
    std::vector<Slot>().swap(slots_);  // the memory too: the next entries may be few
    size_ = 0;
    mask_ = 0;
  }

 private:
  struct Slot {
    BlockKey key;
    bool used = false;
    Value value;
  };

  // The first 8 bytes, mixed with this process's seed: a block's owner picks its content, so
  // could pick keys that all start at one slot of a fixed hash (~2^16 tries each; a lookup
  // then walks them all); against an unknown seed, not.
  size_t SlotOf(const BlockKey& key) const {
    uint64_t head;
    std::memcpy(&head, key.data(), sizeof head);
    return static_cast<size_t>(MixedWithSeed(head)) & mask_;
  }

  void Grow() { Rehash(std::max(kMinSlots, 2 * slots_.size())); }

  // Into `slots` slots (a power of two), allocated once.
  void Rehash(size_t slots) {
    std::vector<Slot> old = std::exchange(slots_, std::vector<Slot>(slots));
    mask_ = slots - 1;
    size_ = 0;
    for (Slot& slot : old) {
      if (slot.used) TryEmplace(slot.key, std::move(slot.value));
    }
  }

  static constexpr size_t kMinSlots = 64;
  std::vector<Slot> slots_;  // a power of two of them, or none
  size_t mask_ = 0;
  size_t size_ = 0;
};

}  // namespace imagerelay
