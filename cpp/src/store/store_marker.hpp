// The marker at a store's root (an S3 store's prefix): `.imagerelay-store`, a small JSON
// object that says the place is an imagerelay store, of which format, and which home owns it.
//   {"format": "imagerelay-store", "version": 2,
//    "home": "<id>", "home_path": "<dir>", "place": "<StorePlace::where>"}
// A region only takes a place that holds the marker, or is empty, never one with someone
// else's files, which a sweep could otherwise delete. A store of an earlier release, without
// the marker, holds only a store's directories: it is adopted.
//
// Owner: a store serves one home. A home's catalog alone knows the copies and imports it has
// in flight, so another home's sweep would take their blocks for garbage, and its deletes
// would remove manifests of images it shares ids with (a home copied with `cp -r`). The
// marker names the home that uses the store and where the store was when marked. A marker
// that names no home (an earlier release's, or a store whose region was removed), or that
// was written for another place (the store was copied there: the copy is no one's yet), is
// claimed by the next home to check it. Claiming is not atomic across hosts: two homes
// claiming one unowned store at the same moment are told apart at their next check.
#pragma once

#include <string>
#include <string_view>

#include "imagerelay/store.hpp"

namespace imagerelay {

inline constexpr std::string_view kStoreMarker = ".imagerelay-store";

// The marker's text for a store at `place` owned by `owner` (none if its id is empty).
std::string StoreMarkerText(const StoreOwner& owner = {}, const std::string& place = "");
// "" if `text` is a marker this release can use, else what is wrong with it.
std::string CheckStoreMarker(std::string_view text);

// What a check does with a marker it found.
struct MarkerVerdict {
  enum class Action { kKeep, kRewrite, kRefuse } action = Action::kKeep;
  std::string text;     // kRewrite: what to write
  std::string problem;  // kRefuse: why the store is not this home's to use
};
// Judges the marker `text` for the home and place of `claim`. A store without a marker is
// claimed only if `claim.unowned_is_theirs` is empty (UnmarkedIsTheirs).
// kClaim: a marker naming no home is rewritten to name the claim's (a store opened by the
// home, or made for a region); kCheck: it is kept as it is, so that a check of a store being
// released, still under way, does not mark it again.
enum class MarkerUse { kClaim, kCheck };
MarkerVerdict JudgeMarker(std::string_view text, const StoreClaim& claim,
                          MarkerUse use = MarkerUse::kClaim);
// The marker to write when a store's region is removed: `text` without its owner if the
// claim's home owns it, else "" (nothing to release).
// The reason to refuse a store without a marker (an earlier release's) to `claim`, or "".
inline const std::string& UnmarkedIsTheirs(const StoreClaim& claim) {
  static const std::string none;
  return claim.ours_by_place || claim.me.id.empty() ? none : claim.unowned_is_theirs;
}
std::string ReleasedMarker(std::string_view text, const StoreClaim& claim);

}  // namespace imagerelay
