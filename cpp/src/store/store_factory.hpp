// The one place region stores are built: OpenStore (store.hpp) with the region's own
// credentials and the home's cache directory.
#pragma once

#include <filesystem>
#include <memory>
#include <string>

#include "imagerelay/store.hpp"
#include "net/sigv4.hpp"

namespace imagerelay {

// The store behind a region URI, chunks kept in packs (pack_store.hpp). An S3 store signs
// with `credentials` (from the environment when empty) and keeps its local index cache in
// `cache_dir` (see S3Store::SetIndexDir; the default when empty). A local store whose
// directory is missing or empty is made anew only if `makes_local_root` (a store in the
// home: see LocalStore::Root), else unavailable until Create(). Throws
// ValidationError(InvalidParameter) for a malformed URI.
std::unique_ptr<Store> OpenStore(const std::string& uri, const sigv4::Credentials& credentials,
                                 const std::filesystem::path& cache_dir,
                                 bool makes_local_root = true);

}  // namespace imagerelay
