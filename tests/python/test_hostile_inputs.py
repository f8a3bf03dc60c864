"""Hostile inputs (issue #11): playbooks built to blow up the loader or the runner, and
numbers the C++ core cannot hold. Each answers the normal error (a PlaybookError naming the
file and line, a ValidationError ``InvalidParameter`` naming the argument), at once, and the
command line prints ``error: <code>: ...`` with exit status 1, never a traceback."""

from __future__ import annotations

import contextlib
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import CHUNK, make_dense
from deadline import deadline
from test_cli import fails

import imagerelay as ir
from imagerelay.playbook import PlaybookError

IMAGERELAY = str(Path(sys.executable).parent / "imagerelay")
INT64_MAX = 2**63 - 1


def within(seconds: float) -> contextlib.AbstractContextManager[None]:
    """Fails the block if it runs longer: before the fixes some of these ran for minutes."""
    return deadline(seconds)


def invalid(call: Any, *names: str) -> str:
    """``call()`` raises ValidationError InvalidParameter whose message names ``names``."""
    with within(5), pytest.raises(ir.ValidationError) as excinfo:
        call()
    err = excinfo.value
    assert err.code == "InvalidParameter" and err.http_status == 400, err
    for name in names:
        assert name in err.message, err.message
    return err.message


# -- playbooks: the YAML -------------------------------------------------------------------
def billion_laughs() -> str:
    """9 levels of 9 aliases: 9**9 values once expanded."""
    lines = ["name: lol", "vars:", "  l0: &l0 [" + ", ".join(["lol"] * 9) + "]"]
    for i in range(1, 9):
        lines.append(f"  l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    lines += ["steps:", "  - share: {image: m-12345678, accounts: *l8}"]
    return "\n".join(lines) + "\n"


def nested(depth: int) -> str:
    """A var that is ``depth`` lists, one in the other."""
    return (f"name: deep\nvars:\n  v: {'[' * depth}x{']' * depth}\n"
            "steps:\n  - delete: {image: m-1}\n")


def alias_chain(levels: int, per_level: int) -> str:
    """Anchors nested ``per_level`` deep, each inside the next: deep only once expanded."""
    lines = ["name: chain", "vars:", f"  a0: &a0 {'[' * per_level}x{']' * per_level}"]
    for i in range(1, levels):
        lines.append(f"  a{i}: &a{i} {'[' * per_level}*a{i - 1}{']' * per_level}")
    lines += ["steps:", "  - delete: {image: m-1}"]
    return "\n".join(lines) + "\n"


def long_strings() -> str:
    """A 100 KiB string aliased 200 times: 20 MiB of text for every later walk."""
    return ("name: text\nvars:\n  s: &s " + "x" * 100 * 1024 + "\n  many: ["
            + ", ".join(["*s"] * 200) + "]\nsteps:\n  - delete: {image: m-1}\n")


@pytest.mark.parametrize("text, problem, line", [
    (billion_laughs(), "more than 100,000 values", 8),
    (nested(5000), "nested more than 64 levels deep", 3),
    (alias_chain(5, 20), "nested more than 64 levels deep", 6),
    (long_strings(), "more than 16 MiB of text", 4),
    ("name: r\nvars:\n  v: &a [1, *a]\nsteps:\n  - delete: {image: m-1}\n",
     "found a recursive alias *a", 3),
    ("name: n\nsteps:\n  - wait: {image: m-1, timeout: " + "9" * 5000 + "}\n",
     "Exceeds the limit (4300 digits)", 3),
    ("name: d\nvars: {day: 2020-99-99}\nsteps:\n  - delete: {image: m-1}\n",
     "month must be in 1..12", 2),
], ids=["billion-laughs", "nested-5000", "alias-chain", "aliased-text", "recursive-alias",
        "huge-int", "bad-date"])
def test_hostile_yaml_is_a_playbook_error(tmp_path: Path, text: str, problem: str,
                                          line: int) -> None:
    path = tmp_path / "hostile.yaml"
    path.write_text(text)
    with within(5), pytest.raises(PlaybookError) as excinfo:
        ir.Playbook.load(path)
    err = excinfo.value
    assert err.code == "InvalidParameter"
    assert problem in err.message, err.message
    assert err.message.startswith(f"{path}:{line}:"), err.message
    assert (err.path, err.line) == (str(path), line)


def test_the_bounds_leave_room_for_real_playbooks() -> None:
    value = ir.Playbook.parse(nested(60)).vars["v"]
    for _ in range(60):
        value = value[0]
    assert value == "x"
    assert ir.Playbook.parse(alias_chain(3, 20)).vars["a2"]
    teams = ir.Playbook.parse(
        "name: t\nvars:\n  teams: &teams [team-b, team-c]\nsteps:\n"
        + "".join(f"  - share: {{image: m-{i}, accounts: *teams}}\n" for i in range(300)))
    assert [s.args["accounts"] for s in teams.steps] == [["team-b", "team-c"]] * 300


@pytest.mark.parametrize("source", ["file", "text"])
def test_a_playbook_over_1_mib_is_refused(tmp_path: Path, source: str) -> None:
    # (Playbook.load reads no more than that: not a test with /dev/zero, which would fill
    # the memory of the machine if that broke.)
    text = "name: big\nsteps:\n  - delete: {image: m-1}\n" + "#" * 2**20 + "\n"
    path = tmp_path / "big.yaml"
    path.write_text(text)
    with within(5), pytest.raises(PlaybookError, match="larger than 1 MiB"):
        if source == "text":
            ir.Playbook.parse(text)
        else:
            ir.Playbook.load(path)


@pytest.mark.parametrize("text", [billion_laughs(), nested(5000)], ids=["laughs", "nested"])
def test_the_command_line_answers_a_hostile_playbook_with_an_error(
        home: Path, tmp_path: Path, text: str) -> None:
    path = tmp_path / "hostile.yaml"
    path.write_text(text)
    for dry in ([], ["--dry-run"]):
        proc = subprocess.run([IMAGERELAY, "--home", str(home), "run", str(path), *dry],
                              capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)
        assert proc.returncode == 1, proc
        assert "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.startswith(f"error: InvalidParameter: {path}:"), proc.stderr
        assert proc.stdout == ""


# -- playbooks: ${...} references ----------------------------------------------------------
def dry_run(cloud: ir.Cloud, tmp_path: Path, vars_: str, steps: list[str]) -> PlaybookError:
    """Runs a playbook dry whose first step (``golden``) imports a small file and whose
    ``steps`` follow; returns its PlaybookError."""
    make_dense(tmp_path / "g.raw", CHUNK)
    path = tmp_path / "refs.yaml"
    path.write_text("name: refs\n" + vars_ + "steps:\n"
                    "  - id: golden\n    import: {source: g.raw, region: bj, name: g}\n"
                    + "".join(f"  - {s}\n" for s in steps))
    book = ir.Playbook.load(path)
    with within(5), pytest.raises(PlaybookError) as excinfo:
        book.run(cloud, dry_run=True)
    assert excinfo.value.message.startswith(f"{path}:"), excinfo.value.message
    return excinfo.value


def test_a_reference_pasted_many_times_is_bounded(cloud: ir.Cloud, tmp_path: Path) -> None:
    # 2,000 copies of a 10 KiB var in one name: 20 MiB from a 30 KiB playbook
    err = dry_run(cloud, tmp_path, f"vars: {{s: {'x' * 10240}}}\n",
                  ['assert: {image: "${golden.id}", name: "' + "${vars.s}" * 2000 + '"}'])
    assert "step #2 (assert): the ${...} references of this run resolve to more than 16 MiB" \
        in err.message, err.message
    assert (err.line, err.step) == (6, "#2")


def test_a_big_var_used_by_every_step_is_bounded(cloud: ir.Cloud, tmp_path: Path) -> None:
    # a 25,000-item list used by 6 steps: 150,000 values to walk and fingerprint
    items = ", ".join(f"a{i}" for i in range(25000))
    err = dry_run(cloud, tmp_path, f"vars: {{big: [{items}]}}\n",
                  ['assert: {image: "${golden.id}", description: "${vars.big}"}'] * 6)
    assert "step #5 (assert): the ${...} references of this run resolve to more than " \
           "100,000 values" in err.message, err.message


def test_nested_references_are_refused(cloud: ir.Cloud, tmp_path: Path) -> None:
    path = tmp_path / "nested.yaml"
    path.write_text('name: n\nvars: {a: x}\nsteps:\n  - delete: {image: "'
                    + "${vars." * 5000 + "a" + "}" * 5000 + '"}\n')
    with within(5), pytest.raises(PlaybookError, match="unterminated reference"):
        ir.Playbook.load(path)


@pytest.mark.parametrize("timeout", [".nan", ".inf", "1e999", '"nan"', "-1", "0", "true"])
def test_a_playbook_timeout_must_be_finite_and_positive(cloud: ir.Cloud, tmp_path: Path,
                                                        timeout: str) -> None:
    step = 'wait: {image: "${golden.id}", timeout: %s}' % timeout
    err = dry_run(cloud, tmp_path, "", [step])
    assert "step #2 (wait): timeout: expected a positive number of seconds" in err.message


# -- numbers of the Python API -------------------------------------------------------------
BAD_INTS = [2**70, -1, True, 1.5, "8", math.nan, 10**5000, None]
BAD_INT_IDS = ["2**70", "-1", "True", "1.5", "'8'", "nan", "10**5000", "None"]


@pytest.mark.parametrize("field", [f.name for f in ir.Limits.__dataclass_fields__.values()])
@pytest.mark.parametrize("value", BAD_INTS, ids=BAD_INT_IDS)
def test_limits_are_checked(home: Path, field: str, value: Any) -> None:
    if field == "bandwidth" and value is None:
        return  # None: no bandwidth cap
    message = invalid(lambda: ir.open(home, limits=ir.Limits(**{field: value})),
                      f"Limits.{field} must be an integer between")
    assert len(message) < 200
    assert not home.exists()


def test_limits_at_their_bounds(home: Path) -> None:
    top = ir.Limits(max_copy_bytes=INT64_MAX, max_import_bytes=INT64_MAX,
                    max_share_accounts=2**31 - 1, max_accepted_shares=0,
                    chunk_size=256 * 2**20, max_tasks_per_region=2**31 - 1,
                    buffer_memory=INT64_MAX, bandwidth=INT64_MAX)
    with ir.open(home, limits=top, start_workers=False) as cloud:
        assert cloud.limits == top
    invalid(lambda: ir.open(home, limits=ir.Limits(max_share_accounts=2**31)),
            "Limits.max_share_accounts", "2**31-1")
    invalid(lambda: ir.open(home, limits=ir.Limits(chunk_size=256 * 2**20 + 1)),
            "Limits.chunk_size")


@pytest.mark.parametrize("workers", [10**6, 1025, 0, True, 2.5, "4"], ids=repr)
def test_workers_are_checked(home: Path, workers: Any) -> None:
    invalid(lambda: ir.open(home, workers=workers), "workers must be an integer between 1 "
                                                   "and 1024")


@pytest.mark.parametrize("wrong", [{"name": 123}, {"access_key_id": 5}, {"region_id": 7},
                                   {"session_token": 42}, {"store": b"/bytes/path"},
                                   {"name": "bad\udcff"}])
def test_add_region_with_a_wrong_argument_never_shows_the_secret(cloud: ir.Cloud,
                                                               wrong: dict[str, Any]) -> None:
    """The binding's own TypeError showed every argument of the call, the secret among them
    (``add_region(..., name=123, secret_access_key=...)``): each is checked first, a secret
    never shown."""
    secret = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"
    args: dict[str, Any] = {"region_id": "s3x", "store": "s3://bkt?region=us-east-1",
                            "access_key_id": "AKIDEXAMPLE", "secret_access_key": secret,
                            "session_token": "tok-" + secret}
    args.update(wrong)
    field = next(iter(wrong))
    message = invalid(lambda: cloud.add_region(**args), field)
    assert "wJalrXUtnFEMI" not in message
    assert "s3x" not in {r.id for r in cloud.regions}
    # A secret of a wrong type is named by its type alone.
    message = invalid(lambda: cloud.add_region("s3y", "s3://bkt?region=us-east-1",
                                               secret_access_key=[secret]), "secret_access_key")
    assert "wJalrXUtnFEMI" not in message and "list" in message


def test_events_since_is_checked(cloud: ir.Cloud) -> None:
    for since in (2**70, INT64_MAX + 1, -1, True, 1.5, "3", None):
        invalid(lambda: cloud.events(since=since), "since must be an integer between 0 and")
    assert cloud.events(since=INT64_MAX) == []


BAD_TIMEOUTS = [math.nan, math.inf, -math.inf, -1, 10**400, True, "1", [1]]


def test_timeouts_are_checked(cloud: ir.Cloud, files: Path, home: Path) -> None:
    image = cloud.import_image(make_dense(files / "t.raw", 3 * CHUNK), region="bj", name="t")
    job = image.replicate("gz").wait()
    for timeout in BAD_TIMEOUTS:
        for call in (lambda: cloud.wait_idle(timeout), lambda: job.wait(timeout),
                     lambda: image.wait(timeout), lambda: image.wait_digest(timeout),
                     lambda: cloud.wait_digest(image.id, timeout),
                     lambda: job.wait(timeout, progress=True)):
            invalid(call, "timeout must be a finite number of seconds")
    assert cloud.wait_idle(10) and cloud.wait_idle(0)
    assert job.wait(0).state == "Completed" and image.wait(0.5).status == "Available"
    # the command line: error: InvalidParameter, exit 1
    for timeout in ("nan", "inf", "-1"):
        assert "timeout must be" in fails(home, "InvalidParameter", "jobs", "wait", job.id,
                                          "--timeout", timeout)


# -- numbers of the command line -----------------------------------------------------------
def test_events_since_overflow_on_the_command_line(home: Path) -> None:
    proc = subprocess.run([IMAGERELAY, "--home", str(home), "events", "--since",
                           "99999999999999999999999"], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)
    assert (proc.returncode, proc.stdout) == (1, ""), proc
    assert proc.stderr.startswith("error: InvalidParameter: since must be an integer between "
                                  "0 and 2**63-1, got 99999999999999999999999"), proc.stderr
    assert "since must be" in fails(home, "InvalidParameter", "events", "--since", "-1")


def test_demo_sizes_are_checked(home: Path) -> None:
    assert "virtual_gib must be" in fails(home, "InvalidParameter", "demo", "--virtual-gib",
                                          "-1")
