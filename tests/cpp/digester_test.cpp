// The digester on its own: a real catalog and real local stores in a temporary directory,
// its loop run on threads the test joins.
#include "engine/digester.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <nlohmann/json.hpp>
#include <thread>
#include <vector>

#include "imagerelay/error.hpp"
#include "parts_home.hpp"

namespace imagerelay {
namespace {

class DigesterTest : public testing_util::PartsHome {
 protected:
  DigesterTest() : stores_(RegionStores()) {}
  ~DigesterTest() override { JoinAll(); }

  Digester::Parts Parts() {
    return {.catalog = *catalog_,
            .store_for = [this](const std::string& region) { return stores_.at(region); },
            .load_manifest =
                [this](const Image& image, Store& store) {
                  ++manifest_loads_;
                  auto manifest = store.GetManifest(image.id);
                  if (!manifest) ThrowCode(codes::kIntegrityError, "no manifest of " + image.id);
                  return *manifest;
                },
            .note_damage = [](const std::exception&, const std::string&, Store&) {},
            .write = [this](const auto& fn) { Write(fn); },
            .notify_changed =
                [this] {
                  if (on_change_) on_change_();
                },
            .spawn = [this](std::function<void()> fn) { threads_.emplace_back(std::move(fn)); }};
  }

  // Waits for every loop the digester started.
  void JoinAll() {
    for (auto& thread : threads_) thread.join();
    threads_.clear();
  }

  // An Available image in `region` without a digest, imported from `path`.
  Image AddImage(const std::string& id, const std::string& region,
                 const std::filesystem::path& path) {
    auto source = OpenFileSource(path);
    ImportOptions options;
    options.chunk_size = kChunk;
    options.defer_digest_hole_bytes = 1;  // as an import of a mostly empty file does
    CancelToken cancel;
    const Manifest manifest = ImportToStore(*source, *stores_.at(region), options, cancel, {});
    EXPECT_EQ(manifest.digest, "");
    stores_.at(region)->PutManifest(id, manifest);
    Image image{.id = id, .name = id, .region = region, .owner = "default"};
    image.status = ImageStatus::kAvailable;
    image.size = source->size();
    catalog_->Write([&](CatalogTx& tx) { tx.InsertImage(image); });
    return image;
  }

  // An Available copy of `source` in `region`, without a digest (it inherits the gap).
  Image AddCopy(const std::string& id, const std::string& region, const Image& source) {
    const auto manifest = stores_.at(source.region)->GetManifest(source.id);
    stores_.at(region)->PutManifest(id, *manifest);
    Image copy = source;
    copy.id = id;
    copy.region = region;
    copy.source_image_id = source.id;
    copy.source_region = source.region;
    catalog_->Write([&](CatalogTx& tx) { tx.InsertImage(copy); });
    return copy;
  }

  std::string DigestInCatalog(const std::string& id) {
    std::string digest;
    catalog_->Read([&](CatalogTx& tx) { digest = tx.GetImage(id)->digest; });
    return digest;
  }

  std::map<std::string, std::shared_ptr<Store>> stores_;
  std::vector<std::thread> threads_;
  std::atomic<int> manifest_loads_{0};
  std::function<void()> on_change_;  // called by notify_changed, on the digester's thread
};

TEST_F(DigesterTest, RecordsTheDigestOfAnImageWithoutOneAndHandsItToItsCopies) {
  const auto path = SparseFile(64 * kChunk);
  const Image image = AddImage("m-aaaaaaa1", "bj", path);
  const Image copy = AddCopy("m-ccccccc1", "gz", image);
  Digester digester(Parts());
  digester.Schedule();
  JoinAll();

  const std::string expected = DigestOfFile(path);
  EXPECT_EQ(DigestInCatalog(image.id), expected);
  EXPECT_EQ(DigestInCatalog(copy.id), expected);  // the same chunks, hashed once
  EXPECT_EQ(manifest_loads_, 1);
  for (const auto& [id, region] : {std::pair{image.id, "bj"}, std::pair{copy.id, "gz"}}) {
    EXPECT_EQ(stores_.at(region)->GetManifest(id)->digest, expected) << id;
    auto record = nlohmann::json::parse(*stores_.at(region)->GetImageRecord(id));
    EXPECT_EQ(record["digest"], expected) << id;
  }
  const auto recorded = EventsOfType("image.digest");
  ASSERT_EQ(recorded.size(), 2u);
  EXPECT_EQ(recorded[0].image_id, image.id);
  EXPECT_EQ(recorded[1].image_id, copy.id);
  EXPECT_EQ(nlohmann::json::parse(recorded[0].detail_json)["digest"], expected);
  EXPECT_FALSE(digester.Running());
  EXPECT_FALSE(digester.Progress(image.id));  // forgotten once done
  EXPECT_FALSE(digester.Failure(image.id));

  digester.Schedule();  // nothing left to digest: nothing is read again
  JoinAll();
  EXPECT_EQ(manifest_loads_, 1);
}

TEST_F(DigesterTest, ProgressIsVisibleWhileItRuns) {
  const Image image = AddImage("m-aaaaaaa2", "bj", SparseFile(4096 * kChunk));  // 256 MiB
  Digester digester(Parts());
  std::vector<IoProgress> seen;  // as a waiter reads it after each change
  on_change_ = [&] {
    if (auto progress = digester.Progress(image.id)) seen.push_back(*progress);
  };
  EXPECT_FALSE(digester.Progress(image.id));
  digester.Schedule();
  EXPECT_TRUE(digester.Running());
  JoinAll();

  ASSERT_FALSE(seen.empty());
  EXPECT_LT(seen.front().bytes_done, image.size);  // heard before the end
  EXPECT_EQ(seen.back().bytes_done, image.size);
  for (size_t i = 0; i < seen.size(); ++i) {
    EXPECT_EQ(seen[i].bytes_total, image.size);
    if (i > 0) EXPECT_GE(seen[i].bytes_done, seen[i - 1].bytes_done);
  }
  EXPECT_FALSE(digester.Progress(image.id));
  EXPECT_FALSE(digester.Running());
  EXPECT_NE(DigestInCatalog(image.id), "");
}

TEST_F(DigesterTest, AFailureIsRememberedReportedAndNotRetried) {
  const Image image = AddImage("m-aaaaaaa3", "bj", SparseFile(64 * kChunk));
  stores_.at("bj")->DeleteManifest(image.id);
  Digester digester(Parts());
  digester.Schedule();
  JoinAll();

  const auto failure = digester.Failure(image.id);
  ASSERT_TRUE(failure);
  EXPECT_EQ(failure->code, codes::kIntegrityError);
  EXPECT_EQ(failure->message, "no manifest of " + image.id);
  const auto failed = EventsOfType("image.digest_failed");
  ASSERT_EQ(failed.size(), 1u);
  EXPECT_EQ(failed[0].image_id, image.id);
  const auto detail = nlohmann::json::parse(failed[0].detail_json);
  EXPECT_EQ(detail["code"], codes::kIntegrityError);
  EXPECT_EQ(detail["error"], failure->message);
  EXPECT_EQ(DigestInCatalog(image.id), "");
  EXPECT_FALSE(digester.Running());

  digester.Schedule();  // this process does not try again
  JoinAll();
  EXPECT_EQ(manifest_loads_, 1);
  EXPECT_EQ(EventsOfType("image.digest_failed").size(), 1u);
  EXPECT_TRUE(digester.Failure(image.id));
}

TEST_F(DigesterTest, StopEndsTheDigestBeingComputedForGood) {
  const Image image = AddImage("m-aaaaaaa4", "bj", SparseFile(64 * kChunk));
  Digester digester(Parts());
  on_change_ = [&] {
    if (digester.Progress(image.id)) digester.Stop();  // the engine closes mid-digest
  };
  digester.Schedule();
  JoinAll();
  EXPECT_FALSE(digester.Running());
  EXPECT_EQ(DigestInCatalog(image.id), "");
  EXPECT_FALSE(digester.Failure(image.id));  // stopped, not failed: a later open digests it
  EXPECT_TRUE(events_.empty());

  digester.Schedule();
  JoinAll();
  EXPECT_FALSE(digester.Running());
  EXPECT_EQ(DigestInCatalog(image.id), "");
  EXPECT_EQ(manifest_loads_, 1);
}

}  // namespace
}  // namespace imagerelay
