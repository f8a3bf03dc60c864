#include "imagerelay/store.hpp"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <exception>
#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string_view>
#include <system_error>
#include <thread>
#include <unordered_set>

#include "base/parse_util.hpp"
#include "imagerelay/error.hpp"
#include "store/local_store.hpp"
#include "store/pack_store.hpp"
#include "store/s3_store.hpp"
#include "store/store_factory.hpp"

namespace imagerelay {
namespace {

constexpr std::string_view kFileScheme = "file://";
constexpr std::string_view kS3Scheme = "s3://";
constexpr const char* kForms =
    "use a directory path (/data/bj), a file:// URI (file:///data/bj) or an S3 URI "
    "(s3://bucket/prefix)";

// The URI for a message: NULs made visible, and no query string, which may carry settings
// that are secret.
std::string Shown(std::string_view uri) {
  std::string_view shown = uri.substr(0, uri.find('?'));
  std::string out;
  for (char c : shown.substr(0, 200)) out += c == '\0' ? std::string("\\0") : std::string(1, c);
  if (shown.size() > 200) out += "...";
  if (shown.size() < uri.size()) out += "?...";
  return "\"" + out + "\"";
}

bool IsAlnumLower(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }

// The scheme of "scheme://...", lowercased, or nullopt for a plain path.
std::optional<std::string> SchemeOf(std::string_view uri) {
  size_t sep = uri.find("://");
  if (sep == std::string_view::npos || sep == 0) return std::nullopt;
  std::string scheme;
  for (size_t i = 0; i < sep; ++i) {
    char c = uri[i];
    bool ok = std::isalpha(static_cast<unsigned char>(c)) ||
              (i > 0 &&
               (std::isdigit(static_cast<unsigned char>(c)) || c == '+' || c == '-' || c == '.'));
    if (!ok) return std::nullopt;
    scheme += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  return scheme;
}

// Percent-decodes the path of a file:// URI; nullopt when an escape is malformed.
std::optional<std::string> DecodePath(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '%') {
      out += s[i];
      continue;
    }
    if (i + 2 >= s.size()) return std::nullopt;
    int hi = HexValue(s[i + 1]);
    int lo = HexValue(s[i + 2]);
    if (hi < 0 || lo < 0) return std::nullopt;
    out += static_cast<char>(hi * 16 + lo);
    i += 2;
  }
  return out;
}

std::string CheckS3Uri(const std::string& uri) {
  std::string_view rest = std::string_view(uri).substr(kS3Scheme.size());
  size_t end = rest.find_first_of("/?");
  std::string_view bucket = rest.substr(0, end);
  bool bucket_ok = bucket.size() >= 3 && bucket.size() <= 63 && IsAlnumLower(bucket.front()) &&
                   IsAlnumLower(bucket.back()) &&
                   std::all_of(bucket.begin(), bucket.end(),
                               [](char c) { return IsAlnumLower(c) || c == '.' || c == '-'; });
  if (!bucket_ok) {
    return "invalid S3 bucket name in store URI " + Shown(uri) +
           ": a bucket name is 3 to 63 lowercase letters, digits, '.' or '-', starting and "
           "ending with a letter or digit";
  }
  if (std::any_of(rest.begin(), rest.end(),
                  [](char c) { return static_cast<unsigned char>(c) <= 0x20 || c == 0x7f; })) {
    return "store URI " + Shown(uri) + " contains spaces or control characters; " +
           "percent-encode them";
  }
  size_t q = rest.find('?');
  if (q != std::string_view::npos) {
    std::string_view query = rest.substr(q + 1);
    size_t pos = 0;
    while (pos <= query.size()) {
      size_t amp = query.find('&', pos);
      std::string_view param = query.substr(pos, amp == std::string_view::npos ? amp : amp - pos);
      size_t eq = param.find('=');
      if (param.empty() || eq == 0) {
        return "malformed query in store URI " + Shown(uri) +
               ": give settings as ?key=value&key=value";
      }
      if (amp == std::string_view::npos) break;
      pos = amp + 1;
    }
  }
  return "";
}

}  // namespace

std::vector<bool> Store::HasChunks(const std::vector<std::string>& hashes,
                                   const CancelToken* cancel,
                                   const std::vector<uint64_t>& lengths) {
  if (!lengths.empty() && lengths.size() != hashes.size()) {
    throw std::invalid_argument("HasChunks: one length per hash");
  }
  std::vector<char> present(hashes.size(), 0);
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  std::exception_ptr error;  // written by the first thread that sets `failed`
  auto work = [&] {
    while (!failed) {
      const size_t i = next.fetch_add(1);
      if (i >= hashes.size()) return;
      try {
        present[i] = (lengths.empty() ? HasChunk(hashes[i], cancel)
                                      : HasChunkOfLength(hashes[i], lengths[i], cancel))
                         ? 1
                         : 0;
      } catch (...) {
        if (!failed.exchange(true)) error = std::current_exception();
        return;
      }
    }
  };
  // A thread per kPerThread lookups at least, so that a short list costs no thread at all.
  constexpr size_t kPerThread = 32;
  const size_t threads = std::clamp<size_t>(hashes.size() / kPerThread, 1,
                                            std::max<size_t>(1, ExistenceCheckThreads()));
  std::vector<std::thread> pool;
  for (size_t t = 1; t < threads; ++t) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
  if (error) std::rethrow_exception(error);
  return {present.begin(), present.end()};
}

DistinctChunks DistinctChunksOf(const Manifest& manifest, uint64_t first,
                                const std::vector<std::string>& window) {
  DistinctChunks chunks;
  std::unordered_set<std::string_view> seen;
  for (size_t i = 0; i < window.size(); ++i) {
    if (window[i].empty() || !seen.insert(window[i]).second) continue;
    chunks.hashes.push_back(window[i]);
    chunks.lengths.push_back(manifest.ChunkLength(first + i));
  }
  return chunks;
}

MissingChunksReport MissingChunks(Store& store, const Manifest& manifest,
                                  const CancelToken* cancel) {
  MissingChunksReport report;
  manifest.ForEachWindow([&](uint64_t first, const std::vector<std::string>& window) {
    const DistinctChunks chunks = DistinctChunksOf(manifest, first, window);
    const std::vector<bool> present = store.HasChunks(chunks.hashes, cancel, chunks.lengths);
    for (size_t k = 0; k < chunks.hashes.size(); ++k) {
      if (present[k]) continue;
      if (report.count++ == 0) report.first = chunks.hashes[k];
    }
  });
  return report;
}

std::string CheckStoreUri(const std::string& uri) {
  if (uri.empty()) return std::string("the store URI is empty; ") + kForms;
  if (uri.find('\0') != std::string::npos) {
    return "store URI " + Shown(uri) + " contains a NUL byte; " + kForms;
  }
  std::optional<std::string> scheme = SchemeOf(uri);
  if (!scheme) return "";  // a plain path
  if (*scheme == "s3") return CheckS3Uri(uri);
  if (*scheme == "file") {
    std::optional<std::string> path = DecodePath(std::string_view(uri).substr(kFileScheme.size()));
    if (!path || path->empty() || path->front() != '/') {
      return "store URI " + Shown(uri) +
             " is not a file URI with an absolute path; write it as file:///absolute/path";
    }
    if (path->find('\0') != std::string::npos) {
      return "store URI " + Shown(uri) + " encodes a NUL byte; " + kForms;
    }
    return "";
  }
  return "store URI " + Shown(uri) + " has the unsupported scheme \"" + *scheme + "\"; " + kForms;
}

std::optional<std::filesystem::path> LocalStoreDirectory(const std::string& uri) {
  if (!CheckStoreUri(uri).empty()) return std::nullopt;
  std::optional<std::string> scheme = SchemeOf(uri);
  if (scheme == "s3") return std::nullopt;
  std::filesystem::path path =
      scheme ? *DecodePath(std::string_view(uri).substr(kFileScheme.size())) : uri;
  std::error_code ec;
  std::filesystem::path absolute = std::filesystem::absolute(path, ec);
  return ec ? path : absolute;
}

std::unique_ptr<Store> OpenStore(const std::string& uri) { return OpenStore(uri, {}, {}); }

std::unique_ptr<Store> OpenStore(const std::string& uri, const sigv4::Credentials& credentials,
                                 const std::filesystem::path& cache_dir, bool makes_local_root) {
  if (std::string problem = CheckStoreUri(uri); !problem.empty()) {
    throw ValidationError(codes::kInvalidParameter, problem);
  }
  std::optional<std::string> scheme = SchemeOf(uri);
  if (scheme == "s3") {
    auto s3 = std::make_unique<S3Store>(uri, credentials);
    if (!cache_dir.empty()) s3->SetIndexDir(cache_dir);
    PackFiles& packs = *s3;
    return std::make_unique<PackStore>(std::move(s3), packs);
  }
  auto local = std::make_unique<LocalStore>(
      *LocalStoreDirectory(uri), uri, LocalStore::Writes::kPacks,
      makes_local_root ? LocalStore::Root::kMadeIfMissing : LocalStore::Root::kMustExist);
  PackFiles& packs = *local;
  return std::make_unique<PackStore>(std::move(local), packs);
}

SweepResult SweepStore(Store& store, const std::set<std::string>& pinned) {
  store.Flush();  // chunks still held back by a writer become visible, and so sweepable
  store.RemoveLeftovers();
  MarkSet marked;
  for (const std::string& hash : pinned) marked.Add(hash);
  for (const std::string& id : store.ListManifests()) {
    // A damaged manifest throws here: sweeping without knowing its chunks could lose them.
    std::optional<Manifest> manifest = store.GetManifest(id);
    if (!manifest) continue;
    manifest->ForEachWindow([&](uint64_t, const std::vector<std::string>& window) {
      for (const std::string& chunk : window) {
        if (!chunk.empty()) marked.Add(chunk);
      }
    });
  }
  return store.SweepUnmarked(marked);
}

size_t Store::GetChunkInto(const std::string& hash, std::span<std::byte> out,
                           const CancelToken* cancel) {
  // Kept by the thread from chunk to chunk: a store of chunk files (an earlier release's, a
  // test's) reads whole files, whose length it learns from the file.
  thread_local std::vector<std::byte> whole;
  GetChunk(hash, whole, cancel);
  if (whole.size() != out.size()) {
    const size_t found = whole.size();
    whole.clear();
    throw WrongLengthChunk(hash, uri(), found, out.size());
  }
  std::copy(whole.begin(), whole.end(), out.begin());
  return out.size();
}

DamagedChunkError WrongLengthChunk(const std::string& hash, const std::string& store_uri,
                                   uint64_t found, uint64_t expected) {
  return DamagedChunkError(hash, "chunk " + hash + " in store " + store_uri + " has " +
                                     std::to_string(found) + " bytes where " +
                                     std::to_string(expected) +
                                     " were expected; run `imagerelay scrub`");
}

std::vector<std::string> Store::ListChunksAfter(const std::string& after, size_t limit) {
  std::vector<std::string> all = ListChunks();
  std::sort(all.begin(), all.end());
  auto first = std::upper_bound(all.begin(), all.end(), after);
  auto last = first + static_cast<ptrdiff_t>(std::min<size_t>(limit, all.end() - first));
  return {first, last};
}

SweepResult Store::SweepUnmarked(const MarkSet& marked) {
  auto* sizes = dynamic_cast<ChunkSizeProbe*>(this);
  SweepResult result;
  for (const std::string& hash : ListChunks()) {
    if (marked.Contains(hash)) {
      ++result.chunks_kept;
      continue;
    }
    uint64_t bytes = 0;
    if (sizes) bytes = sizes->StoredChunkSize(hash).value_or(0);
    DeleteChunk(hash);
    ++result.chunks_removed;
    result.bytes_removed += bytes;
  }
  return result;
}

}  // namespace imagerelay
