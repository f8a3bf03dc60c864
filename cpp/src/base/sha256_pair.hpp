// SHA-256 of two independent inputs at once (a block store names many blocks).
#pragma once

#include <cstddef>
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

}  // namespace imagerelay
