"""Replication: jobs and tasks, copies, busy sources, cancel, delta copies, crash-resume and
two processes racing."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import (
    CHILD_REPLICATE,
    CHUNK,
    PYTHON,
    assert_error,
    bytes_of_earlier_attempts,
    chunk_bytes,
    chunk_hashes,
    chunk_names,
    chunk_stats,
    damage_block,
    distinct_nonzero_bytes,
    make_dense,
    make_sparse,
    make_text,
    parse_result,
    read_result,
    sha256_file,
    stored_blocks,
    stored_bytes,
    wait_for_chunks,
    wait_until,
)

import imagerelay as ir

MiB = 2**20
SLOW = 2 * MiB  # bytes/s: keeps an ~8 MiB copy in flight for seconds


def _busy(call: Callable[[], object]) -> ir.ImageRelayError:
    with pytest.raises(ir.ImageBusyError) as excinfo:
        call()
    assert_error(excinfo, ir.ImageBusyError, "Image.ImageStatusForbidden", 409)
    return excinfo.value


# -- the main job -----------------------------------------------------------------------
@pytest.mark.both_catalogs
def test_replicate_to_two_regions(cloud: ir.Cloud, home: Path, files: Path) -> None:
    src = make_sparse(files / "golden.raw", 3 * MiB + 1234)
    golden = cloud.import_image(src, region="bj", name="golden", os_name="Ubuntu",
                                description="gold")
    job = cloud.replicate(golden.id, ["gz", "su"])
    assert isinstance(job, ir.Job)
    assert job.id.startswith("j-") and len(job.id) == 10
    assert job.source_image_id == golden.id
    assert job.source_region == "bj"
    assert job.created_at is not None and job.created_at.tzinfo is not None
    assert set(job.tasks) == {"gz", "su"}
    # destination images exist at once in their regions' listings
    for region, task in job.tasks.items():
        assert isinstance(task, ir.Task)
        assert task.region == region
        assert task.bytes_total == golden.size
        listed = {i.id: i for i in cloud.images(region=region)}
        assert task.dest_image_id in listed
        assert listed[task.dest_image_id].status in ("Replicating", "Available")
        assert listed[task.dest_image_id].region == region
    assert job.wait(timeout=60) is job
    assert job.state == "Completed"
    assert job.progress == 100.0
    copies = job.copies
    assert set(copies) == {"gz", "su"}
    ids = {golden.id}
    for region, copy in copies.items():
        task = job.tasks[region]
        assert task.state == "Completed"
        assert task.dest_image_id == copy.id
        assert task.bytes_done == task.bytes_total == golden.size
        assert task.attempts == 1
        assert task.error is None and task.error_code is None
        assert task.started_at is not None and task.finished_at >= task.started_at
        assert task.chunks_total == (golden.size + CHUNK - 1) // CHUNK
        # zero chunks are covered but not written
        assert task.bytes_transferred == distinct_nonzero_bytes(src)[1]
        assert copy.id not in ids
        ids.add(copy.id)
        assert copy.region == region
        assert copy.status == "Available"
        assert copy.type == "Custom" and copy.owner == "default"
        assert copy.name == "golden"
        assert copy.os_name == "Ubuntu" and copy.description == "gold"
        assert copy.source_image_id == golden.id
        assert copy.source_region == "bj"
        assert copy.digest == golden.digest
        assert copy.size == golden.size
        assert copy.progress is None
        out = copy.export(files / f"{region}.out")
        assert out.read_bytes() == src.read_bytes()
        assert sha256_file(out) == golden.digest
        assert chunk_names(home, region) == chunk_names(home, "bj")
        st = os.stat(out)
        assert st.st_blocks * 512 < st.st_size // 2  # still sparse
    assert cloud.image(golden.id).status == "Available"
    assert cloud.wait_idle(timeout=5) is True
    d = job.to_dict()
    assert d["id"] == job.id and set(d["tasks"]) == {"gz", "su"}
    assert "<table>" in job._repr_html_()
    assert job.id in repr(job)


def test_replicate_name_and_duplicates_folded(cloud: ir.Cloud, files: Path) -> None:
    src = make_dense(files / "a.raw", 4 * CHUNK)
    image = cloud.import_image(src, region="bj", name="a")
    job = image.replicate(["gz", "gz"], name="copy-of-a")
    assert list(job.tasks) == ["gz"]
    job.wait(timeout=60)
    copy = job.copies["gz"]
    assert copy.name == "copy-of-a"
    assert [i.id for i in cloud.images(region="gz")] == [copy.id]
    # a copy is a Custom image like any other: it can be replicated on
    job2 = copy.replicate("su")
    job2.wait(timeout=60)
    again = job2.copies["su"]
    assert again.source_image_id == copy.id and again.source_region == "gz"
    assert again.export(files / "su.out").read_bytes() == src.read_bytes()


def test_wait_with_progress_bars(cloud: ir.Cloud, files: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    image = cloud.import_image(make_dense(files / "a.raw", 2 * MiB), region="bj", name="a")
    job = image.replicate(["gz", "su"])
    assert job.wait(timeout=60, progress=True) is job
    assert job.state == "Completed"
    err = capsys.readouterr().err
    assert "gz" in err and "su" in err


def test_await_job(cloud: ir.Cloud, files: Path) -> None:
    src = make_dense(files / "a.raw", MiB)
    image = cloud.import_image(src, region="bj", name="a")

    async def main() -> tuple[ir.Job, int]:
        job = image.replicate(["gz", "su"])
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        t = asyncio.create_task(ticker())
        done = await job
        t.cancel()
        return done, ticks

    job, ticks = asyncio.run(main())
    assert isinstance(job, ir.Job)
    assert job.state == "Completed"
    assert ticks >= 1  # the loop went on while the job ran
    assert job.copies["su"].export(files / "su.out").read_bytes() == src.read_bytes()


def test_jobs_job_and_wait_idle(open_cloud, files: Path) -> None:
    cloud = open_cloud(bandwidth=SLOW)
    a = cloud.import_image(make_dense(files / "a.raw", 4 * CHUNK), region="bj", name="a")
    b = cloud.import_image(make_dense(files / "b.raw", 8 * MiB), region="bj", name="b")
    ja = a.replicate("gz")
    ja.wait(timeout=60)
    jb = b.replicate("su")
    assert [j.id for j in cloud.jobs()] == [jb.id, ja.id]  # newest first
    assert [j.id for j in cloud.jobs(active=True)] == [jb.id]
    assert [j.id for j in cloud.jobs(active=False)] == [ja.id]
    assert cloud.job(ja.id).state == "Completed"
    assert cloud.job(jb.id).state == "Running"
    assert cloud.wait_idle(timeout=0.05) is False
    with pytest.raises(ir.TimeoutError) as excinfo:
        jb.wait(timeout=0.05)
    assert excinfo.value.code == "Timeout"
    assert isinstance(excinfo.value, TimeoutError)
    assert 0.0 <= jb.refresh().progress < 100.0
    jb.cancel()
    assert cloud.wait_idle(timeout=30) is True
    assert cloud.job(jb.id).state == "Cancelled"
    assert cloud.jobs(active=True) == []


# -- a source in flight -----------------------------------------------------------------
def test_source_is_busy_while_replicating(open_cloud, home: Path, files: Path) -> None:
    cloud = open_cloud(bandwidth=SLOW)
    cloud.add_account("bob")
    cloud.add_account("carol")
    src = make_dense(files / "big.raw", 8 * MiB)
    image = cloud.import_image(src, region="bj", name="big")
    image.share("carol")
    gz_before = chunk_names(home, "gz")
    job = image.replicate("gz")
    dest = job.tasks["gz"].dest_image_id
    assert cloud.image(image.id).status == "Replicating"
    copy = cloud.image(dest)
    assert copy.status == "Replicating"
    assert copy.progress is not None and 0.0 <= copy.progress <= 100.0

    _busy(lambda: cloud.share(image.id, "bob"))
    _busy(lambda: cloud.unshare(image.id, "carol"))
    _busy(lambda: cloud.rename_image(image.id, "renamed"))
    _busy(lambda: cloud.replicate(image.id, "su"))
    with pytest.raises(ir.ImageBusyError) as excinfo:
        cloud.delete_image(image.id)
    assert_error(excinfo, ir.ImageBusyError, "Image.ImageStatusForbidden", 409,
                 problems=["Image.ImageStatusForbidden", "Image.ImageHasBeenSharedToOthers"])
    # the copy in flight is busy too
    _busy(lambda: cloud.share(dest, "bob"))
    _busy(lambda: cloud.rename_image(dest, "x"))
    _busy(lambda: cloud.replicate(dest, "su"))
    _busy(lambda: cloud.export_image(dest, files / "early.out"))
    assert not (files / "early.out").exists()
    # reads still work; the source can be exported while its copies run
    assert cloud.image(image.id).name == "big"
    assert image.export(files / "src.out").read_bytes() == src.read_bytes()
    assert cloud.shared_users(image.id) == ["carol"]

    cloud.cancel_copy(dest)
    assert cloud.image(image.id).status == "Available"
    wait_for_chunks(home, "gz", gz_before)
    # and now the same calls succeed
    cloud.rename_image(image.id, "renamed")
    cloud.share(image.id, "bob")
    assert sorted(cloud.shared_users(image.id)) == ["bob", "carol"]


@pytest.mark.both_catalogs
def test_cancel_copy_mid_flight(open_cloud, home: Path, files: Path) -> None:
    cloud = open_cloud(bandwidth=SLOW)
    old = cloud.import_image(make_dense(files / "old.raw", 6 * CHUNK), region="gz", name="old")
    gz_before = chunk_stats(home, "gz")
    names_before = chunk_names(home, "gz")
    src = make_dense(files / "big.raw", 8 * MiB)
    image = cloud.import_image(src, region="bj", name="big")
    job = image.replicate("gz")
    dest = job.tasks["gz"].dest_image_id
    wait_until(lambda: chunk_bytes(home, "gz") > gz_before[1] + 2 * CHUNK)
    assert job.refresh().tasks["gz"].state == "Running"

    cloud.cancel_copy(dest)
    assert dest not in {i.id for i in cloud.images(region="gz")}
    assert dest not in {i.id for i in cloud.images()}
    with pytest.raises(ir.NotFoundError) as excinfo:
        cloud.image(dest)
    assert_error(excinfo, ir.NotFoundError, "NoSuchImage", 404)
    task = job.refresh().tasks["gz"]
    assert task.state == "Cancelled"
    assert task.finished_at is not None
    assert job.state == "Cancelled"
    assert job.copies == {}
    assert cloud.image(image.id).status == "Available"
    # partial bytes removed, chunks of other images kept
    wait_for_chunks(home, "gz", names_before, timeout=10)
    assert chunk_stats(home, "gz") == gz_before
    assert old.export(files / "old.out").read_bytes() == (files / "old.raw").read_bytes()
    types = [e.type for e in cloud.events(image_id=dest)]
    assert "task.cancelled" in types and types[-1] in ("image.deleted", "task.cancelled")
    # cancel again: nothing in flight
    with pytest.raises(ir.NotFoundError):
        cloud.cancel_copy(dest)
    with pytest.raises(ir.ImageBusyError) as excinfo:
        job.cancel()
    assert excinfo.value.code == "Image.ImageStatusForbidden"
    # the source can be replicated again
    job2 = image.replicate("gz")
    job2.wait(timeout=60)
    assert job2.copies["gz"].export(files / "gz.out").read_bytes() == src.read_bytes()


def test_cancel_of_finished_copy(cloud: ir.Cloud, files: Path) -> None:
    image = cloud.import_image(make_dense(files / "a.raw", 4 * CHUNK), region="bj", name="a")
    job = image.replicate("gz")
    job.wait(timeout=60)
    dest = job.tasks["gz"].dest_image_id
    _busy(lambda: cloud.cancel_copy(dest))
    _busy(lambda: job.cancel())
    _busy(lambda: job.cancel(region="gz"))
    # the source is not a copy in flight either
    _busy(lambda: cloud.cancel_copy(image.id))
    assert cloud.image(dest).status == "Available"
    assert job.refresh().state == "Completed"


@pytest.mark.both_catalogs
def test_job_cancel_one_region(open_cloud, home: Path, files: Path) -> None:
    cloud = open_cloud(bandwidth=4 * MiB)
    src = make_dense(files / "big.raw", 6 * MiB)
    image = cloud.import_image(src, region="bj", name="big")
    gz_before = chunk_names(home, "gz")
    job = image.replicate(["gz", "su"])
    dest_gz = job.tasks["gz"].dest_image_id
    job.cancel(region="gz")
    assert job.tasks["gz"].state == "Cancelled"
    assert job.tasks["su"].state in ("Pending", "Running", "Completed")
    with pytest.raises(ir.NotFoundError):
        cloud.image(dest_gz)
    job.wait(timeout=60)
    assert job.state == "PartiallyCompleted"
    assert job.tasks["gz"].state == "Cancelled"
    assert job.tasks["su"].state == "Completed"
    assert set(job.copies) == {"su"}
    assert job.copies["su"].export(files / "su.out").read_bytes() == src.read_bytes()
    assert cloud.image(image.id).status == "Available"
    wait_for_chunks(home, "gz", gz_before, timeout=10)
    assert cloud.images(region="gz") == []


def test_cancel_one_destination_removes_its_bytes_while_the_other_runs(
        open_cloud, home: Path, files: Path) -> None:
    """DESIGN §2 Cancel (one region of a job): the destination's partial bytes are removed
    and the source stays Replicating for the other copy, which goes on."""
    cloud = open_cloud(bandwidth=MiB // 2)
    src = make_dense(files / "big.raw", 8 * MiB)
    image = cloud.import_image(src, region="bj", name="big")
    gz_before = chunk_names(home, "gz")
    job = image.replicate(["gz", "su"])
    wait_until(lambda: chunk_bytes(home, "gz") >= 4 * CHUNK)
    job.cancel(region="gz")
    try:
        assert job.refresh().tasks["su"].state == "Running"
        assert cloud.image(image.id).status == "Replicating"
        wait_for_chunks(home, "gz", gz_before, timeout=5)
        # the check above is only meaningful while su is still copying
        assert job.refresh().tasks["su"].state == "Running"
    finally:
        if job.refresh().state == "Running":
            job.cancel()
    assert job.state == "Cancelled"
    assert cloud.image(image.id).status == "Available"


def test_cancel_by_another_account(open_cloud, files: Path) -> None:
    cloud = open_cloud(bandwidth=SLOW)
    cloud.add_account("bob")
    image = cloud.import_image(make_dense(files / "a.raw", 8 * MiB), region="bj", name="a")
    job = image.replicate("gz")
    dest = job.tasks["gz"].dest_image_id
    bob = cloud.as_account("bob")
    with pytest.raises(ir.NotFoundError):
        bob.cancel_copy(dest)
    with pytest.raises(ir.NotFoundError) as excinfo:
        bob.job(job.id).cancel()
    assert excinfo.value.code == "NoSuchJob"
    assert cloud.job(job.id).state == "Running"
    job.cancel()
    assert job.state == "Cancelled"


def test_pending_behind_region_cap(open_cloud, files: Path) -> None:
    cloud = open_cloud(bandwidth=SLOW, max_tasks_per_region=1)
    a = cloud.import_image(make_dense(files / "a.raw", 8 * MiB), region="bj", name="a")
    b = cloud.import_image(make_dense(files / "b.raw", 8 * CHUNK), region="bj", name="b")
    ja = a.replicate("gz")
    wait_until(lambda: ja.refresh().tasks["gz"].state == "Running")
    jb = b.replicate("gz")
    time.sleep(0.7)  # a worker had time to look at it
    assert jb.refresh().tasks["gz"].state == "Pending"
    assert jb.state == "Running"
    ja.cancel()
    jb.wait(timeout=60)
    assert jb.state == "Completed"
    assert ja.refresh().state == "Cancelled"


def test_cancel_while_another_copy_runs_to_the_same_region(open_cloud, home: Path,
                                                           files: Path) -> None:
    """DESIGN §2 Cancel: "its partial bytes are removed" - also when another copy into the
    same region is in flight at that moment."""
    cloud = open_cloud(bandwidth=SLOW)
    src_a = make_dense(files / "a.raw", 6 * MiB)
    src_b = make_dense(files / "b.raw", 6 * MiB)
    a = cloud.import_image(src_a, region="bj", name="a")
    b = cloud.import_image(src_b, region="bj", name="b")
    ja = a.replicate("gz")
    jb = b.replicate("gz")
    wait_until(lambda: chunk_bytes(home, "gz") >= 8 * CHUNK)
    ja.cancel()
    assert ja.state == "Cancelled"
    jb.wait(timeout=60)
    assert jb.state == "Completed"
    expected = {h for h in chunk_hashes(src_b) if h}
    # the cancelled copy's partial chunks must go; b's copy keeps all of its own
    wait_for_chunks(home, "gz", expected, timeout=10)
    assert jb.copies["gz"].export(files / "b.out").read_bytes() == src_b.read_bytes()


def test_delete_during_a_copy_into_the_same_region(open_cloud, home: Path,
                                                   files: Path) -> None:
    """A deleted image's unique chunks are removed, and chunks a copy in flight relies on are
    kept, when the delete happens while a copy into that region runs."""
    cloud = open_cloud(bandwidth=SLOW)
    shared = os.urandom(4 * MiB)
    src_a = files / "a.raw"
    src_b = files / "b.raw"
    src_a.write_bytes(shared + os.urandom(MiB))
    src_b.write_bytes(os.urandom(4 * MiB) + shared)
    a = cloud.import_image(src_a, region="bj", name="a")
    b = cloud.import_image(src_b, region="bj", name="b")
    ja = a.replicate("gz")
    ja.wait(timeout=60)
    jb = b.replicate("gz")
    wait_until(lambda: jb.refresh().tasks["gz"].state == "Running")
    ja.copies["gz"].delete()
    jb.wait(timeout=60)
    assert jb.state == "Completed"
    # nothing b's copy needs was lost
    assert jb.copies["gz"].export(files / "b.out").read_bytes() == src_b.read_bytes()
    expected = {h for h in chunk_hashes(src_b) if h}
    # and the 16 chunks only a's deleted copy used are gone
    wait_for_chunks(home, "gz", expected, timeout=10)


# On PostgreSQL this once counted 3 attempts about 1 run in 5: Close() stopped the workers
# only after the catalog's listener (a poll of up to 250 ms), so a worker whose copy had just
# been handed back claimed it again meanwhile.
@pytest.mark.both_catalogs
def test_close_mid_flight_resumes_at_next_open(home: Path, files: Path) -> None:
    src = make_dense(files / "big.raw", 8 * MiB)
    cloud = ir.open(home, limits=ir.Limits(chunk_size=CHUNK, bandwidth=SLOW))
    try:
        image = cloud.import_image(src, region="bj", name="big")
        job = image.replicate(["gz", "su"])
        wait_until(lambda: chunk_bytes(home, "gz") >= 4 * CHUNK
                   and chunk_bytes(home, "su") >= 4 * CHUNK)
    finally:
        cloud.close()
    present = {r: chunk_stats(home, r) for r in ("gz", "su")}
    with ir.open(home, limits=ir.Limits(chunk_size=CHUNK)) as cloud:
        job = cloud.job(job.id)
        job.wait(timeout=60)
        assert job.state == "Completed"
        for region, task in job.tasks.items():
            assert task.attempts == 2
            assert 0 < present[region][1] < src.stat().st_size
            assert task.bytes_transferred == (bytes_of_earlier_attempts(cloud, task)
                                              + src.stat().st_size - present[region][1])
            copy = cloud.image(task.dest_image_id)
            assert copy.export(files / f"{region}.out").read_bytes() == src.read_bytes()
            assert chunk_stats(home, region) == (128, 8 * MiB)


# -- delta copies -----------------------------------------------------------------------
def test_second_copy_of_slightly_changed_image_moves_only_changes(cloud: ir.Cloud,
                                                                  home: Path,
                                                                  files: Path) -> None:
    size = 8 * MiB
    src = make_dense(files / "golden.raw", size)
    v1 = cloud.import_image(src, region="bj", name="golden")
    job1 = v1.replicate("gz")
    job1.wait(timeout=60)
    assert job1.tasks["gz"].bytes_transferred == size
    # the guest rewrites two 64 KiB blocks in place (~1.5 % of the image)
    with open(src, "r+b") as f:
        for block in (10, 100):
            f.seek(block * CHUNK + 17)
            f.write(os.urandom(3000))
    v2 = cloud.import_image(src, region="bj", name="golden")
    assert v2.digest != v1.digest
    job2 = v2.replicate("gz")
    job2.wait(timeout=60)
    task = job2.tasks["gz"]
    assert task.state == "Completed"
    assert task.bytes_done == size
    assert task.bytes_transferred <= 0.03 * size, task.to_dict()
    assert task.bytes_transferred == 2 * CHUNK
    assert task.chunks_skipped == size // CHUNK - 2
    copy = job2.copies["gz"]
    assert copy.export(files / "v2.out").read_bytes() == src.read_bytes()
    assert copy.digest == v2.digest
    assert len(chunk_names(home, "gz")) == size // CHUNK + 2


# -- shares ----------------------------------------------------------------------------
def test_copies_do_not_inherit_shares(cloud: ir.Cloud, files: Path) -> None:
    cloud.add_account("bob")
    image = cloud.import_image(make_dense(files / "a.raw", 4 * CHUNK), region="bj", name="a")
    image.share("bob")
    job = image.replicate(["gz", "su"])
    job.wait(timeout=60)
    bob = cloud.as_account("bob")
    for copy in job.copies.values():
        assert copy.shared_users() == []
        with pytest.raises(ir.NotFoundError):
            bob.image(copy.id)
    assert {i.id for i in bob.images()} == {image.id}
    assert image.shared_users() == ["bob"]
    # replicate, then share the copy: the way to hand an image over in another region
    job.copies["gz"].share("bob")
    assert bob.image(job.copies["gz"].id).type == "Sharing"


def test_a_copy_writes_each_block_as_the_source_stores_it(cloud: ir.Cloud, home: Path,
                                                          files: Path) -> None:
    # Issue #12: a copy checks every block (decompressed, hashed) and writes the source's
    # compressed bytes as they are instead of compressing the block again.
    src = make_text(files / "a.raw", 6, random_chunks=2)
    image = cloud.import_image(src, region="bj", name="a")
    job = image.replicate("gz")
    job.wait(timeout=60)
    source, copy = stored_bytes(home, "bj"), stored_bytes(home, "gz")
    assert len(source) == 8 and copy == source  # byte for byte, in stored form
    blocks = stored_blocks(home, "gz")
    assert sum(1 for *_, n, raw in blocks.values() if n < raw) == 6  # the text compressed
    task = job.tasks["gz"]
    assert task.bytes_transferred == src.stat().st_size  # bytes of the image
    assert task.bytes_sent == sum(len(b) for b in copy.values()) < 3 * CHUNK  # on the wire
    assert job.copies["gz"].export(files / "a.out").read_bytes() == src.read_bytes()


def test_a_corrupt_compressed_block_is_never_passed_on(cloud: ir.Cloud, home: Path,
                                                       files: Path) -> None:
    src = make_text(files / "a.raw", 4)
    image = cloud.import_image(src, region="bj", name="a")
    victim = chunk_hashes(src)[2]
    assert victim is not None and stored_blocks(home, "bj")[victim][2] < CHUNK  # compressed
    damage_block(home, "bj", victim)
    job = image.replicate("gz")
    job.wait(timeout=60, raise_on_error=False)
    task = job.tasks["gz"]
    assert task.state == "Failed" and task.error_code == "Transfer.IntegrityError", task.to_dict()
    assert victim in (task.error or "") and "at byte" in (task.error or "")
    assert cloud.image(image.id).status == "NotAvailable"
    assert victim not in chunk_names(home, "gz")


# -- failure ----------------------------------------------------------------------------
def test_corrupt_source_chunk_fails_the_copy(cloud: ir.Cloud, home: Path, files: Path) -> None:
    src = make_dense(files / "a.raw", 8 * CHUNK)
    image = cloud.import_image(src, region="bj", name="a")
    victim = chunk_stats(home, "bj")
    assert victim[0] == 8
    victim_hash = sorted(chunk_names(home, "bj"))[0]
    damage_block(home, "bj", victim_hash)
    gz_before = chunk_names(home, "gz")
    job = image.replicate(["gz", "su"])
    with pytest.raises(ir.ReplicationFailedError) as excinfo:
        job.wait(timeout=60)
    assert excinfo.value.code == "Job.Failed"
    assert excinfo.value.job is not None and excinfo.value.job.id == job.id
    assert job.state == "Failed"
    assert job.wait(timeout=5, raise_on_error=False) is job
    for region, task in job.tasks.items():
        assert task.state == "Failed"
        assert task.error_code == "Transfer.IntegrityError"
        assert task.error
        copy = cloud.image(task.dest_image_id)
        assert copy.status == "CreateFailed"
        assert copy.error
        with pytest.raises(ir.ImageRelayError):
            copy.export(files / f"{region}.out")
        copy.delete()
        with pytest.raises(ir.NotFoundError):
            cloud.image(task.dest_image_id)
    # The damage found takes the source out of use until a scrub repairs it, and its bad
    # chunk out of every lookup.
    source = cloud.image(image.id)
    assert source.status == "NotAvailable" and "corrupt" in (source.error or "")
    assert victim_hash not in chunk_names(home, "bj")
    # the corrupt chunk was never written
    wait_for_chunks(home, "gz", gz_before, timeout=10)
    assert victim_hash not in chunk_names(home, "su")


# -- processes --------------------------------------------------------------------------


@pytest.mark.both_catalogs
def test_crash_resume(home: Path, files: Path) -> None:
    # 8 MiB of random data, plus zero chunks and a repeated chunk
    block = os.urandom(CHUNK)
    src = files / "big.raw"
    src.write_bytes(os.urandom(8 * MiB) + bytes(4 * CHUNK) + block * 3 + b"end")
    n_distinct, distinct_bytes = distinct_nonzero_bytes(src)
    with ir.open(home, limits=ir.Limits(chunk_size=CHUNK)) as cloud:
        image = cloud.import_image(src, region="bj", name="big")
    assert chunk_stats(home, "gz") == (0, 0)

    child = subprocess.Popen([PYTHON, "-c", CHILD_REPLICATE, str(home), image.id, str(SLOW),
                              "gz"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        started = read_result(child)
        # Killed once some packs are written; blocks not yet in a pack are lost with it.
        wait_until(lambda: chunk_bytes(home, "gz") >= 4 * CHUNK, timeout=30)
        assert child.poll() is None
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    child.stdout.close()
    child.stderr.close()
    present = chunk_stats(home, "gz")
    assert 0 < present[1] < distinct_bytes, present

    with ir.open(home, limits=ir.Limits(chunk_size=CHUNK)) as cloud:
        job = cloud.job(started["job"])
        job.wait(timeout=60)
        assert job.state == "Completed"
        task = job.tasks["gz"]
        assert task.state == "Completed"
        assert task.dest_image_id == started["dest"]
        assert task.attempts == 2
        assert task.bytes_done == image.size
        # the resumed copy wrote only what was missing, on top of what the killed one wrote
        earlier = bytes_of_earlier_attempts(cloud, task)
        assert earlier > 0
        assert task.bytes_transferred == earlier + distinct_bytes - present[1], (
            task.to_dict(), present)
        copy = cloud.image(started["dest"])
        assert copy.status == "Available"
        out = copy.export(files / "resumed.out")
        assert out.read_bytes() == src.read_bytes()
        assert sha256_file(out) == image.digest
        copies = [i for i in cloud.images(region="gz") if i.source_image_id == image.id]
        assert [c.id for c in copies] == [started["dest"]]
        assert chunk_stats(home, "gz") == (n_distinct, distinct_bytes)
        assert cloud.image(image.id).status == "Available"
        # The killed writer's temporary files go with the sweep after the resumed copy.
        wait_until(lambda: not temp_files(home, "gz"), timeout=10)


def temp_files(home: Path, region: str) -> list[Path]:
    return list((home / "regions" / region).rglob(".tmp-*"))


CHILD_RACE = textwrap.dedent("""
    import sys, os, time, json
    import imagerelay as ir
    home, image_id, barrier, me = sys.argv[1:5]
    cloud = ir.open(home, limits=ir.Limits(chunk_size=65536))
    open(os.path.join(barrier, me), "w").close()
    deadline = time.monotonic() + 30
    while len(os.listdir(barrier)) < 2 and time.monotonic() < deadline:
        time.sleep(0.0005)
    try:
        job = cloud.replicate(image_id, ["gz"])
        out = {"job": job.id}
    except ir.ImageRelayError as e:
        out = {"error": e.code, "class": type(e).__name__, "message": e.message}
    print("RESULT", json.dumps(out), flush=True)
    cloud.close()
""")


@pytest.mark.both_catalogs
@pytest.mark.parametrize("round_", range(3))
def test_two_processes_race_to_replicate(home: Path, files: Path, tmp_path: Path,
                                         round_: int) -> None:
    src = make_dense(files / "a.raw", 16 * CHUNK)
    with ir.open(home, limits=ir.Limits(chunk_size=CHUNK)) as cloud:
        image = cloud.import_image(src, region="bj", name="raced")
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    procs = [subprocess.Popen([PYTHON, "-c", CHILD_RACE, str(home), image.id, str(barrier),
                               f"p{i}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        results.append(parse_result(out))
    winners = [r for r in results if "job" in r]
    losers = [r for r in results if "error" in r]
    assert len(winners) == 1 and len(losers) == 1, results
    assert losers[0]["class"] == "ImageBusyError", results
    assert losers[0]["error"] == "Image.ImageStatusForbidden", results
    with ir.open(home, limits=ir.Limits(chunk_size=CHUNK)) as cloud:
        job = cloud.job(winners[0]["job"])
        job.wait(timeout=60)
        assert job.state == "Completed"
        assert len(cloud.jobs()) == 1
        copies = [i for i in cloud.images(region="gz") if i.source_image_id == image.id]
        assert len(copies) == 1
        assert copies[0].export(files / "gz.out").read_bytes() == src.read_bytes()


@pytest.mark.both_catalogs
def test_crash_takeover_by_an_engine_already_open(home: Path, files: Path) -> None:
    """An engine that is open when the copying process dies takes its task over, and does
    not take over while that process lives."""
    src = make_dense(files / "big.raw", 8 * MiB)
    with ir.open(home, limits=ir.Limits(chunk_size=CHUNK)) as cloud:
        image = cloud.import_image(src, region="bj", name="big")
    # A quarter of SLOW: 16 s for the whole copy, so that it is still in flight when checked
    # even if opening the home here takes seconds on a loaded machine (at SLOW, a CI run
    # once found it completed).
    child = subprocess.Popen([PYTHON, "-c", CHILD_REPLICATE, str(home), image.id,
                              str(SLOW // 4), "gz", "running"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        started = read_result(child)
        with ir.open(home, limits=ir.Limits(chunk_size=CHUNK)) as cloud:
            wait_until(lambda: chunk_bytes(home, "gz") >= 4 * CHUNK, timeout=30)
            time.sleep(0.8)  # longer than a worker's look for orphaned tasks
            task = cloud.job(started["job"]).tasks["gz"]
            assert task.attempts == 1 and task.state == "Running"
            assert child.poll() is None
            child.send_signal(signal.SIGKILL)
            child.wait()
            present = chunk_stats(home, "gz")
            job = cloud.job(started["job"]).wait(timeout=60)
            task = job.tasks["gz"]
            assert task.state == "Completed" and task.attempts == 2
            earlier = bytes_of_earlier_attempts(cloud, task)
            assert earlier > 0
            assert task.bytes_transferred == earlier + 8 * MiB - present[1]
            assert cloud.image(task.dest_image_id).export(
                files / "out.raw").read_bytes() == src.read_bytes()
            assert chunk_stats(home, "gz") == (128, 8 * MiB)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
        child.stderr.close()
