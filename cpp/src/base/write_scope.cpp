#include "base/write_scope.hpp"

#include <string>

#include "base/binary_codec.hpp"
#include "imagerelay/sha256.hpp"

namespace imagerelay {
namespace {

uint64_t ScopeOf(std::string_view owner) {
  const std::string named = "imagerelay write scope:" + std::string(owner);
  std::byte digest[kHashBytes];
  HashToBytes(Sha256Hex(named.data(), named.size()), digest);
  return GetLe(digest, 8);
}

thread_local uint64_t current_scope = ScopeOf("");

}  // namespace

WriteScope::WriteScope(std::string_view owner) : WriteScope(ScopeOf(owner)) {}

WriteScope::WriteScope(uint64_t value) : previous_(current_scope) { current_scope = value; }

WriteScope::~WriteScope() { current_scope = previous_; }

uint64_t WriteScope::Current() { return current_scope; }

}  // namespace imagerelay
