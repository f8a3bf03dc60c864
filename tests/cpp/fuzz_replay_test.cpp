// The fuzz targets of tests/fuzz, built with the normal compiler: every kept corpus input
// (tests/fuzz/corpus/<target>/) and every input that once broke a parser
// (tests/fuzz/regressions/<target>/) goes through its target again. `make fuzz` searches
// for new ones with libFuzzer; this keeps the found ones fixed in every `make test`.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "../fuzz/fuzz_support.hpp"
#include "test_bytes.hpp"

#define IMAGERELAY_FUZZ_TARGET(name) \
  extern "C" int ImagerelayFuzz_##name(const uint8_t* data, size_t size);
#include "fuzz_targets.inc"
#undef IMAGERELAY_FUZZ_TARGET

namespace imagerelay {
namespace {

namespace fs = std::filesystem;

struct Target {
  std::string name;
  int (*run)(const uint8_t*, size_t);
};

const std::vector<Target>& Targets() {
#define IMAGERELAY_FUZZ_TARGET(name) {#name, &ImagerelayFuzz_##name},
  // clang-format off (an include sorted into this list would be expanded in it)
  static const std::vector<Target> targets = {
#include "fuzz_targets.inc"
  };
  // clang-format on
#undef IMAGERELAY_FUZZ_TARGET
  return targets;
}

std::vector<fs::path> InputsOf(const fs::path& dir) {
  std::vector<fs::path> files;
  if (!fs::is_directory(dir)) return files;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.is_regular_file()) files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  return files;
}

void Replay(const Target& target, const fs::path& dir, size_t& count) {
  for (const fs::path& file : InputsOf(dir)) {
    const std::string bytes = testing_util::ReadFileBytes(file);
    try {
      target.run(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
    } catch (const fuzz::RuleBroken& broken) {
      ADD_FAILURE() << file << ": " << broken.what;
    }
    ++count;
  }
}

TEST(FuzzReplayTest, EveryTargetHasAKeptCorpus) {
  ASSERT_FALSE(Targets().empty());
  for (const Target& target : Targets()) {
    EXPECT_FALSE(InputsOf(fs::path(IMAGERELAY_FUZZ_DIR) / "corpus" / target.name).empty())
        << "tests/fuzz/corpus/" << target.name << " is empty";
  }
}

TEST(FuzzReplayTest, KeptCorporaAndRegressionsPass) {
  for (const Target& target : Targets()) {
    size_t count = 0;
    Replay(target, fs::path(IMAGERELAY_FUZZ_DIR) / "corpus" / target.name, count);
    Replay(target, fs::path(IMAGERELAY_FUZZ_DIR) / "regressions" / target.name, count);
    EXPECT_GT(count, 0U) << target.name;
  }
}

}  // namespace
}  // namespace imagerelay
