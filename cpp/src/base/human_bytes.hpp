// Byte counts as people read them in messages, as the CLI prints them (Python's
// collections.human_size): "512 B", "1.5 GiB", "300.0 GiB" (KiB to TiB, one decimal).
#pragma once

#include <cstdint>
#include <cstdio>
#include <iterator>
#include <string>

namespace imagerelay {

inline std::string HumanBytes(uint64_t bytes) {
  static constexpr const char* kUnits[] = {"KiB", "MiB", "GiB", "TiB"};
  if (bytes < 1024) return std::to_string(bytes) + " B";
  double value = static_cast<double>(bytes) / 1024;
  size_t unit = 0;
  while (value >= 1024 && unit + 1 < std::size(kUnits)) {
    value /= 1024;
    ++unit;
  }
  char text[32];
  std::snprintf(text, sizeof(text), "%.1f %s", value, kUnits[unit]);
  return text;
}

// HumanBytes and the exact count: "256.0 KiB (262144 bytes)". For sizes compared with
// limits, where a rounded figure could hide why one is over the other.
inline std::string HumanAndExactBytes(uint64_t bytes) {
  if (bytes < 1024) return HumanBytes(bytes);
  return HumanBytes(bytes) + " (" + std::to_string(bytes) + " bytes)";
}

}  // namespace imagerelay
