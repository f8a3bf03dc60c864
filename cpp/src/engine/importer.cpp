#include "engine/importer.hpp"

#include <chrono>
#include <nlohmann/json.hpp>
#include <vector>

#include "base/write_scope.hpp"
#include "engine/image_record.hpp"
#include "imagerelay/disk_format.hpp"
#include "imagerelay/error.hpp"
#include "imagerelay/state.hpp"

namespace imagerelay {

void Importer::MarkFailed(CatalogTx& tx, PendingEvents& events, Image& image,
                          const std::string& code, const std::string& message) {
  image.error = message;
  tx.UpdateImageFields(image);
  tx.TransitionImage(image.id, ImageStatus::kCreating, ImageEvent::kImportFailed);
  PutImportLease(tx, image.id, Lease{});
  tx.SetSweepNeeded(image.region, true);
  events.Append(tx, MakeEvent(event_type::kImageCreateFailed, image.owner, &image, "",
                              nlohmann::json{{"code", code}}));
}

void Importer::Run(const std::string& image_id, const std::string& source_path,
                   const CancelToken* stop, const ProgressFn& progress) {
  Image image;
  parts_.catalog.Read([&](CatalogTx& tx) { image = *tx.GetImage(image_id); });
  auto last_renew = std::chrono::steady_clock::now();
  RunningWork::Scope running(parts_.running, ImportKey(image_id), stop);
  const CancelToken& cancel = running.token();
  // CreateFailed with the reason; the chunks it stored go with the region's next sweep.
  auto fail = [&](const std::string& code, const std::string& message) {
    parts_.write([&](CatalogTx& tx, PendingEvents& events) {
      MarkFailed(tx, events, image, code, message);
    });
    parts_.sweep(image.region);
  };
  try {
    auto store = parts_.store_for(image.region);
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
    io.chunk_size = parts_.limits.chunk_size;
    io.buffer_memory = parts_.limits.buffer_memory;
    io.threads = 8;  // writers mostly wait on flushes: more of them share each flush
    io.defer_digest_hole_bytes = parts_.defer_digest_hole_bytes;
    io.spool_dir = parts_.cache_dir;
    const WriteScope writes_for(image.owner);  // bases only among the owner's blocks
    auto manifest = ImportToStore(*source, *store, io, cancel, [&](const IoProgress& p) {
      if (progress) progress(p);
      auto now = std::chrono::steady_clock::now();
      if (now - last_renew < std::chrono::milliseconds(parts_.lease_ms / 3)) return;
      last_renew = now;
      parts_.catalog.Write([&](CatalogTx& tx) {
        PutImportLease(tx, image.id, Lease{parts_.worker_id, NowUs() + parts_.lease_ms * 1000});
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
    PutManifestAndRecord(*store, image, manifest);
    parts_.write([&](CatalogTx& tx, PendingEvents& events) {
      tx.UpdateImageFields(image);
      tx.PutManifestDigest(image.id, manifest.ChunkListDigest());
      if (!tx.TransitionImage(image.id, ImageStatus::kCreating, ImageEvent::kImportSucceeded)) {
        ThrowCode(codes::kTransferFailed, "image " + image.id + " changed during its import");
      }
      PutImportLease(tx, image.id, Lease{});
      image.status = ImageStatus::kAvailable;
      events.Append(tx, MakeEvent(event_type::kImageAvailable, image.owner, &image, "",
                                  nlohmann::json{{"size", image.size}}));
    });
    if (image.digest.empty()) parts_.schedule_digest();
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

void Importer::RecoverInterrupted() {
  // The imports whose process is gone: Creating, and no live holder of their lease.
  auto interrupted = [&](CatalogTx& tx) {
    const TimeUs now = NowUs();
    std::vector<Image> out;
    for (auto& image : tx.ListImages({})) {
      if (image.status == ImageStatus::kCreating &&
          !parts_.holder_alive(ImportLease(tx, image.id), now)) {
        out.push_back(std::move(image));
      }
    }
    return out;
  };
  // A look first (idle workers call this every few seconds): the write transaction only
  // when there is something to fail.
  bool any = false;
  parts_.catalog.Read([&](CatalogTx& tx) { any = !interrupted(tx).empty(); });
  if (!any) return;
  std::vector<std::string> regions;
  parts_.write([&](CatalogTx& tx, PendingEvents& events) {
    regions.clear();
    for (Image& image : interrupted(tx)) {
      MarkFailed(tx, events, image, codes::kTransferFailed,
                 "the import was interrupted (its process stopped); import the file again");
      regions.push_back(image.region);
    }
  });
  for (const auto& region : regions) parts_.sweep(region);
}

}  // namespace imagerelay
