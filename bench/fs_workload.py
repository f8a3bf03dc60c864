#!/usr/bin/env python3
"""A realistic, deterministic ext4 update workload, and what each chunking would move (issue #12).

    python3 bench/fs_workload.py                      # ~300 MiB of files in a 512 MiB image, 10 versions
    python3 bench/fs_workload.py --data-mib 64 --image-mib 128 --versions 3 --out /tmp/x.md   # smoke run
    python3 bench/fs_workload.py --self-test          # checks the chunker and the file edits, no image

What it does, in order (every step is timed; the report lists the times):

1. Source tree. Copies a fixed selection of REAL files from this machine into a temporary tree:
   Python sources and byte code, package docs, message catalogues and shared libraries (see
   SOURCE_ROOTS: each root is walked in sorted order and files are taken until its byte budget is
   reached; files larger than FILE_SIZE_CAP, symlinks and names debugfs could not parse unquoted
   are skipped). The files left over form a reserve from which the updates draw "new packages".
   A manifest (path, size, mode, SHA-256 of each file) is hashed into the *tree digest*: two
   machines built the same tree if and only if their digests match (they differ whenever the
   installed Debian packages differ).
2. Version 1. `mke2fs -t ext4 -d TREE` with a fixed UUID, hash seed, our own mke2fs.conf
   (MKE2FS_CONFIG, so /etc/mke2fs.conf does not matter), explicit zeroing of the inode tables and
   journal (`lazy_itable_init=0,lazy_journal_init=0,nodiscard`, so whether the host supports
   discard does not matter) and E2FSPROGS_FAKE_TIME (plus SOURCE_DATE_EPOCH for newer e2fsprogs).
   The journal is kept (`has_journal`, as on real VM images); note that debugfs never writes it.
3. Versions 2..N. Each is an "OS update" applied to a copy of the previous image with
   `debugfs -w` under a seeded RNG: a few hundred files are replaced by similar content (a few
   lines or byte ranges changed, 1-5% appended; a quarter are only appended to), in packages of
   FILES_PER_PACKAGE replaced the way dpkg does it (every file written as NAME.dpkg-new, which
   gets a new inode and new blocks while the old file still exists; then the old files removed;
   then the new ones linked under the old names and the .dpkg-new names dropped); a new package
   of real files (a few MiB) is added under /usr/lib/imagerelay-pkg-vN; a few files are
   deleted; the touched directories get the update's mtime/ctime. `e2fsck -fn` must pass on
   every version. Where new data lands is chosen by --allocator (see Placement): plain
   debugfs first-fit, or (default) a kernel-like approximation that keeps new data out of
   small free holes and out of the blocks the update itself frees.
4. Measurements on the pair (v1, v2): for fixed blocks of 4 MiB .. 4 KiB, the share of v2's
   blocks whose SHA-256 is found nowhere in v1 (a content-addressed store deduplicates across the
   whole image) and the bytes that would move (each new distinct block once); the same for a
   FastCDC-style content-defined chunker (gear hash, min 16 KiB / normal 64 KiB / max 256 KiB);
   zstd level 1 and 3 on the new 64 KiB blocks, each compressed on its own as a pack writer
   would; `rsync --no-whole-file --inplace` literal data and, with -z, bytes sent; and a
   breakdown of the 4 KiB blocks that changed in place (superblock/descriptors, bitmaps, inode
   tables, journal, directories, file data) with where debugfs put the rewritten files.
5. The chain v1..vN: unique bytes of all versions together vs one version, at 4 MiB, 64 KiB,
   16 KiB, 4 KiB and CDC (the target is a store at most 1.3x one version at 64 KiB).

Reproducibility: with e2fsprogs 1.47.0 (Debian 12) the images are byte-for-byte reproducible
given the same tree digest; the run checks it by building the tree twice (so every host file
has a different ctime), making v1 from each and v2 from each v1, and comparing SHA-256s (the
report says whether they matched). What would otherwise vary, and is pinned: mke2fs copies each
host file's atime/mtime/ctime into its inode (the tree's atime/mtime are set with utime; ctime
cannot be set on the host, so it is rewritten afterwards with `debugfs sif`); the superblock,
journal and new inodes take the current time (E2FSPROGS_FAKE_TIME); UUID, directory hash seed
and checksum seed (from the UUID) are random unless given; mke2fs.conf features and
discard/lazy-init behaviour depend on the host. A different e2fsprogs version may lay out the
file system differently, so the report records `mke2fs -V`.

Only the standard library is needed. `numpy` makes the content-defined chunker fast
(vectorised gear hash, ~200 MiB/s here; without it a pure-Python chunker gives the same cuts at
~15 MiB/s, which adds about 7 minutes to a default run: 12 images of 512 MiB). `zstandard`
compresses block by block (without it the `zstd` CLI compresses the concatenation, which
flatters the ratio). Work files live in a temporary directory that is deleted at the end
(--keep keeps it). Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import datetime as dt
import hashlib
import os
import platform
import random
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

try:  # optional: vectorised gear hash
    import numpy as np
except ImportError:  # pragma: no cover - exercised on machines without numpy
    np = None
try:  # optional: per-block zstd
    import zstandard
except ImportError:  # pragma: no cover
    zstandard = None

KiB, MiB = 1 << 10, 1 << 20
FS_BLOCK = 4 * KiB

# Fixed identities, so that two builds of the same tree give the same bytes.
FS_UUID = "6d1f0c2e-1b7a-4c55-9d0e-2f6a1c3b4d5e"
HASH_SEED = "3a9e4b2c-7d10-4e8f-a6b5-0c1d2e3f4a5b"
FS_LABEL = "irbench"
BASE_EPOCH = 1_700_000_000          # 2023-11-14 22:13:20 UTC: version 1's clock
VERSION_STEP_S = 86_400             # each later version is one day later

# mke2fs.conf of Debian 12 (e2fsprogs 1.47.0) for ext4, written out so that the host's
# /etc/mke2fs.conf cannot change the layout.
MKE2FS_CONF = """\
[defaults]
\tbase_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
\tdefault_mntopts = acl,user_xattr
\tenable_periodic_fsck = 0
\tblocksize = 4096
\tinode_size = 256
\tinode_ratio = 16384

[fs_types]
\text4 = {
\t\tfeatures = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
\t}
"""

# (root, which files, share of the data budget). Walked in sorted order; see select_source_files.
SOURCE_ROOTS: tuple[tuple[str, str, float], ...] = (
    ("/usr/lib/python3.11", "*", 0.18),                 # stdlib .py and __pycache__/*.pyc
    ("/usr/lib/python3/dist-packages", "*", 0.12),
    ("/usr/share/doc", "*", 0.12),                      # changelogs (.gz), copyright files
    ("/usr/share/locale", "*", 0.13),                   # .mo catalogues
    ("/usr/lib/x86_64-linux-gnu", "*.so*", 0.45),       # shared libraries
)
FILE_SIZE_CAP = 16 * MiB
SAFE_NAME = re.compile(r"^[A-Za-z0-9._+,=@-]+$")        # debugfs's parser needs no quoting for these

FIXED_BLOCK_SIZES = (4 * MiB, 1 * MiB, 256 * KiB, 128 * KiB, 64 * KiB, 16 * KiB, 4 * KiB)
CHAIN_BLOCK_SIZES = (4 * MiB, 64 * KiB, 16 * KiB, 4 * KiB)
STORE_TARGET_RATIO = 1.3

# FastCDC-style chunking (Xia et al., 2016, "normalized chunking" level 2): below the normal
# size a cut needs 18 zero bits of the gear hash, above it 14, and MAX forces a cut.
CDC_MIN, CDC_NORMAL, CDC_MAX = 16 * KiB, 64 * KiB, 256 * KiB
MASK64 = (1 << 64) - 1
# The top bits of a 64-bit gear hash: bit j depends on the last j+1 bytes, so the top bits see
# a 47..64 byte window. MASK_L's bits are a subset of MASK_S's: an S hit is also an L hit.
CDC_MASK_S = ((1 << 18) - 1) << 46
CDC_MASK_L = ((1 << 14) - 1) << 50
CDC_NUMPY_WINDOW = 1 * MiB          # 8 MiB of uint64 per pass: stays in cache (4x faster than 16 MiB)


def _gear_table() -> list[int]:
    """256 fixed pseudo-random 64-bit values (derived from SHA-256, so identical everywhere)."""
    return [int.from_bytes(hashlib.sha256(b"imagerelay-gear-%d" % i).digest()[:8], "little")
            for i in range(256)]


GEAR = _gear_table()


# ----------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------
def log(msg: str) -> None:
    print(f"[fs_workload {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class StepTimer:
    """Records how long each named step took, in the order the steps ran."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, float]] = []

    def run(self, name: str, fn, *args, **kwargs):
        log(f"{name} ...")
        t0 = time.perf_counter()
        result = fn(*args, **kwargs)
        elapsed = time.perf_counter() - t0
        self.steps.append((name, elapsed))
        log(f"{name}: {elapsed:.1f}s")
        return result


def run(cmd: list[str], *, env: dict[str, str] | None = None, input_text: str | None = None,
        check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env, input=input_text, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def fmt_mib(n: float) -> str:
    return f"{n / MiB:,.2f}"


def tool_version(cmd: list[str]) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except FileNotFoundError:
        return "not installed"
    out = (proc.stdout + proc.stderr).strip().splitlines()
    return out[0].strip() if out else "?"


def e2fs_env(epoch: int) -> dict[str, str]:
    """Environment for e2fsprogs: a fixed clock, no pager, our mke2fs.conf if one was written."""
    env = dict(os.environ)
    env.update(E2FSPROGS_FAKE_TIME=str(epoch), SOURCE_DATE_EPOCH=str(epoch),
               DEBUGFS_PAGER="__none__", PAGER="__none__", TZ="UTC")
    return env


# ----------------------------------------------------------------------------------------
# 1. the source tree
# ----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SourceFile:
    host_path: str      # where it is on this machine
    image_path: str     # where it goes in the image (the same absolute path)
    size: int


def _walk_sorted(root: str):
    """Regular files under root, depth-first in byte-sorted order, without following symlinks."""
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name.encode())
    except OSError:
        return
    for entry in entries:
        if not SAFE_NAME.match(entry.name):
            continue
        if entry.is_dir(follow_symlinks=False):
            yield from _walk_sorted(entry.path)
        elif entry.is_file(follow_symlinks=False):
            yield entry


def select_source_files(data_bytes: int) -> tuple[list[SourceFile], list[SourceFile]]:
    """The files of the source tree and the reserve that new packages are drawn from.

    Each root gets its share of data_bytes; its files are taken in sorted order, skipping any
    that would overshoot the share, until the share is full. What is not taken (and not over
    FILE_SIZE_CAP) goes to the reserve, in the same order.
    """
    selected: list[SourceFile] = []
    reserve: list[SourceFile] = []
    for root, pattern, share in SOURCE_ROOTS:
        budget = int(data_bytes * share)
        used = 0
        for entry in _walk_sorted(root):
            if pattern != "*" and not Path(entry.name).match(pattern):
                continue
            size = entry.stat(follow_symlinks=False).st_size
            if size > FILE_SIZE_CAP or not os.access(entry.path, os.R_OK):
                continue
            sf = SourceFile(entry.path, entry.path, size)
            if used + size <= budget:
                selected.append(sf)
                used += size
            else:
                reserve.append(sf)
    return selected, reserve


def copy_source_tree(files: list[SourceFile], tree: Path) -> tuple[str, int]:
    """Copies files into tree (mode & 0o755, fixed times). Returns (tree digest, bytes)."""
    manifest = hashlib.sha256()
    total = 0
    for sf in files:
        dest = tree / sf.image_path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        data = Path(sf.host_path).read_bytes()
        dest.write_bytes(data)
        # Only the permission bits that matter for a realistic image; no setuid, no odd modes.
        mode = 0o755 if os.stat(sf.host_path).st_mode & 0o111 else 0o644
        os.chmod(dest, mode)
        os.utime(dest, (BASE_EPOCH, BASE_EPOCH))
        manifest.update(f"{sf.image_path}\t{len(data)}\t{mode:o}\t"
                        f"{hashlib.sha256(data).hexdigest()}\n".encode())
        total += len(data)
    for dirpath, _dirnames, _filenames in os.walk(tree, topdown=False):
        os.chmod(dirpath, 0o755)
        os.utime(dirpath, (BASE_EPOCH, BASE_EPOCH))
    return manifest.hexdigest(), total


def tree_paths(tree: Path) -> list[str]:
    """Every directory and file of the tree as an image path ('/' first), sorted."""
    paths = ["/"]
    for dirpath, dirnames, filenames in os.walk(tree):
        rel = "/" + os.path.relpath(dirpath, tree)
        base = "" if rel == "/." else rel
        paths += [f"{base}/{name}" for name in dirnames + filenames]
    return sorted(paths)


# ----------------------------------------------------------------------------------------
# 2. version 1: mke2fs -d
# ----------------------------------------------------------------------------------------
def debugfs_script(image: Path, commands: list[str], epoch: int, *, write: bool) -> list[tuple[str, str]]:
    """Runs commands in one debugfs session; returns (command, its output) pairs.

    debugfs exits 0 even when a command fails, so anything on stderr besides its banner is
    treated as an error.
    """
    with tempfile.NamedTemporaryFile("w", suffix=".debugfs", delete=False) as f:
        f.write("\n".join(commands) + "\n")
        script = f.name
    try:
        cmd = ["debugfs"] + (["-w"] if write else []) + ["-f", script, str(image)]
        proc = run(cmd, env=e2fs_env(epoch))
    finally:
        os.unlink(script)
    errors = [line for line in proc.stderr.splitlines() if not line.startswith("debugfs ")]
    if errors:
        raise RuntimeError("debugfs reported errors:\n" + "\n".join(errors[:20]))
    results: list[tuple[str, str]] = []
    for line in proc.stdout.splitlines():
        if line.startswith("debugfs: "):
            results.append((line[len("debugfs: "):], ""))
        elif results:
            results[-1] = (results[-1][0], results[-1][1] + line + "\n")
    return results


def make_filesystem(tree: Path, image: Path, image_bytes: int, conf: Path) -> None:
    """mke2fs -d with everything that would vary pinned; then the inode ctimes fixed."""
    with open(image, "wb") as f:
        f.truncate(image_bytes)
    env = e2fs_env(BASE_EPOCH)
    env["MKE2FS_CONFIG"] = str(conf)
    run(["mke2fs", "-q", "-F", "-t", "ext4", "-b", str(FS_BLOCK), "-U", FS_UUID, "-L", FS_LABEL,
         "-E", f"root_owner=0:0,hash_seed={HASH_SEED},lazy_itable_init=0,lazy_journal_init=0,"
               "nodiscard",
         "-d", str(tree), str(image), f"{image_bytes // KiB}k"], env=env)
    # mke2fs copies each host file's ctime (the time we copied it); pin it like the rest.
    debugfs_script(image, [f"sif {p} ctime @{BASE_EPOCH}" for p in tree_paths(tree)],
                   BASE_EPOCH, write=True)


def fsck_clean(image: Path) -> bool:
    return subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True).returncode == 0


def filesystem_usage(image: Path) -> dict[str, int]:
    out = run(["dumpe2fs", "-h", str(image)]).stdout
    def field(name: str) -> int:
        return int(re.search(rf"^{name}:\s+(\d+)", out, re.M).group(1))
    return {"blocks": field("Block count"), "free_blocks": field("Free blocks"),
            "inodes": field("Inode count"), "free_inodes": field("Free inodes")}


# ----------------------------------------------------------------------------------------
# 3. the OS update
# ----------------------------------------------------------------------------------------
def _bump_line(line: bytes, rng: random.Random, tag: bytes) -> bytes:
    """A plausible one-line edit: a number changes (a version bump), else a token is added."""
    digits = list(re.finditer(rb"\d+", line))
    if digits:
        m = rng.choice(digits)
        return line[:m.start()] + str(int(m.group()) + rng.randint(1, 9)).encode() + line[m.end():]
    body = line.rstrip(b"\r\n")
    return body + b" " + tag + line[len(body):]


def _appended_tail(body: bytes, rng: random.Random, tag: bytes, text: bool) -> bytes:
    """1-5% more bytes, made of pieces of the file itself (new code looks like old code)."""
    target = max(16, int(len(body) * rng.uniform(0.01, 0.05)))
    pieces, size = [], 0
    lines = body.splitlines(keepends=True) if text else []
    while size < target:
        if lines:
            piece = _bump_line(rng.choice(lines), rng, tag)
        elif body:
            start = rng.randrange(len(body))
            piece = body[start:start + rng.randint(64, 1024)]
        else:
            piece = tag + b"\n"
        pieces.append(piece)
        size += len(piece)
    return b"".join(pieces)[:target]


def rewritten_text(data: bytes, rng: random.Random, tag: bytes) -> bytes:
    """A new version of a text file: a few lines edited, inserted or removed, 1-5% appended."""
    lines = data.splitlines(keepends=True) or [b"\n"]
    for _ in range(rng.randint(1, max(1, min(10, len(lines) // 30 + 1)))):
        i = rng.randrange(len(lines))
        kind = rng.random()
        if kind < 0.6:
            lines[i] = _bump_line(lines[i], rng, tag)
        elif kind < 0.85:
            lines.insert(i, _bump_line(rng.choice(lines), rng, tag))
        elif len(lines) > 1:
            del lines[i]
    body = b"".join(lines)
    return body + _appended_tail(body, rng, tag, text=True)


def rewritten_binary(data: bytes, rng: random.Random, tag: bytes) -> bytes:
    """A new build of a binary: a few byte ranges replaced, inserted or removed (shifting what
    follows, as relinked code does), 1-5% appended."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        if not buf:
            break
        at = rng.randrange(len(buf))
        src = rng.randrange(len(buf))
        kind = rng.random()
        if kind < 0.6:
            n = rng.randint(8, 256)
            buf[at:at + n] = buf[src:src + n]
        elif kind < 0.85:
            buf[at:at] = buf[src:src + rng.randint(16, 512)]
        else:
            del buf[at:at + rng.randint(16, 512)]
    body = bytes(buf)
    return body + _appended_tail(body, rng, tag, text=False)


def looks_like_text(data: bytes) -> bool:
    return b"\0" not in data[:8192]


@dataclasses.dataclass
class UpdateSummary:
    version: int
    rewritten: int = 0
    grown_only: int = 0
    bytes_before: int = 0          # old size of the rewritten files
    bytes_after: int = 0           # new size of the rewritten files
    package_files: int = 0
    package_bytes: int = 0
    deleted: int = 0
    deleted_bytes: int = 0
    fsck_ok: bool = False
    seconds: float = 0.0


class ImageState:
    """What the image holds, as host files: image path -> host path with its current content."""

    def __init__(self, files: list[SourceFile], tree: Path, reserve: list[SourceFile]):
        self.current: dict[str, Path] = {sf.image_path: tree / sf.image_path.lstrip("/")
                                         for sf in files}
        self.reserve = list(reserve)
        self.reserve_next = 0

    def copy(self) -> "ImageState":
        other = ImageState([], Path("/"), self.reserve)
        other.current = dict(self.current)
        other.reserve_next = self.reserve_next
        return other


def block_ranges(blocks) -> list[tuple[int, int]]:
    """Sorted block numbers as (first, count) runs."""
    runs: list[tuple[int, int]] = []
    for b in sorted(set(blocks)):
        if runs and runs[-1][0] + runs[-1][1] == b:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((b, 1))
    return runs


def free_extents(image: Path) -> list[tuple[int, int]]:
    """The free space of an image as (first block, count), merged across group boundaries."""
    out = run(["dumpe2fs", str(image)]).stdout
    free = []
    for line in re.findall(r"^\s+Free blocks: (.*)$", out, re.M):
        for part in filter(None, (x.strip() for x in line.split(","))):
            first, _, last = part.partition("-")
            free.append((int(first), int(last or first) - int(first) + 1))
    merged: list[tuple[int, int]] = []
    for first, count in sorted(free):
        if merged and merged[-1][0] + merged[-1][1] == first:
            merged[-1] = (merged[-1][0], merged[-1][1] + count)
        else:
            merged.append((first, count))
    return merged


def file_blocks(image: Path, paths: list[str]) -> dict[str, list[int]]:
    """Every block (data and extent tree) of each path, as debugfs `blocks` lists them."""
    return {cmd.split(" ", 1)[1]: [int(b) for b in text.split()]
            for cmd, text in debugfs_script(image, [f"blocks {p}" for p in paths],
                                            BASE_EPOCH, write=False)}


@dataclasses.dataclass
class Placement:
    """How new data is placed. 'first-fit' is plain debugfs: every new file goes to the first
    free blocks from the start of its flex group (here: of the file system), so it fills the
    holes left by earlier updates and by this one. 'fresh' approximates the kernel's mballoc,
    which serves small files from 2 MiB locality-group preallocations and prefers free
    extents of at least the request's normalised size: free extents shorter than
    FRESH_MIN_EXTENT are hidden (debugfs setb) while the update runs, and so are the blocks
    the update frees (a kernel cannot reuse them before the journal commits, and apt's next
    package would mostly not fit in them); all are released (freeb) at the end."""
    allocator: str
    small_holes: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    old_blocks: dict[str, list[int]] = dataclasses.field(default_factory=dict)


FRESH_MIN_EXTENT = 512          # blocks: mballoc's default locality-group preallocation (2 MiB)
PLACEMENT_TEXT = {
    "first-fit": "plain debugfs: new data fills the first free blocks from the start of the file "
                 "system, including holes this update just freed",
    "fresh": f"kernel-like: free extents under {FRESH_MIN_EXTENT * FS_BLOCK // MiB} MiB and the "
             "blocks this update frees are hidden while it runs, so new data lands in large free "
             "extents",
}
FILES_PER_PACKAGE = 25          # rewritten files are replaced package by package, like dpkg


def plan_os_update(state: ImageState, version: int, blob_dir: Path, seed: int, *,
                   rewrites: int, deletes: int, package_bytes: int, placement: Placement,
                   grow_only_share: float = 0.25) -> tuple[list[str], UpdateSummary]:
    """debugfs commands turning version-1 into version; updates state. Deterministic in seed.

    Rewritten files are grouped (in path order) into packages of FILES_PER_PACKAGE, replaced
    the way dpkg replaces a package: every file of the package is written as NAME.dpkg-new
    (new inode, new blocks, while the old file still exists), then the old files are removed,
    then each new file is linked under its old name and the .dpkg-new name dropped.
    """
    rng = random.Random(f"{seed}:{version}")
    tag = b"imagerelay-v%d" % version
    summary = UpdateSummary(version)
    epoch = BASE_EPOCH + (version - 1) * VERSION_STEP_S
    blob_dir.mkdir(parents=True, exist_ok=True)
    fresh = placement.allocator == "fresh"
    commands: list[str] = [f"setb {b} {n}" for b, n in placement.small_holes] if fresh else []
    hidden_freed: list[int] = []
    touched_dirs: set[str] = set()

    paths = sorted(state.current)
    chosen = rng.sample(paths, min(len(paths), rewrites + deletes))
    to_rewrite, to_delete = sorted(chosen[:rewrites]), sorted(chosen[rewrites:])

    for first in range(0, len(to_rewrite), FILES_PER_PACKAGE):
        package = to_rewrite[first:first + FILES_PER_PACKAGE]
        for n, path in enumerate(package, start=first):
            old_host = state.current[path]
            old = old_host.read_bytes()
            if rng.random() < grow_only_share:
                new = old + _appended_tail(old, rng, tag, text=looks_like_text(old))
                summary.grown_only += 1
            elif looks_like_text(old):
                new = rewritten_text(old, rng, tag)
            else:
                new = rewritten_binary(old, rng, tag)
            blob = blob_dir / f"r{n:05d}"
            blob.write_bytes(new)
            os.chmod(blob, stat.S_IMODE(os.stat(old_host).st_mode))
            commands.append(f"write {blob} {path}.dpkg-new")
            state.current[path] = blob
            touched_dirs.add(os.path.dirname(path))
            summary.rewritten += 1
            summary.bytes_before += len(old)
            summary.bytes_after += len(new)
        commands += [f"rm {path}" for path in package]
        if fresh:   # hide what was just freed before anything can be allocated again
            freed = [b for path in package for b in placement.old_blocks.get(path, [])]
            commands += [f"setb {b} {n}" for b, n in block_ranges(freed)]
            hidden_freed += freed
        for path in package:
            commands += [f"ln {path}.dpkg-new {path}", f"unlink {path}.dpkg-new"]

    pkg_dir = f"/usr/lib/imagerelay-pkg-v{version}"
    commands.append(f"mkdir {pkg_dir}")
    target = int(package_bytes * rng.uniform(0.75, 1.25))
    while summary.package_bytes < target and state.reserve_next < len(state.reserve):
        sf = state.reserve[state.reserve_next]
        state.reserve_next += 1
        dest = f"{pkg_dir}/{os.path.basename(sf.host_path)}"
        if dest in state.current or sf.size > target:   # one huge file is not a package
            continue
        commands.append(f"write {sf.host_path} {dest}")
        state.current[dest] = Path(sf.host_path)
        summary.package_files += 1
        summary.package_bytes += sf.size
    touched_dirs.update({pkg_dir, "/usr/lib"})

    # Files the new version no longer ships (dpkg removes them after unpacking).
    for path in to_delete:
        summary.deleted_bytes += state.current[path].stat().st_size
        commands.append(f"rm {path}")
        del state.current[path]
        touched_dirs.add(os.path.dirname(path))
        summary.deleted += 1

    for d in sorted(touched_dirs):
        commands += [f"sif {d} mtime @{epoch}", f"sif {d} ctime @{epoch}"]
    if fresh:
        commands += [f"freeb {b} {n}" for b, n in placement.small_holes]
        commands += [f"freeb {b} {n}" for b, n in block_ranges(hidden_freed)]
    return commands, summary


def make_next_version(prev_image: Path, image: Path, state: ImageState, version: int,
                      blob_dir: Path, args) -> UpdateSummary:
    t0 = time.perf_counter()
    shutil.copyfile(prev_image, image)
    placement = Placement(args.allocator)
    if args.allocator == "fresh":
        placement.small_holes = [(b, n) for b, n in free_extents(prev_image) if n < FRESH_MIN_EXTENT]
        # Which blocks the rewritten files hold now; the plan draws the same sample again.
        placement.old_blocks = file_blocks(prev_image, sorted(state.current))
    commands, summary = plan_os_update(state, version, blob_dir, args.seed,
                                       rewrites=args.rewrites, deletes=args.deletes,
                                       package_bytes=int(args.package_mib * MiB),
                                       placement=placement)
    epoch = BASE_EPOCH + (version - 1) * VERSION_STEP_S
    debugfs_script(image, commands, epoch, write=True)
    summary.fsck_ok = fsck_clean(image)
    if not summary.fsck_ok:
        raise RuntimeError(f"e2fsck -fn found errors in version {version} ({image})")
    summary.seconds = time.perf_counter() - t0
    return summary


# ----------------------------------------------------------------------------------------
# 4. chunkers
# ----------------------------------------------------------------------------------------
def fixed_block_digests(data: bytes | memoryview, block: int) -> list[bytes]:
    mv = memoryview(data)
    sha = hashlib.sha256
    return [sha(mv[off:off + block]).digest() for off in range(0, len(mv), block)]


def _cdc_cuts_from_hits(n: int, hits_s, hits_l) -> list[int]:
    """Chunk ends given the sorted indices i where the hash of the window ending at byte i
    matches MASK_S (hits_s) or MASK_L (hits_l). A chunk starting at s ends after byte i for the
    first S hit with length in [MIN, NORMAL), else the first L hit with length in [NORMAL, MAX),
    else at s + MAX (or the end of the data)."""
    cuts, s = [], 0
    while s < n:
        if n - s <= CDC_MIN:
            cuts.append(n)
            break
        end = min(s + CDC_MAX, n)
        cut = end
        j = bisect.bisect_left(hits_s, s + CDC_MIN - 1)
        if j < len(hits_s) and hits_s[j] < min(s + CDC_NORMAL - 1, end):
            cut = hits_s[j] + 1
        else:
            j = bisect.bisect_left(hits_l, s + CDC_NORMAL - 1)
            if j < len(hits_l) and hits_l[j] < end:
                cut = hits_l[j] + 1
        cuts.append(cut)
        s = cut
    return cuts


def cdc_cut_points_numpy(data: bytes) -> list[int]:
    """FastCDC chunk ends, with the gear hash computed for every byte at once.

    The gear hash h_i = (h_{i-1} << 1) + G[b_i] mod 2^64 equals sum_{k<64} G[b_{i-k}] << k:
    older bytes are shifted out. So it is a sum over a 64-byte window, computed by doubling:
    S_1 = G[b], S_2m[i] = S_m[i] + (S_m[i-m] << m), six steps to S_64. Windows overlap by 63
    bytes so every position sees its full window.
    """
    gear = np.array(GEAR, dtype=np.uint64)
    arr = np.frombuffer(data, dtype=np.uint8)
    n = len(arr)
    mask_s, mask_l = np.uint64(CDC_MASK_S), np.uint64(CDC_MASK_L)
    hits_s, hits_l = [], []
    for start in range(0, n, CDC_NUMPY_WINDOW):
        lead = min(63, start)
        h = gear[arr[start - lead:min(start + CDC_NUMPY_WINDOW, n)]]
        span = 1
        while span < 64:
            # The right side is a new array, so the sum uses the values before this step.
            h[span:] += h[:-span] << np.uint64(span)    # uint64 wraps, as the hash wants
            span *= 2
        h = h[lead:]
        hits_l.append(np.flatnonzero((h & mask_l) == 0) + start)
        hits_s.append(np.flatnonzero((h & mask_s) == 0) + start)
    return _cdc_cuts_from_hits(n, np.concatenate(hits_s).tolist(), np.concatenate(hits_l).tolist())


def cdc_cut_points_python(data: bytes) -> list[int]:
    """The same cuts as cdc_cut_points_numpy, byte by byte (~15 MiB/s). Only the bytes a
    cut can fall on are hashed, starting 63 bytes earlier so the window is full."""
    n, gear = len(data), GEAR
    cuts, s = [], 0
    while s < n:
        if n - s <= CDC_MIN:
            cuts.append(n)
            break
        first, end = s + CDC_MIN - 1, min(s + CDC_MAX, n)
        h = 0
        for b in data[max(0, first - 63):first]:
            h = ((h << 1) + gear[b]) & MASK64
        cut, normal_end = end, s + CDC_NORMAL - 1
        for i in range(first, end):
            h = ((h << 1) + gear[data[i]]) & MASK64
            if not h & (CDC_MASK_S if i < normal_end else CDC_MASK_L):
                cut = i + 1
                break
        cuts.append(cut)
        s = cut
    return cuts


def cdc_cut_points(data: bytes) -> list[int]:
    return cdc_cut_points_numpy(data) if np is not None else cdc_cut_points_python(data)


def cdc_chunks(data: bytes) -> dict[bytes, int]:
    """Distinct chunks of data: SHA-256 -> length."""
    mv, out, s = memoryview(data), {}, 0
    for cut in cdc_cut_points(data):
        out[hashlib.sha256(mv[s:cut]).digest()] = cut - s
        s = cut
    return out


# ----------------------------------------------------------------------------------------
# 5. measurements
# ----------------------------------------------------------------------------------------
def fixed_block_delta(old: bytes, new: bytes, block: int) -> dict:
    """What moves when new is sent at fixed `block` size to a store holding old."""
    have = set(fixed_block_digests(old, block))
    new_digests = fixed_block_digests(new, block)
    missing = [i for i, d in enumerate(new_digests) if d not in have]
    distinct = {new_digests[i] for i in missing}
    # The "differ" numbers compare the same offset; show them too.
    mv_old, mv_new = memoryview(old), memoryview(new)
    same_offset = sum(1 for off in range(0, len(new), block)
                      if mv_old[off:off + block] != mv_new[off:off + block])
    return {"block": block, "blocks": len(new_digests), "differ_same_offset": same_offset,
            "missing": len(missing), "distinct_missing": len(distinct),
            "bytes": len(distinct) * block, "missing_offsets": [i * block for i in missing]}


def cdc_delta(old: bytes, new: bytes) -> dict:
    have = cdc_chunks(old)
    cuts = cdc_cut_points(new)
    mv, s, moved, missing, sizes = memoryview(new), 0, {}, 0, []
    for cut in cuts:
        d = hashlib.sha256(mv[s:cut]).digest()
        sizes.append(cut - s)
        if d not in have:
            missing += 1
            moved[d] = cut - s
        s = cut
    zero_chunks = sum(1 for size, cut in zip(sizes, cuts)
                      if new.count(0, cut - size, cut) == size)
    return {"chunks": len(cuts), "mean": sum(sizes) / len(sizes), "missing": missing,
            "distinct_missing": len(moved), "bytes": sum(moved.values()),
            "moved_mean": sum(moved.values()) / max(1, len(moved)),
            "moved_max_size": sum(1 for x in moved.values() if x == CDC_MAX),
            "max_size_share": sum(1 for x in sizes if x == CDC_MAX) / len(sizes),
            "zero_chunks": zero_chunks}


def zstd_on_blocks(blocks: list[bytes], level: int, tmp: Path) -> tuple[int, int, str]:
    """(raw bytes, compressed bytes, how) for blocks compressed one by one."""
    raw = sum(len(b) for b in blocks)
    if zstandard is not None:
        cctx = zstandard.ZstdCompressor(level=level)
        return raw, sum(len(cctx.compress(b)) for b in blocks), "zstandard, each block alone"
    concat = tmp / "changed-blocks.bin"
    concat.write_bytes(b"".join(blocks))
    out = subprocess.run(["zstd", f"-{level}", "-c", str(concat)], capture_output=True, check=True)
    concat.unlink()
    return raw, len(out.stdout), "zstd CLI on the concatenation (flatters the ratio)"


def rsync_delta(v1: Path, v2: Path, tmp: Path, compress: bool) -> dict:
    """rsync v2 onto a copy of v1 the delta way; checks the result is v2."""
    dest = tmp / "rsync-dest.img"
    shutil.copyfile(v1, dest)
    cmd = ["rsync", "--stats", "--ignore-times", "--no-whole-file", "--inplace"] + \
          (["-z"] if compress else []) + [str(v2), str(dest)]
    t0 = time.perf_counter()
    out = run(cmd).stdout
    seconds = time.perf_counter() - t0
    def stat_bytes(name: str) -> int:
        return int(re.search(rf"^{name}: ([\d,]+)", out, re.M).group(1).replace(",", ""))
    same = file_sha256(dest) == file_sha256(v2)
    dest.unlink()
    if not same:
        raise RuntimeError("rsync did not reproduce v2")
    return {"cmd": shlex.join(["rsync", *cmd[1:-2], "v2.img", "copy-of-v1.img"]),
            "literal": stat_bytes("Literal data"), "matched": stat_bytes("Matched data"),
            "sent": stat_bytes("Total bytes sent"), "seconds": seconds}


def filesystem_layout(image: Path) -> dict[int, str]:
    """Block number -> metadata kind, for superblocks/descriptors, bitmaps, inode tables, journal."""
    kinds: dict[int, str] = {}
    def mark(first: int, last: int, kind: str) -> None:
        for b in range(first, last + 1):
            kinds[b] = kind
    out = run(["dumpe2fs", str(image)]).stdout
    for m in re.finditer(r"superblock at (\d+), Group descriptors at (\d+)-(\d+)", out):
        mark(int(m.group(1)), int(m.group(1)), "superblock + group descriptors")
        mark(int(m.group(2)), int(m.group(3)), "superblock + group descriptors")
    for m in re.finditer(r"Reserved GDT blocks at (\d+)-(\d+)", out):
        mark(int(m.group(1)), int(m.group(2)), "superblock + group descriptors")
    for m in re.finditer(r"Block bitmap at (\d+)", out):
        mark(int(m.group(1)), int(m.group(1)), "block bitmaps")
    for m in re.finditer(r"Inode bitmap at (\d+)", out):
        mark(int(m.group(1)), int(m.group(1)), "inode bitmaps")
    for m in re.finditer(r"Inode table at (\d+)-(\d+)", out):
        mark(int(m.group(1)), int(m.group(2)), "inode tables")
    journal = debugfs_script(image, ["blocks <8>"], BASE_EPOCH, write=False)[0][1]
    for b in journal.split():
        kinds[int(b)] = "journal"
    return kinds


def owners_of_blocks(image: Path, blocks: list[int]) -> dict[int, str]:
    """Block -> 'directories', 'file data' or 'unallocated', via debugfs icheck + stat."""
    owner: dict[int, int] = {}
    batch = 400
    commands = ["icheck " + " ".join(map(str, blocks[i:i + batch]))
                for i in range(0, len(blocks), batch)]
    for _cmd, out in debugfs_script(image, commands, BASE_EPOCH, write=False) if blocks else []:
        for line in out.splitlines()[1:]:
            blk, _, ino = line.partition("\t")
            if ino.isdigit():
                owner[int(blk)] = int(ino)
    inodes = sorted(set(owner.values()))
    types: dict[int, str] = {}
    for _cmd, out in debugfs_script(image, [f"stat <{i}>" for i in inodes], BASE_EPOCH,
                                    write=False) if inodes else []:
        m = re.search(r"Inode: (\d+)\s+Type: (\w+)", out)
        if m:
            types[int(m.group(1))] = m.group(2)
    result = {}
    for b in blocks:
        ino = owner.get(b)
        if ino is None:
            result[b] = "unallocated in v2"
        elif types.get(ino) == "directory":
            result[b] = "directories"
        else:
            result[b] = "file data (incl. extent blocks)"
    return result


def blocks_in_use(image: Path, blocks: list[int]) -> set[int]:
    used = set()
    for _cmd, out in debugfs_script(image, [f"testb {b}" for b in blocks], BASE_EPOCH,
                                    write=False) if blocks else []:
        m = re.match(r"Block (\d+) marked in use", out)
        if m:
            used.add(int(m.group(1)))
    return used


def change_breakdown(v1_img: Path, v2_img: Path, v1: bytes, v2: bytes, rewritten: list[str],
                     new64_offsets: list[int]) -> dict:
    """Which kinds of 4 KiB blocks changed in place, and where debugfs put new file data."""
    changed = [off // FS_BLOCK for off in range(0, len(v2), FS_BLOCK)
               if v1[off:off + FS_BLOCK] != v2[off:off + FS_BLOCK]]
    layout = filesystem_layout(v2_img)
    kind = {b: layout[b] for b in changed if b in layout}
    rest = [b for b in changed if b not in kind]
    kind.update(owners_of_blocks(v2_img, rest))
    by_kind = Counter(kind.values())

    data_blocks = [b for b in changed if kind[b].startswith("file data")]
    reused = blocks_in_use(v1_img, data_blocks)

    # A 64 KiB block that must move: does it hold only file data, only metadata, or both?
    per64: Counter = Counter()
    blocks_per_64k = 64 * KiB // FS_BLOCK
    changed_set = set(changed)
    for off in new64_offsets:
        first = off // FS_BLOCK
        kinds_here = {kind[b] for b in range(first, first + blocks_per_64k) if b in changed_set}
        data = {k for k in kinds_here if k.startswith("file data")}
        if not kinds_here:
            per64["no in-place change (content moved)"] += 1
        elif data and kinds_here == data:
            per64["file data only"] += 1
        elif not data:
            per64["metadata only"] += 1
        else:
            per64["file data and metadata"] += 1

    old_first = {p: b[0] for p, b in file_blocks(v1_img, rewritten).items() if b}
    new_first = {p: b[0] for p, b in file_blocks(v2_img, rewritten).items() if b}
    moves = [abs(new_first[p] - old_first[p]) * FS_BLOCK for p in rewritten
             if p in old_first and p in new_first]
    moves.sort()
    return {"changed_4k": len(changed), "by_kind": by_kind, "file_blocks": len(data_blocks),
            "file_blocks_reused": len(reused), "per64": per64,
            "move_median": moves[len(moves) // 2] if moves else 0,
            "move_within_4m": sum(1 for m in moves if m < 4 * MiB) / len(moves) if moves else 0.0,
            "moves": len(moves),
            "touched_4m_regions": len({b * FS_BLOCK // (4 * MiB) for b in changed})}


def chain_storage(images: list[Path]) -> dict:
    """Unique bytes of the versions stored together, per chunking; and per version."""
    sizes = list(CHAIN_BLOCK_SIZES) + ["cdc"]
    union: dict = {s: {} for s in sizes}
    rows = []
    first_unique: dict = {}
    for v, image in enumerate(images, start=1):
        data = image.read_bytes()
        row = {"version": v}
        for s in sizes:
            chunks = cdc_chunks(data) if s == "cdc" else \
                dict.fromkeys(fixed_block_digests(data, s), s)
            new = sum(n for d, n in chunks.items() if d not in union[s])
            union[s].update(chunks)
            if v == 1:
                first_unique[s] = sum(chunks.values())
            row[s] = {"new": new, "store": sum(union[s].values())}
        rows.append(row)
        log(f"chain: version {v} measured")
    return {"rows": rows, "first_unique": first_unique, "sizes": sizes}


# ----------------------------------------------------------------------------------------
# self-test
# ----------------------------------------------------------------------------------------
def self_test(sample: bytes | None = None) -> dict:
    """The numpy and pure-Python chunkers agree; edits are deterministic. Returns speeds."""
    if sample is None:
        rnd = random.Random(7)
        base = bytes(rnd.getrandbits(8) for _ in range(256 * KiB))
        sample = (base * 12 + bytes(1 * MiB) + base[:100_000]) * 2   # repeats, zeros, odd tail
    t0 = time.perf_counter()
    py = cdc_cut_points_python(sample)
    py_rate = len(sample) / (time.perf_counter() - t0)
    result = {"bytes": len(sample), "python_mib_s": py_rate / MiB, "numpy_mib_s": None}
    assert py[-1] == len(sample) and all(b - a <= CDC_MAX for a, b in zip([0] + py, py))
    assert all(b - a >= CDC_MIN for a, b in zip([0] + py[:-1], py[:-1]))
    if np is not None:
        t0 = time.perf_counter()
        vec = cdc_cut_points_numpy(sample)
        result["numpy_mib_s"] = len(sample) / (time.perf_counter() - t0) / MiB
        assert vec == py, "numpy and Python chunkers disagree"
    text = b"".join(b"line %d of a file\n" % i for i in range(500))
    a = rewritten_text(text, random.Random("x"), b"t")
    assert a == rewritten_text(text, random.Random("x"), b"t") and a != text
    assert rewritten_binary(text, random.Random("y"), b"t") != text
    return result


# ----------------------------------------------------------------------------------------
# the report
# ----------------------------------------------------------------------------------------
def write_report(path: Path, r: dict) -> None:
    L: list[str] = []
    add = L.append
    pair, cdc, rs, brk = r["pair"], r["cdc"], r["rsync"], r["breakdown"]
    add("# ext4 update workload: what each chunking moves (issue #12)\n")
    add(f"- Date: {r['date']} (took {r['total_s'] / 60:.1f} min)")
    add(f"- Command: `{r['command']}`")
    add(f"- Machine: {os.cpu_count()} CPUs, {platform.platform()}; Python {platform.python_version()}"
        f", numpy {np.__version__ if np is not None else 'absent'}"
        f", zstandard {zstandard.__version__ if zstandard is not None else 'absent'}")
    add(f"- Tools: {r['tools']}")
    add(f"- Source tree: {r['files']:,} real files, {fmt_mib(r['data_bytes'])} MiB, copied from "
        + ", ".join(f"`{root}` ({pat}, {share:.0%})" for root, pat, share in SOURCE_ROOTS)
        + f" in sorted order, files over {FILE_SIZE_CAP // MiB} MiB skipped; reserve for new "
        f"packages: {len(r['reserve_sizes']):,} files. **Tree digest** (path, size, mode, SHA-256 "
        f"of every file): `{r['tree_digest']}`")
    u1, un = r["usage"][0], r["usage"][-1]
    add(f"- Image: {fmt_mib(r['image_bytes'])} MiB ext4 (4 KiB blocks, journal, "
        f"metadata_csum, flex_bg; UUID {FS_UUID}), v1 uses {fmt_mib((u1['blocks'] - u1['free_blocks']) * FS_BLOCK)} MiB "
        f"({u1['inodes'] - u1['free_inodes']:,} inodes), v{len(r['usage'])} uses "
        f"{fmt_mib((un['blocks'] - un['free_blocks']) * FS_BLOCK)} MiB")
    add(f"- Update (seed {r['seed']}): per version {r['args'].rewrites} files rewritten "
        f"(25% only appended to, the rest edited + 1-5% appended; replaced in packages of "
        f"{FILES_PER_PACKAGE} as dpkg does: all NAME.dpkg-new written, old files removed, new ones "
        f"renamed), {r['args'].deletes} deleted, a new package of ~{r['args'].package_mib:g} MiB "
        f"of real files (±25%); placement `--allocator {r['args'].allocator}` "
        f"({PLACEMENT_TEXT[r['args'].allocator]}); `e2fsck -fn` clean on every version: "
        f"{'yes' if all(s.fsck_ok for s in r['updates']) else 'NO'}")
    add(f"- **Byte-reproducible**: {r['repro']}")
    add("")

    add("## 1. v1 -> v2: bytes to move\n")
    add(f"v2 is {fmt_mib(r['image_bytes'])} MiB. \"Not in v1\" counts v2's blocks whose SHA-256 "
        "occurs nowhere in v1; \"to move\" counts each such distinct block once. \"Differ in "
        "place\" compares the same offset (the issue's percentages).\n")
    add("| chunking | blocks in v2 | differ in place | not in v1 | not in v1 (% of image) "
        "| to move (MiB) | vs rsync literal |")
    add("|---|---:|---:|---:|---:|---:|---:|")
    for d in pair:
        bs = d["block"]
        name = f"fixed {bs // MiB} MiB" if bs >= MiB else f"fixed {bs // KiB} KiB"
        add(f"| {name} | {d['blocks']:,} | {d['differ_same_offset']:,} "
            f"({d['differ_same_offset'] / d['blocks']:.2%}) | {d['missing']:,} "
            f"| {d['missing'] * bs / r['image_bytes']:.2%} | {fmt_mib(d['bytes'])} "
            f"| {d['bytes'] / rs[0]['literal']:.1f}x |")
    add(f"| CDC (FastCDC-style, {CDC_MIN // KiB}/{CDC_NORMAL // KiB}/{CDC_MAX // KiB} KiB; "
        f"mean chunk {cdc['mean'] / KiB:.1f} KiB) | {cdc['chunks']:,} | – | {cdc['missing']:,} "
        f"| {cdc['bytes'] / r['image_bytes']:.2%} | {fmt_mib(cdc['bytes'])} "
        f"| {cdc['bytes'] / rs[0]['literal']:.1f}x |")
    add("")
    add(f"CDC detail: the chunks that move average {cdc['moved_mean'] / KiB:.1f} KiB and "
        f"{cdc['moved_max_size']:,} of the {cdc['distinct_missing']:,} are cut at the "
        f"{CDC_MAX // KiB} KiB maximum; over the whole image {cdc['max_size_share']:.0%} of the "
        f"chunks are maximum-size ({cdc['zero_chunks']:,} chunks are all zeros).\n")
    ch = r["changed_files"]
    add(f"For scale: the update rewrote files totalling {fmt_mib(ch['before'])} MiB "
        f"(now {fmt_mib(ch['after'])} MiB) and added {fmt_mib(ch['package'])} MiB of new files.\n")

    add("## 2. rsync (delta transfer onto a copy of v1)\n")
    add("| command | literal data (MiB) | matched data (MiB) | total bytes sent (MiB) | time (s) |")
    add("|---|---:|---:|---:|---:|")
    for x in rs:
        add(f"| `{x['cmd']}` | {fmt_mib(x['literal'])} | {fmt_mib(x['matched'])} "
            f"| {fmt_mib(x['sent'])} | {x['seconds']:.1f} |")
    add("")

    add("## 3. zstd on the new 64 KiB blocks\n")
    add("| level | raw (MiB) | compressed (MiB) | ratio | how |")
    add("|---:|---:|---:|---:|---|")
    for level, raw, comp, how, secs in r["zstd"]:
        add(f"| {level} | {fmt_mib(raw)} | {fmt_mib(comp)} | {raw / comp:.2f}x | {how}, {secs:.2f}s |")
    add("")

    add("## 4. What changed in place (v1 -> v2, 4 KiB blocks)\n")
    add("| kind | 4 KiB blocks | MiB | share |")
    add("|---|---:|---:|---:|")
    for kind, n in brk["by_kind"].most_common():
        add(f"| {kind} | {n:,} | {fmt_mib(n * FS_BLOCK)} | {n / brk['changed_4k']:.1%} |")
    add(f"| **total** | {brk['changed_4k']:,} | {fmt_mib(brk['changed_4k'] * FS_BLOCK)} | 100% |")
    add("")
    fb = brk["file_blocks"]
    add(f"- New file data landed in blocks that were free in v1: {fb - brk['file_blocks_reused']:,} of "
        f"{fb:,} 4 KiB blocks; in blocks that v1 used (freed by this update and reused at once): "
        f"{brk['file_blocks_reused']:,}.")
    add(f"- Rewritten files moved: median distance between old and new first block "
        f"{fmt_mib(brk['move_median'])} MiB; {brk['move_within_4m']:.0%} of {brk['moves']} landed within 4 MiB "
        f"of the old copy. The changed blocks touch {brk['touched_4m_regions']} of "
        f"{r['image_bytes'] // (4 * MiB)} 4 MiB regions.")
    add("- The 64 KiB blocks that must move hold: " + ", ".join(
        f"{k} {n:,}" for k, n in brk["per64"].most_common()) + ".")
    add("")

    add(f"## 5. The chain v1..v{len(r['chain']['rows'])}: store size (target <= {STORE_TARGET_RATIO}x one version at 64 KiB)\n")
    sizes = r["chain"]["sizes"]
    names = [("CDC" if s == "cdc" else (f"{s // MiB} MiB" if s >= MiB else f"{s // KiB} KiB")) for s in sizes]
    add("New bytes each version adds to a store holding all earlier versions (MiB), and the store "
        "size as a multiple of v1's unique bytes at the same chunking.\n")
    add("| version | " + " | ".join(f"new @ {n}" for n in names) + " | " +
        " | ".join(f"store @ {n}" for n in names) + " |")
    add("|---:|" + "---:|" * (2 * len(sizes)))
    first = r["chain"]["first_unique"]
    for row in r["chain"]["rows"]:
        add(f"| v{row['version']} | " + " | ".join(fmt_mib(row[s]["new"]) for s in sizes) + " | " +
            " | ".join(f"{row[s]['store'] / first[s]:.3f}x" for s in sizes) + " |")
    last = r["chain"]["rows"][-1]
    ratio64 = last[64 * KiB]["store"] / first[64 * KiB]
    add("")
    add("One version's unique bytes: " + ", ".join(f"{n} {fmt_mib(first[s])} MiB" for n, s in zip(names, sizes))
        + f". All {len(r['chain']['rows'])} versions at 64 KiB: {fmt_mib(last[64 * KiB]['store'])} MiB = "
        f"**{ratio64:.3f}x** ({'meets' if ratio64 <= STORE_TARGET_RATIO else 'misses'} the "
        f"{STORE_TARGET_RATIO}x target). Zero blocks count once.\n")

    add("## 6. Versions built\n")
    add("| version | rewritten (of which only grown) | old -> new size (MiB) | new package | deleted | build + fsck (s) |")
    add("|---:|---:|---:|---:|---:|---:|")
    for s in r["updates"]:
        add(f"| v{s.version} | {s.rewritten} ({s.grown_only}) | {fmt_mib(s.bytes_before)} -> "
            f"{fmt_mib(s.bytes_after)} | {s.package_files} files, {fmt_mib(s.package_bytes)} MiB "
            f"| {s.deleted} ({fmt_mib(s.deleted_bytes)} MiB) | {s.seconds:.1f} |")
    add("")

    add("## 7. Timings\n")
    add("| step | seconds |")
    add("|---|---:|")
    for name, secs in r["timer"].steps:
        add(f"| {name} | {secs:.1f} |")
    st = r["selftest"]
    add("")
    add(f"Chunker speeds on the first {fmt_mib(st['bytes'])} MiB of v2 that hold data: pure Python "
        f"{st['python_mib_s']:.1f} MiB/s, numpy "
        + (f"{st['numpy_mib_s']:.0f} MiB/s (identical cuts)" if st["numpy_mib_s"] else "absent")
        + ".\n")

    add("## Notes\n")
    for note in r["notes"]:
        add(f"- {note}")
    path.write_text("\n".join(L) + "\n")


# ----------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------
def build_version_one(tag: str, files: list[SourceFile], work: Path, image_bytes: int,
                      conf: Path, timer: StepTimer) -> tuple[Path, Path, str, int]:
    tree = work / f"tree-{tag}"
    digest, total = timer.run(f"copy source tree ({tag})", copy_source_tree, files, tree)
    image = work / f"v1-{tag}.img"
    timer.run(f"mke2fs -d + ctime fix, v1 ({tag})", make_filesystem, tree, image, image_bytes, conf)
    if not fsck_clean(image):
        raise RuntimeError(f"e2fsck -fn found errors in {image}")
    return tree, image, digest, total


def build_chain(args, work: Path, versions: int) -> list[Path]:
    """v1 (mke2fs -d of real files) and `versions - 1` updates of it, in `work`; `args` holds
    add_workload_arguments' options."""
    conf = work / "mke2fs.conf"
    conf.write_text(MKE2FS_CONF)
    timer = StepTimer()
    files, reserve = timer.run("select source files", select_source_files,
                               int(args.data_mib * MiB))
    tree, v1, _, _ = build_version_one("a", files, work, args.image_mib * MiB, conf, timer)
    state = ImageState(files, tree, reserve)
    images = [v1]
    for version in range(2, versions + 1):
        image = work / f"v{version}.img"
        timer.run(f"update v{version - 1} -> v{version}", make_next_version, images[-1],
                  image, state, version, work / "blobs" / f"v{version}", args)
        images.append(image)
    return images


def chain_in(directory: Path, args, versions: int) -> list[Path]:
    """The `versions` images of a chain kept in `directory` (v1-a.img, v2.img ...), built
    there first (build_chain) when it holds fewer: a benchmark re-run on the same chain."""
    directory.mkdir(parents=True, exist_ok=True)
    images = sorted(directory.glob("v*.img"), key=lambda p: int(p.stem.split("-")[0][1:]))
    if len(images) < versions:
        images = build_chain(args, directory, versions)
    return images[:versions]


def add_workload_arguments(p: argparse.ArgumentParser) -> None:
    """The options that shape the images (shared with update_bench.py and copy_ab.py)."""
    p.add_argument("--data-mib", type=float, default=300, help="source tree size (default 300)")
    p.add_argument("--image-mib", type=int, default=512, help="image size (default 512)")
    p.add_argument("--rewrites", type=int, default=300, help="files rewritten per update")
    p.add_argument("--deletes", type=int, default=10, help="files deleted per update")
    p.add_argument("--package-mib", type=float, default=4, help="new package size per update")
    p.add_argument("--seed", type=int, default=12, help="RNG seed of the updates")
    p.add_argument("--allocator", choices=("fresh", "first-fit"), default="fresh",
                   help="where new file data goes (see Placement; default fresh)")
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()),
                   help="where the temporary work directory goes")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_workload_arguments(p)
    p.add_argument("--versions", type=int, default=10, help="versions in the chain (default 10)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "FS_WORKLOAD.md")
    p.add_argument("--no-repro-check", action="store_true", help="build v1/v2 only once")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--self-test", action="store_true", help="test chunkers and edits, then exit")
    args = p.parse_args(argv)
    if args.self_test:
        print(self_test())
        return 0
    if args.versions < 2:
        p.error("--versions must be at least 2")
    for tool in ("mke2fs", "debugfs", "e2fsck", "dumpe2fs", "rsync"):
        if shutil.which(tool) is None:
            p.error(f"{tool} not found (Debian: apt-get install e2fsprogs rsync zstd)")

    t_start = time.perf_counter()
    timer = StepTimer()
    work = Path(tempfile.mkdtemp(prefix="fs_workload-", dir=args.workdir))
    log(f"work directory {work}")
    try:
        r = run_workload(args, work, timer)
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    r["total_s"] = time.perf_counter() - t_start
    write_report(args.out, r)
    log(f"wrote {args.out}")
    return 0


def run_workload(args, work: Path, timer: StepTimer) -> dict:
    image_bytes = args.image_mib * MiB
    conf = work / "mke2fs.conf"
    conf.write_text(MKE2FS_CONF)
    files, reserve = timer.run("select source files", select_source_files, int(args.data_mib * MiB))
    if not files:
        raise RuntimeError("no source files found")
    tree_a, v1_a, digest, total = build_version_one("a", files, work, image_bytes, conf, timer)

    # Version 2 once more, from a second tree (other host ctimes) and a second mke2fs run.
    repro = "not checked (--no-repro-check)"
    if not args.no_repro_check:
        time.sleep(1.1)   # so that any leak of the real clock shows
        tree_b, v1_b, digest_b, _ = build_version_one("b", files, work, image_bytes, conf, timer)
        state_b = ImageState(files, tree_b, reserve)
        v2_b = work / "v2-b.img"
        timer.run("update v1 -> v2 (b)", make_next_version, v1_b, v2_b, state_b, 2,
                  work / "blobs-b" / "v2", args)
        h = {n: file_sha256(x) for n, x in (("v1a", v1_a), ("v1b", v1_b), ("v2b", v2_b))}

    state = ImageState(files, tree_a, reserve)
    images = [v1_a]
    updates: list[UpdateSummary] = []
    rewritten_v2: list[str] = []
    for version in range(2, args.versions + 1):
        before = set(state.current)
        old_hosts = dict(state.current)
        image = work / f"v{version}.img"
        summary = timer.run(f"update v{version - 1} -> v{version} (debugfs + e2fsck)",
                            make_next_version, images[-1], image, state, version,
                            work / "blobs" / f"v{version}", args)
        if version == 2:
            rewritten_v2 = sorted(p for p in before if p in state.current
                                  and state.current[p] != old_hosts[p])
        updates.append(summary)
        images.append(image)

    if not args.no_repro_check:
        h["v2a"] = file_sha256(images[1])
        ok1, ok2 = h["v1a"] == h["v1b"], h["v2a"] == h["v2b"]
        repro = (f"{'yes' if ok1 and ok2 else 'NO'} — two trees copied separately, two mke2fs "
                 f"runs: v1 {h['v1a'][:16]} / {h['v1b'][:16]} ({'same' if ok1 else 'DIFFERENT'}), "
                 f"v2 built from each: {h['v2a'][:16]} / {h['v2b'][:16]} "
                 f"({'same' if ok2 else 'DIFFERENT'}); tree digests "
                 f"{'match' if digest == digest_b else 'DIFFER'}")
        for x in (v1_b, v2_b):
            x.unlink()
        shutil.rmtree(tree_b)
        shutil.rmtree(work / "blobs-b")

    usage = [filesystem_usage(x) for x in images]
    v1, v2 = images[0].read_bytes(), images[1].read_bytes()
    pair = [timer.run(f"fixed {bs // KiB} KiB blocks v1 -> v2", fixed_block_delta, v1, v2, bs)
            for bs in FIXED_BLOCK_SIZES]
    cdc = timer.run("CDC v1 -> v2", cdc_delta, v1, v2)

    new64 = next(d for d in pair if d["block"] == 64 * KiB)
    seen, new_blocks = set(), []
    for off in new64["missing_offsets"]:
        block = v2[off:off + 64 * KiB]
        d = hashlib.sha256(block).digest()
        if d not in seen:
            seen.add(d)
            new_blocks.append(block)
    zstd_rows = []
    for level in (1, 3):
        t0 = time.perf_counter()
        raw, comp, how = zstd_on_blocks(new_blocks, level, work)
        zstd_rows.append((level, raw, comp, how, time.perf_counter() - t0))

    rs = [timer.run("rsync --no-whole-file --inplace", rsync_delta, images[0], images[1], work, False),
          timer.run("rsync --no-whole-file --inplace -z", rsync_delta, images[0], images[1], work, True)]
    breakdown = timer.run("classify changed blocks (dumpe2fs, debugfs icheck/testb/blocks)",
                          change_breakdown, images[0], images[1], v1, v2, rewritten_v2,
                          new64["missing_offsets"])

    # The chunker check runs on real bytes: the first 8 MiB of v2 that are not all zeros.
    data_at = next(off for off in range(0, len(v2), MiB)
                   if v2[off:off + MiB].count(0) < MiB // 2)
    selftest = timer.run("chunker self-check (numpy vs Python, 8 MiB)", self_test,
                         v2[data_at:data_at + 8 * MiB])
    del v1, v2
    chain = timer.run(f"chain v1..v{args.versions}: 4 MiB/64/16/4 KiB + CDC", chain_storage, images)

    s = updates[0]
    notes = [
        "debugfs writes the file system directly: the journal is never written, so its blocks "
        "never change here. A kernel applying the same update writes each changed metadata block "
        "to the journal first (up to the journal's size); at 4 KiB those copies mostly dedup "
        "against the final blocks, at 64 KiB and above they are new blocks. So these numbers are "
        "a lower bound for an update made on a mounted file system.",
        "debugfs allocates first-fit from the start of the inode's flex group (with flex_bg that "
        "is the whole of this file system), so plain debugfs fills old holes and reuses the "
        "blocks an update has just freed. The kernel's mballoc serves small files from 2 MiB "
        "per-CPU preallocations, prefers free extents of the normalised request size to small "
        "holes, and cannot reuse freed blocks before the journal commits; `--allocator fresh` "
        "(the default) approximates that by hiding small free extents and freed blocks, "
        "`--allocator first-fit` is plain debugfs. The kernel lies between the two.",
        "A real package upgrade also rewrites the package's unchanged files (new inode, new "
        "blocks, same bytes); they are not modelled. Their data would dedup at 4 KiB always, at "
        "larger fixed blocks only if the new copy starts at the same offset within the block, "
        "and with CDC mostly.",
        "Free space in these images is zeros (never written); a used disk's free space holds "
        "old data, which dedups the same way but makes one version's unique bytes larger.",
        f"rsync splits the copy of v1 into blocks of about sqrt(size) (here ~"
        f"{int((image_bytes) ** 0.5) // 8 * 8 // KiB} KiB) and finds them at any byte offset of "
        "v2; with --inplace it cannot use a block of v1 that lies before the position being "
        "written (that block may already be overwritten), so data that moved towards the start "
        "of the image is sent again (one reason it sends more with --allocator first-fit, which fills earlier holes).",
    ]
    tools = "; ".join([tool_version(["mke2fs", "-V"]).split("(")[0].strip(),
                       tool_version(["rsync", "--version"]),
                       tool_version(["zstd", "--version"]).strip("* ")])
    return {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "command": shlex.join([sys.executable, os.path.relpath(sys.argv[0])] + sys.argv[1:]),
            "tools": tools, "files": len(files), "data_bytes": total, "tree_digest": digest,
            "reserve_sizes": [x.size for x in reserve], "image_bytes": image_bytes,
            "usage": usage, "seed": args.seed, "args": args, "repro": repro,
            "pair": pair, "cdc": cdc, "rsync": rs, "zstd": zstd_rows, "breakdown": breakdown,
            "chain": chain, "updates": updates, "timer": timer, "selftest": selftest,
            "changed_files": {"before": s.bytes_before, "after": s.bytes_after,
                              "package": s.package_bytes},
            "notes": notes}


if __name__ == "__main__":
    sys.exit(main())
