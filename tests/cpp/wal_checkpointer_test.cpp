#include "base/wal_checkpointer.hpp"

#include <gtest/gtest.h>
#include <sqlite3.h>

#include <chrono>
#include <filesystem>
#include <functional>
#include <string>
#include <thread>

#include "scratch_dir.hpp"

namespace imagerelay {
namespace {

using testing_util::ScratchDir;

struct Db {
  explicit Db(const std::filesystem::path& file) {
    EXPECT_EQ(sqlite3_open(file.c_str(), &handle), SQLITE_OK);
    Exec("PRAGMA journal_mode = WAL; CREATE TABLE t (v BLOB)");
  }
  ~Db() { sqlite3_close(handle); }
  void Exec(const std::string& sql) {
    EXPECT_EQ(sqlite3_exec(handle, sql.c_str(), nullptr, nullptr, nullptr), SQLITE_OK)
        << sqlite3_errmsg(handle);
  }
  // One transaction writing `rows` rows of a page each (about a log frame each).
  void Commit(int rows) {
    Exec("BEGIN; WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < " +
         std::to_string(rows) + ") INSERT INTO t SELECT randomblob(4000) FROM n; COMMIT");
  }
  sqlite3* handle = nullptr;
};

// The database file itself, without its log: it grows only as a checkpoint copies pages in.
uintmax_t MainFileSize(const std::filesystem::path& file) {
  return std::filesystem::file_size(file);
}

bool WaitFor(const std::function<bool()>& done) {
  for (int i = 0; i < 1000 && !done(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return done();
}

// A commit that fills the log past the threshold leaves the checkpoint to the thread, which
// runs it once no commit has come for a moment; one that does not fill it, none at all.
TEST(WalCheckpointerTest, ACommitFillingTheLogHasTheThreadCheckpointIt) {
  ScratchDir dir;
  const auto file = dir.path() / "db.sqlite";
  Db db(file);
  WalCheckpointer checkpointer(file, db.handle, {.frames = 50});
  const uintmax_t empty = MainFileSize(file);
  db.Commit(10);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(checkpointer.Runs(), 0);
  EXPECT_EQ(MainFileSize(file), empty);  // the pages are in the log only
  db.Commit(100);
  ASSERT_TRUE(WaitFor([&] { return checkpointer.Runs() >= 1; }));
  EXPECT_GE(MainFileSize(file), empty + 100 * 4000);
}

// Gone, it gives the connection SQLite's own checkpoints back: the commit copies the log in
// before it returns.
TEST(WalCheckpointerTest, WhenItGoesTheCommitsCheckpointAsBefore) {
  ScratchDir dir;
  const auto file = dir.path() / "db.sqlite";
  Db db(file);
  { WalCheckpointer checkpointer(file, db.handle, {.frames = 50}); }
  const uintmax_t empty = MainFileSize(file);
  db.Commit(100);
  EXPECT_GE(MainFileSize(file), empty + 100 * 4000);
}

// Writers that never pause do not keep the log from its checkpoint: past `busy_factor` times
// the threshold the thread runs it at once, and past `stall_factor` times (a thread that
// could not keep up) the commit runs it itself, before it returns.
TEST(WalCheckpointerTest, WritersThatNeverPauseStillHaveTheLogCheckpointed) {
  ScratchDir dir;
  const auto file = dir.path() / "db.sqlite";
  Db db(file);
  {
    WalCheckpointer checkpointer(file, db.handle,
                                 {.frames = 10, .idle = std::chrono::hours(1), .busy_factor = 4});
    const uintmax_t empty = MainFileSize(file);
    db.Commit(20);  // twice the threshold: waits for a pause that does not come in the test
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    EXPECT_EQ(checkpointer.Runs(), 0);
    db.Commit(30);  // five times
    ASSERT_TRUE(WaitFor([&] { return checkpointer.Runs() >= 1; }));
    EXPECT_GE(MainFileSize(file), empty + 50 * 4000);
  }
  const auto other_file = dir.path() / "other.sqlite";
  Db other(other_file);
  WalCheckpointer checkpointer(other_file, other.handle,
                               {.frames = 10, .idle = std::chrono::hours(1), .stall_factor = 8});
  const uintmax_t empty = MainFileSize(other_file);
  other.Commit(100);                                        // ten times the threshold in one commit
  EXPECT_GE(MainFileSize(other_file), empty + 100 * 4000);  // before the commit returned
}

}  // namespace
}  // namespace imagerelay
