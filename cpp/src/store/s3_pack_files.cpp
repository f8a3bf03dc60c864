// S3Store's packs (pack_files.hpp): objects under <prefix>/packs/<first two hex>/.
#include <cinttypes>
#include <cstdio>
#include <cstdlib>

#include "base/decimal.hpp"
#include "imagerelay/error.hpp"
#include "imagerelay/sha256.hpp"
#include "store/s3_store.hpp"

namespace imagerelay {
namespace {

// Packs are big: a few more tries than a small object gets, each a whole PUT.
constexpr int kPackAttempts = 8;

std::filesystem::path DefaultIndexDir() {
  if (const char* dir = std::getenv("IMAGERELAY_CACHE_DIR"); dir && *dir) return dir;
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg && *xdg) {
    return std::filesystem::path(xdg) / "imagerelay";
  }
  const char* home = std::getenv("HOME");
  return std::filesystem::path(home && *home ? home : "/tmp") / ".cache" / "imagerelay";
}

}  // namespace

std::string S3Store::PackKey(const std::string& name) const {
  if (!IsPackName(name)) {
    throw ValidationError(codes::kInvalidParameter,
                          "invalid pack name: a pack is named by 32 lowercase hex digits");
  }
  return Key("packs/" + name.substr(0, 2) + "/" + name);
}

void S3Store::PutPack(const std::string& name, std::span<const std::byte> bytes,
                      const CancelToken* cancel) {
  Call put;
  put.method = "PUT";
  put.key = PackKey(name);
  put.body = bytes;
  put.attempts = kPackAttempts;
  // Signed with the body's SHA-256 (the client computes it): the server refuses other bytes.
  HttpResponse response = client_.Perform(put, cancel);
  if (!IsSuccessStatus(response.status)) Fail("PUT of pack " + name, response);
}

bool S3Store::ReadPack(const std::string& name, uint64_t offset, std::span<std::byte> out,
                       const CancelToken* cancel) {
  if (out.empty()) return true;
  std::vector<std::byte> body;
  body.reserve(out.size());
  Call get;
  get.key = PackKey(name);
  get.headers = {
      {"range", "bytes=" + std::to_string(offset) + "-" + std::to_string(offset + out.size() - 1)}};
  get.sink = &body;
  get.max_body = out.size() + 4096;
  HttpResponse response = client_.Perform(get, cancel);
  if (response.status == 404 || response.status == 416) return false;
  if (!IsSuccessStatus(response.status)) {
    response.body.assign(reinterpret_cast<const char*>(body.data()),
                         std::min<size_t>(body.size(), 4096));
    Fail("ranged GET of pack " + name, response);
  }
  if (response.status == 200) {
    // A server that ignores ranges sends the whole object: take the range from it.
    if (body.size() < offset + out.size()) return false;
    std::copy_n(body.begin() + static_cast<ptrdiff_t>(offset), out.size(), out.begin());
    return true;
  }
  // 206: the range the answer says it holds, "bytes <first>-<last>/<size>". A body of
  // another length is an answer cut short or miscounted on the way (not a pack that ends
  // first): asked again.
  const std::string range = response.Header("content-range");
  uint64_t first = 0;
  uint64_t last = 0;
  if (std::sscanf(range.c_str(), "bytes %" SCNu64 "-%" SCNu64, &first, &last) == 2 &&
      last >= first && body.size() != last - first + 1) {
    throw TransientError("S3 ranged GET of pack " + name + " in store " + location().display +
                         " returned " + std::to_string(body.size()) + " bytes for " + range);
  }
  if (body.size() != out.size()) return false;  // the pack ends first
  std::copy(body.begin(), body.end(), out.begin());
  return true;
}

std::optional<PackStat> S3Store::StatPack(const std::string& name) {
  Call head;
  head.method = "HEAD";
  head.key = PackKey(name);
  HttpResponse response = client_.Perform(head);
  if (response.status == 404) return std::nullopt;
  if (!IsSuccessStatus(response.status)) Fail("HEAD of pack " + name, response);
  const std::optional<uint64_t> length = ParseDecimal(response.Header("content-length"));
  if (!length) {
    throw TransientError("S3 HEAD of pack " + name + " in store " + location().display +
                         " gave no Content-Length");
  }
  return PackStat{*length, {}};
}

void S3Store::DeletePack(const std::string& name) { DeleteKey(PackKey(name), "a pack"); }

std::vector<std::pair<std::string, uint64_t>> S3Store::ListPacks() {
  const std::string prefix = Key("packs/");
  std::vector<uint64_t> sizes;
  std::vector<std::string> keys = *ListKeysUpTo(prefix, SIZE_MAX, &sizes);
  std::vector<std::pair<std::string, uint64_t>> packs;
  for (size_t i = 0; i < keys.size(); ++i) {
    const std::string& key = keys[i];
    const size_t slash = key.rfind('/');
    const std::string name = slash == std::string::npos ? key : key.substr(slash + 1);
    if (IsPackName(name) && key == PackKey(name)) {
      packs.emplace_back(name, i < sizes.size() ? sizes[i] : 0);
    }
  }
  return packs;
}

std::filesystem::path S3Store::CacheDir() const {
  return index_dir_.empty() ? DefaultIndexDir() : index_dir_;
}

std::filesystem::path S3Store::IndexFile() {
  const std::filesystem::path dir = CacheDir();
  // One cache per store and per set of credentials' view of it: the URI names the bucket,
  // prefix and endpoint (its query holds no secret).
  const S3Location& loc = location();
  const std::string where = loc.scheme + "://" + loc.host + "/" + loc.bucket + "/" + loc.prefix;
  const std::string id = Sha256Hex(where.data(), where.size());
  return dir / ("s3-" + id.substr(0, 32) + ".sqlite");
}

}  // namespace imagerelay
