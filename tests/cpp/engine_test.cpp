// The engine end to end in C++: real catalog, real local stores, real transfer engine.
#include "imagerelay/engine.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "imagerelay/error.hpp"
#include "imagerelay/store.hpp"
#include "test_bytes.hpp"

namespace imagerelay {
namespace {

namespace fs = std::filesystem;
constexpr uint64_t kEngineChunk = 64 * 1024;

class EngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("imagerelay-engine-" + std::to_string(getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::shared_ptr<Engine> Open(Limits limits = {}, bool workers = true, int slots = 4,
                               std::vector<std::string> reach = {}) {
    EngineOptions options;
    options.home = dir_ / "home";
    limits.chunk_size = kEngineChunk;
    options.limits = limits;
    options.start_workers = workers;
    options.workers = slots;
    options.worker_regions = std::move(reach);
    options.lease_ms = 1000;
    return Engine::Open(options);
  }

  fs::path MakeFile(const std::string& name, size_t size, uint32_t seed) {
    fs::path path = dir_ / name;
    std::mt19937 rng(seed);
    std::string bytes(size, '\0');
    for (auto& c : bytes) c = static_cast<char>(rng());
    std::ofstream(path, std::ios::binary).write(bytes.data(), bytes.size());
    return path;
  }

  ImageView Import(Engine& engine, const fs::path& path, const std::string& name = "golden") {
    ImportRequest request;
    request.source = path.string();
    request.region = "bj";
    request.name = name;
    return engine.ImportImage("default", request, true, false);
  }

  // Chunks (blocks) the region's store holds.
  size_t ChunkFiles(const std::string& region) {
    fs::path root = dir_ / "home" / "regions" / region;
    if (!fs::exists(root)) return 0;
    return OpenStore(root.string())->ListChunks().size();
  }

  // An engine copying a new image of `chunks` random blocks to gz at `bandwidth` bytes/s:
  // the copy stays in flight for chunks * 64 KiB / bandwidth seconds.
  struct SlowCopy {
    std::shared_ptr<Engine> engine;
    ImageView source;
    Job job;
  };
  SlowCopy StartSlowCopy(uint64_t bandwidth, size_t chunks, uint32_t seed) {
    Limits limits;
    limits.bandwidth = bandwidth;
    SlowCopy copy{Open(limits), {}, {}};
    copy.source = Import(*copy.engine, MakeFile("slow.raw", chunks * kEngineChunk, seed));
    copy.job =
        copy.engine->Replicate("default", copy.source.image.id, {"gz"}, std::nullopt, std::nullopt);
    return copy;
  }

  std::string ReadAll(const fs::path& path) { return testing_util::ReadFileBytes(path); }

  fs::path dir_;
};

TEST_F(EngineTest, NewHomeHasDefaultRegionsAndAccount) {
  auto engine = Open();
  auto regions = engine->Regions();
  ASSERT_EQ(regions.size(), 3u);
  EXPECT_EQ(regions[0].id, "bj");
  EXPECT_EQ(engine->GetAccount("default").id, "default");
  EXPECT_THROW(engine->GetAccount("ghost"), NotFoundError);
  engine->Close();
  // Reopening does not add them twice.
  EXPECT_EQ(Open()->Regions().size(), 3u);
}

TEST_F(EngineTest, ReplicateToTwoRegionsIsByteIdentical) {
  auto engine = Open();
  auto file = MakeFile("a.raw", 20 * kEngineChunk + 123, 1);
  auto source = Import(*engine, file);
  auto job =
      engine->Replicate("default", source.image.id, {"gz", "su", "gz"}, std::nullopt, std::nullopt);
  ASSERT_EQ(job.tasks.size(), 2u);
  ASSERT_TRUE(engine->WaitIdle(30));
  job = engine->GetJob("default", job.id);
  EXPECT_EQ(StateOfJob(job.tasks), JobState::kCompleted);
  for (const auto& task : job.tasks) {
    auto copy = engine->GetImage("default", task.dest_image_id);
    EXPECT_EQ(copy.image.status, ImageStatus::kAvailable);
    EXPECT_EQ(copy.image.digest, source.image.digest);
    EXPECT_EQ(copy.image.source_image_id, source.image.id);
    fs::path out = dir_ / ("out-" + task.region);
    engine->Export("default", task.dest_image_id, out);
    EXPECT_EQ(ReadAll(out), ReadAll(file));
    EXPECT_EQ(engine->Verify("default", task.dest_image_id), source.image.digest);
  }
  EXPECT_EQ(engine->GetImage("default", source.image.id).image.status, ImageStatus::kAvailable);
}

TEST_F(EngineTest, ClientTokenReplaysTheFirstJob) {
  auto engine = Open({}, false);
  auto source = Import(*engine, MakeFile("a.raw", 4 * kEngineChunk, 2));
  auto first = engine->Replicate("default", source.image.id, {"gz"}, std::nullopt, "tok-1");
  auto again = engine->Replicate("default", source.image.id, {"gz"}, std::nullopt, "tok-1");
  EXPECT_EQ(first.id, again.id);
  EXPECT_EQ(engine->Jobs("default", std::nullopt).size(), 1u);
  try {
    engine->Replicate("default", source.image.id, {"su"}, std::nullopt, "tok-1");
    FAIL();
  } catch (const ConflictError& e) {
    EXPECT_EQ(e.code(), codes::kIdempotentParameterMismatch);
  }
}

TEST_F(EngineTest, PerRegionCapQueuesTasksAsPending) {
  Limits limits;
  limits.max_tasks_per_region = 1;
  limits.bandwidth = 256 * 1024;  // slow enough that the first copy is in flight a while
  auto engine = Open(limits);
  auto a = Import(*engine, MakeFile("a.raw", 8 * kEngineChunk, 3), "a");
  auto b = Import(*engine, MakeFile("b.raw", 8 * kEngineChunk, 4), "b");
  auto job_a = engine->Replicate("default", a.image.id, {"gz"}, std::nullopt, std::nullopt);
  auto job_b = engine->Replicate("default", b.image.id, {"gz"}, std::nullopt, std::nullopt);
  bool saw_queue = false;
  for (int i = 0; i < 400 && !saw_queue; ++i) {
    auto ta = engine->GetJob("default", job_a.id).tasks[0];
    auto tb = engine->GetJob("default", job_b.id).tasks[0];
    int running = (ta.state == TaskState::kRunning) + (tb.state == TaskState::kRunning);
    EXPECT_LE(running, 1);
    saw_queue =
        running == 1 && (ta.state == TaskState::kPending || tb.state == TaskState::kPending);
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_TRUE(saw_queue);
  ASSERT_TRUE(engine->WaitIdle(60));
  EXPECT_EQ(engine->GetJob("default", job_a.id).tasks[0].state, TaskState::kCompleted);
  EXPECT_EQ(engine->GetJob("default", job_b.id).tasks[0].state, TaskState::kCompleted);
}

TEST_F(EngineTest, AWorkerClaimsNoMoreCopiesThanItHasSlots) {
  Limits limits;
  // Each copy in flight for a while: the bucket starts with a second's worth (512 KiB), and
  // an image no larger than that was copied at once (the queue then lasted a few ms).
  limits.bandwidth = 512 * 1024;
  auto engine = Open(limits, true, 1);
  auto source = Import(*engine, MakeFile("a.raw", 16 * kEngineChunk, 21));
  auto job =
      engine->Replicate("default", source.image.id, {"gz", "su"}, std::nullopt, std::nullopt);
  bool saw_one_queued = false;
  for (int i = 0; i < 400 && !saw_one_queued; ++i) {
    auto tasks = engine->GetJob("default", job.id).tasks;
    int running = 0, pending = 0;
    for (const auto& t : tasks) {
      running += t.state == TaskState::kRunning;
      pending += t.state == TaskState::kPending;
    }
    EXPECT_LE(running, 1);  // one slot: the other copy waits in the queue
    saw_one_queued = running == 1 && pending == 1;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_TRUE(saw_one_queued);
  ASSERT_TRUE(engine->WaitIdle(60));
  for (const auto& t : engine->GetJob("default", job.id).tasks) {
    EXPECT_EQ(t.state, TaskState::kCompleted);
    EXPECT_EQ(t.attempts, 1);
  }
}

TEST_F(EngineTest, WorkerRegionsLeaveUnreachableCopiesQueued) {
  fs::path file = MakeFile("a.raw", 4 * kEngineChunk, 22);
  Job job;
  {
    auto queue = Open({}, false);
    auto source = Import(*queue, file);
    job = queue->Replicate("default", source.image.id, {"gz", "su"}, std::nullopt, std::nullopt);
  }
  {
    auto worker = Open({}, true, 4, {"bj", "gz"});
    ASSERT_TRUE(worker->WaitIdle(30));  // idle: nothing it reaches is left
    for (const auto& t : worker->GetJob("default", job.id).tasks) {
      EXPECT_EQ(t.state, t.region == "gz" ? TaskState::kCompleted : TaskState::kPending);
      EXPECT_EQ(t.attempts, t.region == "gz" ? 1 : 0);
    }
  }
  auto everywhere = Open();
  ASSERT_TRUE(everywhere->WaitIdle(30));
  EXPECT_EQ(StateOfJob(everywhere->GetJob("default", job.id).tasks), JobState::kCompleted);
}

TEST_F(EngineTest, UnknownWorkerRegionIsInvalidParameter) {
  Open({}, false);  // the home and its regions
  try {
    Open({}, true, 4, {"gz", "mars"});
    FAIL();
  } catch (const ValidationError& e) {
    EXPECT_EQ(e.code(), codes::kInvalidParameter);
    EXPECT_NE(e.message().find("'mars'"), std::string::npos) << e.message();
  }
}

TEST_F(EngineTest, ExpiredLeaseIsTakenOverLiveOneIsNot) {
  fs::path file = MakeFile("a.raw", 6 * kEngineChunk, 5);
  std::string job_id, dest;
  {
    auto engine = Open({}, false);
    auto source = Import(*engine, file);
    auto job = engine->Replicate("default", source.image.id, {"gz"}, std::nullopt, std::nullopt);
    job_id = job.id;
    dest = job.tasks[0].dest_image_id;
  }
  // A worker on another host claimed it and holds a live lease.
  auto catalog = OpenSqliteCatalog(dir_ / "home" / "catalog.db");
  catalog->Write([&](CatalogTx& tx) {
    auto task = *tx.GetTaskByDestImage(dest);
    ASSERT_TRUE(tx.TransitionTask(dest, TaskState::kPending, TaskEvent::kStart));
    task.state = TaskState::kRunning;
    task.lease_owner = "elsewhere:1:abcd";
    task.lease_expires_us = NowUs() + 60'000'000;
    task.attempts = 1;
    tx.UpdateTaskFields(task);
  });
  auto engine = Open();
  EXPECT_FALSE(engine->WaitIdle(1.0));
  EXPECT_EQ(engine->GetJob("default", job_id).tasks[0].lease_owner, "elsewhere:1:abcd");
  // Its lease lapses (the worker died): the next look takes it over and finishes.
  catalog->Write([&](CatalogTx& tx) {
    auto task = *tx.GetTaskByDestImage(dest);
    task.lease_expires_us = NowUs() - 1;
    tx.UpdateTaskFields(task);
  });
  ASSERT_TRUE(engine->WaitIdle(30));
  auto task = engine->GetJob("default", job_id).tasks[0];
  EXPECT_EQ(task.state, TaskState::kCompleted);
  EXPECT_EQ(task.attempts, 2);
  engine->Export("default", dest, dir_ / "out");
  EXPECT_EQ(ReadAll(dir_ / "out"), ReadAll(file));
}

TEST_F(EngineTest, CorruptSourceFailsTheCopyAndLeavesNoBytes) {
  auto engine = Open();
  auto source = Import(*engine, MakeFile("a.raw", 6 * kEngineChunk, 6));
  // Flip a byte in the first block of the source's pack.
  fs::path chunks = dir_ / "home" / "regions" / "bj" / "packs";
  for (const auto& entry : fs::recursive_directory_iterator(chunks)) {
    if (!entry.is_regular_file()) continue;
    std::fstream f(entry.path(), std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(10);
    f.put('\x5a');
    break;
  }
  auto job =
      engine->Replicate("default", source.image.id, {"gz", "su"}, std::nullopt, std::nullopt);
  ASSERT_TRUE(engine->WaitIdle(30));
  job = engine->GetJob("default", job.id);
  EXPECT_EQ(StateOfJob(job.tasks), JobState::kFailed);
  for (const auto& task : job.tasks) {
    EXPECT_EQ(task.state, TaskState::kFailed);
    EXPECT_EQ(task.error_code, codes::kIntegrityError);
    auto copy = engine->GetImage("default", task.dest_image_id);
    EXPECT_EQ(copy.image.status, ImageStatus::kCreateFailed);
    EXPECT_FALSE(copy.image.error.empty());
    EXPECT_FALSE(fs::exists(dir_ / "home" / "regions" / task.region / "manifests" /
                            (task.dest_image_id + ".json")));
    EXPECT_EQ(ChunkFiles(task.region), 0u);
  }
  // The damage found by the copy takes the source out of use (nothing wrong is Available) and
  // its bad chunk out of every lookup.
  auto damaged = engine->GetImage("default", source.image.id).image;
  EXPECT_EQ(damaged.status, ImageStatus::kNotAvailable);
  EXPECT_NE(damaged.error.find("corrupt"), std::string::npos) << damaged.error;
  EXPECT_EQ(ChunkFiles("bj"), 5u);
  // A failed copy can be deleted.
  engine->Delete("default", job.tasks[0].dest_image_id);
}

TEST_F(EngineTest, BrokenDestinationFailsOnlyItsOwnCopy) {
  auto engine = Open();
  engine->AddRegion("hk", "", "");
  auto file = MakeFile("a.raw", 6 * kEngineChunk, 9);
  auto source = Import(*engine, file);
  fs::path hk = dir_ / "home" / "regions" / "hk";
  fs::remove_all(hk);
  std::ofstream(hk) << "not a directory";
  auto job =
      engine->Replicate("default", source.image.id, {"gz", "hk"}, std::nullopt, std::nullopt);
  ASSERT_TRUE(engine->WaitIdle(30));
  job = engine->GetJob("default", job.id);
  for (const auto& task : job.tasks) {
    if (task.region == "hk") {
      EXPECT_EQ(task.state, TaskState::kFailed);
      EXPECT_EQ(task.error_code, codes::kStoreUnavailable);
    } else {
      EXPECT_EQ(task.state, TaskState::kCompleted);
      engine->Export("default", task.dest_image_id, dir_ / "out");
      EXPECT_EQ(ReadAll(dir_ / "out"), ReadAll(file));
    }
  }
  EXPECT_EQ(StateOfJob(job.tasks), JobState::kFailed);
}

TEST_F(EngineTest, CancelMidFlightRemovesTheCopyAndItsBytes) {
  Limits limits;
  limits.bandwidth = 256 * 1024;
  auto engine = Open(limits);
  auto source = Import(*engine, MakeFile("a.raw", 32 * kEngineChunk, 7));
  auto job = engine->Replicate("default", source.image.id, {"gz"}, std::nullopt, std::nullopt);
  const std::string dest = job.tasks[0].dest_image_id;
  for (int i = 0; i < 1000; ++i) {
    if (engine->GetJob("default", job.id).tasks[0].bytes_transferred > 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  engine->CancelCopy("default", dest);
  EXPECT_THROW(engine->GetImage("default", dest), NotFoundError);
  EXPECT_EQ(engine->GetJob("default", job.id).tasks[0].state, TaskState::kCancelled);
  EXPECT_EQ(engine->GetImage("default", source.image.id).image.status, ImageStatus::kAvailable);
  EXPECT_EQ(ChunkFiles("gz"), 0u);
  try {
    engine->CancelCopy("default", dest);
    FAIL();
  } catch (const NotFoundError&) {
  }
  // Cancelling a copy that is not in flight is refused.
  auto done = engine->Replicate("default", source.image.id, {"su"}, std::nullopt, std::nullopt);
  ASSERT_TRUE(engine->WaitIdle(60));
  try {
    engine->CancelCopy("default", done.tasks[0].dest_image_id);
    FAIL();
  } catch (const ImageBusyError& e) {
    EXPECT_EQ(e.code(), codes::kImageStatusForbidden);
  }
}

// A caller's token (Ctrl-C in Python) stops an import: CreateFailed with the reason, no
// chunk left behind, and the error thrown; export and verify stop without side effects.
TEST_F(EngineTest, CallerTokenStopsImportExportAndVerify) {
  auto engine = Open();
  CancelToken stop;
  stop.Cancel();
  ImportRequest request;
  request.source = MakeFile("a.raw", 16 * kEngineChunk, 3).string();
  request.region = "bj";
  request.name = "stopped";
  try {
    engine->ImportImage("default", request, true, false, &stop);
    FAIL() << "the import ran to the end";
  } catch (const TransferError& e) {
    EXPECT_EQ(e.code(), codes::kTransferFailed);
    EXPECT_NE(e.message().find("stopped before it finished"), std::string::npos) << e.message();
  }
  auto images = engine->Images("default", "bj", "Custom", std::string("stopped"));
  ASSERT_EQ(images.size(), 1u);
  EXPECT_EQ(images[0].image.status, ImageStatus::kCreateFailed);
  EXPECT_NE(images[0].image.error.find("stopped before it finished"), std::string::npos);
  EXPECT_EQ(ChunkFiles("bj"), 0u);

  auto image = Import(*engine, request.source);
  const fs::path out = dir_ / "out.raw";
  try {
    engine->Export("default", image.image.id, out, &stop);
    FAIL() << "the export ran to the end";
  } catch (const TransferError& e) {
    EXPECT_EQ(e.code(), codes::kTransferFailed);
  }
  EXPECT_FALSE(fs::exists(out));
  EXPECT_THROW(engine->Verify("default", image.image.id, &stop), TransferError);
  EXPECT_EQ(engine->Verify("default", image.image.id), image.image.digest);
}

// Close() does not wait for a background import to finish: it stops it (CreateFailed).
TEST_F(EngineTest, CloseStopsABackgroundImport) {
  std::string id;
  const fs::path big = MakeFile("big.raw", 1024 * kEngineChunk, 5);  // 64 MiB in 1024 chunks
  {
    auto engine = Open();
    ImportRequest request;
    request.source = big.string();
    request.region = "bj";
    request.name = "big";
    id = engine->ImportImage("default", request, false, false).image.id;
    engine->Close();  // at once: 1024 chunks take far longer to import than this takes to run
    EXPECT_EQ(engine->GetImage("default", id).image.status, ImageStatus::kCreateFailed);
  }
  auto engine = Open();
  EXPECT_EQ(engine->GetImage("default", id).image.status, ImageStatus::kCreateFailed);
}

TEST_F(EngineTest, SourceIsLockedWhileCopiesAreInFlight) {
  Limits limits;
  limits.bandwidth = 128 * 1024;
  auto engine = Open(limits);
  engine->AddAccount("team-b", "");
  auto source = Import(*engine, MakeFile("a.raw", 16 * kEngineChunk, 8));
  auto job = engine->Replicate("default", source.image.id, {"gz"}, std::nullopt, std::nullopt);
  auto expect_busy = [&](auto&& call) {
    try {
      call();
      ADD_FAILURE() << "not refused";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), codes::kImageStatusForbidden) << e.what();
    }
  };
  expect_busy([&] { engine->Share("default", source.image.id, {"team-b"}); });
  expect_busy([&] { engine->Rename("default", source.image.id, "other"); });
  expect_busy([&] { engine->Delete("default", source.image.id); });
  expect_busy(
      [&] { engine->Replicate("default", source.image.id, {"su"}, std::nullopt, std::nullopt); });
  // Reads still work.
  EXPECT_EQ(engine->GetImage("default", source.image.id).image.status, ImageStatus::kReplicating);
  engine->CancelJob("default", job.id, std::nullopt);
  EXPECT_EQ(engine->GetImage("default", source.image.id).image.status, ImageStatus::kAvailable);
}

// The engine's waits are woken by the change they wait for (NotifyChanged), besides their
// look every 100 ms for other processes; a timeout or the caller's token ends them.
TEST_F(EngineTest, WaitImageReturnsOnceTheStatusChanges) {
  auto [engine, source, job] = StartSlowCopy(128 * 1024, 16, 9);
  const std::vector<ImageStatus> busy = {ImageStatus::kCreating, ImageStatus::kReplicating};

  std::atomic<bool> waiting{false};
  std::thread canceller([&] {
    while (!waiting) std::this_thread::yield();
    std::this_thread::sleep_for(std::chrono::milliseconds(250));  // the wait sleeps by now
    engine->CancelJob("default", job.id, std::nullopt);
  });
  waiting = true;
  ImageView view = engine->WaitImage("default", source.image.id, busy, 30);
  canceller.join();
  EXPECT_EQ(view.image.status, ImageStatus::kAvailable);
  // Not busy: returns at once, even with no time left.
  EXPECT_EQ(engine->WaitImage("default", source.image.id, busy, 0).image.status,
            ImageStatus::kAvailable);

  // The copy's image was deleted by the cancel: NoSuchImage, not a wait.
  EXPECT_THROW(engine->WaitImage("default", job.tasks[0].dest_image_id, busy, 1), NotFoundError);
}

TEST_F(EngineTest, WaitsEndAtTheirTimeoutOrTheCallersToken) {
  auto [engine, source, job] = StartSlowCopy(64 * 1024, 16, 10);
  const std::vector<ImageStatus> busy = {ImageStatus::kReplicating};
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  try {
    engine->WaitImage("default", source.image.id, busy, 0.2);
    FAIL() << "the copy ended within 0.2 s";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), codes::kTimeout);
    EXPECT_NE(e.message().find("is still Replicating"), std::string::npos) << e.message();
  }
  EXPECT_GE(Clock::now() - start, std::chrono::milliseconds(200));

  // A token fired from another thread ends a wait with no timeout as its timeout would.
  CancelToken stop;
  std::thread canceller([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    stop.Cancel();
  });
  try {
    engine->WaitImage("default", source.image.id, busy, std::nullopt, &stop);
    ADD_FAILURE() << "the copy ended before the token fired";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), codes::kTimeout);
  }
  canceller.join();
  EXPECT_THROW(engine->WaitJob("default", job.id, std::nullopt, &stop), Error);
  EXPECT_FALSE(engine->WaitIdle(std::nullopt, &stop));
  EXPECT_EQ(engine->GetJob("default", job.id).tasks[0].state, TaskState::kRunning);  // goes on
  engine->CancelJob("default", job.id, std::nullopt);
  EXPECT_TRUE(engine->WaitIdle(30));
}

}  // namespace
}  // namespace imagerelay

namespace imagerelay {
namespace {

// The code an operation throws, "" if none.
template <typename Fn>
std::string CodeOf(Fn&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.code();
  }
  return "";
}

// Validate-only runs every check of a request and changes nothing: the same code as the
// real request for every failing rule, and no change (no event) when it would pass.
TEST_F(EngineTest, ValidateOnlyGivesTheRealRequestsAnswerAndChangesNothing) {
  auto engine = Open();
  engine->AddAccount("bob", "");
  auto image = Import(*engine, MakeFile("a.raw", 3 * kEngineChunk, 1)).image;
  ImportRequest system_request;
  system_request.source = MakeFile("s.raw", kEngineChunk, 2).string();
  system_request.region = "bj";
  system_request.name = "sys";
  auto system = engine->ImportImage("", system_request, true, true).image;
  const size_t events = engine->Events("default", 0, std::nullopt).size();
  struct Case {
    const char* what;
    std::function<void(bool)> call;
  };
  const std::vector<Case> cases = {
      {"replicate ok", [&](bool v) { engine->Replicate("default", image.id, {"gz"}, {}, {}, v); }},
      {"replicate a System image",
       [&](bool v) { engine->Replicate("default", system.id, {"gz"}, {}, {}, v); }},
      {"replicate to its own region",
       [&](bool v) { engine->Replicate("default", image.id, {"bj"}, {}, {}, v); }},
      {"replicate to no region",
       [&](bool v) { engine->Replicate("default", image.id, {}, {}, {}, v); }},
      {"share ok", [&](bool v) { engine->Share("default", image.id, {"bob"}, v); }},
      {"share with its owner", [&](bool v) { engine->Share("default", image.id, {"default"}, v); }},
      {"share a System image", [&](bool v) { engine->Share("default", system.id, {"bob"}, v); }},
      {"unshare what is not shared",
       [&](bool v) { engine->Unshare("default", image.id, {"bob"}, v); }},
      {"rename ok", [&](bool v) { engine->Rename("default", image.id, "new-name", v); }},
      {"rename to nothing", [&](bool v) { engine->Rename("default", image.id, "", v); }},
      {"rename another's image", [&](bool v) { engine->Rename("bob", image.id, "x", v); }},
      {"delete a System image", [&](bool v) { engine->Delete("default", system.id, v); }},
      {"delete ok", [&](bool v) { engine->Delete("default", image.id, v); }},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    const std::string dry = CodeOf([&] { c.call(true); });
    EXPECT_EQ(engine->Events("default", 0, std::nullopt).size(), events);  // nothing changed
    EXPECT_EQ(engine->GetImage("default", image.id).image.name, "golden");
    EXPECT_TRUE(engine->SharedUsers("default", image.id).empty());
    if (std::string(c.what).ends_with(" ok")) {
      EXPECT_EQ(dry, "");
      continue;  // the real one would change the home for the cases after it
    }
    EXPECT_NE(dry, "");
    EXPECT_EQ(CodeOf([&] { c.call(false); }), dry);
  }
  ImportRequest bad = system_request;
  bad.region = "nowhere";
  bad.validate_only = true;
  const std::string dry = CodeOf([&] { engine->ImportImage("default", bad, true, false); });
  bad.validate_only = false;
  EXPECT_EQ(CodeOf([&] { engine->ImportImage("default", bad, true, false); }), dry);
  EXPECT_NE(dry, "");
  system_request.validate_only = true;
  EXPECT_EQ(engine->ImportImage("default", system_request, true, false).image.id, "");
  EXPECT_EQ(engine->Images("default", std::nullopt, "All", std::nullopt).size(), 2u);
}

// A region or an account goes only once nothing uses it; its credentials file goes with it.
TEST_F(EngineTest, RemoveRegionAndAccountOnlyOnceUnused) {
  auto engine = Open({}, false);
  engine->AddAccount("bob", "");
  engine->AddRegion("hk", (dir_ / "hk").string(), "");
  ImportRequest request;
  request.source = MakeFile("a.raw", 2 * kEngineChunk, 7).string();
  request.region = "hk";
  request.name = "a";
  auto image = engine->ImportImage("default", request, true, false).image;
  auto job = engine->Replicate("default", image.id, {"gz"}, std::nullopt, std::nullopt);

  EXPECT_EQ(CodeOf([&] { engine->RemoveRegion("default", "nowhere"); }), codes::kNoSuchRegion);
  EXPECT_EQ(CodeOf([&] { engine->RemoveRegion("default", "Bad Id"); }), codes::kInvalidParameter);
  for (const char* region : {"hk", "gz"}) {  // the copy's source, and its destination
    SCOPED_TRACE(region);
    try {
      engine->RemoveRegion("default", region, /*validate_only=*/true);
      FAIL() << "removed while in use";
    } catch (const ConflictError& e) {
      ASSERT_EQ(e.problems().size(), 2u);  // its images, and the job in flight
      EXPECT_EQ(e.code(), codes::kRegionInUse);
      EXPECT_NE(e.problems()[1].message.find(job.id), std::string::npos);
    }
  }
  engine->CancelJob("default", job.id, std::nullopt);
  EXPECT_EQ(CodeOf([&] { engine->RemoveAccount("default", "default"); }), codes::kAccountInUse);
  engine->Share("default", image.id, {"bob"});
  EXPECT_EQ(CodeOf([&] { engine->RemoveAccount("default", "bob"); }), codes::kAccountInUse);
  engine->Unshare("default", image.id, {"bob"});
  engine->Delete("default", image.id);

  const size_t events = engine->Events("default", 0, std::nullopt).size();
  engine->RemoveRegion("default", "hk", /*validate_only=*/true);  // passes, changes nothing
  engine->RemoveAccount("default", "bob", /*validate_only=*/true);
  EXPECT_EQ(engine->Events("default", 0, std::nullopt).size(), events);
  EXPECT_EQ(engine->Regions().size(), 4u);

  engine->RemoveRegion("default", "hk");
  engine->RemoveAccount("default", "bob");
  EXPECT_EQ(CodeOf([&] { engine->GetRegion("hk"); }), codes::kNoSuchRegion);
  EXPECT_EQ(CodeOf([&] { engine->GetAccount("bob"); }), codes::kNoSuchAccount);
  EXPECT_EQ(CodeOf([&] { engine->RemoveAccount("default", "bob"); }), codes::kNoSuchAccount);
  auto log = engine->Events("default", 0, std::nullopt);
  ASSERT_GE(log.size(), 2u);
  EXPECT_EQ(log[log.size() - 2].type, "region.removed");
  EXPECT_EQ(log[log.size() - 2].region, "hk");
  EXPECT_EQ(log.back().type, "account.removed");
  EXPECT_EQ(log.back().account, "default");
  // An import into a removed region is refused.
  EXPECT_EQ(CodeOf([&] { engine->ImportImage("default", request, true, false); }),
            codes::kNoSuchRegion);
}

TEST_F(EngineTest, WaitEventsReturnsNewEventsOrNothingAtTheTimeout) {
  auto engine = Open({}, false);
  auto image = Import(*engine, MakeFile("a.raw", kEngineChunk, 8));
  const int64_t last = engine->Events("default", 0, std::nullopt).back().seq;
  EXPECT_TRUE(engine->WaitEvents("default", last, std::nullopt, 0.1).empty());
  std::thread renamer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    engine->Rename("default", image.image.id, "renamed");
  });
  auto events = engine->WaitEvents("default", last, std::nullopt, 30);
  renamer.join();
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].type, "image.renamed");
  // By time: nothing at or after a moment to come.
  EXPECT_TRUE(engine->Events("default", 0, std::nullopt, NowUs() + 60'000'000).empty());
  EXPECT_EQ(engine->Events("default", 0, std::nullopt, 1).size(),
            engine->Events("default", 0, std::nullopt).size());
}

TEST_F(EngineTest, CopiesWaitingForAWorkerNamesThem) {
  auto engine = Open({}, false);  // no workers: a queued copy waits
  auto image = Import(*engine, MakeFile("a.raw", kEngineChunk, 9));
  auto job = engine->Replicate("default", image.image.id, {"gz", "su"}, std::nullopt, std::nullopt);
  auto waiting = engine->CopiesWaitingForAWorker();
  std::ranges::sort(waiting);
  std::vector<std::string> expected{job.tasks[0].dest_image_id, job.tasks[1].dest_image_id};
  std::ranges::sort(expected);
  EXPECT_EQ(waiting, expected);
  engine->CancelJob("default", job.id, std::nullopt);
  EXPECT_TRUE(engine->CopiesWaitingForAWorker().empty());
}

}  // namespace
}  // namespace imagerelay
