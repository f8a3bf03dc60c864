// Integrity of stored bytes: see integrity.hpp.
#include "engine/integrity.hpp"

#include <algorithm>
#include <atomic>
#include <mutex>
#include <set>
#include <thread>

#include <nlohmann/json.hpp>

#include "base/write_scope.hpp"
#include "imagerelay/error.hpp"
#include "imagerelay/image_io.hpp"
#include "imagerelay/rules.hpp"
#include "imagerelay/sha256.hpp"

namespace imagerelay {
namespace {

bool Readable(const Image& image) {
  // Destinations still being written are the copy's business, not the scrub's.
  return image.status == ImageStatus::kAvailable || image.status == ImageStatus::kNotAvailable ||
         (image.status == ImageStatus::kReplicating && image.source_image_id.empty());
}

std::string Describe(const Image& image) {
  return "image " + image.id + " in region " + image.region;
}

}  // namespace

Manifest Integrity::LoadManifest(const Image& image, Store& store, std::string* chunk_list_digest) {
  std::optional<Manifest> manifest;
  try {
    manifest = store.GetManifest(image.id);
  } catch (const IntegrityError& e) {
    MarkDamaged(image.id, e.message());
    throw;
  }
  if (!manifest) {
    // Not damage if the store itself is not there (a disk not mounted): StoreUnavailable.
    store.Check();
    const std::string why = "the manifest of " + Describe(image) + " is missing from its store";
    MarkDamaged(image.id, why);
    ThrowCode(codes::kIntegrityError, why + "; run `imagerelay scrub` or delete the image");
  }
  const std::string digest = manifest->ChunkListDigest();
  std::optional<std::string> recorded;
  parts_.catalog.Read([&](CatalogTx& tx) { recorded = tx.GetManifestDigest(image.id); });
  if (!recorded) {
    // Committed by a release that did not record it: trusted from its first use on.
    parts_.catalog.Write([&](CatalogTx& tx) {
      if (!tx.GetManifestDigest(image.id)) tx.PutManifestDigest(image.id, digest);
    });
  } else if (*recorded != digest) {
    const std::string why = "the manifest of " + Describe(image) +
                            " was changed outside imagerelay: its chunk list is not the one "
                            "committed";
    MarkDamaged(image.id, why);
    ThrowCode(codes::kIntegrityError, why + "; delete the image and replicate or import it again");
  }
  if (chunk_list_digest) *chunk_list_digest = digest;
  return std::move(*manifest);
}

void Integrity::MarkDamaged(const std::string& image_id, const std::string& why) {
  parts_.write([&](CatalogTx& tx, PendingEvents& events) {
    auto image = tx.GetImage(image_id);
    if (!image) return;
    // A Replicating image is either a source (read by its copies: damage counts, and keeps
    // it from returning to Available when they settle) or a destination still being
    // written (not readable yet: its copy's own checks apply).
    if (image->status == ImageStatus::kReplicating) {
      auto task = tx.GetTaskByDestImage(image_id);
      if (task && (task->state == TaskState::kPending || task->state == TaskState::kRunning)) {
        return;
      }
    }
    if (!tx.TransitionImage(image_id, image->status, ImageEvent::kDamageFound)) {
      return;  // not Available or Replicating (failed, gone, or already marked)
    }
    image->status = ImageStatus::kNotAvailable;
    image->error = why;
    tx.UpdateImageFields(*image);
    events.Append(tx, MakeEvent(event_type::kImageDamaged, image->owner, &*image, "",
                                nlohmann::json{{"error", why}}));
  });
}

void Integrity::ReportDamagedChunk(const std::string& region, Store& store, const std::string& hash,
                                   const std::string& why) {
  try {
    store.QuarantineChunk(hash);
  } catch (const std::exception&) {
    // Still marked below; a later scrub takes it out of use.
  }
  MarkImagesNeeding(region, store, hash, why);
}

void Integrity::OnStoreDamage(const std::string& store_uri, const std::string& hash,
                              const std::string& why) {
  std::vector<std::string> regions;
  parts_.catalog.Read([&](CatalogTx& tx) {
    for (const auto& region : tx.ListRegions()) {
      if (region.store_uri == store_uri) regions.push_back(region.id);
    }
  });
  for (const auto& region : regions)
    MarkImagesNeeding(region, *parts_.store_for(region), hash, why);
}

void Integrity::MarkImagesNeeding(const std::string& region, Store& store, const std::string& hash,
                                  const std::string& why) {
  std::vector<Image> images;
  parts_.catalog.Read(
      [&](CatalogTx& tx) { images = tx.ListImages({.region = region, .name = std::nullopt}); });
  for (const Image& image : images) {
    if (image.status != ImageStatus::kAvailable && image.status != ImageStatus::kReplicating) {
      continue;
    }
    try {
      auto manifest = store.GetManifest(image.id);
      bool needs = false;
      if (manifest) {
        manifest->ForEachWindow([&](uint64_t, const std::vector<std::string>& window) {
          needs = needs || std::ranges::find(window, hash) != window.end();
        });
      }
      if (needs) MarkDamaged(image.id, why);
    } catch (const std::exception&) {
      // An unreadable manifest is found by the next read of that image.
    }
  }
}

void Integrity::NoteDamage(const std::exception& error, const std::string& region, Store& store) {
  if (auto* damaged = dynamic_cast<const DamagedChunkError*>(&error)) {
    ReportDamagedChunk(region, store, damaged->hash(), damaged->message());
  }
}

void Integrity::RepairWindow(Store& store, const Manifest& manifest, uint64_t first,
                             const std::vector<std::string>& window,
                             const std::vector<Region>& others, const CancelToken& cancel,
                             ScrubReport& report) {
  const DistinctChunks chunks = DistinctChunksOf(manifest, first, window);
  const std::vector<bool> present = store.HasChunks(chunks.hashes, &cancel, chunks.lengths);
  for (size_t k = 0; k < chunks.hashes.size(); ++k) {
    if (present[k]) continue;
    const std::string& hash = chunks.hashes[k];
    const uint64_t length = chunks.lengths[k];
    for (const Region& other : others) {
      try {
        auto from = parts_.store_for(other.id);
        if (!from->HasChunkOfLength(hash, length, &cancel)) continue;
        std::vector<std::byte> data;
        from->GetChunk(hash, data, &cancel);
        if (data.size() != length || Sha256Hex(data.data(), data.size()) != hash) {
          ReportDamagedChunk(other.id, *from, hash,
                             "chunk " + hash + " in region " + other.id + " is corrupt");
          continue;
        }
        store.PutChunk(hash, data, &cancel);
        ++report.chunks_repaired;
        break;
      } catch (const Cancelled&) {
        throw;
      } catch (const std::exception&) {
        // That region cannot help: try the next one.
      }
    }
  }
}

ScrubReport Integrity::ScrubRegion(const std::string& account, const std::string& region,
                                   const CancelToken& cancel, const ProgressFn& progress) {
  ScrubReport report;
  report.region = region;
  auto store = parts_.store_for(region);
  // A store not there (a disk not mounted) is unavailable, not damaged: nothing is marked
  // or repaired into its place.
  store->Check();

  // 1. Every stored chunk, read and checked against its name, a few at a time; listed a
  //    page at a time (a region may hold millions of blocks).
  constexpr size_t kScrubPage = 65536;
  std::mutex mu;
  std::atomic<uint64_t> bytes{0};
  std::atomic<uint64_t> listed{0};  // for progress: the total is not known up front
  std::exception_ptr error;
  std::vector<std::string> chunks;
  std::atomic<size_t> next{0};
  const bool checks_reads = store->ChecksReads();
  // One chunk read and checked; a bad one quarantined. False: stop (cancelled, or the store
  // failed: `error`).
  auto check_one = [&](const std::string& hash, std::vector<std::byte>& data) {
    bool bad = false;
    try {
      store->GetChunk(hash, data, &cancel);
      // A store that checks its reads (blocks in packs) has hashed them already.
      bad = !checks_reads && Sha256Hex(data.data(), data.size()) != hash;
      bytes += data.size();
    } catch (const Cancelled&) {
      return false;
    } catch (const DamagedChunkError&) {
      bad = true;  // a store that checks what it reads (blocks in packs) found it wrong
    } catch (const std::exception&) {
      if (store->HasChunk(hash)) {  // unreadable, not gone: the store's fault, report it
        std::lock_guard lock(mu);
        if (!error) error = std::current_exception();
        return false;
      }
    }
    if (bad) {
      store->QuarantineChunk(hash);
      std::lock_guard lock(mu);
      report.quarantined.push_back(hash);
    }
    return true;
  };
  // Two at a time where the store checks two blocks for less than two reads (ReadsPairs);
  // a pair it does not read plainly is read one block at a time, which finds the damage.
  const size_t step = store->ReadsPairs() ? 2 : 1;
  auto check = [&] {
    std::vector<std::byte> data;
    std::vector<std::byte> second;
    for (size_t first; (first = next.fetch_add(step)) < chunks.size();) {
      if (cancel.cancelled()) return;
      const size_t end = std::min(first + step, chunks.size());
      if (end - first == 2 &&
          store->GetChunkPair(chunks[first], data, chunks[first + 1], second, &cancel)) {
        bytes += data.size() + second.size();
        continue;
      }
      for (size_t i = first; i < end; ++i) {
        if (!check_one(chunks[i], data)) return;
      }
    }
  };
  {
    std::jthread reporter([&](std::stop_token stop) {
      while (!stop.stop_requested() && progress) {
        IoProgress p;
        p.bytes_done = bytes.load();
        p.chunks_total = listed.load();
        progress(p);
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
    });
    for (std::string after;;) {
      chunks = store->ListChunksAfter(after, kScrubPage);
      if (chunks.empty()) break;
      after = chunks.back();
      // Read in the store's order (a pack store's: pack by pack), its neighbours together.
      store->PlanReadsInOrder(chunks);
      listed += chunks.size();
      next = 0;
      {
        std::vector<std::jthread> crew;
        for (int t = 1; t < 4; ++t) crew.emplace_back(check);
        check();
      }
      if (cancel.cancelled() || error) break;
      report.chunks_checked += chunks.size();
    }
  }
  if (cancel.cancelled()) throw Cancelled{};
  if (error) std::rethrow_exception(error);
  report.bytes_checked = bytes.load();
  std::sort(report.quarantined.begin(), report.quarantined.end());

  // 2. Every image of the region: what it needs and lacks is marked, then fetched from the
  //    other regions (each chunk verified on arrival), then the image is verified whole.
  std::vector<Image> images;
  std::vector<Region> others;
  parts_.catalog.Read([&](CatalogTx& tx) {
    images = tx.ListImages({.region = region, .name = std::nullopt});
    for (auto& r : tx.ListRegions()) {
      if (r.id != region) others.push_back(std::move(r));
    }
  });
  auto visible = [&](const Image& image) {
    bool shared = false;
    parts_.catalog.Read(
        [&](CatalogTx& tx) { shared = tx.ShareTime(image.id, account).has_value(); });
    return CanSee(image, account, shared);
  };
  for (const Image& listed : images) {
    if (cancel.cancelled()) throw Cancelled{};
    if (!Readable(listed)) continue;
    Manifest manifest;
    try {
      manifest = LoadManifest(listed, *store);
    } catch (const Error&) {
      if (visible(listed)) report.images_damaged.push_back(listed.id);
      continue;
    }
    const MissingChunksReport lacking = MissingChunks(*store, manifest, &cancel);
    if (lacking.count == 0 && listed.status != ImageStatus::kNotAvailable) continue;
    if (lacking.count != 0) {
      MarkDamaged(listed.id, std::to_string(lacking.count) + " of its chunks (" + lacking.first +
                                 " first) are missing or damaged in region " + region);
      const WriteScope writes_for(listed.owner);  // the repaired blocks are the owner's data
      manifest.ForEachWindow([&](uint64_t first, const std::vector<std::string>& window) {
        RepairWindow(*store, manifest, first, window, others, cancel, report);
      });
    }
    store->Flush();
    // Repaired only if the whole image reads back right: every chunk and the digest.
    bool whole = false;
    try {
      const std::string digest =
          HashStoredImage(*store, manifest, Describe(listed), cancel, {}, parts_.buffer_memory);
      Image now;
      parts_.catalog.Read([&](CatalogTx& tx) { now = *tx.GetImage(listed.id); });
      whole = now.digest.empty() || now.digest == digest;
    } catch (const Cancelled&) {
      throw;
    } catch (const std::exception& e) {
      NoteDamage(e, region, *store);
    }
    if (whole) {
      parts_.write([&](CatalogTx& tx, PendingEvents& events) {
        auto image = tx.GetImage(listed.id);
        if (!image ||
            !tx.TransitionImage(image->id, ImageStatus::kNotAvailable, ImageEvent::kRepaired)) {
          return;
        }
        image->status = ImageStatus::kAvailable;
        image->error.clear();
        tx.UpdateImageFields(*image);
        events.Append(tx, MakeEvent(event_type::kImageRepaired, image->owner, &*image));
      });
    }
    if (!visible(listed)) continue;
    (whole ? report.images_repaired : report.images_damaged).push_back(listed.id);
  }
  return report;
}

}  // namespace imagerelay
