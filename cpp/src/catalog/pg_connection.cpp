#include "catalog/pg_connection.hpp"

#include <poll.h>

#include <cstdlib>
#include <string>
#include <utility>

namespace imagerelay::pg {
namespace {

// Whether a SQLSTATE says the server or the connection to it went away (retryable).
bool IsConnectionLoss(std::string_view sqlstate) {
  return sqlstate.starts_with("08") ||  // connection_exception
         sqlstate == "57P01" ||         // admin_shutdown
         sqlstate == "57P02" ||         // crash_shutdown
         sqlstate == "57P03";           // cannot_connect_now (starting up, shutting down)
}

std::string Trimmed(std::string text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  return text;
}

// Replaces every `value` in `text` by "***".
void ReplaceAll(std::string& text, const std::string& value) {
  if (value.empty()) return;
  for (size_t at = text.find(value); at != std::string::npos; at = text.find(value, at + 3)) {
    text.replace(at, value.size(), "***");
  }
}

}  // namespace

int64_t Result::Changed() const {
  const char* text = PQcmdTuples(result_.get());
  return text == nullptr || *text == '\0' ? 0 : std::strtoll(text, nullptr, 10);
}

int64_t Result::Int(int row, int col) const {
  if (IsNull(row, col)) return 0;
  return std::strtoll(PQgetvalue(result_.get(), row, col), nullptr, 10);
}

double Result::Double(int row, int col) const {
  if (IsNull(row, col)) return 0;
  return std::strtod(PQgetvalue(result_.get(), row, col), nullptr);  // "Infinity" too
}

Connection::Connection(std::string conninfo) : conninfo_(std::move(conninfo)) {
  if (PQconninfoOption* options = PQconninfoParse(conninfo_.c_str(), nullptr)) {
    for (PQconninfoOption* o = options; o->keyword != nullptr; ++o) {
      if (std::string_view(o->keyword) == "password" && o->val != nullptr) password_ = o->val;
    }
    PQconninfoFree(options);
  }
  try {
    Connect();
  } catch (...) {
    // No destructor runs for an object whose constructor throws: the refused connection's
    // memory is given back here.
    if (conn_ != nullptr) PQfinish(conn_);
    conn_ = nullptr;
    throw;
  }
}

Connection::~Connection() {
  if (conn_ != nullptr) PQfinish(conn_);
}

void Connection::Connect() {
  // Defaults first: whatever the URI says overrides them. Keepalives notice a server that
  // vanished from the network within a minute instead of the system's two hours.
  const char* keywords[] = {"connect_timeout",
                            "application_name",
                            "keepalives_idle",
                            "keepalives_interval",
                            "keepalives_count",
                            "dbname",
                            nullptr};
  const char* values[] = {"10", "imagerelay", "20", "5", "4", conninfo_.c_str(), nullptr};
  if (conn_ != nullptr) PQfinish(conn_);
  conn_ = PQconnectdbParams(keywords, values, /*expand_dbname=*/1);
  prepared_.clear();
  if (conn_ == nullptr) throw PgError(codes::kCatalogUnavailable, "out of memory", "");
  // Notices (e.g. "relation already exists, skipping") are not for the user's terminal.
  PQsetNoticeProcessor(
      conn_, [](void*, const char*) {}, nullptr);
  if (PQstatus(conn_) != CONNECTION_OK) {
    std::string why = Redact(Trimmed(PQerrorMessage(conn_)));
    throw PgError(
        codes::kCatalogUnavailable,
        "cannot connect to the PostgreSQL catalog " + RedactConninfo(conninfo_) + ": " + why, "");
  }
  if (const char* pass = PQpass(conn_); pass != nullptr && password_.empty()) password_ = pass;
}

void Connection::Reconnect() { Connect(); }

bool Connection::InTransaction() const {
  PGTransactionStatusType status = PQtransactionStatus(conn_);
  return status == PQTRANS_INTRANS || status == PQTRANS_INERROR || status == PQTRANS_ACTIVE;
}

std::string Connection::Redact(std::string text) const {
  ReplaceAll(text, password_);
  return text;
}

void Connection::Throw(PGresult* result, std::string_view context) {
  std::string sqlstate;
  std::string message;
  if (result != nullptr) {
    if (const char* state = PQresultErrorField(result, PG_DIAG_SQLSTATE)) sqlstate = state;
    if (const char* primary = PQresultErrorField(result, PG_DIAG_MESSAGE_PRIMARY)) {
      message = primary;
    }
  }
  if (message.empty()) message = Trimmed(PQerrorMessage(conn_));
  if (result != nullptr) PQclear(result);
  message = Redact(std::move(message));
  if (IsConnectionLoss(sqlstate) || PQstatus(conn_) != CONNECTION_OK) {
    throw PgError(codes::kCatalogUnavailable,
                  "the PostgreSQL catalog cannot be reached (" + message +
                      "); the request may not have been applied: retry it once the server is "
                      "back",
                  sqlstate);
  }
  throw PgError(codes::kTransferFailed,
                "catalog: " + std::string(context) + ": " + message +
                    (sqlstate.empty() ? "" : " (SQLSTATE " + sqlstate + ")"),
                sqlstate);
}

Result Connection::Check(PGresult* result, std::string_view context) {
  ExecStatusType status = result != nullptr ? PQresultStatus(result) : PGRES_FATAL_ERROR;
  if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) Throw(result, context);
  return Result(result);
}

Result Connection::Exec(const std::string& sql) {
  // A multi-statement string returns the last result; an error stops at its statement.
  return Check(PQexec(conn_, sql.c_str()), sql);
}

Result Connection::Query(const std::string& sql, const std::vector<Param>& params) {
  auto it = prepared_.find(sql);
  if (it == prepared_.end()) {
    std::string name = std::to_string(prepared_.size());
    name.insert(0, 1, 's');
    Check(PQprepare(conn_, name.c_str(), sql.c_str(), 0, nullptr), "preparing \"" + sql + "\"");
    it = prepared_.emplace(sql, std::move(name)).first;
  }
  std::vector<const char*> values;
  values.reserve(params.size());
  for (const Param& p : params) values.push_back(p ? p->c_str() : nullptr);
  return Check(PQexecPrepared(conn_, it->second.c_str(), static_cast<int>(values.size()),
                              values.data(), nullptr, nullptr, 0),
               sql);
}

int Connection::WaitForNotifications(int timeout_ms, int ignore_pid) {
  pollfd fd{PQsocket(conn_), POLLIN, 0};
  if (fd.fd < 0 || poll(&fd, 1, timeout_ms) < 0) Throw(nullptr, "waiting for notifications");
  if (PQconsumeInput(conn_) == 0) Throw(nullptr, "reading notifications");
  int count = 0;
  while (PGnotify* notify = PQnotifies(conn_)) {
    if (notify->be_pid != ignore_pid) ++count;
    PQfreemem(notify);
  }
  if (PQstatus(conn_) != CONNECTION_OK) Throw(nullptr, "reading notifications");
  return count;
}

std::string RedactConninfo(std::string_view conninfo) {
  std::string text(conninfo);
  // URI: postgresql://user:password@host...
  if (size_t scheme = text.find("://"); scheme != std::string::npos) {
    const size_t start = scheme + 3;
    const size_t end = text.find_first_of("/?", start);
    const size_t at = text.rfind('@', end == std::string::npos ? text.size() : end);
    if (at != std::string::npos && at >= start) {
      const size_t colon = text.find(':', start);
      if (colon != std::string::npos && colon < at) text.replace(colon + 1, at - colon - 1, "***");
    }
  }
  // ?password=... in a URI, password=... in a key=value string.
  for (size_t at = text.find("password="); at != std::string::npos;
       at = text.find("password=", at + 1)) {
    const size_t from = at + 9;
    size_t to = from;
    if (to < text.size() && text[to] == '\'') {
      to = text.find('\'', to + 1);
      to = to == std::string::npos ? text.size() : to + 1;
    } else {
      to = text.find_first_of("& ", from);
      if (to == std::string::npos) to = text.size();
    }
    text.replace(from, to - from, "***");
  }
  return text;
}

}  // namespace imagerelay::pg
