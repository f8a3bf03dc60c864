#include "store/store_place.hpp"

#include <algorithm>
#include <cctype>

#include "imagerelay/store.hpp"
#include "net/s3_client.hpp"

namespace imagerelay {

bool StorePlace::Contains(const StorePlace& other) const {
  // Component by component: /data/bj holds /data/bj/x, not /data/bjx.
  const std::string mine = where.ends_with('/') ? where : where + "/";
  const std::string theirs = other.where.ends_with('/') ? other.where : other.where + "/";
  return theirs.starts_with(mine);
}

StorePlace PlaceOfDirectory(const std::filesystem::path& directory) {
  std::error_code ec;
  std::filesystem::path absolute = std::filesystem::absolute(directory, ec);
  if (ec) absolute = directory;
  // Links resolved where the path exists, the rest normalised (a/./b, a/../b).
  std::filesystem::path canonical = std::filesystem::weakly_canonical(absolute, ec);
  if (ec) canonical = absolute.lexically_normal();
  std::string text = canonical.string();
  while (text.size() > 1 && text.ends_with('/')) text.pop_back();
  return StorePlace{"file:" + text};
}

std::optional<StorePlace> PlaceOfStore(const std::string& uri) {
  if (!CheckStoreUri(uri).empty()) return std::nullopt;
  if (std::optional<std::filesystem::path> directory = LocalStoreDirectory(uri)) {
    return PlaceOfDirectory(*directory);
  }
  try {
    const S3Location location = ParseS3Uri(uri);
    std::string host = location.host;
    std::transform(host.begin(), host.end(), host.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    std::string where = "s3:" + host + "/" + location.bucket;
    if (!location.prefix.empty()) where += "/" + location.prefix;
    return StorePlace{where};
  } catch (const std::exception&) {
    return std::nullopt;  // refused where it is opened, with its reason
  }
}

}  // namespace imagerelay
