"""Crash at every durable step (issue #16, point 1).

Each operation runs in a child process whose N-th passing of a fail point (cpp/src/base/
fail_point.hpp: a file renamed into place, a pack committed, a catalog or index commit, a
delete...) ends it with _exit, as kill -9 would, for N = 1, 2, ... until the operation
passes all its steps. After each crash the home is opened again (which recovers imports and
resumes copies), and what a user relies on is checked (invariants.py): every Available
image holds exactly the bytes imported, nothing stays in flight or appears twice, the audit
log has no gap, and once the sweeps have run no unneeded block or temporary file is left.

IMAGERELAY_CRASH_STRIDE=K (default 1: every step) tries every K-th step only.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import (
    damage_block,
    delta_bases,
    edited,
    make_words,
    manifest_path,
    read_manifest,
    region_root,
)
from invariants import check_invariants
from s3_server import S3Server, moto_server

import imagerelay as ir

FAIL_EXIT = 86  # kFailPointExitCode
STRIDE = max(1, int(os.environ.get("IMAGERELAY_CRASH_STRIDE", "1")))

# The operations, as the child runs them on a home made by SETUP (then DAMAGE, in this
# process). The source files: a.raw (3 MiB of random bytes), b.raw (a.raw with its middle
# MiB rewritten: shares two thirds of its blocks) and c.raw (shares only a.raw's first MiB,
# so that deleting a leaves a pack a third alive: the sweep repacks it). d.raw: 3 MiB of
# file-like text; e.raw: d.raw with every other block edited in a few places (stored as
# delta blocks against d's).
SETUP = {
    "import": "",
    "replicate": "cloud.import_image(A, region='bj', name='a')",
    "replicate_two": "cloud.import_image(A, region='bj', name='a')",
    "replicate_new": "cloud.import_image(A, region='bj', name='a')",
    "delete": "cloud.import_image(A, region='bj', name='a'); "
              "cloud.import_image(B, region='bj', name='b')",
    "cancel": "cloud.import_image(A, region='bj', name='a')",
    "share": "cloud.add_account('team-b'); cloud.import_image(A, region='bj', name='a')",
    "rename": "cloud.import_image(A, region='bj', name='a')",
    "repack": "cloud.import_image(A, region='bj', name='a'); "
              "cloud.import_image(C, region='bj', name='c')",
    "export": "cloud.import_image(A, region='bj', name='a')",
    "scrub": "one_ = cloud.import_image(A, region='bj', name='a'); "
             "one_.replicate(['gz']).wait(timeout=120)",
}
SETUP["scrub_truncated"] = SETUP["scrub"]
# bj's store copied whole to another place (in the home: restored with it), where the
# region is then moved (docs/integrity.md, "One home per store").
SETUP["move_region"] = ("cloud.import_image(A, region='bj', name='a'); "
                        "__import__('shutil').copytree(home + '/regions/bj', home + '/bj2')")
SETUP["remove_region"] = "cloud.add_region('far', home + '/far')"
# Delta blocks (docs/data-plane-v2.md, "Delta blocks"): written, passed on by a copy, and
# kept by a sweep as the bases of a live image's deltas.
SETUP.update({
    "import_delta": "cloud.import_image(D, region='bj', name='d')",
    "replicate_delta": "d_ = cloud.import_image(D, region='bj', name='d'); "
                       "d_.replicate(['gz']).wait(timeout=120); "
                       "cloud.import_image(E, region='bj', name='e')",
    "delete_delta": "cloud.import_image(D, region='bj', name='d'); "
                    "cloud.import_image(E, region='bj', name='e')",
})
# On a home with an S3 region "sr" too (a bucket of its own on moto, put back with the home
# before each crash).
S3_SETUP = {
    "replicate_s3": "cloud.import_image(A, region='bj', name='a')",
    # a and c in the bucket; deleting a's copy leaves its pack a third alive: repacked.
    "delete_s3": "one_ = cloud.import_image(A, region='bj', name='a'); "
                 "two_ = cloud.import_image(C, region='bj', name='c'); "
                 "one_.replicate(['sr']).wait(timeout=120); "
                 "two_.replicate(['sr']).wait(timeout=120)",
}
SETUP.update(S3_SETUP)
OPS = {
    "import": "cloud.import_image(B, region='bj', name='b')",
    "replicate": "one('a').replicate(['gz']).wait(timeout=120)",
    "replicate_two": "one('a').replicate(['gz', 'su'], name='a2').wait(timeout=120)",
    # A region added just now: its directories are made by the copy's first write.
    "replicate_new": "cloud.add_region('far', home + '/regions/far'); "
                     "one('a').replicate(['far']).wait(timeout=120)",
    "delete": "one('a').delete()",
    # Cancelled as soon as it starts: the copy may have written some blocks, or none.
    "cancel": "job = one('a').replicate(['gz']); job.cancel(); job.wait(timeout=120)",
    "share": "img = one('a'); img.share('team-b'); img.unshare('team-b'); img.share('team-b')",
    "rename": "one('a').rename('renamed')",
    "repack": "one('a').delete()",
    "export": "one('a').export(EXPORT)",
    # A block of a in bj was damaged by hand (DAMAGE): quarantined, then fetched from gz.
    "scrub": "cloud.scrub('bj')",
    "scrub_truncated": "cloud.scrub('bj')",
    "replicate_s3": "one('a').replicate(['sr']).wait(timeout=120)",
    "delete_s3": "[i for i in cloud.images(region='sr') if i.name == 'a'][0].delete()",
    "import_delta": "cloud.import_image(E, region='bj', name='e')",
    "replicate_delta": "one('e').replicate(['gz']).wait(timeout=120)",
    "delete_delta": "one('d').delete()",
    "move_region": "cloud.move_region('bj', home + '/bj2')",
    "remove_region": "cloud.remove_region('far')",
}
# What a user does after such a crash before relying on the result: export again (the
# stale temporary file goes), scrub again (the damage is still there to find), add the
# region again if it was not added.
AGAIN = {
    "export": "one('a').export(EXPORT, force=True)",
    "replicate_new": "[r for r in cloud.regions if r.id == 'far'] or "
                     "cloud.add_region('far', home + '/regions/far')",
    "scrub": "cloud.scrub('bj')",
    "scrub_truncated": "cloud.scrub('bj')",
    # The move finished (a crash left the region where it was, its store claimed again).
    "move_region": "cloud.region('bj').store.endswith('/bj2') or "
                   "cloud.move_region('bj', home + '/bj2')",
    "remove_region": "[r for r in cloud.regions if r.id == 'far'] and cloud.remove_region('far')",
}
# The fail points each operation must pass (a test below checks that together they pass
# every fail point there is, but the ones in NOT_PASSED).
PASSES = {
    "import": {"catalog.commit", "catalog.committed", "pack.synced", "pack.renamed",
               "index.commit", "index.committed", "file.synced", "file.renamed"},
    "replicate": {"catalog.commit", "pack.synced", "pack.renamed", "index.commit",
                  "file.synced", "file.renamed"},
    "replicate_two": {"catalog.commit", "pack.synced", "pack.renamed", "index.commit",
                      "file.synced", "file.renamed"},
    "replicate_new": {"store.dir_created", "catalog.commit", "pack.synced", "file.synced"},
    "delete": {"catalog.commit", "store.delete", "index.commit"},
    "cancel": {"catalog.commit"},
    "share": {"catalog.commit", "catalog.committed"},
    "rename": {"catalog.commit", "file.synced", "file.renamed"},
    "repack": {"store.delete", "pack.synced", "pack.renamed", "index.commit"},
    "export": {"export.synced", "export.renamed"},
    "scrub": {"index.commit", "file.synced", "file.renamed", "pack.synced", "catalog.commit"},
    "scrub_truncated": {"store.quarantine", "pack.synced", "index.commit", "catalog.commit"},
    "replicate_s3": {"s3.write", "s3.written", "index.commit", "catalog.commit"},
    "delete_s3": {"s3.write", "s3.written", "index.commit", "catalog.commit"},
    "import_delta": {"catalog.commit", "pack.synced", "pack.renamed", "index.commit",
                     "file.synced", "file.renamed"},
    "replicate_delta": {"catalog.commit", "pack.synced", "pack.renamed", "index.commit",
                        "file.synced", "file.renamed"},
    "delete_delta": {"catalog.commit", "store.delete", "index.commit"},
    "move_region": {"file.synced", "file.renamed", "catalog.commit"},
    "remove_region": {"file.synced", "file.renamed", "catalog.commit"},
}
NOT_PASSED = {
    "catalog.migrate": "a home of an older schema: tests/cpp/upgrade_test.cpp",
    "chunk.synced": "writes of the first release's chunk layout, which only tests still make",
    "index.migrated": "a block index of an earlier release: tests/python/test_index_format.py",
}

CHILD = textwrap.dedent("""
    import sys
    import imagerelay as ir
    home, A, B, C, D, E, EXPORT, code = sys.argv[1:9]
    with ir.open(home) as cloud:
        def one(name):
            (image,) = [i for i in cloud.images() if i.name == name]
            return image
        exec(code)
""")


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    d = tmp_path_factory.mktemp("crash-sources")
    a = os.urandom(3 * 1024 * 1024)
    b = a[:1024 * 1024] + os.urandom(1024 * 1024) + a[2 * 1024 * 1024:]
    c = a[:1024 * 1024] + os.urandom(2 * 1024 * 1024)
    for name, data in (("a", a), ("b", b), ("c", c)):
        (d / f"{name}.raw").write_bytes(data)
    text = make_words(d / "d.raw", 48, seed=21)
    edited(text, d / "e.raw", seed=22)
    files = [a, b, c, (d / "d.raw").read_bytes(), (d / "e.raw").read_bytes()]
    return d, {"sha256:" + hashlib.sha256(x).hexdigest() for x in files}


def export_target(home: Path) -> Path:
    return home.parent / "exports" / "a.raw"


def run_child(home: Path, sources: Path, code: str, env_extra: dict[str, str]):
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGERELAY_FAIL")}
    env.update(env_extra)
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(home)]
        + [str(sources / f"{name}.raw") for name in "abcde"]
        + [str(export_target(home)), code], env=env, capture_output=True, text=True, timeout=300)


def damage(op: str, home: Path) -> None:
    """The scrubs' homes: image a's pack in bj damaged as a disk would, a byte of one block
    flipped (the block is set aside), or the pack cut short in its middle and the region's
    block index lost (rebuilt from the packs' footers; the cut pack is set aside)."""
    if op not in ("scrub", "scrub_truncated"):
        return
    with ir.open(home) as cloud:
        (a,) = [i for i in cloud.images(region="bj") if i.name == "a"]
    blocks = [h for h in read_manifest(manifest_path(home, "bj", a.id))["chunks"] if h]
    if op == "scrub":
        damage_block(home, "bj", blocks[0])
    else:
        damage_block(home, "bj", blocks[len(blocks) // 2], how="truncate")
        shutil.rmtree(region_root(home, "bj") / "index")


def check_export(home: Path, sources: Path, where: str) -> None:
    """A crashed export leaves the target as it was (absent) or whole, never part of it."""
    target = export_target(home)
    if target.exists():
        assert target.read_bytes() == (sources / "a.raw").read_bytes(), \
            f"the export target holds wrong bytes {where}"


def check_after_export(home: Path, sources: Path, where: str) -> None:
    target = export_target(home)
    assert target.read_bytes() == (sources / "a.raw").read_bytes(), where
    left = [p.name for p in target.parent.iterdir() if p != target]
    assert not left, f"the export again left {left} {where}"


def check_store_released(op: str, home: Path, where: str) -> None:
    """A region moved or removed at last leaves its old store to no home, whatever crash
    came between (a marker left naming this home would refuse the store to any other)."""
    old = {"move_region": home / "regions" / "bj", "remove_region": home / "far"}.get(op)
    if old is None:
        return
    assert '"home"' not in (old / ".imagerelay-store").read_text(), f"still marked {where}"
    if op == "move_region":
        assert '"home"' in (home / "bj2" / ".imagerelay-store").read_text(), where


def restore(template: Path, home: Path) -> None:
    """Puts the home back as SETUP left it. Always at the same path: the catalog names its
    regions' directories by their absolute paths."""
    shutil.rmtree(home, ignore_errors=True)
    shutil.rmtree(export_target(home).parent, ignore_errors=True)
    shutil.copytree(template, home, symlinks=True)
    export_target(home).parent.mkdir()


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with moto_server() as server:
        yield server


def copy_bucket(s3: S3Server, source: str, target: str) -> None:
    """Makes bucket ``target`` hold exactly what ``source`` holds."""
    client = s3.client()
    for key in s3.keys(target):
        client.delete_object(Bucket=target, Key=key)
    for upload in client.list_multipart_uploads(Bucket=target).get("Uploads", []):
        client.abort_multipart_upload(Bucket=target, Key=upload["Key"],
                                      UploadId=upload["UploadId"])
    for key in s3.keys(source):
        client.copy_object(Bucket=target, Key=key, CopySource={"Bucket": source, "Key": key})


@pytest.mark.parametrize("op", list(OPS))
def test_a_crash_at_every_durable_step_loses_nothing(op, sources, tmp_path, request):
    src, digests = sources
    home, template = tmp_path / "home", tmp_path / "template"
    export_target(home).parent.mkdir()
    buckets: list[tuple[S3Server, str, str]] = []
    if op in S3_SETUP:
        s3 = request.getfixturevalue("s3")
        bucket = "crash-" + op.replace("_", "-")
        s3.create_bucket(bucket)
        s3.create_bucket(bucket + "-template")
        buckets.append((s3, bucket, "relay"))
        with ir.open(home) as cloud:
            cloud.add_region("sr", f"s3://{bucket}/relay?endpoint={s3.endpoint}&region=us-east-1",
                             access_key_id=s3.access_key_id,
                             secret_access_key=s3.secret_access_key)
    done = run_child(home, src, SETUP[op] or "pass", {})
    assert done.returncode == 0, done.stderr
    damage(op, home)
    shutil.copytree(home, template, symlinks=True)
    for s3, bucket, _ in buckets:
        copy_bucket(s3, bucket, bucket + "-template")
    log = tmp_path / "steps"
    done = run_child(home, src, OPS[op], {"IMAGERELAY_FAIL_LOG": str(log)})
    assert done.returncode == 0, done.stderr
    steps = log.read_text().split()
    if op.endswith("_delta"):  # what these operations are about is there
        for region in ("bj", "gz") if op == "replicate_delta" else ("bj",):
            assert delta_bases(home, region), f"{op}: no delta block in {region}"
    missing = PASSES[op] - set(steps)
    assert not missing, f"{op} no longer passes {sorted(missing)}: {sorted(set(steps))}"
    # Opening the home passes the same first steps whatever follows: tried with the import,
    # skipped for the others.
    first = 1
    if op != "import":
        opened = tmp_path / "open-steps"
        done = run_child(home, src, "pass", {"IMAGERELAY_FAIL_LOG": str(opened)})
        assert done.returncode == 0, done.stderr
        first = len(opened.read_text().split()) + 1
    crashed = 0
    for n in range(first, len(steps) + 1, STRIDE):
        restore(template, home)
        for s3, bucket, _ in buckets:
            copy_bucket(s3, bucket + "-template", bucket)
        result = run_child(home, src, OPS[op], {"IMAGERELAY_FAIL_AT": f"*@{n}"})
        # Threads may order the steps differently run to run: a run that passed fewer steps
        # than counted ends normally.
        assert result.returncode in (FAIL_EXIT, 0), result.stderr
        crashed += result.returncode == FAIL_EXIT
        where = f"after a crash at step {n} ({steps[n - 1]}) during {op}"
        if op == "export":
            check_export(home, src, where)
        if op in AGAIN:
            done = run_child(home, src, AGAIN[op], {})
            assert done.returncode == 0, f"{AGAIN[op]} {where}: {done.stderr}"
        if op == "export":
            check_after_export(home, src, where)
        check_store_released(op, home, where)
        check_invariants(home, digests, where, buckets=buckets)
    assert crashed > 0


def test_the_operations_pass_every_fail_point():
    """Together the operations above crash at every fail point the code has, but the ones
    NOT_PASSED says why not (each operation's test checks it still passes its own)."""
    import re
    root = Path(__file__).resolve().parents[2]
    names = set()
    for path in (root / "cpp" / "src").rglob("*.cpp"):
        names.update(re.findall(r'FailPoint\("([a-z0-9_.]+)"\)', path.read_text()))
    passed = set().union(*PASSES.values())
    assert names - passed == set(NOT_PASSED), sorted(names - passed)


def test_every_fail_point_is_documented_and_every_durable_primitive_has_one():
    """A durable step added without a fail point fails here (issue #16)."""
    import re
    root = Path(__file__).resolve().parents[2]
    names = set()
    primitive = re.compile(r"::fsync\(|::fdatasync\(|::syncfs\(|::renameat2?\(|::unlinkat\(|"
                           r"FsyncDir\(|\"COMMIT\"")
    problems = []
    for path in sorted((root / "cpp" / "src").rglob("*.cpp")):
        lines = path.read_text().splitlines()
        names.update(re.findall(r'FailPoint\("([a-z0-9_.]+)"\)', "\n".join(lines)))
        function_start = 0
        for i, line in enumerate(lines):
            if line and not line[0].isspace() and line.rstrip().endswith("{") \
                    and not line.startswith(("namespace", "class", "struct", "enum")):
                function_start = i
            if not primitive.search(line) or line.lstrip().startswith("//") \
                    or not line[:1].isspace():  # a definition, not a use
                continue
            if "not a durable step" in line or "not a durable step" in lines[i - 1]:
                continue
            end = next((j for j in range(i, len(lines)) if lines[j].startswith("}")), len(lines))
            body = "\n".join(lines[function_start:end])
            if "FailPoint(" not in body:
                problems.append(f"{path.relative_to(root)}:{i + 1}: {line.strip()}")
    assert not problems, ("durable steps without a fail point (add one, or say why with "
                          "'not a durable step'):\n" + "\n".join(problems))
    doc = (root / "docs" / "reliability.md").read_text()
    documented = set(re.findall(r"^\| `([a-z0-9_.]+)` \|", doc, re.M))
    assert names == documented, (f"in the code only: {sorted(names - documented)}; "
                                 f"in docs/reliability.md only: {sorted(documented - names)}")
