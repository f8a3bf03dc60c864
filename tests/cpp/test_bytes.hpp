// Byte and hash helpers shared by the C++ tests. One definition here instead of one per test
// file keeps the sanitizer builds' unity batches (several test files in one translation unit)
// free of clashing helpers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "imagerelay/sha256.hpp"

namespace imagerelay::testing_util {

inline std::string HashOf(const std::vector<std::byte>& bytes) {
  return Sha256Hex(bytes.data(), bytes.size());
}

// The hash of a number's bytes: distinct block hashes without block contents.
inline std::string HashOfNumber(uint64_t n) { return Sha256Hex(&n, sizeof(n)); }

// n pseudo-random bytes, the same for the same seed.
inline std::vector<std::byte> RandomByteVector(size_t n, uint32_t seed) {
  std::vector<std::byte> out(n);
  std::mt19937 rng(seed);
  for (auto& b : out) b = static_cast<std::byte>(rng());
  return out;
}

// A whole file's bytes ("" if it cannot be read), in one read: a character at a time
// (istreambuf_iterator) took most of a sanitizer run's time on files of a few MiB.
inline std::string ReadFileBytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) return {};
  std::string bytes(static_cast<size_t>(in.tellg()), '\0');
  in.seekg(0);
  in.read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  bytes.resize(static_cast<size_t>(in.gcount()));
  return bytes;
}

}  // namespace imagerelay::testing_util
