// Runs an import (file -> region store) and recovers imports whose process died.
#include <chrono>

#include "engine/engine_impl.hpp"
#include "imagerelay/disk_format.hpp"
#include "imagerelay/error.hpp"
#include "imagerelay/image_io.hpp"

namespace imagerelay {
// Registers an import's cancel token for Close() while the import runs.
class Engine::Impl::RunningImport {
 public:
  RunningImport(Engine::Impl& impl, std::string key, const CancelToken* stop)
      : impl_(impl), key_(std::move(key)), token_(std::make_shared<CancelToken>(stop)) {
    std::lock_guard lock(impl_.running_mutex);
    impl_.running[key_] = token_;
    if (impl_.closing.load()) token_->Cancel();  // Close() may have fired the others already
  }
  ~RunningImport() {
    std::lock_guard lock(impl_.running_mutex);
    impl_.running.erase(key_);
  }
  const CancelToken& token() const { return *token_; }

 private:
  Engine::Impl& impl_;
  std::string key_;
  std::shared_ptr<CancelToken> token_;
};

void Engine::Impl::RunImport(const std::string& image_id, const std::string& source_path,
                             const CancelToken* stop, const ProgressFn& progress) {
  Image image;
  catalog->Read([&](CatalogTx& tx) { image = *tx.GetImage(image_id); });
  const std::string lease_key = std::string(kImportKeyPrefix) + image_id;
  auto last_renew = std::chrono::steady_clock::now();
  RunningImport running_import(*this, lease_key, stop);
  const CancelToken& cancel = running_import.token();
  // CreateFailed with the reason; the chunks it stored go with the region's next sweep.
  auto fail = [&](const std::string& code, const std::string& message) {
    image.error = message;
    Write([&](CatalogTx& tx, PendingEvents& events) {
      tx.UpdateImageFields(image);
      tx.TransitionImage(image.id, ImageStatus::kCreating, ImageEvent::kImportFailed);
      tx.PutSetting(lease_key, "");
      tx.SetSweepNeeded(image.region, true);
      events.Append(tx, MakeEvent(event_type::kImageCreateFailed, image.owner, &image, "",
                                  nlohmann::json{{"code", code}}));
    });
    sweeper->MaybeSweep(image.region);
  };
  try {
    auto store = StoreFor(image.region);
    store->Check();
    auto source = OpenImportSource(source_path, &cancel);
    // The file may have been replaced since the request was checked: what is stored must be
    // what the image records.
    const DiskFormat disk = ProbeDiskFormat(*source);
    if (disk.format != image.format || disk.virtual_size != image.virtual_size) {
      ThrowCode(codes::kInvalidParameter,
                "source " + source->describe() + " changed after the import was requested (" +
                    "it is now a " + disk.format + " image); import it again");
    }
    ImportOptions io;
    io.chunk_size = options.limits.chunk_size;
    io.buffer_memory = options.limits.buffer_memory;
    io.threads = 8;  // writers mostly wait on flushes: more of them share each flush
    io.defer_digest_hole_bytes = options.defer_digest_hole_bytes;
    io.spool_dir = CacheDir();
    auto manifest = ImportToStore(*source, *store, io, cancel, [&](const IoProgress& p) {
      if (progress) progress(p);
      auto now = std::chrono::steady_clock::now();
      if (now - last_renew < std::chrono::milliseconds(options.lease_ms / 3)) return;
      last_renew = now;
      catalog->Write([&](CatalogTx& tx) {
        tx.PutSetting(lease_key, Lease{worker_id, NowUs() + options.lease_ms * 1000}.Encode());
      });
    });
    image.size = manifest.size;
    image.digest = manifest.digest;
    store->Flush();
    // Committed only once every chunk it needs is confirmed in the store (a chunk another
    // image held may have been quarantined meanwhile).
    if (auto missing = MissingChunks(*store, manifest, &cancel); missing.count != 0) {
      ThrowCode(codes::kTransferFailed,
                std::to_string(missing.count) + " chunk(s) of the import (" + missing.first +
                    " first) are not in region " + image.region +
                    "'s store after they were written; check the store and import again");
    }
    store->PutManifest(image.id, manifest);
    store->PutImageRecord(image.id, ImageRecordJson(image));
    Write([&](CatalogTx& tx, PendingEvents& events) {
      tx.UpdateImageFields(image);
      tx.PutManifestDigest(image.id, manifest.ChunkListDigest());
      if (!tx.TransitionImage(image.id, ImageStatus::kCreating, ImageEvent::kImportSucceeded)) {
        ThrowCode(codes::kTransferFailed, "image " + image.id + " changed during its import");
      }
      tx.PutSetting(lease_key, "");
      image.status = ImageStatus::kAvailable;
      events.Append(tx, MakeEvent(event_type::kImageAvailable, image.owner, &image, "",
                                  nlohmann::json{{"size", image.size}}));
    });
    if (image.digest.empty()) digester->Schedule();
  } catch (const Cancelled&) {
    const std::string message = "the import into image " + image.id +
                                " was stopped before it finished (interrupted, or its engine "
                                "closed); import the file again";
    fail(codes::kTransferFailed, message);
    ThrowCode(codes::kTransferFailed, message);
  } catch (const Error& e) {
    fail(e.code(), e.message());
    throw;
  }
}

void Engine::Impl::RecoverInterruptedImports() {
  std::vector<std::string> regions;
  Write([&](CatalogTx& tx, PendingEvents& events) {
    TimeUs now = NowUs();
    for (auto image : tx.ListImages({})) {
      if (image.status != ImageStatus::kCreating) continue;
      const Lease lease =
          Lease::Decode(tx.GetSetting(std::string(kImportKeyPrefix) + image.id).value_or(""));
      if (LeaseHolderAlive(lease, now)) continue;
      image.error = "the import was interrupted (its process stopped); import the file again";
      tx.UpdateImageFields(image);
      tx.TransitionImage(image.id, ImageStatus::kCreating, ImageEvent::kImportFailed);
      tx.PutSetting(std::string(kImportKeyPrefix) + image.id, "");
      tx.SetSweepNeeded(image.region, true);
      events.Append(tx, MakeEvent(event_type::kImageCreateFailed, image.owner, &image, "",
                                  nlohmann::json{{"code", codes::kTransferFailed}}));
      regions.push_back(image.region);
    }
  });
  for (const auto& region : regions) sweeper->MaybeSweep(region);
}

}  // namespace imagerelay
