"""Shared fixtures and helpers of the imagerelay pytest suite.

Images are kept small (a few MiB at most) and the chunk size is 64 KiB so that every image
still has many chunks.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import random
import signal
import struct
import subprocess
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest


def _rebuild_editable_module() -> None:
    """Brings the editable install's C++ module up to date before it is loaded, once per
    session (pyproject.toml turns off the rebuild at every import, which would cost each
    child process of the suite half a second). xdist workers find it built by the
    controller. A non-editable install has no rebuild hook: nothing to do."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    spec = importlib.util.find_spec("imagerelay")
    rebuild = getattr(spec.loader, "rebuild", None) if spec else None
    if rebuild is not None:
        rebuild()


_rebuild_editable_module()


def _hear_ctrl_c() -> None:
    """Tests that press Ctrl-C on a child (marked serial: they run in the main process) need
    the child to get SIGINT. A run started in the background of a shell without job control
    (`make test &`, nohup) inherits SIGINT ignored, and every child would too (an ignored
    signal stays ignored across exec); a handler of our own is reset to the default there.
    xdist workers ignore SIGINT by design and are left alone."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


_hear_ctrl_c()

import imagerelay as ir  # noqa: E402

CHUNK = 64 * 1024

# A child process that starts a replication of image_id to one region, prints the job and
# the copy's id, and sleeps (tests kill it mid-copy):
#   python -c CHILD_REPLICATE HOME IMAGE_ID BANDWIDTH REGION [running]
CHILD_REPLICATE = textwrap.dedent("""
    import sys, time, json
    import imagerelay as ir
    home, image_id, bandwidth, region = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    cloud = ir.open(home, limits=ir.Limits(chunk_size=65536, bandwidth=bandwidth))
    job = cloud.replicate(image_id, [region])
    # "running": said once this process's worker has claimed the copy (else an engine the
    # test opens next may claim it first, and copy it without the bandwidth cap).
    deadline = time.monotonic() + 60
    while sys.argv[5:] == ["running"] and job.tasks[region].state == "Pending":
        assert time.monotonic() < deadline, "the copy was never claimed"
        time.sleep(0.02)
        job.refresh()
    print("RESULT", json.dumps({"job": job.id, "dest": job.tasks[region].dest_image_id}),
          flush=True)
    time.sleep(600)
""")
PYTHON = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "python")


# -- the catalog: SQLite, or PostgreSQL for tests marked both_catalogs -------------------
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "both_catalogs: run the test once with the home's SQLite catalog and once "
                   "with a PostgreSQL catalog of its own (tests/python/pg_server.py)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("both_catalogs"):
        metafunc.parametrize("catalog_kind", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture(scope="session")
def pg_test_server() -> Iterator[Any]:
    """The PostgreSQL server of this session (pg_server.TestServer), started at its first
    use and stopped at the end; None when $IMAGERELAY_TEST_PG names one run elsewhere."""
    import pg_server as server_module

    if os.environ.get(server_module.ENV):
        yield None
        return
    if not server_module.available():
        pytest.skip("PostgreSQL is not installed (make deps installs it)")
    with server_module.TestServer() as server:
        yield server


@pytest.fixture(scope="session")
def pg_server(pg_test_server: Any) -> str:
    """The URI of the PostgreSQL server for the tests' catalogs (no database in it)."""
    import pg_server as server_module

    return str(pg_test_server.uri if pg_test_server else os.environ[server_module.ENV])


def new_pg_catalog(server: str) -> str:
    """A new, empty database on the test server: its URI."""
    import pg_server as server_module

    return server_module.create_database(server, f"ir_{os.getpid()}_{next(_databases)}")


_databases = iter(range(1, 1 << 30))


@pytest.fixture(autouse=True)
def catalog_kind(request: pytest.FixtureRequest,
                 monkeypatch: pytest.MonkeyPatch) -> str:
    """"sqlite" (the home's own catalog, as every test has), or "postgresql" for the second
    run of a test marked both_catalogs: then $IMAGERELAY_CATALOG names a database of its own,
    so every ir.open(), CLI command and child process of the test uses it."""
    kind = getattr(request, "param", "sqlite")
    if kind == "postgresql":
        monkeypatch.setenv("IMAGERELAY_CATALOG",
                           new_pg_catalog(request.getfixturevalue("pg_server")))
    return str(kind)


# -- fixtures ---------------------------------------------------------------------------
@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """A directory for source and exported files, outside the home."""
    d = tmp_path / "files"
    d.mkdir()
    return d


@pytest.fixture
def cloud(home: Path) -> Iterator[ir.Cloud]:
    c = ir.open(home, limits=ir.Limits(chunk_size=CHUNK))
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def open_cloud(home: Path) -> Iterator[Callable[..., ir.Cloud]]:
    """Opens more engines on the same home (e.g. with other limits); all closed at the end."""
    opened: list[ir.Cloud] = []

    def _open(**limits: int | None) -> ir.Cloud:
        limits.setdefault("chunk_size", CHUNK)
        c = ir.open(home, limits=ir.Limits(**limits))  # type: ignore[arg-type]
        opened.append(c)
        return c

    yield _open
    for c in reversed(opened):
        c.close()


# -- files ------------------------------------------------------------------------------
def make_dense(path: Path, size: int) -> Path:
    """Random bytes: every chunk distinct and non-zero."""
    path.write_bytes(os.urandom(size))
    return path


def make_sparse(path: Path, size: int, writes: dict[int, bytes] | None = None) -> Path:
    """A sparse file of ``size`` bytes with a few random blocks written at offsets."""
    if writes is None:
        writes = {0: os.urandom(4096), size // 3: os.urandom(CHUNK + 100),
                  size - 5000: os.urandom(5000)}
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in writes.items():
            f.seek(offset)
            f.write(data)
    return path


def make_text(path: Path, chunks: int, random_chunks: int = 0) -> Path:
    """``chunks`` distinct chunks of text (zstd shrinks them), then ``random_chunks`` of
    random bytes (stored raw)."""
    text = b"".join(
        b"".join(f"{c}:{i} copy the stored form, not the block\n".encode() for i in range(2000))
        [:CHUNK] for c in range(chunks))
    path.write_bytes(text + os.urandom(random_chunks * CHUNK))
    return path


_WORDS = ("the image region block copy return update kernel module config = { } 0x1f path usr "
         "lib share event").split()


def make_words(path: Path, chunks: int, seed: int) -> Path:
    """File-like text (compresses ~2-3x, as file data does), `chunks` blocks long."""
    rng = random.Random(seed)
    out = []
    size = 0
    while size < chunks * CHUNK:
        word = rng.choice(_WORDS) + ("\n" if rng.random() < 0.15 else " ")
        if rng.random() < 0.1:
            word += str(rng.randrange(100000))
        out.append(word)
        size += len(word)
    path.write_bytes("".join(out).encode()[:chunks * CHUNK])
    return path


def edited(src: Path, dst: Path, seed: int, every: int = 2) -> Path:
    """`src` as an update changes it: in every `every`th block, a few small rewrites."""
    rng = random.Random(seed)
    data = bytearray(src.read_bytes())
    for block in range(0, len(data) // CHUNK, every):
        for _ in range(3):
            at = block * CHUNK + rng.randrange(CHUNK - 32)
            data[at:at + 24] = bytes(rng.randrange(65, 91) for _ in range(24))
    dst.write_bytes(bytes(data))
    return dst


def stored_bytes(home: Path, region: str) -> dict[str, bytes]:
    """Each block of a local region as its pack holds it (compressed or raw)."""
    out = {}
    for digest, (pack, offset, length, _) in stored_blocks(home, region).items():
        with open(pack, "rb") as f:
            f.seek(offset)
            out[digest] = f.read(length)
    return out


def make_odd(path: Path, chunks: int = 7, extra: int = 12345) -> Path:
    """Random bytes, not a multiple of the chunk size."""
    return make_dense(path, chunks * CHUNK + extra)


def make_zero(path: Path, size: int) -> Path:
    """All zero bytes, written (not a hole)."""
    path.write_bytes(bytes(size))
    return path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def chunk_hashes(path: Path, chunk: int = CHUNK) -> list[str | None]:
    """The chunk list of a file as the engine cuts it (None = all-zero chunk)."""
    out: list[str | None] = []
    data = path.read_bytes()
    for i in range(0, len(data), chunk):
        block = data[i:i + chunk]
        out.append(None if block.count(0) == len(block) else hashlib.sha256(block).hexdigest())
    return out


def distinct_nonzero_bytes(path: Path, chunk: int = CHUNK) -> tuple[int, int]:
    """(number, total bytes) of the distinct non-zero chunks of a file."""
    data = path.read_bytes()
    seen: dict[str, int] = {}
    for i in range(0, len(data), chunk):
        block = data[i:i + chunk]
        if block.count(0) == len(block):
            continue
        seen[hashlib.sha256(block).hexdigest()] = len(block)
    return len(seen), sum(seen.values())


# -- region stores ----------------------------------------------------------------------
# A region store keeps its chunks (blocks) in pack files, <region>/packs/<xx>/<name>, listed
# by its index <region>/index/blocks.sqlite (hash -> pack, offset, lengths: table
# indexed_blocks, keyed by the hash's 32 bytes, its pack a number in indexed_packs); stores of an
# earlier release kept one file per chunk, <region>/chunks/<xx>/<hash>.
def region_root(home: Path, region: str) -> Path:
    return Path(home) / "regions" / region


def manifest_path(home: Path, region: str, image_id: str) -> Path:
    return region_root(home, region) / "manifests" / f"{image_id}.bin"


def read_manifest(path: Path) -> dict:
    """A stored manifest (docs/data-plane-v2.md): a 64-byte header, 32 bytes per block (all
    zero = a hole), then the SHA-256 of everything before it."""
    return parse_manifest(path.read_bytes())


def parse_manifest(data: bytes) -> dict:
    """read_manifest of a manifest's bytes (e.g. from a bucket)."""
    assert data[:8] == b"IRMANIF1"
    assert hashlib.sha256(data[:-32]).digest() == data[-32:], "the manifest's checksum"
    block_size, _, size = struct.unpack_from("<IIQ", data, 8)
    digest = data[24:56]
    (count,) = struct.unpack_from("<Q", data, 56)
    assert len(data) == 64 + 32 * count + 32
    blocks = (data[64 + 32 * i:96 + 32 * i] for i in range(count))
    return {"size": size, "chunk_size": block_size,
            "digest": None if digest == bytes(32) else "sha256:" + digest.hex(),
            "chunks": [None if h == bytes(32) else h.hex() for h in blocks]}


def write_manifest(path: Path, manifest: dict) -> None:
    """Writes a manifest as an adversary who knows the format would: checksum and all."""
    digest = manifest["digest"]
    header = (b"IRMANIF1" + struct.pack("<IIQ", manifest["chunk_size"], 0, manifest["size"])
              + (bytes.fromhex(digest.removeprefix("sha256:")) if digest else bytes(32))
              + struct.pack("<Q", len(manifest["chunks"])))
    body = header + b"".join(bytes.fromhex(h) if h else bytes(32) for h in manifest["chunks"])
    path.write_bytes(body + hashlib.sha256(body).digest())


def stored_blocks(home: Path, region: str) -> dict[str, tuple[Path, int, int, int]]:
    """The blocks a region store holds: hash -> (pack file, offset, stored length, raw
    length), as its index says."""
    import sqlite3
    root = region_root(home, region)
    db = root / "index" / "blocks.sqlite"
    if not db.exists():
        return {}
    conn = sqlite3.connect(db, timeout=30)
    try:
        rows = conn.execute(
            "SELECT lower(hex(b.hash)), p.name, b.offset, b.stored_length, b.raw_length "
            "FROM indexed_blocks b JOIN indexed_packs p ON p.id = b.pack").fetchall()
    except sqlite3.OperationalError:  # not created yet
        rows = []
    finally:
        conn.close()
    return {h: (root / "packs" / p[:2] / p, off, n, raw) for h, p, off, n, raw in rows}


def delta_bases(home: Path, region: str) -> list[tuple[str, str]]:
    """(delta, base) rows of a local region's block index."""
    import sqlite3
    db = region_root(home, region) / "index" / "blocks.sqlite"
    if not db.exists():
        return []
    conn = sqlite3.connect(db, timeout=30)
    try:
        return conn.execute(
            "SELECT lower(hex(block)), lower(hex(base)) FROM delta_links").fetchall()
    except sqlite3.OperationalError:  # not created yet
        return []
    finally:
        conn.close()


def chunk_files(home: Path, region: str) -> list[Path]:
    """The files that hold a region's chunks: pack files, and chunk files of an earlier
    release (no temporary files)."""
    root = region_root(home, region)
    files = []
    if (root / "packs").is_dir():
        files += [p for p in (root / "packs").glob("*/*") if p.is_file() and len(p.name) == 32]
    if (root / "chunks").is_dir():
        files += [p for p in (root / "chunks").glob("*/*") if p.is_file() and len(p.name) == 64]
    return sorted(files)


def chunk_names(home: Path, region: str) -> set[str]:
    return set(stored_blocks(home, region))


def chunk_bytes(home: Path, region: str) -> int:
    """Bytes of image data a region store holds (before compression)."""
    return sum(raw for *_, raw in stored_blocks(home, region).values())


def bytes_of_earlier_attempts(cloud: ir.Cloud, task: ir.Task) -> int:
    """What the attempts before the last one of a copy wrote, as its last task.started says.
    The task's counters count every attempt, so they never go backwards after a takeover."""
    started = [e for e in cloud.events(image_id=task.dest_image_id) if e.type == "task.started"]
    assert len(started) == task.attempts
    assert task.bytes_sent >= started[-1].detail["bytes_sent"]
    return started[-1].detail["bytes_transferred"]


def chunk_stats(home: Path, region: str) -> tuple[int, int]:
    """(number of distinct chunks, their bytes before compression) of a region store."""
    blocks = stored_blocks(home, region)
    return len(blocks), sum(raw for *_, raw in blocks.values())


def damage_block(home: Path, region: str, digest: str, how: str = "corrupt") -> None:
    """Damages the stored block ``digest`` as a disk or a hand would: "corrupt" flips a byte
    in it, "truncate" cuts its pack short before it, "delete" removes its pack."""
    pack, offset, length, _ = stored_blocks(home, region)[digest]
    if how == "corrupt":
        with open(pack, "r+b") as f:
            f.seek(offset + min(10, length - 1))
            b = f.read(1)
            f.seek(offset + min(10, length - 1))
            f.write(bytes([b[0] ^ 0xFF]))
    elif how == "truncate":
        with open(pack, "r+b") as f:
            f.truncate(offset + length // 2)
    else:
        pack.unlink()


# -- waiting ----------------------------------------------------------------------------
def wait_until(predicate: Callable[[], object], timeout: float = 20.0,
               interval: float = 0.02, *, why: Callable[[], str] | None = None) -> object:
    """Polls ``predicate`` until it is truthy; fails the test after ``timeout`` seconds
    (with ``why()`` in the message)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            detail = why() if why is not None else getattr(predicate, "__doc__", None)
            pytest.fail(f"condition not met within {timeout} s: {detail or predicate}")
        time.sleep(interval)


def wait_for_chunks(home: Path, region: str, expected: set[str], timeout: float = 10.0) -> None:
    """Waits until the chunk files of ``region`` are exactly ``expected``."""
    def why() -> str:
        have = chunk_names(home, region)
        return (f"region {region} holds {len(have)} chunks, {len(have - expected)} more "
                f"than expected and {len(expected - have)} missing")

    wait_until(lambda: chunk_names(home, region) == expected, timeout=timeout, why=why)


def interrupt_when(predicate: Callable[[], object], timeout: float = 20.0) -> threading.Thread:
    """Sends SIGINT (Ctrl-C) to this process once ``predicate`` holds, from a helper thread:
    the main thread, blocked in a call, gets KeyboardInterrupt if that call lets it."""
    def run() -> None:
        deadline = time.monotonic() + timeout
        while not predicate() and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


class Collector:
    """Collects events from a callback and lets a test wait for one of a given kind."""

    def __init__(self) -> None:
        self.events: list[ir.Event] = []
        self._cond = threading.Condition()

    def __call__(self, event: ir.Event) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def wait_for(self, pred: Callable[[ir.Event], bool], timeout: float = 10.0) -> ir.Event:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for e in self.events:
                    if pred(e):
                        return e
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"no matching event within {timeout} s; got "
                                f"{[(e.type, e.image_id) for e in self.events]}")
                self._cond.wait(left)

    def types(self) -> list[str]:
        with self._cond:
            return [e.type for e in self.events]


def assert_error(excinfo: pytest.ExceptionInfo[ir.ImageRelayError], cls: type,
                 code: str, status: int, *, problems: list[str] | None = None) -> None:
    """Class (exactly), code, http_status and the codes listed in .problems."""
    err = excinfo.value
    assert type(err) is cls, f"{type(err).__name__} raised, {cls.__name__} expected: {err}"
    assert err.code == code, err
    assert err.http_status == status, err
    assert err.message
    got = [p[0] for p in err.problems]
    assert got, "problems is empty"
    assert got[0] == code, err.problems
    if problems is not None:
        assert sorted(got) == sorted(problems), err.problems
    for p in err.problems:
        assert isinstance(p[1], str) and p[1], err.problems


# -- child processes ----------------------------------------------------------------------
# A child prints "RESULT <json>"; anything else on its stdout is ignored.
def parse_result(out: str) -> dict:
    for line in out.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    pytest.fail(f"no RESULT line in the child's output: {out!r}")


def read_result(proc: subprocess.Popen[str]) -> dict:
    """Reads a running child's stdout until its RESULT line."""
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
        seen.append(line)
    err = proc.stderr.read() if proc.stderr is not None else ""
    pytest.fail(f"the child ended without a RESULT line: {''.join(seen)!r} {err!r}")
