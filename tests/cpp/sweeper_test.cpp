// The sweeper on its own: a real catalog and a real local store in a temporary directory.
// (sweep_test.cpp tests SweepStore, the store's side of a sweep.)
#include "engine/sweeper.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>

#include <functional>
#include <random>
#include <set>
#include <thread>
#include <utility>
#include <vector>

#include "imagerelay/sha256.hpp"
#include "imagerelay/state.hpp"
#include "scratch_dir.hpp"

namespace imagerelay {
namespace {

using testing_util::ScratchDir;

class SweeperTest : public ::testing::Test {
 protected:
  SweeperTest() : catalog_(OpenSqliteCatalog(dir_ / "catalog.db")), store_(OpenStore(uri_)) {
    store_->Check();
    catalog_->Write([&](CatalogTx& tx) {
      tx.InsertAccount({"default", "default"});
      tx.InsertRegion({"bj", "bj", uri_});
    });
  }

  Sweeper::Parts Parts() {
    return {.catalog = *catalog_,
            .holder = "this-host:1:me:sweep",
            .holder_alive = [this](const Lease& lease,
                                   TimeUs) { return lease.owner != "dead-host:1:gone:sweep"; },
            .store_for_uri =
                [this](const std::string& uri, const std::string& region) {
                  EXPECT_EQ(uri, uri_);
                  EXPECT_EQ(region, "bj");
                  ++sweeps_started_;
                  if (while_sweeping_) while_sweeping_();
                  return store_;
                }};
  }

  std::string PutChunk(uint32_t seed) {
    std::vector<std::byte> data(1000);
    std::mt19937 rng(seed);
    for (auto& b : data) b = static_cast<std::byte>(rng());
    const std::string hash = Sha256Hex(data.data(), data.size());
    store_->PutChunk(hash, data);
    store_->Flush();
    return hash;
  }

  // An image of bj in `status` whose manifest (in the store) names `chunk`.
  void AddImage(const std::string& id, ImageStatus status, const std::string& chunk) {
    store_->PutManifest(id,
                        Manifest::InMemory(1000, 1000, {chunk}, "sha256:" + std::string(64, '0')));
    store_->PutImageRecord(id, "{}");
    Image image{.id = id, .name = id, .region = "bj", .owner = "default"};
    image.status = status;
    image.size = 1000;
    catalog_->Write([&](CatalogTx& tx) { tx.InsertImage(image); });
  }

  void FlagGarbage() {
    catalog_->Write([](CatalogTx& tx) { tx.SetSweepNeeded("bj", true); });
  }
  std::vector<std::string> RegionsNeedingSweep() {
    std::vector<std::string> regions;
    catalog_->Read([&](CatalogTx& tx) { regions = tx.RegionsNeedingSweep(); });
    return regions;
  }
  std::set<std::string> Chunks() {
    auto list = store_->ListChunks();
    return {list.begin(), list.end()};
  }

  ScratchDir dir_;
  const std::string uri_ = (dir_ / "bj").string();
  std::unique_ptr<Catalog> catalog_;
  std::shared_ptr<Store> store_;
  std::atomic<int> sweeps_started_{0};
  std::function<void()> while_sweeping_;  // runs once the sweep has its lease
};

TEST_F(SweeperTest, DoesNotSweepWhileTheRegionHasAWriterAndDoesAfter) {
  const std::string kept = PutChunk(1);
  const std::string failed = PutChunk(2);
  const std::string garbage = PutChunk(3);  // what a cancelled copy left
  AddImage("m-aaaaaaa1", ImageStatus::kAvailable, kept);
  AddImage("m-bbbbbbb1", ImageStatus::kCreating, failed);  // an import in flight
  FlagGarbage();
  Sweeper sweeper(Parts());

  catalog_->Read([](CatalogTx& tx) { EXPECT_TRUE(RegionHasWriters(tx, "bj", NowUs())); });
  sweeper.MaybeSweep("bj");
  EXPECT_EQ(sweeps_started_.load(), 0);
  EXPECT_EQ(Chunks(), (std::set<std::string>{kept, failed, garbage}));
  EXPECT_EQ(RegionsNeedingSweep(), std::vector<std::string>{"bj"});  // put off, not forgotten

  // The import fails: no writer is left, and its manifest is garbage too.
  catalog_->Write([](CatalogTx& tx) {
    ASSERT_TRUE(
        tx.TransitionImage("m-bbbbbbb1", ImageStatus::kCreating, ImageEvent::kImportFailed));
  });
  catalog_->Read([](CatalogTx& tx) { EXPECT_FALSE(RegionHasWriters(tx, "bj", NowUs())); });
  sweeper.SweepPending();
  EXPECT_EQ(sweeps_started_.load(), 1);
  EXPECT_EQ(Chunks(), std::set<std::string>{kept});
  EXPECT_EQ(store_->ListManifests(), std::vector<std::string>{"m-aaaaaaa1"});
  EXPECT_FALSE(store_->GetImageRecord("m-bbbbbbb1"));
  EXPECT_TRUE(RegionsNeedingSweep().empty());
  catalog_->Read([](CatalogTx& tx) { EXPECT_FALSE(tx.GetSweepLease("bj")); });  // released

  sweeper.SweepPending();  // nothing flagged: no sweep
  EXPECT_EQ(sweeps_started_.load(), 1);
}

TEST_F(SweeperTest, TheFlagIsClearedOnlyIfNoGarbageCameMeanwhile) {
  AddImage("m-aaaaaaa2", ImageStatus::kAvailable, PutChunk(1));
  const std::string garbage = PutChunk(2);
  FlagGarbage();
  Sweeper sweeper(Parts());
  std::string late;
  while_sweeping_ = [&] {
    late = PutChunk(3);  // a delete while the sweep runs: its chunk may be missed
    FlagGarbage();
    while_sweeping_ = nullptr;
  };
  sweeper.MaybeSweep("bj");
  EXPECT_EQ(sweeps_started_.load(), 1);
  EXPECT_FALSE(Chunks().contains(garbage));
  EXPECT_EQ(RegionsNeedingSweep(), std::vector<std::string>{"bj"});  // swept again later

  sweeper.MaybeSweep("bj");
  EXPECT_EQ(sweeps_started_.load(), 2);
  EXPECT_FALSE(Chunks().contains(late));
  EXPECT_TRUE(RegionsNeedingSweep().empty());
}

TEST_F(SweeperTest, ALiveSweeperElsewhereKeepsTheRegionAndADeadOneGivesItUp) {
  const std::string garbage = PutChunk(1);
  FlagGarbage();
  Sweeper sweeper(Parts());
  catalog_->Write([](CatalogTx& tx) {
    ASSERT_TRUE(tx.AcquireSweepLease("bj", "other-host:1:busy:sweep", NowUs() + 60'000'000));
  });
  sweeper.MaybeSweep("bj");
  EXPECT_EQ(sweeps_started_.load(), 0);
  EXPECT_TRUE(Chunks().contains(garbage));

  // One whose holder is gone (killed mid-sweep) is given up at once.
  catalog_->Write([](CatalogTx& tx) {
    tx.ReleaseSweepLease("bj", "other-host:1:busy:sweep");
    ASSERT_TRUE(tx.AcquireSweepLease("bj", "dead-host:1:gone:sweep", NowUs() + 60'000'000));
  });
  sweeper.MaybeSweep("bj");
  EXPECT_EQ(sweeps_started_.load(), 1);
  EXPECT_TRUE(Chunks().empty());
  EXPECT_TRUE(RegionsNeedingSweep().empty());
  catalog_->Read([](CatalogTx& tx) { EXPECT_FALSE(tx.GetSweepLease("bj")); });
}

TEST_F(SweeperTest, TwoThreadsOfOneProcessNeverSweepARegionAtOnce) {
  // The lease names the process, so it lets every thread of it in: the sweeper itself must
  // keep a second thread out (two sweeps repacked the same packs and lost blocks). The
  // second waits for the first, then finds nothing left to sweep.
  AddImage("m-aaaaaaa3", ImageStatus::kAvailable, PutChunk(1));
  const std::string garbage = PutChunk(2);
  FlagGarbage();
  Sweeper sweeper(Parts());
  std::thread other;
  bool started_other = false;
  while_sweeping_ = [&] {
    if (std::exchange(started_other, true)) return;  // (not reset here: that frees this lambda)
    other = std::thread([&] { sweeper.MaybeSweep("bj"); });
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    EXPECT_EQ(sweeps_started_.load(), 1);  // the other thread waits
  };
  sweeper.MaybeSweep("bj");
  other.join();
  EXPECT_EQ(sweeps_started_.load(), 1);
  EXPECT_FALSE(Chunks().contains(garbage));
  // Once it ended, the next sweep of the region may start.
  FlagGarbage();
  sweeper.MaybeSweep("bj");
  EXPECT_EQ(sweeps_started_.load(), 2);
}

}  // namespace
}  // namespace imagerelay
