// The SQLite catalog (DESIGN.md §6). One connection per Catalog, guarded by a mutex; every
// Write() is one BEGIN IMMEDIATE transaction, so writers are serialised across threads and
// processes and a read-check-write inside one Write() is atomic. Write() and Read() must
// not be called from inside a Write()/Read() callback (they throw if they are), and a
// Catalog must not be used across fork(): a child process opens its own.
#include <sqlite3.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <initializer_list>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "base/fail_point.hpp"
#include "base/sqlite_util.hpp"
#include "catalog/catalog_columns.hpp"
#include "catalog/one_transaction_at_a_time.hpp"
#include "imagerelay/catalog.hpp"
#include "imagerelay/error.hpp"
#include "imagerelay/log.hpp"

namespace imagerelay {
namespace {

using sqlite::Connection;
using sqlite::ScopedStatement;
using sqlite::SqliteError;
using sqlite::Statement;

constexpr int kBusyTimeoutMs = 10'000;
// Our own retries of BEGIN IMMEDIATE / COMMIT on top of the busy timeout, until this much
// time has passed in all.
constexpr auto kBusyDeadline = std::chrono::seconds(60);
constexpr auto kMaxBackoff = std::chrono::milliseconds(200);

// Schema migrations: kMigrations[i] takes user_version i to i + 1. Append, never edit.
constexpr const char* kMigrations[] = {
    R"sql(
CREATE TABLE regions (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  store_uri TEXT NOT NULL
);
CREATE TABLE accounts (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL
);
CREATE TABLE images (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  region TEXT NOT NULL,
  type TEXT NOT NULL,
  owner TEXT NOT NULL,
  status TEXT NOT NULL,
  size INTEGER NOT NULL,
  digest TEXT NOT NULL,
  format TEXT NOT NULL,
  os_type TEXT NOT NULL,
  os_name TEXT NOT NULL,
  os_version TEXT NOT NULL,
  os_arch TEXT NOT NULL,
  description TEXT NOT NULL,
  created_us INTEGER NOT NULL,
  source_image_id TEXT NOT NULL,
  source_region TEXT NOT NULL,
  error TEXT NOT NULL
);
CREATE INDEX images_by_region ON images (region, created_us);
CREATE TABLE shares (
  image_id TEXT NOT NULL REFERENCES images (id),
  account TEXT NOT NULL,
  PRIMARY KEY (image_id, account)
);
CREATE INDEX shares_by_account ON shares (account);
CREATE TABLE jobs (
  id TEXT PRIMARY KEY,
  account TEXT NOT NULL,
  source_image_id TEXT NOT NULL,
  source_region TEXT NOT NULL,
  name TEXT NOT NULL,
  client_token TEXT NOT NULL,
  created_us INTEGER NOT NULL
);
CREATE INDEX jobs_by_account ON jobs (account, created_us);
CREATE TABLE tasks (
  dest_image_id TEXT PRIMARY KEY,
  job_id TEXT NOT NULL REFERENCES jobs (id),
  region TEXT NOT NULL,
  state TEXT NOT NULL,
  bytes_total INTEGER NOT NULL,
  bytes_done INTEGER NOT NULL,
  bytes_transferred INTEGER NOT NULL,
  chunks_total INTEGER NOT NULL,
  chunks_skipped INTEGER NOT NULL,
  rate REAL NOT NULL,
  attempts INTEGER NOT NULL,
  error TEXT NOT NULL,
  error_code TEXT NOT NULL,
  started_us INTEGER NOT NULL,
  finished_us INTEGER NOT NULL,
  lease_owner TEXT NOT NULL,
  lease_expires_us INTEGER NOT NULL
);
CREATE INDEX tasks_by_job ON tasks (job_id, region);
CREATE INDEX tasks_by_state ON tasks (state);
CREATE TABLE events (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  time_us INTEGER NOT NULL,
  type TEXT NOT NULL,
  account TEXT NOT NULL,
  image_id TEXT NOT NULL,
  job_id TEXT NOT NULL,
  region TEXT NOT NULL,
  detail_json TEXT NOT NULL
);
CREATE INDEX events_by_image ON events (image_id, seq);
CREATE TABLE client_tokens (
  account TEXT NOT NULL,
  token TEXT NOT NULL,
  job_id TEXT NOT NULL,
  fingerprint TEXT NOT NULL,
  PRIMARY KEY (account, token)
);
CREATE TABLE sweep (
  region TEXT PRIMARY KEY,
  needed INTEGER NOT NULL DEFAULT 0,
  holder TEXT,
  expires_us INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE settings (
  key TEXT PRIMARY KEY,
  value TEXT NOT NULL
);
)sql",
    // 1 -> 2: the chunk-list digest of every committed manifest (CatalogTx::PutManifestDigest).
    R"sql(
CREATE TABLE manifest_digests (
  image_id TEXT PRIMARY KEY,
  digest TEXT NOT NULL
);
ALTER TABLE shares ADD COLUMN created_us INTEGER NOT NULL DEFAULT 0;
)sql",
    // 2 -> 3: bytes a copy sent (compressed), beside the bytes of the image it wrote.
    R"sql(
ALTER TABLE tasks ADD COLUMN bytes_sent INTEGER NOT NULL DEFAULT 0;
)sql",
    // 3 -> 4: the size of the disk an image holds, read from its header (0: not recorded).
    R"sql(
ALTER TABLE images ADD COLUMN virtual_size INTEGER NOT NULL DEFAULT 0;
)sql",
};
constexpr int kLatestVersion = static_cast<int>(std::size(kMigrations));

using catalog_columns::kEventColumns;
using catalog_columns::kImageColumns;
using catalog_columns::kJobColumns;
using catalog_columns::kTaskColumns;
using catalog_columns::Sql;

// Reports an unreadable row once per process (listings skip it every time they meet it).
void ReportSkippedRow(const std::string& what) {
  static std::mutex mutex;
  static std::set<std::string> reported;
  std::lock_guard lock(mutex);
  if (!reported.insert(what).second) return;
  Log(LogLevel::kWarning,
      what + "; the row is left out of listings, the rest of the home stays usable");
}

[[noreturn]] void ThrowCorrupt(const std::string& what) {
  throw Error(codes::kTransferFailed, "catalog: unreadable row: " + what);
}

[[noreturn]] void ThrowCannotOpen(const std::filesystem::path& path, const std::string& why) {
  throw ValidationError(codes::kInvalidParameter,
                        "cannot open the catalog '" + path.string() + "': " + why +
                            "; give the path of a writable file in a writable directory (an "
                            "existing imagerelay catalog or a new file)");
}

bool IsOpenFailure(int rc) {
  switch (rc & 0xff) {
    case SQLITE_CANTOPEN:
    case SQLITE_READONLY:
    case SQLITE_PERM:
    case SQLITE_AUTH:
    case SQLITE_NOTADB:
    case SQLITE_CORRUPT:
    case SQLITE_IOERR: return true;
    default: return false;
  }
}

// Runs `sql` until it is not refused as busy/locked, backing off with jitter, for at most
// kBusyDeadline in all. Each attempt already waits up to the busy timeout.
void ExecWhileBusy(Connection& conn, const std::string& sql) {
  thread_local std::minstd_rand rng(std::random_device{}());
  const auto deadline = std::chrono::steady_clock::now() + kBusyDeadline;
  auto backoff = std::chrono::milliseconds(1);
  for (;;) {
    int rc = conn.TryExec(sql);
    if (rc == SQLITE_OK) return;
    int primary = rc & 0xff;
    bool busy = primary == SQLITE_BUSY || primary == SQLITE_LOCKED;
    if (!busy || std::chrono::steady_clock::now() >= deadline) {
      sqlite::ThrowSqlite(conn.get(), rc, sql);
    }
    std::uniform_int_distribution<int> jitter(0, static_cast<int>(backoff.count()));
    std::this_thread::sleep_for(backoff + std::chrono::milliseconds(jitter(rng)));
    backoff = std::min(backoff * 2, kMaxBackoff);
  }
}

// An open transaction: rolled back when it goes away uncommitted.
class Transaction {
 public:
  explicit Transaction(Connection& conn) : conn_(conn) {}
  ~Transaction() {
    if (!committed_ && sqlite3_get_autocommit(conn_.get()) == 0) conn_.TryExec("ROLLBACK");
  }
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;

  void Commit() {
    // not a durable step by itself: each caller passes its own fail point around it
    ExecWhileBusy(conn_, "COMMIT");
    committed_ = true;
  }

 private:
  Connection& conn_;
  bool committed_ = false;
};

int ReadUserVersion(Connection& conn) {
  Statement statement(conn.get(), "PRAGMA user_version");
  return statement.Step() ? static_cast<int>(statement.Int(0)) : 0;
}

void Migrate(Connection& conn, const std::filesystem::path& path) {
  auto check_not_newer = [&](int version) {
    if (version > kLatestVersion) {
      throw ValidationError(codes::kInvalidParameter,
                            "the catalog '" + path.string() + "' has schema version " +
                                std::to_string(version) + ", newer than this imagerelay knows (" +
                                std::to_string(kLatestVersion) +
                                "); open it with a newer imagerelay");
    }
  };
  int version = ReadUserVersion(conn);
  check_not_newer(version);
  if (version == kLatestVersion) return;

  ExecWhileBusy(conn, "BEGIN IMMEDIATE");
  Transaction tx(conn);
  version = ReadUserVersion(conn);  // another process may have migrated meanwhile
  check_not_newer(version);
  for (int v = version; v < kLatestVersion; ++v) conn.Exec(kMigrations[v]);
  conn.Exec("PRAGMA user_version = " + std::to_string(kLatestVersion));
  FailPoint("catalog.migrate");
  tx.Commit();
}

Region ReadRegion(const Statement& s) { return {s.Text(0), s.Text(1), s.Text(2)}; }
Account ReadAccount(const Statement& s) { return {s.Text(0), s.Text(1)}; }

// Columns in kImageColumns order.
Image ReadImage(const Statement& s) {
  Image image;
  image.id = s.Text(0);
  image.name = s.Text(1);
  image.region = s.Text(2);
  auto type = ParseImageType(s.Text(3));
  if (!type) ThrowCorrupt("image " + image.id + " has type '" + s.Text(3) + "'");
  image.type = *type;
  image.owner = s.Text(4);
  auto status = ParseImageStatus(s.Text(5));
  if (!status) ThrowCorrupt("image " + image.id + " has status '" + s.Text(5) + "'");
  image.status = *status;
  image.size = s.Uint(6);
  image.digest = s.Text(7);
  image.format = s.Text(8);
  image.os_type = s.Text(9);
  image.os_name = s.Text(10);
  image.os_version = s.Text(11);
  image.os_arch = s.Text(12);
  image.description = s.Text(13);
  image.created_us = s.Int(14);
  image.source_image_id = s.Text(15);
  image.source_region = s.Text(16);
  image.error = s.Text(17);
  image.virtual_size = s.Uint(18);
  return image;
}

// Columns in kTaskColumns order.
Task ReadTask(const Statement& s) {
  Task task;
  task.dest_image_id = s.Text(0);
  task.job_id = s.Text(1);
  task.region = s.Text(2);
  auto state = ParseTaskState(s.Text(3));
  if (!state) ThrowCorrupt("task " + task.dest_image_id + " has state '" + s.Text(3) + "'");
  task.state = *state;
  task.bytes_total = s.Uint(4);
  task.bytes_done = s.Uint(5);
  task.bytes_transferred = s.Uint(6);
  task.chunks_total = s.Uint(7);
  task.chunks_skipped = s.Uint(8);
  task.rate = s.Double(9);
  task.attempts = static_cast<int>(s.Int(10));
  task.error = s.Text(11);
  task.error_code = s.Text(12);
  task.started_us = s.Int(13);
  task.finished_us = s.Int(14);
  task.lease_owner = s.Text(15);
  task.lease_expires_us = s.Int(16);
  task.bytes_sent = s.Uint(17);
  return task;
}

// Columns in kJobColumns order; tasks not loaded.
Job ReadJob(const Statement& s) {
  Job job;
  job.id = s.Text(0);
  job.account = s.Text(1);
  job.source_image_id = s.Text(2);
  job.source_region = s.Text(3);
  job.name = s.Text(4);
  job.client_token = s.Text(5);
  job.created_us = s.Int(6);
  return job;
}

Event ReadEvent(const Statement& s) {
  Event event;
  event.seq = s.Int(0);
  event.time_us = s.Int(1);
  event.type = s.Text(2);
  event.account = s.Text(3);
  event.image_id = s.Text(4);
  event.job_id = s.Text(5);
  event.region = s.Text(6);
  event.detail_json = s.Text(7);
  return event;
}

class SqliteTx final : public CatalogTx {
 public:
  SqliteTx(Connection& conn, bool read_only) : conn_(conn), read_only_(read_only) {}

  bool InsertRegion(const Region& region) override {
    auto s = Prepare(
        "INSERT INTO regions (id, name, store_uri) VALUES (?, ?, ?) ON CONFLICT (id) DO NOTHING");
    s->Bind(region.id, region.name, region.store_uri).Run();
    return Changes() == 1;
  }

  std::optional<Region> GetRegion(const std::string& id) override {
    auto s = Prepare("SELECT id, name, store_uri FROM regions WHERE id = ?");
    if (!s->Bind(id).Step()) return std::nullopt;
    return ReadRegion(*s);
  }

  std::vector<Region> ListRegions() override {
    auto s = Prepare("SELECT id, name, store_uri FROM regions ORDER BY id");
    std::vector<Region> regions;
    while (s->Step()) regions.push_back(ReadRegion(*s));
    return regions;
  }

  bool InsertAccount(const Account& account) override {
    auto s = Prepare("INSERT INTO accounts (id, name) VALUES (?, ?) ON CONFLICT (id) DO NOTHING");
    s->Bind(account.id, account.name).Run();
    return Changes() == 1;
  }

  std::optional<Account> GetAccount(const std::string& id) override {
    auto s = Prepare("SELECT id, name FROM accounts WHERE id = ?");
    if (!s->Bind(id).Step()) return std::nullopt;
    return ReadAccount(*s);
  }

  std::vector<Account> ListAccounts() override {
    auto s = Prepare("SELECT id, name FROM accounts ORDER BY id");
    std::vector<Account> accounts;
    while (s->Step()) accounts.push_back(ReadAccount(*s));
    return accounts;
  }

  bool DeleteRegion(const std::string& id) override {
    Prepare("DELETE FROM sweep WHERE region = ?")->Bind(id).Run();
    Prepare("DELETE FROM regions WHERE id = ?")->Bind(id).Run();
    return Changes() == 1;
  }

  bool SetRegionStore(const std::string& id, const std::string& store_uri) override {
    Prepare("UPDATE regions SET store_uri = ? WHERE id = ?")->Bind(store_uri, id).Run();
    return Changes() == 1;
  }

  bool DeleteAccount(const std::string& id) override {
    Prepare("DELETE FROM client_tokens WHERE account = ?")->Bind(id).Run();
    Prepare("DELETE FROM accounts WHERE id = ?")->Bind(id).Run();
    return Changes() == 1;
  }

  bool InsertImage(const Image& i) override {
    auto s = Prepare(Sql({"INSERT INTO images (", kImageColumns,
                          ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                          "ON CONFLICT (id) DO NOTHING"}));
    s->Bind(i.id, i.name, i.region, ToString(i.type), i.owner, ToString(i.status), i.size, i.digest,
            i.format, i.os_type, i.os_name, i.os_version, i.os_arch, i.description, i.created_us,
            i.source_image_id, i.source_region, i.error, i.virtual_size)
        .Run();
    return Changes() == 1;
  }

  std::optional<Image> GetImage(const std::string& id) override {
    auto s = Prepare(Sql({"SELECT ", kImageColumns, " FROM images WHERE id = ?"}));
    if (!s->Bind(id).Step()) return std::nullopt;
    return ReadImage(*s);
  }

  std::vector<Image> ListImages(const ImageFilter& filter) override {
    // One statement per filter shape, so that the region index is used.
    std::string sql = Sql({"SELECT ", kImageColumns, " FROM images WHERE status <> ?"});
    if (filter.region) sql += " AND region = ?";
    if (filter.name) sql += " AND name = ?";
    sql += " ORDER BY created_us, id";
    auto s = Prepare(sql);
    int index = 1;
    s->BindAt(index++, ToString(ImageStatus::kDeleted));
    if (filter.region) s->BindAt(index++, *filter.region);
    if (filter.name) s->BindAt(index++, *filter.name);
    std::vector<Image> images;
    while (s->Step()) {
      // One unreadable row (an unknown type or status, written by a newer release or by
      // hand) must not make the whole home unusable: it is reported and left out.
      try {
        images.push_back(ReadImage(*s));
      } catch (const Error& e) {
        ReportSkippedRow(e.message());
      }
    }
    return images;
  }

  void UpdateImageFields(const Image& i) override {
    auto s = Prepare(
        "UPDATE images SET name = ?, region = ?, type = ?, owner = ?, size = ?, digest = ?, "
        "format = ?, os_type = ?, os_name = ?, os_version = ?, os_arch = ?, description = ?, "
        "created_us = ?, source_image_id = ?, source_region = ?, error = ?, virtual_size = ? "
        "WHERE id = ?");
    s->Bind(i.name, i.region, ToString(i.type), i.owner, i.size, i.digest, i.format, i.os_type,
            i.os_name, i.os_version, i.os_arch, i.description, i.created_us, i.source_image_id,
            i.source_region, i.error, i.virtual_size, i.id)
        .Run();
    if (Changes() != 1) {
      ThrowCode(codes::kNoSuchImage, "catalog: no image " + i.id + " to update");
    }
  }

  bool TransitionImage(const std::string& id, ImageStatus expected, ImageEvent event) override {
    auto next = Transition(expected, event);
    if (!next) return false;
    auto s = Prepare("UPDATE images SET status = ? WHERE id = ? AND status = ?");
    s->Bind(ToString(*next), id, ToString(expected)).Run();
    return Changes() == 1;
  }

  bool InsertShare(const std::string& image_id, const std::string& account) override {
    auto s = Prepare(
        "INSERT INTO shares (image_id, account, created_us) VALUES (?, ?, ?) "
        "ON CONFLICT (image_id, account) DO NOTHING");
    s->Bind(image_id, account, NowUs()).Run();
    return Changes() == 1;
  }

  bool DeleteShare(const std::string& image_id, const std::string& account) override {
    auto s = Prepare("DELETE FROM shares WHERE image_id = ? AND account = ?");
    s->Bind(image_id, account).Run();
    return Changes() == 1;
  }

  std::optional<TimeUs> ShareTime(const std::string& image_id,
                                  const std::string& account) override {
    auto s = Prepare("SELECT created_us FROM shares WHERE image_id = ? AND account = ?");
    if (!s->Bind(image_id, account).Step()) return std::nullopt;
    return s->Int(0);
  }

  std::vector<std::string> ListShares(const std::string& image_id) override {
    auto s = Prepare("SELECT account FROM shares WHERE image_id = ? ORDER BY account");
    s->Bind(image_id);
    return Column0(*s);
  }

  int CountAcceptedShares(const std::string& account, const std::string& region) override {
    auto s = Prepare(
        "SELECT COUNT(*) FROM shares s JOIN images i ON i.id = s.image_id "
        "WHERE s.account = ? AND i.region = ? AND i.status <> ?");
    s->Bind(account, region, ToString(ImageStatus::kDeleted)).Step();
    return static_cast<int>(s->Int(0));
  }

  std::vector<std::string> ImagesSharedWith(const std::string& account) override {
    auto s = Prepare(
        "SELECT s.image_id FROM shares s JOIN images i ON i.id = s.image_id "
        "WHERE s.account = ? AND i.status <> ? ORDER BY i.created_us, i.id");
    s->Bind(account, ToString(ImageStatus::kDeleted));
    return Column0(*s);
  }

  void InsertJob(const Job& job) override {
    auto s = Prepare(Sql({"INSERT INTO jobs (", kJobColumns, ") VALUES (?, ?, ?, ?, ?, ?, ?)"}));
    s->Bind(job.id, job.account, job.source_image_id, job.source_region, job.name, job.client_token,
            job.created_us)
        .Run();
    auto t = Prepare(
        "INSERT INTO tasks (dest_image_id, job_id, region, state, bytes_total, bytes_done, "
        "bytes_transferred, chunks_total, chunks_skipped, rate, attempts, error, error_code, "
        "started_us, finished_us, lease_owner, lease_expires_us, bytes_sent) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
    for (const Task& task : job.tasks) {
      t->Bind(task.dest_image_id, job.id, task.region, ToString(task.state), task.bytes_total,
              task.bytes_done, task.bytes_transferred, task.chunks_total, task.chunks_skipped,
              task.rate, task.attempts, task.error, task.error_code, task.started_us,
              task.finished_us, task.lease_owner, task.lease_expires_us, task.bytes_sent)
          .Run();
      t->Reset();
    }
  }

  std::optional<Job> GetJob(const std::string& id) override {
    std::optional<Job> job;
    {
      auto s = Prepare(Sql({"SELECT ", kJobColumns, " FROM jobs WHERE id = ?"}));
      if (!s->Bind(id).Step()) return std::nullopt;
      job = ReadJob(*s);
    }
    job->tasks = TasksOfJob(job->id);
    return job;
  }

  std::vector<Job> ListJobs(const std::string& account) override {
    std::vector<Job> jobs;
    {
      auto s = Prepare(
          account.empty()
              ? Sql({"SELECT ", kJobColumns, " FROM jobs ORDER BY created_us DESC, id DESC"})
              : Sql({"SELECT ", kJobColumns,
                     " FROM jobs WHERE account = ? ORDER BY created_us DESC, "
                     "id DESC"}));
      if (!account.empty()) s->Bind(account);
      while (s->Step()) jobs.push_back(ReadJob(*s));
    }
    for (Job& job : jobs) job.tasks = TasksOfJob(job.id);
    return jobs;
  }

  std::optional<Task> GetTaskByDestImage(const std::string& dest_image_id) override {
    auto s = Prepare(Sql({"SELECT ", kTaskColumns, " FROM tasks t WHERE t.dest_image_id = ?"}));
    if (!s->Bind(dest_image_id).Step()) return std::nullopt;
    return ReadTask(*s);
  }

  std::vector<Task> ListTasksInStates(const std::vector<TaskState>& states) override {
    if (states.empty()) return {};
    std::string sql = Sql({"SELECT ", kTaskColumns,
                           " FROM tasks t JOIN jobs j ON j.id = t.job_id WHERE t.state IN ("});
    for (size_t i = 0; i < states.size(); ++i) sql += i == 0 ? "?" : ", ?";
    sql += ") ORDER BY j.created_us, j.id, t.region";
    auto s = Prepare(sql);
    for (size_t i = 0; i < states.size(); ++i) {
      s->BindAt(static_cast<int>(i) + 1, ToString(states[i]));
    }
    std::vector<Task> tasks;
    while (s->Step()) tasks.push_back(ReadTask(*s));
    return tasks;
  }

  void UpdateTaskFields(const Task& t) override {
    auto s = Prepare(
        "UPDATE tasks SET bytes_total = ?, bytes_done = ?, bytes_transferred = ?, "
        "chunks_total = ?, chunks_skipped = ?, rate = ?, attempts = ?, error = ?, "
        "error_code = ?, started_us = ?, finished_us = ?, lease_owner = ?, "
        "lease_expires_us = ?, bytes_sent = ? WHERE dest_image_id = ?");
    s->Bind(t.bytes_total, t.bytes_done, t.bytes_transferred, t.chunks_total, t.chunks_skipped,
            t.rate, t.attempts, t.error, t.error_code, t.started_us, t.finished_us, t.lease_owner,
            t.lease_expires_us, t.bytes_sent, t.dest_image_id)
        .Run();
    if (Changes() != 1) {
      ThrowCode(codes::kNoSuchJob, "catalog: no task for image " + t.dest_image_id + " to update");
    }
  }

  bool TransitionTask(const std::string& dest_image_id, TaskState expected,
                      TaskEvent event) override {
    auto next = Transition(expected, event);
    if (!next) return false;
    auto s = Prepare("UPDATE tasks SET state = ? WHERE dest_image_id = ? AND state = ?");
    s->Bind(ToString(*next), dest_image_id, ToString(expected)).Run();
    return Changes() == 1;
  }

  std::optional<ClientTokenRecord> GetClientToken(const std::string& account,
                                                  const std::string& token) override {
    auto s =
        Prepare("SELECT job_id, fingerprint FROM client_tokens WHERE account = ? AND token = ?");
    if (!s->Bind(account, token).Step()) return std::nullopt;
    return ClientTokenRecord{s->Text(0), s->Text(1)};
  }

  void InsertClientToken(const std::string& account, const std::string& token,
                         const ClientTokenRecord& record) override {
    auto s = Prepare(
        "INSERT INTO client_tokens (account, token, job_id, fingerprint) VALUES (?, ?, ?, ?)");
    s->Bind(account, token, record.job_id, record.fingerprint).Run();
  }

  int64_t AppendEvent(const Event& e) override {
    auto s = Prepare(
        "INSERT INTO events (time_us, type, account, image_id, job_id, region, detail_json) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)");
    s->Bind(e.time_us, e.type, e.account, e.image_id, e.job_id, e.region, e.detail_json).Run();
    return sqlite3_last_insert_rowid(conn_.get());
  }

  std::vector<Event> ListEvents(int64_t since, const std::optional<std::string>& image_id,
                                int limit) override {
    // LIMIT -1 is SQLite's "no limit".
    const int64_t sql_limit = limit <= 0 ? -1 : limit;
    auto s = Prepare(image_id ? Sql({"SELECT ", kEventColumns,
                                     " FROM events WHERE image_id = ? AND seq > ? "
                                     "ORDER BY seq LIMIT ?"})
                              : Sql({"SELECT ", kEventColumns,
                                     " FROM events WHERE seq > ? ORDER BY seq LIMIT ?"}));
    if (image_id) {
      s->Bind(*image_id, since, sql_limit);
    } else {
      s->Bind(since, sql_limit);
    }
    std::vector<Event> events;
    while (s->Step()) events.push_back(ReadEvent(*s));
    return events;
  }

  bool AcquireSweepLease(const std::string& region, const std::string& holder,
                         TimeUs expires_us) override {
    auto s = Prepare(
        "INSERT INTO sweep (region, needed, holder, expires_us) VALUES (?1, 0, ?2, ?3) "
        "ON CONFLICT (region) DO UPDATE SET holder = excluded.holder, "
        "expires_us = excluded.expires_us "
        "WHERE sweep.holder IS NULL OR sweep.holder = '' OR sweep.holder = excluded.holder "
        "OR sweep.expires_us < ?4");
    s->Bind(region, holder, expires_us, NowUs()).Run();
    return Changes() == 1;
  }

  void ReleaseSweepLease(const std::string& region, const std::string& holder) override {
    auto s =
        Prepare("UPDATE sweep SET holder = NULL, expires_us = 0 WHERE region = ? AND holder = ?");
    s->Bind(region, holder).Run();
  }

  void SetSweepNeeded(const std::string& region, bool needed) override {
    // `needed` counts the requests, so that a sweep can tell whether one came while it ran.
    auto s = Prepare(
        "INSERT INTO sweep (region, needed) VALUES (?1, ?2) "
        "ON CONFLICT (region) DO UPDATE SET needed = "
        "CASE WHEN ?2 = 0 THEN 0 ELSE sweep.needed + 1 END");
    s->Bind(region, needed ? 1 : 0).Run();
  }

  int64_t SweepNeededMark(const std::string& region) override {
    auto s = Prepare("SELECT needed FROM sweep WHERE region = ?");
    return s->Bind(region).Step() ? s->Int(0) : 0;
  }

  void ClearSweepNeeded(const std::string& region, int64_t mark) override {
    auto s = Prepare("UPDATE sweep SET needed = 0 WHERE region = ? AND needed = ?");
    s->Bind(region, mark).Run();
  }

  std::optional<std::pair<std::string, TimeUs>> GetSweepLease(const std::string& region) override {
    auto s = Prepare(
        "SELECT holder, expires_us FROM sweep WHERE region = ? AND holder IS NOT NULL AND "
        "holder <> ''");
    if (!s->Bind(region).Step()) return std::nullopt;
    return std::make_pair(s->Text(0), s->Int(1));
  }

  void PutManifestDigest(const std::string& image_id, const std::string& digest) override {
    auto s = Prepare(
        "INSERT INTO manifest_digests (image_id, digest) VALUES (?, ?) "
        "ON CONFLICT (image_id) DO UPDATE SET digest = excluded.digest");
    s->Bind(image_id, digest).Run();
  }

  std::optional<std::string> GetManifestDigest(const std::string& image_id) override {
    auto s = Prepare("SELECT digest FROM manifest_digests WHERE image_id = ?");
    if (!s->Bind(image_id).Step()) return std::nullopt;
    return s->Text(0);
  }

  std::vector<std::string> RegionsNeedingSweep() override {
    auto s = Prepare("SELECT region FROM sweep WHERE needed <> 0 ORDER BY region");
    return Column0(*s);
  }

  std::optional<std::string> GetSetting(const std::string& key) override {
    auto s = Prepare("SELECT value FROM settings WHERE key = ?");
    if (!s->Bind(key).Step()) return std::nullopt;
    return s->Text(0);
  }

  void PutSetting(const std::string& key, const std::string& value) override {
    auto s = Prepare(
        "INSERT INTO settings (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value");
    s->Bind(key, value).Run();
  }

  void DeleteSetting(const std::string& key) override {
    Prepare("DELETE FROM settings WHERE key = ?")->Bind(key).Run();
  }

 private:
  ScopedStatement Prepare(const std::string& sql) {
    Statement& statement = conn_.Cached(sql);
    if (read_only_ && !statement.ReadOnly()) {
      throw Error(codes::kTransferFailed,
                  "catalog: a change was attempted inside Read(); use Write() for changes");
    }
    return ScopedStatement(statement);
  }

  std::vector<Task> TasksOfJob(const std::string& job_id) {
    auto s = Prepare(
        Sql({"SELECT ", kTaskColumns, " FROM tasks t WHERE t.job_id = ? ORDER BY t.region"}));
    s->Bind(job_id);
    std::vector<Task> tasks;
    while (s->Step()) tasks.push_back(ReadTask(*s));
    return tasks;
  }

  static std::vector<std::string> Column0(Statement& s) {
    std::vector<std::string> values;
    while (s.Step()) values.push_back(s.Text(0));
    return values;
  }

  int Changes() { return sqlite3_changes(conn_.get()); }

  Connection& conn_;
  bool read_only_;
};

class SqliteCatalog final : public Catalog {
 public:
  SqliteCatalog(std::filesystem::path path, Connection conn)
      : path_(std::move(path)), conn_(std::move(conn)) {}

  void Write(const std::function<void(CatalogTx&)>& fn) override { Run(fn, /*write=*/true); }
  void Read(const std::function<void(CatalogTx&)>& fn) override { Run(fn, /*write=*/false); }

  int SchemaVersion() override {
    std::lock_guard lock(one_at_a_time_.mutex());
    return ReadUserVersion(conn_);
  }

  void Scrub() override {
    std::lock_guard lock(one_at_a_time_.mutex());
    // secure_delete (on for every connection) zeroed the deleted rows in their pages; the
    // checkpoint writes those pages into the database file and empties the log, which
    // still holds older copies of them.
    conn_.TryExec("PRAGMA wal_checkpoint(TRUNCATE)");
  }

  // On a connection of its own, so that readers and writers of this catalog never wait
  // behind the checkpoint's fsyncs (PASSIVE does not wait for them either).
  std::string Describe() const override { return path_.string(); }

  void Checkpoint() override {
    sqlite3* raw = nullptr;
    int rc =
        sqlite3_open_v2(path_.c_str(), &raw, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, nullptr);
    Connection conn(raw);  // owns the handle even when the open failed
    if (rc == SQLITE_OK) conn.TryExec("PRAGMA wal_checkpoint(PASSIVE)");
  }

 private:
  void Run(const std::function<void(CatalogTx&)>& fn, bool write) {
    one_at_a_time_.Run([&] {
      if (write) {
        ExecWhileBusy(conn_, "BEGIN IMMEDIATE");
      } else {
        conn_.Exec("BEGIN");
      }
      Transaction tx(conn_);
      SqliteTx catalog_tx(conn_, /*read_only=*/!write);
      fn(catalog_tx);
      if (write) FailPoint("catalog.commit");
      tx.Commit();
      if (write) FailPoint("catalog.committed");
    });
  }

  std::filesystem::path path_;
  OneTransactionAtATime one_at_a_time_;
  Connection conn_;
};

}  // namespace

std::optional<std::string> PeekSqliteCatalogSetting(const std::filesystem::path& path,
                                                    const std::string& key) {
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  if (!std::filesystem::exists(status)) return std::nullopt;
  // A FIFO would block the open, a device read from: only a file is looked into.
  if (!std::filesystem::is_regular_file(status)) throw std::runtime_error("not a regular file");
  sqlite3* raw = nullptr;
  // Read-only, and no file made: the other home may be in use, or may be a backup.
  const std::string uri = "file:" + path.string() + "?mode=ro";
  int rc = sqlite3_open_v2(uri.c_str(), &raw,
                           SQLITE_OPEN_READONLY | SQLITE_OPEN_URI | SQLITE_OPEN_NOMUTEX, nullptr);
  Connection conn(raw);
  if (rc != SQLITE_OK) {
    throw std::runtime_error(raw != nullptr ? sqlite3_errmsg(raw) : sqlite3_errstr(rc));
  }
  sqlite3_busy_timeout(raw, kBusyTimeoutMs);
  Statement s(raw, "SELECT value FROM settings WHERE key = ?");
  s.Bind(key);
  if (!s.Step()) return std::nullopt;
  return s.Text(0);
}

std::unique_ptr<Catalog> OpenSqliteCatalog(const std::filesystem::path& path) {
  namespace fs = std::filesystem;
  if (path.empty()) ThrowCannotOpen(path, "the path is empty");
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    ThrowCannotOpen(path, "it is a directory (use a file inside it, e.g. '" +
                              (path / "catalog.db").string() + "')");
  }
  const fs::path parent = path.parent_path();
  if (!parent.empty() && !fs::is_directory(parent, ec)) {
    fs::create_directories(parent, ec);
    if (ec) ThrowCannotOpen(path, "cannot create its directory: " + ec.message());
  }

  sqlite3* raw = nullptr;
  int rc =
      sqlite3_open_v2(path.c_str(), &raw,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
  Connection conn(raw);  // owns the handle even when the open failed
  if (rc != SQLITE_OK) {
    ThrowCannotOpen(path, raw != nullptr ? sqlite3_errmsg(raw) : sqlite3_errstr(rc));
  }
  if (sqlite3_db_readonly(raw, "main") == 1) ThrowCannotOpen(path, "the file is not writable");

  try {
    sqlite3_busy_timeout(raw, kBusyTimeoutMs);
    ExecWhileBusy(conn, "PRAGMA journal_mode = WAL");
    {
      Statement mode(raw, "PRAGMA journal_mode");
      if (!mode.Step() || mode.Text(0) != "wal") {
        ThrowCannotOpen(path,
                        "its file system does not support SQLite's WAL mode (use a "
                        "local disk)");
      }
    }
    conn.Exec("PRAGMA foreign_keys = ON");
    conn.Exec("PRAGMA secure_delete = ON");  // deleted rows leave no bytes behind
    conn.Exec("PRAGMA synchronous = NORMAL");
    // Checkpoints run when an engine is idle (Checkpoint()); commits fold the log in only
    // when it has grown past this many pages (16 MiB), should no engine ever be idle.
    conn.Exec("PRAGMA wal_autocheckpoint = 4096");
    Migrate(conn, path);
  } catch (const SqliteError& e) {
    if (IsOpenFailure(e.rc())) ThrowCannotOpen(path, e.sqlite_message());
    throw;
  }
  return std::make_unique<SqliteCatalog>(path, std::move(conn));
}

}  // namespace imagerelay
