#include "store/block_index.hpp"

#include <fcntl.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <ctime>
#include <limits>
#include <numeric>
#include <unordered_map>
#include <utility>

#include "base/fail_point.hpp"
#include "base/sqlite_util.hpp"
#include "imagerelay/error.hpp"
#include "imagerelay/log.hpp"

namespace imagerelay {

// Two connections: lookups read through their own (WAL: a reader sees the last commit and
// never waits for a writer), so that a copy's or an import's lookups go on while a group of
// packs is being indexed.
struct BlockIndex::Db {
  sqlite::Connection conn;    // writes, under mutex_
  sqlite::Connection reader;  // reads, under read_mutex_
  std::filesystem::path file;
};

namespace {

constexpr const char* kSchema = R"sql(
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
CREATE TABLE IF NOT EXISTS blocks (
  hash TEXT PRIMARY KEY,
  pack TEXT NOT NULL,
  offset INTEGER NOT NULL,
  stored_length INTEGER NOT NULL,
  raw_length INTEGER NOT NULL,
  codec INTEGER NOT NULL,
  bases TEXT
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS blocks_by_pack ON blocks (pack);
CREATE TABLE IF NOT EXISTS delta_bases (
  base TEXT NOT NULL,
  block TEXT NOT NULL,
  PRIMARY KEY (base, block)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS delta_bases_by_block ON delta_bases (block);
CREATE TABLE IF NOT EXISTS features (
  feature INTEGER PRIMARY KEY,
  block INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS packs (
  name TEXT PRIMARY KEY,
  size INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS marks (
  file TEXT PRIMARY KEY,
  mark TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS changes (
  id INTEGER PRIMARY KEY CHECK (id = 0),
  count INTEGER NOT NULL
);
CREATE TRIGGER IF NOT EXISTS block_removed AFTER DELETE ON blocks
  BEGIN UPDATE changes SET count = count + 1 WHERE id = 0; END;
CREATE TRIGGER IF NOT EXISTS block_changed AFTER UPDATE ON blocks
  BEGIN UPDATE changes SET count = count + 1 WHERE id = 0; END;
)sql";

// Positive answers kept for the next lookups, at most: every block of a 2 GiB image (~8 MiB
// of memory), a share of a larger one's manifest window.
constexpr size_t kMaxKnown = 1 << 15;
// Rows a lookup's cursor moves on to reach the next key before it seeks it instead: a seek
// costs about as much as ten moves. Fewer right after a seek (the keys may be sparse).
constexpr int kMaxMoves = 8;
constexpr int kMaxMovesAfterSeek = 2;
// A batch of lookups at least this large, and touching at least one page of the index in
// this many, has the kernel read the index's files ahead first (ReadAhead).
constexpr size_t kReadAheadMinKeys = 256;
constexpr uint64_t kReadAheadPagesPerKey = 8;

// Has the kernel read `file` into the page cache in the background (POSIX_FADV_WILLNEED),
// if it is larger than `keys` * kReadAheadPagesPerKey pages of 4 KiB at most. A batch of
// random keys touches a leaf page each: with a cold cache (a fresh process after the
// machine's caches were dropped, a region not used for a while) SQLite would read them one
// random page at a time, twice as long as the whole no-op copy of a 2 GiB image.
void ReadAhead(const std::filesystem::path& file, size_t keys) {
  const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;  // only a hint: a WAL not there, say
  struct stat st {};
  if (::fstat(fd, &st) == 0 &&
      static_cast<uint64_t>(st.st_size) / 4096 <= keys * kReadAheadPagesPerKey) {
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_WILLNEED);
  }
  ::close(fd);
}

// The `changes` count (see BlockIndex::known_); nullopt if its row is gone.
std::optional<int64_t> ChangeCount(sqlite::Connection& conn) {
  sqlite::ScopedStatement s(conn.Cached("SELECT count FROM changes WHERE id = 0"));
  if (!s->Step()) return std::nullopt;
  return s->Int(0);
}

// A block as the resemblance index names it: the first 8 bytes of its hash (a row of 8
// bytes rather than 64 hex digits: the index costs ~1 KB per 64 KiB block, not ~4).
int64_t HashPrefix(std::string_view hash) {
  uint64_t prefix = 0;
  for (size_t i = 0; i < 16 && i < hash.size(); ++i) {
    const char c = hash[i];
    prefix = prefix << 4 | static_cast<uint64_t>(c <= '9' ? c - '0' : c - 'a' + 10);
  }
  return static_cast<int64_t>(prefix);
}

std::string PrefixHex(int64_t prefix) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex(16, '0');
  auto value = static_cast<uint64_t>(prefix);
  for (int i = 15; i >= 0; --i, value >>= 4) hex[static_cast<size_t>(i)] = kHex[value & 15];
  return hex;
}

// The block a resemblance row names (by its hash's first 8 bytes, HashPrefix): the first
// indexed block with that prefix, and whether it is a delta; nullopt if none is indexed.
struct PrefixedBlock {
  std::string hash;
  bool delta = false;
};
std::optional<PrefixedBlock> BlockWithPrefix(sqlite::Connection& conn, int64_t prefix) {
  sqlite::ScopedStatement s(
      conn.Cached("SELECT hash, bases FROM blocks WHERE hash >= ? ORDER BY hash LIMIT 1"));
  const std::string hex = PrefixHex(prefix);
  s->BindAt(1, hex);
  if (!s->Step() || s->TextView(0).substr(0, hex.size()) != hex) return std::nullopt;
  return PrefixedBlock{s->Text(0), !s->IsNull(1)};
}

// Runs `fn` inside one transaction, rolled back if it throws.
template <typename Fn>
void InTransaction(sqlite::Connection& conn, const char* begin, Fn&& fn) {
  conn.Exec(begin);
  const bool writes = std::string_view(begin) != "BEGIN";
  try {
    fn();
    if (writes) FailPoint("index.commit");
    conn.Exec("COMMIT");
    if (writes) FailPoint("index.committed");
  } catch (...) {
    conn.TryExec("ROLLBACK");
    throw;
  }
}

sqlite::Connection OpenConnection(const std::filesystem::path& file) {
  sqlite3* raw = nullptr;
  int rc =
      sqlite3_open_v2(file.c_str(), &raw,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
  sqlite::Connection conn(raw);
  if (rc != SQLITE_OK) {
    throw TransferError(codes::kStoreUnavailable,
                        "cannot open the block index " + file.string() + ": " +
                            (raw ? sqlite3_errmsg(raw) : "out of memory"));
  }
  sqlite3_busy_timeout(raw, 5000);
  return conn;
}

}  // namespace

std::unique_ptr<BlockIndex> BlockIndex::Open(const std::filesystem::path& file) {
  std::error_code ec;
  std::filesystem::create_directories(file.parent_path(), ec);
  try {
    return OpenOrThrow(file);
  } catch (const sqlite::SqliteError& e) {
    const int primary = e.rc() & 0xff;
    if (primary != SQLITE_NOTADB && primary != SQLITE_CORRUPT) {
      throw TransferError(codes::kStoreUnavailable, "cannot open the block index " + file.string() +
                                                        ": " + e.sqlite_message());
    }
    // A cache of the packs' footers: a damaged one is set aside and built again from them
    // (its packs then have no marks, so each is re-read before it is vouched for).
    const std::filesystem::path aside =
        file.string() + ".damaged-" + std::to_string(std::time(nullptr));
    std::filesystem::rename(file, aside, ec);
    if (ec) {
      throw TransferError(codes::kStoreUnavailable,
                          "the block index " + file.string() + " is damaged (" +
                              e.sqlite_message() + ") and cannot be set aside: " + ec.message());
    }
    for (const char* suffix : {"-wal", "-shm"}) {
      std::filesystem::remove(file.string() + suffix, ec);
    }
    Log(LogLevel::kWarning, "the block index " + file.string() + " is damaged (" +
                                e.sqlite_message() + "); set aside as " + aside.string() +
                                ", and built again from the packs' footers");
    return OpenOrThrow(file);
  }
}

std::unique_ptr<BlockIndex> BlockIndex::OpenOrThrow(const std::filesystem::path& file) {
  sqlite::Connection conn = OpenConnection(file);
  conn.Exec(kSchema);
  {
    // An index written before delta blocks has no `bases` column: added (NULL: whole blocks).
    bool has_bases = false;
    sqlite::Statement columns(conn.get(), "PRAGMA table_info(blocks)");
    while (columns.Step()) has_bases = has_bases || columns.TextView(1) == "bases";
    if (!has_bases) conn.Exec("ALTER TABLE blocks ADD COLUMN bases TEXT");
  }
  {
    // Written once, not at every open (an INSERT would take the write lock each time).
    sqlite::Statement count(conn.get(), "SELECT count(*) FROM changes");
    if (count.Step() && count.Int(0) == 0) {
      conn.Exec("INSERT INTO changes (id, count) VALUES (0, 0) ON CONFLICT (id) DO NOTHING");
    }
  }
  auto db = std::make_unique<Db>(Db{std::move(conn), OpenConnection(file), file});
  return std::unique_ptr<BlockIndex>(new BlockIndex(std::move(db)));
}

BlockIndex::BlockIndex(std::unique_ptr<Db> db) : db_(std::move(db)) {}
BlockIndex::~BlockIndex() = default;

void BlockIndex::AddPack(const std::string& pack_id, uint64_t pack_size,
                         const std::vector<PackEntry>& entries,
                         const std::vector<std::string>& replaced) {
  std::lock_guard lock(mutex_);
  Added added;
  InTransaction(db_->conn, "BEGIN IMMEDIATE", [&] {
    for (const std::string& old : replaced) ForgetPack(old);
    InsertPack(pack_id, pack_size, entries, {}, false, &added);
    added.changes = ChangeCount(db_->conn);
  });
  Remember(added);
}

void BlockIndex::AddPacks(const std::vector<IndexedPack>& packs,
                          const std::function<std::vector<std::string>()>& before_commit) {
  std::lock_guard lock(mutex_);
  Added added;
  InTransaction(db_->conn, "BEGIN IMMEDIATE", [&] {
    for (const IndexedPack& pack : packs) {
      InsertPack(pack.name, pack.size, pack.entries, pack.features, /*require_bases=*/true, &added);
    }
    const std::vector<std::string> marks =
        before_commit ? before_commit() : std::vector<std::string>();
    for (size_t i = 0; i < packs.size(); ++i) {
      const std::string& mark = before_commit ? (i < marks.size() ? marks[i] : "") : packs[i].mark;
      if (!mark.empty()) PutMark(packs[i].name, mark);
    }
    added.changes = ChangeCount(db_->conn);
  });
  Remember(added);
}

void BlockIndex::Remember(const Added& added) {
  // The kept answers are all of one count: answers of an older one (or none yet) give way to
  // the rows this transaction committed under its count; rows of an older count than the
  // kept answers' are not kept (a block may have left the index since).
  std::lock_guard lock(read_mutex_);
  if (!added.changes || *added.changes < known_at_) return;
  if (*added.changes != known_at_) ForgetKeptLocked(*added.changes);
  for (const auto& [pack, entry] : added.rows) {
    if (known_.size() >= kMaxKnown) break;
    known_.try_emplace(entry->hash, Found{PackId(*pack), entry->offset, entry->stored_length,
                                          entry->raw_length, entry->codec, entry->bases});
  }
}

void BlockIndex::PutMark(const std::string& file, const std::string& mark) {
  sqlite::ScopedStatement s(
      db_->conn.Cached("INSERT INTO marks (file, mark) VALUES (?, ?) "
                       "ON CONFLICT (file) DO UPDATE SET mark = excluded.mark"));
  s->Bind(file, mark).Run();
}

void BlockIndex::SetMark(const std::string& file, const std::string& mark) {
  std::lock_guard lock(mutex_);
  PutMark(file, mark);
}

std::string BlockIndex::MarkOf(const std::string& file) {
  std::lock_guard lock(read_mutex_);
  sqlite::ScopedStatement s(db_->reader.Cached("SELECT mark FROM marks WHERE file = ?"));
  s->Bind(file);
  return s->Step() ? s->Text(0) : std::string();
}

void BlockIndex::InsertPack(const std::string& pack_id, uint64_t pack_size,
                            const std::vector<PackEntry>& entries,
                            const std::vector<std::pair<uint64_t, uint32_t>>& features,
                            bool require_bases, Added* added) {
  {
    sqlite::ScopedStatement s(db_->conn.Cached(
        "INSERT INTO packs (name, size) VALUES (?, ?) ON CONFLICT (name) DO NOTHING"));
    s->Bind(pack_id, pack_size).Run();
  }
  auto& insert = db_->conn.Cached(
      "INSERT INTO blocks (hash, pack, offset, stored_length, raw_length, codec, bases) "
      "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (hash) DO NOTHING");
  auto& insert_base = db_->conn.Cached(
      "INSERT INTO delta_bases (base, block) VALUES (?, ?) ON CONFLICT DO NOTHING");
  auto& whole_block =
      db_->conn.Cached("SELECT 1 FROM blocks WHERE hash = ? AND bases IS NULL AND codec != ?");
  auto bases_indexed = [&](const std::string& bases) {
    for (const std::string& base : SplitBases(bases)) {
      sqlite::ScopedStatement s(whole_block);
      if (!s->Bind(base, static_cast<int>(BlockCodec::kZstdDelta)).Step()) return false;
    }
    return true;
  };
  std::vector<bool> inserted(entries.size(), false);
  // In key order: each insert then lands next to the one before (pages already in the cache).
  std::vector<size_t> by_hash(entries.size());
  std::iota(by_hash.begin(), by_hash.end(), size_t{0});
  std::stable_sort(by_hash.begin(), by_hash.end(),
                   [&](size_t x, size_t y) { return entries[x].hash < entries[y].hash; });
  for (size_t i : by_hash) {
    const PackEntry& e = entries[i];
    if (require_bases && !e.bases.empty() && !bases_indexed(e.bases)) continue;
    {
      sqlite::ScopedStatement s(insert);
      const std::optional<std::string> bases =
          e.bases.empty() ? std::nullopt : std::optional<std::string>(e.bases);  // NULL: whole
      s->Bind(e.hash, pack_id, e.offset, e.stored_length, e.raw_length, static_cast<int>(e.codec),
              bases)
          .Run();
    }
    // Only the copy indexed counts (a block indexed already keeps its place and its form).
    inserted[i] = sqlite3_changes(db_->conn.get()) > 0;
    if (!inserted[i]) continue;
    if (added) added->rows.emplace_back(&pack_id, &e);
    for (const std::string& base : SplitBases(e.bases)) {
      sqlite::ScopedStatement s(insert_base);
      s->Bind(base, e.hash).Run();
    }
  }
  // The latest block with a feature is named by it (the likeliest to resemble what comes).
  auto& insert_feature = db_->conn.Cached(
      "INSERT INTO features (feature, block) VALUES (?, ?) "
      "ON CONFLICT (feature) DO UPDATE SET block = excluded.block");
  std::vector<std::pair<uint64_t, uint32_t>> sorted = features;
  // Stable: of two blocks of the pack with one feature, the later still wins.
  std::stable_sort(sorted.begin(), sorted.end(), [](const auto& x, const auto& y) {
    return static_cast<int64_t>(x.first) < static_cast<int64_t>(y.first);
  });
  for (const auto& [feature, at] : sorted) {
    if (at >= entries.size() || !inserted[at] || !entries[at].bases.empty()) continue;
    sqlite::ScopedStatement s(insert_feature);
    s->Bind(static_cast<int64_t>(feature), HashPrefix(entries[at].hash)).Run();
  }
}

void BlockIndex::ForgetPack(const std::string& pack_id) {
  {
    // The bases its deltas named (a repack indexes them again where they go).
    sqlite::ScopedStatement s(
        db_->conn.Cached("DELETE FROM delta_bases WHERE block IN "
                         "(SELECT hash FROM blocks WHERE pack = ? AND bases IS NOT NULL)"));
    s->Bind(pack_id).Run();
  }
  {
    sqlite::ScopedStatement s(db_->conn.Cached("DELETE FROM blocks WHERE pack = ?"));
    s->Bind(pack_id).Run();
  }
  {
    sqlite::ScopedStatement s(db_->conn.Cached("DELETE FROM marks WHERE file = ?"));
    s->Bind(pack_id).Run();
  }
  sqlite::ScopedStatement s(db_->conn.Cached("DELETE FROM packs WHERE name = ?"));
  s->Bind(pack_id).Run();
}

void BlockIndex::RemovePack(const std::string& pack_id) {
  std::lock_guard lock(mutex_);
  InTransaction(db_->conn, "BEGIN IMMEDIATE", [&] { ForgetPack(pack_id); });
}

void BlockIndex::ForgetBlocks(const std::vector<std::string>& hashes,
                              std::vector<std::string>& removed) {
  auto& dependents = db_->conn.Cached("SELECT block FROM delta_bases WHERE base = ?");
  auto& drop_block = db_->conn.Cached("DELETE FROM blocks WHERE hash = ?");
  auto& drop_bases = db_->conn.Cached("DELETE FROM delta_bases WHERE block = ?");
  auto forget = [&](const std::string& hash) {
    {
      sqlite::ScopedStatement s(drop_block);
      s->Bind(hash).Run();
    }
    sqlite::ScopedStatement s(drop_bases);
    s->Bind(hash).Run();
  };
  for (const std::string& hash : hashes) {
    std::vector<std::string> built_on;  // deltas are never bases: one level only
    {
      sqlite::ScopedStatement s(dependents);
      s->Bind(hash);
      while (s->Step()) built_on.push_back(s->Text(0));
    }
    forget(hash);
    for (const std::string& delta : built_on) {
      forget(delta);
      removed.push_back(delta);
    }
  }
}

std::vector<std::string> BlockIndex::RemoveBlock(const std::string& hash) {
  std::lock_guard lock(mutex_);
  std::vector<std::string> removed;
  InTransaction(db_->conn, "BEGIN IMMEDIATE", [&] {
    removed.clear();
    ForgetBlocks({hash}, removed);
  });
  return removed;
}

void BlockIndex::RemoveBlocks(const std::vector<std::string>& hashes) {
  std::lock_guard lock(mutex_);
  std::vector<std::string> removed;
  InTransaction(db_->conn, "BEGIN IMMEDIATE", [&] { ForgetBlocks(hashes, removed); });
}

std::vector<std::string> BlockIndex::RemoveOrphanDeltas() {
  std::lock_guard lock(mutex_);
  std::vector<std::string> orphans;
  InTransaction(db_->conn, "BEGIN IMMEDIATE", [&] {
    orphans.clear();
    {
      // A delta whose `bases` lost their rows (edited by hand) is an orphan too.
      sqlite::ScopedStatement s(
          db_->conn.Cached("SELECT DISTINCT block FROM delta_bases d "
                           "WHERE NOT EXISTS (SELECT 1 FROM blocks b WHERE b.hash = d.base) "
                           "UNION SELECT hash FROM blocks b WHERE bases IS NOT NULL "
                           "AND NOT EXISTS (SELECT 1 FROM delta_bases d WHERE d.block = b.hash)"));
      while (s->Step()) orphans.push_back(s->Text(0));
    }
    std::vector<std::string> none;
    ForgetBlocks(orphans, none);
  });
  return orphans;
}

void BlockIndex::ForEachDeltaBase(
    const std::function<void(const std::string&, const std::string&)>& fn) {
  std::lock_guard lock(read_mutex_);
  InTransaction(db_->reader, "BEGIN", [&] {
    sqlite::ScopedStatement s(db_->reader.Cached("SELECT block, base FROM delta_bases"));
    while (s->Step()) fn(s->Text(0), s->Text(1));
  });
}

std::vector<std::string> BlockIndex::SimilarBlocks(const std::vector<uint64_t>& features,
                                                   size_t limit) {
  std::lock_guard lock(read_mutex_);
  std::vector<std::string> similar;
  if (features.empty() || limit == 0) return similar;
  // One read transaction (one snapshot, one lock) for the block's lookups.
  InTransaction(db_->reader, "BEGIN", [&] {
    std::unordered_map<int64_t, uint32_t> votes;
    {
      sqlite::ScopedStatement s(db_->reader.Cached("SELECT block FROM features WHERE feature = ?"));
      for (uint64_t feature : features) {
        s->Reset();
        s->BindAt(1, static_cast<int64_t>(feature));
        if (s->Step()) ++votes[s->Int(0)];
      }
    }
    std::vector<std::pair<uint32_t, int64_t>> ranked;
    ranked.reserve(votes.size());
    for (const auto& [block, count] : votes) ranked.emplace_back(count, block);
    // Most votes first; ties broken by the name, so that the choice does not depend on a map.
    std::sort(ranked.begin(), ranked.end(), [](const auto& x, const auto& y) {
      return x.first != y.first ? x.first > y.first : x.second < y.second;
    });
    for (const auto& [count, block] : ranked) {
      if (similar.size() >= limit) break;
      // Stale (the block is gone) or a delta (never a base): skipped.
      std::optional<PrefixedBlock> found = BlockWithPrefix(db_->reader, block);
      if (found && !found->delta) similar.push_back(std::move(found->hash));
    }
  });
  return similar;
}

size_t BlockIndex::PruneFeatures(size_t rows) {
  // A slice per transaction: the index's write lock is held for a few milliseconds at a time.
  constexpr size_t kSlice = 4096;
  constexpr int64_t kFirst = std::numeric_limits<int64_t>::min();
  std::lock_guard lock(mutex_);
  size_t dropped = 0;
  bool at_end = false;
  for (size_t seen = 0; seen < rows && !at_end;) {
    const size_t want = std::min(kSlice, rows - seen);
    InTransaction(db_->conn, "BEGIN IMMEDIATE", [&] {
      std::vector<std::pair<int64_t, int64_t>> slice;  // (feature, block prefix)
      {
        sqlite::ScopedStatement s(db_->conn.Cached(
            "SELECT feature, block FROM features WHERE feature >= ? ORDER BY feature LIMIT ?"));
        s->Bind(pruned_to_, static_cast<int64_t>(want));
        while (s->Step()) slice.emplace_back(s->Int(0), s->Int(1));
      }
      std::unordered_map<int64_t, bool> indexed;  // block prefix -> some block has it
      sqlite::ScopedStatement drop(
          db_->conn.Cached("DELETE FROM features WHERE feature = ? AND block = ?"));
      for (const auto& [feature, prefix] : slice) {
        auto [it, added] = indexed.try_emplace(prefix, false);
        if (added) it->second = BlockWithPrefix(db_->conn, prefix).has_value();
        if (it->second) continue;
        // (Keyed by the pair: a row a writer has just pointed at a new block stays.)
        drop->Reset();
        drop->Bind(feature, prefix).Run();
        ++dropped;
      }
      seen += slice.size();
      at_end = slice.size() < want || slice.back().first == std::numeric_limits<int64_t>::max();
      pruned_to_ = at_end ? kFirst : slice.back().first + 1;  // the next look starts there
    });
  }
  return dropped;
}

std::vector<PackEntry> BlockIndex::EntriesOf(const std::string& pack_id) {
  std::lock_guard lock(read_mutex_);
  sqlite::ScopedStatement s(db_->reader.Cached(
      "SELECT hash, offset, stored_length, raw_length, codec, bases FROM blocks WHERE pack = ? "
      "ORDER BY offset"));
  s->Bind(pack_id);
  std::vector<PackEntry> entries;
  while (s->Step()) {
    entries.push_back(PackEntry{s->Text(0), s->Uint(1), static_cast<uint32_t>(s->Uint(2)),
                                static_cast<uint32_t>(s->Uint(3)),
                                static_cast<BlockCodec>(s->Int(4)), s->Text(5)});
  }
  return entries;
}

std::vector<std::string> BlockIndex::Hashes() {
  std::lock_guard lock(read_mutex_);
  sqlite::ScopedStatement s(db_->reader.Cached("SELECT hash FROM blocks ORDER BY hash"));
  std::vector<std::string> hashes;
  while (s->Step()) hashes.push_back(s->Text(0));
  return hashes;
}

std::vector<std::string> BlockIndex::HashesAfter(const std::string& after, size_t limit) {
  std::lock_guard lock(read_mutex_);
  sqlite::ScopedStatement s(
      db_->reader.Cached("SELECT hash FROM blocks WHERE hash > ? ORDER BY hash LIMIT ?"));
  s->Bind(after, static_cast<int64_t>(limit));
  std::vector<std::string> hashes;
  while (s->Step()) hashes.push_back(s->Text(0));
  return hashes;
}

void BlockIndex::ForgetKeptLocked(int64_t changes) {
  known_.clear();
  known_packs_.clear();
  known_pack_ids_.clear();
  known_at_ = changes;
}

BlockLocation BlockIndex::LocationOf(const Found& where) const {
  return BlockLocation{known_packs_[where.pack], where.offset, where.stored_length,
                       where.raw_length,         where.codec,  where.bases};
}

uint32_t BlockIndex::PackId(std::string_view pack) {
  auto it = known_pack_ids_.find(pack);
  if (it != known_pack_ids_.end()) return it->second;
  const auto id = static_cast<uint32_t>(known_packs_.size());
  known_packs_.emplace_back(pack);
  known_pack_ids_.emplace(known_packs_.back(), id);
  return id;
}

void BlockIndex::Find(const std::vector<std::string>& hashes,
                      const std::function<void(size_t i, const Found& where)>& found) {
  auto find_all = [&] {
    // Read before the blocks: an answer kept under this count was true at least as late.
    // No count (its row deleted by hand): nothing is kept.
    const std::optional<int64_t> changes = ChangeCount(db_->reader);
    if (!changes || *changes != known_at_ || known_packs_.size() > kMaxKnown) {
      ForgetKeptLocked(changes.value_or(-1));
    }
    const bool keep = changes.has_value();
    // Kept answers first (a confirmation finds nearly every block kept by its plan); the
    // rest in key order (SQLite's: bytes compared as unsigned), so that they are answered by
    // walking the table as a merge: sorted by the first 8 bytes of each key (big-endian)
    // first, the whole keys compared only on a tie.
    std::vector<std::pair<uint64_t, size_t>> order;
    for (size_t i = 0; i < hashes.size(); ++i) {
      const std::string& hash = hashes[i];
      if (auto it = known_.find(hash); it != known_.end()) {
        found(i, it->second);
        continue;
      }
      uint64_t prefix = 0;
      for (size_t b = 0; b < 8; ++b) {
        prefix = prefix << 8 | (b < hash.size() ? static_cast<unsigned char>(hash[b]) : 0);
      }
      order.emplace_back(prefix, i);
    }
    if (keep) known_.reserve(std::min(kMaxKnown, known_.size() + order.size()));
    if (order.size() >= kReadAheadMinKeys) {
      ReadAhead(db_->file, order.size());
      ReadAhead(db_->file.string() + "-wal", order.size());
    }
    std::sort(order.begin(), order.end(), [&](const auto& x, const auto& y) {
      return x.first != y.first ? x.first < y.first : hashes[x.second] < hashes[y.second];
    });
    // A merge of the sorted keys with the table, in key order: one cursor, moved a few rows
    // on to reach the next key when the keys are dense in the table (a copy's plan against
    // a region holding the image's previous version: ~0.2 us a row), sought afresh (a B-tree
    // descent, ~3 us) when they are sparse.
    sqlite::ScopedStatement cursor(db_->reader.Cached(
        "SELECT hash, pack, offset, stored_length, raw_length, codec, bases FROM blocks "
        "WHERE hash >= ? ORDER BY hash"));
    bool on_row = false;      // the cursor is on a row (false: not sought yet, or past the end)
    bool stepped_to = false;  // the last key was reached by moving on, not by a seek
    for (const auto& [prefix, i] : order) {
      const std::string& key = hashes[i];
      int moves = stepped_to ? kMaxMoves : kMaxMovesAfterSeek;
      while (on_row && cursor->TextView(0) < key && moves-- > 0) on_row = cursor->Step();
      stepped_to = on_row && cursor->TextView(0) >= key;
      if (!stepped_to) {
        cursor->Reset();
        cursor->BindBorrowedText(1, key);
        on_row = cursor->Step();
      }
      if (!on_row || cursor->TextView(0) != key) continue;
      const Found where{PackId(cursor->TextView(1)),
                        cursor->Uint(2),
                        static_cast<uint32_t>(cursor->Uint(3)),
                        static_cast<uint32_t>(cursor->Uint(4)),
                        static_cast<BlockCodec>(cursor->Int(5)),
                        cursor->Text(6)};
      found(i, where);
      if (keep && known_.size() < kMaxKnown) known_.emplace(key, where);
    }
  };
  // A batch is read in one transaction (one snapshot, one lock); a single lookup needs none.
  if (hashes.size() > 1) {
    InTransaction(db_->reader, "BEGIN", find_all);
  } else {
    find_all();
  }
}

std::vector<std::optional<BlockLocation>> BlockIndex::Lookup(
    const std::vector<std::string>& hashes) {
  std::lock_guard lock(read_mutex_);
  std::vector<std::optional<BlockLocation>> out(hashes.size());
  Find(hashes, [&](size_t i, const Found& where) { out[i] = LocationOf(where); });
  return out;
}

bool BlockIndex::Kept(const std::string& hash) {
  std::lock_guard lock(read_mutex_);
  return known_.contains(hash);
}

std::vector<std::optional<BlockLocation>> BlockIndex::LookupHint(
    const std::vector<std::string>& hashes) {
  {
    std::lock_guard lock(read_mutex_);
    std::vector<std::optional<BlockLocation>> out;
    for (const std::string& hash : hashes) {
      auto it = known_.find(hash);
      if (it == known_.end()) break;
      out.emplace_back(LocationOf(it->second));
    }
    if (out.size() == hashes.size()) return out;
  }
  return Lookup(hashes);
}

BlockPresence BlockIndex::Presence(const std::vector<std::string>& hashes) {
  std::lock_guard lock(read_mutex_);
  BlockPresence out;
  out.pack_of.assign(hashes.size(), -1);
  out.raw_length.assign(hashes.size(), 0);
  // known_packs_ id -> index in out.packs (by name across the two lookups below: the
  // second may find the kept answers gone, and the ids given anew).
  std::unordered_map<uint32_t, int32_t> mine;
  std::unordered_map<std::string, int32_t> mine_by_name;
  auto pack_index = [&](uint32_t pack) {
    auto [it, added] = mine.try_emplace(pack, static_cast<int32_t>(out.packs.size()));
    if (added) out.packs.push_back(known_packs_[pack]);
    return it->second;
  };
  auto base_pack = [&](uint32_t pack) {
    auto [it, added] =
        mine_by_name.try_emplace(known_packs_[pack], static_cast<int32_t>(out.packs.size()));
    if (added && std::find(out.packs.begin(), out.packs.end(), it->first) == out.packs.end()) {
      out.packs.push_back(it->first);
    }
  };
  std::vector<std::string> bases;     // of the deltas found
  std::vector<size_t> delta_of_base;  // the hash whose delta named each
  Find(hashes, [&](size_t i, const Found& where) {
    out.pack_of[i] = pack_index(where.pack);
    out.raw_length[i] = where.raw_length;
    for (std::string& base : SplitBases(where.bases)) {
      bases.push_back(std::move(base));
      delta_of_base.push_back(i);
    }
  });
  if (bases.empty()) return out;
  // A delta is there while its bases are (whole blocks: no further level), and their packs
  // are vouched for with its own.
  std::vector<bool> base_found(bases.size(), false);
  Find(bases, [&](size_t b, const Found& where) {
    if (!where.bases.empty()) return;  // a delta named as a base: not a base
    base_found[b] = true;
    base_pack(where.pack);
  });
  for (size_t b = 0; b < bases.size(); ++b) {
    if (!base_found[b]) {
      out.pack_of[delta_of_base[b]] = -1;
      out.raw_length[delta_of_base[b]] = 0;
    }
  }
  return out;
}

uint64_t BlockIndex::BlockCount() {
  std::lock_guard lock(read_mutex_);
  sqlite::ScopedStatement s(db_->reader.Cached("SELECT count(*) FROM blocks"));
  return s->Step() ? s->Uint(0) : 0;
}

std::vector<std::pair<std::string, uint64_t>> BlockIndex::Packs() {
  std::lock_guard lock(read_mutex_);
  sqlite::ScopedStatement s(db_->reader.Cached("SELECT name, size FROM packs ORDER BY name"));
  std::vector<std::pair<std::string, uint64_t>> packs;
  while (s->Step()) packs.emplace_back(s->Text(0), s->Uint(1));
  return packs;
}

}  // namespace imagerelay
