// A small RAII wrapper over libpq for the PostgreSQL catalog: one connection, statements
// with typed text parameters (prepared once per connection and cached), results with typed
// column helpers. Failures throw PgError carrying the server's SQLSTATE; a lost connection
// throws it with code Catalog.Unavailable (retryable) and is re-established by Reconnect().
// Messages never carry the connection's password (Redact()).
#pragma once

#include <libpq-fe.h>

#include <charconv>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include "imagerelay/error.hpp"

namespace imagerelay::pg {

class PgError : public TransferError {
 public:
  PgError(const std::string& code, const std::string& message, std::string sqlstate)
      : TransferError(code, message), sqlstate_(std::move(sqlstate)) {}
  // The server's SQLSTATE ("23505", ...); empty when the connection itself failed.
  const std::string& sqlstate() const { return sqlstate_; }

 private:
  std::string sqlstate_;
};

// One parameter in its text form; nullopt is NULL.
using Param = std::optional<std::string>;

template <typename T>
Param ToParam(const T& value) {
  if constexpr (std::is_same_v<T, std::nullopt_t>) {
    return std::nullopt;
  } else if constexpr (std::is_same_v<T, bool>) {
    return value ? "1" : "0";
  } else if constexpr (std::is_same_v<T, double>) {
    char buf[32];
    auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), value);  // shortest round trip
    return std::string(buf, end);
  } else if constexpr (std::is_integral_v<T> && std::is_unsigned_v<T>) {
    // Kept as the same 64 bits in a BIGINT, as the SQLite catalog keeps them.
    return std::to_string(static_cast<int64_t>(value));
  } else if constexpr (std::is_integral_v<T>) {
    return std::to_string(value);
  } else {
    return std::string(std::string_view(value));
  }
}

class Result {
 public:
  Result() = default;
  explicit Result(PGresult* result) : result_(result, &PQclear) {}
  int Rows() const { return result_ ? PQntuples(result_.get()) : 0; }
  // Rows an INSERT/UPDATE/DELETE changed.
  int64_t Changed() const;
  bool IsNull(int row, int col) const { return PQgetisnull(result_.get(), row, col) == 1; }
  std::string Text(int row, int col) const {
    return std::string(PQgetvalue(result_.get(), row, col),
                       static_cast<size_t>(PQgetlength(result_.get(), row, col)));
  }
  int64_t Int(int row, int col) const;
  uint64_t Uint(int row, int col) const { return static_cast<uint64_t>(Int(row, col)); }
  double Double(int row, int col) const;

 private:
  std::shared_ptr<PGresult> result_;
};

class Connection {
 public:
  // Connects with libpq's own rules (URI or key=value, PG* variables, ~/.pgpass). Throws
  // PgError (Catalog.Unavailable) with libpq's reason, redacted.
  explicit Connection(std::string conninfo);
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Runs one or more statements without parameters.
  Result Exec(const std::string& sql);
  // Runs one statement with parameters $1..$N, prepared once per connection.
  Result Query(const std::string& sql, const std::vector<Param>& params);
  template <typename... Args>
  Result Run(const std::string& sql, const Args&... args) {
    return Query(sql, std::vector<Param>{ToParam(args)...});
  }

  // Whether the connection still works (false after the server went away).
  bool Ok() const { return PQstatus(conn_) == CONNECTION_OK; }
  // A new connection in place of a lost one (its prepared statements are gone).
  void Reconnect();
  // Whether a transaction is open on the connection.
  bool InTransaction() const;
  // `text` with the connection's password (if any) replaced by "***".
  std::string Redact(std::string text) const;
  // Waits up to `timeout_ms` for notifications (LISTEN); how many came from sessions other
  // than `ignore_pid`. Throws PgError (Catalog.Unavailable) when the connection is lost.
  int WaitForNotifications(int timeout_ms, int ignore_pid);
  // The server process of this session (what notifications it sends carry).
  int BackendPid() const { return PQbackendPID(conn_); }

 private:
  void Connect();
  [[noreturn]] void Throw(PGresult* result, std::string_view context);
  Result Check(PGresult* result, std::string_view context);

  std::string conninfo_;
  std::string password_;  // to keep it out of messages
  PGconn* conn_ = nullptr;
  std::unordered_map<std::string, std::string> prepared_;  // sql -> statement name
};

// "postgresql://user:***@host/db": the URI (or key=value string) with its password hidden.
std::string RedactConninfo(std::string_view conninfo);

}  // namespace imagerelay::pg
