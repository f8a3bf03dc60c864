#include "imagerelay/manifest.hpp"

#include <nlohmann/json.hpp>

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

std::string Manifest::ToJson() const {
  nlohmann::ordered_json j;
  j["version"] = kVersion;
  j["size"] = size;
  j["chunk_size"] = chunk_size;
  if (digest.empty()) {
    j["digest"] = nullptr;  // still being computed (see the engine's digester)
  } else {
    j["digest"] = digest;
  }
  auto& list = j["chunks"] = nlohmann::ordered_json::array();
  for (const auto& c : chunks) {
    if (c.empty()) {
      list.push_back(nullptr);
    } else {
      list.push_back(c);
    }
  }
  return j.dump();
}

Manifest Manifest::FromJson(const std::string& text) {
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
