"""The command line says everything the engine knows (issue #14): S3 credentials kept by
``regions add``, ``regions remove`` / ``accounts remove``, copies whose worker died shown as
waiting for one, every problem of a request, sizes for people, ``--version``, global options
after the subcommand, ``images list --name`` globs, ``events --since`` durations and
``--follow``, help on every option, and the README's first steps.

Run as test_cli.py runs commands: the ``imagerelay`` script in a subprocess where it matters
(prompts, environment, signals, other processes), ``cli.main`` in this process otherwise.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import pty
import queue
import re
import signal
import stat
import subprocess
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from conftest import CHILD_REPLICATE, PYTHON, read_result, wait_until
from s3_server import S3Server, moto_server
from test_cli import (
    ERROR_LINE,
    IMAGERELAY,
    MiB,
    child_env,
    fails,
    import_image,
    make_image,
    run,
    usage_error,
    wait_for_no_worker,
    worker_lock,
)

import imagerelay as ir
from imagerelay import cli

ROOT = Path(__file__).resolve().parents[2]


def json_of(stdout: str) -> Any:
    """The --json document on stdout (a rebuild notice before it is skipped)."""
    start = re.search(r"^[\[{]", stdout, re.M)
    assert start, f"no JSON on stdout: {stdout!r}"
    return json.loads(stdout[start.start():])


def error_lines(stderr: str) -> list[tuple[str, str]]:
    """(code, message) of every ``error:`` line, in order."""
    out = []
    for line in stderr.splitlines():
        m = ERROR_LINE.match(line)
        if m:
            out.append((m.group(1), m.group(2)))
    return out


# -- --version, global options after the subcommand, help ---------------------------------
def test_version_prints_the_package_version(home: Path) -> None:
    proc = subprocess.run([IMAGERELAY, "--version"], capture_output=True, text=True,
                          env=child_env(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"imagerelay {importlib.metadata.version('imagerelay')}\n"
    assert not home.exists()


def test_a_command_that_runs_no_playbook_does_not_load_the_playbook_runner() -> None:
    # Every CLI command pays for what `import imagerelay.cli` loads: the playbook runner
    # (PyYAML) and asyncio come in only when a playbook runs or a wait is awaited.
    probe = ("import sys, imagerelay.cli, imagerelay as ir; "
             "print(sorted(m for m in ('yaml', 'asyncio', 'imagerelay.playbook') "
             "if m in sys.modules)); "
             "print(ir.Playbook.__module__, 'yaml' in sys.modules)")
    proc = subprocess.run([PYTHON, "-c", probe], capture_output=True, text=True,
                          env=child_env(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["[]", "imagerelay.playbook.book True"]


def test_global_options_after_the_subcommand(home: Path, tmp_path: Path) -> None:
    # Only after it, through the script: the home, the account and --json all apply.
    proc = subprocess.run([IMAGERELAY, "regions", "list", "--json", "--home", str(home)],
                          capture_output=True, text=True, env=child_env(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert [r["id"] for r in json_of(proc.stdout)] == ["bj", "gz", "su"]
    assert (home / "catalog.db").exists()

    image_id = import_image(home, make_image(tmp_path / "a.raw"))
    argv = ["images", "list", "--account", "team-b", "--home", str(home), "--json"]
    code, err = _main(argv)
    assert code == 1 and "NoSuchAccount" in err
    run(home, "accounts", "add", "team-b", inproc=True)
    out = _main_out(["images", "list", "--home", str(home), "--json"])
    assert [i["id"] for i in json.loads(out)] == [image_id]
    # Before and after: the one after the subcommand wins.
    out = _main_out(["--home", str(tmp_path / "elsewhere"), "--account", "team-b",
                     "images", "list", "--home", str(home), "--account", "default", "--json"])
    assert [i["id"] for i in json.loads(out)] == [image_id]
    assert not (tmp_path / "elsewhere").exists()
    # A subcommand's group takes them too: `jobs --json list`.
    assert json.loads(_main_out(["--home", str(home), "jobs", "--json", "list"])) == []


def _main(argv: list[str]) -> tuple[int, str]:
    import contextlib
    import io
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, err.getvalue()


def _main_out(argv: list[str]) -> str:
    import contextlib
    import io
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(argv) == 0
    return out.getvalue()


def _parsers(parser: argparse.ArgumentParser,
             path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, path + (name,))


def test_every_option_and_argument_has_help() -> None:
    missing = []
    for path, parser in _parsers(cli.build_parser()):
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            name = max(action.option_strings, key=len) if action.option_strings else action.dest
            if not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"imagerelay {' '.join(path)} {name}".replace("  ", " "))
    assert not missing, f"options without help text: {missing}"


def test_import_help_explains_each_option(home: Path) -> None:
    text = " ".join(run(home, "import", "--help", as_json=False, inproc=True).stdout.split())
    for words in ("the region to keep the image in", "1-65 characters", "default linux",
                  "default x86_64", "(default: what its header says)", "up to 1024 characters",
                  "--home", "--json"):
        assert words in text, f"{words!r} missing from import --help:\n{text}"


# -- every problem, sizes for people -------------------------------------------------------
def test_every_problem_of_a_request_is_printed(home: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing.raw"
    args = ["import", str(missing), "--region", "nowhere", "--name", "1bad"]
    result = run(home, *args, as_json=False, expect=1, inproc=True)
    assert result.stdout == ""
    lines = error_lines(result.stderr)
    assert [c for c, _ in lines] == ["NoSuchRegion", "InvalidParameter", "InvalidParameter"]
    assert "nowhere" in lines[0][1] and "1bad" in lines[1][1] and "missing.raw" in lines[2][1]
    assert len(result.stderr.strip().splitlines()) == 3  # nothing else
    # --json: the same error, every problem, on stdout as well.
    result = run(home, *args, expect=1, inproc=False)
    error = result.data["error"]
    assert error["code"] == "NoSuchRegion" and error["http_status"] == 404
    assert [p["code"] for p in error["problems"]] == ["NoSuchRegion", "InvalidParameter",
                                                      "InvalidParameter"]
    assert [(p["code"], p["message"]) for p in error["problems"]] == error_lines(result.stderr)


def test_the_size_error_gives_units_the_limit_and_what_to_do(home: Path,
                                                              tmp_path: Path) -> None:
    big = tmp_path / "big.raw"
    with open(big, "wb") as f:
        f.truncate(600 * 2**30)  # sparse: costs nothing on disk
    message = fails(home, "Image.LargeImageImportForbidden", "import", str(big), "--region",
                    "bj", "--name", "big", as_json=False)
    assert "holds a disk of 600.0 GiB (644245094400 bytes)" in message, message
    assert "over the import limit of 500.0 GiB (536870912000 bytes)" in message, message
    assert "import a smaller disk, or open the home with a higher Limits.max_import_bytes" \
        in message
    assert run(home, "images", "list", inproc=True).data == []


def test_sizes_are_for_people_in_tables(home: Path, tmp_path: Path) -> None:
    image_id = import_image(home, make_image(tmp_path / "a.raw", 3 * MiB // 2))
    text = run(home, "images", "list", as_json=False, inproc=True).stdout
    assert re.search(rf"^{image_id}\s.*\s1\.5 MiB\s", text, re.M), text
    line = run(home, "import", str(tmp_path / "a.raw"), "--region", "gz", "--name", "b",
               as_json=False, inproc=True).stdout
    assert ": 1.5 MiB, sha256:" in line, line


# -- images list --name with a glob --------------------------------------------------------
def test_images_list_name_takes_a_glob(home: Path, tmp_path: Path) -> None:
    source = make_image(tmp_path / "a.raw")
    ids = {name: import_image(home, source, name) for name in ("golden-1", "golden-2", "other")}

    def names(pattern: str) -> list[str]:
        return sorted(i["name"] for i in run(home, "images", "list", "--name", pattern,
                                             inproc=True).data)

    assert names("golden-1") == ["golden-1"]  # an exact name still works
    assert names("golden-*") == ["golden-1", "golden-2"]
    assert names("g?lden-[12]") == ["golden-1", "golden-2"]
    assert names("*") == ["golden-1", "golden-2", "other"]
    assert names("Golden-*") == []  # case-sensitive
    assert names("nothing*") == []
    text = run(home, "images", "list", "--name", "*-2", as_json=False, inproc=True).stdout
    assert ids["golden-2"] in text and ids["golden-1"] not in text


# -- events: --since durations and times, --follow -----------------------------------------
def test_events_since_a_duration_or_a_time(home: Path, tmp_path: Path) -> None:
    import_image(home, make_image(tmp_path / "a.raw"))
    every = run(home, "events", inproc=True).data
    assert len(every) >= 2
    for since in ("1h", "2d", "90m", "1h30m", "1w", "3600s"):
        assert run(home, "events", "--since", since, inproc=True).data == every, since
    assert run(home, "events", "--since", "0s", inproc=True).data == []
    first = datetime.fromisoformat(every[0]["time"])
    past = (first - timedelta(minutes=1)).astimezone(timezone(timedelta(hours=8)))
    assert run(home, "events", "--since", past.isoformat(), inproc=True).data == every
    naive_utc = (first - timedelta(minutes=1)).replace(tzinfo=None).isoformat()
    assert run(home, "events", "--since", naive_utc, inproc=True).data == every
    future = (datetime.now(timezone.utc) + timedelta(days=1)).date().isoformat()
    assert run(home, "events", "--since", future, inproc=True).data == []
    assert run(home, "events", "--since", str(every[0]["seq"]), inproc=True).data == every[1:]
    message = usage_error(home, "events", "--since", "yesterday")
    assert "duration (30s, 15m, 1h, 2d)" in message and "ISO time" in message
    text = " ".join(run(home, "events", "--help", as_json=False, inproc=True).stdout.split())
    assert "30s, 15m, 1h, 2d" in text and "--follow" in text and "Ctrl-C" in text


class Lines:
    """Reads a child's stdout line by line on a thread; ``next()`` waits for one."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self._lines: queue.Queue[str | None] = queue.Queue()
        assert proc.stdout is not None
        stream = proc.stdout

        def read() -> None:
            for line in stream:
                self._lines.put(line)
            self._lines.put(None)

        threading.Thread(target=read, daemon=True).start()

        self._back: list[str] = []

    def next(self, timeout: float = 60) -> str | None:
        if self._back:
            return self._back.pop()
        return self._lines.get(timeout=timeout)

    def push_back(self, line: str) -> None:
        self._back.append(line)


@pytest.mark.serial  # Ctrl-C: xdist workers ignore SIGINT, and their children inherit that
@pytest.mark.parametrize("as_json", [True, False], ids=["json", "table"])
def test_events_follow_prints_new_events_until_ctrl_c(home: Path, tmp_path: Path,
                                                      as_json: bool) -> None:
    run(home, "regions", "add", "tmp-a", str(tmp_path / "a"), inproc=True)
    run(home, "regions", "add", "tmp-b", str(tmp_path / "b"), inproc=True)
    image_id = import_image(home, make_image(tmp_path / "a.raw"))
    last = run(home, "events", inproc=True).data[-1]["seq"]
    args = [IMAGERELAY, "--home", str(home), "events", "--follow", "--since", str(last - 1)]
    proc = subprocess.Popen(args + (["--json"] if as_json else []), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=child_env())
    lines = Lines(proc)
    try:
        def event() -> dict[str, Any]:
            line = lines.next()
            assert line is not None, proc.stderr.read() if proc.stderr else ""
            if as_json:
                return json.loads(line)
            cells = line.split()
            return {"seq": int(cells[0]), "type": cells[3]}

        first = lines.next()
        while first is not None and not first.startswith("{" if as_json else "SEQ"):
            first = lines.next()  # a rebuild notice of the editable install
        assert first is not None
        if as_json:
            lines.push_back(first)
        else:
            assert first.split()[:3] == ["SEQ", "TIME", "(UTC)"]
            assert set(lines.next().strip()) <= {"-", " "}
        assert event()["seq"] == last  # what there was, from --since on
        # Then what happens, as it happens, from other processes.
        run(home, "regions", "remove", "tmp-a", inproc=True)
        removed = event()
        assert removed["type"] == "region.removed" and removed["seq"] > last
        if as_json:
            assert removed["region"] == "tmp-a"
            assert removed["detail"] == {"name": "tmp-a", "store": str(tmp_path / "a")}
        run(home, "rename", image_id, "renamed", inproc=False)
        assert event()["type"] == "image.renamed"
        run(home, "regions", "remove", "tmp-b", inproc=True)
        assert event()["type"] == "region.removed"
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=30)
    assert code == 0  # Ctrl-C is how --follow ends
    err = proc.stderr.read() if proc.stderr else ""
    assert "Traceback" not in err and "error:" not in err, err


# -- regions remove, accounts remove -------------------------------------------------------
def test_regions_remove_refuses_while_in_use(home: Path, tmp_path: Path) -> None:
    fails(home, "NoSuchRegion", "regions", "remove", "nowhere")
    run(home, "regions", "add", "hk", str(tmp_path / "hk-store"), inproc=True)
    image_id = import_image(home, make_image(tmp_path / "a.raw"), region="hk")
    message = fails(home, "Region.InUse", "regions", "remove", "hk", as_json=False)
    assert image_id in message and "delete them first" in message, message
    assert "hk" in [r["id"] for r in run(home, "regions", "list", inproc=True).data]

    # A copy in flight from it: both rules, both lines.
    with worker_lock(home):  # no worker: the copy stays queued
        job = run(home, "replicate", image_id, "--to", "gz", inproc=True).data
        copy = job["tasks"]["gz"]["dest_image_id"]
        result = run(home, "regions", "remove", "gz", expect=1, inproc=True)
        lines = error_lines(result.stderr)
        assert [c for c, _ in lines] == ["Region.InUse", "Region.InUse"], result.stderr
        assert copy in lines[0][1] and job["id"] in lines[1][1]
        assert "wait for them or cancel them" in lines[1][1]
        assert [p["code"] for p in result.data["error"]["problems"]] == ["Region.InUse"] * 2
        run(home, "cancel", copy, inproc=True)
    run(home, "delete", image_id, inproc=True)
    assert run(home, "regions", "remove", "hk").data == {"removed": "hk"}
    assert "hk" not in [r["id"] for r in run(home, "regions", "list", inproc=True).data]
    assert (tmp_path / "hk-store").is_dir()  # its store's files stay
    event = run(home, "events", inproc=True).data[-1]
    assert (event["type"], event["region"], event["account"]) == ("region.removed", "hk",
                                                                  "default")
    assert run(home, "regions", "remove", "su", as_json=False, inproc=True).stdout == \
        "removed region su\n"
    fails(home, "NoSuchRegion", "regions", "remove", "su")
    # The id can be used again.
    assert run(home, "regions", "add", "hk", str(tmp_path / "hk-2"), inproc=True).data["id"] == "hk"


def test_accounts_remove_refuses_while_in_use(home: Path, tmp_path: Path) -> None:
    fails(home, "NoSuchAccount", "accounts", "remove", "nobody")
    for account in ("team-b", "team-c"):
        run(home, "accounts", "add", account, inproc=True)
    image_id = import_image(home, make_image(tmp_path / "a.raw"))
    run(home, "share", image_id, "team-c", inproc=True)
    message = fails(home, "Account.InUse", "accounts", "remove", "team-c")
    assert image_id in message and "unshare" in message, message
    theirs = run(home, "import", str(tmp_path / "a.raw"), "--region", "bj", "--name", "b",
                 account="team-b", inproc=True).data["id"]
    message = fails(home, "Account.InUse", "accounts", "remove", "team-b", as_json=False)
    assert theirs in message and "delete them first" in message, message

    run(home, "unshare", image_id, "team-c", inproc=True)
    assert run(home, "accounts", "remove", "team-c").data == {"removed": "team-c"}
    assert [a["id"] for a in run(home, "accounts", "list", inproc=True).data] == \
        ["default", "team-b"]
    fails(home, "NoSuchAccount", "images", "list", account="team-c")
    event = run(home, "events", inproc=True).data[-1]
    assert event["type"] == "account.removed" and event["detail"] == {"account": "team-c",
                                                                     "name": "team-c"}
    run(home, "delete", theirs, account="team-b", inproc=True)
    assert run(home, "accounts", "remove", "team-b", as_json=False,
               inproc=True).stdout == "removed account team-b\n"


def test_the_python_api_behind_these_commands(cloud: ir.Cloud, tmp_path: Path) -> None:
    cloud.add_region("hk", tmp_path / "hk")
    image = cloud.import_image(make_image(tmp_path / "a.raw"), region="hk", name="a")
    with pytest.raises(ir.ConflictError) as excinfo:
        cloud.dry_run.remove_region("hk")
    assert excinfo.value.code == "Region.InUse" and excinfo.value.http_status == 409
    with pytest.raises(ir.NotFoundError):
        cloud.remove_account("nobody")
    cloud.delete_image(image.id)
    cloud.dry_run.remove_region("hk")  # passes, changes nothing
    assert "hk" in [r.id for r in cloud.regions]
    cloud.remove_region("hk")
    assert "hk" not in [r.id for r in cloud.regions]

    every = cloud.events()
    assert cloud.events(since=timedelta(hours=1)) == every
    assert cloud.events(since=every[0].time) == every
    assert cloud.events(since=every[0].time.replace(tzinfo=None)) == every  # naive: UTC
    assert cloud.events(since=datetime.now(timezone.utc) + timedelta(hours=1)) == []
    assert cloud.wait_events(since=every[-1].seq, timeout=0.1) == []
    assert [e.type for e in cloud.wait_events(since=every[-2].seq)] == [every[-1].type]
    assert cloud.copies_waiting_for_a_worker() == []
    with pytest.raises(ir.ValidationError):
        cloud.events(since="1h")  # type: ignore[arg-type]


# -- a copy whose worker was killed --------------------------------------------------------
def test_a_copy_whose_worker_was_killed_shows_as_waiting_for_a_worker(
        home: Path, tmp_path: Path) -> None:
    image_id = import_image(home, make_image(tmp_path / "a.raw", 8 * MiB))
    with worker_lock(home):  # so that no command starts a worker until we want one
        child = subprocess.Popen([PYTHON, "-c", CHILD_REPLICATE, str(home), image_id,
                                  str(MiB), "gz"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            started = read_result(child)
            wait_until(lambda: run(home, "jobs", "show", started["job"], inproc=True)
                       .data["tasks"]["gz"]["bytes_done"] > 0, timeout=60)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
            for stream in (child.stdout, child.stderr):
                if stream:
                    stream.close()
        job_id, dest = started["job"], started["dest"]

        shown = run(home, "jobs", "show", job_id, inproc=True).data
        assert shown["state"] == "Running" and shown["tasks"]["gz"]["waiting_for_worker"]
        text = run(home, "jobs", "list", as_json=False, inproc=True).stdout
        assert re.search(rf"^{job_id}\s.*\sRunning \(waiting for a worker\)\s+\d+%$", text,
                         re.M), text
        assert (f"{job_id}: the copy to gz waits for a worker (the one running it stopped, "
                "or none runs); run `imagerelay worker` to resume it, or `imagerelay jobs "
                f"wait {job_id}` to resume it and wait") in text, text
        text = run(home, "jobs", "show", job_id, as_json=False, inproc=True).stdout
        assert re.search(rf"^gz\s+{dest}\s+Running \(waiting for a worker\)\s", text, re.M)
        text = run(home, "images", "list", as_json=False, inproc=True).stdout
        assert re.search(rf"^{dest}\s.*Replicating \d+% \(waiting for a worker\)", text,
                         re.M), text

    # Now any command starts a background worker for it, and says so.
    text = run(home, "jobs", "list", as_json=False).stdout
    if "waiting for a worker" in text:  # unless the new worker took it over already
        assert "a background `imagerelay worker` was started to resume it (log: " \
               f"{home / 'worker.log'})" in text, text
    waited = run(home, "jobs", "wait", job_id, "--timeout", "120", inproc=False).data
    assert waited["state"] == "Completed"
    assert not waited["tasks"]["gz"]["waiting_for_worker"]
    assert run(home, "images", "show", dest, inproc=True).data["status"] == "Available"
    wait_for_no_worker(home)


# -- S3 credentials with regions add --------------------------------------------------------
@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with moto_server() as server:
        yield server


def _uri(s3: S3Server, bucket: str) -> str:
    s3.create_bucket(bucket)
    return f"s3://{bucket}/relay?endpoint={s3.endpoint}&region=us-east-1"


def _no_aws_env() -> dict[str, str]:
    return {k: v for k, v in child_env().items() if not k.startswith("AWS_")}


def _script(home: Path, *args: str, env: dict[str, str] | None = None,
            stdin: Any = subprocess.DEVNULL, input: str | None = None
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([IMAGERELAY, "--home", str(home), *args], capture_output=True,
                          text=True, env=env or _no_aws_env(), timeout=120,
                          **({"input": input} if input is not None else {"stdin": stdin}))


def _kept(home: Path, region: str) -> dict[str, str]:
    path = home / "credentials" / f"{region}.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data: dict[str, str] = json.loads(path.read_text())
    return data


def test_regions_add_keeps_s3_credentials_from_a_file_the_environment_or_a_prompt(
        home: Path, tmp_path: Path, s3: S3Server) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(s3.secret_access_key + "\n")
    secret_file.chmod(0o600)
    added = _script(home, "--json", "regions", "add", "s3f", _uri(s3, "cli-file"),
                    "--access-key-id", s3.access_key_id,
                    "--secret-access-key", f"file:{secret_file}")
    assert added.returncode == 0, added.stderr
    assert json_of(added.stdout)["id"] == "s3f" and "warning" not in added.stderr
    assert _kept(home, "s3f") == {"access_key_id": s3.access_key_id,
                                  "secret_access_key": s3.secret_access_key,
                                  "session_token": ""}
    listed = _script(home, "--json", "regions", "list")
    assert s3.secret_access_key not in listed.stdout + listed.stderr

    # A later copy, with no AWS_* variables at all, uses the kept credentials.
    image_id = import_image(home, make_image(tmp_path / "a.raw"))
    copied = _script(home, "--json", "replicate", image_id, "--to", "s3f", "--wait")
    assert copied.returncode == 0, copied.stderr
    assert json_of(copied.stdout)["state"] == "Completed"

    # From the environment of this moment; and from stdin (`file:-`).
    env = dict(_no_aws_env(), AWS_ACCESS_KEY_ID=s3.access_key_id,
               AWS_SECRET_ACCESS_KEY=s3.secret_access_key)
    assert _script(home, "regions", "add", "s3e", _uri(s3, "cli-env"),
                   "--credentials-from-env", env=env).returncode == 0
    assert _kept(home, "s3e")["secret_access_key"] == s3.secret_access_key
    assert _script(home, "regions", "add", "s3v", _uri(s3, "cli-env-opt"), "--access-key-id",
                   "env", "--secret-access-key", "env", env=env).returncode == 0
    assert _kept(home, "s3v")["access_key_id"] == s3.access_key_id
    assert _script(home, "regions", "add", "s3s", _uri(s3, "cli-stdin"), "--access-key-id",
                   s3.access_key_id, "--secret-access-key", "file:-",
                   input=s3.secret_access_key + "\n").returncode == 0
    assert _kept(home, "s3s")["secret_access_key"] == s3.secret_access_key

    # Asked for on a terminal, without echo.
    pid, fd = pty.fork()
    if pid == 0:  # the child: the terminal is its stdin, stdout and stderr
        os.execve(IMAGERELAY, [IMAGERELAY, "--home", str(home), "regions", "add", "s3p",
                               _uri(s3, "cli-prompt"), "--access-key-id", s3.access_key_id],
                  _no_aws_env())
    seen = _read_until(fd, b"secret access key for region s3p: ")
    os.write(fd, s3.secret_access_key.encode() + b"\n")
    seen += _read_until(fd, None)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, seen
    assert s3.secret_access_key.encode() not in seen  # not echoed
    assert b"added region s3p" in seen
    assert _kept(home, "s3p")["secret_access_key"] == s3.secret_access_key

    # Removing a region removes its credentials file.
    assert _script(home, "regions", "remove", "s3e").returncode == 0
    assert not (home / "credentials" / "s3e.json").exists()


def _read_until(fd: int, marker: bytes | None) -> bytes:
    """What the terminal shows until `marker` (None: until the child closes it)."""
    seen = b""
    while marker is None or marker not in seen:
        try:
            data = os.read(fd, 4096)
        except OSError:  # EIO: the child exited
            break
        if not data:
            break
        seen += data
    return seen


def test_regions_add_never_takes_a_secret_on_the_command_line(
        home: Path, tmp_path: Path, s3: S3Server) -> None:
    uri = _uri(s3, "cli-refused")
    given = _script(home, "regions", "add", "s3x", uri, "--access-key-id", s3.access_key_id,
                    "--secret-access-key", s3.secret_access_key)
    assert given.returncode == 1
    assert error_lines(given.stderr)[0][0] == "InvalidParameter"
    assert "never the secret itself" in given.stderr
    assert s3.secret_access_key not in given.stderr + given.stdout
    # No terminal to ask on: say what to give instead.
    asked = _script(home, "regions", "add", "s3x", uri, "--access-key-id", s3.access_key_id)
    assert asked.returncode == 1 and "--secret-access-key env or file:PATH" in asked.stderr
    missing = _script(home, "regions", "add", "s3x", uri, "--access-key-id", "k",
                      "--secret-access-key", f"file:{tmp_path / 'absent'}")
    assert missing.returncode == 1 and "absent" in missing.stderr
    unset = _script(home, "regions", "add", "s3x", uri, "--credentials-from-env")
    assert unset.returncode == 1 and "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in unset.stderr
    local = _script(home, "regions", "add", "lx", str(tmp_path / "lx"), "--access-key-id", "k",
                    "--secret-access-key", "env",
                    env=dict(_no_aws_env(), AWS_SECRET_ACCESS_KEY="s"))
    assert local.returncode == 1 and "only used by S3 regions" in local.stderr
    assert "s3x" not in _script(home, "regions", "list").stdout

    # Without credentials options: the environment of each later command, with a warning.
    env = dict(_no_aws_env(), AWS_ACCESS_KEY_ID=s3.access_key_id,
               AWS_SECRET_ACCESS_KEY=s3.secret_access_key)
    plain = _script(home, "regions", "add", "s3n", uri, env=env)
    assert plain.returncode == 0, plain.stderr
    assert plain.stderr.startswith("warning: region s3n keeps no credentials"), plain.stderr
    assert "--credentials-from-env" in plain.stderr
    assert not (home / "credentials" / "s3n.json").exists()


# -- the README's first steps --------------------------------------------------------------
def test_readme_starts_with_the_two_commands_then_shows_a_home_and_a_test_image() -> None:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"^```\n(.*?)^```", text, re.M | re.S)
    assert [line.split("#")[0].strip() for line in blocks[0].splitlines()] == \
        ["make demo", "make test"]
    assert text.index(blocks[0]) < 20  # right after the title
    first_steps = blocks[1]
    for words in ("IMAGERELAY_HOME", "--home", "truncate -s 1G disk.raw",
                  "qemu-img create -f qcow2 disk.qcow2 1G", "imagerelay import disk.raw"):
        assert words in first_steps, words
