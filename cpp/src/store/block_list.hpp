// Where a manifest's block hashes live (imagerelay/manifest.hpp BlockList): memory for small
// images, else a file read and written 32 bytes per block at its offset, so that the list of
// a 200 GiB image (105 MB) stays in the page cache, not in the process.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>

#include "base/unique_fd.hpp"
#include "imagerelay/manifest.hpp"

namespace imagerelay {

// Up to this many blocks a new list is held in memory (2 MiB of hashes).
inline constexpr uint64_t kInMemoryBlocks = kManifestWindow;

std::shared_ptr<BlockList> MemoryBlockList(uint64_t count);
// The list stored in `fd` from byte `offset` on (a manifest file's body, or a spool). `what`
// names it in errors (a short read: the file was truncated under us).
std::shared_ptr<BlockList> FileBlockList(UniqueFd fd, uint64_t offset, uint64_t count,
                                         std::string what);
// An unnamed temporary file in `dir` (gone when closed, whatever ends the process).
UniqueFd OpenSpoolFile(const std::filesystem::path& dir);
// A list of `count` holes: in memory when small or when `spool_dir` is empty, else spooled to
// a temporary file in `spool_dir`.
std::shared_ptr<BlockList> NewBlockList(uint64_t count, const std::filesystem::path& spool_dir);

}  // namespace imagerelay
