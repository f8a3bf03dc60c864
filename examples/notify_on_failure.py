"""Be told when a copy fails: a ``task.failed`` callback that logs and notifies.

    python examples/notify_on_failure.py [HOME]

``cloud.on("task.failed", callback)`` calls ``callback(event)`` on a worker thread whenever
a copy to a region fails. Here the callback logs the failure and "notifies": it POSTs the
event as JSON to ``$NOTIFY_URL`` if that is set (e.g. a chat webhook), else prints it.

To see a failure, the example damages the stored bytes of its own image: it flips a byte of
one of the image's blocks in a pack file of the source region's store, then replicates. The
copy reads that block, finds that it no longer matches its hash and fails with
``Transfer.IntegrityError``; the source image becomes NotAvailable (until a scrub repairs it)
and the copy is ``CreateFailed``. The image is random data, so no other image shares the damaged chunk, and
the example deletes both images at the end. HOME defaults to a temporary home.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path

import imagerelay as ir

log = logging.getLogger("notify_on_failure")
MiB = 2**20


def notify(event: ir.Event) -> None:
    """Sends one failure notice: to $NOTIFY_URL as JSON, or to stdout."""
    notice = {"text": f"imagerelay: the copy {event.image_id} to region {event.region} failed: "
                      f"{event.detail.get('error_code')}",
              "image": event.image_id, "job": event.job_id, "region": event.region,
              "account": event.account, "error_code": event.detail.get("error_code"),
              "error": event.detail.get("error"), "time": event.time.isoformat()}
    url = os.environ.get("NOTIFY_URL")
    if url:
        request = urllib.request.Request(url, data=json.dumps(notice).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10):
            pass
    else:
        print("NOTIFY " + json.dumps(notice, sort_keys=True), flush=True)


def damage_one_chunk(home: Path, region: str, source: Path, chunk_size: int) -> Path:
    """Flips one byte of the stored block that holds the first bytes of ``source``.

    A local region keeps its blocks in pack files, ``<store>/packs/<2 hex>/<pack>``; its
    index ``<store>/index/blocks.sqlite`` says where each block (keyed by its SHA-256's 32
    bytes) is.
    """
    import sqlite3
    with open(source, "rb") as f:
        first = f.read(chunk_size)
    digest = hashlib.sha256(first).hexdigest()
    store = home / "regions" / region
    with sqlite3.connect(store / "index" / "blocks.sqlite") as index:
        pack, offset, length = index.execute(
            "SELECT p.name, b.offset, b.stored_length FROM indexed_blocks b "
            "JOIN indexed_packs p ON p.id = b.pack WHERE b.hash = ?",
            (bytes.fromhex(digest),)).fetchone()
    stored = store / "packs" / pack[:2] / pack
    with open(stored, "r+b") as f:
        f.seek(offset + length // 2)
        byte = f.read(1)[0]
        f.seek(offset + length // 2)
        f.write(bytes([byte ^ 0xFF]))
    return stored


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="imagerelay-notify-") as tmp:
        home = Path(argv[1]) if len(argv) > 1 else Path(tmp) / "home"
        disk = Path(tmp) / "disk.raw"
        disk.write_bytes(os.urandom(2 * MiB))  # random: its chunks are its own

        with ir.open(home) as cloud:
            failures: list[ir.Event] = []
            notified = threading.Event()

            def on_task_failed(event: ir.Event) -> None:
                log.error("copy of image %s to %s failed: %s: %s", event.image_id,
                          event.region, event.detail.get("error_code"),
                          event.detail.get("error"))
                failures.append(event)
                notify(event)
                notified.set()

            handle = cloud.on("task.failed", on_task_failed)
            image = cloud.import_image(disk, region="bj", name="fragile", os_version="1")
            stored = damage_one_chunk(Path(cloud.home), "bj", disk, cloud.limits.chunk_size)
            log.info("damaged %s of image %s", stored.name[:16], image.id)

            job = image.replicate("gz")
            try:
                job.wait(timeout=60)
            except ir.ReplicationFailedError as e:
                task = e.job.tasks["gz"]
                log.info("job %s: %s; task to gz: %s (%s)", e.job.id, e.job.state, task.state,
                         task.error_code)
            if not notified.wait(timeout=30):
                print("error: no task.failed notification arrived", file=sys.stderr)
                return 1
            handle.remove()

            copy_id = job.tasks["gz"].dest_image_id
            print(f"source {image.id}: {image.refresh().status}; "
                  f"copy {copy_id}: {cloud.image(copy_id).status}")
            for image_id in (copy_id, image.id):  # leave the home as it was
                cloud.delete_image(image_id)
            if [f.image_id for f in failures] != [copy_id]:
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
