#include "store/s3_store.hpp"

#include <algorithm>
#include <atomic>
#include <charconv>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "base/decimal.hpp"
#include "base/parse_util.hpp"
#include "imagerelay/error.hpp"
#include "imagerelay/ids.hpp"
#include "imagerelay/sha256.hpp"

namespace imagerelay {
namespace {

constexpr int kChunkAttempts = 3;  // the transfer engine retries chunks again on top
constexpr int kListAttempts = 4;   // a listing page that came back cut short, asked again

// Objects Check writes and deletes at once to prove the store writable.
constexpr std::string_view kProbePrefix = ".imagerelay-probe-";

constexpr std::string_view kBase64 =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

// x-amz-checksum-sha256 carries the digest in base64; chunk names are hex (checked by ChunkKey).
std::string HexToBase64(std::string_view hex) {
  std::string bytes;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    unsigned byte = 0;
    std::from_chars(hex.data() + i, hex.data() + i + 2, byte, 16);
    bytes += static_cast<char>(byte);
  }
  std::string out;
  for (size_t i = 0; i < bytes.size(); i += 3) {
    uint32_t n = static_cast<uint8_t>(bytes[i]) << 16;
    if (i + 1 < bytes.size()) n |= static_cast<uint8_t>(bytes[i + 1]) << 8;
    if (i + 2 < bytes.size()) n |= static_cast<uint8_t>(bytes[i + 2]);
    out += kBase64[(n >> 18) & 63];
    out += kBase64[(n >> 12) & 63];
    out += i + 1 < bytes.size() ? kBase64[(n >> 6) & 63] : '=';
    out += i + 2 < bytes.size() ? kBase64[n & 63] : '=';
  }
  return out;
}

// "" for anything that is not base64.
std::string Base64ToHex(std::string_view b64) {
  std::string out;
  uint32_t bits = 0;
  int count = 0;
  for (char c : b64) {
    if (c == '=') break;
    size_t v = kBase64.find(c);
    if (v == std::string_view::npos) return "";
    bits = (bits << 6) | static_cast<uint32_t>(v);
    count += 6;
    if (count >= 8) {
      count -= 8;
      unsigned byte = (bits >> count) & 0xff;
      out += "0123456789abcdef"[byte >> 4];
      out += "0123456789abcdef"[byte & 15];
    }
  }
  return out;
}

}  // namespace

S3Store::S3Store(const std::string& uri, sigv4::Credentials credentials, HttpOptions http)
    : client_(ParseS3Uri(uri), std::move(credentials), std::move(http)) {}

std::string S3Store::Key(const std::string& rel) const {
  return location().prefix.empty() ? rel : location().prefix + "/" + rel;
}

std::string S3Store::ChunkKey(const std::string& hash) const {
  if (!IsChunkHash(hash)) {
    Invalid("invalid chunk name \"" + hash.substr(0, 80) +
            "\": a chunk is named by its SHA-256 as 64 lowercase hex digits");
  }
  return Key("chunks/" + hash.substr(0, 2) + "/" + hash);
}

std::string S3Store::RecordKey(const char* dir, const std::string& image_id,
                               std::string_view suffix) const {
  if (!IsImageId(image_id)) {
    Invalid("invalid image id \"" + image_id.substr(0, 80) +
            "\": an image id is \"m-\" followed by 8 of [0-9a-z]");
  }
  return Key(std::string(dir) + "/" + image_id + std::string(suffix));
}

void S3Store::Fail(const std::string& what, const HttpResponse& response) const {
  std::string message =
      "S3 " + what + " in store " + location().display + " failed: " + S3Client::Reason(response);
  if (IsTransientStatus(response.status) ||
      S3Client::IsTransientCode(XmlFirst(response.body, "Code"))) {
    throw TransientError(message);
  }
  throw TransferError(codes::kStoreUnavailable, message);
}

void S3Store::Check() { CheckPrefix(false); }

void S3Store::Create() { CheckPrefix(true); }

void S3Store::CheckPrefix(bool may_make) {
  const std::string key = Key(std::string(kProbePrefix) + RandomHex(6));
  const std::string body = "imagerelay write probe\n";
  try {
    Call put;
    put.method = "PUT";
    put.key = key;
    put.body = std::as_bytes(std::span(body));
    HttpResponse response = client_.Perform(put);
    if (!IsSuccessStatus(response.status)) {
      throw TransferError(
          codes::kStoreUnavailable,
          "S3 store " + location().display + " is not writable: " + S3Client::Reason(response));
    }
    Call del;
    del.method = "DELETE";
    del.key = key;
    response = client_.Perform(del);
    if (!IsSuccessStatus(response.status) && response.status != 404) {
      throw TransferError(codes::kStoreUnavailable,
                          "S3 store " + location().display +
                              " does not allow deletes: " + S3Client::Reason(response));
    }
    ClaimPrefix(may_make);
  } catch (const TransientError& e) {
    throw TransferError(codes::kStoreUnavailable,
                        "S3 store " + location().display + " is unreachable: " + e.what());
  } catch (const TlsVerificationError& e) {
    throw TransferError(codes::kStoreUnavailable,
                        "S3 store " + location().display + " failed TLS verification (" + e.what() +
                            "); to trust a private CA add ca_bundle=/path/to/ca.pem "
                            "to the store URI or set AWS_CA_BUNDLE");
  } catch (const std::runtime_error& e) {
    if (dynamic_cast<const Error*>(&e)) throw;
    throw TransferError(codes::kStoreUnavailable,
                        "S3 store " + location().display + " is unreachable: " + e.what());
  }
}

void S3Store::ClaimPrefix(bool may_make) {
  const std::string marker = Key(std::string(kStoreMarker));
  auto not_a_store = [&](const std::string& why) {
    throw TransferError(codes::kStoreUnavailable,
                        "S3 store " + location().display + " is not an imagerelay store: " + why +
                            "; give a new or empty prefix, or one that holds a store");
  };
  if (std::optional<std::string> text = GetText(marker, "the store marker")) {
    // A marker that reads wrong is read again first: an answer cut short or damaged on the
    // way must not make a store "not a store".
    std::string problem = CheckStoreMarker(*text);
    for (int read = 2; !problem.empty() && read <= kListAttempts; ++read) {
      text = GetText(marker, "the store marker");
      problem = text ? CheckStoreMarker(*text) : "its marker is gone";
    }
    if (!problem.empty()) not_a_store(problem);
    // Create() claims a marker naming no home; Check() keeps it (MarkerUse).
    const MarkerVerdict verdict =
        JudgeMarker(*text, claim_, may_make ? MarkerUse::kClaim : MarkerUse::kCheck);
    RefuseIfAnotherHomes(verdict);
    if (verdict.action == MarkerVerdict::Action::kRewrite) {
      PutText(marker, verdict.text, "the store marker");
    }
    return;
  }
  // No marker: what the prefix holds at its top level, "directories" folded by the
  // delimiter. A store (of an earlier release) holds only its directories there.
  if (const std::string& theirs = UnmarkedIsTheirs(claim_); !theirs.empty()) {
    throw TransferError(codes::kStoreUnavailable,
                        "S3 store " + location().display + " is unavailable: " + theirs);
  }
  const std::string top = Key("");
  Call list;
  list.query = {{"list-type", "2"}, {"prefix", top}, {"delimiter", "/"}, {"max-keys", "1000"}};
  list.max_body = 16ULL << 20;
  HttpResponse response = client_.Perform(list);
  if (!IsSuccessStatus(response.status)) Fail("listing of " + location().display, response);
  std::vector<std::string> foreign;
  bool manifests = false;  // an earlier release's store
  for (const std::string& key : XmlAll(response.body, "Key")) {
    // The prefix's own "folder" object (as a console makes it) and probes left by a Check.
    const std::string name = key.substr(std::min(top.size(), key.size()));
    if (!name.empty() && !name.starts_with(kProbePrefix)) foreign.push_back(name);
  }
  for (const std::string& prefix : XmlAll(response.body, "Prefix")) {
    if (prefix.size() <= top.size()) continue;  // the request's own prefix, echoed
    std::string name = prefix.substr(top.size());
    if (name.ends_with('/')) name.pop_back();
    if (!IsStoreDirName(name)) foreign.push_back(name + "/");
    manifests = manifests || name == "manifests";
  }
  if (std::string problem = ForeignEntriesProblem(std::move(foreign)); !problem.empty()) {
    not_a_store(problem);
  }
  if (!may_make && !manifests) {
    throw TransferError(codes::kStoreUnavailable,
                        "S3 store " + location().display +
                            " is unavailable: it holds no store (no " + std::string(kStoreMarker) +
                            "); a region's store is made once, when the region is added: check "
                            "that the endpoint and bucket are the ones it was added with");
  }
  PutText(marker, StoreMarkerText(claim_.me, claim_.place), "the store marker");
}

void S3Store::SetOwner(const StoreClaim& claim) {
  claim_ = claim;
  claim_.ours_by_place = false;  // never: not a directory in the home
}

void S3Store::RefuseIfAnotherHomes(const MarkerVerdict& verdict) const {
  // Only a valid marker is judged here (ClaimPrefix and ClaimForOwner read it first).
  if (verdict.action == MarkerVerdict::Action::kRefuse) {
    throw TransferError(codes::kStoreUnavailable,
                        "S3 store " + location().display + " is unavailable: " + verdict.problem);
  }
}

void S3Store::ClaimForOwner(bool claim_unowned) {
  std::optional<std::string> text;
  try {
    text = GetText(Key(std::string(kStoreMarker)), "the store marker");
  } catch (const std::exception&) {
    return;  // unreachable now: Check() says so, and judges the owner then
  }
  if (!text || !CheckStoreMarker(*text).empty()) return;
  const MarkerVerdict verdict =
      JudgeMarker(*text, claim_, claim_unowned ? MarkerUse::kClaim : MarkerUse::kCheck);
  RefuseIfAnotherHomes(verdict);
  try {  // a store that cannot be written now may still be read; Check() claims it later
    if (verdict.action == MarkerVerdict::Action::kRewrite) {
      PutText(Key(std::string(kStoreMarker)), verdict.text, "the store marker");
    }
  } catch (const std::exception&) {
  }
}

void S3Store::Release() {
  const std::string marker = Key(std::string(kStoreMarker));
  const std::optional<std::string> text = GetText(marker, "the store marker");
  if (!text) return;
  if (std::string released = ReleasedMarker(*text, claim_); !released.empty()) {
    PutText(marker, released, "the store marker");
  }
}

bool S3Store::HasChunk(const std::string& hash, const CancelToken* cancel) {
  Call head;
  head.method = "HEAD";
  head.key = ChunkKey(hash);
  HttpResponse response = client_.Perform(head, cancel);
  if (IsSuccessStatus(response.status)) return true;
  if (response.status == 404) return false;
  Fail("HEAD of chunk " + hash, response);
}

bool S3Store::HasChunkOfLength(const std::string& hash, uint64_t length,
                               const CancelToken* cancel) {
  Call head;
  head.method = "HEAD";
  head.key = ChunkKey(hash);
  HttpResponse response = client_.Perform(head, cancel);
  if (response.status == 404) return false;
  if (!IsSuccessStatus(response.status)) Fail("HEAD of chunk " + hash, response);
  return ParseDecimal(response.Header("content-length")) == length;
}

std::optional<uint64_t> S3Store::StoredChunkSize(const std::string& hash) {
  Call head;
  head.method = "HEAD";
  head.key = ChunkKey(hash);
  HttpResponse response = client_.Perform(head);
  if (!IsSuccessStatus(response.status)) return std::nullopt;
  return ParseDecimal(response.Header("content-length"));
}

uint64_t S3Store::PutChunk(const std::string& hash, std::span<const std::byte> data,
                           const CancelToken* cancel) {
  Call put;
  put.method = "PUT";
  put.key = ChunkKey(hash);
  put.body = data;
  put.attempts = kChunkAttempts;
  put.payload_hash = hash;  // the chunk's own SHA-256: the server checks it on arrival
  const bool checksums = send_checksums_.load(std::memory_order_relaxed);
  if (checksums) {
    put.headers = {{"x-amz-sdk-checksum-algorithm", "SHA256"},
                   {"x-amz-checksum-sha256", HexToBase64(hash)}};
  }
  HttpResponse response = client_.Perform(put, cancel);
  if (checksums && (response.status == 400 || response.status == 501)) {
    put.headers.clear();  // an older server may not know the checksum headers
    HttpResponse plain = client_.Perform(put, cancel);
    if (IsSuccessStatus(plain.status)) {
      send_checksums_.store(false, std::memory_order_relaxed);
      return data.size();
    }
  }
  if (!IsSuccessStatus(response.status)) Fail("PUT of chunk " + hash, response);
  return data.size();
}

void S3Store::GetChunk(const std::string& hash, std::vector<std::byte>& out,
                       const CancelToken* cancel) {
  Call get;
  get.key = ChunkKey(hash);
  get.sink = &out;
  get.max_body = 5ULL << 30;
  get.attempts = kChunkAttempts;
  HttpResponse response = client_.Perform(get, cancel);
  if (response.status == 404) {
    out.clear();
    throw TransferError(codes::kTransferFailed,
                        "chunk " + hash + " is missing in store " + location().display);
  }
  if (!IsSuccessStatus(response.status)) {
    // The error document went into `out`: move it where Reason() looks.
    response.body.assign(reinterpret_cast<const char*>(out.data()),
                         std::min<size_t>(out.size(), 4096));
    out.clear();
    Fail("GET of chunk " + hash, response);
  }
  std::string length = response.Header("content-length");
  if (!length.empty() && ParseDecimal(length) != out.size()) {
    throw TransientError("S3 GET of chunk " + hash + " in store " + location().display +
                         " returned " + std::to_string(out.size()) + " of " + length + " bytes");
  }
}

bool S3Store::CanCopyChunksFrom(const Store& source) const {
  const auto* from = dynamic_cast<const S3Store*>(&source);
  return from != nullptr && from->client_.SameServiceAs(client_);
}

void S3Store::RejectCopy(const std::string& hash, const std::string& why) {
  try {
    DeleteKey(ChunkKey(hash), "a corrupt chunk copy");
  } catch (const std::exception&) {
    // Still unreferenced: the next sweep removes it.
  }
  throw IntegrityError(codes::kIntegrityError, "the server-side copy of chunk " + hash +
                                                   " into store " + location().display +
                                                   " is corrupt: " + why);
}

bool S3Store::CopyChunkFrom(Store& source, const std::string& hash, uint64_t length,
                            const CancelToken* cancel) {
  if (!CanCopyChunksFrom(source)) return false;
  auto& from = static_cast<S3Store&>(source);
  Call copy;
  copy.method = "PUT";
  copy.key = ChunkKey(hash);
  copy.attempts = kChunkAttempts;
  copy.headers = {
      {"x-amz-copy-source",
       sigv4::UriEncode("/" + from.location().bucket + "/" + from.ChunkKey(hash), false)}};
  if (hash_copies_.load(std::memory_order_relaxed)) {
    copy.headers.emplace_back("x-amz-checksum-algorithm", "SHA256");
  }
  HttpResponse response = client_.Perform(copy, cancel);
  if (response.status == 404 && XmlFirst(response.body, "Code") == "NoSuchKey") {
    throw TransferError(codes::kTransferFailed,
                        "chunk " + hash + " is missing in store " + from.location().display);
  }
  if (!IsSuccessStatus(response.status)) Fail("server-side copy of chunk " + hash, response);
  // S3 may answer 200 and put the error in the body.
  if (std::string code = XmlFirst(response.body, "Code");
      response.body.find("<Error>") != std::string::npos || !code.empty()) {
    std::string message = "S3 server-side copy of chunk " + hash + " into store " +
                          location().display + " failed: " + code.substr(0, 100) + " " +
                          XmlFirst(response.body, "Message").substr(0, 300);
    if (S3Client::IsTransientCode(code)) throw TransientError(message);
    throw TransferError(codes::kStoreUnavailable, message);
  }
  if (response.body.find("CopyObjectResult") == std::string::npos) {
    throw TransientError("S3 server-side copy of chunk " + hash + " into store " +
                         location().display + " gave no CopyObjectResult");
  }
  const std::string copied = XmlFirst(response.body, "ChecksumSHA256");
  if (!copied.empty()) {
    if (Base64ToHex(copied) != hash) {
      RejectCopy(hash, "the store reports SHA-256 " + copied +
                           " for it (base64); the source "
                           "chunk in " +
                           from.location().display + " does not hold these bytes");
    }
    return true;
  }
  // No SHA-256 kept with the source (a server that refused the checksum headers): ask the
  // server to compute one for the next copies, and read this one back to hash it here.
  hash_copies_.store(true, std::memory_order_relaxed);
  std::vector<std::byte> bytes;
  GetChunk(hash, bytes, cancel);
  std::string actual = Sha256Hex(bytes.data(), bytes.size());
  if (actual != hash || bytes.size() != length) {
    RejectCopy(hash, std::to_string(bytes.size()) + " bytes hashing to " + actual +
                         ", the manifest says " + std::to_string(length) + " bytes");
  }
  return true;
}

void S3Store::DeleteKey(const std::string& key, const char* what) {
  Call del;
  del.method = "DELETE";
  del.key = key;
  HttpResponse response = client_.Perform(del);
  if (!IsSuccessStatus(response.status) && response.status != 404)
    Fail(std::string("DELETE of ") + what, response);
}

void S3Store::DeleteChunk(const std::string& hash) { DeleteKey(ChunkKey(hash), "a chunk"); }

std::vector<std::string> S3Store::ListKeys(const std::string& key_prefix) {
  return *ListKeysUpTo(key_prefix, SIZE_MAX);
}

std::optional<std::vector<std::string>> S3Store::ListKeysUpTo(const std::string& key_prefix,
                                                              size_t max_pages,
                                                              std::vector<uint64_t>* sizes) {
  std::vector<std::string> keys;
  std::string token;
  for (size_t page = 0;; ++page) {
    if (page == max_pages) return std::nullopt;
    Call list;
    list.key = "";
    list.query = {{"list-type", "2"}, {"prefix", key_prefix}, {"max-keys", "1000"}};
    if (!token.empty()) list.query.emplace_back("continuation-token", token);
    list.max_body = 64ULL << 20;
    // A page is taken whole or asked again: a body cut short (a connection closed at a wrong
    // Content-Length) would parse as fewer keys and no IsTruncated, "these are all", and a
    // pack left out of a listing is taken for gone.
    HttpResponse response;
    std::vector<std::string> page_keys;
    std::vector<std::string> page_sizes;
    for (int attempt = 1;; ++attempt) {
      response = client_.Perform(list);
      if (!IsSuccessStatus(response.status)) Fail("listing of " + key_prefix, response);
      page_keys = XmlAll(response.body, "Key");
      // Every <Contents> has one <Key> and one <Size>, in order.
      page_sizes = XmlAll(response.body, "Size");
      const bool whole = response.body.find("</ListBucketResult>") != std::string::npos &&
                         (sizes == nullptr || page_sizes.size() == page_keys.size());
      if (whole) break;
      if (attempt == kListAttempts) {
        throw TransientError("S3 listing of " + key_prefix + " in store " + location().display +
                             " came back cut short " + std::to_string(attempt) + " times");
      }
    }
    for (auto& key : page_keys) keys.push_back(std::move(key));
    if (sizes != nullptr) {
      for (const auto& size : page_sizes) {
        const std::optional<uint64_t> bytes = ParseDecimal(size);
        if (!bytes) {
          throw TransientError("listing of " + key_prefix + " gave the size \"" +
                               size.substr(0, 40) + "\", not a number");
        }
        sizes->push_back(*bytes);
      }
    }
    if (XmlFirst(response.body, "IsTruncated") != "true") break;
    token = XmlFirst(response.body, "NextContinuationToken");
    if (token.empty()) break;
  }
  return keys;
}

// A listing page answers for up to 1000 chunks, a HEAD for one: when the store's chunks fit
// in a few pages (a new or small region), listing them is far fewer requests than HEADs.
std::vector<bool> S3Store::HasChunks(const std::vector<std::string>& hashes,
                                     const CancelToken* cancel,
                                     const std::vector<uint64_t>& lengths) {
  constexpr size_t kHeadsPerPage = 64;  // a page costs about as much as this many HEADs
  if (const size_t budget = hashes.size() / kHeadsPerPage; budget > 0) {
    std::vector<uint64_t> sizes;
    if (auto keys = ListKeysUpTo(Key("chunks/"), budget, &sizes)) {
      std::unordered_map<std::string, uint64_t> present;
      for (size_t i = 0; i < keys->size(); ++i) {
        const std::string& key = (*keys)[i];
        present.emplace(key.substr(key.rfind('/') + 1), sizes[i]);
      }
      std::vector<bool> out;
      out.reserve(hashes.size());
      for (size_t i = 0; i < hashes.size(); ++i) {
        auto it = present.find(hashes[i]);
        out.push_back(it != present.end() && (lengths.empty() || it->second == lengths[i]));
      }
      return out;
    }
  }
  return Store::HasChunks(hashes, cancel, lengths);  // parallel HEADs
}

std::vector<std::string> S3Store::ListChunks() {
  std::vector<std::string> out;
  for (const std::string& key : ListKeys(Key("chunks/"))) {
    std::string name = key.substr(key.rfind('/') + 1);
    if (IsChunkHash(name)) out.push_back(name);
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

void S3Store::PutText(const std::string& key, const std::string& text, const char* what) {
  Call put;
  put.method = "PUT";
  put.key = key;
  put.body = std::as_bytes(std::span(text));
  put.headers = {{"Content-Type", "application/json"}};
  HttpResponse response = client_.Perform(put);
  if (!IsSuccessStatus(response.status)) Fail(std::string("PUT of ") + what, response);
}

std::optional<std::string> S3Store::GetText(const std::string& key, const char* what) {
  Call get;
  get.key = key;
  get.max_body = 256ULL << 20;
  HttpResponse response = client_.Perform(get);
  if (response.status == 404) return std::nullopt;
  if (!IsSuccessStatus(response.status)) Fail(std::string("GET of ") + what, response);
  return std::move(response.body);
}

void S3Store::PutImageRecord(const std::string& image_id, const std::string& json) {
  PutText(RecordKey("images", image_id), json, "an image record");
}

std::optional<std::string> S3Store::GetImageRecord(const std::string& image_id) {
  return GetText(RecordKey("images", image_id), "an image record");
}

void S3Store::DeleteImageRecord(const std::string& image_id) {
  DeleteKey(RecordKey("images", image_id), "an image record");
}

}  // namespace imagerelay
