// The image record a region's store keeps beside each manifest (JSON): what the catalog knows
// of the image, so that a home can be rebuilt from its stores. The catalog is the truth; a
// record that could not be written is only a weaker rebuild aid.
#pragma once

#include <string>

#include "imagerelay/manifest.hpp"
#include "imagerelay/model.hpp"
#include "imagerelay/store.hpp"

namespace imagerelay {

std::string ImageRecordJson(const Image& image);

// Writes an image's manifest and its record into `store`, the record on a thread of its own:
// each write waits for its fsyncs (file, then directory), and overlapping them takes one
// wait off every import and copy. Throws what either write throws, once both are done.
void PutManifestAndRecord(Store& store, const Image& image, const Manifest& manifest);

}  // namespace imagerelay
