#!/usr/bin/env python3
"""Catalog throughput: SQLite vs PostgreSQL, with 1, 2, 4 and 8 worker processes.

    .venv/bin/python bench/catalog_bench.py                 # writes bench/CATALOG_RESULTS.md
    .venv/bin/python bench/catalog_bench.py --copies 20 --workers 1,2 --out -   # a smoke run

For each catalog and worker count: a fresh catalog gets --copies tiny images (one 64 KiB
block each) and one queued copy of each to another region; then that many worker
processes (each `ir.open(..., workers=1)` in a home of its own for PostgreSQL, as hosts
would; in the one home for SQLite) run them until none is left. A copy is a claim, a few
progress and lease writes and a commit, so copies/s measures the catalog's claims and
commits, not bytes. Then fail-over: a worker copying a bandwidth-capped image is killed
with SIGKILL while another worker, on another "host" (its own UTS namespace and host name,
when run as root), waits; reported is the time from the kill until the copy runs again,
and until it completes.

The PostgreSQL server is started here (tests/python/pg_server.py), as the tests start it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests" / "python"))

import pg_server  # noqa: E402

import imagerelay as ir  # noqa: E402

CHUNK = 64 * 1024
LEASE_S = 10  # EngineOptions.lease_ms
FAILURES: list[int] = []  # copies that did not complete, per throughput run

WORKER = """
import sys, imagerelay as ir
home, catalog = sys.argv[1], sys.argv[2]
limits = ir.Limits(chunk_size=65536, max_tasks_per_region=64)
with ir.open(home, catalog=catalog, workers=1, limits=limits) as cloud:
    print("READY", flush=True)
    sys.stdin.readline()  # go
    while not cloud.wait_idle(timeout=1.0):
        pass
"""

SLOW_WORKER = """
import sys, time, imagerelay as ir
home, catalog = sys.argv[1], sys.argv[2]
limits = ir.Limits(chunk_size=65536, bandwidth=1 << 20)
with ir.open(home, catalog=catalog, workers=1, limits=limits) as cloud:
    print("READY", flush=True)
    time.sleep(600)
"""


def spawn(code: str, home: Path, catalog: str, host: str | None) -> subprocess.Popen[str]:
    command = [sys.executable, "-c", code, str(home), catalog]
    if host and os.geteuid() == 0:
        # Another "host": its own host name, so its lease names another machine.
        command = ["unshare", "--uts", "sh", "-c", f'hostname {host} && exec "$@"', "sh",
                   *command]
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("READY"):
        raise RuntimeError(f"worker did not start: {line!r}")
    return proc


def queue_copies(home: Path, catalog: str, copies: int, files: Path) -> list[str]:
    """`copies` one-block images in bj, each with one queued copy to gz: the job ids."""
    jobs = []
    with ir.open(home, catalog=catalog, start_workers=False,
                 limits=ir.Limits(chunk_size=CHUNK)) as cloud:
        for i in range(copies):
            src = files / f"img{i}.raw"
            src.write_bytes(i.to_bytes(4, "big") * (CHUNK // 4))
            image = cloud.import_image(src, region="bj", name=f"img{i}")
            jobs.append(cloud.replicate(image.id, ["gz"]).id)
    return jobs


def throughput(catalog: str, workers: int, copies: int, base: Path) -> float:
    """Copies per second that `workers` worker processes complete."""
    home = base / "home"
    files = base / "files"
    files.mkdir(parents=True)
    jobs = queue_copies(home, catalog, copies, files)
    procs = [spawn(WORKER, home if not catalog else base / f"host{i}", catalog, None)
             for i in range(workers)]
    started = time.monotonic()
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    for proc in procs:
        proc.wait(timeout=600)
    elapsed = time.monotonic() - started
    with ir.open(home, catalog=catalog, start_workers=False) as cloud:
        failed = [f"{t.error_code}: {t.error}" for j in jobs
                  for t in cloud.job(j).tasks.values() if t.state != "Completed"]
    for reason in sorted(set(failed)):
        print(f"  not completed: {reason}", file=sys.stderr)
    FAILURES.append(len(failed))
    return copies / elapsed


def failover(catalog: str, base: Path) -> tuple[float, float]:
    """(seconds from SIGKILL to the copy running again, to it completing)."""
    home = base / "home"
    files = base / "files"
    files.mkdir(parents=True)
    src = files / "big.raw"
    src.write_bytes(os.urandom(4 << 20))
    with ir.open(home, catalog=catalog, start_workers=False,
                 limits=ir.Limits(chunk_size=CHUNK)) as cloud:
        image = cloud.import_image(src, region="bj", name="big")
    first = spawn(SLOW_WORKER, home if not catalog else base / "host-a", catalog, "bench-a")
    with ir.open(home, catalog=catalog, start_workers=False) as cloud:
        job = cloud.replicate(image.id, ["gz"])
        while cloud.job(job.id).tasks["gz"].bytes_done == 0:
            time.sleep(0.05)
        second = spawn(WORKER, home if not catalog else base / "host-b", catalog, "bench-b")
        assert second.stdin is not None
        second.stdin.write("go\n")
        second.stdin.flush()
        first.send_signal(signal.SIGKILL)
        first.wait()
        killed = time.monotonic()
        while cloud.job(job.id).tasks["gz"].attempts < 2:
            time.sleep(0.05)
        resumed = time.monotonic() - killed
        cloud.job(job.id).wait(timeout=300)
        done = time.monotonic() - killed
    second.wait(timeout=60)
    return resumed, done


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=100, help="queued copies per run")
    parser.add_argument("--workers", default="1,2,4,8", help="worker process counts")
    parser.add_argument("--out", default=str(HERE / "CATALOG_RESULTS.md"),
                        help="where the Markdown goes ('-': stdout)")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    rows: list[list[Any]] = []
    fail: dict[str, tuple[float, float]] = {}
    with pg_server.TestServer() as server, tempfile.TemporaryDirectory() as tmp:
        n = 0
        for kind in ("sqlite", "postgresql"):
            rates = []
            for workers in counts:
                n += 1
                catalog = server.create_database(f"bench{n}") if kind == "postgresql" else ""
                rates.append(throughput(catalog, workers, args.copies, Path(tmp) / f"t{n}"))
                print(f"{kind} {workers} workers: {rates[-1]:.1f} copies/s", file=sys.stderr)
            rows.append([kind, *rates])
            n += 1
            catalog = server.create_database(f"bench{n}") if kind == "postgresql" else ""
            fail[kind] = failover(catalog, Path(tmp) / f"f{n}")
            print(f"{kind} fail-over: {fail[kind]}", file=sys.stderr)
    lines = [
        "# Catalog throughput: SQLite vs PostgreSQL (bench/catalog_bench.py)", "",
        f"`bench/catalog_bench.py --copies {args.copies}` on {dt.date.today()}, "
        f"{os.cpu_count()} cores ({platform.machine()}), PostgreSQL started by the bench on "
        "127.0.0.1 (fsync off, as the tests run it). Each copy: one 64 KiB block, so a copy "
        "is a claim, its lease and progress writes and a commit: the figures are the "
        "catalog's, not the disks'.", "",
        "## Copies completed per second", "",
        "| catalog | " + " | ".join(f"{w} worker{'s' if w > 1 else ''}" for w in counts) + " |",
        "|---|" + "---|" * len(counts),
    ]
    for kind, *rates in rows:
        lines.append(f"| {kind} | " + " | ".join(f"{r:.1f}" for r in rates) + " |")
    if any(FAILURES):
        lines += ["", f"Copies that did not complete, run by run: {FAILURES} (see the "
                  "bench's stderr for why)."]
    lines += ["", "## Fail-over after SIGKILL of the worker holding a copy", "",
              f"Lease period {LEASE_S} s; the second worker runs on another host name (its "
              "own UTS namespace) when the bench runs as root, so it must wait for the "
              "lease to expire rather than see the process gone.", "",
              "| catalog | copy running again after | copy completed after |", "|---|---|---|"]
    for kind, (resumed, done) in fail.items():
        lines.append(f"| {kind} | {resumed:.1f} s | {done:.1f} s |")
    text = "\n".join(lines) + "\n"
    if args.out == "-":
        print(text)
    else:
        Path(args.out).write_text(text)
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
