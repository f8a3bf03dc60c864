// The events of the engine (docs/events.md): every type in one place, and one builder.
// An event names who acted (account), the image and its region, the job if any, and a JSON
// detail object.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <string_view>
#include <vector>

#include "imagerelay/catalog.hpp"
#include "imagerelay/model.hpp"

namespace imagerelay {

namespace event_type {
inline constexpr std::string_view kImageCreated = "image.created";
inline constexpr std::string_view kImageAvailable = "image.available";
inline constexpr std::string_view kImageCreateFailed = "image.create_failed";
inline constexpr std::string_view kImageDeleted = "image.deleted";
inline constexpr std::string_view kImageRenamed = "image.renamed";
inline constexpr std::string_view kImageShared = "image.shared";
inline constexpr std::string_view kImageUnshared = "image.unshared";
inline constexpr std::string_view kImageDigest = "image.digest";
inline constexpr std::string_view kImageDigestFailed = "image.digest_failed";
inline constexpr std::string_view kImageDamaged = "image.damaged";
inline constexpr std::string_view kImageRepaired = "image.repaired";
inline constexpr std::string_view kJobCreated = "job.created";
inline constexpr std::string_view kJobFinished = "job.finished";
inline constexpr std::string_view kTaskStarted = "task.started";
inline constexpr std::string_view kTaskProgress = "task.progress";  // delivered, not stored
inline constexpr std::string_view kTaskCompleted = "task.completed";
inline constexpr std::string_view kTaskFailed = "task.failed";
inline constexpr std::string_view kTaskCancelled = "task.cancelled";
inline constexpr std::string_view kRegionRemoved = "region.removed";
inline constexpr std::string_view kRegionMoved = "region.moved";
inline constexpr std::string_view kAccountRemoved = "account.removed";
}  // namespace event_type

// The one builder: `image` (may be null) gives the image id and region.
Event MakeEvent(std::string_view type, const std::string& account, const Image* image,
                const std::string& job_id = "",
                const nlohmann::json& detail = nlohmann::json::object());
// An event of a region itself (not of an image in it): its id as the event's region.
Event MakeRegionEvent(std::string_view type, const std::string& account, const Region& region,
                      const nlohmann::json& detail);
// An event of a job as a whole: its account, source image and region.
Event MakeJobEvent(std::string_view type, const Job& job, const nlohmann::json& detail);
// An event of one task of a job: its copy, its region and its progress as the detail.
Event MakeTaskEvent(std::string_view type, const Job& job, const Task& task);

// Events appended inside a transaction, published once it committed.
class PendingEvents {
 public:
  void Append(CatalogTx& tx, Event event);
  std::vector<Event> Take() { return std::move(events_); }

 private:
  std::vector<Event> events_;
};

}  // namespace imagerelay
