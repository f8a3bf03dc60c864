// MarkSet (imagerelay/store.hpp): a private temporary SQLite database (opened with an empty
// file name: on disk, deleted when closed), one row per chunk in a WITHOUT ROWID table,
// with a small page cache, so that a sweep's memory does not grow with the region.
#include <sqlite3.h>

#include "base/sqlite_util.hpp"
#include "imagerelay/store.hpp"

namespace imagerelay {

struct MarkSet::Impl {
  sqlite::Connection db{nullptr};
  bool in_batch = false;  // adds go in one transaction, committed before the first lookup
  uint64_t count = 0;

  Impl() {
    sqlite3* raw = nullptr;
    const int rc = sqlite3_open_v2("", &raw, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr);
    db = sqlite::Connection(raw);
    if (rc != SQLITE_OK) sqlite::ThrowSqlite(raw, rc, "opening a sweep's mark set");
    db.Exec(
        "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA cache_size=-4096;"
        "CREATE TABLE marked(hash TEXT PRIMARY KEY) WITHOUT ROWID;");
  }

  void EndBatch() {
    if (!in_batch) return;
    db.Exec("COMMIT");  // not a durable step: a sweep's scratch set, dropped with it
    in_batch = false;
  }
};

MarkSet::MarkSet() : impl_(std::make_unique<Impl>()) {}

MarkSet::MarkSet(std::initializer_list<std::string> hashes) : MarkSet() {
  for (const std::string& hash : hashes) Add(hash);
}

MarkSet::~MarkSet() = default;

void MarkSet::Add(const std::string& hash) {
  if (!impl_->in_batch) {
    impl_->db.Exec("BEGIN");
    impl_->in_batch = true;
  }
  sqlite::ScopedStatement insert(impl_->db.Cached("INSERT OR IGNORE INTO marked(hash) VALUES (?)"));
  insert->Bind(hash).Run();
  impl_->count += static_cast<uint64_t>(sqlite3_changes(impl_->db.get()));
}

bool MarkSet::Contains(const std::string& hash) const {
  impl_->EndBatch();
  sqlite::ScopedStatement select(impl_->db.Cached("SELECT 1 FROM marked WHERE hash = ?"));
  return select->Bind(hash).Step();
}

uint64_t MarkSet::size() const { return impl_->count; }

}  // namespace imagerelay
