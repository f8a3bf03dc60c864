#!/usr/bin/env python3
"""Bytes per second one worker host moves, on a PostgreSQL catalog (docs/scale-out.md).

    .venv/bin/python bench/host_bench.py                # writes bench/HOST_RESULTS.md
    .venv/bin/python bench/host_bench.py --mib 64 --out -   # a smoke run

One `imagerelay worker --catalog URI` process (default concurrency 4), in a home of its own
as a host would run it, copies one image of --mib MiB of random data (no block repeats, so
every byte moves) from one region to another: between two local directories, and between
two S3 buckets of moto's server on 127.0.0.1 (its credentials from the worker's environment,
as a host would have them). Timed from the job's queueing to its completion, as the queueing
host sees it; --runs runs each, best and median reported. PostgreSQL and moto are started
here (tests/python/pg_server.py, tests/python/s3_server.py), as the tests start them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests" / "python"))

import pg_server  # noqa: E402
from s3_server import S3Server, moto_server  # noqa: E402

import imagerelay as ir  # noqa: E402
from imagerelay._worker import worker_running  # noqa: E402

MiB = 2**20
IMAGERELAY = str(Path(sys.executable).parent / "imagerelay")


def one_copy(catalog: str, base: Path, src: Path, regions: tuple[str, str],
             env: dict[str, str]) -> float:
    """Seconds for one worker host to copy `src` from regions[0] to regions[1]."""
    queue = base / "queue"
    with ir.open(queue, catalog=catalog, start_workers=False) as cloud:
        image = cloud.import_image(src, region=regions[0], name="bench")
    host = base / "host"
    worker = subprocess.Popen([IMAGERELAY, "--home", str(host), "--catalog", catalog, "worker"],
                              env={**os.environ, **env}, stdout=subprocess.DEVNULL)
    try:
        while not worker_running(host):
            if worker.poll() is not None:
                raise RuntimeError("the worker did not start")
            time.sleep(0.05)
        with ir.open(queue, catalog=catalog, start_workers=False) as cloud:
            started = time.monotonic()
            job = cloud.replicate(image.id, [regions[1]]).wait(timeout=1800)
            elapsed = time.monotonic() - started
            if job.state != "Completed":
                raise RuntimeError(f"the copy did not complete: {job.tasks[regions[1]].error}")
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
    return elapsed


def add_s3(catalog: str, base: Path, s3: S3Server, n: int) -> tuple[str, str]:
    with ir.open(base / "queue", catalog=catalog, start_workers=False) as cloud:
        for side in ("a", "b"):
            bucket = f"bench{n}{side}"
            s3.create_bucket(bucket)
            cloud.add_region(f"s3{side}", f"s3://{bucket}/relay?endpoint={s3.endpoint}"
                                          "&region=us-east-1",
                             access_key_id=s3.access_key_id,
                             secret_access_key=s3.secret_access_key)
    return "s3a", "s3b"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=512, help="MiB in the image")
    parser.add_argument("--runs", type=int, default=3, help="runs of each copy")
    parser.add_argument("--out", default=str(HERE / "HOST_RESULTS.md"),
                        help="where the Markdown goes ('-': stdout)")
    args = parser.parse_args()
    rows = []
    with pg_server.TestServer() as server, moto_server() as s3, \
            tempfile.TemporaryDirectory(dir=REPO / "build") as tmp:
        src = Path(tmp) / "src.raw"
        with open(src, "wb") as f:
            for _ in range(args.mib):
                f.write(os.urandom(MiB))
        s3_env = {"AWS_ACCESS_KEY_ID": s3.access_key_id,
                  "AWS_SECRET_ACCESS_KEY": s3.secret_access_key}
        n = 0
        for kind in ("local -> local", "S3 -> S3"):
            times = []
            for _ in range(args.runs):
                n += 1
                base = Path(tmp) / f"run{n}"
                catalog = server.create_database(f"host{n}")
                if kind == "S3 -> S3":
                    regions = add_s3(catalog, base, s3, n)
                else:
                    regions = ("bj", "gz")
                times.append(one_copy(catalog, base, src, regions, s3_env))
                print(f"{kind}: {times[-1]:.2f} s", file=sys.stderr)
            rows.append((kind, min(times), statistics.median(times)))
    lines = [
        "# Bytes per second per worker host (bench/host_bench.py)", "",
        f"`bench/host_bench.py --mib {args.mib} --runs {args.runs}` on {dt.date.today()}, "
        f"{os.cpu_count()} cores ({platform.machine()}): one `imagerelay worker --catalog "
        "postgresql://...` process (concurrency 4) copies one image of random data (every "
        "byte moves) to another region; PostgreSQL and moto started by the bench on "
        "127.0.0.1. Timed from queueing the job to its completion.", "",
        "| copy | best s | median s | best MiB/s |", "|---|---|---|---|",
    ]
    for kind, best, median in rows:
        lines.append(f"| {kind} | {best:.2f} | {median:.2f} | {args.mib / best:.0f} |")
    text = "\n".join(lines) + "\n"
    if args.out == "-":
        print(text)
    else:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
