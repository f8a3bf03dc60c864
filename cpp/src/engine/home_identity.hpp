// Who a home is, settled at every open (docs/integrity.md, "One home per store").
//
// A home has an identity, the catalog setting `home_id`, written into the marker of every
// store its regions use (store/store_marker.hpp): a store serves one home. A home with its
// own SQLite catalog also records where it is (`home_path`), so that an open elsewhere
// tells what happened to it:
//   - moved (nothing is at the old place any more, or no home with this identity): the
//     regions whose stores were inside the home follow it to the new place;
//   - copied (`cp -r`: the old place still holds a home with this identity): the copy takes
//     a new identity, and its regions inside it use the copy's own stores. Regions whose
//     stores are outside the home stay the original's: the copy may not use them (their
//     marker names the original) until pointed at a store of their own.
// A home of an earlier release recorded no place: its default regions tell where it was
// (`<old home>/regions/<id>`). A home whose catalog is PostgreSQL is shared by hosts, each
// with its own home directory: it has one identity and records no place.
#pragma once

#include <filesystem>
#include <set>
#include <string>

#include "imagerelay/catalog.hpp"
#include "imagerelay/store.hpp"

namespace imagerelay {

struct HomeIdentity {
  StoreOwner owner;  // what its stores are marked with
  // A copied home: the stores of its regions outside it when it learnt it was a copy, by
  // URI (setting copied_from). They are the original's: one no home has marked yet (an
  // earlier release's) is refused, not claimed, until the region is moved or removed.
  std::set<std::string> originals_stores;
  std::string original;  // where the original home is
};

// Settles the identity of the home at `home` whose catalog is `catalog` (the home's own
// SQLite catalog if `own_catalog`), moving the regions inside a moved or copied home to its
// new place. Logs what it changed.
HomeIdentity SettleHomeIdentity(Catalog& catalog, const std::filesystem::path& home,
                                bool own_catalog);

// Drops `store_uri` from the original's stores of a copied home (its region was moved or
// removed), in `tx`.
void ForgetOriginalsStore(CatalogTx& tx, const std::string& store_uri);

}  // namespace imagerelay
