"""The command line of `imagerelay serve` and of access keys: `accounts keys create|list|
delete` (the secret shown once, kept 0600 in a 0700 directory), and `serve` itself run as
an operator runs it: every region on consecutive ports, one log line per request with no
secret, HTTPS, a clean stop on SIGTERM, clear errors for bad flags."""

from __future__ import annotations

import http.client
import http.server
import io
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from baidubce import protocol

import imagerelay as ir
from imagerelay import cli as cli_module
from serve_support import assert_bcc_error, bcc, http_server, wait_for_port

IMAGERELAY = str(Path(sys.executable).parent / "imagerelay")


def cli(home: Path, *args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
    """``imagerelay --home HOME ARGS`` run in this process (``cli.main``), as the script
    runs it; asserts the exit status."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli_module.main(["--home", str(home), *args])
    proc = subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())
    assert proc.returncode == expect, (proc.returncode, proc.stdout, proc.stderr)
    return proc


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    cli(h, "accounts", "add", "team-a")
    return h


# -- keys ---------------------------------------------------------------------------------------
def test_keys_create_list_delete(home: Path) -> None:
    created = json.loads(cli(home, "accounts", "keys", "create", "team-a", "--json").stdout)
    assert set(created) == {"access_key_id", "secret_access_key"}
    key_id, secret = created["access_key_id"], created["secret_access_key"]
    assert len(key_id) == 32 and int(key_id, 16) >= 0 and len(secret) == 32
    directory = home / "access-keys"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    files = list(directory.iterdir())
    assert [f.name for f in files] == [f"{key_id}.json"]
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    human = cli(home, "accounts", "keys", "create", "team-a").stdout
    assert "secret access key" in human and "shown this once" in human

    listed = cli(home, "accounts", "keys", "list", "team-a", "--json")
    ids = json.loads(listed.stdout)
    assert ids[0] == key_id and len(ids) == 2
    table = cli(home, "accounts", "keys", "list", "team-a").stdout
    assert key_id in table and secret not in table and secret not in listed.stdout
    assert json.loads(cli(home, "accounts", "keys", "list", "default", "--json").stdout) == []
    # The secret is in no catalog file and no event.
    for path in home.glob("*.db*"):
        assert secret.encode() not in path.read_bytes()
    assert secret not in cli(home, "events", "--json").stdout

    cli(home, "accounts", "keys", "delete", "team-a", key_id)
    assert key_id not in cli(home, "accounts", "keys", "list", "team-a", "--json").stdout
    err = cli(home, "accounts", "keys", "delete", "team-a", key_id, expect=1).stderr
    assert err.startswith("error: InvalidParameter:") and "no access key" in err
    other = json.loads(cli(home, "accounts", "keys", "create", "default", "--json").stdout)
    # Another account's key is not found either, and stays.
    cli(home, "accounts", "keys", "delete", "team-a", other["access_key_id"], expect=1)
    assert other["access_key_id"] in cli(home, "accounts", "keys", "list", "default").stdout
    assert "NoSuchAccount" in cli(home, "accounts", "keys", "create", "nobody",
                                  expect=1).stderr
    assert "NoSuchAccount" in cli(home, "accounts", "keys", "list", "nobody", expect=1).stderr


def test_removing_an_account_removes_its_keys(tmp_path: Path) -> None:
    with ir.open(tmp_path / "home") as cloud:
        cloud.add_account("temp")
        key = cloud.create_access_key("temp")
        assert [k.access_key_id for k in cloud.access_keys("temp")] == [key.access_key_id]
        assert cloud.access_keys("temp")[0].secret_access_key is None
        assert key.secret_access_key not in repr(key)
        cloud.remove_account("temp")
        assert not (tmp_path / "home" / "access-keys" / f"{key.access_key_id}.json").exists()


# -- serve ---------------------------------------------------------------------------------------
def free_ports(count: int) -> int:
    """A first port with ``count`` free ports from it (checked by binding them)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            first = s.getsockname()[1]
        if first + count >= 65535:
            continue
        socks = []
        try:
            for n in range(count):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", first + n))
            return first
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free ports")


class Served:
    def __init__(self, home: Path, log: Path, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGERELAY_")}
        self.log = log
        self.proc = subprocess.Popen([IMAGERELAY, "--home", str(home), "serve", *args],
                                     stdout=subprocess.DEVNULL, stderr=log.open("w"),
                                     stdin=subprocess.DEVNULL, env=env)

    def wait_ready(self, ports: list[int]) -> None:
        for port in ports:
            wait_for_port(port)

    def text(self) -> str:
        return self.log.read_text()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


@pytest.fixture
def keys(home: Path) -> dict[str, str]:
    return json.loads(cli(home, "accounts", "keys", "create", "team-a", "--json").stdout)


@pytest.fixture
def served(home: Path, tmp_path: Path) -> Iterator[tuple[Served, int]]:
    port = free_ports(3)
    server = Served(home, tmp_path / "serve.log", "--port", str(port))
    try:
        server.wait_ready([port, port + 1, port + 2])
        yield server, port
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()


def test_serve_every_region_and_stop_on_sigterm(home: Path, keys: dict[str, str],
                                                served: tuple[Served, int]) -> None:
    server, port = served
    key = (keys["access_key_id"], keys["secret_access_key"])
    for n, region in enumerate(["bj", "gz", "su"]):
        client = bcc(f"http://127.0.0.1:{port + n}", key)
        assert client.list_images().images == []
        assert_bcc_error(lambda: client.get_image("m-aaaaaaaa"), "NoSuchImage", 404)
    assert server.stop() == 0
    text = server.text()
    for n, region in enumerate(["bj", "gz", "su"]):
        assert f"region {region}: http://127.0.0.1:{port + n}" in text
    lines = [line for line in text.splitlines() if "request_id=" in line]
    assert len(lines) == 6 and all("account=team-a" in line for line in lines), lines
    assert "status=404" in lines[1] and "duration_ms=" in lines[1]
    assert "stopping: finishing the requests in flight" in text and "stopped" in text
    assert keys["secret_access_key"] not in text


def _signed_get(port: int, host: str, path: str, key: tuple[str, str],
                message: list[str] | None = None) -> tuple[int, str]:
    """GET ``path`` from the listener on ``port``, signed (by the BCC SDK's signer) for
    ``host``: what a replay of a request made for another endpoint looks like."""
    from baidubce.auth import bce_v1_signer
    from baidubce.auth.bce_credentials import BceCredentials

    headers = {b"host": host.encode(), b"content-length": b"0",
               b"x-bce-date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()).encode()}
    auth = bce_v1_signer.sign(BceCredentials(key[0].encode(), key[1].encode()), b"GET",
                              path.encode(), headers, {})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers={**{k.decode(): v.decode() for k, v in headers.items()},
                                           "authorization": auth.decode()})
        answer = conn.getresponse()
        body = json.loads(answer.read() or b"{}")
    finally:
        conn.close()
    if message is not None:
        message.append(body.get("message", ""))
    return answer.status, body.get("code", "")


def test_a_request_signed_for_one_regions_endpoint_is_refused_at_anothers(
        home: Path, keys: dict[str, str], served: tuple[Served, int]) -> None:
    server, port = served  # bj on port, gz on port + 1, su on port + 2
    key = (keys["access_key_id"], keys["secret_access_key"])
    # Each endpoint answers requests signed for itself, by address or loopback name.
    assert _signed_get(port, f"127.0.0.1:{port}", "/v2/image", key) == (200, "")
    assert _signed_get(port, f"localhost:{port}", "/v2/image", key) == (200, "")
    # The same account's request, signed for gz's endpoint, replayed to bj's and su's.
    for replayed_to in (port, port + 2):
        for host in (f"127.0.0.1:{port + 1}", f"localhost:{port + 1}"):
            assert _signed_get(replayed_to, host, "/v2/image", key) == (403, "AccessDenied")
    assert _signed_get(port + 1, f"127.0.0.1:{port + 1}", "/v2/image", key) == (200, "")
    said: list[str] = []
    _signed_get(port, f"127.0.0.1:{port + 1}", "/v2/image", key, said)
    assert said == [f"the request was signed for 127.0.0.1:{port + 1}, region gz's endpoint; "
                    "this endpoint serves region bj"]
    assert server.stop() == 0


def test_public_hosts_are_the_only_ones_an_endpoint_answers(
        home: Path, keys: dict[str, str], tmp_path: Path) -> None:
    port = free_ports(2)
    server = Served(home, tmp_path / "serve.log", "--listen", f"bj=127.0.0.1:{port}",
                    "--listen", f"gz=127.0.0.1:{port + 1}",
                    "--public-host", "bj=bcc.bj.example.com",
                    "--public-host", "gz=bcc.gz.example.com:8443")
    key = (keys["access_key_id"], keys["secret_access_key"])
    try:
        server.wait_ready([port, port + 1])
        # Behind a proxy: the name clients sign, whatever port the proxy listens on for bj.
        assert _signed_get(port, "bcc.bj.example.com", "/v2/image", key) == (200, "")
        assert _signed_get(port, "BCC.BJ.example.com:443", "/v2/image", key) == (200, "")
        assert _signed_get(port + 1, "bcc.gz.example.com:8443", "/v2/image", key) == (200, "")
        for port_to, host in ((port, f"127.0.0.1:{port}"), (port, "bcc.gz.example.com:8443"),
                              (port + 1, "bcc.gz.example.com:443"),
                              (port + 1, "bcc.bj.example.com")):
            assert _signed_get(port_to, host, "/v2/image", key) == (403, "AccessDenied"), host
    finally:
        assert server.stop() == 0
    err = cli(home, "serve", "--public-host", "bj", expect=1).stderr
    assert "give REGION=HOST or REGION=HOST:PORT" in err
    err = cli(home, "serve", "--public-host", "xx=a.example.com", expect=1).stderr
    assert "NoSuchRegion" in err


class _Stalling(http.server.BaseHTTPRequestHandler):
    """An import source whose GET waits for ``release`` (``stalled`` is set meanwhile)."""
    protocol_version = "HTTP/1.1"
    data = os.urandom(4 * 65536)
    stalled = threading.Event()
    release = threading.Event()

    def log_message(self, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.data)))
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802
        self.stalled.set()
        self.release.wait(60)
        self.do_HEAD()
        self.wfile.write(self.data)


def test_sigterm_finishes_the_requests_in_flight(home: Path, keys: dict[str, str],
                                                 tmp_path: Path) -> None:
    with http_server(_Stalling) as source:
        _in_flight_at_sigterm(home, keys, tmp_path, source.server_address[1])


def _in_flight_at_sigterm(home: Path, keys: dict[str, str], tmp_path: Path,
                          source_port: int) -> None:
    port = free_ports(1)
    server = Served(home, tmp_path / "serve.log", "--listen", f"bj=127.0.0.1:{port}",
                    "--allow-import-host", "127.0.0.1")
    try:
        server.wait_ready([port])
        client = bcc(f"http://127.0.0.1:{port}",
                     (keys["access_key_id"], keys["secret_access_key"]))
        answer: list[str] = []
        url = f"http://127.0.0.1:{source_port}/disk.raw"
        call = threading.Thread(target=lambda: answer.append(client.import_custom_image(
            "ubuntu", "x86_64", "linux", "22.04", "in-flight", url).id))
        call.start()
        assert _Stalling.stalled.wait(30)  # the import request is in flight, reading
        server.proc.send_signal(signal.SIGTERM)

        def refused() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return False
            except OSError:
                return True
        deadline = time.monotonic() + 20
        while not refused():  # no new connection is accepted...
            assert time.monotonic() < deadline, "still accepting after SIGTERM"
            time.sleep(0.05)
        assert server.proc.poll() is None  # ...while the one in flight is not dropped
        _Stalling.release.set()
        call.join(60)
        assert len(answer) == 1 and answer[0].startswith("m-")
        assert server.proc.wait(60) == 0
        text = server.text()
        assert text.index("stopping") < text.index("POST /v2/image/import account=team-a "
                                                   "status=200")
    finally:
        _Stalling.release.set()
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()


def test_serve_https(home: Path, keys: dict[str, str], tmp_path: Path,
                     monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key_file), "-out", str(cert)], check=True,
                   capture_output=True)
    port = free_ports(1)
    server = Served(home, tmp_path / "serve.log", "--listen", f"gz=127.0.0.1:{port}",
                    "--tls-cert", str(cert), "--tls-key", str(key_file))
    try:
        server.wait_ready([port])
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trust the test's own certificate
        client = bcc(f"https://127.0.0.1:{port}",
                     (keys["access_key_id"], keys["secret_access_key"]))
        client.config.protocol = protocol.HTTPS
        assert client.list_images().images == []
        assert server.stop() == 0
        assert f"region gz: https://127.0.0.1:{port}" in server.text()
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()


def test_serve_refuses_bad_flags(home: Path, tmp_path: Path) -> None:
    for args, words in ((["--listen", "bogus"], "give REGION=HOST:PORT"),
                        (["--listen", "bj=::1:8080"], "IPv6 host in brackets"),
                        (["--listen", "bj=127.0.0.1:0"], "give REGION=HOST:PORT"),
                        (["--listen", "bj=127.0.0.1:８０８０"], "give REGION=HOST:PORT"),
                        (["--listen", "xx=127.0.0.1:8080"], "NoSuchRegion"),
                        (["--listen", "bj=127.0.0.1:8080", "--listen", "bj=127.0.0.1:8081"],
                         "given twice"),
                        (["--listen", "bj=127.0.0.1:8080", "--tls-cert", "c.pem"],
                         "--tls-cert and --tls-key go together"),
                        (["--port", "65535"], "must lie within"),
                        (["--metrics-allow", "everyone"], "--metrics-allow everyone")):
        err = cli(home, "serve", *args, expect=1).stderr
        assert err.startswith("error: ") and words in err, err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        err = cli(home, "serve", "--listen", f"bj=127.0.0.1:{port}", expect=1).stderr
        assert f"cannot listen on 127.0.0.1:{port} for region bj" in err

