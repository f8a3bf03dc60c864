"""What the `imagerelay serve` tests share: the server run in this process on 127.0.0.1
(random free ports, one per region), the official BCC SDK's client pointed at one region's
endpoint, a file server for imports, a proxy that loses an answer, and reading the
``BceServerError`` the SDK raises."""

from __future__ import annotations

import asyncio
import http.client
import http.server
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from baidubce.auth.bce_credentials import BceCredentials
from baidubce.bce_client_configuration import BceClientConfiguration
from baidubce.exception import BceHttpClientError, BceServerError
from baidubce.retry.retry_policy import BackOffRetryPolicy, NoRetryPolicy
from baidubce.services.bcc.bcc_client import BccClient

from imagerelay.access_keys import AccessKey
from imagerelay.serve import Service


class InProcessServer:
    """``Service.app(region)`` for each region under uvicorn, in a thread of this process."""

    def __init__(self, service: Service, regions: list[str]) -> None:
        self.ports: dict[str, int] = {}
        sockets, servers = [], []
        for region in regions:
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sock.listen(128)
            self.ports[region] = sock.getsockname()[1]
            sockets.append(sock)
            servers.append(uvicorn.Server(uvicorn.Config(
                service.app(region, "127.0.0.1", self.ports[region]), log_config=None,
                access_log=False, lifespan="off")))
        self._servers = servers

        async def run() -> None:
            await asyncio.gather(*(s.serve(sockets=[k]) for s, k in zip(servers, sockets)))

        self._thread = threading.Thread(target=asyncio.run, args=(run(),), daemon=True)
        self._thread.start()
        for region in regions:
            wait_for_port(self.ports[region])

    def endpoint(self, region: str) -> str:
        return f"http://127.0.0.1:{self.ports[region]}"

    def stop(self) -> None:
        for s in self._servers:
            s.should_exit = True
        self._thread.join(30)


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bcc(endpoint: str, key: AccessKey | tuple[str, str], *, retries: bool = False) -> BccClient:
    """The SDK's BCC client for one region's endpoint, signing with ``key``."""
    ak, sk = ((key.access_key_id, key.secret_access_key or "") if isinstance(key, AccessKey)
              else key)
    policy = BackOffRetryPolicy(max_error_retry=3, base_interval_in_millis=50) if retries \
        else NoRetryPolicy()
    return BccClient(BceClientConfiguration(credentials=BceCredentials(ak, sk),
                                            endpoint=endpoint, retry_policy=policy))


def server_error(call: Callable[[], Any]) -> BceServerError:
    """The BceServerError a call ends with (the SDK wraps it in BceHttpClientError)."""
    with pytest.raises((BceHttpClientError, BceServerError)) as e:
        call()
    error = e.value.last_error if isinstance(e.value, BceHttpClientError) else e.value
    assert isinstance(error, BceServerError), repr(error)
    return error


def assert_bcc_error(call: Callable[[], Any], code: str, status: int) -> str:
    """Asserts BCC's code and status; returns the message."""
    error = server_error(call)
    assert (error.code, error.status_code) == (code, status), (error.code, error.status_code,
                                                               str(error))
    assert error.request_id  # every error names its request
    return str(error)


@contextmanager
def http_server(handler: Any) -> Iterator[http.server.ThreadingHTTPServer]:
    """``handler`` served on 127.0.0.1 (a free port) by a thread, until the block ends."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()


@contextmanager
def file_server(directory: Path) -> Iterator[str]:
    """Serves ``directory`` over HTTP on 127.0.0.1; yields its base URL."""
    with http_server(partial(_QuietFiles, directory=str(directory))) as httpd:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"


class _QuietFiles(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def losing_proxy(target_port: int, lose: Callable[[str], bool]) -> Iterator[str]:
    """A proxy to 127.0.0.1:target_port that forwards each request, and for the first one
    whose request line ``lose`` picks, drops the server's answer (closes the connection),
    as a network that fails after the server acted. Yields its endpoint."""
    lost = threading.Event()

    class Proxy(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            upstream = http.client.HTTPConnection("127.0.0.1", target_port, timeout=30)
            upstream.putrequest(self.command, self.path, skip_host=True,
                                skip_accept_encoding=True)
            for name, value in self.headers.items():
                upstream.putheader(name, value)
            upstream.endheaders(body)
            answer = upstream.getresponse()
            data = answer.read()
            upstream.close()
            if not lost.is_set() and lose(self.requestline):
                lost.set()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.send_response(answer.status)
            for name, value in answer.getheaders():
                if name.lower() not in ("content-length", "connection", "date", "server"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = _forward  # noqa: N815

    with http_server(Proxy) as httpd:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    assert lost.is_set(), "the proxy lost no answer"


class LogRecords(logging.Handler):
    """Collects the formatted records of a logger (the server's request lines)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))
