// The digester: computes the whole-image digest of images that became Available without
// one. An import leaves the digest for later when the file is mostly holes (hashing their
// zeros would make the import as slow as the virtual size; see ImportOptions), and a copy
// of such an image inherits the gap. The digest is computed from the stored chunks, each
// checked against its name, then written to the manifest, the image record and the
// catalog, and handed on to the image's Available copies.
#include <cstdio>

#include <nlohmann/json.hpp>

#include "engine/engine_impl.hpp"
#include "imagerelay/error.hpp"
#include "imagerelay/image_io.hpp"
#include "imagerelay/log.hpp"

namespace imagerelay {
namespace {

bool NeedsDigest(const Image& image) {
  return image.status == ImageStatus::kAvailable && image.digest.empty();
}

}  // namespace

void Engine::Impl::ScheduleDigests() {
  {
    std::lock_guard lock(digest_mutex);
    if (digester_running) {
      digest_rescan = true;  // the running digester looks again before it stops
      return;
    }
    digester_running = true;
  }
  SpawnBackground([this] { DigestLoop(); });
}

void Engine::Impl::DigestLoop() {
  for (;;) {
    std::optional<Image> next;
    catalog->Read([&](CatalogTx& tx) {
      for (auto& image : tx.ListImages({})) {
        std::lock_guard lock(digest_mutex);
        if (NeedsDigest(image) && !digest_failures.contains(image.id)) {
          next = std::move(image);
          return;
        }
      }
    });
    if (!next || closing) {
      bool stop = true;
      {
        std::lock_guard lock(digest_mutex);
        if (!next && digest_rescan && !closing) {
          digest_rescan = false;
          stop = false;
        } else {
          digester_running = false;
        }
      }
      if (!stop) continue;
      NotifyChanged();  // WaitDigest and WaitIdle callers re-check
      return;
    }
    try {
      auto store = StoreFor(next->region);
      const Manifest manifest = LoadManifest(*next, *store);
      // Computed from the stored bytes even when the manifest names a digest: the chunk-list
      // check does not cover that field, and a digest is recorded only as read.
      std::string digest;
      // Waiters hear how far it got (a 200 GiB sparse image takes minutes of hashing zeros).
      auto progress = [this, &id = next->id](const IoProgress& p) {
        {
          std::lock_guard lock(digest_mutex);
          digest_progress[id] = p;
        }
        NotifyChanged();
      };
      struct ForgetProgress {
        Impl* impl;
        const std::string& id;
        ~ForgetProgress() {
          std::lock_guard lock(impl->digest_mutex);
          impl->digest_progress.erase(id);
        }
      } forget{this, next->id};
      try {
        digest =
            HashStoredImage(*store, manifest, "image " + next->id + " in region " + next->region,
                            digest_cancel, progress);
      } catch (const DamagedChunkError& e) {
        NoteDamage(e, next->region, *store);
        throw;
      }
      RecordDigest(next->id, digest);
    } catch (const Cancelled&) {
      std::lock_guard lock(digest_mutex);
      digester_running = false;
      return;
    } catch (const std::exception& e) {
      const Error* error = dynamic_cast<const Error*>(&e);
      const std::string code = error ? error->code() : codes::kTransferFailed;
      const std::string message = error ? error->message() : e.what();
      bool still_there = false;
      Write([&](CatalogTx& tx, PendingEvents& events) {
        auto image = tx.GetImage(next->id);
        still_there = image && NeedsDigest(*image);
        if (!still_there) return;  // deleted meanwhile: its chunks may be gone, no matter
        events.Append(tx, MakeEvent(event_type::kImageDigestFailed, image->owner, &*image, "",
                                    nlohmann::json{{"code", code}, {"error", message}}));
      });
      std::lock_guard lock(digest_mutex);
      // Not retried by this process (a later open tries again); WaitDigest reports it.
      if (still_there) digest_failures[next->id] = {code, message};
    }
  }
}

void Engine::Impl::RecordDigest(const std::string& image_id, const std::string& digest) {
  std::vector<Image> updated;
  Write([&](CatalogTx& tx, PendingEvents& events) {
    updated.clear();
    auto image = tx.GetImage(image_id);
    if (!image || image->status == ImageStatus::kDeleted || !image->digest.empty()) return;
    std::vector<Image> targets{*image};
    // Available copies of it hold the same chunks: the same digest.
    for (auto& copy : tx.ListImages({})) {
      if (copy.source_image_id == image_id && NeedsDigest(copy) && copy.size == image->size) {
        targets.push_back(std::move(copy));
      }
    }
    for (auto& target : targets) {
      target.digest = digest;
      tx.UpdateImageFields(target);
      events.Append(tx, MakeEvent(event_type::kImageDigest, target.owner, &target, "",
                                  nlohmann::json{{"digest", digest}}));
      updated.push_back(target);
    }
  });
  // The stores follow the catalog; should this fail, the catalog still holds the digest and
  // the manifest's empty digest only means "not written yet".
  for (const auto& image : updated) {
    try {
      auto store = StoreFor(image.region);
      if (auto manifest = store->GetManifest(image.id); manifest && manifest->digest.empty()) {
        manifest->digest = digest;
        store->PutManifest(image.id, *manifest);
      }
      store->PutImageRecord(image.id, ImageRecordJson(image));
    } catch (const std::exception& e) {
      Log(LogLevel::kWarning,
          "recording the digest of " + image.id + " in its store: " + std::string(e.what()));
    }
  }
}

std::string Engine::WaitDigest(const std::string& account, const std::string& image_id,
                               std::optional<double> timeout_s, const CancelToken* cancel,
                               const ProgressFn& progress) {
  bool scheduled = false;
  bool reported = false;
  Image image;
  const bool known = impl_->WaitUntil(
      [&] {
        impl_->catalog->Read([&](CatalogTx& tx) {
          RequireAccount(tx, account);
          image = LoadVisible(tx, account, image_id);
        });
        if (!image.digest.empty()) {
          if (reported) {  // the end, which the digester's last report may not have said
            IoProgress end;
            end.bytes_total = end.bytes_done = image.size;
            progress(end);
          }
          return true;
        }
        if (image.status != ImageStatus::kAvailable && image.status != ImageStatus::kReplicating) {
          ThrowCode(codes::kImageStatusForbidden, "image " + image.id + " is " +
                                                      std::string(ToString(image.status)) +
                                                      "; it has no digest");
        }
        std::optional<IoProgress> hashed;
        {
          std::lock_guard lock(impl_->digest_mutex);
          if (auto it = impl_->digest_failures.find(image.id); it != impl_->digest_failures.end()) {
            ThrowCode(it->second.first, "the digest of image " + image.id +
                                            " could not be computed: " + it->second.second);
          }
          // A copy of an image without a digest gets its source's (RecordDigest).
          for (const auto& id : {image.id, image.source_image_id}) {
            if (auto it = impl_->digest_progress.find(id); it != impl_->digest_progress.end()) {
              hashed = it->second;
              break;
            }
          }
        }
        if (hashed && progress) {
          progress(*hashed);
          reported = true;
        }
        if (image.status == ImageStatus::kAvailable && !scheduled) {
          impl_->ScheduleDigests();  // in case no digester runs in this process yet
          scheduled = true;
        }
        return false;
      },
      timeout_s, cancel);
  if (!known) {
    ThrowCode(codes::kTimeout, "the digest of image " + image.id +
                                   " is still being "
                                   "computed after " +
                                   std::to_string(timeout_s.value_or(0)) + " s");
  }
  return image.digest;
}

}  // namespace imagerelay
