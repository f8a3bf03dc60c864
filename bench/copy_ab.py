#!/usr/bin/env python3
"""A/B of two builds of imagerelay on copies: the full copy and the update copy of
bench/update_bench.py's ext4 workload, run alternately by each build in one session.

    python bench/copy_ab.py --snapshot /tmp/ir-B          # freeze the current build as a copy
    python bench/copy_ab.py A=/tmp/ir-A B=/tmp/ir-B --pairs 4

A build is a directory holding the `imagerelay` package with its built `_core` (what
--snapshot writes). Each run is a fresh child (`python -S`, PYTHONPATH = the build + the
venv's site-packages) that imports v1 and v2 of the workload into region bj (untimed), then,
for each round, replicates v1 to a fresh region (the full copy) and v2 to it (the update).
It reports wall time and the CPU time (user + system of the whole process, every thread)
of each copy. Runs go A B B A A B ...: on a shared machine the load drifts, and this order
spreads it over both builds; CPU time is the steadier figure where others load the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import fs_workload as fw  # noqa: E402

MiB = 1024 * 1024

CHILD = r"""
import json, resource, sys, time
import imagerelay as ir
home, v1_path, v2_path, work, rounds = sys.argv[1:6]

def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

def timed(fn):
    w, c = time.perf_counter(), cpu()
    value = fn()
    return value, time.perf_counter() - w, cpu() - c

out = {"full": [], "update": []}
with ir.open(home) as cloud:
    v1 = cloud.import_image(v1_path, region="bj", name="v1")
    v2 = cloud.import_image(v2_path, region="bj", name="v2")
    for n in range(int(rounds)):
        region = f"gz{n + 1}"
        cloud.add_region(region, f"{work}/{region}")
        job1, w1, c1 = timed(lambda: v1.replicate([region]).wait())
        job2, w2, c2 = timed(lambda: v2.replicate([region]).wait())
        for key, job, w, c in (("full", job1, w1, c1), ("update", job2, w2, c2)):
            t = job.tasks[region]
            out[key].append({"wall": w, "cpu": c, "sent": t.bytes_sent,
                             "moved": t.bytes_transferred})
print("RESULT " + json.dumps(out))
"""


def snapshot(dest: Path) -> None:
    """Copies the current build (the editable install's package and _core) to `dest`."""
    probe = ("import imagerelay, imagerelay._core as c, os; "
             "print(os.path.dirname(imagerelay.__file__)); print(c.__file__)")
    r = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True,
                       check=True)
    pkg_dir, core = r.stdout.strip().splitlines()[-2:]
    target = dest / "imagerelay"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(pkg_dir, target, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(core, target / Path(core).name)
    print(f"snapshot of {core} in {target}")


def run_child(build: Path, v1: Path, v2: Path, work: Path, rounds: int) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(build), sysconfig.get_paths()["purelib"]])
    env.pop("PYTHONHOME", None)
    home = work / "home"
    shutil.rmtree(home, ignore_errors=True)
    for old in work.glob("gz*"):
        shutil.rmtree(old)
    r = subprocess.run([sys.executable, "-S", "-c", CHILD, str(home), str(v1), str(v2),
                        str(work), str(rounds)], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"the run of {build} failed:\n{r.stderr[-3000:]}")
    shutil.rmtree(home, ignore_errors=True)
    line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("builds", nargs="*", metavar="NAME=DIR", help="two builds to compare")
    p.add_argument("--snapshot", type=Path, help="copy the current build to this directory")
    p.add_argument("--pairs", type=int, default=3, help="runs of each build (alternating)")
    p.add_argument("--rounds", type=int, default=3, help="full + update copies per run")
    fw.add_workload_arguments(p)
    args = p.parse_args()
    if args.snapshot:
        snapshot(args.snapshot)
        return 0
    if len(args.builds) != 2 or not all("=" in b for b in args.builds):
        p.error("give two builds as NAME=DIR (or --snapshot DIR)")
    builds = [(n, Path(d).resolve()) for n, d in (b.split("=", 1) for b in args.builds)]
    work = Path(tempfile.mkdtemp(prefix="ir-copy-ab-", dir=args.workdir))
    try:
        v1, v2 = fw.build_chain(args, work, 2)
        results: dict[str, dict[str, list[dict]]] = {n: {"full": [], "update": []}
                                                     for n, _ in builds}
        order = []
        for i in range(args.pairs):
            order += builds if i % 2 == 0 else builds[::-1]
        for name, build in order:
            fw.log(f"run of {name} ({build})")
            r = run_child(build, v1, v2, work, args.rounds)
            for key in ("full", "update"):
                results[name][key] += r[key]
        load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"\nLoad average at the end: {load}; {args.pairs} runs per build of "
              f"{args.rounds} rounds, order {' '.join(n for n, _ in order)}\n")
        print("| build | copy | wall best (s) | wall median (s) | CPU median (s) | "
              "sent (MiB) | image bytes moved (MiB) |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for key in ("full", "update"):
            for name, _ in builds:
                rs = results[name][key]
                print(f"| {name} | {key} | {min(r['wall'] for r in rs):.3f} | "
                      f"{statistics.median(r['wall'] for r in rs):.3f} | "
                      f"{statistics.median(r['cpu'] for r in rs):.3f} | "
                      f"{rs[0]['sent'] / MiB:.2f} | {rs[0]['moved'] / MiB:.2f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
