// Resemblance sketch of a block (docs/data-plane-v2.md, item 2): the super-features of each
// of its 4 KiB pages (Shilane et al., FAST'12), so that a new block can be stored as a zstd
// delta against stored blocks that share content with it, wherever that content sits in
// them. bench/storage_schemes.py's `super_features(page, ANCHOR_BITS)` is the model: the
// same structure, not the same numbers (Python hashes with its own `hash`).
//
// Per page: a 64-bit hash of every 32-byte window; the windows whose hash has its top 5
// bits zero after mixing are anchors (one in 32, chosen by content, so an edit moves only
// the anchors near it); 4 features, each the max over the anchors of a different
// permutation of their hashes; a super-feature, the hash of the 4. Two pages that differ by
// a few small edits keep most features, hence often the super-feature whole (a page edited
// in 4 places about half the time; a block of 16 pages shares several with its original).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace imagerelay {

inline constexpr size_t kSketchPage = 4096;
// One per page: three (the model's) found no better bases on the benchmark's chain (ten
// versions 1.25x either way) and cost three times the index rows and lookups.
inline constexpr size_t kSuperFeaturesPerPage = 1;

// The super-features of each non-zero page of `block`, page after page, for a
// resemblance index: blocks sharing super-features likely share most of their content
// wherever it sits. Appends to `out` (cleared first). A last partial page counts from 64
// bytes; all-zero pages are left out (a hole is no base worth finding). The three values of
// a page depend on its bytes only, and a value's position among them is mixed in, so all
// super-features can share one key space.
void SketchBlock(std::span<const std::byte> block, std::vector<uint64_t>& out);

}  // namespace imagerelay
