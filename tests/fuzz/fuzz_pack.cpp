// Pack files (store/pack.hpp): the footer a region's index is rebuilt from, and each block
// decoded from its stored bytes (raw, zstd, or a zstd delta: decoded against the pack's
// first bytes as its bases, which a fuzzed frame may or may not reference). Every input is read as
// a whole pack, as the tail of a larger one, and once more with its footer's digest made right, so
// that the fuzzer gets past the digest to the entries. Entries that parse must tile the pack, and
// each block either decodes to bytes of its hash or is reported damaged (DamagedChunkError).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "base/binary_codec.hpp"
#include "fuzz_support.hpp"
#include "imagerelay/sha256.hpp"
#include "store/pack.hpp"

namespace imagerelay::fuzz {
namespace {

// A larger block would only cost the fuzzer time: decoding allocates its raw length.
constexpr uint32_t kMaxDecodedBytes = 1U << 20;

void ReadPack(std::span<const std::byte> pack) {
  const std::vector<PackEntry> entries = ParsePackFooter(pack, pack.size(), "fuzz");
  uint64_t at = 0;
  for (const PackEntry& e : entries) {
    Require(e.offset == at && e.stored_length <= pack.size() - at, "entries do not tile the pack");
    Require(e.raw_length <= kMaxBlockBytes, "an entry larger than a block");
    at += e.stored_length;
    if (e.raw_length > kMaxDecodedBytes) continue;
    std::vector<std::byte> out;
    try {
      const std::span<const std::byte> bases =
          e.bases.empty() ? std::span<const std::byte>()
                          : pack.first(std::min<size_t>(pack.size(), 1 << 16));
      DecodeBlock(pack.subspan(e.offset, e.stored_length), e, out, "fuzz", bases);
      Require(out.size() == e.raw_length && Sha256Hex(out.data(), out.size()) == e.hash,
              "a block decoded to bytes that are not its own");
    } catch (const DamagedChunkError& damaged) {
      Require(damaged.hash() == e.hash, "a damaged block reported under another hash");
    }
  }
  Require(at + PackFooterSize(pack, "fuzz") == pack.size(), "blocks and footer do not fill it");
}

}  // namespace
}  // namespace imagerelay::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace imagerelay;
  using namespace imagerelay::fuzz;
  std::vector<std::byte> pack(reinterpret_cast<const std::byte*>(data),
                              reinterpret_cast<const std::byte*>(data) + size);
  OnlyStableErrors([&] { ReadPack(pack); });
  // The last bytes of a pack larger than them: what a ranged read of the footer gets.
  OnlyStableErrors([&] {
    const uint64_t footer = PackFooterSize(pack, "fuzz");
    (void)ParsePackFooter(pack, uint64_t{1} << 40, "fuzz");
    Require(footer >= kPackTrailerSize, "a footer shorter than its trailer");
  });
  // The footer's digest made right: the entries behind it get parsed.
  if (size >= kPackTrailerSize) {
    // IRPACK01 gives the entries' count, IRPACK02 their length in bytes.
    const uint64_t field = GetLe(pack.data() + size - kPackTrailerSize, 4);
    const bool deltas = std::memcmp(pack.data() + size - 8, "IRPACK02", 8) == 0;
    const uint64_t entries = deltas ? field : field * kPackEntrySize;
    if (entries <= size - kPackTrailerSize) {
      std::byte* footer = pack.data() + size - kPackTrailerSize - entries;
      HashToBytes(Sha256Hex(footer, entries), pack.data() + size - kPackTrailerSize + 4);
      OnlyStableErrors([&] { ReadPack(pack); });
    }
  }
  return 0;
}
