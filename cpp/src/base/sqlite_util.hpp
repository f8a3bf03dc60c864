// Small RAII wrappers over the SQLite C API: a connection with a cache of prepared
// statements, statements with typed bind/column helpers, and a scoped use of a cached
// statement that resets it afterwards. Failures throw SqliteError (code Transfer.Failed)
// carrying SQLite's message and result code.
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <utility>

#include "imagerelay/error.hpp"

namespace imagerelay::sqlite {

// Bytes bound as a BLOB (a std::string_view binds as TEXT).
struct Blob {
  std::string_view bytes;
};

class SqliteError : public TransferError {
 public:
  SqliteError(int rc, const std::string& message, std::string sqlite_message)
      : TransferError(codes::kTransferFailed, message),
        rc_(rc),
        sqlite_message_(std::move(sqlite_message)) {}
  // SQLite's result code (primary code in the low byte).
  int rc() const { return rc_; }
  // SQLite's own message, without the statement it came from.
  const std::string& sqlite_message() const { return sqlite_message_; }

 private:
  int rc_;
  std::string sqlite_message_;
};

// Throws SqliteError with `context` and the connection's last error message.
[[noreturn]] inline void ThrowSqlite(sqlite3* db, int rc, std::string_view context) {
  std::string sqlite_message = db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
  std::string message = "catalog: ";
  message += context;
  message += ": ";
  message += sqlite_message;
  throw SqliteError(rc, message, std::move(sqlite_message));
}

template <typename T>
struct IsOptional : std::false_type {};
template <typename T>
struct IsOptional<std::optional<T>> : std::true_type {};

class Statement {
 public:
  Statement(sqlite3* db, std::string_view sql) : db_(db) {
    sqlite3_stmt* raw = nullptr;
    int rc = sqlite3_prepare_v3(db, sql.data(), static_cast<int>(sql.size()),
                                SQLITE_PREPARE_PERSISTENT, &raw, nullptr);
    stmt_.reset(raw);
    if (rc != SQLITE_OK) ThrowSqlite(db, rc, "preparing \"" + std::string(sql) + "\"");
  }

  // Binds args to parameters 1..N in order. Accepts integers, bool, double, anything
  // convertible to std::string_view, std::nullopt/nullptr (NULL) and std::optional of those.
  template <typename... Args>
  Statement& Bind(const Args&... args) {
    int index = 0;
    (BindAt(++index, args), ...);
    return *this;
  }

  // Binds one parameter (1-based), for statements whose parameters vary in number.
  template <typename T>
  void BindAt(int index, const T& value) {
    int rc;
    sqlite3_stmt* s = stmt_.get();
    if constexpr (std::is_same_v<T, std::nullptr_t> || std::is_same_v<T, std::nullopt_t>) {
      rc = sqlite3_bind_null(s, index);
    } else if constexpr (IsOptional<T>::value) {
      if (value) return BindAt(index, *value);
      rc = sqlite3_bind_null(s, index);
    } else if constexpr (std::is_same_v<T, bool>) {
      rc = sqlite3_bind_int(s, index, value ? 1 : 0);
    } else if constexpr (std::is_integral_v<T>) {
      // uint64_t round-trips bit for bit through int64_t.
      rc = sqlite3_bind_int64(s, index, static_cast<sqlite3_int64>(value));
    } else if constexpr (std::is_floating_point_v<T>) {
      rc = sqlite3_bind_double(s, index, static_cast<double>(value));
    } else if constexpr (std::is_same_v<T, Blob>) {
      rc = sqlite3_bind_blob64(s, index, value.bytes.data(), value.bytes.size(), SQLITE_TRANSIENT);
    } else {
      std::string_view text(value);
      rc = sqlite3_bind_text64(s, index, text.data(), text.size(), SQLITE_TRANSIENT, SQLITE_UTF8);
    }
    if (rc != SQLITE_OK) ThrowSqlite(db_, rc, sqlite3_sql(s));
  }

  // Binds text that stays where it is until the statement is reset (as a ScopedStatement
  // does): no copy, for lookups in a loop.
  void BindBorrowedText(int index, std::string_view text) {
    int rc = sqlite3_bind_text64(stmt_.get(), index, text.data(), text.size(), SQLITE_STATIC,
                                 SQLITE_UTF8);
    if (rc != SQLITE_OK) ThrowSqlite(db_, rc, sqlite3_sql(stmt_.get()));
  }

  // A BLOB that stays where it is until the statement is reset, as BindBorrowedText.
  void BindBorrowedBlob(int index, std::string_view bytes) {
    int rc = sqlite3_bind_blob64(stmt_.get(), index, bytes.data(), bytes.size(), SQLITE_STATIC);
    if (rc != SQLITE_OK) ThrowSqlite(db_, rc, sqlite3_sql(stmt_.get()));
  }

  // True while a row is available; false when done.
  bool Step() {
    int rc = sqlite3_step(stmt_.get());
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    ThrowSqlite(db_, rc, sqlite3_sql(stmt_.get()));
  }
  // Runs a statement that returns no rows.
  void Run() {
    while (Step()) {
    }
  }
  void Reset() {
    sqlite3_reset(stmt_.get());
    sqlite3_clear_bindings(stmt_.get());
  }

  bool IsNull(int col) const { return sqlite3_column_type(stmt_.get(), col) == SQLITE_NULL; }
  int64_t Int(int col) const { return sqlite3_column_int64(stmt_.get(), col); }
  uint64_t Uint(int col) const { return static_cast<uint64_t>(Int(col)); }
  double Double(int col) const { return sqlite3_column_double(stmt_.get(), col); }
  // The column's text where SQLite keeps it: valid until the next Step or Reset.
  std::string_view TextView(int col) const {
    const auto* text = sqlite3_column_text(stmt_.get(), col);
    if (text == nullptr) return {};
    return {reinterpret_cast<const char*>(text),
            static_cast<size_t>(sqlite3_column_bytes(stmt_.get(), col))};
  }
  // A BLOB column's bytes (valid until the next step or reset).
  std::string_view BlobView(int col) const {
    const void* blob = sqlite3_column_blob(stmt_.get(), col);
    if (blob == nullptr) return {};
    return {static_cast<const char*>(blob),
            static_cast<size_t>(sqlite3_column_bytes(stmt_.get(), col))};
  }
  std::string Text(int col) const {
    const auto* text = sqlite3_column_text(stmt_.get(), col);
    if (text == nullptr) return {};
    return {reinterpret_cast<const char*>(text),
            static_cast<size_t>(sqlite3_column_bytes(stmt_.get(), col))};
  }

  bool ReadOnly() const { return sqlite3_stmt_readonly(stmt_.get()) != 0; }

 private:
  struct Finalizer {
    void operator()(sqlite3_stmt* s) const { sqlite3_finalize(s); }
  };
  sqlite3* db_;
  std::unique_ptr<sqlite3_stmt, Finalizer> stmt_;
};

// One use of a cached statement: resets it (and clears its bindings) when it goes away, so
// that no statement stays active past the end of a transaction.
class ScopedStatement {
 public:
  explicit ScopedStatement(Statement& statement) : statement_(statement) {}
  ~ScopedStatement() { statement_.Reset(); }
  ScopedStatement(const ScopedStatement&) = delete;
  ScopedStatement& operator=(const ScopedStatement&) = delete;

  Statement* operator->() { return &statement_; }
  Statement& operator*() { return statement_; }

 private:
  Statement& statement_;
};

class Connection {
 public:
  // Takes ownership of `db` (which may be null).
  explicit Connection(sqlite3* db) : db_(db) {}

  sqlite3* get() const { return db_.get(); }

  // Runs one or more statements; throws on failure.
  void Exec(const std::string& sql) {
    int rc = TryExec(sql);
    if (rc != SQLITE_OK) ThrowSqlite(get(), rc, sql.substr(0, 60));
  }
  // Runs statements and returns the result code (message in sqlite3_errmsg).
  int TryExec(const std::string& sql) {
    return sqlite3_exec(get(), sql.c_str(), nullptr, nullptr, nullptr);
  }

  // The prepared statement for `sql`, prepared on first use and kept for the connection's
  // lifetime.
  Statement& Cached(const std::string& sql) {
    auto it = cache_.find(sql);
    if (it == cache_.end()) it = cache_.emplace(sql, Statement(get(), sql)).first;
    return it->second;
  }

 private:
  struct Closer {
    void operator()(sqlite3* db) const { sqlite3_close_v2(db); }
  };
  std::unique_ptr<sqlite3, Closer> db_;
  // Declared after db_ so that statements are finalised before the connection closes.
  std::unordered_map<std::string, Statement> cache_;
};

}  // namespace imagerelay::sqlite
