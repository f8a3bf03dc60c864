"""bce-auth-v1: checks a request's signature exactly as BCE's SDKs make it.

    Authorization: bce-auth-v1/{access key id}/{timestamp}/{expiration}/{signed headers}/{sig}

    signing key = HMAC-SHA256-HEX(secret, "bce-auth-v1/{ak}/{timestamp}/{expiration}")
    signature   = HMAC-SHA256-HEX(signing key, METHOD \\n URI \\n QUERY \\n HEADERS)

URI is the path URI-encoded except its slashes; QUERY every pair ``k=v`` encoded, sorted
and joined by ``&`` (a flag such as ``?remoteCopy`` is ``remoteCopy=``); HEADERS the signed
headers as ``name:value`` (lowercase name, trimmed value, both encoded), empty ones left
out, sorted and joined by newlines. No signed headers named means BCE's default set: host,
content-length, content-type, content-md5 and every ``x-bce-*`` header.

The SDKs differ in one point: given a list of headers to sign, the Python SDK also signs
every ``x-bce-*`` header without listing it, Go lists them (all but ``x-bce-request-id``)
and Java signs the list alone. Each reading is tried; each covers the listed headers, and
the list must hold ``host``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from urllib.parse import quote, unquote

from ..access_keys import AccessKey
from .api_error import (ACCESS_DENIED, INVALID_ACCESS_KEY_ID, INVALID_AUTH_HEADER,
                        REQUEST_EXPIRED, SIGNATURE_DOES_NOT_MATCH, ApiError)
from .fields import digits

PREFIX = "bce-auth-v1"
DEFAULT_SIGNED = frozenset({"host", "content-length", "content-type", "content-md5"})
MAX_EXPIRATION = 7 * 24 * 3600  # a signature good for longer is refused as malformed
_SIGNATURE = re.compile(r"[0-9a-f]{64}")
_TIMESTAMP = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)Z")


def uri_encode(text: str, *, keep_slash: bool = False) -> str:
    """BCE's UriEncode: every byte of the UTF-8 text but ``A-Z a-z 0-9 - _ . ~`` (and
    ``/`` if kept) as ``%XX`` with uppercase hex (what ``urllib.parse.quote`` keeps)."""
    return quote(text, safe="/" if keep_slash else "")


def query_pairs(query_string: str) -> list[tuple[str, str]]:
    """The decoded (name, value) pairs of a raw query string; a bare flag has value ''.
    ``+`` stays a plus: the SDKs encode a space as %20."""
    pairs = []
    for part in query_string.split("&"):
        if part:
            name, _, value = part.partition("=")
            pairs.append((unquote(name), unquote(value)))
    return pairs


@dataclasses.dataclass(frozen=True)
class SignedRequest:
    """What the signature covers: the method, the decoded path and query, the headers
    (names in lowercase)."""

    method: str
    path: str
    query: Sequence[tuple[str, str]]
    headers: Mapping[str, str]


def canonical_request(request: SignedRequest, signed: Sequence[str]) -> str:
    uri = uri_encode(request.path, keep_slash=True)
    query = "&".join(sorted(f"{uri_encode(k)}={uri_encode(v)}" for k, v in request.query
                            if k.lower() != "authorization"))
    lines = []
    for name in signed:
        value = request.headers.get(name, "").strip()
        if value:  # a header with an empty value is not signed
            lines.append(f"{uri_encode(name)}:{uri_encode(value)}")
    return "\n".join([request.method.upper(), uri, query, "\n".join(sorted(lines))])


def signing_key(secret: str, auth_prefix: str) -> bytes:
    """HMAC-SHA256-HEX(secret, prefix): the hex text itself is the next step's key."""
    return hmac.new(secret.encode(), auth_prefix.encode(), hashlib.sha256).hexdigest().encode()


def signature(key: bytes, canonical: str) -> str:
    return hmac.new(key, canonical.encode(), hashlib.sha256).hexdigest()


def _header_sets(headers: Mapping[str, str], listed: Sequence[str]) -> list[frozenset[str]]:
    """The header sets the SDKs may have signed (the module's docstring)."""
    bce = frozenset(h for h in headers if h.startswith("x-bce-"))
    if not listed:
        return [DEFAULT_SIGNED | bce, DEFAULT_SIGNED | (bce - {"x-bce-request-id"})]
    own = frozenset(listed)
    return [own | bce, own | (bce - {"x-bce-request-id"}), own]


@dataclasses.dataclass(frozen=True)
class Verified:
    key: AccessKey
    account: str


class Verifier:
    """Checks requests against the keys ``lookup`` finds (id -> (key, secret) or None)."""

    def __init__(self, lookup: Callable[[str], tuple[AccessKey, str] | None], *,
                 clock_skew: float = 300.0,
                 now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> None:
        self._lookup = lookup
        self._skew = clock_skew
        self._now = now

    def verify(self, request: SignedRequest) -> Verified:
        """The key that signed the request, or an ApiError with BCC's code."""
        header = request.headers.get("authorization", "")
        if not header:
            raise ApiError(ACCESS_DENIED, "the request is not signed: send an Authorization "
                                          "header (bce-auth-v1) made with your access key")
        parts = header.strip().split("/")
        if len(parts) != 6 or parts[0] != PREFIX:
            raise ApiError(INVALID_AUTH_HEADER, "the Authorization header is not bce-auth-v1/"
                                                "{accessKeyId}/{timestamp}/{expiration}/"
                                                "{signedHeaders}/{signature}")
        _, key_id, stamp, expiration_text, signed_text, given = parts
        try:
            m = _TIMESTAMP.fullmatch(stamp)
            if m is None:
                raise ValueError(stamp)
            year, month, day, hour, minute, second = (int(g) for g in m.groups())
            when = datetime(year, month, day, hour, minute, second, tzinfo=timezone.utc)
        except ValueError:
            raise ApiError(INVALID_AUTH_HEADER, "the Authorization header's timestamp is not "
                                                "yyyy-mm-ddThh:mm:ssZ (UTC)") from None
        if not digits(expiration_text) or not 0 < int(expiration_text) <= MAX_EXPIRATION:
            raise ApiError(INVALID_AUTH_HEADER, "the Authorization header's expiration must be "
                                                f"1 to {MAX_EXPIRATION} seconds")
        listed = [h.strip().lower() for h in signed_text.split(";") if h.strip()]
        if listed and "host" not in listed:
            raise ApiError(INVALID_AUTH_HEADER, "the signed headers must include host")
        if not _SIGNATURE.fullmatch(given):
            raise ApiError(INVALID_AUTH_HEADER, "the Authorization header's signature is not "
                                                "64 lowercase hex digits")
        age = (self._now() - when).total_seconds()
        if age > int(expiration_text) + self._skew:
            raise ApiError(REQUEST_EXPIRED, f"the request expired: signed at {stamp}, valid "
                                            f"for {expiration_text} s")
        if age < -self._skew:
            raise ApiError(REQUEST_EXPIRED, f"the request's timestamp {stamp} is in the future "
                                            "(check this machine's clock)")
        found = self._lookup(key_id)
        if found is None:
            raise ApiError(INVALID_ACCESS_KEY_ID, "the access key id does not exist")
        key, secret = found
        key_for_request = signing_key(secret, "/".join(parts[:4]))
        # Each reading of the signed headers in turn (stopping at a match tells a client
        # only which SDK's reading it used, nothing of the signature).
        if not any(hmac.compare_digest(signature(key_for_request,
                                                 canonical_request(request, sorted(names))),
                                       given)
                   for names in _header_sets(request.headers, listed)):
            raise ApiError(SIGNATURE_DOES_NOT_MATCH,
                           "the request signature we calculated does not match the signature "
                           "you provided; check your secret access key and signing method")
        return Verified(key=key, account=key.account)
