"""Issue #12 storage target: what ten versions of the ext4 chain would cost under other
block schemes, computed offline (no store is written), to see which design could reach
1.3x one version before building it.

Schemes, each over v1..v10 of bench/update_bench.py's chain (zero blocks free, every block
stored once per distinct content, compressed sizes counted where compression pays 1/8):

- 64 KiB blocks, zstd -1 each: what the store does today;
- 64 KiB blocks, zstd -3 each;
- 16 KiB blocks, zstd -1 each;
- 64 KiB blocks whose new 4 KiB pages already stored anywhere are referenced (8 bytes a
  page) and only the rest kept, zstd -3 over those literal pages: sub-block dedup, the
  closest a block store gets to rsync's byte matching without 4 KiB manifest entries;
- a bound, not a design: v1 stored as today plus `zstd --patch-from=vN vN+1` (whole image,
  long mode) for each update: what a delta of the whole image against the previous one costs;
- delta blocks: a new 64 KiB block compressed with zstd -1 using a stored block as a raw
  content dictionary (its base), kept when that is smaller than the block compressed alone.
  The base is the block at the same offset in the previous version ("offset"), or also a
  block found similar by min-hash super-features ("similar", Shilane et al., FAST'12:
  12 features = the maximum of 12 linear transforms of the hashes of every 32-byte window,
  grouped 4 by 4 into 3 super-features; the stored block sharing the most super-features
  wins; the smaller delta of the two candidates is kept). Depth 1: a base is always a block
  stored whole (a delta whose offset base is itself a delta goes to that delta's base);
  unlimited: the base may be a delta, a chain forms;
- delta blocks + 4 KiB page dedup: the page scheme above, its literal pages compressed
  (zstd -3) with the base as dictionary when that is smaller. Two multi-base variants
  compress the literal pages once against up to three whole blocks joined into one
  dictionary: the same-offset block and the 2 blocks with the most super-features in common
  ("joined"), or the 2 blocks that the block's literal pages, sketched one by one, resemble
  most often ("pages": finer-grained features in the spirit of Finesse, FAST'19, at 3
  index entries per 4 KiB page, 48 per 64 KiB block, instead of 3), since a rewritten
  file's old copy usually straddles two or more 64 KiB blocks at another 4 KiB phase.
  Similar bases are looked for from v1 on, so these schemes also shrink one version.
- resemblance deltas without a page index (the design candidate, docs/data-plane-v2.md): no
  page references and no same-offset base (an import need not know the previous version):
  each new block is compressed (zstd -1) against the 2 whole blocks its pages resemble most,
  joined into one dictionary, depth 1. Once with the page sketch above (every 32-byte
  window), once with an anchored one a writer can afford: only the windows whose hash has
  its top 5 bits zero (~1 in 32, chosen by content, so a shifted page keeps its anchors)
  feed the features. A zstd match against a base costs a few bytes where a page reference
  costs 8, so the page index adds little once bases are found page by page.

Each scheme also reports what a restore reads: for every block of the last version, how
many stored blocks must be read to rebuild it (itself, its delta base chain, the blocks
holding the pages it refers to, and theirs).

Two chains: the default workload (bench/fs_workload.py's defaults), and with
--light-chain-dir a lighter update of the same image (LIGHT_WORKLOAD: fewer files
rewritten, a smaller package) calibrated to the share of 4 KiB pages a real OS update
changes. Each chain is built in its directory when it holds fewer than ten images.

Needs the `zstandard` module, `numpy` (super-features) and the `zstd` CLI (the patch bound):
`make bench-storage` installs them and runs it. Writes bench/STORAGE_SCHEMES.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import shlex
import subprocess
import sys
import tempfile
import types
from collections import Counter
from pathlib import Path

import numpy as np
import zstandard

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import fs_workload as fw  # noqa: E402

MiB = 1024 * 1024
BLOCK = 65536
PAGE = 4096
PAGE_REF_BYTES = 8
VERSIONS = 10

# bench/fs_workload.py's default update, and the lighter one (same v1, same seed). The light
# one is calibrated on the share of 4 KiB pages that differ in place per update, mean of the
# nine (the real OS update: 0.4%): rewrites/deletes/package MiB 12/1/0.25 gave 0.19%,
# 18/2/0.375 0.32%, 21/2/0.45 0.33%, 22/2/0.5 0.41%, 24/2/0.5 0.74% (one large file
# rewritten weighs a lot; the update's files are a seeded random sample).
DEFAULT_WORKLOAD = dict(data_mib=300, image_mib=512, versions=VERSIONS, rewrites=300,
                        deletes=10, package_mib=4, seed=12, allocator="fresh")
LIGHT_WORKLOAD = dict(DEFAULT_WORKLOAD, rewrites=22, deletes=2, package_mib=0.5)

# Super-features: 12 features from 32-byte windows, 3 super-features of 4 features each.
FEATURES, SUPER_FEATURES, WINDOW_WORDS = 12, 3, 4
_rng = np.random.default_rng(20120214)
_WORD_MULS = (_rng.integers(1, 2**63, size=WINDOW_WORDS, dtype=np.uint64) | np.uint64(1))
_FEATURE_MULS = (_rng.integers(1, 2**63, size=FEATURES, dtype=np.uint64) | np.uint64(1))
_FEATURE_ADDS = _rng.integers(0, 2**63, size=FEATURES, dtype=np.uint64)
_ANCHOR_MUL = np.uint64(0x9E3779B97F4A7C15)
ANCHOR_BITS = 5


def stored(compressor: zstandard.ZstdCompressor, data: bytes) -> int:
    """Bytes kept for `data`: compressed when that saves at least 1/8, else raw."""
    size = len(compressor.compress(data))
    return size if size <= len(data) - len(data) // 8 else len(data)


def delta_size(base: bytes, data: bytes, level: int) -> int:
    """`data` compressed with `base` as a raw content dictionary (what a delta block costs)."""
    dictionary = zstandard.ZstdCompressionDict(base, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    return len(zstandard.ZstdCompressor(level=level, dict_data=dictionary).compress(data))


def super_features(block: bytes, anchor_bits: int = 0) -> tuple[int, ...]:
    """Shilane et al.'s resemblance sketch of a block: blocks sharing a super-feature are
    likely to share most of their content, wherever it sits in the block. With
    `anchor_bits`, only the windows whose mixed hash has that many top bits zero count (one
    in 2**anchor_bits, chosen by content; all of them if fewer than 2 qualify)."""
    a = np.frombuffer(block, dtype=np.uint8)
    n = len(a) - 8 + 1
    words = np.zeros(n, dtype=np.uint64)
    for k in range(8):   # the 8 bytes from each position, as one little-endian word
        words |= a[k:k + n].astype(np.uint64) << np.uint64(8 * k)
    m = n - 8 * (WINDOW_WORDS - 1)
    window = np.zeros(m, dtype=np.uint64)
    for k in range(WINDOW_WORDS):   # a hash of the 32 bytes from each position
        window += words[8 * k:8 * k + m] * _WORD_MULS[k]
    if anchor_bits:
        anchors = window[((window * _ANCHOR_MUL) >> np.uint64(64 - anchor_bits)) == 0]
        window = anchors if len(anchors) >= 2 else window
    window = np.unique(window)
    feats = [int((window * _FEATURE_MULS[t] + _FEATURE_ADDS[t]).max()) for t in range(FEATURES)]
    group = FEATURES // SUPER_FEATURES
    return tuple(hash(tuple(feats[i:i + group])) for i in range(0, FEATURES, group))


class Sketch:
    """A block's super-features, and those of each of its non-zero 4 KiB pages (by offset;
    computed only when a scheme asks for them), from every window or from anchors only."""

    def __init__(self, block: bytes, pages: bool, anchored: bool = False):
        self.block = super_features(block)
        self.pages: dict[int, tuple[int, ...]] = {}
        self.anchored: dict[int, tuple[int, ...]] = {}
        for at in range(0, len(block), PAGE) if pages or anchored else ():
            page = block[at:at + PAGE]
            if page.count(0) != PAGE:
                if pages:
                    self.pages[at] = super_features(page)
                if anchored:
                    self.anchored[at] = super_features(page, ANCHOR_BITS)


class Scheme:
    def __init__(self, name: str):
        self.name = name
        self.total = 0
        self.after: list[int] = []
        self.deltas = 0            # blocks stored as a delta
        self.new_blocks = 0        # distinct blocks stored
        self.depths: Counter[int] = Counter()
        self.reads: tuple[float, int] | None = None   # restoring the last version
        self.by_similarity = 0     # deltas whose base came from the super-feature index


class DeltaScheme(Scheme):
    """Delta blocks, with or without 4 KiB page dedup; see the module's docstring. With
    bases="none" and pages it is the page scheme alone."""

    def __init__(self, name: str, *, pages: bool, bases: str, max_depth: int | None,
                 level: int, offset: bool = True, anchored: bool = False):
        super().__init__(name)
        assert bases in ("none", "offset", "similar", "joined", "pages")
        assert bases not in ("joined", "pages") or max_depth == 1
        assert not anchored or bases == "pages"
        self.pages, self.bases, self.max_depth, self.level = pages, bases, max_depth, level
        self.offset, self.anchored = offset, anchored
        self.compressor = zstandard.ZstdCompressor(level=level)
        self.depth: dict[bytes, int] = {}
        self.root: dict[bytes, bytes] = {}      # the whole block at the bottom of a chain
        self.needs: dict[bytes, set[bytes]] = {}   # blocks read to decode this one
        self.page_owner: dict[bytes, bytes] = {}
        self.index: list[dict[int, bytes]] = [{} for _ in range(SUPER_FEATURES)]

    def candidates(self, prev: bytes | None, sketch: Sketch,
                   kept: list[int]) -> list[tuple[bytes, bool]]:
        """(base, found by similarity) pairs to try, the same-offset block first. `kept`:
        the offsets of the pages the block keeps (its literal pages)."""
        found = ([(prev, False)] if prev is not None and self.bases != "none" and self.offset
                 else [])
        if self.bases in ("similar", "joined", "pages"):
            if self.bases == "pages":   # every literal page votes for the blocks it resembles
                of_pages = sketch.anchored if self.anchored else sketch.pages
                sketches = [of_pages[at] for at in kept if at in of_pages]
            else:
                sketches = [sketch.block]
            votes: Counter[bytes] = Counter()
            for sfs in sketches:
                for i, sf in enumerate(sfs):
                    if (hit := self.index[i].get(sf)) is not None:
                        votes[hit] += 1
            top = 1 if self.bases == "similar" else 2
            found += [(hit, True) for hit, _ in votes.most_common(top)]
        if self.max_depth == 1:   # a base is a block stored whole: a delta's own base
            found = [(self.root[c], similar) for c, similar in found]
        unique: list[tuple[bytes, bool]] = []
        for cand, similar in found:
            if all(cand != c for c, _ in unique):
                unique.append((cand, similar))
        return unique

    def add(self, digest: bytes, block: bytes, prev: bytes | None, sketch: Sketch,
            content: dict[bytes, bytes]) -> None:
        needs: set[bytes] = set()
        literal = block
        refs = 0
        kept_at = list(range(0, len(block), PAGE))
        if self.pages:
            kept_at = []
            kept = bytearray()
            for at in range(0, len(block), PAGE):
                page = block[at:at + PAGE]
                if page.count(0) == PAGE:
                    continue
                key = hashlib.sha256(page).digest()
                if (owner := self.page_owner.get(key)) is not None:
                    refs += 1
                    needs.add(owner)
                else:
                    self.page_owner[key] = digest
                    kept += page
                    kept_at.append(at)
            literal = bytes(kept)
        best, bases, similar = (stored(self.compressor, literal) if literal else 0), [], False
        found = self.candidates(prev, sketch, kept_at) if literal else []
        if self.bases in ("joined", "pages") and found:   # one delta against all of them at once
            size = delta_size(b"".join(content[c] for c, _ in found), literal, self.level)
            if size < best:
                best, bases, similar = size, [c for c, _ in found], any(s for _, s in found)
        else:
            for cand, by_similarity in found:
                size = delta_size(content[cand], literal, self.level)
                if size < best:
                    best, bases, similar = size, [cand], by_similarity
        self.total += refs * PAGE_REF_BYTES + best
        self.new_blocks += 1
        if not bases:
            self.depth[digest], self.root[digest] = 0, digest
        else:
            self.deltas += 1
            self.by_similarity += similar
            self.depth[digest] = 1 + max(self.depth[b] for b in bases)
            self.root[digest] = self.root[bases[0]]
            needs.update(bases)
        self.depths[self.depth[digest]] += 1
        self.needs[digest] = needs
        if self.max_depth is None or not bases:
            of_pages = sketch.anchored if self.anchored else sketch.pages
            for sfs in of_pages.values() if self.bases == "pages" else [sketch.block]:
                for i, sf in enumerate(sfs):
                    self.index[i][sf] = digest

    def restore_reads(self, digests: list[bytes]) -> tuple[float, int]:
        """(mean, max) stored blocks read to rebuild each block of a version."""
        memo: dict[bytes, frozenset[bytes]] = {}

        def closure(d: bytes) -> frozenset[bytes]:
            if (hit := memo.get(d)) is not None:
                return hit
            todo, seen = [d], {d}
            while todo:
                for n in self.needs[todo.pop()]:
                    if n not in seen:
                        seen.add(n)
                        todo.append(n)
            memo[d] = frozenset(seen)
            return memo[d]

        counts = [len(closure(d)) for d in digests]
        return sum(counts) / len(counts), max(counts)


def change_shares(prev: Path, cur: Path) -> dict[str, float]:
    """Share of the image whose fixed chunks differ in place between two versions (the issue's
    measure of a real OS update: 4 MiB 11.7%, 1 MiB 6%, 128 KiB 1.5%, 64 KiB 1.0%, 4 KiB
    0.4%)."""
    a, b = prev.read_bytes(), cur.read_bytes()
    shares = {}
    for size in (4 * MiB, MiB, 128 * 1024, BLOCK, PAGE):
        chunks = len(a) // size
        differ = sum(a[i:i + size] != b[i:i + size] for i in range(0, len(a), size))
        shares[f"{size // 1024} KiB" if size < MiB else f"{size // MiB} MiB"] = differ / chunks
    return shares


def patch_bound(images: list[Path], first: int) -> Scheme:
    """v1 as the store keeps it plus `zstd --patch-from` of each version against the last."""
    bound = Scheme("bound: v1 as today + `zstd -3 --long=30 --patch-from=vN vN+1` per update")
    bound.total = first
    bound.after.append(first)
    with tempfile.TemporaryDirectory(prefix="ir-patch-") as tmp:
        patch = Path(tmp) / "patch.zst"
        for prev, cur in zip(images, images[1:]):
            subprocess.run(["zstd", "-q", "-f", "-3", "--long=30", f"--patch-from={prev}",
                            str(cur), "-o", str(patch)], check=True)
            bound.total += patch.stat().st_size
            bound.after.append(bound.total)
            print(f"[storage_schemes] patch {prev.name} -> {cur.name}: "
                  f"{patch.stat().st_size / MiB:.2f} MiB", flush=True)
    return bound


def measure(images: list[Path]) -> tuple[list[Scheme], list[dict[str, float]]]:
    z1, z3 = zstandard.ZstdCompressor(level=1), zstandard.ZstdCompressor(level=3)
    plain1, plain3 = Scheme("64 KiB blocks, zstd -1 (today)"), Scheme("64 KiB blocks, zstd -3")
    small = Scheme("16 KiB blocks, zstd -1")
    paged = DeltaScheme("64 KiB blocks, new 4 KiB pages deduplicated, zstd -3 on the rest",
                        pages=True, bases="none", max_depth=1, level=3)
    deltas = [
        DeltaScheme("delta blocks vs same offset, depth 1, zstd -1", pages=False,
                    bases="offset", max_depth=1, level=1),
        DeltaScheme("delta blocks vs same offset, unlimited depth, zstd -1", pages=False,
                    bases="offset", max_depth=None, level=1),
        DeltaScheme("delta blocks vs same offset or similar (super-features), depth 1, "
                    "zstd -1", pages=False, bases="similar", max_depth=1, level=1),
        DeltaScheme("4 KiB page dedup + delta vs same offset, depth 1, zstd -3", pages=True,
                    bases="offset", max_depth=1, level=3),
        DeltaScheme("4 KiB page dedup + delta vs same offset, unlimited depth, zstd -3",
                    pages=True, bases="offset", max_depth=None, level=3),
        DeltaScheme("4 KiB page dedup + delta vs same offset or similar, depth 1, zstd -3",
                    pages=True, bases="similar", max_depth=1, level=3),
        DeltaScheme("4 KiB page dedup + one delta vs same offset and 2 most similar joined, "
                    "depth 1, zstd -3", pages=True, bases="joined", max_depth=1, level=3),
        DeltaScheme("4 KiB page dedup + one delta vs same offset and the 2 blocks most "
                    "similar page by page, joined, depth 1, zstd -3", pages=True,
                    bases="pages", max_depth=1, level=3),
        DeltaScheme("resemblance deltas, no page index: one delta vs the 2 blocks most "
                    "similar page by page, joined, no same-offset base, depth 1, zstd -1",
                    pages=False, bases="pages", max_depth=1, level=1, offset=False),
        DeltaScheme("resemblance deltas, no page index, anchored page sketch (1 window in "
                    "32), 2 bases joined, no same-offset base, depth 1, zstd -1", pages=False,
                    bases="pages", max_depth=1, level=1, offset=False, anchored=True),
    ]
    page_sketches = any(s.bases == "pages" and not s.anchored for s in deltas)
    anchored_sketches = any(s.anchored for s in deltas)
    block_stores = [paged] + deltas
    schemes: list[Scheme] = [plain1, plain3, small] + block_stores
    seen64: set[bytes] = set()
    seen16: set[bytes] = set()
    content: dict[bytes, bytes] = {}     # every distinct block stored: the bases of deltas
    zero64, zero16 = bytes(BLOCK), bytes(16384)
    changes = []
    prev_digests: list[bytes | None] = []
    for n, image in enumerate(images):
        digests: list[bytes | None] = []
        with open(image, "rb") as f:
            while block := f.read(BLOCK):
                offset = len(digests)
                if block == zero64:
                    digests.append(None)
                    continue
                digest = hashlib.sha256(block).digest()
                digests.append(digest)
                if digest in seen64:
                    continue
                seen64.add(digest)
                content[digest] = block
                plain1.total += stored(z1, block)
                plain3.total += stored(z3, block)
                for at in range(0, len(block), 16384):
                    piece = block[at:at + 16384]
                    if piece == zero16:
                        continue
                    key = hashlib.sha256(piece).digest()
                    if key not in seen16:
                        seen16.add(key)
                        small.total += stored(z1, piece)
                prev = prev_digests[offset] if prev_digests else None
                sketch = Sketch(block, page_sketches, anchored_sketches)
                for scheme in block_stores:
                    scheme.add(digest, block, prev, sketch, content)
        for scheme in schemes:
            scheme.after.append(scheme.total)
        if n > 0:
            changes.append(change_shares(images[n - 1], image))
        prev_digests = digests
        print(f"[storage_schemes] {image.name}: " + ", ".join(
            f"{s.after[-1] / s.after[0]:.3f}x" for s in schemes), flush=True)
    last = [d for d in prev_digests if d is not None]
    for scheme in (plain1, plain3, small):
        scheme.new_blocks = len(seen64)
        scheme.reads = (1.0, 1)
    for scheme in block_stores:
        scheme.reads = scheme.restore_reads(last)
    return schemes, changes


# What each scheme costs a real design beyond its bytes (restore reads are measured).
DESIGN_COSTS = {
    "64 KiB blocks, zstd -1 (today)": ("one index entry per 64 KiB block",
                                       "a block lives while a manifest names it"),
    "64 KiB blocks, zstd -3": ("as today", "as today"),
    "16 KiB blocks, zstd -1": ("4x today's manifest and index entries", "as today"),
    "64 KiB blocks, new 4 KiB pages deduplicated, zstd -3 on the rest":
        ("+ an index of every stored 4 KiB page (16 per block)",
         "a block lives while a manifest or another block's page reference names it"),
    "delta": ("+ each block's base digest in its pack entry; nothing to search (the base "
              "is the previous version's block at the offset)",
              "a base lives while a delta refers to it (a reference count per base)"),
    "similar": ("+ a super-feature index: 3 entries per whole block (3 x 8 bytes + digest)",
                "a base lives while a delta refers to it"),
    "page+delta": ("+ the 4 KiB page index and each block's base digest",
                   "a block lives while a manifest, a page reference or a delta names it"),
    "bound": ("not a design: whole-image patches, every restore replays the chain", "–"),
}


def design_costs(name: str) -> tuple[str, str]:
    if name in DESIGN_COSTS:
        return DESIGN_COSTS[name]
    if name.startswith("bound"):
        return DESIGN_COSTS["bound"]
    if name.startswith("resemblance deltas"):
        return ("+ a sketch index of every whole block's pages (3 entries per page; a hint: "
                "lost or stale entries only cost compression) and each delta's 2 base digests",
                "a block lives while a manifest or a delta names it; up to 2 bases per delta")
    if name.startswith("4 KiB page dedup"):
        index, gc = DESIGN_COSTS["page+delta"]
        if "page by page" in name:
            index += " + a super-feature index of every whole block's pages (3 entries per page)"
        elif "similar" in name:
            index += " + the super-feature index"
        if "joined" in name:
            gc += "; up to 3 bases per delta"
        return index, gc
    return DESIGN_COSTS["similar" if "similar" in name else "delta"]


def chain_section(title: str, workload: dict, schemes: list[Scheme],
                  changes: list[dict[str, float]]) -> list[str]:
    versions = len(schemes[0].after)
    today = schemes[0]
    opts = (f"--rewrites {workload['rewrites']} --deletes {workload['deletes']} "
            f"--package-mib {workload['package_mib']:g}")
    mean = {k: sum(c[k] for c in changes) / len(changes) for k in changes[0]}
    lines = [
        f"## {title}",
        "",
        f"- Workload: bench/fs_workload.py `{opts}` (seed {workload['seed']}, "
        f"{workload['data_mib']} MiB of files in a {workload['image_mib']} MiB image, "
        f"allocator {workload['allocator']}).",
        "- Chunks that differ in place per update, mean of the "
        f"{len(changes)} updates (the issue's real OS update: 4 MiB 11.7%, 1 MiB 6%, "
        "128 KiB 1.5%, 64 KiB 1.0%, 4 KiB 0.4%): "
        + ", ".join(f"{k} {v:.2%}" for k, v in mean.items())
        + "; 4 KiB per update: " + ", ".join(f"{c['4 KiB']:.2%}" for c in changes) + ".",
        f"- Today's store (64 KiB, zstd -1): **{today.after[-1] / today.after[0]:.3f}x** "
        f"for {versions} versions.",
        "",
        "| scheme | one version (MiB) | " + " | ".join(f"v1..v{n}" for n in
                                                       range(2, versions + 1))
        + f" | v1..v{versions} (MiB) | vs today's v1..v{versions} |",
        "|---|---:|" + "---:|" * (versions + 1),
    ]
    for s in schemes:
        ratios = " | ".join(f"{b / s.after[0]:.3f}x" for b in s.after[1:])
        lines.append(f"| {s.name} | {s.after[0] / MiB:.2f} | {ratios} | "
                     f"{s.after[-1] / MiB:.2f} | {s.after[-1] / today.after[-1]:.2f}x |")
    lines += [
        "",
        "| scheme | distinct blocks | stored as deltas | of which base by similarity | "
        f"chain depth (blocks) | reads per block to restore v{versions} (mean / max) | index | "
        "GC rule |",
        "|---|---:|---:|---:|---|---:|---|---|",
    ]
    for s in schemes:
        index, gc = design_costs(s.name)
        depth = ", ".join(f"{d}: {n}" for d, n in sorted(s.depths.items())) or "–"
        reads = f"{s.reads[0]:.2f} / {s.reads[1]}" if s.reads else "v1..vN in turn"
        blocks = f"{s.new_blocks:,}" if s.new_blocks else "–"
        share = f"{s.deltas:,} ({s.deltas / s.new_blocks:.1%})" if s.new_blocks else "–"
        similar = f"{s.by_similarity:,}" if isinstance(s, DeltaScheme) else "–"
        lines.append(f"| {s.name} | {blocks} | {share} | {similar} | {depth} | "
                     f"{reads} | {index} | {gc} |")
    return lines + [""]


def write_report(path: Path, chains: list[tuple[str, dict, list[Scheme], list[dict]]],
                 command: str, same_v1: bool | None) -> None:
    lines = [
        "# Ten versions in one region under other block schemes (issue #12)",
        "",
        f"- Command: `{command}`",
        f"- Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC}",
        "- Images: bench/update_bench.py's ext4 chain built by bench/fs_workload.py; computed "
        "offline from the image files, no store written. Ratios are each scheme's bytes for "
        "v1..vN against its own bytes for v1. Schemes and their parameters: the docstring "
        "of bench/storage_schemes.py.",
        "- Reads per block: the stored blocks a restore of the last version reads to rebuild "
        "each of its "
        "blocks (itself, its delta base chain, the blocks holding the pages it refers to, "
        "and theirs), before any cache.",
        "- Target: ten versions ≤ 1.3x one version.",
    ]
    if same_v1 is not None:
        lines.append("- v1 of the two chains: " + (
            "the same image." if same_v1 else "not byte-identical (each chain copies its "
            "source tree from this host's files when it is built, and they changed in "
            "between, e.g. Python byte code caches): each chain's ratios are against its "
            "own v1."))
    lines.append("")
    for title, workload, schemes, changes in chains:
        lines += chain_section(title, workload, schemes, changes)
    path.write_text("\n".join(lines))


def chain_images(directory: Path | None, workload: dict) -> list[Path]:
    """The ten images in `directory`, built there first when it holds fewer."""
    work = directory or Path(tempfile.mkdtemp(prefix="ir-schemes-"))
    return fw.chain_in(work, types.SimpleNamespace(**workload), VERSIONS)


def study(images: list[Path]) -> tuple[list[Scheme], list[dict[str, float]]]:
    schemes, changes = measure(images)
    schemes.insert(4, patch_bound(images, schemes[0].after[0]))
    return schemes, changes


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--chain-dir", type=Path,
                   help="a directory holding v1-a.img, v2.img ... of the default workload "
                        "(built there if missing)")
    p.add_argument("--light-chain-dir", type=Path,
                   help="the same for the lighter update (LIGHT_WORKLOAD); without it only "
                        "the default chain is studied")
    p.add_argument("--out", type=Path, default=HERE / "STORAGE_SCHEMES.md")
    args = p.parse_args()
    chains = []
    runs = [("Default update (300 files rewritten, a 4 MiB package)", args.chain_dir,
             DEFAULT_WORKLOAD)]
    if args.light_chain_dir:
        runs.append(("Lighter update (calibrated to ~0.4% of 4 KiB pages per version)",
                     args.light_chain_dir, LIGHT_WORKLOAD))
    v1_digests = []
    for title, directory, workload in runs:
        images = chain_images(directory, workload)
        v1_digests.append(hashlib.sha256(images[0].read_bytes()).digest())
        schemes, changes = study(images)
        chains.append((title, workload, schemes, changes))
    command = shlex.join([sys.executable, os.path.relpath(sys.argv[0])] + sys.argv[1:])
    same_v1 = v1_digests[0] == v1_digests[1] if len(v1_digests) == 2 else None
    write_report(args.out, chains, command, same_v1)
    print(f"[storage_schemes] wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
