#include "store/block_manifest.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "base/binary_codec.hpp"
#include "base/file_util.hpp"
#include "imagerelay/error.hpp"
#include "imagerelay/sha256.hpp"
#include "store/block_list.hpp"

namespace imagerelay {
namespace {

constexpr char kMagic[8] = {'I', 'R', 'M', 'A', 'N', 'I', 'F', '1'};
constexpr std::string_view kDigestPrefix = "sha256:";
constexpr size_t kStreamBytes = kManifestWindow * kHashBytes;  // the stream's only memory

[[noreturn]] void Damaged(const std::string& what, const std::string& why) {
  throw IntegrityError(codes::kIntegrityError, "the manifest of " + what + " is damaged (" + why +
                                                   "); import or replicate the image again");
}

}  // namespace

uint64_t BinaryManifestBytes(uint64_t count) {
  return kManifestHeaderBytes + count * kHashBytes + kHashBytes;
}

int WriteBinaryManifest(const Manifest& m, int fd) {
  std::byte header[kManifestHeaderBytes];
  std::memcpy(header, kMagic, 8);
  PutLe(header + 8, m.chunk_size, 4);
  PutLe(header + 12, 0, 4);
  PutLe(header + 16, m.size, 8);
  HashToBytes(m.digest.starts_with(kDigestPrefix) ? m.digest.substr(kDigestPrefix.size()) : "",
              header + 24);
  PutLe(header + 24 + kHashBytes, m.count(), 8);
  Sha256 file_hash;
  file_hash.Update(header, sizeof(header));
  if (int err = PwriteAll(fd, header, sizeof(header), 0); err != 0) return err;
  off_t at = sizeof(header);
  std::vector<std::byte> window;
  for (uint64_t first = 0; first < m.count(); first += kManifestWindow) {
    const uint64_t n = std::min<uint64_t>(kManifestWindow, m.count() - first);
    window.resize(n * kHashBytes);
    m.blocks->Read(first, window);
    file_hash.Update(window.data(), window.size());
    if (int err = PwriteAll(fd, window.data(), window.size(), at); err != 0) return err;
    at += static_cast<off_t>(window.size());
  }
  std::byte trailer[kHashBytes];
  HashToBytes(file_hash.FinishHex(), trailer);
  return PwriteAll(fd, trailer, sizeof(trailer), at);
}

Manifest ReadBinaryManifest(UniqueFd fd, const std::string& what) {
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) {
    throw TransferError(codes::kTransferFailed,
                        "cannot read the manifest of " + what + ": " + ErrnoText(errno));
  }
  std::byte header[kManifestHeaderBytes];
  if (static_cast<uint64_t>(st.st_size) < BinaryManifestBytes(0) ||
      PreadAll(fd.get(), header, sizeof(header), 0) != 0 || std::memcmp(header, kMagic, 8) != 0) {
    Damaged(what, "it is not a manifest of this format");
  }
  Manifest m;
  m.chunk_size = GetLe(header + 8, 4);
  m.size = GetLe(header + 16, 8);
  const std::string digest = BytesToHash(header + 24);
  if (!digest.empty()) m.digest = std::string(kDigestPrefix) + digest;
  const uint64_t count = GetLe(header + 24 + kHashBytes, 8);
  if (m.chunk_size == 0 || count != ChunkCount(m.size, m.chunk_size)) {
    Damaged(what, "its block count does not fit its size");
  }
  // Before BinaryManifestBytes(count), which a huge count would wrap around to a small file's
  // size (found by fuzzing: 2^59 blocks "fit" 96 bytes).
  if (count > (static_cast<uint64_t>(st.st_size) - BinaryManifestBytes(0)) / kHashBytes) {
    Damaged(what, "its header claims " + std::to_string(count) + " blocks, more than its " +
                      std::to_string(st.st_size) + " bytes hold");
  }
  if (static_cast<uint64_t>(st.st_size) != BinaryManifestBytes(count)) {
    Damaged(what, "it is " + std::to_string(st.st_size) + " bytes where its header needs " +
                      std::to_string(BinaryManifestBytes(count)));
  }
  // The whole file against its trailing hash, in one sequential read.
  Sha256 file_hash;
  file_hash.Update(header, sizeof(header));
  std::vector<std::byte> buffer;
  const uint64_t body_end = kManifestHeaderBytes + count * kHashBytes;
  for (uint64_t at = kManifestHeaderBytes; at < body_end; at += buffer.size()) {
    buffer.resize(static_cast<size_t>(std::min<uint64_t>(kStreamBytes, body_end - at)));
    if (PreadAll(fd.get(), buffer.data(), buffer.size(), static_cast<off_t>(at)) != 0) {
      Damaged(what, "it ends before its last block");
    }
    file_hash.Update(buffer.data(), buffer.size());
  }
  std::byte trailer[kHashBytes];
  if (PreadAll(fd.get(), trailer, sizeof(trailer), static_cast<off_t>(body_end)) != 0) {
    Damaged(what, "it ends before its checksum");
  }
  if (BytesToHash(trailer) != file_hash.FinishHex()) Damaged(what, "its checksum does not match");
  m.blocks = FileBlockList(std::move(fd), kManifestHeaderBytes, count, what);
  return m;
}

Manifest ReadFirstReleaseManifest(const std::string& text, const std::string& what) {
  try {
    return Manifest::FromJson(text);
  } catch (const Error& e) {
    Damaged(what, e.message());
  }
}

}  // namespace imagerelay
