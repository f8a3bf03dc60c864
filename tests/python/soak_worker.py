"""One process of the soak (test_soak.py): opens the home as its account and runs random
operations until a deadline, writing one JSON line per operation to its log (flushed, so a
kill -9 loses none): what it asked, what it got, and anything unexpected.

    python soak_worker.py HOME FILES ACCOUNT SEED DEADLINE LOG

FILES holds the source images (*.raw) and digests.json (their SHA-256). Expected answers
are the stable codes of the rules; an exception of another type, a code outside the rules,
a failed copy, a verify that gives another digest or a listing that shows another account's
private image is recorded as "unexpected".
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path

import imagerelay as ir

# Codes the rules answer with when a random operation asks for something not allowed now
# (an image being copied, gone, someone else's, a region it is already in...).
RULE_KINDS = (ir.ValidationError, ir.NotFoundError, ir.PermissionDeniedError,
              ir.ImageBusyError, ir.ConflictError, ir.QuotaExceededError)


class Worker:
    def __init__(self, home: Path, files: Path, account: str, seed: int, deadline: float,
                 log: Path) -> None:
        self.rng = random.Random(seed)
        self.account = account
        self.deadline = deadline
        self.sources = sorted(files.glob("*.raw"))
        self.digests = set(json.loads((files / "digests.json").read_text()).values())
        self.log = log.open("a", buffering=1)
        self.cloud = ir.open(home, account=account, limits=ir.Limits(chunk_size=4096))
        self.regions = [r.id for r in self.cloud.regions]
        self.accounts = [a.id for a in self.cloud.accounts]
        self.jobs: list[ir.Job] = []
        self.count = 0
        self.write("start", seed=seed, pid=os.getpid())

    def write(self, op: str, **fields: object) -> None:
        self.log.write(json.dumps({"t": round(time.time(), 3), "op": op, **fields}) + "\n")

    def mine(self, *statuses: str) -> list[ir.Image]:
        return [i for i in self.cloud.images(image_type="Custom")
                if i.owner == self.account and (not statuses or i.status in statuses)]

    def pick(self, *statuses: str) -> ir.Image | None:
        images = self.mine(*statuses)
        return self.rng.choice(images) if images else None

    # -- the operations: each returns what it got (logged) --------------------------------
    def op_import(self) -> object:
        source = self.rng.choice(self.sources)
        self.count += 1
        region = self.rng.choice(self.regions)
        image = self.cloud.import_image(source, region=region,
                                        name=f"{self.account}-{self.count}")
        return {"id": image.id, "region": region, "source": source.name,
                "status": str(image.status)}

    def op_replicate(self) -> object:
        image = self.pick()  # any status: the rules answer for the others
        if image is None:
            return "none"
        to = self.rng.sample(self.regions, self.rng.randint(1, min(3, len(self.regions))))
        job = image.replicate(to)
        self.jobs = self.jobs[-20:] + [job]
        return {"source": image.id, "to": to, "job": job.id,
                "copies": {r: t.dest_image_id for r, t in job.tasks.items()}}

    def op_wait(self) -> object:
        if not self.jobs:
            return "none"
        job = self.rng.choice(self.jobs)
        if self.rng.random() < 0.5:
            try:
                job.wait(timeout=self.rng.uniform(0.5, 3), raise_on_error=False)
            except ir.TimeoutError:
                pass  # still copying: an answer as good as any
        else:
            job.refresh()
        self.check_job(job)
        return {"job": job.id, "state": str(job.state)}

    def op_cancel(self) -> object:
        if self.jobs and self.rng.random() < 0.5:
            job = self.rng.choice(self.jobs)
            job.cancel()
            return {"job": job.id}
        image = self.pick("Creating")
        if image is None or not image.source_image_id:
            return "none"
        self.cloud.cancel_copy(image.id)
        return {"copy": image.id}

    def op_delete(self) -> object:
        image = self.pick()
        if image is None:
            return "none"
        image.delete()
        return {"id": image.id}

    def op_share(self) -> object:
        image = self.pick()
        if image is None:
            return "none"
        other = self.rng.choice([a for a in self.accounts if a != self.account])
        if self.rng.random() < 0.7:
            image.share(other)
            return {"id": image.id, "share": other}
        image.unshare(other)
        return {"id": image.id, "unshare": other}

    def op_rename(self) -> object:
        image = self.pick()
        if image is None:
            return "none"
        self.count += 1
        image.rename(f"{self.account}-r{self.count}")
        return {"id": image.id}

    def op_verify(self) -> object:
        seen = [i for i in self.cloud.images() if i.status == "Available"]
        if not seen:
            return "none"
        image = self.rng.choice(seen)
        digest = image.verify()
        if digest not in self.digests:
            self.unexpected("verify", f"{image.id} verified to {digest}, no source's digest")
        return {"id": image.id, "owner": image.owner}

    def op_list(self) -> object:
        images = self.cloud.images()
        for image in images:
            if image.type == "Custom" and image.owner != self.account:
                self.unexpected("list", f"sees {image.owner}'s private image {image.id}")
            if image.type == "Sharing" and image.owner == self.account:
                self.unexpected("list", f"its own image {image.id} listed as Sharing")
        return {"seen": len(images)}

    def op_scrub(self) -> object:
        region = self.rng.choice(self.regions)
        reports = self.cloud.scrub(region)
        damaged = [i for r in reports for i in r.images_damaged]
        if damaged:
            self.unexpected("scrub", f"scrub of {region} found damaged images {damaged}")
        return {"region": region}

    WEIGHTS = {"import": 3, "replicate": 3, "wait": 2, "cancel": 1, "delete": 2, "share": 2,
               "rename": 1, "verify": 2, "list": 2, "scrub": 0.3}

    def check_job(self, job: ir.Job) -> None:
        for region, task in job.tasks.items():
            if task.state == "Failed":
                self.unexpected("copy", f"job {job.id} to {region} failed: "
                                        f"{task.error_code}: {task.error}")

    def unexpected(self, op: str, what: str) -> None:
        self.write("unexpected", during=op, what=what)

    def run(self) -> None:
        names = list(self.WEIGHTS)
        weights = [self.WEIGHTS[n] for n in names]
        while time.time() < self.deadline:
            op = self.rng.choices(names, weights)[0]
            started = time.time()
            try:
                result = getattr(self, f"op_{op}")()
                self.write(op, ok=result, s=round(time.time() - started, 3))
            except RULE_KINDS as e:
                self.write(op, code=e.code)
            except ir.ImageRelayError as e:
                # Not a rule's answer: a transfer or integrity failure, a timeout.
                self.write(op, code=e.code)
                self.unexpected(op, f"{type(e).__name__}: {e}")
            except Exception as e:  # noqa: BLE001 - that is the point: any other type
                self.write(op, error=type(e).__name__)
                self.unexpected(op, f"{type(e).__name__}: {e}")
        self.write("stop")
        self.cloud.close()


if __name__ == "__main__":
    home, files, account, seed, deadline, log = sys.argv[1:7]
    Worker(Path(home), Path(files), account, int(seed), float(deadline), Path(log)).run()
