"""Several hosts on one PostgreSQL catalog (docs/scale-out.md), each a real process: the
copies of one job spread over the workers; a worker states the regions it reaches; a worker
partitioned past its lease loses its copy to another and its late writes are refused; an
import and a delete + sweep from two processes never remove each other's blocks; `serve` on
one host shows what another made.

"Hosts" are homes of this machine, each with its own processes; the regions are the
directories of the first home, which every "host" reaches (as a shared mount would be).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pg_server
import pytest
from conftest import CHUNK, PYTHON, make_dense, new_pg_catalog, parse_result, sha256_file, \
    wait_until
from invariants import check_invariants
from serve_support import InProcessServer, bcc

import imagerelay as ir
from imagerelay._worker import worker_running
from imagerelay.serve import ServeOptions, Service

MiB = 2**20
IMAGERELAY = str(Path(PYTHON).parent / "imagerelay")
LIMITS = ir.Limits(chunk_size=CHUNK)


@pytest.fixture
def catalog(pg_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A new database's URI, also in $IMAGERELAY_CATALOG for every process of the test."""
    uri = new_pg_catalog(pg_server)
    monkeypatch.setenv("IMAGERELAY_CATALOG", uri)
    return uri


def start_worker(home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([IMAGERELAY, "--home", str(home), "worker", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM (a clean stop); it must exit 0."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    finish(proc)


def finish(proc: subprocess.Popen) -> None:
    """Waits for a `worker --until-idle`; it must exit 0."""
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err


def started_by(cloud: ir.Cloud, job_id: str) -> dict[str, str]:
    """Region -> the `<host>:<pid>` that last started its copy (task.started events)."""
    return {e.region: e.detail["worker"] for e in cloud.events()
            if e.type == "task.started" and e.job_id == job_id}


def background_workers(home: Path) -> list[int]:
    """The `imagerelay --home HOME worker` processes running (from /proc)."""
    wanted = f"--home\0{home}\0worker\0".encode()
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and wanted in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue  # it ended meanwhile
    return found


def add_regions(cloud: ir.Cloud, *ids: str) -> None:
    for region in ids:
        cloud.add_region(region)


def test_the_copies_of_one_job_spread_over_hosts(catalog: str, tmp_path: Path) -> None:
    """Two workers of one copy slot each: a job to four regions is copied by both, each
    copy once, and every copy verifies."""
    src = make_dense(tmp_path / "a.raw", 16 * MiB)
    queue = tmp_path / "queue"
    with ir.open(queue, start_workers=False, limits=LIMITS) as cloud:
        add_regions(cloud, "r4", "r5")
        image = cloud.import_image(src, region="bj", name="spread")
    hosts = [tmp_path / "host-a", tmp_path / "host-b"]
    workers = [start_worker(h, "--concurrency", "1") for h in hosts]
    try:
        for home in hosts:
            wait_until(lambda h=home: worker_running(h), timeout=60)
        with ir.open(queue, start_workers=False) as cloud:
            job = cloud.replicate(image.id, ["gz", "su", "r4", "r5"]).wait(timeout=120)
            assert job.state == "Completed", [t.error for t in job.tasks.values()]
            by = started_by(cloud, job.id)
            assert sorted(by) == ["gz", "r4", "r5", "su"]
            # Both hosts copied, and nobody else did.
            assert set(by.values()) == {f"{socket.gethostname()}:{w.pid}" for w in workers}
            assert all(t.attempts == 1 for t in job.tasks.values())
            for task in job.tasks.values():
                assert cloud.image(task.dest_image_id).verify() == sha256_file(src)
    finally:
        for w in workers:
            stop(w)


def test_one_worker_with_free_slots_still_reads_the_source_once(catalog: str,
                                                                tmp_path: Path) -> None:
    """A worker with slots for all of a job's copies takes them together: each block of
    the source is read once for all destinations (fan-out), on PostgreSQL as on SQLite."""
    src = make_dense(tmp_path / "a.raw", 4 * MiB)
    home = tmp_path / "home"
    with ir.open(home, start_workers=False, limits=LIMITS) as cloud:
        image = cloud.import_image(src, region="bj", name="fan")
        job_id = cloud.replicate(image.id, ["gz", "su"]).id
    worker = start_worker(home, "--until-idle", "--concurrency", "2")
    finish(worker)
    with ir.open(home, start_workers=False) as cloud:
        job = cloud.job(job_id)
        assert job.state == "Completed"
        started = [e for e in cloud.events() if e.type == "task.started"]
        # One claim: both tasks started by one worker, one right after the other.
        assert {e.detail["worker"] for e in started} == {f"{socket.gethostname()}:{worker.pid}"}
        seqs = sorted(e.seq for e in started)
        assert seqs == [seqs[0], seqs[0] + 1]


def test_workers_claim_only_the_regions_they_reach(catalog: str, tmp_path: Path) -> None:
    """`worker --regions`: each of two hosts of disjoint reach copies only between its own
    regions; a copy neither reaches stays Pending (not failed) until a worker that reaches
    both of its ends runs."""
    queue = tmp_path / "queue"
    with ir.open(queue, start_workers=False, limits=LIMITS) as cloud:
        add_regions(cloud, "r4")
        images = {n: cloud.import_image(make_dense(tmp_path / f"{n}.raw", 1 * MiB),
                                        region=n[:2], name=f"from-{n}")
                  for n in ("bj", "su", "bj2")}
        west = cloud.replicate(images["bj"].id, ["gz"]).id     # bj -> gz: host A only
        east = cloud.replicate(images["su"].id, ["r4"]).id     # su -> r4: host B only
        across = cloud.replicate(images["bj2"].id, ["r4"]).id  # bj -> r4: neither
    a = start_worker(tmp_path / "host-a", "--until-idle", "--regions", "bj,gz")
    b = start_worker(tmp_path / "host-b", "--until-idle", "--regions", "su, r4")
    # Each exits once nothing it reaches is left, though the copy across still waits.
    finish(a)
    finish(b)
    with ir.open(queue, start_workers=False) as cloud:
        assert started_by(cloud, west) == {"gz": f"{socket.gethostname()}:{a.pid}"}
        assert started_by(cloud, east) == {"r4": f"{socket.gethostname()}:{b.pid}"}
        assert cloud.job(west).state == cloud.job(east).state == "Completed"
        waiting = cloud.job(across)
        assert waiting.state == "Running"  # a job with a copy still to run
        assert waiting.tasks["r4"].state == "Pending" and waiting.tasks["r4"].attempts == 0
        assert waiting.tasks["r4"].error is None
        # What `jobs show` marks "waiting for a worker" (a CLI command would start one).
        assert cloud.copies_waiting_for_a_worker() == [waiting.tasks["r4"].dest_image_id]
    # A host states its reach once, in its home's config.json: the background worker a
    # command starts there honours it, and leaves the copy it cannot reach queued.
    (queue / "config.json").write_text(json.dumps({"worker_regions": ["bj", "gz"]}))
    shown = subprocess.run([IMAGERELAY, "--home", str(queue), "jobs", "show", across],
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "a background `imagerelay worker` was started" in shown.stdout, shown.stdout
    started = background_workers(queue)  # started before the command returned
    assert started, "no background worker process"
    wait_until(lambda: not background_workers(queue), timeout=60)  # it ends, idle
    with ir.open(queue, start_workers=False) as cloud:
        assert started_by(cloud, across) == {}
        assert cloud.job(across).tasks["r4"].state == "Pending"
    # A host that reaches both ends copies it.
    c = start_worker(tmp_path / "host-c", "--until-idle", "--regions", "bj,r4")
    finish(c)
    with ir.open(queue, start_workers=False) as cloud:
        assert started_by(cloud, across) == {"r4": f"{socket.gethostname()}:{c.pid}"}
        job = cloud.job(across)
        assert job.state == "Completed"
        copy = cloud.image(job.tasks["r4"].dest_image_id)
        assert copy.verify() == sha256_file(tmp_path / "bj2.raw")


def test_unknown_worker_regions_are_refused(tmp_path: Path) -> None:
    """A region the catalog does not have (a typo) is a ValidationError naming it, from
    Python and from the CLI; no worker starts."""
    home = tmp_path / "home"
    with pytest.raises(ir.ValidationError) as excinfo:
        ir.open(home, worker_regions=["bj", "nowhere"])
    assert excinfo.value.code == "InvalidParameter"
    assert "'nowhere'" in excinfo.value.message and "bj, gz, su" in excinfo.value.message
    with pytest.raises(ir.ValidationError, match="at least one region"):
        ir.open(home, worker_regions=[])
    with pytest.raises(ir.ValidationError, match="worker_regions"):
        ir.open(home, worker_regions=[5])  # type: ignore[list-item]
    proc = subprocess.run([IMAGERELAY, "--home", str(home), "worker", "--until-idle",
                           "--regions", "gz,xx"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: InvalidParameter: ")
    assert "'xx'" in proc.stderr
    with ir.open(home, worker_regions="gz") as cloud:  # one region, as a str
        assert cloud.wait_idle(timeout=10)
    # The home's config.json: the same checks.
    for reach, why in ((["gz", "nowhere"], "'nowhere'"), ("gz", "non-empty list"),
                       ([], "non-empty list")):
        (home / "config.json").write_text(json.dumps({"worker_regions": reach}))
        with pytest.raises(ir.ValidationError, match=why):
            ir.open(home)


CHILD_WORKER = """
import sys, json, imagerelay as ir
home, bandwidth = sys.argv[1], int(sys.argv[2])
with ir.open(home, workers=1, limits=ir.Limits(chunk_size=65536, bandwidth=bandwidth)) as c:
    print("RESULT", json.dumps({"idle": c.wait_idle(timeout=120)}), flush=True)
"""


def writer_lock_held(catalog: str) -> bool:
    """Whether a session of this catalog's database holds the catalog's writer lock (an
    advisory lock): a worker stopped inside a write would block everybody's writes."""
    server, database = catalog.rsplit("/", 1)
    return pg_server.psql(server, "SELECT count(*) FROM pg_locks l JOIN pg_database d ON "
                                  "d.oid = l.database WHERE l.locktype = 'advisory' AND "
                                  f"l.granted AND d.datname = '{database}'").strip() != "0"


def test_a_partitioned_worker_loses_its_copy_and_its_late_writes_are_refused(
        catalog: str, tmp_path: Path) -> None:
    """A worker stopped (SIGSTOP) mid-copy past its lease: another takes the copy over and
    finishes it; the stopped one, continued, finds its lease gone: its progress and commit
    are refused by compare-and-set, nothing of the finished copy is overwritten, the copy
    completes once."""
    env = {"IMAGERELAY_LEASE_MS": "1500"}
    src = make_dense(tmp_path / "a.raw", 8 * MiB)
    queue = tmp_path / "queue"
    with ir.open(queue, start_workers=False, limits=LIMITS) as cloud:
        image = cloud.import_image(src, region="bj", name="part")
        job_id = cloud.replicate(image.id, ["gz"]).id
    # Host A copies slowly (1 MiB/s): it is stopped in the middle.
    a = subprocess.Popen([sys.executable, "-c", CHILD_WORKER, str(tmp_path / "host-a"),
                          str(MiB)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, **env})
    b = None
    try:
        with ir.open(tmp_path / "watcher", start_workers=False) as watcher:
            def task() -> Any:
                return watcher.job(job_id).tasks["gz"]

            wait_until(lambda: task().bytes_done > 0, timeout=60)
            assert task().worker == f"{socket.gethostname()}:{a.pid}"
            os.kill(a.pid, signal.SIGSTOP)
            # Stopped outside a write: inside one it would hold the catalog's writer lock
            # (a real partition would, until PostgreSQL's idle-in-transaction timeout).
            while writer_lock_held(catalog):
                os.kill(a.pid, signal.SIGCONT)
                time.sleep(0.01)
                os.kill(a.pid, signal.SIGSTOP)
            stalled_at = task().bytes_done
            # Host B takes the copy over once A's lease expired, and finishes it.
            b = subprocess.Popen([sys.executable, "-c", CHILD_WORKER, str(tmp_path / "host-b"),
                                  str(0)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, env={**os.environ, **env})
            out, err = b.communicate(timeout=120)
            assert b.returncode == 0, err
            assert parse_result(out) == {"idle": True}
            done = task()
            assert done.state == "Completed" and done.attempts == 2
            assert done.bytes_done == image.size and stalled_at < image.size
            finished = (done.finished_at, done.bytes_transferred)
            seq_before = max(e.seq for e in watcher.events())
            # A comes back: its lease is gone; it stops its copy and writes nothing.
            os.kill(a.pid, signal.SIGCONT)
            out, err = a.communicate(timeout=120)
            assert a.returncode == 0, err
            assert parse_result(out) == {"idle": True}
            after = task()
            assert after.state == "Completed" and after.attempts == 2
            assert (after.finished_at, after.bytes_transferred) == finished
            assert max(e.seq for e in watcher.events()) == seq_before
            events = [e for e in watcher.events() if e.job_id == job_id]
            counts = Counter(e.type for e in events)
            assert counts["task.completed"] == 1 and counts["task.started"] == 2
            assert counts["image.available"] == 1 and counts["job.finished"] == 1
            assert [e.detail["worker"] for e in events if e.type == "task.started"] == \
                [f"{socket.gethostname()}:{p.pid}" for p in (a, b)]
            copy = watcher.image(done.dest_image_id)
            assert copy.status == "Available" and copy.verify() == sha256_file(src)
    finally:
        for proc in (a, b):
            if proc is not None and proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
                proc.wait()
    check_invariants(queue, {sha256_file(src)}, "after the partition")


IMPORTER = """
import sys, json, imagerelay as ir
home, *sources = sys.argv[1:]
with ir.open(home, limits=ir.Limits(chunk_size=65536)) as c:
    ids = [c.import_image(s, region="bj", name=f"imp{i}").id for i, s in enumerate(sources)]
    print("RESULT", json.dumps({"ids": ids}), flush=True)
"""

DELETER = """
import sys, json, time, imagerelay as ir
home, count = sys.argv[1], int(sys.argv[2])
deleted = set()
with ir.open(home, limits=ir.Limits(chunk_size=65536)) as c:
    print("READY", flush=True)
    deadline = time.monotonic() + 120
    # Deletes each imported image but the newest as soon as it is Available; its idle
    # workers sweep the region in between.
    while len(deleted) < count - 1 and time.monotonic() < deadline:
        ready = sorted((i for i in c.images(region="bj") if i.name.startswith("imp")
                        and i.status == "Available"), key=lambda i: i.created_at)
        for image in ready[:-1]:
            if image.id not in deleted:
                image.delete()
                deleted.add(image.id)
        time.sleep(0.02)
    c.wait_idle(timeout=60)
    print("RESULT", json.dumps({"deleted": sorted(deleted)}), flush=True)
"""


def test_imports_and_sweeps_from_two_hosts(catalog: str, tmp_path: Path) -> None:
    """One process imports images that share most of their blocks; another deletes each
    but the newest as it becomes Available and sweeps the region: neither removes a block
    the other needs (the sweep lease), and every survivor verifies."""
    base = make_dense(tmp_path / "base.raw", 4 * MiB).read_bytes()
    sources = []
    for i in range(12):
        path = tmp_path / f"s{i}.raw"
        path.write_bytes(base + bytes([i + 1]) * (4 * CHUNK))  # shared base, own tail
        sources.append(path)
    queue = tmp_path / "queue"
    with ir.open(queue, start_workers=False):
        pass  # creates the regions, in this home
    deleter = subprocess.Popen([sys.executable, "-c", DELETER, str(tmp_path / "host-b"),
                                str(len(sources))], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert deleter.stdout is not None
    assert deleter.stdout.readline().strip() == "READY"  # deleting as the imports come
    importer = subprocess.Popen([sys.executable, "-c", IMPORTER, str(tmp_path / "host-a"),
                                 *map(str, sources)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    out, err = importer.communicate(timeout=180)
    assert importer.returncode == 0, err
    ids = parse_result(out)["ids"]
    out, err = deleter.communicate(timeout=180)
    assert deleter.returncode == 0, err
    deleted = set(parse_result(out)["deleted"])
    assert deleted == set(ids[:-1])
    digests = {sha256_file(p) for p in sources}
    check_invariants(queue, digests, "after imports and sweeps from two hosts")
    with ir.open(queue, start_workers=False) as cloud:
        survivor = cloud.image(ids[-1])
        assert survivor.status == "Available" and survivor.verify() == sha256_file(sources[-1])
        names = {i.name for i in cloud.images(region="bj")}
        assert names == {f"imp{len(sources) - 1}"}


def test_serve_on_another_host_sees_the_same_images(catalog: str, tmp_path: Path) -> None:
    """`imagerelay serve` on one host answers BCC's official client with what a script on
    another host made in the shared catalog; each account still sees only its own."""
    src = make_dense(tmp_path / "a.raw", 4 * CHUNK)
    with ir.open(tmp_path / "host-a", limits=LIMITS) as admin:
        admin.add_account("team-a")
        admin.add_account("team-b")
    with ir.open(tmp_path / "host-a", account="team-a", limits=LIMITS) as script:
        image = script.import_image(src, region="bj", name="golden")
        job = script.replicate(image.id, ["gz"])
        job.wait(timeout=60)
        copy_id = job.tasks["gz"].dest_image_id
    with ir.open(tmp_path / "host-b", start_workers=False) as served:
        keys = {a: served.create_access_key(a) for a in ("team-a", "team-b")}
        server = InProcessServer(Service(served, ServeOptions()), ["gz"])
        try:
            own = bcc(server.endpoint("gz"), keys["team-a"]).list_images(image_type="Custom")
            assert [(i.id, i.name, i.status) for i in own.images] == \
                [(copy_id, "golden", "Available")]
            other = bcc(server.endpoint("gz"), keys["team-b"]).list_images(image_type="Custom")
            assert other.images == []
        finally:
            server.stop()
