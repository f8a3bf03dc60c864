// A hash for maps keyed by chunk (block) names: hex SHA-256 digests, whose first 16 digits,
// mixed, are as good a hash as any and cost nothing next to hashing all 64 (a copy's plan
// takes every block of an image window).
#pragma once

#include <chrono>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <random>
#include <string_view>

namespace imagerelay {

// This process's own: an image's blocks are its owner's to choose, and names chosen to fall
// into one slot of a table (a plan's: each lookup then walks them all) could be computed
// ahead against a fixed hash (~2^16 tries each); against an unknown seed they cannot: two
// names collide whatever the seed only if their mixed digits agree in their low 45 bits,
// ~2^27 tries per name (each byte there the XOR of two hex digits' codes: ~4.6 bits).
inline const uint64_t kChunkNameHashSeed = [] {
  uint64_t seed = 0;
  try {
    std::random_device device;
    seed = static_cast<uint64_t>(device()) << 32 ^ device();
  } catch (const std::exception&) {
  }
  // Where the device gives nothing: the clock and where this process was loaded.
  return seed ^ static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count()) ^
         reinterpret_cast<uintptr_t>(&seed);
}();

// `value` mixed with this process's seed, every bit of the result depending on all of its
// bits: a table that keeps the low bits only (a power of two) sees them all.
inline uint64_t MixedWithSeed(uint64_t value) {
  const uint64_t h = (value ^ kChunkNameHashSeed) * 0x9E3779B97F4A7C15ULL;
  return h ^ h >> 29;
}

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
    return static_cast<size_t>(MixedWithSeed(a ^ (b << 32 | b >> 32)));
  }
};

}  // namespace imagerelay
