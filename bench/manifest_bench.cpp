// How a manifest scales (issue #12, "Manifests that scale"): writes the manifest of an image
// of N blocks of 64 KiB in its stored form, drops it from the page cache, then times opening
// it (read whole and checked against its trailing SHA-256), its chunk-list digest (what every
// read of an image checks against the catalog) and a walk of its windows (what a copy,
// export, verify or sweep does), with the process's peak RSS after each size.
//
//   make bench-manifest      (build/editable/imagerelay_manifest_bench --dir DIR [sizes in GiB])
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "base/binary_codec.hpp"
#include "store/block_list.hpp"
#include "store/block_manifest.hpp"

namespace {

using namespace imagerelay;
using Clock = std::chrono::steady_clock;
constexpr uint64_t kBlock = 64 << 10;

double Since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

uint64_t PeakRssKiB() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    if (line.starts_with("VmHWM:")) return std::stoull(line.substr(6));
  }
  return 0;
}

struct Row {
  uint64_t gib;
  uint64_t blocks;
  uint64_t bytes;
  double write_s, cold_open_s, warm_open_s, digest_s, walk_s;
  uint64_t peak_rss_kib;
};

Row Measure(const std::filesystem::path& dir, uint64_t gib) {
  Row row{};
  row.gib = gib;
  row.blocks = gib * (1ULL << 30) / kBlock;
  // The block list of an imported image: spooled, as an import keeps it; one block in 16 a
  // hole.
  Manifest m;
  m.chunk_size = kBlock;
  m.size = row.blocks * kBlock;
  m.blocks = NewBlockList(row.blocks, dir);
  std::mt19937_64 rng(gib);
  std::vector<std::byte> window;
  for (uint64_t first = 0; first < row.blocks; first += kManifestWindow) {
    const uint64_t n = std::min<uint64_t>(kManifestWindow, row.blocks - first);
    window.assign(n * kHashBytes, std::byte{0});
    for (uint64_t i = 0; i < n; ++i) {
      if ((first + i) % 16 == 5) continue;
      for (size_t k = 0; k < kHashBytes; k += 8)
        PutLe(window.data() + i * kHashBytes + k, rng(), 8);
    }
    m.blocks->Write(first, window);
  }
  const std::filesystem::path path = dir / ("manifest-" + std::to_string(gib) + ".bin");
  {
    auto t = Clock::now();
    UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (!fd || WriteBinaryManifest(m, fd.get()) != 0 || ::fsync(fd.get()) != 0) {
      std::perror("writing the manifest");
      std::exit(1);
    }
    row.write_s = Since(t);
    ::posix_fadvise(fd.get(), 0, 0, POSIX_FADV_DONTNEED);  // the open below reads the disk
  }
  row.bytes = std::filesystem::file_size(path);
  m = Manifest{};
  auto open = [&] {
    auto t = Clock::now();
    Manifest read =
        ReadBinaryManifest(UniqueFd(::open(path.c_str(), O_RDONLY | O_CLOEXEC)), "bench");
    return std::make_pair(Since(t), std::move(read));
  };
  auto [cold, read] = open();
  row.cold_open_s = cold;
  row.warm_open_s = open().first;
  auto t = Clock::now();
  const std::string digest = read.ChunkListDigest();
  row.digest_s = Since(t);
  t = Clock::now();
  uint64_t stored = 0;
  read.ForEachWindow([&](uint64_t, const std::vector<std::string>& hashes) {
    for (const std::string& h : hashes) stored += h.empty() ? 0 : 1;
  });
  row.walk_s = Since(t);
  row.peak_rss_kib = PeakRssKiB();
  std::filesystem::remove(path);
  return row;
}

}  // namespace

int main(int argc, char** argv) {
  std::filesystem::path dir = std::filesystem::temp_directory_path();
  std::vector<uint64_t> sizes;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--dir") == 0 && i + 1 < argc) {
      dir = argv[++i];
    } else {
      sizes.push_back(std::stoull(argv[i]));
    }
  }
  if (sizes.empty()) sizes = {2, 20, 200};  // ascending: the peak RSS only grows
  std::printf(
      "| image | blocks of 64 KiB | manifest | write + fsync (s) | open, cold cache (s) "
      "| open, warm (s) | chunk-list digest (s) | walk of all windows (s) | process peak "
      "RSS after (MiB) |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  for (uint64_t gib : sizes) {
    const Row r = Measure(dir, gib);
    std::printf("| %llu GiB | %llu | %.1f MB | %.3f | %.3f | %.3f | %.3f | %.3f | %.1f |\n",
                static_cast<unsigned long long>(r.gib), static_cast<unsigned long long>(r.blocks),
                static_cast<double>(r.bytes) / 1e6, r.write_s, r.cold_open_s, r.warm_open_s,
                r.digest_s, r.walk_s, static_cast<double>(r.peak_rss_kib) / 1024.0);
    std::fflush(stdout);
  }
}
