#include "imagerelay/ids.hpp"

#include <algorithm>
#include <random>

namespace imagerelay {
namespace {

bool IsLower(char c) { return c >= 'a' && c <= 'z'; }
bool IsUpper(char c) { return c >= 'A' && c <= 'Z'; }
bool IsDigit(char c) { return c >= '0' && c <= '9'; }
bool IsLetter(char c) { return IsLower(c) || IsUpper(c); }

bool IsPrefixedId(std::string_view id, char prefix) {
  if (id.size() != 10 || id[0] != prefix || id[1] != '-') return false;
  for (char c : id.substr(2)) {
    if (!IsLower(c) && !IsDigit(c)) return false;
  }
  return true;
}

std::mt19937_64& Rng() {
  thread_local std::mt19937_64 rng{[] {
    std::random_device device;
    return (static_cast<uint64_t>(device()) << 32) ^ device();
  }()};
  return rng;
}

std::string RandomId(char prefix) {
  static constexpr char kAlphabet[] = "0123456789abcdefghijklmnopqrstuvwxyz";
  std::uniform_int_distribution<int> pick(0, 35);
  std::string id{prefix, '-'};
  for (int i = 0; i < 8; ++i) id += kAlphabet[pick(Rng())];
  return id;
}

}  // namespace

bool IsValidImageId(std::string_view id) { return IsPrefixedId(id, 'm'); }
bool IsValidJobId(std::string_view id) { return IsPrefixedId(id, 'j'); }

bool IsValidRegionId(std::string_view id) {
  if (id.size() < 2 || id.size() > 32 || !IsLower(id[0])) return false;
  for (char c : id) {
    if (!IsLower(c) && !IsDigit(c) && c != '-') return false;
  }
  return true;
}

bool IsValidAccountId(std::string_view id) {
  if (id.empty() || id.size() > 64 || !(IsLetter(id[0]) || IsDigit(id[0]))) return false;
  for (char c : id) {
    if (!IsLetter(c) && !IsDigit(c) && c != '_' && c != '.' && c != '@' && c != '-') return false;
  }
  return true;
}

bool IsValidImageName(std::string_view name) {
  if (name.empty() || name.size() > 65 || !IsLetter(name[0])) return false;
  for (char c : name) {
    if (!IsLetter(c) && !IsDigit(c) && c != '-' && c != '_' && c != '.' && c != '/') return false;
  }
  return true;
}

std::string NewImageId() { return RandomId('m'); }
std::string NewJobId() { return RandomId('j'); }

bool IsLowerHex(std::string_view s, size_t length) {
  return s.size() == length && std::all_of(s.begin(), s.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

std::string RandomHex(size_t bytes) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < bytes; ++i) {
    auto b = static_cast<unsigned>(Rng()() & 0xff);
    out += kHex[b >> 4];
    out += kHex[b & 0xf];
  }
  return out;
}

std::string Quote(std::string_view value) {
  constexpr size_t kMax = 80;
  std::string out = "'";
  for (size_t i = 0; i < value.size() && i < kMax; ++i) {
    auto c = static_cast<unsigned char>(value[i]);
    if (c < 0x20 || c == 0x7f) {
      static constexpr char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 0xf];
    } else {
      out += static_cast<char>(c);
    }
  }
  if (value.size() > kMax) out += "...";
  out += "'";
  return out;
}

}  // namespace imagerelay
