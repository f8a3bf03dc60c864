"""bce-auth-v1 as `imagerelay serve` checks it: a vector built by hand from the spec, the
official SDK's own signer (bce-python-sdk, unmodified) for every request shape the BCC
client sends, and each way a request is refused (BCC's code and status)."""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime, timedelta, timezone

import pytest

import imagerelay as ir
from baidubce.auth import bce_v1_signer
from baidubce.auth.bce_credentials import BceCredentials

from imagerelay.access_keys import AccessKey
from imagerelay.serve.api_error import ApiError
from imagerelay.serve.auth import SignedRequest, Verifier, query_pairs, uri_encode

AK = "0123456789abcdef0123456789abcdef"
SK = "fedcba9876543210fedcba9876543210"
WHEN = datetime(2026, 11, 30, 8, 0, 0, tzinfo=timezone.utc)
KEY = AccessKey(access_key_id=AK, account="team-a", created_at=WHEN)


def verifier(now: datetime = WHEN, skew: float = 300) -> Verifier:
    return Verifier(lambda key_id: (KEY, SK) if key_id == AK else None, clock_skew=skew,
                    now=lambda: now)


def request(authorization: str, *, method: str = "POST", path: str = "/v2/image/m-abc12345",
            query: str = "remoteCopy", host: str = "127.0.0.1:8080",
            extra: dict[str, str] | None = None) -> SignedRequest:
    headers = {"host": host, "content-length": "42", "x-bce-date": "2026-11-30T08:00:00Z",
               "authorization": authorization, **(extra or {})}
    return SignedRequest(method, path, query_pairs(query), headers)


# -- a vector built by hand ----------------------------------------------------------------
def test_a_hand_built_vector() -> None:
    # The spec's steps written out literally (baidu-bcc-image-api.md §5), independent of the
    # module: canonical request, signing key from the auth string prefix, signature.
    prefix = f"bce-auth-v1/{AK}/2026-11-30T08:00:00Z/1800"
    canonical = ("POST\n/v2/image/m-abc12345\nremoteCopy=\n"
                 "content-length:42\nhost:127.0.0.1%3A8080\nx-bce-date:2026-11-30T08%3A00%3A00Z")
    signing_key = hmac.new(SK.encode(), prefix.encode(), hashlib.sha256).hexdigest()
    sig = hmac.new(signing_key.encode(), canonical.encode(), hashlib.sha256).hexdigest()
    assert sig == "a47702c3320a95aa97493f43da3d9f66c611d5903573d40781e4aa53aa1fae99"
    # The SDK's signer, given the same request, makes the same header.
    assert sdk_sign("POST", "/v2/image/m-abc12345", {
        "host": "127.0.0.1:8080", "content-length": "42",
        "x-bce-date": "2026-11-30T08:00:00Z"}, {"remoteCopy": None}) == f"{prefix}//{sig}"
    verified = verifier().verify(request(f"{prefix}//{sig}"))
    assert verified.account == "team-a" and verified.key.access_key_id == AK
    # The same, listing its signed headers (as Go and Java do).
    verifier().verify(request(f"{prefix}/content-length;host;x-bce-date/{sig}"))


def test_uri_encode_is_bces() -> None:
    assert uri_encode("a b+c/d~e_f.g-h*") == "a%20b%2Bc%2Fd~e_f.g-h%2A"
    assert uri_encode("/v2/image/m-1", keep_slash=True) == "/v2/image/m-1"
    assert uri_encode("é") == "%C3%A9"
    assert query_pairs("remoteCopy&maxKeys=10&imageName=a%20b+c") == [
        ("remoteCopy", ""), ("maxKeys", "10"), ("imageName", "a b+c")]


# -- the SDK's own signer ------------------------------------------------------------------
def sdk_sign(method: str, path: str, headers: dict[str, str], params: dict[str, str | None],
             *, timestamp: datetime = WHEN, expiration: int = 1800,
             headers_to_sign: list[bytes] | None = None, secret: str = SK) -> str:
    signed = bce_v1_signer.sign(
        BceCredentials(AK.encode(), secret.encode()), method.encode(), path.encode(),
        {k.encode(): v.encode() for k, v in headers.items()},
        {k: v for k, v in params.items()}, int(timestamp.timestamp()), expiration,
        headers_to_sign)
    return signed.decode()


SHAPES = [
    ("GET", "/v2/image", {"imageType": "All", "maxKeys": "10", "marker": "m-0000000a"}),
    ("GET", "/v2/image", {"imageType": "Custom", "imageName": "golden v1"}),
    ("GET", "/v2/image/m-abc12345", {}),
    ("DELETE", "/v2/image/m-abc12345", {}),
    ("POST", "/v2/image/m-abc12345", {"remoteCopy": None}),
    ("POST", "/v2/image/m-abc12345", {"cancelRemoteCopy": None}),
    ("POST", "/v2/image/m-abc12345", {"share": None}),
    ("POST", "/v2/image/import", {"clientToken": "4f1c-9a"}),
    ("GET", "/v2/image/m-abc12345/sharedUsers", {}),
]


@pytest.mark.parametrize("method,path,params", SHAPES)
@pytest.mark.parametrize("headers_to_sign", [None, [b"host", b"x-bce-date"]])
def test_requests_signed_by_the_sdk_are_accepted(method: str, path: str,
                                                 params: dict[str, str | None],
                                                 headers_to_sign: list[bytes] | None) -> None:
    headers = {"host": "127.0.0.1:8080", "content-length": "42",
               "x-bce-date": "2026-11-30T08:00:00Z"}
    auth = sdk_sign(method, path, headers, params, headers_to_sign=headers_to_sign)
    query = "&".join(k if v is None else f"{k}={uri_encode(v)}" for k, v in params.items())
    got = verifier().verify(SignedRequest(method, path, query_pairs(query),
                                          {**headers, "authorization": auth}))
    assert got.account == "team-a"


# -- refusals ------------------------------------------------------------------------------
def refused(req: SignedRequest, code: str, status: int, v: Verifier | None = None) -> str:
    with pytest.raises(ApiError) as e:
        (v or verifier()).verify(req)
    assert (e.value.code, e.value.status) == (code, status), e.value.message
    assert SK not in e.value.message
    return e.value.message


def signed(**kw: object) -> str:
    headers = {"host": "127.0.0.1:8080", "content-length": "42",
               "x-bce-date": "2026-11-30T08:00:00Z"}
    return sdk_sign("POST", "/v2/image/m-abc12345", headers, {"remoteCopy": None},
                    **kw)  # type: ignore[arg-type]


def test_tampering_with_anything_signed_is_refused() -> None:
    auth = signed()
    verifier().verify(request(auth))
    for tampered in (request(auth, method="DELETE"),
                     request(auth, path="/v2/image/m-zzz99999"),
                     request(auth, query="share"),
                     request(auth, query="remoteCopy&clientToken=x"),
                     request(auth, host="127.0.0.1:8081"),
                     request(auth, extra={"content-length": "43"}),
                     request(auth, extra={"x-bce-date": "2026-11-30T08:00:01Z"}),
                     request(auth, extra={"x-bce-extra": "added"}),
                     request(auth[:-1] + ("0" if auth[-1] != "0" else "1"))):
        refused(tampered, "SignatureDoesNotMatch", 400)
    refused(request(signed(secret="0" * 32)), "SignatureDoesNotMatch", 400)


def test_unknown_keys_and_malformed_headers_are_refused() -> None:
    auth = signed()
    refused(request(auth.replace(AK, "f" * 32)), "InvalidAccessKeyId", 403)
    refused(request(""), "AccessDenied", 403)
    for bad in ("Basic dXNlcjpwYXNz", "bce-auth-v1/" + AK, auth.replace("bce-auth-v1", "bce-auth-v2"),
                auth.replace("2026-11-30T08:00:00Z", "yesterday"), auth.replace("/1800/", "/0/"),
                auth.replace("/1800/", "/-5/"), auth[:-3]):
        refused(request(bad), "InvalidHTTPAuthHeader", 400)
    listed = signed(headers_to_sign=[b"x-bce-date", b"content-length"])
    assert "must include host" in refused(request(listed), "InvalidHTTPAuthHeader", 400)


def test_the_time_window() -> None:
    auth = signed()  # signed at WHEN, good for 1800 s
    verifier(now=WHEN + timedelta(seconds=1800 + 299)).verify(request(auth))  # skew allowed
    verifier(now=WHEN - timedelta(seconds=299)).verify(request(auth))  # a clock a bit behind
    assert "expired" in refused(request(auth), "RequestExpired", 400,
                                verifier(now=WHEN + timedelta(seconds=1800 + 301)))
    assert "future" in refused(request(auth), "RequestExpired", 400,
                               verifier(now=WHEN - timedelta(seconds=301)))
    short = signed(expiration=60)
    refused(request(short), "RequestExpired", 400, verifier(now=WHEN + timedelta(seconds=361)))
    refused(request(short), "RequestExpired", 400,
            verifier(now=WHEN + timedelta(seconds=61), skew=0))


# -- the signed Host and the endpoint that answers it (endpoint_hosts.py) ----------------------
def test_an_endpoint_refuses_hosts_that_name_another_regions_endpoint() -> None:
    from imagerelay.serve.endpoint_hosts import EndpointHosts, parse_public_hosts

    hosts = EndpointHosts()
    hosts.listening("bj", "127.0.0.1", 8080)
    hosts.listening("gz", "0.0.0.0", 8081)      # every address of the machine
    hosts.listening("su", "::1", 8082)
    hosts.listening("hk", "10.1.2.3", 8080)     # same port as bj, another address
    assert hosts.refusal("bj", "127.0.0.1:8080", tls=False) is None
    assert hosts.refusal("bj", "LOCALHOST:8080", tls=False) is None
    assert hosts.refusal("bj", "bcc.example.com:8080", tls=False) is None   # a proxy's name
    assert hosts.refusal("gz", "anything.example.com:8081", tls=False) is None
    assert hosts.refusal("su", "[::1]:8082", tls=False) is None
    for region, host in (("bj", "myhost:8081"), ("bj", "[::1]:8082"), ("bj", "127.0.0.2:8082"),
                         ("bj", "10.1.2.3:8080"), ("hk", "localhost:8080"),
                         ("su", "127.0.0.1:8080")):
        why = hosts.refusal(region, host, tls=False)
        assert why is not None and f"this endpoint serves region {region}" in why, (region, host)
    # No port: the scheme's.
    hosts.listening("bj", "127.0.0.1", 80)
    assert hosts.refusal("bj", "localhost", tls=False) is None
    assert hosts.refusal("bj", "localhost", tls=True) is None   # 443: no listener's port
    assert "is not HOST or HOST:PORT" in (hosts.refusal("bj", "a:b:c", tls=False) or "")
    assert "is not HOST or HOST:PORT" in (hosts.refusal("bj", "[::1", tls=False) or "")
    assert "is not HOST or HOST:PORT" in (hosts.refusal("bj", "h:99999", tls=False) or "")
    assert "is not HOST or HOST:PORT" in (hosts.refusal("bj", "h:８０", tls=False) or "")

    public = EndpointHosts(parse_public_hosts(["bj=bcc.bj.example.com",
                                               "gz=bcc.gz.example.com:8443"]))
    public.listening("bj", "127.0.0.1", 8080)
    public.listening("su", "127.0.0.1", 8082)
    assert public.refusal("bj", "bcc.bj.example.com:80", tls=False) is None
    assert public.refusal("bj", "127.0.0.1:8080", tls=False) is not None
    assert public.refusal("su", "127.0.0.1:8082", tls=False) is None
    assert public.refusal("su", "bcc.gz.example.com:8443", tls=False) is not None
    assert public.refusal("su", "bcc.gz.example.com:443", tls=False) is None
    with pytest.raises(ir.ValidationError, match="REGION=HOST"):
        parse_public_hosts(["bj=bcc.bj.example.com:http"])
