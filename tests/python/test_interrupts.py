"""Ctrl-C (or a notebook's interrupt) and close() stop long calls instead of waiting for
them: an import stops and ends CreateFailed with nothing stored, a wait returns control.
The progress of an import, an export and a verify reaches the caller from the same look for
signals.

The slow HTTP server below is a fake for the network (these tests are about stopping, not
about HTTP): it serves the start of an image, then stalls until the test ends.
"""

from __future__ import annotations

import http.server
import signal
import subprocess
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import (
    CHUNK,
    PYTHON,
    chunk_files,
    interrupt_when,
    make_dense,
    read_result,
    wait_until,
)

import imagerelay as ir

# Ctrl-C tests: xdist workers ignore SIGINT (and their children inherit that): run alone.
pytestmark = pytest.mark.serial

# Bytes served before the stall: past the first 4 MiB read unit of an import, so that its
# blocks are stored before the stall.
STALL_AFTER = 67 * CHUNK


class _StallingHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``data`` (ranged GETs too, if ``ranges``); any byte at or past STALL_AFTER
    waits for ``release``. ``stalled`` is set once a reader waits there."""
    data = b""
    ranges = False
    protocol_version = "HTTP/1.1"
    stalled: threading.Event
    release: threading.Event

    def log_message(self, *args: object) -> None:
        pass

    def _headers(self, status: int, length: int, extra: dict[str, str]) -> None:
        self.send_response(status)
        if self.ranges:
            self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(length))
        for k, v in extra.items():
            self.send_header(k, v)
        self.end_headers()

    def do_HEAD(self) -> None:  # noqa: N802
        self._headers(200, len(self.data), {})

    def do_GET(self) -> None:  # noqa: N802
        lo, hi = 0, len(self.data) - 1
        rng = self.headers.get("Range")
        if rng and self.ranges:
            lo, hi = (int(x) for x in rng.split("=")[1].split("-"))
            self._headers(206, hi - lo + 1, {"Content-Range": f"bytes {lo}-{hi}/{len(self.data)}"})
        else:
            self._headers(200, len(self.data), {})
        pos = lo
        while pos <= hi:
            if pos >= STALL_AFTER:
                self.stalled.set()
                self.release.wait(120)
            end = min(hi + 1, pos + 65536, STALL_AFTER if pos < STALL_AFTER else hi + 1)
            self.wfile.write(self.data[pos:end])
            pos = end


@pytest.fixture
def stalling_url(files: Path) -> Iterator[Callable[[bool], tuple[str, threading.Event]]]:
    """Starts the stalling server for a 96-chunk image; returns (url, stalled)."""
    servers: list[tuple[http.server.ThreadingHTTPServer, threading.Event]] = []

    def start(ranges: bool) -> tuple[str, threading.Event]:
        src = make_dense(files / f"slow-{len(servers)}.raw", 96 * CHUNK)
        handler = type("H", (_StallingHandler,), {
            "data": src.read_bytes(), "ranges": ranges,
            "stalled": threading.Event(), "release": threading.Event()})
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        httpd.daemon_threads = True
        httpd.handle_error = lambda *args: None  # type: ignore[method-assign]  # aborted reads
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append((httpd, handler.release))
        return f"http://127.0.0.1:{httpd.server_address[1]}/slow.raw", handler.stalled

    yield start
    for httpd, release in servers:
        release.set()
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize("ranges", [False, True], ids=["streamed", "ranged"])
def test_ctrl_c_stops_an_import_and_leaves_nothing(cloud: ir.Cloud, home: Path,
                                                   stalling_url: Callable, ranges: bool) -> None:
    url, stalled = stalling_url(ranges)
    interrupt_when(stalled.is_set)
    with pytest.raises(KeyboardInterrupt):
        cloud.import_image(url, region="bj", name="slow")
    # Had the import held Ctrl-C until it ended, it would still be stalled (or Available).
    [image] = cloud.images("bj", name="slow")
    assert image.status == "CreateFailed", image
    assert "stopped before it finished" in image.error
    assert chunk_files(home, "bj") == []  # the chunks it had stored were swept
    events = [e.type for e in cloud.events(image_id=image.id)]
    assert events[-1] == "image.create_failed", events


def test_close_stops_a_background_import(home: Path, stalling_url: Callable) -> None:
    url, stalled = stalling_url(False)
    cloud = ir.open(home, limits=ir.Limits(chunk_size=CHUNK))
    image = cloud.import_image(url, region="bj", name="bg", wait=False)
    assert stalled.wait(20)
    cloud.close()  # would wait for the stall to end if it did not stop the import
    with ir.open(home, limits=ir.Limits(chunk_size=CHUNK)) as again:
        image = again.image(image.id)
        assert image.status == "CreateFailed" and "stopped before it finished" in image.error
    assert chunk_files(home, "bj") == []


# A child process that starts an import of a URL into bj and sleeps (the test kills it):
#   python -c CHILD_IMPORT HOME URL
CHILD_IMPORT = textwrap.dedent("""
    import sys, time, json
    import imagerelay as ir
    cloud = ir.open(sys.argv[1], limits=ir.Limits(chunk_size=65536))
    image = cloud.import_image(sys.argv[2], region="bj", name="killed", wait=False)
    print("RESULT", json.dumps({"id": image.id}), flush=True)
    time.sleep(600)
""")


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(".tmp-*")]


@pytest.mark.parametrize("then", ["open", "worker"])
def test_an_import_killed_leaves_no_temporary_files(home: Path, stalling_url: Callable,
                                                   then: str) -> None:
    """kill -9 in the middle of an import: the packs it wrote (and a pack it was writing)
    are removed as soon as the home is opened again, by a program or a worker, not an hour
    later."""
    url, stalled = stalling_url(False)
    ir.open(home).close()
    region = home / "regions" / "bj"
    child = subprocess.Popen([PYTHON, "-c", CHILD_IMPORT, str(home), url],
                             stdout=subprocess.PIPE, text=True)
    try:
        image_id = read_result(child)["id"]
        assert stalled.wait(30)
        # The blocks before the stall go into a pack once they have waited a second.
        wait_until(lambda: chunk_files(home, "bj"), timeout=20)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert child.stdout is not None
        child.stdout.close()
    assert chunk_files(home, "bj")
    if then == "open":
        with ir.open(home) as cloud:
            assert cloud.image(image_id).status == "CreateFailed"
    else:
        subprocess.run([str(Path(PYTHON).parent / "imagerelay"), "--home", str(home),
                        "worker", "--until-idle"], check=True, capture_output=True, timeout=60)
    assert temp_files(region) == []
    assert chunk_files(home, "bj") == []


@pytest.mark.parametrize("how", ["wait_idle", "job.wait"])
def test_ctrl_c_ends_a_wait_for_copies(open_cloud: Callable[..., ir.Cloud], files: Path,
                                       how: str) -> None:
    cloud = open_cloud(bandwidth=256 * 1024)
    image = cloud.import_image(make_dense(files / "a.raw", 64 * CHUNK), region="bj", name="a")
    job = image.replicate("gz")  # 4 MiB at 256 KiB/s: 16 s
    interrupt_when(lambda: job.refresh().tasks["gz"].bytes_transferred > 0)
    with pytest.raises(KeyboardInterrupt):
        if how == "wait_idle":
            cloud.wait_idle()
        else:
            job.wait()
    assert job.refresh().state == "Running"  # the wait ended, not the copy
    job.cancel()
    assert job.refresh().state == "Cancelled"


# -- import progress (reported from the same look for signals) -------------------------------
def test_import_reports_progress_to_the_end(cloud: ir.Cloud, files: Path) -> None:
    src = make_dense(files / "a.raw", 32 * CHUNK)
    seen: list[tuple[int, int]] = []
    request = ir._core.ImportRequest()
    request.source, request.region, request.name = str(src), "bj", "a"
    cloud._engine.import_image(cloud.account, request, True, False,
                               lambda done, total: seen.append((done, total)))
    assert seen and seen[-1] == (32 * CHUNK, 32 * CHUNK)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_progress_callback_that_raises_stops_the_import(cloud: ir.Cloud, home: Path,
                                                        stalling_url: Callable) -> None:
    url, _ = stalling_url(False)
    request = ir._core.ImportRequest()
    request.source, request.region, request.name = url, "bj", "raises"

    def callback(done: int, total: int) -> None:  # at the first report: the source stalls
        raise RuntimeError("enough")

    with pytest.raises(RuntimeError, match="enough"):
        cloud._engine.import_image(cloud.account, request, True, False, callback)
    [image] = cloud.images("bj", name="raises")
    assert image.status == "CreateFailed" and chunk_files(home, "bj") == []


def test_import_progress_bar(cloud: ir.Cloud, files: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    image = cloud.import_image(make_dense(files / "a.raw", 32 * CHUNK), region="bj", name="a",
                               progress=True)
    assert image.status == "Available"
    err = capsys.readouterr().err
    assert "import a -> bj" in err and "100%" in err and "2.00M" in err, err


# -- export progress ---------------------------------------------------------------------------
def test_export_reports_progress_to_the_end(cloud: ir.Cloud, files: Path) -> None:
    src = make_dense(files / "a.raw", 32 * CHUNK)
    image = cloud.import_image(src, region="bj", name="a")
    seen: list[tuple[int, int]] = []
    cloud._engine.export(cloud.account, image.id, files / "out.raw",
                         lambda done, total: seen.append((done, total)))
    assert seen and seen[-1] == (32 * CHUNK, 32 * CHUNK)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert (files / "out.raw").read_bytes() == src.read_bytes()


def test_progress_callback_that_raises_stops_the_export(cloud: ir.Cloud, files: Path) -> None:
    src = make_dense(files / "a.raw", 2048 * CHUNK)
    image = cloud.import_image(src, region="bj", name="a")
    (files / "out.raw").write_bytes(b"the old contents")

    def callback(done: int, total: int) -> None:
        raise RuntimeError("enough")

    # The callback raises at its first call: a look 100 ms in stops the export; one at the
    # end (an export faster than that) comes after the file was written whole.
    with pytest.raises(RuntimeError, match="enough"):
        cloud._engine.export(cloud.account, image.id, files / "out.raw", callback, force=True)
    out = (files / "out.raw").read_bytes()
    assert out in (b"the old contents", src.read_bytes())  # never a part
    assert not [p for p in files.iterdir() if p.name.startswith(".")]  # no leftovers


def test_export_progress_bar(cloud: ir.Cloud, files: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    src = make_dense(files / "a.raw", 32 * CHUNK)
    image = cloud.import_image(src, region="bj", name="a")
    capsys.readouterr()
    assert image.export(files / "out.raw", progress=True) == files / "out.raw"
    err = capsys.readouterr().err
    assert f"export {image.id} -> out.raw" in err and "100%" in err and "2.00M" in err, err
    assert (files / "out.raw").read_bytes() == src.read_bytes()


def test_verify_reports_progress_to_the_end(cloud: ir.Cloud, files: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    image = cloud.import_image(make_dense(files / "a.raw", 32 * CHUNK), region="bj", name="a")
    seen: list[tuple[int, int]] = []
    digest = cloud._engine.verify(cloud.account, image.id,
                                  lambda done, total: seen.append((done, total)))
    assert digest == image.digest
    assert seen and seen[-1] == (32 * CHUNK, 32 * CHUNK)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    capsys.readouterr()
    assert image.verify(progress=True) == image.digest
    err = capsys.readouterr().err
    assert f"verify {image.id}" in err and "100%" in err, err
