#include "store/local_store.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <random>
#include <thread>

#include "base/file_util.hpp"
#include "base/unique_fd.hpp"
#include "imagerelay/error.hpp"
#include "imagerelay/sha256.hpp"
#include "scratch_dir.hpp"
#include "test_bytes.hpp"

namespace imagerelay {
namespace {

namespace fs = std::filesystem;
using testing_util::ScratchDir;

using testing_util::HashOf;
using testing_util::RandomByteVector;

Manifest OneChunkManifest(const std::string& hash, uint64_t size) {
  return Manifest::InMemory(size, size, {hash}, "sha256:" + hash);
}

std::vector<std::string> NamesIn(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (e.is_regular_file()) names.push_back(e.path().filename().string());
  }
  return names;
}

// A pack's range read ahead goes around the page cache (O_DIRECT, from the page holding its
// start) when the cache does not hold it, and through the cache when it does; the bytes are
// the same either way, and a range past the end or a missing pack is no read.
TEST(LocalStoreTest, APackIsReadAheadAroundThePageCacheOrFromItAlike) {
  ScratchDir dir;
  LocalStore store(dir.path());
  const std::vector<std::byte> bytes = RandomByteVector((3u << 20) + 100, 7);
  const std::string name(32, 'a');
  store.PutPack(name, bytes, nullptr);
  const fs::path file = dir.path() / "packs" / "aa" / name;
  // Without cachestat(2) (Linux < 6.5) nothing says the cache holds a range: every read
  // goes around it.
  bool kernel_tells = false;
  {
    UniqueFd fd(::open(file.c_str(), O_RDONLY | O_CLOEXEC));
    ASSERT_TRUE(fd);
    ::posix_fadvise(fd.get(), 0, 0, POSIX_FADV_DONTNEED);
    kernel_tells = CachedPages(fd.get(), 0, bytes.size()).has_value();
  }
  auto cached = [&] {
    UniqueFd fd(::open(file.c_str(), O_RDONLY | O_CLOEXEC));
    return CachedPages(fd.get(), 0, bytes.size()).value_or(0);
  };
  const uint64_t offset = 4096 + 100;
  const size_t length = bytes.size() - offset;  // ends 100 bytes past a page
  const std::vector<std::byte> want(bytes.begin() + static_cast<ptrdiff_t>(offset), bytes.end());
  HugePageBytes buffer;
  std::optional<size_t> at = store.ReadPackAhead(name, offset, length, buffer, nullptr);
  ASSERT_TRUE(at);
  EXPECT_EQ(*at, 100u);  // from the page boundary before `offset`
  EXPECT_TRUE(std::equal(want.begin(), want.end(), buffer.begin() + static_cast<ptrdiff_t>(*at)));
  EXPECT_EQ(cached(), 0u) << "the read went through the cache";
  {
    std::ifstream in(file, std::ios::binary);  // a buffered read fills the cache
    std::vector<char> all(bytes.size());
    in.read(all.data(), static_cast<std::streamsize>(all.size()));
  }
  if (kernel_tells) ASSERT_GT(cached(), 0u);
  at = store.ReadPackAhead(name, offset, length, buffer, nullptr);
  ASSERT_TRUE(at);
  // Through the cache: the range itself; around it (no cachestat): from the page before.
  EXPECT_EQ(*at, kernel_tells ? 0u : 100u);
  EXPECT_TRUE(std::equal(want.begin(), want.end(), buffer.begin() + static_cast<ptrdiff_t>(*at)));
  EXPECT_FALSE(store.ReadPackAhead(name, offset + 4096, length, buffer, nullptr));
  ::posix_fadvise(UniqueFd(::open(file.c_str(), O_RDONLY | O_CLOEXEC)).get(), 0, 0,
                  POSIX_FADV_DONTNEED);
  EXPECT_FALSE(store.ReadPackAhead(name, offset + 4096, length, buffer, nullptr));
  EXPECT_FALSE(store.ReadPackAhead(std::string(32, 'b'), 0, 4096, buffer, nullptr));
}

TEST(LocalStoreTest, PutGetHasListDelete) {
  ScratchDir dir;
  LocalStore store(dir.path());
  auto a = RandomByteVector(1000, 1);
  auto b = RandomByteVector(70000, 2);
  std::string ha = HashOf(a), hb = HashOf(b);

  EXPECT_FALSE(store.HasChunk(ha));
  EXPECT_TRUE(store.ListChunks().empty());
  store.PutChunk(ha, a);
  store.PutChunk(hb, b);
  store.Flush();  // the store commits chunk writes in batches
  EXPECT_TRUE(store.HasChunk(ha));
  EXPECT_EQ(store.HasChunks({ha, std::string(64, '0'), hb}),
            (std::vector<bool>{true, false, true}));

  std::vector<std::byte> out;
  store.GetChunk(hb, out);
  EXPECT_EQ(out, b);
  store.GetChunk(ha, out);
  EXPECT_EQ(out, a);

  std::vector<std::string> expected{ha, hb};
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(store.ListChunks(), expected);
  EXPECT_TRUE(fs::is_regular_file(dir.path() / "chunks" / ha.substr(0, 2) / ha));
  EXPECT_EQ(store.StoredChunkSize(hb), 70000u);

  store.DeleteChunk(ha);
  EXPECT_FALSE(store.HasChunk(ha));
  EXPECT_EQ(store.ListChunks(), std::vector<std::string>{hb});
  store.DeleteChunk(ha);  // already gone: fine
}

TEST(LocalStoreTest, PutOfAnExistingChunkIsANoOp) {
  ScratchDir dir;
  LocalStore store(dir.path());
  auto a = RandomByteVector(5000, 3);
  std::string ha = HashOf(a);
  store.PutChunk(ha, a);
  store.Flush();  // the store commits chunk writes in batches
  fs::path path = store.ChunkPath(ha);
  struct stat before;
  ASSERT_EQ(::stat(path.c_str(), &before), 0);
  store.PutChunk(ha, a);
  store.Flush();  // the store commits chunk writes in batches
  struct stat after;
  ASSERT_EQ(::stat(path.c_str(), &after), 0);
  EXPECT_EQ(before.st_ino, after.st_ino);  // not rewritten
  EXPECT_EQ(store.ListChunks().size(), 1u);
  EXPECT_EQ(NamesIn(dir.path()).size(), 1u);  // no temporary file left behind
}

TEST(LocalStoreTest, GetOfAMissingChunkNamesIt) {
  ScratchDir dir;
  LocalStore store(dir.path());
  std::string h(64, 'c');
  std::vector<std::byte> out;
  try {
    store.GetChunk(h, out);
    FAIL() << "no exception";
  } catch (const TransferError& e) {
    EXPECT_EQ(e.code(), codes::kTransferFailed);
    EXPECT_NE(e.message().find(h), std::string::npos) << e.message();
    EXPECT_NE(e.message().find(store.uri()), std::string::npos) << e.message();
  }
}

TEST(LocalStoreTest, ManifestsAndImageRecords) {
  ScratchDir dir;
  LocalStore store(dir.path());
  std::string h(64, 'a');
  Manifest m = OneChunkManifest(h, 10);
  EXPECT_FALSE(store.GetManifest("m-abcd1234"));
  store.PutManifest("m-abcd1234", m);
  store.PutManifest("m-00000000", m);
  EXPECT_EQ(store.GetManifest("m-abcd1234"), m);
  EXPECT_EQ(store.ListManifests(), (std::vector<std::string>{"m-00000000", "m-abcd1234"}));
  EXPECT_TRUE(fs::is_regular_file(dir.path() / "manifests" / "m-abcd1234.bin"));

  m.size = 7;  // overwrite
  store.PutManifest("m-abcd1234", m);
  EXPECT_EQ(store.GetManifest("m-abcd1234")->size, 7u);
  store.DeleteManifest("m-abcd1234");
  EXPECT_FALSE(store.GetManifest("m-abcd1234"));
  EXPECT_EQ(store.ListManifests(), std::vector<std::string>{"m-00000000"});
  store.DeleteManifest("m-abcd1234");

  EXPECT_FALSE(store.GetImageRecord("m-abcd1234"));
  store.PutImageRecord("m-abcd1234", R"({"id":"m-abcd1234"})");
  EXPECT_EQ(store.GetImageRecord("m-abcd1234"), R"({"id":"m-abcd1234"})");
  EXPECT_TRUE(fs::is_regular_file(dir.path() / "images" / "m-abcd1234.json"));
  store.DeleteImageRecord("m-abcd1234");
  EXPECT_FALSE(store.GetImageRecord("m-abcd1234"));
  // Records and manifests are separate.
  EXPECT_EQ(store.ListManifests(), std::vector<std::string>{"m-00000000"});
}

TEST(LocalStoreTest, DamagedManifestIsAnIntegrityError) {
  ScratchDir dir;
  LocalStore store(dir.path());
  store.Check();
  std::ofstream(dir.path() / "manifests" / "m-abcd1234.json") << "{\"version\":1,";
  EXPECT_EQ(store.ListManifests(), std::vector<std::string>{"m-abcd1234"});
  try {
    store.GetManifest("m-abcd1234");
    FAIL() << "no exception";
  } catch (const IntegrityError& e) {
    EXPECT_EQ(e.code(), codes::kIntegrityError);
    EXPECT_NE(e.message().find("m-abcd1234"), std::string::npos);
  }
  // The binary form: refused as a whole when torn, and read before a first-release one.
  std::ofstream(dir.path() / "manifests" / "m-abcd1234.bin") << "IRMANIF1 and then nothing";
  EXPECT_EQ(store.ListManifests(), std::vector<std::string>{"m-abcd1234"});
  EXPECT_THROW(store.GetManifest("m-abcd1234"), IntegrityError);
  const Manifest m = OneChunkManifest(std::string(64, 'b'), 10);
  store.PutManifest("m-abcd1234", m);
  EXPECT_EQ(store.GetManifest("m-abcd1234"), m);
  // Replacing a first-release manifest removes it: only one form is ever read.
  EXPECT_FALSE(fs::exists(dir.path() / "manifests" / "m-abcd1234.json"));
}

TEST(LocalStoreTest, AFirstReleaseManifestIsReadListedAndDeleted) {
  ScratchDir dir;
  LocalStore store(dir.path());
  store.Check();
  const std::string h(64, 'c');
  std::ofstream(dir.path() / "manifests" / "m-0000abcd.json")
      << R"({"version":1,"size":10,"chunk_size":4194304,"digest":null,"chunks":[")" << h
      << R"("]})";
  EXPECT_EQ(store.ListManifests(), std::vector<std::string>{"m-0000abcd"});
  const std::optional<Manifest> m = store.GetManifest("m-0000abcd");
  ASSERT_TRUE(m);
  EXPECT_EQ(m->count(), 1u);
  EXPECT_EQ(m->Hash(0), h);
  EXPECT_EQ(m->chunk_size, 4194304u);
  store.DeleteManifest("m-0000abcd");
  EXPECT_TRUE(store.ListManifests().empty());
}

TEST(LocalStoreTest, RejectsNamesThatCouldEscapeTheStore) {
  ScratchDir dir;
  LocalStore store(dir.path() / "store");
  store.Check();
  const std::vector<std::string> bad_hashes = {
      "",
      "../x",
      "/etc/passwd",
      "../../../../../../etc/passwd",
      std::string(64, 'A'),
      std::string(63, 'a'),
      std::string(65, 'a'),
      std::string(63, 'a') + '/',
      std::string(32, 'a') + std::string(1, '\0') + std::string(31, 'a'),
      "..",
      std::string(62, 'a') + "..",
  };
  auto data = RandomByteVector(10, 4);
  std::vector<std::byte> out;
  for (const auto& h : bad_hashes) {
    EXPECT_THROW(store.HasChunk(h), ValidationError) << h;
    EXPECT_THROW(store.PutChunk(h, data), ValidationError) << h;
    EXPECT_THROW(store.GetChunk(h, out), ValidationError) << h;
    EXPECT_THROW(store.DeleteChunk(h), ValidationError) << h;
  }
  const std::vector<std::string> bad_ids = {
      "",
      "../x",
      "/abs/path",
      "m-1234567",
      "m-123456789",
      "m-ABCDEFGH",
      "m-1234/678",
      "m-../../..",
      std::string("m-1234\0"
                  "678",
                  10),
      "x-12345678",
      "m-12345678/",
  };
  Manifest m = OneChunkManifest(std::string(64, 'a'), 1);
  for (const auto& id : bad_ids) {
    try {
      store.PutManifest(id, m);
      ADD_FAILURE() << "accepted " << id;
    } catch (const ValidationError& e) {
      EXPECT_EQ(e.code(), codes::kInvalidParameter);
    }
    EXPECT_THROW(store.GetManifest(id), ValidationError) << id;
    EXPECT_THROW(store.DeleteManifest(id), ValidationError) << id;
    EXPECT_THROW(store.PutImageRecord(id, "{}"), ValidationError) << id;
    EXPECT_THROW(store.GetImageRecord(id), ValidationError) << id;
    EXPECT_THROW(store.DeleteImageRecord(id), ValidationError) << id;
  }
  // Nothing was written anywhere, inside or outside the store, but the store's marker.
  EXPECT_EQ(NamesIn(dir.path()), std::vector<std::string>{".imagerelay-store"});
}

TEST(LocalStoreTest, CheckCreatesTheLayout) {
  ScratchDir dir;
  LocalStore store(dir.path() / "a" / "b");
  store.Check();
  for (const char* sub : {"chunks", "manifests", "images"}) {
    EXPECT_TRUE(fs::is_directory(dir.path() / "a" / "b" / sub)) << sub;
  }
  // The probe files are gone; the marker stays.
  EXPECT_EQ(NamesIn(dir.path()), std::vector<std::string>{".imagerelay-store"});
  store.Check();  // twice is fine
}

TEST(LocalStoreTest, CheckOfAnUnusableDirectoryFails) {
  ScratchDir dir;
  std::ofstream(dir.path() / "file") << "not a directory";
  const fs::path root = dir.path() / "file" / "sub";
  LocalStore store(root);
  try {
    store.Check();
    FAIL() << "no exception";
  } catch (const TransferError& e) {
    EXPECT_EQ(e.code(), codes::kStoreUnavailable);
    EXPECT_NE(e.message().find(root.string()), std::string::npos) << e.message();
    EXPECT_NE(e.message().find(std::strerror(ENOTDIR)), std::string::npos) << e.message();
  }
  // Writes fail the same way rather than writing somewhere else.
  auto data = RandomByteVector(10, 5);
  EXPECT_THROW(store.PutChunk(HashOf(data), data), TransferError);
}

TEST(LocalStoreTest, ListingsIgnoreTemporaryAndStrayFiles) {
  ScratchDir dir;
  LocalStore store(dir.path());
  auto a = RandomByteVector(100, 6);
  std::string ha = HashOf(a);
  store.PutChunk(ha, a);
  store.Flush();  // the store commits chunk writes in batches
  store.PutManifest("m-abcd1234", OneChunkManifest(ha, 100));
  const fs::path prefix_dir = store.ChunkPath(ha).parent_path();
  std::ofstream(prefix_dir / (".tmp-" + ha + "-1-2")) << "partial";
  std::ofstream(prefix_dir / "README") << "stray";
  std::ofstream(prefix_dir / std::string(64, 'f')) << "wrong prefix directory";
  std::ofstream(dir.path() / "manifests" / ".tmp-m-00000000.json-1-2") << "{";
  std::ofstream(dir.path() / "manifests" / "notes.txt") << "x";
  std::ofstream(dir.path() / "manifests" / "m-bad.json") << "x";
  fs::create_directories(dir.path() / "chunks" / "zz");
  std::ofstream(dir.path() / "chunks" / "zz" / std::string(64, 'b')) << "x";

  EXPECT_EQ(store.ListChunks(), std::vector<std::string>{ha});
  EXPECT_EQ(store.ListManifests(), std::vector<std::string>{"m-abcd1234"});
}

TEST(LocalStoreTest, SweepRemovesOnlyStaleTemporaryFiles) {
  ScratchDir dir;
  LocalStore store(dir.path());
  store.Check();
  auto a = RandomByteVector(100, 7);
  std::string ha = HashOf(a);
  store.PutChunk(ha, a);
  store.Flush();  // the store commits chunk writes in batches
  const fs::path old_tmp = store.ChunkPath(ha).parent_path() / (".tmp-" + ha + "-1-old");
  const fs::path new_tmp = dir.path() / "manifests" / ".tmp-m-00000000.json-1-new";
  std::ofstream(old_tmp) << "partial";
  std::ofstream(new_tmp) << "partial";
  struct timeval two_hours_ago[2];
  gettimeofday(&two_hours_ago[0], nullptr);
  two_hours_ago[0].tv_sec -= 2 * 3600;
  two_hours_ago[1] = two_hours_ago[0];
  ASSERT_EQ(::utimes(old_tmp.c_str(), two_hours_ago), 0);

  store.Check();  // cheap: it leaves the chunk directories alone
  EXPECT_TRUE(fs::exists(old_tmp));
  store.PutManifest("m-abcd1234", OneChunkManifest(ha, a.size()));
  SweepStore(store);
  EXPECT_FALSE(fs::exists(old_tmp));
  EXPECT_TRUE(fs::exists(new_tmp));  // may belong to a writer in flight
  EXPECT_TRUE(store.HasChunk(ha));
}

TEST(LocalStoreTest, HasChunksAnswersInOrderAcrossThreads) {
  ScratchDir dir;
  LocalStore store(dir.path());
  std::vector<std::string> hashes;
  std::vector<bool> expected;
  for (uint32_t i = 0; i < 300; ++i) {  // enough for several lookup threads
    auto bytes = RandomByteVector(64, 1000 + i);
    hashes.push_back(HashOf(bytes));
    expected.push_back(i % 3 == 0);
    if (i % 3 == 0) store.PutChunk(hashes.back(), bytes);
  }
  store.Flush();
  EXPECT_EQ(store.HasChunks(hashes), expected);
  EXPECT_EQ(store.HasChunks({}), std::vector<bool>{});
  hashes[250] = "not-a-hash";  // a lookup that throws reaches the caller
  EXPECT_THROW(store.HasChunks(hashes), ValidationError);
}

TEST(LocalStoreTest, PageAlignedChunksRoundTripWithTheirTail) {
  ScratchDir dir;
  LocalStore store(dir.path());
  // Page-aligned bytes take the O_DIRECT path; the 123-byte tail is written normally.
  for (size_t size : {size_t{4096}, size_t{3 * 4096 + 123}, size_t{100}}) {
    auto bytes = RandomByteVector(size, static_cast<uint32_t>(size));
    std::byte* aligned = static_cast<std::byte*>(std::aligned_alloc(4096, 4 * 4096));
    ASSERT_NE(aligned, nullptr);
    std::memcpy(aligned, bytes.data(), size);
    const std::string hash = HashOf(bytes);
    store.PutChunk(hash, std::span<const std::byte>(aligned, size));
    std::free(aligned);
    store.Flush();
    std::vector<std::byte> out;
    store.GetChunk(hash, out);
    EXPECT_EQ(out, bytes) << size;
  }
}

TEST(LocalStoreTest, ChunksOfEverySizeReadBackWhole) {
  ScratchDir dir;
  LocalStore store(dir.path());
  // Reads go around the page cache in whole aligned blocks; the last block reaches past
  // the end of a chunk whose size is not a multiple of it. Read twice: the second read
  // reuses the thread's buffer, which a smaller chunk must not leak into.
  const std::vector<size_t> sizes = {1, 4095, 4096, 4097, (4u << 20) + 123, 4u << 20, 5000};
  std::vector<std::string> hashes;
  for (size_t size : sizes) {
    auto bytes = RandomByteVector(size, static_cast<uint32_t>(size) + 7);
    hashes.push_back(HashOf(bytes));
    store.PutChunk(hashes.back(), bytes);
  }
  store.Flush();
  for (int round = 0; round < 2; ++round) {
    for (size_t i = 0; i < sizes.size(); ++i) {
      std::vector<std::byte> out(3, std::byte{1});
      store.GetChunk(hashes[i], out);
      ASSERT_EQ(out.size(), sizes[i]);
      EXPECT_EQ(HashOf(out), hashes[i]) << sizes[i];
    }
  }
}

TEST(LocalStoreTest, ConcurrentPutsOfTheSameChunk) {
  ScratchDir dir;
  LocalStore store(dir.path());
  auto a = RandomByteVector(256 * 1024, 8);
  std::string ha = HashOf(a);
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) threads.emplace_back([&] { store.PutChunk(ha, a); });
  for (auto& t : threads) t.join();
  store.Flush();  // the store commits chunk writes in batches
  std::vector<std::byte> out;
  store.GetChunk(ha, out);
  EXPECT_EQ(out, a);
  EXPECT_EQ(NamesIn(dir.path()).size(), 1u);
}

// A writer killed at any moment leaves either whole files or nothing visible: every listed
// chunk hashes to its name and every listed manifest parses.
TEST(LocalStoreTest, KilledWriterLeavesNoPartialFile) {
  ScratchDir dir;
  const fs::path root = dir.path() / "store";
  const auto base = RandomByteVector(8 << 20, 9);
  int saw_temp_files = 0;
  for (int round = 0; round < 4; ++round) {
    int started[2];
    ASSERT_EQ(::pipe(started), 0);
    pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      // Child: write chunks and manifests until killed. Only _exit, never return to gtest.
      ::close(started[0]);
      LocalStore store(root);
      std::vector<std::byte> data = base;
      for (uint64_t i = 0;; ++i) {
        uint64_t tag = (static_cast<uint64_t>(round) << 32) | i;
        std::memcpy(data.data(), &tag, sizeof(tag));
        std::string hash = Sha256Hex(data.data(), data.size());
        store.PutChunk(hash, data);
        char id[16];
        std::snprintf(id, sizeof(id), "m-%02d%06llu", round,
                      static_cast<unsigned long long>(i % 1000000));
        store.PutManifest(id, OneChunkManifest(hash, data.size()));
        if (i == 0 && (::write(started[1], "w", 1) != 1 || ::close(started[1]) != 0)) _exit(1);
      }
      ::_exit(0);
    }
    // Killed while writing, however slowly it started (a sanitizer build, a loaded machine).
    ::close(started[1]);
    char byte = 0;
    ASSERT_EQ(::read(started[0], &byte, 1), 1);
    ::close(started[0]);
    std::this_thread::sleep_for(std::chrono::milliseconds(50 + 97 * round));
    ASSERT_EQ(::kill(pid, SIGKILL), 0);
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(status));
    for (const auto& e : fs::recursive_directory_iterator(root)) {
      if (e.path().filename().string().starts_with(".tmp-")) ++saw_temp_files;
    }
  }

  LocalStore store(root);
  std::vector<std::string> chunks = store.ListChunks();
  ASSERT_FALSE(chunks.empty());
  std::vector<std::byte> out;
  for (const auto& hash : chunks) {
    store.GetChunk(hash, out);
    ASSERT_EQ(out.size(), base.size()) << hash;
    ASSERT_EQ(Sha256Hex(out.data(), out.size()), hash);
  }
  for (const auto& id : store.ListManifests()) {
    std::optional<Manifest> m;
    ASSERT_NO_THROW(m = store.GetManifest(id)) << id;
    ASSERT_TRUE(m.has_value());
    EXPECT_TRUE(store.HasChunk(m->Hash(0))) << id;  // chunks are written first
  }
  store.Check();  // leftovers do not break the store
  // How often a kill hit mid-write (usually several times): visible in --gtest_output=xml.
  RecordProperty("chunks_written", static_cast<int>(chunks.size()));
  RecordProperty("temp_files_left_by_killed_writers", saw_temp_files);
}

}  // namespace
}  // namespace imagerelay

namespace imagerelay {
namespace {

// Group commit: a chunk becomes visible only once its batch is on disk, and a writer that
// goes away before flushing leaves no chunk and no temporary file behind.
TEST(LocalStoreTest, ChunksBecomeVisibleOnlyWhenFlushed) {
  ScratchDir dir;
  auto a = RandomByteVector(64 * 1024, 21);
  std::string ha = HashOf(a);
  {
    LocalStore store(dir.path());
    store.PutChunk(ha, a);
    EXPECT_FALSE(store.HasChunk(ha));
  }
  EXPECT_TRUE(NamesIn(dir.path()).empty());
  LocalStore store(dir.path());
  store.PutChunk(ha, a);
  store.Flush();
  EXPECT_TRUE(store.HasChunk(ha));
  // A manifest is written only after the chunks it names are committed.
  auto b = RandomByteVector(64 * 1024, 22);
  store.PutChunk(HashOf(b), b);
  store.PutManifest("m-00000001", OneChunkManifest(HashOf(b), b.size()));
  EXPECT_TRUE(store.HasChunk(HashOf(b)));
}

// -- confinement: a store never reaches outside its root (issue #11) ---------------------

// Runs `fn`, which must fail with Region.StoreUnavailable saying `says`.
template <typename Fn>
void ExpectUnavailable(Fn fn, const std::string& says) {
  try {
    fn();
    ADD_FAILURE() << "no exception; expected one saying " << says;
  } catch (const TransferError& e) {
    EXPECT_EQ(e.code(), codes::kStoreUnavailable) << e.message();
    EXPECT_NE(e.message().find(says), std::string::npos) << e.message();
  }
}

size_t EntriesIn(const fs::path& dir) {
  return static_cast<size_t>(
      std::distance(fs::recursive_directory_iterator(dir), fs::recursive_directory_iterator()));
}

TEST(LocalStoreTest, ALinkedPrefixDirectoryIsNeverFollowed) {
  ScratchDir dir;
  const fs::path root = dir / "store", outside = dir / "outside";
  LocalStore store(root);
  store.Check();
  auto a = RandomByteVector(100, 21);
  const std::string ha = HashOf(a), prefix = ha.substr(0, 2);
  // Someone else's files with chunk-like names, behind a link in place of chunks/<prefix>.
  fs::create_directories(outside);
  const std::string victim = prefix + std::string(62, '0');
  std::ofstream(outside / victim) << "not the store's";
  const fs::path prefix_dir = root / "chunks" / prefix;
  fs::remove(prefix_dir);
  fs::create_directory_symlink(outside, prefix_dir);

  EXPECT_TRUE(store.ListChunks().empty());
  EXPECT_EQ(SweepStore(store).chunks_removed, 0u);
  EXPECT_TRUE(fs::exists(outside / victim));
  // Reads, writes and deletes through the link fail instead of reaching outside.
  ExpectUnavailable([&] { store.DeleteChunk(victim); }, prefix_dir.string());
  ExpectUnavailable([&] { store.HasChunk(victim); }, prefix_dir.string());
  std::vector<std::byte> out;
  ExpectUnavailable([&] { store.GetChunk(victim, out); }, prefix_dir.string());
  ExpectUnavailable(
      [&] {
        store.PutChunk(ha, a);
        store.Flush();
      },
      prefix_dir.string());
  EXPECT_EQ(EntriesIn(outside), 1u);
  ExpectUnavailable([&] { store.Check(); }, "symbolic link");
}

TEST(LocalStoreTest, ALinkedChunkFileIsNeitherReadNorListedNorDeleted) {
  ScratchDir dir;
  const fs::path root = dir / "store";
  LocalStore store(root);
  store.Check();
  auto a = RandomByteVector(100, 22);
  const std::string ha = HashOf(a);
  const fs::path target = dir / "precious";
  {
    std::ofstream f(target, std::ios::binary);
    f.write(reinterpret_cast<const char*>(a.data()), static_cast<std::streamsize>(a.size()));
  }
  fs::create_symlink(target, store.ChunkPath(ha));

  EXPECT_TRUE(store.ListChunks().empty());
  EXPECT_FALSE(store.HasChunk(ha));
  std::vector<std::byte> out;
  EXPECT_THROW(store.GetChunk(ha, out), TransferError);
  SweepStore(store);
  store.DeleteChunk(ha);
  EXPECT_TRUE(fs::exists(target));
  // A put stores the chunk itself in place of the link.
  store.PutChunk(ha, a);
  store.Flush();
  EXPECT_TRUE(fs::is_regular_file(fs::symlink_status(store.ChunkPath(ha))));
  store.GetChunk(ha, out);
  EXPECT_EQ(out, a);
  EXPECT_EQ(fs::file_size(target), a.size());
}

TEST(LocalStoreTest, ALinkedStoreDirectoryMakesTheStoreUnavailable) {
  for (const std::string sub : {"chunks", "manifests", "images"}) {
    ScratchDir dir;
    const fs::path root = dir / "store", outside = dir / "outside";
    LocalStore(root).Check();
    fs::create_directories(outside / "ab");
    std::ofstream(outside / "ab" / ("ab" + std::string(62, '1'))) << "x";
    std::ofstream(outside / "m-00000000.json") << "{}";
    fs::remove_all(root / sub);
    fs::create_directory_symlink(outside, root / sub);

    LocalStore store(root);
    ExpectUnavailable([&] { store.Check(); }, (root / sub).string());
    // Writes into it fail; a sweep or a delete fails or finds nothing: none reaches outside.
    const auto bytes = RandomByteVector(10, 27);
    const std::map<std::string, std::function<void()>> writes = {
        {"chunks", [&] { store.PutChunk(HashOf(bytes), bytes); }},
        {"manifests",
         [&] { store.PutManifest("m-12345678", OneChunkManifest(std::string(64, 'a'), 1)); }},
        {"images", [&] { store.PutImageRecord("m-12345678", "{}"); }},
    };
    ExpectUnavailable(writes.at(sub), (root / sub).string());
    try {
      SweepStore(store);
      store.DeleteManifest("m-00000000");
      store.DeleteImageRecord("m-00000000");
    } catch (const TransferError&) {
    }
    EXPECT_EQ(EntriesIn(outside), 3u) << sub;
  }
}

TEST(LocalStoreTest, TheRootMayBeReachedThroughALink) {
  ScratchDir dir;
  fs::create_directories(dir / "real");
  fs::create_directory_symlink(dir / "real", dir / "data");
  LocalStore store(dir / "data" / "bj");
  store.Check();
  auto a = RandomByteVector(100, 23), b = RandomByteVector(100, 24);
  const std::string ha = HashOf(a), hb = HashOf(b);
  store.PutChunk(ha, a);
  store.PutChunk(hb, b);
  store.PutManifest("m-abcd1234", OneChunkManifest(ha, a.size()));
  EXPECT_EQ(SweepStore(store).chunks_removed, 1u);
  EXPECT_EQ(store.ListChunks(), std::vector<std::string>{ha});
  EXPECT_EQ(store.ListManifests(), std::vector<std::string>{"m-abcd1234"});
  EXPECT_TRUE(fs::is_regular_file(dir / "real" / "bj" / "chunks" / ha.substr(0, 2) / ha));
}

// -- a store's directory is recognised by its marker --------------------------------------

TEST(LocalStoreTest, CheckRefusesADirectoryThatIsNotAStore) {
  ScratchDir dir;
  std::ofstream(dir / "passwd") << "root:x:0:0";
  fs::create_directories(dir / "chunks");
  LocalStore store(dir.path());
  ExpectUnavailable([&] { store.Check(); }, dir.path().string());
  ExpectUnavailable([&] { store.Check(); }, "passwd");
  ExpectUnavailable([&] { store.Check(); }, "not an imagerelay store");
  EXPECT_EQ(EntriesIn(dir.path()), 2u);  // nothing created in it

  // A marker this release does not know is refused too.
  ScratchDir other;
  std::ofstream(other / ".imagerelay-store") << R"({"format": "something-else"})";
  ExpectUnavailable([&] { LocalStore(other.path()).Check(); }, ".imagerelay-store");
}

TEST(LocalStoreTest, CheckMarksNewStoresAndAdoptsOnesWithoutAMarker) {
  ScratchDir dir;
  auto marker_of = [](const fs::path& root) {
    return testing_util::ReadFileBytes(root / ".imagerelay-store");
  };
  // A new directory, and an empty one.
  fs::create_directories(dir / "empty");
  for (const fs::path& root : {dir / "new", dir / "empty"}) {
    LocalStore(root).Check();
    EXPECT_NE(marker_of(root).find(R"("format": "imagerelay-store")"), std::string::npos);
    EXPECT_NE(marker_of(root).find(R"("version": 2)"), std::string::npos);
  }
  // A store of an earlier release: its layout and no marker.
  const fs::path old_root = dir / "old";
  auto a = RandomByteVector(100, 25);
  const std::string ha = HashOf(a);
  {
    LocalStore old(old_root);
    old.PutChunk(ha, a);
    old.PutManifest("m-abcd1234", OneChunkManifest(ha, a.size()));
    old.PutImageRecord("m-abcd1234", "{}");
  }
  ASSERT_FALSE(fs::exists(old_root / ".imagerelay-store"));
  LocalStore adopted(old_root);
  adopted.Check();
  EXPECT_FALSE(marker_of(old_root).empty());
  EXPECT_EQ(adopted.ListChunks(), std::vector<std::string>{ha});
  // A marked store may hold anything else: it is the store's.
  std::ofstream(old_root / "notes.txt") << "x";
  adopted.Check();
}

// -- temporary files of writers that died ------------------------------------------------

TEST(LocalStoreTest, LeftoversOfDeadWritersGoAtOnceOthersWait) {
  ScratchDir dir;
  LocalStore store(dir.path());
  store.Check();
  auto a = RandomByteVector(100, 26);
  const std::string ha = HashOf(a);
  store.PutChunk(ha, a);
  store.PutManifest("m-abcd1234", OneChunkManifest(ha, a.size()));
  const fs::path prefix_dir = store.ChunkPath(ha).parent_path();
  const fs::path manifests = dir / "manifests";
  const fs::path quarantine = dir / kQuarantineDir;  // a damaged block set aside (KeepAside)
  fs::create_directory(quarantine);
  // A writer that died mid-write: a child process names its temporary files and exits.
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    for (const fs::path& tmp : {prefix_dir / TempName(ha), manifests / TempName("m-abcd1234.json"),
                                quarantine / TempName(ha + ".1796141236")}) {
      int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL, 0644);
      if (fd < 0) ::_exit(1);
      ::close(fd);
    }
    ::_exit(0);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  // A writer still alive (this process), and one that cannot be told (another machine's).
  const fs::path live = prefix_dir / TempName(ha);
  const fs::path unknown = prefix_dir / (".tmp-" + ha + "-1-2");
  std::ofstream(live) << "partial";
  std::ofstream(unknown) << "partial";

  SweepStore(store);
  std::vector<std::string> temps;
  for (const auto& e : fs::recursive_directory_iterator(dir.path())) {
    if (e.path().filename().string().starts_with(".tmp-")) temps.push_back(e.path().string());
  }
  std::sort(temps.begin(), temps.end());
  std::vector<std::string> expected{live.string(), unknown.string()};
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(temps, expected);
  EXPECT_TRUE(store.HasChunk(ha));
}

}  // namespace
}  // namespace imagerelay

namespace imagerelay {
namespace {

// A chunk file is trusted by its write stamp: a file written to since is re-read before the
// store vouches for it (re-stamped when right, quarantined and reported when not); one of
// another length is simply not there (and PutChunk replaces it).
TEST(LocalStoreTrustTest, ATouchedChunkIsRecheckedAndADamagedOneQuarantined) {
  ScratchDir dir;
  LocalStore store(dir.path());
  std::vector<std::string> reported;
  store.SetDamageHandler(
      [&](const std::string& hash, const std::string&) { reported.push_back(hash); });
  auto a = RandomByteVector(10000, 7);
  auto b = RandomByteVector(10000, 8);
  const std::string ha = HashOf(a), hb = HashOf(b);
  store.PutChunk(ha, a);
  store.PutChunk(hb, b);
  store.Flush();
  EXPECT_TRUE(store.HasChunkOfLength(ha, a.size()));
  EXPECT_FALSE(store.HasChunkOfLength(ha, a.size() + 1));

  // Touched but intact (rewritten with the same bytes): re-read, kept, stamped again.
  {
    std::fstream f(store.ChunkPath(ha), std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(5);
    f.put(static_cast<char>(a[5]));
  }
  EXPECT_TRUE(store.HasChunkOfLength(ha, a.size()));
  struct stat st;
  ASSERT_EQ(::stat(store.ChunkPath(ha).c_str(), &st), 0);
  EXPECT_EQ(st.st_mtim.tv_sec, 1);

  // Damaged in place: quarantined (kept aside for inspection), reported, written anew.
  {
    std::fstream f(store.ChunkPath(hb), std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(5);
    f.put(static_cast<char>(~static_cast<unsigned char>(b[5])));
  }
  EXPECT_FALSE(store.HasChunkOfLength(hb, b.size()));
  EXPECT_EQ(reported, std::vector<std::string>{hb});
  EXPECT_FALSE(fs::exists(store.ChunkPath(hb)));
  ASSERT_TRUE(fs::exists(dir.path() / "quarantine"));
  EXPECT_EQ(
      std::distance(fs::directory_iterator(dir.path() / "quarantine"), fs::directory_iterator{}),
      1);
  store.PutChunk(hb, b);
  store.Flush();
  std::vector<std::byte> out;
  store.GetChunk(hb, out);
  EXPECT_EQ(out, b);

  // Truncated: not there with its length; PutChunk replaces it.
  fs::resize_file(store.ChunkPath(ha), 10);
  EXPECT_FALSE(store.HasChunkOfLength(ha, a.size()));
  store.PutChunk(ha, a);
  store.Flush();
  store.GetChunk(ha, out);
  EXPECT_EQ(out, a);
}

TEST(LocalStoreTrustTest, QuarantineNeverMovesAChunkThroughASymlink) {
  ScratchDir dir;
  ScratchDir outside;
  LocalStore store(dir.path() / "store");
  auto a = RandomByteVector(5000, 9);
  const std::string ha = HashOf(a);
  store.PutChunk(ha, a);
  store.Flush();
  fs::create_directory_symlink(outside.path(), dir.path() / "store" / "quarantine");
  store.QuarantineChunk(ha);
  EXPECT_FALSE(fs::exists(store.ChunkPath(ha)));
  EXPECT_TRUE(fs::is_empty(outside.path()));
}

// Found by fuzzing (tests/fuzz/regressions/fuzz_store_files): a marker whose "format" is not
// a string threw nlohmann's type_error out of the check instead of saying it is not ours.
TEST(LocalStoreTest, AStoreMarkerOfOtherTypesIsNotOurs) {
  EXPECT_EQ(CheckStoreMarker(StoreMarkerText()), "");
  for (const char* text : {R"({"format": 1, "version": 1})", R"({"format": null, "version": 1})",
                           R"({"format": ["imagerelay-store"], "version": 1})", "[]", "7", ""}) {
    EXPECT_NE(CheckStoreMarker(text).find("not an imagerelay store marker"), std::string::npos)
        << text;
  }
}

}  // namespace
}  // namespace imagerelay
