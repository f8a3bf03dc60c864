"""A store serves one home (docs/integrity.md, "One home per store").

Found by copying a home with ``cp -r`` and deleting an image in the copy: the copy's regions
pointed at the original's stores (absolute paths), its sweep removed the image's manifest
there, and the original's image was lost ("manifest missing"). Two homes given the same
store directory were as exposed: each home's sweep sees only its own copies in flight.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CHUNK, assert_error, make_dense
from test_cli import run

import imagerelay as ir


def _open(home: Path, **kwargs: object) -> ir.Cloud:
    return ir.open(home, limits=ir.Limits(chunk_size=CHUNK), **kwargs)  # type: ignore[arg-type]


def _marker(store: Path) -> str:
    return (store / ".imagerelay-store").read_text()


@pytest.fixture
def original(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A home with an image in bj, its copy in gz, and one in a region outside the home."""
    home = tmp_path / "home1"
    src = make_dense(tmp_path / "src.raw", 5 * CHUNK + 17)
    with _open(home) as cloud:
        cloud.add_region("ext", str(tmp_path / "stores" / "ext"))
        bj = cloud.import_image(src, region="bj", name="golden")
        job = cloud.replicate(bj.id, "gz")
        job.wait()
        ext = cloud.import_image(src, region="ext", name="outside")
        ids = {"bj": bj.id, "gz": job.copies["gz"].id, "ext": ext.id, "digest": bj.digest}
    return home, ids


def _all_verify(home: Path, ids: dict[str, str]) -> None:
    with _open(home) as cloud:
        for region in ("bj", "gz", "ext"):
            assert cloud.verify_image(ids[region]) == ids["digest"], region
            assert cloud.image(ids[region]).status == "Available"


def test_a_copied_home_deletes_nothing_of_the_original(original: tuple[Path, dict[str, str]],
                                                        tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    home1, ids = original
    home2 = tmp_path / "home2"
    shutil.copytree(home1, home2)
    with caplog.at_level(logging.WARNING, logger="imagerelay"), _open(home2) as copy:
        # Its regions inside the home use its own copies of their stores.
        stores = {r.id: r.store for r in copy.regions}
        assert stores["bj"] == str(home2 / "regions" / "bj")
        assert stores["gz"] == str(home2 / "regions" / "gz")
        assert stores["ext"] == str(tmp_path / "stores" / "ext")  # outside: not followed
        assert copy.verify_image(ids["bj"]) == ids["digest"]
        # The original's store outside the home is not the copy's to use, nor to sweep.
        with pytest.raises(ir.ImageRelayError) as excinfo:
            copy.import_image(make_dense(tmp_path / "b.raw", CHUNK), region="ext", name="x")
        assert_error(excinfo, ir.TransferError, "Region.StoreUnavailable", 503)
        assert f"belongs to another imagerelay home at {home1}" in excinfo.value.message
        assert "regions move" in excinfo.value.message
        for region in ("bj", "gz", "ext"):
            copy.delete_image(ids[region])
    said = " ".join(r.getMessage() for r in caplog.records)
    assert f"this home is a copy of the one at {home1}" in said, said
    assert "regions ext are outside it" in said, said
    # The copy's deletes swept its own stores only: every image of the original is whole.
    assert not list((home2 / "regions" / "bj" / "manifests").iterdir())
    _all_verify(home1, ids)
    # The original keeps its identity: opened again, it says nothing of a copy.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="imagerelay"), _open(home1):
        pass
    assert "copy" not in " ".join(r.getMessage() for r in caplog.records)


def test_a_copied_home_moves_an_outside_region_to_a_store_of_its_own(
        original: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    home1, ids = original
    home2 = tmp_path / "home2"
    shutil.copytree(home1, home2)
    ext = tmp_path / "stores" / "ext"
    ext2 = tmp_path / "stores" / "ext2"
    shutil.copytree(ext, ext2)
    with _open(home2) as copy:
        region = copy.move_region("ext", str(ext2))
        assert region.store == str(ext2) and copy.region("ext").store == str(ext2)
        assert copy.verify_image(ids["ext"]) == ids["digest"]
        copy.import_image(make_dense(tmp_path / "b.raw", CHUNK), region="ext", name="new")
        copy.delete_image(ids["ext"])
        moved = [e for e in copy.events() if e.type == "region.moved"]
        assert [(e.region, e.detail["from"], e.detail["store"]) for e in moved] == [
            ("ext", str(ext), str(ext2))]
    # The old place is still the original's (the copy could not release what is not its).
    assert str(home1) in _marker(ext)
    _all_verify(home1, ids)


def test_a_moved_home_takes_its_regions_along(original: tuple[Path, dict[str, str]],
                                               tmp_path: Path) -> None:
    home1, ids = original
    home3 = tmp_path / "elsewhere" / "home3"
    home3.parent.mkdir()
    home1.rename(home3)
    with _open(home3) as cloud:
        assert cloud.region("bj").store == str(home3 / "regions" / "bj")
        # Not a copy: the store outside the home is still its own.
        cloud.import_image(make_dense(tmp_path / "b.raw", CHUNK), region="ext", name="new")
    _all_verify(home3, ids)
    assert str(home3) in _marker(tmp_path / "stores" / "ext")


def test_two_homes_never_share_a_store(tmp_path: Path) -> None:
    shared = tmp_path / "stores" / "shared"
    with _open(tmp_path / "a") as a, _open(tmp_path / "b") as b:
        a.add_region("hk", str(shared))
        image = a.import_image(make_dense(tmp_path / "a.raw", 3 * CHUNK), region="hk", name="x")
        with pytest.raises(ir.ImageRelayError) as excinfo:
            b.add_region("hk", str(shared))
        assert_error(excinfo, ir.TransferError, "Region.StoreUnavailable", 503)
        assert f"another imagerelay home at {tmp_path / 'a'}" in excinfo.value.message
        assert [r.id for r in b.regions] == ["bj", "gz", "su"]
        # Once the first home gives the store up, the second may take it.
        a.delete_image(image.id)
        a.remove_region("hk")
        assert '"home"' not in _marker(shared)
        b.add_region("hk", str(shared))
        assert str(tmp_path / "b") in _marker(shared)


def test_a_store_of_an_earlier_release_is_claimed_by_the_home_that_opens_it(
        tmp_path: Path) -> None:
    home = tmp_path / "home"
    with _open(home) as cloud:
        image = cloud.import_image(make_dense(tmp_path / "a.raw", 2 * CHUNK), region="bj",
                                   name="x")
    bj = home / "regions" / "bj"
    # As the release before owners wrote it.
    (bj / ".imagerelay-store").write_text('{"format": "imagerelay-store", "version": 2}\n')
    with _open(home) as cloud:
        assert cloud.verify_image(image.id) == image.digest
    assert str(home) in _marker(bj)


def test_move_region_refuses_what_is_not_a_copy_of_its_store(
        original: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    home1, ids = original
    empty = tmp_path / "stores" / "empty"
    with _open(home1, start_workers=False) as cloud:
        for region, store, code, words in (
                ("nowhere", str(empty), "NoSuchRegion", "does not exist"),
                ("ext", str(home1 / "regions" / "gz"), "InvalidParameter",
                 "is the store of region gz"),
                ("ext", str(home1 / "regions" / "bj" / "deeper"), "InvalidParameter",
                 "is inside the store of region bj")):
            with pytest.raises(ir.ImageRelayError) as excinfo:
                cloud.move_region(region, store)
            assert excinfo.value.code == code, excinfo.value.message
            assert words in excinfo.value.message
        # An empty place: not made (a region's store outside the home is made only once).
        with pytest.raises(ir.ImageRelayError) as excinfo:
            cloud.move_region("ext", str(empty))
        assert excinfo.value.code == "Region.StoreUnavailable"
        # A store, but not one holding the region's images.
        other = tmp_path / "stores" / "other"
        cloud.add_region("spare", str(other))
        cloud.remove_region("spare")
        with pytest.raises(ir.ImageRelayError) as excinfo:
            cloud.move_region("ext", str(other))
        assert_error(excinfo, ir.ValidationError, "InvalidParameter", 400)
        assert f"lacks the manifest of image {ids['ext']}" in excinfo.value.message
        # A copy whose manifest was changed outside imagerelay.
        forged = tmp_path / "stores" / "forged"
        shutil.copytree(tmp_path / "stores" / "ext", forged)
        manifest = forged / "manifests" / f"{ids['ext']}.bin"
        data = bytearray(manifest.read_bytes())
        data[len(data) // 2] ^= 0x01
        manifest.write_bytes(bytes(data))
        with pytest.raises(ir.ImageRelayError) as excinfo:
            cloud.move_region("ext", str(forged))
        assert_error(excinfo, ir.ValidationError, "InvalidParameter", 400)
        assert f"manifest of image {ids['ext']}" in excinfo.value.message, excinfo.value.message
        # A copy cut short: a pack missing (the index copied with it still names the pack).
        partial = tmp_path / "stores" / "partial"
        shutil.copytree(tmp_path / "stores" / "ext", partial)
        packs = sorted(p for p in (partial / "packs").rglob("*") if p.is_file())
        assert packs
        packs[0].unlink()
        with pytest.raises(ir.ImageRelayError) as excinfo:
            cloud.move_region("ext", str(partial))
        assert_error(excinfo, ir.ValidationError, "InvalidParameter", 400)
        assert f"block(s) of image {ids['ext']}" in excinfo.value.message, excinfo.value.message
        # A copy in flight from it: Region.InUse until it is done.
        job = cloud.replicate(ids["ext"], "su")
        copy_ext = tmp_path / "stores" / "ext-copy"
        shutil.copytree(tmp_path / "stores" / "ext", copy_ext)
        with pytest.raises(ir.ImageRelayError) as excinfo:
            cloud.move_region("ext", str(copy_ext))
        assert_error(excinfo, ir.ConflictError, "Region.InUse", 409)
        assert job.id in excinfo.value.message
        job.cancel()
        assert cloud.region("ext").store == str(tmp_path / "stores" / "ext")
        # A region without images may take a new, empty place.
        cloud.add_region("lone", str(tmp_path / "stores" / "lone"))
        assert cloud.move_region("lone", str(tmp_path / "stores" / "lone2")).store == str(
            tmp_path / "stores" / "lone2")
    _all_verify(home1, ids)


def test_regions_move_on_the_command_line(original: tuple[Path, dict[str, str]],
                                          tmp_path: Path) -> None:
    home1, ids = original
    ext2 = tmp_path / "stores" / "ext2"
    shutil.copytree(tmp_path / "stores" / "ext", ext2)
    result = run(home1, "regions", "move", "ext", str(ext2), as_json=False, inproc=True)
    assert result.stdout.strip() == f"region ext now uses {ext2}"
    listed = {r["id"]: r["store"] for r in run(home1, "regions", "list", inproc=True).data}
    assert listed["ext"] == str(ext2)
    # Moved by its own home: the old place is released, the new one marked.
    assert '"home"' not in _marker(tmp_path / "stores" / "ext")
    assert f'"place": "file:{ext2}"' in _marker(ext2)
    result = run(home1, "regions", "move", "ext", str(tmp_path / "stores" / "none"),
                 expect=1, as_json=False, inproc=True)
    assert "Region.StoreUnavailable" in result.stderr
    _all_verify(home1, ids)


def test_a_fifo_left_at_the_old_place_neither_hangs_the_open_nor_shares_a_store(
        original: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    # Someone who can write where the home was plants a FIFO as its catalog: opening it
    # would block. It is not read; the home takes it for its original (a new identity), so
    # its store outside stays refused rather than shared.
    home1, ids = original
    home3 = tmp_path / "home3"
    home1.rename(home3)
    home1.mkdir()
    os.mkfifo(home1 / "catalog.db")
    script = ("import imagerelay as ir, sys\n"
              f"c = ir.open({str(home3)!r})\n"
              f"print(c.verify_image({ids['bj']!r}))\n"
              "c.close()\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ids["digest"]
    assert "not a regular file" in proc.stderr and "a copy of the one at" in proc.stderr
    with _open(home3) as cloud, pytest.raises(ir.ImageRelayError) as excinfo:
        cloud.verify_image(ids["ext"])
    assert excinfo.value.code == "Region.StoreUnavailable"


def _as_an_earlier_release_left_it(home: Path, *outside: Path) -> None:
    """No identity, no recorded place, markers naming no home: a home of the release before."""
    import sqlite3
    with sqlite3.connect(home / "catalog.db") as db:
        db.execute("DELETE FROM settings WHERE key IN ('home_id', 'home_path')")
    for marker in [*home.glob("regions/*/.imagerelay-store"),
                   *(store / ".imagerelay-store" for store in outside)]:
        marker.write_text('{"format": "imagerelay-store", "version": 2}\n')


def test_a_home_copied_before_identities_uses_its_own_stores(
        original: tuple[Path, dict[str, str]], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    # Copied with `cp -r` under the release before: its catalog names the original's stores
    # and nothing says where it was. Its default regions tell (<old home>/regions/<id>).
    home1, ids = original
    ext = tmp_path / "stores" / "ext"
    _as_an_earlier_release_left_it(home1, ext)
    home2 = tmp_path / "home2"
    shutil.copytree(home1, home2)
    with caplog.at_level(logging.WARNING, logger="imagerelay"), _open(home2) as copy:
        assert copy.region("bj").store == str(home2 / "regions" / "bj")
        assert copy.region("gz").store == str(home2 / "regions" / "gz")
        assert copy.verify_image(ids["bj"]) == ids["digest"]
        # The store outside, which no home has marked yet, is taken for the original's: the
        # copy neither claims it nor writes there.
        with pytest.raises(ir.ImageRelayError) as excinfo:
            copy.import_image(make_dense(tmp_path / "b.raw", CHUNK), region="ext", name="x")
        assert excinfo.value.code == "Region.StoreUnavailable"
        assert "taken for the original's" in excinfo.value.message, excinfo.value.message
        for region in ("bj", "gz", "ext"):
            copy.delete_image(ids[region])
    assert '"home"' not in _marker(ext)
    said = " ".join(r.getMessage() for r in caplog.records)
    assert f"this home is a copy of the one at {home1}" in said, said
    _all_verify(home1, ids)  # the original claims its store outside at this open
    assert str(home1) in _marker(ext)
    # Moved, not copied: followed the same way, its identity made at this open.
    home3 = tmp_path / "home3"
    _as_an_earlier_release_left_it(home1)
    home1.rename(home3)
    with _open(home3) as cloud:
        assert cloud.region("bj").store == str(home3 / "regions" / "bj")
        assert cloud.verify_image(ids["bj"]) == ids["digest"]
