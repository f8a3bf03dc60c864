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
from pathlib import Path

import pytest
from invariants import check_invariants

FAIL_EXIT = 86  # kFailPointExitCode
STRIDE = max(1, int(os.environ.get("IMAGERELAY_CRASH_STRIDE", "1")))

# The operations, as the child runs them on a home made by SETUP. The source files: a.raw
# (3 MiB of random bytes) and b.raw (a.raw with its middle MiB rewritten: shares blocks).
SETUP = {
    "import": "",
    "replicate": "cloud.import_image(A, region='bj', name='a')",
    "replicate_two": "cloud.import_image(A, region='bj', name='a')",
    "delete": "cloud.import_image(A, region='bj', name='a'); "
              "cloud.import_image(B, region='bj', name='b')",
    "cancel": "cloud.import_image(A, region='bj', name='a')",
    "share": "cloud.add_account('team-b'); cloud.import_image(A, region='bj', name='a')",
    "rename": "cloud.import_image(A, region='bj', name='a')",
}
OPS = {
    "import": "cloud.import_image(B, region='bj', name='b')",
    "replicate": "one('a').replicate(['gz']).wait(timeout=120)",
    "replicate_two": "one('a').replicate(['gz', 'su'], name='a2').wait(timeout=120)",
    "delete": "one('a').delete()",
    # Cancelled as soon as it starts: the copy may have written some blocks, or none.
    "cancel": "job = one('a').replicate(['gz']); job.cancel(); job.wait(timeout=120)",
    "share": "img = one('a'); img.share('team-b'); img.unshare('team-b'); img.share('team-b')",
    "rename": "one('a').rename('renamed')",
}

CHILD = textwrap.dedent("""
    import sys
    import imagerelay as ir
    home, A, B, code = sys.argv[1:5]
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
    (d / "a.raw").write_bytes(a)
    (d / "b.raw").write_bytes(b)
    return d, {"sha256:" + hashlib.sha256(x).hexdigest() for x in (a, b)}


def run_child(home: Path, sources: Path, code: str, env_extra: dict[str, str]):
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGERELAY_FAIL")}
    env.update(env_extra)
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(home), str(sources / "a.raw"), str(sources / "b.raw"),
         code], env=env, capture_output=True, text=True, timeout=300)


def restore(template: Path, home: Path) -> None:
    """Puts the home back as SETUP left it. Always at the same path: the catalog names its
    regions' directories by their absolute paths."""
    shutil.rmtree(home, ignore_errors=True)
    shutil.copytree(template, home, symlinks=True)


@pytest.mark.parametrize("op", list(OPS))
def test_a_crash_at_every_durable_step_loses_nothing(op, sources, tmp_path):
    src, digests = sources
    home, template = tmp_path / "home", tmp_path / "template"
    done = run_child(home, src, SETUP[op] or "pass", {})
    assert done.returncode == 0, done.stderr
    shutil.copytree(home, template, symlinks=True)
    log = tmp_path / "steps"
    done = run_child(home, src, OPS[op], {"IMAGERELAY_FAIL_LOG": str(log)})
    assert done.returncode == 0, done.stderr
    steps = log.read_text().split()
    assert steps, f"{op} passed no fail point"
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
        result = run_child(home, src, OPS[op], {"IMAGERELAY_FAIL_AT": f"*@{n}"})
        # Threads may order the steps differently run to run: a run that passed fewer steps
        # than counted ends normally.
        assert result.returncode in (FAIL_EXIT, 0), result.stderr
        crashed += result.returncode == FAIL_EXIT
        check_invariants(home, digests,
                         f"after a crash at step {n} ({steps[n - 1]}) during {op}")
    assert crashed > 0


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
