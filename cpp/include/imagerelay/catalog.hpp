// The catalog (DESIGN.md §6): regions, accounts, images, shares, jobs, tasks, events and
// client tokens. An interface with two implementations: SQLite (sqlite_catalog.cpp, a file
// in the home, the default) and PostgreSQL (postgres_catalog.cpp, one catalog shared by
// several hosts: docs/scale-out.md).
//
// Every access happens inside a transaction: Write() runs a function in one write
// transaction (serialised across threads and processes, retried while the database is
// busy, rolled back if the function throws); Read() in one read transaction.
// Status changes are compare-and-set: they name the status they expect and report whether
// they won, so two processes can never both win a conflicting change.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "imagerelay/model.hpp"
#include "imagerelay/state.hpp"

namespace imagerelay {

struct ImageFilter {
  std::optional<std::string> region;
  std::optional<std::string> name;
};

struct ClientTokenRecord {
  std::string job_id;
  std::string fingerprint;  // canonical form of the request's arguments
};

// Data access within one open transaction. Not thread-safe; never kept past the callback.
class CatalogTx {
 public:
  virtual ~CatalogTx() = default;

  // Regions and accounts. Insert returns false if the id is taken.
  virtual bool InsertRegion(const Region& region) = 0;
  virtual std::optional<Region> GetRegion(const std::string& id) = 0;
  virtual std::vector<Region> ListRegions() = 0;
  virtual bool InsertAccount(const Account& account) = 0;
  virtual std::optional<Account> GetAccount(const std::string& id) = 0;
  virtual std::vector<Account> ListAccounts() = 0;
  // Remove the row (and a region's sweep state, an account's client tokens); false if there
  // was none. Images, jobs and events that name them stay: ids are never reused that way.
  virtual bool DeleteRegion(const std::string& id) = 0;
  // Points the region at another store URI (a home moved, a store moved by its operator);
  // false if there is no such region.
  virtual bool SetRegionStore(const std::string& id, const std::string& store_uri) = 0;
  virtual bool DeleteAccount(const std::string& id) = 0;

  // Images. Deleted images stay as rows (status Deleted) so that ids are never reused;
  // GetImage returns them, ListImages never does. Listing is ordered by created_us, id.
  virtual bool InsertImage(const Image& image) = 0;  // false if the id was ever used
  virtual std::optional<Image> GetImage(const std::string& id) = 0;
  virtual std::vector<Image> ListImages(const ImageFilter& filter) = 0;
  // Writes every field but id and status.
  virtual void UpdateImageFields(const Image& image) = 0;
  // Compare-and-set through the transition table: true if the image was in `expected`, the
  // event is allowed from it, and the row now holds the new status.
  virtual bool TransitionImage(const std::string& id, ImageStatus expected, ImageEvent event) = 0;

  // Shares: (image, account) pairs.
  virtual bool InsertShare(const std::string& image_id, const std::string& account) = 0;
  virtual bool DeleteShare(const std::string& image_id, const std::string& account) = 0;
  virtual std::vector<std::string> ListShares(const std::string& image_id) = 0;  // sorted
  // When the image was shared with the account (0 for shares older than this record), if it
  // is shared with it.
  virtual std::optional<TimeUs> ShareTime(const std::string& image_id,
                                          const std::string& account) = 0;
  // Non-deleted images in `region` shared with `account`.
  virtual int CountAcceptedShares(const std::string& account, const std::string& region) = 0;
  virtual std::vector<std::string> ImagesSharedWith(const std::string& account) = 0;

  // Jobs and tasks. A job's tasks are ordered by region.
  virtual void InsertJob(const Job& job) = 0;  // tasks included
  virtual std::optional<Job> GetJob(const std::string& id) = 0;
  // Jobs of `account` (all accounts if empty), newest first.
  virtual std::vector<Job> ListJobs(const std::string& account) = 0;
  virtual std::optional<Task> GetTaskByDestImage(const std::string& dest_image_id) = 0;
  // Tasks in the given states, oldest job first (the engine's queue).
  virtual std::vector<Task> ListTasksInStates(const std::vector<TaskState>& states) = 0;
  // Writes progress, counters, error, lease and timestamps (not the state).
  virtual void UpdateTaskFields(const Task& task) = 0;
  virtual bool TransitionTask(const std::string& dest_image_id, TaskState expected,
                              TaskEvent event) = 0;

  // Client tokens, per account.
  virtual std::optional<ClientTokenRecord> GetClientToken(const std::string& account,
                                                          const std::string& token) = 0;
  virtual void InsertClientToken(const std::string& account, const std::string& token,
                                 const ClientTokenRecord& record) = 0;

  // The audit log. Append assigns seq and returns it.
  virtual int64_t AppendEvent(const Event& event) = 0;
  // Events with seq > since, oldest first; only those of image_id if given.
  virtual std::vector<Event> ListEvents(int64_t since, const std::optional<std::string>& image_id,
                                        int limit) = 0;

  // Region garbage collection lease: one sweeper per region at a time, exclusive with
  // writers. Acquire returns false if another live holder has it.
  virtual bool AcquireSweepLease(const std::string& region, const std::string& holder,
                                 TimeUs expires_us) = 0;
  virtual void ReleaseSweepLease(const std::string& region, const std::string& holder) = 0;
  // "This region has garbage": set after delete/cancel/failure, cleared by a sweep.
  virtual void SetSweepNeeded(const std::string& region, bool needed) = 0;
  virtual std::vector<std::string> RegionsNeedingSweep() = 0;
  // A mark that changes whenever SetSweepNeeded(region, true) is called (0: not needed). A
  // sweep takes it before it starts and clears the flag only if it is unchanged when it
  // ends: a sweep killed half-way, or garbage made while it ran, leaves the flag set.
  virtual int64_t SweepNeededMark(const std::string& region) = 0;
  virtual void ClearSweepNeeded(const std::string& region, int64_t mark) = 0;
  // The sweep lease's holder and expiry, if held.
  virtual std::optional<std::pair<std::string, TimeUs>> GetSweepLease(
      const std::string& region) = 0;

  // The digest of an image's chunk list (Manifest::ChunkListDigest), recorded when the
  // image's manifest was committed: a manifest read back from a store must match it, so a
  // manifest changed outside imagerelay is never trusted.
  virtual void PutManifestDigest(const std::string& image_id, const std::string& digest) = 0;
  virtual std::optional<std::string> GetManifestDigest(const std::string& image_id) = 0;

  // Key-value settings of the home (e.g. the limits it was created with).
  virtual std::optional<std::string> GetSetting(const std::string& key) = 0;
  virtual void PutSetting(const std::string& key, const std::string& value) = 0;
  virtual void DeleteSetting(const std::string& key) = 0;
};

class Catalog {
 public:
  virtual ~Catalog() = default;
  virtual void Write(const std::function<void(CatalogTx&)>& fn) = 0;
  virtual void Read(const std::function<void(CatalogTx&)>& fn) = 0;
  virtual int SchemaVersion() = 0;
  // Leaves no copy of deleted data behind in the catalog's files (write-ahead log
  // included): called after a secret was moved out. Best effort while other processes read.
  virtual void Scrub() = 0;
  // Folds the write-ahead log into the database. Commits never do it themselves (its two
  // fsyncs would land on whichever call happened to commit); engines call this when idle.
  virtual void Checkpoint() {}
  // Where the catalog is, for people: a path, or a URI with its password hidden.
  virtual std::string Describe() const = 0;
  // Calls `on_change` (from a thread of the catalog's own) after another process, on any
  // host, committed a Write(), so that waiters and idle workers look again at once. An
  // empty function stops the calls; it returns once none is under way. The PostgreSQL
  // catalog does it with LISTEN/NOTIFY; SQLite never calls it (its readers poll).
  virtual void SetChangeListener(std::function<void()> on_change) { (void)on_change; }
};

// Opens (creating and migrating as needed) a SQLite catalog: WAL, foreign keys, busy
// timeout. Safe to open from several processes at once. Throws Error(Region.StoreUnavailable
// is not used here; InvalidParameter) naming the path when it cannot be opened.
std::unique_ptr<Catalog> OpenSqliteCatalog(const std::filesystem::path& path);
// A setting of the SQLite catalog at `path`, read without writing anything (another home's,
// to tell a copied home from a moved one): nullopt if the file or the setting is absent.
// Throws std::runtime_error if the file is there but cannot be read as a catalog.
std::optional<std::string> PeekSqliteCatalogSetting(const std::filesystem::path& path,
                                                    const std::string& key);

// Whether `spec` names a PostgreSQL catalog: a postgresql:// (or postgres://) URI.
bool IsPostgresCatalog(std::string_view spec);
// Opens (creating its tables and migrating as needed) a PostgreSQL catalog. The URI is
// libpq's: the password may come from it, $PGPASSWORD or ~/.pgpass, the other PG* variables
// fill in what it leaves out. Safe to open from many hosts at once. Throws
// ValidationError(InvalidParameter) for a URI that is not PostgreSQL's, and
// TransferError(Catalog.Unavailable) when the server cannot be reached; no message carries
// the password.
std::unique_ptr<Catalog> OpenPostgresCatalog(const std::string& uri);
// The URI (or libpq key=value string) with its password replaced by "***".
std::string RedactCatalogUri(std::string_view spec);

}  // namespace imagerelay
