// The PostgreSQL catalog (DESIGN.md §6, docs/scale-out.md): the same tables, the same
// compare-and-set statements as the SQLite catalog, shared by any number of hosts.
//
// Writers are serialised by one transaction-scoped advisory lock, taken first in every
// Write(): the same semantics as SQLite's BEGIN IMMEDIATE, so a read-check-write inside one
// Write() is atomic and the callback runs exactly once (no serialisation failures to retry,
// unlike SERIALIZABLE; see docs/scale-out.md for the measurements behind the choice). The
// lock is released only after the commit is visible, so each writer sees every earlier one.
// That also keeps the audit log gap-free and in commit order: an event's seq is MAX(seq)+1
// taken under the lock (a sequence would leave gaps on rollback, and hand out numbers in an
// order other than commits become visible).
// Read() is one REPEATABLE READ READ ONLY transaction: a consistent snapshot that never
// waits for writers. One connection per Catalog, guarded by a mutex; a lost connection is
// re-established at the next Write()/Read().
#include <algorithm>
#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "base/fail_point.hpp"
#include "catalog/catalog_columns.hpp"
#include "catalog/one_transaction_at_a_time.hpp"
#include "catalog/pg_connection.hpp"
#include "imagerelay/catalog.hpp"
#include "imagerelay/error.hpp"
#include "imagerelay/ids.hpp"
#include "imagerelay/log.hpp"

namespace imagerelay {
namespace {

using pg::Connection;
using pg::PgError;
using pg::Result;

// The advisory lock key every writer takes ("imgr").
constexpr int64_t kWriterLock = 0x696d6772;
// The channel every Write() notifies at its commit (SetChangeListener).
constexpr const char* kChannel = "imagerelay_changed";
// How long a Write()/Read() keeps trying to reach a server that went away before failing
// with Catalog.Unavailable (a restart of the server takes a few seconds).
constexpr auto kReconnectDeadline = std::chrono::seconds(30);
constexpr auto kMaxBackoff = std::chrono::milliseconds(1000);

// Run on every new connection. A writer waits at most lock_timeout for another (as the
// SQLite catalog's busy deadline); a session left idle inside a transaction (a host that
// vanished mid-write) is ended by the server so its lock does not stop every other host.
constexpr const char* kSessionSetup =
    "SET lock_timeout = '60s'; SET idle_in_transaction_session_timeout = '120s'; "
    "SET client_min_messages = warning";

// Schema migrations: kMigrations[i] takes version i to i + 1. Append, never edit. Version 1
// holds what the SQLite catalog's four migrations built. Text columns use the "C" collation
// so that listings sort as they do in SQLite (bytewise), whatever the database's locale.
constexpr const char* kMigrations[] = {
    R"sql(
CREATE TABLE regions (
  id TEXT COLLATE "C" PRIMARY KEY,
  name TEXT NOT NULL,
  store_uri TEXT NOT NULL
);
CREATE TABLE accounts (
  id TEXT COLLATE "C" PRIMARY KEY,
  name TEXT NOT NULL
);
CREATE TABLE images (
  id TEXT COLLATE "C" PRIMARY KEY,
  name TEXT COLLATE "C" NOT NULL,
  region TEXT COLLATE "C" NOT NULL,
  type TEXT NOT NULL,
  owner TEXT COLLATE "C" NOT NULL,
  status TEXT NOT NULL,
  size BIGINT NOT NULL,
  digest TEXT NOT NULL,
  format TEXT NOT NULL,
  os_type TEXT NOT NULL,
  os_name TEXT NOT NULL,
  os_version TEXT NOT NULL,
  os_arch TEXT NOT NULL,
  description TEXT NOT NULL,
  created_us BIGINT NOT NULL,
  source_image_id TEXT COLLATE "C" NOT NULL,
  source_region TEXT COLLATE "C" NOT NULL,
  error TEXT NOT NULL,
  virtual_size BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX images_by_region ON images (region, created_us);
CREATE TABLE shares (
  image_id TEXT COLLATE "C" NOT NULL REFERENCES images (id),
  account TEXT COLLATE "C" NOT NULL,
  created_us BIGINT NOT NULL DEFAULT 0,
  PRIMARY KEY (image_id, account)
);
CREATE INDEX shares_by_account ON shares (account);
CREATE TABLE jobs (
  id TEXT COLLATE "C" PRIMARY KEY,
  account TEXT COLLATE "C" NOT NULL,
  source_image_id TEXT COLLATE "C" NOT NULL,
  source_region TEXT COLLATE "C" NOT NULL,
  name TEXT NOT NULL,
  client_token TEXT NOT NULL,
  created_us BIGINT NOT NULL
);
CREATE INDEX jobs_by_account ON jobs (account, created_us);
CREATE TABLE tasks (
  dest_image_id TEXT COLLATE "C" PRIMARY KEY,
  job_id TEXT COLLATE "C" NOT NULL REFERENCES jobs (id),
  region TEXT COLLATE "C" NOT NULL,
  state TEXT NOT NULL,
  bytes_total BIGINT NOT NULL,
  bytes_done BIGINT NOT NULL,
  bytes_transferred BIGINT NOT NULL,
  chunks_total BIGINT NOT NULL,
  chunks_skipped BIGINT NOT NULL,
  rate DOUBLE PRECISION NOT NULL,
  attempts BIGINT NOT NULL,
  error TEXT NOT NULL,
  error_code TEXT NOT NULL,
  started_us BIGINT NOT NULL,
  finished_us BIGINT NOT NULL,
  lease_owner TEXT NOT NULL,
  lease_expires_us BIGINT NOT NULL,
  bytes_sent BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX tasks_by_job ON tasks (job_id, region);
CREATE INDEX tasks_by_state ON tasks (state);
CREATE TABLE events (
  seq BIGINT PRIMARY KEY,
  time_us BIGINT NOT NULL,
  type TEXT NOT NULL,
  account TEXT NOT NULL,
  image_id TEXT COLLATE "C" NOT NULL,
  job_id TEXT NOT NULL,
  region TEXT NOT NULL,
  detail_json TEXT NOT NULL
);
CREATE INDEX events_by_image ON events (image_id, seq);
CREATE TABLE client_tokens (
  account TEXT COLLATE "C" NOT NULL,
  token TEXT COLLATE "C" NOT NULL,
  job_id TEXT NOT NULL,
  fingerprint TEXT NOT NULL,
  PRIMARY KEY (account, token)
);
CREATE TABLE sweep (
  region TEXT COLLATE "C" PRIMARY KEY,
  needed BIGINT NOT NULL DEFAULT 0,
  holder TEXT,
  expires_us BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE settings (
  key TEXT COLLATE "C" PRIMARY KEY,
  value TEXT NOT NULL
);
CREATE TABLE manifest_digests (
  image_id TEXT COLLATE "C" PRIMARY KEY,
  digest TEXT NOT NULL
);
)sql",
};
constexpr int kLatestVersion = static_cast<int>(std::size(kMigrations));

using catalog_columns::kEventColumns;
using catalog_columns::kImageColumns;
using catalog_columns::kJobColumns;
using catalog_columns::kTaskColumns;
using catalog_columns::Sql;

[[noreturn]] void ThrowCorrupt(const std::string& what) {
  throw Error(codes::kTransferFailed, "catalog: unreadable row: " + what);
}

// Reports an unreadable row once per process (listings skip it every time they meet it).
void ReportSkippedRow(const std::string& what) {
  static std::mutex mutex;
  static std::vector<std::string> reported;
  std::lock_guard lock(mutex);
  if (std::find(reported.begin(), reported.end(), what) != reported.end()) return;
  reported.push_back(what);
  Log(LogLevel::kWarning,
      what + "; the row is left out of listings, the rest of the catalog stays usable");
}

Image ReadImage(const Result& r, int row) {
  Image image;
  image.id = r.Text(row, 0);
  image.name = r.Text(row, 1);
  image.region = r.Text(row, 2);
  auto type = ParseImageType(r.Text(row, 3));
  if (!type) ThrowCorrupt("image " + image.id + " has type '" + r.Text(row, 3) + "'");
  image.type = *type;
  image.owner = r.Text(row, 4);
  auto status = ParseImageStatus(r.Text(row, 5));
  if (!status) ThrowCorrupt("image " + image.id + " has status '" + r.Text(row, 5) + "'");
  image.status = *status;
  image.size = r.Uint(row, 6);
  image.digest = r.Text(row, 7);
  image.format = r.Text(row, 8);
  image.os_type = r.Text(row, 9);
  image.os_name = r.Text(row, 10);
  image.os_version = r.Text(row, 11);
  image.os_arch = r.Text(row, 12);
  image.description = r.Text(row, 13);
  image.created_us = r.Int(row, 14);
  image.source_image_id = r.Text(row, 15);
  image.source_region = r.Text(row, 16);
  image.error = r.Text(row, 17);
  image.virtual_size = r.Uint(row, 18);
  return image;
}

Task ReadTask(const Result& r, int row) {
  Task task;
  task.dest_image_id = r.Text(row, 0);
  task.job_id = r.Text(row, 1);
  task.region = r.Text(row, 2);
  auto state = ParseTaskState(r.Text(row, 3));
  if (!state) ThrowCorrupt("task " + task.dest_image_id + " has state '" + r.Text(row, 3) + "'");
  task.state = *state;
  task.bytes_total = r.Uint(row, 4);
  task.bytes_done = r.Uint(row, 5);
  task.bytes_transferred = r.Uint(row, 6);
  task.chunks_total = r.Uint(row, 7);
  task.chunks_skipped = r.Uint(row, 8);
  task.rate = r.Double(row, 9);
  task.attempts = static_cast<int>(r.Int(row, 10));
  task.error = r.Text(row, 11);
  task.error_code = r.Text(row, 12);
  task.started_us = r.Int(row, 13);
  task.finished_us = r.Int(row, 14);
  task.lease_owner = r.Text(row, 15);
  task.lease_expires_us = r.Int(row, 16);
  task.bytes_sent = r.Uint(row, 17);
  return task;
}

Job ReadJob(const Result& r, int row) {
  Job job;
  job.id = r.Text(row, 0);
  job.account = r.Text(row, 1);
  job.source_image_id = r.Text(row, 2);
  job.source_region = r.Text(row, 3);
  job.name = r.Text(row, 4);
  job.client_token = r.Text(row, 5);
  job.created_us = r.Int(row, 6);
  return job;
}

Event ReadEvent(const Result& r, int row) {
  Event event;
  event.seq = r.Int(row, 0);
  event.time_us = r.Int(row, 1);
  event.type = r.Text(row, 2);
  event.account = r.Text(row, 3);
  event.image_id = r.Text(row, 4);
  event.job_id = r.Text(row, 5);
  event.region = r.Text(row, 6);
  event.detail_json = r.Text(row, 7);
  return event;
}

std::vector<std::string> Column0(const Result& r) {
  std::vector<std::string> values;
  for (int i = 0; i < r.Rows(); ++i) values.push_back(r.Text(i, 0));
  return values;
}

class PostgresTx final : public CatalogTx {
 public:
  explicit PostgresTx(Connection& conn) : c_(conn) {}

  bool InsertRegion(const Region& region) override {
    return c_.Run(
                 "INSERT INTO regions (id, name, store_uri) VALUES ($1, $2, $3) "
                 "ON CONFLICT (id) DO NOTHING",
                 region.id, region.name, region.store_uri)
               .Changed() == 1;
  }

  std::optional<Region> GetRegion(const std::string& id) override {
    auto r = c_.Run("SELECT id, name, store_uri FROM regions WHERE id = $1", id);
    if (r.Rows() == 0) return std::nullopt;
    return Region{r.Text(0, 0), r.Text(0, 1), r.Text(0, 2)};
  }

  std::vector<Region> ListRegions() override {
    auto r = c_.Run("SELECT id, name, store_uri FROM regions ORDER BY id");
    std::vector<Region> regions;
    for (int i = 0; i < r.Rows(); ++i)
      regions.push_back({r.Text(i, 0), r.Text(i, 1), r.Text(i, 2)});
    return regions;
  }

  bool InsertAccount(const Account& account) override {
    return c_.Run("INSERT INTO accounts (id, name) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
                  account.id, account.name)
               .Changed() == 1;
  }

  std::optional<Account> GetAccount(const std::string& id) override {
    auto r = c_.Run("SELECT id, name FROM accounts WHERE id = $1", id);
    if (r.Rows() == 0) return std::nullopt;
    return Account{r.Text(0, 0), r.Text(0, 1)};
  }

  std::vector<Account> ListAccounts() override {
    auto r = c_.Run("SELECT id, name FROM accounts ORDER BY id");
    std::vector<Account> accounts;
    for (int i = 0; i < r.Rows(); ++i) accounts.push_back({r.Text(i, 0), r.Text(i, 1)});
    return accounts;
  }

  bool DeleteRegion(const std::string& id) override {
    c_.Run("DELETE FROM sweep WHERE region = $1", id);
    return c_.Run("DELETE FROM regions WHERE id = $1", id).Changed() == 1;
  }

  bool SetRegionStore(const std::string& id, const std::string& store_uri) override {
    return c_.Run("UPDATE regions SET store_uri = $1 WHERE id = $2", store_uri, id).Changed() == 1;
  }

  bool DeleteAccount(const std::string& id) override {
    c_.Run("DELETE FROM client_tokens WHERE account = $1", id);
    return c_.Run("DELETE FROM accounts WHERE id = $1", id).Changed() == 1;
  }

  bool InsertImage(const Image& i) override {
    return c_.Run(Sql({"INSERT INTO images (", kImageColumns,
                       ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, "
                       "$15, $16, $17, $18, $19) ON CONFLICT (id) DO NOTHING"}),
                  i.id, i.name, i.region, ToString(i.type), i.owner, ToString(i.status), i.size,
                  i.digest, i.format, i.os_type, i.os_name, i.os_version, i.os_arch, i.description,
                  i.created_us, i.source_image_id, i.source_region, i.error, i.virtual_size)
               .Changed() == 1;
  }

  std::optional<Image> GetImage(const std::string& id) override {
    auto r = c_.Run(Sql({"SELECT ", kImageColumns, " FROM images WHERE id = $1"}), id);
    if (r.Rows() == 0) return std::nullopt;
    return ReadImage(r, 0);
  }

  std::vector<Image> ListImages(const ImageFilter& filter) override {
    std::string sql = Sql({"SELECT ", kImageColumns, " FROM images WHERE status <> $1"});
    std::vector<pg::Param> params{std::string(ToString(ImageStatus::kDeleted))};
    if (filter.region) {
      params.emplace_back(*filter.region);
      sql += " AND region = $" + std::to_string(params.size());
    }
    if (filter.name) {
      params.emplace_back(*filter.name);
      sql += " AND name = $" + std::to_string(params.size());
    }
    sql += " ORDER BY created_us, id";
    auto r = c_.Query(sql, params);
    std::vector<Image> images;
    for (int i = 0; i < r.Rows(); ++i) {
      // One unreadable row must not make the whole catalog unusable (as in SQLite).
      try {
        images.push_back(ReadImage(r, i));
      } catch (const Error& e) {
        ReportSkippedRow(e.message());
      }
    }
    return images;
  }

  void UpdateImageFields(const Image& i) override {
    auto r = c_.Run(
        "UPDATE images SET name = $1, region = $2, type = $3, owner = $4, size = $5, "
        "digest = $6, format = $7, os_type = $8, os_name = $9, os_version = $10, "
        "os_arch = $11, description = $12, created_us = $13, source_image_id = $14, "
        "source_region = $15, error = $16, virtual_size = $17 WHERE id = $18",
        i.name, i.region, ToString(i.type), i.owner, i.size, i.digest, i.format, i.os_type,
        i.os_name, i.os_version, i.os_arch, i.description, i.created_us, i.source_image_id,
        i.source_region, i.error, i.virtual_size, i.id);
    if (r.Changed() != 1) {
      ThrowCode(codes::kNoSuchImage, "catalog: no image " + i.id + " to update");
    }
  }

  bool TransitionImage(const std::string& id, ImageStatus expected, ImageEvent event) override {
    auto next = Transition(expected, event);
    if (!next) return false;
    return c_.Run("UPDATE images SET status = $1 WHERE id = $2 AND status = $3", ToString(*next),
                  id, ToString(expected))
               .Changed() == 1;
  }

  bool InsertShare(const std::string& image_id, const std::string& account) override {
    return c_.Run(
                 "INSERT INTO shares (image_id, account, created_us) VALUES ($1, $2, $3) "
                 "ON CONFLICT (image_id, account) DO NOTHING",
                 image_id, account, NowUs())
               .Changed() == 1;
  }

  bool DeleteShare(const std::string& image_id, const std::string& account) override {
    return c_.Run("DELETE FROM shares WHERE image_id = $1 AND account = $2", image_id, account)
               .Changed() == 1;
  }

  std::vector<std::string> ListShares(const std::string& image_id) override {
    return Column0(
        c_.Run("SELECT account FROM shares WHERE image_id = $1 ORDER BY account", image_id));
  }

  std::optional<TimeUs> ShareTime(const std::string& image_id,
                                  const std::string& account) override {
    auto r = c_.Run("SELECT created_us FROM shares WHERE image_id = $1 AND account = $2", image_id,
                    account);
    if (r.Rows() == 0) return std::nullopt;
    return r.Int(0, 0);
  }

  int CountAcceptedShares(const std::string& account, const std::string& region) override {
    auto r = c_.Run(
        "SELECT COUNT(*) FROM shares s JOIN images i ON i.id = s.image_id "
        "WHERE s.account = $1 AND i.region = $2 AND i.status <> $3",
        account, region, ToString(ImageStatus::kDeleted));
    return static_cast<int>(r.Int(0, 0));
  }

  std::vector<std::string> ImagesSharedWith(const std::string& account) override {
    return Column0(
        c_.Run("SELECT s.image_id FROM shares s JOIN images i ON i.id = s.image_id "
               "WHERE s.account = $1 AND i.status <> $2 ORDER BY i.created_us, i.id",
               account, ToString(ImageStatus::kDeleted)));
  }

  void InsertJob(const Job& job) override {
    c_.Run(Sql({"INSERT INTO jobs (", kJobColumns, ") VALUES ($1, $2, $3, $4, $5, $6, $7)"}),
           job.id, job.account, job.source_image_id, job.source_region, job.name, job.client_token,
           job.created_us);
    for (const Task& t : job.tasks) {
      c_.Run(
          "INSERT INTO tasks (dest_image_id, job_id, region, state, bytes_total, bytes_done, "
          "bytes_transferred, chunks_total, chunks_skipped, rate, attempts, error, error_code, "
          "started_us, finished_us, lease_owner, lease_expires_us, bytes_sent) VALUES ($1, $2, "
          "$3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)",
          t.dest_image_id, job.id, t.region, ToString(t.state), t.bytes_total, t.bytes_done,
          t.bytes_transferred, t.chunks_total, t.chunks_skipped, t.rate, t.attempts, t.error,
          t.error_code, t.started_us, t.finished_us, t.lease_owner, t.lease_expires_us,
          t.bytes_sent);
    }
  }

  std::optional<Job> GetJob(const std::string& id) override {
    auto r = c_.Run(Sql({"SELECT ", kJobColumns, " FROM jobs WHERE id = $1"}), id);
    if (r.Rows() == 0) return std::nullopt;
    Job job = ReadJob(r, 0);
    job.tasks = TasksOfJob(job.id);
    return job;
  }

  std::vector<Job> ListJobs(const std::string& account) override {
    auto r =
        account.empty()
            ? c_.Run(Sql({"SELECT ", kJobColumns, " FROM jobs ORDER BY created_us DESC, id DESC"}))
            : c_.Run(Sql({"SELECT ", kJobColumns,
                          " FROM jobs WHERE account = $1 ORDER BY created_us DESC, id DESC"}),
                     account);
    std::vector<Job> jobs;
    for (int i = 0; i < r.Rows(); ++i) jobs.push_back(ReadJob(r, i));
    for (Job& job : jobs) job.tasks = TasksOfJob(job.id);
    return jobs;
  }

  std::optional<Task> GetTaskByDestImage(const std::string& dest_image_id) override {
    auto r = c_.Run(Sql({"SELECT ", kTaskColumns, " FROM tasks t WHERE t.dest_image_id = $1"}),
                    dest_image_id);
    if (r.Rows() == 0) return std::nullopt;
    return ReadTask(r, 0);
  }

  std::vector<Task> ListTasksInStates(const std::vector<TaskState>& states) override {
    if (states.empty()) return {};
    std::string sql = Sql({"SELECT ", kTaskColumns,
                           " FROM tasks t JOIN jobs j ON j.id = t.job_id WHERE t.state IN ("});
    std::vector<pg::Param> params;
    for (TaskState state : states) {
      params.emplace_back(std::string(ToString(state)));
      sql += (params.size() == 1 ? "$" : ", $") + std::to_string(params.size());
    }
    sql += ") ORDER BY j.created_us, j.id, t.region";
    auto r = c_.Query(sql, params);
    std::vector<Task> tasks;
    for (int i = 0; i < r.Rows(); ++i) tasks.push_back(ReadTask(r, i));
    return tasks;
  }

  void UpdateTaskFields(const Task& t) override {
    auto r = c_.Run(
        "UPDATE tasks SET bytes_total = $1, bytes_done = $2, bytes_transferred = $3, "
        "chunks_total = $4, chunks_skipped = $5, rate = $6, attempts = $7, error = $8, "
        "error_code = $9, started_us = $10, finished_us = $11, lease_owner = $12, "
        "lease_expires_us = $13, bytes_sent = $14 WHERE dest_image_id = $15",
        t.bytes_total, t.bytes_done, t.bytes_transferred, t.chunks_total, t.chunks_skipped, t.rate,
        t.attempts, t.error, t.error_code, t.started_us, t.finished_us, t.lease_owner,
        t.lease_expires_us, t.bytes_sent, t.dest_image_id);
    if (r.Changed() != 1) {
      ThrowCode(codes::kNoSuchJob, "catalog: no task for image " + t.dest_image_id + " to update");
    }
  }

  bool TransitionTask(const std::string& dest_image_id, TaskState expected,
                      TaskEvent event) override {
    auto next = Transition(expected, event);
    if (!next) return false;
    return c_.Run("UPDATE tasks SET state = $1 WHERE dest_image_id = $2 AND state = $3",
                  ToString(*next), dest_image_id, ToString(expected))
               .Changed() == 1;
  }

  std::optional<ClientTokenRecord> GetClientToken(const std::string& account,
                                                  const std::string& token) override {
    auto r =
        c_.Run("SELECT job_id, fingerprint FROM client_tokens WHERE account = $1 AND token = $2",
               account, token);
    if (r.Rows() == 0) return std::nullopt;
    return ClientTokenRecord{r.Text(0, 0), r.Text(0, 1)};
  }

  void InsertClientToken(const std::string& account, const std::string& token,
                         const ClientTokenRecord& record) override {
    c_.Run(
        "INSERT INTO client_tokens (account, token, job_id, fingerprint) VALUES ($1, $2, $3, $4)",
        account, token, record.job_id, record.fingerprint);
  }

  int64_t AppendEvent(const Event& e) override {
    // MAX(seq) + 1 under the writer lock: gap-free and in commit order (see the top).
    auto r = c_.Run(
        "INSERT INTO events (seq, time_us, type, account, image_id, job_id, region, detail_json) "
        "SELECT COALESCE(MAX(seq), 0) + 1, $1::bigint, $2::text, $3::text, $4::text, $5::text, "
        "$6::text, $7::text FROM events RETURNING seq",
        e.time_us, e.type, e.account, e.image_id, e.job_id, e.region, e.detail_json);
    return r.Int(0, 0);
  }

  std::vector<Event> ListEvents(int64_t since, const std::optional<std::string>& image_id,
                                int limit) override {
    // LIMIT NULL is no limit.
    const std::optional<int64_t> sql_limit =
        limit <= 0 ? std::nullopt : std::optional<int64_t>(limit);
    const pg::Param limit_param = sql_limit ? pg::ToParam(*sql_limit) : std::nullopt;
    auto r = image_id ? c_.Query(Sql({"SELECT ", kEventColumns,
                                      " FROM events WHERE image_id = $1 AND seq > $2 "
                                      "ORDER BY seq LIMIT $3"}),
                                 {*image_id, pg::ToParam(since), limit_param})
                      : c_.Query(Sql({"SELECT ", kEventColumns,
                                      " FROM events WHERE seq > $1 ORDER BY seq LIMIT $2"}),
                                 {pg::ToParam(since), limit_param});
    std::vector<Event> events;
    for (int i = 0; i < r.Rows(); ++i) events.push_back(ReadEvent(r, i));
    return events;
  }

  bool AcquireSweepLease(const std::string& region, const std::string& holder,
                         TimeUs expires_us) override {
    return c_.Run(
                 "INSERT INTO sweep (region, needed, holder, expires_us) VALUES ($1, 0, $2, $3) "
                 "ON CONFLICT (region) DO UPDATE SET holder = excluded.holder, "
                 "expires_us = excluded.expires_us "
                 "WHERE sweep.holder IS NULL OR sweep.holder = '' "
                 "OR sweep.holder = excluded.holder OR sweep.expires_us < $4",
                 region, holder, expires_us, NowUs())
               .Changed() == 1;
  }

  void ReleaseSweepLease(const std::string& region, const std::string& holder) override {
    c_.Run("UPDATE sweep SET holder = NULL, expires_us = 0 WHERE region = $1 AND holder = $2",
           region, holder);
  }

  void SetSweepNeeded(const std::string& region, bool needed) override {
    // `needed` counts the requests, so that a sweep can tell whether one came while it ran.
    c_.Run(
        "INSERT INTO sweep (region, needed) VALUES ($1, $2::bigint) "
        "ON CONFLICT (region) DO UPDATE SET needed = "
        "CASE WHEN $2::bigint = 0 THEN 0 ELSE sweep.needed + 1 END",
        region, needed ? 1 : 0);
  }

  std::vector<std::string> RegionsNeedingSweep() override {
    return Column0(c_.Run("SELECT region FROM sweep WHERE needed <> 0 ORDER BY region"));
  }

  int64_t SweepNeededMark(const std::string& region) override {
    auto r = c_.Run("SELECT needed FROM sweep WHERE region = $1", region);
    return r.Rows() == 0 ? 0 : r.Int(0, 0);
  }

  void ClearSweepNeeded(const std::string& region, int64_t mark) override {
    c_.Run("UPDATE sweep SET needed = 0 WHERE region = $1 AND needed = $2", region, mark);
  }

  std::optional<std::pair<std::string, TimeUs>> GetSweepLease(const std::string& region) override {
    auto r = c_.Run(
        "SELECT holder, expires_us FROM sweep WHERE region = $1 AND holder IS NOT NULL AND "
        "holder <> ''",
        region);
    if (r.Rows() == 0) return std::nullopt;
    return std::make_pair(r.Text(0, 0), r.Int(0, 1));
  }

  void PutManifestDigest(const std::string& image_id, const std::string& digest) override {
    c_.Run(
        "INSERT INTO manifest_digests (image_id, digest) VALUES ($1, $2) "
        "ON CONFLICT (image_id) DO UPDATE SET digest = excluded.digest",
        image_id, digest);
  }

  std::optional<std::string> GetManifestDigest(const std::string& image_id) override {
    auto r = c_.Run("SELECT digest FROM manifest_digests WHERE image_id = $1", image_id);
    if (r.Rows() == 0) return std::nullopt;
    return r.Text(0, 0);
  }

  std::optional<std::string> GetSetting(const std::string& key) override {
    auto r = c_.Run("SELECT value FROM settings WHERE key = $1", key);
    if (r.Rows() == 0) return std::nullopt;
    return r.Text(0, 0);
  }

  void PutSetting(const std::string& key, const std::string& value) override {
    c_.Run(
        "INSERT INTO settings (key, value) VALUES ($1, $2) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        key, value);
  }

  void DeleteSetting(const std::string& key) override {
    c_.Run("DELETE FROM settings WHERE key = $1", key);
  }

 private:
  std::vector<Task> TasksOfJob(const std::string& job_id) {
    auto r = c_.Run(
        Sql({"SELECT ", kTaskColumns, " FROM tasks t WHERE t.job_id = $1 ORDER BY t.region"}),
        job_id);
    std::vector<Task> tasks;
    for (int i = 0; i < r.Rows(); ++i) tasks.push_back(ReadTask(r, i));
    return tasks;
  }

  Connection& c_;
};

std::string LockSql(std::string_view function) {
  return "SELECT " + std::string(function) + "(" + std::to_string(kWriterLock) + ")";
}

class PostgresCatalog final : public Catalog {
 public:
  explicit PostgresCatalog(std::string uri) : uri_(std::move(uri)) {
    conn_ = std::make_unique<Connection>(uri_);
    conn_->Exec(kSessionSetup);
    writer_pid_ = conn_->BackendPid();
    Migrate();
  }

  void Write(const std::function<void(CatalogTx&)>& fn) override { Run(fn, /*write=*/true); }
  void Read(const std::function<void(CatalogTx&)>& fn) override { Run(fn, /*write=*/false); }

  int SchemaVersion() override {
    std::lock_guard lock(one_at_a_time_.mutex());
    EnsureConnected();
    return ReadVersion();
  }

  // Deleted rows stay in the table's pages until a vacuum rewrites them; VACUUM FULL of the
  // settings table (where secrets were kept) drops them. Copies in the server's write-ahead
  // log and in its backups are the server operator's to manage (docs/scale-out.md).
  void Scrub() override {
    std::lock_guard lock(one_at_a_time_.mutex());
    try {
      EnsureConnected();
      conn_->Exec("VACUUM FULL settings");
    } catch (const Error& e) {
      Log(LogLevel::kWarning, "catalog: could not vacuum the settings table: " + e.message());
    }
  }

  std::string Describe() const override { return pg::RedactConninfo(uri_); }

  ~PostgresCatalog() override { SetChangeListener(nullptr); }

  void SetChangeListener(std::function<void()> on_change) override {
    std::lock_guard lock(listener_mu_);
    if (listener_.joinable()) {
      stop_listening_ = true;
      listener_.join();
    }
    stop_listening_ = false;
    if (on_change) listener_ = std::thread([this, on_change] { Listen(on_change); });
  }

 private:
  // A new connection if the last one was lost, trying until kReconnectDeadline.
  void EnsureConnected() {
    if (!conn_->Ok()) RetryWhileUnavailable([] {});
  }

  // Runs `step` until it does not fail with Catalog.Unavailable, reconnecting in between,
  // for at most kReconnectDeadline. Only for steps that change nothing when they fail.
  void RetryWhileUnavailable(const std::function<void()>& step) {
    thread_local std::minstd_rand rng(std::random_device{}());
    const auto deadline = std::chrono::steady_clock::now() + kReconnectDeadline;
    auto backoff = std::chrono::milliseconds(50);
    bool lost = false;  // libpq may not have noticed yet that the session is gone
    for (;;) {
      try {
        if (lost || !conn_->Ok()) {
          conn_->Reconnect();
          conn_->Exec(kSessionSetup);
          writer_pid_ = conn_->BackendPid();
        }
        step();
        return;
      } catch (const PgError& e) {
        if (e.code() != codes::kCatalogUnavailable ||
            std::chrono::steady_clock::now() >= deadline) {
          throw;
        }
        lost = true;
      }
      std::uniform_int_distribution<int> jitter(0, static_cast<int>(backoff.count()));
      std::this_thread::sleep_for(backoff + std::chrono::milliseconds(jitter(rng)));
      backoff = std::min(backoff * 2, kMaxBackoff);
    }
  }

  int ReadVersion() {
    // A scan of pg_tables, not to_regclass(): that may answer from a cache of "no such
    // table" that another host's migration made stale while this one waited for the lock.
    auto exists = conn_->Exec(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = current_schema() "
        "AND tablename = 'imagerelay_schema')");
    if (exists.Text(0, 0) != "t") return 0;
    auto r = conn_->Exec("SELECT MAX(version) FROM imagerelay_schema");
    return r.Rows() == 0 ? 0 : static_cast<int>(r.Int(0, 0));
  }

  void CheckNotNewer(int version) {
    if (version > kLatestVersion) {
      throw ValidationError(codes::kInvalidParameter,
                            "the catalog " + Describe() + " has schema version " +
                                std::to_string(version) + ", newer than this imagerelay knows (" +
                                std::to_string(kLatestVersion) +
                                "); open it with a newer imagerelay");
    }
  }

  void Migrate() {
    int version = ReadVersion();
    CheckNotNewer(version);
    if (version == kLatestVersion) return;
    // Under the writer lock: hosts that open a new catalog at once migrate it once.
    conn_->Exec("BEGIN; " + LockSql("pg_advisory_xact_lock"));
    try {
      version = ReadVersion();
      CheckNotNewer(version);
      conn_->Exec("CREATE TABLE IF NOT EXISTS imagerelay_schema (version INTEGER NOT NULL)");
      for (int v = version; v < kLatestVersion; ++v) conn_->Exec(kMigrations[v]);
      conn_->Exec("DELETE FROM imagerelay_schema; INSERT INTO imagerelay_schema VALUES (" +
                  std::to_string(kLatestVersion) + ")");
      FailPoint("catalog.migrate");
      conn_->Exec("COMMIT");
    } catch (...) {
      RollBack();
      throw;
    }
  }

  void RollBack() {
    if (conn_->Ok() && conn_->InTransaction()) {
      try {
        conn_->Exec("ROLLBACK");
      } catch (const Error&) {
        // the connection went away meanwhile: the server rolled back itself
      }
    }
  }

  void Run(const std::function<void(CatalogTx&)>& fn, bool write) {
    one_at_a_time_.Run([&] {
      // Nothing has run yet when BEGIN fails: it is safe to reconnect and try again.
      RetryWhileUnavailable([&] {
        conn_->Exec(write ? "BEGIN; " + LockSql("pg_advisory_xact_lock")
                          : std::string("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"));
      });
      try {
        PostgresTx tx(*conn_);
        fn(tx);
        if (write) {
          conn_->Exec(std::string("NOTIFY ") + kChannel);  // delivered at the commit
          FailPoint("catalog.commit");
        }
        conn_->Exec("COMMIT");
        if (write) FailPoint("catalog.committed");
      } catch (const PgError& e) {
        RollBack();
        if (!write && e.sqlstate() == "25006") {  // read_only_sql_transaction
          throw Error(codes::kTransferFailed,
                      "catalog: a change was attempted inside Read(); use Write() for changes");
        }
        throw;
      } catch (...) {
        RollBack();
        throw;
      }
    });
  }

  // The listener thread: LISTEN on a connection of its own, reconnecting when it is lost
  // (and then calling on_change once: a change may have come meanwhile).
  void Listen(const std::function<void()>& on_change) {
    std::unique_ptr<Connection> conn;
    while (!stop_listening_) {
      try {
        if (!conn || !conn->Ok()) {
          conn = std::make_unique<Connection>(uri_);
          conn->Exec(std::string("LISTEN ") + kChannel);
          on_change();
        }
        // This catalog's own commits wake its engine already.
        if (conn->WaitForNotifications(250, writer_pid_.load()) > 0) on_change();
      } catch (const Error&) {
        conn.reset();
        for (int i = 0; i < 8 && !stop_listening_; ++i) {
          std::this_thread::sleep_for(std::chrono::milliseconds(125));
        }
      }
    }
  }

  std::string uri_;
  OneTransactionAtATime one_at_a_time_;
  std::unique_ptr<Connection> conn_;
  std::mutex listener_mu_;  // SetChangeListener
  std::thread listener_;
  std::atomic<bool> stop_listening_{false};
  std::atomic<int> writer_pid_{0};  // conn_'s server process
};

}  // namespace

bool IsPostgresCatalog(std::string_view spec) {
  return spec.starts_with("postgresql://") || spec.starts_with("postgres://");
}

std::string RedactCatalogUri(std::string_view spec) { return pg::RedactConninfo(spec); }

std::unique_ptr<Catalog> OpenPostgresCatalog(const std::string& uri) {
  if (!IsPostgresCatalog(uri)) {
    throw ValidationError(codes::kInvalidParameter,
                          "catalog " + Quote(RedactCatalogUri(uri)) +
                              " is not a PostgreSQL URI; give postgresql://[user@]host[:port]/"
                              "database (the password from ~/.pgpass or $PGPASSWORD)");
  }
  return std::make_unique<PostgresCatalog>(uri);
}

}  // namespace imagerelay
