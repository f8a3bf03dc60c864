#include "base/sha256_pair.hpp"

#include <gtest/gtest.h>

#include <random>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "imagerelay/sha256.hpp"

namespace imagerelay {
namespace {

std::vector<std::byte> RandomBytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::byte> bytes(n);
  for (auto& b : bytes) b = static_cast<std::byte>(rng());
  return bytes;
}

// Two inputs of every length around the padding's edges (55/56/64 bytes and their
// multiples), equal and unequal, at odd addresses: each pair's names are the ones SHA-256
// gives each input alone, interleaved (where the CPU has SHA-NI) and portable alike.
TEST(Sha256PairTest, NamesEachInputAsSha256DoesAtEveryLength) {
  const std::vector<std::byte> bytes = RandomBytes(70000, 7);
  for (size_t a = 0; a <= 260; ++a) {
    for (size_t b : {a, a / 3, a + 1, a + 64, a + 129, size_t{0}}) {
      const std::span<const std::byte> first(bytes.data() + 1, a);
      const std::span<const std::byte> second(bytes.data() + 333, b);
      std::string hex_a;
      std::string hex_b;
      Sha256HexPair(first, second, hex_a, hex_b);
      ASSERT_EQ(hex_a, Sha256Hex(first.data(), first.size())) << a << " and " << b;
      ASSERT_EQ(hex_b, Sha256Hex(second.data(), second.size())) << a << " and " << b;
      Sha256HexPairPortable(first, second, hex_a, hex_b);
      ASSERT_EQ(hex_a, Sha256Hex(first.data(), first.size()));
      ASSERT_EQ(hex_b, Sha256Hex(second.data(), second.size()));
    }
  }
}

// Blocks as a store names them: 64 KiB, a short last block, one input twice, one bit apart.
TEST(Sha256PairTest, NamesWholeBlocksAndTellsApartBlocksOneBitApart) {
  std::vector<std::byte> block = RandomBytes(65536, 11);
  const std::vector<std::byte> other = RandomBytes(65536, 12);
  std::string hex_a;
  std::string hex_b;
  Sha256HexPair(block, other, hex_a, hex_b);
  EXPECT_EQ(hex_a, Sha256Hex(block.data(), block.size()));
  EXPECT_EQ(hex_b, Sha256Hex(other.data(), other.size()));
  Sha256HexPair(block, block, hex_a, hex_b);
  EXPECT_EQ(hex_a, hex_b);
  const std::string before = hex_a;
  block[40000] ^= std::byte{1};
  Sha256HexPair(block, std::span(other).first(4097), hex_a, hex_b);
  EXPECT_NE(hex_a, before);
  EXPECT_EQ(hex_a, Sha256Hex(block.data(), block.size()));
  EXPECT_EQ(hex_b, Sha256Hex(other.data(), 4097));
  // The standard vector, in either lane.
  const std::string abc = "abc";
  const std::span<const std::byte> abc_bytes(reinterpret_cast<const std::byte*>(abc.data()), 3);
  Sha256HexPair(std::span(other).first(100), abc_bytes, hex_a, hex_b);
  EXPECT_EQ(hex_b, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  Sha256HexPair(abc_bytes, {}, hex_a, hex_b);
  EXPECT_EQ(hex_a, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(hex_b, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

// An image's digest fed as an import feeds it: chunks named on the way (64 KiB, a short
// one, one that leaves the stream between blocks, then whole ones again), plain updates of
// every length around the block edges, runs of zeros; the digest is SHA-256's of the whole
// input, each name SHA-256's of its chunk, and the stream starts over after FinishHex.
TEST(Sha256PairTest, APairedStreamDigestsTheWholeInputAndNamesEachChunkOnTheWay) {
  if (!Sha256PairInterleaves()) {
    EXPECT_THROW(Sha256PairedStream{}, std::logic_error);
    return;
  }
  const std::vector<std::byte> bytes = RandomBytes(400000, 21);
  const std::span<const std::byte> all(bytes);
  for (int round = 0; round < 2; ++round) {  // the second after FinishHex reset the stream
    Sha256PairedStream stream;
    Sha256 whole;
    size_t at = 0;
    std::string name;
    for (size_t length : {size_t{65536}, size_t{65536}, size_t{1000}, size_t{65536}, size_t{63},
                          size_t{1}, size_t{65536}, size_t{64}, size_t{0}}) {
      const auto chunk = all.subspan(at, length);
      stream.UpdateAndName(chunk, name);
      whole.Update(chunk.data(), chunk.size());
      ASSERT_EQ(name, Sha256Hex(chunk.data(), chunk.size())) << "at " << at;
      at += length;
    }
    for (size_t length = 0; length <= 130; ++length) {
      const auto piece = all.subspan(at, length);
      stream.Update(piece);
      whole.Update(piece.data(), piece.size());
      at += length;
    }
    stream.UpdateZeros(200000);
    whole.UpdateZeros(200000);
    ASSERT_EQ(stream.FinishHex(), whole.FinishHex()) << "round " << round;
  }
  Sha256PairedStream empty;
  EXPECT_EQ(empty.FinishHex(), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  // Every input length around the padding's edges, fed whole.
  for (size_t length = 0; length <= 200; ++length) {
    Sha256PairedStream stream;
    stream.Update(all.first(length));
    ASSERT_EQ(stream.FinishHex(), Sha256Hex(bytes.data(), length)) << length;
  }
}

}  // namespace
}  // namespace imagerelay
