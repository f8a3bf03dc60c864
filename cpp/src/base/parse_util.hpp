// Small helpers that parsers of URIs, manifests and options share: one definition each, so
// that no two source files define the same helper (the sanitizer builds put several source
// files into one translation unit).
#pragma once

#include <string>

#include "imagerelay/error.hpp"

namespace imagerelay {

// Throws the InvalidParameter ValidationError with `message`.
[[noreturn]] inline void Invalid(const std::string& message) {
  throw ValidationError(codes::kInvalidParameter, message);
}

// The value of a hex digit (either case), or -1 if `c` is not one.
inline int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace imagerelay
