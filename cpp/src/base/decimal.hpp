// Numbers a server sends as text (Content-Length, a listing's <Size>): plain decimal digits
// only. strtoull would take "-1" as 2^64-1, " 12" and "12abc" as 12 (found by fuzzing).
#pragma once

#include <charconv>
#include <cstdint>
#include <optional>
#include <string_view>

namespace imagerelay {

// The value of `text` if it is 1 to 20 decimal digits that fit in 64 bits; nullopt otherwise.
inline std::optional<uint64_t> ParseDecimal(std::string_view text) {
  if (text.empty() || text.size() > 20 || text.front() < '0' || text.front() > '9') {
    return std::nullopt;
  }
  uint64_t value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return value;
}

}  // namespace imagerelay
