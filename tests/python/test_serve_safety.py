"""`imagerelay serve` against what a remote client may try: bosUrls that reach the server's
own files or network, bodies too large, malformed JSON, wrong types, unknown fields, paths
and methods; every error in BCC's body; one slow client never stalls the others; the
metrics; one log line per request, and no secret in any."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from baidubce.http import http_methods

import imagerelay as ir
from conftest import CHUNK, make_dense
from imagerelay.serve import ServeOptions, Service
from imagerelay.serve.api_error import ApiError
from imagerelay.serve.import_source import ImportPolicy
from serve_support import InProcessServer, LogRecords, assert_bcc_error, bcc, server_error


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("serve-safety")
    cloud = ir.open(root / "home", limits=ir.Limits(chunk_size=CHUNK))
    cloud.add_account("team-a")
    key = cloud.create_access_key("team-a")
    other = cloud.create_access_key("default")
    log = LogRecords()
    logging.getLogger("imagerelay").addHandler(log)
    logging.getLogger("imagerelay.serve").setLevel("INFO")
    server = InProcessServer(Service(cloud, ServeOptions(max_body=4096)), ["bj"])
    try:
        yield {"cloud": cloud, "key": key, "other": other, "server": server, "log": log,
               "client": bcc(server.endpoint("bj"), key)}
    finally:
        server.stop()
        logging.getLogger("imagerelay").removeHandler(log)
        cloud.close()


def send(served: dict[str, Any], method: bytes, path: bytes, body: Any = None,
         params: dict[str, Any] | None = None, prefix: bytes | None = None) -> Any:
    """A request signed by the SDK, with any body, params or path."""
    return served["client"]._send_request(method, path, body, params=params, prefix=prefix)


# -- bosUrl ------------------------------------------------------------------------------------
REFUSED = ["file:///etc/passwd", "/etc/passwd", "etc/passwd", "http://127.0.0.1:1/disk.raw",
           "http://localhost/disk.raw", "http://10.1.2.3/disk.raw",
           "http://169.254.169.254/latest/meta-data", "http://[::1]/disk.raw",
           "http://[::ffff:127.0.0.1]/disk.raw", "http://0.0.0.0/disk.raw",
           "https://192.168.1.1/disk.raw", "s3://bucket/disk.raw",
           "s3://bucket/disk.raw?endpoint=http://127.0.0.1:9000", "ftp://example.com/disk.raw",
           "gopher://127.0.0.1/x", ""]


@pytest.mark.parametrize("url", REFUSED)
def test_import_sources_a_client_may_not_name(served: dict[str, Any], url: str) -> None:
    client = served["client"]
    before = len(served["cloud"].as_account("team-a").images())
    message = assert_bcc_error(lambda: client.import_custom_image(
        "ubuntu", "x86_64", "linux", "22.04", "stolen", url), "InvalidParameter", 400)
    assert "bosUrl" in message
    assert len(served["cloud"].as_account("team-a").images()) == before


def test_the_operator_allows_a_directory_or_a_host(tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    disk = make_dense(allowed / "disk.raw", CHUNK)
    (allowed / "escape.raw").symlink_to("/etc/passwd")
    policy = ImportPolicy([allowed], ["127.0.0.1", "files.internal", "10.9.0.0/16"])
    assert policy.check(str(disk)) == str(disk)
    assert policy.check(f"file://{disk}") == str(disk)
    for outside in (str(allowed / "escape.raw"), f"{allowed}/../../etc/passwd",
                    "/etc/passwd", "disk.raw"):
        with pytest.raises(ApiError) as e:
            policy.check(outside)
        assert e.value.code == "InvalidParameter" and "bosUrl" in e.value.message
    assert policy.check("http://127.0.0.1:8000/d.raw") == "http://127.0.0.1:8000/d.raw"
    assert policy.check("http://files.internal/d.raw")  # named: not resolved
    assert policy.check("http://10.9.3.4/d.raw")
    assert policy.check("s3://b/k?endpoint=http://127.0.0.1:9000")
    for refused in ("http://10.8.0.1/d.raw", "http://127.0.0.2/d.raw", "http://[::1]/d.raw"):
        with pytest.raises(ApiError):
            policy.check(refused)


def test_an_allowed_directory_never_opens_the_home_or_a_store(tmp_path: Path) -> None:
    # An adversarial pass (December 3): with --allow-import-dir over the directory that held
    # the home, a client imported the home's access keys and another account's packs as
    # images (their digests an oracle for what they hold).
    root = tmp_path / "data"
    cloud = ir.open(root / "home", limits=ir.Limits(chunk_size=CHUNK))
    try:
        cloud.add_account("team-a")
        key = cloud.create_access_key("team-a")
        cloud.add_region("far", f"file://{root / 'far store'}")
        mine = cloud.import_image(make_dense(root / "mine.raw", 2 * CHUNK), region="far",
                                  name="others")
        server = InProcessServer(Service(cloud, ServeOptions(allow_import_dirs=[root])), ["bj"])
        try:
            client = bcc(server.endpoint("bj"), key)
            inside = [p for p in (root / "home").rglob("*") if p.is_file()]
            inside += [p for p in (root / "far store").rglob("*") if p.is_file()]
            assert any("packs" in p.parts for p in inside)
            link = root / "link-to-home"
            link.symlink_to(root / "home")
            for path in [*inside[:12], link / "catalog.db", root / "home" / "new" / ".." /
                         "catalog.db"]:
                message = assert_bcc_error(lambda: client.import_custom_image(
                    "ubuntu", "x86_64", "linux", "22.04", "stolen", str(path)),
                    "InvalidParameter", 400)
                assert "imagerelay's own home or of a region's store" in message, (path, message)
            assert cloud.as_account("team-a").images() == []
            # Beside them, in the allowed directory: imported.
            answer = client.import_custom_image("ubuntu", "x86_64", "linux", "22.04", "fine",
                                                str(root / "mine.raw"))
            assert cloud.as_account("team-a").image(answer.id).wait().digest == mine.digest
        finally:
            server.stop()
    finally:
        cloud.close()


# Found by an adversarial pass (December 2): each was read one way by the check and another
# by the engine, and imported (a scheme in capitals or after a space became a file path; the
# check read the first endpoint, the engine the last, with the server's S3 credentials).
TWO_WAYS = ["HTTP://1.1.1.1/secret.raw", " http://1.1.1.1/secret.raw",
            "http://1.1.1.1/secret.raw ", "http://1.1.1.1/a\x00b", "http://1.1.1.1\\@127.0.0.1/x",
            "http://a@b@127.0.0.1/x", "s3://b/k?endpoint=http://127.0.0.1:9000&endpoint=http://10.0.0.1",
            "s3://b/k?%65ndpoint=http://127.0.0.1:9000",
            "s3://b/k?endpoint=http://127.0.0.1:9000&verify_tls=false",
            "s3://b/k?endpoint=http://127.0.0.1:9000&ca_bundle=/etc/passwd",
            "s3://b/k?endpoint=http://127.0.0.1:9000/x@10.0.0.1",
            "s3://b/k?endpoint=http://127.0.0.1:9000%23@10.0.0.1", "S3://b/k?endpoint=http://127.0.0.1:9000"]


@pytest.mark.parametrize("url", TWO_WAYS)
def test_sources_two_parsers_could_read_two_ways_are_refused(tmp_path: Path, url: str) -> None:
    policy = ImportPolicy([tmp_path], ["127.0.0.1"])
    with pytest.raises(ApiError) as e:
        policy.check(url)
    assert e.value.code == "InvalidParameter" and "bosUrl" in e.value.message


def test_the_engine_refuses_an_s3_setting_given_twice(cloud: ir.Cloud) -> None:
    with pytest.raises(ir.ValidationError) as e:
        cloud.import_image("s3://bucket/k.raw?endpoint=http://127.0.0.1:1"
                           "&endpoint=http://127.0.0.1:2",
                           region="bj", name="twice")
    assert "twice" in e.value.message
    assert not cloud.images()


def test_what_once_gave_500s_gets_400s(served: dict[str, Any]) -> None:
    # Unicode digits ("²" is a digit to str.isdigit, not to int) and a body nested past the
    # parser's depth: each an InternalError (which SDKs retry) before.
    assert_bcc_error(lambda: send(served, http_methods.GET, b"/v1/events", params={"since": "²"},
                                  prefix=b"/imagerelay"), "InvalidParameter", 400)
    assert_bcc_error(lambda: send(served, http_methods.GET, b"/v1/events",
                                  params={"maxKeys": "¹"}, prefix=b"/imagerelay"),
                     "InvalidParameter", 400)
    assert_bcc_error(lambda: send(served, http_methods.POST, b"/image/m-aaaaaaaa", "[" * 4000,
                                  {"remoteCopy": None}), "MalformedJSON", 400)


# -- malformed requests -------------------------------------------------------------------------
def test_malformed_bodies_name_the_field(served: dict[str, Any]) -> None:
    image = "m-aaaaaaaa"
    copy = {"remoteCopy": None}
    cases = [
        (b"{not json", copy, "MalformedJSON", None),
        (b"[1, 2]", copy, "MalformedJSON", None),
        (json.dumps({"name": 5, "destRegion": ["gz"]}), copy, "InvalidParameter", "name"),
        (json.dumps({"destRegion": "gz"}), copy, "InvalidParameter", "destRegion"),
        (json.dumps({"destRegion": ["gz"], "speed": "fast"}), copy, "InvalidParameter",
         "speed"),
        (json.dumps({"account": ["team-b"]}), {"share": None}, "InvalidParameter", "account"),
        ("{}", {"remoteCopy": None, "share": None}, "InvalidParameter", "action"),
        ("{}", {}, "InvalidParameter", "action"),
        ("{}", {"remoteCopy": None, "colour": "red"}, "InvalidParameter", "colour"),
    ]
    for body, params, code, field in cases:
        message = assert_bcc_error(lambda: send(served, http_methods.POST,
                                                f"/image/{image}".encode(), body, params),
                                   code, 400)
        if field:
            assert field in message, message
    # Import: required fields and types.
    for body, field in (({"osName": "ubuntu"}, "name"), ({"name": "x"}, "bosUrl"),
                        ({"name": "x", "bosUrl": 7}, "bosUrl"),
                        ({"name": "x", "bosUrl": "http://a/b", "generationType": "EBC"},
                         "generationType")):
        assert field in assert_bcc_error(lambda: send(served, http_methods.POST,
                                                      b"/image/import", json.dumps(body)),
                                         "InvalidParameter", 400)


def test_bodies_have_a_size_limit(served: dict[str, Any]) -> None:
    body = json.dumps({"name": "x" * 5000, "destRegion": ["gz"]})
    assert_bcc_error(lambda: send(served, http_methods.POST, b"/image/m-aaaaaaaa", body,
                                  {"remoteCopy": None}), "EntityTooLarge", 413)


def test_a_client_without_a_key_is_refused_before_its_body_is_read(
        served: dict[str, Any]) -> None:
    # Found by an adversarial pass: bodies were read (and held) before the signature was
    # checked. Headers announcing a body, and no body: the refusal comes without waiting.
    port = int(served["server"].endpoint("bj").rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(b"POST /v2/image/import HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 4000\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            answer += chunk
    answer = answer.decode("latin-1")
    assert answer.startswith("HTTP/1.1 403"), answer
    assert "AccessDenied" in answer


def test_a_signed_content_md5_must_match_the_body(served: dict[str, Any]) -> None:
    body = json.dumps({"name": "x", "imageId": "m-aaaaaaaa"})
    good = base64.b64encode(hashlib.md5(body.encode()).digest())
    # Signed with the header (every header the SDK is given is signed): right digest, the
    # call goes through to its own answer; a digest of another body is refused.
    assert_bcc_error(lambda: served["client"]._send_request(
        http_methods.PUT, b"/image/rename", body, headers={b"content-md5": good}),
        "NoSuchImage", 404)
    other = base64.b64encode(hashlib.md5(b"{}").digest())
    assert_bcc_error(lambda: served["client"]._send_request(
        http_methods.PUT, b"/image/rename", body, headers={b"content-md5": other}),
        "BadDigest", 400)


def test_unknown_paths_and_methods(served: dict[str, Any]) -> None:
    assert_bcc_error(lambda: send(served, http_methods.GET, b"/instance"), "InvalidURI", 400)
    assert_bcc_error(lambda: send(served, http_methods.DELETE, b"/v2/region/bj", prefix=b""),
                     "InvalidURI", 400)
    assert_bcc_error(lambda: send(served, http_methods.GET, b"/image", prefix=b"/v3"),
                     "InvalidVersion", 404)
    assert_bcc_error(lambda: send(served, http_methods.PUT, b"/image"), "MethodNotAllowed", 405)
    assert_bcc_error(lambda: send(served, http_methods.DELETE, b"/v1/jobs",
                                  prefix=b"/imagerelay"), "MethodNotAllowed", 405)
    # Nothing here removes a region or an account.
    assert [r.id for r in served["cloud"].regions] == ["bj", "gz", "su"]
    assert {a.id for a in served["cloud"].accounts} == {"default", "team-a"}


def test_errors_are_bccs_body_with_the_request_id(served: dict[str, Any]) -> None:
    port = served["server"].ports["bj"]
    for method, path in (("GET", "/v2/image"), ("PATCH", "/whatever"), ("GET", "/")):
        conn = __import__("http.client").client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request(method, path)
        answer = conn.getresponse()
        body = json.loads(answer.read())
        conn.close()
        assert answer.status == 403 and set(body) == {"requestId", "code", "message"}
        assert body["code"] == "AccessDenied"  # not signed: refused before anything else
        assert body["requestId"] == answer.getheader("x-bce-request-id")
    error = server_error(lambda: served["client"].get_image("m-aaaaaaaa"))
    assert error.code == "NoSuchImage" and error.request_id


# -- independence, metrics, logs ------------------------------------------------------------------
def test_a_slow_client_does_not_stall_the_others(served: dict[str, Any]) -> None:
    port = served["server"].ports["bj"]
    slow = []
    for _ in range(8):  # clients that send half a request and wait
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"POST /v2/image/import HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
        slow.append(s)
    try:
        results: list[int] = []

        def lister() -> None:
            for _ in range(5):
                results.append(len(served["client"].list_images().images) >= 0)

        threads = [threading.Thread(target=lister) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert results == [True] * 20
    finally:
        for s in slow:
            s.close()


def test_metrics(served: dict[str, Any]) -> None:
    served["client"].list_images()
    conn = __import__("http.client").client.HTTPConnection(
        "127.0.0.1", served["server"].ports["bj"], timeout=30)
    conn.request("GET", "/metrics")
    answer = conn.getresponse()
    text = answer.read().decode()
    conn.close()
    assert answer.status == 200 and answer.getheader("content-type").startswith("text/plain")
    assert 'imagerelay_serve_requests_total{region="bj",route="list_images",status="200"}' \
        in text
    assert "imagerelay_serve_request_duration_seconds_bucket" in text
    for state in ("Pending", "Running", "Completed", "Failed", "Cancelled"):
        assert f'imagerelay_copies{{state="{state}"}}' in text
    assert "imagerelay_copy_bytes_moved_total" in text
    assert "imagerelay_copy_queue_depth" in text


def test_one_log_line_per_request_and_no_secret(served: dict[str, Any]) -> None:
    log: LogRecords = served["log"]
    start = len(log.lines)
    served["client"].list_images()
    assert_bcc_error(lambda: served["client"].get_image("m-aaaaaaaa"), "NoSuchImage", 404)
    bad = bcc(served["server"].endpoint("bj"), (served["key"].access_key_id, "0" * 32))
    assert_bcc_error(lambda: bad.list_images(), "SignatureDoesNotMatch", 400)
    lines = [line for line in log.lines[start:] if "request_id=" in line]
    assert len(lines) == 3, lines
    assert "GET /v2/image account=team-a status=200 duration_ms=" in lines[0]
    assert "GET /v2/image/m-aaaaaaaa account=team-a status=404" in lines[1]
    assert "GET /v2/image account=- status=400" in lines[2]
    secrets = [served["key"].secret_access_key, served["other"].secret_access_key]
    for line in log.lines:
        assert not any(s in line for s in secrets), line
    events = served["cloud"].events()
    assert not any(s in json.dumps(e.detail) for e in events for s in secrets)
