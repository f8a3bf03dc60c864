"""Which signed ``Host`` each region's endpoint answers (docs/serve.md, "Endpoints and the
signed Host").

Every request signs its ``Host``. Without a check, a request signed for one region's
endpoint and replayed unchanged to another region's listener of the same server would be
answered there, for the other region. So an endpoint refuses a request signed for a host
that names another region's endpoint: another listener's address, or another region's
public host. With public hosts given for a region (``--public-host REGION=HOST[:PORT]``,
the names clients use, e.g. a proxy's), its endpoint answers only those.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable, Mapping, Sequence

from ..errors import ValidationError

_WILDCARDS = {"", "0.0.0.0", "::"}


@dataclasses.dataclass(frozen=True)
class HostName:
    """A host as a client signs it: a name or address, and a port (None: any port)."""

    host: str
    port: int | None

    @classmethod
    def parse(cls, text: str, default_port: int | None) -> HostName | None:
        """``name``, ``name:port``, ``[v6]`` or ``[v6]:port``; None if it is none of these."""
        text = text.strip().lower()
        if text.startswith("["):
            host, sep, rest = text[1:].partition("]")
            if not sep or (rest and not rest.startswith(":")):
                return None
            port_text = rest[1:]
        elif ":" in text:
            host, _, port_text = text.partition(":")
            if ":" in port_text:
                return None  # an IPv6 address goes in brackets
        else:
            host, port_text = text, ""
        if not host:
            return None
        if not port_text:
            return cls(host, default_port)
        if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            return None
        return cls(host, int(port_text))

    def names(self, other: HostName) -> bool:
        """Whether a request signed for ``other`` is one for this host."""
        if self.port is not None and other.port is not None and self.port != other.port:
            return False
        return self.host == other.host


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclasses.dataclass(frozen=True)
class Address:
    """A listener's bound address."""

    host: str
    port: int

    def reached_as(self, signed: HostName) -> bool:
        """Whether a client that signed ``signed`` addressed this listener directly."""
        if signed.port != self.port:
            return False
        bound = self.host.strip("[]").lower()
        if bound in _WILDCARDS:
            return True  # every address of this machine
        return signed.host == bound or (_loopback(bound) and _loopback(signed.host))


def parse_public_hosts(texts: Iterable[str]) -> dict[str, list[HostName]]:
    """``REGION=HOST[:PORT]`` flags, by region."""
    hosts: dict[str, list[HostName]] = {}
    for text in texts:
        region, sep, host = text.partition("=")
        name = HostName.parse(host, None) if sep and region else None
        if name is None:
            raise ValidationError(f"--public-host {text}: give REGION=HOST or "
                                  "REGION=HOST:PORT, e.g. bj=bcc.bj.example.com")
        hosts.setdefault(region, []).append(name)
    return hosts


class EndpointHosts:
    """The listeners' addresses and the regions' public hosts of one server."""

    def __init__(self, public: Mapping[str, Sequence[HostName]] | None = None) -> None:
        self.public = {region: list(names) for region, names in (public or {}).items()}
        self.listeners: dict[str, Address] = {}

    def listening(self, region: str, host: str, port: int) -> None:
        self.listeners[region] = Address(host, port)

    def refusal(self, region: str, host_header: str, tls: bool) -> str | None:
        """Why region's endpoint must not answer a request signed for ``host_header``, or
        None if it may."""
        signed = HostName.parse(host_header, 443 if tls else 80)
        if signed is None:
            return f"the signed host {host_header!r} is not HOST or HOST:PORT"
        if region in self.public:
            if any(name.names(signed) for name in self.public[region]):
                return None
            return (f"this endpoint serves region {region} as "
                    f"{', '.join(_shown(n) for n in self.public[region])}; the request "
                    f"was signed for {_shown(signed)}")
        own = self.listeners.get(region)
        if own is not None and own.reached_as(signed):
            return None
        for other, names in self.public.items():
            if other != region and any(name.names(signed) for name in names):
                return self._elsewhere(region, other, signed)
        for other, address in self.listeners.items():
            if other != region and address.reached_as(signed):
                return self._elsewhere(region, other, signed)
        return None

    @staticmethod
    def _elsewhere(region: str, other: str, signed: HostName) -> str:
        return (f"the request was signed for {_shown(signed)}, region {other}'s endpoint; "
                f"this endpoint serves region {region}")


def _shown(name: HostName) -> str:
    host = f"[{name.host}]" if ":" in name.host else name.host
    return host if name.port is None else f"{host}:{name.port}"
