// Manifests as a store holds them: the binary form (block_manifest.hpp, "IRMANIF1") and the
// first release's JSON (Manifest::FromJson). Every input is read both ways, and once more as
// a binary manifest whose trailing checksum is made right, so that the fuzzer gets past the
// checksum to the header's fields. A manifest that opens must be consistent (its block
// count fits its size and its file) and must write back to the same manifest.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "base/binary_codec.hpp"
#include "fuzz_support.hpp"
#include "imagerelay/manifest.hpp"
#include "imagerelay/sha256.hpp"
#include "store/block_manifest.hpp"

namespace imagerelay::fuzz {
namespace {

// What a caller does with a manifest it opened: its blocks, its digest, its stored form.
void Walk(const Manifest& m, uint64_t file_size) {
  Require(m.chunk_size > 0, "a manifest with chunk size 0 opened");
  Require(m.count() == ChunkCount(m.size, m.chunk_size),
          "a manifest whose block count does not fit its size opened");
  if (file_size != 0) {
    // In 128 bits: a header's count must not wrap around to fit a small file.
    const unsigned __int128 needed =
        static_cast<unsigned __int128>(m.count()) * kHashBytes + kManifestHeaderBytes + kHashBytes;
    Require(needed == file_size, "a manifest opened whose block count does not fit its file");
  }
  if (m.count() > 4 * kManifestWindow) return;  // bounded work per input
  m.ForEachWindow([](uint64_t, const std::vector<std::string>& hashes) {
    for (const std::string& h : hashes) Require(h.empty() || h.size() == 64, "a bad block hash");
  });
  (void)m.ChunkListDigest();
  UniqueFd copy = MemoryFile({});
  Require(WriteBinaryManifest(m, copy.get()) == 0, "writing the manifest back failed");
  const Manifest again = ReadBinaryManifest(std::move(copy), "its copy");
  Require(again == m, "a manifest written back reads as another");
}

}  // namespace
}  // namespace imagerelay::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace imagerelay;
  using namespace imagerelay::fuzz;
  const std::string text(AsText(data, size));
  OnlyStableErrors([&] { Walk(Manifest::FromJson(text), 0); });
  OnlyStableErrors([&] { Walk(ReadFirstReleaseManifest(text, "fuzz"), 0); });

  std::vector<std::byte> bytes(reinterpret_cast<const std::byte*>(data),
                               reinterpret_cast<const std::byte*>(data) + size);
  OnlyStableErrors([&] { Walk(ReadBinaryManifest(MemoryFile(bytes), "fuzz"), size); });
  if (size >= BinaryManifestBytes(0)) {
    const size_t body = size - kHashBytes;
    HashToBytes(Sha256Hex(bytes.data(), body), bytes.data() + body);
    OnlyStableErrors([&] { Walk(ReadBinaryManifest(MemoryFile(bytes), "fuzz"), size); });
  }
  return 0;
}
