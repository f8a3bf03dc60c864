#include "engine/store_registry.hpp"

#include <optional>

#include "store/store_factory.hpp"
#include "store/store_place.hpp"

namespace imagerelay {

StoreRegistry::StoreRegistry(const CredentialsFiles& credentials, std::filesystem::path cache_dir,
                             std::filesystem::path home, StoreOwner owner, DamageFn on_damage)
    : credentials_(credentials),
      cache_dir_(std::move(cache_dir)),
      home_(std::move(home)),
      owner_(std::move(owner)),
      on_damage_(std::move(on_damage)) {}

std::shared_ptr<Store> StoreRegistry::OpenWith(const std::string& uri,
                                               const sigv4::Credentials& credentials) const {
  const std::optional<StorePlace> place = PlaceOfStore(uri);
  const bool in_home = place && PlaceOfDirectory(home_).Contains(*place);
  std::shared_ptr<Store> store = OpenStore(uri, credentials, cache_dir_, in_home);
  store->SetOwner(owner_, place ? place->where : "", in_home);
  store->ClaimForOwner();  // another home's store is never opened, so never used nor swept
  store->SetDamageHandler(
      [this, uri](const std::string& hash, const std::string& why) { on_damage_(uri, hash, why); });
  return store;
}

std::shared_ptr<Store> StoreRegistry::ForUri(const std::string& uri, const std::string& region_id) {
  {
    std::lock_guard lock(mutex_);
    if (auto it = stores_.find(uri); it != stores_.end() && it->second) return it->second;
  }
  std::optional<sigv4::Credentials> saved;
  if (!region_id.empty() && uri.starts_with("s3://")) saved = credentials_.Get(region_id);
  std::shared_ptr<Store> store = OpenWith(uri, saved.value_or(sigv4::Credentials{}));
  std::lock_guard lock(mutex_);
  auto& slot = stores_[uri];
  if (!slot) slot = std::move(store);
  return slot;
}

void StoreRegistry::Keep(const std::string& uri, std::shared_ptr<Store> store) {
  std::lock_guard lock(mutex_);
  stores_[uri] = std::move(store);
}

void StoreRegistry::Forget(const std::string& uri) {
  std::lock_guard lock(mutex_);
  stores_.erase(uri);
}

}  // namespace imagerelay
