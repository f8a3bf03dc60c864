#include "store/pack_store.hpp"

#include <algorithm>
#include <cstdio>
#include <exception>
#include <future>
#include <map>
#include <numeric>
#include <set>
#include <tuple>

#include "base/file_util.hpp"  // kDirectIoAlign
#include "base/sha256_pair.hpp"
#include "base/write_scope.hpp"
#include "imagerelay/cancel.hpp"
#include "imagerelay/error.hpp"
#include "imagerelay/ids.hpp"
#include "imagerelay/log.hpp"
#include "imagerelay/sha256.hpp"
#include "store/block_sketch.hpp"

namespace imagerelay {
namespace {

// Spans of packs read for planned runs, kept for the readers of their other blocks: a copy's
// readers go through an image roughly in order, several at once; a few spans per reader
// is enough (at most kMaxSpans x read_span bytes).
constexpr size_t kMaxSpans = 12;
// Spans a local store's read-ahead holds that no reader has taken a block from yet, at most.
constexpr size_t kAheadSpans = 8;
// Threads reading ahead, each a run at a time: two keep a disk busy while one waits for its
// read (one left the readers waiting for spans four times as often).
constexpr int kAheadReaders = 2;
// Blocks at most this far apart in a pack are read in one request (the gap is read too).
constexpr uint64_t kMaxGap = 64 << 10;
// Runs planned and not yet read, at most (a plan of 200 GiB in 4 MiB runs is ~51,000).
constexpr size_t kMaxPlannedRuns = 1 << 20;
// Locations of planned blocks not yet read, at most (~8 MiB; the blocks of a larger plan are
// looked up when read).
constexpr size_t kMaxPlannedBlocks = 1 << 15;
// Room a pack's buffer has beyond pack_size: the block that fills it goes in whole.
constexpr uint64_t kBuilderSlack = 1ULL << 20;
// Packs being written at once: writers wait beyond that, so that memory stays bounded when
// the disk is slower than the writers (each pack in flight holds pack_size bytes).
constexpr int kMaxSealing = 4;
// Staged packs are committed (one flush of the disk for all) once they hold this much.
constexpr uint64_t kCommitBytes = 64ULL << 20;
// Groups staged while one is committed, at most: writers wait beyond that.
constexpr uint64_t kMaxStagedGroups = 4;
// Reads of a block from an object store before a wrong answer counts as damage (see
// ReadBlock).
constexpr int kRemoteReads = 3;

// A super-feature as the resemblance index keys it for writes of `scope`: a bijection of
// the feature for each scope (splitmix64's finalizer), different scopes' keys unrelated.
uint64_t ScopedFeature(uint64_t feature, uint64_t scope) {
  uint64_t x = feature ^ (scope * 0x9E3779B97F4A7C15ULL);
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

// Whole blocks kept decoded as bases (a base is read once for the many deltas built on it).
constexpr size_t kMaxCachedBases = 32;
constexpr uint64_t kMaxCachedBaseBytes = 4ULL << 20;
// Blocks larger than this (a chunk_size far above the default 64 KiB) are never deltas: a
// writer would hold two bases of that size per thread.
constexpr size_t kMaxDeltaBlock = 1ULL << 20;
// Resemblance rows a sweep looks at at least (PruneFeatures): 16 per whole block, ~1 GiB of
// compressible blocks' worth.
constexpr size_t kPruneFeaturesPerSweep = 1 << 18;

}  // namespace

bool IsPackName(std::string_view name) { return IsLowerHex(name, 32); }

std::string NewPackName() { return RandomHex(16); }

PackStore::PackStore(std::unique_ptr<Store> base, PackFiles& packs, PackStoreOptions options)
    : base_(std::move(base)),
      packs_(packs),
      options_(options),
      builder_(
          std::make_unique<PackBuilder>(options.zstd_level, options.pack_size + kBuilderSlack)) {
  // Damage that the base store finds in its chunk files reaches our owner.
  base_->SetDamageHandler(
      [this](const std::string& hash, const std::string& why) { ReportDamage(hash, why); });
  packs_.KeepChunkMarksIn(&chunk_marks_);
}

std::unique_ptr<PackBuilder> PackStore::NewBuilder() {
  // Under write_mutex_ (or before the store is shared).
  if (!spare_buffers_.empty()) {
    PackBytes buffer = std::move(spare_buffers_.back());
    spare_buffers_.pop_back();
    return std::make_unique<PackBuilder>(options_.zstd_level, std::move(buffer));
  }
  return std::make_unique<PackBuilder>(options_.zstd_level, options_.pack_size + kBuilderSlack);
}

PackStore::~PackStore() {
  if (writer_thread_.joinable()) {
    writer_thread_.request_stop();
    writer_cv_.notify_all();
    writer_thread_.join();
  }
  std::unique_lock lock(write_mutex_);
  sealed_cv_.wait(lock, [&] { return sealing_ == 0 && committing_ == 0; });
  std::vector<std::string> names;
  for (const Staged& staged : staged_) names.push_back(staged.name);
  packs_.DiscardStaged(names);  // never flushed: not the store's
}

void PackStore::WriterLoop(std::stop_token stop) {
  std::unique_lock lock(write_mutex_);
  const auto group_ready = [&] { return staged_bytes_ >= kCommitBytes; };
  while (!stop.stop_requested()) {
    if (group_ready()) {
      // Committed here rather than by the writer that staged the last pack: writers go on
      // staging the next group while this one is flushed and indexed.
      std::vector<Staged> batch;
      batch.swap(staged_);
      staged_bytes_ = 0;
      ++committing_;
      lock.unlock();
      CommitStaged(std::move(batch));
      lock.lock();
      continue;
    }
    // The oldest block not yet visible: in the pack being built, or in a staged pack.
    std::optional<std::chrono::steady_clock::time_point> oldest;
    if (!builder_->empty()) oldest = builder_since_;
    if (!staged_.empty() && (!oldest || staged_since_ < *oldest)) oldest = staged_since_;
    if (!oldest) {
      writer_cv_.wait(lock, stop, [&] { return !builder_->empty() || !staged_.empty(); });
      continue;
    }
    const auto due = *oldest + options_.max_pack_age;
    if (std::chrono::steady_clock::now() < due) {
      writer_cv_.wait_until(lock, stop, due, group_ready);
      continue;
    }
    std::unique_ptr<PackBuilder> aged;
    if (!builder_->empty()) {
      aged = std::exchange(builder_, NewBuilder());
      ++sealing_;
    }
    lock.unlock();
    if (aged) Seal(std::move(aged), nullptr);
    CommitAllStaged();  // a slow writer's blocks become durable and visible now
    lock.lock();
  }
}

std::string PackStore::Where(const std::string& pack) const {
  return "pack " + pack + " of store " + base_->uri();
}

void PackStore::Check() {
  base_->Check();
  Reconcile();  // the store may have changed behind the index since it was opened
}

void PackStore::Create() {
  base_->Create();
  Reconcile();
}

BlockIndex& PackStore::Index() {
  {
    std::lock_guard lock(index_mutex_);
    if (index_) return *index_;
  }
  Reconcile();  // opens it
  return *index_;
}

void PackStore::Reconcile() {
  Lost lost;
  {
    std::lock_guard layout(layout_mutex_);
    std::lock_guard lock(index_mutex_);
    if (!index_) index_ = BlockIndex::Open(packs_.IndexFile());
    lost = ReconcileLocked();
  }
  ReportLost(lost);
}

void PackStore::ReportLost(const Lost& lost) {
  for (const auto& [hash, why] : lost) ReportDamage(hash, why);
}

bool PackStore::HasLegacyChunks() {
  {
    std::lock_guard lock(index_mutex_);
    if (legacy_chunks_) return *legacy_chunks_;
  }
  const bool any = !base_->ListChunks().empty();
  std::lock_guard lock(index_mutex_);
  legacy_chunks_ = any;
  return any;
}

PackStore::Lost PackStore::ReconcileLocked() {
  // A store not mounted lists no pack: none is taken for lost.
  base_->RequirePresent();
  Lost lost;
  std::map<std::string, uint64_t> indexed;
  for (auto& [name, size] : index_->Packs()) indexed.emplace(std::move(name), size);
  // Named by blocks of an index moved from format 1 without its size: looked for as well
  // (one gone must not be vouched for, as an object store's packs are without a look), and
  // read from its footer when it is there (which gives its size).
  std::set<std::string> unlisted;
  for (std::string& name : index_->UnlistedPacks()) {
    indexed.emplace(name, 0);
    unlisted.insert(std::move(name));
  }
  const std::vector<std::pair<std::string, uint64_t>> listed = packs_.ListPacks();
  std::set<std::string> held;
  for (const auto& [name, size] : listed) held.insert(name);
  // Packs gone first, new ones next: a block that another process (or host) moved from a
  // pack it then dropped into a new one is found in the new one, not reported lost.
  Lost gone;
  for (const auto& [name, size] : indexed) {
    if (held.contains(name)) continue;
    // A listing is not proof: an answer damaged on the way may leave a pack out. A HEAD is.
    if (packs_.RemoteReads() && packs_.StatPack(name)) continue;
    ForgetVanishedLocked(name, gone);
  }
  bool added = false;
  for (const auto& [name, size] : listed) {
    if (!indexed.contains(name) || unlisted.contains(name)) {
      const bool indexed_now = IndexFromFooter(name, size);
      added = indexed_now || added;
      // Not a whole pack (set aside), or gone while read: what the move named in it goes.
      if (!indexed_now && unlisted.contains(name)) ForgetVanishedLocked(name, gone);
    }
  }
  // A pack indexed from its footer may hold deltas whose bases no pack holds.
  if (added) {
    for (std::string& delta : index_->RemoveOrphanDeltas()) {
      lost.emplace_back(std::move(delta),
                        "a base of this delta block is in no pack of store " + base_->uri());
    }
  }
  if (gone.empty()) return lost;
  std::vector<std::string> hashes;
  for (const auto& [hash, why] : gone) hashes.push_back(hash);
  const std::vector<std::optional<BlockLocation>> found = index_->Lookup(hashes);
  for (size_t i = 0; i < gone.size(); ++i) {
    if (!found[i]) lost.push_back(std::move(gone[i]));
  }
  return lost;
}

bool PackStore::IndexFromFooter(const std::string& pack, uint64_t size) {
  // An object store's listing (the size) and answers (the footer) may be damaged on the way:
  // there, a footer found wrong is read again, at the size a HEAD gives, before the pack is
  // set aside (which deletes it from a bucket).
  for (int read = 1;; ++read) {
    std::vector<std::byte> tail(static_cast<size_t>(std::min<uint64_t>(size, kPackTrailerSize)));
    try {
      if (!packs_.ReadPack(pack, size - tail.size(), tail, nullptr)) return false;
      const uint64_t footer = PackFooterSize(tail, Where(pack));
      if (footer > size) {
        throw IntegrityError(codes::kIntegrityError, Where(pack) + " is shorter than its footer");
      }
      tail.resize(static_cast<size_t>(footer));
      if (!packs_.ReadPack(pack, size - footer, tail, nullptr)) return false;
      index_->AddPack(pack, size, ParsePackFooter(tail, size, Where(pack)));
      return true;
    } catch (const IntegrityError& e) {
      if (packs_.RemoteReads() && read < kRemoteReads) {
        std::optional<PackStat> stat = packs_.StatPack(pack);
        if (!stat) return false;
        size = stat->size;
        continue;
      }
      // Not a whole pack: a write cut short by hand, or damage. Nothing indexes its blocks.
      Log(LogLevel::kWarning, std::string(e.what()) + "; set aside");
      packs_.QuarantinePack(pack);
      return false;
    }
  }
}

void PackStore::ForgetVanishedLocked(const std::string& pack, Lost& lost) {
  for (const PackEntry& entry : index_->EntriesOf(pack)) {
    lost.emplace_back(entry.hash, Where(pack) + " that held it is gone");
  }
  index_->RemovePack(pack);
  for (std::string& delta : index_->RemoveOrphanDeltas()) {
    lost.emplace_back(std::move(delta),
                      "a base of this delta block was in " + Where(pack) + ", which is gone");
  }
}

void PackStore::PackVanished(const std::string& pack) {
  base_->RequirePresent();  // its disk not mounted: unavailable, nothing lost
  // An object store's index is this host's cache: another host may have repacked the
  // blocks; a reconcile finds them where they went and reports only the others.
  if (packs_.RemoteReads()) return Reconcile();
  Lost lost;
  {
    std::lock_guard lock(index_mutex_);
    ForgetVanishedLocked(pack, lost);
  }
  ReportLost(lost);
}

bool PackStore::HasChunk(const std::string& hash, const CancelToken* cancel) {
  {
    std::lock_guard lock(write_mutex_);
    if (pending_.contains(hash)) return true;
  }
  if (Index().Lookup({hash})[0]) return true;
  return HasLegacyChunks() && base_->HasChunk(hash, cancel);
}

bool PackStore::HasChunkOfLength(const std::string& hash, uint64_t length,
                                 const CancelToken* cancel) {
  // Blocks still being written do not count: a confirmation must see them indexed.
  BlockPresence found = Index().Presence({hash});
  // Vouch() is true only for a pack untouched or re-read and found right in every block (a
  // delta's bases' packs are vouched for with its own).
  if (found.pack_of[0] >= 0 && found.raw_length[0] == length &&
      std::all_of(found.packs.begin(), found.packs.end(),
                  [&](const std::string& pack) { return Vouch(pack); })) {
    return true;
  }
  return HasLegacyChunks() && base_->HasChunkOfLength(hash, length, cancel);
}

std::vector<bool> PackStore::HasChunks(const std::vector<std::string>& hashes,
                                       const CancelToken* cancel,
                                       const std::vector<uint64_t>& lengths) {
  if (!lengths.empty() && lengths.size() != hashes.size()) {
    throw std::invalid_argument("HasChunks: one length per hash");
  }
  // On an object store the index is only a cache, and Vouch() trusts its packs: packs lost
  // behind it (a bucket emptied mid-copy, objects deleted by hand) must not be vouched for
  // when a copy plans or confirms before it commits: the first lookup after a flush lists
  // packs/ once (an import's lookups between flushes, one per 4 MiB, do not).
  if (packs_.RemoteReads() && reconcile_due_.exchange(false)) Reconcile();
  // One look at each pack, however many of its blocks are asked for. A pack not vouched for
  // had its bad blocks forgotten (or vanished), and the index is asked again: the packs of
  // that answer are vouched for in turn (another writer may have committed one meanwhile),
  // until an answer holds only packs vouched for. One that never settles counts nothing.
  constexpr int kMaxAnswers = 4;
  std::unordered_set<std::string> vouched;
  BlockPresence found;
  for (int answer = 1;; ++answer) {
    found = Index().Presence(hashes);
    bool forgot = false;
    for (const std::string& pack : found.packs) {
      if (vouched.contains(pack)) continue;
      if (Vouch(pack)) {
        vouched.insert(pack);
      } else {
        forgot = true;
      }
    }
    if (!forgot) break;
    if (answer == kMaxAnswers) {
      found.pack_of.assign(hashes.size(), -1);
      break;
    }
  }
  std::vector<bool> present(hashes.size(), false);
  std::vector<std::string> rest;
  std::vector<uint64_t> rest_lengths;
  std::vector<size_t> rest_at;
  for (size_t i = 0; i < hashes.size(); ++i) {
    if (found.pack_of[i] >= 0 && (lengths.empty() || found.raw_length[i] == lengths[i])) {
      present[i] = true;
    } else {
      rest.push_back(hashes[i]);
      if (!lengths.empty()) rest_lengths.push_back(lengths[i]);
      rest_at.push_back(i);
    }
  }
  if (!rest.empty() && HasLegacyChunks()) {
    std::vector<bool> legacy = base_->HasChunks(rest, cancel, rest_lengths);
    for (size_t k = 0; k < rest.size() && k < legacy.size(); ++k) present[rest_at[k]] = legacy[k];
  }
  return present;
}

bool PackStore::ClaimToWrite(const std::string& hash) {
  if (Index().Kept(hash)) return false;
  // Not in a pack on its way (the flush commits it), nor being read by another copy to be
  // written.
  std::lock_guard lock(write_mutex_);
  return !pending_.contains(hash) && claimed_.insert(hash).second;
}

bool PackStore::Vouch(const std::string& pack) {
  if (packs_.RemoteReads()) return true;  // an object store's objects are as written
  std::optional<PackStat> stat = packs_.StatPack(pack);
  if (!stat) {
    PackVanished(pack);
    return false;
  }
  if (!stat->mark.empty() && stat->mark == Index().MarkOf(pack)) return true;
  return RecheckPack(pack, stat->mark);
}

std::string PackStore::MarkOfWritten(const std::string& pack) {
  // An object store gives no marks (its objects are as written): no request for one.
  if (packs_.RemoteReads()) return {};
  std::optional<PackStat> stat = packs_.StatPack(pack);
  return stat ? stat->mark : std::string();
}

bool PackStore::RecheckPack(const std::string& pack, const std::string& mark) {
  std::vector<PackEntry> entries = Index().EntriesOf(pack);
  std::vector<std::byte> stored;
  std::vector<std::byte> raw;
  bool all_right = true;
  for (const PackEntry& entry : entries) {
    stored.resize(entry.stored_length);
    try {
      if (!packs_.ReadPack(pack, entry.offset, stored, nullptr)) stored.clear();
      DecodeEntry(stored, entry, raw, pack);
    } catch (const DamagedChunkError& e) {
      all_right = false;
      ForgetDamaged(entry.hash, e.what());
    }
  }
  // The mark taken before the reads: a write during them leaves the pack unvouched for.
  if (all_right && !mark.empty()) Index().SetMark(pack, mark);
  return all_right;
}

uint64_t PackStore::PutChunk(const std::string& hash, std::span<const std::byte> data,
                             const CancelToken* cancel) {
  {
    std::lock_guard lock(write_mutex_);
    if (pending_.contains(hash)) return 0;
  }
  // No index lookup: callers write what a lookup found missing (a block written twice by
  // two writers at once costs only its space, until a sweep rewrites its pack).
  thread_local std::vector<std::byte> scratch;
  const EncodedBlock encoded = EncodeBlock(data, options_.zstd_level, scratch);
  if (encoded.codec == BlockCodec::kZstd) return PutCompressed(hash, data, encoded, cancel);
  return PutEncoded(hash, encoded, static_cast<uint32_t>(data.size()), cancel);
}

bool PackStore::Sketches(std::span<const std::byte> raw) const {
  return options_.deltas && raw.size() <= kMaxDeltaBlock;
}

const std::vector<uint64_t>& PackStore::ScopedSketch(std::span<const std::byte> raw) {
  thread_local std::vector<uint64_t> features;
  SketchBlock(raw, features);
  // Keyed by the writer's scope too: bases are found only among blocks written for the same
  // owner, so that a delta's size tells nothing of another account's data (WriteScope).
  const uint64_t scope = WriteScope::Current();
  for (uint64_t& feature : features) feature = ScopedFeature(feature, scope);
  return features;
}

uint64_t PackStore::PutCompressed(const std::string& hash, std::span<const std::byte> raw,
                                  EncodedBlock whole, const CancelToken* cancel) {
  const auto raw_length = static_cast<uint32_t>(raw.size());
  if (!Sketches(raw)) return PutEncoded(hash, whole, raw_length, cancel);
  const std::vector<uint64_t>& features = ScopedSketch(raw);
  std::vector<std::string> similar = Index().SimilarBlocks(features, kMaxBases);
  std::erase(similar, hash);
  if (!similar.empty()) {
    thread_local JoinedBases joined;
    thread_local std::vector<std::byte> one_base;
    thread_local std::vector<std::byte> two_bases;
    try {
      // Against the block it resembles most; kept only if that saves at least an eighth (a
      // delta costs its bases' reads).
      ReadBases(hash, similar[0], joined, cancel, BaseCheck::kChecked);  // encoded against
      const size_t limit = whole.bytes.size() - whole.bytes.size() / 8;
      std::optional<EncodedBlock> delta =
          EncodeDelta(raw, joined.bytes(), options_.zstd_level, limit, one_base);
      std::string bases = similar[0];
      if (similar.size() > 1) {
        // The second joins only if it saves another quarter: each base costs every read of
        // the delta a decompression.
        const size_t limit2 = delta ? delta->bytes.size() - delta->bytes.size() / 4 : limit;
        ReadBases(hash, similar[0] + similar[1], joined, cancel, BaseCheck::kChecked);
        if (std::optional<EncodedBlock> joint =
                EncodeDelta(raw, joined.bytes(), options_.zstd_level, limit2, two_bases)) {
          delta = joint;
          bases = similar[0] + similar[1];
        }
      }
      if (delta) return PutEncoded(hash, *delta, raw_length, cancel, bases);
    } catch (const DamagedChunkError&) {
      // A base found damaged (forgotten and reported): the block is stored whole.
    }
  }
  return PutEncoded(hash, whole, raw_length, cancel, {}, features);
}

void PackStore::ReadBases(const std::string& delta, const std::string& bases, JoinedBases& out,
                          const CancelToken* cancel, BaseCheck check, bool direct) {
  out.held_.clear();
  for (const std::string& base : SplitBases(bases)) {
    std::shared_ptr<const UninitializedBytes> bytes;
    bool checked = false;
    {
      std::lock_guard lock(base_cache_mutex_);
      auto it = std::find_if(base_cache_.begin(), base_cache_.end(),
                             [&](const CachedBase& cached) { return cached.hash == base; });
      if (it != base_cache_.end()) {
        bytes = it->bytes;
        checked = it->checked;
        base_cache_.splice(base_cache_.begin(), base_cache_, it);
      }
    }
    if (bytes && !checked && check == BaseCheck::kChecked) {
      // Read unchecked by a reader: checked now, or read again.
      checked = Sha256Hex(bytes->data(), bytes->size()) == base;
      if (!checked) bytes.reset();
    }
    if (!bytes) {
      auto read = std::make_shared<UninitializedBytes>();
      checked = check == BaseCheck::kChecked || !ReadBaseUnchecked(base, *read, cancel, direct);
      if (checked) ReadBaseChecked(delta, base, *read, cancel, direct);
      bytes = std::move(read);
    }
    {
      std::lock_guard lock(base_cache_mutex_);
      std::erase_if(base_cache_, [&](const CachedBase& cached) {
        if (cached.hash != base) return false;
        base_cache_bytes_ -= cached.bytes->size();
        return true;
      });
      base_cache_.push_front({base, bytes, checked});
      base_cache_bytes_ += bytes->size();
      while (base_cache_.size() > kMaxCachedBases || base_cache_bytes_ > kMaxCachedBaseBytes) {
        base_cache_bytes_ -= base_cache_.back().bytes->size();
        base_cache_.pop_back();
      }
    }
    out.held_.push_back(std::move(bytes));
  }
  if (out.held_.size() == 1) {
    out.bytes_ = *out.held_[0];
  } else {
    out.joined_.clear();
    for (const auto& held : out.held_)
      out.joined_.insert(out.joined_.end(), held->begin(), held->end());
    out.bytes_ = out.joined_;
  }
}

bool PackStore::ReadBaseUnchecked(const std::string& base, UninitializedBytes& out,
                                  const CancelToken* cancel, bool direct) {
  std::optional<BlockLocation> where;
  if (!direct) {
    std::lock_guard lock(planned_mutex_);
    if (auto it = planned_bases_.find(base); it != planned_bases_.end()) where = it->second;
  }
  if (!where) where = Index().Lookup({base})[0];
  if (!where || !where->bases.empty()) return false;
  out.resize(where->raw_length);
  thread_local std::vector<std::byte> stored;
  const bool raw = where->codec == BlockCodec::kRaw;
  std::span<std::byte> target(out);
  if (!raw) {
    stored.resize(where->stored_length);
    target = stored;
  }
  const bool whole = direct ? packs_.ReadPack(where->pack, where->offset, target, cancel)
                            : ReadRange(where->pack, where->offset, target, cancel);
  const PackEntry entry = EntryAt(base, *where);
  return whole && DecodeBaseUnchecked(target, entry, out);
}

void PackStore::ReadBaseChecked(const std::string& delta, const std::string& base,
                                UninitializedBytes& out, const CancelToken* cancel, bool direct) {
  {
    std::lock_guard lock(planned_mutex_);
    planned_bases_.erase(base);  // looked up afresh below: a planned place may be stale
  }
  try {
    std::optional<BlockLocation> where = Index().Lookup({base})[0];
    // Only a whole block is a base: a read never follows a chain.
    if (!where || !where->bases.empty()) {
      throw DamagedChunkError(base, "block " + base + " is missing in store " + uri());
    }
    out.resize(where->raw_length);
    std::vector<std::byte> stored;
    if (direct) {
      stored.resize(where->stored_length);
      if (!packs_.ReadPack(where->pack, where->offset, stored, cancel)) stored.clear();
      DecodeBlockInto(stored, EntryAt(base, *where), out, Where(where->pack));
    } else {
      ReadLocated(*where, base, out, stored, cancel);
    }
  } catch (const DamagedChunkError& e) {
    ForgetDamaged(base, e.what());
    throw DamagedChunkError(delta, "block " + delta + " in store " + uri() +
                                       " cannot be decoded: its base " + e.what());
  }
}

void PackStore::ForgetDamaged(const std::string& hash, const std::string& why, bool report_self) {
  std::vector<std::string> built_on = Index().RemoveBlock(hash);
  {
    std::lock_guard lock(base_cache_mutex_);
    std::erase_if(base_cache_, [&](const CachedBase& cached) {
      if (cached.hash != hash) return false;
      base_cache_bytes_ -= cached.bytes->size();
      return true;
    });
  }
  if (report_self) ReportDamage(hash, why);
  for (const std::string& delta : built_on) {
    ReportDamage(delta,
                 "block " + delta + " is a delta of block " + hash + ", which is damaged: " + why);
  }
}

void PackStore::DecodeEntry(std::span<const std::byte> stored, const PackEntry& entry,
                            std::vector<std::byte>& out, const std::string& pack, bool direct) {
  if (entry.bases.empty()) return DecodeBlock(stored, entry, out, Where(pack));
  JoinedBases bases;
  ReadBases(entry.hash, entry.bases, bases, nullptr, BaseCheck::kUnchecked, direct);
  try {
    return DecodeBlock(stored, entry, out, Where(pack), bases.bytes());
  } catch (const DamagedChunkError&) {
    // Perhaps a base, not the delta: read checked, a bad base is found and reported.
  }
  ReadBases(entry.hash, entry.bases, bases, nullptr, BaseCheck::kChecked, direct);
  DecodeBlock(stored, entry, out, Where(pack), bases.bytes());
}

uint64_t PackStore::PutStoredChunk(const std::string& hash, std::span<const std::byte> data,
                                   const StoredChunk& stored, const CancelToken* cancel) {
  // A store that keeps blocks raw (zstd level 0) keeps them so whatever their source did.
  if (!stored.codec || options_.zstd_level <= 0 ||
      (*stored.codec != BlockCodec::kRaw && stored.bytes.empty())) {
    return PutChunk(hash, data, cancel);
  }
  if (*stored.codec == BlockCodec::kZstdDelta) {
    // As it is where this store holds its bases whole (so it decodes here to what the source
    // decoded it to: the same bases, the same bytes); the index refuses it at commit if a base
    // has gone meanwhile. Else the block is written as any new block.
    const std::vector<std::string> bases = SplitBases(stored.bases);
    if (!options_.deltas || bases.empty() || bases.size() > kMaxBases ||
        std::find(bases.begin(), bases.end(), hash) != bases.end()) {
      return PutChunk(hash, data, cancel);
    }
    // (A hint: AddPacks checks the bases again as it indexes the pack.)
    for (const std::optional<BlockLocation>& base : Index().LookupHint(bases)) {
      if (!base || !base->bases.empty()) return PutChunk(hash, data, cancel);
    }
    return PutEncoded(hash, {BlockCodec::kZstdDelta, std::span<const std::byte>(stored.bytes)},
                      static_cast<uint32_t>(data.size()), cancel, stored.bases);
  }
  // The source decoded these very bytes into `data` and checked them against `hash`: they
  // are written as they are, not compressed a second time (most of a copy's CPU otherwise).
  if (*stored.codec == BlockCodec::kRaw) {
    return PutEncoded(hash, {BlockCodec::kRaw, data}, static_cast<uint32_t>(data.size()), cancel);
  }
  // Compressed whole: kept so. Its source wrote it whole because no block there made a delta
  // worth it, and a region holding what its source holds finds none either (a copy keeps the
  // form its source chose: an image costs each region what it costs the source). Sketched,
  // so that blocks written here later find it as a base.
  const EncodedBlock whole{BlockCodec::kZstd, std::span<const std::byte>(stored.bytes)};
  const auto raw_length = static_cast<uint32_t>(data.size());
  if (!Sketches(data)) return PutEncoded(hash, whole, raw_length, cancel);
  return PutEncoded(hash, whole, raw_length, cancel, {}, ScopedSketch(data));
}

uint64_t PackStore::PutEncoded(const std::string& hash, EncodedBlock encoded, uint32_t raw_length,
                               const CancelToken* cancel, const std::string& bases,
                               const std::vector<uint64_t>& features) {
  std::unique_ptr<PackBuilder> full;
  {
    std::unique_lock lock(write_mutex_);
    sealed_cv_.wait(lock, [&] {
      return sealing_ < kMaxSealing && staged_bytes_ < kMaxStagedGroups * kCommitBytes;
    });
    claimed_.erase(hash);
    if (!pending_.insert(hash).second) return 0;
    if (builder_->empty()) {
      builder_since_ = std::chrono::steady_clock::now();
      if (!writer_thread_.joinable()) {
        writer_thread_ = std::jthread([this](std::stop_token stop) { WriterLoop(stop); });
      }
      writer_cv_.notify_all();
    }
    builder_->AddEncoded(hash, encoded, raw_length, bases);
    builder_->AddFeatures(features);
    // Full; a pack waiting long is written by WriterLoop.
    if (builder_->size() >= options_.pack_size) {
      full = std::exchange(builder_, NewBuilder());
      ++sealing_;
    }
  }
  if (full) Seal(std::move(full), cancel);
  return encoded.bytes.size();
}

void PackStore::Seal(std::unique_ptr<PackBuilder> builder, const CancelToken* cancel) {
  std::vector<PackEntry> entries = builder->entries();
  std::vector<std::pair<uint64_t, uint32_t>> features = builder->features();
  try {
    PackBytes bytes = builder->Finish();
    Staged staged{NewPackName(), bytes.size(), {}, {}, {}};
    packs_.StagePack(staged.name, bytes, cancel);
    staged.entries = std::move(entries);
    staged.features = std::move(features);
    std::lock_guard lock(write_mutex_);
    if (spare_buffers_.size() < kMaxSealing + 1) spare_buffers_.push_back(std::move(bytes));
    staged_bytes_ += staged.size;
    if (staged_.empty()) {
      staged_since_ = std::chrono::steady_clock::now();
      writer_cv_.notify_all();
    }
    staged_.push_back(std::move(staged));
    if (staged_bytes_ >= kCommitBytes) writer_cv_.notify_all();  // WriterLoop commits the group
  } catch (const Cancelled&) {
    // The writer gave up (its copy was cancelled): the pack's blocks are not in the store,
    // and any other copy that put some of them finds them missing when it confirms.
    std::lock_guard lock(write_mutex_);
    for (const PackEntry& entry : entries) pending_.erase(entry.hash);
  } catch (const std::exception& e) {
    std::lock_guard lock(write_mutex_);
    for (const PackEntry& entry : entries) pending_.erase(entry.hash);
    write_error_ = e.what();
  }
  std::lock_guard lock(write_mutex_);
  --sealing_;
  sealed_cv_.notify_all();
}

void PackStore::CommitStaged(std::vector<Staged> batch) {
  std::string error;
  try {
    std::vector<std::string> names;
    for (const Staged& staged : batch) names.push_back(staged.name);
    packs_.CommitPacks(names);
    // Marked as committed (a rename moves a file's change time): what the store wrote.
    for (Staged& staged : batch) staged.mark = MarkOfWritten(staged.name);
    Index().AddPacks(batch);
  } catch (const std::exception& e) {
    error = e.what();
  }
  std::lock_guard lock(write_mutex_);
  for (const Staged& staged : batch) {
    for (const PackEntry& entry : staged.entries) pending_.erase(entry.hash);
  }
  if (!error.empty()) write_error_ = error;
  --committing_;
  sealed_cv_.notify_all();
}

void PackStore::CommitAllStaged(const CancelToken* cancel) {
  std::vector<Staged> batch;
  {
    std::unique_lock lock(write_mutex_);
    WaitWritesLocked(lock, cancel);
    batch.swap(staged_);
    staged_bytes_ = 0;
    if (batch.empty()) return;
    ++committing_;
  }
  CommitStaged(std::move(batch));
}

void PackStore::CommitEverything() {
  std::unique_ptr<PackBuilder> last;
  std::vector<Staged> batch;
  {
    // Once no other thread is sealing or committing a pack (local writes: no cancel), the
    // pack being built and the staged ones are this commit's.
    std::unique_lock lock(write_mutex_);
    sealed_cv_.wait(lock, [&] { return sealing_ == 0 && committing_ == 0; });
    if (!builder_->empty()) last = std::exchange(builder_, NewBuilder());
    batch.swap(staged_);
    staged_bytes_ = 0;
    if (!last && batch.empty()) return;
    ++committing_;
  }
  PackBytes bytes;
  std::string error;
  try {
    if (last) {
      Staged staged{NewPackName(), 0, last->entries(), {}, last->features()};
      bytes = last->Finish();
      staged.size = bytes.size();
      batch.push_back(std::move(staged));
    }
    std::vector<std::string> names;
    for (const Staged& pack : batch) names.push_back(pack.name);
    // The rows go into the index's transaction (on a helper thread) while the last pack is
    // written and the group made durable here; it commits only once they are: no index names
    // a pack a crash loses. (A flush's index rows take about as long as its pack's write.)
    std::promise<std::vector<std::string>> durable;
    std::future<std::vector<std::string>> marks = durable.get_future();
    std::exception_ptr index_error;
    BlockIndex& index = Index();
    std::thread indexer([&] {
      try {
        index.AddPacks(batch, [&] { return marks.get(); });
      } catch (...) {
        index_error = std::current_exception();
      }
    });
    try {
      if (last) packs_.StagePack(names.back(), bytes, nullptr);
      packs_.CommitPacks(names);
      // Marked as committed (a rename moves a file's change time): what the store wrote.
      std::vector<std::string> written;
      for (const std::string& name : names) written.push_back(MarkOfWritten(name));
      durable.set_value(std::move(written));
    } catch (...) {
      durable.set_exception(std::current_exception());  // nothing is indexed
      indexer.join();
      packs_.DiscardStaged(names);
      throw;
    }
    indexer.join();
    if (index_error) std::rethrow_exception(index_error);
  } catch (const std::exception& e) {
    error = e.what();
  }
  std::lock_guard lock(write_mutex_);
  if (last && spare_buffers_.size() < kMaxSealing + 1) spare_buffers_.push_back(std::move(bytes));
  for (const Staged& pack : batch) {
    for (const PackEntry& entry : pack.entries) pending_.erase(entry.hash);
  }
  if (last) {  // (also if it failed before it joined the batch)
    for (const PackEntry& entry : last->entries()) pending_.erase(entry.hash);
  }
  if (!error.empty()) write_error_ = error;
  --committing_;
  sealed_cv_.notify_all();
}

void PackStore::Flush(const CancelToken* cancel) {
  if (!packs_.RemoteReads()) {
    CommitEverything();
  } else {
    // An object store's upload may be long (and is cancellable): made before the index is
    // locked for writing, not while.
    std::unique_ptr<PackBuilder> last;
    {
      std::lock_guard lock(write_mutex_);
      if (!builder_->empty()) {
        last = std::exchange(builder_, NewBuilder());
        ++sealing_;
      }
    }
    if (last) Seal(std::move(last), cancel);
    CommitAllStaged(cancel);
  }
  reconcile_due_ = true;  // the confirmation that follows a flush looks at the store itself
  std::unique_lock lock(write_mutex_);
  WaitWritesLocked(lock, cancel);
  // Claims never written (their copy failed or was cancelled) go: whoever skipped them for
  // it finds them missing when it confirms, after this flush, and writes them.
  claimed_.clear();
  if (!write_error_.empty()) {
    // The blocks of a pack that could not be written are not in the store: whoever counts on
    // them finds them missing when it confirms, and this says why.
    std::string error = std::exchange(write_error_, "");
    throw TransferError(codes::kTransferFailed,
                        "a pack could not be written to store " + base_->uri() + ": " + error);
  }
}

void PackStore::WaitWritesLocked(std::unique_lock<std::mutex>& lock, const CancelToken* cancel) {
  // A write in flight may be stalled on a server: a cancel ends the wait (its own request,
  // if it made one, is aborted by the same token).
  while (sealing_ != 0 || committing_ != 0) {
    if (cancel != nullptr && cancel->cancelled()) throw Cancelled{};
    sealed_cv_.wait_for(lock, std::chrono::milliseconds(50));
  }
}

void PackStore::PutManifest(const std::string& image_id, const Manifest& manifest) {
  Flush();  // no manifest names a block before it is in a pack
  base_->PutManifest(image_id, manifest);
}

void PackStore::GetChunk(const std::string& hash, std::vector<std::byte>& out,
                         const CancelToken* cancel) {
  std::optional<BlockLocation> where = Locate(hash);
  if (!where) return ReadLegacy(hash, out, cancel);
  out.resize(where->raw_length);
  thread_local std::vector<std::byte> stored;
  ReadLocated(*where, hash, out, stored, cancel);
}

size_t PackStore::GetChunkInto(const std::string& hash, std::span<std::byte> out,
                               const CancelToken* cancel) {
  thread_local std::vector<std::byte> stored;
  ReadChunk(hash, out, stored, cancel);
  return out.size();
}

size_t PackStore::GetChunkStoredInto(const std::string& hash, std::span<std::byte> out,
                                     StoredChunk& stored, const CancelToken* cancel) {
  DescribeStored(ReadChunk(hash, out, stored.bytes, cancel), stored);
  return out.size();
}

void PackStore::DescribeStored(const std::optional<BlockLocation>& where, StoredChunk& stored) {
  stored.codec.reset();
  stored.bases.clear();
  if (!where) {
    stored.bytes.clear();
  } else if (where->codec == BlockCodec::kRaw) {
    stored.bytes.clear();  // the stored form is `out` itself
    // Raw because compressing did not pay, unless this store never compresses.
    if (options_.zstd_level > 0) stored.codec = BlockCodec::kRaw;
  } else {
    // Compressed, or a delta (decoded against its bases and checked), with its bases.
    stored.codec = where->codec;
    stored.bases = where->bases;
  }
}

bool PackStore::ReadsPairs() const { return !packs_.RemoteReads() && Sha256PairInterleaves(); }

std::pair<std::optional<BlockLocation>, std::optional<BlockLocation>> PackStore::LocatePair(
    const std::string& hash_a, const std::string& hash_b) {
  try {
    std::optional<BlockLocation> a = Locate(hash_a);
    return {std::move(a), Locate(hash_b)};
  } catch (...) {
    return {};  // the one-block reads find, retry and report
  }
}

bool PackStore::GetChunkPair(const std::string& hash_a, std::vector<std::byte>& out_a,
                             const std::string& hash_b, std::vector<std::byte>& out_b,
                             const CancelToken* cancel) {
  if (!ReadsPairs()) return false;
  const auto [a, b] = LocatePair(hash_a, hash_b);
  if (!a || !b) return false;
  out_a.resize(a->raw_length);
  out_b.resize(b->raw_length);
  thread_local StoredChunk stored_a;  // their stored forms: not wanted here
  thread_local StoredChunk stored_b;
  return ReadPairLocated(*a, hash_a, out_a, stored_a, *b, hash_b, out_b, stored_b, cancel);
}

bool PackStore::GetChunkPairStoredInto(const std::string& hash_a, std::span<std::byte> out_a,
                                       StoredChunk& stored_a, const std::string& hash_b,
                                       std::span<std::byte> out_b, StoredChunk& stored_b,
                                       const CancelToken* cancel) {
  if (!ReadsPairs()) return false;
  const auto [a, b] = LocatePair(hash_a, hash_b);
  if (!a || !b || a->raw_length != out_a.size() || b->raw_length != out_b.size()) return false;
  return ReadPairLocated(*a, hash_a, out_a, stored_a, *b, hash_b, out_b, stored_b, cancel);
}

bool PackStore::ReadPairLocated(const BlockLocation& a, const std::string& hash_a,
                                std::span<std::byte> out_a, StoredChunk& stored_a,
                                const BlockLocation& b, const std::string& hash_b,
                                std::span<std::byte> out_b, StoredChunk& stored_b,
                                const CancelToken* cancel) {
  try {
    if (!ReadBlockUnchecked(a, hash_a, out_a, stored_a.bytes, cancel) ||
        !ReadBlockUnchecked(b, hash_b, out_b, stored_b.bytes, cancel)) {
      return false;
    }
    // Checked here, both at once: what does not match is read again alone (false).
    std::string actual_a;
    std::string actual_b;
    Sha256HexPair(out_a, out_b, actual_a, actual_b);
    if (actual_a != hash_a || actual_b != hash_b) return false;
    DescribeStored(a, stored_a);
    DescribeStored(b, stored_b);
    return true;
  } catch (...) {
    // Damaged, moved by a sweep, cancelled: the one-block path retries, names and reports.
    return false;
  }
}

bool PackStore::GetChunkUncheckedInto(const std::string& hash, std::span<std::byte> out,
                                      const CancelToken* cancel) {
  if (!ReadsPairs()) return false;
  try {
    const std::optional<BlockLocation> where = Locate(hash);
    if (!where || where->raw_length != out.size()) return false;
    thread_local std::vector<std::byte> stored;
    return ReadBlockUnchecked(*where, hash, out, stored, cancel);
  } catch (...) {
    // Damaged, moved by a sweep, cancelled: the checked read retries, names and reports.
    return false;
  }
}

std::span<std::byte> PackStore::StoredTarget(const BlockLocation& where, std::span<std::byte> out,
                                             std::vector<std::byte>& stored) {
  // A raw block is read straight into the caller's memory; a compressed one into `stored`,
  // then decompressed into it.
  if (where.codec == BlockCodec::kRaw && where.stored_length == out.size()) return out;
  stored.resize(where.stored_length);
  return stored;
}

bool PackStore::ReadBlockUnchecked(const BlockLocation& where, const std::string& hash,
                                   std::span<std::byte> out, std::vector<std::byte>& stored,
                                   const CancelToken* cancel) {
  thread_local JoinedBases joined;
  if (!where.bases.empty()) ReadBases(hash, where.bases, joined, cancel, BaseCheck::kUnchecked);
  const std::span<std::byte> target = StoredTarget(where, out, stored);
  if (!ReadRange(where.pack, where.offset, target, cancel)) return false;
  DecodeBlockUnchecked(target, EntryAt(hash, where), out, Where(where.pack),
                       where.bases.empty() ? std::span<const std::byte>() : joined.bytes());
  return true;
}

std::optional<BlockLocation> PackStore::Locate(const std::string& hash) {
  {
    // Planned: located by the plan's one lookup. If a sweep has moved the block since, the
    // read fails its check and ReadLocated looks it up again.
    std::lock_guard lock(planned_mutex_);
    auto planned = planned_where_.extract(hash);
    if (planned) return std::move(planned.mapped());
  }
  std::optional<BlockLocation> where = Index().Lookup({hash})[0];
  if (!where) {
    bool pending = false;
    {
      std::lock_guard lock(write_mutex_);
      pending = pending_.contains(hash);
    }
    if (pending) {
      Flush();
      where = Index().Lookup({hash})[0];
    }
  }
  if (!where && packs_.RemoteReads()) {
    Reconcile();  // another host may have written it since the index was brought in line
    where = Index().Lookup({hash})[0];
  }
  return where;
}

void PackStore::ReadLegacy(const std::string& hash, std::vector<std::byte>& out,
                           const CancelToken* cancel) {
  if (!HasLegacyChunks()) {
    out.clear();
    throw TransferError(codes::kTransferFailed,
                        "chunk " + hash + " is missing in store " + base_->uri());
  }
  base_->GetChunk(hash, out, cancel);
  if (Sha256Hex(out.data(), out.size()) != hash) {
    throw DamagedChunkError(hash, "chunk " + hash + " in store " + base_->uri() +
                                      " is corrupt: its content does not match its name; "
                                      "run `imagerelay scrub`");
  }
}

std::optional<BlockLocation> PackStore::ReadChunk(const std::string& hash, std::span<std::byte> out,
                                                  std::vector<std::byte>& stored,
                                                  const CancelToken* cancel) {
  if (std::optional<BlockLocation> where = Locate(hash)) {
    return ReadLocated(*where, hash, out, stored, cancel);
  }
  // A chunk file of an earlier release: read whole (its length is the file's), then checked.
  thread_local std::vector<std::byte> whole;
  ReadLegacy(hash, whole, cancel);
  if (whole.size() != out.size()) throw WrongLengthChunk(hash, uri(), whole.size(), out.size());
  std::copy(whole.begin(), whole.end(), out.begin());
  return std::nullopt;
}

BlockLocation PackStore::ReadLocated(BlockLocation where, const std::string& hash,
                                     std::span<std::byte> out, std::vector<std::byte>& stored,
                                     const CancelToken* cancel) {
  // The index knows the block's length: a caller expecting another is refused before a
  // byte is read (no block is decoded past the end of the caller's memory).
  if (where.raw_length != out.size()) {
    throw WrongLengthChunk(hash, uri(), where.raw_length, out.size());
  }
  try {
    ReadBlock(where, hash, out, stored, cancel);
  } catch (const DamagedChunkError&) {
    // A sweep (of this process, or another's) may have moved the block into a new pack and
    // dropped the old one since the lookup: read it where the index says now.
    if (packs_.RemoteReads()) Reconcile();
    std::optional<BlockLocation> now = Index().Lookup({hash})[0];
    if (!now || now->pack == where.pack) throw;
    where = *now;
    ReadBlock(where, hash, out, stored, cancel);
  }
  return where;
}

void PackStore::ReadBlock(const BlockLocation& where, const std::string& hash,
                          std::span<std::byte> out, std::vector<std::byte>& stored,
                          const CancelToken* cancel) {
  const PackEntry entry = EntryAt(hash, where);
  // A delta's bases first (each read and checked like any block).
  // Unchecked: the delta's own check below covers them (see BaseCheck).
  thread_local JoinedBases joined;
  bool bases_checked = where.bases.empty();
  if (!bases_checked) ReadBases(hash, where.bases, joined, cancel, BaseCheck::kUnchecked);
  std::span<const std::byte> bases =
      where.bases.empty() ? std::span<const std::byte>() : joined.bytes();
  const std::span<std::byte> target = StoredTarget(where, out, stored);
  // An object store's answer may be damaged on the way (a byte flipped, a body miscounted):
  // a block that does not decode to its hash, or a range that came back short, is read again
  // alone before it counts as the store's damage.
  const int reads = packs_.RemoteReads() ? kRemoteReads : 1;
  for (int read = 1;; ++read) {
    bool whole = false;
    if (read == 1) {
      whole = ReadRange(where.pack, where.offset, target, cancel);
    } else {
      whole = packs_.ReadPack(where.pack, where.offset, target, cancel);
    }
    if (whole) {
      try {
        DecodeBlockInto(target, entry, out, Where(where.pack), bases);
        return;
      } catch (const DamagedChunkError&) {
        if (!bases_checked) {
          // Perhaps a base, not the delta: read checked (a bad base is found, reported and
          // named), then decoded again from the same bytes.
          ReadBases(hash, where.bases, joined, cancel, BaseCheck::kChecked);
          bases = joined.bytes();
          bases_checked = true;
          try {
            DecodeBlockInto(target, entry, out, Where(where.pack), bases);
            return;
          } catch (const DamagedChunkError&) {
            // the delta's own bytes, then
          }
        }
        if (read == reads) throw;
        continue;
      }
    }
    if (read < reads) continue;
    if (!packs_.StatPack(where.pack)) PackVanished(where.pack);
    throw DamagedChunkError(hash, "block " + hash + " at byte " + std::to_string(where.offset) +
                                      " of " + Where(where.pack) +
                                      " cannot be read: the pack is missing or cut short; run "
                                      "`imagerelay scrub`");
  }
}

std::optional<size_t> PackStore::RunHolding(const std::vector<Run>& runs, uint64_t offset,
                                            uint64_t length) {
  auto after = std::upper_bound(runs.begin(), runs.end(), offset,
                                [](uint64_t value, const Run& r) { return value < r.begin; });
  if (after == runs.begin()) return std::nullopt;
  auto run = std::prev(after);
  if (offset + length > run->end) return std::nullopt;
  return static_cast<size_t>(run - runs.begin());
}

void PackStore::PlanReadsInOrder(std::vector<std::string>& hashes) {
  if (hashes.empty()) return;
  const std::vector<std::optional<BlockLocation>> found = Index().Lookup(hashes);
  std::vector<size_t> order(hashes.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t x, size_t y) {
    const std::optional<BlockLocation>& a = found[x];
    const std::optional<BlockLocation>& b = found[y];
    if (!a || !b) return a.has_value() && !b.has_value();
    return std::tie(a->pack, a->offset) < std::tie(b->pack, b->offset);
  });
  std::vector<std::string> ordered;
  std::vector<std::optional<BlockLocation>> found_ordered;
  ordered.reserve(hashes.size());
  found_ordered.reserve(hashes.size());
  for (size_t i : order) {
    ordered.push_back(std::move(hashes[i]));
    found_ordered.push_back(found[i]);
  }
  hashes = std::move(ordered);
  PlanLocated(hashes, std::move(found_ordered));  // the one lookup serves both
}

void PackStore::PlanReads(const std::vector<std::string>& hashes) {
  if (hashes.empty()) return;
  PlanLocated(hashes, Index().Lookup(hashes));
}

void PackStore::PlanLocated(const std::vector<std::string>& hashes,
                            std::vector<std::optional<BlockLocation>> found) {
  // Neighbouring blocks of a pack (a gap of at most kMaxGap) go into one run.
  std::unordered_map<std::string, std::vector<Run>> planned;
  size_t count = 0;
  std::vector<std::string> bases;  // of the deltas among them: read with them
  {
    std::unordered_set<std::string> named;
    for (const auto& where : found) {
      if (!where) continue;
      planned[where->pack].push_back({where->offset, where->offset + where->stored_length});
      for (std::string& base : SplitBases(where->bases)) {
        if (named.insert(base).second) bases.push_back(std::move(base));
      }
    }
  }
  // A delta's bases lie in the packs of the image's earlier version, side by side: their
  // ranges join the runs (on an object store, a request per run rather than per base).
  std::vector<std::optional<BlockLocation>> found_bases;
  if (!bases.empty()) {
    found_bases = Index().Lookup(bases);
    for (const auto& where : found_bases) {
      if (where) {
        planned[where->pack].push_back({where->offset, where->offset + where->stored_length});
      }
    }
  }
  for (auto& [pack, blocks] : planned) {
    std::sort(blocks.begin(), blocks.end(),
              [](const Run& x, const Run& y) { return x.begin < y.begin; });
    std::vector<Run> runs;
    for (const Run& block : blocks) {
      if (!runs.empty() && block.begin <= runs.back().end + kMaxGap &&
          block.end - runs.back().begin <= options_.read_span) {
        runs.back().end = std::max(runs.back().end, block.end);
        ++runs.back().blocks;
      } else {
        runs.push_back(block);
      }
    }
    // A run of one block gains nothing: it is read alone anyway.
    std::erase_if(runs, [](const Run& r) { return r.blocks < 2; });
    count += runs.size();
    blocks = std::move(runs);
  }
  // A local store reads the runs ahead in the order the plan's blocks come, each block's
  // bases before it.
  std::deque<std::pair<std::string, Run>> ahead;
  if (!packs_.RemoteReads()) {
    std::unordered_map<std::string, size_t> base_at;  // hash -> place in `bases`
    for (size_t i = 0; i < bases.size(); ++i) base_at.emplace(bases[i], i);
    std::set<std::pair<std::string, uint64_t>> queued;
    auto queue = [&](const BlockLocation& where) {
      auto it = planned.find(where.pack);
      if (it == planned.end()) return;
      std::optional<size_t> run = RunHolding(it->second, where.offset, where.stored_length);
      if (run && queued.emplace(where.pack, it->second[*run].begin).second) {
        ahead.emplace_back(where.pack, it->second[*run]);
      }
    };
    for (const auto& where : found) {
      if (!where) continue;
      for (const std::string& base : SplitBases(where->bases)) {
        if (const auto& base_where = found_bases[base_at.at(base)]) queue(*base_where);
      }
      queue(*where);
    }
  }
  {
    std::lock_guard lock(planned_mutex_);
    // Their reads need not look them up again, one by one.
    if (planned_bases_.size() + bases.size() > kMaxPlannedBlocks) planned_bases_.clear();
    for (size_t i = 0; i < bases.size() && planned_bases_.size() < kMaxPlannedBlocks; ++i) {
      if (found_bases[i]) planned_bases_.insert_or_assign(bases[i], std::move(*found_bases[i]));
    }
    if (planned_where_.size() + hashes.size() > kMaxPlannedBlocks) planned_where_.clear();
    for (size_t i = 0; i < hashes.size() && planned_where_.size() < kMaxPlannedBlocks; ++i) {
      if (found[i]) planned_where_.insert_or_assign(hashes[i], std::move(*found[i]));
    }
  }
  std::lock_guard lock(read_mutex_);
  // What earlier plans left unread (a cancelled copy) serves no later read; spans still being
  // read go once read (their plan is no longer plan_).
  ++plan_;
  std::erase_if(spans_, [](const auto& span) { return !span->loading; });
  if (planned_runs_ + count > kMaxPlannedRuns) {
    runs_.clear();  // plans nobody read (cancelled copies): drop them rather than grow
    planned_runs_ = 0;
  }
  for (auto& [pack, runs] : planned) {
    if (runs.empty()) continue;
    std::vector<Run>& all = runs_[pack];
    all.insert(all.end(), runs.begin(), runs.end());
    std::sort(all.begin(), all.end(), [](const Run& x, const Run& y) { return x.begin < y.begin; });
    planned_runs_ += runs.size();
  }
  ahead_ = std::move(ahead);
  ahead_started_ = false;
  if (!ahead_.empty() && ahead_threads_.empty()) {
    for (int i = 0; i < kAheadReaders; ++i) {
      ahead_threads_.emplace_back([this](std::stop_token stop) { ReadAheadLoop(stop); });
    }
  }
}

std::optional<PackStore::Run> PackStore::TakeRun(const std::string& pack, uint64_t offset,
                                                 uint64_t length) {
  auto it = runs_.find(pack);
  if (it == runs_.end()) return std::nullopt;
  std::vector<Run>& runs = it->second;
  std::optional<size_t> at = RunHolding(runs, offset, length);
  if (!at) return std::nullopt;
  Run taken = runs[*at];
  runs.erase(runs.begin() + static_cast<ptrdiff_t>(*at));
  --planned_runs_;
  if (runs.empty()) runs_.erase(it);
  return taken;
}

std::shared_ptr<PackStore::Span> PackStore::NewSpan(const std::string& pack, const Run& run) {
  auto span = std::shared_ptr<Span>(new Span, [this](Span* gone) {
    {
      std::lock_guard lock(spare_spans_mutex_);
      if (spare_spans_.size() < kAheadSpans + 2) spare_spans_.push_back(std::move(gone->buffer));
    }
    delete gone;
  });
  span->pack = pack;
  span->begin = run.begin;
  span->length = run.end - run.begin;
  span->plan = plan_;
  {
    std::lock_guard lock(spare_spans_mutex_);
    if (!spare_spans_.empty()) {
      span->buffer = std::move(spare_spans_.back());
      spare_spans_.pop_back();
      return span;
    }
  }
  // Room for a whole run and the pages a direct read rounds it out to, so that a buffer
  // never grows (and is allocated again) from one run to the next.
  span->buffer.reserve(static_cast<size_t>(options_.read_span) + 2 * kDirectIoAlign);
  return span;
}

size_t PackStore::KeptReadBuffers() {
  std::lock_guard lock(spare_spans_mutex_);
  return spare_spans_.size();
}

size_t PackStore::AheadSpansLocked() const {
  return static_cast<size_t>(std::count_if(spans_.begin(), spans_.end(), [&](const auto& span) {
    return span->ahead && span->plan == plan_;
  }));
}

void PackStore::ReadAheadLoop(std::stop_token stop) {
  std::unique_lock lock(read_mutex_);
  auto work = [&] { return ahead_started_ && !ahead_.empty() && AheadSpansLocked() < kAheadSpans; };
  for (;;) {
    if (!ahead_cv_.wait_for(lock, stop, options_.read_ahead_release, work)) {
      if (stop.stop_requested()) return;
      // Nothing to read ahead for a while: the buffers kept for the next spans go (a store
      // of a long-lived process would hold them for good), then wait for a plan.
      {
        std::lock_guard spare_lock(spare_spans_mutex_);
        spare_spans_.clear();
      }
      if (!ahead_cv_.wait(lock, stop, work)) return;
    }
    const auto [pack, planned] = std::move(ahead_.front());
    ahead_.pop_front();
    // A reader that came to the run first took it: it reads the run's blocks itself.
    std::optional<Run> run = TakeRun(pack, planned.begin, planned.end - planned.begin);
    if (!run) continue;
    auto span = NewSpan(pack, *run);
    span->ahead = true;
    span->unread = run->blocks;
    spans_.push_front(span);
    lock.unlock();
    std::optional<size_t> skip;
    try {
      skip = packs_.ReadPackAhead(span->pack, span->begin, span->length, span->buffer, nullptr);
    } catch (const std::exception&) {
      // its readers read the blocks themselves, and report what fails
    }
    lock.lock();
    FinishLoadingLocked(span, skip);
  }
}

void PackStore::FinishLoadingLocked(const std::shared_ptr<Span>& span, std::optional<size_t> skip) {
  span->loading = false;
  span->failed = !skip;
  span->last_use = served_;  // idle from now on until served from
  if (skip) span->skip = *skip;
  // A span that failed, or was read for a plan that is no longer the current one, serves
  // nobody.
  if (span->failed || span->plan != plan_) std::erase(spans_, span);
  span_cv_.notify_all();
  ahead_cv_.notify_all();
}

bool PackStore::ServeFromSpan(std::unique_lock<std::mutex>& lock, const std::string& pack,
                              uint64_t offset, std::span<std::byte> out,
                              const CancelToken* cancel) {
  for (;;) {
    auto it = std::find_if(spans_.begin(), spans_.end(), [&](const auto& s) {
      return s->plan == plan_ && s->pack == pack && s->begin <= offset &&
             offset + out.size() <= s->begin + s->length && !s->failed;
    });
    if (it == spans_.end()) return false;
    std::shared_ptr<Span> found = *it;
    if (found->loading) {  // its bytes come with that read
      // Our own cancel is checked meanwhile: that read (a request) may be stalled.
      if (cancel != nullptr && cancel->cancelled()) throw Cancelled{};
      span_cv_.wait_for(lock, std::chrono::milliseconds(50));
      continue;
    }
    bool room = false;
    if (--found->unread == 0) {
      spans_.erase(it);
      room = true;
    }
    if (found->ahead) {
      found->last_use = ++served_;
      room = std::erase_if(spans_,
                           [&](const auto& s) {
                             return s->ahead && !s->loading &&
                                    s->last_use + options_.read_ahead_idle < served_;
                           }) > 0 ||
             room;
    }
    if (room) ahead_cv_.notify_all();
    // A loaded span's bytes do not change, and `found` keeps them: copied without the lock.
    lock.unlock();
    std::copy_n(found->at(offset), out.size(), out.begin());
    return true;
  }
}

bool PackStore::ReadRange(const std::string& pack, uint64_t offset, std::span<std::byte> out,
                          const CancelToken* cancel) {
  const uint64_t length = out.size();
  std::shared_ptr<Span> span;
  {
    std::unique_lock lock(read_mutex_);
    if (!ahead_started_) {  // the plan's first read: the read-ahead starts
      ahead_started_ = true;
      if (!ahead_.empty()) ahead_cv_.notify_all();
    }
    if (ServeFromSpan(lock, pack, offset, out, cancel)) return true;
    std::optional<Run> run = TakeRun(pack, offset, length);
    if (!run || !packs_.RemoteReads()) {
      // A block alone; or a local pack's run the read-ahead has not come to, read ahead into
      // the page cache while each block is read on its own, so that the readers of the run
      // need not wait for one another.
      lock.unlock();
      if (run) packs_.Prefetch(pack, run->begin, run->end - run->begin);
      return packs_.ReadPack(pack, offset, out, cancel);
    }
    span = NewSpan(pack, *run);
    span->unread = run->blocks - 1;  // (this reader's is served below)
    spans_.push_front(span);
    while (spans_.size() > kMaxSpans && !spans_.back()->loading) spans_.pop_back();
  }
  std::optional<size_t> skip;
  try {
    skip = packs_.ReadPackAhead(pack, span->begin, span->length, span->buffer, cancel);
  } catch (...) {
    std::lock_guard lock(read_mutex_);
    FinishLoadingLocked(span, std::nullopt);
    throw;
  }
  std::lock_guard lock(read_mutex_);
  FinishLoadingLocked(span, skip);
  if (!skip) return false;
  std::copy_n(span->at(offset), length, out.begin());
  if (span->unread == 0) std::erase(spans_, span);
  return true;
}

void PackStore::DropPlannedReads() {
  std::lock_guard lock(read_mutex_);
  ++plan_;  // spans being read go once read
  std::erase_if(spans_, [](const auto& span) { return !span->loading; });
  runs_.clear();
  planned_runs_ = 0;
  ahead_.clear();
}

void PackStore::DeleteChunk(const std::string& hash) {
  if (Index().Lookup({hash})[0]) {
    for (const std::string& delta : Index().RemoveBlock(hash)) {
      ReportDamage(delta, "block " + delta + " is a delta of block " + hash + ", deleted");
    }
  } else if (HasLegacyChunks()) {
    base_->DeleteChunk(hash);
  }
}

void PackStore::QuarantineChunk(const std::string& hash) {
  if (std::optional<BlockLocation> where = Index().Lookup({hash})[0]) {
    // Its owner marks what needs it; the deltas built on it are reported here.
    ForgetDamaged(hash, "block " + hash + " was set aside as damaged", /*report_self=*/false);
    std::vector<std::byte> stored(where->stored_length);
    try {
      if (packs_.ReadPack(where->pack, where->offset, stored, nullptr)) {
        packs_.KeepAside(hash, stored);
      }
    } catch (const std::exception&) {
      // the pack cannot be read: nothing to keep
    }
  } else if (HasLegacyChunks()) {
    base_->QuarantineChunk(hash);
  }
}

std::vector<std::string> PackStore::ListChunks() {
  std::vector<std::string> hashes = Index().Hashes();
  if (HasLegacyChunks()) {
    std::vector<std::string> legacy = base_->ListChunks();
    hashes.insert(hashes.end(), legacy.begin(), legacy.end());
    std::sort(hashes.begin(), hashes.end());
    hashes.erase(std::unique(hashes.begin(), hashes.end()), hashes.end());
  }
  return hashes;
}

std::vector<std::string> PackStore::ListChunksAfter(const std::string& after, size_t limit) {
  if (HasLegacyChunks()) return Store::ListChunksAfter(after, limit);
  return Index().HashesAfter(after, limit);
}

std::optional<uint64_t> PackStore::StoredChunkSize(const std::string& hash) {
  if (auto where = Index().Lookup({hash})[0]) return where->stored_length;
  auto* probe = dynamic_cast<ChunkSizeProbe*>(base_.get());
  return probe && HasLegacyChunks() ? probe->StoredChunkSize(hash) : std::nullopt;
}

SweepResult PackStore::SweepUnmarked(const MarkSet& marked) {
  SweepResult result;
  if (HasLegacyChunks()) {
    result = base_->SweepUnmarked(marked);
    std::lock_guard lock(index_mutex_);
    legacy_chunks_.reset();  // it may hold none now
  }
  Reconcile();
  Lost damaged;  // reported once the layout lock is released
  std::unique_lock layout(layout_mutex_);
  BlockIndex& index = Index();
  // A block lives while a manifest names it, or a live delta is built on it (one level: a
  // base is a whole block).
  MarkSet bases_marked;
  index.ForEachDeltaBase([&](const std::string& delta, const std::string& base) {
    if (marked.Contains(delta)) bases_marked.Add(base);
  });
  auto live_block = [&](const std::string& hash) {
    return marked.Contains(hash) || bases_marked.Contains(hash);
  };
  auto forget = [&](const std::string& hash, const std::string& why) {
    for (std::string& delta : index.RemoveBlock(hash)) {
      damaged.emplace_back(std::move(delta), "block is a delta of block " + hash + ": " + why);
    }
    damaged.emplace_back(hash, why);
  };
  // The entry's stored bytes in `pack_bytes`; nullopt if the index puts them past its end.
  auto stored_in = [](std::span<const std::byte> pack_bytes,
                      const PackEntry& entry) -> std::optional<std::span<const std::byte>> {
    if (entry.offset > pack_bytes.size() ||
        entry.stored_length > pack_bytes.size() - entry.offset) {
      return std::nullopt;
    }
    return pack_bytes.subspan(static_cast<size_t>(entry.offset), entry.stored_length);
  };
  // True if every one of `entries` decodes from `pack_bytes` to its hash.
  auto all_decode = [&](std::span<const std::byte> pack_bytes, const std::string& pack,
                        const std::vector<PackEntry>& entries) {
    std::vector<std::byte> out;
    for (const PackEntry& entry : entries) {
      const std::optional<std::span<const std::byte>> stored = stored_in(pack_bytes, entry);
      if (!stored) return false;
      try {
        DecodeEntry(*stored, entry, out, pack, /*direct=*/true);
      } catch (const DamagedChunkError&) {
        return false;
      }
    }
    return true;
  };
  // Before the first pack goes, the reads planned so far are dropped: no span read from a
  // pack the sweep deletes serves a block the sweep removed.
  bool plans_dropped = false;
  auto delete_pack = [&](const std::string& pack) {
    if (!std::exchange(plans_dropped, true)) DropPlannedReads();
    packs_.DeletePack(pack);
  };
  // Live blocks of packs mostly garbage go into new packs; the old ones are then dropped.
  PackBuilder repacked(options_.zstd_level, options_.pack_size + kBuilderSlack);
  std::vector<std::string> replaced;
  auto write_repacked = [&] {
    if (repacked.empty()) return;
    const std::vector<PackEntry> entries = repacked.entries();
    const PackBytes bytes = repacked.Finish();
    const std::string name = NewPackName();
    packs_.PutPack(name, bytes, nullptr);                  // 1. the new pack is durable
    index.AddPack(name, bytes.size(), entries, replaced);  // 2. one switch in the index
    // A crash before this costs one re-read of the pack.
    if (std::string mark = MarkOfWritten(name); !mark.empty()) index.SetMark(name, mark);
    for (const std::string& old : replaced) delete_pack(old);  // 3. old packs go
    replaced.clear();
  };
  std::vector<std::byte> whole;
  std::vector<std::byte> raw;
  for (const auto& [pack, size] : index.Packs()) {
    size_t unreadable_rows = 0;
    std::vector<PackEntry> entries = index.EntriesOf(pack, &unreadable_rows);
    // Rows that name no block (edited by hand, or damaged) hide what the pack holds: it is
    // neither deleted nor rewritten (its footer still lists those blocks for a rebuild).
    if (unreadable_rows > 0) {
      Log(LogLevel::kWarning, Where(pack) + " has " + std::to_string(unreadable_rows) +
                                  " index rows that name no block; the sweep leaves it as it is");
      continue;
    }
    std::vector<PackEntry> live;
    std::vector<std::string> dead_hashes;
    uint64_t live_bytes = 0;
    for (PackEntry& entry : entries) {
      if (live_block(entry.hash)) {
        live_bytes += entry.stored_length;
        live.push_back(std::move(entry));
      } else {
        dead_hashes.push_back(entry.hash);
      }
    }
    const size_t dead = entries.size() - live.size();
    if (live.empty()) {
      index.RemovePack(pack);  // forgotten first: a crash leaves a pack nothing names
      delete_pack(pack);
      result.chunks_removed += dead;
      result.bytes_removed += size;
      continue;
    }
    result.chunks_kept += live.size();
    // Rewritten only if its live blocks would take much less in a pack of their own, footer
    // rows and trailer counted: a pack of a few tiny blocks is mostly footer, and counting
    // blocks alone rewrote it at every sweep.
    const uint64_t live_size = live_bytes + live.size() * kPackEntrySize + kPackTrailerSize;
    if (static_cast<double>(live_size) >= options_.repack_below * static_cast<double>(size)) {
      // Kept as it is; its dead blocks leave the index (the index lists live blocks only, so
      // that the live share above stays true), their bytes go when the pack is rewritten.
      index.RemoveBlocks(dead_hashes);
      result.chunks_removed += dead;
      continue;
    }
    whole.resize(static_cast<size_t>(size));
    if (!packs_.ReadPack(pack, 0, whole, nullptr)) continue;  // the next read reports it
    // A block found wrong in an object store's answer: the pack is read again once before
    // the block counts as damaged (see ReadBlock).
    if (packs_.RemoteReads() && !all_decode(whole, pack, live) &&
        !packs_.ReadPack(pack, 0, whole, nullptr)) {
      continue;
    }
    for (const PackEntry& entry : live) {
      const std::optional<std::span<const std::byte>> stored = stored_in(whole, entry);
      if (!stored) {
        forget(entry.hash, Where(pack) + " ends before the block the index puts in it");
        continue;
      }
      try {
        DecodeEntry(*stored, entry, raw, pack, /*direct=*/true);
      } catch (const DamagedChunkError& e) {
        forget(entry.hash, e.what());
        continue;
      }
      repacked.AddEncoded(entry.hash, {entry.codec, *stored}, entry.raw_length, entry.bases);
    }
    replaced.push_back(pack);
    result.chunks_removed += dead;
    result.bytes_removed += size - live_bytes;
    if (repacked.size() >= options_.pack_size) write_repacked();
  }
  if (repacked.empty() && !replaced.empty()) {
    // Every live block turned out damaged: the old packs only need forgetting.
    for (const std::string& old : replaced) {
      index.RemovePack(old);
      delete_pack(old);
    }
    replaced.clear();
  }
  write_repacked();
  layout.unlock();
  ReportLost(damaged);
  // The resemblance rows of the blocks gone (only hints, skipped when found stale, but they
  // would pile up with every version deleted): a share of the table per sweep that removed
  // blocks, at least four times the rows those had (16 each), so that stale rows stay under
  // about a quarter of the table however large it grows.
  if (result.chunks_removed > 0) {
    index.PruneFeatures(std::max<size_t>(kPruneFeaturesPerSweep, 64 * result.chunks_removed));
  }
  return result;
}

}  // namespace imagerelay
