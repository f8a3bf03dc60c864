"""``imagerelay serve``: one uvicorn listener per region, all in one event loop over one
engine; SIGTERM or SIGINT stops accepting, lets the requests in flight finish, and leaves
the copies in flight to the home (they resume at its next open)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import signal
import socket
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import uvicorn

from ..cloud import Cloud
from ..errors import ValidationError
from .app import ServeOptions, Service
from .endpoint_hosts import HostName, parse_public_hosts

log = logging.getLogger("imagerelay.serve")


@dataclasses.dataclass(frozen=True)
class Listener:
    region: str
    host: str
    port: int


def parse_listen(text: str) -> Listener:
    """``REGION=HOST:PORT`` (an IPv6 host in brackets: ``gz=[::1]:8081``)."""
    region, _, address = text.partition("=")
    parsed = HostName.parse(address, None)
    if not region or parsed is None or parsed.port is None:
        raise ValidationError(f"--listen {text}: give REGION=HOST:PORT, e.g. "
                              "bj=127.0.0.1:8080 (an IPv6 host in brackets: gz=[::1]:8081)")
    return Listener(region, parsed.host, parsed.port)


def listeners(cloud: Cloud, listen: Sequence[str], host: str, port: int) -> list[Listener]:
    if listen:
        chosen = [parse_listen(t) for t in listen]
    else:
        regions = cloud.regions
        if not 0 < port <= 65536 - len(regions):
            raise ValidationError(f"--port {port}: the {len(regions)} regions' ports must "
                                  "lie within 1-65535")
        chosen = [Listener(r.id, host, port + n) for n, r in enumerate(regions)]
    seen: set[str] = set()
    for listener in chosen:
        cloud.region(listener.region)  # NoSuchRegion if unknown
        if listener.region in seen:
            raise ValidationError(f"--listen: region {listener.region} is given twice")
        seen.add(listener.region)
    return chosen


class _Server(uvicorn.Server):
    """A uvicorn server that leaves the signals to ``serve`` (one handler stops them all)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def install_signal_handlers(self) -> None:  # uvicorn before 0.29
        pass


def _bind(listener: Listener) -> socket.socket:
    family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((listener.host, listener.port))
    except OSError as e:
        sock.close()
        raise ValidationError(f"cannot listen on {listener.host}:{listener.port} for region "
                              f"{listener.region}: {e.strerror}") from None
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def serve(service: Service, chosen: Sequence[Listener], *, tls_cert: str | None = None,
          tls_key: str | None = None) -> None:
    """Serves until SIGTERM or SIGINT."""
    if bool(tls_cert) != bool(tls_key):
        raise ValidationError("--tls-cert and --tls-key go together")
    sockets = [_bind(listener) for listener in chosen]
    tls: dict[str, Any] = {"ssl_certfile": tls_cert, "ssl_keyfile": tls_key} if tls_cert else {}
    servers = [_Server(uvicorn.Config(service.app(listener.region, listener.host,
                                                  listener.port), log_config=None,
                                      access_log=False, lifespan="off", server_header=False,
                                      **tls))
               for listener in chosen]
    scheme = "https" if tls_cert else "http"

    async def run() -> None:
        loop = asyncio.get_running_loop()

        def stop() -> None:
            log.info("stopping: finishing the requests in flight; copies go on in the home")
            for s in servers:
                s.should_exit = True

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop)
        for listener in chosen:
            host = f"[{listener.host}]" if ":" in listener.host else listener.host
            log.info("region %s: %s://%s:%d", listener.region, scheme, host, listener.port)
        await asyncio.gather(*(s.serve(sockets=[sock]) for s, sock in zip(servers, sockets)))

    try:
        asyncio.run(run())
    finally:
        for sock in sockets:
            sock.close()
    log.info("stopped")


def serve_command(cloud: Cloud, args: argparse.Namespace) -> int:
    if not logging.getLogger().handlers:
        logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.max_body < 1:
        raise ValidationError("--max-body must be at least 1 byte")
    public_hosts = parse_public_hosts(args.public_host)
    for region in public_hosts:
        cloud.region(region)  # NoSuchRegion if unknown
    options = ServeOptions(allow_import_dirs=args.allow_import_dir,
                           allow_import_hosts=args.allow_import_host, max_body=args.max_body,
                           metrics_allow=_networks(args.metrics_allow),
                           public_hosts=public_hosts)
    chosen = listeners(cloud, args.listen, args.host, args.port)
    serve(Service(cloud, options), chosen, tls_cert=args.tls_cert, tls_key=args.tls_key)
    return 0


def _networks(texts: Sequence[str]) -> list[str]:
    for text in texts:
        try:
            ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValidationError(f"--metrics-allow {text}: not an address or network "
                                  "(e.g. 10.0.0.0/8)") from None
    return list(texts)
