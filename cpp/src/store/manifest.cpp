#include "imagerelay/manifest.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <optional>
#include <stdexcept>
#include <string_view>

#include "base/binary_codec.hpp"
#include "imagerelay/error.hpp"
#include "imagerelay/sha256.hpp"
#include "store/block_list.hpp"

namespace imagerelay {
namespace {

constexpr int kVersion = 1;
constexpr std::string_view kManifestDigestPrefix = "sha256:";

bool IsHex64(std::string_view s) {
  if (s.size() != 64) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

[[noreturn]] void InvalidManifest(const std::string& why) {
  throw ValidationError(codes::kInvalidParameter,
                        "manifest is not valid: " + why +
                            "; the manifest file is damaged or was not written by imagerelay");
}

uint64_t GetUint(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number_unsigned()) {
    InvalidManifest(std::string("\"") + key + "\" must be a non-negative integer");
  }
  return it->get<uint64_t>();
}

}  // namespace

uint64_t ChunkCount(uint64_t size, uint64_t chunk_size) {
  return chunk_size == 0 ? 0 : size / chunk_size + (size % chunk_size != 0 ? 1 : 0);
}

Manifest Manifest::InMemory(uint64_t size, uint64_t chunk_size,
                            const std::vector<std::string>& hashes, std::string digest) {
  Manifest m;
  m.size = size;
  m.chunk_size = chunk_size;
  m.digest = std::move(digest);
  m.blocks = MemoryBlockList(hashes.size());
  std::vector<std::byte> bytes(hashes.size() * kHashBytes);
  for (size_t i = 0; i < hashes.size(); ++i) HashToBytes(hashes[i], bytes.data() + i * kHashBytes);
  m.blocks->Write(0, bytes);
  return m;
}

std::vector<std::string> Manifest::Hashes(uint64_t first, size_t n) const {
  const uint64_t total = count();
  if (first >= total) return {};
  n = static_cast<size_t>(std::min<uint64_t>(n, total - first));
  std::vector<std::byte> bytes(n * kHashBytes);
  blocks->Read(first, bytes);
  std::vector<std::string> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) out.push_back(BytesToHash(bytes.data() + i * kHashBytes));
  return out;
}

std::string Manifest::Hash(uint64_t i) const {
  if (i >= count()) throw std::out_of_range("block outside the manifest");
  return Hashes(i, 1).front();
}

void Manifest::SetHash(uint64_t i, const std::string& hex) {
  std::byte bytes[kHashBytes];
  HashToBytes(hex, bytes);
  blocks->Write(i, bytes);
}

void Manifest::ForEachWindow(
    const std::function<void(uint64_t first, const std::vector<std::string>& hashes)>& fn) const {
  for (uint64_t first = 0; first < count(); first += kManifestWindow) {
    fn(first, Hashes(first, kManifestWindow));
  }
}

std::string Manifest::ChunkListDigest() const {
  Sha256 hash;
  const std::string head = "imagerelay chunk list v1\n" + std::to_string(size) + "\n" +
                           std::to_string(chunk_size) + "\n";
  hash.Update(head.data(), head.size());
  // Each entry as its hex name and a newline (a hole: the newline alone), a window at a time.
  std::vector<std::byte> raw;
  std::string text;
  for (uint64_t first = 0; first < count(); first += kManifestWindow) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(kManifestWindow, count() - first));
    raw.resize(n * kHashBytes);
    blocks->Read(first, raw);
    text.resize(n * (2 * kHashBytes + 1));
    char* at = text.data();
    for (size_t i = 0; i < n; ++i) {
      if (WriteHashHex(raw.data() + i * kHashBytes, at)) at += 2 * kHashBytes;
      *at++ = '\n';
    }
    hash.Update(text.data(), static_cast<size_t>(at - text.data()));
  }
  return hash.FinishHex();
}

uint64_t Manifest::ChunkLength(uint64_t i) const {
  uint64_t offset = ChunkOffset(i);
  if (offset >= size) return 0;
  return std::min(chunk_size, size - offset);
}

bool Manifest::operator==(const Manifest& other) const {
  if (size != other.size || chunk_size != other.chunk_size || digest != other.digest ||
      count() != other.count()) {
    return false;
  }
  for (uint64_t first = 0; first < count(); first += kManifestWindow) {
    if (Hashes(first, kManifestWindow) != other.Hashes(first, kManifestWindow)) return false;
  }
  return true;
}

namespace {

// Reads the exact compact form the first release wrote, without a DOM; false for anything
// else (other spacing, key order, escapes...), which the general parser below then reads.
class CompactManifestReader {
 public:
  explicit CompactManifestReader(std::string_view text) : text_(text) {}

  // The header fields into `m`, the chunk list into `hashes`.
  bool Read(Manifest& m, std::vector<std::string>& hashes) {
    if (!Literal(R"({"version":1,"size":)") || !Number(m.size) || !Literal(R"(,"chunk_size":)") ||
        !Number(m.chunk_size) || !Literal(R"(,"digest":)")) {
      return false;
    }
    if (!Literal("null")) {
      std::string_view digest;
      if (!QuotedHex(digest, kManifestDigestPrefix.size() + 64)) return false;
      m.digest = digest;
    }
    if (!Literal(R"(,"chunks":[)")) return false;
    if (m.chunk_size != 0)
      hashes.reserve(std::min<uint64_t>(m.size / m.chunk_size + 1, text_.size() / 4));
    if (!Literal("]")) {
      for (;;) {
        std::string_view hash;
        if (Literal("null")) {
          hashes.emplace_back();
        } else if (QuotedHex(hash, 64)) {
          hashes.emplace_back(hash);
        } else {
          return false;
        }
        if (Literal("]")) break;
        if (!Literal(",")) return false;
      }
    }
    return Literal("}") && pos_ == text_.size();
  }

 private:
  bool Literal(std::string_view s) {
    if (text_.substr(pos_, s.size()) != s) return false;
    pos_ += s.size();
    return true;
  }
  bool Number(uint64_t& out) {
    size_t start = pos_;
    uint64_t value = 0;
    while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9' && pos_ - start < 19) {
      value = value * 10 + static_cast<uint64_t>(text_[pos_] - '0');
      ++pos_;
    }
    out = value;
    return pos_ > start && (pos_ - start == 1 || text_[start] != '0');
  }
  // A quoted string of exactly `len` characters; Validate() then requires hex digits, so
  // no escape can hide in it.
  bool QuotedHex(std::string_view& out, size_t len) {
    if (pos_ + len + 2 > text_.size() || text_[pos_] != '"' || text_[pos_ + len + 1] != '"') {
      return false;
    }
    out = text_.substr(pos_ + 1, len);
    pos_ += len + 2;
    return true;
  }
  std::string_view text_;
  size_t pos_ = 0;
};

// The rules every manifest must keep, however it was read.
void Validate(const Manifest& m, const std::vector<std::string>& hashes) {
  if (m.chunk_size == 0) InvalidManifest("\"chunk_size\" must be greater than 0");
  if (!m.digest.empty() &&
      (!m.digest.starts_with(kManifestDigestPrefix) ||
       !IsHex64(std::string_view(m.digest).substr(kManifestDigestPrefix.size())))) {
    InvalidManifest("\"digest\" must be \"sha256:\" and 64 lowercase hex digits");
  }
  uint64_t expected = m.size / m.chunk_size + (m.size % m.chunk_size != 0 ? 1 : 0);
  if (hashes.size() != expected) {
    InvalidManifest("it lists " + std::to_string(hashes.size()) + " chunks where size " +
                    std::to_string(m.size) + " and chunk size " + std::to_string(m.chunk_size) +
                    " need " + std::to_string(expected));
  }
  for (size_t i = 0; i < hashes.size(); ++i) {
    if (!hashes[i].empty() && !IsHex64(hashes[i])) {
      InvalidManifest("chunk " + std::to_string(i) + " must be null or 64 lowercase hex digits");
    }
  }
}

}  // namespace

Manifest Manifest::FromJson(const std::string& text) {
  {
    Manifest m;
    std::vector<std::string> hashes;
    if (CompactManifestReader(text).Read(m, hashes)) {
      Validate(m, hashes);
      return InMemory(m.size, m.chunk_size, hashes, std::move(m.digest));
    }
  }
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) InvalidManifest("it is not JSON");
  if (!j.is_object()) InvalidManifest("it is not a JSON object");

  auto version = j.find("version");
  if (version == j.end() || !version->is_number_integer() || version->get<int64_t>() != kVersion) {
    InvalidManifest("\"version\" must be 1");
  }
  Manifest m;
  m.size = GetUint(j, "size");
  m.chunk_size = GetUint(j, "chunk_size");
  if (m.chunk_size == 0) InvalidManifest("\"chunk_size\" must be greater than 0");

  auto digest = j.find("digest");
  if (digest == j.end() || !(digest->is_string() || digest->is_null())) {
    InvalidManifest("\"digest\" must be a string, or null while it is being computed");
  }
  if (digest->is_string()) m.digest = digest->get<std::string>();
  if (digest->is_string() &&
      (!m.digest.starts_with(kManifestDigestPrefix) ||
       !IsHex64(std::string_view(m.digest).substr(kManifestDigestPrefix.size())))) {
    InvalidManifest("\"digest\" must be \"sha256:\" and 64 lowercase hex digits");
  }

  auto chunks = j.find("chunks");
  if (chunks == j.end() || !chunks->is_array()) InvalidManifest("\"chunks\" must be a list");
  uint64_t expected = m.size / m.chunk_size + (m.size % m.chunk_size != 0 ? 1 : 0);
  if (chunks->size() != expected) {
    InvalidManifest("it lists " + std::to_string(chunks->size()) + " chunks where size " +
                    std::to_string(m.size) + " and chunk size " + std::to_string(m.chunk_size) +
                    " need " + std::to_string(expected));
  }
  std::vector<std::string> hashes;
  hashes.reserve(chunks->size());
  for (const auto& c : *chunks) {
    if (c.is_null()) {
      hashes.emplace_back();
    } else if (c.is_string() && IsHex64(c.get_ref<const std::string&>())) {
      hashes.push_back(c.get<std::string>());
    } else {
      InvalidManifest("chunk " + std::to_string(hashes.size()) +
                      " must be null or 64 lowercase hex digits");
    }
  }
  return InMemory(m.size, m.chunk_size, hashes, std::move(m.digest));
}

}  // namespace imagerelay
