// LocalStore's packs (pack_files.hpp): files under <root>/packs/<first two hex>/, confined
// to the store like its chunk files (no link below the root is followed).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <ctime>

#include "base/fail_point.hpp"
#include "base/file_util.hpp"
#include "base/local_dir.hpp"
#include "imagerelay/error.hpp"
#include "store/local_store.hpp"

namespace imagerelay {
namespace {

void RequirePackName(const std::string& name) {
  if (!IsPackName(name)) {
    throw ValidationError(codes::kInvalidParameter,
                          "invalid pack name: a pack is named by 32 lowercase hex digits");
  }
}

[[noreturn]] void PackFailed(const std::string& what, const std::string& uri, int err) {
  throw TransferError(codes::kTransferFailed, what + " in store " + uri + ": " + ErrnoText(err));
}

}  // namespace

UniqueFd LocalStore::OpenPackDir(const std::string& name, bool create) {
  RequirePackName(name);
  const std::string prefix = name.substr(0, 2);
  if (!create) return OpenStoreDir(kPacksDir, prefix);
  EnsureDir(kPacksDir, packs_known_);
  if (UniqueFd dir = OpenStoreDir(kPacksDir, prefix)) return dir;
  UniqueFd packs = OpenStoreDir(kPacksDir);
  if (!packs) PackFailed("cannot open " + (root_ / kPacksDir).string(), uri_, ENOENT);
  // No fsync of packs/ here: the sync that commits a pack of this directory (CommitPacks)
  // makes the directory durable with it, before the pack is visible.
  if (::mkdirat(packs.get(), prefix.c_str(), 0755) != 0 && errno != EEXIST) {
    PackFailed("cannot create " + (root_ / kPacksDir / prefix).string(), uri_, errno);
  }
  UniqueFd dir = OpenStoreDir(kPacksDir, prefix);  // throws for a link in its place
  if (!dir) PackFailed("cannot open " + (root_ / kPacksDir / prefix).string(), uri_, ENOENT);
  return dir;
}

std::string LocalStore::WritePackTemp(int dir_fd, const std::string& name,
                                      std::span<const std::byte> bytes) {
  const std::string tmp = TempName(name);
  auto fail = [&](const std::string& what, int err) {
    ::unlinkat(dir_fd, tmp.c_str(), 0);  // not a durable step: a temporary file
    PackFailed("cannot write pack " + name + ": " + what, uri_, err);
  };
  // Around the page cache (O_DIRECT) like chunk files: a pack is not read back soon, and a
  // copy of gigabytes should not fill memory with dirty pages.
  UniqueFd fd =
      CreateWritten(dir_fd, tmp, root_ / kPacksDir / name.substr(0, 2) / tmp, bytes, fail);
  if (int err = fd.Close(); err != 0) fail("close", err);
  return tmp;
}

void LocalStore::PutPack(const std::string& name, std::span<const std::byte> bytes,
                         const CancelToken* cancel) {
  StagePack(name, bytes, cancel);
  CommitPacks({name});
}

void LocalStore::StagePack(const std::string& name, std::span<const std::byte> bytes,
                           const CancelToken* /*cancel*/) {
  UniqueFd dir = OpenPackDir(name, /*create=*/true);
  std::string tmp = WritePackTemp(dir.get(), name, bytes);
  std::lock_guard lock(staged_mutex_);
  staged_[name] = std::move(tmp);
}

void LocalStore::CommitPacks(const std::vector<std::string>& names) {
  if (names.empty()) return;
  std::vector<std::pair<std::string, std::string>> batch;  // name, temporary file
  {
    std::lock_guard lock(staged_mutex_);
    for (const std::string& name : names) {
      auto it = staged_.find(name);
      if (it == staged_.end()) continue;
      batch.emplace_back(name, std::move(it->second));
      staged_.erase(it);
    }
  }
  if (batch.empty()) return;
  auto discard = [&] {
    for (const auto& [name, tmp] : batch) {
      // not a durable step: temporary files that no index names
      if (UniqueFd dir = OpenPackDir(name, false)) ::unlinkat(dir.get(), tmp.c_str(), 0);
    }
  };
  try {
    // Every staged byte on disk before any pack becomes visible: one flush for the batch; a
    // pack alone (a flush's last, a small copy's only one) syncs just its own file and
    // packs/ (which names its directory, maybe just made, by any process): here ~1 ms where
    // a syncfs takes 2-3.
    if (batch.size() == 1) {
      SyncStagedPack(batch[0].first, batch[0].second);
    } else {
      SyncFilesystem();
    }
    FailPoint("pack.synced");
    for (const auto& [name, tmp] : batch) {
      UniqueFd dir = OpenPackDir(name, false);
      if (!dir || ::renameat(dir.get(), tmp.c_str(), dir.get(), name.c_str()) != 0) {
        PackFailed("cannot commit pack " + name, uri_, dir ? errno : ENOENT);
      }
      FailPoint("pack.renamed");
    }
    // The new names on disk before the packs are indexed. Random names put a group's packs
    // in as many directories: one flush for them all rather than an fsync (a flush) of each.
    if (batch.size() > 1) {
      SyncFilesystem();
    } else if (UniqueFd dir = OpenStoreDir(kPacksDir, batch[0].first.substr(0, 2));
               dir && ::fsync(dir.get()) != 0) {
      PackFailed("cannot sync " + (root_ / kPacksDir / batch[0].first.substr(0, 2)).string(), uri_,
                 errno);
    }
  } catch (...) {
    discard();
    throw;
  }
}

void LocalStore::SyncStagedPack(const std::string& name, const std::string& tmp) {
  UniqueFd dir = OpenPackDir(name, false);
  UniqueFd file;
  if (dir) file.reset(::openat(dir.get(), tmp.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!file) PackFailed("cannot open staged pack " + name, uri_, dir ? errno : ENOENT);
  // Its bytes and what reading them needs (size, extents), and a flush of the device's cache.
  // not a durable step by itself (nor the next): CommitPacks passes pack.synced after it
  if (::fdatasync(file.get()) != 0) PackFailed("cannot sync pack " + name, uri_, errno);
  UniqueFd packs = OpenStoreDir(kPacksDir);
  // not a durable step by itself: with the pack's own sync above
  if (!packs || ::fsync(packs.get()) != 0) {
    PackFailed("cannot sync " + (root_ / kPacksDir).string(), uri_, packs ? errno : ENOENT);
  }
}

void LocalStore::DiscardStaged(const std::vector<std::string>& names) {
  std::lock_guard lock(staged_mutex_);
  for (const std::string& name : names) {
    auto it = staged_.find(name);
    if (it == staged_.end()) continue;
    // not a durable step: a temporary file that no index names
    if (UniqueFd dir = OpenPackDir(name, false)) ::unlinkat(dir.get(), it->second.c_str(), 0);
    staged_.erase(it);
  }
}

std::shared_ptr<UniqueFd> LocalStore::OpenPackForReading(const std::string& name) {
  constexpr size_t kOpenPacks = 32;
  {
    std::lock_guard lock(open_packs_mutex_);
    for (auto it = open_packs_.begin(); it != open_packs_.end(); ++it) {
      if (it->first == name) {
        open_packs_.splice(open_packs_.begin(), open_packs_, it);
        return it->second;
      }
    }
  }
  UniqueFd dir = OpenPackDir(name, /*create=*/false);
  if (!dir) return nullptr;
  auto fd = std::make_shared<UniqueFd>(::openat(dir.get(), name.c_str(), kOpenStoreFile));
  if (!*fd) {
    if (errno == ENOENT || errno == ELOOP) return nullptr;
    PackFailed("cannot open pack " + name, uri_, errno);
  }
  std::lock_guard lock(open_packs_mutex_);
  open_packs_.emplace_front(name, fd);
  if (open_packs_.size() > kOpenPacks) open_packs_.pop_back();
  return fd;
}

void LocalStore::ForgetOpenPack(const std::string& name) {
  std::lock_guard lock(open_packs_mutex_);
  open_packs_.remove_if([&](const auto& entry) { return entry.first == name; });
}

bool LocalStore::ReadPack(const std::string& name, uint64_t offset, std::span<std::byte> out,
                          const CancelToken* /*cancel*/) {
  std::shared_ptr<UniqueFd> fd = OpenPackForReading(name);
  if (!fd) return false;
  int err = PreadAll(fd->get(), out.data(), out.size(), static_cast<off_t>(offset));
  if (err == -1) return false;  // the pack ends first
  if (err != 0) PackFailed("cannot read pack " + name, uri_, err);
  return true;
}

std::optional<size_t> LocalStore::ReadPackAhead(const std::string& name, uint64_t offset,
                                                size_t length, HugePageBytes& buffer,
                                                const CancelToken* cancel) {
  UniqueFd dir = OpenPackDir(name, /*create=*/false);
  if (!dir) return std::nullopt;
  UniqueFd fd(::openat(dir.get(), name.c_str(), kOpenStoreFile | O_DIRECT));
  if (!fd && (errno == ENOENT || errno == ELOOP)) return std::nullopt;
  if (!fd && errno != EINVAL) PackFailed("cannot open pack " + name, uri_, errno);
  // A range the page cache holds any of (a delta's bases read while the image was imported)
  // is read through it: the disk is asked for the pages it lacks only.
  if (fd && CachedPages(fd.get(), offset, length).value_or(0) > 0) fd.reset();
  if (fd) {
    // Whole pages from the one holding `offset`: the last read may stop at the file's end.
    const uint64_t first = offset / kDirectIoAlign * kDirectIoAlign;
    const size_t skip = static_cast<size_t>(offset - first);
    const size_t wanted = skip + length;
    const size_t rounded = (wanted + kDirectIoAlign - 1) / kDirectIoAlign * kDirectIoAlign;
    buffer.resize(rounded);
    const int err =
        PreadDirect(fd.get(), buffer.data(), rounded, wanted, static_cast<off_t>(first));
    if (err == 0) return skip;
    if (err == -1) return std::nullopt;  // the pack ends first
    if (err != EINVAL) PackFailed("cannot read pack " + name, uri_, err);
  }
  // No O_DIRECT here (the file system, or this range): read through the page cache.
  return PackFiles::ReadPackAhead(name, offset, length, buffer, cancel);
}

void LocalStore::Prefetch(const std::string& name, uint64_t offset, uint64_t length) {
  try {
    if (std::shared_ptr<UniqueFd> fd = OpenPackForReading(name)) {
      ::posix_fadvise(fd->get(), static_cast<off_t>(offset), static_cast<off_t>(length),
                      POSIX_FADV_WILLNEED);
    }
  } catch (const TransferError&) {
    // a hint only: the read that follows reports what is wrong
  }
}

std::optional<PackStat> LocalStore::StatPack(const std::string& name) {
  UniqueFd dir = OpenPackDir(name, /*create=*/false);
  if (!dir) return std::nullopt;
  struct stat st;
  if (::fstatat(dir.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
    if (errno == ENOENT) return std::nullopt;
    PackFailed("cannot look up pack " + name, uri_, errno);
  }
  if (!S_ISREG(st.st_mode)) return std::nullopt;
  return PackStat{static_cast<uint64_t>(st.st_size), FileMark(st)};
}

void LocalStore::DeletePack(const std::string& name) {
  ForgetOpenPack(name);
  UniqueFd dir = OpenPackDir(name, /*create=*/false);
  if (!dir || !StatPack(name)) return;  // only a pack file of ours is deleted
  FailPoint("store.delete");
  if (::unlinkat(dir.get(), name.c_str(), 0) != 0 && errno != ENOENT) {
    PackFailed("cannot delete pack " + name, uri_, errno);
  }
  ::fsync(dir.get());
}

void LocalStore::QuarantinePack(const std::string& name) {
  ForgetOpenPack(name);
  UniqueFd dir = OpenPackDir(name, /*create=*/false);
  if (!dir || !StatPack(name)) return;
  if (!MoveToQuarantine(dir.get(), name)) DeletePack(name);
}

void LocalStore::KeepAside(const std::string& hash, std::span<const std::byte> bytes) {
  try {
    ::mkdirat(OpenRoot().get(), kQuarantineDir, 0700);
    UniqueFd quarantine = OpenStoreDir(kQuarantineDir);  // never through a link
    if (!quarantine) return;
    WriteFileAtomicallyAt(quarantine.get(), root_ / kQuarantineDir,
                          hash + "." + std::to_string(::time(nullptr)), bytes, 0600);
  } catch (const TransferError&) {
    // best effort: taking the block out of use is what matters
  }
}

std::vector<std::pair<std::string, uint64_t>> LocalStore::ListPacks() {
  std::vector<std::pair<std::string, uint64_t>> packs;
  UniqueFd top = OpenStoreDir(kPacksDir);
  if (!top) return packs;
  int err = ForEachPrefixDir(top.get(), [&](const std::string& prefix, int fd) {
    std::vector<DirEntry> entries;
    if (int e = ListDirectory(fd, entries); e != 0) {
      PackFailed("cannot list " + (root_ / kPacksDir / prefix).string(), uri_, e);
    }
    for (DirEntry& entry : entries) {
      struct stat st;
      if (entry.kind != EntryKind::kFile || !IsPackName(entry.name) ||
          entry.name.compare(0, 2, prefix) != 0 ||
          ::fstatat(fd, entry.name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
        continue;
      }
      packs.emplace_back(std::move(entry.name), static_cast<uint64_t>(st.st_size));
    }
  });
  if (err != 0) PackFailed("cannot list " + (root_ / kPacksDir).string(), uri_, err);
  return packs;
}

std::filesystem::path LocalStore::IndexFile() {
  EnsureDir(kIndexDir, index_known_);
  return root_ / kIndexDir / "blocks.sqlite";
}

}  // namespace imagerelay
