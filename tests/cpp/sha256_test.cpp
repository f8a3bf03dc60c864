#include "imagerelay/sha256.hpp"

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

namespace imagerelay {
namespace {

TEST(Sha256Test, KnownVectors) {
  EXPECT_EQ(Sha256Hex("", 0), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Sha256Hex("abc", 3),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  const std::string two_blocks = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
  EXPECT_EQ(Sha256Hex(two_blocks.data(), two_blocks.size()),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  Sha256 million_a;
  const std::string a(1000, 'a');
  for (int i = 0; i < 1000; ++i) million_a.Update(a.data(), a.size());
  EXPECT_EQ(million_a.FinishHex(),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Sha256Test, IncrementalEqualsOneShotAndResetsAfterFinish) {
  std::string text = "The quick brown fox jumps over the lazy dog";
  Sha256 sha;
  sha.Update(text.data(), 10);
  sha.Update(text.data() + 10, text.size() - 10);
  EXPECT_EQ(sha.FinishHex(), Sha256Hex(text.data(), text.size()));
  sha.Update("abc", 3);  // reset: a fresh hash
  EXPECT_EQ(sha.FinishHex(), Sha256Hex("abc", 3));
}

// Update feeds its input a step (1 KiB) at a time with the next step prefetched: lengths
// around the steps, whole and split at odd places, against the standard million-'a' vector
// and against byte-sized updates (which never take the stepped path).
TEST(Sha256Test, LongUpdatesHashAlikeAtEveryLengthAroundTheirSteps) {
  const std::string million(1000000, 'a');
  EXPECT_EQ(Sha256Hex(million.data(), million.size()),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  std::mt19937 random(7);
  std::vector<unsigned char> data(3 * 1024 + 7);
  for (auto& byte : data) byte = static_cast<unsigned char>(random());
  for (size_t len : {1023UL, 1024UL, 1025UL, 2047UL, 2048UL, 2049UL, 3 * 1024UL + 7}) {
    Sha256 bytewise;
    for (size_t i = 0; i < len; ++i) bytewise.Update(&data[i], 1);
    const std::string expected = bytewise.FinishHex();
    EXPECT_EQ(Sha256Hex(data.data(), len), expected) << len;
    Sha256 split;
    split.Update(data.data(), 5);
    split.Update(data.data() + 5, len - 5);
    EXPECT_EQ(split.FinishHex(), expected) << len;
  }
}

TEST(Sha256Test, MovedHashKeepsState) {
  Sha256 a;
  a.Update("ab", 2);
  Sha256 b = std::move(a);
  b.Update("c", 1);
  EXPECT_EQ(b.FinishHex(), Sha256Hex("abc", 3));
}

TEST(Sha256Test, UpdateZerosEqualsUpdateOfZeros) {
  for (uint64_t n :
       {0ULL, 1ULL, 63ULL, 64ULL, 65ULL, 1ULL << 20, (1ULL << 20) + 1, (3ULL << 20) + 12345}) {
    std::vector<char> zeros(n, 0);
    Sha256 a;
    a.Update("x", 1);
    a.UpdateZeros(n);
    a.Update("y", 1);
    Sha256 b;
    b.Update("x", 1);
    b.Update(zeros.data(), zeros.size());
    b.Update("y", 1);
    EXPECT_EQ(a.FinishHex(), b.FinishHex()) << n;
  }
}

TEST(Sha256Test, IsAllZeroEdgeCases) {
  EXPECT_TRUE(IsAllZero(nullptr, 0));
  for (size_t len : {1, 7, 8, 9, 15, 16, 17, 31, 64, 4095, 4096, 65537}) {
    std::vector<unsigned char> buf(len + 4, 0);
    unsigned char* p = buf.data() + 3;  // unaligned on purpose
    EXPECT_TRUE(IsAllZero(p, len)) << len;
    for (size_t pos : {size_t{0}, len / 2, len - 1}) {
      p[pos] = 1;
      EXPECT_FALSE(IsAllZero(p, len)) << len << " at " << pos;
      p[pos] = 0;
    }
    p[len] = 0xff;  // a byte past the end does not count
    buf[2] = 0xff;  // nor one before the start
    EXPECT_TRUE(IsAllZero(p, len)) << len;
  }
}

TEST(Sha256Test, IsAllZeroFindsEverySingleNonZeroByte) {
  std::vector<unsigned char> buf(300, 0);
  std::mt19937 rng(1);
  for (size_t pos = 0; pos < buf.size(); ++pos) {
    buf[pos] = static_cast<unsigned char>(1 + rng() % 255);
    EXPECT_FALSE(IsAllZero(buf.data(), buf.size())) << pos;
    buf[pos] = 0;
  }
}

}  // namespace
}  // namespace imagerelay
