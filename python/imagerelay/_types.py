"""Small value types of the public API: Limits, Region, Account, Event."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timezone
from typing import Any

from . import _core
from ._checks import INT32_MAX, INT64_MAX, check_int


def utc_from_us(us: int) -> datetime | None:
    """An aware UTC datetime from microseconds since the epoch (None for 0)."""
    if not us:
        return None
    return datetime.fromtimestamp(us / 1_000_000, tz=timezone.utc)


@dataclasses.dataclass
class Limits:
    """Limits of a home; the defaults follow BCC (DESIGN.md §2)."""

    max_copy_bytes: int = 200 * 2**30
    max_import_bytes: int = 500 * 2**30
    max_share_accounts: int = 50
    max_accepted_shares: int = 20
    chunk_size: int = 64 * 2**10
    max_tasks_per_region: int = 4
    buffer_memory: int = 256 * 2**20
    bandwidth: int | None = None

    def _to_core(self) -> _core.Limits:
        core = _core.Limits()
        for field in dataclasses.fields(self):
            low, high = _LIMIT_RANGES[field.name]
            value = getattr(self, field.name)
            if field.name == "bandwidth" and value is None:
                value = 0  # unlimited
            setattr(core, field.name, check_int(f"Limits.{field.name}", value, low=low,
                                                high=high))
        return core


# What each limit's C++ field (uint64_t or int) can hold; the range each must be in is a rule
# of the core (CheckLimits in cpp/src/rules/rules.cpp), checked when a home is opened.
_U64 = (0, INT64_MAX)
_INT = (-INT32_MAX - 1, INT32_MAX)
_LIMIT_RANGES: dict[str, tuple[int, int]] = {
    "max_copy_bytes": _U64,
    "max_import_bytes": _U64,
    "max_share_accounts": _INT,
    "max_accepted_shares": _INT,
    "chunk_size": _U64,
    "max_tasks_per_region": _INT,
    "buffer_memory": _U64,
    "bandwidth": _U64,
}


@dataclasses.dataclass(frozen=True)
class Region:
    """A place where image bytes live: a local directory or an S3 bucket."""

    id: str
    name: str
    store: str

    @classmethod
    def _from_core(cls, r: _core.Region) -> Region:
        return cls(id=r.id, name=r.name, store=r.store)


@dataclasses.dataclass(frozen=True)
class Account:
    """An account: every call acts as one."""

    id: str
    name: str

    @classmethod
    def _from_core(cls, a: _core.Account) -> Account:
        return cls(id=a.id, name=a.name)


@dataclasses.dataclass(frozen=True)
class Event:
    """One entry of the audit log (or a live ``task.progress`` notice)."""

    seq: int
    time: datetime
    type: str
    account: str
    image_id: str | None
    job_id: str | None
    region: str | None
    detail: dict[str, Any]

    @classmethod
    def _from_core(cls, e: _core.EventInfo) -> Event:
        try:
            detail = json.loads(e.detail_json) if e.detail_json else {}
        except ValueError:
            detail = {}
        return cls(seq=e.seq, time=utc_from_us(e.time_us) or datetime.now(timezone.utc),
                   type=e.type, account=e.account, image_id=e.image_id or None,
                   job_id=e.job_id or None, region=e.region or None, detail=detail)


class Handle:
    """Returned by ``on`` and ``add_rule``: ``remove()`` undoes the registration."""

    def __init__(self, remove: Any) -> None:
        self._remove = remove

    def remove(self) -> None:
        if self._remove is not None:
            self._remove()
            self._remove = None
