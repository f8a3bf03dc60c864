#include "store/block_sketch.hpp"

#include <algorithm>
#include <array>
#include <bit>
#include <cstring>

namespace imagerelay {
namespace {

constexpr size_t kSketchWindow = 32;   // bytes hashed at each position: 4 words
constexpr size_t kSketchMinPage = 64;  // a shorter last page is left out
constexpr int kSketchAnchorBits = 5;   // one window in 32 is an anchor
constexpr size_t kSketchFeatures = 4 * kSuperFeaturesPerPage;  // 4 per super-feature
constexpr size_t kSketchMaxPositions = kSketchPage - kSketchWindow + 1;
constexpr uint64_t kSketchAnchorMul = 0x9E3779B97F4A7C15;  // the model's

constexpr uint64_t SketchMix(uint64_t x) {  // splitmix64's finalizer: a bijection
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EB;
  return x ^ (x >> 31);
}

// Fixed constants from a seeded splitmix64 sequence: changing them changes every sketch
// (and so every index built from sketches).
struct SketchConstants {
  uint64_t window_mul = 0;       // K: a window hashes to (((w0·K + w1)·K + w2)·K + w3)·K
  uint64_t window_mul_pow4 = 0;  // K^4, to roll that hash 8 bytes on
  std::array<uint64_t, kSketchFeatures> feature_mul{};  // odd
  std::array<uint64_t, kSketchFeatures> feature_add{};
  std::array<uint64_t, kSuperFeaturesPerPage> super_seed{};
};

constexpr SketchConstants MakeSketchConstants() {
  uint64_t state = 20120214;  // the model's seed number (not its generator)
  auto next = [&state] { return SketchMix(state += 0x9E3779B97F4A7C15); };
  SketchConstants c;
  c.window_mul = next() | 1;
  c.window_mul_pow4 = c.window_mul * c.window_mul * c.window_mul * c.window_mul;
  for (auto& mul : c.feature_mul) mul = next() | 1;
  for (auto& add : c.feature_add) add = next();
  for (auto& seed : c.super_seed) seed = next();
  return c;
}

constexpr SketchConstants kSketchConstants = MakeSketchConstants();

inline uint64_t SketchWord(const std::byte* p) {  // 8 bytes, little-endian
  uint64_t word;
  std::memcpy(&word, p, sizeof(word));
  if constexpr (std::endian::native == std::endian::big) word = __builtin_bswap64(word);
  return word;
}

// The hash of the 32-byte window at `p`. It is the model's window hash h (a sum of the 4
// words times odd constants) already multiplied by the anchor multiplier: with
// M_k = K^(4-k) / 0x9E3779B97F4A7C15 (mod 2^64), h·0x9E3779B97F4A7C15 is the polynomial
// below, so an anchor is a hash whose top 5 bits are zero, and the features' multipliers
// absorb the anchor multiplier. As a polynomial in K it rolls 8 bytes on with 2 multiplies
// (RollWindowHash) instead of 4 + 1.
inline uint64_t WindowHash(const std::byte* p) {
  const uint64_t k = kSketchConstants.window_mul;
  return (((SketchWord(p) * k + SketchWord(p + 8)) * k + SketchWord(p + 16)) * k +
          SketchWord(p + 24)) *
         k;
}

// WindowHash(p + 8) from WindowHash(p).
inline uint64_t RollWindowHash(uint64_t hash, const std::byte* p) {
  return (hash - SketchWord(p) * kSketchConstants.window_mul_pow4 + SketchWord(p + 32)) *
         kSketchConstants.window_mul;
}

// The model's (h·0x9E3779B97F4A7C15) >> 59 == 0, the multiply being in the hash already.
inline bool IsAnchor(uint64_t hash) { return hash >> (64 - kSketchAnchorBits) == 0; }

// The hashes of the page's windows into `hashes` (room for kSketchMaxPositions), the anchors
// only unless kAll; returns how many. Eight hashes roll side by side, one per position modulo
// 8, so the multiplies of one do not wait for another's; an anchor is kept without a branch
// (each hash is stored, and the count moves on past an anchor's). Unrolled, the lanes stay
// in registers: the loop then runs at the multiplier's pace, 2 per position.
template <bool kAll>
size_t WindowHashes(const std::byte* page, size_t positions, uint64_t* hashes) {
  uint64_t lane[8];
  for (size_t r = 0; r < 8; ++r) lane[r] = WindowHash(page + r);
  size_t count = 0;
  size_t p = 0;  // the lanes hold the hashes at p .. p + 7
  while (true) {
#pragma GCC unroll 8
    for (size_t r = 0; r < 8; ++r) {
      hashes[count] = lane[r];
      count += kAll || IsAnchor(lane[r]);
    }
    if (p + 16 > positions) break;
#pragma GCC unroll 8
    for (size_t r = 0; r < 8; ++r) lane[r] = RollWindowHash(lane[r], page + p + r);
    p += 8;
  }
  for (p += 8; p < positions; ++p) {
    hashes[count] = WindowHash(page + p);
    count += kAll || IsAnchor(hashes[count]);
  }
  return count;
}

bool IsZeroPage(const std::byte* page, size_t size) {
  size_t at = 0;
  for (; at + 64 <= size; at += 64) {
    uint64_t any = 0;
    for (size_t i = 0; i < 64; i += 8) any |= SketchWord(page + at + i);
    if (any != 0) return false;
  }
  for (; at < size; ++at) {
    if (page[at] != std::byte{0}) return false;
  }
  return true;
}

// Appends the super-features of a page of 64 bytes or more.
void SketchPage(const std::byte* page, size_t size, uint64_t* hashes, std::vector<uint64_t>& out) {
  const size_t positions = size - kSketchWindow + 1;
  size_t count = WindowHashes<false>(page, positions, hashes);
  if (count < 2) count = WindowHashes<true>(page, positions, hashes);  // as the model does

  // Repeated hashes change no max. Dropping those seen in a small direct-mapped table is
  // cheap and saves most of the features' multiplies on repetitive pages (a fill pattern:
  // up to 4,065 anchors, or every window when none is one, with a few distinct hashes).
  // Each slot starts with a value whose bits 32..39 differ from the slot's index, so no
  // hash matches an empty slot.
  uint64_t seen[256];
  for (uint64_t i = 0; i < 256; ++i) seen[i] = ~(i << 32);
  std::array<uint64_t, kSketchFeatures> feature{};  // 0 is no value's max: count >= 1
  for (size_t i = 0; i < count; ++i) {
    const uint64_t hash = hashes[i];
    uint64_t& slot = seen[(hash >> 32) & 255];
    if (slot == hash) continue;
    slot = hash;
#pragma GCC unroll 12  // (kSketchFeatures at most)
    for (size_t t = 0; t < kSketchFeatures; ++t) {
      feature[t] = std::max(
          feature[t], hash * kSketchConstants.feature_mul[t] + kSketchConstants.feature_add[t]);
    }
  }

  constexpr size_t kGroup = kSketchFeatures / kSuperFeaturesPerPage;
  for (size_t s = 0; s < kSuperFeaturesPerPage; ++s) {
    uint64_t super_feature = kSketchConstants.super_seed[s];  // its position, mixed in
    for (size_t t = s * kGroup; t < (s + 1) * kGroup; ++t) {
      super_feature = SketchMix(super_feature ^ feature[t]);
    }
    out.push_back(super_feature);
  }
}

}  // namespace

void SketchBlock(std::span<const std::byte> block, std::vector<uint64_t>& out) {
  out.clear();
  out.reserve((block.size() + kSketchPage - 1) / kSketchPage * kSuperFeaturesPerPage);
  // Per thread rather than on the stack (32 KiB): SketchBlock may run on small-stack threads.
  // Reached through a pointer loaded once: a thread_local array's own address, propagated
  // into SketchPage, had the loop call __tls_get_addr (dynamic TLS in a shared library) on
  // every round, 5% of a full copy's CPU.
  thread_local std::vector<uint64_t> window_hashes(kSketchMaxPositions);
  uint64_t* const hashes = window_hashes.data();
  for (size_t at = 0; at < block.size(); at += kSketchPage) {
    const size_t size = std::min(kSketchPage, block.size() - at);
    if (size < kSketchMinPage || IsZeroPage(block.data() + at, size)) continue;
    SketchPage(block.data() + at, size, hashes, out);
  }
}

}  // namespace imagerelay
