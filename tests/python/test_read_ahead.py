"""A local copy reads its plan ahead of its workers, straight from the pack files (issue #12,
docs/data-plane-v2.md "Reads"). What it reads ahead is checked like any read: a pack damaged
where only the read-ahead reads it, or swapped for a link to an identical file outside the
home, fails the copy with Transfer.IntegrityError, and nothing of it is Available."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

import imagerelay as ir

from conftest import make_dense

MiB = 1 << 20


def _packs(home: Path, region: str) -> list[Path]:
    return sorted(p for p in (home / "regions" / region / "packs").glob("*/*") if p.is_file())


@pytest.fixture
def default_cloud(home: Path) -> Iterator[ir.Cloud]:
    """Default limits: 64 KiB blocks in 16 MiB packs, read ahead 4 MiB at a time."""
    c = ir.open(home)
    yield c
    c.close()


def _import(cloud: ir.Cloud, home: Path, files: Path) -> tuple[ir.Image, list[Path]]:
    image = cloud.import_image(make_dense(files / "img.raw", 48 * MiB), region="bj", name="x")
    packs = _packs(home, "bj")
    assert len(packs) >= 3 and all(p.stat().st_size > 12 * MiB for p in packs[:2])
    return image, packs


def _refused(cloud: ir.Cloud, image: ir.Image) -> None:
    with pytest.raises(ir.ImageRelayError) as excinfo:
        image.replicate(["gz"]).wait()
    assert "Transfer.IntegrityError" in str(excinfo.value)
    assert all(i.status != "Available" for i in cloud.images(image_type="Custom")
               if i.region == "gz")


def test_a_byte_flipped_where_the_read_ahead_reads_fails_the_copy(
        default_cloud: ir.Cloud, home: Path, files: Path) -> None:
    image, packs = _import(default_cloud, home, files)
    # Past the pack's first 4 MiB run: read by the read-ahead, not by the first reader.
    with open(packs[1], "r+b") as f:
        f.seek(9 * MiB)
        byte = f.read(1)
        f.seek(9 * MiB)
        f.write(bytes([byte[0] ^ 1]))
    _refused(default_cloud, image)


def test_a_pack_swapped_for_a_link_out_of_the_home_is_not_read(
        default_cloud: ir.Cloud, home: Path, files: Path) -> None:
    image, packs = _import(default_cloud, home, files)
    outside = files / "outside.pack"  # the very same bytes, outside the home
    shutil.copyfile(packs[1], outside)
    before = outside.read_bytes()
    packs[1].unlink()
    os.symlink(outside, packs[1])
    _refused(default_cloud, image)
    assert outside.read_bytes() == before  # not touched
