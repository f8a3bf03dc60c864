// The engine ties the catalog, the rules, the stores and the transfer engine together.
// It knows nothing of Python: callers pass the acting account explicitly, callbacks are
// std::function, and every call that can block may be made without any outside lock.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "imagerelay/cancel.hpp"
#include "imagerelay/catalog.hpp"
#include "imagerelay/image_io.hpp"
#include "imagerelay/model.hpp"
#include "imagerelay/rules.hpp"

namespace imagerelay {

struct EngineOptions {
  std::filesystem::path home;
  // Where the catalog is: empty for SQLite in <home>/catalog.db, or a postgresql:// URI for
  // a catalog that several hosts share (docs/scale-out.md). The home stays this host's.
  std::string catalog;
  Limits limits;
  int workers = 4;            // concurrent copy tasks in this process
  bool start_workers = true;  // false: never run copies here (read-only tools)
  // The regions this process's stores reach (docs/scale-out.md): its workers claim only
  // copies whose source and destination are both among them; empty = every region. Open
  // refuses a region that does not exist (InvalidParameter).
  std::vector<std::string> worker_regions;
  // A worker whose lease is older than this is presumed dead and its task taken over.
  int64_t lease_ms = 10'000;
  // An import whose file holes exceed its data and this many bytes becomes Available before
  // its digest is known; the digester computes it next (ImportOptions). 0 = never.
  uint64_t defer_digest_hole_bytes = 1ULL << 30;
};

// What a scrub of one region found and did (Engine::Scrub).
struct ScrubReport {
  std::string region;
  uint64_t chunks_checked = 0;
  uint64_t bytes_checked = 0;
  std::vector<std::string> quarantined;      // chunks whose bytes did not match their name
  uint64_t chunks_repaired = 0;              // fetched from another region
  std::vector<std::string> images_repaired;  // Available again (or never lost a chunk)
  std::vector<std::string> images_damaged;   // still NotAvailable: no region had the bytes
  // Why the region was not scrubbed (its store unavailable: a disk not mounted, a server
  // down); "" if it was. Only when every region is scrubbed: one named region throws.
  std::string unavailable;
};

// An image as one account sees it.
struct ImageView {
  Image image;
  std::string type;                // "System", "Custom" or "Sharing" (as a recipient sees it)
  std::optional<double> progress;  // 0-100 while a destination copy is in flight
};

// A request as a policy sees it (API.md add_rule).
struct PolicyRequest {
  std::string action;  // replicate, share, unshare, rename, delete, import
  std::string account;
  std::optional<ImageView> image;
  std::vector<std::string> to;
  std::vector<std::string> accounts;
  std::string name;
};
// Returns a rejection message, or nullopt to allow.
using PolicyFn = std::function<std::optional<std::string>(const PolicyRequest&)>;
using EventFn = std::function<void(const Event&)>;

class Engine {
 public:
  // Opens or creates the home: catalog, default regions bj/gz/su and account `default`.
  static std::shared_ptr<Engine> Open(const EngineOptions& options);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Stops the workers; copies in flight stay in the catalog and resume at the next Open.
  void Close();
  const std::filesystem::path& home() const;
  // Where the catalog is, for people: its path, or its URI with the password hidden.
  std::string catalog() const;
  const Limits& limits() const;

  // Credentials (S3 regions only; empty = from the environment) are kept in
  // <home>/credentials/<region>.json (mode 0600), never in the catalog, the region's store
  // URI or its listing.
  Region AddRegion(const std::string& id, const std::string& store_uri, const std::string& name,
                   const std::string& access_key_id = "", const std::string& secret_access_key = "",
                   const std::string& session_token = "");
  std::vector<Region> Regions();
  Region GetRegion(const std::string& id);
  // Removes a region (`account` acts: the event region.removed is its). Refused while the
  // region is in use (Region.InUse): any image there that is not deleted, or a copy in
  // flight to or from it. Its saved credentials file goes too; its store's files stay.
  // validate_only: every check and nothing else. NoSuchRegion if unknown.
  void RemoveRegion(const std::string& account, const std::string& id, bool validate_only = false);
  // Points region `id` at another store (`account` acts: event region.moved): the region's
  // store was copied or moved there (a bigger disk, a home copied with its stores outside
  // it). The new place must already be a store this home may use, holding the manifest of
  // every image of the region that is not damaged, as committed, and every block those name
  // (looked up in its index; read only by a scrub); it may not meet another
  // region's store. Refused while imports into the region or copies to or from it are in
  // flight (Region.InUse). Its blocks are not read: `scrub` the region to check them. The
  // old store is released (its marker names no home) and its files stay.
  Region MoveRegion(const std::string& account, const std::string& id, const std::string& store_uri,
                    bool validate_only = false);
  Account AddAccount(const std::string& id, const std::string& name);
  // Removes an account (`account` acts). Refused while it is in use (Account.InUse): images it
  // owns that are not deleted, images shared with it, or its copies in flight. NoSuchAccount
  // if unknown.
  void RemoveAccount(const std::string& account, const std::string& id, bool validate_only = false);
  std::vector<Account> Accounts();
  Account GetAccount(const std::string& id);  // NoSuchAccount

  // Imports a file. With wait=false the import runs in the background and the image is
  // returned in Creating. `system` adds a System image with no owner. `cancel` (wait=true
  // only) stops the import early: the image ends CreateFailed, its bytes are removed, and
  // Error(Transfer.Failed) is thrown. Close() stops background imports the same way.
  // `progress` (wait=true only) is called from this thread about every 100 ms.
  ImageView ImportImage(const std::string& account, const ImportRequest& request, bool wait,
                        bool system, const CancelToken* cancel = nullptr,
                        const ProgressFn& progress = {});
  // image_type: All, System, Custom, Sharing.
  std::vector<ImageView> Images(const std::string& account,
                                const std::optional<std::string>& region,
                                const std::string& image_type,
                                const std::optional<std::string>& name);
  ImageView GetImage(const std::string& account, const std::string& image_id);
  // validate_only: every check of the request (account, visibility, rules, policies) and
  // nothing else; the error a real request would raise, or nothing.
  void Share(const std::string& account, const std::string& image_id,
             const std::vector<std::string>& accounts, bool validate_only = false);
  void Unshare(const std::string& account, const std::string& image_id,
               const std::vector<std::string>& accounts, bool validate_only = false);
  std::vector<std::string> SharedUsers(const std::string& account, const std::string& image_id);
  void Rename(const std::string& account, const std::string& image_id, const std::string& name,
              bool validate_only = false);
  void Delete(const std::string& account, const std::string& image_id, bool validate_only = false);
  // `cancel` stops an export early (Error(Transfer.Failed); `path` is left as it was) and a
  // verification (Error(Transfer.Failed), nothing recorded). An export's `progress` is
  // called from its thread about every 100 ms. An export writes only a new regular file, or
  // with `force` replaces an existing one (ExportFromStore): never a link, device or FIFO.
  void Export(const std::string& account, const std::string& image_id,
              const std::filesystem::path& path, const CancelToken* cancel = nullptr,
              const ProgressFn& progress = {}, bool force = false);
  // Re-reads every chunk of the image from its region, checks each against its name and the
  // whole against the image's digest; returns the digest, throws IntegrityError otherwise.
  // `progress` is called from its thread about every 100 ms.
  std::string Verify(const std::string& account, const std::string& image_id,
                     const CancelToken* cancel = nullptr, const ProgressFn& progress = {});
  // Reads every chunk stored in `region` (every region if nullopt), quarantines those whose
  // bytes do not match their name, marks the images that need a damaged or missing chunk
  // NotAvailable, fetches those chunks from any other region that holds them (verified on
  // arrival), and makes an image Available again once it verifies whole. The report names
  // only images `account` may see. `cancel` stops it (Cancelled).
  std::vector<ScrubReport> Scrub(const std::string& account,
                                 const std::optional<std::string>& region,
                                 const CancelToken* cancel = nullptr,
                                 const ProgressFn& progress = {});
  // The waits (Wait*) re-read the catalog at once after each change this process makes,
  // and every 100 ms for those of other processes. `cancel` ends a wait as its timeout
  // would; a timeout of nullopt waits for as long as it takes.

  // The image's digest, waiting while the digester computes it (images imported from
  // mostly-empty files are Available before their digest is known). Throws Error(Timeout)
  // when the timeout passes, the digester's error if it failed. `progress` hears how far
  // this process's digester got (bytes hashed of the image's size), from the waiting thread.
  std::string WaitDigest(const std::string& account, const std::string& image_id,
                         std::optional<double> timeout_s, const CancelToken* cancel = nullptr,
                         const ProgressFn& progress = {});
  // Waits until the image's status is none of `busy` (e.g. Creating and Replicating: until
  // an import or a copy ended); returns it. Throws Error(Timeout) when the timeout passes,
  // NoSuchImage once it is deleted (a cancelled copy).
  ImageView WaitImage(const std::string& account, const std::string& image_id,
                      const std::vector<ImageStatus>& busy, std::optional<double> timeout_s,
                      const CancelToken* cancel = nullptr);

  // Replication (DESIGN.md §2, §5).
  // validate_only: the checks only; returns the job a client token names, else an empty Job.
  Job Replicate(const std::string& account, const std::string& image_id,
                const std::vector<std::string>& to, const std::optional<std::string>& name,
                const std::optional<std::string>& client_token, bool validate_only = false);
  void CancelCopy(const std::string& account, const std::string& dest_image_id);
  // Cancels every copy of the job in flight, or only the one to `region`.
  void CancelJob(const std::string& account, const std::string& job_id,
                 const std::optional<std::string>& region);
  Job GetJob(const std::string& account, const std::string& job_id);
  std::vector<Job> Jobs(const std::string& account, std::optional<bool> active);
  // Waits until the job has no task Pending or Running; returns it. Throws Error(Timeout)
  // when the timeout passes (the copies go on).
  Job WaitJob(const std::string& account, const std::string& job_id,
              std::optional<double> timeout_s, const CancelToken* cancel = nullptr);
  // True when no task is Pending or Running (in the whole catalog) and this process's
  // digester has nothing left to compute, before the timeout; false otherwise.
  bool WaitIdle(std::optional<double> timeout_s, const CancelToken* cancel = nullptr);
  // Copies that no live worker runs, by destination image id: Running under a lease whose
  // holder died or lapsed, or Pending while no live worker runs any copy. A short-lived tool
  // (the CLI) that opened the home without workers starts one when this is not empty, so a
  // killed worker's copies go on, and shows them as waiting for a worker.
  std::vector<std::string> CopiesWaitingForAWorker();
  // Runs queued copies until none is left (imagerelay worker --until-idle); returns when idle.
  void RunUntilIdle();

  // The audit log as `account` may see it (EventVisibleTo / EventSeenBy in rules.hpp).
  // Only events after seq `since` and, if since_time_us is not 0, at or after that time.
  std::vector<Event> Events(const std::string& account, int64_t since,
                            const std::optional<std::string>& image_id, TimeUs since_time_us = 0);
  // Events() as soon as it is not empty (events of other processes within 100 ms); empty
  // when the timeout passes or `cancel` fires first (imagerelay events --follow).
  std::vector<Event> WaitEvents(const std::string& account, int64_t since,
                                const std::optional<std::string>& image_id,
                                std::optional<double> timeout_s,
                                const CancelToken* cancel = nullptr);
  // "*" for every type. Callbacks run on the engine's dispatcher thread.
  // `fn` gets only the events `account` may see, as it may see them (as Events()).
  int64_t AddListener(const std::string& account, const std::string& event_type, EventFn fn);
  void RemoveListener(int64_t handle);
  int64_t AddPolicy(PolicyFn fn);
  void RemovePolicy(int64_t handle);

  struct Impl;

 private:
  explicit Engine(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace imagerelay
