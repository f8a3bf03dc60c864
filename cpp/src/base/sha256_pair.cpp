#include "base/sha256_pair.hpp"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <stdexcept>

#include "base/binary_codec.hpp"
#include "imagerelay/sha256.hpp"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace imagerelay {

void Sha256HexPairPortable(std::span<const std::byte> a, std::span<const std::byte> b,
                           std::string& hex_a, std::string& hex_b) {
  hex_a = Sha256Hex(a.data(), a.size());
  hex_b = Sha256Hex(b.data(), b.size());
}

#if defined(__x86_64__)

namespace {

#define IMAGERELAY_SHA_NI __attribute__((target("sha,sse4.1,ssse3")))

alignas(16) constexpr uint32_t kRoundConstants[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

alignas(16) constexpr uint32_t kInitialState[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};

// One input's state as SHA-NI keeps it (words A,B,E,F and C,D,G,H) and its message schedule:
// four registers of four words, each group of rounds computing the schedule three groups on.
struct ShaLane {
  __m128i abef;
  __m128i cdgh;
  __m128i w[4];
};

IMAGERELAY_SHA_NI inline __m128i WordSwap() {
  return _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
}

IMAGERELAY_SHA_NI inline void InitLane(ShaLane& lane) {
  const __m128i dcba = _mm_load_si128(reinterpret_cast<const __m128i*>(kInitialState));
  const __m128i hgfe = _mm_load_si128(reinterpret_cast<const __m128i*>(kInitialState + 4));
  lane.abef = _mm_shuffle_epi32(_mm_unpacklo_epi64(dcba, hgfe), 0x1B);
  lane.cdgh = _mm_shuffle_epi32(_mm_unpackhi_epi64(hgfe, dcba), 0xB1);
}

// Rounds i..i+3 of one 64-byte block at `p` (i a multiple of 4). `c` is the schedule register
// holding words i..i+3; the next ones follow it modulo 4.
IMAGERELAY_SHA_NI inline void FourRounds(ShaLane& lane, int i, const unsigned char* p,
                                         __m128i swap) {
  __m128i& w0 = lane.w[(i / 4) % 4];
  __m128i& w1 = lane.w[(i / 4 + 1) % 4];
  __m128i& w3 = lane.w[(i / 4 + 3) % 4];
  if (i < 16) {
    w0 = _mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i * 4)), swap);
  }
  __m128i k =
      _mm_add_epi32(w0, _mm_load_si128(reinterpret_cast<const __m128i*>(kRoundConstants + i)));
  lane.cdgh = _mm_sha256rnds2_epu32(lane.cdgh, lane.abef, k);
  if (i >= 12 && i < 60) {
    w1 = _mm_sha256msg2_epu32(_mm_add_epi32(w1, _mm_alignr_epi8(w0, w3, 4)), w0);
  }
  k = _mm_shuffle_epi32(k, 0x0E);
  lane.abef = _mm_sha256rnds2_epu32(lane.abef, lane.cdgh, k);
  if (i >= 4 && i < 52) w3 = _mm_sha256msg1_epu32(w3, w0);
}

// `blocks` 64-byte blocks of each of `n` lanes (1 or 2), their rounds interleaved.
template <int n>
IMAGERELAY_SHA_NI void HashBlocks(ShaLane* lanes, const unsigned char* const* data, size_t blocks) {
  const __m128i swap = WordSwap();
  const unsigned char* p[n];
  for (int l = 0; l < n; ++l) p[l] = data[l];
  for (size_t b = 0; b < blocks; ++b) {
    __m128i saved[n][2];
    for (int l = 0; l < n; ++l) {
      // The next KiB's first line: SHA-NI reads too slowly for the hardware prefetcher to
      // keep ahead on data a DMA read just brought into memory (sha256.cpp says more).
      _mm_prefetch(reinterpret_cast<const char*>(p[l]) + 512, _MM_HINT_T0);
      saved[l][0] = lanes[l].abef;
      saved[l][1] = lanes[l].cdgh;
    }
    // Unrolled whole, so that the schedule's registers are named at compile time.
#pragma GCC unroll 16
    for (int i = 0; i < 64; i += 4) {
#pragma GCC unroll 2
      for (int l = 0; l < n; ++l) FourRounds(lanes[l], i, p[l], swap);
    }
    for (int l = 0; l < n; ++l) {
      lanes[l].abef = _mm_add_epi32(lanes[l].abef, saved[l][0]);
      lanes[l].cdgh = _mm_add_epi32(lanes[l].cdgh, saved[l][1]);
      p[l] += 64;
    }
  }
}

// The padded last one or two blocks of a `length`-byte input whose last length % 64 bytes
// are at `rest_bytes`.
size_t PaddedTail(const unsigned char* rest_bytes, uint64_t length, unsigned char tail[128]) {
  const size_t rest = static_cast<size_t>(length % 64);
  std::memset(tail, 0, 128);
  if (rest > 0) std::memcpy(tail, rest_bytes, rest);
  tail[rest] = 0x80;
  const size_t size = rest < 56 ? 64 : 128;
  const uint64_t bits = static_cast<uint64_t>(length) * 8;
  for (int i = 0; i < 8; ++i) tail[size - 1 - i] = static_cast<unsigned char>(bits >> (8 * i));
  return size / 64;
}

IMAGERELAY_SHA_NI void LaneHex(const ShaLane& lane, std::string& hex) {
  const __m128i swap = WordSwap();
  const __m128i abef = _mm_shuffle_epi32(lane.abef, 0x1B);  // words A,B,E,F from the low one
  const __m128i cdgh = _mm_shuffle_epi32(lane.cdgh, 0x1B);
  alignas(16) std::byte digest[kHashBytes];
  _mm_store_si128(reinterpret_cast<__m128i*>(digest),
                  _mm_shuffle_epi8(_mm_unpacklo_epi64(abef, cdgh), swap));
  _mm_store_si128(reinterpret_cast<__m128i*>(digest + 16),
                  _mm_shuffle_epi8(_mm_unpackhi_epi64(abef, cdgh), swap));
  hex.resize(2 * kHashBytes);
  WriteHashHex(digest, hex.data());
}

// The rest of one lane's input past `done` full blocks, and its padding.
IMAGERELAY_SHA_NI void FinishLane(ShaLane& lane, const unsigned char* data, size_t length,
                                  size_t done, std::string& hex) {
  const unsigned char* rest = data + done * 64;
  HashBlocks<1>(&lane, &rest, length / 64 - done);
  unsigned char tail[128];
  const unsigned char* padded = tail;
  HashBlocks<1>(&lane, &padded, PaddedTail(data + length / 64 * 64, length, tail));
  LaneHex(lane, hex);
}

IMAGERELAY_SHA_NI void InterleavedPair(std::span<const std::byte> a, std::span<const std::byte> b,
                                       std::string& hex_a, std::string& hex_b) {
  ShaLane lanes[2];
  InitLane(lanes[0]);
  InitLane(lanes[1]);
  const auto* pa = reinterpret_cast<const unsigned char*>(a.data());
  const auto* pb = reinterpret_cast<const unsigned char*>(b.data());
  const size_t common = std::min(a.size(), b.size()) / 64;
  const unsigned char* starts[2] = {pa, pb};
  HashBlocks<2>(lanes, starts, common);
  FinishLane(lanes[0], pa, a.size(), common, hex_a);
  FinishLane(lanes[1], pb, b.size(), common, hex_b);
}

IMAGERELAY_SHA_NI void LoadLane(ShaLane& lane, const uint32_t* state) {
  lane.abef = _mm_load_si128(reinterpret_cast<const __m128i*>(state));
  lane.cdgh = _mm_load_si128(reinterpret_cast<const __m128i*>(state + 4));
}

IMAGERELAY_SHA_NI void StoreLane(const ShaLane& lane, uint32_t* state) {
  _mm_store_si128(reinterpret_cast<__m128i*>(state), lane.abef);
  _mm_store_si128(reinterpret_cast<__m128i*>(state + 4), lane.cdgh);
}

// Whole 64-byte blocks of a stream's input, alone or beside a chunk's own lane.
IMAGERELAY_SHA_NI void StreamBlocks(uint32_t* state, const unsigned char* data, size_t blocks) {
  ShaLane lane;
  LoadLane(lane, state);
  HashBlocks<1>(&lane, &data, blocks);
  StoreLane(lane, state);
}

IMAGERELAY_SHA_NI void StreamAndNameBlocks(uint32_t* state, const unsigned char* chunk,
                                           size_t length, std::string& name) {
  ShaLane lanes[2];
  LoadLane(lanes[0], state);
  InitLane(lanes[1]);
  const unsigned char* starts[2] = {chunk, chunk};
  HashBlocks<2>(lanes, starts, length / 64);
  StoreLane(lanes[0], state);
  FinishLane(lanes[1], chunk, length, length / 64, name);
}

IMAGERELAY_SHA_NI void InitialState(uint32_t* state) {
  ShaLane lane;
  InitLane(lane);
  StoreLane(lane, state);
}

IMAGERELAY_SHA_NI void StateHex(const uint32_t* state, std::string& hex) {
  ShaLane lane;
  LoadLane(lane, state);
  LaneHex(lane, hex);
}

bool CpuHasShaNi() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("sha") && __builtin_cpu_supports("sse4.1") &&
         __builtin_cpu_supports("ssse3");
}

}  // namespace

bool Sha256PairInterleaves() {
  static const bool has = CpuHasShaNi();
  return has;
}

void Sha256HexPair(std::span<const std::byte> a, std::span<const std::byte> b, std::string& hex_a,
                   std::string& hex_b) {
  if (Sha256PairInterleaves()) return InterleavedPair(a, b, hex_a, hex_b);
  Sha256HexPairPortable(a, b, hex_a, hex_b);
}

Sha256PairedStream::Sha256PairedStream() {
  if (!Sha256PairInterleaves()) throw std::logic_error("Sha256PairedStream needs SHA-NI");
  Reset();
}

void Sha256PairedStream::Reset() {
  InitialState(state_);
  partial_length_ = 0;
  length_ = 0;
}

void Sha256PairedStream::Update(std::span<const std::byte> data) {
  const auto* p = reinterpret_cast<const unsigned char*>(data.data());
  size_t left = data.size();
  length_ += left;
  if (partial_length_ > 0) {
    const size_t take = std::min(left, sizeof(partial_) - partial_length_);
    std::memcpy(partial_ + partial_length_, p, take);
    partial_length_ += take;
    p += take;
    left -= take;
    if (partial_length_ < sizeof(partial_)) return;
    StreamBlocks(state_, partial_, 1);
    partial_length_ = 0;
  }
  StreamBlocks(state_, p, left / 64);
  partial_length_ = left % 64;
  if (partial_length_ > 0) std::memcpy(partial_, p + left - partial_length_, partial_length_);
}

void Sha256PairedStream::UpdateZeros(uint64_t count) {
  alignas(64) static constexpr std::byte kZeros[64 << 10] = {};
  while (count > 0) {
    const size_t step = static_cast<size_t>(std::min<uint64_t>(count, sizeof(kZeros)));
    Update(std::span(kZeros, step));
    count -= step;
  }
}

void Sha256PairedStream::UpdateAndName(std::span<const std::byte> chunk, std::string& name) {
  // Interleaved while the stream is at a block boundary; the chunk's last partial block,
  // if any, goes to the stream's buffer.
  if (partial_length_ > 0) {
    Update(chunk);
    name = Sha256Hex(chunk.data(), chunk.size());
    return;
  }
  const auto* p = reinterpret_cast<const unsigned char*>(chunk.data());
  StreamAndNameBlocks(state_, p, chunk.size(), name);
  const size_t whole = chunk.size() / 64 * 64;
  length_ += whole;
  Update(chunk.subspan(whole));
}

std::string Sha256PairedStream::FinishHex() {
  unsigned char tail[128];
  const size_t blocks = PaddedTail(partial_, length_, tail);
  std::string hex;
  StreamBlocks(state_, tail, blocks);
  StateHex(state_, hex);
  Reset();
  return hex;
}

#else  // not x86-64: OpenSSL, one input after the other

bool Sha256PairInterleaves() { return false; }

// Never made here (Sha256PairInterleaves() is false): the constructor throws.
Sha256PairedStream::Sha256PairedStream() {
  throw std::logic_error("Sha256PairedStream needs SHA-NI");
}
void Sha256PairedStream::Reset() {}
void Sha256PairedStream::Update(std::span<const std::byte>) {}
void Sha256PairedStream::UpdateZeros(uint64_t) {}
void Sha256PairedStream::UpdateAndName(std::span<const std::byte>, std::string&) {}
std::string Sha256PairedStream::FinishHex() { return {}; }

void Sha256HexPair(std::span<const std::byte> a, std::span<const std::byte> b, std::string& hex_a,
                   std::string& hex_b) {
  Sha256HexPairPortable(a, b, hex_a, hex_b);
}

#endif

}  // namespace imagerelay
