#include "store/store_marker.hpp"

#include <cstdint>
#include <optional>

#include <nlohmann/json.hpp>

namespace imagerelay {
namespace {

// 2: images may be stored as blocks in packs, which releases that know version 1 cannot read.
// The owner fields came later without a new version: a release that does not know them
// reads the store as before (and rewrites the marker without them, to be claimed again).
constexpr int kStoreMarkerVersion = 2;

// What a marker says, for a message: printable and short (a marker is anyone's file).
std::string Shown(std::string_view s) {
  std::string out;
  for (char c : s.substr(0, 200)) out += (c >= 0x20 && c < 0x7f) ? c : '?';
  return s.size() > 200 ? out + "..." : out;
}

nlohmann::json ParseMarker(std::string_view text) {
  return nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
}

// The owner a valid marker names for the store at `place`: none if it names none (or in a
// shape this release does not know, which is no owner it could compare), or if it was
// written for another place (a copy of the store, no one's yet).
std::optional<StoreOwner> MarkedOwner(const nlohmann::json& json, const std::string& place) {
  if (!json.contains("home") || !json["home"].is_string()) return std::nullopt;
  StoreOwner owner{.id = json["home"].get<std::string>(), .path = {}};
  if (owner.id.empty()) return std::nullopt;
  if (!place.empty() && json.contains("place") && json["place"].is_string() &&
      !json["place"].get<std::string>().empty() && json["place"].get<std::string>() != place) {
    return std::nullopt;
  }
  if (json.contains("home_path") && json["home_path"].is_string()) {
    owner.path = json["home_path"].get<std::string>();
  }
  return owner;
}

}  // namespace

std::string StoreMarkerText(const StoreOwner& owner, const std::string& place) {
  std::string text =
      R"({"format": "imagerelay-store", "version": )" + std::to_string(kStoreMarkerVersion);
  if (!owner.id.empty()) {
    // Replacement, not an exception, for a path that is not UTF-8: the paths are only shown
    // and compared.
    auto quoted = [](const std::string& s) {
      return nlohmann::json(s).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    };
    text += R"(, "home": )" + quoted(owner.id) + R"(, "home_path": )" + quoted(owner.path) +
            R"(, "place": )" + quoted(place);
  }
  return text + "}\n";
}

std::string CheckStoreMarker(std::string_view text) {
  const auto json = ParseMarker(text);
  // Compared as JSON values: a "format" that is not a string is simply not ours (value()
  // would throw a type_error, found by fuzzing).
  if (!json.is_object() || !json.contains("format") || json["format"] != "imagerelay-store" ||
      !json.contains("version") || !json["version"].is_number_integer()) {
    return "its " + std::string(kStoreMarker) + " is not an imagerelay store marker";
  }
  if (const auto version = json["version"].get<int64_t>(); version > kStoreMarkerVersion) {
    return "its " + std::string(kStoreMarker) + " says store format version " +
           std::to_string(version) + ", newer than this release knows (" +
           std::to_string(kStoreMarkerVersion) + "); upgrade imagerelay";
  }
  return "";
}

MarkerVerdict JudgeMarker(std::string_view text, const StoreClaim& claim, MarkerUse use) {
  using Action = MarkerVerdict::Action;
  if (std::string problem = CheckStoreMarker(text); !problem.empty()) {
    return {.action = Action::kRefuse, .text = {}, .problem = std::move(problem)};
  }
  const auto json = ParseMarker(text);
  const std::optional<StoreOwner> marked = MarkedOwner(json, claim.place);
  if (claim.me.id.empty()) {  // owns nothing: brings an old marker up to date, keeps it all
    if (json["version"].get<int64_t>() >= kStoreMarkerVersion) return {};
    nlohmann::ordered_json updated = nlohmann::ordered_json::parse(text);
    updated["version"] = kStoreMarkerVersion;
    return {.action = Action::kRewrite,
            .text = updated.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n",
            .problem = {}};
  }
  if (marked && marked->id != claim.me.id && !claim.ours_by_place) {
    const std::string where = marked->path.empty() ? "" : " at " + Shown(marked->path);
    return {.action = Action::kRefuse,
            .text = {},
            .problem = "it belongs to another imagerelay home" + where + " (home id " +
                       Shown(marked->id.substr(0, 12)) +
                       "): a store serves one home, whose catalog alone knows the copies and "
                       "imports it has in flight; give this region a store of its own (copy "
                       "the store and point the region at the copy with `imagerelay regions "
                       "move`), or remove the region from the other home first"};
  }
  if (const std::string& theirs = UnmarkedIsTheirs(claim); !marked && !theirs.empty()) {
    return {.action = Action::kRefuse, .text = {}, .problem = theirs};
  }
  if (!marked && use == MarkerUse::kCheck) return {};
  std::string mine = StoreMarkerText(claim.me, claim.place);
  if (text == mine) return {};
  return {.action = Action::kRewrite, .text = std::move(mine), .problem = {}};
}

std::string ReleasedMarker(std::string_view text, const StoreClaim& claim) {
  if (claim.me.id.empty() || !CheckStoreMarker(text).empty()) return "";
  const std::optional<StoreOwner> marked = MarkedOwner(ParseMarker(text), claim.place);
  if (!marked || marked->id != claim.me.id) return "";
  return StoreMarkerText();
}

}  // namespace imagerelay
