#include "imagerelay/manifest.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <optional>
#include <string_view>

#include "imagerelay/error.hpp"
#include "imagerelay/sha256.hpp"

namespace imagerelay {
namespace {

constexpr int kVersion = 1;
constexpr std::string_view kDigestPrefix = "sha256:";

bool IsHex64(std::string_view s) {
  if (s.size() != 64) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

[[noreturn]] void Invalid(const std::string& why) {
  throw ValidationError(codes::kInvalidParameter,
                        "manifest is not valid: " + why +
                            "; the manifest file is damaged or was not written by imagerelay");
}

uint64_t GetUint(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number_unsigned()) {
    Invalid(std::string("\"") + key + "\" must be a non-negative integer");
  }
  return it->get<uint64_t>();
}

}  // namespace

std::string Manifest::ChunkListDigest() const {
  Sha256 hash;
  const std::string head = "imagerelay chunk list v1\n" + std::to_string(size) + "\n" +
                           std::to_string(chunk_size) + "\n";
  hash.Update(head.data(), head.size());
  for (const std::string& chunk : chunks) {
    hash.Update(chunk.data(), chunk.size());
    hash.Update("\n", 1);
  }
  return hash.FinishHex();
}

uint64_t Manifest::ChunkLength(size_t i) const {
  uint64_t offset = ChunkOffset(i);
  if (offset >= size) return 0;
  return std::min(chunk_size, size - offset);
}

// Written by hand (not through a JSON DOM): a 64 KiB-block manifest lists tens of thousands
// of chunks, and a copy reads several manifests; the DOM's allocation per entry dominated a
// small copy's time. The text is the same compact JSON as before.
std::string Manifest::ToJson() const {
  std::string out;
  out.reserve(96 + chunks.size() * 67);
  out += R"({"version":)" + std::to_string(kVersion) + R"(,"size":)" + std::to_string(size) +
         R"(,"chunk_size":)" + std::to_string(chunk_size) + R"(,"digest":)";
  // still being computed when empty (see the engine's digester)
  out += digest.empty() ? std::string("null") : "\"" + digest + "\"";
  out += R"(,"chunks":[)";
  for (size_t i = 0; i < chunks.size(); ++i) {
    if (i != 0) out += ',';
    if (chunks[i].empty()) {
      out += "null";
    } else {
      out += '"';
      out += chunks[i];
      out += '"';
    }
  }
  out += "]}";
  return out;
}

namespace {

// Reads the exact compact form ToJson writes, without a DOM; nullopt for anything else (other
// spacing, key order, escapes...), which the general parser below then reads.
class CompactManifestReader {
 public:
  explicit CompactManifestReader(std::string_view text) : text_(text) {}

  std::optional<Manifest> Read() {
    Manifest m;
    if (!Literal(R"({"version":1,"size":)") || !Number(m.size) ||
        !Literal(R"(,"chunk_size":)") || !Number(m.chunk_size) || !Literal(R"(,"digest":)")) {
      return std::nullopt;
    }
    if (!Literal("null")) {
      std::string_view digest;
      if (!QuotedHex(digest, kDigestPrefix.size() + 64)) return std::nullopt;
      m.digest = digest;
    }
    if (!Literal(R"(,"chunks":[)")) return std::nullopt;
    if (m.chunk_size != 0) m.chunks.reserve(std::min<uint64_t>(m.size / m.chunk_size + 1, text_.size() / 4));
    if (!Literal("]")) {
      for (;;) {
        std::string_view hash;
        if (Literal("null")) {
          m.chunks.emplace_back();
        } else if (QuotedHex(hash, 64)) {
          m.chunks.emplace_back(hash);
        } else {
          return std::nullopt;
        }
        if (Literal("]")) break;
        if (!Literal(",")) return std::nullopt;
      }
    }
    if (!Literal("}") || pos_ != text_.size()) return std::nullopt;
    return m;
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
void Validate(const Manifest& m) {
  if (m.chunk_size == 0) Invalid("\"chunk_size\" must be greater than 0");
  if (!m.digest.empty() && (!m.digest.starts_with(kDigestPrefix) ||
                            !IsHex64(std::string_view(m.digest).substr(kDigestPrefix.size())))) {
    Invalid("\"digest\" must be \"sha256:\" and 64 lowercase hex digits");
  }
  uint64_t expected = m.size / m.chunk_size + (m.size % m.chunk_size != 0 ? 1 : 0);
  if (m.chunks.size() != expected) {
    Invalid("it lists " + std::to_string(m.chunks.size()) + " chunks where size " +
            std::to_string(m.size) + " and chunk size " + std::to_string(m.chunk_size) +
            " need " + std::to_string(expected));
  }
  for (size_t i = 0; i < m.chunks.size(); ++i) {
    if (!m.chunks[i].empty() && !IsHex64(m.chunks[i])) {
      Invalid("chunk " + std::to_string(i) + " must be null or 64 lowercase hex digits");
    }
  }
}

}  // namespace

Manifest Manifest::FromJson(const std::string& text) {
  if (std::optional<Manifest> compact = CompactManifestReader(text).Read()) {
    Validate(*compact);
    return std::move(*compact);
  }
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) Invalid("it is not JSON");
  if (!j.is_object()) Invalid("it is not a JSON object");

  auto version = j.find("version");
  if (version == j.end() || !version->is_number_integer() ||
      version->get<int64_t>() != kVersion) {
    Invalid("\"version\" must be 1");
  }
  Manifest m;
  m.size = GetUint(j, "size");
  m.chunk_size = GetUint(j, "chunk_size");
  if (m.chunk_size == 0) Invalid("\"chunk_size\" must be greater than 0");

  auto digest = j.find("digest");
  if (digest == j.end() || !(digest->is_string() || digest->is_null())) {
    Invalid("\"digest\" must be a string, or null while it is being computed");
  }
  if (digest->is_string()) m.digest = digest->get<std::string>();
  if (digest->is_string() && (!m.digest.starts_with(kDigestPrefix) ||
      !IsHex64(std::string_view(m.digest).substr(kDigestPrefix.size())))) {
    Invalid("\"digest\" must be \"sha256:\" and 64 lowercase hex digits");
  }

  auto chunks = j.find("chunks");
  if (chunks == j.end() || !chunks->is_array()) Invalid("\"chunks\" must be a list");
  uint64_t expected = m.size / m.chunk_size + (m.size % m.chunk_size != 0 ? 1 : 0);
  if (chunks->size() != expected) {
    Invalid("it lists " + std::to_string(chunks->size()) + " chunks where size " +
            std::to_string(m.size) + " and chunk size " + std::to_string(m.chunk_size) +
            " need " + std::to_string(expected));
  }
  m.chunks.reserve(chunks->size());
  for (const auto& c : *chunks) {
    if (c.is_null()) {
      m.chunks.emplace_back();
    } else if (c.is_string() && IsHex64(c.get_ref<const std::string&>())) {
      m.chunks.push_back(c.get<std::string>());
    } else {
      Invalid("chunk " + std::to_string(m.chunks.size()) +
              " must be null or 64 lowercase hex digits");
    }
  }
  return m;
}

}  // namespace imagerelay
