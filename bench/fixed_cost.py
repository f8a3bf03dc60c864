#!/usr/bin/env python3
"""The fixed cost of a copy: replicating an image whose blocks the destination holds already.

    python bench/fixed_cost.py                     # 64 KiB and 512 MiB images, 5 copies each
    python bench/fixed_cost.py --sizes-mib 2048 --copies 10

For each size: a random image is imported into region bj and replicated to gz; then, `copies`
times, the same bytes are imported under a new name and replicated to gz, where every block
is (nothing moves: the plan, the confirmation and the commit are all the copy does). Prints
the wall and CPU time (user + system of the process, every thread) of each of those copies.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import imagerelay as ir


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes-mib", type=float, nargs="+", default=[1 / 16, 512])
    p.add_argument("--copies", type=int, default=5)
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ir-fixed-cost-", dir=args.workdir))
    try:
        for size_mib in args.sizes_mib:
            size = int(size_mib * 2**20)
            src = work / f"src-{size}"
            src.write_bytes(os.urandom(size))
            with ir.open(work / f"home-{size}") as cloud:
                cloud.import_image(src, region="bj", name="first").replicate("gz").wait()
                walls, cpus = [], []
                for i in range(args.copies):
                    image = cloud.import_image(src, region="bj", name=f"again-{i}")
                    w, c = time.perf_counter(), cpu()
                    job = image.replicate("gz").wait()
                    walls.append(time.perf_counter() - w)
                    cpus.append(cpu() - c)
                    assert job.tasks["gz"].bytes_transferred == 0, "a block moved"
            print(f"{size / 2**20:g} MiB ({size // 65536 or 1} blocks): wall "
                  f"{' '.join(f'{x:.3f}' for x in walls)} s; CPU "
                  f"{' '.join(f'{x:.3f}' for x in cpus)} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
