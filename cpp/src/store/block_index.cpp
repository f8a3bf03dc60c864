#include "store/block_index.hpp"

#include <sqlite3.h>

#include <algorithm>
#include <ctime>
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
  codec INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS blocks_by_pack ON blocks (pack);
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
    // Written once, not at every open (an INSERT would take the write lock each time).
    sqlite::Statement count(conn.get(), "SELECT count(*) FROM changes");
    if (count.Step() && count.Int(0) == 0) {
      conn.Exec("INSERT INTO changes (id, count) VALUES (0, 0) ON CONFLICT (id) DO NOTHING");
    }
  }
  auto db = std::make_unique<Db>(Db{std::move(conn), OpenConnection(file)});
  return std::unique_ptr<BlockIndex>(new BlockIndex(std::move(db)));
}

BlockIndex::BlockIndex(std::unique_ptr<Db> db) : db_(std::move(db)) {}
BlockIndex::~BlockIndex() = default;

void BlockIndex::AddPack(const std::string& pack_id, uint64_t pack_size,
                         const std::vector<PackEntry>& entries,
                         const std::vector<std::string>& replaced) {
  std::lock_guard lock(mutex_);
  InTransaction(db_->conn, "BEGIN IMMEDIATE", [&] {
    for (const std::string& old : replaced) ForgetPack(old);
    InsertPack(pack_id, pack_size, entries);
  });
}

void BlockIndex::AddPacks(const std::vector<IndexedPack>& packs) {
  std::lock_guard lock(mutex_);
  InTransaction(db_->conn, "BEGIN IMMEDIATE", [&] {
    for (const IndexedPack& pack : packs) {
      InsertPack(pack.name, pack.size, pack.entries);
      if (!pack.mark.empty()) PutMark(pack.name, pack.mark);
    }
  });
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
                            const std::vector<PackEntry>& entries) {
  {
    sqlite::ScopedStatement s(db_->conn.Cached(
        "INSERT INTO packs (name, size) VALUES (?, ?) ON CONFLICT (name) DO NOTHING"));
    s->Bind(pack_id, pack_size).Run();
  }
  auto& insert = db_->conn.Cached(
      "INSERT INTO blocks (hash, pack, offset, stored_length, raw_length, codec) "
      "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (hash) DO NOTHING");
  for (const PackEntry& e : entries) {
    sqlite::ScopedStatement s(insert);
    s->Bind(e.hash, pack_id, e.offset, e.stored_length, e.raw_length, static_cast<int>(e.codec))
        .Run();
  }
}

void BlockIndex::ForgetPack(const std::string& pack_id) {
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

void BlockIndex::RemoveBlock(const std::string& hash) {
  std::lock_guard lock(mutex_);
  sqlite::ScopedStatement s(db_->conn.Cached("DELETE FROM blocks WHERE hash = ?"));
  s->Bind(hash).Run();
}

void BlockIndex::RemoveBlocks(const std::vector<std::string>& hashes) {
  std::lock_guard lock(mutex_);
  InTransaction(db_->conn, "BEGIN IMMEDIATE", [&] {
    for (const std::string& hash : hashes) {
      sqlite::ScopedStatement s(db_->conn.Cached("DELETE FROM blocks WHERE hash = ?"));
      s->Bind(hash).Run();
    }
  });
}

std::vector<PackEntry> BlockIndex::EntriesOf(const std::string& pack_id) {
  std::lock_guard lock(read_mutex_);
  sqlite::ScopedStatement s(db_->reader.Cached(
      "SELECT hash, offset, stored_length, raw_length, codec FROM blocks WHERE pack = ? "
      "ORDER BY offset"));
  s->Bind(pack_id);
  std::vector<PackEntry> entries;
  while (s->Step()) {
    entries.push_back(PackEntry{s->Text(0), s->Uint(1), static_cast<uint32_t>(s->Uint(2)),
                                static_cast<uint32_t>(s->Uint(3)),
                                static_cast<BlockCodec>(s->Int(4))});
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
  // In key order (SQLite's: bytes compared as unsigned), so that the batch is answered by
  // walking the table as a merge: sorted by the first 8 bytes of each key (big-endian)
  // first, the whole keys compared only on a tie.
  std::vector<std::pair<uint64_t, size_t>> order(hashes.size());
  for (size_t i = 0; i < hashes.size(); ++i) {
    uint64_t prefix = 0;
    const std::string& hash = hashes[i];
    for (size_t b = 0; b < 8; ++b) {
      prefix = prefix << 8 | (b < hash.size() ? static_cast<unsigned char>(hash[b]) : 0);
    }
    order[i] = {prefix, i};
  }
  std::sort(order.begin(), order.end(), [&](const auto& x, const auto& y) {
    return x.first != y.first ? x.first < y.first : hashes[x.second] < hashes[y.second];
  });
  auto find_all = [&] {
    // Read before the blocks: an answer kept under this count was true at least as late.
    // No count (its row deleted by hand): nothing is kept.
    std::optional<int64_t> changes;
    {
      sqlite::ScopedStatement s(db_->reader.Cached("SELECT count FROM changes WHERE id = 0"));
      if (s->Step()) changes = s->Int(0);
    }
    if (!changes || *changes != known_at_ || known_packs_.size() > kMaxKnown) {
      known_.clear();
      known_packs_.clear();
      known_pack_ids_.clear();
      known_at_ = changes.value_or(-1);
    }
    const bool keep = changes.has_value();
    // A merge of the sorted keys with the table, in key order: one cursor, moved a few rows
    // on to reach the next key when the keys are dense in the table (a copy's plan against
    // a region holding the image's previous version: ~0.2 us a row), sought afresh (a B-tree
    // descent, ~3 us) when they are sparse.
    sqlite::ScopedStatement cursor(db_->reader.Cached(
        "SELECT hash, pack, offset, stored_length, raw_length, codec FROM blocks "
        "WHERE hash >= ? ORDER BY hash"));
    bool on_row = false;      // the cursor is on a row (false: not sought yet, or past the end)
    bool stepped_to = false;  // the last key was reached by moving on, not by a seek
    for (const auto& [prefix, i] : order) {
      const std::string& key = hashes[i];
      if (auto it = known_.find(key); it != known_.end()) {
        found(i, it->second);
        continue;
      }
      int moves = stepped_to ? kMaxMoves : kMaxMovesAfterSeek;
      while (on_row && cursor->TextView(0) < key && moves-- > 0) on_row = cursor->Step();
      stepped_to = on_row && cursor->TextView(0) >= key;
      if (!stepped_to) {
        cursor->Reset();
        cursor->BindBorrowedText(1, key);
        on_row = cursor->Step();
      }
      if (!on_row || cursor->TextView(0) != key) continue;
      const Found where{
          PackId(cursor->TextView(1)), cursor->Uint(2), static_cast<uint32_t>(cursor->Uint(3)),
          static_cast<uint32_t>(cursor->Uint(4)), static_cast<BlockCodec>(cursor->Int(5))};
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
  Find(hashes, [&](size_t i, const Found& where) {
    out[i] = BlockLocation{known_packs_[where.pack], where.offset, where.stored_length,
                           where.raw_length, where.codec};
  });
  return out;
}

BlockPresence BlockIndex::Presence(const std::vector<std::string>& hashes) {
  std::lock_guard lock(read_mutex_);
  BlockPresence out;
  out.pack_of.assign(hashes.size(), -1);
  out.raw_length.assign(hashes.size(), 0);
  std::unordered_map<uint32_t, int32_t> mine;  // known_packs_ id -> index in out.packs
  Find(hashes, [&](size_t i, const Found& where) {
    auto [it, added] = mine.try_emplace(where.pack, static_cast<int32_t>(out.packs.size()));
    if (added) out.packs.push_back(known_packs_[where.pack]);
    out.pack_of[i] = it->second;
    out.raw_length[i] = where.raw_length;
  });
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
