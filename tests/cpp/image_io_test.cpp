#include "imagerelay/image_io.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <fstream>
#include <random>
#include <thread>

#include "imagerelay/error.hpp"
#include "imagerelay/sha256.hpp"
#include "scratch_dir.hpp"
#include "store/local_store.hpp"
#include "test_bytes.hpp"

namespace imagerelay {
namespace {

namespace fs = std::filesystem;
using testing_util::ScratchDir;

constexpr uint64_t kChunk = 64 * 1024;

ImportOptions SmallChunks() {
  ImportOptions options;
  options.chunk_size = kChunk;
  options.threads = 3;
  options.buffer_memory = 8 * kChunk;
  return options;
}

std::string RandomBytes(size_t n, uint32_t seed) {
  std::string out(n, '\0');
  std::mt19937 rng(seed);
  for (auto& c : out) c = static_cast<char>(rng());
  return out;
}

void WriteFile(const fs::path& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary)
      .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string ReadFile(const fs::path& path) { return testing_util::ReadFileBytes(path); }

// A sparse file: `size` bytes of hole with `pieces` written at their offsets.
void WriteSparseFile(const fs::path& path, uint64_t size,
                     const std::vector<std::pair<uint64_t, std::string>>& pieces) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::ftruncate(fd, static_cast<off_t>(size)), 0);
  for (const auto& [offset, bytes] : pieces) {
    ASSERT_EQ(::pwrite(fd, bytes.data(), bytes.size(), static_cast<off_t>(offset)),
              static_cast<ssize_t>(bytes.size()));
  }
  ASSERT_EQ(::fsync(fd), 0);  // so that SEEK_DATA sees settled extents
  ::close(fd);
}

uint64_t AllocatedBytes(const fs::path& path) {
  struct stat st;
  EXPECT_EQ(::stat(path.c_str(), &st), 0);
  return static_cast<uint64_t>(st.st_blocks) * 512;
}

int ThreadCount() {
  int n = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator("/proc/self/task")) ++n;
  return n;
}

// The threads of this process, once those joined have left /proc/self/task: a joined thread
// can be listed a little longer (the kernel wakes the joiner before it removes the task), so
// the count is read until it is `expected`, for at most 5 s (a thread never joined stays).
int ThreadCountSettledAt(int expected) {
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  int n = ThreadCount();
  while (n != expected && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    n = ThreadCount();
  }
  return n;
}

size_t FilesIn(const fs::path& dir) {
  size_t n = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir)) ++n;
  return n;
}

struct Roundtrip {
  Manifest manifest;
  IoProgress last_import_progress;
  std::string exported;
};

Roundtrip ImportAndExport(const fs::path& file, LocalStore& store, const fs::path& out,
                          bool force = false) {
  Roundtrip r;
  CancelToken cancel;
  auto source = OpenFileSource(file);
  r.manifest = ImportToStore(*source, store, SmallChunks(), cancel,
                             [&](const IoProgress& p) { r.last_import_progress = p; });
  ExportFromStore(store, r.manifest, out, cancel, nullptr, force);
  r.exported = ReadFile(out);
  return r;
}

TEST(ImageIoTest, DenseRandomFileRoundTrips) {
  ScratchDir dir;
  LocalStore store(dir / "store");
  const std::string bytes = RandomBytes(40 * kChunk, 1);
  WriteFile(dir / "in.img", bytes);
  Roundtrip r = ImportAndExport(dir / "in.img", store, dir / "out.img");
  EXPECT_EQ(r.exported, bytes);
  EXPECT_EQ(r.manifest.size, bytes.size());
  EXPECT_EQ(r.manifest.chunk_size, kChunk);
  EXPECT_EQ(r.manifest.count(), 40u);
  EXPECT_EQ(r.manifest.digest, "sha256:" + Sha256Hex(bytes.data(), bytes.size()));
  EXPECT_EQ(store.ListChunks().size(), 40u);
  for (size_t i = 0; i < 40; ++i) {
    EXPECT_EQ(r.manifest.Hash(i), Sha256Hex(bytes.data() + i * kChunk, kChunk)) << i;
  }
  EXPECT_EQ(r.last_import_progress.bytes_done, bytes.size());
  EXPECT_EQ(r.last_import_progress.bytes_total, bytes.size());
  EXPECT_EQ(r.last_import_progress.bytes_transferred, bytes.size());
  EXPECT_EQ(r.last_import_progress.chunks_total, 40u);
  EXPECT_EQ(r.last_import_progress.chunks_skipped, 0u);
  EXPECT_EQ(FilesIn(dir.path()), 3u);  // in, out, store: no temporary file left
}

TEST(ImageIoTest, OddSizeRoundTrips) {
  ScratchDir dir;
  LocalStore store(dir / "store");
  for (uint64_t size : {uint64_t{1}, kChunk - 1, kChunk + 1, 7 * kChunk + 12345}) {
    const std::string bytes = RandomBytes(size, static_cast<uint32_t>(size));
    WriteFile(dir / "in.img", bytes);
    Roundtrip r = ImportAndExport(dir / "in.img", store, dir / "out.img", /*force=*/true);
    EXPECT_EQ(r.exported, bytes) << size;
    EXPECT_EQ(r.manifest.digest, "sha256:" + Sha256Hex(bytes.data(), bytes.size()));
    EXPECT_EQ(r.manifest.count(), (size + kChunk - 1) / kChunk);
  }
}

TEST(ImageIoTest, ChunkSizesOffTheDiskBlockRoundTrip) {
  // Chunk offsets that are not multiples of the disk block cannot be written around the
  // page cache: the export writes them buffered, and the bytes are the same. Chunks that are
  // not whole SHA-256 blocks (5000 bytes) leave the image's digest between blocks, where
  // the import's paired digest and names (with SHA-NI) go one after the other: the digest
  // and every name are still SHA-256's, a zero chunk amid the data included.
  ScratchDir dir;
  LocalStore store(dir / "store");
  for (uint64_t chunk : {uint64_t{5000}, uint64_t{4096 + 512}, uint64_t{3 * 4096}}) {
    std::string bytes = RandomBytes(9 * chunk + 77, static_cast<uint32_t>(chunk));
    std::fill_n(bytes.begin() + static_cast<ptrdiff_t>(4 * chunk), chunk, '\0');
    WriteFile(dir / "in.img", bytes);
    ImportOptions options;
    options.chunk_size = chunk;
    CancelToken cancel;
    auto source = OpenFileSource(dir / "in.img");
    Manifest manifest = ImportToStore(*source, store, options, cancel, nullptr);
    EXPECT_EQ(manifest.digest, "sha256:" + Sha256Hex(bytes.data(), bytes.size())) << chunk;
    const std::vector<std::string> names = manifest.Hashes(0, manifest.count());
    for (uint64_t i = 0; i < manifest.count(); ++i) {
      const std::string_view data =
          std::string_view(bytes).substr(i * chunk, manifest.ChunkLength(i));
      EXPECT_EQ(names[i], i == 4 ? "" : Sha256Hex(data.data(), data.size())) << chunk << " " << i;
    }
    ExportFromStore(store, manifest, dir / "out.img", cancel, nullptr, /*force=*/true);
    EXPECT_EQ(ReadFile(dir / "out.img"), bytes) << chunk;
  }
}

TEST(ImageIoTest, SparseFileRoundTripsSparse) {
  ScratchDir dir;
  LocalStore store(dir / "store");
  const uint64_t size = 256 * kChunk + 100;  // 16 MiB and a bit
  WriteSparseFile(dir / "in.img", size,
                  {{3 * kChunk + 10, RandomBytes(5000, 1)},
                   {100 * kChunk, RandomBytes(2 * kChunk, 2)},
                   {size - 50, RandomBytes(50, 3)}});
  const std::string bytes = ReadFile(dir / "in.img");
  ASSERT_EQ(bytes.size(), size);

  Roundtrip r = ImportAndExport(dir / "in.img", store, dir / "out.img");
  EXPECT_EQ(r.exported, bytes);
  EXPECT_EQ(r.manifest.digest, "sha256:" + Sha256Hex(bytes.data(), bytes.size()));
  size_t stored = 0;
  for (const auto& c : r.manifest.Hashes(0, r.manifest.count())) stored += c.empty() ? 0 : 1;
  EXPECT_EQ(stored, 4u);  // chunks 3, 100, 101 and the last
  EXPECT_EQ(store.ListChunks().size(), 4u);
  EXPECT_EQ(r.last_import_progress.chunks_skipped, r.manifest.count() - 4);
  EXPECT_EQ(r.last_import_progress.bytes_transferred, 3 * kChunk + 100);
  // Holes stay holes: only the data chunks take space.
  EXPECT_LE(AllocatedBytes(dir / "out.img"), 6 * kChunk);
}

// An export writes a unit of neighbouring chunks per read: runs of stored chunks with holes
// between them inside one unit, a unit of two chunks (little memory) or of many, a short
// last chunk, from chunk files and from packs (read two at a time): the bytes are the
// image's and its holes stay holes.
TEST(ImageIoTest, ExportWritesRunsOfNeighboursAndLeavesTheHolesBetween) {
  ScratchDir dir;
  const uint64_t size = 70 * kChunk + 300;
  std::vector<std::pair<uint64_t, std::string>> pieces;
  for (uint64_t chunk : {0, 1, 3, 6, 7, 8, 9, 33, 63, 64, 65}) {
    pieces.emplace_back(chunk * kChunk, RandomBytes(kChunk, static_cast<uint32_t>(chunk)));
  }
  pieces.emplace_back(70 * kChunk, RandomBytes(300, 70));
  WriteSparseFile(dir / "in.img", size, pieces);
  const std::string bytes = ReadFile(dir / "in.img");
  LocalStore files(dir / "files");
  std::unique_ptr<Store> packed = OpenStore((dir / "packed").string());
  for (Store* store : {static_cast<Store*>(&files), packed.get()}) {
    CancelToken cancel;
    const Manifest m =
        ImportToStore(*OpenFileSource(dir / "in.img"), *store, SmallChunks(), cancel, nullptr);
    store->Flush();
    for (uint64_t memory : {uint64_t{8 * kChunk}, uint64_t{256} << 20}) {
      const fs::path out = dir / ("out-" + std::to_string(memory) + ".img");
      IoProgress last;
      ExportFromStore(
          *store, m, out, cancel, [&](const IoProgress& p) { last = p; }, true, memory);
      EXPECT_EQ(ReadFile(out), bytes) << store->uri() << " " << memory;
      EXPECT_LE(AllocatedBytes(out), 14 * kChunk) << store->uri() << " " << memory;
      EXPECT_EQ(last.bytes_done, size);
    }
  }
}

TEST(ImageIoTest, MostlyEmptyFileDefersTheDigestToHashStoredImage) {
  ScratchDir dir;
  LocalStore store(dir / "store");
  const uint64_t size = 300 * kChunk + 7;
  WriteSparseFile(dir / "in.img", size,
                  {{0, RandomBytes(kChunk, 1)}, {200 * kChunk + 3, RandomBytes(3 * kChunk, 2)}});
  const std::string bytes = ReadFile(dir / "in.img");
  const std::string expected = "sha256:" + Sha256Hex(bytes.data(), bytes.size());
  auto source = OpenFileSource(dir / "in.img");
  ASSERT_TRUE(source->DataBytes().has_value());
  EXPECT_LT(*source->DataBytes(), 6 * kChunk);  // file systems allocate whole blocks

  ImportOptions options = SmallChunks();
  options.defer_digest_hole_bytes = 100 * kChunk;  // the file has ~295 chunks of hole
  CancelToken cancel;
  IoProgress last;
  Manifest m =
      ImportToStore(*source, store, options, cancel, [&](const IoProgress& p) { last = p; });
  EXPECT_EQ(m.digest, "");  // left for later
  EXPECT_EQ(last.bytes_done, size);
  EXPECT_EQ(HashStoredImage(store, m, "the test image", cancel), expected);
  ExportFromStore(store, m, dir / "out.img", cancel, nullptr);
  EXPECT_EQ(ReadFile(dir / "out.img"), bytes);

  // Below the threshold, or with more data than holes, the digest comes with the import.
  options.defer_digest_hole_bytes = 1000 * kChunk;
  EXPECT_EQ(ImportToStore(*OpenFileSource(dir / "in.img"), store, options, cancel, nullptr).digest,
            expected);
  const std::string dense = RandomBytes(40 * kChunk, 3);
  WriteFile(dir / "dense.img", dense);
  options.defer_digest_hole_bytes = 1;
  EXPECT_EQ(
      ImportToStore(*OpenFileSource(dir / "dense.img"), store, options, cancel, nullptr).digest,
      "sha256:" + Sha256Hex(dense.data(), dense.size()));
}

// An image of several manifest windows with data in each: every window hashes (a pool
// shared by the windows was closed by the first window's crew, and the second hung).
TEST(ImageIoTest, HashStoredImageHashesEveryWindow) {
  ScratchDir dir;
  LocalStore store(dir / "store");
  constexpr uint64_t kSmall = 4096;
  const uint64_t size = 2 * kManifestWindow * kSmall + 3 * kSmall;
  WriteSparseFile(dir / "in.img", size,
                  {{kSmall, RandomBytes(kSmall, 1)},
                   {(kManifestWindow + 7) * kSmall, RandomBytes(2 * kSmall, 2)},
                   {(2 * kManifestWindow + 1) * kSmall, RandomBytes(kSmall, 3)}});
  ImportOptions options = SmallChunks();
  options.chunk_size = kSmall;
  options.buffer_memory = 4 * kSmall;
  CancelToken cancel;
  options.defer_digest_hole_bytes = 0;  // the import hashes the whole file itself
  const Manifest m = ImportToStore(*OpenFileSource(dir / "in.img"), store, options, cancel, {});
  ASSERT_EQ(m.count(), 2 * kManifestWindow + 3);
  ASSERT_FALSE(m.digest.empty());
  EXPECT_EQ(HashStoredImage(store, m, "the test image", cancel, {}, 4 * kSmall), m.digest);
}

TEST(ImageIoTest, HashStoredImageCatchesCorruptAndMissingChunks) {
  ScratchDir dir;
  LocalStore store(dir / "store");
  const std::string bytes = RandomBytes(30 * kChunk + 5, 4);
  WriteFile(dir / "in.img", bytes);
  CancelToken cancel;
  Manifest m =
      ImportToStore(*OpenFileSource(dir / "in.img"), store, SmallChunks(), cancel, nullptr);
  EXPECT_EQ(HashStoredImage(store, m, "image x", cancel), m.digest);

  const std::string victim = m.Hash(17);
  {
    std::fstream f(store.ChunkPath(victim), std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(10);
    f.put('\x33' ^ bytes[17 * kChunk + 10]);
  }
  try {
    HashStoredImage(store, m, "image x", cancel);
    FAIL() << "no exception";
  } catch (const IntegrityError& e) {
    EXPECT_NE(e.message().find(victim), std::string::npos) << e.message();
    EXPECT_NE(e.message().find("image x"), std::string::npos) << e.message();
  }
  store.DeleteChunk(victim);
  EXPECT_THROW(HashStoredImage(store, m, "image x", cancel), TransferError);

  CancelToken fired;
  fired.Cancel();
  EXPECT_THROW(HashStoredImage(store, m, "image x", fired), Cancelled);
}

TEST(ImageIoTest, FileSourceFindsHoles) {
  ScratchDir dir;
  const uint64_t size = 64 * kChunk;
  WriteSparseFile(dir / "in.img", size, {{10 * kChunk, RandomBytes(kChunk, 1)}});
  auto source = OpenFileSource(dir / "in.img");
  EXPECT_EQ(source->size(), size);
  EXPECT_TRUE(source->IsHole(0, kChunk));
  EXPECT_TRUE(source->IsHole(kChunk, 9 * kChunk));
  EXPECT_FALSE(source->IsHole(9 * kChunk, 2 * kChunk));
  EXPECT_FALSE(source->IsHole(10 * kChunk, kChunk));
  EXPECT_FALSE(source->IsHole(10 * kChunk + 5, 10));
  EXPECT_TRUE(source->IsHole(20 * kChunk, 44 * kChunk));
  EXPECT_TRUE(source->IsHole(0, 4096));  // going back works too
  std::string out(10, 'x');
  source->ReadAt(20 * kChunk, reinterpret_cast<std::byte*>(out.data()), out.size());
  EXPECT_EQ(out, std::string(10, '\0'));
  EXPECT_THROW(source->ReadAt(size - 5, reinterpret_cast<std::byte*>(out.data()), 10),
               TransferError);
}

TEST(ImageIoTest, EmptyFile) {
  ScratchDir dir;
  LocalStore store(dir / "store");
  WriteFile(dir / "in.img", "");
  Roundtrip r = ImportAndExport(dir / "in.img", store, dir / "out.img");
  EXPECT_EQ(r.manifest.size, 0u);
  EXPECT_TRUE((r.manifest.count() == 0));
  EXPECT_EQ(r.manifest.digest,
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_TRUE(fs::exists(dir / "out.img"));
  EXPECT_EQ(fs::file_size(dir / "out.img"), 0u);
  EXPECT_TRUE(store.ListChunks().empty());
}

TEST(ImageIoTest, AllZeroFileStoresNoChunk) {
  ScratchDir dir;
  LocalStore store(dir / "store");
  const std::string zeros(20 * kChunk + 7, '\0');
  WriteFile(dir / "in.img", zeros);  // written zeros, not holes
  Roundtrip r = ImportAndExport(dir / "in.img", store, dir / "out.img");
  EXPECT_EQ(r.exported, zeros);
  for (const auto& c : r.manifest.Hashes(0, r.manifest.count())) EXPECT_EQ(c, "");
  EXPECT_TRUE(store.ListChunks().empty());
  EXPECT_EQ(r.manifest.digest, "sha256:" + Sha256Hex(zeros.data(), zeros.size()));
  EXPECT_EQ(r.last_import_progress.bytes_transferred, 0u);
  EXPECT_LE(AllocatedBytes(dir / "out.img"), kChunk);
}

TEST(ImageIoTest, SecondImportStoresNothingNew) {
  ScratchDir dir;
  LocalStore store(dir / "store");
  // Chunks 0 and 2 are identical: stored once.
  std::string a = RandomBytes(kChunk, 1);
  const std::string bytes = a + RandomBytes(kChunk, 2) + a + RandomBytes(kChunk / 2, 3);
  WriteFile(dir / "in.img", bytes);
  Roundtrip first = ImportAndExport(dir / "in.img", store, dir / "out1.img");
  EXPECT_EQ(store.ListChunks().size(), 3u);
  EXPECT_EQ(first.manifest.Hash(0), first.manifest.Hash(2));

  Roundtrip second = ImportAndExport(dir / "in.img", store, dir / "out2.img");
  EXPECT_EQ(second.manifest, first.manifest);
  EXPECT_EQ(second.last_import_progress.bytes_transferred, 0u);
  EXPECT_EQ(second.last_import_progress.chunks_skipped, 4u);
  EXPECT_EQ(second.last_import_progress.bytes_done, bytes.size());
  EXPECT_EQ(store.ListChunks().size(), 3u);
  EXPECT_EQ(second.exported, bytes);
}

TEST(ImageIoTest, CorruptChunkFailsExport) {
  ScratchDir dir;
  LocalStore store(dir / "store");
  const std::string bytes = RandomBytes(10 * kChunk, 1);
  WriteFile(dir / "in.img", bytes);
  CancelToken cancel;
  auto source = OpenFileSource(dir / "in.img");
  Manifest m = ImportToStore(*source, store, SmallChunks(), cancel, nullptr);

  const std::string victim = m.Hash(6);
  {
    std::fstream f(store.ChunkPath(victim), std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(1000);
    f.put('\x5a' ^ bytes[6 * kChunk + 1000]);
  }
  try {
    ExportFromStore(store, m, dir / "out.img", cancel, nullptr);
    FAIL() << "no exception";
  } catch (const IntegrityError& e) {
    EXPECT_EQ(e.code(), codes::kIntegrityError);
    EXPECT_NE(e.message().find(victim), std::string::npos) << e.message();
  }
  EXPECT_FALSE(fs::exists(dir / "out.img"));
  EXPECT_EQ(FilesIn(dir.path()), 2u);  // the temporary file is gone

  // A truncated chunk is caught too, and a missing one is damage as well: the image is
  // incomplete (DamagedChunkError names the chunk, so the engine can quarantine and mark).
  fs::resize_file(store.ChunkPath(victim), 10);
  EXPECT_THROW(ExportFromStore(store, m, dir / "out.img", cancel, nullptr), IntegrityError);
  store.DeleteChunk(victim);
  try {
    ExportFromStore(store, m, dir / "out.img", cancel, nullptr);
    FAIL() << "no exception";
  } catch (const DamagedChunkError& e) {
    EXPECT_EQ(e.code(), codes::kIntegrityError);
    EXPECT_EQ(e.hash(), victim);
    EXPECT_NE(e.message().find("missing"), std::string::npos) << e.message();
  }
  EXPECT_EQ(FilesIn(dir.path()), 2u);
}

// From blocks in packs a verify and an export read two blocks at a time, checked together
// (Store::GetChunkPairStoredInto). Both still give the image byte for byte, and a block
// damaged on disk, in a pair, is named as before: the pair leaves it to the one-block read.
TEST(ImageIoTest, PairedReadsOfPackedBlocksRoundTripAndNameADamagedOne) {
  ScratchDir dir;
  std::unique_ptr<Store> store = OpenStore((dir / "packed").string());
  const std::string bytes = RandomBytes(30 * kChunk + 5, 8);  // raw blocks: offsets follow
  WriteFile(dir / "in.img", bytes);
  CancelToken cancel;
  Manifest m =
      ImportToStore(*OpenFileSource(dir / "in.img"), *store, SmallChunks(), cancel, nullptr);
  store->Flush();
  EXPECT_EQ(HashStoredImage(*store, m, "image x", cancel, {}, 8 * kChunk), m.digest);
  ExportFromStore(*store, m, dir / "out.img", cancel, nullptr, false, 8 * kChunk);
  EXPECT_EQ(ReadFile(dir / "out.img"), bytes);

  // One byte of one block changed in its pack, found by reading each block alone.
  std::vector<fs::path> packs;
  for (const auto& e : fs::recursive_directory_iterator(dir / "packed" / "packs")) {
    if (e.is_regular_file()) packs.push_back(e.path());
  }
  ASSERT_EQ(packs.size(), 1u);
  {
    std::fstream f(packs[0], std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(13 * kChunk + 77));
    f.put('\x5a');
  }
  std::string victim;
  for (uint64_t i = 0; i < m.count(); ++i) {
    std::vector<std::byte> out;
    try {
      store->GetChunk(m.Hash(i), out);
    } catch (const DamagedChunkError& e) {
      victim = e.hash();
    }
  }
  ASSERT_FALSE(victim.empty());
  for (int attempt = 0; attempt < 2; ++attempt) {
    try {
      if (attempt == 0) {
        HashStoredImage(*store, m, "image x", cancel, {}, 8 * kChunk);
      } else {
        ExportFromStore(*store, m, dir / "out2.img", cancel, nullptr, false, 8 * kChunk);
      }
      ADD_FAILURE() << "a damaged block was read";
    } catch (const IntegrityError& e) {
      EXPECT_NE(e.message().find(victim), std::string::npos) << e.message();
    }
  }
  EXPECT_FALSE(fs::exists(dir / "out2.img"));
}

TEST(ImageIoTest, ExportReplacesAnExistingFileAtomically) {
  ScratchDir dir;
  LocalStore store(dir / "store");
  const std::string bytes = RandomBytes(3 * kChunk, 1);
  WriteFile(dir / "in.img", bytes);
  WriteFile(dir / "out.img", RandomBytes(50 * kChunk, 2));
  Roundtrip r = ImportAndExport(dir / "in.img", store, dir / "out.img", /*force=*/true);
  EXPECT_EQ(r.exported, bytes);
}

// Slow reads, so that a test can act while an import is in flight.
class SlowSource : public ByteSource {
 public:
  SlowSource(uint64_t size, std::chrono::milliseconds delay) : size_(size), delay_(delay) {}
  uint64_t size() const override { return size_; }
  bool IsHole(uint64_t, uint64_t) override { return false; }
  void ReadAt(uint64_t offset, std::byte* out, size_t len) override {
    // As slow per chunk whatever the read's size (import reads many chunks at once).
    std::this_thread::sleep_for(delay_ * std::max<uint64_t>(1, len / kChunk));
    bytes_read += len;
    for (size_t i = 0; i < len; ++i) {  // a different pattern in every chunk
      uint64_t x = offset + i;
      out[i] = static_cast<std::byte>((x * 7 + 1) ^ ((x >> 16) * 31) ^ ((x >> 24) * 17));
    }
    if (fail_at_ && offset + len > *fail_at_) {
      throw TransferError(codes::kTransferFailed, "injected read failure");
    }
  }
  std::string describe() const override { return "slow"; }
  std::optional<uint64_t> fail_at_;
  std::atomic<uint64_t> bytes_read{0};  // by every reader thread together

 private:
  uint64_t size_;
  std::chrono::milliseconds delay_;
};

TEST(ImageIoTest, CancelStopsImportAndLeavesNoThread) {
  ScratchDir dir;
  LocalStore store(dir / "store");
  const int threads_before = ThreadCount();
  SlowSource source(1000 * kChunk, std::chrono::milliseconds(5));
  CancelToken cancel;
  std::vector<IoProgress> reports;
  EXPECT_THROW(ImportToStore(source, store, SmallChunks(), cancel,
                             [&](const IoProgress& p) {
                               reports.push_back(p);
                               if (reports.size() == 3) cancel.Cancel();
                             }),
               Cancelled);
  // Stopped at the cancel: the rest of the source was never read (not a timing, which a
  // sanitizer build or a loaded machine would stretch).
  EXPECT_LT(source.bytes_read.load(), source.size());
  EXPECT_EQ(ThreadCountSettledAt(threads_before), threads_before);
  ASSERT_EQ(reports.size(), 3u);
  EXPECT_LT(reports.back().bytes_done, reports.back().bytes_total);
  EXPECT_LE(reports[0].bytes_done, reports[1].bytes_done);

  CancelToken already;
  already.Cancel();
  EXPECT_THROW(ImportToStore(source, store, SmallChunks(), already, nullptr), Cancelled);
  EXPECT_EQ(ThreadCountSettledAt(threads_before), threads_before);
}

TEST(ImageIoTest, CancelStopsExportAndRemovesTheTemporaryFile) {
  ScratchDir dir;
  LocalStore store(dir / "store");
  const std::string bytes = RandomBytes(20 * kChunk, 1);
  WriteFile(dir / "in.img", bytes);
  CancelToken cancel;
  auto source = OpenFileSource(dir / "in.img");
  Manifest m = ImportToStore(*source, store, SmallChunks(), cancel, nullptr);
  const int threads_before = ThreadCount();
  cancel.Cancel();
  EXPECT_THROW(ExportFromStore(store, m, dir / "out.img", cancel, nullptr), Cancelled);
  EXPECT_FALSE(fs::exists(dir / "out.img"));
  EXPECT_EQ(FilesIn(dir.path()), 2u);
  EXPECT_EQ(ThreadCountSettledAt(threads_before), threads_before);
}

TEST(ImageIoTest, ProgressIsMonotonicAndReachesTheTotal) {
  ScratchDir dir;
  LocalStore store(dir / "store");
  SlowSource source(60 * kChunk + 3, std::chrono::milliseconds(4));
  CancelToken cancel;
  std::vector<IoProgress> reports;
  ImportToStore(source, store, SmallChunks(), cancel,
                [&](const IoProgress& p) { reports.push_back(p); });
  ASSERT_GE(reports.size(), 2u);  // throttled, but more than the final report
  EXPECT_LT(reports.size(), 60u);
  for (size_t i = 1; i < reports.size(); ++i) {
    EXPECT_LE(reports[i - 1].bytes_done, reports[i].bytes_done);
  }
  EXPECT_EQ(reports.back().bytes_done, 60 * kChunk + 3);
  EXPECT_EQ(reports.back().bytes_total, 60 * kChunk + 3);
  EXPECT_EQ(reports.back().chunks_total, 61u);
}

TEST(ImageIoTest, ReadErrorsReachTheCaller) {
  ScratchDir dir;
  LocalStore store(dir / "store");
  const int threads_before = ThreadCount();
  SlowSource source(30 * kChunk, std::chrono::milliseconds(0));
  source.fail_at_ = 17 * kChunk;
  CancelToken cancel;
  EXPECT_THROW(ImportToStore(source, store, SmallChunks(), cancel, nullptr), TransferError);
  EXPECT_EQ(ThreadCountSettledAt(threads_before), threads_before);
}

// Fails on the n-th chunk write, from a worker thread.
class FailingStore : public LocalStore {
 public:
  explicit FailingStore(const fs::path& root, int fail_at = 5,
                        std::chrono::milliseconds delay = std::chrono::milliseconds(0))
      : LocalStore(root), fail_at_(fail_at), delay_(delay) {}
  uint64_t PutChunk(const std::string& hash, std::span<const std::byte> data,
                    const CancelToken* cancel = nullptr) override {
    if (++puts_ == fail_at_) {
      std::this_thread::sleep_for(delay_);
      throw TransferError(codes::kStoreUnavailable, "injected: disk gone");
    }
    return LocalStore::PutChunk(hash, data, cancel);
  }

 private:
  const int fail_at_;
  const std::chrono::milliseconds delay_;  // before it fails
  std::atomic<int> puts_{0};
};

TEST(ImageIoTest, WorkerErrorsReachTheCaller) {
  ScratchDir dir;
  FailingStore store(dir / "store");
  const int threads_before = ThreadCount();
  SlowSource source(50 * kChunk, std::chrono::milliseconds(0));
  CancelToken cancel;
  try {
    ImportToStore(source, store, SmallChunks(), cancel, nullptr);
    FAIL() << "no exception";
  } catch (const TransferError& e) {
    EXPECT_EQ(e.code(), codes::kStoreUnavailable);
    EXPECT_EQ(e.message(), "injected: disk gone");
  }
  EXPECT_EQ(ThreadCountSettledAt(threads_before), threads_before);
}

// Read by the workers (several at once), every unit at once but the second, which takes
// half a second: the digest thread waits for it while the units after it are read.
class OneSlowUnitSource : public SlowSource {
 public:
  explicit OneSlowUnitSource(uint64_t size) : SlowSource(size, std::chrono::milliseconds(0)) {}
  bool ConcurrentReads() const override { return true; }
  void ReadAt(uint64_t offset, std::byte* out, size_t len) override {
    if (offset == kUnit) std::this_thread::sleep_for(std::chrono::milliseconds(500));
    SlowSource::ReadAt(offset, out, len);
  }
  static constexpr uint64_t kUnit = 4 << 20;  // the import's read unit
};

// A worker that fails while others wait for their units' names (the digest thread waiting
// for a unit read before theirs) ends the import with its error: the waiting workers are
// woken by the stop, none waits for names that will never come. Run in a child, so that a
// hang fails the test instead of stalling it.
TEST(ImageIoTest, AWorkerThatFailsWhileOthersWaitForNamesEndsTheImport) {
  ScratchDir dir;
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    int code = 3;  // no error
    try {
      // Its first write fails 200 ms in: the units after the slow one are read by then, and
      // their workers wait for names.
      FailingStore store(dir / "store", /*fail_at=*/1, std::chrono::milliseconds(200));
      OneSlowUnitSource source(16 * OneSlowUnitSource::kUnit);
      ImportOptions options = SmallChunks();
      options.buffer_memory = 8 * OneSlowUnitSource::kUnit;  // 8 units in flight
      CancelToken cancel;
      ImportToStore(source, store, options, cancel, nullptr);
    } catch (const TransferError& e) {
      code = e.message() == "injected: disk gone" ? 0 : 2;
    } catch (...) {
      code = 4;
    }
    ::_exit(code);
  }
  int status = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (::waitpid(pid, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      FAIL() << "the import did not end within 30 s (a worker left waiting for names)";
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "0: the store's error; 2: another error; 3: none";
}

TEST(ImageIoTest, OpenFileSourceRejectsWhatIsNotAnImageFile) {
  ScratchDir dir;
  ASSERT_EQ(::mkfifo((dir / "fifo").c_str(), 0644), 0);
  const std::vector<fs::path> bad = {dir / "missing.img", dir.path(), dir / "fifo",
                                     fs::path(std::string("/tmp/a\0b", 8)), fs::path()};
  for (const auto& path : bad) {
    try {
      OpenFileSource(path);
      ADD_FAILURE() << "opened " << path;
    } catch (const ValidationError& e) {
      EXPECT_EQ(e.code(), codes::kInvalidParameter);
      if (!path.empty() && path.native().find('\0') == std::string::npos) {
        EXPECT_NE(e.message().find(path.string()), std::string::npos) << e.message();
      }
    }
  }
}

// -- what an export may write over (issue #11) ------------------------------------------------

Manifest ImportBytes(LocalStore& store, const fs::path& file, const std::string& bytes) {
  WriteFile(file, bytes);
  CancelToken cancel;
  auto source = OpenFileSource(file);
  return ImportToStore(*source, store, SmallChunks(), cancel, nullptr);
}

// The message of the ValidationError(InvalidParameter) that exporting to `target` throws, or
// "" with a test failure if it throws none.
std::string ExportRefusal(LocalStore& store, const Manifest& m, const fs::path& target,
                          bool force) {
  CancelToken cancel;
  try {
    ExportFromStore(store, m, target, cancel, nullptr, force);
  } catch (const ValidationError& e) {
    EXPECT_EQ(e.code(), codes::kInvalidParameter);
    EXPECT_NE(e.message().find(target.string()), std::string::npos) << e.message();
    return e.message();
  }
  ADD_FAILURE() << "exported to " << target << (force ? " with" : " without") << " force";
  return "";
}

mode_t ModeOf(const fs::path& path) {
  struct stat st;
  EXPECT_EQ(::lstat(path.c_str(), &st), 0) << path;
  return st.st_mode;
}

TEST(ImageIoTest, ExportRefusesAnExistingFileWithoutForce) {
  ScratchDir dir;
  LocalStore store(dir / "store");
  const std::string bytes = RandomBytes(3 * kChunk + 5, 1);
  Manifest m = ImportBytes(store, dir / "in.img", bytes);
  WriteFile(dir / "out.img", "keep me");
  const std::string message = ExportRefusal(store, m, dir / "out.img", false);
  EXPECT_NE(message.find("exists; pass --force (force=True) to overwrite it"), std::string::npos)
      << message;
  EXPECT_EQ(ReadFile(dir / "out.img"), "keep me");
  EXPECT_EQ(FilesIn(dir.path()), 3u);  // in, out, store: no temporary file left

  CancelToken cancel;
  ExportFromStore(store, m, dir / "out.img", cancel, nullptr, /*force=*/true);
  EXPECT_EQ(ReadFile(dir / "out.img"), bytes);
}

TEST(ImageIoTest, ExportWithForceKeepsTheModeAndOwnerOfTheFileItReplaces) {
  ScratchDir dir;
  LocalStore store(dir / "store");
  const std::string bytes = RandomBytes(2 * kChunk, 1);
  Manifest m = ImportBytes(store, dir / "in.img", bytes);
  for (mode_t mode : {mode_t{0600}, mode_t{0640}, mode_t{0755}}) {
    WriteFile(dir / "out.img", "secret");
    ASSERT_EQ(::chmod((dir / "out.img").c_str(), mode), 0);
    const bool root = ::geteuid() == 0;
    if (root) ASSERT_EQ(::chown((dir / "out.img").c_str(), 4321, 4322), 0);
    CancelToken cancel;
    ExportFromStore(store, m, dir / "out.img", cancel, nullptr, /*force=*/true);
    EXPECT_EQ(ReadFile(dir / "out.img"), bytes);
    struct stat st;
    ASSERT_EQ(::stat((dir / "out.img").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777, mode) << std::oct << mode;
    if (root) {
      EXPECT_EQ(st.st_uid, 4321u);
      EXPECT_EQ(st.st_gid, 4322u);
    }
  }
}

TEST(ImageIoTest, ExportNeverWritesThroughASymlinkNorOverASpecialFile) {
  ScratchDir dir;
  LocalStore store(dir / "store");
  Manifest m = ImportBytes(store, dir / "in.img", RandomBytes(2 * kChunk, 1));
  WriteFile(dir / "victim", "victim");
  fs::create_symlink(dir / "victim", dir / "link");
  fs::create_symlink(dir / "nowhere", dir / "dangling");
  fs::create_directory(dir / "subdir");
  ASSERT_EQ(::mkfifo((dir / "fifo").c_str(), 0644), 0);
  {
    int s = ::socket(AF_UNIX, SOCK_STREAM, 0);
    ASSERT_GE(s, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    const std::string sock = (dir / "sock").string();
    ASSERT_LT(sock.size(), sizeof(addr.sun_path));
    std::memcpy(addr.sun_path, sock.c_str(), sock.size() + 1);
    ASSERT_EQ(::bind(s, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    ::close(s);
  }
  std::vector<std::pair<std::string, std::string>> cases = {{"link", "symbolic link"},
                                                            {"dangling", "symbolic link"},
                                                            {"subdir", "a directory"},
                                                            {"fifo", "a FIFO"},
                                                            {"sock", "a socket"}};
  if (::geteuid() == 0) {  // as /dev/full, which an export as root used to replace
    ASSERT_EQ(::mknod((dir / "full").c_str(), S_IFCHR | 0666, makedev(1, 7)), 0);
    cases.emplace_back("full", "a character device");
  }
  for (const auto& [name, what] : cases) {
    const mode_t before = ModeOf(dir / name);
    for (bool force : {false, true}) {
      const std::string message = ExportRefusal(store, m, dir / name, force);
      EXPECT_NE(message.find(what), std::string::npos) << message;
      EXPECT_EQ(ModeOf(dir / name), before) << name;  // still there, of the same kind
    }
  }
  EXPECT_EQ(ReadFile(dir / "victim"), "victim");
  EXPECT_FALSE(fs::exists(dir / "nowhere"));
  EXPECT_EQ(fs::read_symlink(dir / "link"), dir / "victim");
  for (const auto& e : fs::directory_iterator(dir.path())) {
    EXPECT_EQ(e.path().filename().string().find("partial"), std::string::npos) << e.path();
  }
}

// Chunks come back slowly, so that an export is still running when a test acts.
class SlowReadStore : public LocalStore {
 public:
  using LocalStore::LocalStore;
  void GetChunk(const std::string& hash, std::vector<std::byte>& out,
                const CancelToken* cancel = nullptr) override {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    LocalStore::GetChunk(hash, out, cancel);
  }
};

TEST(ImageIoTest, KilledExportLeavesANamedTemporaryThatTheNextExportRemoves) {
  ScratchDir dir;
  SlowReadStore store(dir / "store");
  const std::string bytes = RandomBytes(40 * kChunk, 1);
  Manifest m = ImportBytes(store, dir / "in.img", bytes);
  WriteFile(dir / "out.img", "old");

  // A child process exports over out.img and is killed (SIGKILL) in the middle.
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    CancelToken cancel;
    try {
      ExportFromStore(
          store, m, dir / "out.img", cancel, [](const IoProgress&) { ::kill(::getpid(), SIGKILL); },
          true);
    } catch (...) {
    }
    ::_exit(3);  // not killed: the parent's checks fail
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << status;
  const fs::path leftover =
      dir / (".out.img.imagerelay-export-" + std::to_string(child) + ".partial");
  ASSERT_TRUE(fs::exists(leftover));
  EXPECT_EQ(ReadFile(dir / "out.img"), "old");  // an interrupted export leaves it as it was

  // Others beside it: a live process's (the parent of this test), this process's own left by
  // an earlier process that had its pid (nobody holds its lock), and files not of an export.
  const fs::path live =
      dir / (".a.img.imagerelay-export-" + std::to_string(::getppid()) + ".partial");
  const fs::path own =
      dir / (".b.img.imagerelay-export-" + std::to_string(::getpid()) + ".partial");
  const std::vector<fs::path> unrelated = {dir / ".c.img.imagerelay-export-x1.partial",
                                           dir / "d.partial", dir / ".tmp-e"};
  for (const auto& p : {live, own}) WriteFile(p, "partial");
  for (const auto& p : unrelated) WriteFile(p, "mine");

  CancelToken cancel;
  ExportFromStore(store, m, dir / "other.img", cancel, nullptr);  // another target, same dir
  EXPECT_FALSE(fs::exists(leftover));
  EXPECT_FALSE(fs::exists(own));
  EXPECT_TRUE(fs::exists(live));
  for (const auto& p : unrelated) EXPECT_TRUE(fs::exists(p)) << p;
  EXPECT_EQ(ReadFile(dir / "other.img"), bytes);
}

// -- what an import may read (issue #11) ------------------------------------------------------

TEST(ImageIoTest, OpenFileSourceRefusesPseudoFileSystemsAndSpecialFiles) {
  std::vector<std::pair<fs::path, std::string>> cases = {
      {"/proc/cpuinfo", "proc"}, {"/proc/self/mem", "proc"}, {"/dev/null", "a character device"}};
  for (const char* sys :
       {"/sys/kernel/mm/transparent_hugepage/enabled", "/sys/kernel/uevent_seqnum"}) {
    if (fs::is_regular_file(sys)) cases.emplace_back(sys, "sysfs");
  }
  ScratchDir dir;
  ASSERT_EQ(::mkfifo((dir / "fifo").c_str(), 0644), 0);
  cases.emplace_back(dir / "fifo", "a FIFO");
  for (const auto& [path, what] : cases) {
    try {
      OpenFileSource(path);
      ADD_FAILURE() << "opened " << path;
    } catch (const ValidationError& e) {
      EXPECT_EQ(e.code(), codes::kInvalidParameter);
      EXPECT_NE(e.message().find(path.string() + " is"), std::string::npos) << e.message();
      EXPECT_NE(e.message().find(what), std::string::npos) << e.message();
    }
  }
}

TEST(ImageIoTest, ImportFailsWhenTheFileChangesSizeWhileRead) {
  ScratchDir dir;
  LocalStore store(dir / "store");
  CancelToken cancel;
  // Grown: the bytes past the size taken at open would be left out.
  WriteFile(dir / "grows.img", RandomBytes(4 * kChunk, 1));
  auto grows = OpenFileSource(dir / "grows.img");
  std::ofstream(dir / "grows.img", std::ios::app) << "more";
  EXPECT_THROW(ImportToStore(*grows, store, SmallChunks(), cancel, nullptr), TransferError);

  // Truncated: the data past the new end now looks like a hole, and would be read as zeros.
  WriteSparseFile(dir / "shrinks.img", 20 * kChunk,
                  {{0, RandomBytes(kChunk, 2)}, {19 * kChunk, RandomBytes(kChunk, 3)}});
  auto shrinks = OpenFileSource(dir / "shrinks.img");
  fs::resize_file(dir / "shrinks.img", kChunk);
  try {
    ImportToStore(*shrinks, store, SmallChunks(), cancel, nullptr);
    FAIL() << "imported a file that was truncated while read";
  } catch (const TransferError& e) {
    EXPECT_EQ(e.code(), codes::kTransferFailed);
    // Found when a read ends early, or at the end when the size no longer matches.
    const std::string& m = e.message();
    EXPECT_NE(m.find((dir / "shrinks.img").string()), std::string::npos) << m;
    EXPECT_TRUE(m.find(" changed") != std::string::npos || m.find("truncated") != std::string::npos)
        << m;
  }
}

}  // namespace
}  // namespace imagerelay
