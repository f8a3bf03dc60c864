"""A real S3 server for the tests: moto's server on 127.0.0.1 with signature checking on,
and a fault-injecting HTTP proxy in front of it.

moto checks SigV4 signatures once INITIAL_NO_AUTH_ACTION_COUNT requests have been served:
the first three create an IAM user, its policy and its access key, then every request must
be signed with that key.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import random
import re
import socket
import socketserver
import struct
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


# -- what a bucket holds ----------------------------------------------------------------
# A region keeps its chunks (blocks) inside pack objects <prefix>/packs/<xx>/<name>
# (cpp/src/store/pack.hpp), each ending with a footer that lists its blocks:
#   entries (49 B each: hash, u64 offset, u32 stored length, u32 raw length, u8 codec)
#   | u32 count | SHA-256 of the entries | "IRPACK01"        (little-endian)
# or, in a pack holding a delta block, each entry followed by its bases (u8 count, 32 B each)
#   | u32 length of the entries | SHA-256 of the entries | "IRPACK02"
# The helpers below read that footer from the bucket itself: what the bucket truly holds,
# whatever the engine's local index cache says.
PACK = 16 * 2**20
PACK_MAGIC = b"IRPACK01"
DELTA_PACK_MAGIC = b"IRPACK02"
PACK_ENTRY = struct.Struct("<32sQIIB")
PACK_TRAILER = 4 + 32 + len(PACK_MAGIC)
CODEC_RAW, CODEC_ZSTD, CODEC_ZSTD_DELTA = 0, 1, 2


@dataclass(frozen=True)
class StoredBlock:
    pack: str  # the object's key
    offset: int
    stored_length: int
    raw_length: int
    codec: int
    bases: tuple[str, ...] = ()  # a delta block's


def pack_sizes(s3: S3Server, bucket: str, prefix: str = "relay") -> dict[str, int]:
    """The pack objects of a region: key -> size."""
    sizes: dict[str, int] = {}
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                  Prefix=f"{prefix}/packs/")
    for page in pages:
        for o in page.get("Contents", []):
            name = o["Key"].rsplit("/", 1)[1]
            if re.fullmatch(r"[0-9a-f]{32}", name) and o["Key"].endswith(f"/{name[:2]}/{name}"):
                sizes[o["Key"]] = o["Size"]
    return sizes


def pack_keys(s3: S3Server, bucket: str, prefix: str = "relay") -> list[str]:
    return sorted(pack_sizes(s3, bucket, prefix))


def parse_pack_footer(key: str, tail: bytes, size: int) -> list[tuple[str, StoredBlock]]:
    """The blocks a pack's footer lists; ``tail`` is the pack's last bytes (at least its
    footer). Fails the test if the footer is torn or does not match its digest."""
    assert tail[-len(PACK_MAGIC):] in (PACK_MAGIC, DELTA_PACK_MAGIC), \
        f"{key} does not end with a pack footer"
    entries = tail[-footer_length(tail):-PACK_TRAILER]
    assert hashlib.sha256(entries).digest() == tail[-len(PACK_MAGIC) - 32:-len(PACK_MAGIC)], key
    deltas = tail[-len(PACK_MAGIC):] == DELTA_PACK_MAGIC
    blocks = []
    at = 0
    while at < len(entries):
        assert at + PACK_ENTRY.size <= len(entries), f"{key}: footer cut short"
        digest, offset, stored, raw, codec = PACK_ENTRY.unpack_from(entries, at)
        at += PACK_ENTRY.size
        bases: tuple[str, ...] = ()
        if deltas:
            n = entries[at]
            bases = tuple(entries[at + 1 + 32 * b:at + 33 + 32 * b].hex() for b in range(n))
            at += 1 + 32 * n
        assert offset + stored <= size - len(entries) - PACK_TRAILER, f"{key}: block past its end"
        blocks.append((digest.hex(), StoredBlock(key, offset, stored, raw, codec, bases)))
    return blocks


def footer_length(trailer: bytes) -> int:
    """Bytes from the end of a pack that hold its footer, from its last PACK_TRAILER bytes."""
    field = int.from_bytes(trailer[-PACK_TRAILER:-PACK_TRAILER + 4], "little")
    if trailer[-len(PACK_MAGIC):] == DELTA_PACK_MAGIC:
        return PACK_TRAILER + field
    return PACK_TRAILER + field * PACK_ENTRY.size


def pack_blocks(s3: S3Server, bucket: str, prefix: str = "relay") -> list[tuple[str, StoredBlock]]:
    """Every (block hash, where) that the footers of a region's packs list, duplicates kept."""
    client = s3.client()
    out = []
    for key, size in sorted(pack_sizes(s3, bucket, prefix).items()):
        # Two ranged GETs: the fixed trailer (it gives the footer's length), then the footer.
        try:
            trailer = client.get_object(
                Bucket=bucket, Key=key, Range=f"bytes={size - PACK_TRAILER}-{size - 1}")
            footer = footer_length(trailer["Body"].read())
            tail = client.get_object(Bucket=bucket, Key=key,
                                     Range=f"bytes={size - footer}-{size - 1}")["Body"].read()
        except client.exceptions.NoSuchKey:
            continue  # swept since it was listed
        out += parse_pack_footer(key, tail, size)
    return out


def stored_blocks(s3: S3Server, bucket: str, prefix: str = "relay") -> dict[str, StoredBlock]:
    """The blocks an S3 region holds, by hash, as its packs' footers list them."""
    return dict(pack_blocks(s3, bucket, prefix))


def block_hashes(s3: S3Server, bucket: str, prefix: str = "relay") -> set[str]:
    return set(stored_blocks(s3, bucket, prefix))


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
def _error_xml(code: str, message: str) -> bytes:
    return (f"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>"
            f"<Message>{message}</Message></Error>").encode()


SLOWDOWN = _error_xml("SlowDown", "Please reduce your request rate.")
INTERNAL_ERROR = _error_xml("InternalError", "We encountered an internal error. Please try again.")
SERVICE_UNAVAILABLE = _error_xml("ServiceUnavailable", "Please reduce your request rate.")
INVALID_REQUEST = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>InvalidRequest</Code>"
                   b"<Message>Unsupported header</Message></Error>")
SHA256_MISMATCH = _error_xml("XAmzContentSHA256Mismatch", "The provided 'x-amz-content-sha256' "
                             "header does not match what was computed.")

# The faults the proxy injects, and what each does to one request:
FAULTS = {
    "drop": "the connection is closed before the request reaches the server",
    "reset": "the server takes the request; its answer is cut by a TCP reset half-way",
    "error500": "the server takes the request; the proxy answers 500 InternalError instead",
    "error503": "503 ServiceUnavailable, the request not forwarded",
    "slowdown": "503 SlowDown, the request not forwarded",
    "truncate": "the answer is cut short (half of its body, or of its head if it has no "
                "body) and the connection closed",
    "stall": "the server takes the request; the answer waits stall_seconds",
    "length_more": "Content-Length says 10 bytes more than the body sent, then the connection "
                   "closes",
    "length_less": "Content-Length says half of the body, all of which is sent",
    "corrupt": "one byte of the answer's body is flipped",
    "corrupt_request": "one byte of the request's body is flipped on its way to the server",
}


@dataclass
class Armed:
    """A fault for the ``nth`` request that ``match(method, path)`` accepts, and the
    ``times - 1`` matching requests after it: deterministic, unlike ``faults``."""
    fault: str
    match: Callable[[str, str], bool]
    nth: int = 1
    times: int = 1
    seen: int = 0   # matching requests so far
    fired: int = 0  # of them given the fault (a fault that cannot apply to a request, such
    #                 as a corrupted byte of an empty body, does not count)


class FaultProxy:
    """An HTTP/1.1 proxy on 127.0.0.1 that forwards each request to the server and injects
    faults (FAULTS): either with the probabilities of ``faults`` (limited to the requests
    ``fault_filter(method, path)`` accepts), or deterministically once ``arm``ed. The request
    lines and headers seen are kept in ``requests`` (secrets in them are the tests' own).

    Like S3, and unlike moto, the proxy refuses a request whose body does not hash to its
    signed x-amz-content-sha256 (400 XAmzContentSHA256Mismatch): the server's own check that
    a body corrupted on the way is caught by."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.faults: dict[str, float] = {}
        self.fault_filter: Callable[[str, str], bool] | None = None
        self.armed: list[Armed] = []
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

    def arm(self, fault: str, match: Callable[[str, str], bool], nth: int = 1,
            times: int = 1) -> Armed:
        assert fault in FAULTS, fault
        armed = Armed(fault, match, nth, times)
        with self.lock:
            self.armed.append(armed)
        return armed

    def disarm(self) -> None:
        with self.lock:
            self.armed.clear()

    def _pick(self, method: str, path: str) -> tuple[str | None, Armed | None]:
        with self.lock:
            for armed in self.armed:
                if armed.match(method, path):
                    armed.seen += 1
                    if armed.nth <= armed.seen < armed.nth + armed.times:
                        return armed.fault, armed
            if self.fault_filter is not None and not self.fault_filter(method, path):
                return None, None
            r = self.rng.random()
            for name, p in self.faults.items():
                if r < p:
                    self.counts[name] = self.counts.get(name, 0) + 1
                    return name, None
                r -= p
        return None, None

    def _fired(self, fault: str, armed: Armed | None) -> None:
        if armed is None:
            return  # counted when picked
        with self.lock:
            armed.fired += 1
            self.counts[fault] = self.counts.get(fault, 0) + 1

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

    @staticmethod
    def _answer(status: str, body: bytes) -> bytes:
        return (f"HTTP/1.1 {status}\r\nContent-Type: application/xml\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode() + body

    @staticmethod
    def _reset(conn: socket.socket) -> None:
        """Closes with a TCP reset (RST), not a clean FIN."""
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

    def _serve(self, conn: socket.socket) -> None:
        buf = bytearray()
        try:
            while True:
                request = self._read_request(conn, buf)
                if request is None:
                    return
                head_bytes, _, body = request.partition(b"\r\n\r\n")
                head_lines = head_bytes.decode("latin-1").split("\r\n")
                method, path = head_lines[0].split(" ")[:2]
                sent = {k.strip().lower(): v.strip() for k, _, v in
                        (line.partition(":") for line in head_lines[1:])}
                with self.lock:
                    self.requests.append((method, path, sent))
                if self.refused_headers & sent.keys():
                    conn.sendall(self._answer("400 Bad Request", INVALID_REQUEST))
                    continue
                fault, armed = self._pick(method, path)
                if fault == "drop":
                    self._fired(fault, armed)
                    return  # close without an answer
                if fault in ("slowdown", "error503"):
                    self._fired(fault, armed)
                    conn.sendall(self._answer("503 Slow Down" if fault == "slowdown" else
                                              "503 Service Unavailable",
                                              SLOWDOWN if fault == "slowdown"
                                              else SERVICE_UNAVAILABLE))
                    continue
                if fault == "corrupt_request" and body:
                    self._fired(fault, armed)
                    i = len(body) // 2
                    body = body[:i] + bytes([body[i] ^ 0x01]) + body[i + 1:]
                    request = head_bytes + b"\r\n\r\n" + body
                claimed = sent.get("x-amz-content-sha256", "")
                if (len(claimed) == 64 and body
                        and hashlib.sha256(body).hexdigest() != claimed.lower()):
                    conn.sendall(self._answer("400 Bad Request", SHA256_MISMATCH))
                    continue
                up = socket.create_connection(("127.0.0.1", self.upstream_port))
                try:
                    up.sendall(request)
                    resp = http.client.HTTPResponse(up, method=method)
                    resp.begin()
                    answer = resp.read()
                    headers = [(k, v) for k, v in resp.getheaders()
                               if k.lower() not in ("transfer-encoding", "connection",
                                                    "content-length")]
                    status = resp.status
                    reason = resp.reason
                    length = resp.getheader("content-length") if method == "HEAD" else None
                finally:
                    up.close()
                if fault == "error500":
                    self._fired(fault, armed)
                    conn.sendall(self._answer("500 Internal Server Error", INTERNAL_ERROR))
                    continue
                if fault == "corrupt" and answer:
                    self._fired(fault, armed)
                    i = len(answer) // 2
                    answer = answer[:i] + bytes([answer[i] ^ 0x01]) + answer[i + 1:]
                declared = length if length is not None else str(len(answer))
                if fault == "length_more" and method != "HEAD":
                    self._fired(fault, armed)
                    declared = str(len(answer) + 10)
                if fault == "length_less" and method != "HEAD" and answer:
                    self._fired(fault, armed)
                    declared = str(len(answer) // 2)
                head = f"HTTP/1.1 {status} {reason}\r\n"
                for k, v in headers:
                    head += f"{k}: {v}\r\n"
                head += f"Content-Length: {declared}\r\n\r\n"
                whole = head.encode() + answer
                if fault == "stall":
                    self._fired(fault, armed)
                    self.stalls_over.wait(self.stall_seconds)
                if fault == "reset":
                    self._fired(fault, armed)
                    conn.sendall(whole[:len(whole) // 2])
                    self._reset(conn)
                    return
                if fault == "truncate":
                    self._fired(fault, armed)
                    conn.sendall(whole[:len(head) + len(answer) // 2] if len(answer) > 1
                                 else whole[:len(head) // 2])
                    return
                conn.sendall(whole)
                if fault in ("length_more", "length_less") and (armed is None or armed.fired):
                    return  # the connection's framing is lost: close it
        except OSError:
            return
        finally:
            with contextlib.suppress(OSError):
                conn.close()
