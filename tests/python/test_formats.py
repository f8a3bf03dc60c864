"""Image formats as qemu-img makes them: the format and the disk's size come from the header.

Every image here is made by `qemu-img` (Debian's qemu-utils, installed by
scripts/install-deps.sh) from a raw disk with data at scattered offsets; after import,
replication and export as another account, `qemu-img compare` must find the disk unchanged.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

import imagerelay as ir
from conftest import assert_error
from test_cli import fails, run

MiB = 2**20
GiB = 2**30


def qemu_img(*args: str) -> str:
    return subprocess.run(["qemu-img", *args], check=True, capture_output=True,
                          text=True).stdout


def qemu_info(path: Path, fmt: str) -> dict:
    # The format is named: qemu-img's own probe takes a fixed VHD (no header) for raw.
    return json.loads(qemu_img("info", "--output=json", "-f", fmt, str(path)))


def raw_disk(path: Path, size: int = 24 * MiB) -> Path:
    """A sparse raw disk with a few MiB of data here and there (not at block boundaries)."""
    with open(path, "wb") as f:
        f.truncate(size)
        for i, offset in enumerate((0, 3 * MiB + 4096, 11 * MiB + 777, size - 70_000)):
            f.seek(offset)
            f.write(bytes((i * 37 + j) % 251 for j in range(60_000)))
    return path


def convert(raw: Path, fmt: str, *options: str) -> Path:
    out = raw.with_suffix(f".{fmt}{'-' + options[-1].split('=')[-1] if options else ''}")
    qemu_img("convert", "-f", "raw", "-O", fmt, *options, str(raw), str(out))
    return out


FORMATS = [  # (qemu-img format and options, the format imagerelay records)
    (("qcow2",), "qcow2"),
    (("qcow2", "-o", "compat=0.10"), "qcow2"),
    (("vmdk",), "vmdk"),
    (("vmdk", "-o", "subformat=streamOptimized"), "vmdk"),
    (("vpc",), "vhd"),
    (("vpc", "-o", "subformat=fixed"), "vhd"),
    (("vpc", "-o", "force_size"), "vhd"),
    (("raw",), "raw"),
]


@pytest.mark.parametrize("made, recorded", FORMATS, ids=[" ".join(m) for m, _ in FORMATS])
def test_each_format_is_read_from_its_header_and_comes_back_identical(
        cloud: ir.Cloud, files: Path, made: tuple[str, ...], recorded: str) -> None:
    raw = raw_disk(files / "disk.raw")
    image_file = convert(raw, made[0], *made[1:]) if made[0] != "raw" else raw
    info = qemu_info(image_file, made[0])

    image = cloud.import_image(image_file, region="bj", name="golden")  # no format given
    assert image.format == recorded
    assert image.virtual_size == info["virtual-size"]
    assert image.size == image_file.stat().st_size
    d = image.to_dict()
    assert (d["format"], d["virtual_size"], d["size"]) == (recorded, info["virtual-size"],
                                                           image_file.stat().st_size)

    # A copy keeps what its source is; the other account gets the same disk back.
    copy = cloud.replicate(image.id, "gz").wait().tasks["gz"]
    copy_image = cloud.image(copy.dest_image_id)
    assert (copy_image.format, copy_image.virtual_size) == (recorded, info["virtual-size"])
    cloud.add_account("team-b")
    copy_image.share("team-b")
    out = cloud.as_account("team-b").image(copy_image.id).export(files / f"back.{recorded}")
    assert out.read_bytes() == image_file.read_bytes()
    subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", made[0], str(raw), str(out)],
                   check=True, capture_output=True)


def test_a_declared_format_must_be_the_headers(cloud: ir.Cloud, files: Path) -> None:
    raw = raw_disk(files / "disk.raw")
    qcow2 = convert(raw, "qcow2")
    with pytest.raises(ir.ValidationError) as e:
        cloud.import_image(qcow2, region="bj", name="x", format="raw")
    assert_error(e, ir.ValidationError, "InvalidParameter", 400)
    assert "is a qcow2 image" in e.value.message and "not raw" in e.value.message
    with pytest.raises(ir.ValidationError) as e:
        cloud.import_image(raw, region="bj", name="x", format="qcow2")
    assert "is a raw image" in e.value.message
    with pytest.raises(ir.ValidationError) as e:  # the dry run says the same
        cloud.dry_run.import_image(raw, region="bj", name="x", format="vmdk")
    assert "is a raw image" in e.value.message
    assert cloud.images() == []  # nothing was made
    assert cloud.import_image(qcow2, region="bj", name="x", format="qcow2").format == "qcow2"


def test_size_rules_weigh_the_disk_not_the_file(open_cloud, files: Path) -> None:
    """A 300 GiB qcow2 holding 64 MiB: imported (under 500 GiB), refused for copying (over
    200 GiB), as a 300 GiB raw disk would be."""
    raw = files / "data.raw"
    with open(raw, "wb") as f:
        f.write(bytes(range(256)) * (64 * MiB // 256))
    big = files / "big.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2", str(raw), str(big))
    qemu_img("resize", str(big), "300G")
    assert big.stat().st_size < 100 * MiB

    cloud = open_cloud()
    image = cloud.import_image(big, region="bj", name="big")
    assert (image.format, image.virtual_size) == ("qcow2", 300 * GiB)
    with pytest.raises(ir.ValidationError) as e:
        cloud.replicate(image.id, "gz")
    assert_error(e, ir.ValidationError, "Image.LargeImageCopyForbidden", 409)
    assert "300.0 GiB" in e.value.message and "200.0 GiB" in e.value.message
    assert "Limits.max_copy_bytes" in e.value.message  # what to do

    strict = open_cloud(max_import_bytes=200 * GiB)
    with pytest.raises(ir.ValidationError) as e:
        strict.import_image(big, region="bj", name="big2")
    assert_error(e, ir.ValidationError, "Image.LargeImageImportForbidden", 409)
    assert "300.0 GiB" in e.value.message and "200.0 GiB" in e.value.message


@pytest.mark.parametrize("kind", ["backing", "vhdx", "vmdk-flat", "vdi", "qcow1"])
def test_files_that_need_other_files_or_are_not_taken_are_refused(
        cloud: ir.Cloud, files: Path, kind: str) -> None:
    base = convert(raw_disk(files / "base.raw"), "qcow2")
    path = files / f"{kind}.img"
    if kind == "backing":
        qemu_img("create", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(path))
        expected = "backing file"
    elif kind == "vhdx":
        qemu_img("create", "-f", "vhdx", str(path), "64M")
        expected = "VHDX"
    elif kind == "vmdk-flat":
        qemu_img("create", "-f", "vmdk", "-o", "subformat=monolithicFlat", str(path), "64M")
        expected = "other files"
    elif kind == "vdi":
        qemu_img("create", "-f", "vdi", str(path), "64M")
        expected = "VDI"
    else:
        qemu_img("create", "-f", "qcow", str(path), "64M")
        expected = "version 1"
    with pytest.raises(ir.ValidationError) as e:
        cloud.import_image(path, region="bj", name="x")
    assert_error(e, ir.ValidationError, "InvalidParameter", 400)
    assert expected in e.value.message and "qemu-img convert" in e.value.message
    assert cloud.images() == []


def test_cli_shows_format_and_both_sizes(home: Path, files: Path) -> None:
    raw = raw_disk(files / "disk.raw", 40 * MiB)
    qcow2 = convert(raw, "qcow2")
    run(home, "accounts", "list")  # makes the home with its default regions and accounts
    imported = run(home, "import", str(qcow2), "--region", "bj", "--name", "golden").data
    assert imported["format"] == "qcow2" and imported["virtual_size"] == 40 * MiB
    text = run(home, "images", "list", as_json=False).stdout
    header, row = text.splitlines()[0], text.splitlines()[2]  # a rule under the header
    assert header.split()[5:8] == ["FORMAT", "DISK", "STORED"]
    assert row.split()[5:8] == ["qcow2", "40.0", "MiB"]
    shown = run(home, "images", "show", imported["id"]).data
    assert (shown["format"], shown["virtual_size"]) == ("qcow2", 40 * MiB)
    message = fails(home, "InvalidParameter", "import", str(qcow2), "--region", "bj",
                    "--name", "again", "--format", "raw")
    assert "is a qcow2 image" in message


def test_a_file_replaced_after_its_header_was_read_is_not_made_available(
        cloud: ir.Cloud, files: Path) -> None:
    """The header is read when the request is checked and again when the import starts: a
    raw file swapped for a qcow2 in between must not end Available as a raw disk."""
    raw = raw_disk(files / "disk.raw")
    qcow2 = convert(raw, "qcow2")
    target = files / "golden.img"
    shutil.copy(raw, target)

    def swap(request: Any) -> None:
        # Test fake: a policy, which runs between the two looks, stands in for another
        # process replacing the file.
        if request.action == "import":
            shutil.copy(qcow2, target)

    cloud.add_rule(swap)
    with pytest.raises(ir.ValidationError) as e:
        cloud.import_image(target, region="bj", name="golden")
    assert e.value.code == "InvalidParameter"
    assert "changed after the import was requested" in e.value.message
    assert "qcow2" in e.value.message
    assert [i.status for i in cloud.images()] == ["CreateFailed"]
