// SHA-256 of two independent inputs at once (a block store names many blocks).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

namespace imagerelay {

// The SHA-256 of `a` and of `b`, each as 64 lowercase hex digits. With SHA-NI the rounds of
// the two inputs interleave: one input's rounds depend each on the one before, which leaves
// the unit idle between them, so two run in about the time of one (1.8-1.9x the throughput
// of OpenSSL on one input, measured on 64 KiB blocks; docs/data-plane-v2.md). Without
// SHA-NI, or for inputs of unequal length past their common part, one after the other.
void Sha256HexPair(std::span<const std::byte> a, std::span<const std::byte> b, std::string& hex_a,
                   std::string& hex_b);

// The same without SHA-NI (OpenSSL, one input after the other): what Sha256HexPair does on
// a CPU without it; tests compare the two.
void Sha256HexPairPortable(std::span<const std::byte> a, std::span<const std::byte> b,
                           std::string& hex_a, std::string& hex_b);

// True where Sha256HexPair interleaves (x86-64 with SHA-NI, SSSE3 and SSE4.1).
bool Sha256PairInterleaves();

// The SHA-256 of a long input fed in order (an image's digest), whose rounds UpdateAndName
// interleaves with those of one chunk's own SHA-256: an import names its blocks in the time
// the image's digest alone takes. Only where Sha256PairInterleaves() (the constructor throws
// std::logic_error elsewhere: use Sha256 there).
class Sha256PairedStream {
 public:
  Sha256PairedStream();
  void Update(std::span<const std::byte> data);
  void UpdateZeros(uint64_t count);
  // Update(chunk), and `name` = the SHA-256 of `chunk` alone, in hex.
  void UpdateAndName(std::span<const std::byte> chunk, std::string& name);
  std::string FinishHex();  // the object is reset afterwards

 private:
  void Reset();

  alignas(16) uint32_t state_[8];  // SHA-NI's order: words A,B,E,F then C,D,G,H
  unsigned char partial_[64];      // input past the last whole 64-byte block
  size_t partial_length_ = 0;
  uint64_t length_ = 0;  // bytes fed
};

}  // namespace imagerelay
