// Byte counts as people read them in messages: "300 GiB", "1.5 MiB", "512 bytes".
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>

namespace imagerelay {

inline std::string HumanBytes(uint64_t bytes) {
  if (bytes < 1024) return std::to_string(bytes) + (bytes == 1 ? " byte" : " bytes");
  static constexpr const char* kUnits[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  double value = static_cast<double>(bytes) / 1024;
  int unit = 0;
  while (value >= 1024 && unit < 5) {
    value /= 1024;
    ++unit;
  }
  char text[32];
  // One decimal, dropped when it is 0 ("201 GiB", not "201.0 GiB").
  std::snprintf(text, sizeof text, "%.1f", value);
  std::string number = text;
  if (number.ends_with(".0")) number.resize(number.size() - 2);
  return number + " " + kUnits[unit];
}

// HumanBytes and the exact count: "256 KiB (262144 bytes)". For sizes compared with limits,
// where a rounded figure could hide why one is over the other.
inline std::string HumanAndExactBytes(uint64_t bytes) {
  if (bytes < 1024) return HumanBytes(bytes);
  return HumanBytes(bytes) + " (" + std::to_string(bytes) + " bytes)";
}

}  // namespace imagerelay
