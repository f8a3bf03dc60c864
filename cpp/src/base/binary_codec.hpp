// Little-endian integers and 32-byte SHA-256 names in binary formats (packs, manifests).
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace imagerelay {

inline constexpr size_t kHashBytes = 32;

inline void PutLe(std::byte* p, uint64_t value, int bytes) {
  for (int i = 0; i < bytes; ++i) p[i] = static_cast<std::byte>(value >> (8 * i));
}

inline uint64_t GetLe(const std::byte* p, int bytes) {
  uint64_t value = 0;
  for (int i = 0; i < bytes; ++i) value |= static_cast<uint64_t>(p[i]) << (8 * i);
  return value;
}

// 64 lowercase hex digits -> 32 bytes; "" -> 32 zero bytes (a hole, or "unknown").
inline void HashToBytes(const std::string& hex, std::byte* out) {
  auto value = [](char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    throw std::invalid_argument("a block hash is 64 lowercase hex digits");
  };
  if (hex.empty()) {
    for (size_t i = 0; i < kHashBytes; ++i) out[i] = std::byte{0};
    return;
  }
  if (hex.size() != 2 * kHashBytes) throw std::invalid_argument("a block hash is 64 hex digits");
  for (size_t i = 0; i < kHashBytes; ++i) {
    out[i] = static_cast<std::byte>(value(hex[2 * i]) << 4 | value(hex[2 * i + 1]));
  }
}

// 32 bytes -> 64 lowercase hex digits at `out`; false if all 32 are zero (a hole).
inline bool WriteHashHex(const std::byte* p, char* out) {
  static constexpr char kDigits[] = "0123456789abcdef";
  bool zero = true;
  for (size_t i = 0; i < kHashBytes; ++i) {
    const auto b = static_cast<unsigned>(p[i]);
    zero = zero && b == 0;
    out[2 * i] = kDigits[b >> 4];
    out[2 * i + 1] = kDigits[b & 15];
  }
  return !zero;
}

// 32 bytes -> 64 lowercase hex digits; all zero -> "".
inline std::string BytesToHash(const std::byte* p) {
  std::string out(2 * kHashBytes, '0');
  return WriteHashHex(p, out.data()) ? out : std::string();
}

}  // namespace imagerelay
