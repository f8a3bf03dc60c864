"""Nothing wrong is ever Available; no one sees what is not theirs (issue: trust nothing).

Each test is an attack from the adversarial review, as a user or an attacker with write
access to a region's directory would run it, and the behaviour that must hold instead.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

import imagerelay as ir
from conftest import (
    PYTHON,
    CHUNK,
    assert_error,
    chunk_files,
    chunk_hashes,
    chunk_names,
    damage_block,
    make_odd,
    manifest_path,
    read_manifest,
    sha256_file,
    wait_until,
    write_manifest,
)


def quarantined(home: Path, region: str) -> list[str]:
    q = home / "regions" / region / "quarantine"
    return sorted(p.name.split(".")[0] for p in q.iterdir()) if q.exists() else []


@pytest.fixture
def golden(cloud: ir.Cloud, files: Path) -> tuple[ir.Image, Path]:
    src = make_odd(files / "golden.raw", chunks=6)
    return cloud.import_image(src, region="bj", name="golden"), src


# -- 1. a damaged chunk is never reused ---------------------------------------------------
def test_verify_takes_a_damaged_image_out_of_use_and_reimport_writes_the_chunk_anew(
        cloud: ir.Cloud, home: Path, golden: tuple[ir.Image, Path]) -> None:
    image, src = golden
    victim = chunk_hashes(src)[2]
    assert victim
    damage_block(home, "bj", victim)

    with pytest.raises(ir.IntegrityError) as e:
        image.verify()
    assert victim in e.value.message
    image.refresh()
    assert image.status == "NotAvailable"
    assert victim in (image.error or "")
    assert victim in quarantined(home, "bj")
    assert any(ev.type == "image.damaged" and ev.image_id == image.id for ev in cloud.events())
    # Nothing is made from it: no copy, no export, no share.
    with pytest.raises(ir.ImageBusyError):
        image.replicate(["gz"])
    with pytest.raises(ir.ImageBusyError):
        image.export(home.parent / "out.raw")

    again = cloud.import_image(src, region="bj", name="golden-again")
    assert again.status == "Available"
    assert again.verify() == sha256_file(src)
    assert victim in chunk_names(home, "bj")


def test_a_chunk_written_to_after_it_was_stored_is_not_trusted_by_an_import(
        cloud: ir.Cloud, home: Path, golden: tuple[ir.Image, Path]) -> None:
    # No verify in between: the import itself must not build on the tampered chunk.
    image, src = golden
    victim = chunk_hashes(src)[4]
    assert victim
    damage_block(home, "bj", victim)
    again = cloud.import_image(src, region="bj", name="golden-again")
    assert again.verify() == sha256_file(src)
    image.refresh()
    assert image.status == "NotAvailable"  # the old image needed the bad chunk


@pytest.mark.parametrize("damage", ["corrupt", "truncate", "delete"])
def test_a_copy_never_builds_on_a_damaged_destination_chunk(
        cloud: ir.Cloud, home: Path, golden: tuple[ir.Image, Path], damage: str) -> None:
    image, src = golden
    first = image.replicate(["gz"]).wait()
    copy = first.copies["gz"]
    victim = chunk_hashes(src)[1]
    assert victim
    damage_block(home, "gz", victim, damage)

    second = image.replicate(["gz"]).wait()
    assert second.tasks["gz"].state == "Completed"
    assert second.tasks["gz"].bytes_transferred >= CHUNK  # the damaged chunk moved again
    new_copy = second.copies["gz"]
    assert new_copy.status == "Available"
    assert new_copy.verify() == sha256_file(src)
    # The first copy lost that chunk and got it back with the second: it verifies too.
    copy.refresh()
    if copy.status == "NotAvailable":
        cloud.scrub("gz")
        copy.refresh()
    assert copy.status == "Available"
    assert copy.verify() == sha256_file(src)


def pack_files(home: Path, region: str) -> list[Path]:
    packs = home / "regions" / region / "packs"
    return sorted(p for p in packs.glob("*/*") if p.is_file() and len(p.name) == 32)


@pytest.mark.parametrize("attack", ["swap", "flip", "truncate", "empty"])
def test_packs_tampered_behind_a_time_set_back_are_not_built_on(
        cloud: ir.Cloud, home: Path, files: Path, attack: str) -> None:
    # Found by an adversarial pass: the first release trusted a pack whose modification time
    # still said "as written", and `touch -d`, os.utime or a rename keep or set it back, so a
    # copy committed Available on bytes nothing checked. Nothing here forges a digest.
    a_src = make_odd(files / "a.raw", chunks=6)
    b_src = make_odd(files / "b.raw", chunks=6, extra=999)
    a = cloud.import_image(a_src, region="bj", name="a")
    b = cloud.import_image(b_src, region="bj", name="b")
    a.replicate(["gz"]).wait()
    b.replicate(["gz"]).wait()
    packs = pack_files(home, "gz")
    assert len(packs) == 2
    first = packs[0].stat()
    if attack == "swap":
        packs[0].rename(home / "swap")
        packs[1].rename(packs[0])
        (home / "swap").rename(packs[1])
    elif attack == "flip":
        with open(packs[0], "r+b") as f:
            f.seek(CHUNK // 2)
            byte = f.read(1)
            f.seek(CHUNK // 2)
            f.write(bytes([byte[0] ^ 0xFF]))
    else:
        os.truncate(packs[0], 0 if attack == "empty" else first.st_size // 2)
    os.utime(packs[0], ns=(first.st_atime_ns, first.st_mtime_ns))

    moved = 0
    with ir.open(home) as again:  # a new process's view: nothing remembered in memory
        for image, src in ((a, a_src), (b, b_src)):
            job = again.image(image.id).replicate(["gz"], name=f"{image.name}-again").wait()
            copy = job.copies["gz"]
            assert again.image(copy.id).status == "Available"
            assert copy.verify() == sha256_file(src)
            moved += job.tasks["gz"].bytes_transferred
    assert moved > 0  # what the tampered pack held was sent again


def test_replicating_back_into_a_region_with_a_damaged_chunk_repairs_it(
        cloud: ir.Cloud, home: Path, golden: tuple[ir.Image, Path]) -> None:
    image, src = golden
    healthy = image.replicate(["gz"]).wait().copies["gz"]
    victim = chunk_hashes(src)[3]
    assert victim
    damage_block(home, "bj", victim)
    job = healthy.replicate(["bj"]).wait()
    back = job.copies["bj"]
    assert job.tasks["bj"].chunks_skipped < job.tasks["bj"].chunks_total
    assert back.status == "Available"
    assert back.verify() == sha256_file(src)


# -- 2. the order of valid chunks is checked ---------------------------------------------
def test_a_manifest_with_swapped_chunks_is_refused_by_export_copy_and_verify(
        cloud: ir.Cloud, home: Path, files: Path, golden: tuple[ir.Image, Path]) -> None:
    image, src = golden
    path = manifest_path(home, "bj", image.id)
    manifest = read_manifest(path)
    manifest["chunks"][0], manifest["chunks"][1] = manifest["chunks"][1], manifest["chunks"][0]
    write_manifest(path, manifest)

    with pytest.raises(ir.IntegrityError) as e:
        image.export(files / "out.raw")
    assert "changed outside imagerelay" in e.value.message
    assert not (files / "out.raw").exists()
    image.refresh()
    assert image.status == "NotAvailable"
    with pytest.raises(ir.ImageBusyError):
        image.replicate(["gz"])
    with pytest.raises(ir.IntegrityError):
        image.verify()


@pytest.mark.parametrize("kind", ["fifo", "symlink", "directory"])
def test_a_manifest_replaced_by_a_fifo_link_or_directory_is_damage_not_a_hang(
        home: Path, files: Path, kind: str) -> None:
    # Found by an adversarial pass: a FIFO in place of a manifest hung export, replicate and
    # the background worker (an open waiting for a writer); a link was an error that left the
    # image Available. Each is now a manifest gone: damage, the image taken out of use.
    src = make_odd(files / "m.raw", chunks=3)
    with ir.open(home) as cloud:
        image = cloud.import_image(src, region="bj", name="m")
    path = manifest_path(home, "bj", image.id)
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink":
        path.symlink_to(src)
    else:
        path.mkdir()
    script = (f"import imagerelay as ir\n"
              f"with ir.open({str(home)!r}) as c:\n"
              f"    img = c.image({image.id!r})\n"
              f"    try:\n"
              f"        img.export({str(files / 'out.raw')!r})\n"
              f"    except ir.ImageRelayError as e:\n"
              f"        print(e.code)\n"
              f"    print(c.image({image.id!r}).status)\n")
    proc = subprocess.run([PYTHON, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["Transfer.IntegrityError", "NotAvailable"], proc.stdout


def test_a_manifest_swapped_while_a_copy_waits_fails_the_copy(
        open_cloud, home: Path, files: Path) -> None:
    # The copy is queued by an engine without workers and run by another one after the
    # manifest was changed: the replica must not become Available with the wrong bytes.
    src = make_odd(files / "golden.raw", chunks=6)
    queuer = ir.open(home, limits=ir.Limits(chunk_size=CHUNK), start_workers=False)
    try:
        image = queuer.import_image(src, region="bj", name="golden")
        job = queuer.replicate(image.id, ["gz"])
        path = manifest_path(home, "bj", image.id)
        manifest = read_manifest(path)
        manifest["chunks"][0], manifest["chunks"][1] = manifest["chunks"][1], manifest["chunks"][0]
        write_manifest(path, manifest)
    finally:
        queuer.close()
    worker = open_cloud()
    job = worker.job(job.id).wait(raise_on_error=False)
    assert job.tasks["gz"].state == "Failed"
    assert job.tasks["gz"].error_code == "Transfer.IntegrityError"
    assert job.copies["gz"].status == "CreateFailed"
    assert worker.image(image.id).status == "NotAvailable"


# -- 4. events of what is not yours ---------------------------------------------------------
def test_events_show_an_account_only_what_it_may_see(
        cloud: ir.Cloud, files: Path) -> None:
    cloud.add_account("bob")
    bob = cloud.as_account("bob")
    seen: list[ir.Event] = []
    bob.on("*", seen.append)
    private = cloud.import_image(make_odd(files / "private.raw", chunks=2), region="bj",
                                 name="secret-plan")
    shared = cloud.import_image(make_odd(files / "shared.raw", chunks=2), region="bj",
                                name="for-bob")
    before_share = max(e.seq for e in cloud.events())
    shared.share("bob")
    shared.rename("for-bob-v2")
    cloud.wait_idle()

    events = bob.events()
    assert all(e.image_id != private.id for e in events), events
    assert not any("secret-plan" in json.dumps(e.detail) for e in events)
    assert not any(str(files) in json.dumps(e.detail) for e in events)
    of_shared = [e for e in events if e.image_id == shared.id]
    # From the moment of the share on only, and without the owner's details.
    assert of_shared and all(e.seq > before_share for e in of_shared)
    assert {e.type for e in of_shared} >= {"image.shared", "image.renamed"}
    assert all(e.detail == {} for e in of_shared)
    assert bob.events(image_id=private.id) == []
    # The callbacks see the same.
    import time
    deadline = time.time() + 5
    while time.time() < deadline and not any(e.type == "image.renamed" for e in seen):
        time.sleep(0.05)
    assert all(e.image_id != private.id for e in seen), seen
    assert any(e.type == "image.renamed" and e.image_id == shared.id for e in seen)
    # The owner still sees everything of its own, details included.
    mine = [e for e in cloud.events() if e.image_id == private.id]
    assert any(e.type == "image.created" for e in mine)
    # After unsharing, bob sees nothing of it any more.
    shared.unshare("bob")
    assert all(e.image_id != shared.id for e in bob.events())


def test_cli_events_as_another_account_hide_private_images(
        cloud: ir.Cloud, home: Path, files: Path) -> None:
    from imagerelay import cli
    cloud.add_account("bob")
    private = cloud.import_image(make_odd(files / "private.raw", chunks=2), region="bj",
                                 name="secret-plan")
    import contextlib
    import io
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["--home", str(home), "--account", "bob", "--json", "events"]) == 0
    assert private.id not in out.getvalue()
    assert "secret-plan" not in out.getvalue()


# -- scrub --------------------------------------------------------------------------------
def test_scrub_quarantines_marks_and_repairs_from_another_region(
        cloud: ir.Cloud, home: Path, golden: tuple[ir.Image, Path]) -> None:
    image, src = golden
    image.replicate(["gz"]).wait()
    victim = chunk_hashes(src)[5]
    assert victim
    damage_block(home, "bj", victim)

    reports = cloud.scrub("bj")
    assert [r.region for r in reports] == ["bj"]
    report = reports[0]
    assert report.quarantined == [victim]
    assert report.chunks_repaired == 1
    assert report.images_repaired == [image.id]
    assert report.images_damaged == []
    assert report.healthy
    image.refresh()
    assert image.status == "Available"
    assert image.verify() == sha256_file(src)
    types = [e.type for e in cloud.events(image_id=image.id)]
    assert types.index("image.damaged") < types.index("image.repaired")


def test_scrub_without_a_healthy_copy_leaves_the_image_not_available(
        cloud: ir.Cloud, home: Path, golden: tuple[ir.Image, Path]) -> None:
    image, src = golden
    victim = chunk_hashes(src)[0]
    assert victim
    damage_block(home, "bj", victim)
    (report,) = cloud.scrub("bj")
    assert report.images_damaged == [image.id]
    assert not report.healthy
    image.refresh()
    assert image.status == "NotAvailable"
    # A damaged image can be deleted; its bytes go with the sweep.
    image.delete()


def test_scrub_cli_reports_and_fails_while_damage_remains(
        cloud: ir.Cloud, home: Path, golden: tuple[ir.Image, Path],
        capsys: pytest.CaptureFixture[str]) -> None:
    from imagerelay import cli
    image, src = golden
    assert cli.main(["--home", str(home), "scrub"]) == 0
    assert "bj: " in capsys.readouterr().out
    victim = chunk_hashes(src)[0]
    assert victim
    damage_block(home, "bj", victim)
    assert cli.main(["--home", str(home), "scrub", "--region", "bj"]) == 1
    captured = capsys.readouterr()
    assert "1 quarantined" in captured.out
    assert f"error: Transfer.IntegrityError: 1 image(s) remain damaged ({image.id})" in captured.err
    shown = cloud.image(image.id)
    assert shown.status == "NotAvailable"


def test_scrub_of_an_unknown_region(cloud: ir.Cloud) -> None:
    with pytest.raises(ir.NotFoundError) as e:
        cloud.scrub("nowhere")
    assert_error(e, ir.NotFoundError, "NoSuchRegion", 404)


# -- 9. a delete killed in its sweep ------------------------------------------------------
def test_a_sweep_killed_half_way_is_finished_by_the_next_open(home: Path, files: Path) -> None:
    import socket
    import sqlite3
    import subprocess
    with ir.open(home, limits=ir.Limits(chunk_size=CHUNK)) as cloud:
        keep = cloud.import_image(make_odd(files / "keep.raw", chunks=3), region="bj", name="k")
        doomed = cloud.import_image(make_odd(files / "doomed.raw", chunks=5), region="bj",
                                    name="d")
    # The state a delete leaves when it is killed after its commit, in its sweep: the image
    # is Deleted, the region needs a sweep, and the sweep lease is held by a dead process.
    dead = subprocess.Popen(["true"])
    dead.wait()
    db = sqlite3.connect(home / "catalog.db")
    with db:
        db.execute("UPDATE images SET status = 'Deleted' WHERE id = ?", (doomed.id,))
        db.execute("INSERT INTO sweep (region, needed, holder, expires_us) VALUES "
                   "('bj', 1, ?, 9000000000000000) ON CONFLICT (region) DO UPDATE SET "
                   "needed = 1, holder = excluded.holder, expires_us = excluded.expires_us",
                   (f"{socket.gethostname()}:{dead.pid}:dead:sweep",))
    db.close()
    wanted = {h for h in chunk_hashes(files / "keep.raw") if h}
    with ir.open(home, limits=ir.Limits(chunk_size=CHUNK)) as cloud:
        cloud.wait_idle()
        assert chunk_names(home, "bj") == wanted
        assert len(chunk_files(home, "bj")) == 1  # the deleted image's blocks are gone
        assert cloud.image(keep.id).verify() == sha256_file(files / "keep.raw")


# -- 11. a copy whose worker was killed ---------------------------------------------------
def test_an_import_whose_process_died_is_failed_by_an_engine_already_open(
        home: Path, files: Path) -> None:
    # Found by an adversarial pass: only a new open failed a killed import; an engine open
    # all along (a notebook, `imagerelay worker`) left it Creating, its region unswept.
    src = make_odd(files / "big.raw", chunks=8)
    with ir.open(home) as cloud:  # workers on, open before and after the death
        child = subprocess.run(
            [PYTHON, "-c", f"import imagerelay as ir\nc = ir.open({str(home)!r})\n"
                           f"c.import_image({str(src)!r}, region='bj', name='big')"],
            env={**os.environ, "IMAGERELAY_FAIL_AT": "pack.synced@1"}, capture_output=True,
            text=True, timeout=120)
        assert child.returncode != 0, child.stdout
        [image] = [i for i in cloud.images() if i.name == "big"]

        def failed() -> bool:
            return image.refresh().status == "CreateFailed"
        wait_until(failed, timeout=60, why=lambda: f"still {image.status}")
        assert "interrupted" in (image.error or "")
        again = cloud.import_image(src, region="bj", name="big-again")
        assert again.verify() == sha256_file(src)


def test_a_sweeper_killed_mid_sweep_holds_up_no_writer(home: Path, files: Path) -> None:
    # Found by an adversarial pass: an engine without workers (they would release it) waited
    # out a dead sweeper's ten-minute lease before an import, even with wait=False.
    a_src = make_odd(files / "a.raw", chunks=2)
    b_src = make_odd(files / "b.raw", chunks=3)
    dead = subprocess.Popen(["true"])
    dead.wait()
    script = f"""
import socket, sqlite3, time
import imagerelay as ir
with ir.open({str(home)!r}, start_workers=False) as cloud:
    cloud.import_image({str(a_src)!r}, region="bj", name="a")
    db = sqlite3.connect({str(home / "catalog.db")!r})
    holder = f"{{socket.gethostname()}}:{dead.pid}:deadbeef:sweep"
    expires = int(time.time() * 1e6) + 600_000_000
    db.execute("INSERT INTO sweep (region, needed, holder, expires_us) VALUES ('bj', 1, ?, ?) "
               "ON CONFLICT (region) DO UPDATE SET holder = excluded.holder, "
               "expires_us = excluded.expires_us", (holder, expires))
    db.commit()
    image = cloud.import_image({str(b_src)!r}, region="bj", name="b", wait=False)
    print(image.wait(timeout=60).status)
"""
    proc = subprocess.run([PYTHON, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["Available"]


def test_a_copy_whose_worker_was_killed_goes_on_at_the_next_command(
        home: Path, files: Path) -> None:
    import signal
    import subprocess
    import time

    from conftest import CHILD_REPLICATE, PYTHON, read_result
    from imagerelay import cli
    src = make_odd(files / "big.raw", chunks=40)
    with ir.open(home, limits=ir.Limits(chunk_size=CHUNK)) as cloud:
        image = cloud.import_image(src, region="bj", name="big")
    child = subprocess.Popen([PYTHON, "-c", CHILD_REPLICATE, str(home), image.id,
                              str(512 * 1024), "gz"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        started = read_result(child)
        time.sleep(0.5)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()  # type: ignore[union-attr]
        child.stderr.close()  # type: ignore[union-attr]
    # Any command (here a listing, which runs no copy itself) hands the orphaned copy to a
    # background worker instead of showing it Running forever.
    assert cli.main(["--home", str(home), "--json", "jobs", "list"]) == 0
    deadline = time.monotonic() + 60
    with ir.open(home, start_workers=False) as cloud:
        while cloud.job(started["job"]).state == "Running":
            assert time.monotonic() < deadline, "nobody took the orphaned copy over"
            time.sleep(0.1)
        job = cloud.job(started["job"])
        assert job.state == "Completed", job.to_dict()
        assert job.copies["gz"].verify() == sha256_file(src)


def test_one_unreadable_catalog_row_does_not_make_the_home_unusable(
        home: Path, files: Path, caplog: pytest.LogCaptureFixture) -> None:
    import sqlite3
    with ir.open(home, limits=ir.Limits(chunk_size=CHUNK)) as cloud:
        good = cloud.import_image(make_odd(files / "a.raw", chunks=2), region="bj", name="a")
        odd = cloud.import_image(make_odd(files / "b.raw", chunks=2), region="bj", name="b")
    db = sqlite3.connect(home / "catalog.db")
    with db:
        db.execute("UPDATE images SET type = 'Hologram' WHERE id = ?", (odd.id,))
    db.close()
    with ir.open(home, limits=ir.Limits(chunk_size=CHUNK)) as cloud:
        assert [i.id for i in cloud.images()] == [good.id]
        assert cloud.image(good.id).verify() == sha256_file(files / "a.raw")
        cloud.import_image(files / "a.raw", region="gz", name="again")
    # Reported once, through logging (logger "imagerelay").
    err = "\n".join(r.getMessage() for r in caplog.records if r.name == "imagerelay")
    assert odd.id in err and "Hologram" in err


def test_the_cores_diagnostics_reach_python_logging(home: Path, files: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    # A file in the pack area that is no pack (a write cut short by hand): set aside when the
    # region's store is opened, and said so through the logger "imagerelay", not on stderr.
    with ir.open(home, limits=ir.Limits(chunk_size=CHUNK)) as cloud:
        cloud.import_image(make_odd(files / "a.raw"), region="bj", name="a")
    torn = home / "regions" / "bj" / "packs" / "00" / ("0" * 32)
    torn.parent.mkdir(parents=True, exist_ok=True)
    torn.write_bytes(b"not a pack")
    with caplog.at_level("WARNING", logger="imagerelay"):
        with ir.open(home, limits=ir.Limits(chunk_size=CHUNK)) as cloud:
            cloud.import_image(make_odd(files / "b.raw", extra=7), region="bj", name="b")
    records = [r for r in caplog.records if r.name == "imagerelay"]
    assert any("set aside" in r.getMessage() and r.levelname == "WARNING" for r in records), \
        [r.getMessage() for r in caplog.records]
    assert not torn.exists()
