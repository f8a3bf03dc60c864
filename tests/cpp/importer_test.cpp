// The importer on its own: a real catalog and real local stores in a temporary directory;
// an image is recorded Creating with its import lease as Engine::ImportImage records it.
#include "engine/importer.hpp"

#include <gtest/gtest.h>

#include <map>
#include <nlohmann/json.hpp>
#include <vector>

#include "imagerelay/disk_format.hpp"
#include "imagerelay/error.hpp"
#include "parts_home.hpp"

namespace imagerelay {
namespace {

constexpr int64_t kLeaseMs = 10'000;

class ImporterTest : public testing_util::PartsHome {
 protected:
  ImporterTest() : stores_(RegionStores()) {}

  Importer::Parts Parts() {
    Limits limits;
    limits.chunk_size = kChunk;
    return {.catalog = *catalog_,
            .write = [this](const auto& fn) { Write(fn); },
            .store_for =
                [this](const std::string& region) {
                  if (while_importing_) while_importing_();
                  return stores_.at(region);
                },
            .sweep = [this](const std::string& region) { swept_.push_back(region); },
            .schedule_digest = [this] { ++digests_scheduled_; },
            .running = running_,
            .limits = limits,
            .lease_ms = kLeaseMs,
            .defer_digest_hole_bytes = defer_digest_hole_bytes_,
            .cache_dir = dir_ / "cache",
            .worker_id = "this-host:1:me",
            .holder_alive = [](const Lease& lease,
                               TimeUs) { return lease.owner.starts_with("this-host:"); }};
  }

  // A Creating image of `path` in `region`, its import lease held by `holder`.
  Image AddCreating(const std::string& id, const std::string& region,
                    const std::filesystem::path& path, const std::string& holder) {
    auto source = OpenFileSource(path);
    const DiskFormat disk = ProbeDiskFormat(*source);
    Image image{.id = id, .name = id, .region = region, .owner = "default"};
    image.status = ImageStatus::kCreating;
    image.size = source->size();
    image.format = disk.format;
    image.virtual_size = disk.virtual_size;
    catalog_->Write([&](CatalogTx& tx) {
      tx.InsertImage(image);
      if (!holder.empty()) {
        PutImportLease(tx, id, Lease{holder, NowUs() + kLeaseMs * 1000});
      }
    });
    return image;
  }

  Lease LeaseOf(const std::string& id) {
    Lease lease;
    catalog_->Read([&](CatalogTx& tx) { lease = ImportLease(tx, id); });
    return lease;
  }
  std::vector<std::string> RegionsNeedingSweep() {
    std::vector<std::string> regions;
    catalog_->Read([&](CatalogTx& tx) { regions = tx.RegionsNeedingSweep(); });
    return regions;
  }

  // Checks that `id` ended CreateFailed with `code`, said by its only image.create_failed,
  // its lease ended and its region flagged and swept; returns its error.
  std::string ExpectCreateFailed(const std::string& id, const std::string& code) {
    const Image image = ImageInCatalog(id);
    EXPECT_EQ(image.status, ImageStatus::kCreateFailed);
    const auto failed = EventsOfType("image.create_failed");
    EXPECT_EQ(failed.size(), 1u);
    if (!failed.empty()) {
      EXPECT_EQ(failed[0].image_id, id);
      EXPECT_EQ(nlohmann::json::parse(failed[0].detail_json)["code"], code);
    }
    EXPECT_EQ(LeaseOf(id).owner, "");
    EXPECT_EQ(RegionsNeedingSweep(), std::vector<std::string>{image.region});
    EXPECT_EQ(swept_, std::vector<std::string>{image.region});
    EXPECT_FALSE(running_.Contains(ImportKey(id)));
    return image.error;
  }

  std::map<std::string, std::shared_ptr<Store>> stores_;
  RunningWork running_;
  uint64_t defer_digest_hole_bytes_ = 1ULL << 30;
  std::vector<std::string> swept_;
  int digests_scheduled_ = 0;
  std::function<void()> while_importing_;  // runs once the import has begun
};

TEST_F(ImporterTest, ImportsAFileIntoItsRegionAndTheImageBecomesAvailable) {
  const auto path = RandomFile("a.raw", 5, 1);
  const Image image = AddCreating("m-aaaaaaa1", "gz", path, "this-host:1:me");
  Importer importer(Parts());
  std::vector<IoProgress> seen;
  importer.Run(image.id, path.string(), nullptr, [&](const IoProgress& p) {
    EXPECT_TRUE(running_.Contains(ImportKey(image.id)));  // Close() can stop it meanwhile
    seen.push_back(p);
  });

  const Image done = ImageInCatalog(image.id);
  EXPECT_EQ(done.status, ImageStatus::kAvailable);
  EXPECT_EQ(done.size, 5 * kChunk);
  EXPECT_EQ(done.digest, DigestOfFile(path));
  EXPECT_EQ(done.error, "");
  ASSERT_FALSE(seen.empty());
  EXPECT_EQ(seen.back().bytes_done, 5 * kChunk);
  // In the region's store: the manifest (recorded for later checks) and the image record.
  const auto manifest = stores_.at("gz")->GetManifest(image.id);
  ASSERT_TRUE(manifest);
  EXPECT_EQ(manifest->size, 5 * kChunk);
  std::optional<std::string> recorded;
  catalog_->Read([&](CatalogTx& tx) { recorded = tx.GetManifestDigest(image.id); });
  EXPECT_EQ(recorded, manifest->ChunkListDigest());
  EXPECT_EQ(nlohmann::json::parse(*stores_.at("gz")->GetImageRecord(image.id))["id"], image.id);
  EXPECT_FALSE(stores_.at("bj")->GetManifest(image.id));
  const auto available = EventsOfType("image.available");
  ASSERT_EQ(available.size(), 1u);
  EXPECT_EQ(nlohmann::json::parse(available[0].detail_json)["size"], 5 * kChunk);
  EXPECT_EQ(LeaseOf(image.id).owner, "");  // the lease ended with the import
  EXPECT_FALSE(running_.Contains(ImportKey(image.id)));
  EXPECT_TRUE(swept_.empty());
  EXPECT_EQ(digests_scheduled_, 0);  // known already
}

TEST_F(ImporterTest, AMostlyEmptyFileLeavesItsDigestToTheDigester) {
  defer_digest_hole_bytes_ = 1;
  const auto path = SparseFile(64 * kChunk);
  const Image image = AddCreating("m-aaaaaaa2", "bj", path, "this-host:1:me");
  Importer(Parts()).Run(image.id, path.string());
  const Image done = ImageInCatalog(image.id);
  EXPECT_EQ(done.status, ImageStatus::kAvailable);
  EXPECT_EQ(done.size, 64 * kChunk);
  EXPECT_EQ(done.digest, "");
  EXPECT_EQ(digests_scheduled_, 1);
}

TEST_F(ImporterTest, AnImportStoppedByClosingEndsCreateFailed) {
  const auto path = RandomFile("a.raw", 4, 2);
  const Image image = AddCreating("m-aaaaaaa3", "bj", path, "this-host:1:me");
  Importer importer(Parts());
  while_importing_ = [&] {
    EXPECT_TRUE(running_.Contains(ImportKey(image.id)));
    running_.CancelAll();  // Engine::Close
  };
  try {
    importer.Run(image.id, path.string());
    FAIL() << "the import finished";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), codes::kTransferFailed);
    EXPECT_NE(e.message().find("was stopped before it finished"), std::string::npos) << e.message();
  }
  const std::string error = ExpectCreateFailed(image.id, codes::kTransferFailed);
  EXPECT_NE(error.find("import the file again"), std::string::npos) << error;
  EXPECT_TRUE(EventsOfType("image.available").empty());
}

TEST_F(ImporterTest, AnImportStartedAfterClosingBeganEndsCreateFailed) {
  const auto path = RandomFile("a.raw", 4, 8);
  const Image image = AddCreating("m-aaaaaaa8", "bj", path, "this-host:1:me");
  running_.CancelAll();  // Close() fired the running work's tokens before this one came
  EXPECT_THROW(Importer(Parts()).Run(image.id, path.string()), TransferError);
  ExpectCreateFailed(image.id, codes::kTransferFailed);
}

TEST_F(ImporterTest, AnImportStoppedByItsCallerEndsCreateFailed) {
  const auto path = RandomFile("a.raw", 4, 3);
  const Image image = AddCreating("m-aaaaaaa4", "bj", path, "this-host:1:me");
  CancelToken ctrl_c;
  ctrl_c.Cancel();
  EXPECT_THROW(Importer(Parts()).Run(image.id, path.string(), &ctrl_c), TransferError);
  ExpectCreateFailed(image.id, codes::kTransferFailed);
}

TEST_F(ImporterTest, AFileChangedSinceTheRequestFailsWithItsCode) {
  const auto path = RandomFile("a.raw", 4, 4);
  const Image image = AddCreating("m-aaaaaaa5", "bj", path, "this-host:1:me");
  RandomFile("a.raw", 6, 5);  // replaced by a larger disk
  try {
    Importer(Parts()).Run(image.id, path.string());
    FAIL() << "the import finished";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), codes::kInvalidParameter);
    EXPECT_NE(e.message().find("changed after the import was requested"), std::string::npos);
  }
  const std::string error = ExpectCreateFailed(image.id, codes::kInvalidParameter);
  EXPECT_NE(error.find("changed after the import was requested"), std::string::npos);
}

TEST_F(ImporterTest, RecoverInterruptedFailsTheImportsWhoseHolderIsGone) {
  const auto path = RandomFile("a.raw", 2, 6);
  const Image dead = AddCreating("m-aaaaaaa6", "gz", path, "dead-host:1:gone");
  const Image live = AddCreating("m-bbbbbbb6", "bj", path, "this-host:1:other");
  Importer importer(Parts());
  importer.RecoverInterrupted();

  const std::string error = ExpectCreateFailed(dead.id, codes::kTransferFailed);
  EXPECT_EQ(error, "the import was interrupted (its process stopped); import the file again");
  EXPECT_EQ(ImageInCatalog(live.id).status, ImageStatus::kCreating);  // still importing
  EXPECT_EQ(LeaseOf(live.id).owner, "this-host:1:other");

  importer.RecoverInterrupted();  // nothing more to recover
  EXPECT_EQ(EventsOfType("image.create_failed").size(), 1u);
  EXPECT_EQ(swept_, std::vector<std::string>{"gz"});
}

TEST_F(ImporterTest, AnImportWithoutALeaseIsNobodysAndRecovered) {
  const Image image = AddCreating("m-aaaaaaa7", "bj", RandomFile("a.raw", 1, 7), "");
  Importer(Parts()).RecoverInterrupted();
  ExpectCreateFailed(image.id, codes::kTransferFailed);
}

}  // namespace
}  // namespace imagerelay
