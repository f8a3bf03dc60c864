// The engine's open region stores, one per store URI, shared by every operation of the
// engine: a store keeps its block index, open packs and group commit from call to call. An
// s3:// store uses the credentials saved for its region (else the environment's); every store
// hands the damage it finds to the engine's handler.
#pragma once

#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "engine/credentials_files.hpp"
#include "imagerelay/store.hpp"
#include "net/sigv4.hpp"

namespace imagerelay {

class StoreRegistry {
 public:
  using DamageFn = std::function<void(const std::string& store_uri, const std::string& hash,
                                      const std::string& why)>;
  // A local store inside `home` is made anew if missing; one elsewhere only by Create()
  // (LocalStore::Root). Every store serves `owner` (Store::SetOwner); one inside `home` is
  // the home's whoever marked it.
  StoreRegistry(const CredentialsFiles& credentials, std::filesystem::path cache_dir,
                std::filesystem::path home, StoreOwner owner, DamageFn on_damage);

  // The store of `uri`, opened on first use with the credentials saved for `region_id`.
  std::shared_ptr<Store> ForUri(const std::string& uri, const std::string& region_id = "");
  // A store opened with `credentials` (a region being added: its credentials are given now),
  // reporting damage to the handler; not kept.
  std::shared_ptr<Store> OpenWith(const std::string& uri,
                                  const sigv4::Credentials& credentials) const;
  // Keeps `store` as the store of `uri` from now on.
  void Keep(const std::string& uri, std::shared_ptr<Store> store);
  // Drops the store of `uri` (its region was removed): a region added again at the same URI
  // opens it afresh, with the credentials it is given then.
  void Forget(const std::string& uri);

 private:
  const CredentialsFiles& credentials_;
  const std::filesystem::path cache_dir_;
  const std::filesystem::path home_;
  const StoreOwner owner_;
  const DamageFn on_damage_;
  std::mutex mutex_;
  std::map<std::string, std::shared_ptr<Store>> stores_;  // by store URI
};

}  // namespace imagerelay
