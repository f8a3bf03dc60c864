// A home of the first release (4 MiB chunks, one file per chunk, store marker version 1)
// opens and works after the block store came (issue #12): old images verify, export, copy
// and delete; new ones go into packs beside them.
//
// The old home is made in the test itself: the engine imports and copies with the first
// release's chunk size, then each region's store is rewritten with LocalStore's chunk files
// (the first release's writer, still in the tree for reading them) and its packs removed.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "first_release_json.hpp"
#include "imagerelay/engine.hpp"
#include "imagerelay/error.hpp"
#include "imagerelay/store.hpp"
#include "scratch_dir.hpp"
#include "store/local_store.hpp"
#include "store/pack_store.hpp"
#include "test_bytes.hpp"

namespace imagerelay {
namespace {

namespace fs = std::filesystem;
using testing_util::ScratchDir;

constexpr uint64_t kOldChunk = 4ULL << 20;

fs::path MakeFile(const fs::path& path, const std::string& prefix, size_t size, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string bytes = prefix;
  while (bytes.size() < size) bytes += static_cast<char>(rng());
  bytes.resize(size);
  std::ofstream(path, std::ios::binary).write(bytes.data(), bytes.size());
  return path;
}

std::string ReadAll(const fs::path& path) { return testing_util::ReadFileBytes(path); }

std::shared_ptr<Engine> OpenHome(const fs::path& home, uint64_t chunk_size) {
  EngineOptions options;
  options.home = home;
  options.limits.chunk_size = chunk_size;
  options.lease_ms = 1000;
  return Engine::Open(options);
}

// Rewrites a region's store the way the first release kept it.
void MakeFirstReleaseStore(const fs::path& root) {
  auto packed = OpenStore(root.string());
  LocalStore old(root);
  std::vector<std::byte> bytes;
  for (const std::string& hash : packed->ListChunks()) {
    packed->GetChunk(hash, bytes);
    old.PutChunk(hash, bytes);
  }
  // Manifests as JSON, one hex string per chunk.
  for (const std::string& id : old.ListManifests()) {
    const std::string json = testing_util::FirstReleaseJson(*old.GetManifest(id));
    fs::remove(root / "manifests" / (id + ".bin"));
    std::ofstream(root / "manifests" / (id + ".json")) << json;
  }
  old.Flush();
  packed.reset();
  fs::remove_all(root / "packs");
  fs::remove_all(root / "index");
  std::ofstream(root / ".imagerelay-store") << R"({"format": "imagerelay-store", "version": 1})"
                                            << "\n";
}

size_t ChunkFiles(const fs::path& root) {
  size_t n = 0;
  if (!fs::exists(root / "chunks")) return 0;
  for (const auto& e : fs::recursive_directory_iterator(root / "chunks")) {
    if (e.is_regular_file() && e.path().filename().string().size() == 64) ++n;
  }
  return n;
}

TEST(UpgradeTest, AHomeOfTheFirstReleaseOpensAndWorks) {
  ScratchDir dir;
  const fs::path home = dir / "home";
  // a and b share their first 8 MiB: two chunks of the first release.
  std::string shared(8 << 20, '\0');
  std::mt19937 rng(9);
  for (char& c : shared) c = static_cast<char>(rng());
  auto a_file = MakeFile(dir / "a.raw", shared, 14 << 20, 1);
  auto b_file = MakeFile(dir / "b.raw", shared, 10 << 20, 2);
  std::string a_id, b_id, copy_id, digest_a;
  {
    auto engine = OpenHome(home, kOldChunk);
    ImportRequest request;
    request.region = "bj";
    request.source = a_file.string();
    request.name = "a";
    auto a = engine->ImportImage("default", request, true, false);
    request.source = b_file.string();
    request.name = "b";
    auto b = engine->ImportImage("default", request, true, false);
    auto job = engine->Replicate("default", a.image.id, {"gz"}, std::nullopt, std::nullopt);
    ASSERT_TRUE(engine->WaitIdle(60));
    a_id = a.image.id;
    b_id = b.image.id;
    digest_a = a.image.digest;
    copy_id = engine->GetJob("default", job.id).tasks[0].dest_image_id;
    engine->Close();
  }
  for (const char* region : {"bj", "gz", "su"}) MakeFirstReleaseStore(home / "regions" / region);
  ASSERT_EQ(ChunkFiles(home / "regions" / "bj"), 5u);  // 4 of a (one shared with b) + 2 of b - 1

  ASSERT_TRUE(fs::exists(home / "regions" / "bj" / "manifests" / (a_id + ".json")));
  auto engine = OpenHome(home, 64 << 10);  // this release's default block size
  EXPECT_EQ(engine->Verify("default", a_id), digest_a);
  EXPECT_EQ(engine->Verify("default", copy_id), digest_a);
  engine->Export("default", b_id, dir / "b.out");
  EXPECT_EQ(ReadAll(dir / "b.out"), ReadAll(b_file));

  // An old image copied to a region that holds chunk files of it already.
  auto job = engine->Replicate("default", b_id, {"gz"}, std::nullopt, std::nullopt);
  ASSERT_TRUE(engine->WaitIdle(60));
  job = engine->GetJob("default", job.id);
  ASSERT_EQ(job.tasks[0].state, TaskState::kCompleted) << job.tasks[0].error;
  EXPECT_EQ(job.tasks[0].bytes_transferred, 2u << 20);  // only b's own last 2 MiB moved
  engine->Export("default", job.tasks[0].dest_image_id, dir / "b-gz.out");
  EXPECT_EQ(ReadAll(dir / "b-gz.out"), ReadAll(b_file));

  // New imports go into packs beside the chunk files.
  ImportRequest request;
  request.region = "bj";
  request.source = MakeFile(dir / "c.raw", "", 3 << 20, 3).string();
  request.name = "c";
  auto c = engine->ImportImage("default", request, true, false);
  EXPECT_EQ(engine->Verify("default", c.image.id), c.image.digest);
  EXPECT_TRUE(fs::exists(home / "regions" / "bj" / "packs"));
  EXPECT_NE(testing_util::ReadFileBytes(home / "regions" / "bj" / ".imagerelay-store")
                .find(R"("version": 2)"),
            std::string::npos);

  // Deleting the old image frees its own chunk files, never b's or c's bytes.
  engine->Delete("default", a_id);
  ASSERT_TRUE(engine->WaitIdle(60));
  EXPECT_EQ(ChunkFiles(home / "regions" / "bj"), 3u);  // b's
  EXPECT_EQ(engine->Verify("default", b_id), engine->GetImage("default", b_id).image.digest);
  EXPECT_EQ(engine->Verify("default", c.image.id), c.image.digest);
}

}  // namespace
}  // namespace imagerelay
