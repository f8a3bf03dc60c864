// Checkpoints an SQLite database's write-ahead log from a thread of its own, when its
// writers pause. SQLite's automatic checkpoint runs inside the commit that fills the log
// (1,000 pages by default): that commit then waits while the log's pages are copied into
// the database and both files are synced (~6 ms here), whatever operation it belongs to (an
// update copy of a few hundred blocks paid it in one round out of two). With this, a commit
// only takes note; the checkpoint runs once no commit has come for a moment, beside nothing.
#pragma once

#include <sqlite3.h>

#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <mutex>
#include <thread>

namespace imagerelay {

class WalCheckpointer {
 public:
  struct Options {
    int frames = 1000;                   // a log this long (pages) wants a checkpoint...
    std::chrono::milliseconds idle{50};  // ...once no commit has come for this long,
    int busy_factor = 4;    // or at once (from the thread) when it is this many times longer,
    int stall_factor = 16;  // or by the commit itself, as SQLite would (the log stays bounded)
  };

  // Takes over the automatic checkpoints of `writer`, a connection to `file` in WAL mode
  // that outlives this object; the checkpoints are PASSIVE (they never block readers or
  // writers) and run on a connection of their own.
  WalCheckpointer(std::filesystem::path file, sqlite3* writer, Options options);
  WalCheckpointer(std::filesystem::path file, sqlite3* writer)
      : WalCheckpointer(std::move(file), writer, Options()) {}
  ~WalCheckpointer();  // gives `writer` its hook back; a checkpoint under way finishes first
  WalCheckpointer(const WalCheckpointer&) = delete;
  WalCheckpointer& operator=(const WalCheckpointer&) = delete;

  // Checkpoints the thread has run to the end so far (for tests).
  int Runs();

 private:
  static int OnCommit(void* self, sqlite3* db, const char* schema, int frames);
  void Loop();

  const std::filesystem::path file_;
  sqlite3* const writer_;
  const Options options_;
  std::mutex mutex_;
  std::condition_variable wake_;
  int frames_ = 0;  // in the log after the last commit
  std::chrono::steady_clock::time_point last_commit_;
  bool stopping_ = false;
  int runs_ = 0;
  std::thread thread_;  // last: started once the rest is set
};

}  // namespace imagerelay
