"""The soak (issue #16, point 6): several processes run random operations on one home for a
bounded time, one of them killed (kill -9) now and then and started again; then every
invariant is checked.

Each process (soak_worker.py) opens the home as its own account and imports small images
(into the local regions and an S3 region on moto), replicates them to 1-3 regions, waits,
cancels, deletes, shares and unshares, renames, verifies, lists and scrubs, at random from
its seed. Its log (one JSON line per operation) says what it asked and got; expected errors
are the rules' stable codes, anything else is "unexpected" and fails the test. At the end:
the home is idle, every Available image verifies to an imported file's SHA-256, nothing is
in flight, the audit log has no gap, no account sees another's private image (and what it
sees as Sharing was shared with it), and once the sweeps have run no region keeps a block,
pack, manifest or object that no live image needs.

IMAGERELAY_SOAK_SECONDS (default 60) bounds the run; IMAGERELAY_SOAK_SEED picks the seed (a
fixed one by default; "random": a new one, printed); IMAGERELAY_SOAK_WORKERS the number of processes (3). The
seed, each process's seed and every operation are in the logs under the test's tmp_path
(kept by pytest), and `pytest -s` prints the figures. Processes run at once, so a seed
replays each process's choices, not their interleaving.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PYTHON
from invariants import LIVE, assert_bucket_swept, assert_settled, assert_swept
from s3_server import S3Server, moto_server

import imagerelay as ir

SECONDS = float(os.environ.get("IMAGERELAY_SOAK_SECONDS", "60"))
WORKERS = int(os.environ.get("IMAGERELAY_SOAK_WORKERS", "3"))
BLOCK = 4096
WORKER = str(Path(__file__).with_name("soak_worker.py"))
BUCKET = "soak"
DEFAULT_SEED = 675678275


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with moto_server() as server:
        yield server


def make_sources(files: Path, rng: random.Random) -> dict[str, str]:
    """Six small images of 1-6 blocks from a pool of blocks (so they share some), one with
    a hole and a short last block; returns name -> SHA-256."""
    pool = [rng.randbytes(BLOCK) for _ in range(8)] + [bytes(BLOCK)]
    digests = {}
    for n in range(6):
        data = b"".join(rng.choice(pool) for _ in range(rng.randint(1, 6)))
        if n == 0:
            data += rng.randbytes(BLOCK // 3)
        (files / f"img{n}.raw").write_bytes(data)
        digests[f"img{n}.raw"] = "sha256:" + hashlib.sha256(data).hexdigest()
    (files / "digests.json").write_text(json.dumps(digests))
    return digests


def start(home: Path, files: Path, account: str, seed: int, deadline: float,
          log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([PYTHON, WORKER, str(home), str(files), account, str(seed),
                             str(deadline), str(log)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def read_logs(logs: Path) -> list[dict]:
    entries = []
    for path in sorted(logs.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                entries.append({"worker": path.stem, **json.loads(line)})
            except json.JSONDecodeError:
                pass  # the line a kill -9 cut short
    return entries


def test_soak(s3: S3Server, tmp_path: Path) -> None:
    # A fixed seed by default, so that make test asks the same things every run (the
    # processes' interleaving still differs); "random" for a new one each run.
    asked = os.environ.get("IMAGERELAY_SOAK_SEED") or str(DEFAULT_SEED)
    seed = random.SystemRandom().randrange(1 << 30) if asked == "random" else int(asked)
    print(f"\nsoak seed {seed} ({SECONDS:.0f} s, {WORKERS} processes), logs in {tmp_path}")
    rng = random.Random(seed)
    home, files, logs = tmp_path / "home", tmp_path / "files", tmp_path / "logs"
    files.mkdir()
    logs.mkdir()
    digests = set(make_sources(files, rng).values())
    accounts = [f"w{i}" for i in range(WORKERS)]
    s3.create_bucket(BUCKET)
    with ir.open(home, limits=ir.Limits(chunk_size=BLOCK)) as cloud:
        for account in accounts:
            cloud.add_account(account)
        # The S3 region's credentials are kept in the home: every process finds them.
        cloud.add_region("s3", f"s3://{BUCKET}/soak?endpoint={s3.endpoint}&region=us-east-1",
                         access_key_id=s3.access_key_id, secret_access_key=s3.secret_access_key)

    deadline = time.time() + SECONDS
    procs: dict[str, subprocess.Popen[bytes]] = {}
    starts: Counter[str] = Counter()

    def launch(account: str) -> None:
        starts[account] += 1
        worker_seed = rng.randrange(1 << 30)
        procs[account] = start(home, files, account, worker_seed, deadline,
                               logs / f"{account}.jsonl")

    for account in accounts:
        launch(account)
    kills = 0
    try:
        while time.time() < deadline - 5:
            time.sleep(rng.uniform(3, 10))
            for account, proc in procs.items():
                assert proc.poll() is None, \
                    f"{account} ended early: {proc.stderr.read().decode()[-2000:]}"  # type: ignore[union-attr]
            if time.time() >= deadline - 5:
                break
            victim = rng.choice(accounts)
            procs[victim].send_signal(signal.SIGKILL)
            procs[victim].wait()
            kills += 1
            with (logs / f"{victim}.jsonl").open("a") as log:
                log.write("\n" + json.dumps({"t": time.time(), "op": "killed"}) + "\n")
            launch(victim)
        for account, proc in procs.items():
            _, err = proc.communicate(timeout=SECONDS + 120)
            assert proc.returncode == 0, f"{account} failed: {err.decode()[-3000:]}"
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    entries = read_logs(logs)
    unexpected = [e for e in entries if e["op"] == "unexpected"]
    ops = [e for e in entries if e["op"] not in ("start", "stop", "killed", "unexpected")]
    answers = Counter((e["op"], e.get("code") or e.get("error") or "ok") for e in ops)
    print(f"{len(ops)} operations in {SECONDS:.0f} s ({len(ops) / SECONDS:.1f}/s), "
          f"{kills} kill -9, {len(unexpected)} unexpected")
    for (op, answer), n in sorted(answers.items()):
        print(f"  {op:>9} {answer:<40} {n}")
    assert not unexpected, "\n".join(json.dumps(e) for e in unexpected[:20])
    assert len(ops) > 10 * WORKERS, "the processes barely ran"

    with ir.open(home, limits=ir.Limits(chunk_size=BLOCK)) as cloud:
        images = assert_settled(cloud, digests, "after the soak", unique_names=False)
        live = {i.id for i in images.values() if i.status in LIVE}
        # What each account sees: its own, System images, and images shared with it.
        for account in accounts:
            view = cloud.as_account(account)
            for image in view.images():
                if image.owner == account or image.type == "System":
                    continue
                assert image.type == "Sharing", f"{account} sees {image.owner}'s {image.id}"
                owner = cloud.as_account(image.owner)
                assert account in owner.shared_users(image.id), \
                    f"{account} sees {image.id}, not shared with it"
        assert_swept(home, cloud, live, "after the soak", whole_packs=True)
        # The S3 region: no manifest of an image not live, no pack mostly dead bytes.
        assert_bucket_swept(s3, BUCKET, "soak", live, "after the soak", timeout=0)
    print(f"checked: {len(images)} images ({len(live)} live), {len(entries)} log lines")

