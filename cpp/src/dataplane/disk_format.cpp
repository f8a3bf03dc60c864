// Reads the format and virtual size of raw, qcow2, VMDK and VHD files from their headers,
// as the specifications lay them out (qcow2: qemu docs/interop/qcow2.txt; VMDK: VMware's
// Virtual Disk Format 1.1, sparse extent header and embedded descriptor; VHD: Microsoft's
// Virtual Hard Disk Image Format Specification, the 512-byte footer).
#include "imagerelay/disk_format.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "base/binary_codec.hpp"
#include "imagerelay/error.hpp"
#include "imagerelay/image_io.hpp"

namespace imagerelay {
namespace {

// Enough for every header here and a qemu-made VMDK's embedded descriptor.
constexpr size_t kHeadBytes = 64 << 10;
constexpr size_t kVhdFooterBytes = 512;
constexpr uint64_t kMaxVmdkDescriptor = 1ULL << 20;

uint64_t GetBe(const std::byte* p, int bytes) {
  uint64_t value = 0;
  for (int i = 0; i < bytes; ++i) value = value << 8 | static_cast<uint64_t>(p[i]);
  return value;
}

bool StartsWith(const std::vector<std::byte>& bytes, std::string_view magic) {
  return bytes.size() >= magic.size() && std::memcmp(bytes.data(), magic.data(), magic.size()) == 0;
}

[[noreturn]] void Refuse(const ByteSource& source, const std::string& why) {
  throw ValidationError(codes::kInvalidParameter, "source " + source.describe() + " " + why);
}

DiskFormat Qcow2(ByteSource& source, const std::vector<std::byte>& head) {
  const auto* h = head.data();
  // The version follows the magic: a file that ends first has no header to read.
  if (head.size() < 8) {
    Refuse(source, "has a qcow2 magic but no qcow2 header (the file is " +
                       std::to_string(head.size()) + " bytes)");
  }
  const uint64_t version = GetBe(h + 4, 4);
  if (version == 1) {
    Refuse(source,
           "is a qcow (version 1) image, which imagerelay does not take; convert it "
           "with `qemu-img convert -O qcow2`");
  }
  if ((version != 2 && version != 3) || head.size() < 104) {
    Refuse(source, "has a qcow2 header of an unknown version (" + std::to_string(version) + ")");
  }
  if (GetBe(h + 8, 8) != 0) {
    Refuse(source,
           "is a qcow2 image with a backing file, which imagerelay does not follow; "
           "make it stand alone with `qemu-img convert -O qcow2` first");
  }
  const uint64_t cluster_bits = GetBe(h + 20, 4);
  if (cluster_bits < 9 || cluster_bits > 21) {
    Refuse(source, "has a qcow2 header with an impossible cluster size (2^" +
                       std::to_string(cluster_bits) + ")");
  }
  // Incompatible feature bit 2: the guest's data lives in an external file.
  if (version == 3 && (GetBe(h + 72, 8) & 4) != 0) {
    Refuse(source,
           "is a qcow2 image whose data lives in an external file; make it stand "
           "alone with `qemu-img convert -O qcow2` first");
  }
  return {"qcow2", GetBe(h + 24, 8)};
}

// The embedded descriptor of a sparse VMDK: `key="value"` lines and extent lines.
std::string VmdkDescriptor(ByteSource& source, const std::vector<std::byte>& head) {
  const uint64_t offset = GetLe(head.data() + 28, 8) * 512;
  const uint64_t length = GetLe(head.data() + 36, 8) * 512;
  if (offset == 0 || length == 0) return {};
  if (length > kMaxVmdkDescriptor || offset > source.size() || length > source.size() - offset) {
    Refuse(source, "has a VMDK header whose descriptor lies outside the file");
  }
  std::string text(length, '\0');
  if (offset + length <= head.size()) {
    std::memcpy(text.data(), head.data() + offset, length);
  } else {
    source.ReadAt(offset, reinterpret_cast<std::byte*>(text.data()), text.size());
  }
  return text.substr(0, text.find('\0'));
}

DiskFormat Vmdk(ByteSource& source, const std::vector<std::byte>& head) {
  const auto* h = head.data();
  const uint64_t capacity = GetLe(h + 12, 8);
  if (capacity > (UINT64_MAX >> 9)) Refuse(source, "has a VMDK header with an impossible size");
  const std::string descriptor = VmdkDescriptor(source, head);
  if (descriptor.find("parentFileNameHint") != std::string::npos) {
    Refuse(source,
           "is a VMDK delta disk that needs its parent; make it stand alone with "
           "`qemu-img convert -O vmdk` first");
  }
  size_t extents = 0;
  for (size_t at = 0; at < descriptor.size();) {
    size_t end = std::min(descriptor.find('\n', at), descriptor.size());
    std::string_view line(descriptor.data() + at, end - at);
    if (line.starts_with("RW ") || line.starts_with("RDONLY ") || line.starts_with("NOACCESS ")) {
      ++extents;
    }
    at = end + 1;
  }
  if (extents > 1) {
    Refuse(source,
           "is a VMDK split over several files; make it one file with "
           "`qemu-img convert -O vmdk` first");
  }
  return {"vmdk", capacity * 512};
}

// The VHD footer at `footer` (512 bytes, cookie "conectix").
DiskFormat Vhd(ByteSource& source, const std::byte* footer) {
  const uint64_t disk_type = GetBe(footer + 60, 4);
  if (disk_type == 4) {
    Refuse(source,
           "is a differencing VHD that needs its parent; make it stand alone with "
           "`qemu-img convert -O vpc` first");
  }
  if (disk_type != 2 && disk_type != 3) {
    Refuse(source, "has a VHD footer of an unknown disk type (" + std::to_string(disk_type) + ")");
  }
  // As qemu reads it: Virtual PC and qemu itself size a disk by its CHS geometry, Hyper-V
  // and the other writers by the footer's current size (also kept at the largest geometry).
  const uint64_t current_size = GetBe(footer + 48, 8);
  const uint64_t cylinders = GetBe(footer + 56, 2);
  const uint64_t heads = GetBe(footer + 58, 1);
  const uint64_t sectors = GetBe(footer + 59, 1);
  const std::string_view creator(reinterpret_cast<const char*>(footer + 28), 4);
  const bool by_size = creator == "win " || creator == "qem2" || creator == "d2v " ||
                       creator == "CTXS" || creator.starts_with("tap");
  const uint64_t chs = cylinders * heads * sectors;
  if (by_size || chs == 65535ULL * 16 * 255) return {"vhd", current_size};
  return {"vhd", chs * 512};
}

bool IsVhdFooter(const std::byte* p) { return std::memcmp(p, "conectix", 8) == 0; }

}  // namespace

DiskFormat ProbeDiskFormat(ByteSource& source) {
  const uint64_t size = source.size();
  std::vector<std::byte> head(static_cast<size_t>(std::min<uint64_t>(size, kHeadBytes)));
  if (!head.empty()) source.ReadHead(head.data(), head.size());

  if (StartsWith(head, "QFI\xfb")) return Qcow2(source, head);
  if (StartsWith(head, "KDMV") && head.size() >= 512) return Vmdk(source, head);
  if (StartsWith(head, "# Disk DescriptorFile")) {
    Refuse(source,
           "is a VMDK descriptor whose data lives in other files; make it one file "
           "with `qemu-img convert -O vmdk` first");
  }
  if (StartsWith(head, "COWD")) {
    Refuse(source,
           "is an ESX sparse VMDK (COWD), which imagerelay does not take; convert it "
           "with `qemu-img convert -O vmdk`");
  }
  // A dynamic VHD keeps a copy of its footer at the start.
  if (head.size() >= kVhdFooterBytes && IsVhdFooter(head.data())) return Vhd(source, head.data());
  for (auto [magic, name] : {std::pair<std::string_view, const char*>{"vhdxfile", "VHDX"},
                             {std::string_view("QED\0", 4), "QED"},  // the NUL is part of it
                             {"LUKS\xba\xbe", "LUKS"}}) {
    if (StartsWith(head, magic)) {
      Refuse(source, std::string("is a ") + name +
                         " image, which imagerelay does not take; convert it to raw, qcow2, "
                         "vmdk or vhd with `qemu-img convert`");
    }
  }
  if (head.size() >= 68 && GetLe(head.data() + 64, 4) == 0xbeda107f) {
    Refuse(source,
           "is a VDI image, which imagerelay does not take; convert it to raw, qcow2, "
           "vmdk or vhd with `qemu-img convert`");
  }
  // A fixed VHD is a raw disk followed by its footer.
  if (size >= 2 * kVhdFooterBytes && source.ConcurrentReads()) {
    std::byte footer[kVhdFooterBytes];
    source.ReadAt(size - kVhdFooterBytes, footer, kVhdFooterBytes);
    if (IsVhdFooter(footer)) return Vhd(source, footer);
  }
  return {"raw", size};
}

}  // namespace imagerelay
