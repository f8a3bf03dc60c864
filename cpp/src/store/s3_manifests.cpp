// S3Store's manifests: objects <prefix>/manifests/<image id>.bin in the stored form of
// block_manifest.hpp, spooled through an unnamed file in the cache directory both ways, so
// that a 200 GiB image's 105 MB list never sits in the process's memory. A manifest larger
// than kManifestPartBytes goes up as a multipart upload, one part at a time from the spooled
// file (memory: one part); a smaller one in one PUT. Manifests of the first release
// (<image id>.json) are still read. A multipart upload that a killed writer left open is
// aborted by RemoveLeftovers once it is an hour old: the bucket keeps (and bills) its parts
// until then, and nothing else ever lists them.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <mutex>
#include <set>
#include <thread>

#include "base/file_util.hpp"
#include "imagerelay/error.hpp"
#include "imagerelay/ids.hpp"
#include "store/block_list.hpp"
#include "store/block_manifest.hpp"
#include "store/s3_store.hpp"

namespace imagerelay {
namespace {

constexpr std::string_view kJsonSuffix = ".json";
constexpr std::string_view kBinarySuffix = ".bin";
constexpr size_t kErrorBodyBytes = 4096;
constexpr int kGetAttempts = 6;
constexpr int kDamagedFetches = 3;  // a manifest found damaged, fetched again
// A manifest above this size is uploaded in parts of this size (S3's smallest part is
// 5 MiB): 16 GiB of image in 64 KiB blocks fits one PUT; 200 GiB's 105 MB takes 13 parts.
constexpr uint64_t kManifestPartBytes = 8ULL << 20;
// An upload begun longer ago than this is a dead writer's (a live one of a 105 MB manifest
// takes seconds), as for the temporary files of local stores.
constexpr std::chrono::seconds kStaleUploadAge{3600};
constexpr int kUploadListPages = 100;  // at most 100,000 open uploads looked at per call

// The uploads this process has under way, which RemoveLeftovers never aborts whatever
// their age says (some test servers report one fixed time for every upload).
class ManifestUploadsInFlight {
 public:
  static ManifestUploadsInFlight& Get() {
    static ManifestUploadsInFlight uploads;
    return uploads;
  }
  void Add(const std::string& id) {
    std::lock_guard lock(mutex_);
    ids_.insert(id);
  }
  void Remove(const std::string& id) {
    std::lock_guard lock(mutex_);
    ids_.erase(id);
  }
  bool Contains(const std::string& id) {
    std::lock_guard lock(mutex_);
    return ids_.contains(id);
  }

 private:
  std::mutex mutex_;
  std::set<std::string> ids_;
};

// S3's "2026-12-01T22:00:00.000Z" as a time; nullopt if it is not one.
std::optional<std::time_t> ParseUploadInitiated(const std::string& text) {
  std::tm tm{};
  int year = 0, month = 0, day = 0, hour = 0, minute = 0, second = 0;
  if (std::sscanf(text.c_str(), "%4d-%2d-%2dT%2d:%2d:%2d", &year, &month, &day, &hour, &minute,
                  &second) != 6) {
    return std::nullopt;
  }
  tm.tm_year = year - 1900;
  tm.tm_mon = month - 1;
  tm.tm_mday = day;
  tm.tm_hour = hour;
  tm.tm_min = minute;
  tm.tm_sec = second;
  const std::time_t t = ::timegm(&tm);
  if (t == static_cast<std::time_t>(-1)) return std::nullopt;
  return t;
}

// A read-only view of a file's first `size` bytes: its pages come from the page cache.
class MappedFile {
 public:
  MappedFile(int fd, size_t size) : size_(size) {
    if (size_ == 0) return;
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
      throw TransferError(codes::kTransferFailed,
                          "cannot map a spooled manifest: " + ErrnoText(errno));
    }
    data_ = static_cast<const std::byte*>(p);
  }
  ~MappedFile() {
    if (data_ != nullptr) ::munmap(const_cast<std::byte*>(data_), size_);
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  std::span<const std::byte> bytes() const { return {data_, size_}; }

 private:
  const std::byte* data_ = nullptr;
  size_t size_;
};

}  // namespace

void S3Store::PutManifest(const std::string& image_id, const Manifest& manifest) {
  const std::string key = RecordKey("manifests", image_id, kBinarySuffix);
  UniqueFd spool = OpenSpoolFile(CacheDir());
  if (int err = WriteBinaryManifest(manifest, spool.get()); err != 0) {
    throw TransferError(codes::kTransferFailed, "cannot spool the manifest of " + image_id +
                                                    " in " + CacheDir().string() + ": " +
                                                    ErrnoText(err));
  }
  const uint64_t size = BinaryManifestBytes(manifest.count());
  if (size > kManifestPartBytes) {
    PutManifestInParts(key, spool.get(), size, image_id);
  } else {
    MappedFile mapped(spool.get(), static_cast<size_t>(size));
    S3Client::Call put;
    put.method = "PUT";
    put.key = key;
    put.body = mapped.bytes();
    put.headers = {{"Content-Type", "application/octet-stream"}};
    HttpResponse response = client_.Perform(put);
    if (!IsSuccessStatus(response.status)) Fail("PUT of a manifest", response);
  }
  // A first-release manifest of the same image would be read no more; it goes.
  DeleteKey(RecordKey("manifests", image_id, kJsonSuffix), "a manifest");
}

void S3Store::PutManifestInParts(const std::string& key, int fd, uint64_t size,
                                 const std::string& image_id) {
  S3Client::Call create;
  create.method = "POST";
  create.key = key;
  create.query = {{"uploads", ""}};
  create.headers = {{"Content-Type", "application/octet-stream"}};
  HttpResponse response = client_.Perform(create);
  const std::string upload_id = XmlFirst(response.body, "UploadId");
  if (!IsSuccessStatus(response.status) || upload_id.empty()) {
    Fail("start of a multipart upload of a manifest", response);
  }
  ManifestUploadsInFlight::Get().Add(upload_id);
  struct Ended {
    const std::string& id;
    ~Ended() { ManifestUploadsInFlight::Get().Remove(id); }
  } ended{upload_id};
  // Nothing is visible until the upload completes (the one durable step): a failed upload
  // is aborted so that the bucket does not keep (and bill) its parts.
  auto abort = [&] {
    S3Client::Call cancel;
    cancel.method = "DELETE";
    cancel.key = key;
    cancel.query = {{"uploadId", upload_id}};
    try {
      client_.Perform(cancel);
    } catch (const std::exception&) {
      // best effort: a bucket's lifecycle rule or a later sweep takes what is left
    }
  };
  try {
    std::string parts = "<CompleteMultipartUpload>";
    std::vector<std::byte> part(static_cast<size_t>(std::min(size, kManifestPartBytes)));
    for (uint64_t offset = 0, number = 1; offset < size; offset += part.size(), ++number) {
      part.resize(static_cast<size_t>(std::min(size - offset, kManifestPartBytes)));
      if (int err = PreadAll(fd, part.data(), part.size(), static_cast<off_t>(offset)); err != 0) {
        throw TransferError(codes::kTransferFailed, "cannot read the spooled manifest of " +
                                                        image_id + ": " + ErrnoText(err));
      }
      S3Client::Call put;
      put.method = "PUT";
      put.key = key;
      put.query = {{"partNumber", std::to_string(number)}, {"uploadId", upload_id}};
      put.body = part;
      response = client_.Perform(put);
      const std::string etag = response.Header("etag");
      if (!IsSuccessStatus(response.status) || etag.empty()) {
        Fail("PUT of part " + std::to_string(number) + " of a manifest", response);
      }
      parts += "<Part><PartNumber>" + std::to_string(number) + "</PartNumber><ETag>" + etag +
               "</ETag></Part>";
    }
    parts += "</CompleteMultipartUpload>";
    S3Client::Call complete;
    complete.method = "POST";
    complete.key = key;
    complete.query = {{"uploadId", upload_id}};
    complete.headers = {{"Content-Type", "application/xml"}};
    complete.body = std::as_bytes(std::span(parts));
    response = client_.Perform(complete);
    // S3 may answer 200 and say in the body that the upload failed.
    if (!IsSuccessStatus(response.status) || response.body.find("<Error>") != std::string::npos) {
      Fail("completion of a multipart upload of a manifest", response);
    }
  } catch (...) {
    abort();
    throw;
  }
}

void S3Store::RemoveLeftovers() {
  const std::string prefix = Key("manifests/");
  const std::time_t now = std::time(nullptr);
  std::string key_marker, upload_marker;
  try {
    for (int page = 0; page < kUploadListPages; ++page) {
      Call list;
      list.key = "";
      list.query = {{"uploads", ""}, {"prefix", prefix}};
      if (!key_marker.empty()) list.query.emplace_back("key-marker", key_marker);
      if (!upload_marker.empty()) list.query.emplace_back("upload-id-marker", upload_marker);
      HttpResponse response = client_.Perform(list);
      if (!IsSuccessStatus(response.status)) return;  // best effort: the next sweep tries again
      for (const std::string& upload : XmlAll(response.body, "Upload")) {
        const std::string key = XmlFirst(upload, "Key");
        const std::string id = XmlFirst(upload, "UploadId");
        const std::optional<std::time_t> initiated =
            ParseUploadInitiated(XmlFirst(upload, "Initiated"));
        if (id.empty() || !key.starts_with(prefix) || !initiated ||
            now - *initiated < kStaleUploadAge.count() ||
            ManifestUploadsInFlight::Get().Contains(id)) {
          continue;
        }
        Call abort;
        abort.method = "DELETE";
        abort.key = key;
        abort.query = {{"uploadId", id}};
        client_.Perform(abort);  // its answer does not matter: the next call lists it again
      }
      if (XmlFirst(response.body, "IsTruncated") != "true") return;
      key_marker = XmlFirst(response.body, "NextKeyMarker");
      upload_marker = XmlFirst(response.body, "NextUploadIdMarker");
      if (key_marker.empty() && upload_marker.empty()) return;
    }
  } catch (const std::exception&) {
    // Best effort, as for a local store's leftovers: a bucket that does not answer now is
    // the next sweep's to clean.
  }
}

std::optional<Manifest> S3Store::GetManifest(const std::string& image_id) {
  const std::string key = RecordKey("manifests", image_id, kBinarySuffix);
  const std::string what = image_id + " in store " + location().display;
  // The object's body into `fd`; false if there is no such object.
  auto spool_object = [&](int fd) {
    uint64_t written = 0;
    int write_error = 0;
    std::string error_body;
    S3Client::Call get;
    get.key = key;
    get.on_body = [&](long status, std::span<const std::byte> data) {
      if (status < 200 || status >= 300) {
        const size_t take =
            std::min(data.size(), kErrorBodyBytes - std::min(kErrorBodyBytes, error_body.size()));
        error_body.append(reinterpret_cast<const char*>(data.data()), take);
        return true;
      }
      if (write_error != 0) return false;
      write_error = PwriteAll(fd, data.data(), data.size(), static_cast<off_t>(written));
      written += data.size();
      return write_error == 0;
    };
    // Retried here, not in the HTTP layer: a retry must start the spool again.
    get.retry = false;
    HttpResponse response;
    for (int attempt = 1;; ++attempt) {
      written = 0;
      error_body.clear();
      if (::ftruncate(fd, 0) != 0) write_error = errno;
      try {
        response = client_.Perform(get);
      } catch (const TransientError&) {
        if (attempt == kGetAttempts) throw;
        std::this_thread::sleep_for(std::chrono::milliseconds(100 * attempt));
        continue;
      }
      if (!IsTransientStatus(response.status) || attempt == kGetAttempts) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100 * attempt));
    }
    if (write_error != 0) {
      throw TransferError(codes::kTransferFailed, "cannot spool the manifest of " + what + " in " +
                                                      CacheDir().string() + ": " +
                                                      ErrnoText(write_error));
    }
    if (response.status == 404) return false;
    if (response.status < 200 || response.status >= 300) {
      response.body = std::move(error_body);
      Fail("GET of a manifest", response);
    }
    return true;
  };
  // A manifest that does not match its own checksum may have been damaged on the way (a
  // byte flipped, a body cut short at a wrong Content-Length): it is fetched again, and only
  // one found wrong every time is the store's damage.
  for (int fetch = 1;; ++fetch) {
    UniqueFd spool = OpenSpoolFile(CacheDir());
    if (!spool_object(spool.get())) {
      std::optional<std::string> text =
          GetText(RecordKey("manifests", image_id, kJsonSuffix), "a manifest");
      if (!text) return std::nullopt;
      return ReadFirstReleaseManifest(*text, what);
    }
    try {
      return ReadBinaryManifest(std::move(spool), what);
    } catch (const IntegrityError&) {
      if (fetch == kDamagedFetches) throw;
    }
  }
}

void S3Store::DeleteManifest(const std::string& image_id) {
  DeleteKey(RecordKey("manifests", image_id, kBinarySuffix), "a manifest");
  DeleteKey(RecordKey("manifests", image_id, kJsonSuffix), "a manifest");
}

std::vector<std::string> S3Store::ListManifests() {
  std::vector<std::string> out;
  for (const std::string& key : ListKeys(Key("manifests/"))) {
    std::string name = key.substr(key.rfind('/') + 1);
    for (std::string_view suffix : {kJsonSuffix, kBinarySuffix}) {
      if (!name.ends_with(suffix)) continue;
      name.resize(name.size() - suffix.size());
      if (IsImageId(name)) out.push_back(name);
      break;
    }
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

}  // namespace imagerelay
