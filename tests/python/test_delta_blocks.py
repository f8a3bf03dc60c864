"""Delta blocks end to end (issue #12, docs/data-plane-v2.md "Delta blocks"): a new version
of an image whose blocks were edited in a few places costs each region, and the wire, little
more than the edits; every byte is still verified, and a damaged base takes every image that
needs it out of use until it is repaired."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import (
    CHUNK,
    damage_block,
    delta_bases,
    edited,
    make_words,
    region_root,
    sha256_file,
    wait_until,
)

import imagerelay as ir

def pack_bytes(home: Path, region: str) -> int:
    return sum(p.stat().st_size for p in (region_root(home, region) / "packs").glob("*/*")
               if p.is_file() and len(p.name) == 32)


@pytest.fixture
def versions(files: Path) -> tuple[Path, Path]:
    v1 = make_words(files / "v1.raw", 32, seed=1)
    return v1, edited(v1, files / "v2.raw", seed=2)


def test_an_edited_version_moves_and_stores_little_more_than_its_edits(
        cloud: ir.Cloud, home: Path, files: Path, versions: tuple[Path, Path]) -> None:
    v1_file, v2_file = versions
    v1 = cloud.import_image(v1_file, region="bj", name="golden")
    v1.replicate("gz").wait(timeout=60)
    stored_v1 = pack_bytes(home, "gz")
    v2 = cloud.import_image(v2_file, region="bj", name="golden")
    job = v2.replicate("gz")
    job.wait(timeout=60)
    task = job.tasks["gz"]
    assert task.state == "Completed"
    # 16 of the 32 blocks changed (by 72 bytes each): moved as deltas of a few hundred bytes
    # where each block compressed alone is ~25 KB.
    assert task.bytes_transferred == 16 * CHUNK, task.to_dict()
    assert task.bytes_sent < 16 * 2048, task.to_dict()
    assert pack_bytes(home, "gz") - stored_v1 < 16 * 2048 + 8192  # + the new pack's footer
    assert len(delta_bases(home, "gz")) >= 16
    copy = job.copies["gz"]
    assert copy.verify() == sha256_file(v2_file)
    assert copy.export(files / "v2.out").read_bytes() == v2_file.read_bytes()


def test_a_damaged_base_takes_out_every_image_needing_it_until_repaired(
        cloud: ir.Cloud, home: Path, files: Path, versions: tuple[Path, Path]) -> None:
    v1_file, v2_file = versions
    v1 = cloud.import_image(v1_file, region="bj", name="golden")
    v1_gz = v1.replicate("gz").wait(timeout=60).copies["gz"]
    v2 = cloud.import_image(v2_file, region="bj", name="golden")
    v2_gz = v2.replicate("gz").wait(timeout=60).copies["gz"]
    delta, base = delta_bases(home, "gz")[0]
    damage_block(home, "gz", base)

    with pytest.raises(ir.IntegrityError):
        v2_gz.verify()
    v2_gz.refresh()
    v1_gz.refresh()
    # The damage report names the base the delta was built on.
    assert base in (v2_gz.error or ""), v2_gz.error
    # The delta is gone with its base; both images needed one or the other.
    assert v2_gz.status == "NotAvailable"
    assert v1_gz.status == "NotAvailable"
    assert v2.status == "Available" and v1.status == "Available"  # bj is untouched
    assert v2.verify() == sha256_file(v2_file)

    # Replicated again from the healthy region, both come back whole.
    again = v2.replicate("gz").wait(timeout=60).copies["gz"]
    assert again.verify() == sha256_file(v2_file)
    assert again.export(files / "v2.out").read_bytes() == v2_file.read_bytes()


def test_another_accounts_blocks_are_never_bases(
        cloud: ir.Cloud, home: Path, versions: tuple[Path, Path]) -> None:
    # A delta's size tells how close a block is to its bases: team-b, importing data close to
    # team-a's, must not learn that from what its own import and copy store and send.
    v1_file, v2_file = versions
    v1 = cloud.import_image(v1_file, region="bj", name="golden")
    v1.replicate("gz").wait(timeout=60)
    cloud.add_account("team-b")
    team_b = cloud.as_account("team-b")
    before = pack_bytes(home, "bj")
    theirs = team_b.import_image(v2_file, region="bj", name="near-golden")
    assert pack_bytes(home, "bj") - before > 16 * 8192  # its 16 edited blocks stored whole
    job = theirs.replicate("gz")
    job.wait(timeout=60)
    task = job.tasks["gz"]
    assert task.bytes_transferred == 16 * CHUNK
    assert task.bytes_sent > 16 * 8192, task.to_dict()
    assert delta_bases(home, "bj") == [] and delta_bases(home, "gz") == []
    # team-a's own next version is still kept as deltas.
    mine = cloud.import_image(edited(v1_file, v2_file.with_name("v3.raw"), seed=9),
                              region="bj", name="golden")
    assert mine.status == "Available"
    assert len(delta_bases(home, "bj")) >= 16


def feature_rows(home: Path, region: str) -> int:
    """Rows of a local region's resemblance index."""
    import sqlite3
    conn = sqlite3.connect(region_root(home, region) / "index" / "blocks.sqlite", timeout=30)
    try:
        return conn.execute("SELECT count(*) FROM features").fetchone()[0]
    finally:
        conn.close()


def test_deleting_a_version_drops_its_resemblance_rows_with_its_blocks(
        cloud: ir.Cloud, home: Path, versions: tuple[Path, Path]) -> None:
    # Only hints, skipped when stale, but every deleted version used to leave ~16 rows per
    # block in the index for good.
    v1_file, v2_file = versions
    v1 = cloud.import_image(v1_file, region="bj", name="golden")
    v2 = cloud.import_image(v2_file, region="bj", name="golden")
    assert feature_rows(home, "bj") >= 32 * 8
    v1.delete()  # its blocks live on: v2's 16 edited blocks are deltas on them
    v2.delete()
    wait_until(lambda: pack_bytes(home, "bj") == 0, timeout=30)
    wait_until(lambda: feature_rows(home, "bj") == 0, timeout=30)


def test_two_versions_replicated_at_once_move_their_shared_blocks_once(
        cloud: ir.Cloud, home: Path, files: Path) -> None:
    """A playbook that replicates v1 and v2 of an image in one go: both copies plan before
    either writes, and each block they share is read and written by whichever comes to it
    first, skipped by the other (Store::ClaimToWrite); every byte is still checked."""
    v1_file = make_words(files / "v1.raw", 256, seed=3)
    v2_file = edited(v1_file, files / "v2.raw", seed=4, every=16)  # 16 of 256 blocks edited
    v1 = cloud.import_image(v1_file, region="bj", name="golden")
    v2 = cloud.import_image(v2_file, region="bj", name="golden")
    jobs = [v1.replicate("gz"), v2.replicate("gz")]
    for job in jobs:
        job.wait(timeout=120)
        assert job.tasks["gz"].state == "Completed", job.tasks["gz"].to_dict()
    # Moved once each, by whichever copy came to them first: the 256 blocks of v1 and the 16
    # of v2's own (bar a few at the end: a copy that confirms while the other still reads a
    # block it claimed writes that block itself rather than wait).
    moved = sum(job.tasks["gz"].bytes_transferred for job in jobs)
    assert (256 + 16) * CHUNK <= moved <= (256 + 16 + 8) * CHUNK, [
        job.tasks["gz"].to_dict() for job in jobs]
    for job, source in zip(jobs, (v1_file, v2_file)):
        copy = job.copies["gz"]
        assert copy.verify() == sha256_file(source)
        assert copy.export(files / (source.name + ".out")).read_bytes() == source.read_bytes()


def test_a_copy_cancelled_while_it_holds_claims_costs_the_other_copy_nothing_but_time(
        open_cloud, home: Path, files: Path) -> None:
    """The attack on the claims: the copy that claimed the shared blocks is cancelled
    mid-flight (its claims never written). The other copy, which skipped them for it, finds
    them missing when it confirms and writes them: it ends Completed, byte for byte."""
    cloud = open_cloud(bandwidth=2 * 1024 * 1024)  # each copy ~4 s: cancelled in flight
    v1_file = make_words(files / "v1.raw", 128, seed=5)
    v2_file = edited(v1_file, files / "v2.raw", seed=6, every=8)
    v1 = cloud.import_image(v1_file, region="bj", name="golden")
    v2 = cloud.import_image(v2_file, region="bj", name="golden")
    first, second = v1.replicate("gz"), v2.replicate("gz")
    wait_until(lambda: first.refresh().progress > 30, timeout=30)
    first.cancel()
    second.wait(timeout=120)
    task = second.tasks["gz"]
    assert task.state == "Completed", task.to_dict()
    assert first.refresh().state == "Cancelled"
    copy = second.copies["gz"]
    assert copy.verify() == sha256_file(v2_file)
    assert copy.export(files / "v2.out").read_bytes() == v2_file.read_bytes()
