#include "engine/events.hpp"

#include "imagerelay/state.hpp"

namespace imagerelay {
namespace {

Event Build(std::string_view type, const std::string& account, std::string image_id,
            std::string region, std::string job_id, const nlohmann::json& detail) {
  Event e;
  e.type = std::string(type);
  e.account = account;
  e.image_id = std::move(image_id);
  e.region = std::move(region);
  e.job_id = std::move(job_id);
  e.detail_json = detail.dump();
  e.time_us = NowUs();
  return e;
}

}  // namespace

const std::vector<std::string_view>& AllEventTypes() {
  using namespace event_type;
  static const std::vector<std::string_view> all = {
      kImageCreated,  kImageAvailable, kImageCreateFailed, kImageDeleted,      kImageRenamed,
      kImageShared,   kImageUnshared,  kImageDigest,       kImageDigestFailed, kImageDamaged,
      kImageRepaired, kJobCreated,     kJobFinished,       kTaskStarted,       kTaskProgress,
      kTaskCompleted, kTaskFailed,     kTaskCancelled,     kRegionRemoved,     kRegionMoved,
      kAccountRemoved};
  return all;
}

Event MakeEvent(std::string_view type, const std::string& account, const Image* image,
                const std::string& job_id, const nlohmann::json& detail) {
  return Build(type, account, image ? image->id : "", image ? image->region : "", job_id, detail);
}

Event MakeRegionEvent(std::string_view type, const std::string& account, const Region& region,
                      const nlohmann::json& detail) {
  return Build(type, account, "", region.id, "", detail);
}

Event MakeJobEvent(std::string_view type, const Job& job, const nlohmann::json& detail) {
  return Build(type, job.account, job.source_image_id, job.source_region, job.id, detail);
}

Event MakeTaskEvent(std::string_view type, const Job& job, const Task& task) {
  nlohmann::json detail{{"state", ToString(task.state)},
                        {"bytes_total", task.bytes_total},
                        {"bytes_done", task.bytes_done},
                        {"bytes_transferred", task.bytes_transferred},
                        {"bytes_sent", task.bytes_sent},
                        {"chunks_skipped", task.chunks_skipped},
                        {"rate", task.rate}};
  if (const std::string worker = WorkerOf(task); !worker.empty()) detail["worker"] = worker;
  if (!task.error_code.empty()) {
    detail["error_code"] = task.error_code;
    detail["error"] = task.error;
  }
  return Build(type, job.account, task.dest_image_id, task.region, job.id, detail);
}

void PendingEvents::Append(CatalogTx& tx, Event event) {
  event.time_us = event.time_us ? event.time_us : NowUs();
  if (event.type != event_type::kTaskProgress) event.seq = tx.AppendEvent(event);
  events_.push_back(std::move(event));
}

}  // namespace imagerelay
