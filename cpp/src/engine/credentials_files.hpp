// Where a home keeps the S3 credentials given to add_region: one file per region,
// <home>/credentials/<region>.json, mode 0600 in a 0700 directory, written atomically. Not
// in the catalog: a catalog is shared by processes, copied in backups and read by tools
// (sqlite3, the events), and the secret should stay where the user put it and nowhere else.
#pragma once

#include <filesystem>
#include <optional>
#include <string>

#include "net/sigv4.hpp"

namespace imagerelay {

class CredentialsFiles {
 public:
  explicit CredentialsFiles(std::filesystem::path dir) : dir_(std::move(dir)) {}

  // Throws Error(InvalidParameter) naming the file (never the secret) when it cannot write.
  void Put(const std::string& region_id, const sigv4::Credentials& credentials) const;
  // Removes the region's file, if any (a region removed). Throws Error(InvalidParameter)
  // naming the file when it cannot.
  void Remove(const std::string& region_id) const;
  // nullopt when the region has none (it then uses the environment's).
  std::optional<sigv4::Credentials> Get(const std::string& region_id) const;

  // The credentials JSON kept by older homes in the catalog's settings.
  static sigv4::Credentials Parse(const std::string& json);

 private:
  std::filesystem::path PathOf(const std::string& region_id) const;

  std::filesystem::path dir_;
};

}  // namespace imagerelay
