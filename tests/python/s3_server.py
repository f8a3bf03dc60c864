"""A real S3 server for the tests: moto's server on 127.0.0.1 with signature checking on,
and a fault-injecting HTTP proxy in front of it.

moto checks SigV4 signatures once INITIAL_NO_AUTH_ACTION_COUNT requests have been served:
the first three create an IAM user, its policy and its access key, then every request must
be signed with that key.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import random
import socket
import socketserver
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

VENV_BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"
POLICY = ('{"Version": "2012-10-17", "Statement": '
          '[{"Effect": "Allow", "Action": "*", "Resource": "*"}]}')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("moto_server exited at start")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError("moto_server did not start")


@dataclass
class S3Server:
    endpoint: str
    access_key_id: str
    secret_access_key: str
    proc: subprocess.Popen[bytes] = field(repr=False)

    def client(self, endpoint: str | None = None):  # boto3 S3 client with the real key
        import boto3
        from botocore.config import Config
        return boto3.client("s3", endpoint_url=endpoint or self.endpoint, region_name="us-east-1",
                            aws_access_key_id=self.access_key_id,
                            aws_secret_access_key=self.secret_access_key,
                            config=Config(s3={"addressing_style": "path"},
                                          retries={"max_attempts": 1}))

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        c = self.client()
        out: list[str] = []
        for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            out += [o["Key"] for o in page.get("Contents", [])]
        return out


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, signed by itself, and its key (PEM)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "imagerelay test CA")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@contextlib.contextmanager
def moto_server(tls: tuple[Path, Path] | None = None) -> Iterator[S3Server]:
    """``tls``: (certificate, key) to serve https:// with."""
    import boto3
    port = free_port()
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="3", MOTO_ALLOW_NONEXISTENT_REGION="1")
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        env.pop(k, None)
    tls_args = ["-c", str(tls[0]), "-k", str(tls[1])] if tls else []
    proc = subprocess.Popen([str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port),
                             *tls_args],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_listening(port, proc)
        endpoint = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                           aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap",
                           verify=str(tls[0]) if tls else None)
        iam.create_user(UserName="relay")
        iam.put_user_policy(UserName="relay", PolicyName="all", PolicyDocument=POLICY)
        key = iam.create_access_key(UserName="relay")["AccessKey"]
        yield S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"], proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- the fault proxy ----------------------------------------------------------------------
SLOWDOWN = (b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>"
            b"<Message>Please reduce your request rate.</Message></Error>")
INVALID_REQUEST = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>InvalidRequest</Code>"
                   b"<Message>Unsupported header</Message></Error>")


class FaultProxy:
    """An HTTP/1.1 proxy on 127.0.0.1 that forwards each request to the server and, with the
    configured probabilities, drops the connection, answers 503 SlowDown, truncates the
    response body or stalls before answering. ``faults`` may be changed at any time;
    ``fault_filter(method, path)`` limits them to the requests it accepts. The request lines
    and headers seen are kept in ``requests`` (secrets in them are the tests' own)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.faults: dict[str, float] = {}
        self.fault_filter: Callable[[str, str], bool] | None = None
        self.stall_seconds = 2.0
        self.stalls_over = threading.Event()  # set: every stall ends now (and at close)
        # Requests carrying any of these headers get 400 InvalidRequest, as from an older
        # S3-compatible server that does not know them.
        self.refused_headers: set[str] = set()
        self.counts: dict[str, int] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # method, path, headers
        self.lock = threading.Lock()
        self.rng = random.Random(1234)
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._serve(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stalls_over.set()  # a stalled client is not left waiting past the test
        self.server.shutdown()
        self.server.server_close()

    def _pick(self, method: str, path: str) -> str | None:
        with self.lock:
            if self.fault_filter is not None and not self.fault_filter(method, path):
                return None
            r = self.rng.random()
            for name, p in self.faults.items():
                if r < p:
                    self.counts[name] = self.counts.get(name, 0) + 1
                    return name
                r -= p
        return None

    @staticmethod
    def _read_request(conn: socket.socket, buf: bytearray) -> bytes | None:
        while b"\r\n\r\n" not in buf:
            data = conn.recv(65536)
            if not data:
                return None
            buf += data
        head_end = buf.index(b"\r\n\r\n") + 4
        length = 0
        for line in bytes(buf[:head_end]).split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(buf) < head_end + length:
            data = conn.recv(1 << 20)
            if not data:
                return None
            buf += data
        request = bytes(buf[:head_end + length])
        del buf[:head_end + length]
        return request

    def _serve(self, conn: socket.socket) -> None:
        buf = bytearray()
        try:
            while True:
                request = self._read_request(conn, buf)
                if request is None:
                    return
                head_lines = request.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
                method, path = head_lines[0].split(" ")[:2]
                sent = {k.strip().lower(): v.strip() for k, _, v in
                        (line.partition(":") for line in head_lines[1:])}
                with self.lock:
                    self.requests.append((method, path, sent))
                if self.refused_headers & sent.keys():
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/xml\r\n"
                                 b"Content-Length: " + str(len(INVALID_REQUEST)).encode() +
                                 b"\r\n\r\n" + INVALID_REQUEST)
                    continue
                fault = self._pick(method, path)
                if fault == "drop":
                    return  # close without an answer
                if fault == "slowdown":
                    conn.sendall(b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
                                 b"Content-Length: " + str(len(SLOWDOWN)).encode() +
                                 b"\r\n\r\n" + SLOWDOWN)
                    continue
                up = socket.create_connection(("127.0.0.1", self.upstream_port))
                try:
                    up.sendall(request)
                    resp = http.client.HTTPResponse(up, method=method)
                    resp.begin()
                    body = resp.read()
                    headers = [(k, v) for k, v in resp.getheaders()
                               if k.lower() not in ("transfer-encoding", "connection",
                                                    "content-length")]
                    status = resp.status
                    reason = resp.reason
                    length = resp.getheader("content-length") if method == "HEAD" else None
                finally:
                    up.close()
                head = f"HTTP/1.1 {status} {reason}\r\n"
                for k, v in headers:
                    head += f"{k}: {v}\r\n"
                head += f"Content-Length: {length if length is not None else len(body)}\r\n\r\n"
                if fault == "stall":
                    self.stalls_over.wait(self.stall_seconds)
                if fault == "truncate" and len(body) > 1:
                    conn.sendall(head.encode() + body[:len(body) // 2])
                    return
                conn.sendall(head.encode() + body)
        except OSError:
            return
        finally:
            with contextlib.suppress(OSError):
                conn.close()
