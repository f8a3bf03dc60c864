"""``imagerelay demo``: the main job, replicate-then-share, on a fresh embedded home."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from . import cloud as cloud_module
from ._checks import check_int
from ._cli_output import table
from ._types import Limits
from .collections import human_size as size

MiB = 2**20
GiB = 2**30


def say(text: str = "") -> None:
    print(text, flush=True)


def make_disk_image(path: Path, virtual_bytes: int, data_bytes: int, seed: int = 7) -> None:
    """A sparse raw disk: a boot area, then data extents spread over the virtual size."""
    import random

    rng = random.Random(seed)
    extent = 16 * MiB
    extents = max(1, data_bytes // extent)
    stride = virtual_bytes // extents
    with open(path, "wb") as f:
        f.truncate(virtual_bytes)
        for i in range(extents):
            f.seek(i * stride)
            f.write(rng.randbytes(extent))


def change_one_percent(src: Path, dst: Path, virtual_bytes: int, seed: int = 11) -> None:
    """A new version of the image: ~1% of the data rewritten in place, as a guest would."""
    import random

    shutil.copyfile(src, dst)  # sparse-aware on Linux (copy_file_range)
    rng = random.Random(seed)
    with open(dst, "r+b") as f:
        for offset in range(0, virtual_bytes, virtual_bytes // 8):
            f.seek(offset + 4 * MiB)
            f.write(rng.randbytes(MiB // 2))


def run_demo(home: Path | None = None, keep: bool = False, data_mib: int = 256,
             virtual_gib: int = 3) -> int:
    virtual_gib = check_int("virtual_gib", virtual_gib, low=1, high=1024)
    data_mib = check_int("data_mib", data_mib, low=1, high=virtual_gib * 1024)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="imagerelay-demo-"))
    home = home or workdir / "home"
    progress = sys.stderr.isatty()
    virtual = virtual_gib * GiB
    try:
        say(f"imagerelay demo: a fresh home in {home}")
        golden = workdir / "golden-v1.raw"
        make_disk_image(golden, virtual, data_mib * MiB)
        say(f"built {golden.name}: {size(virtual)} virtual, {size(data_mib * MiB)} of data "
            "(sparse)")

        with cloud_module.open(home) as cloud:
            say("\n1. import into region bj")
            t = time.monotonic()
            v1 = cloud.import_image(golden, region="bj", name="golden", os_name="ubuntu",
                                    os_version="24.04")
            took = time.monotonic() - t
            digest = (f"digest {v1.digest[:23]}..." if v1.digest else
                      "the whole-image digest follows in the background (the file is mostly "
                      "holes)")
            say(f"   {v1.id} Available in {took:.1f} s, {digest}")

            say("\n2. replicate to gz and su (one job; each source chunk is read once)")
            job = v1.replicate(["gz", "su"])
            job.wait(progress=progress)
            for region, task in job.tasks.items():
                say(f"   {region}: {task.dest_image_id} {task.state}, "
                    f"{size(task.bytes_transferred)} moved")

            say("\n3. a new version with ~1% changed: only the changes move")
            golden2 = workdir / "golden-v2.raw"
            change_one_percent(golden, golden2, virtual)
            v2 = cloud.import_image(golden2, region="bj", name="golden-v2", os_name="ubuntu",
                                    os_version="24.04")
            job2 = v2.replicate(["gz", "su"])
            job2.wait(progress=progress)
            for region, task in job2.tasks.items():
                say(f"   {region}: {task.dest_image_id} {size(task.bytes_transferred)} "
                    f"moved of {size(task.bytes_total)} "
                    f"({task.chunks_skipped} of {task.chunks_total} chunks skipped)")

            say("\n4. share the copies with account team-b")
            cloud.add_account("team-b", name="Team B")
            for copy in job2.copies.values():
                copy.share("team-b")
            team_b = cloud.as_account("team-b")
            seen = team_b.images(image_type="Sharing")
            say(table([[i.id, i.name, i.region, i.type, i.status] for i in seen],
                      ["ID", "NAME", "REGION", "TYPE", "STATUS"]).replace("\n", "\n   ")
                .join(["   ", ""]))

        say("\n5. cancel a copy mid-flight (bandwidth capped so that it is in flight)")
        # ~8 s for the whole copy, so that the cancel surely lands mid-flight
        bandwidth = max(MiB, data_mib * MiB // 8)
        with cloud_module.open(home, limits=Limits(bandwidth=bandwidth)) as cloud:
            cloud.add_region("hk", name="Hong Kong")
            job3 = cloud.replicate(v2.id, "hk")
            copy_id = job3.tasks["hk"].dest_image_id
            while job3.refresh().tasks["hk"].bytes_transferred == 0 and job3.state == "Running":
                time.sleep(0.05)
            cloud.cancel_copy(copy_id)
            left = [i.id for i in cloud.images("hk")]
            say(f"   cancelled {copy_id}: task {job3.refresh().tasks['hk'].state}, "
                f"images in hk: {left or 'none'}, source {cloud.image(v2.id).status}")

            say("\n6. verify every image: re-read every chunk, check it and the whole digest")
            rows = []
            for image in [v1, v2]:
                expected = image.wait_digest()
                for copy in cloud.images(name=image.name):
                    digest = copy.verify()
                    ok = digest == expected
                    rows.append([copy.id, copy.name, copy.region, copy.status,
                                 size(copy.size), digest[:19] + "...",
                                 "ok" if ok else "MISMATCH"])
                    if not ok:
                        say(f"   digest mismatch for {copy.id}")
                        return 1
            say("\n" + table(rows, ["IMAGE", "NAME", "REGION", "STATUS", "SIZE", "SHA-256",
                                    "VERIFIED"]))
        say(f"\ndemo finished in {time.monotonic() - started:.1f} s")
        return 0
    finally:
        if keep:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
