#include "store/pack.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "imagerelay/error.hpp"
#include "imagerelay/sha256.hpp"
#include "test_bytes.hpp"

namespace imagerelay {
namespace {

using testing_util::RandomByteVector;

std::vector<std::byte> TextBytes(size_t n) {  // compresses well, as file contents do
  std::string text;
  while (text.size() < n) text += "def handler(event, context): return event['id']\n";
  text.resize(n);
  const auto* p = reinterpret_cast<const std::byte*>(text.data());
  return {p, p + n};
}

using testing_util::HashOf;

struct Built {
  std::vector<std::vector<std::byte>> blocks;
  std::vector<std::byte> pack;
  std::vector<PackEntry> entries;
};

Built BuildPack() {
  Built built;
  built.blocks = {TextBytes(65536), RandomByteVector(65536, 1), TextBytes(1000),
                  RandomByteVector(7, 2)};
  PackBuilder builder;
  for (const auto& block : built.blocks) builder.Add(HashOf(block), block);
  built.entries = builder.entries();
  const PackBytes finished = builder.Finish();
  built.pack.assign(finished.begin(), finished.end());
  EXPECT_TRUE(builder.empty());
  return built;
}

std::span<const std::byte> Stored(const Built& b, const PackEntry& e) {
  return std::span(b.pack).subspan(e.offset, e.stored_length);
}

TEST(PackTest, RoundTripsCompressingOnlyWhatShrinks) {
  Built b = BuildPack();
  auto entries = ParsePackFooter(b.pack, b.pack.size(), "pack p");
  ASSERT_EQ(entries, b.entries);
  EXPECT_EQ(entries[0].codec, BlockCodec::kZstd);  // text shrinks
  EXPECT_LT(entries[0].stored_length, entries[0].raw_length / 4);
  EXPECT_EQ(entries[1].codec, BlockCodec::kRaw);  // random data is stored as it is
  EXPECT_EQ(entries[1].stored_length, 65536u);
  std::vector<std::byte> out;
  for (size_t i = 0; i < entries.size(); ++i) {
    DecodeBlock(Stored(b, entries[i]), entries[i], out, "pack p");
    EXPECT_EQ(out, b.blocks[i]) << i;
  }
  // The footer alone is enough (a ranged read of the pack's end).
  const uint64_t footer = PackFooterSize(std::span(b.pack).last(kPackTrailerSize), "pack p");
  EXPECT_EQ(ParsePackFooter(std::span(b.pack).last(footer), b.pack.size(), "pack p"), entries);
}

TEST(PackTest, ATornOrAlteredPackIsRefusedWhole) {
  Built b = BuildPack();
  // Torn: any prefix of the pack.
  for (size_t keep : {size_t{0}, size_t{10}, b.pack.size() / 2, b.pack.size() - 1}) {
    std::vector<std::byte> torn(b.pack.begin(), b.pack.begin() + static_cast<ptrdiff_t>(keep));
    EXPECT_THROW(ParsePackFooter(torn, torn.size(), "pack p"), IntegrityError) << keep;
  }
  // A changed byte in the footer's entries.
  std::vector<std::byte> altered = b.pack;
  altered[altered.size() - kPackTrailerSize - 3] ^= std::byte{1};
  EXPECT_THROW(ParsePackFooter(altered, altered.size(), "pack p"), IntegrityError);
  // Bytes appended or cut between the blocks and the footer shift nothing silently.
  std::vector<std::byte> longer = b.pack;
  longer.insert(longer.begin(), std::byte{0});
  EXPECT_THROW(ParsePackFooter(longer, longer.size(), "pack p"), IntegrityError);
}

TEST(PackTest, ADamagedBlockIsADamagedChunkNamingIt) {
  Built b = BuildPack();
  std::vector<std::byte> out;
  for (const PackEntry& e : b.entries) {
    std::vector<std::byte> bad(Stored(b, e).begin(), Stored(b, e).end());
    bad[bad.size() / 2] ^= std::byte{0x40};
    try {
      DecodeBlock(bad, e, out, "pack p");
      FAIL() << "no exception for " << e.hash;
    } catch (const DamagedChunkError& error) {
      EXPECT_EQ(error.hash(), e.hash);
      EXPECT_NE(error.message().find("pack p"), std::string::npos);
    }
    // Read short.
    EXPECT_THROW(DecodeBlock(Stored(b, e).first(e.stored_length - 1), e, out, "pack p"),
                 DamagedChunkError);
  }
}

// A footer forged to claim a huge block (its digest recomputed, as an attacker with write
// access to the region would) is refused before any read allocates what it claims.
TEST(PackTest, AFooterClaimingAnImpossibleBlockIsRefused) {
  for (const bool compressed : {true, false}) {
    Built built = BuildPack();
    std::vector<std::byte>& pack = built.pack;
    const size_t count = built.entries.size();
    std::byte* entries = pack.data() + pack.size() - kPackTrailerSize - count * kPackEntrySize;
    std::byte* raw_length = entries + 44;  // of the first entry
    const uint32_t huge = 0xfffffff0u;
    std::memcpy(raw_length, &huge, 4);  // little endian on this machine
    entries[48] = std::byte{compressed ? uint8_t{1} : uint8_t{0}};
    const std::string digest = Sha256Hex(entries, count * kPackEntrySize);
    std::byte* digest_at = entries + count * kPackEntrySize + 4;
    for (size_t b = 0; b < 32; ++b) {
      digest_at[b] = static_cast<std::byte>(std::stoi(digest.substr(2 * b, 2), nullptr, 16));
    }
    EXPECT_THROW(ParsePackFooter(pack, pack.size(), "forged"), IntegrityError) << compressed;
  }
}

}  // namespace
}  // namespace imagerelay
