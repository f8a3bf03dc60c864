#include "base/wal_checkpointer.hpp"

#include <utility>

namespace imagerelay {

WalCheckpointer::WalCheckpointer(std::filesystem::path file, sqlite3* writer, Options options)
    : file_(std::move(file)), writer_(writer), options_(options), thread_([this] { Loop(); }) {
  sqlite3_wal_hook(writer_, &WalCheckpointer::OnCommit, this);
}

WalCheckpointer::~WalCheckpointer() {
  sqlite3_wal_autocheckpoint(writer_, options_.frames);  // SQLite's own hook again
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

int WalCheckpointer::Runs() {
  std::lock_guard lock(mutex_);
  return runs_;
}

int WalCheckpointer::OnCommit(void* self, sqlite3* db, const char* schema, int frames) {
  auto* checkpointer = static_cast<WalCheckpointer*>(self);
  const Options& options = checkpointer->options_;
  if (frames >= options.stall_factor * options.frames) {
    // Called after the commit released its lock: the connection may checkpoint here.
    sqlite3_wal_checkpoint_v2(db, schema, SQLITE_CHECKPOINT_PASSIVE, nullptr, nullptr);
    return SQLITE_OK;
  }
  {
    std::lock_guard lock(checkpointer->mutex_);
    checkpointer->frames_ = frames;
    checkpointer->last_commit_ = std::chrono::steady_clock::now();
  }
  if (frames >= options.frames) checkpointer->wake_.notify_one();
  return SQLITE_OK;
}

void WalCheckpointer::Loop() {
  sqlite3* db = nullptr;
  std::unique_lock lock(mutex_);
  while (true) {
    wake_.wait(lock, [&] { return stopping_ || frames_ >= options_.frames; });
    // Then for a pause in the commits, unless the log grows long meanwhile.
    while (!stopping_ && frames_ < options_.busy_factor * options_.frames) {
      const auto quiet_at = last_commit_ + options_.idle;
      if (std::chrono::steady_clock::now() >= quiet_at) break;
      wake_.wait_until(lock, quiet_at);
    }
    if (stopping_) break;
    frames_ = 0;  // the next commit tells how long the log is then
    lock.unlock();
    if (db == nullptr) {
      // A read first: until it reads the database, a connection does not know the log is
      // there, and its checkpoint would do nothing.
      if (sqlite3_open_v2(file_.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX,
                          nullptr) != SQLITE_OK ||
          sqlite3_exec(db, "PRAGMA user_version", nullptr, nullptr, nullptr) != SQLITE_OK) {
        sqlite3_close_v2(db);  // only a checkpoint lost: the next commit's asks again
        db = nullptr;
      }
    }
    // SQLITE_BUSY (another process checkpoints) and errors alike leave the log as it is.
    int log = -1;
    const bool done = db != nullptr &&
                      sqlite3_wal_checkpoint_v2(db, nullptr, SQLITE_CHECKPOINT_PASSIVE, &log,
                                                nullptr) == SQLITE_OK &&
                      log >= 0;
    lock.lock();
    if (done) ++runs_;
  }
  lock.unlock();
  sqlite3_close_v2(db);
}

}  // namespace imagerelay
