#include "store/block_index.hpp"

#include <fcntl.h>
#include <sqlite3.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <limits>
#include <numeric>
#include <optional>
#include <stdexcept>
#include <unordered_map>
#include <utility>

#include "base/binary_codec.hpp"
#include "base/fail_point.hpp"
#include "base/sqlite_util.hpp"
#include "base/unique_fd.hpp"
#include "base/wal_checkpointer.hpp"
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
  // Checkpoints conn's log off the commits' path; declared last: gone before conn closes.
  std::unique_ptr<WalCheckpointer> checkpointer;
};

namespace {

// The layout of the index (PRAGMA user_version). Format 2 (session 22) keys blocks by their
// 32 bytes and names packs by a number: a row of ~60 bytes where format 1's held the hash's
// and the pack's hex digits (~160 bytes, and as much again in its by-pack index), so that a
// group commit, whose blocks land all over the table, rewrites less than half the pages.
// Format 1 (tables blocks, packs, delta_bases; user_version 0) is migrated on open
// (MigrateFormat1).
constexpr int kIndexFormat = 2;
// How long a statement waits for another connection's write lock: the usual, and while the
// index may be being moved to kIndexFormat by another process (an hour: a region of 200 GiB
// moves in well under a minute, even on a slow disk).
constexpr int kBusyWaitMs = 5000;
constexpr int kMoveWaitMs = 3600 * 1000;

constexpr const char* kPragmas = R"sql(
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
)sql";

constexpr const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS indexed_packs (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  size INTEGER  -- NULL: named by blocks of a format 1 index that did not list it
);
CREATE TABLE IF NOT EXISTS indexed_blocks (
  hash BLOB PRIMARY KEY,  -- the block's SHA-256, 32 bytes
  pack INTEGER NOT NULL,  -- indexed_packs.id
  offset INTEGER NOT NULL,
  stored_length INTEGER NOT NULL,
  raw_length INTEGER NOT NULL,
  codec INTEGER NOT NULL,
  bases BLOB  -- a delta block's bases, 32 bytes each; NULL for a whole block
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS indexed_blocks_by_pack ON indexed_blocks (pack);
CREATE TABLE IF NOT EXISTS delta_links (
  base BLOB NOT NULL,
  block BLOB NOT NULL,
  PRIMARY KEY (base, block)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS delta_links_by_block ON delta_links (block);
CREATE TABLE IF NOT EXISTS features (
  feature INTEGER PRIMARY KEY,
  block INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS marks (
  file TEXT PRIMARY KEY,
  mark TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS changes (
  id INTEGER PRIMARY KEY CHECK (id = 0),
  count INTEGER NOT NULL
);
INSERT INTO changes (id, count) VALUES (0, 0) ON CONFLICT (id) DO NOTHING;
CREATE TRIGGER IF NOT EXISTS indexed_block_removed AFTER DELETE ON indexed_blocks
  BEGIN UPDATE changes SET count = count + 1 WHERE id = 0; END;
CREATE TRIGGER IF NOT EXISTS indexed_block_changed AFTER UPDATE ON indexed_blocks
  BEGIN UPDATE changes SET count = count + 1 WHERE id = 0; END;
)sql";

// Format 1's tables as its last release left them, completed where an earlier one had not
// made them yet (the first pack release had no packs or delta_bases, and no bases column:
// MigrateFormat1 adds it), then copied into format 2 in key order and dropped.
constexpr const char* kCompleteFormat1 = R"sql(
CREATE TABLE IF NOT EXISTS packs (name TEXT PRIMARY KEY, size INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS delta_bases (
  base TEXT NOT NULL, block TEXT NOT NULL, PRIMARY KEY (base, block)) WITHOUT ROWID;
)sql";
constexpr const char* kCopyFormat1 = R"sql(
INSERT INTO indexed_packs (name, size) SELECT name, size FROM packs ORDER BY name;
INSERT INTO indexed_packs (name, size)
  SELECT DISTINCT pack, NULL FROM blocks WHERE pack NOT IN (SELECT name FROM packs);
INSERT INTO indexed_blocks (hash, pack, offset, stored_length, raw_length, codec, bases)
  SELECT ir_hex_key(b.hash), p.id, b.offset, b.stored_length, b.raw_length, b.codec,
         ir_hex_key(b.bases)
  FROM blocks b JOIN indexed_packs p ON p.name = b.pack
  WHERE ir_hex_key(b.hash) IS NOT NULL
    AND (b.bases IS NULL OR b.bases = '' OR ir_hex_key(b.bases) IS NOT NULL)
  ORDER BY b.hash;
INSERT INTO delta_links (base, block)
  SELECT ir_hex_key(base), ir_hex_key(block) FROM delta_bases
  WHERE ir_hex_key(base) IS NOT NULL AND ir_hex_key(block) IS NOT NULL
    AND ir_hex_key(block) IN (SELECT hash FROM indexed_blocks WHERE bases IS NOT NULL)
  ORDER BY base, block;
DROP TRIGGER IF EXISTS block_removed;
DROP TRIGGER IF EXISTS block_changed;
DROP TABLE blocks;
DROP TABLE packs;
DROP TABLE delta_bases;
UPDATE changes SET count = count + 1 WHERE id = 0;
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

static_assert(std::tuple_size_v<BlockKey> == kHashBytes);

// The key of a hash of 64 lowercase hex digits; nullopt if `hex` is not one (no block is
// indexed under it).
std::optional<BlockKey> BlockKeyOf(std::string_view hex) {
  BlockKey key;
  if (!ReadHashHex(hex, reinterpret_cast<std::byte*>(key.data()))) return std::nullopt;
  return key;
}

BlockKey BlockKeyOrThrow(std::string_view hex) {
  std::optional<BlockKey> key = BlockKeyOf(hex);
  if (!key) throw std::invalid_argument("a block hash is 64 lowercase hex digits");
  return *key;
}

std::string_view KeyBytes(const BlockKey& key) { return {key.data(), key.size()}; }

// Hashes' bytes (32 each: a key, or a delta's bases) as their hex digits (its hash, or
// PackEntry::bases).
std::string IndexHex(std::string_view bytes) {
  std::string hex(2 * (bytes.size() - bytes.size() % kHashBytes), '0');
  for (size_t at = 0; at + kHashBytes <= bytes.size(); at += kHashBytes) {
    WriteHashHex(reinterpret_cast<const std::byte*>(bytes.data() + at), hex.data() + 2 * at);
  }
  return hex;
}

// A row as a release writes it: a 32-byte hash, an offset and lengths a block in a pack can
// have, and a whole block's codec with no bases or a delta's with 1 to kMaxBases of 32 bytes.
// Any other row (edited by hand, or damaged) names no block: it is not indexed, and nothing
// is read, trusted or forgotten by it (its pack holds the block, if any: a reconcile or a
// rebuild finds it there).
bool RowNamesABlock(std::string_view hash, int64_t offset, int64_t stored_length,
                    int64_t raw_length, int64_t codec, std::string_view bases) {
  if (hash.size() != kHashBytes || offset < 0 || stored_length < 0 || raw_length < 0 ||
      stored_length > kMaxBlockBytes || raw_length > kMaxBlockBytes) {
    return false;
  }
  if (codec == static_cast<int64_t>(BlockCodec::kZstdDelta)) {
    return !bases.empty() && bases.size() % kHashBytes == 0 &&
           bases.size() / kHashBytes <= kMaxBases;
  }
  return bases.empty() && (codec == static_cast<int64_t>(BlockCodec::kRaw) ||
                           codec == static_cast<int64_t>(BlockCodec::kZstd));
}

// PackEntry::bases (64 hex digits per base) as the index stores it: NULL for a whole block.
std::optional<std::string> BasesKeys(const std::string& bases) {
  if (bases.empty()) return std::nullopt;
  std::string keys;
  for (const std::string& base : SplitBases(bases)) {
    const BlockKey key = BlockKeyOrThrow(base);
    keys.append(key.data(), key.size());
  }
  return keys;
}

// ir_hex_key(text): the bytes of a hash or of joined hashes written in lowercase hex (format
// 1's keys), NULL for NULL, empty or anything else. Registered on the connection that migrates.
void SqlHexKey(sqlite3_context* context, int, sqlite3_value** args) {
  const auto* text = sqlite3_value_text(args[0]);
  const auto size = static_cast<size_t>(sqlite3_value_bytes(args[0]));
  if (text == nullptr || size == 0 || size % (2 * kHashBytes) != 0) {
    sqlite3_result_null(context);
    return;
  }
  std::string bytes(size / 2, '\0');
  for (size_t at = 0; at < size; at += 2 * kHashBytes) {
    const std::optional<BlockKey> key =
        BlockKeyOf({reinterpret_cast<const char*>(text) + at, 2 * kHashBytes});
    if (!key) {
      sqlite3_result_null(context);
      return;
    }
    std::copy(key->begin(), key->end(), bytes.begin() + static_cast<std::ptrdiff_t>(at / 2));
  }
  sqlite3_result_blob64(context, bytes.data(), bytes.size(), SQLITE_TRANSIENT);
}

// RowNamesABlock for SQL (ir_row_names_a_block(hash, offset, stored_length, raw_length, codec,
// bases)), so that a statement judges a row by the same rule as a lookup.
void SqlRowNamesABlock(sqlite3_context* context, int, sqlite3_value** args) {
  auto blob = [&](int i) {
    const void* data = sqlite3_value_blob(args[i]);
    return data ? std::string_view(static_cast<const char*>(data),
                                   static_cast<size_t>(sqlite3_value_bytes(args[i])))
                : std::string_view();
  };
  sqlite3_result_int(
      context, RowNamesABlock(blob(0), sqlite3_value_int64(args[1]), sqlite3_value_int64(args[2]),
                              sqlite3_value_int64(args[3]), sqlite3_value_int64(args[4]), blob(5))
                   ? 1
                   : 0);
}

// A block as the resemblance index names it: the first 8 bytes of its hash (a row of 8
// bytes rather than the whole hash: the index costs ~1 KB per 64 KiB block, not ~4).
int64_t HashPrefix(std::string_view hash) {
  uint64_t prefix = 0;
  for (size_t i = 0; i < 16 && i < hash.size(); ++i) {
    const char c = hash[i];
    prefix = prefix << 4 | static_cast<uint64_t>(c <= '9' ? c - '0' : c - 'a' + 10);
  }
  return static_cast<int64_t>(prefix);
}

// The first 8 bytes of the keys a HashPrefix names (big-endian).
std::string PrefixBytes(int64_t prefix) {
  std::string bytes(8, '\0');
  auto value = static_cast<uint64_t>(prefix);
  for (int i = 7; i >= 0; --i, value >>= 8)
    bytes[static_cast<size_t>(i)] = static_cast<char>(value);
  return bytes;
}

// The block a resemblance row names (by its hash's first 8 bytes, HashPrefix): the first
// indexed block with that prefix, and whether it is a delta; nullopt if none is indexed.
struct PrefixedBlock {
  std::string hash;
  bool delta = false;
};
std::optional<PrefixedBlock> BlockWithPrefix(sqlite::Connection& conn, int64_t prefix) {
  sqlite::ScopedStatement s(
      conn.Cached("SELECT hash, bases FROM indexed_blocks WHERE hash >= ? ORDER BY hash LIMIT 1"));
  const std::string bytes = PrefixBytes(prefix);
  s->BindAt(1, sqlite::Blob{bytes});
  if (!s->Step() || s->BlobView(0).substr(0, bytes.size()) != bytes) return std::nullopt;
  return PrefixedBlock{IndexHex(s->BlobView(0)), !s->IsNull(1)};
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
  sqlite3_busy_timeout(raw, kBusyWaitMs);
  return conn;
}

int IndexFormat(sqlite::Connection& conn) {
  sqlite::Statement s(conn.get(), "PRAGMA user_version");
  return s.Step() ? static_cast<int>(s.Int(0)) : 0;
}

bool HasTable(sqlite::Connection& conn, const char* table) {
  sqlite::Statement s(conn.get(), "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?");
  return s.Bind(table).Step();
}

// Every table format 2 has, and the triggers that count the block rows removed or changed
// (without one, answers kept would outlive a removal): an index of this format missing any
// was edited by hand.
bool HasFormatTables(sqlite::Connection& conn) {
  sqlite::Statement s(conn.get(),
                      "SELECT count(*) FROM sqlite_schema WHERE (type = 'table' AND name IN "
                      "('indexed_blocks', 'indexed_packs', 'delta_links', 'features', 'marks', "
                      "'changes')) OR (type = 'trigger' AND tbl_name = 'indexed_blocks' AND "
                      "name IN ('indexed_block_removed', 'indexed_block_changed'))");
  return s.Step() && s.Int(0) == 8;
}

bool HasColumn(sqlite::Connection& conn, const std::string& table, std::string_view column) {
  sqlite::Statement s(conn.get(), "PRAGMA table_info(" + table + ")");
  while (s.Step()) {
    if (s.TextView(1) == column) return true;
  }
  return false;
}

// Processes of the releases before format 2 make their tables where they are missing (CREATE
// TABLE IF NOT EXISTS blocks ...) and would then keep a second index beside this one, each
// blind to what the other forgets (a block found damaged, a pack repacked). A view in the
// name of their table makes their open fail instead: every one of them indexes it next
// (CREATE INDEX blocks_by_pack ON blocks), and a view cannot be indexed.
constexpr const char* kEarlierReleasesStop =
    "CREATE VIEW blocks AS SELECT 'the block index is in format 2: stop processes of earlier "
    "releases of imagerelay' AS hash WHERE 0";

// What `blocks` is in the index: "view" (the guard above), "table" (format 1's), or "".
std::string KindOfBlocks(sqlite::Connection& conn) {
  sqlite::Statement s(conn.get(), "SELECT type FROM sqlite_schema WHERE name = 'blocks'");
  return s.Step() ? std::string(s.TextView(0)) : std::string();
}

// Puts the guard into an index of this format that lacks it (made by the release that
// brought format 2), under the write lock. Tables of an earlier release found there were
// made by one of its processes after the move: they are dropped, and every mark with them
// (what that process found damaged, this index was never told: each pack and chunk file is
// read whole again before it is vouched for).
void StopEarlierReleases(sqlite::Connection& conn, const std::filesystem::path& file) {
  if (KindOfBlocks(conn) == "view") return;
  InTransaction(conn, "BEGIN IMMEDIATE", [&] {
    const std::string kind = KindOfBlocks(conn);
    if (kind == "view") return;
    if (kind == "table") {
      Log(LogLevel::kWarning,
          "the block index " + file.string() +
              " holds tables that a process of an earlier release of imagerelay made after it "
              "moved to format " +
              std::to_string(kIndexFormat) +
              ": stop the processes of earlier releases that use this region. Their tables are "
              "dropped, and every pack is read whole again before it is vouched for");
      conn.Exec(
          "DROP TABLE IF EXISTS blocks; DROP TABLE IF EXISTS packs; "
          "DROP TABLE IF EXISTS delta_bases; DELETE FROM marks;");
    } else if (!kind.empty()) {
      throw sqlite::SqliteError(SQLITE_CORRUPT, "the block index " + file.string(),
                                "`blocks` is a " + kind);
    }
    conn.Exec(kEarlierReleasesStop);
  });
}

// Copies a format 1 index into format 2 and drops its tables, inside the caller's
// transaction: a crash leaves the index in format 1, whole, for the next open to move.
void MigrateFormat1(sqlite::Connection& conn, const std::filesystem::path& file) {
  const auto started = std::chrono::steady_clock::now();
  // Said before it starts: a large index takes a while (~7 s per million blocks here).
  Log(LogLevel::kInfo, "moving the block index " + file.string() + " to format " +
                           std::to_string(kIndexFormat) + " (once, after an upgrade)");
  conn.Exec(kCompleteFormat1);
  // An index written before delta blocks has no `bases` column (NULL: whole blocks).
  if (!HasColumn(conn, "blocks", "bases")) conn.Exec("ALTER TABLE blocks ADD COLUMN bases TEXT");
  const int rc =
      sqlite3_create_function(conn.get(), "ir_hex_key", 1, SQLITE_UTF8 | SQLITE_DETERMINISTIC,
                              nullptr, SqlHexKey, nullptr, nullptr);
  if (rc != SQLITE_OK) sqlite::ThrowSqlite(conn.get(), rc, "registering ir_hex_key");
  conn.Exec(kCopyFormat1);
  FailPoint("index.migrated");
  sqlite::Statement count(conn.get(), "SELECT count(*) FROM indexed_blocks");
  const int64_t blocks = count.Step() ? count.Int(0) : 0;
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  Log(LogLevel::kInfo, "the block index " + file.string() + " moved to format " +
                           std::to_string(kIndexFormat) + " (" + std::to_string(blocks) +
                           " blocks, " + std::to_string(seconds) + " s)");
}

// Brings the index to kIndexFormat under the write lock (another process may have done it
// meanwhile): a new file gets the schema, a format 1 index is migrated; a later format is
// refused (its rows would be misread).
void SetUpFormat(sqlite::Connection& conn, const std::filesystem::path& file) {
  const int format = IndexFormat(conn);
  if (format == kIndexFormat) return;
  if (format > kIndexFormat) {
    throw TransferError(codes::kStoreUnavailable,
                        "the block index " + file.string() + " is in format " +
                            std::to_string(format) +
                            ", written by a later release of "
                            "imagerelay; this release reads formats 1 and " +
                            std::to_string(kIndexFormat) + ": upgrade imagerelay to use it");
  }
  const bool format1 = HasTable(conn, "blocks");
  conn.Exec(kSchema);
  if (format1) MigrateFormat1(conn, file);
  conn.Exec(kEarlierReleasesStop);
  conn.Exec("PRAGMA user_version = " + std::to_string(kIndexFormat));
}

bool IsIndexDamage(const sqlite::SqliteError& e) {
  const int primary = e.rc() & 0xff;
  return primary == SQLITE_NOTADB || primary == SQLITE_CORRUPT;
}

[[noreturn]] void IndexUnavailable(const std::filesystem::path& file,
                                   const sqlite::SqliteError& e) {
  throw TransferError(codes::kStoreUnavailable,
                      "cannot open the block index " + file.string() + ": " + e.sqlite_message());
}

}  // namespace

std::unique_ptr<BlockIndex> BlockIndex::Open(const std::filesystem::path& file) {
  std::error_code ec;
  std::filesystem::create_directories(file.parent_path(), ec);
  try {
    return OpenOrThrow(file);
  } catch (const sqlite::SqliteError& e) {
    if (!IsIndexDamage(e)) IndexUnavailable(file, e);
  }
  // A cache of the packs' footers: a damaged one is set aside and built again from them (its
  // packs then have no marks, so each is re-read before it is vouched for). One process at a
  // time, and only if the file is still damaged once it holds the lock: processes that found
  // it damaged together would otherwise each set aside what the one before had made anew
  // (and remove its log).
  const std::string lock_path = file.string() + ".lock";
  UniqueFd lock(::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
  int locked = -1;
  if (lock) {
    do {
      locked = ::flock(lock.get(), LOCK_EX);
    } while (locked != 0 && errno == EINTR);  // a signal (Python's handlers do not restart)
  }
  if (locked != 0) {
    throw TransferError(codes::kStoreUnavailable, "the block index " + file.string() +
                                                      " is damaged and cannot be locked to set "
                                                      "it aside: " +
                                                      std::strerror(errno));
  }
  std::string why;
  try {
    return OpenOrThrow(file);  // made anew by another process meanwhile
  } catch (const sqlite::SqliteError& e) {
    if (!IsIndexDamage(e)) IndexUnavailable(file, e);
    why = e.sqlite_message();
  }
  const std::filesystem::path aside = file.string() + ".damaged-" +
                                      std::to_string(std::time(nullptr)) + "-" +
                                      std::to_string(::getpid());
  // Its log and shared memory first: a process that opens the path between the renames then
  // finds the damaged file alone (and waits for the lock), never a new index whose live log
  // would be taken away after.
  for (const char* suffix : {"-wal", "-shm"}) {
    std::filesystem::rename(file.string() + suffix, aside.string() + suffix, ec);
  }
  std::filesystem::rename(file, aside, ec);
  if (ec) {
    throw TransferError(codes::kStoreUnavailable, "the block index " + file.string() +
                                                      " is damaged (" + why +
                                                      ") and cannot be set aside: " + ec.message());
  }
  Log(LogLevel::kWarning, "the block index " + file.string() + " is damaged (" + why +
                              "); set aside as " + aside.string() +
                              ", and built again from the packs' footers");
  return OpenOrThrow(file);
}

std::unique_ptr<BlockIndex> BlockIndex::OpenOrThrow(const std::filesystem::path& file) {
  sqlite::Connection conn = OpenConnection(file);
  conn.Exec(kPragmas);
  // Looked at first without the write lock: an index in this format is opened without it.
  if (IndexFormat(conn) != kIndexFormat) {
    // Another process may be moving a large index (~7 s per million blocks): wait for it
    // rather than fail after the usual 5 s.
    sqlite3_busy_timeout(conn.get(), kMoveWaitMs);
    InTransaction(conn, "BEGIN IMMEDIATE", [&] { SetUpFormat(conn, file); });
    sqlite3_busy_timeout(conn.get(), kBusyWaitMs);
  } else if (!HasFormatTables(conn)) {
    // A table dropped by hand: set aside and built again from the footers, as if damaged.
    throw sqlite::SqliteError(SQLITE_CORRUPT, "the block index " + file.string(),
                              "a table of format " + std::to_string(kIndexFormat) + " is missing");
  } else {
    StopEarlierReleases(conn, file);
  }
  {
    // Written once, not at every open (an INSERT would take the write lock each time); again
    // if a hand deleted it.
    sqlite::Statement count(conn.get(), "SELECT count(*) FROM changes");
    if (count.Step() && count.Int(0) == 0) {
      conn.Exec("INSERT INTO changes (id, count) VALUES (0, 0) ON CONFLICT (id) DO NOTHING");
    }
  }
  const int rc = sqlite3_create_function(conn.get(), "ir_row_names_a_block", 6,
                                         SQLITE_UTF8 | SQLITE_DETERMINISTIC, nullptr,
                                         SqlRowNamesABlock, nullptr, nullptr);
  if (rc != SQLITE_OK) sqlite::ThrowSqlite(conn.get(), rc, "registering ir_row_names_a_block");
  auto db = std::make_unique<Db>(Db{std::move(conn), OpenConnection(file), file, nullptr});
  db->checkpointer = std::make_unique<WalCheckpointer>(file, db->conn.get());
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
    const std::optional<BlockKey> key = BlockKeyOf(entry->hash);
    if (!key) continue;
    known_.TryEmplace(*key, Found{PackId(*pack), entry->offset, entry->stored_length,
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
  int64_t pack = 0;
  {
    // A pack named by blocks of a format 1 index but not listed (NULL size) is listed now.
    sqlite::ScopedStatement s(db_->conn.Cached(
        "INSERT INTO indexed_packs (name, size) VALUES (?, ?) ON CONFLICT (name) "
        "DO UPDATE SET size = coalesce(indexed_packs.size, excluded.size) RETURNING id"));
    if (!s->Bind(pack_id, pack_size).Step()) {
      throw std::logic_error("indexing pack " + pack_id + ": no id returned");
    }
    pack = s->Int(0);
    s->Run();
  }
  auto& insert = db_->conn.Cached(
      "INSERT INTO indexed_blocks (hash, pack, offset, stored_length, raw_length, codec, bases) "
      "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (hash) DO UPDATE SET pack = excluded.pack, "
      "offset = excluded.offset, stored_length = excluded.stored_length, "
      "raw_length = excluded.raw_length, codec = excluded.codec, bases = excluded.bases "
      // A row found there that names no block (RowNamesABlock) gives way; a good one stays.
      "WHERE indexed_blocks.pack NOT IN (SELECT id FROM indexed_packs) "
      "OR NOT ir_row_names_a_block(indexed_blocks.hash, indexed_blocks.offset, "
      "indexed_blocks.stored_length, indexed_blocks.raw_length, indexed_blocks.codec, "
      "indexed_blocks.bases)");
  auto& insert_base = db_->conn.Cached(
      "INSERT INTO delta_links (base, block) VALUES (?, ?) ON CONFLICT DO NOTHING");
  auto& whole_block = db_->conn.Cached(
      "SELECT 1 FROM indexed_blocks WHERE hash = ? AND bases IS NULL AND codec != ?");
  auto bases_indexed = [&](const std::string& bases) {
    for (const std::string& base : SplitBases(bases)) {
      sqlite::ScopedStatement s(whole_block);
      const BlockKey key = BlockKeyOrThrow(base);
      if (!s->Bind(sqlite::Blob{KeyBytes(key)}, static_cast<int>(BlockCodec::kZstdDelta)).Step()) {
        return false;
      }
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
    const BlockKey key = BlockKeyOrThrow(e.hash);
    {
      sqlite::ScopedStatement s(insert);
      const std::optional<std::string> bases = BasesKeys(e.bases);  // NULL: whole
      std::optional<sqlite::Blob> bases_blob;
      if (bases) bases_blob = sqlite::Blob{*bases};
      s->Bind(sqlite::Blob{KeyBytes(key)}, pack, e.offset, e.stored_length, e.raw_length,
              static_cast<int>(e.codec), bases_blob)
          .Run();
    }
    // Only the copy indexed counts (a block indexed already keeps its place and its form).
    inserted[i] = sqlite3_changes(db_->conn.get()) > 0;
    if (!inserted[i]) continue;
    if (added) added->rows.emplace_back(&pack_id, &e);
    for (const std::string& base : SplitBases(e.bases)) {
      sqlite::ScopedStatement s(insert_base);
      const BlockKey base_key = BlockKeyOrThrow(base);
      s->Bind(sqlite::Blob{KeyBytes(base_key)}, sqlite::Blob{KeyBytes(key)}).Run();
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
    sqlite::ScopedStatement s(db_->conn.Cached(
        "DELETE FROM delta_links WHERE block IN (SELECT hash FROM indexed_blocks WHERE pack = "
        "(SELECT id FROM indexed_packs WHERE name = ?) AND bases IS NOT NULL)"));
    s->Bind(pack_id).Run();
  }
  {
    sqlite::ScopedStatement s(db_->conn.Cached(
        "DELETE FROM indexed_blocks WHERE pack = (SELECT id FROM indexed_packs WHERE name = ?)"));
    s->Bind(pack_id).Run();
  }
  {
    sqlite::ScopedStatement s(db_->conn.Cached("DELETE FROM marks WHERE file = ?"));
    s->Bind(pack_id).Run();
  }
  sqlite::ScopedStatement s(db_->conn.Cached("DELETE FROM indexed_packs WHERE name = ?"));
  s->Bind(pack_id).Run();
}

void BlockIndex::RemovePack(const std::string& pack_id) {
  std::lock_guard lock(mutex_);
  InTransaction(db_->conn, "BEGIN IMMEDIATE", [&] { ForgetPack(pack_id); });
}

void BlockIndex::ForgetBlocks(const std::vector<std::string>& hashes,
                              std::vector<std::string>& removed) {
  auto& dependents = db_->conn.Cached("SELECT block FROM delta_links WHERE base = ?");
  auto& drop_block = db_->conn.Cached("DELETE FROM indexed_blocks WHERE hash = ?");
  auto& drop_bases = db_->conn.Cached("DELETE FROM delta_links WHERE block = ?");
  auto forget = [&](std::string_view key) {
    {
      sqlite::ScopedStatement s(drop_block);
      s->Bind(sqlite::Blob{key}).Run();
    }
    sqlite::ScopedStatement s(drop_bases);
    s->Bind(sqlite::Blob{key}).Run();
  };
  for (const std::string& hash : hashes) {
    const std::optional<BlockKey> key = BlockKeyOf(hash);
    if (!key) continue;                 // not a hash: never indexed
    std::vector<std::string> built_on;  // deltas are never bases: one level only
    {
      sqlite::ScopedStatement s(dependents);
      s->Bind(sqlite::Blob{KeyBytes(*key)});
      while (s->Step()) built_on.emplace_back(s->BlobView(0));
    }
    forget(KeyBytes(*key));
    for (const std::string& delta : built_on) {
      forget(delta);
      removed.push_back(IndexHex(delta));
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
      sqlite::ScopedStatement s(db_->conn.Cached(
          "SELECT DISTINCT block FROM delta_links d "
          "WHERE NOT EXISTS (SELECT 1 FROM indexed_blocks b WHERE b.hash = d.base) "
          "UNION SELECT hash FROM indexed_blocks b WHERE bases IS NOT NULL "
          "AND NOT EXISTS (SELECT 1 FROM delta_links d WHERE d.block = b.hash)"));
      while (s->Step()) orphans.push_back(IndexHex(s->BlobView(0)));
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
    sqlite::ScopedStatement s(db_->reader.Cached("SELECT block, base FROM delta_links"));
    while (s->Step()) fn(IndexHex(s->BlobView(0)), IndexHex(s->BlobView(1)));
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

std::vector<PackEntry> BlockIndex::EntriesOf(const std::string& pack_id, size_t* left_out) {
  std::lock_guard lock(read_mutex_);
  sqlite::ScopedStatement s(db_->reader.Cached(
      "SELECT hash, offset, stored_length, raw_length, codec, bases FROM indexed_blocks "
      "WHERE pack = (SELECT id FROM indexed_packs WHERE name = ?) ORDER BY offset"));
  s->Bind(pack_id);
  if (left_out) *left_out = 0;
  std::vector<PackEntry> entries;
  while (s->Step()) {
    if (!RowNamesABlock(s->BlobView(0), s->Int(1), s->Int(2), s->Int(3), s->Int(4),
                        s->BlobView(5))) {
      if (left_out) ++*left_out;
      continue;
    }
    entries.push_back(PackEntry{IndexHex(s->BlobView(0)), s->Uint(1),
                                static_cast<uint32_t>(s->Uint(2)),
                                static_cast<uint32_t>(s->Uint(3)),
                                static_cast<BlockCodec>(s->Int(4)), IndexHex(s->BlobView(5))});
  }
  return entries;
}

std::vector<std::string> BlockIndex::Hashes() {
  std::lock_guard lock(read_mutex_);
  sqlite::ScopedStatement s(db_->reader.Cached("SELECT hash FROM indexed_blocks ORDER BY hash"));
  std::vector<std::string> hashes;
  while (s->Step()) hashes.push_back(IndexHex(s->BlobView(0)));
  return hashes;
}

std::vector<std::string> BlockIndex::HashesAfter(const std::string& after, size_t limit) {
  std::lock_guard lock(read_mutex_);
  sqlite::ScopedStatement s(
      db_->reader.Cached("SELECT hash FROM indexed_blocks WHERE hash > ? ORDER BY hash LIMIT ?"));
  // Hex digits in key order (lowercase: as the bytes they spell); "" is before every key.
  if (after.size() % 2 != 0) throw std::invalid_argument("a block hash is lowercase hex digits");
  std::string bound;
  for (size_t i = 0; i < after.size(); i += 2) {
    const int high = LowerHexDigit(after[i]);
    const int low = LowerHexDigit(after[i + 1]);
    if (high < 0 || low < 0) throw std::invalid_argument("a block hash is lowercase hex digits");
    bound.push_back(static_cast<char>(high << 4 | low));
  }
  s->Bind(sqlite::Blob{bound}, static_cast<int64_t>(limit));
  std::vector<std::string> hashes;
  while (s->Step()) hashes.push_back(IndexHex(s->BlobView(0)));
  return hashes;
}

void BlockIndex::ForgetKeptLocked(int64_t changes) {
  known_.Clear();
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
    // (16 bytes each, to sort; the keys beside them, compared only on a tie.)
    struct Wanted {
      uint64_t prefix;
      uint32_t i;    // in hashes
      uint32_t key;  // in keys
    };
    std::vector<Wanted> order;
    std::vector<BlockKey> keys;
    // Each key's slot is fetched a few keys ahead of its lookup: the misses overlap.
    constexpr size_t kAhead = 8;
    std::array<std::optional<BlockKey>, kAhead> ahead;
    auto parse = [&](size_t j) {
      ahead[j % kAhead] = BlockKeyOf(hashes[j]);
      if (ahead[j % kAhead]) known_.Prefetch(*ahead[j % kAhead]);
    };
    for (size_t j = 0; j < std::min(kAhead, hashes.size()); ++j) parse(j);
    for (size_t i = 0; i < hashes.size(); ++i) {
      const std::optional<BlockKey> key = ahead[i % kAhead];
      if (i + kAhead < hashes.size()) parse(i + kAhead);
      if (!key) continue;  // not a hash: never indexed
      if (const Found* kept = known_.Find(*key)) {
        found(i, *kept);
        continue;
      }
      uint64_t prefix = 0;
      for (size_t b = 0; b < 8; ++b) prefix = prefix << 8 | static_cast<unsigned char>((*key)[b]);
      if (keys.empty()) keys.reserve(hashes.size() - i);
      order.push_back(Wanted{prefix, static_cast<uint32_t>(i), static_cast<uint32_t>(keys.size())});
      keys.push_back(*key);
    }
    if (keep) known_.Reserve(std::min(kMaxKnown, known_.size() + order.size()));
    if (order.size() >= kReadAheadMinKeys) {
      ReadAhead(db_->file, order.size());
      ReadAhead(db_->file.string() + "-wal", order.size());
    }
    std::sort(order.begin(), order.end(), [&](const Wanted& x, const Wanted& y) {
      return x.prefix != y.prefix
                 ? x.prefix < y.prefix
                 : std::memcmp(keys[x.key].data(), keys[y.key].data(), kHashBytes) < 0;
    });
    // Pack numbers to the names of known_packs_, for this batch (one snapshot: a number
    // names one pack throughout it).
    // A number no pack has (a row edited by hand, or damaged): nullopt, the row no block.
    std::unordered_map<int64_t, std::optional<uint32_t>> pack_ids;
    auto pack_of = [&](int64_t pack) {
      auto [it, added] = pack_ids.try_emplace(pack, std::nullopt);
      if (added) {
        sqlite::ScopedStatement s(
            db_->reader.Cached("SELECT name FROM indexed_packs WHERE id = ?"));
        if (s->Bind(pack).Step() && !s->TextView(0).empty()) it->second = PackId(s->TextView(0));
      }
      return it->second;
    };
    // A merge of the sorted keys with the table, in key order: one cursor, moved a few rows
    // on to reach the next key when the keys are dense in the table (a copy's plan against
    // a region holding the image's previous version: ~0.2 us a row), sought afresh (a B-tree
    // descent, ~3 us) when they are sparse.
    sqlite::ScopedStatement cursor(db_->reader.Cached(
        "SELECT hash, pack, offset, stored_length, raw_length, codec, bases FROM indexed_blocks "
        "WHERE hash >= ? ORDER BY hash"));
    bool on_row = false;      // the cursor is on a row (false: not sought yet, or past the end)
    bool stepped_to = false;  // the last key was reached by moving on, not by a seek
    for (size_t k = 0; k < order.size(); ++k) {
      const Wanted& wanted = order[k];
      // (The answer kept below goes to a slot of its own: fetched a few keys ahead.)
      if (keep && k + kAhead < order.size()) known_.Prefetch(keys[order[k + kAhead].key]);
      const std::string_view key = KeyBytes(keys[wanted.key]);
      int moves = stepped_to ? kMaxMoves : kMaxMovesAfterSeek;
      while (on_row && cursor->BlobView(0) < key && moves-- > 0) on_row = cursor->Step();
      stepped_to = on_row && cursor->BlobView(0) >= key;
      if (!stepped_to) {
        cursor->Reset();
        cursor->BindBorrowedBlob(1, key);
        on_row = cursor->Step();
      }
      if (!on_row || cursor->BlobView(0) != key) continue;
      if (!RowNamesABlock(key, cursor->Int(2), cursor->Int(3), cursor->Int(4), cursor->Int(5),
                          cursor->BlobView(6))) {
        continue;
      }
      const std::optional<uint32_t> pack = pack_of(cursor->Int(1));
      if (!pack) continue;
      const Found where{*pack,
                        cursor->Uint(2),
                        static_cast<uint32_t>(cursor->Uint(3)),
                        static_cast<uint32_t>(cursor->Uint(4)),
                        static_cast<BlockCodec>(cursor->Int(5)),
                        IndexHex(cursor->BlobView(6))};
      found(wanted.i, where);
      if (keep && known_.size() < kMaxKnown) known_.TryEmplace(keys[wanted.key], where);
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
  const std::optional<BlockKey> key = BlockKeyOf(hash);
  return key && known_.Contains(*key);
}

std::vector<std::optional<BlockLocation>> BlockIndex::LookupHint(
    const std::vector<std::string>& hashes) {
  {
    std::lock_guard lock(read_mutex_);
    std::vector<std::optional<BlockLocation>> out;
    for (const std::string& hash : hashes) {
      const std::optional<BlockKey> key = BlockKeyOf(hash);
      const Found* kept = key ? known_.Find(*key) : nullptr;
      if (kept == nullptr) break;
      out.emplace_back(LocationOf(*kept));
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
  sqlite::ScopedStatement s(db_->reader.Cached("SELECT count(*) FROM indexed_blocks"));
  return s->Step() ? s->Uint(0) : 0;
}

std::vector<std::string> BlockIndex::UnlistedPacks() {
  std::lock_guard lock(read_mutex_);
  sqlite::ScopedStatement s(
      db_->reader.Cached("SELECT name FROM indexed_packs WHERE size IS NULL ORDER BY name"));
  std::vector<std::string> packs;
  while (s->Step()) packs.push_back(s->Text(0));
  return packs;
}

std::vector<std::pair<std::string, uint64_t>> BlockIndex::Packs() {
  std::lock_guard lock(read_mutex_);
  sqlite::ScopedStatement s(db_->reader.Cached(
      "SELECT name, size FROM indexed_packs WHERE size IS NOT NULL ORDER BY name"));
  std::vector<std::pair<std::string, uint64_t>> packs;
  while (s->Step()) packs.emplace_back(s->Text(0), s->Uint(1));
  return packs;
}

}  // namespace imagerelay
