// ProbeDiskFormat against hostile and broken headers (real images made by qemu-img are
// tested from Python: tests/python/test_formats.py).
#include "imagerelay/disk_format.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "imagerelay/error.hpp"
#include "imagerelay/image_io.hpp"

namespace imagerelay {
namespace {

// Test fake: a file held in memory.
class MemorySource : public ByteSource {
 public:
  explicit MemorySource(std::vector<std::byte> bytes) : bytes_(std::move(bytes)) {}
  uint64_t size() const override { return bytes_.size(); }
  bool IsHole(uint64_t, uint64_t) override { return false; }
  void ReadAt(uint64_t offset, std::byte* out, size_t len) override {
    ASSERT_LE(offset + len, bytes_.size()) << "read past the end";
    std::memcpy(out, bytes_.data() + offset, len);
  }
  std::string describe() const override { return "'mem'"; }
  bool ConcurrentReads() const override { return true; }

 private:
  std::vector<std::byte> bytes_;
};

void PutBe(std::vector<std::byte>& b, size_t at, uint64_t value, int bytes) {
  for (int i = bytes - 1; i >= 0; --i, value >>= 8) b[at + i] = std::byte(value & 0xff);
}
void PutLe(std::vector<std::byte>& b, size_t at, uint64_t value, int bytes) {
  for (int i = 0; i < bytes; ++i, value >>= 8) b[at + i] = std::byte(value & 0xff);
}
void PutText(std::vector<std::byte>& b, size_t at, const std::string& text) {
  std::memcpy(b.data() + at, text.data(), text.size());
}

std::vector<std::byte> Qcow2(uint64_t virtual_size) {
  std::vector<std::byte> b(4096);
  PutText(b, 0, "QFI\xfb");
  PutBe(b, 4, 3, 4);
  PutBe(b, 20, 16, 4);  // 64 KiB clusters
  PutBe(b, 24, virtual_size, 8);
  return b;
}

std::string Refusal(std::vector<std::byte> bytes) {
  MemorySource source(std::move(bytes));
  try {
    ProbeDiskFormat(source);
  } catch (const ValidationError& e) {
    EXPECT_EQ(e.code(), codes::kInvalidParameter);
    return e.message();
  }
  ADD_FAILURE() << "accepted";
  return "";
}

TEST(DiskFormatTest, RawIsTheFile) {
  MemorySource source(std::vector<std::byte>(10000, std::byte{7}));
  auto disk = ProbeDiskFormat(source);
  EXPECT_EQ(disk.format, "raw");
  EXPECT_EQ(disk.virtual_size, 10000u);
  MemorySource empty({});
  EXPECT_EQ(ProbeDiskFormat(empty).format, "raw");
}

TEST(DiskFormatTest, Qcow2HeaderAndItsTraps) {
  MemorySource ok(Qcow2(300ULL << 30));
  EXPECT_EQ(ProbeDiskFormat(ok).virtual_size, 300ULL << 30);

  auto backing = Qcow2(1 << 20);
  PutBe(backing, 8, 512, 8);
  EXPECT_NE(Refusal(backing).find("backing file"), std::string::npos);
  auto data_file = Qcow2(1 << 20);
  PutBe(data_file, 72, 4, 8);
  EXPECT_NE(Refusal(data_file).find("external file"), std::string::npos);
  auto clusters = Qcow2(1 << 20);
  PutBe(clusters, 20, 40, 4);
  EXPECT_NE(Refusal(clusters).find("cluster size"), std::string::npos);
  auto version = Qcow2(1 << 20);
  PutBe(version, 4, 9, 4);
  EXPECT_NE(Refusal(version).find("unknown version"), std::string::npos);
  auto truncated = Qcow2(1 << 20);
  truncated.resize(50);  // a magic and nothing after it
  EXPECT_NE(Refusal(truncated).find("qcow2"), std::string::npos);
  // Found by fuzzing (tests/fuzz/regressions/fuzz_disk_format): the magic alone made the
  // version read past the end of the file's first bytes.
  for (size_t size : {4, 5, 7}) {
    auto magic_only = Qcow2(1 << 20);
    magic_only.resize(size);
    EXPECT_NE(Refusal(magic_only).find("no qcow2 header"), std::string::npos) << size;
  }
}

TEST(DiskFormatTest, VmdkDescriptorOutsideTheFileIsRefusedNotRead) {
  std::vector<std::byte> b(4096);
  PutText(b, 0, "KDMV");
  PutLe(b, 12, 2048, 8);        // 1 MiB
  PutLe(b, 28, 1ULL << 40, 8);  // descriptor far past the end
  PutLe(b, 36, 1, 8);
  EXPECT_NE(Refusal(b).find("outside the file"), std::string::npos);
  PutLe(b, 28, 1, 8);
  PutLe(b, 36, 1ULL << 50, 8);  // an absurd length
  EXPECT_NE(Refusal(b).find("outside the file"), std::string::npos);
  PutLe(b, 12, UINT64_MAX / 256, 8);  // capacity * 512 overflows
  PutLe(b, 28, 0, 8);
  EXPECT_NE(Refusal(b).find("impossible size"), std::string::npos);
}

TEST(DiskFormatTest, VmdkDeltaAndSplitDisksAreRefused) {
  std::vector<std::byte> b(4096);
  PutText(b, 0, "KDMV");
  PutLe(b, 12, 2048, 8);
  PutLe(b, 28, 1, 8);
  PutLe(b, 36, 2, 8);
  const std::string descriptor = "createType=\"monolithicSparse\"\nRW 2048 SPARSE \"a.vmdk\"\n";
  PutText(b, 512, descriptor);
  const size_t end = 512 + descriptor.size();
  MemorySource ok(b);
  EXPECT_EQ(ProbeDiskFormat(ok).virtual_size, 2048u * 512);
  auto delta = b;
  PutText(delta, end, "parentFileNameHint=\"base.vmdk\"\n");
  EXPECT_NE(Refusal(delta).find("parent"), std::string::npos);
  auto split = b;
  PutText(split, end, "RW 2048 SPARSE \"b.vmdk\"\n");
  EXPECT_NE(Refusal(split).find("several files"), std::string::npos);
}

TEST(DiskFormatTest, VhdFooterSizesAsQemuDoes) {
  std::vector<std::byte> b(4096 + 512);
  const size_t footer = 4096;
  PutText(b, footer, "conectix");
  PutText(b, footer + 28, "win ");
  PutBe(b, footer + 48, 4096, 8);
  PutBe(b, footer + 56, 1, 2);
  PutBe(b, footer + 58, 1, 1);
  PutBe(b, footer + 59, 1, 1);
  PutBe(b, footer + 60, 2, 4);  // fixed
  MemorySource hyper_v(b);
  EXPECT_EQ(ProbeDiskFormat(hyper_v).virtual_size, 4096u);  // by the footer's size
  PutText(b, footer + 28, "vpc ");
  MemorySource virtual_pc(b);
  EXPECT_EQ(ProbeDiskFormat(virtual_pc).virtual_size, 512u);  // by its geometry
  PutBe(b, footer + 60, 4, 4);
  EXPECT_NE(Refusal(b).find("differencing"), std::string::npos);
}

// A raw disk whose first bytes happen to spell a magic's printable part is still raw.
TEST(DiskFormatTest, AMagicIsMatchedWholeNulIncluded) {
  std::vector<std::byte> b(4096);
  PutText(b, 0, "QED!");
  MemorySource text_first(b);
  EXPECT_EQ(ProbeDiskFormat(text_first).format, "raw");
  PutText(b, 0, std::string("QED\0", 4));
  EXPECT_NE(Refusal(b).find("QED"), std::string::npos);
}

TEST(DiskFormatTest, FormatsNotTakenAreNamed) {
  std::vector<std::byte> b(4096);
  PutText(b, 0, "vhdxfile");
  EXPECT_NE(Refusal(b).find("VHDX"), std::string::npos);
  std::vector<std::byte> d(4096);
  PutText(d, 0, "# Disk DescriptorFile\n");
  EXPECT_NE(Refusal(d).find("other files"), std::string::npos);
}

}  // namespace
}  // namespace imagerelay
