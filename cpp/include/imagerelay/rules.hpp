// The rules of DESIGN.md §2 as pure functions: each takes the facts the engine read from
// the catalog (in the same transaction that will act on the answer) and returns every
// failed rule, in the order DESIGN.md lists them. An empty list means the request is valid.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "imagerelay/error.hpp"
#include "imagerelay/model.hpp"

namespace imagerelay {

// Id and name formats.
std::vector<Problem> CheckImageIdFormat(const std::string& id);
std::vector<Problem> CheckJobIdFormat(const std::string& id);
std::vector<Problem> CheckImageName(const std::string& name);
std::vector<Problem> CheckRegionId(const std::string& id);
std::vector<Problem> CheckAccountId(const std::string& id);

// Visibility (DESIGN.md §2 "Visibility"): System images, the caller's own, and those
// shared with the caller. Deleted images are seen by nobody.
bool CanSee(const Image& image, const std::string& caller, bool shared_with_caller);
// The type as the caller sees it: "Sharing" for a recipient.
std::string TypeSeenBy(const Image& image, const std::string& caller);

// The facts about an event's image that decide who sees the event.
struct EventImageFacts {
  std::optional<Image> image;             // the event's image as it is now, if it has one
  std::optional<TimeUs> shared_since_us;  // when it was shared with the caller, if it is
};
// Audit-log visibility (events(), on()): an account sees the events it caused, and events of
// images it may see now (CanSee): its own, System images, and images shared with it, from
// the moment of the share on. Anything else is not shown, not even its existence.
bool EventVisibleTo(const Event& event, const std::string& caller, const EventImageFacts& facts);
// A visible event as `caller` may read it: the detail (source paths, share recipients, ...)
// only of events it caused or of images it owns; others get the event without its detail.
Event EventSeenBy(Event event, const std::string& caller, const EventImageFacts& facts);

struct ImportRequest {
  std::string source;
  std::string region;
  std::string name;
  std::string os_type = "linux";
  std::string os_name;
  std::string os_version;
  std::string os_arch = "x86_64";
  std::string format;  // "" = as the file's header says; else it must say the same
  std::string description;
  bool validate_only = false;  // every check (source, rules, policies), nothing imported
};

// The limits of a home (Engine::Open): each within its range, every problem at once.
std::vector<Problem> CheckLimits(const Limits& limits);

// What the engine read of an import's source.
struct ImportSourceFacts {
  uint64_t file_size = 0;
  DiskFormat disk;  // from its header
};
// Checks the request fields against the facts; `source` is absent when the source could not
// be opened or read (that problem is reported apart).
std::vector<Problem> CheckImport(const ImportRequest& request, bool region_exists,
                                 const std::optional<ImportSourceFacts>& source,
                                 const Limits& limits);

struct ReplicateFacts {
  std::set<std::string> known_regions;
};
// `destinations` as given (duplicates folded by the rule).
std::vector<Problem> CheckReplicate(const Image& image, const std::string& caller,
                                    const std::vector<std::string>& destinations,
                                    const std::string* name, const ReplicateFacts& facts,
                                    const Limits& limits);

struct ShareFacts {
  std::set<std::string> known_accounts;           // which requested accounts exist
  std::vector<std::string> current_shares;        // accounts the image is shared with
  std::map<std::string, int> accepted_in_region;  // account -> images shared to it there
};
std::vector<Problem> CheckShare(const Image& image, const std::string& caller,
                                const std::vector<std::string>& accounts, const ShareFacts& facts,
                                const Limits& limits);
std::vector<Problem> CheckUnshare(const Image& image, const std::string& caller,
                                  const std::vector<std::string>& accounts,
                                  const ShareFacts& facts);
std::vector<Problem> CheckRename(const Image& image, const std::string& caller,
                                 const std::string& name);
std::vector<Problem> CheckDelete(const Image& image, const std::string& caller, size_t share_count);
// Only the owner may list who an image is shared with.
std::vector<Problem> CheckSharedUsers(const Image& image, const std::string& caller);

// What still uses a region (Engine::RemoveRegion): its images that are not deleted (any
// status: a CreateFailed image is still listed and must be deleted first), and the jobs
// with a copy in flight to it or from it.
struct RegionUse {
  std::vector<std::string> images;
  std::vector<std::string> jobs_in_flight;
};
// A region may be removed only once nothing uses it (BCC's rule for resources in use).
std::vector<Problem> CheckRemoveRegion(const std::string& region_id, const RegionUse& use);
// A region's store may be changed only while nothing writes to or reads from it: `in_flight`
// lists the images being imported into it and the jobs with copies to or from it.
std::vector<Problem> CheckMoveRegion(const std::string& region_id, const RegionUse& in_flight);

// What still uses an account (Engine::RemoveAccount): images it owns that are not deleted,
// images shared with it, and its jobs with copies in flight.
struct AccountUse {
  std::vector<std::string> images_owned;
  std::vector<std::string> images_shared_with;
  std::vector<std::string> jobs_in_flight;
};
std::vector<Problem> CheckRemoveAccount(const std::string& account_id, const AccountUse& use);

// Folds duplicates, keeping the first occurrence's order.
std::vector<std::string> Unique(const std::vector<std::string>& values);

}  // namespace imagerelay
