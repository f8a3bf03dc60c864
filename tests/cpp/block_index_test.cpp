#include "store/block_index.hpp"

#include <gtest/gtest.h>
#include <sqlite3.h>

#include <algorithm>
#include <random>
#include <set>

#include "imagerelay/error.hpp"
#include "imagerelay/sha256.hpp"
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
  ExecElsewhere(file, "DELETE FROM blocks WHERE hash = '" + HashOfNumber(3) + "'");
  auto found = index->Lookup(all);
  EXPECT_FALSE(found[1]);
  EXPECT_FALSE(found[2]);
  EXPECT_FALSE(found[3]);
  EXPECT_TRUE(found[4]);

  ExecElsewhere(file, "UPDATE blocks SET pack = 'pack-b', offset = 123 WHERE hash = '" +
                          HashOfNumber(4) + "'");
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
  ExecElsewhere(file, "DELETE FROM blocks WHERE hash = '" + HashOfNumber(20) + "'");
  EXPECT_FALSE(index->Lookup({HashOfNumber(20)})[0]);
}

// Deletes a block by hand without counting it (the count put back in the same transaction):
// a change the index cannot see, so that a test can tell a kept answer from SQLite's.
void DeleteUncounted(const std::filesystem::path& file, const std::string& hash) {
  ExecElsewhere(file, "BEGIN; DELETE FROM blocks WHERE hash = '" + hash +
                          "'; UPDATE changes SET count = count - 1; COMMIT");
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

TEST(BlockIndexTest, AnUnusableFileIsAStoreError) {
  ScratchDir dir;
  std::filesystem::create_directory(dir.path() / "taken");
  EXPECT_THROW(BlockIndex::Open(dir.path() / "taken"), TransferError);
}

}  // namespace
}  // namespace imagerelay
