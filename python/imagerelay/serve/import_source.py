"""What an import's ``bosUrl`` may name when a remote client sends it.

The engine imports whatever source it is given: a file of this machine, or any URL it can
reach. A client of the server must reach neither the server's own files nor its network's
private side, so by default:

- a path or ``file://`` URL is refused, unless it lies under a directory the operator
  allows (``--allow-import-dir``; symbolic links resolved first), and always inside the
  home (catalog, access keys, credentials) or a region's store (other accounts' blocks),
  even where an allowed directory holds them;
- an ``http(s)://`` URL whose host is, or resolves to, a loopback, private, link-local,
  multicast, reserved or unspecified address is refused, unless the operator allows that
  host (``--allow-import-host``, a name, an address or a network). The engine does not
  follow redirects, so a public URL cannot send it elsewhere;
- an ``s3://`` URL is read with the server's own S3 credentials, so it is refused unless its
  ``endpoint`` host is allowed.
Every refusal is ``InvalidParameter`` naming ``bosUrl``.

The engine must read the very source checked here, so the check refuses whatever two parsers
could read two ways (an adversarial pass, December 2, imported through both): a scheme not
in lower case or a URL with spaces or control characters around or in it (the engine would
take ``HTTP://...`` or `` http://...`` for a file path), a repeated or percent-encoded
``s3://`` setting (the engine takes the last ``endpoint``), an endpoint that is more than
``http(s)://host[:port]``, and the settings only the operator may choose (``verify_tls``,
``ca_bundle``, ``low_speed_time``).
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from .. import _core
from .api_error import ApiError, invalid

if TYPE_CHECKING:
    from ..cloud import Cloud

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ImportPolicy:
    def __init__(self, allowed_dirs: Sequence[str | os.PathLike[str]] = (),
                 allowed_hosts: Sequence[str] = (),
                 own_dirs: Callable[[], Sequence[str | os.PathLike[str]]] = tuple) -> None:
        """``own_dirs()``: the directories imagerelay keeps (asked at each import: regions
        come and go)."""
        self.dirs = [Path(d).expanduser().resolve() for d in allowed_dirs]
        self.own_dirs = own_dirs
        self.names = {h.lower().rstrip(".") for h in allowed_hosts if not _network(h)}
        self.networks = [n for n in (_network(h) for h in allowed_hosts) if n is not None]

    def check(self, url: str) -> str:
        """The source to give the engine, or an ApiError saying why not."""
        if not url:
            raise invalid("bosUrl", "is empty")
        if _CONTROL.search(url) or url != url.strip():
            raise invalid("bosUrl", "holds a control character or begins or ends with a space")
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme != parts.scheme:
            raise invalid("bosUrl", f"write its scheme in lower case ({scheme}://)")
        if scheme in ("", "file"):
            return self._file(unquote(parts.path) if scheme == "file" else url)
        if scheme in ("http", "https", "s3") and not url.startswith(scheme + "://"):
            raise invalid("bosUrl", f"must begin with {scheme}://")
        if scheme in ("http", "https"):
            if "\\" in url or not _NETLOC.fullmatch(parts.netloc):
                raise invalid("bosUrl", "its host part is not [user[:password]@]host[:port]")
            self._host(parts.hostname or "", url)
            return url
        if scheme == "s3":
            settings = _s3_settings(parts.query)
            endpoint = settings.get("endpoint", "")
            host = urlsplit(endpoint).hostname or "" if _ENDPOINT.fullmatch(endpoint) else ""
            if not host or not self._named(host):
                raise invalid("bosUrl", "an s3:// source is read with the server's own "
                                        "credentials: its endpoint host must be allowed by "
                                        "the operator (--allow-import-host)")
            return url
        raise invalid("bosUrl", f"{scheme}:// is not a source this server imports from "
                                "(http, https or s3)")

    def _file(self, path: str) -> str:
        refused = invalid("bosUrl", "files of the server are not imported from unless the "
                                    "operator allows their directory (--allow-import-dir)")
        if not self.dirs or not os.path.isabs(path):
            raise refused
        resolved = Path(path).resolve()
        if not any(resolved.is_relative_to(d) for d in self.dirs):
            raise refused
        if any(resolved.is_relative_to(Path(d).resolve()) for d in self.own_dirs()):
            raise invalid("bosUrl", "names a file of imagerelay's own home or of a region's "
                                    "store, which are not imported from")
        return str(resolved)

    def _named(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        if host in self.names:
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in n for n in self.networks)

    def _host(self, host: str, url: str) -> None:
        if not host:
            raise invalid("bosUrl", "names no host")
        if self._named(host):
            return
        try:
            addresses = {ipaddress.ip_address(host)}
        except ValueError:
            try:
                infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
            except (OSError, UnicodeError):
                raise invalid("bosUrl", f"its host {host} does not resolve") from None
            addresses = {ipaddress.ip_address(str(i[4][0]).split("%")[0]) for i in infos}
        # Every internal address it may resolve to must be allowed: the engine may use any.
        if any(_internal(a) and not any(a in n for n in self.networks) for a in addresses):
            raise _internal_host(host)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# What the engine and Python's urlsplit read alike: no "@", "\\", "#" or "?" in a user part,
# a host of letters, digits, dots and dashes (or an IPv6 address in brackets), a port.
_HOST_PORT = r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?"
_NETLOC = re.compile(r"(?:[^@/\\?#\[\]]*@)?" + _HOST_PORT)
_ENDPOINT = re.compile(r"https?://" + _HOST_PORT + "/?")
# The s3:// settings a client may give; the others are the operator's (TLS checks, CA file).
_CLIENT_S3_SETTINGS = ("endpoint", "region", "addressing")


def _s3_settings(query: str) -> dict[str, str]:
    """An s3:// URL's settings as the engine reads them (split on & and the first =, keys
    taken as written, values percent-decoded with + as a space), each at most once."""
    settings: dict[str, str] = {}
    for param in query.split("&") if query else []:
        key, _, value = param.partition("=")
        if key not in _CLIENT_S3_SETTINGS:
            raise invalid("bosUrl", f"{key!r} is not an s3:// setting a client may give "
                                    f"(only {', '.join(_CLIENT_S3_SETTINGS)})")
        if key in settings:
            raise invalid("bosUrl", f"gives the s3:// setting {key} twice")
        settings[key] = unquote(value.replace("+", " "))
    return settings


def _internal(address: Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return _internal(address.ipv4_mapped)
    return (address.is_loopback or address.is_private or address.is_link_local
            or address.is_multicast or address.is_reserved or address.is_unspecified)


def _internal_host(host: str) -> ApiError:
    return invalid("bosUrl", f"{host} is a loopback, private or link-local address of the "
                             "server's network; the operator may allow it "
                             "(--allow-import-host)")


def _network(text: str) -> Network | None:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def own_directories(cloud: Cloud) -> list[str]:
    """The home and the directory of each local region's store (as the core reads them)."""
    stores = (_core.local_store_directory(region.store) for region in cloud.regions)
    return [str(cloud.home), *(d for d in stores if d is not None)]
