// Disk image headers (dataplane/disk_format.cpp): the format and virtual size of a raw,
// qcow2, VMDK or VHD image an import is given, and the refusal of the others. The input is
// the image; it is read as a local file reads (random access: a fixed VHD's footer at the
// end is looked at) and as a URL reads (its head only).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>

#include "fuzz_support.hpp"
#include "imagerelay/disk_format.hpp"
#include "imagerelay/image_io.hpp"

namespace imagerelay::fuzz {
namespace {

// The input as an import source; reads outside it are the parser's bug.
class MemorySource : public ByteSource {
 public:
  MemorySource(std::span<const std::byte> bytes, bool random_access)
      : bytes_(bytes), random_access_(random_access) {}
  uint64_t size() const override { return bytes_.size(); }
  bool IsHole(uint64_t, uint64_t) override { return false; }
  void ReadAt(uint64_t offset, std::byte* out, size_t len) override {
    Require(offset <= bytes_.size() && len <= bytes_.size() - offset,
            "a read past the end of the image");
    std::memcpy(out, bytes_.data() + offset, len);
  }
  std::string describe() const override { return "fuzz.img"; }
  bool ConcurrentReads() const override { return random_access_; }

 private:
  std::span<const std::byte> bytes_;
  bool random_access_;
};

}  // namespace
}  // namespace imagerelay::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace imagerelay;
  using namespace imagerelay::fuzz;
  const std::span bytes(reinterpret_cast<const std::byte*>(data), size);
  for (bool random_access : {true, false}) {
    MemorySource source(bytes, random_access);
    OnlyStableErrors([&] {
      const DiskFormat format = ProbeDiskFormat(source);
      Require(format.format == "raw" || format.format == "qcow2" || format.format == "vmdk" ||
                  format.format == "vhd",
              "an unknown format name \"" + format.format + "\"");
      Require(format.format != "raw" || format.virtual_size == size, "a raw image of another size");
    });
  }
  return 0;
}
