"""What must hold of a home once its work is done, whatever happened on the way (a crash,
faults on the network, several processes at once): the checks of the crash test
(test_crash_points.py), the S3 fault matrix (test_s3_faults.py) and the soak
(test_soak.py).

- every Available image holds exactly bytes that were imported (verify: every block and
  the digest, which must be one of the source files' SHA-256);
- no import, copy or job stays in flight, and no (region, name) is Available twice;
- the audit log has no gap;
- once the sweeps have run, a local region indexes no block that no live image needs, and
  no temporary file is left in it (nor, when asked, a pack mostly dead bytes); an S3
  region's bucket holds no manifest of an image not live and no pack mostly dead bytes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from conftest import (
    chunk_files,
    chunk_names,
    delta_bases,
    manifest_path,
    parse_manifest,
    read_manifest,
    stored_blocks,
    wait_until,
)
from s3_server import S3Server, pack_blocks, pack_sizes

import imagerelay as ir

LIVE = {"Creating", "Available", "Replicating", "NotAvailable"}
REPACK_BELOW = 0.5  # a sweep rewrites a pack less live than that (PackStoreOptions)


def views(cloud: ir.Cloud) -> list[ir.Cloud]:
    """The home as each of its accounts sees it."""
    return [cloud] + [cloud.as_account(a.id) for a in cloud.accounts if a.id != cloud.account]


def every_image(cloud: ir.Cloud) -> dict[str, ir.Image]:
    """Every image any account of the home sees, by id."""
    images: dict[str, ir.Image] = {}
    for view in views(cloud):
        for image in view.images():
            images.setdefault(image.id, image)
    return images


def local_regions(cloud: ir.Cloud) -> list[str]:
    """The regions kept in directories (the S3 ones are checked through their buckets)."""
    return [r.id for r in cloud.regions if not r.store.startswith("s3://")]


def unneeded_blocks(home: Path, region: str, live_ids: set[str]) -> set[str]:
    """The blocks a local region's index holds that no live image needs: neither named by
    its manifest nor a base of a delta block that is."""
    needed: set[str] = set()
    for image_id in live_ids:
        path = manifest_path(home, region, image_id)
        if path.exists():
            needed.update(h for h in read_manifest(path)["chunks"] if h)
    needed |= {base for delta, base in delta_bases(home, region) if delta in needed}
    return chunk_names(home, region) - needed


# A pack's footer: a row per block (hash, offset, lengths, codec) and a trailer.
PACK_ENTRY_BYTES = 32 + 8 + 4 + 4 + 1
PACK_TRAILER_BYTES = 4 + 32 + 8


def wasteful_packs(home: Path, region: str) -> list[str]:
    """The pack files of a local region that a sweep would delete or rewrite: those less
    than half of whose bytes the blocks the index lists (it lists live blocks only) would
    take in a pack of their own, footer included."""
    live: dict[Path, int] = {}
    for pack, _, stored, _ in stored_blocks(home, region).values():
        live[pack] = live.get(pack, PACK_TRAILER_BYTES) + stored + PACK_ENTRY_BYTES
    out = []
    for pack in chunk_files(home, region):
        try:
            if live.get(pack, 0) < REPACK_BELOW * pack.stat().st_size:
                out.append(pack.name)
        except FileNotFoundError:  # deleted by a sweep meanwhile
            pass
    return out


def assert_settled(cloud: ir.Cloud, digests: set[str], where: str, *,
                   unique_names: bool = True, timeout: float = 120) -> dict[str, ir.Image]:
    """Idle, nothing in flight, every Available image verifies to one of ``digests``, no
    (region, name) Available twice (``unique_names``), the audit log without gap. Returns
    every image."""
    assert cloud.wait_idle(timeout=timeout), f"copies still in flight {where}"
    images = every_image(cloud)
    seen: dict[tuple[str, str], str] = {}
    for image in images.values():
        assert image.status not in ("Creating", "Replicating"), \
            f"{image.id} stays {image.status} {where}"
        if image.status != "Available":
            continue
        try:
            digest = image.verify()
        except ir.IntegrityError as e:
            raise AssertionError(f"{image.id} is Available with bytes missing or wrong "
                                 f"{where}: {e}") from e
        assert digest in digests, f"{image.id} holds wrong bytes {where}"
        key = (image.region, image.name)
        if unique_names:
            assert key not in seen, f"{key} appears twice ({seen.get(key)}, {image.id}) {where}"
        seen[key] = image.id
    for job in cloud.jobs():
        assert job.state not in ("Pending", "Running"), f"job {job.id} in flight {where}"
    # Each account sees its own events: together they are the whole log.
    seqs = sorted({e.seq for view in views(cloud) for e in view.events()})
    assert all(b == a + 1 for a, b in zip(seqs, seqs[1:])), \
        f"the audit log has a gap {where}: {seqs}"
    return images


def assert_swept(home: Path, cloud: ir.Cloud, live: set[str], where: str,
                 timeout: float = 20.0, *, whole_packs: bool = False) -> None:
    """Waits until no local region indexes a block that no live image needs (and, with
    ``whole_packs``, keeps no pack that is mostly dead bytes) and no temporary file is left
    under regions/ (the sweeps run when the workers are idle, and a killed writer's
    temporary files go in the background once the home is open again)."""
    for region in local_regions(cloud):
        wait_until(lambda r=region: not unneeded_blocks(home, r, live), timeout=timeout,
                   interval=0.2,
                   why=lambda r=region: f"region {r} keeps "
                   f"{len(unneeded_blocks(home, r, live))} unneeded block(s) {where}")
        if whole_packs:
            wait_until(lambda r=region: not wasteful_packs(home, r), timeout=timeout,
                       interval=0.2, why=lambda r=region: f"region {r} keeps packs mostly "
                       f"dead: {wasteful_packs(home, r)} {where}")
    wait_until(lambda: not list((home / "regions").rglob(".tmp-*")), timeout=timeout,
               interval=0.2, why=lambda: f"temporary files left {where}: "
               f"{list((home / 'regions').rglob('.tmp-*'))[:3]}")


def check_invariants(home: Path, digests: set[str], where: str, *,
                     unique_names: bool = True,
                     buckets: Sequence[tuple[S3Server, str, str]] = ()) -> None:
    """Opens the home and checks all of the above; ``buckets``: the (server, bucket,
    prefix) of its S3 regions."""
    with ir.open(home) as cloud:
        images = assert_settled(cloud, digests, where, unique_names=unique_names)
        live = {i.id for i in images.values() if i.status in LIVE}
        assert_swept(home, cloud, live, where)
        for s3, bucket, prefix in buckets:
            assert_bucket_swept(s3, bucket, prefix, live, where)


def bucket_waste(s3: S3Server, bucket: str, prefix: str, live: set[str]) -> list[str]:
    """What an S3 region's bucket keeps that a sweep would have removed: manifests of images
    not live, and packs less than half of whose bytes are blocks a live manifest names."""
    client = s3.client()
    needed: set[str] = set()
    waste = []
    blocks = pack_blocks(s3, bucket, prefix)
    for key in s3.keys(bucket, f"{prefix}/manifests/"):
        image_id = key.rsplit("/", 1)[1].split(".")[0]
        if image_id not in live:
            waste.append(key)
            continue
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        needed.update(h for h in parse_manifest(body)["chunks"] if h)
    needed |= {base for digest, block in blocks if digest in needed for base in block.bases}
    live_bytes: Counter[str] = Counter()
    for digest, block in blocks:
        live_bytes[block.pack] += block.stored_length if digest in needed else 0
    waste += [k for k, size in pack_sizes(s3, bucket, prefix).items()
              if live_bytes[k] < REPACK_BELOW * size]
    return waste


def assert_bucket_swept(s3: S3Server, bucket: str, prefix: str, live: set[str], where: str,
                        timeout: float = 20.0) -> None:
    """Waits until an S3 region's bucket keeps nothing a sweep would remove (bucket_waste)."""
    wait_until(lambda: not bucket_waste(s3, bucket, prefix, live), timeout=timeout,
               interval=0.3, why=lambda: f"the bucket keeps "
               f"{bucket_waste(s3, bucket, prefix, live)[:3]} {where}")
