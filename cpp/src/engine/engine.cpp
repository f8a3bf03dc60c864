#include "imagerelay/engine.hpp"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "base/url_redaction.hpp"
#include "engine/copy_runner.hpp"
#include "engine/engine_impl.hpp"
#include "engine/home_identity.hpp"
#include "imagerelay/disk_format.hpp"
#include "imagerelay/error.hpp"
#include "imagerelay/ids.hpp"
#include "imagerelay/image_io.hpp"
#include "imagerelay/log.hpp"
#include "imagerelay/rules.hpp"
#include "imagerelay/sha256.hpp"
#include "store/store_place.hpp"

namespace imagerelay {
namespace fs = std::filesystem;

// ---- shared helpers -------------------------------------------------------------------

void Engine::Impl::Write(const std::function<void(CatalogTx&, PendingEvents&)>& fn) {
  PendingEvents pending;
  catalog->Write([&](CatalogTx& tx) {
    pending = PendingEvents{};
    fn(tx, pending);
  });
  for (auto& e : pending.Take()) bus.Publish(std::move(e));
  NotifyChanged();
}

namespace {

// Where homes made before credentials files kept a region's S3 credentials (JSON).
std::string LegacyCredentialsKey(const std::string& region_id) {
  return "region_credentials:" + region_id;
}

}  // namespace

void Engine::Impl::MoveCredentialsOutOfCatalog() {
  bool any = false;  // looked up first: opening a home should not take the write lock
  catalog->Read([&](CatalogTx& tx) {
    for (const Region& region : tx.ListRegions()) {
      any = any || tx.GetSetting(LegacyCredentialsKey(region.id)).has_value();
    }
  });
  if (!any) return;
  bool moved = false;
  catalog->Write([&](CatalogTx& tx) {
    for (const Region& region : tx.ListRegions()) {
      std::optional<std::string> json = tx.GetSetting(LegacyCredentialsKey(region.id));
      if (!json) continue;
      if (!json->empty()) credentials->Put(region.id, CredentialsFiles::Parse(*json));
      tx.DeleteSetting(LegacyCredentialsKey(region.id));
      moved = true;
    }
  });
  if (moved) catalog->Scrub();
}

std::shared_ptr<Store> Engine::Impl::StoreFor(const std::string& region_id) {
  std::optional<Region> region;
  catalog->Read([&](CatalogTx& tx) { region = tx.GetRegion(region_id); });
  if (!region) ThrowCode(codes::kNoSuchRegion, "region " + Quote(region_id) + " does not exist");
  return StoreForUri(region->store_uri, region_id);
}

void RequireAccount(CatalogTx& tx, const std::string& account) {
  if (!tx.GetAccount(account)) {
    ThrowCode(codes::kNoSuchAccount,
              "account " + Quote(account) + " does not exist; add it first or act as another");
  }
}

Image LoadVisible(CatalogTx& tx, const std::string& account, const std::string& image_id) {
  ThrowIfAny(CheckImageIdFormat(image_id));
  auto image = tx.GetImage(image_id);
  bool shared = false;
  if (image && image->type == ImageType::kCustom && image->owner != account) {
    auto shares = tx.ListShares(image_id);
    shared = std::ranges::find(shares, account) != shares.end();
  }
  if (!image || !CanSee(*image, account, shared)) {
    ThrowCode(codes::kNoSuchImage, "image " + image_id + " does not exist or is not visible to " +
                                       "account " + account + "; list images to see yours");
  }
  return *image;
}

namespace {

std::string HostName() {
  char buf[256] = {0};
  if (gethostname(buf, sizeof(buf) - 1) != 0) return "localhost";
  return buf;
}

ImageView ViewOf(CatalogTx& tx, const Image& image, const std::string& account) {
  ImageView view{image, TypeSeenBy(image, account), std::nullopt};
  if (image.status == ImageStatus::kReplicating && !image.source_image_id.empty()) {
    if (auto task = tx.GetTaskByDestImage(image.id)) {
      view.progress = task->bytes_total == 0 ? 0.0
                                             : 100.0 * static_cast<double>(task->bytes_done) /
                                                   static_cast<double>(task->bytes_total);
    }
  }
  return view;
}

ShareFacts GatherShareFacts(CatalogTx& tx, const Image& image,
                            const std::vector<std::string>& accounts) {
  ShareFacts facts;
  facts.current_shares = tx.ListShares(image.id);
  for (const auto& account : Unique(accounts)) {
    if (!IsValidAccountId(account) || !tx.GetAccount(account)) continue;
    facts.known_accounts.insert(account);
    facts.accepted_in_region[account] = tx.CountAcceptedShares(account, image.region);
  }
  return facts;
}

std::string ImportSourcePath(const std::string& source) {
  if (source.rfind("file://", 0) == 0) return source.substr(7);
  return source;
}

}  // namespace

// ---- lifecycle ------------------------------------------------------------------------

Engine::Engine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

void Engine::Impl::Request(
    const std::string& account, const std::string& image_id, const char* action,
    std::vector<std::string> accounts, std::string name,
    const std::function<void(CatalogTx&, const Image&)>& rules, bool validate_only,
    const std::function<void(CatalogTx&, PendingEvents&, const Image&)>& apply) {
  auto evaluate = [&](CatalogTx& tx) {
    RequireAccount(tx, account);
    Image image = LoadVisible(tx, account, image_id);
    rules(tx, image);
    return image;
  };
  std::optional<ImageView> view;
  catalog->Read([&](CatalogTx& tx) { view = ViewOf(tx, evaluate(tx), account); });
  CheckPolicies({.action = action,
                 .account = account,
                 .image = std::move(view),
                 .to = {},
                 .accounts = std::move(accounts),
                 .name = std::move(name)});
  if (validate_only) return;
  Write([&](CatalogTx& tx, PendingEvents& events) { apply(tx, events, evaluate(tx)); });
}

namespace {

// How a store at `place` meets `other`'s, at `theirs` ("is the store of region bj", "holds
// ...", "is inside ..."), or "" if it does not (store_place.hpp says why they may not).
std::string HowStoresMeet(const std::optional<StorePlace>& place, const Region& other,
                          const std::optional<StorePlace>& theirs) {
  if (!place || !theirs || !place->Overlaps(*theirs)) return "";
  const char* how = place->where == theirs->where ? "is the store of region "
                    : place->Contains(*theirs)    ? "holds the store of region "
                                                  : "is inside the store of region ";
  return how + other.id + " (" + RedactUrl(other.store_uri) + ")";
}

// A new region's store may not be another region's, hold one or lie inside one.
void RequireStoreOfItsOwn(const std::string& uri, const std::vector<Region>& regions) {
  const std::optional<StorePlace> place = PlaceOfStore(uri);
  for (const Region& other : regions) {
    if (std::string how = HowStoresMeet(place, other, PlaceOfStore(other.store_uri));
        !how.empty()) {
      ThrowCode(codes::kInvalidParameter,
                "store " + Quote(RedactUrl(uri)) + " " + how +
                    "; give each region a store of its own: two regions in one store would be "
                    "one copy of their images, and each store would find the other's files");
    }
  }
}

// A relative path is taken from where the region is added (or moved): kept as it was given,
// it would name another directory whenever the home is opened from elsewhere (its images
// then "missing" and set NotAvailable).
std::string AbsoluteStoreUri(const std::string& uri) {
  if (uri.find("://") == std::string::npos && !uri.empty() && !fs::path(uri).is_absolute()) {
    if (std::optional<fs::path> directory = LocalStoreDirectory(uri)) return directory->string();
  }
  return uri;
}

// Region `id`, or NoSuchRegion.
Region ExistingRegion(CatalogTx& tx, const std::string& id) {
  std::optional<Region> region = tx.GetRegion(id);
  if (!region) {
    ThrowCode(codes::kNoSuchRegion, "region " + Quote(id) + " does not exist; list regions");
  }
  return *region;
}

// What uses region `id`: its images (`only_in_flight`: those being imported), and the jobs
// with copies to or from it in flight.
RegionUse UseOfRegion(CatalogTx& tx, const std::string& id, bool only_in_flight) {
  RegionUse use;
  for (const Image& image : tx.ListImages({.region = id, .name = std::nullopt})) {
    if (!only_in_flight || image.status == ImageStatus::kCreating) use.images.push_back(image.id);
  }
  for (const Task& task : tx.ListTasksInStates({TaskState::kPending, TaskState::kRunning})) {
    auto job = tx.GetJob(task.job_id);
    const bool here = task.region == id || (job && job->source_region == id);
    if (here && std::ranges::find(use.jobs_in_flight, task.job_id) == use.jobs_in_flight.end()) {
      use.jobs_in_flight.push_back(task.job_id);
    }
  }
  return use;
}

// Regions that share a store (added so by a release before add_region refused it) keep
// working, and are named at every open.
void WarnOfSharedStores(const Engine::Impl& impl) {
  std::vector<Region> regions;
  impl.catalog->Read([&](CatalogTx& tx) { regions = tx.ListRegions(); });
  std::vector<std::optional<StorePlace>> places;  // each looked up once: this runs at open
  for (const Region& region : regions) places.push_back(PlaceOfStore(region.store_uri));
  for (size_t i = 0; i < regions.size(); ++i) {
    for (size_t j = i + 1; j < regions.size(); ++j) {
      if (std::string how = HowStoresMeet(places[i], regions[j], places[j]); !how.empty()) {
        Log(LogLevel::kWarning,
            "the store of region " + regions[i].id + " (" + RedactUrl(regions[i].store_uri) + ") " +
                how +
                ": a copy between them is no second copy; move one region's images to a "
                "region of its own store");
      }
    }
  }
}

// The regions a worker says it reaches must exist: a typo would leave copies waiting for a
// worker that never takes them, with nothing said.
void CheckWorkerRegions(const Engine::Impl& impl) {
  if (impl.options.worker_regions.empty()) return;
  std::vector<std::string> known;
  impl.catalog->Read([&](CatalogTx& tx) {
    for (const auto& region : tx.ListRegions()) known.push_back(region.id);
  });
  std::vector<std::string> unknown;
  for (const auto& id : impl.options.worker_regions) {
    if (std::ranges::find(known, id) == known.end()) unknown.push_back(Quote(id));
  }
  if (unknown.empty()) return;
  std::string list, have;
  for (const auto& id : unknown) list += (list.empty() ? "" : ", ") + id;
  for (const auto& id : known) have += (have.empty() ? "" : ", ") + id;
  ThrowCode(codes::kInvalidParameter,
            "worker regions: no region " + list + " in this catalog (its regions: " + have + ")");
}

}  // namespace

std::shared_ptr<Engine> Engine::Open(const EngineOptions& options) {
  ThrowIfAny(CheckLimits(options.limits));  // before the home is touched
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->host = HostName();
  impl->worker_id = impl->host + ":" + std::to_string(getpid()) + ":" + RandomHex(4);
  std::error_code ec;
  // A new home is its owner's alone: its catalog names every account's images, events and
  // jobs, and the regions inside it hold their bytes. A home that exists keeps its mode.
  if (fs::create_directories(options.home, ec) && !ec) {
    fs::permissions(options.home, fs::perms::owner_all, fs::perm_options::replace, ec);
  }
  if (ec || !fs::is_directory(options.home)) {
    ThrowCode(codes::kInvalidParameter, "home " + Quote(options.home.string()) +
                                            " cannot be used as a directory (" +
                                            (ec ? ec.message() : std::string("not a directory")) +
                                            "); give a writable directory");
  }
  if (access(options.home.c_str(), W_OK) != 0) {
    ThrowCode(codes::kInvalidParameter, "home " + Quote(options.home.string()) +
                                            " is not writable; give a writable directory");
  }
  if (options.catalog.empty()) {
    impl->catalog = OpenSqliteCatalog(options.home / "catalog.db");
  } else if (IsPostgresCatalog(options.catalog)) {
    impl->catalog = OpenPostgresCatalog(options.catalog);
  } else {
    ThrowCode(codes::kInvalidParameter,
              "catalog " + Quote(RedactCatalogUri(options.catalog)) +
                  " is not supported; give a postgresql://[user@]host[:port]/database URI, or "
                  "none for the home's own SQLite catalog");
  }
  impl->credentials = std::make_unique<CredentialsFiles>(options.home / "credentials");
  impl->MoveCredentialsOutOfCatalog();
  HomeIdentity identity = SettleHomeIdentity(*impl->catalog, options.home, options.catalog.empty());
  Impl* raw = impl.get();
  impl->stores = std::make_unique<StoreRegistry>(
      *impl->credentials, impl->CacheDir(), impl->options.home, std::move(identity),
      [raw](const std::string& uri, const std::string& hash, const std::string& why) {
        raw->integrity->OnStoreDamage(uri, hash, why);
      });
  impl->integrity = std::make_unique<Integrity>(Integrity::Parts{
      .catalog = *impl->catalog,
      .store_for = [raw](const std::string& region) { return raw->StoreFor(region); },
      .write = [raw](const auto& fn) { raw->Write(fn); },
      .buffer_memory = impl->options.limits.buffer_memory});
  impl->digester = std::make_unique<Digester>(Digester::Parts{
      .catalog = *impl->catalog,
      .store_for = [raw](const std::string& region) { return raw->StoreFor(region); },
      .load_manifest = [raw](const Image& image,
                             Store& store) { return raw->integrity->LoadManifest(image, store); },
      .note_damage = [raw](const std::exception& error, const std::string& region,
                           Store& store) { raw->integrity->NoteDamage(error, region, store); },
      .write = [raw](const auto& fn) { raw->Write(fn); },
      .notify_changed = [raw] { raw->NotifyChanged(); },
      .spawn = [raw](std::function<void()> fn) { raw->background.Spawn(std::move(fn)); },
      .buffer_memory = impl->options.limits.buffer_memory});
  impl->sweeper = std::make_unique<Sweeper>(Sweeper::Parts{
      .catalog = *impl->catalog,
      .holder = impl->worker_id + ":sweep",
      .holder_alive = [raw](const Lease& lease,
                            TimeUs now) { return raw->LeaseHolderAlive(lease, now); },
      .store_for_uri = [raw](const std::string& uri,
                             const std::string& region) { return raw->StoreForUri(uri, region); }});
  impl->importer = std::make_unique<Importer>(Importer::Parts{
      .catalog = *impl->catalog,
      .write = [raw](const auto& fn) { raw->Write(fn); },
      .store_for = [raw](const std::string& region) { return raw->StoreFor(region); },
      .sweep = [raw](const std::string& region) { raw->sweeper->MaybeSweep(region); },
      .schedule_digest = [raw] { raw->digester->Schedule(); },
      .running = impl->running,
      .limits = options.limits,
      .lease_ms = options.lease_ms,
      .defer_digest_hole_bytes = options.defer_digest_hole_bytes,
      .cache_dir = impl->CacheDir(),
      .worker_id = impl->worker_id,
      .holder_alive = [raw](const Lease& lease,
                            TimeUs now) { return raw->LeaseHolderAlive(lease, now); }});
  impl->workers = std::make_unique<WorkerPool>(WorkerPool::Parts{
      .workers = options.workers,
      .spawn = [raw](std::function<void()> fn) { raw->background.Spawn(std::move(fn)); },
      .run_one_claim = [raw] { return RunOneClaim(*raw); },
      .sweep_pending = [raw] { raw->sweeper->SweepPending(); },
      .housekeeping =
          [raw] {
            raw->importer->RecoverInterrupted();
            raw->catalog->Checkpoint();
          }});

  std::vector<Region> defaults;
  impl->catalog->Write([&](CatalogTx& tx) {
    if (tx.GetSetting("initialized")) return;
    for (const char* id : {"bj", "gz", "su"}) {
      Region region{id, id, (fs::absolute(options.home) / "regions" / id).string()};
      tx.InsertRegion(region);
      defaults.push_back(region);
    }
    tx.InsertAccount({"default", "default"});
    tx.PutSetting("initialized", std::to_string(NowUs()));
  });
  for (const auto& region : defaults) impl->StoreForUri(region.store_uri)->Check();
  CheckWorkerRegions(*impl);
  WarnOfSharedStores(*impl);

  // Another process's (or host's) commit wakes this one's waiters and idle workers at once,
  // where the catalog can tell (PostgreSQL); otherwise they look again every so often.
  impl->catalog->SetChangeListener([raw] {
    raw->NotifyChanged();
    raw->workers->Wake();
  });
  std::shared_ptr<Engine> engine(new Engine(std::move(impl)));
  engine->impl_->importer->RecoverInterrupted();
  engine->impl_->sweeper->SweepPending();
  if (options.start_workers) {
    engine->impl_->workers->Start();
    engine->impl_->digester->Schedule();  // digests a stopped process left to compute
    Engine::Impl* raw = engine->impl_.get();
    raw->background.Spawn([raw] { raw->sweeper->RemoveLeftovers(); });  // of a killed process
  }
  return engine;
}

Engine::~Engine() { Close(); }

void Engine::Close() {
  // Copies stop where they are; their leases lapse and the next Open resumes them.
  // Imports stop and end CreateFailed (an import starts over: nothing to resume).
  if (!impl_->running.CancelAll()) return;  // closed before
  // The workers stop at once: one whose copy was just handed back must not claim it again
  // (and count an attempt) while the rest closes; stopping the listener waits for its poll.
  impl_->workers->Stop();
  impl_->catalog->SetChangeListener(nullptr);
  impl_->digester->Stop();
  impl_->background.JoinAll();
  impl_->bus.Stop();
}

const fs::path& Engine::home() const { return impl_->options.home; }
const Limits& Engine::limits() const { return impl_->options.limits; }
std::string Engine::catalog() const { return impl_->catalog->Describe(); }

// ---- regions and accounts -------------------------------------------------------------

Region Engine::AddRegion(const std::string& id, const std::string& store_uri,
                         const std::string& name, const std::string& access_key_id,
                         const std::string& secret_access_key, const std::string& session_token) {
  auto problems = CheckRegionId(id);
  std::string uri =
      AbsoluteStoreUri(store_uri.empty() && IsValidRegionId(id)
                           ? (fs::absolute(impl_->options.home) / "regions" / id).string()
                           : store_uri);
  if (auto bad = CheckStoreUri(uri); !bad.empty()) {
    problems.push_back({codes::kInvalidParameter, bad});
  }
  if (name.size() > 128) {
    problems.push_back({codes::kInvalidParameter, "region name is longer than 128 characters"});
  }
  const bool has_credentials =
      !access_key_id.empty() || !secret_access_key.empty() || !session_token.empty();
  if (has_credentials && !uri.starts_with("s3://")) {
    problems.push_back(
        {codes::kInvalidParameter, "credentials are only used by S3 regions (s3://bucket/prefix)"});
  } else if (has_credentials && (access_key_id.empty() || secret_access_key.empty())) {
    problems.push_back({codes::kInvalidParameter,
                        "give both access_key_id and secret_access_key (or neither, to use "
                        "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"});
  }
  ThrowIfAny(problems);
  Region region{id, name.empty() ? id : name, uri};
  impl_->catalog->Read([&](CatalogTx& tx) {
    if (tx.GetRegion(id)) {
      ThrowCode(codes::kAlreadyExists, "region " + id + " exists already; pick another id");
    }
    RequireStoreOfItsOwn(uri, tx.ListRegions());
  });
  // Prove the store works before the region is listed.
  const sigv4::Credentials credentials{access_key_id, secret_access_key, session_token};
  std::shared_ptr<Store> store;
  if (has_credentials) {
    store = impl_->stores->OpenWith(uri, credentials);
  } else {
    store = impl_->StoreForUri(uri);
  }
  store->Create();
  // What an earlier add_region of the same place left when it was killed (its marker's
  // temporary file): the region would otherwise keep it until the home's next open.
  store->RemoveLeftovers();
  impl_->Write([&](CatalogTx& tx, PendingEvents&) {
    if (!tx.InsertRegion(region)) {
      ThrowCode(codes::kAlreadyExists, "region " + id + " exists already; pick another id");
    }
    // In the transaction: a region is never listed without the credentials it was given.
    if (has_credentials) impl_->credentials->Put(id, credentials);
  });
  if (has_credentials) impl_->stores->Keep(uri, store);
  return region;
}

std::vector<Region> Engine::Regions() {
  std::vector<Region> out;
  impl_->catalog->Read([&](CatalogTx& tx) { out = tx.ListRegions(); });
  return out;
}

Region Engine::GetRegion(const std::string& id) {
  std::optional<Region> region;
  impl_->catalog->Read([&](CatalogTx& tx) { region = tx.GetRegion(id); });
  if (!region) {
    ThrowCode(codes::kNoSuchRegion,
              "region " + Quote(id) + " does not exist; list regions or add it first");
  }
  return *region;
}

namespace {

// True if jobs or events name account `id` (an account removed since): ids are not reused,
// as a cloud's are not, so that no account inherits another's history. Reads the log in
// pages: adding an account is rare, and memory stays bounded however long the log is.
bool AccountIdWasUsed(CatalogTx& tx, const std::string& id) {
  if (!tx.ListJobs(id).empty()) return true;
  constexpr int kPage = 1000;
  for (int64_t since = 0;;) {
    std::vector<Event> page = tx.ListEvents(since, std::nullopt, kPage);
    for (const Event& event : page) {
      if (event.account == id) return true;
      if (event.type != event_type::kAccountRemoved) continue;
      const nlohmann::json detail = nlohmann::json::parse(event.detail_json, nullptr, false);
      if (detail.is_object() && detail.value("account", "") == id) return true;
    }
    if (page.size() < static_cast<size_t>(kPage)) return false;
    since = page.back().seq;
  }
}

}  // namespace

Account Engine::AddAccount(const std::string& id, const std::string& name) {
  ThrowIfAny(CheckAccountId(id));
  if (name.size() > 128) {
    ThrowCode(codes::kInvalidParameter, "account name is longer than 128 characters");
  }
  Account account{id, name.empty() ? id : name};
  impl_->Write([&](CatalogTx& tx, PendingEvents&) {
    if (!tx.GetAccount(id) && AccountIdWasUsed(tx, id)) {
      ThrowCode(codes::kAlreadyExists,
                "account id " + id +
                    " was used by an account since removed, whose jobs and events stay in the "
                    "audit log: an account under that id would see them; pick another id");
    }
    if (!tx.InsertAccount(account)) {
      ThrowCode(codes::kAlreadyExists, "account " + id + " exists already; pick another id");
    }
  });
  return account;
}

std::vector<Account> Engine::Accounts() {
  std::vector<Account> out;
  impl_->catalog->Read([&](CatalogTx& tx) { out = tx.ListAccounts(); });
  return out;
}

Account Engine::GetAccount(const std::string& id) {
  std::optional<Account> account;
  impl_->catalog->Read([&](CatalogTx& tx) { account = tx.GetAccount(id); });
  if (!account) {
    ThrowCode(codes::kNoSuchAccount, "account " + Quote(id) + " does not exist; add it first");
  }
  return *account;
}

namespace {

// A job with a copy still Pending or Running.
bool InFlight(const Job& job) { return StateOfJob(job.tasks) == JobState::kRunning; }

}  // namespace

void Engine::Impl::CheckedWrite(const std::function<void(CatalogTx&)>& check, bool validate_only,
                                const std::function<void(CatalogTx&, PendingEvents&)>& apply) {
  if (validate_only) {
    catalog->Read(check);
    return;
  }
  Write([&](CatalogTx& tx, PendingEvents& events) {
    check(tx);
    apply(tx, events);
  });
}

void Engine::RemoveRegion(const std::string& account, const std::string& id, bool validate_only) {
  ThrowIfAny(CheckRegionId(id));
  std::optional<Region> region;
  auto check = [&](CatalogTx& tx) {
    RequireAccount(tx, account);
    region = ExistingRegion(tx, id);
    ThrowIfAny(CheckRemoveRegion(id, UseOfRegion(tx, id, /*only_in_flight=*/false)));
  };
  auto apply = [&](CatalogTx& tx, PendingEvents& events) {
    tx.DeleteRegion(id);
    ForgetOriginalsStore(tx, region->store_uri);
    // In the transaction: a region is never gone while its secret stays behind.
    impl_->credentials->Remove(id);
    events.Append(
        tx, MakeRegionEvent(event_type::kRegionRemoved, account, *region,
                            nlohmann::json{{"name", region->name}, {"store", region->store_uri}}));
  };
  impl_->CheckedWrite(check, /*validate_only=*/true, apply);
  if (validate_only) return;
  // The store stays where it is, free for another home to take (its marker names none).
  // Released before the commit: killed between them, the region is still there and its next
  // Check claims the store again; the other way round the store would stay marked.
  impl_->stores->Release(region->store_uri, id);
  try {
    impl_->CheckedWrite(check, /*validate_only=*/false, apply);
  } catch (...) {
    impl_->stores->Reclaim(region->store_uri, id);
    throw;
  }
}

Region Engine::MoveRegion(const std::string& account, const std::string& id,
                          const std::string& store_uri, bool validate_only) {
  auto problems = CheckRegionId(id);
  const std::string uri = AbsoluteStoreUri(store_uri);
  if (auto bad = CheckStoreUri(uri); !bad.empty()) {
    problems.push_back({codes::kInvalidParameter, bad});
  }
  ThrowIfAny(problems);
  std::optional<Region> region;
  auto check = [&](CatalogTx& tx) {
    RequireAccount(tx, account);
    region = ExistingRegion(tx, id);
    ThrowIfAny(CheckMoveRegion(id, UseOfRegion(tx, id, /*only_in_flight=*/true)));
    std::vector<Region> others = tx.ListRegions();
    std::erase_if(others, [&](const Region& other) { return other.id == id; });
    RequireStoreOfItsOwn(uri, others);
  };
  impl_->catalog->Read(check);
  if (region->store_uri == uri) return *region;

  // The images whose manifests the new place must hold: damaged ones stay damaged wherever
  // they are, failed imports left nothing to keep.
  auto images_kept = [&](CatalogTx& tx) {
    std::vector<Image> kept;
    for (Image& image : tx.ListImages({.region = id, .name = std::nullopt})) {
      if (image.status != ImageStatus::kNotAvailable &&
          image.status != ImageStatus::kCreateFailed) {
        kept.push_back(std::move(image));
      }
    }
    return kept;
  };
  std::vector<Image> images;
  std::map<std::string, std::string> digests;
  impl_->catalog->Read([&](CatalogTx& tx) {
    images = images_kept(tx);
    for (const Image& image : images) {
      if (auto digest = tx.GetManifestDigest(image.id)) digests[image.id] = *digest;
    }
  });
  // The new place: a store already (Check never makes one outside the home), this home's to
  // use, holding what the region's images need; a region without images may take a new one.
  std::optional<sigv4::Credentials> saved;
  if (uri.starts_with("s3://")) saved = impl_->credentials->Get(id);
  std::shared_ptr<Store> store = impl_->stores->OpenWith(uri, saved.value_or(sigv4::Credentials{}));
  if (images.empty() && !validate_only) {
    store->Create();
  } else if (!images.empty()) {
    store->Check();
  }
  for (const Image& image : images) {
    std::optional<Manifest> manifest;
    std::string why;
    try {
      manifest = store->GetManifest(image.id);
      if (!manifest) why = "lacks the manifest of image " + image.id;
    } catch (const IntegrityError& e) {
      why = "holds a damaged manifest of image " + image.id + " (" + e.message() + ")";
    }
    if (manifest) {
      auto digest = digests.find(image.id);
      if (digest != digests.end() && digest->second != manifest->ChunkListDigest()) {
        why = "holds another manifest of image " + image.id + " than the one committed";
      } else if (const MissingChunksReport missing = MissingChunks(*store, *manifest);
                 missing.count > 0) {
        // Looked up, not read: a copy cut short lacks whole packs, which this finds; the
        // bytes of those there are checked as they are read, and by a scrub.
        why = "lacks " + std::to_string(missing.count) + " block(s) of image " + image.id +
              " (the first: " + missing.first + ")";
      }
    }
    if (!why.empty()) {
      ThrowCode(codes::kInvalidParameter,
                "store " + Quote(RedactUrl(uri)) + " " + why + ": it is not a copy of region " +
                    id + "'s store (" + RedactUrl(region->store_uri) +
                    "); copy the whole store there first (its manifests/, packs/ and index/)");
    }
  }
  if (validate_only) {
    impl_->catalog->Read(check);
    return *region;
  }
  const std::string old_uri = region->store_uri;
  // The old place is this home's no more; released before the commit (RemoveRegion says why).
  impl_->stores->Release(old_uri, id);
  auto apply = [&](CatalogTx& tx, PendingEvents& events) {
    std::vector<std::string> now, checked;
    for (const Image& image : images_kept(tx)) now.push_back(image.id);
    for (const Image& image : images) checked.push_back(image.id);
    if (now != checked) {
      ThrowCode(codes::kRegionInUse, "the images of region " + id +
                                         " changed while its new store was checked; try again");
    }
    tx.SetRegionStore(id, uri);
    ForgetOriginalsStore(tx, old_uri);
    events.Append(tx, MakeRegionEvent(
                          event_type::kRegionMoved, account, *region,
                          nlohmann::json{{"store", RedactUrl(uri)}, {"from", RedactUrl(old_uri)}}));
  };
  try {
    impl_->CheckedWrite(check, false, apply);
  } catch (...) {
    impl_->stores->Reclaim(old_uri, id);
    throw;
  }
  impl_->stores->Keep(uri, store);
  region->store_uri = uri;
  return *region;
}

void Engine::RemoveAccount(const std::string& account, const std::string& id, bool validate_only) {
  ThrowIfAny(CheckAccountId(id));
  std::optional<Account> target;
  impl_->CheckedWrite(
      [&](CatalogTx& tx) {
        RequireAccount(tx, account);
        target = tx.GetAccount(id);
        if (!target) {
          ThrowCode(codes::kNoSuchAccount,
                    "account " + Quote(id) + " does not exist; list accounts");
        }
        AccountUse use;
        for (const Image& image : tx.ListImages({})) {
          if (image.type == ImageType::kCustom && image.owner == id) {
            use.images_owned.push_back(image.id);
          }
        }
        use.images_shared_with = tx.ImagesSharedWith(id);
        for (const Job& job : tx.ListJobs(id)) {
          if (InFlight(job)) use.jobs_in_flight.push_back(job.id);
        }
        ThrowIfAny(CheckRemoveAccount(id, use));
      },
      validate_only,
      [&](CatalogTx& tx, PendingEvents& events) {
        tx.DeleteAccount(id);
        events.Append(tx, MakeEvent(event_type::kAccountRemoved, account, nullptr, "",
                                    nlohmann::json{{"account", id}, {"name", target->name}}));
      });
}

// ---- images ---------------------------------------------------------------------------

ImageView Engine::ImportImage(const std::string& account, const ImportRequest& request, bool wait,
                              bool system, const CancelToken* cancel, const ProgressFn& progress) {
  if (!system) impl_->catalog->Read([&](CatalogTx& tx) { RequireAccount(tx, account); });
  std::vector<Problem> source_problems;
  std::optional<ImportSourceFacts> facts;
  const std::string path = ImportSourcePath(request.source);
  try {
    auto source = OpenImportSource(path);
    facts = ImportSourceFacts{source->size(), ProbeDiskFormat(*source)};
  } catch (const Error& e) {
    source_problems.push_back({e.code(), e.message()});
  }
  bool region_exists = false;
  impl_->catalog->Read(
      [&](CatalogTx& tx) { region_exists = tx.GetRegion(request.region).has_value(); });
  auto problems = CheckImport(request, region_exists, facts, impl_->options.limits);
  problems.insert(problems.end(), source_problems.begin(), source_problems.end());
  ThrowIfAny(problems);
  impl_->CheckPolicies({.action = "import",
                        .account = account,
                        .image = std::nullopt,
                        .to = {},
                        .accounts = {},
                        .name = request.name});

  Image image;
  image.name = request.name;
  image.region = request.region;
  image.type = system ? ImageType::kSystem : ImageType::kCustom;
  image.owner = system ? "" : account;
  image.status = ImageStatus::kCreating;
  image.size = facts->file_size;
  image.virtual_size = facts->disk.virtual_size;
  image.format = facts->disk.format;
  image.os_type = request.os_type;
  image.os_name = request.os_name;
  image.os_version = request.os_version;
  image.os_arch = request.os_arch;
  image.description = request.description;
  if (request.validate_only) return ImageView{image, TypeSeenBy(image, account), std::nullopt};

  // A sweep of the region and a new writer exclude each other: wait for a running sweep.
  for (bool inserted = false; !inserted;) {
    bool sweeping = false;
    impl_->Write([&](CatalogTx& tx, PendingEvents& events) {
      TimeUs now = NowUs();
      if (impl_->SweepRunning(tx, image.region, now)) {
        sweeping = true;
        return;
      }
      if (!tx.GetRegion(image.region)) {  // removed since it was checked
        ThrowCode(codes::kNoSuchRegion, "region " + Quote(image.region) + " does not exist");
      }
      image.created_us = now;
      do {
        image.id = NewImageId();
      } while (!tx.InsertImage(image));
      PutImportLease(tx, image.id, Lease{impl_->worker_id, now + impl_->options.lease_ms * 1000});
      events.Append(
          tx,
          MakeEvent(event_type::kImageCreated, account, &image, "",
                    nlohmann::json({{"name", image.name}, {"source", RedactUrl(request.source)}})));
      inserted = true;
    });
    if (sweeping) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }

  if (wait) {
    impl_->importer->Run(image.id, path, cancel, progress);
  } else {
    auto* impl = impl_.get();
    std::string id = image.id;
    impl_->background.Spawn([impl, id, path] {
      try {
        impl->importer->Run(id, path);
      } catch (...) {
        // Recorded as CreateFailed in the catalog; nobody waits on this thread.
      }
    });
  }
  return GetImage(system ? image.owner : account, image.id);
}

std::vector<ImageView> Engine::Images(const std::string& account,
                                      const std::optional<std::string>& region,
                                      const std::string& image_type,
                                      const std::optional<std::string>& name) {
  static const std::set<std::string> kTypes{"All", "System", "Custom", "Sharing"};
  if (!kTypes.contains(image_type)) {
    ThrowCode(codes::kInvalidParameter, "image type " + Quote(image_type) +
                                            " is unknown; use All, System, Custom or Sharing");
  }
  std::vector<ImageView> out;
  impl_->catalog->Read([&](CatalogTx& tx) {
    RequireAccount(tx, account);
    if (region && !tx.GetRegion(*region)) {
      ThrowCode(codes::kNoSuchRegion,
                "region " + Quote(*region) + " does not exist; list regions to see them");
    }
    auto shared_list = tx.ImagesSharedWith(account);
    std::set<std::string> shared(shared_list.begin(), shared_list.end());
    for (const auto& image : tx.ListImages({.region = region, .name = name})) {
      if (!CanSee(image, account, shared.contains(image.id))) continue;
      auto view = ViewOf(tx, image, account);
      if (image_type != "All" && view.type != image_type) continue;
      out.push_back(std::move(view));
    }
  });
  return out;
}

ImageView Engine::GetImage(const std::string& account, const std::string& image_id) {
  std::optional<ImageView> view;
  impl_->catalog->Read([&](CatalogTx& tx) {
    if (!account.empty()) RequireAccount(tx, account);
    Image image;
    if (account.empty()) {  // the platform itself (System images)
      ThrowIfAny(CheckImageIdFormat(image_id));
      auto found = tx.GetImage(image_id);
      if (!found || found->status == ImageStatus::kDeleted) {
        ThrowCode(codes::kNoSuchImage, "image " + image_id + " does not exist");
      }
      image = *found;
    } else {
      image = LoadVisible(tx, account, image_id);
    }
    view = ViewOf(tx, image, account);
  });
  return *view;
}

void Engine::Share(const std::string& account, const std::string& image_id,
                   const std::vector<std::string>& accounts, bool validate_only) {
  impl_->Request(
      account, image_id, "share", Unique(accounts), "",
      [&](CatalogTx& tx, const Image& image) {
        ThrowIfAny(CheckShare(image, account, accounts, GatherShareFacts(tx, image, accounts),
                              impl_->options.limits));
      },
      validate_only,
      [&](CatalogTx& tx, PendingEvents& events, const Image& image) {
        for (const auto& other : Unique(accounts)) {
          tx.InsertShare(image.id, other);
          events.Append(tx, MakeEvent(event_type::kImageShared, account, &image, "",
                                      nlohmann::json({{"account", other}})));
        }
      });
}

void Engine::Unshare(const std::string& account, const std::string& image_id,
                     const std::vector<std::string>& accounts, bool validate_only) {
  impl_->Request(
      account, image_id, "unshare", Unique(accounts), "",
      [&](CatalogTx& tx, const Image& image) {
        ThrowIfAny(CheckUnshare(image, account, accounts, GatherShareFacts(tx, image, accounts)));
      },
      validate_only,
      [&](CatalogTx& tx, PendingEvents& events, const Image& image) {
        for (const auto& other : Unique(accounts)) {
          tx.DeleteShare(image.id, other);
          events.Append(tx, MakeEvent(event_type::kImageUnshared, account, &image, "",
                                      nlohmann::json({{"account", other}})));
        }
      });
}

std::vector<std::string> Engine::SharedUsers(const std::string& account,
                                             const std::string& image_id) {
  std::vector<std::string> out;
  impl_->catalog->Read([&](CatalogTx& tx) {
    RequireAccount(tx, account);
    Image image = LoadVisible(tx, account, image_id);
    ThrowIfAny(CheckSharedUsers(image, account));
    out = tx.ListShares(image.id);
  });
  return out;
}

void Engine::Rename(const std::string& account, const std::string& image_id,
                    const std::string& name, bool validate_only) {
  std::optional<Image> renamed;
  impl_->Request(
      account, image_id, "rename", {}, name,
      [&](CatalogTx&, const Image& image) { ThrowIfAny(CheckRename(image, account, name)); },
      validate_only,
      [&](CatalogTx& tx, PendingEvents& events, const Image& current) {
        Image image = current;
        std::string old_name = image.name;
        image.name = name;
        tx.UpdateImageFields(image);
        events.Append(tx, MakeEvent(event_type::kImageRenamed, account, &image, "",
                                    nlohmann::json({{"old", old_name}, {"new", name}})));
        renamed = image;
      });
  if (renamed && renamed->status == ImageStatus::kAvailable) {
    try {
      impl_->StoreFor(renamed->region)->PutImageRecord(renamed->id, ImageRecordJson(*renamed));
    } catch (const std::exception&) {
      // The catalog is the truth; the record in the store is a rebuild aid.
    }
  }
}

void Engine::Delete(const std::string& account, const std::string& image_id, bool validate_only) {
  std::optional<Image> deleted;
  impl_->Request(
      account, image_id, "delete", {}, "",
      [&](CatalogTx& tx, const Image& image) {
        ThrowIfAny(CheckDelete(image, account, tx.ListShares(image.id).size()));
      },
      validate_only,
      [&](CatalogTx& tx, PendingEvents& events, const Image& image) {
        if (!tx.TransitionImage(image.id, image.status, ImageEvent::kDeleted)) {
          ThrowCode(codes::kImageStatusForbidden,
                    "image " + image.id + " changed while it was being deleted; try again");
        }
        tx.SetSweepNeeded(image.region, true);
        events.Append(tx, MakeEvent(event_type::kImageDeleted, account, &image));
        deleted = image;
      });
  if (!deleted) return;  // only validated
  try {
    auto store = impl_->StoreFor(deleted->region);
    store->DeleteManifest(deleted->id);
    store->DeleteImageRecord(deleted->id);
  } catch (const std::exception&) {
    // The sweep removes manifests of deleted images it finds later.
  }
  impl_->sweeper->MaybeSweep(deleted->region);
}

namespace {

// An export's target directory may not be the home, a region's store or inside either.
void RequireOutsideHomeAndStores(const std::string& path, const StorePlace& directory,
                                 const fs::path& home, const std::vector<Region>& regions) {
  auto refuse = [&](const std::string& what) {
    ThrowCode(codes::kInvalidParameter,
              "export path " + Quote(path) + " is inside " + what +
                  "; choose a path outside imagerelay's home and its regions' stores: a file "
                  "written there could replace one of their own");
  };
  if (PlaceOfDirectory(home).Contains(directory)) {
    refuse("imagerelay's home " + Quote(home.string()));
  }
  for (const Region& region : regions) {
    const std::optional<StorePlace> place = PlaceOfStore(region.store_uri);
    if (place && place->Contains(directory)) {
      refuse("the store of region " + region.id + " (" + RedactUrl(region.store_uri) + ")");
    }
  }
}

// A copy still in flight to `image`: Replicating like a source being copied, but with no
// bytes yet.
bool CopyInFlightTo(CatalogTx& tx, const Image& image) {
  if (image.status != ImageStatus::kReplicating) return false;
  const std::optional<Task> task = tx.GetTaskByDestImage(image.id);
  return task && (task->state == TaskState::kPending || task->state == TaskState::kRunning);
}

}  // namespace

void Engine::Export(const std::string& account, const std::string& image_id, const fs::path& path,
                    const CancelToken* cancel, const ProgressFn& progress, bool force) {
  Image image;
  bool in_flight = false;
  std::vector<Region> regions;
  impl_->catalog->Read([&](CatalogTx& tx) {
    RequireAccount(tx, account);
    image = LoadVisible(tx, account, image_id);
    in_flight = CopyInFlightTo(tx, image);
    regions = tx.ListRegions();
  });
  const bool readable = image.status == ImageStatus::kAvailable ||
                        (image.status == ImageStatus::kReplicating && !in_flight);
  if (!readable) {
    ThrowCode(codes::kImageStatusForbidden, "image " + image.id + " is " +
                                                std::string(ToString(image.status)) +
                                                "; wait until it is Available to export it");
  }
  const std::string text = path.string();
  if (text.empty() || text.find('\0') != std::string::npos) {
    ThrowCode(codes::kInvalidParameter, "export path " + Quote(text) + " is invalid");
  }
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    ThrowCode(codes::kInvalidParameter,
              "export path " + Quote(text) + " is a directory; give the path of a file to write");
  }
  fs::path parent = fs::absolute(path).parent_path();
  if (!fs::is_directory(parent, ec)) {
    ThrowCode(codes::kInvalidParameter,
              "directory " + Quote(parent.string()) + " does not exist; create it first");
  }
  if (access(parent.c_str(), W_OK) != 0) {
    ThrowCode(codes::kInvalidParameter,
              "directory " + Quote(parent.string()) + " is not writable; choose another path");
  }
  RequireOutsideHomeAndStores(text, PlaceOfDirectory(parent), impl_->options.home, regions);
  auto store = impl_->StoreFor(image.region);
  const Manifest manifest = impl_->integrity->LoadManifest(image, *store);
  CancelToken stop(cancel);
  try {
    ExportFromStore(*store, manifest, path, stop, progress, force,
                    impl_->options.limits.buffer_memory);
  } catch (const DamagedChunkError& e) {
    impl_->integrity->NoteDamage(e, image.region, *store);
    throw;
  } catch (const Cancelled&) {
    ThrowCode(codes::kTransferFailed, "the export of image " + image.id + " to " + Quote(text) +
                                          " was stopped before it finished; the file was left "
                                          "as it was");
  }
}

std::string Engine::Verify(const std::string& account, const std::string& image_id,
                           const CancelToken* cancel, const ProgressFn& progress) {
  Image image;
  bool in_flight = false;
  impl_->catalog->Read([&](CatalogTx& tx) {
    RequireAccount(tx, account);
    image = LoadVisible(tx, account, image_id);
    in_flight = CopyInFlightTo(tx, image);
  });
  // A damaged (NotAvailable) image may be verified: the answer says what is wrong.
  if (in_flight ||
      (image.status != ImageStatus::kAvailable && image.status != ImageStatus::kReplicating &&
       image.status != ImageStatus::kNotAvailable)) {
    ThrowCode(codes::kImageStatusForbidden, "image " + image.id + " is " +
                                                std::string(ToString(image.status)) +
                                                "; only Available images can be verified");
  }
  auto store = impl_->StoreFor(image.region);
  const Manifest manifest = impl_->integrity->LoadManifest(image, *store);
  CancelToken stop(cancel);
  std::string digest;
  try {
    digest = HashStoredImage(*store, manifest, "image " + image.id + " in region " + image.region,
                             stop, progress, impl_->options.limits.buffer_memory);
  } catch (const DamagedChunkError& e) {
    impl_->integrity->NoteDamage(e, image.region, *store);
    throw;
  } catch (const Cancelled&) {
    ThrowCode(codes::kTransferFailed,
              "the verification of image " + image.id + " was stopped before it finished");
  }
  if (image.digest.empty()) {
    impl_->digester->Record(image.id, digest);  // it was still being computed: now it is known
    return digest;
  }
  if (digest != image.digest || (!manifest.digest.empty() && digest != manifest.digest)) {
    const std::string why =
        "image " + image.id + " hashes to " + digest + " but its digest is " + image.digest;
    impl_->integrity->MarkDamaged(image.id, why);
    ThrowCode(codes::kIntegrityError, why);
  }
  return digest;
}

std::vector<ScrubReport> Engine::Scrub(const std::string& account,
                                       const std::optional<std::string>& region,
                                       const CancelToken* cancel, const ProgressFn& progress) {
  std::vector<std::string> regions;
  impl_->catalog->Read([&](CatalogTx& tx) {
    RequireAccount(tx, account);
    if (region) {
      ThrowIfAny(CheckRegionId(*region));
      if (!tx.GetRegion(*region)) {
        ThrowCode(codes::kNoSuchRegion, "region " + Quote(*region) + " does not exist");
      }
      regions.push_back(*region);
    } else {
      for (const auto& r : tx.ListRegions()) regions.push_back(r.id);
    }
  });
  CancelToken stop(cancel);
  std::vector<ScrubReport> reports;
  for (const auto& id : regions) {
    try {
      reports.push_back(impl_->integrity->ScrubRegion(account, id, stop, progress));
    } catch (const TransferError& e) {
      // Every region: one that cannot be reached is said so, the others are scrubbed.
      if (region || e.code() != codes::kStoreUnavailable) throw;
      ScrubReport unreached;
      unreached.region = id;
      unreached.unavailable = e.message();
      reports.push_back(std::move(unreached));
    }
  }
  return reports;
}

// ---- events and hooks -----------------------------------------------------------------

namespace {

EventImageFacts EventFactsFor(CatalogTx& tx, const Event& event, const std::string& account) {
  EventImageFacts facts;
  if (event.image_id.empty()) return facts;
  facts.image = tx.GetImage(event.image_id);
  if (facts.image && facts.image->type == ImageType::kCustom && facts.image->owner != account) {
    facts.shared_since_us = tx.ShareTime(event.image_id, account);
  }
  return facts;
}

}  // namespace

std::vector<Event> Engine::Events(const std::string& account, int64_t since,
                                  const std::optional<std::string>& image_id,
                                  TimeUs since_time_us) {
  std::vector<Event> out;
  impl_->catalog->Read([&](CatalogTx& tx) {
    RequireAccount(tx, account);
    std::map<std::string, EventImageFacts> facts_of;  // by image id: one look per image
    for (Event& event : tx.ListEvents(since, image_id, 0)) {
      if (event.time_us < since_time_us) continue;
      auto it = facts_of.find(event.image_id);
      if (it == facts_of.end()) {
        it = facts_of.emplace(event.image_id, EventFactsFor(tx, event, account)).first;
      }
      if (EventVisibleTo(event, account, it->second)) {
        out.push_back(EventSeenBy(std::move(event), account, it->second));
      }
    }
  });
  return out;
}

int64_t Engine::AddListener(const std::string& account, const std::string& event_type, EventFn fn) {
  Impl* impl = impl_.get();
  return impl_->bus.Add(event_type, [impl, account, fn = std::move(fn)](const Event& event) {
    EventImageFacts facts;
    if (event.account != account) {
      impl->catalog->Read([&](CatalogTx& tx) { facts = EventFactsFor(tx, event, account); });
    }
    if (EventVisibleTo(event, account, facts)) fn(EventSeenBy(event, account, facts));
  });
}

void Engine::RemoveListener(int64_t handle) { impl_->bus.Remove(handle); }

int64_t Engine::AddPolicy(PolicyFn fn) { return impl_->policies.Add(std::move(fn)); }

void Engine::RemovePolicy(int64_t handle) { impl_->policies.Remove(handle); }

}  // namespace imagerelay
