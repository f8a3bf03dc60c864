// Identifier formats (DESIGN.md §1) and fresh ids.
#pragma once

#include <string>
#include <string_view>

namespace imagerelay {

bool IsValidImageId(std::string_view id);    // m- + 8 of [0-9a-z]
bool IsValidJobId(std::string_view id);      // j- + 8 of [0-9a-z]
bool IsValidRegionId(std::string_view id);   // ^[a-z][a-z0-9-]{1,31}$
bool IsValidAccountId(std::string_view id);  // ^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$
// 1-65 chars, starts with a letter, then letters, digits, -_./
bool IsValidImageName(std::string_view name);

// Random ids; the catalog refuses ids ever used, and callers draw again.
std::string NewImageId();
std::string NewJobId();
// A random hex nonce (for temporary names and worker identities).
std::string RandomHex(size_t bytes);
// True if `s` is `length` lowercase hex digits (chunk names, pack names, fan-out folders).
bool IsLowerHex(std::string_view s, size_t length);

// Quotes a user-supplied value for a message: printable, bounded, no control bytes.
std::string Quote(std::string_view value);

}  // namespace imagerelay
