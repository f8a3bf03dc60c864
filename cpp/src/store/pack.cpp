#include "store/pack.hpp"

#include <zstd.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <new>

#include "base/binary_codec.hpp"
#include "imagerelay/error.hpp"
#include "imagerelay/sha256.hpp"

namespace imagerelay {
namespace {

constexpr char kPackMagic[8] = {'I', 'R', 'P', 'A', 'C', 'K', '0', '1'};
constexpr char kDeltaPackMagic[8] = {'I', 'R', 'P', 'A', 'C', 'K', '0', '2'};

ZSTD_DCtx* DecompressionContext() {
  thread_local std::unique_ptr<ZSTD_DCtx, size_t (*)(ZSTD_DCtx*)> context(ZSTD_createDCtx(),
                                                                          &ZSTD_freeDCtx);
  if (!context) throw std::bad_alloc();
  return context.get();
}

void Append(std::vector<std::byte>& out, uint64_t value, int bytes) {
  std::byte le[8];
  PutLe(le, value, bytes);
  out.insert(out.end(), le, le + bytes);
}

void AppendHash(std::vector<std::byte>& out, const std::string& hex) {
  std::byte bytes[kHashBytes];
  HashToBytes(hex, bytes);
  out.insert(out.end(), bytes, bytes + kHashBytes);
}

[[noreturn]] void Torn(const std::string& what, const std::string& why) {
  throw IntegrityError(codes::kIntegrityError,
                       what + " is not a whole pack (" + why + "); run `imagerelay scrub`");
}

}  // namespace

EncodedBlock EncodeBlock(std::span<const std::byte> raw, int zstd_level,
                         std::vector<std::byte>& scratch) {
  if (zstd_level <= 0 || raw.size() < 64) return {BlockCodec::kRaw, raw};
  // A context per thread: ZSTD_compress would allocate (and free) one per block.
  thread_local std::unique_ptr<ZSTD_CCtx, size_t (*)(ZSTD_CCtx*)> context(ZSTD_createCCtx(),
                                                                          &ZSTD_freeCCtx);
  if (!context) return {BlockCodec::kRaw, raw};
  // Room for only what would be worth keeping: zstd gives up as soon as it cannot fit,
  // so incompressible data costs less than a full attempt.
  const size_t limit = raw.size() - raw.size() / 8;
  scratch.resize(limit);
  // Two 4 KiB samples (the start and the middle) tell random or already compressed data
  // from the rest: if neither shrinks, the block is stored raw without a full attempt. Dense
  // random data then costs an eighth of an attempt per block. (One sample at the start
  // misjudged file data behind a binary header: 6% more bytes sent on the ext4 workload.)
  constexpr size_t kSample = 4096;
  if (raw.size() >= 8 * kSample) {
    auto shrinks = [&](size_t at) {
      return !ZSTD_isError(ZSTD_compressCCtx(context.get(), scratch.data(), kSample - kSample / 8,
                                             raw.data() + at, kSample, zstd_level));
    };
    if (!shrinks(0) && !shrinks(raw.size() / 2)) return {BlockCodec::kRaw, raw};
  }
  const size_t packed =
      ZSTD_compressCCtx(context.get(), scratch.data(), limit, raw.data(), raw.size(), zstd_level);
  if (ZSTD_isError(packed)) return {BlockCodec::kRaw, raw};
  return {BlockCodec::kZstd, std::span<const std::byte>(scratch.data(), packed)};
}

std::vector<std::string> SplitBases(const std::string& bases) {
  std::vector<std::string> hashes;
  for (size_t at = 0; at + 2 * kHashBytes <= bases.size(); at += 2 * kHashBytes) {
    hashes.push_back(bases.substr(at, 2 * kHashBytes));
  }
  return hashes;
}

std::optional<EncodedBlock> EncodeDelta(std::span<const std::byte> raw,
                                        std::span<const std::byte> bases, int zstd_level,
                                        size_t limit, std::vector<std::byte>& scratch) {
  if (zstd_level <= 0 || bases.empty() || limit == 0) return std::nullopt;
  // Its own context: the bases are a prefix for one frame (raw content, never read as a
  // zstd dictionary whatever their first bytes), set on a context kept per thread.
  thread_local std::unique_ptr<ZSTD_CCtx, size_t (*)(ZSTD_CCtx*)> context(ZSTD_createCCtx(),
                                                                          &ZSTD_freeCCtx);
  if (!context) return std::nullopt;
  ZSTD_CCtx* cctx = context.get();
  ZSTD_CCtx_reset(cctx, ZSTD_reset_session_and_parameters);
  if (ZSTD_isError(ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, zstd_level)) ||
      ZSTD_isError(ZSTD_CCtx_refPrefix(cctx, bases.data(), bases.size()))) {
    return std::nullopt;
  }
  scratch.resize(limit);
  const size_t packed = ZSTD_compress2(cctx, scratch.data(), limit, raw.data(), raw.size());
  if (ZSTD_isError(packed)) return std::nullopt;
  return EncodedBlock{BlockCodec::kZstdDelta, std::span<const std::byte>(scratch.data(), packed)};
}

void PackBuilder::Add(const std::string& hash, std::span<const std::byte> raw) {
  AddEncoded(hash, EncodeBlock(raw, zstd_level_, scratch_), static_cast<uint32_t>(raw.size()));
}

void PackBuilder::AddEncoded(const std::string& hash, EncodedBlock block, uint32_t raw_length,
                             const std::string& bases) {
  PackEntry entry;
  entry.bases = bases;
  entry.hash = hash;
  entry.offset = data_.size();
  entry.raw_length = raw_length;
  entry.codec = block.codec;
  entry.stored_length = static_cast<uint32_t>(block.bytes.size());
  // resize (no zeroing) + copy (a memmove), not insert: with an allocator of its own, a
  // vector inserts element by element (a 16-byte loop here: 7% of an import's CPU).
  data_.resize(entry.offset + block.bytes.size());
  std::copy(block.bytes.begin(), block.bytes.end(),
            data_.begin() + static_cast<ptrdiff_t>(entry.offset));
  entries_.push_back(std::move(entry));
}

void PackBuilder::AddFeatures(const std::vector<uint64_t>& features) {
  if (entries_.empty()) return;
  const auto at = static_cast<uint32_t>(entries_.size() - 1);
  for (uint64_t feature : features) features_.emplace_back(feature, at);
}

PackBytes PackBuilder::Finish() {
  // A pack without a delta block is written as the first release wrote packs.
  const bool deltas = std::any_of(entries_.begin(), entries_.end(),
                                  [](const PackEntry& e) { return !e.bases.empty(); });
  std::vector<std::byte> footer;
  footer.reserve(entries_.size() * (kPackEntrySize + 1) + kPackTrailerSize);
  for (const PackEntry& e : entries_) {
    AppendHash(footer, e.hash);
    Append(footer, e.offset, 8);
    Append(footer, e.stored_length, 4);
    Append(footer, e.raw_length, 4);
    footer.push_back(static_cast<std::byte>(e.codec));
    if (!deltas) continue;
    const std::vector<std::string> bases = SplitBases(e.bases);
    footer.push_back(static_cast<std::byte>(bases.size()));
    for (const std::string& base : bases) AppendHash(footer, base);
  }
  const std::string digest = Sha256Hex(footer.data(), footer.size());
  Append(footer, deltas ? footer.size() : entries_.size(), 4);
  AppendHash(footer, digest);
  for (char c : deltas ? kDeltaPackMagic : kPackMagic) footer.push_back(static_cast<std::byte>(c));
  PackBytes pack = std::move(data_);
  pack.insert(pack.end(), footer.begin(), footer.end());
  data_.clear();
  entries_.clear();
  features_.clear();
  return pack;
}

uint64_t PackFooterSize(std::span<const std::byte> trailer, const std::string& what) {
  if (trailer.size() < kPackTrailerSize) Torn(what, "shorter than a pack's trailer");
  const std::byte* end = trailer.data() + trailer.size();
  const uint64_t field = GetLe(end - kPackTrailerSize, 4);
  if (std::memcmp(end - 8, kDeltaPackMagic, 8) == 0) return field + kPackTrailerSize;
  if (std::memcmp(end - 8, kPackMagic, 8) != 0) Torn(what, "no pack trailer at its end");
  return field * kPackEntrySize + kPackTrailerSize;
}

std::vector<PackEntry> ParsePackFooter(std::span<const std::byte> tail, uint64_t pack_size,
                                       const std::string& what) {
  const uint64_t footer_size = PackFooterSize(tail, what);
  if (footer_size > tail.size() || footer_size > pack_size) {
    Torn(what, "its footer claims more bytes than it has");
  }
  const std::byte* footer = tail.data() + tail.size() - footer_size;
  const size_t entries_size = footer_size - kPackTrailerSize;
  const std::byte* digest = footer + entries_size + 4;
  if (Sha256Hex(footer, entries_size) != BytesToHash(digest)) {
    Torn(what, "its footer does not match its digest");
  }
  const bool deltas = std::memcmp(tail.data() + tail.size() - 8, kDeltaPackMagic, 8) == 0;
  const uint64_t blocks_end = pack_size - footer_size;
  std::vector<PackEntry> entries;
  entries.reserve(entries_size / kPackEntrySize);
  uint64_t expected_offset = 0;
  const std::byte* const entries_end = footer + entries_size;
  for (const std::byte* p = footer; p < entries_end;) {
    if (static_cast<size_t>(entries_end - p) < kPackEntrySize + (deltas ? 1 : 0)) {
      Torn(what, "its footer ends inside an entry");
    }
    PackEntry e;
    e.hash = BytesToHash(p);
    e.offset = GetLe(p + 32, 8);
    e.stored_length = static_cast<uint32_t>(GetLe(p + 40, 4));
    e.raw_length = static_cast<uint32_t>(GetLe(p + 44, 4));
    const auto codec = static_cast<uint8_t>(p[48]);
    p += kPackEntrySize;
    if (codec > static_cast<uint8_t>(BlockCodec::kZstdDelta)) Torn(what, "unknown block codec");
    e.codec = static_cast<BlockCodec>(codec);
    size_t bases = 0;
    if (deltas) {
      bases = static_cast<uint8_t>(*p++);
      if (bases > kMaxBases || static_cast<size_t>(entries_end - p) < bases * kHashBytes) {
        Torn(what, "an entry names impossible bases");
      }
      for (size_t b = 0; b < bases; ++b, p += kHashBytes) e.bases += BytesToHash(p);
    }
    // A delta block, and only a delta block, has bases; none is its own.
    if ((e.codec == BlockCodec::kZstdDelta) != (bases > 0) ||
        e.bases.find(e.hash) != std::string::npos) {
      Torn(what, "a block's bases do not fit its codec");
    }
    // Blocks lie back to back from offset 0 up to the footer: nothing overlaps or hides.
    if (e.offset != expected_offset || e.stored_length > blocks_end - e.offset) {
      Torn(what, "a block lies outside its place");
    }
    // No block is larger than the largest chunk; a footer claiming more would make a read
    // allocate what it says (and a raw block is as long as it is stored).
    if (e.raw_length > kMaxBlockBytes ||
        (e.codec == BlockCodec::kRaw && e.raw_length != e.stored_length)) {
      Torn(what, "a block claims an impossible length");
    }
    expected_offset = e.offset + e.stored_length;
    entries.push_back(std::move(e));
  }
  if (expected_offset != blocks_end) Torn(what, "bytes between its blocks and its footer");
  return entries;
}

bool DecodeBaseUnchecked(std::span<const std::byte> stored, const PackEntry& entry,
                         std::span<std::byte> out) {
  if (stored.size() != entry.stored_length || out.size() != entry.raw_length) return false;
  if (entry.codec == BlockCodec::kRaw) {
    if (stored.size() != out.size()) return false;
    if (!out.empty() && stored.data() != out.data()) {
      std::memcpy(out.data(), stored.data(), out.size());
    }
    return true;
  }
  if (entry.codec != BlockCodec::kZstd) return false;
  const size_t n = ZSTD_decompressDCtx(DecompressionContext(), out.data(), out.size(),
                                       stored.data(), stored.size());
  return !ZSTD_isError(n) && n == entry.raw_length;
}

void DecodeBlock(std::span<const std::byte> stored, const PackEntry& entry,
                 std::vector<std::byte>& out, const std::string& what,
                 std::span<const std::byte> bases) {
  out.resize(entry.raw_length);
  DecodeBlockInto(stored, entry, out, what, bases);
}

namespace {

[[noreturn]] void ThrowDamagedBlock(const PackEntry& entry, const std::string& what,
                                    const std::string& why) {
  throw DamagedChunkError(entry.hash, "block " + entry.hash + " at byte " +
                                          std::to_string(entry.offset) + " of " + what +
                                          " is corrupt (" + why + "); run `imagerelay scrub`");
}

}  // namespace

void DecodeBlockUnchecked(std::span<const std::byte> stored, const PackEntry& entry,
                          std::span<std::byte> out, const std::string& what,
                          std::span<const std::byte> bases) {
  auto damaged = [&](const std::string& why) { ThrowDamagedBlock(entry, what, why); };
  if (stored.size() != entry.stored_length) damaged("it was read short");
  if (out.size() != entry.raw_length) damaged("it is not as long as expected");
  if (entry.codec == BlockCodec::kRaw) {
    if (stored.size() != out.size()) damaged("its stored length is not its length");
    // (An empty block's pointers may be null: memcpy must not see them.)
    if (!out.empty() && stored.data() != out.data()) {
      std::memcpy(out.data(), stored.data(), out.size());
    }
  } else {
    ZSTD_DCtx* context = DecompressionContext();
    if (entry.codec == BlockCodec::kZstdDelta) {
      if (bases.empty()) damaged("its bases were not given");
      // A prefix for this one frame (a compressed block without bases has none).
      const size_t set = ZSTD_DCtx_refPrefix(context, bases.data(), bases.size());
      if (ZSTD_isError(set)) damaged(std::string("zstd: ") + ZSTD_getErrorName(set));
    }
    const size_t n =
        ZSTD_decompressDCtx(context, out.data(), out.size(), stored.data(), stored.size());
    // The prefix is gone with the frame, whatever became of it (never left to the next).
    if (entry.codec == BlockCodec::kZstdDelta) {
      ZSTD_DCtx_reset(context, ZSTD_reset_session_and_parameters);
    }
    if (ZSTD_isError(n)) damaged(std::string("zstd: ") + ZSTD_getErrorName(n));
    if (n != entry.raw_length) damaged("it decompresses to another length");
  }
}

void DecodeBlockInto(std::span<const std::byte> stored, const PackEntry& entry,
                     std::span<std::byte> out, const std::string& what,
                     std::span<const std::byte> bases) {
  DecodeBlockUnchecked(stored, entry, out, what, bases);
  if (Sha256Hex(out.data(), out.size()) != entry.hash) {
    ThrowDamagedBlock(entry, what, "its bytes do not match its hash");
  }
}

}  // namespace imagerelay
