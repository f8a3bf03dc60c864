#include "store/pack.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "base/binary_codec.hpp"
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

// A pack is written with O_DIRECT straight from its buffer: page-aligned always, and from a
// huge page boundary once it is 2 MiB or more, so that the kernel can back it with huge pages
// and the write reaches the disk in requests of megabytes (docs/data-plane-v2.md, item 1).
TEST(PackTest, APackBufferStartsOnAPageAndABigOneOnAHugePage) {
  const auto at = [](const PackBytes& bytes) { return reinterpret_cast<uintptr_t>(bytes.data()); };
  PackBuilder small;
  const auto block = RandomByteVector(5000, 3);
  small.Add(HashOf(block), block);
  const PackBytes small_pack = small.Finish();
  EXPECT_EQ(at(small_pack) % 4096, 0u);

  PackBuilder big(1, (16u << 20) + 65536);
  for (uint32_t i = 0; i < 4; ++i) {
    const auto raw = RandomByteVector(65536, 10 + i);
    big.Add(HashOf(raw), raw);
  }
  const PackBytes big_pack = big.Finish();
  EXPECT_GE(big_pack.capacity(), 16u << 20);
  EXPECT_EQ(at(big_pack) % (2u << 20), 0u);
}

// Pack buffers are reused and grown without zeroing: a pack built in the buffer of a bigger
// one holds its own bytes and footer only, nothing of the pack before it.
TEST(PackTest, APackBuiltInAReusedBufferHoldsNothingOfThePackBefore) {
  PackBuilder first;
  const std::vector<std::byte> old_block(200000, std::byte{0xA5});
  first.AddEncoded(HashOf(old_block), {BlockCodec::kRaw, old_block},
                   static_cast<uint32_t>(old_block.size()));
  PackBytes buffer = first.Finish();
  const size_t capacity = buffer.capacity();

  PackBuilder second(1, std::move(buffer));
  const auto block = RandomByteVector(65536, 7);
  second.Add(HashOf(block), block);
  const auto entries = second.entries();
  const PackBytes pack = second.Finish();
  EXPECT_EQ(pack.capacity(), capacity);  // the same memory, reused
  ASSERT_EQ(entries.size(), 1u);
  EXPECT_EQ(ParsePackFooter(pack, pack.size(), "pack p"), entries);
  ASSERT_EQ(entries[0].offset, 0u);
  EXPECT_TRUE(std::equal(block.begin(), block.end(), pack.begin()));
  // Blocks, then the footer: not one byte more.
  EXPECT_EQ(pack.size(),
            block.size() + PackFooterSize(std::span(pack).last(kPackTrailerSize), "pack p"));
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

// IRPACK02: a pack holding a delta block names its bases in the footer; a reader needs them
// to decode it, and a footer that makes them impossible is refused as a whole.
TEST(PackTest, ADeltaPackNamesItsBasesAndDecodesOnlyWithThem) {
  std::vector<std::byte> base = RandomByteVector(65536, 3);
  std::vector<std::byte> block = base;
  for (size_t i = 0; i < 100; ++i) block[1000 + i] = std::byte{0x55};
  std::vector<std::byte> scratch;
  const std::optional<EncodedBlock> delta = EncodeDelta(block, base, 1, block.size() / 8, scratch);
  ASSERT_TRUE(delta);  // 100 bytes changed in random data: a delta of a few hundred bytes
  EXPECT_EQ(delta->codec, BlockCodec::kZstdDelta);
  PackBuilder builder;
  builder.Add(HashOf(base), base);
  builder.AddEncoded(HashOf(block), *delta, static_cast<uint32_t>(block.size()), HashOf(base));
  const PackBytes finished = builder.Finish();
  const std::vector<std::byte> pack(finished.begin(), finished.end());
  EXPECT_EQ(std::memcmp(pack.data() + pack.size() - 8, "IRPACK02", 8), 0);
  const uint64_t footer = PackFooterSize(std::span(pack).last(kPackTrailerSize), "pack p");
  const std::vector<PackEntry> entries =
      ParsePackFooter(std::span(pack).last(footer), pack.size(), "pack p");
  ASSERT_EQ(entries.size(), 2u);
  EXPECT_TRUE(entries[0].bases.empty());
  EXPECT_EQ(entries[1].bases, HashOf(base));
  const auto stored = std::span(pack).subspan(entries[1].offset, entries[1].stored_length);
  std::vector<std::byte> out;
  DecodeBlock(stored, entries[1], out, "pack p", base);
  EXPECT_EQ(out, block);
  // Without its bases, or with others, it is damaged, never wrong bytes.
  EXPECT_THROW(DecodeBlock(stored, entries[1], out, "pack p"), DamagedChunkError);
  EXPECT_THROW(DecodeBlock(stored, entries[1], out, "pack p", RandomByteVector(65536, 4)),
               DamagedChunkError);
  // The thread's context is left clean: a plain compressed block decodes after a failure.
  const Built plain = BuildPack();
  DecodeBlock(Stored(plain, plain.entries[0]), plain.entries[0], out, "pack p");
  EXPECT_EQ(out, plain.blocks[0]);

  // Footers whose bases do not fit their codec, or name the block itself, are refused (the
  // digest made right, as a forger would).
  auto forged = [&](auto&& edit) {
    std::vector<std::byte> copy = pack;
    std::byte* entries_start = copy.data() + copy.size() - footer;
    const size_t entries_size = footer - kPackTrailerSize;
    edit(entries_start);
    HashToBytes(Sha256Hex(entries_start, entries_size), copy.data() + copy.size() - 40);
    return copy;
  };
  constexpr size_t kFirst = 0, kSecond = kPackEntrySize + 1;  // entry 0 has no bases
  const std::vector<std::vector<std::byte>> bad = {
      forged([&](std::byte* e) { e[kFirst + 48] = std::byte{2}; }),   // a delta with no bases
      forged([&](std::byte* e) { e[kSecond + 48] = std::byte{1}; }),  // bases on a plain block
      forged([&](std::byte* e) { e[kSecond + 49] = std::byte{3}; }),  // more bases than allowed
      forged([&](std::byte* e) {                                      // the block its own base
        std::memcpy(e + kSecond + kPackEntrySize + 1, e + kSecond, 32);
      }),
  };
  for (const auto& b : bad) {
    EXPECT_THROW(ParsePackFooter(std::span(b).last(footer), b.size(), "pack p"), IntegrityError);
  }
}

}  // namespace
}  // namespace imagerelay
