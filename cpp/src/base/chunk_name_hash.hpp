// A hash for maps keyed by chunk (block) names: hex SHA-256 digests, whose first 16 digits,
// mixed, are as good a hash as any and cost nothing next to hashing all 64 (a copy's plan
// takes every block of an image window).
#pragma once

#include <cstdint>
#include <cstring>
#include <functional>
#include <string_view>

namespace imagerelay {

struct ChunkNameHash {
  using is_transparent = void;  // looked up by string_view or string alike
  size_t operator()(std::string_view name) const {
    if (name.size() < 2 * sizeof(uint64_t)) return std::hash<std::string_view>()(name);
    uint64_t a;
    uint64_t b;
    std::memcpy(&a, name.data(), sizeof a);
    std::memcpy(&b, name.data() + sizeof a, sizeof b);
    // Mixed so that every bit depends on all 16 digits: a table that keeps the low bits only
    // (a power of two: PlanChunks) would otherwise see a few digits of each name.
    const uint64_t h = (a ^ (b << 32 | b >> 32)) * 0x9E3779B97F4A7C15ULL;
    return static_cast<size_t>(h ^ h >> 29);
  }
};

}  // namespace imagerelay
