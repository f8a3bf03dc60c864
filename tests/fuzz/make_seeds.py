"""Seeds for the kept fuzz corpora (tests/fuzz/corpus/<target>/), made by the real engine and
real servers: an image imported into a local region (its binary manifest and pack) and into
an S3 region on moto (the server's own answers: listings, errors, CopyObject, ranged GETs),
disk images made by qemu-img, the first release's JSON manifest of the same image.

    .venv/bin/python tests/fuzz/make_seeds.py        # writes build/fuzz/seeds/<target>/
    make fuzz-merge                                   # (after make fuzz) folds them in

Only needed again when a format changes; the corpora are kept in git, minimised.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "python"))

import imagerelay as ir  # noqa: E402
from s3_server import moto_server  # noqa: E402

CHUNK = 4096
SEPARATOR = b"\n=====\n"


def image_bytes() -> bytes:
    rng = random.Random(16)
    text = b"imagerelay fuzz seed image\n" * 200
    return (text[:CHUNK * 2] + bytes(CHUNK * 2) + rng.randbytes(CHUNK) + text[:CHUNK // 2])


def write(out: Path, target: str, name: str, data: bytes) -> None:
    (out / target).mkdir(parents=True, exist_ok=True)
    (out / target / name).write_bytes(data)


def answer(status: int, reason: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    head = f"{status} {reason}".rstrip() + "\n" + "".join(f"{k}: {v}\n" for k, v in headers) + "\n"
    return head.encode() + body


def local_seeds(out: Path, tmp: Path, data: bytes) -> None:
    source = tmp / "seed.raw"
    source.write_bytes(data)
    with ir.open(tmp / "home", limits=ir.Limits(chunk_size=CHUNK)) as cloud:
        cloud.add_region("seed", tmp / "store")
        image = cloud.import_image(source, region="seed", name="seed")
        for manifest in (tmp / "store").rglob("manifests/*.bin"):
            write(out, "fuzz_manifest", "engine-manifest.bin", manifest.read_bytes())
        packs = sorted(p for p in (tmp / "store").rglob("packs/*/*") if p.is_file())
        for i, pack in enumerate(packs[:2]):
            write(out, "fuzz_pack", f"engine-pack-{i}", pack.read_bytes())
        # A second version of a text image, each block edited in one place: its pack holds
        # deltas (IRPACK02, bases named in the footer).
        rng = random.Random(17)
        words = b" ".join(rng.choice([b"region", b"block", b"copy", b"kernel", b"0x1f", b"usr"])
                          + str(rng.randrange(1000)).encode() for _ in range(4 * CHUNK))
        words = words[:4 * CHUNK]
        (tmp / "words.raw").write_bytes(words)
        cloud.import_image(tmp / "words.raw", region="seed", name="words")
        edited = bytearray(words)
        for block in range(4):
            edited[block * CHUNK + 100:block * CHUNK + 116] = b"EDITED-BY-SEEDS!"
        (tmp / "words-2.raw").write_bytes(bytes(edited))
        cloud.import_image(tmp / "words-2.raw", region="seed", name="words")
    deltas = [p for p in (tmp / "store").rglob("packs/*/*")
              if p.is_file() and p.read_bytes().endswith(b"IRPACK02")]
    assert deltas, "the edited version was stored without a delta"
    write(out, "fuzz_pack", "engine-delta-pack", deltas[0].read_bytes())
    chunks = []
    for at in range(0, len(data), CHUNK):
        piece = data[at:at + CHUNK]
        chunks.append(None if piece.count(0) == len(piece) else hashlib.sha256(piece).hexdigest())
    first_release = {"version": 1, "size": len(data), "chunk_size": CHUNK,
                     "digest": "sha256:" + hashlib.sha256(data).hexdigest(), "chunks": chunks}
    write(out, "fuzz_manifest", "first-release.json",
          json.dumps(first_release, separators=(",", ":")).encode())
    write(out, "fuzz_manifest", "first-release-spaced.json", json.dumps(first_release).encode())
    marker = next((tmp / "store").rglob(".imagerelay-store"))
    write(out, "fuzz_store_files", "store-marker", marker.read_bytes())
    write(out, "fuzz_store_files", "credentials.json", json.dumps(
        {"access_key_id": "AKIDEXAMPLE", "secret_access_key": "s", "session_token": ""}).encode())
    assert image.status == "Available"


def s3_seeds(out: Path, tmp: Path, data: bytes) -> None:
    source = tmp / "seed-s3.raw"
    source.write_bytes(data)
    with moto_server() as s3:
        s3.create_bucket("seeds")
        uri = f"s3://seeds/region?endpoint={s3.endpoint}"
        with ir.open(tmp / "s3home", limits=ir.Limits(chunk_size=CHUNK)) as cloud:
            cloud.add_region("s3", uri, access_key_id=s3.access_key_id,
                             secret_access_key=s3.secret_access_key)
            cloud.import_image(source, region="s3", name="seed")
        client = s3.client()
        keys = [o["Key"] for o in client.list_objects_v2(Bucket="seeds")["Contents"]]
        pack_key = next(k for k in keys if "/packs/" in k)
        chunk_hash = hashlib.sha256(data[:CHUNK]).hexdigest()
        client.put_object(Bucket="seeds", Key=f"region/chunks/{chunk_hash[:2]}/{chunk_hash}",
                          Body=data[:CHUNK], ChecksumAlgorithm="SHA256")
        # Each call's raw answer, as moto sent it (botocore's after-call event).
        captured: list[bytes] = []

        def capture(http_response, **_: object) -> None:
            kept = [(k, v) for k, v in http_response.headers.items()
                    if k.lower() in ("content-length", "content-type", "accept-ranges",
                                     "content-range", "etag", "x-amz-checksum-sha256")]
            captured.append(answer(http_response.status_code, "", kept,
                                   http_response.content))

        client.meta.events.register("after-call.s3.*", capture)

        def raw(method: str, key: str, params: dict | None = None,
                headers: dict[str, str] | None = None) -> bytes:
            client_method = {"GET": "get_object", "HEAD": "head_object",
                             "LIST": "list_objects_v2"}[method]
            args = {"Bucket": "seeds", **({} if method == "LIST" else {"Key": key}),
                    **(params or {}), **({"Range": headers["Range"]} if headers else {})}
            with contextlib.suppress(Exception):
                getattr(client, client_method)(**args)
            return captured[-1]

        listing = raw("LIST", "", {"Prefix": "region/packs/"})
        truncated = raw("LIST", "", {"Prefix": "region/", "MaxKeys": 2})
        manifests = raw("LIST", "", {"Prefix": "region/manifests/"})
        chunks = raw("LIST", "", {"Prefix": "region/chunks/"})
        top = raw("LIST", "", {"Prefix": "region/", "Delimiter": "/"})
        missing = raw("GET", "region/nothing-here")
        marker = raw("GET", "region/.imagerelay-store")
        head_pack = raw("HEAD", pack_key)
        ranged = raw("GET", pack_key, headers={"Range": "bytes=0-99"})
        head_chunk = raw("HEAD", f"region/chunks/{chunk_hash[:2]}/{chunk_hash}")
        get_chunk = raw("GET", f"region/chunks/{chunk_hash[:2]}/{chunk_hash}")
        copied = client.copy_object(Bucket="seeds", Key="region/copy",
                                    CopySource={"Bucket": "seeds", "Key": pack_key},
                                    ChecksumAlgorithm="SHA256")
        copy_answer = answer(200, "OK", [("Content-Type", "application/xml")], (
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><CopyObjectResult><ETag>"
            f"{copied['CopyObjectResult']['ETag']}</ETag><ChecksumSHA256>"
            f"{copied['CopyObjectResult'].get('ChecksumSHA256', '')}</ChecksumSHA256>"
            "</CopyObjectResult>").encode())
        put_ok = answer(200, "OK", [("Content-Length", "0")], b"")
        ok_delete = answer(204, "No Content", [], b"")

        def seed(name: str, call: str, *answers: bytes) -> None:
            write(out, "fuzz_s3_answers", name, call.encode() + b"\n" + SEPARATOR.join(answers))

        seed("list-packs", "list-packs", listing)
        seed("list-chunks-truncated", "list-chunks", truncated, chunks)
        seed("list-manifests", "list-manifests", manifests)
        seed("has-chunks", "has-chunks", chunks)
        seed("check-new", "check", put_ok, ok_delete, missing, top, put_ok)
        seed("check-marker", "check", put_ok, ok_delete, marker)
        seed("copy-chunk", "copy-chunk", copy_answer)
        seed("get-chunk", "get-chunk", get_chunk)
        seed("get-chunk-missing", "get-chunk", missing)
        seed("has-chunk", "has-chunk", head_chunk, head_chunk)
        seed("read-pack", "read-pack", head_pack, ranged)
        seed("get-record-missing", "get-record", missing)

        # An import from an s3:// URL and from an http:// server that ignores ranges.
        object_bytes = data[:3000]
        whole = answer(200, "OK", [("Content-Length", str(len(object_bytes)))], object_bytes)
        head_ranged = answer(200, "OK", [("Content-Length", str(len(object_bytes))),
                                         ("Accept-Ranges", "bytes")], b"")
        partial = answer(206, "Partial Content", [("Accept-Ranges", "bytes")], object_bytes)
        write(out, "fuzz_url_import", "s3-ranged",
              b"s3\n4096\n" + head_ranged + SEPARATOR + partial)
        write(out, "fuzz_url_import", "s3-ranged-flaky",
              b"s3\n512 flaky\n" + head_ranged + SEPARATOR + partial)
        write(out, "fuzz_url_import", "http-stream",
              b"http\n1000\n" + answer(200, "OK", [("Content-Length", str(len(object_bytes)))],
                                       b"") + SEPARATOR + whole)
        write(out, "fuzz_url_import", "http-missing",
              b"http\n4096\n" + missing + SEPARATOR + missing)


def disk_seeds(out: Path, tmp: Path) -> None:
    for fmt, options in [("qcow2", []), ("vmdk", []), ("vpc", []),
                         ("vpc", ["-o", "subformat=fixed"]), ("vdi", []), ("qed", [])]:
        path = tmp / f"disk.{fmt}"
        subprocess.run(["qemu-img", "create", "-q", "-f", fmt, *options, str(path), "64K"],
                       check=True)
        name = fmt + ("-fixed" if options else "")
        data = path.read_bytes()
        # The headers are all the parser reads; a fixed VHD is raw bytes, then its footer.
        if len(data) > 16384 and not options:
            data = data[:16384]
        write(out, "fuzz_disk_format", name, data)
    write(out, "fuzz_disk_format", "raw", bytes(1024))


def text_seeds(out: Path) -> None:
    for i, uri in enumerate([
            "s3://bucket/prefix?endpoint=http://127.0.0.1:9000&region=us-east-1",
            "s3://bkt?endpoint=https://s3.example:443&addressing=virtual&verify_tls=false",
            "s3://bkt/a%20b/?ca_bundle=/etc/ca.pem&low_speed_time=30\nchunks/ab/ab12",
            "file:///data/bj", "/data/bj", "s3://Bad_Bucket", "ftp://x/y"]):
        write(out, "fuzz_store_uri", f"uri-{i}", uri.encode())
    # AWS's GET Object example (sigv4_test.cpp).
    write(out, "fuzz_sigv4", "aws-get-object", (
        "GET\n/test.txt\n\nRange: bytes=0-9\nx-amz-date: 20130524T000000Z\n"
        "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n"
        "\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\nus-east-1\n"
        "1369353600\n").encode())
    write(out, "fuzz_sigv4", "list", (
        "GET\n/bucket\nlist-type=2\nprefix=region/chunks/\ncontinuation-token=1/a+b==\n\n\n"
        "UNSIGNED-PAYLOAD\nus-east-1\n1700000000\n").encode())


def main() -> None:
    out = ROOT / "build" / "fuzz" / "seeds"
    shutil.rmtree(out, ignore_errors=True)
    tmp = ROOT / "build" / "fuzz" / "seed-work"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    data = image_bytes()
    with contextlib.suppress(KeyError):
        os.environ.pop("AWS_ACCESS_KEY_ID")
    local_seeds(out, tmp, data)
    s3_seeds(out, tmp, data)
    disk_seeds(out, tmp)
    text_seeds(out)
    shutil.rmtree(tmp, ignore_errors=True)
    for target in sorted(out.iterdir()):
        print(f"{target.name}: {len(list(target.iterdir()))} seeds")


if __name__ == "__main__":
    main()
