"""A policy in Python: refuse to replicate an image that does not say its OS version.

    python examples/policy_require_os_version.py [HOME]

``cloud.add_rule(fn)`` runs ``fn(request)`` before every replicate, share, unshare, rename,
delete and import; returning a string rejects the call with ``ValidationError`` (code
``PolicyViolation``) and that text. HOME defaults to a temporary home, removed at the end.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import imagerelay as ir

MiB = 2**20


def require_os_version(request: ir.PolicyRequest) -> str | None:
    """Only images that say which OS version they carry may be replicated."""
    if request.action == "replicate" and request.image is not None \
            and not request.image.os_version:
        return (f"image {request.image.id} ({request.image.name}) has no os_version; "
                "import it again with os_version set before replicating it")
    return None


def make_disk_image(path: Path, size: int = 4 * MiB) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
        f.write(os.urandom(MiB // 2))
    return path


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="imagerelay-policy-") as tmp:
        home = Path(argv[1]) if len(argv) > 1 else Path(tmp) / "home"
        disk = make_disk_image(Path(tmp) / "disk.raw")

        with ir.open(home) as cloud:
            rule = cloud.add_rule(require_os_version)
            try:
                unversioned = cloud.import_image(disk, region="bj", name="no-version")
                try:
                    unversioned.replicate("gz")
                except ir.ValidationError as e:
                    print(f"refused: {e.code}: {e.message}")
                    if e.code != "PolicyViolation":
                        return 1
                else:
                    print("error: the policy let an image without os_version be replicated",
                          file=sys.stderr)
                    return 1

                versioned = cloud.import_image(disk, region="bj", name="with-version",
                                               os_name="debian", os_version="12")
                job = versioned.replicate("gz").wait()
                print(f"allowed: {versioned.id} (debian 12) -> gz: {job.state}, "
                      f"copy {job.tasks['gz'].dest_image_id}")
                if job.state != "Completed":
                    return 1
            finally:
                rule.remove()  # the policy lives as long as this process; remove it when done

            # Without the rule, the unversioned image may be replicated again.
            job = unversioned.replicate("gz").wait()
            print(f"rule removed: {unversioned.id} -> gz: {job.state}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
