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
#include <set>
#include <string>

#include "engine/credentials_files.hpp"
#include "engine/home_identity.hpp"
#include "imagerelay/store.hpp"
#include "net/sigv4.hpp"

namespace imagerelay {

class StoreRegistry {
 public:
  using DamageFn = std::function<void(const std::string& store_uri, const std::string& hash,
                                      const std::string& why)>;
  // A local store inside `home` is made anew if missing; one elsewhere only by Create()
  // (LocalStore::Root). Every store serves the home of `identity` (Store::SetOwner): one
  // inside `home` is the home's whoever marked it; one of its original's (a copied home's)
  // is refused if no home marked it.
  StoreRegistry(const CredentialsFiles& credentials, std::filesystem::path cache_dir,
                std::filesystem::path home, HomeIdentity identity, DamageFn on_damage);

  // The store of `uri`, opened on first use with the credentials saved for `region_id`.
  std::shared_ptr<Store> ForUri(const std::string& uri, const std::string& region_id = "");
  // A store opened with `credentials` (a region being added: its credentials are given now),
  // reporting damage to the handler; not kept. Like ForUri, throws
  // TransferError(Region.StoreUnavailable) for another home's store (Store::ClaimForOwner).
  std::shared_ptr<Store> OpenWith(const std::string& uri, const sigv4::Credentials& credentials);
  // Gives the store of `uri` up (region `region_id` removed or moved): its marker names no
  // home any more if it named this one, then Forget; this process does not mark it again
  // unless OpenWith opens it (a region added or moved there). Never fails: a store that
  // cannot be reached is said so in the log and stays marked.
  void Release(const std::string& uri, const std::string& region_id);
  // Undoes Release (the removal or move failed): the store is claimed again.
  void Reclaim(const std::string& uri, const std::string& region_id);
  // Keeps `store` as the store of `uri` from now on.
  void Keep(const std::string& uri, std::shared_ptr<Store> store);

 private:
  // Drops the store of `uri` (its region was removed or moved): a region added again at the
  // same URI opens it afresh, with the credentials it is given then, and it is no longer
  // taken for a copied home's original's (the caller drops it from the catalog's list,
  // ForgetOriginalsStore).
  void Forget(const std::string& uri);
  // The store of `uri`, claimed for this home (unless released).
  std::shared_ptr<Store> Open(const std::string& uri, const sigv4::Credentials& credentials) const;
  // The store with its owner set, not claimed yet.
  std::shared_ptr<Store> OpenUnclaimed(const std::string& uri,
                                       const sigv4::Credentials& credentials) const;
  bool IsOriginals(const std::string& uri) const;

  const CredentialsFiles& credentials_;
  const std::filesystem::path cache_dir_;
  const std::filesystem::path home_;
  HomeIdentity identity_;  // its originals_stores under mutex_
  const DamageFn on_damage_;
  mutable std::mutex mutex_;
  mutable std::mutex claims_mutex_;  // held by a store's claim at open and by Release
  std::map<std::string, std::shared_ptr<Store>> stores_;  // by store URI
  std::set<std::string> released_;                        // Release's URIs
};

}  // namespace imagerelay
