// Plain data types of the domain (DESIGN.md §1). No behaviour beyond string conversion.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace imagerelay {

enum class ImageType { kSystem, kCustom };
// kNotAvailable (BCC's NotAvailable): stored bytes were found damaged; `Image::error` says
// which and where; a scrub that repairs them makes the image Available again.
enum class ImageStatus {
  kCreating,
  kAvailable,
  kReplicating,
  kCreateFailed,
  kDeleted,
  kNotAvailable
};
enum class TaskState { kPending, kRunning, kCompleted, kFailed, kCancelled };
enum class JobState { kRunning, kCompleted, kFailed, kCancelled, kPartiallyCompleted };

std::string_view ToString(ImageType v);
std::string_view ToString(ImageStatus v);
std::string_view ToString(TaskState v);
std::string_view ToString(JobState v);
std::optional<ImageType> ParseImageType(std::string_view s);
std::optional<ImageStatus> ParseImageStatus(std::string_view s);
std::optional<TaskState> ParseTaskState(std::string_view s);

// Microseconds since the Unix epoch, UTC.
using TimeUs = int64_t;
TimeUs NowUs();

struct Limits {
  uint64_t max_copy_bytes = 200ULL << 30;
  uint64_t max_import_bytes = 500ULL << 30;
  int max_share_accounts = 50;
  int max_accepted_shares = 20;
  uint64_t chunk_size = 64ULL << 10;
  int max_tasks_per_region = 4;
  uint64_t buffer_memory = 256ULL << 20;
  uint64_t bandwidth = 0;  // bytes/s, 0 = unlimited
};

struct Region {
  std::string id;
  std::string name;
  std::string store_uri;  // as given by the user; secrets are never kept here
};

struct Account {
  std::string id;
  std::string name;
};

// An image file's container format and the size of the disk it holds (disk_format.hpp).
struct DiskFormat {
  std::string format = "raw";  // raw, qcow2, vmdk or vhd
  uint64_t virtual_size = 0;   // bytes of the disk a VM sees
};

struct Image {
  std::string id;
  std::string name;
  std::string region;
  ImageType type = ImageType::kCustom;
  std::string owner;  // empty for System images
  ImageStatus status = ImageStatus::kCreating;
  uint64_t size = 0;          // bytes of the image as stored (the file imported)
  uint64_t virtual_size = 0;  // bytes of the disk it holds (its header's); 0: not recorded
  std::string digest;         // "sha256:<hex>", empty until known
  std::string format = "raw";
  std::string os_type = "linux";
  std::string os_name;
  std::string os_version;
  std::string os_arch = "x86_64";
  std::string description;
  TimeUs created_us = 0;
  std::string source_image_id;  // copies only
  std::string source_region;    // copies only
  std::string error;            // CreateFailed and NotAvailable: why
};

// The size the size rules weigh: the disk's, or the file's for an image recorded before
// virtual sizes were.
inline uint64_t DiskSize(const Image& image) {
  return image.virtual_size != 0 ? image.virtual_size : image.size;
}

struct Task {
  std::string job_id;
  std::string region;
  std::string dest_image_id;
  TaskState state = TaskState::kPending;
  uint64_t bytes_total = 0;
  uint64_t bytes_done = 0;         // covered: written + zero + already present
  uint64_t bytes_transferred = 0;  // actually written (bytes of the image)
  uint64_t bytes_sent = 0;         // what the store wrote for them (compressed): the wire
  uint64_t chunks_total = 0;
  uint64_t chunks_skipped = 0;
  double rate = 0;  // bytes/s
  int attempts = 0;
  std::string error;
  std::string error_code;
  TimeUs started_us = 0;
  TimeUs finished_us = 0;
  std::string lease_owner;  // "<host>:<pid>:<nonce>" of the worker running it
  TimeUs lease_expires_us = 0;
};

struct Job {
  std::string id;
  std::string account;
  std::string source_image_id;
  std::string source_region;
  std::string name;  // name of the copies, empty = the source's name
  std::string client_token;
  TimeUs created_us = 0;
  std::vector<Task> tasks;
};

// Derived from the tasks (API.md "Job and Task").
JobState StateOfJob(const std::vector<Task>& tasks);

// Who runs a task, for people: its lease's "<host>:<pid>" while it runs, else "".
std::string WorkerOf(const Task& task);

struct Event {
  int64_t seq = 0;
  TimeUs time_us = 0;
  std::string type;
  std::string account;
  std::string image_id;
  std::string job_id;
  std::string region;
  std::string detail_json = "{}";
};

// Every event type the engine emits (src/events.hpp), in a fixed order.
const std::vector<std::string_view>& AllEventTypes();

}  // namespace imagerelay
