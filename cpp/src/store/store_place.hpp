// Where a store keeps its bytes, in a form two stores' places compare by: a local store's
// directory (absolute, links resolved as far as it exists), an S3 store's endpoint, bucket
// and key prefix. Two regions of a home may not share a place, nor nest one in the other: a
// copy between them would move nothing and still count as a second copy, and each store
// would find the other's files among its own (a listing of packs that sets aside what is
// not one of its packs).
#pragma once

#include <filesystem>
#include <optional>
#include <string>

namespace imagerelay {

struct StorePlace {
  // "file:" and the directory, or "s3:" and host/bucket/prefix; '/' between the parts.
  std::string where;
  bool Contains(const StorePlace& other) const;  // the same place, or one inside it
  bool Overlaps(const StorePlace& other) const { return Contains(other) || other.Contains(*this); }
};

// The place of a store URI; nullopt for one CheckStoreUri refuses.
std::optional<StorePlace> PlaceOfStore(const std::string& uri);

// The place of a local directory (an export's target, the home).
StorePlace PlaceOfDirectory(const std::filesystem::path& directory);

}  // namespace imagerelay
