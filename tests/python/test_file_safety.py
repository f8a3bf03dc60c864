"""What an export may write over and what an import may read (issue #11).

An export writes only regular files: a new one, or an existing one with ``force=True``
(``--force``), which keeps its mode and owner; never through a symbolic link, never over a
device node, FIFO, socket or directory. Its temporary file says what it is and whose, and
the leftover of a killed export goes at the next export to that directory. An import reads
only a regular file or a block device, never a pseudo file system, and fails rather than
store a short image.
"""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import CHUNK, assert_error, make_dense

import imagerelay as ir

IS_ROOT = os.geteuid() == 0


@pytest.fixture
def image(cloud: ir.Cloud, files: Path) -> ir.Image:
    return cloud.import_image(make_dense(files / "src.raw", 5 * CHUNK + 17), region="bj",
                              name="img")


def _refused(excinfo: pytest.ExceptionInfo[ir.ImageRelayError], path: Path, *words: str) -> None:
    assert_error(excinfo, ir.ValidationError, "InvalidParameter", 400)
    message = excinfo.value.message
    assert str(path) in message, message
    for word in words:
        assert word in message, message


# -- export: existing files -------------------------------------------------------------------
def test_a_new_home_is_its_owners_alone(tmp_path: Path) -> None:
    # Its catalog lists every account's images and events (an adversarial pass read them as
    # another local user: the home was 0755). A home that exists keeps the mode it has.
    with ir.open(tmp_path / "new" / "home"):
        pass
    assert stat.S_IMODE((tmp_path / "new" / "home").stat().st_mode) == 0o700
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o750)
    shared.chmod(0o750)
    with ir.open(shared):
        pass
    assert stat.S_IMODE(shared.stat().st_mode) == 0o750


def test_export_refuses_an_existing_file_without_force(cloud: ir.Cloud, image: ir.Image,
                                                       files: Path) -> None:
    out = files / "out.raw"
    out.write_bytes(b"keep me")
    with pytest.raises(ir.ImageRelayError) as excinfo:
        cloud.export_image(image.id, out)
    _refused(excinfo, out, "exists; pass --force (force=True) to overwrite it")
    with pytest.raises(ir.ImageRelayError):
        image.export(out)
    assert out.read_bytes() == b"keep me"

    assert image.export(out, force=True) == out
    assert out.read_bytes() == (files / "src.raw").read_bytes()
    assert cloud.export_image(image.id, out, force=True) == out
    assert sorted(p.name for p in files.iterdir()) == ["out.raw", "src.raw"]


def test_regions_sharing_a_store_from_an_earlier_release_are_named_at_open(
        home: Path, files: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Homes of releases before add_region refused it may have two regions on one store: they
    # keep working, and every open says so.
    with ir.open(home, limits=ir.Limits(chunk_size=CHUNK)) as cloud:
        cloud.add_region("twin", str(files / "twin"))
    with sqlite3.connect(home / "catalog.db") as db:  # as that release wrote it
        db.execute("UPDATE regions SET store_uri = ? WHERE id = 'twin'",
                   (str(home / "regions" / "bj"),))
    db.close()
    with caplog.at_level("WARNING", logger="imagerelay"):
        with ir.open(home, limits=ir.Limits(chunk_size=CHUNK)) as cloud:
            image = cloud.import_image(make_dense(files / "a.raw", 2 * CHUNK), region="twin",
                                       name="a")
            assert cloud.verify_image(image.id) == image.digest
    messages = [r.getMessage() for r in caplog.records if r.name == "imagerelay"]
    assert any("the store of region bj" in m and "is the store of region twin" in m
               for m in messages), messages


def test_export_never_writes_inside_the_home_or_a_regions_store(cloud: ir.Cloud, image: ir.Image,
                                                                 home: Path, files: Path) -> None:
    # An adversarial pass exported with force=True over the catalog, a pack, the block index
    # and a manifest: each was replaced, and the home no longer opened.
    stores = files / "stores"
    stores.mkdir()
    cloud.add_region("far", str(stores / "far"))
    copy = image.replicate("far").wait().copies["far"]
    kept = {p: p.read_bytes() for p in [*home.rglob("*"), *stores.rglob("*")] if p.is_file()
            and not p.name.endswith(("-wal", "-shm"))}
    pack = next(p for p in (home / "regions" / "bj" / "packs").rglob("*") if p.is_file())
    manifest = next((home / "regions" / "bj" / "manifests").iterdir())
    far_pack = next(p for p in (stores / "far" / "packs").rglob("*") if p.is_file())
    link = files / "into-home"
    link.symlink_to(home / "regions" / "bj")
    for target, where in ((home / "catalog.db", "imagerelay's home"),
                          (pack, "imagerelay's home"),
                          (home / "regions" / "bj" / "index" / "blocks.sqlite", "imagerelay's home"),
                          (manifest, "imagerelay's home"),
                          (home / "new.raw", "imagerelay's home"),
                          (link / "manifests" / manifest.name, "imagerelay's home"),
                          (far_pack, "the store of region far"),
                          (stores / "far" / "new.raw", "the store of region far")):
        with pytest.raises(ir.ImageRelayError) as excinfo:
            cloud.export_image(image.id, target, force=True)
        assert_error(excinfo, ir.ValidationError, "InvalidParameter", 400)
        assert f"is inside {where}" in excinfo.value.message, (target, excinfo.value.message)
    assert not (home / "new.raw").exists() and not (stores / "far" / "new.raw").exists()
    for path, data in kept.items():
        assert path.read_bytes() == data, path
    assert cloud.verify_image(image.id) == image.digest
    assert cloud.verify_image(copy.id) == image.digest
    # Beside the home (its parent) is outside it.
    assert image.export(home.parent / "beside.raw") == home.parent / "beside.raw"


def test_a_region_takes_a_store_no_other_region_has(cloud: ir.Cloud, image: ir.Image,
                                                    home: Path, files: Path) -> None:
    # An adversarial pass added a second region on bj's directory (and one inside it): a copy
    # between them moved nothing, yet counted as a second copy of the image.
    bj = home / "regions" / "bj"
    link = files / "bj-link"
    link.symlink_to(bj)
    stores = files / "stores"
    cloud.add_region("far", str(stores / "far"))
    for store, how in ((str(bj), "is the store of region bj"),
                       (f"file://{bj}", "is the store of region bj"),
                       (str(link), "is the store of region bj"),
                       (f"{bj}/../bj", "is the store of region bj"),
                       (str(bj / "sub"), "is inside the store of region bj"),
                       (str(stores), "holds the store of region far"),
                       (str(stores / "far" / "deeper"), "is inside the store of region far")):
        with pytest.raises(ir.ImageRelayError) as excinfo:
            cloud.add_region("twin", store)
        assert_error(excinfo, ir.ValidationError, "InvalidParameter", 400)
        assert how in excinfo.value.message, (store, excinfo.value.message)
    # The default place of a new id taken by another region's store: refused, named.
    cloud.add_region("odd", str(home / "regions" / "r9"))
    with pytest.raises(ir.ImageRelayError) as excinfo:
        cloud.add_region("r9")
    assert "is the store of region odd" in excinfo.value.message
    assert {r.id for r in cloud.regions} == {"bj", "gz", "su", "far", "odd"}
    assert not (bj / "sub").exists() and not (stores / "far" / "deeper").exists()
    # A sibling whose name starts the same is another place; a removed region's store may be
    # taken again.
    cloud.add_region("far2", str(stores / "far2"))
    cloud.remove_region("odd")
    cloud.add_region("r9")
    assert cloud.verify_image(image.id) == image.digest


@pytest.mark.parametrize("left", ["nothing", "an empty directory"])
def test_a_store_not_mounted_is_unavailable_never_made_again(cloud: ir.Cloud, image: ir.Image,
                                                             files: Path, left: str) -> None:
    # Found by unmounting a region's disk: the next import made a new store on the mount
    # point and was Available, its bytes gone once the disk came back; a verify marked the
    # images there NotAvailable ("manifest missing"), and they stayed so after it came back.
    disk = files / "disk"
    cloud.add_region("far", str(disk / "store"))
    there = image.replicate("far").wait().copies["far"]
    (files / "next.raw").write_bytes((files / "src.raw").read_bytes()[::-1])
    disk.rename(files / "disk.away")  # unmounted: the mount point is left, empty
    disk.mkdir()
    if left == "an empty directory":
        (disk / "store").mkdir()

    def unavailable(call: Callable[[], object]) -> str:
        with pytest.raises(ir.ImageRelayError) as excinfo:
            call()
        assert_error(excinfo, ir.TransferError, "Region.StoreUnavailable", 503)
        assert "mount it" in excinfo.value.message, excinfo.value.message
        return excinfo.value.message

    unavailable(lambda: cloud.verify_image(there.id))
    unavailable(lambda: cloud.scrub("far"))
    # Every region: the others are scrubbed, this one is said not to be.
    reports = {r.region: r for r in cloud.scrub()}
    assert reports["far"].unavailable and "mount it" in reports["far"].unavailable
    assert not reports["far"].healthy and reports["bj"].healthy
    assert reports["bj"].chunks_checked > 0 and reports["bj"].unavailable is None
    with pytest.raises(ir.ImageRelayError):
        cloud.import_image(files / "next.raw", region="far", name="lost")
    job = cloud.replicate(image.id, "far", name="again")
    job.wait(raise_on_error=False)
    assert job.state == "Failed"
    assert job.tasks["far"].error_code == "Region.StoreUnavailable"
    assert cloud.image(there.id).status == "Available"
    assert [p.name for p in disk.rglob("*")] == ([] if left == "nothing" else ["store"])

    shutil.rmtree(disk)
    (files / "disk.away").rename(disk)  # mounted again: all there, nothing to repair
    assert cloud.verify_image(there.id) == image.digest
    assert cloud.image(there.id).status == "Available"
    assert cloud.import_image(files / "next.raw", region="far", name="now").status == "Available"


def test_a_store_in_the_home_removed_by_hand_is_made_again(cloud: ir.Cloud, image: ir.Image,
                                                             home: Path) -> None:
    # The home's own stores (made with the home) are made again if removed: what they held
    # is gone, and said so.
    cloud.replicate(image.id, "gz").wait()
    shutil.rmtree(home / "regions" / "gz")
    (copy,) = [i for i in cloud.images(region="gz")]
    with pytest.raises(ir.ImageRelayError) as excinfo:
        cloud.verify_image(copy.id)
    assert_error(excinfo, ir.IntegrityError, "Transfer.IntegrityError", 500)
    assert cloud.image(copy.id).status == "NotAvailable"
    assert (home / "regions" / "gz" / ".imagerelay-store").exists()


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 6 MiB file system of its own (tmpfs), to fill."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_fails_the_write_and_loses_nothing(cloud: ir.Cloud, files: Path,
                                                       full_disk: Path) -> None:
    # An import and a copy larger than the region's disk: each fails with the reason, no
    # image of them is Available, no temporary is left, and the store takes what fits next.
    cloud.add_region("tiny", str(full_disk / "store"))
    big = make_dense(files / "big.raw", 16 * 2**20)
    with pytest.raises(ir.ImageRelayError) as excinfo:
        cloud.import_image(big, region="tiny", name="big")
    assert excinfo.value.code == "Transfer.Failed"
    assert "No space left on device" in excinfo.value.message, excinfo.value.message
    source = cloud.import_image(big, region="bj", name="big")
    job = cloud.replicate(source.id, "tiny")
    job.wait(raise_on_error=False)
    assert job.state == "Failed" and job.tasks["tiny"].error_code == "Transfer.Failed"
    assert "No space left on device" in (job.tasks["tiny"].error or "")
    assert [i.status for i in cloud.images(region="tiny")] == ["CreateFailed", "CreateFailed"]
    left = [p for p in (full_disk / "store").rglob("*") if p.is_file()]
    assert not [p for p in left if p.name.startswith(".tmp-")], left
    assert not [p for p in left if "packs" in p.parts], left
    small = cloud.import_image(make_dense(files / "small.raw", 2 * CHUNK), region="tiny",
                               name="small")
    assert small.status == "Available"
    assert cloud.verify_image(small.id) == small.digest
    assert cloud.verify_image(source.id) == source.digest


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o751])
def test_export_with_force_keeps_the_mode_and_owner(cloud: ir.Cloud, image: ir.Image,
                                                    files: Path, mode: int) -> None:
    out = files / "out.raw"
    out.write_bytes(b"secret")
    out.chmod(mode)
    if IS_ROOT:
        os.chown(out, 4321, 4322)
    cloud.export_image(image.id, out, force=True)
    st = out.stat()
    assert stat.S_IMODE(st.st_mode) == mode
    if IS_ROOT:
        assert (st.st_uid, st.st_gid) == (4321, 4322)
    assert out.read_bytes() == (files / "src.raw").read_bytes()


# -- export: what is never written ------------------------------------------------------------
def _special_files(d: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path, what the refusal calls it), each made in ``d``."""
    (d / "victim").write_bytes(b"victim")
    (d / "link").symlink_to(d / "victim")
    (d / "dangling").symlink_to(d / "nowhere")
    os.mkfifo(d / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(d / "sock"))
    sock.close()
    made = {"link": "symbolic link", "dangling": "symbolic link", "fifo": "a FIFO",
            "sock": "a socket"}
    if IS_ROOT:  # the node of /dev/full, which an export as root used to replace
        os.mknod(d / "full", 0o666 | stat.S_IFCHR, os.makedev(1, 7))
        made["full"] = "a character device"
    return {name: (d / name, what) for name, what in made.items()}


@pytest.mark.parametrize("force", [False, True])
def test_export_never_writes_through_a_symlink_nor_over_a_special_file(
        cloud: ir.Cloud, image: ir.Image, files: Path, force: bool) -> None:
    special = files / "special"
    special.mkdir()
    cases = _special_files(special)
    for name, (path, what) in cases.items():
        before = os.lstat(path)
        with pytest.raises(ir.ImageRelayError) as excinfo:
            cloud.export_image(image.id, path, force=force)
        _refused(excinfo, path, what)
        after = os.lstat(path)
        assert (stat.S_IFMT(after.st_mode), after.st_ino) == \
            (stat.S_IFMT(before.st_mode), before.st_ino), name
    assert (special / "victim").read_bytes() == b"victim"
    assert not (special / "nowhere").exists()
    assert os.readlink(special / "link") == str(special / "victim")
    assert sorted(p.name for p in special.iterdir()) == sorted(["victim", *cases])


# -- export: what killed exports leave (the C++ test kills one; here, what they look like) ----
def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_export_removes_what_dead_exports_left_and_nothing_else(
        cloud: ir.Cloud, image: ir.Image, files: Path) -> None:
    out = files / "out"
    out.mkdir()
    stale = out / f".a.raw.imagerelay-export-{_dead_pid()}.partial"
    live = out / f".b.raw.imagerelay-export-{os.getppid()}.partial"
    unrelated = [out / ".c.raw.imagerelay-export-.partial", out / "d.partial",
                 out / f"e.raw.imagerelay-export-{_dead_pid()}.partial"]
    for p in (stale, live, *unrelated):
        p.write_bytes(b"x" * 1000)
    cloud.export_image(image.id, out / "a.raw")
    assert not stale.exists()
    assert live.exists()
    assert all(p.exists() for p in unrelated)
    assert (out / "a.raw").read_bytes() == (files / "src.raw").read_bytes()


# -- import: what is never read -----------------------------------------------------------------
@pytest.mark.parametrize("source", ["/proc/cpuinfo", "/proc/self/mem", "/proc/self/status",
                                    "/sys/kernel/mm/transparent_hugepage/enabled"])
def test_import_refuses_pseudo_file_systems(cloud: ir.Cloud, source: str) -> None:
    if not os.path.isfile(source):
        pytest.skip(f"{source} is not here")
    with pytest.raises(ir.ImageRelayError) as excinfo:
        cloud.import_image(source, region="bj", name="kernel")
    _refused(excinfo, Path(source), "pseudo file system")
    assert cloud.images(image_type="Custom") == []


def test_import_refuses_special_files(cloud: ir.Cloud, files: Path) -> None:
    os.mkfifo(files / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(files / "sock"))
    sock.close()
    cases = {files / "fifo": "a FIFO", files / "sock": "a socket",
             Path("/dev/zero"): "a character device", files: "a directory"}
    for path, what in cases.items():
        with pytest.raises(ir.ImageRelayError) as excinfo:
            cloud.import_image(path, region="bj", name="special")
        _refused(excinfo, path, what)
    assert cloud.images(image_type="Custom") == []
