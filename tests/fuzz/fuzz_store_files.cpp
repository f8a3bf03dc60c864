// Small JSON files a region's store or a home holds, read when a region opens: the store
// marker (.imagerelay-store, store/local_store.cpp CheckStoreMarker; in a bucket it is the
// server's answer) and a region's credentials file (engine/credentials_files.cpp, also the
// form older homes kept in the catalog). Neither may throw on any text: the marker answers
// "" or a reason it is not a store's, the credentials file its fields or none.
#include <cstddef>
#include <cstdint>
#include <string>

#include "engine/credentials_files.hpp"
#include "fuzz_support.hpp"
#include "store/local_store.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace imagerelay;
  using namespace imagerelay::fuzz;
  const std::string text(AsText(data, size));
  try {
    const std::string problem = CheckStoreMarker(text);
    Require(problem.empty() || problem.find(std::string(kStoreMarker)) != std::string::npos,
            "a marker refused without naming it: " + problem);
    if (text == StoreMarkerText()) Require(problem.empty(), "the store's own marker refused");
  } catch (const std::exception& e) {
    Fail(std::string("CheckStoreMarker threw: ") + e.what());
  }
  try {
    (void)CredentialsFiles::Parse(text);
  } catch (const std::exception& e) {
    Fail(std::string("CredentialsFiles::Parse threw: ") + e.what());
  }
  return 0;
}
