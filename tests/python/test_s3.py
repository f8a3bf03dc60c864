"""S3 regions against a real S3 server (moto on 127.0.0.1, signatures checked): adding a
bucket as a region, replication in every direction, dedup, cancel, crash-resume, imports
from URLs, and a fault-injecting proxy between the engine and the server."""

from __future__ import annotations

import hashlib
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
    edited,
    assert_error,
    bytes_of_earlier_attempts,
    chunk_hashes,
    interrupt_when,
    make_dense,
    make_sparse,
    make_text,
    make_words,
    manifest_path,
    read_result,
    sha256_file,
    stored_bytes,
    wait_until,
)
from s3_server import (
    CODEC_RAW,
    CODEC_ZSTD_DELTA,
    PACK,
    FaultProxy,
    S3Server,
    block_hashes,
    free_port,
    moto_server,
    pack_blocks,
    pack_keys,
    stored_blocks,
)

import imagerelay as ir

MiB = 2**20
IMPORT_UNIT = 4 * MiB  # an import reads its source this much per request
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


def image_blocks(path: Path) -> set[str]:
    """The distinct blocks the engine stores for a file (all-zero blocks are never stored)."""
    return {h for h in chunk_hashes(path) if h is not None}


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


def test_a_region_takes_no_prefix_another_region_has(cloud: ir.Cloud, s3: S3Server,
                                                     bucket: str) -> None:
    """Two regions in one prefix would be one copy; one prefix inside another would list the
    other's objects as its own (an adversarial pass: both were taken)."""
    add_s3_region(cloud, s3, "s3a", bucket, prefix="relay")
    for prefix, how in (("relay", "is the store of region s3a"),
                        ("relay/inner", "is inside the store of region s3a")):
        with pytest.raises(ir.ImageRelayError) as excinfo:
            add_s3_region(cloud, s3, "s3b", bucket, prefix=prefix)
        assert_error(excinfo, ir.ValidationError, "InvalidParameter", 400)
        assert how in excinfo.value.message, excinfo.value.message
        assert s3.secret_access_key not in str(excinfo.value)
    # The whole bucket would hold relay/.
    with pytest.raises(ir.ImageRelayError) as excinfo:
        add_s3_region(cloud, s3, "s3b", bucket, prefix="")
    assert "holds the store of region s3a" in excinfo.value.message
    # A sibling prefix, even one that starts with the same letters, is another place.
    add_s3_region(cloud, s3, "s3b", bucket, prefix="relay2")
    assert {"s3a", "s3b"} <= {r.id for r in cloud.regions}


def test_an_emptied_prefix_is_unavailable_never_made_again(cloud: ir.Cloud, s3: S3Server,
                                                           bucket: str, files: Path) -> None:
    """An endpoint or bucket that now names another, empty place (the S3 side of a disk not
    mounted): the region's store is not made again there, nothing is taken for damaged, and
    all is well once the objects are back."""
    add_s3_region(cloud, s3, "s3a", bucket)
    image = cloud.import_image(make_dense(files / "a.raw", 3 * CHUNK), region="s3a", name="a")
    client = s3.client()
    moved = [k for k in s3.keys(bucket) if k.startswith("relay/")]
    for key in moved:
        client.copy_object(Bucket=bucket, Key="away/" + key,
                           CopySource={"Bucket": bucket, "Key": key})
        client.delete_object(Bucket=bucket, Key=key)
    with ir.open(cloud.home, limits=ir.Limits(chunk_size=CHUNK)) as other:  # a fresh process's view
        for call in (lambda: other.verify_image(image.id),
                     lambda: other.import_image(files / "a.raw", region="s3a", name="b")):
            with pytest.raises(ir.ImageRelayError) as excinfo:
                call()
            assert excinfo.value.code == "Region.StoreUnavailable", excinfo.value.message
            assert "made once" in excinfo.value.message
        assert other.image(image.id).status == "Available"
    assert not [k for k in s3.keys(bucket) if k.startswith("relay/")]
    for key in moved:
        client.copy_object(Bucket=bucket, Key=key,
                           CopySource={"Bucket": bucket, "Key": "away/" + key})
    with ir.open(cloud.home, limits=ir.Limits(chunk_size=CHUNK)) as other:
        assert other.verify_image(image.id) == image.digest
        assert other.image(image.id).status == "Available"


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
    marker = json.loads(body)
    assert (marker["format"], marker["version"]) == ("imagerelay-store", 2)
    # The prefix serves one home now: the one that took it (docs/integrity.md, "One home per
    # store"). The first home, which did not mark it, is refused at its next write.
    assert marker["home_path"] == str(files / "other-home")
    assert marker["place"] == f"s3:{s3.endpoint.split('://')[1]}/{bucket}/relay"
    with pytest.raises(ir.ImageRelayError) as excinfo:
        cloud.import_image(make_dense(files / "b.raw", CHUNK), region="s3a", name="b")
    assert excinfo.value.code == "Region.StoreUnavailable"
    assert f"another imagerelay home at {files / 'other-home'}" in excinfo.value.message


def test_a_copied_home_neither_uses_nor_sweeps_the_originals_bucket(
        cloud: ir.Cloud, s3: S3Server, bucket: str, files: Path, home: Path) -> None:
    """cp -r of a home with an S3 region: the copy's region names the same prefix, which
    stays the original's (docs/integrity.md, "One home per store")."""
    import shutil
    add_s3_region(cloud, s3, "s3a", bucket)
    image = cloud.import_image(make_dense(files / "a.raw", 3 * CHUNK), region="s3a", name="a")
    copy_home = files / "copied-home"
    shutil.copytree(home, copy_home)
    manifests = [k for k in s3.keys(bucket) if "/manifests/" in k]
    assert manifests
    with ir.open(copy_home) as copy:
        with pytest.raises(ir.ImageRelayError) as excinfo:
            copy.verify_image(image.id)
        assert excinfo.value.code == "Region.StoreUnavailable"
        assert f"another imagerelay home at {home}" in excinfo.value.message
        copy.delete_image(image.id)  # its own catalog only: the bucket is not its
        copy.remove_region("s3a")
    assert [k for k in s3.keys(bucket) if "/manifests/" in k] == manifests
    assert cloud.verify_image(image.id) == image.digest
    body = s3.client().get_object(Bucket=bucket, Key="relay/.imagerelay-store")["Body"].read()
    assert json.loads(body)["home_path"] == str(home)  # not released by the copy


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
def test_an_edited_version_goes_to_s3_as_deltas_and_reads_back_whole(
        cloud: ir.Cloud, s3: S3Server, bucket: str, files: Path) -> None:
    # Issue #12 (delta blocks): v2's edited blocks travel and are stored as deltas against
    # v1's blocks in the bucket; a copy back out of the bucket decodes them against bases it
    # reads with ranged GETs, each checked.
    add_s3_region(cloud, s3, "s3a", bucket)
    v1_file = make_words(files / "v1.raw", 24, seed=5)
    v2_file = edited(v1_file, files / "v2.raw", seed=6)
    v1 = cloud.import_image(v1_file, region="bj", name="golden")
    v1.replicate("s3a").wait(timeout=60)
    v2 = cloud.import_image(v2_file, region="bj", name="golden")
    job = v2.replicate("s3a")
    job.wait(timeout=60)
    task = job.tasks["s3a"]
    assert task.state == "Completed", job.to_dict()
    assert task.bytes_transferred == 12 * CHUNK
    assert task.bytes_sent < 12 * 2048, task.to_dict()
    in_bucket = dict(pack_blocks(s3, bucket))
    deltas = [b for b in in_bucket.values() if b.codec == CODEC_ZSTD_DELTA]
    assert len(deltas) == 12
    assert all(b.bases and all(base in in_bucket for base in b.bases) for b in deltas)
    copy = job.copies["s3a"]
    assert copy.verify() == sha256_file(v2_file)
    back = copy.replicate("gz").wait(timeout=60).copies["gz"]
    assert back.export(files / "back.raw").read_bytes() == v2_file.read_bytes()


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
    # Layout (issue #12): the 22 distinct blocks (zero blocks never stored) each once in
    # packs, one manifest, one record; no object per chunk.
    expected = image_blocks(src)
    assert len(expected) == 22
    listed = pack_blocks(s3, b1)
    assert sorted(h for h, _ in listed) == sorted(expected)  # each block exactly once
    # random data does not compress: stored raw, not inflated
    assert all(b.codec == CODEC_RAW and b.stored_length == b.raw_length for _, b in listed)
    keys = s3.keys(b1)
    assert f"relay/manifests/{a.id}.bin" in keys and f"relay/images/{a.id}.json" in keys
    assert all(k.startswith(("relay/packs/", "relay/manifests/", "relay/images/"))
               for k in keys if k != "relay/.imagerelay-store")
    assert pack_keys(s3, b1) == sorted(k for k in keys if k.startswith("relay/packs/"))
    # S3 -> S3, then S3 -> local: byte-identical at every step
    job2 = cloud.replicate(a.id, ["s3b"])
    job2.wait(timeout=60)
    assert job2.state == "Completed", job2.to_dict()
    b = job2.copies["s3b"]
    assert sorted(h for h, _ in pack_blocks(s3, b2, "deep/er")) == sorted(expected)
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
    assert 0 < job2.tasks["s3a"].bytes_sent <= CHUNK  # random: stored raw, never inflated
    v1_blocks, v2_blocks = image_blocks(src), image_blocks(files / "v2.raw")
    assert len(v1_blocks | v2_blocks) == 17
    assert sorted(h for h, _ in pack_blocks(s3, bucket)) == sorted(v1_blocks | v2_blocks)
    assert job2.copies["s3a"].export(files / "v2.out").read_bytes() == bytes(data)
    # Deleting an image removes the blocks only it used from the bucket, and keeps those
    # another image shares. (The changed block went into a pack of its own: that pack goes.
    # A dead block in a pack mostly live stays until the pack falls under half live and is
    # rewritten.)
    job2.copies["s3a"].delete()
    wait_until(lambda: block_hashes(s3, bucket) == v1_blocks, timeout=20)
    assert job.copies["s3a"].export(files / "v1.out").read_bytes() == src.read_bytes()
    job.copies["s3a"].delete()  # the last image: no pack is left behind
    wait_until(lambda: pack_keys(s3, bucket) == [], timeout=20)


def test_copies_to_and_from_s3_keep_each_block_as_stored(cloud: ir.Cloud, s3: S3Server,
                                                        bucket: str, home: Path,
                                                        files: Path) -> None:
    # Issue #12: compressed blocks travel as they are stored, to a bucket and back.
    add_s3_region(cloud, s3, "s3a", bucket)
    src = make_text(files / "a.raw", 5, random_chunks=1)
    job = cloud.import_image(src, region="bj", name="a").replicate("s3a")
    job.wait(timeout=60)
    local = stored_bytes(home, "bj")
    client = s3.client()
    for digest, where in stored_blocks(s3, bucket).items():
        body = client.get_object(Bucket=bucket, Key=where.pack,
                                 Range=f"bytes={where.offset}-"
                                       f"{where.offset + where.stored_length - 1}")["Body"].read()
        assert body == local[digest]
    assert job.tasks["s3a"].bytes_sent == sum(len(b) for b in local.values()) < 2 * CHUNK
    job2 = job.copies["s3a"].replicate("gz")
    job2.wait(timeout=60)
    assert stored_bytes(home, "gz") == local
    assert job2.copies["gz"].export(files / "a.out").read_bytes() == src.read_bytes()


def test_a_large_manifest_goes_up_in_parts(cloud: ir.Cloud, s3: S3Server, bucket: str,
                                          home: Path, files: Path) -> None:
    # Issue #12: a manifest above 8 MiB (an image above 16 GiB) is uploaded in parts read
    # from its spooled file one at a time, never whole in memory. A sparse 18 GiB image has a
    # 9.4 MB manifest: two parts.
    add_s3_region(cloud, s3, "s3a", bucket)
    size = 18 << 30
    src = make_sparse(files / "big.raw", size, {5 << 30: os.urandom(CHUNK),
                                                (17 << 30) + 4096: os.urandom(3 * CHUNK)})
    image = cloud.import_image(src, region="bj", name="big")
    job = image.replicate("s3a")
    job.wait(timeout=120)
    copy = job.copies["s3a"]
    key = f"relay/manifests/{copy.id}.bin"
    client = s3.client()
    head = client.head_object(Bucket=bucket, Key=key)
    assert head["ETag"].strip('"').endswith("-2"), head["ETag"]  # a multipart upload's
    stored = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert stored == manifest_path(home, "bj", image.id).read_bytes()
    assert len(stored) == 64 + 32 * (size // CHUNK) + 32
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")  # none left open
    # Read back from the bucket: the same image.
    job2 = copy.replicate("gz")
    job2.wait(timeout=120)
    back = job2.copies["gz"]
    assert back.digest == image.digest
    assert manifest_path(home, "gz", back.id).read_bytes() == stored


def test_uploads_a_killed_writer_left_open_are_aborted(open_cloud, s3: S3Server, bucket: str,
                                                       files: Path) -> None:
    # A process killed mid multipart upload of a manifest leaves the upload open: the bucket
    # keeps (and bills) its parts, and nothing lists them. The next engine on the home aborts
    # the region's uploads older than an hour (this test server dates every upload 2010),
    # and no one else's: an upload outside the region's prefix stays.
    cloud = open_cloud()
    add_s3_region(cloud, s3, "s3a", bucket)
    image = cloud.import_image(make_sparse(files / "a.raw", 4 * CHUNK, {0: os.urandom(CHUNK)}),
                               region="bj", name="a")
    copy = image.replicate("s3a").wait(timeout=60).copies["s3a"]
    cloud.close()
    client = s3.client()
    ours = client.create_multipart_upload(Bucket=bucket, Key="relay/manifests/m-killed01.bin")
    client.upload_part(Bucket=bucket, Key="relay/manifests/m-killed01.bin", PartNumber=1,
                       UploadId=ours["UploadId"], Body=b"x" * 1024)
    theirs = client.create_multipart_upload(Bucket=bucket, Key="someone-else/big.iso")

    def open_uploads() -> set[str]:
        return {u["UploadId"] for u in client.list_multipart_uploads(Bucket=bucket)
                .get("Uploads", [])}

    assert open_uploads() == {ours["UploadId"], theirs["UploadId"]}
    open_cloud()  # cleans up after killed processes in the background
    wait_until(lambda: open_uploads() == {theirs["UploadId"]},
               why=lambda: f"open uploads: {open_uploads()}")
    # The region's own objects are untouched.
    assert client.head_object(Bucket=bucket, Key=f"relay/manifests/{copy.id}.bin")


def test_a_manifest_upload_in_parts_gets_through_faults(
        cloud: ir.Cloud, s3: S3Server, bucket: str, proxy: FaultProxy, files: Path) -> None:
    add_s3_region(cloud, s3, "s3a", bucket, endpoint=proxy.endpoint)
    src = make_sparse(files / "big.raw", 17 << 30, {3 << 30: os.urandom(CHUNK)})
    image = cloud.import_image(src, region="bj", name="big")
    # A part's answer cut short on the way back, the completion answered 503: each request
    # is sent again, and the manifest is stored whole, with no upload left open.
    proxy.arm("truncate", lambda method, path: method == "PUT" and "partNumber=1" in path)
    proxy.arm("slowdown", lambda method, path: method == "POST" and "uploadId=" in path)
    job = image.replicate("s3a")
    job.wait(timeout=180)
    assert all(armed.fired == 1 for armed in proxy.armed)
    key = f"relay/manifests/{job.copies['s3a'].id}.bin"
    client = s3.client()
    assert client.head_object(Bucket=bucket, Key=key)["ETag"].strip('"').endswith("-2")
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")
    assert job.copies["s3a"].replicate("gz").wait(timeout=180).copies["gz"].status == "Available"


def test_a_copy_to_s3_costs_requests_per_pack_not_per_chunk(
        cloud: ir.Cloud, s3: S3Server, proxy: FaultProxy, bucket: str, files: Path) -> None:
    # Was test_plan_lists_a_small_bucket_instead_of_heading_each_chunk. Blocks now live in
    # packs and a plan looks them up in the region's index (a local cache of the pack
    # footers): no request per chunk, neither a HEAD nor a listing page. A copy costs a few
    # fixed requests and one PUT per 16 MiB pack (issue #12: <= 200 requests per GiB written).
    add_s3_region(cloud, s3, "s3a", bucket, endpoint=proxy.endpoint)

    def check_requests(packs_before: list[str], written: int) -> None:
        new_packs = sorted(set(pack_keys(s3, bucket)) - set(packs_before))
        pack_puts = [path for m, path, _ in proxy.requests if m == "PUT" and "/packs/" in path]
        assert sorted(path.split("/", 2)[2] for path in pack_puts) == new_packs  # each once
        # Full packs, and at most one written early (its first block waited 1 s).
        assert len(pack_puts) <= -(-written // PACK) + 1, pack_puts
        assert len(pack_puts) * 2**30 / written <= 200
        assert not [r for r in proxy.requests if r[0] == "HEAD"]
        assert not [r for r in proxy.requests if "/chunks/" in r[1]]  # no object per chunk
        others = [(m, path) for m, path, _ in proxy.requests if "/packs/" not in path]
        assert len(others) <= 10, others  # probe, marker, listings, manifest, record

    a_src = make_dense(files / "a.raw", 640 * CHUNK)  # 40 MiB: 3 packs
    a = cloud.import_image(a_src, region="bj", name="a")
    proxy.requests.clear()
    job = a.replicate("s3a")
    job.wait(timeout=120)
    assert job.state == "Completed", job.to_dict()
    assert job.tasks["s3a"].bytes_transferred == 640 * CHUNK
    check_requests([], 640 * CHUNK)
    # a new version: half its blocks are new; the rest are known from the index
    data = bytearray(a_src.read_bytes())
    for i in range(0, 640, 2):
        data[i * CHUNK:i * CHUNK + 8] = os.urandom(8)
    (files / "b.raw").write_bytes(bytes(data))
    b = cloud.import_image(files / "b.raw", region="bj", name="b")
    packs_of_a = pack_keys(s3, bucket)
    proxy.requests.clear()
    job2 = b.replicate("s3a")
    job2.wait(timeout=120)
    assert job2.state == "Completed", job2.to_dict()
    assert job2.tasks["s3a"].bytes_transferred == 320 * CHUNK
    check_requests(packs_of_a, 320 * CHUNK)
    assert sorted(h for h, _ in pack_blocks(s3, bucket)) == sorted(
        image_blocks(a_src) | image_blocks(files / "b.raw"))
    assert job2.copies["s3a"].export(files / "b.out").read_bytes() == bytes(data)


def test_cancel_copy_to_s3_mid_flight(open_cloud, s3: S3Server, bucket: str,
                                      files: Path) -> None:
    cloud = open_cloud(bandwidth=2 * MiB)
    add_s3_region(cloud, s3, "s3a", bucket)
    src = make_dense(files / "big.raw", 6 * MiB)
    image = cloud.import_image(src, region="bj", name="big")
    job = image.replicate("s3a")
    dest = job.tasks["s3a"].dest_image_id
    # A slow copy's blocks reach the bucket a pack at a time: a pack is written once its
    # first block has waited 1 s (here ~2 MiB), long before it is full.
    wait_until(lambda: len(stored_blocks(s3, bucket)) >= 4)
    assert job.refresh().tasks["s3a"].state == "Running"
    cloud.cancel_copy(dest)
    assert job.refresh().tasks["s3a"].state == "Cancelled"
    with pytest.raises(ir.NotFoundError):
        cloud.image(dest)
    # the partial packs are swept from the bucket, and none comes after the sweep (the
    # blocks still waiting in a pack in memory when the copy was cancelled)
    wait_until(lambda: pack_keys(s3, bucket) == [], timeout=20)
    time.sleep(2)
    assert pack_keys(s3, bucket) == []
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
        # Progress reaches the bucket a pack at a time: at 2 MiB/s, a pack of ~2 MiB once its
        # first block has waited 1 s.
        wait_until(lambda: len(stored_blocks(s3, bucket)) >= 8, timeout=30)
        assert child.poll() is None
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.stdout is not None and child.stderr is not None
    child.stdout.close()
    child.stderr.close()
    # A pack PUT whose body reached the server before the kill may still be stored after it:
    # count once the bucket has stopped changing. The blocks that were waiting in the pack in
    # memory died with the process.
    present = -1
    while (now := len(stored_blocks(s3, bucket))) != present:
        present = now
        time.sleep(0.5)
    assert 0 < present < 96
    assert block_hashes(s3, bucket) <= image_blocks(src)
    with ir.open(home, limits=ir.Limits(chunk_size=CHUNK)) as cloud:
        job = cloud.job(started["job"])
        job.wait(timeout=60)
        assert job.state == "Completed"
        task = job.tasks["s3a"]
        assert task.attempts == 2
        assert task.bytes_transferred == (bytes_of_earlier_attempts(cloud, task)
                                          + (96 - present) * CHUNK)
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


def test_credentials_in_an_import_url_are_kept_out_of_events_errors_and_files(
        cloud: ir.Cloud, home: Path, files: Path) -> None:
    # Found by an adversarial pass: a URL's password and a presigned URL's signature were
    # echoed in errors and kept in the image.created event (in catalog.db).
    import http.server
    src = make_dense(files / "disk.raw", CHUNK + 5)
    handler = type("H", (_RangeHandler,), {"data": src.read_bytes(), "gets": [],
                                           "honours_range": True, "says_ranges": True})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.handle_error = lambda *args: None  # type: ignore[method-assign]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    secrets = ("Hunter2Pw", "SiGnAtUrE99", "ToKeN77")
    base = f"http://alice:{secrets[0]}@127.0.0.1:{httpd.server_address[1]}"
    query = f"?X-Amz-Signature={secrets[1]}&token={secrets[2]}&v=1"
    try:
        image = cloud.import_image(f"{base}/disk.raw{query}", region="bj", name="with-creds")
        assert image.status == "Available"
        with pytest.raises(ir.ImageRelayError) as e:  # nothing listens there
            cloud.import_image(f"http://alice:{secrets[0]}@127.0.0.1:{free_port()}/d.raw{query}",
                               region="bj", name="unreachable")
    finally:
        httpd.shutdown()
        httpd.server_close()
    shown = [str(e.value), e.value.message]
    created = [ev for ev in cloud.events() if ev.type == "image.created"]
    assert created and "alice:***@127.0.0.1" in json.dumps(created[0].detail)
    shown += [json.dumps(ev.detail) for ev in cloud.events()]
    for text in shown:
        assert not any(s in text for s in secrets), text
    cloud.close()
    for path in home.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(s.encode() in data for s in secrets), path


@pytest.mark.parametrize("server", ["ranges", "no-ranges", "ignores-range"])
def test_import_from_http_url(cloud: ir.Cloud, files: Path, server: str) -> None:
    import http.server
    # An import reads its source in 4 MiB units (cut into 64 KiB blocks): three and a bit.
    src = make_dense(files / "disk.raw", 3 * IMPORT_UNIT + 5)
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
    units = -(-src.stat().st_size // IMPORT_UNIT)
    assert units == 4
    # Before the import, and again as it starts, its header is read (format and disk size:
    # test_formats.py) in a request of its own: 64 KiB.
    head = f"bytes=0-{64 * 1024 - 1}"
    if server == "ranges":  # one ranged GET per unit, each unit once, several at once
        assert handler.gets.count(head) == 2
        units_read = [g for g in handler.gets if g != head]
        assert sorted(units_read, key=lambda r: int(r.split("=")[1].split("-")[0])) == [
            f"bytes={lo}-{min(lo + IMPORT_UNIT, src.stat().st_size) - 1}"
            for lo in range(0, src.stat().st_size, IMPORT_UNIT)]
        assert handler.max_in_flight > 1
    elif server == "no-ranges":  # two header looks, dropped early; one streamed GET
        assert handler.gets == [None, None, None]
    else:  # the first ranged GETs were answered 200 (and dropped): the import streamed once
        assert handler.gets.count(head) == 2
        assert handler.gets.count(None) == 3
        assert len(handler.gets) - 5 <= units  # no unit was asked for twice


# -- cancel inside a request ----------------------------------------------------------------
def test_cancel_aborts_a_stalled_pack_request(cloud: ir.Cloud, s3: S3Server, bucket: str,
                                              proxy: FaultProxy, files: Path) -> None:
    # No low-speed timeout would end the stall: only the cancel, through curl's progress
    # callback, can free the requests in flight. (Was ..._stalled_chunk_request: a copy now
    # writes whole packs, one PUT each; this one's 8 blocks go in one pack PUT, the last
    # request of its data.)
    add_s3_region(cloud, s3, "s3a", bucket, endpoint=proxy.endpoint, extra="&low_speed_time=3600")
    image = cloud.import_image(make_dense(files / "a.raw", 8 * CHUNK), region="bj", name="a")
    proxy.stall_seconds = 120
    proxy.fault_filter = lambda method, path: method == "PUT" and "/packs/" in path
    proxy.faults = {"stall": 1.0}
    job = image.replicate("s3a")
    dest = job.tasks["s3a"].dest_image_id
    wait_until(lambda: proxy.counts.get("stall", 0) >= 1)
    # The proxy stalls after the server took the PUT: the pack is in the bucket (listed a
    # moment later on a loaded machine: a fresh-clone CI run once listed it empty at once).
    wait_until(lambda: len(pack_keys(s3, bucket)) == 1, timeout=10)
    started = time.monotonic()
    cloud.cancel_copy(dest)  # waits (a few seconds at most) for the copy to let go
    assert time.monotonic() - started < 10
    assert job.refresh().tasks["s3a"].state == "Cancelled"
    # The copy let go at once, so the cancel could sweep the pack that reached the server.
    assert pack_keys(s3, bucket) == []
    assert not any("manifests/" in k for k in s3.keys(bucket))
    with pytest.raises(ir.NotFoundError):
        cloud.image(dest)


# -- S3 -> S3 (formerly server-side copy) ---------------------------------------------------
# Server-side CopyObject of chunks is not used between packed stores (issue #12): a block
# lives inside a pack, so its bytes flow through the engine, read with ranged GETs of the
# source's packs, checked against their hashes and written in new packs (an accepted
# regression in traffic: the bytes are read from one bucket and written to the other).
def _pack_requests(proxy: FaultProxy, method: str) -> list[tuple[str, str, dict[str, str]]]:
    return [r for r in proxy.requests
            if r[0] == method and "/packs/" in r[1] and "list-type=" not in r[1]]


def test_s3_to_s3_fan_out_reads_the_source_packs_once(cloud: ir.Cloud, s3: S3Server,
                                                      proxy: FaultProxy, files: Path) -> None:
    # Was test_s3_to_s3_copies_chunks_server_side: the promise left is that a fan-out reads
    # the source's blocks once for all its destinations, in ranged GETs of whole spans of
    # packs (not one per block), and that no CopyObject is attempted.
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
    job2 = a.replicate(["s3b", "gz"])
    job2.wait(timeout=60)
    assert job2.state == "Completed", job2.to_dict()
    blocks = block_hashes(s3, b1)
    assert blocks == image_blocks(src) and block_hashes(s3, b2) == blocks
    assert not [r for r in proxy.requests if "x-amz-copy-source" in r[2]]
    puts = _pack_requests(proxy, "PUT")
    assert puts and all(f"/{b2}/" in path for _, path, _ in puts)
    gets = _pack_requests(proxy, "GET")
    assert gets and all(f"/{b1}/" in path and "range" in h for _, path, h in gets)
    # Ranged reads of spans of the pack, shared by both destinations and by readers waiting
    # on a span being read: not one GET per block or per destination. (Readers that start
    # before another's span may still read part of it again: not bounded here.)
    assert len(gets) < len(blocks), gets
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
    # Packs go without the checksum headers: none is refused. What keeps a pack's bytes
    # whole on the way is the signature: it covers the SHA-256 of the body sent.
    puts = _pack_requests(proxy, "PUT")
    assert puts and not [h for _, _, h in puts if "x-amz-checksum-sha256" in h]
    client = s3.client()
    for _, path, sent in puts:
        body = client.get_object(Bucket=b1, Key=path.split("/", 2)[2])["Body"].read()
        assert sent["x-amz-content-sha256"] == hashlib.sha256(body).hexdigest()
        assert "x-amz-content-sha256" in sent["authorization"].split("SignedHeaders=")[1]
    assert block_hashes(s3, b1) == image_blocks(src)
    # S3 -> S3: the bytes are read from s3a's packs, checked, and written in s3b's
    proxy.requests.clear()
    job2 = job.copies["s3a"].replicate("s3b")
    job2.wait(timeout=60)
    assert job2.state == "Completed", job2.to_dict()
    assert not [r for r in proxy.requests if "x-amz-copy-source" in r[2]]
    assert block_hashes(s3, b2) == image_blocks(src)
    assert job2.copies["s3b"].export(files / "out.raw").read_bytes() == src.read_bytes()


def _flip_a_byte_of_block(s3: S3Server, bucket: str, digest: str, **put_args: str) -> None:
    """Rewrites the pack that holds block ``digest`` whole, with one byte of that block
    flipped (a hand or a faulty server: the object is replaced, its size unchanged)."""
    where = stored_blocks(s3, bucket)[digest]
    client = s3.client()
    body = bytearray(client.get_object(Bucket=bucket, Key=where.pack)["Body"].read())
    body[where.offset + min(10, where.stored_length - 1)] ^= 0xFF
    client.put_object(Bucket=bucket, Key=where.pack, Body=bytes(body), **put_args)


@pytest.mark.parametrize("how", ["overwritten", "overwritten-with-its-checksum"])
def test_s3_to_s3_copy_of_a_tampered_pack_fails_with_integrity_error(
        cloud: ir.Cloud, s3: S3Server, files: Path, how: str) -> None:
    # Was test_server_side_copy_of_a_corrupt_chunk_fails_with_integrity_error: no server-side
    # copy now, so the bytes pass through the engine, which checks each block against its
    # hash. A pack object replaced with one block's bytes flipped ("with its checksum": the
    # server stores a SHA-256 of the altered bytes, so it vouches for them) must fail the
    # copy, mark the source damaged, and leave nothing corrupt Available.
    b1, b2 = f"ca-{os.getpid()}-{len(how)}", f"cb-{os.getpid()}-{len(how)}"
    s3.create_bucket(b1)
    s3.create_bucket(b2)
    add_s3_region(cloud, s3, "s3a", b1)
    add_s3_region(cloud, s3, "s3b", b2)
    src = make_dense(files / "a.raw", 6 * CHUNK)
    job = cloud.import_image(src, region="bj", name="a").replicate("s3a")
    job.wait(timeout=60)
    source = job.copies["s3a"]
    victim = chunk_hashes(src)[2]
    assert victim is not None
    extra = {"ChecksumAlgorithm": "SHA256"} if how.endswith("checksum") else {}
    _flip_a_byte_of_block(s3, b1, victim, **extra)
    job2 = source.replicate("s3b")
    job2.wait(timeout=60, raise_on_error=False)
    task = job2.tasks["s3b"]
    assert task.state == "Failed" and task.error_code == "Transfer.IntegrityError", task.to_dict()
    assert victim in task.error
    assert cloud.image(source.id).status == "NotAvailable"
    assert not [i for i in cloud.images(region="s3b") if i.status == "Available"]
    assert victim not in block_hashes(s3, b2)  # never copied


@pytest.mark.serial  # Ctrl-C: xdist workers ignore SIGINT, and their children inherit that
def test_ctrl_c_stops_an_export_and_a_verify_of_a_stalled_image(
        cloud: ir.Cloud, s3: S3Server, bucket: str, proxy: FaultProxy, files: Path) -> None:
    # Nothing but Ctrl-C (through the caller's cancel token down to curl) ends these stalls.
    add_s3_region(cloud, s3, "s3a", bucket, endpoint=proxy.endpoint, extra="&low_speed_time=3600")
    job = cloud.import_image(make_dense(files / "a.raw", 8 * CHUNK), region="bj",
                             name="a").replicate("s3a")
    job.wait(timeout=60)
    copy = job.copies["s3a"]
    proxy.stall_seconds = 120
    # Reads are ranged GETs of packs (listings of packs/ are left alone)
    proxy.fault_filter = lambda method, path: (method == "GET" and "/packs/" in path
                                               and "list-type=" not in path)
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
        cloud.remove_region("tls2")  # its store is one region's at a time
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
    assert len(sent) >= 3 + 3  # the add_region probe and this copy's requests, at least
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
    assert block_hashes(s3, bucket) == image_blocks(src)  # in that bucket, at the usual keys
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
    wait_until(lambda: len(stored_blocks(s3, bucket)) >= 8)  # a pack or more (see above)
    client = s3.client()
    for key in s3.keys(bucket):
        client.delete_object(Bucket=bucket, Key=key)
    job.wait(timeout=120, raise_on_error=False)
    assert job.state == "Completed", job.to_dict()
    copy = job.copies["s3a"]
    assert copy.status == "Available"
    assert copy.verify() == image.digest
    assert copy.export(files / "out.raw").read_bytes() == src.read_bytes()
