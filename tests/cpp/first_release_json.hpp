// The compact JSON manifest the first release wrote (manifests/<id>.json in old homes), for
// tests that build such a home or read that form.
#pragma once

#include <string>
#include <vector>

#include "imagerelay/manifest.hpp"

namespace imagerelay::testing_util {

inline std::string FirstReleaseJson(const Manifest& m) {
  std::string out = R"({"version":1,"size":)" + std::to_string(m.size) + R"(,"chunk_size":)" +
                    std::to_string(m.chunk_size) + R"(,"digest":)" +
                    (m.digest.empty() ? std::string("null") : "\"" + m.digest + "\"") +
                    R"(,"chunks":[)";
  const std::vector<std::string> hashes = m.Hashes(0, m.count());
  for (size_t i = 0; i < hashes.size(); ++i) {
    if (i != 0) out += ',';
    out += hashes[i].empty() ? std::string("null") : "\"" + hashes[i] + "\"";
  }
  return out + "]}";
}

}  // namespace imagerelay::testing_util
