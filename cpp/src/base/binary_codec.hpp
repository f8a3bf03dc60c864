// Little-endian integers and 32-byte SHA-256 names in binary formats (packs, manifests).
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

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

// The value of a lowercase hex digit, or -1 (hashes are written in lowercase only). A table,
// not branches: the digits of a hash are random, and a branch per digit mispredicted often
// enough to cost ~250 ns a hash (8 ms of a no-op copy's 32,768 index lookups).
inline int LowerHexDigit(char c) {
  struct Table {
    int8_t value[256];
    constexpr Table() : value() {
      for (int c = 0; c < 256; ++c) {
        value[c] = c >= '0' && c <= '9'   ? static_cast<int8_t>(c - '0')
                   : c >= 'a' && c <= 'f' ? static_cast<int8_t>(c - 'a' + 10)
                                          : int8_t{-1};
      }
    }
  };
  static constexpr Table kTable;
  return kTable.value[static_cast<unsigned char>(c)];
}

// 64 lowercase hex digits -> 32 bytes at `out`; false (and `out` undefined) if `hex` is not
// exactly that.
inline bool ReadHashHex(std::string_view hex, std::byte* out) {
  if (hex.size() != 2 * kHashBytes) return false;
  int invalid = 0;  // negative once any digit is not one
  for (size_t i = 0; i < kHashBytes; ++i) {
    const int high = LowerHexDigit(hex[2 * i]);
    const int low = LowerHexDigit(hex[2 * i + 1]);
    invalid |= high | low;
    out[i] = static_cast<std::byte>(high << 4 | low);
  }
  return invalid >= 0;
}

// 64 lowercase hex digits -> 32 bytes; "" -> 32 zero bytes (a hole, or "unknown").
inline void HashToBytes(const std::string& hex, std::byte* out) {
  if (hex.empty()) {
    for (size_t i = 0; i < kHashBytes; ++i) out[i] = std::byte{0};
    return;
  }
  if (!ReadHashHex(hex, out)) {
    throw std::invalid_argument("a block hash is 64 lowercase hex digits");
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
