// The columns both catalogs (sqlite_catalog.cpp, postgres_catalog.cpp) select, in the order
// their row readers take them: one list, so that the two schemas cannot drift apart.
#pragma once

#include <initializer_list>
#include <string>
#include <string_view>

namespace imagerelay::catalog_columns {

inline constexpr std::string_view kImageColumns =
    "id, name, region, type, owner, status, size, digest, format, os_type, os_name, "
    "os_version, os_arch, description, created_us, source_image_id, source_region, error, "
    "virtual_size";
inline constexpr std::string_view kTaskColumns =
    "t.dest_image_id, t.job_id, t.region, t.state, t.bytes_total, t.bytes_done, "
    "t.bytes_transferred, t.chunks_total, t.chunks_skipped, t.rate, t.attempts, t.error, "
    "t.error_code, t.started_us, t.finished_us, t.lease_owner, t.lease_expires_us, "
    "t.bytes_sent";
inline constexpr std::string_view kJobColumns =
    "id, account, source_image_id, source_region, name, client_token, created_us";
inline constexpr std::string_view kEventColumns =
    "seq, time_us, type, account, image_id, job_id, region, detail_json";

// A statement put together from parts (column lists and the rest).
inline std::string Sql(std::initializer_list<std::string_view> parts) {
  std::string sql;
  for (auto part : parts) sql += part;
  return sql;
}

}  // namespace imagerelay::catalog_columns
