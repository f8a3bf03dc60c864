#include "block_manifest.hpp"

#include <gtest/gtest.h>

#include <fstream>

#include "imagerelay/error.hpp"
#include "imagerelay/manifest.hpp"
#include "imagerelay/sha256.hpp"
#include "scratch_dir.hpp"

namespace imagerelay {
namespace {

namespace fs = std::filesystem;
using testing_util::ScratchDir;

std::string HashOfNumber(uint64_t n) { return Sha256Hex(&n, sizeof(n)); }

// A block list with holes: every 7th block is a hole.
Manifest MakeList(uint64_t blocks, uint32_t block_size) {
  Manifest m;
  m.chunk_size = block_size;
  m.size = blocks * block_size - 100;  // the last block is short
  for (uint64_t i = 0; i < blocks; ++i) m.chunks.push_back(i % 7 == 3 ? "" : HashOfNumber(i));
  return m;
}

std::string Write(const fs::path& path, const Manifest& m, const std::string& digest) {
  BlockManifestWriter writer(path, m.size, static_cast<uint32_t>(m.chunk_size));
  for (const auto& hash : m.chunks) writer.Append(hash);
  return writer.Finish(digest);
}

TEST(BlockManifestTest, StreamsTheListAndItsDigestMatchesTheJsonForm) {
  ScratchDir dir;
  const Manifest m = MakeList(70000, 65536);  // more than one 1 MiB buffer of hashes
  const std::string digest = "sha256:" + HashOfNumber(42);
  const std::string written = Write(dir.path() / "m.bin", m, digest);
  EXPECT_EQ(written, m.ChunkListDigest());
  EXPECT_EQ(fs::file_size(dir.path() / "m.bin"), 64 + 70000 * 32 + 32);

  auto reader = BlockManifestReader::Open(dir.path() / "m.bin");
  EXPECT_EQ(reader->header().size, m.size);
  EXPECT_EQ(reader->header().block_size, 65536u);
  EXPECT_EQ(reader->header().digest, digest);
  EXPECT_EQ(reader->header().count, 70000u);
  std::string hash;
  size_t i = 0;
  while (reader->Next(hash)) {
    ASSERT_LT(i, m.chunks.size());
    ASSERT_EQ(hash, m.chunks[i]) << i;
    ++i;
  }
  EXPECT_EQ(i, m.chunks.size());
  EXPECT_EQ(reader->chunk_list_digest(), m.ChunkListDigest());
}

TEST(BlockManifestTest, AnUnknownDigestStaysUnknown) {
  ScratchDir dir;
  Write(dir.path() / "m.bin", MakeList(3, 4096), "");
  EXPECT_EQ(BlockManifestReader::Open(dir.path() / "m.bin")->header().digest, "");
}

TEST(BlockManifestTest, ATornOrAlteredManifestFailsWhenRead) {
  ScratchDir dir;
  const fs::path path = dir.path() / "m.bin";
  const Manifest m = MakeList(100, 4096);
  Write(path, m, "");
  auto read_all = [&](const fs::path& p) {
    auto reader = BlockManifestReader::Open(p);
    std::string hash;
    while (reader->Next(hash)) {
    }
  };
  read_all(path);
  // A flipped byte in the middle of the list.
  {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(64 + 50 * 32 + 5);
    f.put('\x5a');
  }
  EXPECT_THROW(read_all(path), IntegrityError);
  // Torn: cut short.
  Write(path, m, "");
  fs::resize_file(path, fs::file_size(path) - 40);
  EXPECT_THROW(read_all(path), IntegrityError);
  // Not a manifest at all.
  std::ofstream(path) << "{\"size\": 1}";
  EXPECT_THROW(BlockManifestReader::Open(path), IntegrityError);
}

TEST(BlockManifestTest, AWriterChecksTheBlockCount) {
  ScratchDir dir;
  BlockManifestWriter writer(dir.path() / "m.bin", 10000, 4096);  // 3 blocks
  writer.Append(HashOfNumber(1));
  EXPECT_THROW(writer.Finish(""), std::logic_error);
  writer.Append("");
  writer.Append(HashOfNumber(2));
  EXPECT_THROW(writer.Append(HashOfNumber(3)), std::logic_error);
}

}  // namespace
}  // namespace imagerelay
