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
  closest a block store gets to rsync's byte matching without 4 KiB manifest entries.

Needs the `zstandard` module (`pip install zstandard`). Writes bench/STORAGE_SCHEMES.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import shlex
import sys
import tempfile
import types
from pathlib import Path

import zstandard

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import update_bench as ub  # noqa: E402

MiB = 1024 * 1024
PAGE = 4096
PAGE_REF_BYTES = 8


class Scheme:
    def __init__(self, name: str):
        self.name = name
        self.total = 0
        self.after: list[int] = []


def stored(compressor: zstandard.ZstdCompressor, data: bytes) -> int:
    """Bytes kept for `data`: compressed when that saves at least 1/8, else raw."""
    size = len(compressor.compress(data))
    return size if size <= len(data) - len(data) // 8 else len(data)


def measure(images: list[Path]) -> list[Scheme]:
    z1, z3 = zstandard.ZstdCompressor(level=1), zstandard.ZstdCompressor(level=3)
    plain1, plain3 = Scheme("64 KiB blocks, zstd -1 (today)"), Scheme("64 KiB blocks, zstd -3")
    small = Scheme("16 KiB blocks, zstd -1")
    paged = Scheme("64 KiB blocks, new 4 KiB pages deduplicated, zstd -3 on the rest")
    seen64: set[bytes] = set()
    seen16: set[bytes] = set()
    pages: set[bytes] = set()
    zero64, zero16, zero_page = bytes(65536), bytes(16384), bytes(PAGE)
    for image in images:
        with open(image, "rb") as f:
            while block := f.read(65536):
                if block == zero64:
                    continue
                digest = hashlib.sha256(block).digest()
                if digest not in seen64:
                    seen64.add(digest)
                    plain1.total += stored(z1, block)
                    plain3.total += stored(z3, block)
                    literal = bytearray()
                    refs = 0
                    for at in range(0, len(block), PAGE):
                        page = block[at:at + PAGE]
                        if page == zero_page:
                            continue
                        key = hashlib.sha256(page).digest()
                        if key in pages:
                            refs += 1
                        else:
                            pages.add(key)
                            literal += page
                    paged.total += refs * PAGE_REF_BYTES + (stored(z3, bytes(literal))
                                                            if literal else 0)
                for at in range(0, len(block), 16384):
                    piece = block[at:at + 16384]
                    if piece == zero16:
                        continue
                    key = hashlib.sha256(piece).digest()
                    if key not in seen16:
                        seen16.add(key)
                        small.total += stored(z1, piece)
        for scheme in (plain1, plain3, small, paged):
            scheme.after.append(scheme.total)
        print(f"[storage_schemes] {image.name}: " + ", ".join(
            f"{s.after[-1] / s.after[0]:.3f}x" for s in (plain1, plain3, small, paged)),
            flush=True)
    return [plain1, plain3, small, paged]


def write_report(path: Path, schemes: list[Scheme], command: str) -> None:
    versions = len(schemes[0].after)
    lines = [
        "# Ten versions in one region under other block schemes (issue #12)",
        "",
        f"- Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- Command: `{command}`",
        "- Images: bench/update_bench.py's ext4 chain (bench/fs_workload.py, defaults); "
        "computed offline from the image files, no store written.",
        "",
        "| scheme | one version (MiB) | " + " | ".join(f"v1..v{n}" for n in
                                                       range(2, versions + 1)) + " |",
        "|---|---:|" + "---:|" * (versions - 1),
    ]
    for s in schemes:
        ratios = " | ".join(f"{b / s.after[0]:.3f}x" for b in s.after[1:])
        lines.append(f"| {s.name} | {s.after[0] / MiB:.2f} | {ratios} |")
    lines += ["", "Target: ten versions ≤ 1.3x one version.", ""]
    path.write_text("\n".join(lines))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--chain-dir", type=Path,
                   help="a directory holding v1-a.img, v2.img ... (built there if missing)")
    p.add_argument("--out", type=Path, default=HERE / "STORAGE_SCHEMES.md")
    args = p.parse_args()
    work = args.chain_dir or Path(tempfile.mkdtemp(prefix="ir-schemes-"))
    work.mkdir(parents=True, exist_ok=True)
    images = sorted(work.glob("v*.img"), key=lambda p: int(p.stem.split("-")[0][1:]))
    if len(images) < 10:
        chain = types.SimpleNamespace(data_mib=300, image_mib=512, versions=10, rewrites=300,
                                      deletes=10, package_mib=4, seed=12, allocator="fresh")
        images = ub.build_chain(chain, work)
    schemes = measure(images)
    command = shlex.join([sys.executable, os.path.relpath(sys.argv[0])] + sys.argv[1:])
    write_report(args.out, schemes, command)
    print(f"[storage_schemes] wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
