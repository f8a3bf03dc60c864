#include "engine/store_registry.hpp"

#include <optional>

#include "base/url_redaction.hpp"
#include "imagerelay/log.hpp"
#include "store/store_factory.hpp"
#include "store/store_place.hpp"

namespace imagerelay {

StoreRegistry::StoreRegistry(const CredentialsFiles& credentials, std::filesystem::path cache_dir,
                             std::filesystem::path home, HomeIdentity identity, DamageFn on_damage)
    : credentials_(credentials),
      cache_dir_(std::move(cache_dir)),
      home_(std::move(home)),
      identity_(std::move(identity)),
      on_damage_(std::move(on_damage)) {}

std::shared_ptr<Store> StoreRegistry::OpenUnclaimed(const std::string& uri,
                                                    const sigv4::Credentials& credentials) const {
  const std::optional<StorePlace> place = PlaceOfStore(uri);
  const bool in_home = place && PlaceOfDirectory(home_).Contains(*place);
  std::shared_ptr<Store> store = OpenStore(uri, credentials, cache_dir_, in_home);
  std::string theirs;
  {
    std::lock_guard lock(mutex_);
    if (identity_.originals_stores.contains(uri)) {
      theirs = "this home is a copy of the one at " + identity_.original +
               ", and the store of this region, outside it, is taken for the original's (no "
               "home has marked it yet: a store of an earlier release); point the region at a "
               "copy of it (`imagerelay regions move`), or remove the region";
    }
  }
  store->SetOwner({.me = identity_.owner,
                   .place = place ? place->where : "",
                   .ours_by_place = in_home,
                   .unowned_is_theirs = std::move(theirs)});
  store->SetDamageHandler(
      [this, uri](const std::string& hash, const std::string& why) { on_damage_(uri, hash, why); });
  return store;
}

std::shared_ptr<Store> StoreRegistry::OpenWith(const std::string& uri,
                                               const sigv4::Credentials& credentials) {
  {
    std::lock_guard lock(mutex_);
    released_.erase(uri);  // a region added or moved there: this home's again
  }
  return Open(uri, credentials);
}

std::shared_ptr<Store> StoreRegistry::Open(const std::string& uri,
                                           const sigv4::Credentials& credentials) const {
  std::shared_ptr<Store> store = OpenUnclaimed(uri, credentials);
  // Another home's store is never opened, so never used nor swept. One this process gave
  // up is not marked again by work that still had its URI (a sweep, leftovers): claims and
  // releases take turns, so that a claim never lands after the release it raced.
  std::lock_guard turns(claims_mutex_);
  bool released = false;
  {
    std::lock_guard lock(mutex_);
    released = released_.contains(uri);
  }
  store->ClaimForOwner(/*claim_unowned=*/!released);
  return store;
}

std::shared_ptr<Store> StoreRegistry::ForUri(const std::string& uri, const std::string& region_id) {
  {
    std::lock_guard lock(mutex_);
    if (auto it = stores_.find(uri); it != stores_.end() && it->second) return it->second;
  }
  std::optional<sigv4::Credentials> saved;
  if (!region_id.empty() && uri.starts_with("s3://")) saved = credentials_.Get(region_id);
  std::shared_ptr<Store> store = Open(uri, saved.value_or(sigv4::Credentials{}));
  std::lock_guard lock(mutex_);
  auto& slot = stores_[uri];
  if (!slot) slot = std::move(store);
  return slot;
}

void StoreRegistry::Keep(const std::string& uri, std::shared_ptr<Store> store) {
  std::lock_guard lock(mutex_);
  stores_[uri] = std::move(store);
}

void StoreRegistry::Release(const std::string& uri, const std::string& region_id) {
  std::lock_guard turns(claims_mutex_);
  std::shared_ptr<Store> store;
  {
    std::lock_guard lock(mutex_);
    released_.insert(uri);
    if (auto it = stores_.find(uri); it != stores_.end()) store = it->second;
    // The original's store (a copied home's): not this home's to release.
    if (identity_.originals_stores.contains(uri)) store = nullptr;
  }
  try {
    if (!store && !IsOriginals(uri)) {
      std::optional<sigv4::Credentials> saved;
      if (!region_id.empty() && uri.starts_with("s3://")) saved = credentials_.Get(region_id);
      store = OpenUnclaimed(uri, saved.value_or(sigv4::Credentials{}));
    }
    if (store) store->Release();  // rewrites the marker only if it names this home
  } catch (const std::exception& e) {
    Log(LogLevel::kWarning,
        "the store " + RedactUrl(uri) + " of region " + region_id +
            " was not released (its marker still names this home): " + e.what());
  }
  Forget(uri);
}

void StoreRegistry::Reclaim(const std::string& uri, const std::string& region_id) {
  {
    std::lock_guard lock(mutex_);
    released_.erase(uri);
  }
  try {
    ForUri(uri, region_id);
  } catch (const std::exception& e) {
    Log(LogLevel::kWarning,
        "the store " + RedactUrl(uri) + " of region " + region_id +
            " is marked as no home's until this home opens it again: " + e.what());
  }
}

bool StoreRegistry::IsOriginals(const std::string& uri) const {
  std::lock_guard lock(mutex_);
  return identity_.originals_stores.contains(uri);
}

void StoreRegistry::Forget(const std::string& uri) {
  std::lock_guard lock(mutex_);
  stores_.erase(uri);
  identity_.originals_stores.erase(uri);
}

}  // namespace imagerelay
