#include <gtest/gtest.h>

#include <fstream>
#include <random>

#include "imagerelay/error.hpp"
#include "imagerelay/sha256.hpp"
#include "imagerelay/store.hpp"
#include "scratch_dir.hpp"
#include "store/local_store.hpp"

namespace imagerelay {
namespace {

using testing_util::ScratchDir;

// Puts a chunk of `size` random bytes and returns its name.
std::string PutRandomChunk(Store& store, size_t size, uint32_t seed) {
  std::vector<std::byte> data(size);
  std::mt19937 rng(seed);
  for (auto& b : data) b = static_cast<std::byte>(rng());
  std::string hash = Sha256Hex(data.data(), data.size());
  store.PutChunk(hash, data);
  return hash;
}

Manifest ManifestOfChunks(const std::vector<std::string>& chunks) {
  return Manifest::InMemory(1000 * chunks.size(), 1000, chunks, "sha256:" + std::string(64, '0'));
}

std::set<std::string> Listed(Store& store) {
  auto list = store.ListChunks();
  return {list.begin(), list.end()};
}

TEST(SweepTest, RemovesOnlyTheChunksOfADeletedImage) {
  ScratchDir dir;
  LocalStore store(dir.path());
  std::string c1 = PutRandomChunk(store, 1000, 1);
  std::string c2 = PutRandomChunk(store, 1000, 2);
  std::string c3 = PutRandomChunk(store, 1000, 3);
  std::string c4 = PutRandomChunk(store, 1000, 4);
  store.PutManifest("m-aaaaaaaa", ManifestOfChunks({c1, c2, "", c3}));
  store.PutManifest("m-bbbbbbbb", ManifestOfChunks({c2, c3, c4, ""}));

  SweepResult nothing = SweepStore(store);
  EXPECT_EQ(nothing.chunks_kept, 4u);
  EXPECT_EQ(nothing.chunks_removed, 0u);
  EXPECT_EQ(nothing.bytes_removed, 0u);

  store.DeleteManifest("m-aaaaaaaa");
  SweepResult result = SweepStore(store);
  EXPECT_EQ(result.chunks_kept, 3u);
  EXPECT_EQ(result.chunks_removed, 1u);
  EXPECT_EQ(result.bytes_removed, 1000u);
  EXPECT_EQ(Listed(store), (std::set<std::string>{c2, c3, c4}));
}

TEST(SweepTest, KeepsPinnedChunksAndRemovesOrphans) {
  ScratchDir dir;
  LocalStore store(dir.path());
  std::string used = PutRandomChunk(store, 500, 1);
  std::string pinned = PutRandomChunk(store, 600, 2);  // a task in flight wrote it
  std::string orphan1 = PutRandomChunk(store, 700, 3);
  std::string orphan2 = PutRandomChunk(store, 800, 4);
  store.PutManifest("m-aaaaaaaa", ManifestOfChunks({used}));

  SweepResult result = SweepStore(store, {pinned, std::string(64, 'e')});
  EXPECT_EQ(result.chunks_kept, 2u);
  EXPECT_EQ(result.chunks_removed, 2u);
  EXPECT_EQ(result.bytes_removed, 1500u);
  EXPECT_EQ(Listed(store), (std::set<std::string>{used, pinned}));

  // Without the pin the chunk goes too; with no manifests at all, everything goes.
  store.DeleteManifest("m-aaaaaaaa");
  result = SweepStore(store);
  EXPECT_EQ(result.chunks_removed, 2u);
  EXPECT_TRUE(store.ListChunks().empty());
}

TEST(SweepTest, EmptyStore) {
  ScratchDir dir;
  LocalStore store(dir.path() / "never-created");
  SweepResult result = SweepStore(store);
  EXPECT_EQ(result.chunks_kept, 0u);
  EXPECT_EQ(result.chunks_removed, 0u);
}

TEST(SweepTest, ADamagedManifestStopsTheSweep) {
  ScratchDir dir;
  LocalStore store(dir.path());
  std::string c1 = PutRandomChunk(store, 100, 1);
  store.Check();
  // Its chunk list is unreadable, so no chunk may be presumed unused.
  std::ofstream(dir.path() / "manifests" / "m-aaaaaaaa.json") << "{\"chunks\":[\"" << c1;
  EXPECT_THROW(SweepStore(store), IntegrityError);
  EXPECT_TRUE(store.HasChunk(c1));
}

}  // namespace
}  // namespace imagerelay
