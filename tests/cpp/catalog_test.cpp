#include "imagerelay/catalog.hpp"

#include <gtest/gtest.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "imagerelay/error.hpp"
#include "imagerelay/state.hpp"
#include "test_bytes.hpp"
#include "test_postgres.hpp"

namespace imagerelay {
namespace {

namespace fs = std::filesystem;

class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "imagerelay-catalog-XXXXXX").string();
    if (mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    fs::permissions(path_, fs::perms::owner_all, fs::perm_options::add, ec);
    fs::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

Image MakeImage(const std::string& id, const std::string& region, TimeUs created_us,
                ImageStatus status = ImageStatus::kAvailable, const std::string& name = "web") {
  Image image;
  image.id = id;
  image.name = name;
  image.region = region;
  image.owner = "alice";
  image.status = status;
  image.created_us = created_us;
  return image;
}

Task MakeTask(const std::string& dest_image_id, const std::string& region,
              TaskState state = TaskState::kPending) {
  Task task;
  task.region = region;
  task.dest_image_id = dest_image_id;
  task.state = state;
  return task;
}

Job MakeJob(const std::string& id, const std::string& account, TimeUs created_us,
            std::vector<Task> tasks) {
  Job job;
  job.id = id;
  job.account = account;
  job.source_image_id = "m-source01";
  job.source_region = "bj";
  job.created_us = created_us;
  job.tasks = std::move(tasks);
  return job;
}

Event MakeEvent(const std::string& type, const std::string& image_id = "") {
  Event event;
  event.time_us = NowUs();
  event.type = type;
  event.account = "alice";
  event.image_id = image_id;
  return event;
}

// Runs `body(i)` in `n` child processes that start it at the same moment (each child runs
// `prepare(i)` first, then waits on a pipe that the parent closes once all are ready).
// Returns the children's exit codes.
std::vector<int> RunInChildren(int n, const std::function<void(int)>& prepare,
                               const std::function<int(int)>& body) {
  int ready[2];
  int go[2];
  if (pipe(ready) != 0 || pipe(go) != 0) throw std::runtime_error("pipe failed");
  std::vector<pid_t> pids;
  for (int i = 0; i < n; ++i) {
    pid_t pid = fork();
    if (pid < 0) throw std::runtime_error("fork failed");
    if (pid == 0) {
      int code = 100;
      try {
        close(ready[0]);
        close(go[1]);
        prepare(i);
        char byte = 'r';
        if (write(ready[1], &byte, 1) != 1) _exit(101);
        if (read(go[0], &byte, 1) != 0) _exit(102);  // returns 0 when the parent closes
        code = body(i);
      } catch (...) {
        code = 103;
      }
      _exit(code);
    }
    pids.push_back(pid);
  }
  close(ready[1]);
  close(go[0]);
  for (int i = 0; i < n; ++i) {
    char byte;
    if (read(ready[0], &byte, 1) != 1) break;  // a child died early; its code says why
  }
  close(go[1]);
  close(ready[0]);
  std::vector<int> codes;
  for (pid_t pid : pids) {
    int status = 0;
    waitpid(pid, &status, 0);
    codes.push_back(WIFEXITED(status) ? WEXITSTATUS(status) : 200);
  }
  return codes;
}

// The contract tests run against both catalogs: "sqlite" (a file in a temporary directory)
// and "postgresql" (a database of its own on the test server, skipped without one).
class CatalogFixture : public ::testing::Test {
 protected:
  void Start(const std::string& backend) {
    if (backend == "postgresql") {
      server_ = testing_util::TestPostgresServer();
      if (!server_) GTEST_SKIP() << testing_util::kNoPostgresMessage;
    }
    place_ = FreshPlace();
    catalog_ = place_();
  }

  // An opener for a new, empty place: a file not yet created, or a new database.
  std::function<std::unique_ptr<Catalog>()> FreshPlace() {
    if (server_) {
      databases_.push_back(std::make_unique<testing_util::ScratchDatabase>(*server_));
      std::string uri = databases_.back()->uri();
      return [uri] { return OpenPostgresCatalog(uri); };
    }
    fs::path path = dir_.path() / ("home" + std::to_string(places_++)) / "catalog.db";
    if (places_ == 1) path_ = path;  // the parent does not exist yet
    return [path] { return OpenSqliteCatalog(path); };
  }

  bool postgres() const { return server_.has_value(); }
  std::unique_ptr<Catalog> Open() { return place_(); }

  void Write(const std::function<void(CatalogTx&)>& fn) { catalog_->Write(fn); }
  void Read(const std::function<void(CatalogTx&)>& fn) { catalog_->Read(fn); }

  std::optional<Image> GetImage(const std::string& id) {
    std::optional<Image> image;
    Read([&](CatalogTx& tx) { image = tx.GetImage(id); });
    return image;
  }

  std::vector<Event> AllEvents() {
    std::vector<Event> events;
    Read([&](CatalogTx& tx) { events = tx.ListEvents(0, std::nullopt, 0); });
    return events;
  }

  void Reopen() {
    catalog_.reset();
    catalog_ = Open();
  }

  TempDir dir_;
  fs::path path_;  // SQLite: the file of the test's catalog
  std::optional<std::string> server_;
  std::vector<std::unique_ptr<testing_util::ScratchDatabase>> databases_;
  int places_ = 0;
  std::function<std::unique_ptr<Catalog>()> place_;
  std::unique_ptr<Catalog> catalog_;
};

class CatalogTest : public CatalogFixture, public ::testing::WithParamInterface<std::string> {
 protected:
  void SetUp() override { Start(GetParam()); }
};

INSTANTIATE_TEST_SUITE_P(Catalogs, CatalogTest, ::testing::Values("sqlite", "postgresql"),
                         [](const auto& info) { return info.param; });

// What only the SQLite catalog has: a file, a write-ahead log, checkpoints.
class SqliteCatalogTest : public CatalogFixture {
 protected:
  void SetUp() override { Start("sqlite"); }
};

// --- Opening, schema, errors -------------------------------------------------------------

TEST_F(SqliteCatalogTest, OpenCreatesParentDirectoryAndUsesWal) {
  EXPECT_TRUE(fs::is_regular_file(path_));
  EXPECT_GE(catalog_->SchemaVersion(), 1);

  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path_.c_str(), &db), SQLITE_OK);
  sqlite3_stmt* stmt = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &stmt, nullptr), SQLITE_OK);
  ASSERT_EQ(sqlite3_step(stmt), SQLITE_ROW);
  EXPECT_STREQ(reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0)), "wal");
  sqlite3_finalize(stmt);
  sqlite3_close(db);
}

TEST_P(CatalogTest, ReopenKeepsDataAndSchemaVersion) {
  const int version = catalog_->SchemaVersion();
  Write([](CatalogTx& tx) {
    tx.InsertRegion({"bj", "Beijing", "/data/bj"});
    tx.InsertImage(MakeImage("m-aaaaaaaa", "bj", 1));
    tx.PutSetting("limits", "{}");
  });
  Reopen();
  Reopen();  // migrating again must be a no-op
  EXPECT_EQ(catalog_->SchemaVersion(), version);
  Read([](CatalogTx& tx) {
    EXPECT_TRUE(tx.GetRegion("bj").has_value());
    EXPECT_TRUE(tx.GetImage("m-aaaaaaaa").has_value());
    EXPECT_EQ(tx.GetSetting("limits"), "{}");
  });
}

TEST_F(SqliteCatalogTest, RefusesSchemaNewerThanItKnows) {
  catalog_.reset();
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path_.c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "PRAGMA user_version = 999", nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(db);
  try {
    OpenSqliteCatalog(path_);
    FAIL() << "expected ValidationError";
  } catch (const ValidationError& e) {
    EXPECT_EQ(e.code(), codes::kInvalidParameter);
    EXPECT_NE(e.message().find("999"), std::string::npos) << e.message();
  }
}

void ExpectCannotOpen(const fs::path& path) {
  try {
    OpenSqliteCatalog(path);
    FAIL() << "expected ValidationError for " << path;
  } catch (const ValidationError& e) {
    EXPECT_EQ(e.code(), codes::kInvalidParameter);
    EXPECT_NE(e.message().find(path.string()), std::string::npos) << e.message();
  }
}

TEST(CatalogOpenTest, PathIsADirectory) {
  TempDir dir;
  ExpectCannotOpen(dir.path());
}

TEST(CatalogOpenTest, ParentIsAFile) {
  TempDir dir;
  std::ofstream(dir.path() / "file") << "x";
  ExpectCannotOpen(dir.path() / "file" / "catalog.db");
}

TEST(CatalogOpenTest, FileIsNotADatabase) {
  TempDir dir;
  std::ofstream(dir.path() / "catalog.db") << std::string(4096, 'x');
  ExpectCannotOpen(dir.path() / "catalog.db");
}

// --- Regions, accounts, settings ---------------------------------------------------------

TEST_P(CatalogTest, RegionsAndAccounts) {
  Write([](CatalogTx& tx) {
    EXPECT_TRUE(tx.InsertRegion({"gz", "Guangzhou", "/data/gz"}));
    EXPECT_TRUE(tx.InsertRegion({"bj", "Beijing", "s3://b/p?endpoint=x"}));
    EXPECT_FALSE(tx.InsertRegion({"bj", "Other", "/other"}));
    EXPECT_TRUE(tx.InsertAccount({"bob", "Bob"}));
    EXPECT_TRUE(tx.InsertAccount({"alice", "Alice"}));
    EXPECT_FALSE(tx.InsertAccount({"alice", "Again"}));
  });
  Read([](CatalogTx& tx) {
    auto bj = tx.GetRegion("bj");
    ASSERT_TRUE(bj);
    EXPECT_EQ(bj->name, "Beijing");
    EXPECT_EQ(bj->store_uri, "s3://b/p?endpoint=x");
    EXPECT_FALSE(tx.GetRegion("su"));
    auto regions = tx.ListRegions();
    ASSERT_EQ(regions.size(), 2u);
    EXPECT_EQ(regions[0].id, "bj");
    EXPECT_EQ(regions[1].id, "gz");

    auto alice = tx.GetAccount("alice");
    ASSERT_TRUE(alice);
    EXPECT_EQ(alice->name, "Alice");
    EXPECT_FALSE(tx.GetAccount("carol"));
    auto accounts = tx.ListAccounts();
    ASSERT_EQ(accounts.size(), 2u);
    EXPECT_EQ(accounts[0].id, "alice");
    EXPECT_EQ(accounts[1].id, "bob");
  });
}

TEST_P(CatalogTest, DeleteRegionAndAccount) {
  Write([](CatalogTx& tx) {
    tx.InsertRegion({"gz", "Guangzhou", "/data/gz"});
    tx.InsertAccount({"alice", "Alice"});
    tx.SetSweepNeeded("gz", true);
    tx.InsertClientToken("alice", "t1", {"j-00000001", "{}"});
  });
  Write([](CatalogTx& tx) {
    EXPECT_TRUE(tx.DeleteRegion("gz"));
    EXPECT_FALSE(tx.DeleteRegion("gz"));
    EXPECT_TRUE(tx.DeleteAccount("alice"));
    EXPECT_FALSE(tx.DeleteAccount("alice"));
  });
  Read([](CatalogTx& tx) {
    EXPECT_FALSE(tx.GetRegion("gz"));
    EXPECT_TRUE(tx.RegionsNeedingSweep().empty());  // its sweep state went with it
    EXPECT_FALSE(tx.GetAccount("alice"));
    EXPECT_FALSE(tx.GetClientToken("alice", "t1"));  // a new alice replays nothing
  });
  // Both ids can be used again.
  Write([](CatalogTx& tx) {
    EXPECT_TRUE(tx.InsertRegion({"gz", "Again", "/data/gz2"}));
    EXPECT_TRUE(tx.InsertAccount({"alice", "Again"}));
  });
}

TEST_P(CatalogTest, Settings) {
  Write([](CatalogTx& tx) {
    EXPECT_FALSE(tx.GetSetting("limits"));
    tx.PutSetting("limits", "a");
    tx.PutSetting("limits", "b");
  });
  Read([](CatalogTx& tx) { EXPECT_EQ(tx.GetSetting("limits"), "b"); });
}

TEST_F(SqliteCatalogTest, DeletedSettingLeavesNoBytesAfterScrub) {
  const std::string secret = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY";
  Write([&](CatalogTx& tx) {
    tx.PutSetting("other", "kept");
    tx.PutSetting("secret", secret);
  });
  Write([](CatalogTx& tx) { tx.DeleteSetting("secret"); });
  catalog_->Scrub();
  Read([](CatalogTx& tx) {
    EXPECT_FALSE(tx.GetSetting("secret"));
    EXPECT_EQ(tx.GetSetting("other"), "kept");
  });
  std::string bytes;
  for (const auto& entry : fs::directory_iterator(path_.parent_path())) {
    bytes += testing_util::ReadFileBytes(entry.path());
  }
  EXPECT_EQ(bytes.find(secret), std::string::npos);
}

TEST_F(SqliteCatalogTest, CommitsLeaveTheLogAndCheckpointFoldsItIn) {
  const std::string marker = "checkpoint-marker-7f3a";
  auto main_file_holds_marker = [&] {
    return testing_util::ReadFileBytes(path_).find(marker) != std::string::npos;
  };
  Write([&](CatalogTx& tx) { tx.PutSetting("marker", marker); });
  EXPECT_FALSE(main_file_holds_marker());  // a small commit never checkpoints by itself
  catalog_->Checkpoint();
  EXPECT_TRUE(main_file_holds_marker());
  Read([&](CatalogTx& tx) { EXPECT_EQ(tx.GetSetting("marker"), marker); });
}

// --- Images ------------------------------------------------------------------------------

TEST_P(CatalogTest, ImageRoundTripsEveryField) {
  Image image = MakeImage("m-abcdefgh", "bj", 123456789, ImageStatus::kCreateFailed, "db.v2");
  image.type = ImageType::kSystem;
  image.owner = "";
  image.size = (1ULL << 63) + 5;  // above INT64_MAX
  image.digest = "sha256:00ff";
  image.format = "qcow2";
  image.os_type = "windows";
  image.os_name = "Windows Server";
  image.os_version = "2022";
  image.os_arch = "arm64";
  image.description = "it's \"quoted\" ünïcode";
  image.source_image_id = "m-source01";
  image.source_region = "gz";
  image.error = "boom";
  Write([&](CatalogTx& tx) { EXPECT_TRUE(tx.InsertImage(image)); });
  auto got = GetImage(image.id);
  ASSERT_TRUE(got);
  EXPECT_EQ(got->id, image.id);
  EXPECT_EQ(got->name, image.name);
  EXPECT_EQ(got->region, image.region);
  EXPECT_EQ(got->type, image.type);
  EXPECT_EQ(got->owner, image.owner);
  EXPECT_EQ(got->status, image.status);
  EXPECT_EQ(got->size, image.size);
  EXPECT_EQ(got->digest, image.digest);
  EXPECT_EQ(got->format, image.format);
  EXPECT_EQ(got->os_type, image.os_type);
  EXPECT_EQ(got->os_name, image.os_name);
  EXPECT_EQ(got->os_version, image.os_version);
  EXPECT_EQ(got->os_arch, image.os_arch);
  EXPECT_EQ(got->description, image.description);
  EXPECT_EQ(got->created_us, image.created_us);
  EXPECT_EQ(got->source_image_id, image.source_image_id);
  EXPECT_EQ(got->source_region, image.source_region);
  EXPECT_EQ(got->error, image.error);
  EXPECT_FALSE(GetImage("m-missing0"));
}

TEST_P(CatalogTest, ListImagesFiltersOrdersAndHidesDeleted) {
  Write([](CatalogTx& tx) {
    tx.InsertImage(MakeImage("m-00000003", "bj", 30, ImageStatus::kAvailable, "web"));
    tx.InsertImage(MakeImage("m-00000001", "bj", 10, ImageStatus::kCreating, "db"));
    tx.InsertImage(MakeImage("m-00000002", "gz", 20, ImageStatus::kReplicating, "web"));
    tx.InsertImage(MakeImage("m-0000000b", "bj", 30, ImageStatus::kCreateFailed, "web"));
    tx.InsertImage(MakeImage("m-0000000d", "bj", 5, ImageStatus::kDeleted, "web"));
  });
  auto ids = [&](const ImageFilter& filter) {
    std::vector<std::string> out;
    Read([&](CatalogTx& tx) {
      for (const auto& image : tx.ListImages(filter)) out.push_back(image.id);
    });
    return out;
  };
  using V = std::vector<std::string>;
  EXPECT_EQ(ids({}), (V{"m-00000001", "m-00000002", "m-00000003", "m-0000000b"}));
  EXPECT_EQ(ids({"bj", std::nullopt}), (V{"m-00000001", "m-00000003", "m-0000000b"}));
  EXPECT_EQ(ids({std::nullopt, "web"}), (V{"m-00000002", "m-00000003", "m-0000000b"}));
  EXPECT_EQ(ids({"bj", "web"}), (V{"m-00000003", "m-0000000b"}));
  EXPECT_EQ(ids({"su", std::nullopt}), V{});
  EXPECT_EQ(ids({"bj", "we"}), V{});  // exact names only
  // GetImage still returns the deleted one.
  auto deleted = GetImage("m-0000000d");
  ASSERT_TRUE(deleted);
  EXPECT_EQ(deleted->status, ImageStatus::kDeleted);
}

TEST_P(CatalogTest, ImageIdsAreNeverReused) {
  const std::string id = "m-reused01";
  Write([&](CatalogTx& tx) {
    EXPECT_TRUE(tx.InsertImage(MakeImage(id, "bj", 1)));
    EXPECT_FALSE(tx.InsertImage(MakeImage(id, "gz", 2)));
    EXPECT_TRUE(tx.TransitionImage(id, ImageStatus::kAvailable, ImageEvent::kDeleted));
  });
  Reopen();
  Write([&](CatalogTx& tx) { EXPECT_FALSE(tx.InsertImage(MakeImage(id, "gz", 3))); });
  auto image = GetImage(id);
  ASSERT_TRUE(image);
  EXPECT_EQ(image->region, "bj");
  EXPECT_EQ(image->status, ImageStatus::kDeleted);
}

TEST_P(CatalogTest, UpdateImageFieldsKeepsIdAndStatus) {
  Write([](CatalogTx& tx) { tx.InsertImage(MakeImage("m-update01", "bj", 1)); });
  Image changed = MakeImage("m-update01", "bj", 1, ImageStatus::kDeleted, "renamed");
  changed.size = 42;
  changed.digest = "sha256:ab";
  changed.error = "e";
  Write([&](CatalogTx& tx) { tx.UpdateImageFields(changed); });
  auto image = GetImage("m-update01");
  ASSERT_TRUE(image);
  EXPECT_EQ(image->name, "renamed");
  EXPECT_EQ(image->size, 42u);
  EXPECT_EQ(image->digest, "sha256:ab");
  EXPECT_EQ(image->error, "e");
  EXPECT_EQ(image->status, ImageStatus::kAvailable);

  EXPECT_THROW(Write([](CatalogTx& tx) { tx.UpdateImageFields(MakeImage("m-none0000", "bj", 1)); }),
               NotFoundError);
}

TEST_P(CatalogTest, TransitionImageFollowsTheTableExhaustively) {
  int n = 0;
  for (ImageStatus actual : kAllImageStatuses) {
    for (ImageStatus expected : kAllImageStatuses) {
      for (ImageEvent event : kAllImageEvents) {
        const std::string id = "m-t" + std::to_string(n++);
        bool won = false;
        Write([&](CatalogTx& tx) {
          tx.InsertImage(MakeImage(id, "bj", n, actual));
          won = tx.TransitionImage(id, expected, event);
        });
        auto next = Transition(expected, event);
        const bool should_win = actual == expected && next.has_value();
        EXPECT_EQ(won, should_win)
            << ToString(actual) << " expected " << ToString(expected) << " " << ToString(event);
        EXPECT_EQ(GetImage(id)->status, should_win ? *next : actual);
      }
    }
  }
  Write([](CatalogTx& tx) {
    EXPECT_FALSE(
        tx.TransitionImage("m-missing0", ImageStatus::kAvailable, ImageEvent::kCopyStarted));
  });
}

// --- Shares ------------------------------------------------------------------------------

TEST_P(CatalogTest, Shares) {
  Write([](CatalogTx& tx) {
    tx.InsertImage(MakeImage("m-bj000001", "bj", 1));
    tx.InsertImage(MakeImage("m-bj000002", "bj", 2));
    tx.InsertImage(MakeImage("m-gz000001", "gz", 3));
    EXPECT_TRUE(tx.InsertShare("m-bj000001", "carol"));
    EXPECT_TRUE(tx.InsertShare("m-bj000001", "bob"));
    EXPECT_FALSE(tx.InsertShare("m-bj000001", "bob"));
    EXPECT_TRUE(tx.InsertShare("m-bj000002", "bob"));
    EXPECT_TRUE(tx.InsertShare("m-gz000001", "bob"));
  });
  Read([](CatalogTx& tx) {
    EXPECT_EQ(tx.ListShares("m-bj000001"), (std::vector<std::string>{"bob", "carol"}));
    EXPECT_TRUE(tx.ListShares("m-gz000002").empty());
    EXPECT_EQ(tx.CountAcceptedShares("bob", "bj"), 2);
    EXPECT_EQ(tx.CountAcceptedShares("bob", "gz"), 1);
    EXPECT_EQ(tx.CountAcceptedShares("carol", "gz"), 0);
    EXPECT_EQ(tx.ImagesSharedWith("bob"),
              (std::vector<std::string>{"m-bj000001", "m-bj000002", "m-gz000001"}));
  });
  Write([](CatalogTx& tx) {
    // A deleted image no longer counts, even if its share row were left behind.
    EXPECT_TRUE(tx.TransitionImage("m-bj000002", ImageStatus::kAvailable, ImageEvent::kDeleted));
    EXPECT_TRUE(tx.DeleteShare("m-bj000001", "carol"));
    EXPECT_FALSE(tx.DeleteShare("m-bj000001", "carol"));
  });
  Read([](CatalogTx& tx) {
    EXPECT_EQ(tx.CountAcceptedShares("bob", "bj"), 1);
    EXPECT_EQ(tx.ImagesSharedWith("bob"), (std::vector<std::string>{"m-bj000001", "m-gz000001"}));
    EXPECT_TRUE(tx.ImagesSharedWith("carol").empty());
    EXPECT_EQ(tx.ListShares("m-bj000001"), std::vector<std::string>{"bob"});
  });
  // Foreign key: no share of an image that does not exist.
  EXPECT_THROW(Write([](CatalogTx& tx) { tx.InsertShare("m-missing0", "bob"); }), Error);
}

// --- Jobs and tasks ----------------------------------------------------------------------

TEST_P(CatalogTest, JobsWithTasks) {
  Task su = MakeTask("m-su000001", "su");
  su.bytes_total = 10;
  Write([&](CatalogTx& tx) {
    tx.InsertJob(MakeJob("job-1", "alice", 100, {su, MakeTask("m-gz000001", "gz")}));
    tx.InsertJob(MakeJob("job-2", "bob", 200, {MakeTask("m-gz000002", "gz")}));
    tx.InsertJob(MakeJob("job-3", "alice", 200, {MakeTask("m-gz000003", "gz")}));
  });
  Read([](CatalogTx& tx) {
    auto job = tx.GetJob("job-1");
    ASSERT_TRUE(job);
    EXPECT_EQ(job->account, "alice");
    EXPECT_EQ(job->source_image_id, "m-source01");
    EXPECT_EQ(job->source_region, "bj");
    EXPECT_EQ(job->created_us, 100);
    ASSERT_EQ(job->tasks.size(), 2u);
    EXPECT_EQ(job->tasks[0].region, "gz");
    EXPECT_EQ(job->tasks[1].region, "su");
    EXPECT_EQ(job->tasks[1].job_id, "job-1");
    EXPECT_EQ(job->tasks[1].bytes_total, 10u);
    EXPECT_FALSE(tx.GetJob("job-9"));

    auto ids = [](const std::vector<Job>& jobs) {
      std::vector<std::string> out;
      for (const auto& j : jobs) out.push_back(j.id);
      return out;
    };
    using V = std::vector<std::string>;
    EXPECT_EQ(ids(tx.ListJobs("")), (V{"job-3", "job-2", "job-1"}));
    EXPECT_EQ(ids(tx.ListJobs("alice")), (V{"job-3", "job-1"}));
    EXPECT_EQ(ids(tx.ListJobs("carol")), V{});
    EXPECT_EQ(tx.ListJobs("alice")[1].tasks.size(), 2u);

    auto task = tx.GetTaskByDestImage("m-gz000002");
    ASSERT_TRUE(task);
    EXPECT_EQ(task->job_id, "job-2");
    EXPECT_EQ(task->state, TaskState::kPending);
    EXPECT_FALSE(tx.GetTaskByDestImage("m-none0000"));
  });
}

TEST_P(CatalogTest, ListTasksInStatesOldestJobFirst) {
  Write([](CatalogTx& tx) {
    tx.InsertJob(MakeJob(
        "job-new", "alice", 300,
        {MakeTask("m-1", "gz", TaskState::kRunning), MakeTask("m-2", "bj", TaskState::kPending)}));
    tx.InsertJob(MakeJob(
        "job-old", "alice", 100,
        {MakeTask("m-3", "su", TaskState::kPending), MakeTask("m-4", "gz", TaskState::kCompleted),
         MakeTask("m-5", "bj", TaskState::kRunning)}));
  });
  Read([](CatalogTx& tx) {
    auto ids = [&](const std::vector<TaskState>& states) {
      std::vector<std::string> out;
      for (const auto& t : tx.ListTasksInStates(states)) out.push_back(t.dest_image_id);
      return out;
    };
    using V = std::vector<std::string>;
    EXPECT_EQ(ids({TaskState::kPending, TaskState::kRunning}), (V{"m-5", "m-3", "m-2", "m-1"}));
    EXPECT_EQ(ids({TaskState::kPending}), (V{"m-3", "m-2"}));
    EXPECT_EQ(ids({TaskState::kCompleted}), V{"m-4"});
    EXPECT_EQ(ids({}), V{});
  });
}

TEST_P(CatalogTest, UpdateTaskFieldsKeepsState) {
  Write([](CatalogTx& tx) {
    tx.InsertJob(MakeJob("job-1", "alice", 1, {MakeTask("m-1", "gz", TaskState::kRunning)}));
  });
  Task t = MakeTask("m-1", "zz", TaskState::kCompleted);
  t.job_id = "job-x";
  t.bytes_total = 1ULL << 40;
  t.bytes_done = 7;
  t.bytes_transferred = 6;
  t.chunks_total = 5;
  t.chunks_skipped = 4;
  t.rate = 1.5e6;
  t.attempts = 3;
  t.error = "reset";
  t.error_code = "Transfer.Failed";
  t.started_us = 11;
  t.finished_us = 12;
  t.lease_owner = "host:1:abc";
  t.lease_expires_us = 13;
  Write([&](CatalogTx& tx) { tx.UpdateTaskFields(t); });
  Read([&](CatalogTx& tx) {
    auto got = tx.GetTaskByDestImage("m-1");
    ASSERT_TRUE(got);
    EXPECT_EQ(got->state, TaskState::kRunning);
    EXPECT_EQ(got->job_id, "job-1");
    EXPECT_EQ(got->region, "gz");
    EXPECT_EQ(got->bytes_total, t.bytes_total);
    EXPECT_EQ(got->bytes_done, t.bytes_done);
    EXPECT_EQ(got->bytes_transferred, t.bytes_transferred);
    EXPECT_EQ(got->chunks_total, t.chunks_total);
    EXPECT_EQ(got->chunks_skipped, t.chunks_skipped);
    EXPECT_DOUBLE_EQ(got->rate, t.rate);
    EXPECT_EQ(got->attempts, t.attempts);
    EXPECT_EQ(got->error, t.error);
    EXPECT_EQ(got->error_code, t.error_code);
    EXPECT_EQ(got->started_us, t.started_us);
    EXPECT_EQ(got->finished_us, t.finished_us);
    EXPECT_EQ(got->lease_owner, t.lease_owner);
    EXPECT_EQ(got->lease_expires_us, t.lease_expires_us);
  });
  EXPECT_THROW(Write([](CatalogTx& tx) { tx.UpdateTaskFields(MakeTask("m-none", "gz")); }),
               NotFoundError);
}

TEST_P(CatalogTest, TransitionTaskFollowsTheTableExhaustively) {
  int n = 0;
  for (TaskState actual : kAllTaskStates) {
    for (TaskState expected : kAllTaskStates) {
      for (TaskEvent event : kAllTaskEvents) {
        const std::string id = "m-t" + std::to_string(n);
        const std::string job_id = "job-" + std::to_string(n++);
        bool won = false;
        Write([&](CatalogTx& tx) {
          tx.InsertJob(MakeJob(job_id, "alice", n, {MakeTask(id, "gz", actual)}));
          won = tx.TransitionTask(id, expected, event);
        });
        auto next = Transition(expected, event);
        const bool should_win = actual == expected && next.has_value();
        EXPECT_EQ(won, should_win)
            << ToString(actual) << " expected " << ToString(expected) << " " << ToString(event);
        Read([&](CatalogTx& tx) {
          EXPECT_EQ(tx.GetTaskByDestImage(id)->state, should_win ? *next : actual);
        });
      }
    }
  }
}

TEST_P(CatalogTest, ClientTokens) {
  Write([](CatalogTx& tx) {
    EXPECT_FALSE(tx.GetClientToken("alice", "t1"));
    tx.InsertClientToken("alice", "t1", {"job-1", "fp-1"});
    tx.InsertClientToken("bob", "t1", {"job-2", "fp-2"});
  });
  Read([](CatalogTx& tx) {
    auto alice = tx.GetClientToken("alice", "t1");
    ASSERT_TRUE(alice);
    EXPECT_EQ(alice->job_id, "job-1");
    EXPECT_EQ(alice->fingerprint, "fp-1");
    EXPECT_EQ(tx.GetClientToken("bob", "t1")->job_id, "job-2");
    EXPECT_FALSE(tx.GetClientToken("alice", "t2"));
  });
}

// --- Events ------------------------------------------------------------------------------

TEST_P(CatalogTest, EventsAppendAndList) {
  std::vector<int64_t> seqs;
  Write([&](CatalogTx& tx) {
    Event e = MakeEvent("ImageCreated", "m-1");
    e.job_id = "job-1";
    e.region = "bj";
    e.detail_json = R"({"size":1})";
    seqs.push_back(tx.AppendEvent(e));
    seqs.push_back(tx.AppendEvent(MakeEvent("ImageCreated", "m-2")));
    seqs.push_back(tx.AppendEvent(MakeEvent("CopyStarted", "m-1")));
    seqs.push_back(tx.AppendEvent(MakeEvent("Other")));
  });
  ASSERT_EQ(seqs.size(), 4u);
  for (size_t i = 1; i < seqs.size(); ++i) EXPECT_GT(seqs[i], seqs[i - 1]);

  Read([&](CatalogTx& tx) {
    auto all = tx.ListEvents(0, std::nullopt, 0);
    ASSERT_EQ(all.size(), 4u);
    EXPECT_EQ(all[0].seq, seqs[0]);
    EXPECT_EQ(all[0].type, "ImageCreated");
    EXPECT_EQ(all[0].account, "alice");
    EXPECT_EQ(all[0].image_id, "m-1");
    EXPECT_EQ(all[0].job_id, "job-1");
    EXPECT_EQ(all[0].region, "bj");
    EXPECT_EQ(all[0].detail_json, R"({"size":1})");
    EXPECT_GT(all[0].time_us, 0);

    EXPECT_EQ(tx.ListEvents(seqs[1], std::nullopt, -1).size(), 2u);
    auto limited = tx.ListEvents(0, std::nullopt, 3);
    ASSERT_EQ(limited.size(), 3u);
    EXPECT_EQ(limited[2].seq, seqs[2]);
    auto of_m1 = tx.ListEvents(0, std::string("m-1"), 0);
    ASSERT_EQ(of_m1.size(), 2u);
    EXPECT_EQ(of_m1[1].type, "CopyStarted");
    EXPECT_EQ(tx.ListEvents(seqs[0], std::string("m-1"), 1).size(), 1u);
    EXPECT_TRUE(tx.ListEvents(seqs[3], std::nullopt, 0).empty());
  });
}

// --- Sweep lease -------------------------------------------------------------------------

// Whether a live holder has `region`'s sweep lease at `now`, as a writer would see it.
bool LeaseHeld(CatalogTx& tx, const std::string& region, TimeUs now) {
  auto lease = tx.GetSweepLease(region);
  return lease && !lease->first.empty() && lease->second >= now;
}

TEST_P(CatalogTest, SweepLease) {
  const TimeUs now = NowUs();
  const TimeUs later = now + 60'000'000;
  Write([&](CatalogTx& tx) {
    EXPECT_FALSE(LeaseHeld(tx, "bj", now));
    EXPECT_TRUE(tx.AcquireSweepLease("bj", "a", later));
    EXPECT_TRUE(LeaseHeld(tx, "bj", now));
    EXPECT_FALSE(LeaseHeld(tx, "bj", later + 1));
    EXPECT_FALSE(tx.AcquireSweepLease("bj", "b", later));
    EXPECT_TRUE(tx.AcquireSweepLease("bj", "a", later + 5));  // renewal
    EXPECT_TRUE(tx.AcquireSweepLease("gz", "b", later));      // per region
    tx.ReleaseSweepLease("bj", "b");                          // not the holder: no-op
    EXPECT_TRUE(LeaseHeld(tx, "bj", now));
    tx.ReleaseSweepLease("bj", "a");
    EXPECT_FALSE(LeaseHeld(tx, "bj", now));
    EXPECT_TRUE(tx.AcquireSweepLease("bj", "b", later));
    // An expired lease can be taken over.
    EXPECT_TRUE(tx.AcquireSweepLease("su", "dead", now - 1'000'000));
    EXPECT_FALSE(LeaseHeld(tx, "su", now));
    EXPECT_TRUE(tx.AcquireSweepLease("su", "c", later));
    EXPECT_TRUE(LeaseHeld(tx, "su", now));
  });
}

TEST_P(CatalogTest, SweepNeeded) {
  Write([](CatalogTx& tx) {
    EXPECT_TRUE(tx.RegionsNeedingSweep().empty());
    tx.SetSweepNeeded("gz", true);
    tx.SetSweepNeeded("bj", true);
    tx.SetSweepNeeded("su", false);
    EXPECT_TRUE(tx.AcquireSweepLease("su", "a", NowUs() + 1'000'000));
  });
  Read([](CatalogTx& tx) {
    EXPECT_EQ(tx.RegionsNeedingSweep(), (std::vector<std::string>{"bj", "gz"}));
  });
  Write([](CatalogTx& tx) {
    tx.SetSweepNeeded("bj", false);
    tx.SetSweepNeeded("su", true);  // keeps the lease
    EXPECT_TRUE(LeaseHeld(tx, "su", NowUs()));
  });
  Read([](CatalogTx& tx) {
    EXPECT_EQ(tx.RegionsNeedingSweep(), (std::vector<std::string>{"gz", "su"}));
  });
}

// A sweep clears the flag only if no garbage was made while it ran (it took the mark first);
// a sweep that never ends (killed) leaves it set.
TEST_P(CatalogTest, SweepNeededMarkTellsWhetherGarbageCameWhileASweepRan) {
  int64_t mark = 0;
  Write([&](CatalogTx& tx) {
    EXPECT_EQ(tx.SweepNeededMark("bj"), 0);
    tx.SetSweepNeeded("bj", true);
    mark = tx.SweepNeededMark("bj");
    EXPECT_NE(mark, 0);
    EXPECT_FALSE(tx.GetSweepLease("bj"));
    EXPECT_TRUE(tx.AcquireSweepLease("bj", "host:1:n:sweep", NowUs() + 1'000'000));
    tx.SetSweepNeeded("bj", true);  // a delete while the sweep runs
    tx.ClearSweepNeeded("bj", mark);
  });
  Write([&](CatalogTx& tx) {
    EXPECT_EQ(tx.RegionsNeedingSweep(), (std::vector<std::string>{"bj"}));
    auto lease = tx.GetSweepLease("bj");
    ASSERT_TRUE(lease);
    EXPECT_EQ(lease->first, "host:1:n:sweep");
    tx.ClearSweepNeeded("bj", tx.SweepNeededMark("bj"));
    EXPECT_TRUE(tx.RegionsNeedingSweep().empty());
  });
}

TEST_P(CatalogTest, ManifestDigestsAndShareTimes) {
  Write([](CatalogTx& tx) {
    tx.InsertRegion({"bj", "Beijing", "/data/bj"});
    tx.InsertAccount({"alice", "Alice"});
    Image image;
    image.id = "m-aaaaaaa1";
    image.name = "a";
    image.region = "bj";
    image.owner = "alice";
    EXPECT_TRUE(tx.InsertImage(image));
    EXPECT_FALSE(tx.GetManifestDigest(image.id));
    tx.PutManifestDigest(image.id, "d1");
    tx.PutManifestDigest(image.id, "d2");
    EXPECT_EQ(tx.GetManifestDigest(image.id), "d2");
    EXPECT_FALSE(tx.ShareTime(image.id, "bob"));
    const TimeUs before = NowUs();
    EXPECT_TRUE(tx.InsertShare(image.id, "bob"));
    auto at = tx.ShareTime(image.id, "bob");
    ASSERT_TRUE(at);
    EXPECT_GE(*at, before);
  });
}

// --- Transactions ------------------------------------------------------------------------

TEST_P(CatalogTest, WriteRollsBackWhenTheCallbackThrows) {
  EXPECT_THROW(Write([](CatalogTx& tx) {
                 tx.InsertRegion({"bj", "Beijing", "/data/bj"});
                 tx.InsertImage(MakeImage("m-rollback", "bj", 1));
                 tx.AppendEvent(MakeEvent("ImageCreated", "m-rollback"));
                 tx.InsertJob(MakeJob("job-1", "alice", 1, {MakeTask("m-x", "gz")}));
                 throw std::runtime_error("stop");
               }),
               std::runtime_error);
  Read([](CatalogTx& tx) {
    EXPECT_TRUE(tx.ListRegions().empty());
    EXPECT_FALSE(tx.GetImage("m-rollback"));
    EXPECT_TRUE(tx.ListEvents(0, std::nullopt, 0).empty());
    EXPECT_FALSE(tx.GetJob("job-1"));
  });
  // The catalog stays usable, and the id was not used.
  Write([](CatalogTx& tx) { EXPECT_TRUE(tx.InsertImage(MakeImage("m-rollback", "bj", 1))); });
}

TEST_P(CatalogTest, FailedStatementRollsBackTheWholeWrite) {
  Write([](CatalogTx& tx) { tx.InsertClientToken("alice", "t", {"job-1", "fp"}); });
  EXPECT_THROW(Write([](CatalogTx& tx) {
                 tx.PutSetting("k", "v");
                 tx.InsertClientToken("alice", "t", {"job-2", "fp2"});  // duplicate key
               }),
               Error);
  Read([](CatalogTx& tx) {
    EXPECT_FALSE(tx.GetSetting("k"));
    EXPECT_EQ(tx.GetClientToken("alice", "t")->job_id, "job-1");
  });
}

TEST_P(CatalogTest, ReadRefusesChanges) {
  EXPECT_THROW(Read([](CatalogTx& tx) { tx.PutSetting("k", "v"); }), Error);
  Read([](CatalogTx& tx) { EXPECT_FALSE(tx.GetSetting("k")); });
}

TEST_P(CatalogTest, NestedCallsAreRefused) {
  EXPECT_THROW(Write([&](CatalogTx&) { Read([](CatalogTx&) {}); }), Error);
  EXPECT_THROW(Read([&](CatalogTx&) { Write([](CatalogTx&) {}); }), Error);
  Write([](CatalogTx& tx) { tx.PutSetting("k", "v"); });  // still usable
}

TEST_P(CatalogTest, ThreadsShareOneCatalog) {
  constexpr int kThreads = 8;
  constexpr int kEach = 25;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < kEach; ++i) {
        Write([](CatalogTx& tx) { tx.AppendEvent(MakeEvent("Tick")); });
        Read([](CatalogTx& tx) { tx.ListEvents(0, std::nullopt, 1); });
      }
    });
  }
  for (auto& thread : threads) thread.join();
  auto events = AllEvents();
  EXPECT_EQ(events.size(), static_cast<size_t>(kThreads * kEach));
}

// A second connection holding the write lock, as another process would.
class ForeignWriter {
 public:
  explicit ForeignWriter(const fs::path& path) {
    EXPECT_EQ(sqlite3_open(path.c_str(), &db_), SQLITE_OK);
    EXPECT_EQ(Exec("BEGIN IMMEDIATE"), SQLITE_OK);
    EXPECT_EQ(Exec("INSERT INTO settings (key, value) VALUES ('foreign', 'uncommitted')"),
              SQLITE_OK);
  }
  ~ForeignWriter() { sqlite3_close(db_); }
  int Exec(const char* sql) { return sqlite3_exec(db_, sql, nullptr, nullptr, nullptr); }

 private:
  sqlite3* db_ = nullptr;
};

TEST_F(SqliteCatalogTest, ReadersAreNotBlockedByAWriter) {
  ForeignWriter writer(path_);
  Read([](CatalogTx& tx) { EXPECT_FALSE(tx.GetSetting("foreign")); });
  EXPECT_EQ(writer.Exec("COMMIT"), SQLITE_OK);
  Read([](CatalogTx& tx) { EXPECT_EQ(tx.GetSetting("foreign"), "uncommitted"); });
}

TEST_F(SqliteCatalogTest, WriteWaitsForAnotherWriter) {
  ForeignWriter writer(path_);
  std::thread releaser([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    EXPECT_EQ(writer.Exec("ROLLBACK"), SQLITE_OK);
  });
  Write([](CatalogTx& tx) { tx.PutSetting("mine", "1"); });  // waits instead of failing
  releaser.join();
  Read([](CatalogTx& tx) {
    EXPECT_EQ(tx.GetSetting("mine"), "1");
    EXPECT_FALSE(tx.GetSetting("foreign"));
  });
}

// --- Several processes -------------------------------------------------------------------

TEST_P(CatalogTest, ExactlyOneProcessWinsACompareAndSet) {
  constexpr int kChildren = 4;
  const std::string id = "m-race0001";
  Write([&](CatalogTx& tx) { tx.InsertImage(MakeImage(id, "bj", 1)); });
  catalog_.reset();  // no connection crosses fork()

  std::unique_ptr<Catalog> child_catalog;
  auto codes = RunInChildren(
      kChildren, [&](int) { child_catalog = Open(); },
      [&](int) {
        bool won = false;
        child_catalog->Write([&](CatalogTx& tx) {
          won = tx.TransitionImage(id, ImageStatus::kAvailable, ImageEvent::kCopyStarted);
        });
        return won ? 0 : 1;
      });
  int winners = 0;
  for (int code : codes) {
    EXPECT_TRUE(code == 0 || code == 1) << "child exit code " << code;
    winners += code == 0;
  }
  EXPECT_EQ(winners, 1);
  Reopen();
  EXPECT_EQ(GetImage(id)->status, ImageStatus::kReplicating);
}

TEST_P(CatalogTest, ConcurrentWriterProcessesLoseNothing) {
  constexpr int kChildren = 4;
  constexpr int kEach = 50;
  catalog_.reset();
  std::unique_ptr<Catalog> child_catalog;
  auto codes = RunInChildren(
      kChildren, [&](int) { child_catalog = Open(); },
      [&](int child) {
        for (int i = 0; i < kEach; ++i) {
          child_catalog->Write(
              [&](CatalogTx& tx) { tx.AppendEvent(MakeEvent("Child" + std::to_string(child))); });
        }
        return 0;
      });
  for (int code : codes) EXPECT_EQ(code, 0);
  Reopen();
  auto events = AllEvents();
  EXPECT_EQ(events.size(), static_cast<size_t>(kChildren * kEach));
  std::set<int64_t> seqs;
  for (const auto& e : events) seqs.insert(e.seq);
  EXPECT_EQ(seqs.size(), events.size());
  EXPECT_EQ(*seqs.rbegin() - *seqs.begin() + 1, static_cast<int64_t>(seqs.size()));  // no gap
}

TEST_P(CatalogTest, ConcurrentFirstOpenMigratesOnce) {
  constexpr int kChildren = 4;
  catalog_.reset();
  auto open_new = FreshPlace();
  auto codes = RunInChildren(
      kChildren, [](int) {},
      [&](int child) {
        auto catalog = open_new();
        catalog->Write([&](CatalogTx& tx) {
          tx.InsertAccount({"acct" + std::to_string(child), "A"});
        });
        return 0;
      });
  for (int code : codes) EXPECT_EQ(code, 0);
  auto catalog = open_new();
  EXPECT_GE(catalog->SchemaVersion(), 1);
  catalog->Read([&](CatalogTx& tx) { EXPECT_EQ(tx.ListAccounts().size(), 4u); });
}

// Workers in several processes claim from 1,000 queued tasks, a few per Write() as the
// engine claims a job's tasks, with the compare-and-set TransitionTask: each task is
// claimed exactly once, and every one is.
TEST_P(CatalogTest, RacingClaimsTakeEachOfAThousandTasksOnce) {
  constexpr int kTasks = 1000;
  constexpr int kChildren = 4;
  constexpr size_t kBatch = 8;
  Write([&](CatalogTx& tx) {
    for (int j = 0; j < kTasks / 10; ++j) {
      std::vector<Task> tasks;
      for (int t = 0; t < 10; ++t) {
        tasks.push_back(MakeTask("m-" + std::to_string(j * 10 + t), "r" + std::to_string(t)));
      }
      tx.InsertJob(MakeJob("job-" + std::to_string(j), "alice", j, std::move(tasks)));
    }
  });
  catalog_.reset();
  const fs::path out = dir_.path() / "claims";
  fs::create_directories(out);
  std::unique_ptr<Catalog> child_catalog;
  auto codes = RunInChildren(
      kChildren, [&](int) { child_catalog = Open(); },
      [&](int child) {
        std::ofstream claimed(out / std::to_string(child));
        for (;;) {
          std::vector<std::string> mine;
          child_catalog->Write([&](CatalogTx& tx) {
            mine.clear();
            for (const Task& task : tx.ListTasksInStates({TaskState::kPending})) {
              if (mine.size() == kBatch) break;
              if (tx.TransitionTask(task.dest_image_id, TaskState::kPending, TaskEvent::kStart)) {
                mine.push_back(task.dest_image_id);
              }
            }
          });
          if (mine.empty()) return 0;
          for (const auto& id : mine) claimed << id << "\n";
        }
      });
  for (int code : codes) EXPECT_EQ(code, 0);
  std::multiset<std::string> claims;
  for (int child = 0; child < kChildren; ++child) {
    std::ifstream in(out / std::to_string(child));
    for (std::string id; std::getline(in, id);) claims.insert(id);
  }
  EXPECT_EQ(claims.size(), static_cast<size_t>(kTasks));
  EXPECT_EQ(std::set<std::string>(claims.begin(), claims.end()).size(),
            static_cast<size_t>(kTasks));  // none twice
  Reopen();
  Read([&](CatalogTx& tx) {
    EXPECT_TRUE(tx.ListTasksInStates({TaskState::kPending}).empty());
    EXPECT_EQ(tx.ListTasksInStates({TaskState::kRunning}).size(), static_cast<size_t>(kTasks));
  });
}

// --- Two connections (as two processes, or two hosts) ------------------------------------

// A Write() held open on a catalog of its own until Release().
class HeldWrite {
 public:
  explicit HeldWrite(std::unique_ptr<Catalog> catalog) : catalog_(std::move(catalog)) {
    auto started = started_.get_future();
    thread_ = std::thread([this, release = release_.get_future()] {
      catalog_->Write([&](CatalogTx& tx) {
        tx.PutSetting("foreign", "uncommitted");
        started_.set_value();
        release.wait();
      });
    });
    started.wait();
  }
  ~HeldWrite() { Release(); }
  HeldWrite(const HeldWrite&) = delete;
  HeldWrite& operator=(const HeldWrite&) = delete;
  void Release() {
    if (!thread_.joinable()) return;
    release_.set_value();
    thread_.join();
  }

 private:
  std::unique_ptr<Catalog> catalog_;
  std::promise<void> started_;
  std::promise<void> release_;
  std::thread thread_;
};

TEST_P(CatalogTest, ReadersDoNotWaitForAnotherConnectionsWrite) {
  HeldWrite writer(Open());
  Read([](CatalogTx& tx) { EXPECT_FALSE(tx.GetSetting("foreign")); });
  writer.Release();
  Read([](CatalogTx& tx) { EXPECT_EQ(tx.GetSetting("foreign"), "uncommitted"); });
}

TEST_P(CatalogTest, WritesOfTwoConnectionsAreSerialised) {
  auto writer = std::make_unique<HeldWrite>(Open());
  std::optional<std::string> seen;
  std::thread mine([&] {
    // Starts while the other write is open: it must run after that one committed.
    Write([&](CatalogTx& tx) {
      seen = tx.GetSetting("foreign");
      tx.PutSetting("mine", "1");
    });
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  writer.reset();  // commits
  mine.join();
  EXPECT_EQ(seen, "uncommitted");
  Read([](CatalogTx& tx) { EXPECT_EQ(tx.GetSetting("mine"), "1"); });
}

TEST_P(CatalogTest, EventSeqsHaveNoGapAfterARollback) {
  Write([](CatalogTx& tx) { tx.AppendEvent(MakeEvent("First")); });
  EXPECT_THROW(Write([](CatalogTx& tx) {
                 tx.AppendEvent(MakeEvent("RolledBack"));
                 throw std::runtime_error("stop");
               }),
               std::runtime_error);
  Write([](CatalogTx& tx) { tx.AppendEvent(MakeEvent("Second")); });
  auto events = AllEvents();
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].type, "First");
  EXPECT_EQ(events[1].type, "Second");
  EXPECT_EQ(events[1].seq, events[0].seq + 1);
}

// --- PostgreSQL only ---------------------------------------------------------------------

class PostgresCatalogTest : public CatalogFixture {
 protected:
  void SetUp() override { Start("postgresql"); }
  // Cuts every other session of the test's database, as a server restart would.
  void CutSessions() {
    databases_.front()->Exec(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
        "current_database() AND pid <> pg_backend_pid()");
  }
};

TEST_F(PostgresCatalogTest, RefusesSchemaNewerThanItKnows) {
  databases_.front()->Exec("UPDATE imagerelay_schema SET version = 999");
  catalog_.reset();
  try {
    Open();
    FAIL() << "expected ValidationError";
  } catch (const ValidationError& e) {
    EXPECT_EQ(e.code(), codes::kInvalidParameter);
    EXPECT_NE(e.message().find("999"), std::string::npos) << e.message();
  }
}

TEST_F(PostgresCatalogTest, ListingsSortBytewiseWhateverTheLocale) {
  Write([](CatalogTx& tx) {
    for (const char* id : {"b", "B", "a", "_x", "A"}) tx.InsertAccount({id, id});
  });
  std::vector<std::string> ids;
  Read([&](CatalogTx& tx) {
    for (const auto& account : tx.ListAccounts()) ids.push_back(account.id);
  });
  EXPECT_EQ(ids, (std::vector<std::string>{"A", "B", "_x", "a", "b"}));
}

TEST_F(PostgresCatalogTest, ReconnectsAfterTheServerCutTheSession) {
  Write([](CatalogTx& tx) { tx.PutSetting("before", "1"); });
  CutSessions();
  Write([](CatalogTx& tx) { tx.PutSetting("after", "1"); });  // a new session, unnoticed
  Read([](CatalogTx& tx) {
    EXPECT_EQ(tx.GetSetting("before"), "1");
    EXPECT_EQ(tx.GetSetting("after"), "1");
  });
}

TEST_F(PostgresCatalogTest, AWriteCutMidwayFailsRetryablyAndChangesNothing) {
  try {
    Write([&](CatalogTx& tx) {
      tx.PutSetting("half", "1");
      CutSessions();
      tx.PutSetting("other-half", "1");
    });
    FAIL() << "expected Catalog.Unavailable";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), codes::kCatalogUnavailable) << e.message();
    EXPECT_NE(e.message().find("retry"), std::string::npos) << e.message();
  }
  Read([](CatalogTx& tx) { EXPECT_FALSE(tx.GetSetting("half")); });
}

TEST_F(PostgresCatalogTest, AnotherConnectionsCommitCallsTheListener) {
  std::mutex mutex;
  std::condition_variable called;
  int calls = 0;
  auto wait_for_calls = [&](int n) {
    std::unique_lock lock(mutex);
    return called.wait_for(lock, std::chrono::seconds(30), [&] { return calls >= n; });
  };
  catalog_->SetChangeListener([&] {
    std::lock_guard lock(mutex);
    ++calls;
    called.notify_all();
  });
  ASSERT_TRUE(wait_for_calls(1));  // once when it starts listening
  auto other = Open();
  other->Write([](CatalogTx& tx) { tx.PutSetting("from", "another host"); });
  EXPECT_TRUE(wait_for_calls(2));
  catalog_->SetChangeListener(nullptr);
  const int before = calls;
  other->Write([](CatalogTx& tx) { tx.PutSetting("from", "again"); });
  Read([](CatalogTx& tx) { EXPECT_EQ(tx.GetSetting("from"), "again"); });
  EXPECT_EQ(calls, before);  // stopped: no call after SetChangeListener(nullptr) returned
}

TEST_F(PostgresCatalogTest, DescribeNamesTheDatabase) {
  EXPECT_EQ(catalog_->Describe(), databases_.front()->uri());
}

TEST(PostgresCatalogOpenTest, PasswordNeverInAMessage) {
  const std::string uri = "postgresql://alice:s3cr3t-pw@127.0.0.1:1/db?connect_timeout=2";
  try {
    OpenPostgresCatalog(uri);
    FAIL() << "expected Catalog.Unavailable";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), codes::kCatalogUnavailable);
    EXPECT_EQ(e.message().find("s3cr3t-pw"), std::string::npos) << e.message();
    EXPECT_NE(e.message().find("postgresql://alice:***@127.0.0.1:1/db"), std::string::npos)
        << e.message();
  }
}

TEST(PostgresCatalogOpenTest, RefusesWhatIsNotAPostgresUri) {
  EXPECT_FALSE(IsPostgresCatalog("/var/lib/catalog.db"));
  EXPECT_TRUE(IsPostgresCatalog("postgres://h/db"));
  try {
    OpenPostgresCatalog("mysql://root:pw@h/db");
    FAIL() << "expected ValidationError";
  } catch (const ValidationError& e) {
    EXPECT_EQ(e.code(), codes::kInvalidParameter);
    EXPECT_EQ(e.message().find(":pw@"), std::string::npos) << e.message();
  }
}

TEST(PostgresCatalogOpenTest, RedactCatalogUri) {
  EXPECT_EQ(RedactCatalogUri("postgresql://u:p@h:5432/db"), "postgresql://u:***@h:5432/db");
  EXPECT_EQ(RedactCatalogUri("postgresql://u@h/db"), "postgresql://u@h/db");
  EXPECT_EQ(RedactCatalogUri("postgresql://h/db?password=p&sslmode=require"),
            "postgresql://h/db?password=***&sslmode=require");
  EXPECT_EQ(RedactCatalogUri("host=h password='a b' dbname=x"), "host=h password=*** dbname=x");
  EXPECT_EQ(RedactCatalogUri("postgresql://u:p%40q@h/db"), "postgresql://u:***@h/db");
}

}  // namespace
}  // namespace imagerelay
