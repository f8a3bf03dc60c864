// The digester: computes the whole-image digest of images that became Available without
// one. An import leaves the digest for later when the file is mostly holes (hashing their
// zeros would make the import as slow as the virtual size; see ImportOptions), and a copy
// of such an image inherits the gap. The digest is computed from the stored chunks, each
// checked against its name, then written to the manifest, the image record and the
// catalog, and handed on to the image's Available copies.
#include "engine/digester.hpp"

#include <nlohmann/json.hpp>

#include "engine/image_record.hpp"
#include "imagerelay/error.hpp"
#include "imagerelay/log.hpp"

namespace imagerelay {
namespace {

bool NeedsDigest(const Image& image) {
  return image.status == ImageStatus::kAvailable && image.digest.empty();
}

}  // namespace

void Digester::Schedule() {
  {
    std::lock_guard lock(mutex_);
    if (running_) {
      rescan_ = true;  // the running loop looks again before it stops
      return;
    }
    running_ = true;
  }
  parts_.spawn([this] { Loop(); });
}

std::optional<IoProgress> Digester::Progress(const std::string& image_id) const {
  std::lock_guard lock(mutex_);
  if (auto it = progress_.find(image_id); it != progress_.end()) return it->second;
  return std::nullopt;
}

std::optional<DigestFailure> Digester::Failure(const std::string& image_id) const {
  std::lock_guard lock(mutex_);
  if (auto it = failures_.find(image_id); it != failures_.end()) return it->second;
  return std::nullopt;
}

bool Digester::Running() const {
  std::lock_guard lock(mutex_);
  return running_;
}

void Digester::Loop() {
  for (;;) {
    std::optional<Image> next;
    parts_.catalog.Read([&](CatalogTx& tx) {
      for (auto& image : tx.ListImages({})) {
        std::lock_guard lock(mutex_);
        if (NeedsDigest(image) && !failures_.contains(image.id)) {
          next = std::move(image);
          return;
        }
      }
    });
    const bool stopping = cancel_.cancelled();
    if (!next || stopping) {
      {
        std::lock_guard lock(mutex_);
        if (!next && rescan_ && !stopping) {
          rescan_ = false;
          continue;
        }
        running_ = false;
      }
      parts_.notify_changed();  // WaitDigest and WaitIdle callers re-check
      return;
    }
    if (!Digest(*next)) {
      std::lock_guard lock(mutex_);
      running_ = false;
      return;
    }
  }
}

bool Digester::Digest(const Image& image) {
  try {
    auto store = parts_.store_for(image.region);
    const Manifest manifest = parts_.load_manifest(image, *store);
    // Computed from the stored bytes even when the manifest names a digest: the chunk-list
    // check does not cover that field, and a digest is recorded only as read.
    std::string digest;
    // Waiters hear how far it got (a 200 GiB sparse image takes minutes of hashing zeros).
    auto progress = [this, &id = image.id](const IoProgress& p) {
      {
        std::lock_guard lock(mutex_);
        progress_[id] = p;
      }
      parts_.notify_changed();
    };
    struct ForgetProgress {
      Digester* digester;
      const std::string& id;
      ~ForgetProgress() {
        std::lock_guard lock(digester->mutex_);
        digester->progress_.erase(id);
      }
    } forget{this, image.id};
    try {
      digest = HashStoredImage(*store, manifest, "image " + image.id + " in region " + image.region,
                               cancel_, progress, parts_.buffer_memory);
    } catch (const DamagedChunkError& e) {
      parts_.note_damage(e, image.region, *store);
      throw;
    }
    Record(image.id, digest);
  } catch (const Cancelled&) {
    return false;
  } catch (const std::exception& e) {
    const Error* error = dynamic_cast<const Error*>(&e);
    const std::string code = error ? error->code() : codes::kTransferFailed;
    const std::string message = error ? error->message() : e.what();
    bool still_there = false;
    parts_.write([&](CatalogTx& tx, PendingEvents& events) {
      auto current = tx.GetImage(image.id);
      still_there = current && NeedsDigest(*current);
      if (!still_there) return;  // deleted meanwhile: its chunks may be gone, no matter
      events.Append(tx, MakeEvent(event_type::kImageDigestFailed, current->owner, &*current, "",
                                  nlohmann::json{{"code", code}, {"error", message}}));
    });
    std::lock_guard lock(mutex_);
    // Not retried by this process (a later open tries again); WaitDigest reports it.
    if (still_there) failures_[image.id] = {code, message};
  }
  return true;
}

void Digester::Record(const std::string& image_id, const std::string& digest) {
  std::vector<Image> updated;
  parts_.write([&](CatalogTx& tx, PendingEvents& events) {
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
      auto store = parts_.store_for(image.region);
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

}  // namespace imagerelay
