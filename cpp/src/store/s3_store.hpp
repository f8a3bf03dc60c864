// A region store in an S3 bucket (docs/architecture.md, "Storage layout", under the URI's
// prefix):
//   <prefix>/manifests/<id>.bin, <prefix>/images/<id>.json
//   <prefix>/.imagerelay-store, the marker that tells the prefix is a store
//   <prefix>/packs/: the block store (PackFiles here, PackStore on top; its index is a
//   cache in <home>/cache/)
//   <prefix>/chunks/<2hex>/<hash>, <prefix>/manifests/<id>.json: the first release's
//   chunks and manifests, still read
// URI, TLS and signed requests: s3_client.hpp. Credentials are the region's
// (credentials_files.hpp) if given, else the environment's. No message, log or uri() ever
// shows a secret.
//
// Server-side copy (DESIGN.md §5 integrity rules kept): S3 -> S3 on one endpoint under the
// same credentials copies a chunk file with CopyObject. The engine's stores are PackStores
// (OpenStore), which do not offer CopyChunkFrom: a copy between S3 regions re-packs the
// blocks and passes the bytes through imagerelay; this path is S3Store's alone. Why this
// proof: the engine never sees the bytes, so it relies on the SHA-256 the server reports for
// the copy. PutChunk stores the chunk's SHA-256 as x-amz-checksum-sha256 (the server rejects
// the PUT if the bytes do not match) and CopyObject carries it over to the copy and reports
// it in its answer; a server that keeps none is asked to compute it
// (x-amz-checksum-algorithm), and failing that the copy is read back and hashed here. A copy
// whose SHA-256 differs from its name is deleted at once and fails with IntegrityError; only
// a proven copy counts as written. The price of one request per chunk: such a copy sits
// under the chunk's name for the time of one request (a HEAD of the source before the copy
// would refuse it first, at twice the requests); another task planning into the same bucket
// in that instant could count it as present. It takes a source chunk overwritten by hand
// with other bytes.
// One request per chunk, as rclone's copy-then-compare-ETag but with SHA-256. A 200 answer
// with an <Error> body is an error.
// All methods may be called from several threads at once.
#pragma once

#include <atomic>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "imagerelay/store.hpp"
#include "net/s3_client.hpp"
#include "store/local_store.hpp"  // ChunkSizeProbe
#include "store/pack_files.hpp"

namespace imagerelay {

class S3Store : public Store, public ChunkSizeProbe, public PackFiles {
 public:
  // Empty credentials: taken from the environment (or anonymous if none there).
  explicit S3Store(const std::string& uri, sigv4::Credentials credentials = {},
                   HttpOptions http = {});

  std::string uri() const override { return location().display; }
  // A prefix without the store's marker is taken (marked) only by Create(), a region being
  // added, or if it holds an earlier release's manifests/: found empty later, it is another
  // place than the one the region was added with (an endpoint or bucket that now names
  // another), never a store to make again there (LocalStore::Root says the same of disks).
  void Check() override;
  void Create() override;
  void SetOwner(const StoreClaim& claim) override;
  void ClaimForOwner(bool claim_unowned = true) override;
  void Release() override;
  // Aborts multipart uploads of manifests that a killed writer left open over an hour ago
  // (s3_manifests.cpp). Best effort.
  void RemoveLeftovers() override;

  bool HasChunk(const std::string& hash, const CancelToken* cancel = nullptr) override;
  // A HEAD: present with that Content-Length.
  bool HasChunkOfLength(const std::string& hash, uint64_t length,
                        const CancelToken* cancel = nullptr) override;
  // Lists the chunks when they fit in a few pages, else HEADs in parallel.
  std::vector<bool> HasChunks(const std::vector<std::string>& hashes,
                              const CancelToken* cancel = nullptr,
                              const std::vector<uint64_t>& lengths = {}) override;
  // Sends the chunk's SHA-256 twice: as x-amz-content-sha256 (checked on arrival) and as
  // x-amz-checksum-sha256, which the store keeps with the object: the proof that a
  // server-side copy checks before it copies the chunk elsewhere. A server that answers
  // 400/501 to the checksum headers but takes the PUT without them gets none from then on.
  uint64_t PutChunk(const std::string& hash, std::span<const std::byte> data,
                    const CancelToken* cancel = nullptr) override;
  void GetChunk(const std::string& hash, std::vector<std::byte>& out,
                const CancelToken* cancel = nullptr) override;
  // Same endpoint, region and credentials: the buckets are one service to CopyObject.
  bool CanCopyChunksFrom(const Store& source) const override;
  // CopyObject, then the proof above; false only when the stores cannot copy between them.
  bool CopyChunkFrom(Store& source, const std::string& hash, uint64_t length,
                     const CancelToken* cancel) override;
  void DeleteChunk(const std::string& hash) override;
  std::vector<std::string> ListChunks() override;

  void PutManifest(const std::string& image_id, const Manifest& manifest) override;
  std::optional<Manifest> GetManifest(const std::string& image_id) override;
  void DeleteManifest(const std::string& image_id) override;
  std::vector<std::string> ListManifests() override;

  void PutImageRecord(const std::string& image_id, const std::string& json) override;
  std::optional<std::string> GetImageRecord(const std::string& image_id) override;
  void DeleteImageRecord(const std::string& image_id) override;

  std::optional<uint64_t> StoredChunkSize(const std::string& hash) override;

  // Packs (s3_pack_files.cpp): objects <prefix>/packs/<first two hex>/<name>, one PUT each
  // (with its SHA-256, checked by the server on arrival), read by ranged GETs. The index is a
  // local cache (IndexFile), rebuilt from the packs' footers when missing.
  void PutPack(const std::string& name, std::span<const std::byte> bytes,
               const CancelToken* cancel) override;
  bool ReadPack(const std::string& name, uint64_t offset, std::span<std::byte> out,
                const CancelToken* cancel) override;
  std::optional<PackStat> StatPack(const std::string& name) override;
  void DeletePack(const std::string& name) override;
  std::vector<std::pair<std::string, uint64_t>> ListPacks() override;
  std::filesystem::path IndexFile() override;
  bool RemoteReads() const override { return true; }
  bool WaitsOnServer() const override { return true; }
  // Where the local index cache goes: <dir>/s3-<hash of the URI>.sqlite. By default
  // $IMAGERELAY_CACHE_DIR, else $XDG_CACHE_HOME/imagerelay, else ~/.cache/imagerelay.
  void SetIndexDir(std::filesystem::path dir) { index_dir_ = std::move(dir); }

 protected:
  // HEADs in parallel: each waits a round trip.
  size_t ExistenceCheckThreads() const override { return 16; }

 private:
  using Call = S3Client::Call;
  const S3Location& location() const { return client_.location(); }
  std::string Key(const std::string& rel) const;
  std::string ChunkKey(const std::string& hash) const;
  std::string PackKey(const std::string& name) const;
  std::string RecordKey(const char* dir, const std::string& image_id,
                        std::string_view suffix = ".json") const;
  // Uploads the `size` bytes of a spooled manifest (`fd`) to `key` in parts
  // (s3_manifests.cpp).
  void PutManifestInParts(const std::string& key, int fd, uint64_t size,
                          const std::string& image_id);
  // Where manifests are spooled on their way to and from the bucket (s3_manifests.cpp).
  std::filesystem::path CacheDir() const;
  [[noreturn]] void Fail(const std::string& what, const HttpResponse& response) const;
  // Takes the prefix as a store (see kStoreMarker) or throws StoreUnavailable saying why not;
  // one holding nothing of a store only if `may_make`.
  void ClaimPrefix(bool may_make);
  // Check() and Create().
  void CheckPrefix(bool may_make);
  // Throws StoreUnavailable if `verdict` (on a valid marker) refuses another home's store.
  void RefuseIfAnotherHomes(const MarkerVerdict& verdict) const;
  // Deletes a copy that did not hash to its name and throws IntegrityError.
  [[noreturn]] void RejectCopy(const std::string& hash, const std::string& why);
  void PutText(const std::string& key, const std::string& text, const char* what);
  std::optional<std::string> GetText(const std::string& key, const char* what);
  void DeleteKey(const std::string& key, const char* what);
  std::vector<std::string> ListKeys(const std::string& key_prefix);
  // nullopt if the listing needs more than max_pages pages. `sizes`, if given, gets each
  // object's size, in the order of the keys.
  std::optional<std::vector<std::string>> ListKeysUpTo(const std::string& key_prefix,
                                                       size_t max_pages,
                                                       std::vector<uint64_t>* sizes = nullptr);

  std::filesystem::path index_dir_;
  S3Client client_;
  // SetOwner's, before the first Check: set once, then only read.
  StoreClaim claim_;
  // Cleared once the server refused a PUT for its checksum headers and took it without
  // them (an older S3-compatible server): its chunks then carry no stored SHA-256.
  std::atomic<bool> send_checksums_{true};
  // Set once a copy came back without a SHA-256 (its source kept none): later copies ask
  // the server to compute one.
  std::atomic<bool> hash_copies_{false};
};

}  // namespace imagerelay
