#include "engine/image_record.hpp"

#include <future>
#include <nlohmann/json.hpp>

#include "imagerelay/model.hpp"

namespace imagerelay {

std::string ImageRecordJson(const Image& image) {
  nlohmann::json j{
      {"id", image.id},
      {"name", image.name},
      {"region", image.region},
      {"type", ToString(image.type)},
      {"owner", image.owner},
      {"size", image.size},
      {"virtual_size", image.virtual_size},
      {"digest", image.digest},
      {"format", image.format},
      {"os_type", image.os_type},
      {"os_name", image.os_name},
      {"os_version", image.os_version},
      {"os_arch", image.os_arch},
      {"description", image.description},
      {"created_us", image.created_us},
      {"source_image_id", image.source_image_id},
      {"source_region", image.source_region},
  };
  return j.dump(2);
}

void PutManifestAndRecord(Store& store, const Image& image, const Manifest& manifest) {
  const std::string record = ImageRecordJson(image);
  auto record_written =
      std::async(std::launch::async, [&] { store.PutImageRecord(image.id, record); });
  try {
    store.PutManifest(image.id, manifest);
  } catch (...) {
    record_written.wait();
    throw;
  }
  record_written.get();
}

}  // namespace imagerelay
