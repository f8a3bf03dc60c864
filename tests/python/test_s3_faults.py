"""The S3 fault matrix (issue #16, point 5): every fault of the fault proxy x every phase of
a copy x {local -> S3, S3 -> local, S3 -> S3}.

Each cell arms one fault for one request of one phase (deterministic: the first request of
that phase, docs/reliability.md says which requests make each phase), runs the copy (or, for
the sweep phase, deletes a copy so that its region is swept), and checks:

- the copy ends Available and verifies to the source's SHA-256, or ends failed with a code
  that fault may give (ACCEPTED); a transient fault must be retried to success;
- the source stays Available and verifies (a byte flipped on the wire is not damage);
- once the copy is deleted and the sweeps have run: the destination holds nothing (no pack,
  manifest or record in its bucket, no block in its directory), the source bucket holds what
  it held, no multipart upload is left in progress, nothing is in flight, the audit log has
  no gap;
- a clean run of the same copy then succeeds.

Not every fault meets every phase: a cell whose phase makes no request of its kind in that
direction (an S3 -> local copy writes nothing to a bucket), or whose fault cannot apply to the
phase's requests (a corrupted byte of an empty answer), is reported as not applicable, and
the figures count them apart. `pytest -s` prints the matrix.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import chunk_names, wait_until
from invariants import assert_settled, every_image
from s3_server import FAULTS, FaultProxy, S3Server, moto_server

import imagerelay as ir

BLOCK = 4096
PREFIX = "relay"
MARKER = f"{PREFIX}/.imagerelay-store"

# What a cell may end as, per fault: "ok" (Available, verified), else the failed task's code.
# Every fault here is one request's: a retry gets through, so every cell must end "ok".
ACCEPTED: dict[str, set[str]] = {fault: {"ok"} for fault in FAULTS}

DIRECTIONS = ("local-s3", "s3-local", "s3-s3")
# make test runs S3 -> S3, the direction whose copies make every phase's requests (every fault
# x every phase, ~80 s here); IMAGERELAY_FAULTS_FULL=1 adds local -> S3 and S3 -> local.
FULL = os.environ.get("IMAGERELAY_FAULTS_FULL") == "1"
RUN_DIRECTIONS = DIRECTIONS if FULL else ("s3-s3",)
# "read" first: an engine keeps the ranges of packs it read for a while, so that a copy that
# follows reads none (each fault has a source of its own).
PHASES = ("read", "plan", "write", "commit", "sweep")


Match = Callable[[str, str], bool]  # (method, path) -> is it one of these requests?


def _path(path: str) -> tuple[str, str, dict[str, str]]:
    """(bucket, key, query) of a path-style request path."""
    bare, _, query = path.partition("?")
    bucket, _, key = bare.lstrip("/").partition("/")
    params = dict(p.partition("=")[::2] for p in query.split("&") if p)
    return bucket, key, params


def listing(bucket: str, what: str) -> Match:
    """A ListObjectsV2 page of <prefix>/<what>."""
    def match(method: str, path: str) -> bool:
        b, key, q = _path(path)
        return (method == "GET" and b == bucket and not key and "list-type" in q
                and q.get("prefix", "").replace("%2F", "/") == f"{PREFIX}/{what}")
    return match


def objects(bucket: str, method: str, where: str, suffix: str = "") -> Match:
    """Requests ``method`` of the objects <prefix>/<where>...<suffix>."""
    def match(m: str, path: str) -> bool:
        b, key, q = _path(path)
        return (m == method and b == bucket and "list-type" not in q
                and key.startswith(f"{PREFIX}/{where}") and key.endswith(suffix))
    return match


def phase_requests(phase: str, src: str | None, dst: str | None) -> dict[str, Match]:
    """The kinds of request that make ``phase`` of a copy from bucket ``src`` to bucket
    ``dst`` (None: a local region), by name; none when the phase makes no request to S3.
    Found by logging the proxy's request lines on a clean copy (docs/reliability.md)."""
    kinds: dict[str, Match] = {}
    if phase == "plan":
        if src:
            kinds["GET of the source's manifest"] = objects(src, "GET", "manifests/")
        if dst:
            kinds["PUT of the write probe"] = objects(dst, "PUT", ".imagerelay-probe-")
            kinds["DELETE of the write probe"] = objects(dst, "DELETE", ".imagerelay-probe-")
            kinds["GET of the store marker"] = objects(dst, "GET", ".imagerelay-store")
            kinds["listing of the destination's packs"] = listing(dst, "packs/")
    elif phase == "read" and src:
        kinds["ranged GET of a source pack"] = objects(src, "GET", "packs/")
    elif phase == "write" and dst:
        kinds["PUT of a pack"] = objects(dst, "PUT", "packs/")
    elif phase == "commit" and dst:
        kinds["PUT of the manifest"] = objects(dst, "PUT", "manifests/")
        kinds["DELETE of a first-release manifest"] = objects(dst, "DELETE", "manifests/",
                                                              ".json")
        kinds["PUT of the image record"] = objects(dst, "PUT", "images/")
    elif phase == "sweep" and dst:
        kinds["listing of the manifests"] = listing(dst, "manifests/")
        kinds["DELETE of the manifest"] = objects(dst, "DELETE", "manifests/", ".bin")
        kinds["DELETE of the image record"] = objects(dst, "DELETE", "images/")
        kinds["listing of the packs"] = listing(dst, "packs/")
        kinds["DELETE of a pack"] = objects(dst, "DELETE", "packs/")
    return kinds


@dataclass
class Setup:
    home: Path
    cloud: ir.Cloud
    s3: S3Server
    proxy: FaultProxy
    source: ir.Image
    digest: str
    src_bucket: str | None
    dst_bucket: str | None
    dest_region: str
    src_keys: list[str] = field(default_factory=list)
    files: Path = Path()
    digests: set[str] = field(default_factory=set)
    cells: dict[tuple[str, str], str] = field(default_factory=dict)


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with moto_server() as server:
        yield server


RESULTS: dict[tuple[str, str, str], str] = {}


def _open(s3: S3Server, home: Path, direction: str, files: Path) -> Setup:
    proxy = FaultProxy(int(s3.endpoint.rsplit(":", 1)[1]))
    proxy.stall_seconds = 3
    cloud = ir.open(home, limits=ir.Limits(chunk_size=BLOCK))
    tag = f"{direction}-{os.getpid()}"
    src_bucket = f"src-{tag}" if direction.startswith("s3") else None
    dst_bucket = f"dst-{tag}" if direction.endswith("s3") else None
    for region, bucket in (("src", src_bucket), ("dst", dst_bucket)):
        if bucket:
            s3.create_bucket(bucket)
            # A stall of a second fails the request (the default waits 15 s).
            cloud.add_region(region, f"s3://{bucket}/{PREFIX}?endpoint={proxy.endpoint}"
                             f"&region=us-east-1&low_speed_time=1",
                             access_key_id=s3.access_key_id,
                             secret_access_key=s3.secret_access_key)
    setup = Setup(home, cloud, s3, proxy, None, "", src_bucket, dst_bucket,  # type: ignore[arg-type]
                  "dst" if dst_bucket else "gz")
    setup.files = files
    return setup


def new_source(setup: Setup) -> None:
    """A source of its own: a few blocks, one a hole, a short last one (one pack, one read)."""
    data = os.urandom(3 * BLOCK) + bytes(BLOCK) + os.urandom(BLOCK // 2)
    path = setup.files / "source.raw"
    path.write_bytes(data)
    setup.digest = "sha256:" + hashlib.sha256(data).hexdigest()
    setup.digests.add(setup.digest)  # the sources of the faults before stay, each verified
    setup.source = setup.cloud.import_image(path, region="src" if setup.src_bucket else "bj",
                                            name="source")
    if setup.src_bucket:
        setup.src_keys = setup.s3.keys(setup.src_bucket)


@pytest.fixture(scope="module", params=RUN_DIRECTIONS)
def setup(request, s3: S3Server, tmp_path_factory) -> Iterator[Setup]:
    d = tmp_path_factory.mktemp(f"faults-{request.param}")
    s = _open(s3, d / "home", request.param, d)
    try:
        yield s
    finally:
        s.cloud.close()
        s.proxy.close()


def run_copy(setup: Setup) -> tuple[str, ir.Job]:
    """Replicates the source to the destination; "ok" or the failed task's code."""
    job = setup.source.replicate(setup.dest_region)
    job.wait(timeout=120, raise_on_error=False)
    task = job.tasks[setup.dest_region]
    if task.state == "Completed":
        copy = setup.cloud.image(task.dest_image_id)
        assert copy.status == "Available", copy
        assert copy.verify() == setup.digest
        return "ok", job
    assert task.state == "Failed", task.to_dict()
    assert task.error_code and task.error, task.to_dict()
    assert setup.s3.secret_access_key not in task.error
    return task.error_code, job


def delete_copies(setup: Setup) -> None:
    for image in setup.cloud.images(region=setup.dest_region):
        if image.status not in ("Deleted", "CreateFailed"):
            image.delete()


def dest_leftovers(setup: Setup) -> list[str]:
    """What the destination still holds once it holds no image."""
    if setup.dst_bucket:
        return [k for k in setup.s3.keys(setup.dst_bucket) if k != MARKER]
    root = setup.home / "regions" / setup.dest_region
    left = sorted(chunk_names(setup.home, setup.dest_region))
    for sub in ("manifests", "packs"):
        if (root / sub).is_dir():
            left += [str(p.relative_to(root)) for p in (root / sub).rglob("*") if p.is_file()]
    return left + [str(p) for p in root.rglob(".tmp-*")]


def uploads_in_progress(setup: Setup) -> list[str]:
    client = setup.s3.client()
    out = []
    for bucket in (setup.src_bucket, setup.dst_bucket):
        if bucket:
            out += [u["Key"] for u in client.list_multipart_uploads(Bucket=bucket)
                    .get("Uploads", [])]
    return out


def assert_clean(setup: Setup, where: str) -> None:
    """Nothing left of the copies: every check after a cell."""
    delete_copies(setup)
    wait_until(lambda: not dest_leftovers(setup), timeout=30, interval=0.05,
               why=lambda: f"{where}: the destination keeps {dest_leftovers(setup)[:5]}")
    if setup.src_bucket:
        assert setup.s3.keys(setup.src_bucket) == setup.src_keys, where
    assert not uploads_in_progress(setup), where
    assert_settled(setup.cloud, setup.digests, where, unique_names=False)
    source = setup.cloud.image(setup.source.id)
    assert source.status == "Available", f"{where}: the source is {source.status}: {source.error}"


def run_cell(setup: Setup, fault: str, phase: str, direction: str) -> str:
    """One cell: the fault armed for the first request of each kind the phase makes."""
    kinds = phase_requests(phase, setup.src_bucket, setup.dst_bucket)
    if not kinds:
        return "n/a"
    where = f"{fault} x {phase} x {direction}"
    proxy = setup.proxy
    if phase == "sweep":
        outcome, _ = run_copy(setup)
        assert outcome == "ok", f"{where}: the copy before the sweep: {outcome}"
        armed = [proxy.arm(fault, match) for match in kinds.values()]
        delete_copies(setup)
        wait_until(lambda: not dest_leftovers(setup), timeout=30, interval=0.05,
                   why=lambda: f"{where}: the sweep left {dest_leftovers(setup)[:5]}")
    else:
        armed = [proxy.arm(fault, match) for match in kinds.values()]
        outcome, _ = run_copy(setup)
    proxy.disarm()
    # A copy that failed may have stopped before some kinds; one that succeeded made them all.
    unseen = [kind for kind, a in zip(kinds, armed) if not a.seen]
    assert outcome != "ok" or not unseen, f"{where}: the phase made no {unseen}"
    if not any(a.fired for a in armed):
        outcome = "n/a"
    elif outcome not in ACCEPTED[fault]:
        pytest.fail(f"{where}: ended {outcome}, expected {sorted(ACCEPTED[fault])}")
    assert_clean(setup, where)
    again, _ = run_copy(setup)
    assert again == "ok", f"{where}: the clean run after it: {again}"
    assert_clean(setup, f"the clean run after {where}")
    return outcome


@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_matrix(setup: Setup, fault: str, request) -> None:
    direction = request.node.callspec.params["setup"]
    new_source(setup)
    for phase in PHASES:
        RESULTS[(direction, fault, phase)] = run_cell(setup, fault, phase, direction)


def test_every_fault_fired_somewhere(capsys) -> None:
    """The matrix is real: each fault was injected into at least one phase's requests of
    each direction that ran (a proxy that stopped injecting would otherwise pass every
    cell). Prints the figures for docs/reliability.md (shown with -s)."""
    if not RESULTS:
        pytest.skip("no cell of the matrix ran in this session (deselected)")
    with capsys.disabled():
        for direction in DIRECTIONS:
            print(f"\n{direction}: " + " ".join(f"{p:>7}" for p in PHASES))
            for fault in FAULTS:
                row = [RESULTS.get((direction, fault, p), "-") for p in PHASES]
                print(f"  {fault:>15}: " + " ".join(f"{r:>7}" for r in row))
        ran = [v for v in RESULTS.values() if v != "n/a"]
        print(f"cells run: {len(ran)}, not applicable: {len(RESULTS) - len(ran)}")
    never_fired = [
        f"{fault} on {direction}"
        for direction in DIRECTIONS for fault in FAULTS
        if all((direction, fault, p) in RESULTS for p in PHASES)
        and all(RESULTS[(direction, fault, p)] == "n/a" for p in PHASES)]
    assert not never_fired, f"faults never injected into any phase: {never_fired}"
