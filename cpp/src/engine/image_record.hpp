// The image record a region's store keeps beside each manifest (JSON): what the catalog knows
// of the image, so that a home can be rebuilt from its stores. The catalog is the truth; a
// record that could not be written is only a weaker rebuild aid.
#pragma once

#include <string>

#include "imagerelay/model.hpp"

namespace imagerelay {

std::string ImageRecordJson(const Image& image);

}  // namespace imagerelay
