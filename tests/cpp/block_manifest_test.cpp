#include "store/block_manifest.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <thread>

#include "base/binary_codec.hpp"
#include "imagerelay/error.hpp"
#include "imagerelay/manifest.hpp"
#include "imagerelay/sha256.hpp"
#include "scratch_dir.hpp"
#include "store/block_list.hpp"
#include "test_bytes.hpp"

namespace imagerelay {
namespace {

namespace fs = std::filesystem;
using testing_util::ScratchDir;

using testing_util::HashOfNumber;

// A block list with holes: every 7th block is a hole.
Manifest MakeList(uint64_t blocks, uint32_t block_size, std::string digest = "") {
  std::vector<std::string> hashes;
  for (uint64_t i = 0; i < blocks; ++i) hashes.push_back(i % 7 == 3 ? "" : HashOfNumber(i));
  // The last block is short.
  return Manifest::InMemory(blocks * block_size - 100, block_size, hashes, std::move(digest));
}

void Write(const fs::path& path, const Manifest& m) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  ASSERT_TRUE(fd);
  ASSERT_EQ(WriteBinaryManifest(m, fd.get()), 0);
}

Manifest Read(const fs::path& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) throw std::runtime_error("cannot open " + path.string());
  return ReadBinaryManifest(std::move(fd), "image m-test");
}

TEST(BlockManifestTest, RoundTripsAcrossWindowsAndKeepsTheChunkListDigest) {
  ScratchDir dir;
  // More than one window of hashes.
  const Manifest m = MakeList(kManifestWindow + 4465, 65536, "sha256:" + HashOfNumber(42));
  Write(dir.path() / "m.bin", m);
  EXPECT_EQ(fs::file_size(dir.path() / "m.bin"), 64 + m.count() * 32 + 32);
  const Manifest read = Read(dir.path() / "m.bin");
  EXPECT_TRUE(read == m);
  EXPECT_EQ(read.digest, m.digest);
  EXPECT_EQ(read.Hash(3), "");
  EXPECT_EQ(read.Hash(kManifestWindow + 2), HashOfNumber(kManifestWindow + 2));
  // The catalog's record of a first-release (JSON) manifest holds for the same list.
  EXPECT_EQ(read.ChunkListDigest(), m.ChunkListDigest());
  std::vector<std::string> hashes;
  for (uint64_t i = 0; i < 3; ++i) hashes.push_back(i % 7 == 3 ? "" : HashOfNumber(i));
  const std::string json =
      R"({"version":1,"size":12188,"chunk_size":4096,"digest":null,"chunks":[")" + hashes[0] +
      R"(",")" + hashes[1] + R"(",")" + hashes[2] + R"("]})";
  EXPECT_EQ(Manifest::FromJson(json).ChunkListDigest(), MakeList(3, 4096).ChunkListDigest());
}

TEST(BlockManifestTest, AnUnknownDigestStaysUnknown) {
  ScratchDir dir;
  Write(dir.path() / "m.bin", MakeList(3, 4096));
  EXPECT_EQ(Read(dir.path() / "m.bin").digest, "");
}

TEST(BlockManifestTest, ATornOrAlteredManifestIsRefusedWhenOpened) {
  ScratchDir dir;
  const fs::path path = dir.path() / "m.bin";
  const Manifest m = MakeList(100, 4096);
  Write(path, m);
  EXPECT_NO_THROW(Read(path));
  auto flip = [&](std::streamoff at) {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(at);
    const char c = static_cast<char>(f.get());
    f.seekp(at);
    f.put(static_cast<char>(c ^ 0x5a));
  };
  flip(64 + 50 * 32 + 5);  // a hash in the list
  EXPECT_THROW(Read(path), IntegrityError);
  Write(path, m);
  flip(16);  // the image size in the header
  EXPECT_THROW(Read(path), IntegrityError);
  Write(path, m);
  flip(static_cast<std::streamoff>(fs::file_size(path) - 1));  // the checksum itself
  EXPECT_THROW(Read(path), IntegrityError);
  // Torn: cut short; or grown.
  Write(path, m);
  fs::resize_file(path, fs::file_size(path) - 40);
  EXPECT_THROW(Read(path), IntegrityError);
  Write(path, m);
  std::ofstream(path, std::ios::app) << "x";
  EXPECT_THROW(Read(path), IntegrityError);
  // Not a manifest at all.
  std::ofstream(path) << "{\"size\": 1}";
  EXPECT_THROW(Read(path), IntegrityError);
}

// Found by fuzzing (tests/fuzz/regressions/fuzz_manifest): a header of 2^59 one-byte blocks
// made the file's expected size wrap around to 96 bytes, and such a file, its checksum
// right, opened as a manifest of 2^59 blocks.
TEST(BlockManifestTest, ABlockCountThatWrapsTheFileSizeIsRefused) {
  ScratchDir dir;
  const fs::path path = dir.path() / "m.bin";
  std::vector<std::byte> header(kManifestHeaderBytes);
  std::memcpy(header.data(), "IRMANIF1", 8);
  PutLe(header.data() + 8, 1, 4);            // block size
  PutLe(header.data() + 16, 1ULL << 59, 8);  // image size
  PutLe(header.data() + 56, 1ULL << 59, 8);  // block count
  std::byte trailer[kHashBytes];
  HashToBytes(Sha256Hex(header.data(), header.size()), trailer);
  {
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(header.data()), header.size());
    out.write(reinterpret_cast<const char*>(trailer), sizeof(trailer));
  }
  try {
    Read(path);
    ADD_FAILURE() << "opened";
  } catch (const IntegrityError& e) {
    EXPECT_EQ(e.code(), codes::kIntegrityError);
    EXPECT_NE(e.message().find("more than its 96 bytes hold"), std::string::npos) << e.message();
  }
}

TEST(BlockManifestTest, ALargeImportsListIsSpooledToAFileAndTakesConcurrentWrites) {
  ScratchDir dir;
  const uint64_t count = 3 * kInMemoryBlocks + 5;
  std::shared_ptr<BlockList> list = NewBlockList(count, dir.path());
  EXPECT_EQ(list->count(), count);
  // Spooled: an unnamed file, nothing left in the directory.
  EXPECT_TRUE(fs::is_empty(dir.path()));
  Manifest m;
  m.chunk_size = 4096;
  m.size = count * 4096;
  m.blocks = list;
  std::vector<std::thread> writers;
  for (uint64_t t = 0; t < 4; ++t) {
    writers.emplace_back([&, t] {
      for (uint64_t i = t; i < count; i += 4) {
        if (i % 5 != 0) m.SetHash(i, HashOfNumber(i));
      }
    });
  }
  for (auto& w : writers) w.join();
  for (uint64_t i : std::vector<uint64_t>{0, 1, kInMemoryBlocks + 2, count - 1}) {
    EXPECT_EQ(m.Hash(i), i % 5 == 0 ? "" : HashOfNumber(i)) << i;
  }
  EXPECT_THROW(m.Hashes(count - 1, 1).at(1), std::out_of_range);  // clipped at the end
  std::vector<std::byte> past(32);
  EXPECT_THROW(list->Read(count, past), std::out_of_range);
  // A small list stays in memory; a list without a spool directory too.
  EXPECT_EQ(NewBlockList(10, dir.path())->count(), 10u);
  EXPECT_TRUE(fs::is_empty(dir.path()));
}

}  // namespace
}  // namespace imagerelay
