// Plain data types: read-only views the Python layer wraps in its own classes.
#include <pybind11/stl.h>

#include <filesystem>
#include <optional>
#include <string>

#include "bindings.hpp"
#include "imagerelay/engine.hpp"
#include "imagerelay/model.hpp"
#include "imagerelay/store.hpp"

namespace py = pybind11;

namespace imagerelay::bindings {
namespace {

py::object NoneIfEmpty(const std::string& s) {
  return s.empty() ? py::none() : py::object(py::str(s));
}

// The names of enum values, as the core spells them (ToString).
template <typename Enum>
std::vector<std::string> Names(std::initializer_list<Enum> values) {
  std::vector<std::string> out;
  for (Enum v : values) out.emplace_back(ToString(v));
  return out;
}

}  // namespace

void BindModel(py::module_& m) {
  m.def(
      "local_store_directory",
      [](const std::string& uri) -> std::optional<std::string> {
        std::optional<std::filesystem::path> directory = LocalStoreDirectory(uri);
        if (!directory) return std::nullopt;
        return directory->string();
      },
      py::arg("uri"),
      "The directory of a local store's URI (a path or file:// URI), absolute; None for s3:// "
      "or a URI the core refuses.");
  m.def(
      "event_types",
      [] {
        std::vector<std::string> out;
        for (std::string_view type : AllEventTypes()) out.emplace_back(type);
        return out;
      },
      "Every event type the engine emits.");
  m.def(
      "image_statuses",
      [] {
        return Names({ImageStatus::kCreating, ImageStatus::kAvailable, ImageStatus::kReplicating,
                      ImageStatus::kCreateFailed, ImageStatus::kDeleted,
                      ImageStatus::kNotAvailable});
      },
      "Every image status, in the core's order.");
  m.def(
      "task_states",
      [] {
        return Names({TaskState::kPending, TaskState::kRunning, TaskState::kCompleted,
                      TaskState::kFailed, TaskState::kCancelled});
      },
      "Every task state, in the core's order.");
  m.def(
      "job_states",
      [] {
        return Names({JobState::kRunning, JobState::kCompleted, JobState::kFailed,
                      JobState::kCancelled, JobState::kPartiallyCompleted});
      },
      "Every job state, in the core's order.");
  py::class_<Limits>(m, "Limits", "Limits of a home (API.md); every one is a setting.")
      .def(py::init<>())
      .def_readwrite("max_copy_bytes", &Limits::max_copy_bytes)
      .def_readwrite("max_import_bytes", &Limits::max_import_bytes)
      .def_readwrite("max_share_accounts", &Limits::max_share_accounts)
      .def_readwrite("max_accepted_shares", &Limits::max_accepted_shares)
      .def_readwrite("chunk_size", &Limits::chunk_size)
      .def_readwrite("max_tasks_per_region", &Limits::max_tasks_per_region)
      .def_readwrite("buffer_memory", &Limits::buffer_memory)
      .def_readwrite("bandwidth", &Limits::bandwidth);

  py::class_<Region>(m, "Region")
      .def_readonly("id", &Region::id)
      .def_readonly("name", &Region::name)
      .def_readonly("store", &Region::store_uri);

  py::class_<Account>(m, "Account")
      .def_readonly("id", &Account::id)
      .def_readonly("name", &Account::name);

  py::class_<ImageView>(m, "ImageInfo")
      .def_property_readonly("id", [](const ImageView& v) { return v.image.id; })
      .def_property_readonly("name", [](const ImageView& v) { return v.image.name; })
      .def_property_readonly("region", [](const ImageView& v) { return v.image.region; })
      .def_readonly("type", &ImageView::type)
      .def_property_readonly("owner", [](const ImageView& v) { return NoneIfEmpty(v.image.owner); })
      .def_property_readonly(
          "status", [](const ImageView& v) { return std::string(ToString(v.image.status)); })
      .def_readonly("progress", &ImageView::progress)
      .def_property_readonly("size", [](const ImageView& v) { return v.image.size; })
      .def_property_readonly("virtual_size", [](const ImageView& v) { return DiskSize(v.image); })
      .def_property_readonly("digest",
                             [](const ImageView& v) { return NoneIfEmpty(v.image.digest); })
      .def_property_readonly("format", [](const ImageView& v) { return v.image.format; })
      .def_property_readonly("os_type", [](const ImageView& v) { return v.image.os_type; })
      .def_property_readonly("os_name", [](const ImageView& v) { return v.image.os_name; })
      .def_property_readonly("os_version", [](const ImageView& v) { return v.image.os_version; })
      .def_property_readonly("os_arch", [](const ImageView& v) { return v.image.os_arch; })
      .def_property_readonly("description", [](const ImageView& v) { return v.image.description; })
      .def_property_readonly("created_us", [](const ImageView& v) { return v.image.created_us; })
      .def_property_readonly(
          "source_image_id",
          [](const ImageView& v) { return NoneIfEmpty(v.image.source_image_id); })
      .def_property_readonly("source_region",
                             [](const ImageView& v) { return NoneIfEmpty(v.image.source_region); })
      .def_property_readonly("error",
                             [](const ImageView& v) { return NoneIfEmpty(v.image.error); });

  py::class_<Task>(m, "TaskInfo")
      .def_readonly("job_id", &Task::job_id)
      .def_readonly("region", &Task::region)
      .def_readonly("dest_image_id", &Task::dest_image_id)
      .def_property_readonly("state", [](const Task& t) { return std::string(ToString(t.state)); })
      .def_readonly("bytes_total", &Task::bytes_total)
      .def_readonly("bytes_done", &Task::bytes_done)
      .def_readonly("bytes_transferred", &Task::bytes_transferred)
      .def_readonly("bytes_sent", &Task::bytes_sent)
      .def_readonly("chunks_total", &Task::chunks_total)
      .def_readonly("chunks_skipped", &Task::chunks_skipped)
      .def_readonly("rate", &Task::rate)
      .def_readonly("attempts", &Task::attempts)
      .def_property_readonly("error", [](const Task& t) { return NoneIfEmpty(t.error); })
      .def_property_readonly("error_code", [](const Task& t) { return NoneIfEmpty(t.error_code); })
      .def_readonly("started_us", &Task::started_us)
      .def_readonly("finished_us", &Task::finished_us)
      .def_property_readonly("worker", [](const Task& t) { return NoneIfEmpty(WorkerOf(t)); });

  py::class_<Job>(m, "JobInfo")
      .def_readonly("id", &Job::id)
      .def_readonly("account", &Job::account)
      .def_readonly("source_image_id", &Job::source_image_id)
      .def_readonly("source_region", &Job::source_region)
      .def_property_readonly("name", [](const Job& j) { return NoneIfEmpty(j.name); })
      .def_property_readonly("client_token",
                             [](const Job& j) { return NoneIfEmpty(j.client_token); })
      .def_readonly("created_us", &Job::created_us)
      .def_readonly("tasks", &Job::tasks)
      .def_property_readonly(
          "state", [](const Job& j) { return std::string(ToString(StateOfJob(j.tasks))); });

  py::class_<Event>(m, "EventInfo")
      .def_readonly("seq", &Event::seq)
      .def_readonly("time_us", &Event::time_us)
      .def_readonly("type", &Event::type)
      .def_readonly("account", &Event::account)
      .def_readonly("image_id", &Event::image_id)
      .def_readonly("job_id", &Event::job_id)
      .def_readonly("region", &Event::region)
      .def_readonly("detail_json", &Event::detail_json);

  py::class_<ScrubReport>(m, "ScrubReportInfo")
      .def_readonly("region", &ScrubReport::region)
      .def_readonly("chunks_checked", &ScrubReport::chunks_checked)
      .def_readonly("bytes_checked", &ScrubReport::bytes_checked)
      .def_readonly("quarantined", &ScrubReport::quarantined)
      .def_readonly("chunks_repaired", &ScrubReport::chunks_repaired)
      .def_readonly("images_repaired", &ScrubReport::images_repaired)
      .def_readonly("images_damaged", &ScrubReport::images_damaged)
      .def_readonly("unavailable", &ScrubReport::unavailable);

  py::class_<PolicyRequest>(m, "PolicyRequestInfo")
      .def_readonly("action", &PolicyRequest::action)
      .def_readonly("account", &PolicyRequest::account)
      .def_readonly("image", &PolicyRequest::image)
      .def_readonly("to", &PolicyRequest::to)
      .def_readonly("accounts", &PolicyRequest::accounts)
      .def_readonly("name", &PolicyRequest::name);
}

}  // namespace imagerelay::bindings
