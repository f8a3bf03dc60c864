#!/usr/bin/env python3
"""Issue #12 benchmark: what replicating an updated filesystem image moves, and what ten
versions of it cost in a region, beside rsync in the same run.

The images are the ones bench/fs_workload.py builds (an ext4 image of real files made with
`mke2fs -d`, then OS-update-like versions edited with `debugfs -w`; byte-reproducible). On
them, in one run:

1. rsync's delta transfer of v2 onto a copy of v1 (literal data, bytes sent, with and
   without -z);
2. imagerelay: v1 imported into region bj and replicated to gz (a full copy), then v2
   imported into bj and replicated to gz, where v1 is: the bytes sent (compressed), the
   bytes of the image moved, and the time, against the full copy's;
3. storage: v1..vN imported one after another into a fresh region: the bytes its packs
   hold against those of v1 alone;
4. the manifest of one version (its size, and how long opening it takes).

Writes bench/UPDATE_RESULTS.md. Needs e2fsprogs and rsync (scripts/install-deps.sh).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import fs_workload as fw  # noqa: E402

import imagerelay as ir  # noqa: E402

MiB = 1024 * 1024


def region_bytes(root: Path) -> tuple[int, int]:
    """(bytes of pack files, number of packs) under a region directory."""
    packs = [p for p in (root / "packs").glob("*/*") if p.is_file() and len(p.name) == 32]
    return sum(p.stat().st_size for p in packs), len(packs)


def index_figures(root: Path) -> tuple[int, int, int]:
    """(bytes of the region's block index once its write-ahead log is folded in, bytes of
    that log's file as it was, rows of its resemblance index) under a region directory."""
    db_file = root / "index" / "blocks.sqlite"
    wal = db_file.with_name(db_file.name + "-wal")
    wal_bytes = wal.stat().st_size if wal.exists() else 0
    with sqlite3.connect(db_file) as db:
        db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        features = db.execute("SELECT count(*) FROM features").fetchone()[0]
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
    return pages * page_size, wal_bytes, features


def build_chain(args, work: Path) -> list[Path]:
    if args.chain_dir:  # kept between runs (built there the first time)
        return fw.chain_in(args.chain_dir, args, args.versions)
    return fw.build_chain(args, work, args.versions)


def timed(fn):
    t0 = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t0


def run(args) -> dict:
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    work = Path(tempfile.mkdtemp(prefix="ir-update-bench-", dir=args.workdir))
    try:
        images = build_chain(args, work)
        rsync = [fw.rsync_delta(images[0], images[1], work, False),
                 fw.rsync_delta(images[0], images[1], work, True)]
        # What rsync -z sends for each update of the chain: the storage a delta store with
        # compression could not go below (each version's new data, compressed).
        rsync_z_chain = [rsync[1]["sent"]] + [
            fw.rsync_delta(a, b, work, True)["sent"] for a, b in zip(images[1:], images[2:])]

        home = work / "home"
        with ir.open(home) as cloud:
            v1, t_import1 = timed(lambda: cloud.import_image(images[0], region="bj", name="v1"))
            v2, t_import2 = timed(lambda: cloud.import_image(images[1], region="bj", name="v2"))
            # Each round: v1 to a fresh region (the full copy), then v2 to it (the update).
            # Both sources are warm in the page cache, as right after a playbook's import.
            # rsync's copies above left ~1 GiB of dirty pages, which the first copy's flush
            # (syncfs) would write out for it: written out before the rounds, as after an
            # import, which writes its packs around the page cache.
            os.sync()
            t_fulls, t_updates = [], []
            for n in range(args.rounds):
                region = f"gz{n + 1}"
                cloud.add_region(region, str(work / region))
                job1, t_full = timed(lambda: v1.replicate([region]).wait())
                job2, t_update = timed(lambda: v2.replicate([region]).wait())
                assert job2.copies[region].verify() == v2.digest
                t_fulls.append(t_full)
                t_updates.append(t_update)
            full, update = job1.tasks[region], job2.tasks[region]
            manifest = home / "regions" / "bj" / "manifests" / f"{v1.id}.bin"
            manifest_bytes = manifest.stat().st_size
            _, t_manifest = timed(lambda: v1.verify())

            # Storage: every version into a fresh region.
            cloud.add_region("chain", str(work / "chain"))
            chain = []
            for i, image in enumerate(images, 1):
                cloud.import_image(image, region="chain", name=f"v{i}")
                chain.append(region_bytes(work / "chain"))
                if i == 1:
                    index_one = index_figures(work / "chain")[0]
            index_bytes, wal_bytes, features = index_figures(work / "chain")
        return {
            "index_one": index_one,
            "index_bytes": index_bytes,
            "wal_bytes": wal_bytes,
            "features": features,
            "workload": {"rewrites": args.rewrites, "deletes": args.deletes,
                         "package_mib": args.package_mib},
            "load": load,
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "command": shlex.join([sys.executable, os.path.relpath(sys.argv[0])] + sys.argv[1:]),
            "image_bytes": images[0].stat().st_size, "versions": len(images),
            "rsync": rsync, "rsync_z_chain": rsync_z_chain, "full": full, "update": update, "t_fulls": t_fulls,
            "t_updates": t_updates, "t_import1": t_import1, "t_import2": t_import2,
            "manifest_bytes": manifest_bytes, "t_verify": t_manifest, "chain": chain,
        }
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def mib(n: float) -> str:
    return f"{n / MiB:.2f}"


def write_report(path: Path, r: dict) -> None:
    lit, z = r["rsync"]
    full, upd = r["full"], r["update"]
    one = r["chain"][0][0]
    last = r["chain"][-1][0]
    wire_vs_rsync = upd.bytes_sent / lit["literal"]
    t_full, t_update = min(r["t_fulls"]), min(r["t_updates"])
    time_ratio = t_update / t_full
    median_ratio = statistics.median(r["t_updates"]) / statistics.median(r["t_fulls"])
    runs = f"{len(r['t_fulls'])} rounds"
    lines = [
        "# Replicating an updated filesystem image (issue #12)",
        "",
        f"- Date: {r['date']}",
        f"- Command: `{r['command']}`",
        f"- Images: bench/fs_workload.py's ext4 chain ({mib(r['image_bytes'])} MiB, "
        f"{r['versions']} versions), default `ir.Limits()` (64 KiB blocks, zstd level 1, "
        "16 MiB packs), local regions on this machine's disk.",
        "",
        "## v2 replicated to a region that holds v1",
        "",
        "| what | bytes sent (MiB) | image bytes moved (MiB) | time (s) |",
        "|---|---:|---:|---:|",
        f"| `{lit['cmd']}` | {mib(lit['sent'])} (literal data {mib(lit['literal'])}) | – | "
        f"{lit['seconds']:.2f} |",
        f"| `{z['cmd']}` | {mib(z['sent'])} | – | {z['seconds']:.2f} |",
        f"| imagerelay replicate v2 (v1 there) | **{mib(upd.bytes_sent)}** | "
        f"{mib(upd.bytes_transferred)} | {t_update:.3f} (best of {runs}; all: "
        f"{', '.join(f'{t:.3f}' for t in r['t_updates'])}) |",
        f"| imagerelay replicate v1 (full copy) | {mib(full.bytes_sent)} | "
        f"{mib(full.bytes_transferred)} | {t_full:.3f} (best of {runs}; all: "
        f"{', '.join(f'{t:.3f}' for t in r['t_fulls'])}) |",
        "",
        f"- Bytes on the wire vs rsync's literal data: **{wire_vs_rsync:.2f}x** "
        f"(target ≤ 1.0x: {'PASS' if wire_vs_rsync <= 1.0 else 'FAIL'}); vs rsync -z's bytes "
        f"sent: {upd.bytes_sent / z['sent']:.2f}x.",
        f"- Time vs the full copy: **{time_ratio:.1%}** best vs best (target ≤ 10%: "
        f"{'PASS' if time_ratio <= 0.10 else 'FAIL'}); {median_ratio:.1%} median vs median. "
        f"Each round copies v1 to a fresh region, then v2 to it; both images are warm in "
        f"the page cache (imported just before), as after a playbook's import step.",
        f"- Load average at the start: {r['load']}.",
        f"- Imports into bj for reference: v1 {r['t_import1']:.2f} s, v2 {r['t_import2']:.2f} s.",
        "",
        "## Storage: every version in one region",
        "",
        "| versions | pack bytes (MiB) | packs | vs one version |",
        "|---:|---:|---:|---:|",
    ]
    for i, (b, n) in enumerate(r["chain"], 1):
        lines.append(f"| {i} | {mib(b)} | {n} | {b / one:.2f}x |")
    ratio = last / one
    lines += [
        "",
        f"- {r['versions']} versions cost **{ratio:.2f}x** the bytes of one (target ≤ 1.3x: "
        f"{'PASS' if ratio <= 1.3 else 'FAIL'}). Compressed blocks count at their stored size; "
        "a block like one stored before is kept as a zstd delta against it "
        "(docs/data-plane-v2.md, \"Delta blocks\").",
        f"- Beside the packs, the region's block index (SQLite; rebuildable from the packs' "
        f"footers but for its resemblance rows): {mib(r['index_one'])} MiB after one version, "
        f"{mib(r['index_bytes'])} MiB after {r['versions']} ({r['index_bytes'] / last:.1%} of "
        f"the packs; its write-ahead log file, reused, not counted: {mib(r['wal_bytes'])} "
        f"MiB), {r['features']:,} of its rows the resemblance index (one per 4 KiB page of "
        f"each whole block). Packs and index together: **"
        f"{(last + r['index_bytes']) / (one + r['index_one']):.2f}x** one version's.",
        f"- For scale: one version stored plus what `rsync -z` sends for each of the "
        f"{r['versions'] - 1} updates ({mib(sum(r['rsync_z_chain']))} MiB in all) would be "
        f"**{(one + sum(r['rsync_z_chain'])) / one:.2f}x** one version (not a floor: a "
        "whole-image delta is smaller still, bench/STORAGE_SCHEMES.md). Each update rewrites "
        f"{r['workload']['rewrites']} files, deletes {r['workload']['deletes']} and adds a "
        f"{r['workload']['package_mib']:g} MiB package (bench/fs_workload.py).",
        "",
        "## Manifest",
        "",
        f"- One version's manifest: {r['manifest_bytes']:,} bytes (binary, 32 bytes for each "
        f"of its {r['image_bytes'] // (64 * 1024):,} blocks of 64 KiB); a verify of v1 (reads "
        f"the manifest and every block) took {r['t_verify']:.2f} s. How manifests scale to "
        "200 GiB: bench/MANIFEST_RESULTS.md.",
        "",
    ]
    path.write_text("\n".join(lines))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    fw.add_workload_arguments(p)
    p.add_argument("--versions", type=int, default=10)
    p.add_argument("--rounds", type=int, default=5, help="timed full + update copies")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--chain-dir", type=Path,
                   help="keep the chain's images here, and reuse them when they are there "
                        "(built with the same workload options)")
    p.add_argument("--out", type=Path, default=HERE / "UPDATE_RESULTS.md")
    args = p.parse_args()
    r = run(args)
    write_report(args.out, r)
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
