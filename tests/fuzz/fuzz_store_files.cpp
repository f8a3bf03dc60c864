// Small JSON files a region's store or a home holds, read when a region opens: the store
// marker (.imagerelay-store, store/store_marker.cpp; in a bucket it is the server's answer)
// and a region's credentials file (engine/credentials_files.cpp, also the form older homes
// kept in the catalog). Neither may throw on any text: the marker answers "" or a reason it
// is not a store's, and is judged for a home (kept, rewritten with a marker that is valid
// and names that home, or refused with a reason); the credentials file its fields or none.
#include <cstddef>
#include <cstdint>
#include <string>

#include "engine/credentials_files.hpp"
#include "fuzz_support.hpp"
#include "store/store_marker.hpp"

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
    const StoreOwner home{.id = "0123456789abcdef0123456789abcdef", .path = "/home/relay"};
    for (const StoreOwner& me : {home, StoreOwner{}}) {
      for (bool ours_by_place : {false, true}) {
        const StoreClaim reader{
            .me = me, .place = "file:/s", .ours_by_place = ours_by_place, .unowned_is_theirs = {}};
        const MarkerVerdict verdict = JudgeMarker(text, reader);
        if (verdict.action == MarkerVerdict::Action::kRefuse) {
          Require(!verdict.problem.empty(), "a marker refused without a reason");
        }
        if (verdict.action == MarkerVerdict::Action::kRewrite) {
          Require(CheckStoreMarker(verdict.text).empty(), "rewritten into an invalid marker");
          Require(JudgeMarker(verdict.text, reader).action == MarkerVerdict::Action::kKeep,
                  "a rewritten marker is not kept as it is");
        }
        const std::string released = ReleasedMarker(text, reader);
        Require(released.empty() || released == StoreMarkerText(), "released into another text");
      }
    }
  } catch (const std::exception& e) {
    Fail(std::string("JudgeMarker threw: ") + e.what());
  }
  try {
    (void)CredentialsFiles::Parse(text);
  } catch (const std::exception& e) {
    Fail(std::string("CredentialsFiles::Parse threw: ") + e.what());
  }
  return 0;
}
