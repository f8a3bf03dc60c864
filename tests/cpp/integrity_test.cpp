// The integrity checks on their own: a real catalog and real local stores in a temporary
// directory.
#include "engine/integrity.hpp"

#include <gtest/gtest.h>

#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <vector>

#include "imagerelay/error.hpp"
#include "imagerelay/sha256.hpp"
#include "parts_home.hpp"
#include "store/local_store.hpp"

namespace imagerelay {
namespace {

class IntegrityTest : public testing_util::PartsHome {
 protected:
  IntegrityTest() {
    for (const char* id : {"bj", "gz"}) {
      stores_[id] = std::make_shared<LocalStore>(dir_ / id);
      stores_[id]->Check();
    }
  }

  Integrity::Parts Parts() {
    return {.catalog = *catalog_,
            .store_for = [this](const std::string& region) { return stores_.at(region); },
            .write = [this](const auto& fn) { Write(fn); }};
  }

  // An Available image `id` in `region`, imported from `path`, its manifest committed as an
  // import commits it (with the digest of its chunk list, unless `record_chunk_list` is false).
  Image AddImage(const std::string& id, const std::string& region,
                 const std::filesystem::path& path, bool record_chunk_list = true) {
    auto source = OpenFileSource(path);
    ImportOptions options;
    options.chunk_size = kChunk;
    CancelToken cancel;
    const Manifest manifest = ImportToStore(*source, *stores_.at(region), options, cancel, {});
    stores_.at(region)->Flush();
    stores_.at(region)->PutManifest(id, manifest);
    Image image{.id = id, .name = id, .region = region, .owner = "default"};
    image.status = ImageStatus::kAvailable;
    image.size = source->size();
    image.digest = manifest.digest;
    catalog_->Write([&](CatalogTx& tx) {
      tx.InsertImage(image);
      if (record_chunk_list) tx.PutManifestDigest(id, manifest.ChunkListDigest());
    });
    return image;
  }

  // Checks that `id` is NotAvailable, said by the only image.damaged event; returns it.
  Image ExpectOnlyMarked(const std::string& id) {
    const Image marked = ImageInCatalog(id);
    EXPECT_EQ(marked.status, ImageStatus::kNotAvailable);
    const auto damaged = EventsOfType("image.damaged");
    EXPECT_EQ(damaged.size(), 1u);
    if (!damaged.empty()) {
      EXPECT_EQ(damaged[0].image_id, id);
      EXPECT_EQ(nlohmann::json::parse(damaged[0].detail_json)["error"], marked.error);
    }
    return marked;
  }

  std::map<std::string, std::shared_ptr<LocalStore>> stores_;
};

TEST_F(IntegrityTest, AManifestAsCommittedIsLoadedAndTheImageLeftAlone) {
  const Image image = AddImage("m-aaaaaaa1", "bj", RandomFile("a.raw", 4, 1));
  Integrity integrity(Parts());
  const Manifest manifest = integrity.LoadManifest(image, *stores_.at("bj"));
  EXPECT_EQ(manifest.ChunkListDigest(), stores_.at("bj")->GetManifest(image.id)->ChunkListDigest());
  EXPECT_EQ(ImageInCatalog(image.id).status, ImageStatus::kAvailable);
  EXPECT_TRUE(events_.empty());
}

TEST_F(IntegrityTest, AManifestCommittedWithoutARecordIsTrustedFromItsFirstUse) {
  const Image image = AddImage("m-aaaaaaa8", "bj", RandomFile("a.raw", 2, 10),
                               /*record_chunk_list=*/false);  // as an older release did
  Integrity integrity(Parts());
  const Manifest manifest = integrity.LoadManifest(image, *stores_.at("bj"));
  std::optional<std::string> recorded;
  catalog_->Read([&](CatalogTx& tx) { recorded = tx.GetManifestDigest(image.id); });
  EXPECT_EQ(recorded, manifest.ChunkListDigest());
  EXPECT_EQ(ImageInCatalog(image.id).status, ImageStatus::kAvailable);
}

TEST_F(IntegrityTest, AManifestWhoseChunkListWasChangedMarksTheImageAndThrows) {
  const Image image = AddImage("m-aaaaaaa2", "bj", RandomFile("a.raw", 4, 2));
  const Image other = AddImage("m-bbbbbbb2", "bj", RandomFile("b.raw", 4, 3));
  // Someone put another image's chunk list in place of this one's.
  stores_.at("bj")->PutManifest(image.id, *stores_.at("bj")->GetManifest(other.id));
  Integrity integrity(Parts());
  try {
    integrity.LoadManifest(image, *stores_.at("bj"));
    FAIL() << "no exception";
  } catch (const IntegrityError& e) {
    EXPECT_EQ(e.code(), codes::kIntegrityError);
    EXPECT_NE(e.message().find("changed outside imagerelay"), std::string::npos) << e.message();
  }
  const Image marked = ExpectOnlyMarked(image.id);
  EXPECT_NE(marked.error.find("changed outside imagerelay"), std::string::npos);
  EXPECT_EQ(ImageInCatalog(other.id).status, ImageStatus::kAvailable);
}

TEST_F(IntegrityTest, AMissingManifestMarksTheImageAndThrows) {
  const Image image = AddImage("m-aaaaaaa3", "bj", RandomFile("a.raw", 2, 4));
  stores_.at("bj")->DeleteManifest(image.id);
  Integrity integrity(Parts());
  EXPECT_THROW(integrity.LoadManifest(image, *stores_.at("bj")), IntegrityError);
  EXPECT_EQ(ImageInCatalog(image.id).status, ImageStatus::kNotAvailable);
  EXPECT_EQ(EventsOfType("image.damaged").size(), 1u);
}

TEST_F(IntegrityTest, ADamagedChunkMarksTheImagesOfItsRegionThatNeedItAndNoOthers) {
  const auto shared = RandomFile("a.raw", 4, 5);
  const Image needs = AddImage("m-aaaaaaa4", "bj", shared);
  const Image apart = AddImage("m-bbbbbbb4", "bj", RandomFile("b.raw", 4, 6));
  const Image elsewhere = AddImage("m-ccccccc4", "gz", shared);  // same chunk, other region
  // An import that failed after writing its manifest: not Available, left alone.
  Image failed{.id = "m-ddddddd4", .name = "failed", .region = "bj", .owner = "default"};
  failed.status = ImageStatus::kCreateFailed;
  stores_.at("bj")->PutManifest(failed.id, *stores_.at("bj")->GetManifest(needs.id));
  catalog_->Write([&](CatalogTx& tx) { tx.InsertImage(failed); });
  const std::string hash = stores_.at("bj")->GetManifest(needs.id)->Hash(2);

  Integrity integrity(Parts());
  integrity.ReportDamagedChunk("bj", *stores_.at("bj"), hash, "chunk " + hash + " is corrupt");

  EXPECT_FALSE(stores_.at("bj")->HasChunk(hash));  // quarantined: no lookup finds it
  EXPECT_TRUE(stores_.at("gz")->HasChunk(hash));
  EXPECT_EQ(ExpectOnlyMarked(needs.id).error, "chunk " + hash + " is corrupt");
  EXPECT_EQ(ImageInCatalog(apart.id).status, ImageStatus::kAvailable);
  EXPECT_EQ(ImageInCatalog(elsewhere.id).status, ImageStatus::kAvailable);
  EXPECT_EQ(ImageInCatalog(failed.id).status, ImageStatus::kCreateFailed);
}

TEST_F(IntegrityTest, OnlyADamagedChunkErrorIsNoted) {
  const Image image = AddImage("m-aaaaaaa5", "bj", RandomFile("a.raw", 3, 7));
  const std::string hash = stores_.at("bj")->GetManifest(image.id)->Hash(1);
  Integrity integrity(Parts());
  integrity.NoteDamage(std::runtime_error("disk full"), "bj", *stores_.at("bj"));
  EXPECT_TRUE(stores_.at("bj")->HasChunk(hash));
  EXPECT_EQ(ImageInCatalog(image.id).status, ImageStatus::kAvailable);

  integrity.NoteDamage(DamagedChunkError(hash, "chunk " + hash + " is damaged"), "bj",
                       *stores_.at("bj"));
  EXPECT_FALSE(stores_.at("bj")->HasChunk(hash));
  EXPECT_EQ(ImageInCatalog(image.id).status, ImageStatus::kNotAvailable);
}

TEST_F(IntegrityTest, ScrubRepairsADamagedChunkFromAnotherRegion) {
  const auto path = RandomFile("a.raw", 6, 8);
  const Image image = AddImage("m-aaaaaaa6", "bj", path);
  AddImage("m-bbbbbbb6", "gz", path);  // a copy holding the same chunks
  const std::string victim = stores_.at("bj")->GetManifest(image.id)->Hash(3);
  {
    std::fstream f(stores_.at("bj")->ChunkPath(victim),
                   std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(10);
    const char was = static_cast<char>(f.get());
    f.seekp(10);
    f.put(static_cast<char>(was ^ 0x33));
  }

  Integrity integrity(Parts());
  CancelToken cancel;
  const ScrubReport report = integrity.ScrubRegion("default", "bj", cancel, {});

  EXPECT_EQ(report.region, "bj");
  EXPECT_EQ(report.chunks_checked, 6u);
  EXPECT_EQ(report.quarantined, std::vector<std::string>{victim});
  EXPECT_EQ(report.chunks_repaired, 1u);
  EXPECT_EQ(report.images_repaired, std::vector<std::string>{image.id});
  EXPECT_TRUE(report.images_damaged.empty());
  EXPECT_TRUE(stores_.at("bj")->HasChunk(victim));
  std::vector<std::byte> data;
  stores_.at("bj")->GetChunk(victim, data);
  EXPECT_EQ(Sha256Hex(data.data(), data.size()), victim);  // the good bytes, from gz
  const Image repaired = ImageInCatalog(image.id);
  EXPECT_EQ(repaired.status, ImageStatus::kAvailable);
  EXPECT_EQ(repaired.error, "");
  // Marked while it lacked the chunk, then repaired.
  ASSERT_EQ(EventsOfType("image.damaged").size(), 1u);
  const auto events = EventsOfType("image.repaired");
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].image_id, image.id);
}

TEST_F(IntegrityTest, ScrubLeavesAnImageDamagedWhenNoRegionHoldsTheChunk) {
  const Image image = AddImage("m-aaaaaaa7", "bj", RandomFile("a.raw", 3, 9));
  const std::string victim = stores_.at("bj")->GetManifest(image.id)->Hash(0);
  stores_.at("bj")->DeleteChunk(victim);

  Integrity integrity(Parts());
  CancelToken cancel;
  const ScrubReport report = integrity.ScrubRegion("default", "bj", cancel, {});

  EXPECT_EQ(report.chunks_repaired, 0u);
  EXPECT_TRUE(report.images_repaired.empty());
  EXPECT_EQ(report.images_damaged, std::vector<std::string>{image.id});
  EXPECT_EQ(ImageInCatalog(image.id).status, ImageStatus::kNotAvailable);
  EXPECT_TRUE(EventsOfType("image.repaired").empty());
}

}  // namespace
}  // namespace imagerelay
