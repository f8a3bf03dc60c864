#include "store/block_index.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sqlite3.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "base/fail_point.hpp"
#include "base/unique_fd.hpp"
#include "imagerelay/error.hpp"
#include "imagerelay/sha256.hpp"
#include "killed_child.hpp"
#include "scratch_dir.hpp"
#include "test_bytes.hpp"

namespace imagerelay {
namespace {

using testing_util::ScratchDir;

using testing_util::HashOfNumber;

std::vector<PackEntry> Entries(uint64_t first, uint64_t count) {
  std::vector<PackEntry> entries;
  uint64_t offset = 0;
  for (uint64_t n = first; n < first + count; ++n) {
    entries.push_back({HashOfNumber(n), offset, 1000, 65536, BlockCodec::kZstd});
    offset += 1000;
  }
  return entries;
}

TEST(BlockIndexTest, LooksUpAddsRemovesAndPersists) {
  ScratchDir dir;
  const auto file = dir.path() / "index" / "bj.db";
  {
    auto index = BlockIndex::Open(file);
    index->AddPack("pack-a", 1000, Entries(0, 10));
    index->AddPack("pack-b", 1000, Entries(5, 10));  // 5..9 already in pack-a: they stay there
    EXPECT_EQ(index->BlockCount(), 15u);
    auto found = index->Lookup({HashOfNumber(7), HashOfNumber(12), HashOfNumber(99)});
    ASSERT_TRUE(found[0] && found[1]);
    EXPECT_EQ(found[0]->pack, "pack-a");
    EXPECT_EQ(found[1]->pack, "pack-b");
    EXPECT_EQ(found[1]->offset, 7000u);  // the 8th entry of pack-b
    EXPECT_EQ(found[1]->codec, BlockCodec::kZstd);
    EXPECT_FALSE(found[2]);
    using Packs = std::vector<std::pair<std::string, uint64_t>>;
    EXPECT_EQ(index->Packs(), (Packs{{"pack-a", 1000}, {"pack-b", 1000}}));
  }
  auto index = BlockIndex::Open(file);  // what was committed is still there
  EXPECT_EQ(index->BlockCount(), 15u);
  index->RemovePack("pack-a");
  EXPECT_EQ(index->BlockCount(), 5u);
  EXPECT_FALSE(index->Lookup({HashOfNumber(7)})[0]);  // re-added when a pack holds it again
  index->AddPack("pack-c", 1000, Entries(0, 10));
  EXPECT_EQ(index->Lookup({HashOfNumber(7)})[0]->pack, "pack-c");
}

// A region of many blocks answers from disk: 100k entries (a 6 GiB image of 64 KiB blocks)
// indexed and looked up in batches.
TEST(BlockIndexTest, ManyBlocksInBatches) {
  ScratchDir dir;
  auto index = BlockIndex::Open(dir.path() / "bj.db");
  constexpr uint64_t kPacks = 40, kPerPack = 2500;
  for (uint64_t p = 0; p < kPacks; ++p) {
    index->AddPack("pack-" + std::to_string(p), 1000, Entries(p * kPerPack, kPerPack));
  }
  EXPECT_EQ(index->BlockCount(), kPacks * kPerPack);
  std::vector<std::string> batch;
  for (uint64_t n = 0; n < kPacks * kPerPack; n += 997) batch.push_back(HashOfNumber(n));
  auto found = index->Lookup(batch);
  for (size_t i = 0; i < found.size(); ++i) {
    ASSERT_TRUE(found[i]) << i;
    EXPECT_EQ(found[i]->pack, "pack-" + std::to_string(i * 997 / kPerPack));
  }
}

// A block's key in the index's SQL: its hash's 32 bytes (a blob literal).
std::string KeySql(const std::string& hash) { return "x'" + hash + "'"; }

// Runs `sql` on the index file through a connection of its own: another process, or an
// earlier release that knows nothing of the index's kept answers.
void ExecElsewhere(const std::filesystem::path& file, const std::string& sql) {
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(file.c_str(), &db), SQLITE_OK);
  sqlite3_busy_timeout(db, 5000);
  char* error = nullptr;
  const int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &error);
  EXPECT_EQ(rc, SQLITE_OK) << (error ? error : "");
  sqlite3_free(error);
  sqlite3_close(db);
}

// Answers kept from earlier lookups (a copy's confirmation asks again about every block its
// plan found) are never given once a block has left the index or moved, whoever changed it:
// this index, another one on the same file (another process), or plain SQL (an earlier
// release, a hand): the database's own triggers count every such change.
TEST(BlockIndexTest, KeptAnswersNeverOutliveARemovalOrAMoveByAnyone) {
  ScratchDir dir;
  const auto file = dir.path() / "bj.db";
  auto index = BlockIndex::Open(file);
  index->AddPack("pack-a", 1000, Entries(0, 10));
  std::vector<std::string> all;
  for (uint64_t n = 0; n < 10; ++n) all.push_back(HashOfNumber(n));
  for (const auto& found : index->Lookup(all)) ASSERT_TRUE(found);

  index->RemoveBlock(HashOfNumber(1));  // this index
  auto other = BlockIndex::Open(file);  // another process
  other->RemoveBlocks({HashOfNumber(2)});
  ExecElsewhere(file, "DELETE FROM indexed_blocks WHERE hash = " + KeySql(HashOfNumber(3)));
  auto found = index->Lookup(all);
  EXPECT_FALSE(found[1]);
  EXPECT_FALSE(found[2]);
  EXPECT_FALSE(found[3]);
  EXPECT_TRUE(found[4]);

  ExecElsewhere(file,
                "INSERT INTO indexed_packs (name, size) VALUES ('pack-b', 1000);"
                "UPDATE indexed_blocks SET offset = 123, "
                "pack = (SELECT id FROM indexed_packs WHERE name = 'pack-b') WHERE hash = " +
                    KeySql(HashOfNumber(4)));
  found = index->Lookup(all);
  ASSERT_TRUE(found[4]);
  EXPECT_EQ(found[4]->pack, "pack-b");
  EXPECT_EQ(found[4]->offset, 123u);

  other->RemovePack("pack-a");  // the whole pack, by the other process
  EXPECT_FALSE(index->Lookup({HashOfNumber(5)})[0]);
  for (const auto& gone : index->Lookup(all)) {
    if (gone) EXPECT_EQ(gone->pack, "pack-b");
  }
  // Blocks added do not disturb what is kept; they are found all the same.
  index->AddPack("pack-c", 1000, Entries(20, 2));
  EXPECT_EQ(index->Lookup({HashOfNumber(21)})[0]->pack, "pack-c");
  // Without its count (the row deleted by hand) the index keeps nothing.
  ExecElsewhere(file, "DELETE FROM changes");
  EXPECT_TRUE(index->Lookup({HashOfNumber(20)})[0]);
  ExecElsewhere(file, "DELETE FROM indexed_blocks WHERE hash = " + KeySql(HashOfNumber(20)));
  EXPECT_FALSE(index->Lookup({HashOfNumber(20)})[0]);
}

// Deletes a block by hand without counting it (the count put back in the same transaction):
// a change the index cannot see, so that a test can tell a kept answer from SQLite's.
void DeleteUncounted(const std::filesystem::path& file, const std::string& hash) {
  ExecElsewhere(file, "BEGIN; DELETE FROM indexed_blocks WHERE hash = " + KeySql(hash) +
                          "; UPDATE changes SET count = count - 1; COMMIT");
}

// What an index commits it keeps as answers (a copy's confirmation then asks SQLite about
// none of the blocks it wrote), under the same rule as kept lookups: only while no block has
// left the index since; answers kept from before a block left give way to them.
TEST(BlockIndexTest, WhatItCommitsItKeepsAsAnswersWhileNoBlockLeaves) {
  ScratchDir dir;
  const auto file = dir.path() / "bj.db";
  auto index = BlockIndex::Open(file);
  index->AddPack("pack-a", 1000, Entries(0, 4));
  ASSERT_TRUE(index->Lookup({HashOfNumber(0), HashOfNumber(1)})[0]);  // answers kept from here

  IndexedPack written{"pack-b", 1000, Entries(10, 4), "", {}};
  index->AddPacks({written});
  DeleteUncounted(file, HashOfNumber(11));
  auto kept = index->Lookup({HashOfNumber(11)})[0];  // kept as committed, not asked again
  ASSERT_TRUE(kept);
  EXPECT_EQ(kept->pack, "pack-b");
  EXPECT_EQ(kept->offset, 1000u);

  // A removal anyone makes ends every kept answer: asked again, the block is gone.
  BlockIndex::Open(file)->RemoveBlocks({HashOfNumber(2)});
  EXPECT_FALSE(index->Lookup({HashOfNumber(11)})[0]);
  EXPECT_FALSE(index->Lookup({HashOfNumber(2)})[0]);
  EXPECT_TRUE(index->Lookup({HashOfNumber(12)})[0]);  // kept from here on again

  // A block removed by another process before this commit: the answers kept from before go
  // (asked again), the commit's rows are kept in their place.
  BlockIndex::Open(file)->RemoveBlocks({HashOfNumber(3)});
  index->AddPacks({IndexedPack{"pack-c", 1000, Entries(20, 2), "", {}}});
  DeleteUncounted(file, HashOfNumber(20));
  DeleteUncounted(file, HashOfNumber(12));
  EXPECT_TRUE(index->Lookup({HashOfNumber(20)})[0]);
  EXPECT_FALSE(index->Lookup({HashOfNumber(12)})[0]);
  EXPECT_FALSE(index->Lookup({HashOfNumber(3)})[0]);

  // A fresh index (nothing looked up yet) keeps what it commits all the same.
  auto fresh = BlockIndex::Open(file);
  fresh->AddPack("pack-d", 1000, Entries(30, 2));
  DeleteUncounted(file, HashOfNumber(30));
  EXPECT_TRUE(fresh->Kept(HashOfNumber(30)));
  EXPECT_TRUE(fresh->Lookup({HashOfNumber(30)})[0]);
}

// LookupHint answers from what is kept, stale or not, and asks SQLite for the rest.
TEST(BlockIndexTest, AHintIsTheKeptAnswerEvenIfStaleAndALookupOtherwise) {
  ScratchDir dir;
  const auto file = dir.path() / "bj.db";
  auto index = BlockIndex::Open(file);
  index->AddPack("pack-a", 1000, Entries(0, 4));
  ASSERT_TRUE(index->Lookup({HashOfNumber(0), HashOfNumber(1)})[1]);
  DeleteUncounted(file, HashOfNumber(1));
  auto hint = index->LookupHint({HashOfNumber(0), HashOfNumber(1)});
  ASSERT_TRUE(hint[0] && hint[1]);  // kept, though gone: a hint
  EXPECT_EQ(hint[1]->pack, "pack-a");
  // One hash not kept: all are looked up, and the truth comes back.
  hint = index->LookupHint({HashOfNumber(1), HashOfNumber(99)});
  EXPECT_FALSE(hint[1]);
  // A hint never asks whether what is kept still holds (no SQLite at all); the next lookup
  // that asks does, and keeps nothing after a counted removal.
  index->AddPack("pack-b", 1000, Entries(30, 1));
  BlockIndex::Open(file)->RemoveBlocks({HashOfNumber(0)});
  EXPECT_TRUE(index->LookupHint({HashOfNumber(0)})[0]);
  EXPECT_FALSE(index->Lookup({HashOfNumber(0)})[0]);
  hint = index->LookupHint({HashOfNumber(1), HashOfNumber(30)});
  EXPECT_FALSE(hint[0]);
  ASSERT_TRUE(hint[1]);
  EXPECT_EQ(hint[1]->pack, "pack-b");
}

// A batch is answered by walking the table in key order: dense and sparse stretches, keys
// asked twice, keys before the first block and after the last, in any order asked.
TEST(BlockIndexTest, ABatchInAnyOrderGetsEachKeysOwnAnswer) {
  ScratchDir dir;
  auto index = BlockIndex::Open(dir.path() / "bj.db");
  auto fresh = BlockIndex::Open(dir.path() / "bj.db");  // keeps nothing from the batch
  std::set<std::string> indexed;
  for (uint64_t p = 0; p < 8; ++p) {
    std::vector<PackEntry> entries;
    for (uint64_t n = p * 500; n < (p + 1) * 500; ++n) {
      if (n % 3 == 0 || (n > 3000 && n % 41 != 0)) continue;  // holes, then a sparse stretch
      entries.push_back({HashOfNumber(n), n * 1000, 1000, 65536, BlockCodec::kZstd});
      indexed.insert(entries.back().hash);
    }
    index->AddPack("pack-" + std::to_string(p), 1000, entries);
  }
  std::vector<std::string> batch;
  for (uint64_t n = 0; n < 4200; ++n) batch.push_back(HashOfNumber(n));
  batch.push_back(HashOfNumber(7));       // twice
  batch.push_back(std::string(64, '0'));  // before every block
  batch.push_back(std::string(64, 'f'));  // after every block
  std::mt19937 rng(7);
  std::shuffle(batch.begin(), batch.end(), rng);
  const auto found = index->Lookup(batch);
  ASSERT_EQ(found.size(), batch.size());
  size_t hits = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    EXPECT_EQ(found[i].has_value(), indexed.contains(batch[i])) << i;
    if (!found[i]) continue;
    ++hits;
    const auto again = fresh->Lookup({batch[i]})[0];  // alone: a seek of its own
    ASSERT_TRUE(again);
    EXPECT_EQ(*found[i], *again);
  }
  EXPECT_GT(hits, 1000u);
  // A presence check of the same batch says the same, each pack named once.
  const BlockPresence presence = fresh->Presence(batch);
  ASSERT_EQ(presence.pack_of.size(), batch.size());
  EXPECT_EQ(std::set<std::string>(presence.packs.begin(), presence.packs.end()).size(),
            presence.packs.size());
  for (size_t i = 0; i < batch.size(); ++i) {
    ASSERT_EQ(presence.pack_of[i] >= 0, found[i].has_value()) << i;
    if (!found[i]) continue;
    EXPECT_EQ(presence.packs[static_cast<size_t>(presence.pack_of[i])], found[i]->pack);
    EXPECT_EQ(presence.raw_length[i], found[i]->raw_length);
  }
}

// What a process of the releases before format 2 runs as it opens an index (tests/fixtures).
std::string Format1Tables() {
  std::ifstream file(std::filesystem::path(IMAGERELAY_TEST_FIXTURES_DIR) /
                     "block_index_format1.sql");
  std::stringstream sql;
  sql << file.rdbuf();
  EXPECT_NE(sql.str().find("CREATE TABLE IF NOT EXISTS blocks"), std::string::npos);
  return "PRAGMA journal_mode = WAL;" + sql.str();
}

// The index as the releases before format 2 made it, with a changes count.
std::string Format1Schema() {
  return Format1Tables() + "INSERT INTO changes (id, count) VALUES (0, 7);";
}

// The error running `sql` on the index gives ("" if none).
std::string ErrorOfExec(const std::filesystem::path& file, const std::string& sql) {
  sqlite3* db = nullptr;
  EXPECT_EQ(sqlite3_open(file.c_str(), &db), SQLITE_OK);
  char* error = nullptr;
  const int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &error);
  std::string message = rc == SQLITE_OK ? "" : (error ? error : "failed");
  sqlite3_free(error);
  sqlite3_close(db);
  return message;
}

// The first 16 hex digits of a hash as a resemblance row names its block (HashPrefix).
int64_t PrefixOf(const std::string& hash) {
  return static_cast<int64_t>(std::stoull(hash.substr(0, 16), nullptr, 16));
}

int64_t SqlNumber(const std::filesystem::path& file, const std::string& sql) {
  sqlite3* db = nullptr;
  EXPECT_EQ(sqlite3_open(file.c_str(), &db), SQLITE_OK);
  sqlite3_stmt* s = nullptr;
  EXPECT_EQ(sqlite3_prepare_v2(db, sql.c_str(), -1, &s, nullptr), SQLITE_OK) << sqlite3_errmsg(db);
  const int64_t value = sqlite3_step(s) == SQLITE_ROW ? sqlite3_column_int64(s, 0) : -1;
  sqlite3_finalize(s);
  sqlite3_close(db);
  return value;
}

// An index written in format 1 answers every question as before once opened: it is moved to
// format 2 in one transaction, its packs (sizes, marks), blocks, deltas and resemblance rows
// kept; a row no release could have written (a key, or a delta's bases, that are not hashes)
// is left behind.
TEST(BlockIndexTest, AnIndexInTheFormatOfEarlierReleasesIsMovedOnOpenWithAllItHeld) {
  ScratchDir dir;
  const auto file = dir.path() / "index" / "blocks.sqlite";
  std::filesystem::create_directories(file.parent_path());
  const std::string a = HashOfNumber(1), b = HashOfNumber(2), c = HashOfNumber(3),
                    delta = HashOfNumber(4), orphan_pack_block = HashOfNumber(5);
  ExecElsewhere(file, Format1Schema());
  ExecElsewhere(file,
                "INSERT INTO packs VALUES ('pack-a', 3000), ('pack-b', 2000);"
                "INSERT INTO blocks VALUES ('" +
                    a +
                    "', 'pack-a', 0, 1000, 65536, 1, NULL),"
                    "('" +
                    b +
                    "', 'pack-a', 1000, 1000, 65536, 1, NULL),"
                    "('" +
                    c +
                    "', 'pack-b', 0, 2000, 65536, 0, NULL),"
                    "('" +
                    delta + "', 'pack-a', 2000, 100, 65536, 2, '" + a + b +
                    "'),"
                    "('" +
                    orphan_pack_block +
                    "', 'pack-z', 0, 10, 10, 0, NULL),"
                    "('not-a-hash', 'pack-b', 2000, 10, 10, 0, NULL),"
                    "('" +
                    HashOfNumber(6) +
                    "', 'pack-b', 2010, 10, 10, 2, 'not-bases');"
                    "INSERT INTO delta_bases VALUES ('" +
                    a + "', '" + delta + "'), ('" + b + "', '" + delta + "'), ('" + a + "', '" +
                    HashOfNumber(6) +
                    "');"  // the last: of a delta left behind, whose link goes with it
                    "INSERT INTO features VALUES (42, " +
                    std::to_string(PrefixOf(c)) +
                    ");"
                    "INSERT INTO marks VALUES ('pack-a', 'mark-a');");
  ASSERT_EQ(SqlNumber(file, "PRAGMA user_version"), 0);

  auto index = BlockIndex::Open(file);
  EXPECT_EQ(SqlNumber(file, "PRAGMA user_version"), 2);
  // Format 1's tables gone; `blocks` is the view that stops earlier releases' processes.
  EXPECT_EQ(SqlNumber(file,
                      "SELECT count(*) FROM sqlite_schema WHERE name IN "
                      "('blocks', 'packs', 'delta_bases', 'block_removed') AND type != 'view'"),
            0);
  EXPECT_EQ(SqlNumber(file, "SELECT count(*) FROM sqlite_schema WHERE type = 'view'"), 1);
  EXPECT_EQ(index->BlockCount(), 5u);
  using Packs = std::vector<std::pair<std::string, uint64_t>>;
  EXPECT_EQ(index->Packs(), (Packs{{"pack-a", 3000}, {"pack-b", 2000}}));  // as listed
  const auto found =
      index->Lookup({a, b, c, delta, orphan_pack_block, "not-a-hash", HashOfNumber(6)});
  ASSERT_TRUE(found[0] && found[1] && found[2] && found[3] && found[4]);
  EXPECT_EQ(*found[1], (BlockLocation{"pack-a", 1000, 1000, 65536, BlockCodec::kZstd, ""}));
  EXPECT_EQ(*found[3], (BlockLocation{"pack-a", 2000, 100, 65536, BlockCodec::kZstdDelta, a + b}));
  EXPECT_EQ(found[4]->pack, "pack-z");
  EXPECT_FALSE(found[5]);
  EXPECT_FALSE(found[6]);  // never read as a whole block
  EXPECT_EQ(index->EntriesOf("pack-a").size(), 3u);
  EXPECT_EQ(index->EntriesOf("pack-a")[2],
            (PackEntry{delta, 2000, 100, 65536, BlockCodec::kZstdDelta, a + b}));
  EXPECT_EQ(index->MarkOf("pack-a"), "mark-a");
  EXPECT_EQ(index->SimilarBlocks({42}, 2), std::vector<std::string>{c});
  std::set<std::pair<std::string, std::string>> links;
  index->ForEachDeltaBase(
      [&](const std::string& d, const std::string& base) { links.emplace(d, base); });
  EXPECT_EQ(links, (std::set<std::pair<std::string, std::string>>{{delta, a}, {delta, b}}));
  const BlockPresence presence = index->Presence({delta});
  EXPECT_EQ(presence.pack_of[0], 0);
  EXPECT_EQ(index->Hashes().size(), 5u);

  // Opened again (by this process or another): nothing more to move.
  EXPECT_EQ(BlockIndex::Open(file)->BlockCount(), 5u);
  // The rules hold across the move: a base forgotten takes its delta with it; a pack listed
  // now (pack-z, named by a block only) once a pack of that name is indexed.
  EXPECT_EQ(index->RemoveBlock(a), std::vector<std::string>{delta});
  EXPECT_FALSE(index->Lookup({delta})[0]);
  index->AddPack("pack-z", 500, Entries(10, 1));
  EXPECT_EQ(index->Packs().back(), (std::pair<std::string, uint64_t>{"pack-z", 500}));
  index->RemovePack("pack-b");
  EXPECT_FALSE(index->Lookup({c})[0]);
  EXPECT_EQ(index->Packs().size(), 2u);
}

// A format 1 index holding block 1 in pack-a.
void WriteFormat1WithOneBlock(const std::filesystem::path& file) {
  ExecElsewhere(file, Format1Schema());
  ExecElsewhere(file,
                "INSERT INTO packs VALUES ('pack-a', 3000);"
                "INSERT INTO blocks VALUES ('" +
                    HashOfNumber(1) + "', 'pack-a', 0, 1000, 65536, 1, NULL);");
}

// A crash in the move leaves format 1 whole (one transaction), moved at the next open; an
// index in a format this release does not know is refused, not misread.
TEST(BlockIndexTest, AMoveCutShortLeavesTheOldFormatAndALaterFormatIsRefused) {
  ScratchDir dir;
  const auto file = dir.path() / "blocks.sqlite";
  WriteFormat1WithOneBlock(file);
  // As a kill -9 in the move: the fail point after the copy, before the commit.
  EXPECT_EQ(
      testing_util::ExitCodeOfStepKilledAt("index.migrated@1", [&] { BlockIndex::Open(file); }),
      kFailPointExitCode);
  EXPECT_EQ(SqlNumber(file, "PRAGMA user_version"), 0);
  EXPECT_EQ(SqlNumber(file, "SELECT count(*) FROM blocks"), 1);
  EXPECT_EQ(SqlNumber(file, "SELECT count(*) FROM sqlite_schema WHERE name = 'indexed_blocks'"), 0);
  EXPECT_EQ(BlockIndex::Open(file)->Lookup({HashOfNumber(1)})[0]->pack, "pack-a");

  ExecElsewhere(file, "PRAGMA user_version = 3");
  try {
    BlockIndex::Open(file);
    ADD_FAILURE() << "a later format opened";
  } catch (const TransferError& e) {
    EXPECT_NE(std::string(e.what()).find("format 3"), std::string::npos) << e.what();
  }
}

// An index another process is moving (its write lock held past the usual 5 s wait, as the
// move of a large index does) is waited for, not reported unavailable.
TEST(BlockIndexTest, AnOpenWaitsForAnotherProcessMovingTheIndex) {
  ScratchDir dir;
  const auto file = dir.path() / "blocks.sqlite";
  WriteFormat1WithOneBlock(file);
  sqlite3* mover = nullptr;
  ASSERT_EQ(sqlite3_open(file.c_str(), &mover), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(mover, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr), SQLITE_OK);
  std::thread release([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(6500));
    sqlite3_exec(mover, "COMMIT", nullptr, nullptr, nullptr);
  });
  std::unique_ptr<BlockIndex> index;
  EXPECT_NO_THROW(index = BlockIndex::Open(file));
  release.join();
  sqlite3_close(mover);
  ASSERT_TRUE(index);
  EXPECT_EQ(index->Lookup({HashOfNumber(1)})[0]->pack, "pack-a");
}

// A process of an earlier release makes its tables where they are missing: in an index of
// this format, made anew or moved, the view in the name of its table makes its open fail (a
// view cannot be indexed) rather than keep a second index beside this one.
TEST(BlockIndexTest, AProcessOfAnEarlierReleaseCannotOpenAnIndexOfThisFormat) {
  ScratchDir dir;
  const auto made = dir.path() / "made.sqlite";
  BlockIndex::Open(made)->AddPack("pack-a", 1000, Entries(0, 3));
  const auto moved = dir.path() / "moved.sqlite";
  WriteFormat1WithOneBlock(moved);
  BlockIndex::Open(moved);
  for (const auto& file : {made, moved}) {
    const std::string error = ErrorOfExec(file, Format1Tables());
    EXPECT_NE(error.find("view"), std::string::npos) << file << ": " << error;
    EXPECT_EQ(SqlNumber(file,
                        "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND "
                        "name IN ('blocks', 'packs', 'delta_bases')"),
              0);
    EXPECT_EQ(BlockIndex::Open(file)->Lookup({HashOfNumber(1)})[0]->pack, "pack-a");
  }
}

// An index made in this format before the view (by the release that brought the format) gets
// it at its next open, keeping its marks; where a process of an earlier release had made its
// tables meanwhile, they are dropped and every mark with them, so that each pack is read
// whole again before it is vouched for (that process may have found damage this index was
// never told of).
TEST(BlockIndexTest, TablesAnEarlierReleaseMadeInThisFormatAreDroppedWithEveryMark) {
  ScratchDir dir;
  const auto file = dir.path() / "blocks.sqlite";
  {
    auto index = BlockIndex::Open(file);
    index->AddPack("pack-a", 1000, Entries(0, 3));
    index->SetMark("pack-a", "mark-a");
  }
  ExecElsewhere(file, "DROP VIEW blocks");
  EXPECT_EQ(BlockIndex::Open(file)->MarkOf("pack-a"), "mark-a");
  EXPECT_NE(ErrorOfExec(file, Format1Tables()), "");

  ExecElsewhere(file, "DROP VIEW blocks");
  ExecElsewhere(file, Format1Tables());  // as a process of an earlier release opened it
  auto index = BlockIndex::Open(file);
  EXPECT_EQ(index->MarkOf("pack-a"), "");
  EXPECT_EQ(index->Lookup({HashOfNumber(1)})[0]->pack, "pack-a");
  EXPECT_EQ(SqlNumber(file,
                      "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND "
                      "name IN ('blocks', 'packs', 'delta_bases')"),
            0);
  EXPECT_NE(ErrorOfExec(file, Format1Tables()), "");
}

// Rows no release writes (an index edited by hand, or damaged) name no block: a pack number no
// pack has (an object store would have vouched for a block in no pack), a delta whose bases
// are not whole hashes (it read as a whole block), a codec or a length no block has, a hash
// that is not 32 bytes (the sweep took its first 32 for another block's). Lookups, presence
// and a pack's entries leave them out, and nothing throws.
TEST(BlockIndexTest, RowsNoReleaseWritesNameNoBlock) {
  ScratchDir dir;
  const auto file = dir.path() / "blocks.sqlite";
  BlockIndex::Open(file)->AddPack("pack-a", 6000, Entries(0, 6));
  auto key = [](uint64_t n) { return "x'" + HashOfNumber(n) + "'"; };
  ExecElsewhere(
      file, "UPDATE indexed_blocks SET pack = 999 WHERE hash = " + key(0) + ";" +
                "UPDATE indexed_blocks SET codec = 2, bases = x'0102' WHERE hash = " + key(1) +
                ";" + "UPDATE indexed_blocks SET codec = 7 WHERE hash = " + key(2) + ";" +
                "UPDATE indexed_blocks SET stored_length = 1099511627776 WHERE hash = " + key(3) +
                ";" + "UPDATE indexed_blocks SET raw_length = -1 WHERE hash = " + key(4) + ";" +
                "UPDATE indexed_blocks SET hash = x'" + HashOfNumber(5) +
                "ff' WHERE hash = " + key(5) + ";");
  auto index = BlockIndex::Open(file);
  std::vector<std::string> hashes;
  for (uint64_t n = 0; n < 6; ++n) hashes.push_back(HashOfNumber(n));
  for (const auto& where : index->Lookup(hashes)) EXPECT_FALSE(where);
  for (int32_t pack : index->Presence(hashes).pack_of) EXPECT_EQ(pack, -1);
  EXPECT_TRUE(index->EntriesOf("pack-a").empty());
  // A good row beside them is still found; a block written again (or read from its pack's
  // footer) takes the place of its row that names none.
  index->AddPack("pack-b", 1000, Entries(6, 1));
  EXPECT_EQ(index->Lookup({HashOfNumber(6)})[0]->pack, "pack-b");
  index->AddPack("pack-c", 5000, Entries(0, 5));
  for (const auto& where : index->Lookup({hashes.begin(), hashes.begin() + 5})) {
    ASSERT_TRUE(where);
    EXPECT_EQ(where->pack, "pack-c");
  }
  // A good row stays where it is.
  index->AddPack("pack-d", 1000, Entries(0, 1));
  EXPECT_EQ(index->Lookup({HashOfNumber(0)})[0]->pack, "pack-c");
}

// How many indexes were set aside as damaged in `dir` (blocks.sqlite.damaged-*).
size_t SetAsideIndexes(const std::filesystem::path& dir) {
  size_t aside = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    aside += entry.path().filename().string().starts_with("blocks.sqlite.damaged-") ? 1 : 0;
  }
  return aside;
}

// An index of this format missing one of its tables (dropped by hand) is set aside as damaged
// and made anew, for its store to fill from the packs' footers, never half used.
TEST(BlockIndexTest, AnIndexMissingATableIsSetAsideAndMadeAnew) {
  // Or a trigger that counts removed rows: kept answers would outlive a removal.
  for (const std::string drop : {"DROP TABLE indexed_packs", "DROP TRIGGER indexed_block_removed",
                                 "DROP TRIGGER indexed_block_changed"}) {
    SCOPED_TRACE(drop);
    ScratchDir dir;
    const auto file = dir.path() / "blocks.sqlite";
    BlockIndex::Open(file)->AddPack("pack-a", 1000, Entries(0, 3));
    ExecElsewhere(file, drop);
    auto index = BlockIndex::Open(file);
    EXPECT_EQ(index->BlockCount(), 0u);
    index->AddPack("pack-a", 1000, Entries(0, 3));
    EXPECT_EQ(index->Lookup({HashOfNumber(1)})[0]->pack, "pack-a");
    EXPECT_EQ(SetAsideIndexes(dir.path()), 1u);
  }
}

// Processes that find the index damaged together set it aside one at a time, each only if it
// is still damaged when its turn comes: the one after does not set aside (nor remove the log
// of) the index the one before made anew.
TEST(BlockIndexTest, ADamagedIndexIsSetAsideOnceWhenSeveralFindItSo) {
  ScratchDir dir;
  const auto file = dir.path() / "blocks.sqlite";
  std::ofstream(file) << std::string(8192, 'x');  // no database
  // This thread acts as the process that found it damaged first: it holds the lock.
  UniqueFd lock(::open((file.string() + ".lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  ASSERT_TRUE(lock);
  ASSERT_EQ(::flock(lock.get(), LOCK_EX), 0);
  std::unique_ptr<BlockIndex> second;
  std::thread other([&] { second = BlockIndex::Open(file); });  // finds it damaged, waits
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  std::filesystem::rename(file, file.string() + ".damaged-first");
  BlockIndex::Open(file)->AddPack("pack-a", 1000, Entries(0, 3));
  ::flock(lock.get(), LOCK_UN);
  other.join();
  ASSERT_TRUE(second);
  EXPECT_EQ(second->Lookup({HashOfNumber(1)})[0]->pack, "pack-a");
  EXPECT_EQ(SetAsideIndexes(dir.path()), 1u);
}

TEST(BlockIndexTest, AnUnusableFileIsAStoreError) {
  ScratchDir dir;
  std::filesystem::create_directory(dir.path() / "taken");
  EXPECT_THROW(BlockIndex::Open(dir.path() / "taken"), TransferError);
}

}  // namespace
}  // namespace imagerelay
