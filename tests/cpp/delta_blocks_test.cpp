// Delta blocks (issue #12, docs/data-plane-v2.md item 2): a new block that resembles stored
// ones is kept as a zstd delta against them; every read decodes it against its bases, each
// checked, and nothing built on a damaged or missing base is ever vouched for.
#include <gtest/gtest.h>
#include <sqlite3.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <thread>

#include "base/write_scope.hpp"
#include "dataplane/crew.hpp"
#include "imagerelay/error.hpp"
#include "scratch_dir.hpp"
#include "store/block_index.hpp"
#include "store/local_store.hpp"
#include "store/pack_store.hpp"
#include "test_bytes.hpp"

namespace imagerelay {
namespace {

namespace fs = std::filesystem;
using testing_util::HashOf;
using testing_util::ScratchDir;

constexpr size_t kBlock = 64 * 1024;

// File-like text: words drawn from a small vocabulary (compresses ~2-3x, as file data does).
std::vector<std::byte> Words(uint32_t seed, size_t n = kBlock) {
  static const char* const kWords[] = {
      "the", "image", "region", "block", "copy", "return", "update", "kernel", "module", "config",
      "=",   "{",     "}",      "\n",    "0x1f", "path",   "usr",    "lib",    "share",  "event"};
  std::mt19937 rng(seed);
  std::string text;
  while (text.size() < n) {
    text += kWords[rng() % std::size(kWords)];
    text += rng() % 7 == 0 ? "\n" : " ";
    if (rng() % 11 == 0) text += std::to_string(rng() % 100000);
  }
  text.resize(n);
  const auto* p = reinterpret_cast<const std::byte*>(text.data());
  return {p, p + n};
}

// `block` as an OS update changes a file: a few small rewrites and an insertion.
std::vector<std::byte> Edited(std::vector<std::byte> block, uint32_t seed) {
  std::mt19937 rng(seed);
  for (int e = 0; e < 6; ++e) {
    const size_t at = rng() % (block.size() - 64);
    for (size_t i = 0; i < 24; ++i) block[at + i] = static_cast<std::byte>('A' + rng() % 26);
  }
  const std::string inserted = "inserted line " + std::to_string(seed) + "\n";
  const auto* p = reinterpret_cast<const std::byte*>(inserted.data());
  block.insert(block.begin() + static_cast<ptrdiff_t>(block.size() / 3), p, p + inserted.size());
  block.resize(kBlock);
  return block;
}

struct OpenedRegion {
  std::unique_ptr<PackStore> store;
  std::vector<std::pair<std::string, std::string>> reports;  // (hash, why) the store reported
};

std::unique_ptr<OpenedRegion> Open(const fs::path& root, bool deltas = true) {
  auto region = std::make_unique<OpenedRegion>();
  auto local = std::make_unique<LocalStore>(root);
  PackFiles& files = *local;
  PackStoreOptions options;
  options.pack_size = 4 * kBlock;
  options.deltas = deltas;
  region->store = std::make_unique<PackStore>(std::move(local), files, options);
  OpenedRegion* r = region.get();
  region->store->SetDamageHandler(
      [r](const std::string& hash, const std::string& why) { r->reports.emplace_back(hash, why); });
  region->store->Check();
  return region;
}

std::optional<BlockLocation> Where(const fs::path& root, const std::string& hash) {
  return BlockIndex::Open(root / "index" / "blocks.sqlite")->Lookup({hash})[0];
}

fs::path PackFile(const fs::path& root, const std::string& pack) {
  for (const auto& e : fs::recursive_directory_iterator(root / "packs")) {
    if (e.path().filename() == pack) return e.path();
  }
  return {};
}

void FlipByte(const fs::path& file, uint64_t offset) {
  std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(static_cast<std::streamoff>(offset));
  char c = 0;
  f.read(&c, 1);
  c = static_cast<char>(c ^ 0x20);
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(&c, 1);
}

// One region in a scratch directory.
struct ScratchRegion {
  ScratchDir dir;
  fs::path root = dir.path() / "r";
  std::unique_ptr<OpenedRegion> region = Open(root);
  PackStore& store = *region->store;
};

// v1's blocks written and committed, then v2's (each an edited v1 block).
struct TwoVersions {
  std::vector<std::vector<std::byte>> v1, v2;
  explicit TwoVersions(PackStore& store, int blocks = 4) {
    for (int i = 0; i < blocks; ++i) v1.push_back(Words(100 + static_cast<uint32_t>(i)));
    for (const auto& b : v1) store.PutChunk(HashOf(b), b);
    store.Flush();  // committed: only visible blocks are bases
    for (int i = 0; i < blocks; ++i) v2.push_back(Edited(v1[static_cast<size_t>(i)], 7 + i));
  }
  void WriteV2(PackStore& store) const {
    for (const auto& b : v2) store.PutChunk(HashOf(b), b);
    store.Flush();
  }
};

// A region holding one block of v1 and, as a delta on it, the same block of v2.
struct OneDelta {
  fs::path root;
  std::unique_ptr<OpenedRegion> region;
  TwoVersions versions;
  std::string base, delta;
  explicit OneDelta(const fs::path& at) : root(at), region(Open(at)), versions(*region->store, 1) {
    versions.WriteV2(*region->store);
    base = HashOf(versions.v1[0]);
    delta = HashOf(versions.v2[0]);
  }
};

TEST(DeltaBlocksTest, ABlockLikeAStoredOneIsKeptAsADeltaAndReadsBackExactly) {
  ScratchDir dir;
  auto region = Open(dir.path() / "r");
  PackStore& store = *region->store;
  TwoVersions versions(store);
  std::vector<std::byte> scratch;
  uint64_t alone = 0;
  uint64_t stored = 0;
  for (const auto& b : versions.v2) {
    alone += EncodeBlock(b, 1, scratch).bytes.size();
    stored += store.PutChunk(HashOf(b), b);
  }
  store.Flush();
  // A few edits cost a few hundred bytes, not the block compressed again (~25 KB).
  EXPECT_LT(stored * 8, alone) << stored << " bytes as deltas, " << alone << " compressed alone";
  for (const auto& b : versions.v2) {
    const std::optional<BlockLocation> where = Where(dir.path() / "r", HashOf(b));
    ASSERT_TRUE(where);
    EXPECT_EQ(where->codec, BlockCodec::kZstdDelta);
    EXPECT_FALSE(where->bases.empty());
    EXPECT_EQ(where->bases.find(HashOf(b)), std::string::npos);
  }
  // Read back by a store opened afresh (no base in any cache), in each read path.
  auto again = Open(dir.path() / "r");
  std::vector<std::byte> out;
  for (const auto& b : versions.v2) {
    again->store->GetChunk(HashOf(b), out);
    EXPECT_EQ(out, b);
    std::vector<std::byte> into(kBlock);
    StoredChunk form;
    again->store->GetChunkStoredInto(HashOf(b), into, form);
    EXPECT_EQ(into, b);
    // A copy is given the delta as stored, with its bases' names.
    EXPECT_EQ(form.codec, ChunkCodec::kZstdDelta);
    EXPECT_EQ(form.bases, Where(dir.path() / "r", HashOf(b))->bases);
  }
  EXPECT_TRUE(again->reports.empty());
}

// A block edited in place has one base; a block made of halves of two stored blocks (a file
// rewritten at another 4 KiB phase) has both: the second pays for its read there.
TEST(DeltaBlocksTest, ABlockOfTwoStoredHalvesHasBothAsBases) {
  ScratchRegion scratch;
  auto& [dir, root, region, store] = scratch;
  const auto a = Words(41);
  const auto b = Words(42);
  store.PutChunk(HashOf(a), a);
  store.PutChunk(HashOf(b), b);
  store.Flush();
  const auto edited = Edited(a, 43);
  std::vector<std::byte> halves(a.begin(), a.begin() + kBlock / 2);
  halves.insert(halves.end(), b.begin() + kBlock / 2, b.end());
  store.PutChunk(HashOf(edited), edited);
  store.PutChunk(HashOf(halves), halves);
  store.Flush();
  EXPECT_EQ(Where(root, HashOf(edited))->bases, HashOf(a));
  const std::string both = Where(root, HashOf(halves))->bases;
  EXPECT_EQ(both.size(), 128u);
  EXPECT_NE(both.find(HashOf(a)), std::string::npos);
  EXPECT_NE(both.find(HashOf(b)), std::string::npos);
  std::vector<std::byte> out;
  store.GetChunk(HashOf(halves), out);
  EXPECT_EQ(out, halves);
}

TEST(DeltaBlocksTest, WithDeltasOffOrNothingAlikeBlocksAreStoredWhole) {
  ScratchDir dir;
  auto off = Open(dir.path() / "off", /*deltas=*/false);
  TwoVersions versions(*off->store);
  versions.WriteV2(*off->store);
  for (const auto& b : versions.v2) {
    EXPECT_EQ(Where(dir.path() / "off", HashOf(b))->codec, BlockCodec::kZstd);
  }
  auto on = Open(dir.path() / "on");
  TwoVersions others(*on->store);
  const auto unrelated = Words(999);
  on->store->PutChunk(HashOf(unrelated), unrelated);
  on->store->Flush();
  EXPECT_EQ(Where(dir.path() / "on", HashOf(unrelated))->codec, BlockCodec::kZstd);
}

TEST(DeltaBlocksTest, ADamagedBaseFailsItsDeltasReadsNamesTheBaseAndIsNeverVouchedFor) {
  ScratchDir dir;
  OneDelta one(dir.path() / "r");
  auto& [root, region, versions, base, delta] = one;
  ASSERT_EQ(Where(root, delta)->bases, base);
  region.reset();

  const BlockLocation at = *Where(root, base);
  FlipByte(PackFile(root, at.pack), at.offset + at.stored_length / 2);
  auto opened = Open(root);
  std::vector<std::byte> out;
  try {
    opened->store->GetChunk(delta, out);
    FAIL() << "a delta of a damaged base was read";
  } catch (const DamagedChunkError& e) {
    EXPECT_EQ(e.hash(), delta);
    EXPECT_NE(std::string(e.what()).find("its base"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(base), std::string::npos) << e.what();
  }
  // Both are reported (what needs either is damaged), and neither is vouched for any more.
  std::map<std::string, std::string> reported(opened->reports.begin(), opened->reports.end());
  EXPECT_TRUE(reported.contains(base));
  EXPECT_TRUE(reported.contains(delta));
  EXPECT_FALSE(opened->store->HasChunkOfLength(delta, kBlock));
  EXPECT_EQ(opened->store->HasChunks({delta, base}), (std::vector<bool>{false, false}));
  // Written again, the block is stored whole (no damaged base is chosen) and reads back.
  opened->store->PutChunk(delta, versions.v2[0]);
  opened->store->Flush();
  opened->store->GetChunk(delta, out);
  EXPECT_EQ(out, versions.v2[0]);
}

TEST(DeltaBlocksTest, ATamperedPackIsRecheckedAndADeltaOnADamagedBaseIsNotVouchedFor) {
  ScratchDir dir;
  OneDelta one(dir.path() / "r");
  auto& [root, region, versions, base, delta] = one;
  ASSERT_TRUE(region->store->HasChunkOfLength(delta, kBlock));
  // The base's pack altered behind the store: the next confirmation re-reads it.
  const BlockLocation at = *Where(root, base);
  FlipByte(PackFile(root, at.pack), at.offset + 5);
  EXPECT_FALSE(region->store->HasChunkOfLength(delta, kBlock));
  EXPECT_EQ(region->store->HasChunks({delta}), std::vector<bool>{false});
}

TEST(DeltaBlocksTest, ASweepKeepsTheBasesOfLiveDeltasAndRepacksThemReadable) {
  ScratchRegion scratch;
  auto& [dir, root, region, store] = scratch;
  TwoVersions versions(store);
  versions.WriteV2(store);
  // v1 deleted: only v2's deltas are named by a manifest; their bases live on through them.
  MarkSet marked;
  for (const auto& b : versions.v2) marked.Add(HashOf(b));
  store.SweepUnmarked(marked);
  std::vector<std::byte> out;
  for (const auto& b : versions.v2) {
    store.GetChunk(HashOf(b), out);
    EXPECT_EQ(out, b);
  }
  // A sweep that rewrites every pack (all mostly dead) keeps them readable too.
  const auto extra = Words(555);
  store.PutChunk(HashOf(extra), extra);
  store.Flush();
  MarkSet only_v2;
  for (const auto& b : versions.v2) only_v2.Add(HashOf(b));
  store.SweepUnmarked(only_v2);
  auto reopened = Open(root);
  for (const auto& b : versions.v2) {
    reopened->store->GetChunk(HashOf(b), out);
    EXPECT_EQ(out, b);
  }
  EXPECT_TRUE(region->reports.empty());
  EXPECT_TRUE(reopened->reports.empty());
  // Nothing named: deltas and bases go.
  reopened->store->SweepUnmarked(MarkSet{});
  EXPECT_EQ(reopened->store->ListChunks().size(), 0u);
}

TEST(DeltaBlocksTest, AnIndexRebuiltFromFootersKnowsTheDeltasAndDropsThoseWhoseBaseIsGone) {
  ScratchDir dir;
  const fs::path root = dir.path() / "r";
  auto region = Open(root);
  TwoVersions versions(*region->store, 2);
  versions.WriteV2(*region->store);
  const std::string base0 = HashOf(versions.v1[0]);
  const BlockLocation base_at = *Where(root, base0);
  region.reset();

  fs::remove_all(root / "index");
  {
    auto rebuilt = Open(root);
    std::vector<std::byte> out;
    for (const auto& b : versions.v2) {
      rebuilt->store->GetChunk(HashOf(b), out);
      EXPECT_EQ(out, b);
    }
  }
  // The pack of a base deleted by hand, and the index rebuilt: the deltas built on what it
  // held are reported lost, not left to fail a copy later.
  fs::remove(PackFile(root, base_at.pack));
  fs::remove_all(root / "index");
  auto rebuilt = Open(root);
  std::map<std::string, std::string> reported(rebuilt->reports.begin(), rebuilt->reports.end());
  int dropped = 0;
  for (const auto& b : versions.v2) {
    const std::optional<BlockLocation> where = Where(root, HashOf(b));
    if (where && where->codec == BlockCodec::kZstdDelta) {
      EXPECT_EQ(where->bases.find(base0), std::string::npos) << "a delta on a lost base";
    } else if (!where) {
      ++dropped;
      EXPECT_TRUE(reported.contains(HashOf(b)));
    }
  }
  EXPECT_GE(dropped, 1);
  EXPECT_FALSE(rebuilt->store->HasChunkOfLength(HashOf(versions.v2[0]), kBlock));
}

TEST(DeltaBlocksTest, ABasesPackVanishingReportsTheDeltasBuiltOnIt) {
  ScratchDir dir;
  OneDelta one(dir.path() / "r");
  auto& [root, region, versions, base, delta] = one;
  const BlockLocation at = *Where(root, base);
  ASSERT_NE(at.pack, Where(root, delta)->pack);
  fs::remove(PackFile(root, at.pack));
  // A store opened afresh finds the pack gone: the base and the deltas on it are reported,
  // and a read finds the delta missing.
  auto reader = Open(root);
  std::vector<std::byte> out;
  EXPECT_THROW(reader->store->GetChunk(delta, out), TransferError);
  std::map<std::string, std::string> read_reports(reader->reports.begin(), reader->reports.end());
  EXPECT_TRUE(read_reports.contains(base));
  EXPECT_TRUE(read_reports.contains(delta));
  // A confirmation vouches for neither.
  EXPECT_EQ(region->store->HasChunks({delta, base}), (std::vector<bool>{false, false}));
  EXPECT_FALSE(Where(root, delta));
}

// A delta's size would tell how close a block is to the blocks it resembles: an account's
// blocks find their bases only among blocks written for the same owner (WriteScope), never
// among another account's, and a crew's threads write for whom their starter writes.
TEST(DeltaBlocksTest, BasesAreFoundOnlyAmongTheSameOwnersBlocks) {
  ScratchRegion scratch;
  auto& [dir, root, region, store] = scratch;
  std::optional<TwoVersions> versions;
  {
    const WriteScope team_a("team-a");
    versions.emplace(store, 2);
  }
  {
    const WriteScope team_b("team-b");
    store.PutChunk(HashOf(versions->v2[0]), versions->v2[0]);
    store.Flush();
  }
  EXPECT_EQ(Where(root, HashOf(versions->v2[0]))->codec, BlockCodec::kZstd);
  {
    const WriteScope team_a("team-a");
    Crew crew;
    crew.Start([&] { store.PutChunk(HashOf(versions->v2[1]), versions->v2[1]); });
    crew.Finish();
    store.Flush();
  }
  EXPECT_EQ(Where(root, HashOf(versions->v2[1]))->codec, BlockCodec::kZstdDelta);
  // A thread with no scope of its own is in the default one, which is neither; a scope ends
  // with its guard.
  const uint64_t outside = WriteScope::Current();
  {
    const WriteScope team_a("team-a");
    EXPECT_NE(WriteScope::Current(), outside);
  }
  EXPECT_EQ(WriteScope::Current(), outside);
}

TEST(DeltaBlocksTest, AnIndexOfTheFirstPackReleaseIsReadAfterTheUpgrade) {
  ScratchDir dir;
  const fs::path file = dir.path() / "blocks.sqlite";
  {
    // The first release's table, as it made it.
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(file.c_str(), &db), SQLITE_OK);
    const std::string sql =
        "CREATE TABLE blocks (hash TEXT PRIMARY KEY, pack TEXT NOT NULL, "
        "offset INTEGER NOT NULL, stored_length INTEGER NOT NULL, "
        "raw_length INTEGER NOT NULL, codec INTEGER NOT NULL) WITHOUT ROWID;"
        "INSERT INTO blocks VALUES ('" +
        std::string(64, 'a') + "', 'p', 0, 10, 10, 0);";
    ASSERT_EQ(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr), SQLITE_OK);
    sqlite3_close(db);
  }
  auto index = BlockIndex::Open(file);
  const std::optional<BlockLocation> old = index->Lookup({std::string(64, 'a')})[0];
  ASSERT_TRUE(old);
  EXPECT_TRUE(old->bases.empty());
  EXPECT_TRUE(index->Packs().empty());  // it listed none: pack `p` is known by its block only
  index->AddPack(
      "q", 100,
      {PackEntry{std::string(64, 'b'), 0, 5, 10, BlockCodec::kZstdDelta, std::string(64, 'a')}});
  EXPECT_EQ(index->Lookup({std::string(64, 'b')})[0]->bases, std::string(64, 'a'));
  // Forgetting the base forgets the delta built on it, in the same transaction.
  EXPECT_EQ(index->RemoveBlock(std::string(64, 'a')),
            std::vector<std::string>{std::string(64, 'b')});
  EXPECT_FALSE(index->Lookup({std::string(64, 'b')})[0]);
}

// A copy hands a delta on as it is to a region that holds its bases (a few hundred bytes on
// the wire instead of the block), and the block itself to one that does not.
TEST(DeltaBlocksTest, ACopyPassesADeltaToARegionHoldingItsBasesAndTheBlockToOthers) {
  ScratchDir dir;
  auto source = Open(dir.path() / "a");
  auto with_bases = Open(dir.path() / "b");
  auto without = Open(dir.path() / "c");
  TwoVersions versions(*source->store, 1);
  versions.WriteV2(*source->store);
  TwoVersions same(*with_bases->store, 1);  // b holds v1 (c holds nothing)
  const std::vector<std::byte>& block = versions.v2[0];
  const std::string hash = HashOf(block);

  std::vector<std::byte> data(kBlock);
  StoredChunk form;
  source->store->GetChunkStoredInto(hash, data, form);
  ASSERT_EQ(form.codec, ChunkCodec::kZstdDelta);
  const uint64_t sent = with_bases->store->PutStoredChunk(hash, data, form);
  with_bases->store->Flush();
  EXPECT_EQ(sent, form.bytes.size());
  EXPECT_LT(sent, kBlock / 16);
  const std::optional<BlockLocation> kept = Where(dir.path() / "b", hash);
  ASSERT_TRUE(kept);
  EXPECT_EQ(kept->codec, BlockCodec::kZstdDelta);
  EXPECT_EQ(kept->bases, form.bases);

  EXPECT_GT(without->store->PutStoredChunk(hash, data, form), kBlock / 8);
  without->store->Flush();
  EXPECT_EQ(Where(dir.path() / "c", hash)->codec, BlockCodec::kZstd);

  for (auto* region : {with_bases.get(), without.get()}) {
    std::vector<std::byte> out;
    region->store->GetChunk(hash, out);
    EXPECT_EQ(out, block);
    EXPECT_TRUE(region->store->HasChunkOfLength(hash, kBlock));
  }
}

// A block its source keeps whole arrives whole: kept so (its source found no base worth it), even
// where blocks like it are, and sketched, so that blocks written there later find it a base.
TEST(DeltaBlocksTest, ACopyKeepsAWholeBlockWholeAndSketchedForTheBlocksThatCome) {
  ScratchDir dir;
  auto source = Open(dir.path() / "a");
  auto dest = Open(dir.path() / "b");
  TwoVersions versions(*dest->store, 1);  // b holds v1; a holds only v2, whole
  const std::vector<std::byte>& block = versions.v2[0];
  const std::string hash = HashOf(block);
  source->store->PutChunk(hash, block);
  source->store->Flush();

  std::vector<std::byte> data(kBlock);
  StoredChunk form;
  source->store->GetChunkStoredInto(hash, data, form);
  ASSERT_EQ(form.codec, ChunkCodec::kZstd);
  EXPECT_EQ(dest->store->PutStoredChunk(hash, data, form), form.bytes.size());
  dest->store->Flush();
  const std::optional<BlockLocation> kept = Where(dir.path() / "b", hash);
  ASSERT_TRUE(kept);
  EXPECT_EQ(kept->codec, BlockCodec::kZstd);
  EXPECT_TRUE(kept->bases.empty());

  const std::vector<std::byte> next = Edited(block, 99);
  dest->store->PutChunk(HashOf(next), next);
  dest->store->Flush();
  const std::optional<BlockLocation> delta = Where(dir.path() / "b", HashOf(next));
  ASSERT_TRUE(delta);
  EXPECT_EQ(delta->codec, BlockCodec::kZstdDelta);
  EXPECT_NE(delta->bases.find(hash), std::string::npos) << delta->bases;
  std::vector<std::byte> out;
  dest->store->GetChunk(HashOf(next), out);
  EXPECT_EQ(out, next);
}

// Reads of planned deltas use where the plan found their bases; a sweep that moved a base since
// is no damage: it is looked up again, and nothing is reported or forgotten.
TEST(DeltaBlocksTest, ABasePlannedBeforeASweepMovedItIsReadWhereItIsNow) {
  ScratchRegion scratch;
  auto& [dir, root, region, store] = scratch;
  const std::vector<std::byte> base = Words(100);
  store.PutChunk(HashOf(base), base);
  for (uint32_t i = 1; i <= 3; ++i) {  // the rest of its pack, dead at the sweep
    const auto other = Words(500 + i);
    store.PutChunk(HashOf(other), other);
  }
  store.Flush();
  const std::vector<std::byte> block = Edited(base, 7);
  const std::string hash = HashOf(block);
  store.PutChunk(hash, block);
  store.Flush();
  ASSERT_EQ(Where(root, hash)->bases, HashOf(base));
  const std::string planned_pack = Where(root, HashOf(base))->pack;
  store.PlanReads({hash});

  MarkSet marked;
  marked.Add(hash);
  store.SweepUnmarked(marked);
  ASSERT_NE(Where(root, HashOf(base))->pack, planned_pack) << "the base's pack was repacked";
  std::vector<std::byte> out;
  store.GetChunk(hash, out);
  EXPECT_EQ(out, block);
  EXPECT_TRUE(region->reports.empty());
  EXPECT_EQ(store.ListChunks().size(), 2u);  // the delta and its base
}

// Resemblance rows naming `hash` (none: every row), read from the region's index file.
int64_t FeatureRows(const fs::path& root, const std::string& hash = "") {
  sqlite3* db = nullptr;
  EXPECT_EQ(sqlite3_open((root / "index" / "blocks.sqlite").c_str(), &db), SQLITE_OK);
  sqlite3_stmt* s = nullptr;
  const char* sql = hash.empty() ? "SELECT count(*) FROM features"
                                 : "SELECT count(*) FROM features WHERE block = ?";
  EXPECT_EQ(sqlite3_prepare_v2(db, sql, -1, &s, nullptr), SQLITE_OK);
  if (!hash.empty()) {
    const auto prefix = static_cast<int64_t>(std::stoull(hash.substr(0, 16), nullptr, 16));
    sqlite3_bind_int64(s, 1, prefix);
  }
  EXPECT_EQ(sqlite3_step(s), SQLITE_ROW);
  const int64_t n = sqlite3_column_int64(s, 0);
  sqlite3_finalize(s);
  sqlite3_close(db);
  return n;
}

// The resemblance rows of the blocks a sweep removes leave with them (only hints, but they
// would pile up with every version deleted); those of the blocks it keeps stay.
TEST(DeltaBlocksTest, ASweepDropsTheResemblanceRowsOfTheBlocksItRemoves) {
  ScratchRegion scratch;
  auto& [dir, root, region, store] = scratch;
  const std::vector<std::byte> kept = Words(100);
  const std::vector<std::byte> gone = Words(200);
  store.PutChunk(HashOf(kept), kept);
  store.PutChunk(HashOf(gone), gone);
  store.Flush();
  const int64_t rows_kept = FeatureRows(root, HashOf(kept));
  ASSERT_GT(rows_kept, 8);
  ASSERT_GT(FeatureRows(root, HashOf(gone)), 8);

  MarkSet marked;
  marked.Add(HashOf(kept));
  store.SweepUnmarked(marked);
  EXPECT_EQ(FeatureRows(root, HashOf(gone)), 0);
  EXPECT_EQ(FeatureRows(root, HashOf(kept)), rows_kept);
  EXPECT_EQ(FeatureRows(root), rows_kept);
  // The block kept is still found as a base.
  const std::vector<std::byte> next = Edited(kept, 5);
  store.PutChunk(HashOf(next), next);
  store.Flush();
  EXPECT_EQ(Where(root, HashOf(next))->bases, HashOf(kept));
  // Nothing named: every row goes.
  store.SweepUnmarked(MarkSet{});
  EXPECT_EQ(FeatureRows(root), 0);
}

// A base forgotten (found damaged) after a writer chose it and before its delta is committed:
// the delta is left out of the index, never indexed on a base that is gone.
TEST(DeltaBlocksTest, ADeltaWhoseBaseWasForgottenBeforeItsCommitIsNotIndexed) {
  ScratchDir dir;
  const fs::path root = dir.path() / "r";
  auto source = Open(dir.path() / "a");
  auto region = Open(root);
  TwoVersions versions(*source->store, 1);
  versions.WriteV2(*source->store);
  TwoVersions same(*region->store, 1);
  const std::string hash = HashOf(versions.v2[0]);
  std::vector<std::byte> data(kBlock);
  StoredChunk form;
  source->store->GetChunkStoredInto(hash, data, form);
  ASSERT_EQ(form.codec, ChunkCodec::kZstdDelta);
  region->store->PutStoredChunk(hash, data, form);         // its base is there now
  region->store->QuarantineChunk(HashOf(versions.v1[0]));  // and gone before the commit
  region->store->Flush();
  EXPECT_FALSE(Where(root, hash));
  EXPECT_FALSE(region->store->HasChunk(hash));
  // Written again, it is stored whole and reads back.
  region->store->PutChunk(hash, versions.v2[0]);
  region->store->Flush();
  std::vector<std::byte> out;
  region->store->GetChunk(hash, out);
  EXPECT_EQ(out, versions.v2[0]);
}

// Writers choosing bases, readers decoding deltas and flushes, side by side (TSan runs this).
TEST(DeltaBlocksTest, WritersAndReadersOfDeltasOnSeveralThreadsLoseNothing) {
  ScratchDir dir;
  auto region = Open(dir.path() / "r");
  PackStore& store = *region->store;
  TwoVersions versions(store, 8);
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      for (size_t i = static_cast<size_t>(t); i < versions.v2.size(); i += 2) {
        store.PutChunk(HashOf(versions.v2[i]), versions.v2[i]);
        if (i % 3 == 0) store.Flush();
      }
    });
  }
  threads.emplace_back([&] {
    std::vector<std::byte> out;
    for (int round = 0; round < 3; ++round) {
      for (const auto& b : versions.v1) {
        store.GetChunk(HashOf(b), out);
        EXPECT_EQ(out, b);
      }
    }
  });
  for (auto& t : threads) t.join();
  store.Flush();
  std::vector<std::byte> out;
  int deltas = 0;
  for (const auto& b : versions.v2) {
    store.GetChunk(HashOf(b), out);
    EXPECT_EQ(out, b);
    deltas += Where(dir.path() / "r", HashOf(b))->codec == BlockCodec::kZstdDelta;
  }
  EXPECT_EQ(deltas, 8);
  EXPECT_TRUE(region->reports.empty());
}

}  // namespace
}  // namespace imagerelay
