"""A PostgreSQL catalog (docs/scale-out.md): chosen by ``catalog=``, ``--catalog``,
$IMAGERELAY_CATALOG or the home's config.json; shared by homes as hosts would share it; its
password never shown; a server restart in the middle of a copy.

The server is a real one the tests start (tests/python/pg_server.py); each test gets a
database of its own. The end-to-end tests marked ``both_catalogs`` elsewhere run on it too.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import CHUNK, PYTHON, make_dense, new_pg_catalog, wait_until

import imagerelay as ir

MiB = 2**20
IMAGERELAY = str(Path(PYTHON).parent / "imagerelay")


@pytest.fixture
def catalog(pg_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A new database's URI; $IMAGERELAY_CATALOG unset, so each test says where it goes."""
    monkeypatch.delenv("IMAGERELAY_CATALOG", raising=False)
    return new_pg_catalog(pg_server)


def with_password(uri: str, password: str) -> str:
    """The URI with a password in it (the test server trusts 127.0.0.1 and ignores it)."""
    scheme, rest = uri.split("://", 1)
    user, host = rest.split("@", 1)
    return f"{scheme}://{user}:{password}@{host}"


def cli(home: Path, *args: str, expect: int = 0, env: dict[str, str] | None = None) -> Any:
    proc = subprocess.run([IMAGERELAY, "--home", str(home), "--json", *args],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})
    assert proc.returncode == expect, proc.stderr
    return proc


def test_two_homes_share_one_catalog(catalog: str, tmp_path: Path) -> None:
    """Two homes (as two hosts) on one catalog see the same images, jobs and events."""
    src = make_dense(tmp_path / "a.raw", 8 * CHUNK)
    limits = ir.Limits(chunk_size=CHUNK)
    with ir.open(tmp_path / "host-a", catalog=catalog, limits=limits) as a, \
            ir.open(tmp_path / "host-b", catalog=catalog, limits=limits) as b:
        assert a.catalog == catalog and b.catalog == catalog
        image = a.import_image(src, region="bj", name="shared")
        assert b.image(image.id).name == "shared"
        job = b.replicate(image.id, ["gz"])
        job.wait(timeout=60)
        assert a.job(job.id).state == "Completed"
        copy = a.image(job.tasks["gz"].dest_image_id)
        assert copy.export(tmp_path / "out.raw").read_bytes() == src.read_bytes()
        types_a = [(e.seq, e.type) for e in a.events()]
        assert types_a == [(e.seq, e.type) for e in b.events()]
        assert [s for s, _ in types_a] == list(range(types_a[0][0], types_a[0][0] + len(types_a)))
    # Neither home has a SQLite catalog of its own.
    assert not (tmp_path / "host-a" / "catalog.db").exists()
    assert not (tmp_path / "host-b" / "catalog.db").exists()


def test_catalog_from_the_environment_and_the_home_config(catalog: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.json").write_text(json.dumps({"catalog": catalog}))
    with ir.open(home) as cloud:
        assert cloud.catalog == catalog
        cloud.add_account("team-b")
    other = new_pg_catalog(catalog.rsplit("/", 1)[0])
    monkeypatch.setenv("IMAGERELAY_CATALOG", other)  # the environment wins over the config
    with ir.open(home) as cloud:
        assert cloud.catalog == other
        assert [a.id for a in cloud.accounts] == ["default"]
    with ir.open(home, catalog=catalog) as cloud:  # and the argument over both
        assert "team-b" in [a.id for a in cloud.accounts]


def test_a_bad_config_or_catalog_is_a_validation_error(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IMAGERELAY_CATALOG", raising=False)
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.json").write_text("{not json")
    with pytest.raises(ir.ValidationError) as excinfo:
        ir.open(home)
    assert excinfo.value.code == "InvalidParameter"
    assert "config.json" in excinfo.value.message
    (home / "config.json").write_text(json.dumps({"catalog": 5}))
    with pytest.raises(ir.ValidationError, match="catalog"):
        ir.open(home)
    (home / "config.json").unlink()
    with pytest.raises(ir.ValidationError) as excinfo:
        ir.open(home, catalog="mysql://root:hunter2@db/images")
    assert excinfo.value.code == "InvalidParameter"
    assert "hunter2" not in str(excinfo.value)
    assert "postgresql://" in excinfo.value.message


def test_the_password_is_never_shown(catalog: str, tmp_path: Path) -> None:
    secret = "S3cret-Pw-9d2f"
    uri = with_password(catalog, secret)
    home = tmp_path / "home"
    src = make_dense(tmp_path / "a.raw", 4 * CHUNK)
    with ir.open(home, catalog=uri, limits=ir.Limits(chunk_size=CHUNK)) as cloud:
        assert secret not in cloud.catalog and ":***@" in cloud.catalog
        assert secret not in repr(cloud) and ":***@" in repr(cloud)
        image = cloud.import_image(src, region="bj", name="img")
        job = cloud.replicate(image.id, ["gz"]).wait(timeout=60)
        events = json.dumps([e.detail for e in cloud.events()])
        assert secret not in events
    shown = cli(home, "--catalog", uri, "jobs", "show", job.id)
    assert json.loads(shown.stdout)["state"] == "Completed"
    assert secret not in shown.stdout + shown.stderr
    # A server that cannot be reached: the error names the catalog, not its password.
    closed = f"postgresql://someone:{secret}@127.0.0.1:1/images?connect_timeout=3"
    with pytest.raises(ir.TransferError) as excinfo:
        ir.open(tmp_path / "other", catalog=closed)
    assert excinfo.value.code == "Catalog.Unavailable"
    assert excinfo.value.http_status == 503
    assert secret not in str(excinfo.value)
    assert "postgresql://someone:***@127.0.0.1:1/images" in excinfo.value.message
    failed = cli(tmp_path / "other", "--catalog", closed, "images", "list", expect=1)
    assert "Catalog.Unavailable" in failed.stderr + failed.stdout
    assert secret not in failed.stderr + failed.stdout
    log = (home / "worker.log").read_text() if (home / "worker.log").exists() else ""
    assert secret not in log


def test_cli_catalog_option_and_background_worker(catalog: str, tmp_path: Path) -> None:
    """--catalog on every command; the background worker a command starts uses it too."""
    src = make_dense(tmp_path / "a.raw", 8 * CHUNK)
    home = tmp_path / "home"
    image = json.loads(cli(home, "--catalog", catalog, "import", str(src), "--region", "bj",
                           "--name", "cli").stdout)
    job = json.loads(cli(home, "--catalog", catalog, "replicate", image["id"], "--to",
                         "gz").stdout)

    def state() -> str:
        return str(json.loads(cli(home, "--catalog", catalog, "jobs", "show",
                                  job["id"]).stdout)["state"])

    wait_until(lambda: state() == "Completed", timeout=60)
    assert not (home / "catalog.db").exists()
    with ir.open(tmp_path / "elsewhere", catalog=catalog) as cloud:
        assert cloud.job(job["id"]).state == "Completed"


CHILD_COPY = """
import sys, json, imagerelay as ir
home, catalog, image_id = sys.argv[1:4]
with ir.open(home, catalog=catalog, limits=ir.Limits(chunk_size=65536, bandwidth=1 << 20)) as c:
    job = c.replicate(image_id, ["gz"])
    print("RESULT", json.dumps({"job": job.id}), flush=True)
    job.wait(timeout=120)
    print("RESULT", json.dumps({"state": c.job(job.id).state}), flush=True)
"""


def test_server_restart_mid_copy(pg_test_server: Any, catalog: str, tmp_path: Path) -> None:
    """PostgreSQL restarted while a copy runs: the worker reconnects and the copy finishes,
    moving each block once."""
    if pg_test_server is None:
        pytest.skip("the PostgreSQL server is not this session's to restart")
    # 16 s at the child's 1 MiB/s: still copying once the watcher has looked, on a busy
    # machine too.
    src = make_dense(tmp_path / "big.raw", 16 * MiB)
    home = tmp_path / "home"
    with ir.open(home, catalog=catalog, limits=ir.Limits(chunk_size=CHUNK)) as cloud:
        image = cloud.import_image(src, region="bj", name="big")
    child = subprocess.Popen([sys.executable, "-c", CHILD_COPY, str(home), catalog, image.id],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        first = json.loads(child.stdout.readline().split(" ", 1)[1])
        with ir.open(tmp_path / "watcher", catalog=catalog, start_workers=False) as watcher:
            wait_until(lambda: watcher.job(first["job"]).tasks["gz"].bytes_done > 0,
                       timeout=30)
            # Who copies what: the lease holder's host and pid, from any host.
            assert watcher.job(first["job"]).tasks["gz"].worker == \
                f"{socket.gethostname()}:{child.pid}"
        shown = json.loads(cli(tmp_path / "watcher", "--catalog", catalog, "jobs", "show",
                               first["job"]).stdout)
        assert shown["tasks"]["gz"]["worker"] == f"{socket.gethostname()}:{child.pid}"
        pg_test_server.restart()
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        assert json.loads(out.strip().splitlines()[-1].split(" ", 1)[1]) == {"state": "Completed"}
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    with ir.open(home, catalog=catalog, start_workers=False) as cloud:
        task = cloud.job(first["job"]).tasks["gz"]
        assert task.state == "Completed" and task.worker is None
        copy = cloud.image(task.dest_image_id)
        assert copy.export(tmp_path / "out.raw").read_bytes() == src.read_bytes()


def test_workers_on_two_hosts_share_the_queue(catalog: str, tmp_path: Path) -> None:
    """`imagerelay worker --catalog URI` on two homes (as two hosts) runs every queued copy,
    each exactly once."""
    limits = ir.Limits(chunk_size=CHUNK)
    with ir.open(tmp_path / "queue", catalog=catalog, start_workers=False,
                 limits=limits) as cloud:
        jobs = []
        for i in range(6):
            src = make_dense(tmp_path / f"{i}.raw", 4 * CHUNK)
            image = cloud.import_image(src, region="bj", name=f"img{i}")
            jobs.append(cloud.replicate(image.id, ["gz", "su"]).id)
    workers = [subprocess.Popen([IMAGERELAY, "--home", str(tmp_path / host), "--catalog",
                                 catalog, "worker", "--until-idle", "--concurrency", "1"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for host in ("host-a", "host-b")]
    for worker in workers:
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
    with ir.open(tmp_path / "queue", catalog=catalog, start_workers=False) as cloud:
        for job_id in jobs:
            job = cloud.job(job_id)
            assert job.state == "Completed", [t.error for t in job.tasks.values()]
            assert all(t.attempts == 1 for t in job.tasks.values())
        started = [e.image_id for e in cloud.events() if e.type == "task.started"]
        assert len(started) == len(set(started)) == 12
