"""S3 regions against a real S3 server (moto on 127.0.0.1, signatures checked): adding a
bucket as a region, replication in every direction, dedup, cancel, crash-resume, imports
from URLs, and a fault-injecting proxy between the engine and the server."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import (
    CHILD_REPLICATE,
    CHUNK,
    PYTHON,
    assert_error,
    interrupt_when,
    make_dense,
    make_sparse,
    read_result,
    wait_until,
)
from s3_server import FaultProxy, S3Server, moto_server

import imagerelay as ir

MiB = 2**20
_buckets = itertools.count()


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with moto_server() as server:
        yield server


@pytest.fixture
def bucket(s3: S3Server) -> str:
    name = f"relay-{os.getpid()}-{next(_buckets)}"
    s3.create_bucket(name)
    return name


@pytest.fixture
def proxy(s3: S3Server) -> Iterator[FaultProxy]:
    p = FaultProxy(int(s3.endpoint.rsplit(":", 1)[1]))
    yield p
    p.close()


def s3_uri(s3: S3Server, bucket: str, prefix: str = "relay", endpoint: str | None = None,
           extra: str = "") -> str:
    return f"s3://{bucket}/{prefix}?endpoint={endpoint or s3.endpoint}&region=us-east-1{extra}"


def add_s3_region(cloud: ir.Cloud, s3: S3Server, region: str, bucket: str,
                  **kwargs: str) -> ir.Region:
    return cloud.add_region(region, s3_uri(s3, bucket, **kwargs), access_key_id=s3.access_key_id,
                            secret_access_key=s3.secret_access_key)


def chunk_keys(s3: S3Server, bucket: str, prefix: str = "relay") -> set[str]:
    return {k.rsplit("/", 1)[1] for k in s3.keys(bucket, f"{prefix}/chunks/")}


# -- adding a region ----------------------------------------------------------------------
def test_add_region_checks_the_bucket_and_hides_the_secret(cloud: ir.Cloud, s3: S3Server,
                                                           bucket: str) -> None:
    region = add_s3_region(cloud, s3, "s3a", bucket)
    assert region.store.startswith(f"s3://{bucket}/relay")
    listing = repr(cloud.regions) + repr(region) + str([r.store for r in cloud.regions])
    assert s3.secret_access_key not in listing
    assert s3.keys(bucket) == ["relay/.imagerelay-store"]  # the write probe was removed


def test_add_region_takes_no_prefix_of_other_objects(cloud: ir.Cloud, s3: S3Server,
                                                     bucket: str) -> None:
    client = s3.client()
    client.put_object(Bucket=bucket, Key="backups/db.dump", Body=b"someone else's")
    with pytest.raises(ir.ImageRelayError) as excinfo:
        add_s3_region(cloud, s3, "s3a", bucket, prefix="backups")
    assert excinfo.value.code == "Region.StoreUnavailable"
    assert "not an imagerelay store" in excinfo.value.message
    assert "db.dump" in excinfo.value.message and f"s3://{bucket}/backups" in excinfo.value.message
    assert s3.keys(bucket) == ["backups/db.dump"]
    assert "s3a" not in {r.id for r in cloud.regions}
    # The whole bucket holds backups/: not a store either.
    with pytest.raises(ir.ImageRelayError) as excinfo:
        add_s3_region(cloud, s3, "s3a", bucket, prefix="")
    assert excinfo.value.code == "Region.StoreUnavailable"
    assert "backups/" in excinfo.value.message


def test_add_region_adopts_a_store_without_a_marker(cloud: ir.Cloud, s3: S3Server,
                                                    bucket: str, files: Path) -> None:
    """A prefix that a release before the marker filled, as a region of another home."""
    add_s3_region(cloud, s3, "s3a", bucket)
    image = cloud.import_image(make_dense(files / "a.raw", 3 * CHUNK), region="s3a", name="a")
    assert image.status == "Available"
    s3.client().delete_object(Bucket=bucket, Key="relay/.imagerelay-store")
    with ir.open(files / "other-home") as other:
        add_s3_region(other, s3, "s3a", bucket)
    assert "relay/.imagerelay-store" in s3.keys(bucket)
    body = s3.client().get_object(Bucket=bucket, Key="relay/.imagerelay-store")["Body"].read()
    assert json.loads(body) == {"format": "imagerelay-store", "version": 2}


def test_wrong_keys_fail_with_a_clear_code_and_no_secret(cloud: ir.Cloud, s3: S3Server,
                                                         bucket: str) -> None:
    secret = "NotTheRightSecretAtAllXXXXXXXXXXXXXXXXXXX"
    with pytest.raises(ir.ImageRelayError) as excinfo:
        cloud.add_region("s3a", s3_uri(s3, bucket), access_key_id=s3.access_key_id,
                         secret_access_key=secret)
    assert excinfo.value.code == "Region.StoreUnavailable"
    assert "SignatureDoesNotMatch" in excinfo.value.message or "403" in excinfo.value.message
    assert secret not in str(excinfo.value) and secret not in repr(excinfo.value)
    with pytest.raises(ir.ImageRelayError) as excinfo:
        cloud.add_region("s3b", s3_uri(s3, bucket), access_key_id="AKIANOSUCHKEY00000000",
                         secret_access_key=secret)
    assert excinfo.value.code == "Region.StoreUnavailable"
    assert secret not in str(excinfo.value)
    assert "s3a" not in {r.id for r in cloud.regions}


def test_missing_bucket_and_dead_endpoint_are_unavailable(cloud: ir.Cloud, s3: S3Server) -> None:
    with pytest.raises(ir.ImageRelayError) as excinfo:
        add_s3_region(cloud, s3, "s3a", "no-such-bucket-here")
    assert excinfo.value.code == "Region.StoreUnavailable"
    assert "NoSuchBucket" in excinfo.value.message
    from s3_server import free_port
    with pytest.raises(ir.ImageRelayError) as excinfo:
        cloud.add_region("s3b", s3_uri(s3, "bucket", endpoint=f"http://127.0.0.1:{free_port()}"),
                         access_key_id="a", secret_access_key="b")
    assert excinfo.value.code == "Region.StoreUnavailable"


def test_credentials_from_the_environment(cloud: ir.Cloud, s3: S3Server, bucket: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret_access_key)
    cloud.add_region("s3a", s3_uri(s3, bucket))


# -- replication --------------------------------------------------------------------------
def test_replicate_local_to_s3_to_s3_to_local(cloud: ir.Cloud, s3: S3Server, files: Path) -> None:
    b1, b2 = f"ra-{os.getpid()}", f"rb-{os.getpid()}"
    s3.create_bucket(b1)
    s3.create_bucket(b2)
    add_s3_region(cloud, s3, "s3a", b1)
    add_s3_region(cloud, s3, "s3b", b2, prefix="deep/er")
    block = os.urandom(CHUNK)
    src = files / "golden.raw"
    src.write_bytes(os.urandom(20 * CHUNK) + bytes(5 * CHUNK) + block * 3 + b"tail")
    golden = cloud.import_image(src, region="bj", name="golden")
    job = cloud.replicate(golden.id, ["s3a"])
    job.wait(timeout=60)
    assert job.state == "Completed", job.to_dict()
    a = job.copies["s3a"]
    assert a.status == "Available"
    # DESIGN §4 layout: 22 distinct chunks (zero chunks never stored), one manifest, one record
    assert len(chunk_keys(s3, b1)) == 22
    keys = s3.keys(b1)
    assert f"relay/manifests/{a.id}.json" in keys and f"relay/images/{a.id}.json" in keys
    assert all(k.startswith(("relay/chunks/", "relay/manifests/", "relay/images/"))
               for k in keys if k != "relay/.imagerelay-store")
    # S3 -> S3, then S3 -> local: byte-identical at every step
    job2 = cloud.replicate(a.id, ["s3b"])
    job2.wait(timeout=60)
    assert job2.state == "Completed", job2.to_dict()
    b = job2.copies["s3b"]
    assert len(chunk_keys(s3, b2, "deep/er")) == 22
    job3 = cloud.replicate(b.id, ["gz"])
    job3.wait(timeout=60)
    assert job3.state == "Completed", job3.to_dict()
    for image in (a, b, job3.copies["gz"]):
        out = image.export(files / f"{image.id}.out")
        assert out.read_bytes() == src.read_bytes()


def test_dedup_and_delta_copy_to_s3(cloud: ir.Cloud, s3: S3Server, bucket: str,
                                    files: Path) -> None:
    add_s3_region(cloud, s3, "s3a", bucket)
    src = make_dense(files / "v1.raw", 16 * CHUNK)
    v1 = cloud.import_image(src, region="bj", name="v1")
    job = v1.replicate("s3a")
    job.wait(timeout=60)
    assert job.tasks["s3a"].bytes_transferred == 16 * CHUNK
    data = bytearray(src.read_bytes())
    data[5 * CHUNK:5 * CHUNK + 10] = os.urandom(10)
    (files / "v2.raw").write_bytes(bytes(data))
    v2 = cloud.import_image(files / "v2.raw", region="bj", name="v2")
    job2 = v2.replicate("s3a")
    job2.wait(timeout=60)
    assert job2.state == "Completed"
    assert job2.tasks["s3a"].bytes_transferred == CHUNK  # only the changed chunk moved
    assert len(chunk_keys(s3, bucket)) == 17
    assert job2.copies["s3a"].export(files / "v2.out").read_bytes() == bytes(data)
    # deleting an image removes its unreferenced chunks from the bucket
    job.copies["s3a"].delete()
    wait_until(lambda: len(chunk_keys(s3, bucket)) == 16, timeout=20)


def test_plan_lists_a_small_bucket_instead_of_heading_each_chunk(
        cloud: ir.Cloud, s3: S3Server, proxy: FaultProxy, bucket: str, files: Path) -> None:
    add_s3_region(cloud, s3, "s3a", bucket, endpoint=proxy.endpoint)
    a_src = make_dense(files / "a.raw", 130 * CHUNK)
    job = cloud.import_image(a_src, region="bj", name="a").replicate("s3a")
    job.wait(timeout=120)
    assert job.state == "Completed", job.to_dict()

    def lookups() -> tuple[int, int]:
        heads = len(_chunk_requests(proxy, "HEAD"))
        lists = sum(1 for m, path, _ in proxy.requests
                    if m == "GET" and "list-type=2" in path and "chunks" in path)
        return heads, lists

    # 130 chunks answered by one listing page to plan, one more to confirm before the commit
    assert lookups() == (0, 2)
    # a new version: half its chunks are new; the rest are known from a's manifest
    data = bytearray(a_src.read_bytes())
    for i in range(0, 130, 2):
        data[i * CHUNK:i * CHUNK + 8] = os.urandom(8)
    (files / "b.raw").write_bytes(bytes(data))
    proxy.requests.clear()
    job2 = cloud.import_image(files / "b.raw", region="bj", name="b").replicate("s3a")
    job2.wait(timeout=120)
    assert job2.state == "Completed", job2.to_dict()
    assert lookups() == (0, 2)
    assert job2.tasks["s3a"].bytes_transferred == 65 * CHUNK
    assert len(chunk_keys(s3, bucket)) == 195
    assert job2.copies["s3a"].export(files / "b.out").read_bytes() == bytes(data)


def test_cancel_copy_to_s3_mid_flight(open_cloud, s3: S3Server, bucket: str,
                                      files: Path) -> None:
    cloud = open_cloud(bandwidth=2 * MiB)
    add_s3_region(cloud, s3, "s3a", bucket)
    src = make_dense(files / "big.raw", 6 * MiB)
    image = cloud.import_image(src, region="bj", name="big")
    job = image.replicate("s3a")
    dest = job.tasks["s3a"].dest_image_id
    wait_until(lambda: len(chunk_keys(s3, bucket)) >= 4)
    cloud.cancel_copy(dest)
    assert job.refresh().tasks["s3a"].state == "Cancelled"
    with pytest.raises(ir.NotFoundError):
        cloud.image(dest)
    # the partial chunks are swept from the bucket
    wait_until(lambda: chunk_keys(s3, bucket) == set(), timeout=20)
    assert not any("manifests/" in k for k in s3.keys(bucket))
    job2 = image.replicate("s3a")
    job2.wait(timeout=60)
    assert job2.copies["s3a"].export(files / "out.raw").read_bytes() == src.read_bytes()




def test_kill_then_resume_into_s3(home: Path, s3: S3Server, bucket: str, files: Path) -> None:
    src = make_dense(files / "big.raw", 6 * MiB)
    with ir.open(home, limits=ir.Limits(chunk_size=CHUNK)) as cloud:
        add_s3_region(cloud, s3, "s3a", bucket)  # credentials kept in <home>/credentials
        image = cloud.import_image(src, region="bj", name="big")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    child = subprocess.Popen([PYTHON, "-c", CHILD_REPLICATE, str(home), image.id, str(2 * MiB),
                              "s3a"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        started = read_result(child)
        wait_until(lambda: len(chunk_keys(s3, bucket)) >= 8, timeout=30)
        assert child.poll() is None
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.stdout is not None and child.stderr is not None
    child.stdout.close()
    child.stderr.close()
    # PUTs whose bodies reached the server before the kill may still be stored after it:
    # count once the bucket has stopped changing.
    present = -1
    while (now := len(chunk_keys(s3, bucket))) != present:
        present = now
        time.sleep(0.5)
    assert 0 < present < 96
    with ir.open(home, limits=ir.Limits(chunk_size=CHUNK)) as cloud:
        job = cloud.job(started["job"])
        job.wait(timeout=60)
        assert job.state == "Completed"
        task = job.tasks["s3a"]
        assert task.attempts == 2
        assert task.bytes_transferred == (96 - present) * CHUNK
        copy = cloud.image(started["dest"])
        assert copy.status == "Available"
        assert copy.export(files / "resumed.out").read_bytes() == src.read_bytes()


# -- a flaky network ----------------------------------------------------------------------
def test_faults_slow_a_copy_down_but_never_corrupt_it(cloud: ir.Cloud, s3: S3Server,
                                                      bucket: str, proxy: FaultProxy,
                                                      files: Path) -> None:
    b2 = bucket + "-b"
    s3.create_bucket(b2)
    add_s3_region(cloud, s3, "s3a", bucket, endpoint=proxy.endpoint, extra="&low_speed_time=1")
    add_s3_region(cloud, s3, "s3b", b2, endpoint=proxy.endpoint, extra="&low_speed_time=1")
    proxy.stall_seconds = 2.5
    proxy.faults = {"drop": 0.08, "slowdown": 0.08, "truncate": 0.08, "stall": 0.02}
    src = make_sparse(files / "img.raw", 3 * MiB)
    image = cloud.import_image(src, region="bj", name="img")
    job = image.replicate("s3a")
    job.wait(timeout=120)
    assert job.state == "Completed", job.to_dict()
    job2 = job.copies["s3a"].replicate("s3b")  # S3 -> S3 through the faults both ways
    job2.wait(timeout=120)
    assert job2.state == "Completed", job2.to_dict()
    job3 = job2.copies["s3b"].replicate("gz")
    job3.wait(timeout=120)
    assert job3.state == "Completed", job3.to_dict()
    assert all(proxy.counts.get(f, 0) > 0 for f in ("drop", "slowdown", "truncate")), proxy.counts
    proxy.faults = {}
    for copy in (job.copies["s3a"], job2.copies["s3b"], job3.copies["gz"]):
        assert copy.export(files / f"{copy.id}.out").read_bytes() == src.read_bytes()


def test_faults_that_never_stop_fail_the_copy(cloud: ir.Cloud, s3: S3Server, bucket: str,
                                              proxy: FaultProxy, files: Path) -> None:
    add_s3_region(cloud, s3, "s3a", bucket, endpoint=proxy.endpoint)
    image = cloud.import_image(make_dense(files / "a.raw", 8 * CHUNK), region="bj", name="a")
    proxy.faults = {"slowdown": 0.5, "drop": 0.5}
    job = image.replicate("s3a")
    job.wait(timeout=120, raise_on_error=False)
    task = job.tasks["s3a"]
    assert task.state == "Failed"
    assert task.error_code in ("Transfer.Failed", "Region.StoreUnavailable"), task.to_dict()
    assert "SlowDown" in task.error or "Empty reply" in task.error, task.error
    assert s3.secret_access_key not in task.error
    assert not [i for i in cloud.images(region="s3a") if i.status == "Available"]
    proxy.faults = {}


# -- imports from URLs --------------------------------------------------------------------
def test_import_from_s3_url(cloud: ir.Cloud, s3: S3Server, bucket: str, files: Path,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_sparse(files / "disk.raw", 2 * MiB + 777)
    s3.client().upload_file(str(src), bucket, "images/disk.raw")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret_access_key)
    url = f"s3://{bucket}/images/disk.raw?endpoint={s3.endpoint}&region=us-east-1"
    image = cloud.import_image(url, region="bj", name="from-s3")
    assert image.status == "Available"
    assert image.export(files / "out.raw").read_bytes() == src.read_bytes()
    with pytest.raises(ir.ImageRelayError) as excinfo:
        cloud.import_image(url.replace("disk.raw", "nope.raw"), region="bj", name="x")
    assert excinfo.value.code == "InvalidParameter"
    assert s3.secret_access_key not in str(excinfo.value)


class _RangeHandler(__import__("http.server").server.BaseHTTPRequestHandler):
    """Serves ``data``; ``honours_range`` and ``says_ranges`` (Accept-Ranges) set how it
    treats Range. Records the GETs it saw and how many were in flight at once."""
    data = b""
    honours_range = True
    says_ranges = True
    protocol_version = "HTTP/1.1"
    lock = threading.Lock()
    gets: list[str | None] = []
    in_flight = 0
    max_in_flight = 0

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self, body: bool) -> None:
        cls = type(self)
        data, rng = self.data, self.headers.get("Range")
        if rng and self.honours_range:
            lo, hi = (int(x) for x in rng.split("=")[1].split("-"))
            part = data[lo:hi + 1]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {lo}-{hi}/{len(data)}")
        else:
            part = data
            self.send_response(200)
        if self.says_ranges:
            self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(part)))
        self.end_headers()
        if not body:
            return
        with cls.lock:
            cls.gets.append(rng)
            cls.in_flight += 1
            cls.max_in_flight = max(cls.max_in_flight, cls.in_flight)
        try:
            time.sleep(0.02)  # long enough for parallel readers to overlap
            for i in range(0, len(part), 65536):
                self.wfile.write(part[i:i + 65536])
        finally:
            with cls.lock:
                cls.in_flight -= 1

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(False)

    def do_GET(self) -> None:  # noqa: N802
        self._answer(True)


@pytest.mark.parametrize("server", ["ranges", "no-ranges", "ignores-range"])
def test_import_from_http_url(cloud: ir.Cloud, files: Path, server: str) -> None:
    import http.server
    src = make_dense(files / "disk.raw", 3 * CHUNK * 7 + 5)
    handler = type("H", (_RangeHandler,), {
        "data": src.read_bytes(), "gets": [],
        "honours_range": server == "ranges", "says_ranges": server != "no-ranges"})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.handle_error = lambda *args: None  # type: ignore[method-assign]  # aborted reads
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/disk.raw"
        image = cloud.import_image(url, region="bj", name="from-http")
        assert image.status == "Available"
        assert image.export(files / "out.raw").read_bytes() == src.read_bytes()
    finally:
        httpd.shutdown()
        httpd.server_close()
    chunks = -(-src.stat().st_size // CHUNK)
    if server == "ranges":  # one ranged GET per chunk, several at once
        assert len(handler.gets) == chunks and None not in handler.gets
        assert handler.max_in_flight > 1
    elif server == "no-ranges":  # one streamed GET of the whole file
        assert handler.gets == [None]
    else:  # the first ranged GETs were answered 200: the import streamed instead
        assert handler.gets.count(None) == 1


# -- cancel inside a request ----------------------------------------------------------------
def test_cancel_aborts_a_stalled_chunk_request(cloud: ir.Cloud, s3: S3Server, bucket: str,
                                               proxy: FaultProxy, files: Path) -> None:
    # No low-speed timeout would end the stall: only the cancel, through curl's progress
    # callback, can free the requests in flight.
    add_s3_region(cloud, s3, "s3a", bucket, endpoint=proxy.endpoint, extra="&low_speed_time=3600")
    image = cloud.import_image(make_dense(files / "a.raw", 8 * CHUNK), region="bj", name="a")
    proxy.stall_seconds = 120
    proxy.fault_filter = lambda method, path: method == "PUT" and "/chunks/" in path
    proxy.faults = {"stall": 1.0}
    job = image.replicate("s3a")
    dest = job.tasks["s3a"].dest_image_id
    wait_until(lambda: proxy.counts.get("stall", 0) >= 1)
    cloud.cancel_copy(dest)  # waits (a few seconds at most) for the copy to let go
    assert job.refresh().tasks["s3a"].state == "Cancelled"
    # The copy let go at once, so the cancel could sweep the chunks that reached the server.
    assert chunk_keys(s3, bucket) == set()
    assert not any("manifests/" in k for k in s3.keys(bucket))
    with pytest.raises(ir.NotFoundError):
        cloud.image(dest)


# -- server-side copy -----------------------------------------------------------------------
def _chunk_requests(proxy: FaultProxy, method: str) -> list[tuple[str, str, dict[str, str]]]:
    return [r for r in proxy.requests if r[0] == method and "/chunks/" in r[1]]


def test_s3_to_s3_copies_chunks_server_side(cloud: ir.Cloud, s3: S3Server, proxy: FaultProxy,
                                            files: Path) -> None:
    b1, b2 = f"sa-{os.getpid()}", f"sb-{os.getpid()}"
    s3.create_bucket(b1)
    s3.create_bucket(b2)
    add_s3_region(cloud, s3, "s3a", b1, endpoint=proxy.endpoint)
    add_s3_region(cloud, s3, "s3b", b2, endpoint=proxy.endpoint)
    src = make_sparse(files / "img.raw", 2 * MiB)
    job = cloud.import_image(src, region="bj", name="img").replicate("s3a")
    job.wait(timeout=60)
    a = job.copies["s3a"]
    proxy.requests.clear()
    # fan-out: s3b by CopyObject, gz with the bytes read once from s3a
    job2 = a.replicate(["s3b", "gz"])
    job2.wait(timeout=60)
    assert job2.state == "Completed", job2.to_dict()
    chunks = chunk_keys(s3, b1)
    copies = [r for r in _chunk_requests(proxy, "PUT") if "x-amz-copy-source" in r[2]]
    assert len(copies) == len(chunks) and chunk_keys(s3, b2) == chunks
    assert all(f"/{b2}/" in path and f"/{b1}/" in h["x-amz-copy-source"] for _, path, h in copies)
    assert not [r for r in _chunk_requests(proxy, "PUT") if f"/{b2}/" in r[1] and r not in copies]
    gets = _chunk_requests(proxy, "GET")
    assert len(gets) == len(chunks)  # for gz only: each source chunk read once
    assert job2.tasks["s3b"].bytes_transferred == job2.tasks["gz"].bytes_transferred > 0
    for copy in job2.copies.values():
        assert copy.export(files / f"{copy.id}.out").read_bytes() == src.read_bytes()


def test_server_without_checksum_headers_still_takes_copies(cloud: ir.Cloud, s3: S3Server,
                                                          proxy: FaultProxy,
                                                          files: Path) -> None:
    b1, b2 = f"oa-{os.getpid()}", f"ob-{os.getpid()}"
    s3.create_bucket(b1)
    s3.create_bucket(b2)
    proxy.refused_headers = {"x-amz-checksum-sha256"}  # an older S3-compatible server
    add_s3_region(cloud, s3, "s3a", b1, endpoint=proxy.endpoint)
    add_s3_region(cloud, s3, "s3b", b2, endpoint=proxy.endpoint)
    src = make_dense(files / "img.raw", 6 * CHUNK)
    job = cloud.import_image(src, region="bj", name="img").replicate("s3a")
    job.wait(timeout=60)
    assert job.state == "Completed", job.to_dict()
    puts = _chunk_requests(proxy, "PUT")
    # refused (at most once per writer thread in flight), then sent without the headers
    refused = sum("x-amz-checksum-sha256" in h for _, _, h in puts)
    assert 1 <= refused <= 8 and "x-amz-checksum-sha256" not in puts[-1][2]
    assert len(puts) == refused + len(chunk_keys(s3, b1))
    # no stored checksum comes back with a server-side copy: the first copies are read back
    # and hashed, the later ones ask the server to hash them (x-amz-checksum-algorithm)
    proxy.requests.clear()
    job2 = job.copies["s3a"].replicate("s3b")
    job2.wait(timeout=60)
    assert job2.state == "Completed", job2.to_dict()
    copies = [r for r in _chunk_requests(proxy, "PUT") if "x-amz-copy-source" in r[2]]
    assert len(copies) == len(chunk_keys(s3, b2)) == 6
    hashed_by_server = [h for _, _, h in copies if h.get("x-amz-checksum-algorithm") == "SHA256"]
    read_back = [r for r in _chunk_requests(proxy, "GET") if f"/{b2}/" in r[1]]
    assert len(read_back) + len(hashed_by_server) == len(copies) and read_back
    assert job2.copies["s3b"].export(files / "out.raw").read_bytes() == src.read_bytes()


@pytest.mark.parametrize("how", ["overwritten", "overwritten-with-its-checksum"])
def test_server_side_copy_of_a_corrupt_chunk_fails_with_integrity_error(
        cloud: ir.Cloud, s3: S3Server, files: Path, how: str) -> None:
    b1, b2 = f"ca-{os.getpid()}-{len(how)}", f"cb-{os.getpid()}-{len(how)}"
    s3.create_bucket(b1)
    s3.create_bucket(b2)
    add_s3_region(cloud, s3, "s3a", b1)
    add_s3_region(cloud, s3, "s3b", b2)
    job = cloud.import_image(make_dense(files / "a.raw", 6 * CHUNK), region="bj",
                             name="a").replicate("s3a")
    job.wait(timeout=60)
    victim = sorted(s3.keys(b1, "relay/chunks/"))[2]
    extra = {"ChecksumAlgorithm": "SHA256"} if how.endswith("checksum") else {}
    s3.client().put_object(Bucket=b1, Key=victim, Body=os.urandom(CHUNK), **extra)
    job2 = job.copies["s3a"].replicate("s3b")
    job2.wait(timeout=60, raise_on_error=False)
    task = job2.tasks["s3b"]
    assert task.state == "Failed" and task.error_code == "Transfer.IntegrityError", task.to_dict()
    assert victim.rsplit("/", 1)[1] in task.error
    assert victim.rsplit("/", 1)[1] not in chunk_keys(s3, b2)  # never copied


def test_ctrl_c_stops_an_export_and_a_verify_of_a_stalled_image(
        cloud: ir.Cloud, s3: S3Server, bucket: str, proxy: FaultProxy, files: Path) -> None:
    # Nothing but Ctrl-C (through the caller's cancel token down to curl) ends these stalls.
    add_s3_region(cloud, s3, "s3a", bucket, endpoint=proxy.endpoint, extra="&low_speed_time=3600")
    job = cloud.import_image(make_dense(files / "a.raw", 8 * CHUNK), region="bj",
                             name="a").replicate("s3a")
    job.wait(timeout=60)
    copy = job.copies["s3a"]
    proxy.stall_seconds = 120
    proxy.fault_filter = lambda method, path: method == "GET" and "/chunks/" in path
    proxy.faults = {"stall": 1.0}
    for call in (lambda: copy.export(files / "out.raw"), copy.verify):
        stalls = proxy.counts.get("stall", 0)
        interrupt_when(lambda n=stalls: proxy.counts.get("stall", 0) > n)
        with pytest.raises(KeyboardInterrupt):
            call()
        assert sorted(p.name for p in files.iterdir()) == ["a.raw"]  # no export, no temp file
    proxy.faults = {}
    assert copy.verify() == copy.digest


# -- credentials, session tokens, addressing, TLS ------------------------------------------
def _catalog_bytes(home: Path) -> bytes:
    return b"".join(f.read_bytes() for f in sorted(home.glob("catalog.db*")))


def test_credentials_stay_out_of_the_catalog(home: Path, s3: S3Server, bucket: str,
                                             files: Path) -> None:
    secret = s3.secret_access_key.encode()
    with ir.open(home, limits=ir.Limits(chunk_size=CHUNK)) as cloud:
        add_s3_region(cloud, s3, "s3a", bucket)
        image = cloud.import_image(make_dense(files / "a.raw", 4 * CHUNK), region="bj", name="a")
    assert secret not in _catalog_bytes(home)
    saved = home / "credentials" / "s3a.json"
    assert secret in saved.read_bytes()
    assert saved.stat().st_mode & 0o777 == 0o600
    assert (home / "credentials").stat().st_mode & 0o777 == 0o700
    with ir.open(home, limits=ir.Limits(chunk_size=CHUNK)) as cloud:  # reopened: still works
        job = cloud.image(image.id).replicate("s3a")
        job.wait(timeout=60)
        assert job.state == "Completed"


def test_credentials_in_an_old_catalog_move_to_their_file(home: Path, s3: S3Server,
                                                          bucket: str) -> None:
    import json
    import sqlite3
    with ir.open(home) as cloud:
        add_s3_region(cloud, s3, "s3a", bucket)
    saved = home / "credentials" / "s3a.json"
    # What a home made before credentials files holds: the keys in the settings table.
    db = sqlite3.connect(home / "catalog.db")
    db.execute("INSERT INTO settings (key, value) VALUES (?, ?)",
               ("region_credentials:s3a", json.dumps(json.loads(saved.read_text()))))
    db.commit()
    db.close()
    saved.unlink()
    assert s3.secret_access_key.encode() in _catalog_bytes(home)
    with ir.open(home) as cloud:
        assert json.loads(saved.read_text())["secret_access_key"] == s3.secret_access_key
        assert s3.secret_access_key.encode() not in _catalog_bytes(home)
        # the environment has no keys: the moved ones sign the requests
        image = cloud.import_image(__file__, region="s3a", name="py")
        assert image.status == "Available"


def test_tls_is_verified_and_a_ca_bundle_can_be_trusted(cloud: ir.Cloud, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from s3_server import self_signed_cert
    cert, key = self_signed_cert(tmp_path)
    with moto_server(tls=(cert, key)) as server:
        assert server.endpoint.startswith("https://")
        import boto3
        boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1",
                     aws_access_key_id=server.access_key_id,
                     aws_secret_access_key=server.secret_access_key,
                     verify=str(cert)).create_bucket(Bucket="tls")
        uri = s3_uri(server, "tls")
        keys = {"access_key_id": server.access_key_id,
                "secret_access_key": server.secret_access_key}
        with pytest.raises(ir.ImageRelayError) as excinfo:  # the system CAs do not know it
            cloud.add_region("tls1", uri, **keys)
        assert excinfo.value.code == "Region.StoreUnavailable"
        assert "TLS" in excinfo.value.message and "ca_bundle=" in excinfo.value.message
        assert server.secret_access_key not in str(excinfo.value)
        cloud.add_region("tls2", uri + f"&ca_bundle={cert}", **keys)
        monkeypatch.setenv("AWS_CA_BUNDLE", str(cert))
        cloud.add_region("tls3", uri, **keys)


def test_session_token_is_sent_signed_and_never_shown(cloud: ir.Cloud, s3: S3Server,
                                                      bucket: str, proxy: FaultProxy,
                                                      files: Path) -> None:
    import boto3
    keys = {"endpoint_url": s3.endpoint, "region_name": "us-east-1",
            "aws_access_key_id": s3.access_key_id, "aws_secret_access_key": s3.secret_access_key}
    iam = boto3.client("iam", **keys)
    trust = ('{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", '
             '"Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]}')
    iam.create_role(RoleName="relay-role", AssumeRolePolicyDocument=trust)
    iam.put_role_policy(RoleName="relay-role", PolicyName="all",
                        PolicyDocument=__import__("s3_server").POLICY)
    temp = boto3.client("sts", **keys).assume_role(
        RoleArn="arn:aws:iam::123456789012:role/relay-role", RoleSessionName="relay")
    creds = temp["Credentials"]
    token = creds["SessionToken"]
    uri = s3_uri(s3, bucket, endpoint=proxy.endpoint)
    with pytest.raises(ir.ImageRelayError) as excinfo:  # moto checks the token: a wrong one fails
        cloud.add_region("bad", uri, access_key_id=creds["AccessKeyId"],
                         secret_access_key=creds["SecretAccessKey"], session_token=token + "x")
    assert excinfo.value.code == "Region.StoreUnavailable"
    assert token not in str(excinfo.value) and token not in repr(excinfo.value)
    region = cloud.add_region("s3a", uri, access_key_id=creds["AccessKeyId"],
                              secret_access_key=creds["SecretAccessKey"], session_token=token)
    job = cloud.import_image(make_dense(files / "a.raw", 3 * CHUNK), region="bj",
                             name="a").replicate("s3a")
    job.wait(timeout=60)
    assert job.state == "Completed", job.to_dict()
    sent = [h for _, _, h in proxy.requests if h.get("x-amz-security-token") == token]
    assert len(sent) >= 3 + 3  # the add_region probe and this copy's chunks, at least
    assert all("x-amz-security-token" in h["authorization"].split("SignedHeaders=")[1]
               for h in sent)
    shown = (repr(region) + repr(cloud.regions) + repr(job.to_dict()) +
             repr([e.detail for e in cloud.events()]) + repr(cloud.events()))
    assert token not in shown and creds["SecretAccessKey"] not in shown


def test_virtual_host_addressing(cloud: ir.Cloud, s3: S3Server, bucket: str,
                                 files: Path) -> None:
    # bucket.localhost: curl resolves *.localhost to the loopback itself, and moto takes the
    # bucket from the Host header for any host but a bare "localhost" or an IP address.
    port = s3.endpoint.rsplit(":", 1)[1]
    add_s3_region(cloud, s3, "s3a", bucket, endpoint=f"http://localhost:{port}",
                  extra="&addressing=virtual")
    src = make_sparse(files / "img.raw", 1 * MiB)
    job = cloud.import_image(src, region="bj", name="img").replicate("s3a")
    job.wait(timeout=60)
    assert job.state == "Completed", job.to_dict()
    assert chunk_keys(s3, bucket)  # in that bucket, at the usual keys
    assert job.copies["s3a"].export(files / "out.raw").read_bytes() == src.read_bytes()


def test_a_bucket_emptied_mid_copy_never_yields_an_available_copy_missing_chunks(
        open_cloud, s3: S3Server, bucket: str, files: Path) -> None:
    # The object store restarted empty and the bucket was made again within the retry window:
    # every chunk written so far is gone. The copy confirms what the bucket holds before it
    # commits, writes the lost chunks again, and the copy verifies whole.
    cloud = open_cloud(bandwidth=2 * MiB)
    add_s3_region(cloud, s3, "s3a", bucket)
    src = make_dense(files / "big.raw", 6 * MiB)
    image = cloud.import_image(src, region="bj", name="big")
    job = image.replicate("s3a")
    wait_until(lambda: len(chunk_keys(s3, bucket)) >= 8)
    client = s3.client()
    for key in s3.keys(bucket):
        client.delete_object(Bucket=bucket, Key=key)
    job.wait(timeout=120, raise_on_error=False)
    assert job.state == "Completed", job.to_dict()
    copy = job.copies["s3a"]
    assert copy.status == "Available"
    assert copy.verify() == image.digest
    assert copy.export(files / "out.raw").read_bytes() == src.read_bytes()
