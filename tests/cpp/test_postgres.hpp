// The test PostgreSQL server, for tests that run against both catalogs: `make test-cpp`
// starts one (tests/python/pg_server.py) and names it in $IMAGERELAY_TEST_PG
// ("postgresql://user@127.0.0.1:PORT", no database). Each test gets a database of its own.
#pragma once

#include <libpq-fe.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>

namespace imagerelay::testing_util {

inline constexpr const char* kNoPostgresMessage =
    "no PostgreSQL test server: the PostgreSQL half of this test is skipped. Run `make "
    "test-cpp` (it starts one), or set IMAGERELAY_TEST_PG=postgresql://USER@127.0.0.1:PORT";

// The server's URI, if one was given.
inline std::optional<std::string> TestPostgresServer() {
  const char* uri = std::getenv("IMAGERELAY_TEST_PG");
  if (uri == nullptr || *uri == '\0') return std::nullopt;
  return std::string(uri);
}

// Runs one statement on the server's `database` as its superuser; throws if it fails.
inline void PostgresExec(const std::string& server, const std::string& database,
                         const std::string& sql) {
  PGconn* conn = PQconnectdb((server + "/" + database).c_str());
  std::string error;
  if (PQstatus(conn) != CONNECTION_OK) {
    error = PQerrorMessage(conn);
  } else {
    PGresult* result = PQexec(conn, sql.c_str());
    ExecStatusType status = PQresultStatus(result);
    if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) error = PQerrorMessage(conn);
    PQclear(result);
  }
  PQfinish(conn);
  if (!error.empty()) throw std::runtime_error(sql + ": " + error);
}

// A database of its own on the test server, dropped (its sessions cut) when this goes away.
class ScratchDatabase {
 public:
  explicit ScratchDatabase(std::string server) : server_(std::move(server)) {
    static std::atomic<int> counter{0};
    std::random_device random;
    name_ = "ir_" + std::to_string(getpid()) + "_" + std::to_string(counter++) + "_" +
            std::to_string(random() % 100000);
    PostgresExec(server_, "postgres", "CREATE DATABASE " + name_);
  }
  ~ScratchDatabase() {
    try {
      PostgresExec(server_, "postgres", "DROP DATABASE IF EXISTS " + name_ + " WITH (FORCE)");
    } catch (const std::exception&) {
      // a server already stopped takes its databases with it
    }
  }
  ScratchDatabase(const ScratchDatabase&) = delete;
  ScratchDatabase& operator=(const ScratchDatabase&) = delete;

  const std::string& name() const { return name_; }
  std::string uri() const { return server_ + "/" + name_; }
  // Runs one statement in this database.
  void Exec(const std::string& sql) const { PostgresExec(server_, name_, sql); }

 private:
  std::string server_;
  std::string name_;
};

}  // namespace imagerelay::testing_util
