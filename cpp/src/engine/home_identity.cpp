#include "engine/home_identity.hpp"

#include <optional>
#include <system_error>
#include <vector>

#include <nlohmann/json.hpp>

#include "imagerelay/ids.hpp"
#include "imagerelay/log.hpp"

namespace imagerelay {
namespace fs = std::filesystem;
namespace {

constexpr const char* kHomeIdSetting = "home_id";
constexpr const char* kHomePathSetting = "home_path";
// {"home": "<where the original is>", "stores": ["<uri>", ...]}: HomeIdentity's.
constexpr const char* kCopiedFromSetting = "copied_from";

void ReadCopiedFrom(CatalogTx& tx, HomeIdentity& identity) {
  identity.originals_stores.clear();
  const std::optional<std::string> text = tx.GetSetting(kCopiedFromSetting);
  if (!text) return;
  const auto json = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (!json.is_object()) return;
  if (json.contains("home") && json["home"].is_string()) identity.original = json["home"];
  if (json.contains("stores") && json["stores"].is_array()) {
    for (const auto& uri : json["stores"]) {
      if (uri.is_string()) identity.originals_stores.insert(uri.get<std::string>());
    }
  }
}

void WriteCopiedFrom(CatalogTx& tx, const HomeIdentity& identity) {
  if (identity.originals_stores.empty()) {
    tx.DeleteSetting(kCopiedFromSetting);
    return;
  }
  nlohmann::json json{{"home", identity.original}, {"stores", identity.originals_stores}};
  tx.PutSetting(kCopiedFromSetting,
                json.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
}

// The home's path as its regions' URIs spell it: Engine::Open and AddRegion make default
// stores from fs::absolute(home), links not resolved.
fs::path SpelledPath(const fs::path& home) { return fs::absolute(home).lexically_normal(); }

// `dir` relative to `home` if it lies inside it (not the home itself), else nullopt.
std::optional<fs::path> InsideOf(const fs::path& dir, const fs::path& home) {
  const fs::path relative = dir.lexically_normal().lexically_relative(home);
  if (relative.empty() || relative == "." || *relative.begin() == "..") return std::nullopt;
  return relative;
}

// Whether the place a home was recorded at still holds this home (`id`): a copy was made
// of it. A catalog there that cannot be read counts as holding it: taking a new identity
// only makes outside stores refuse this home, never lets two homes share one.
bool OriginalStillThere(const fs::path& old_home, const std::string& id) {
  try {
    const std::optional<std::string> there =
        PeekSqliteCatalogSetting(old_home / "catalog.db", kHomeIdSetting);
    return there && *there == id;
  } catch (const std::exception& e) {
    Log(LogLevel::kWarning, "the catalog at " + (old_home / "catalog.db").string() +
                                " cannot be read (" + e.what() +
                                "); taken for this home's original");
    return true;
  }
}

// Where a home was when a release that recorded no place last opened it, as its default
// regions say (`<old home>/regions/<id>`, and this home holds a directory of that name for
// each of them: it was moved or copied with them); nullopt if they say nothing or disagree.
std::optional<fs::path> PlaceBeforeRecords(const std::vector<Region>& regions,
                                           const fs::path& here) {
  std::optional<fs::path> guess;
  for (const Region& region : regions) {
    const std::optional<fs::path> dir = LocalStoreDirectory(region.store_uri);
    if (!dir) continue;
    const fs::path store = dir->lexically_normal();
    if (store.filename() != region.id || store.parent_path().filename() != "regions") continue;
    const fs::path old_home = store.parent_path().parent_path();
    std::error_code ec;
    if (old_home == here || fs::equivalent(old_home, here, ec)) continue;  // its own
    if (!fs::is_directory(here / "regions" / region.id, ec)) continue;
    if (guess && *guess != old_home) return std::nullopt;
    guess = old_home;
  }
  return guess;
}

}  // namespace

void ForgetOriginalsStore(CatalogTx& tx, const std::string& store_uri) {
  HomeIdentity identity;
  ReadCopiedFrom(tx, identity);
  if (identity.originals_stores.erase(store_uri) > 0) WriteCopiedFrom(tx, identity);
}

HomeIdentity SettleHomeIdentity(Catalog& catalog, const fs::path& home, bool own_catalog) {
  const fs::path here = SpelledPath(home);
  std::optional<std::string> id, recorded_setting;
  std::vector<Region> regions;
  catalog.Read([&](CatalogTx& tx) {
    id = tx.GetSetting(kHomeIdSetting);
    recorded_setting = tx.GetSetting(kHomePathSetting);
    regions = tx.ListRegions();
  });
  // Where it was: as recorded, or as its regions tell for a home of an earlier release
  // (copied or moved before places were recorded).
  std::optional<std::string> recorded = recorded_setting;
  if (own_catalog && !recorded) {
    if (std::optional<fs::path> guess = PlaceBeforeRecords(regions, here)) {
      recorded = guess->string();
    }
  }
  // Moved or copied: recorded elsewhere, and that place is not this directory by another
  // name (a link, a bind mount).
  std::error_code ec;
  const bool elsewhere = own_catalog && recorded && fs::path(*recorded) != here &&
                         !fs::equivalent(fs::path(*recorded), here, ec);
  // Copied: the old place still holds this home (or any catalog, for an earlier release's
  // home, which had no identity to compare).
  const bool copied =
      elsewhere && (id ? OriginalStillThere(*recorded, *id)
                       : fs::is_regular_file(fs::path(*recorded) / "catalog.db", ec));

  std::vector<std::string> followed, outside;
  HomeIdentity identity;
  bool settled_here = false;  // this open moved the regions (not another process's)
  catalog.Write([&](CatalogTx& tx) {
    followed.clear();
    outside.clear();
    ReadCopiedFrom(tx, identity);
    std::optional<std::string> now_id = tx.GetSetting(kHomeIdSetting);
    const std::optional<std::string> now_recorded = tx.GetSetting(kHomePathSetting);
    // Another process may have settled it meanwhile: then only what it wrote is used.
    const bool settled_meanwhile = now_recorded != recorded_setting || now_id != id;
    if (!now_id || (copied && !settled_meanwhile)) {
      now_id = RandomHex(16);
      tx.PutSetting(kHomeIdSetting, *now_id);
    }
    settled_here = elsewhere && !settled_meanwhile;
    if (settled_here) {
      if (copied) {
        identity.originals_stores.clear();
        identity.original = *recorded;
      }
      for (Region region : tx.ListRegions()) {
        const std::optional<fs::path> dir = LocalStoreDirectory(region.store_uri);
        const std::optional<fs::path> inside = dir ? InsideOf(*dir, *recorded) : std::nullopt;
        if (!inside) {
          outside.push_back(region.id);
          if (copied) identity.originals_stores.insert(region.store_uri);
          continue;
        }
        tx.SetRegionStore(region.id, (here / *inside).string());
        followed.push_back(region.id + " (" + region.store_uri + " -> " +
                           (here / *inside).string() + ")");
      }
    }
    if (copied && !settled_meanwhile) WriteCopiedFrom(tx, identity);
    if (own_catalog && (!now_recorded || (elsewhere && !settled_meanwhile))) {
      tx.PutSetting(kHomePathSetting, here.string());
    }
    identity.owner = {.id = *now_id, .path = here.string()};
  });
  if (settled_here) {
    auto listed = [](const std::vector<std::string>& items) {
      std::string list;
      for (const std::string& one : items) list += (list.empty() ? "" : ", ") + one;
      return list;
    };
    std::string message = copied ? "this home is a copy of the one at " + *recorded +
                                       ": it takes an identity of its own"
                                 : "this home moved from " + *recorded;
    if (!followed.empty()) {
      message += "; regions whose stores were inside it now use its own: " + listed(followed);
    }
    if (copied && !outside.empty()) {
      message += "; the stores of regions " + listed(outside) +
                 " are outside it and remain the original's: point each at a store of its own "
                 "(`imagerelay regions move`), or remove it";
    }
    Log(LogLevel::kWarning, message);
  }
  return identity;
}

}  // namespace imagerelay
