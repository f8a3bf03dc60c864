"""The command line (API.md "Command line"), run as a user runs it: the ``imagerelay`` script
of the venv in a subprocess, ``--json`` for checking results, exit status 0 / 1 / 2.

Every command runs at least once as a subprocess. A subprocess costs ~0.5 s (most of it the
editable install's rebuild check on import), so the many further cases of one command (error
codes, filters, the table for people) call ``imagerelay.cli.main(argv)`` in this process
instead (``inproc=True``): the same function the script runs, with its output captured.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import io
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from imagerelay import cli

from conftest import damage_block, sha256_file

IMAGERELAY = str(Path(sys.executable).parent / "imagerelay")
ERROR_LINE = re.compile(r"^error: (\S+): (.+)$")
KiB = 1024
MiB = 2**20


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def data(self) -> Any:
        """The --json document on stdout (a rebuild notice before it is skipped)."""
        text = self.stdout
        start = re.search(r"^[\[{]", text, re.M)
        assert start, f"no JSON on stdout: {text!r}"
        return json.loads(text[start.start():])


def child_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if k not in ("IMAGERELAY_HOME", "IMAGERELAY_ACCOUNT")}


def run(home: Path, *args: str, account: str | None = None, as_json: bool = True,
        expect: int = 0, inproc: bool = False, stderr: Any = subprocess.PIPE,
        timeout: float = 120) -> Result:
    """``imagerelay --home HOME [--account A] [--json] ARGS``; asserts the exit status.

    ``inproc``: call ``cli.main(argv)`` here rather than run the script (a command that
    waits for copies would run them in this process: keep those in subprocesses).
    """
    argv = ["--home", str(home)]
    if account:
        argv += ["--account", account]
    if as_json:
        argv.append("--json")
    argv += args
    if inproc:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = cli.main(argv)
            except SystemExit as e:  # argparse: usage errors and --help
                code = e.code if isinstance(e.code, int) else 1
        result = Result(code, out.getvalue(), err.getvalue())
    else:
        proc = subprocess.run([IMAGERELAY, *argv], stdout=subprocess.PIPE, stderr=stderr,
                              stdin=subprocess.DEVNULL, text=True, timeout=timeout,
                              env=child_env())
        result = Result(proc.returncode, proc.stdout, proc.stderr or "")
    assert result.returncode == expect, (
        f"{' '.join(args)}: exit {result.returncode}, {expect} expected\n"
        f"--- stdout\n{result.stdout}--- stderr\n{result.stderr}")
    return result


def fails(home: Path, code: str, *args: str, account: str | None = None,
          as_json: bool = True, inproc: bool = True) -> str:
    """Runs a command that must fail: exit 1, ``error: <code>: <message>`` on stderr (then
    one more such line per further rule the request broke); on stdout nothing, or with
    ``--json`` the same error as JSON. Returns the message."""
    result = run(home, *args, account=account, as_json=as_json, expect=1, inproc=inproc)
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error:")]
    assert lines, f"no error line on stderr: {result.stderr!r}"
    matches = [ERROR_LINE.match(line) for line in lines]
    assert all(matches), f"not error lines: {lines!r}"
    m = matches[0]
    assert m and m.group(1) == code, lines[0]
    assert "Traceback" not in result.stderr, result.stderr
    if as_json:
        error = result.data["error"]
        assert error["code"] == code and error["message"] == m.group(2), error
        assert [(p["code"], p["message"]) for p in error["problems"]] == \
            [(x.group(1), x.group(2)) for x in matches if x]
    else:
        assert result.stdout == "", result.stdout
    return m.group(2)


def usage_error(home: Path, *args: str, inproc: bool = True) -> str:
    result = run(home, *args, expect=2, inproc=inproc)
    assert result.stdout == ""
    assert "usage: imagerelay" in result.stderr and "error:" in result.stderr, result.stderr
    return result.stderr


# -- files and stores ----------------------------------------------------------------------
def make_image(path: Path, size: int = 300 * KiB) -> Path:
    path.write_bytes(os.urandom(size))
    return path


def make_sparse_image(path: Path) -> Path:
    """9 MiB: data, a hole, data."""
    with open(path, "wb") as f:
        f.truncate(9 * MiB)
        f.write(os.urandom(100 * KiB))
        f.seek(8 * MiB + 5)
        f.write(os.urandom(100 * KiB))
    return path


def damage_first_chunk(home: Path, region: str, source: Path) -> None:
    """Flips a byte of the stored block holding the first 64 KiB (the default chunk size) of
    ``source``."""
    with open(source, "rb") as f:
        digest = hashlib.sha256(f.read(64 * KiB)).hexdigest()
    damage_block(home, region, digest)


@contextmanager
def worker_lock(home: Path) -> Iterator[None]:
    """Holds the home's worker lock: to the command line, a worker runs already, so a
    ``replicate`` without ``--wait`` starts none and its copies wait (Pending)."""
    with open(home / "worker.lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def wait_for_no_worker(home: Path, timeout: float = 30) -> None:
    """Waits until no worker holds the home's lock (a background worker exited)."""
    deadline = time.monotonic() + timeout
    with open(home / "worker.lock", "a+") as f:
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(f, fcntl.LOCK_UN)
                return
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"a worker of {home} still runs after {timeout} s")
                time.sleep(0.1)


# -- fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One home for the tests that only read or add: accounts team-b and team-c, and an
    image ``golden`` in bj imported through the command line."""
    base = tmp_path_factory.mktemp("cli")
    home = base / "home"
    source = make_image(base / "golden.raw")
    run(home, "accounts", "add", "team-b", "--name", "Team B")
    run(home, "accounts", "add", "team-c", inproc=True)
    image = run(home, "import", str(source), "--region", "bj", "--name", "golden",
                "--os-name", "ubuntu", "--os-version", "24.04", "--description", "the base").data
    return {"home": home, "base": base, "source": source, "image": image}


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def import_image(home: Path, source: Path, name: str = "img", region: str = "bj") -> str:
    image_id: str = run(home, "import", str(source), "--region", region, "--name", name,
                        inproc=True).data["id"]
    return image_id


# -- help and usage ------------------------------------------------------------------------
def _subparsers(parser: argparse.ArgumentParser,
                path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _subparsers(sub, path + (name,))


def test_help_of_every_command_shows_an_example(home: Path) -> None:
    commands = list(_subparsers(cli.build_parser()))
    expected = {("regions", "list"), ("regions", "add"), ("accounts", "list"),
                ("accounts", "add"), ("images", "list"), ("images", "show"), ("import",),
                ("replicate",), ("cancel",), ("jobs", "list"), ("jobs", "show"),
                ("jobs", "wait"), ("share",), ("unshare",), ("shared-users",), ("rename",),
                ("delete",), ("export",), ("events",), ("worker",), ("verify",), ("demo",)}
    assert expected <= set(commands), expected - set(commands)
    for path in commands:
        text = run(home, *path, "--help", as_json=False, inproc=True).stdout
        assert "usage: imagerelay" in text
        assert re.search(r"^example: imagerelay ", text, re.M), f"{' '.join(path)}: {text}"
        assert f"imagerelay {' '.join(path)}".strip() in text
    # The script itself, at the top and for a subcommand.
    for args in (["--help"], ["replicate", "--help"]):
        proc = subprocess.run([IMAGERELAY, *args], capture_output=True, text=True,
                              env=child_env(), timeout=60)
        assert proc.returncode == 0 and proc.stderr == ""
        assert "example: imagerelay" in proc.stdout
    assert not home.exists()  # --help touches no home


def test_bad_usage_exits_2(home: Path) -> None:
    assert "invalid choice: 'bogus'" in usage_error(home, "bogus", inproc=False)
    assert "--to" in usage_error(home, "replicate", "m-3k9x2q7a", inproc=False)
    usage_error(home)  # no command
    usage_error(home, "regions")  # no action
    assert "invalid choice: 'Bogus'" in usage_error(home, "images", "list", "--type", "Bogus")
    assert "--timeout" in usage_error(home, "jobs", "wait", "j-5d8s0a1b", "--timeout", "soon")
    usage_error(home, "share", "m-3k9x2q7a")  # no account
    usage_error(home, "export", "m-3k9x2q7a")  # no path
    assert "--since" in usage_error(home, "events", "--since", "yesterday")
    assert not home.exists()  # usage errors touch no home


# -- regions and accounts ------------------------------------------------------------------
def test_regions(home: Path, tmp_path: Path) -> None:
    regions = run(home, "regions", "list").data
    assert [r["id"] for r in regions] == ["bj", "gz", "su"]
    assert all(set(r) == {"id", "name", "store"} for r in regions)
    assert regions[0]["store"].endswith(str(Path("regions") / "bj"))

    added = run(home, "regions", "add", "hk", str(tmp_path / "hk-store"), "--name",
                "Hong Kong").data
    assert added["id"] == "hk" and added["name"] == "Hong Kong"
    assert "hk-store" in added["store"]
    assert "hk" in fails(home, "AlreadyExists", "regions", "add", "hk")
    assert run(home, "regions", "add", "sg", inproc=True).data["store"].endswith("sg")

    text = run(home, "regions", "list", as_json=False).stdout
    assert text.splitlines()[0].split() == ["REGION", "NAME", "STORE"]
    assert re.search(r"^hk\s+Hong Kong\s+\S*hk-store", text, re.M), text
    assert run(home, "regions", "add", "de", as_json=False, inproc=True).stdout.startswith(
        "added region de (")


def test_accounts(shared: dict[str, Any]) -> None:
    home = shared["home"]
    accounts = run(home, "accounts", "list").data
    assert accounts == [{"id": "default", "name": "default"},
                        {"id": "team-b", "name": "Team B"},
                        {"id": "team-c", "name": "team-c"}]
    assert "team-b" in fails(home, "AlreadyExists", "accounts", "add", "team-b")
    # An unknown acting account, through the script: exit 1 and the error line.
    assert "nobody" in fails(home, "NoSuchAccount", "images", "list", account="nobody",
                             inproc=False)
    text = run(home, "accounts", "list", as_json=False, inproc=True).stdout
    assert re.search(r"^team-b\s+Team B$", text, re.M), text


# -- import and images ---------------------------------------------------------------------
def test_import_and_images(shared: dict[str, Any]) -> None:
    home, image = shared["home"], shared["image"]
    assert image["id"].startswith("m-") and image["status"] == "Available"
    assert image["type"] == "Custom" and image["owner"] == "default"
    assert image["digest"] == sha256_file(shared["source"])
    assert image["size"] == shared["source"].stat().st_size
    assert (image["os_name"], image["os_version"], image["description"]) == \
        ("ubuntu", "24.04", "the base")
    assert image["created_at"].endswith("+00:00")

    assert run(home, "images", "show", image["id"]).data == image
    assert run(home, "images", "list", "--region", "bj", "--type", "Custom").data == [image]
    assert run(home, "images", "list", "--name", "golden", inproc=True).data == [image]
    assert run(home, "images", "list", "--region", "gz", inproc=True).data == []
    assert run(home, "images", "list", "--type", "System", inproc=True).data == []
    # team-b sees nothing of default's until it is shared.
    assert run(home, "images", "list", account="team-b", inproc=True).data == []
    fails(home, "NoSuchImage", "images", "show", image["id"], account="team-b")

    text = run(home, "images", "list", as_json=False).stdout
    assert text.splitlines()[0].split() == ["ID", "NAME", "REGION", "TYPE", "STATUS", "FORMAT",
                                            "DISK", "STORED", "OWNER", "DIGEST"]
    assert re.search(rf"^{image['id']}\s+golden\s+bj\s+Custom\s+Available\s", text, re.M)

    missing = shared["base"] / "missing.raw"
    assert "missing.raw" in fails(home, "InvalidParameter", "import", str(missing),
                                  "--region", "bj", "--name", "x")
    fails(home, "NoSuchRegion", "import", str(shared["source"]), "--region", "nowhere",
          "--name", "x")
    fails(home, "InvalidParameter", "import", str(shared["source"]), "--region", "bj",
          "--name", "not a name")
    line = run(home, "import", str(shared["source"]), "--region", "gz", "--name", "again",
               as_json=False).stdout
    assert re.match(r"imported m-\w+ \(again\) in gz: .*sha256:", line), line


# -- replicate, jobs, cancel, worker -------------------------------------------------------
def test_replicate_wait_and_jobs(shared: dict[str, Any]) -> None:
    home, image = shared["home"], shared["image"]
    job = run(home, "replicate", image["id"], "--to", "gz,su", "--wait").data
    assert job["id"].startswith("j-") and job["state"] == "Completed"
    assert job["source_image_id"] == image["id"] and job["source_region"] == "bj"
    assert job["progress"] == 100.0
    assert set(job["tasks"]) == {"gz", "su"}
    for region, task in job["tasks"].items():
        assert task["state"] == "Completed" and task["region"] == region
        assert task["bytes_done"] == task["bytes_total"] == image["size"]
        copy = run(home, "images", "show", task["dest_image_id"], inproc=True).data
        assert copy["region"] == region and copy["digest"] == image["digest"]
        assert copy["source_image_id"] == image["id"] and copy["status"] == "Available"

    # --to may repeat; --name names the copies; --client-token makes a retry return the job.
    args = ["replicate", image["id"], "--to", "gz", "--to", "su", "--name", "golden-copy",
            "--client-token", "tok-1", "--wait"]
    first = run(home, *args).data
    assert run(home, *args[:-1], inproc=True).data["id"] == first["id"]
    copy = run(home, "images", "show", first["tasks"]["gz"]["dest_image_id"], inproc=True).data
    assert copy["name"] == "golden-copy"
    fails(home, "IdempotentParameterMismatch", "replicate", image["id"], "--to", "gz",
          "--client-token", "tok-1")
    assert "nowhere" in fails(home, "Image.RegionNotSupportCopy", "replicate", image["id"],
                              "--to", "nowhere")
    fails(home, "NoSuchImage", "replicate", image["id"], "--to", "gz", account="team-b")

    jobs = run(home, "jobs", "list").data
    assert [j["id"] for j in jobs][:2] == [first["id"], job["id"]]  # newest first
    assert run(home, "jobs", "list", "--active", inproc=True).data == []
    assert run(home, "jobs", "show", job["id"]).data == job
    assert run(home, "jobs", "wait", job["id"]).data["state"] == "Completed"
    assert run(home, "jobs", "list", account="team-b", inproc=True).data == []  # the caller's
    fails(home, "NoSuchJob", "jobs", "show", job["id"], account="team-b")
    fails(home, "NoSuchJob", "jobs", "show", "j-00000000")
    assert "malformed" in fails(home, "InvalidParameter", "jobs", "show", "j-nope")

    text = run(home, "jobs", "show", job["id"], as_json=False, inproc=True).stdout
    assert re.search(rf"^{job['id']}\s+{image['id']}\s+bj\s+gz,su\s+Completed\s+100%$", text,
                     re.M), text
    text = run(home, "jobs", "list", as_json=False, inproc=True).stdout
    assert text.splitlines()[0].split() == ["JOB", "SOURCE", "FROM", "TO", "STATE", "PROGRESS"]


@pytest.mark.both_catalogs
def test_replicate_without_wait_leaves_the_copy_to_a_background_worker(
        home: Path, tmp_path: Path) -> None:
    image_id = import_image(home, make_sparse_image(tmp_path / "a.raw"))
    job = run(home, "replicate", image_id, "--to", "gz,su").data
    assert job["state"] == "Running"
    assert {t["state"] for t in job["tasks"].values()} <= {"Pending", "Running"}
    # The command has returned; a background `imagerelay worker --until-idle` copies.
    deadline = time.monotonic() + 60
    shown = run(home, "jobs", "show", job["id"])  # through the script once, then here
    while (state := shown.data["state"]) == "Running":
        assert time.monotonic() < deadline, "the background worker did not finish the job"
        time.sleep(0.1)
        shown = run(home, "jobs", "show", job["id"], inproc=True)
    assert state == "Completed"
    for task in job["tasks"].values():
        copy = run(home, "images", "show", task["dest_image_id"], inproc=True).data
        assert copy["status"] == "Available"
    assert (home / "worker.log").exists()
    wait_for_no_worker(home)  # `worker --until-idle` exits once idle


@pytest.mark.both_catalogs
def test_cancel_and_worker_until_idle(home: Path, tmp_path: Path) -> None:
    image_id = import_image(home, make_image(tmp_path / "a.raw"))
    with worker_lock(home):  # no worker: copies stay Pending
        job = run(home, "replicate", image_id, "--to", "gz").data
        dest = job["tasks"]["gz"]["dest_image_id"]
        active = run(home, "jobs", "list", "--active", inproc=True).data
        assert [j["id"] for j in active] == [job["id"]]
        assert run(home, "images", "show", dest, inproc=True).data["status"] == "Replicating"
        assert run(home, "cancel", dest).data == {"cancelled": dest}
        cancelled = run(home, "jobs", "show", job["id"], inproc=True).data
        assert cancelled["state"] == "Cancelled"
        assert cancelled["tasks"]["gz"]["state"] == "Cancelled"
        fails(home, "NoSuchImage", "images", "show", dest)  # a cancelled copy is no image
        assert run(home, "jobs", "list", "--active", inproc=True).data == []

        pending = run(home, "replicate", image_id, "--to", "su", inproc=True).data
        fails(home, "Image.ImageStatusForbidden", "cancel", image_id)  # not a copy
        assert "Replicating" in fails(home, "Image.ImageStatusForbidden", "replicate",
                                      image_id, "--to", "gz")

    # The queued copy: `worker --until-idle` runs it and exits.
    worker = run(home, "worker", "--until-idle", as_json=False)
    assert worker.stdout == ""
    assert run(home, "jobs", "show", pending["id"], inproc=True).data["state"] == "Completed"
    assert run(home, "cancel", pending["tasks"]["su"]["dest_image_id"], as_json=False,
               expect=1, inproc=True).stderr.startswith("error: Image.ImageStatusForbidden: ")


def test_jobs_wait_runs_the_copies(home: Path, tmp_path: Path) -> None:
    image_id = import_image(home, make_image(tmp_path / "a.raw"))
    with worker_lock(home):
        job = run(home, "replicate", image_id, "--to", "gz,su", inproc=True).data
    # No worker was started for the job; `jobs wait` runs the copies itself.
    waited = run(home, "jobs", "wait", job["id"], "--timeout", "60").data
    assert waited["state"] == "Completed" and waited["id"] == job["id"]
    text = run(home, "jobs", "wait", job["id"], as_json=False, inproc=True).stdout
    assert text.splitlines()[0].split() == ["JOB", "SOURCE", "FROM", "TO", "STATE", "PROGRESS"]


def test_a_failed_copy_exits_1(home: Path, tmp_path: Path) -> None:
    source = make_image(tmp_path / "a.raw")
    image_id = import_image(home, source)
    damage_first_chunk(home, "bj", source)
    result = run(home, "replicate", image_id, "--to", "gz", "--wait", expect=1)
    job = result.data  # the job is still printed, with its failed task
    assert job["state"] == "Failed"
    assert job["tasks"]["gz"]["error_code"] == "Transfer.IntegrityError"
    m = ERROR_LINE.match(result.stderr.strip().splitlines()[-1])
    assert m and m.group(1) == "Job.Failed" and job["id"] in m.group(2), result.stderr
    assert "gz: Transfer.IntegrityError" in m.group(2)

    waited = run(home, "jobs", "wait", job["id"], expect=1, inproc=True)
    assert waited.data["state"] == "Failed"
    assert waited.stderr.startswith("error: Job.Failed: ")
    copy = run(home, "images", "show", job["tasks"]["gz"]["dest_image_id"], inproc=True).data
    assert copy["status"] == "CreateFailed" and copy["error"]
    # The copy quarantined the corrupt chunk: verify finds it missing and says what to do.
    assert "run `imagerelay scrub`" in fails(home, "Transfer.IntegrityError", "verify", image_id,
                                             inproc=False)


def test_scrub_says_which_region_it_could_not_reach(home: Path, tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    run(home, "regions", "add", "far", str(disk / "store"), inproc=True)
    import_image(home, make_image(tmp_path / "a.raw"))
    disk.rename(tmp_path / "disk.away")  # its disk not mounted
    disk.mkdir()
    result = run(home, "scrub", as_json=False, expect=1, inproc=True)
    assert "far: not scrubbed: region store" in result.stdout, result.stdout
    assert "bj: " in result.stdout and "chunks checked" in result.stdout
    assert result.stderr.startswith("error: Region.StoreUnavailable: not every region was "
                                    "scrubbed: far: "), result.stderr
    assert "mount it" in fails(home, "Region.StoreUnavailable", "scrub", "--region", "far")
    assert list(disk.iterdir()) == []


# -- share, unshare, shared-users ----------------------------------------------------------
def test_share_unshare_shared_users(shared: dict[str, Any]) -> None:
    home, image_id = shared["home"], shared["image"]["id"]
    assert run(home, "share", image_id, "team-b", "team-c").data == \
        {"image": image_id, "accounts": ["team-b", "team-c"]}
    assert sorted(run(home, "shared-users", image_id).data) == ["team-b", "team-c"]
    seen = run(home, "images", "list", "--type", "Sharing", account="team-b").data
    assert [(i["id"], i["type"]) for i in seen] == [(image_id, "Sharing")]

    fails(home, "Image.AccountHasBeenShared", "share", image_id, "team-b")
    fails(home, "Image.CannotShareToOwner", "share", image_id, "default")
    fails(home, "Image.InvalidAccount", "share", image_id, "nobody")
    fails(home, "AccessDenied", "shared-users", image_id, account="team-b")
    fails(home, "AccessDenied", "share", image_id, "team-c", account="team-b")

    assert run(home, "unshare", image_id, "team-c").data == \
        {"image": image_id, "accounts": ["team-c"]}
    assert run(home, "shared-users", image_id, inproc=True).data == ["team-b"]
    fails(home, "Image.AccountNotShared", "unshare", image_id, "team-c")
    assert run(home, "images", "list", account="team-c", inproc=True).data == []
    assert run(home, "shared-users", image_id, as_json=False, inproc=True).stdout == "team-b\n"
    assert run(home, "unshare", image_id, "team-b", as_json=False, inproc=True).stdout == \
        f"unshared {image_id} with team-b\n"


# -- rename, delete, export, verify --------------------------------------------------------
@pytest.mark.both_catalogs
def test_rename_export_verify_delete(home: Path, tmp_path: Path) -> None:
    source = make_sparse_image(tmp_path / "a.raw")
    image_id = import_image(home, source)
    assert run(home, "rename", image_id, "golden-v2").data == \
        {"image": image_id, "name": "golden-v2"}
    assert run(home, "images", "show", image_id, inproc=True).data["name"] == "golden-v2"
    fails(home, "InvalidParameter", "rename", image_id, "not a name")

    target = tmp_path / "out" / "exported.raw"
    target.parent.mkdir()
    assert run(home, "export", image_id, str(target)).data == \
        {"image": image_id, "path": str(target)}
    assert target.read_bytes() == source.read_bytes()
    assert target.stat().st_blocks * 512 < target.stat().st_size  # sparse where zero

    digest = sha256_file(source)
    assert run(home, "verify", image_id).data == {"image": image_id, "digest": digest}
    assert run(home, "verify", image_id, as_json=False, inproc=True).stdout == \
        f"{image_id} ok: {digest}\n"

    assert run(home, "delete", image_id).data == {"deleted": image_id}
    fails(home, "NoSuchImage", "images", "show", image_id)
    fails(home, "NoSuchImage", "delete", image_id)
    fails(home, "NoSuchImage", "export", image_id, str(tmp_path / "again.raw"))


def test_export_refuses_an_existing_file_unless_force(home: Path, tmp_path: Path) -> None:
    source = make_image(tmp_path / "a.raw")
    image_id = import_image(home, source)
    target = tmp_path / "exported.raw"
    target.write_bytes(b"keep me")
    message = fails(home, "InvalidParameter", "export", image_id, str(target))
    assert str(target) in message and "--force" in message, message
    assert target.read_bytes() == b"keep me"
    assert run(home, "export", image_id, str(target), "--force", inproc=True).data == \
        {"image": image_id, "path": str(target)}
    assert target.read_bytes() == source.read_bytes()
    link = tmp_path / "link.raw"
    link.symlink_to(target)
    assert "symbolic link" in fails(home, "InvalidParameter", "export", image_id, str(link),
                                    "--force")
    assert link.is_symlink() and target.read_bytes() == source.read_bytes()


# -- events --------------------------------------------------------------------------------
def test_events(shared: dict[str, Any]) -> None:
    home, image_id = shared["home"], shared["image"]["id"]
    events = run(home, "events").data
    assert events and all(set(e) == {"seq", "time", "type", "account", "image_id", "job_id",
                                     "region", "detail"} for e in events)
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    types = [e["type"] for e in events if e["image_id"] == image_id]
    assert types[:2] == ["image.created", "image.available"]
    assert "task.progress" not in {e["type"] for e in events}  # never stored

    mine = run(home, "events", "--image", image_id).data
    assert mine and {e["image_id"] for e in mine} == {image_id}
    since = run(home, "events", "--since", str(seqs[1]), inproc=True).data
    assert [e["seq"] for e in since] == [s for s in seqs if s > seqs[1]]

    text = run(home, "events", "--since", str(seqs[-3]), as_json=False, inproc=True).stdout
    assert text.splitlines()[0].split()[:3] == ["SEQ", "TIME", "(UTC)"]
    assert len(text.splitlines()) == 2 + 2  # header, rule, the last two events


# -- terminals and pipes -------------------------------------------------------------------
def test_progress_bars_only_on_a_terminal(home: Path, tmp_path: Path) -> None:
    image_id = import_image(home, make_sparse_image(tmp_path / "a.raw"))
    # Not a TTY: no bars, nothing on stderr; the result table on stdout.
    quiet = run(home, "replicate", image_id, "--to", "gz", "--wait", as_json=False)
    assert quiet.stderr == "", quiet.stderr
    assert "Completed" in quiet.stdout and "%|" not in quiet.stdout

    # A terminal (80 columns) on stderr: one bar per destination.
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        run(home, "replicate", image_id, "--to", "su", "--wait", as_json=False, stderr=slave)
        run(home, "export", image_id, str(tmp_path / "tty.raw"), as_json=False, stderr=slave)
        run(home, "verify", image_id, as_json=False, stderr=slave)
    finally:
        os.close(slave)
        reader.join(timeout=10)
        os.close(master)
    bars = b"".join(chunks).decode(errors="replace")
    assert f"{image_id} -> su" in bars and "100%" in bars, bars
    assert f"export {image_id} -> tty.raw" in bars and f"verify {image_id}" in bars, bars

    quiet = run(home, "export", image_id, str(tmp_path / "pipe.raw"), as_json=False)
    assert quiet.stderr == "" and "wrote" in quiet.stdout, quiet.stderr


def test_a_closed_pipe_is_no_error(shared: dict[str, Any]) -> None:
    """``imagerelay events | head -1``: no traceback when the reader goes away."""
    proc = subprocess.Popen(
        [IMAGERELAY, "--home", str(shared["home"]), "--json", "events"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env())
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before the command writes its output
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


def test_long_work_without_a_terminal_logs_progress(home: Path, tmp_path: Path) -> None:
    """Issue #14: importing a large sparse file from a script or CI is not minutes of silence.
    Without a terminal, progress comes as lines on stderr every IMAGERELAY_PROGRESS_INTERVAL
    seconds (10 by default; 0 here, so that every report prints one); stdout keeps the
    result."""
    src = tmp_path / "big.raw"
    with open(src, "wb") as f:
        f.truncate(5 * 2**28)  # 1.25 GiB of holes: the digest comes after the data
        f.write(os.urandom(100 * KiB))
    env = dict(child_env(), IMAGERELAY_PROGRESS_INTERVAL="0")
    proc = subprocess.run([IMAGERELAY, "--home", str(home), "import", str(src), "--region",
                           "bj", "--name", "big"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr.splitlines()
    assert any(re.fullmatch(r"import big -> bj: 100% \(1\.2 GiB of 1\.2 GiB\)", line)
               for line in err), err
    image_id = re.search(r"imported (m-\w+)", proc.stdout).group(1)  # type: ignore[union-attr]
    note = [line for line in err if "computing its digest" in line]
    if note:  # else the digester had finished before the import's command looked
        assert "1.2 GiB" in note[0]
        assert f"digest {image_id}: 100% (1.2 GiB of 1.2 GiB)" in err, err
    assert "sha256:" in proc.stdout
