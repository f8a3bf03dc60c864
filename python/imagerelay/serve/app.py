"""One region's endpoint as an ASGI application (Starlette): each request is authenticated
(bce-auth-v1), routed, run on a worker thread as its account, answered with BCC's JSON or
BCC's error body, logged in one line and counted in the metrics."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import ipaddress
import json
import logging
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..access_keys import AccessKeyFiles
from ..cloud import Cloud
from ..errors import ImageRelayError, NotFoundError
from .api_error import (ACCESS_DENIED, BAD_DIGEST, BODY_TOO_LARGE, INTERNAL_ERROR, INVALID_ACCESS_KEY_ID,
                        ApiError, from_engine)
from .auth import SignedRequest, Verifier, query_pairs
from .endpoint_hosts import EndpointHosts, HostName
from .fields import digits
from .handlers import Call, ClientTokens, route
from .import_source import ImportPolicy, own_directories
from .metrics import CONTENT_TYPE, Metrics

log = logging.getLogger("imagerelay.serve")
METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]


@dataclasses.dataclass
class ServeOptions:
    """What the operator decides (``imagerelay serve``'s flags)."""

    allow_import_dirs: Sequence[str | os.PathLike[str]] = ()
    allow_import_hosts: Sequence[str] = ()
    max_body: int = 64 * 1024
    metrics_allow: Sequence[str] = ()
    clock_skew: float = 300.0
    threads: int = 64
    # Region -> the hosts clients sign for its endpoint (``--public-host``); endpoint_hosts.py.
    public_hosts: Mapping[str, Sequence[HostName]] = dataclasses.field(default_factory=dict)


class Service:
    """What every region's endpoint shares: the engine (opened once), the keys, the
    import policy, the metrics and the threads that run engine calls."""

    def __init__(self, cloud: Cloud, options: ServeOptions | None = None) -> None:
        self.cloud = cloud
        self.options = options or ServeOptions()
        self.keys = AccessKeyFiles(cloud.home)
        self.verifier = Verifier(self.keys.lookup, clock_skew=self.options.clock_skew)
        self.imports = ImportPolicy(self.options.allow_import_dirs,
                                    self.options.allow_import_hosts,
                                    own_dirs=lambda: own_directories(cloud))
        self.tokens = ClientTokens()
        self.hosts = EndpointHosts(self.options.public_hosts)
        self.metrics = Metrics(cloud)
        self.metrics_networks = [ipaddress.ip_network(n, strict=False)
                                 for n in self.options.metrics_allow]
        # Engine calls block (and release the GIL): run on these threads, never on the loop.
        self.limiter = anyio.CapacityLimiter(self.options.threads)

    def app(self, region: str, host: str | None = None, port: int | None = None) -> Starlette:
        """Region's endpoint; ``host`` and ``port``: the address its listener is bound to
        (requests signed for another region's listener are refused)."""
        if host is not None and port is not None:
            self.hosts.listening(region, host, port)
        endpoint = Endpoint(self, region)
        return Starlette(routes=[Route("/{path:path}", endpoint.handle, methods=METHODS)])


@dataclasses.dataclass
class _Outcome:
    """What the log line and the metrics say of a request: its account once verified, its
    route once found."""

    account: str = "-"
    route: str = "unknown"


class Endpoint:
    def __init__(self, service: Service, region: str) -> None:
        self.service = service
        self.region = region

    async def handle(self, request: Request) -> Response:
        started = time.perf_counter()
        request_id = str(uuid.uuid4())
        path = request.scope["path"]  # percent-decoded, as the signature covers it
        done = _Outcome()
        try:
            if path == "/metrics" and request.method == "GET":
                done.route = "metrics"
                response = await self._metrics(request)
            else:
                signed = SignedRequest(
                    method=request.method, path=path,
                    query=query_pairs(request.scope["query_string"].decode("latin-1")),
                    headers={k.lower(): v for k, v in request.headers.items()})
                # Authenticated before its body is read: a client without a key cannot make
                # the server take in (and hold) bodies.
                done.account = (await self._run(self.service.verifier.verify, signed)).account
                if why := self.service.hosts.refusal(self.region, signed.headers.get("host", ""),
                                                     tls=request.url.scheme == "https"):
                    raise ApiError(ACCESS_DENIED, why)
                body = await self._body(request)
                response = _json(*await self._run(self._act, signed, body, done))
        except ApiError as e:
            response = _error(e, request_id)
        except ImageRelayError as e:
            response = _error(from_engine(e), request_id)
        except Exception:  # the cause goes to the log; the client gets BCC's InternalError
            log.exception("request %s %s failed (request id %s)", request.method,
                          _printable(path), request_id)
            response = _error(ApiError(INTERNAL_ERROR, "we encountered an internal error; "
                                                       "please try again"), request_id)
        response.headers["x-bce-request-id"] = request_id
        seconds = time.perf_counter() - started
        self.service.metrics.observe(self.region, done.route, response.status_code, seconds)
        log.info("%s %s account=%s status=%d duration_ms=%.1f request_id=%s region=%s",
                 request.method, _printable(path), done.account, response.status_code,
                 seconds * 1000, request_id, self.region)
        return response

    def _act(self, signed: SignedRequest, body: bytes,
             done: _Outcome) -> tuple[int, dict[str, Any] | None]:
        """Routes and answers an authenticated request, on a worker thread: every engine call
        blocks."""
        done.route, handler, match = route(signed.method, signed.path)
        return handler(Call(cloud=self._as_account(done.account), region=self.region,
                            params=signed.query, body=body, match=match,
                            imports=self.service.imports, tokens=self.service.tokens))

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await anyio.to_thread.run_sync(fn, *args, limiter=self.service.limiter)

    def _as_account(self, account: str) -> Cloud:
        try:
            return self.service.cloud.as_account(account)
        except NotFoundError:  # the key outlived its account
            raise ApiError(INVALID_ACCESS_KEY_ID, "the access key id does not exist") from None

    async def _body(self, request: Request) -> bytes:
        limit = self.service.options.max_body
        length = request.headers.get("content-length", "")
        if digits(length) and int(length) > limit:
            raise ApiError(BODY_TOO_LARGE, f"the body is larger than {limit} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(BODY_TOO_LARGE, f"the body is larger than {limit} bytes")
            chunks.append(chunk)
        body = b"".join(chunks)
        digest = request.headers.get("content-md5")
        # The signature covers this header, not the body: the body must match it.
        if digest is not None and digest.strip() != base64.b64encode(
                hashlib.md5(body, usedforsecurity=False).digest()).decode():
            raise ApiError(BAD_DIGEST, "the Content-MD5 you specified does not match the "
                                       "body received")
        return body

    async def _metrics(self, request: Request) -> Response:
        client = request.client.host if request.client else ""
        try:
            address = ipaddress.ip_address(client)
        except ValueError:
            address = None
        if address is None or not (address.is_loopback or any(
                address in n for n in self.service.metrics_networks)):
            raise ApiError(ACCESS_DENIED, "/metrics answers loopback clients and the networks "
                                          "the operator allows (--metrics-allow)")
        text = await self._run(self.service.metrics.render)
        return Response(text, media_type=CONTENT_TYPE)


def _json(status: int, payload: dict[str, Any] | None) -> Response:
    if payload is None:  # BCC answers calls that return nothing with an empty 200
        return Response(b"", status_code=status)
    return Response(json.dumps(payload).encode(), status_code=status,
                    media_type="application/json;charset=UTF-8")


def _error(error: ApiError, request_id: str) -> Response:
    return _json(error.status, {"requestId": request_id, "code": error.code,
                                "message": error.message})


def _printable(text: str) -> str:
    """A path as a log line may show it: control characters escaped (no forged lines)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
