// BlockKeyMap, the kept answers' table: what is added is found, once, through growth and
// keys that share their first bytes (the ones its slot is computed from).
#include "store/block_key_map.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <string>

namespace imagerelay {
namespace {

BlockKey KeyOf(uint64_t head, uint64_t tail) {
  BlockKey key{};
  std::memcpy(key.data(), &head, sizeof head);
  std::memcpy(key.data() + key.size() - sizeof tail, &tail, sizeof tail);
  return key;
}

TEST(BlockKeyMapTest, FindsWhatWasAddedThroughGrowthAndOnlyThat) {
  BlockKeyMap<std::string> map;
  EXPECT_EQ(map.Find(KeyOf(1, 1)), nullptr);  // empty: no slots at all
  map.Prefetch(KeyOf(1, 1));                  // harmless when empty
  constexpr uint64_t kCount = 5000;           // grows from 64 slots, several times
  for (uint64_t i = 0; i < kCount; ++i) {
    ASSERT_TRUE(map.TryEmplace(KeyOf(i * 0x9E3779B97F4A7C15ULL, i), "v" + std::to_string(i)));
  }
  EXPECT_EQ(map.size(), kCount);
  for (uint64_t i = 0; i < kCount; ++i) {
    const std::string* value = map.Find(KeyOf(i * 0x9E3779B97F4A7C15ULL, i));
    ASSERT_NE(value, nullptr) << i;
    EXPECT_EQ(*value, "v" + std::to_string(i));
  }
  // A key that differs in its last bytes only is another key.
  EXPECT_EQ(map.Find(KeyOf(0, 1)), nullptr);
  // Added once: a second value for a key is not taken.
  EXPECT_FALSE(map.TryEmplace(KeyOf(0, 0), "other"));
  EXPECT_EQ(*map.Find(KeyOf(0, 0)), "v0");
  map.Clear();
  EXPECT_EQ(map.size(), 0u);
  EXPECT_FALSE(map.Contains(KeyOf(0, 0)));
  EXPECT_TRUE(map.TryEmplace(KeyOf(0, 0), "again"));
  EXPECT_EQ(*map.Find(KeyOf(0, 0)), "again");
}

TEST(BlockKeyMapTest, KeysThatShareTheirSlotAreAllFound) {
  // The same first 8 bytes: one slot for all, whatever the seed; each found by probing on.
  BlockKeyMap<int> map;
  map.Reserve(100);
  for (int i = 0; i < 100; ++i) ASSERT_TRUE(map.TryEmplace(KeyOf(42, i), i));
  for (int i = 0; i < 100; ++i) {
    const int* value = map.Find(KeyOf(42, i));
    ASSERT_NE(value, nullptr);
    EXPECT_EQ(*value, i);
  }
  EXPECT_FALSE(map.Contains(KeyOf(42, 100)));
}

}  // namespace
}  // namespace imagerelay
