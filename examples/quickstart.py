"""Quickstart: import an image, replicate it to two regions, share the copies.

    python examples/quickstart.py [HOME]

HOME is an imagerelay home (created if new); by default a temporary one, removed at the end.
The image is a small generated sparse disk (8 MiB, ~1 MiB of data).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import imagerelay as ir

MiB = 2**20


def make_disk_image(path: Path, size: int = 8 * MiB) -> Path:
    """A sparse raw disk: a boot block and a few data extents, holes in between."""
    with open(path, "wb") as f:
        f.truncate(size)
        for offset in (0, size // 4, size // 2, size - MiB // 4):
            f.seek(offset)
            f.write(os.urandom(MiB // 4))
    return path


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="imagerelay-quickstart-") as tmp:
        home = Path(argv[1]) if len(argv) > 1 else Path(tmp) / "home"
        golden = make_disk_image(Path(tmp) / "golden.raw")

        with ir.open(home) as cloud:
            # 1. Import a disk file as a Custom image of the acting account.
            image = cloud.import_image(golden, region="bj", name="golden", os_name="ubuntu",
                                       os_version="24.04")
            print(f"imported {image.id} in {image.region}: {image.size} bytes, {image.digest}")

            # 2. Replicate it to two regions: one job, one task per destination.
            job = image.replicate(["gz", "su"])
            job.wait(progress=sys.stderr.isatty())
            for region, task in job.tasks.items():
                print(f"{region}: {task.dest_image_id} {task.state}, "
                      f"{task.bytes_transferred} bytes moved")

            # 3. Share the copies with another account, which sees them as Sharing.
            if "team-b" not in {a.id for a in cloud.accounts}:
                cloud.add_account("team-b", name="Team B")
            for copy in job.copies.values():
                copy.share("team-b")
            team_b = cloud.as_account("team-b")
            mine = {c.id for c in job.copies.values()}
            for seen in team_b.images(image_type="Sharing"):
                if seen.id in mine:
                    print(f"team-b sees {seen.id} ({seen.name}) in {seen.region} as {seen.type}, "
                          f"{seen.status}")
            if not mine <= {i.id for i in team_b.images(image_type="Sharing")}:
                print("error: team-b does not see every copy", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
