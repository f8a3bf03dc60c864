"""What a scrub found and did in one region (``Cloud.scrub``)."""

from __future__ import annotations

import dataclasses

from . import _core


@dataclasses.dataclass(frozen=True)
class ScrubReport:
    """One region's scrub: every stored chunk read and checked against its name.

    ``quarantined``: chunks whose bytes were wrong, taken out of use (the next import or
    copy that needs one writes it anew). ``chunks_repaired``: chunks fetched from another
    region for images that needed them. ``images_repaired``: images that lacked a chunk and
    now verify whole (``Available`` again). ``images_damaged``: images still
    ``NotAvailable`` because no region holds the bytes they lack (delete them, or import or
    replicate them again). Only images the acting account may see are named.
    ``unavailable``: why the region was not scrubbed (its store could not be reached: a disk
    not mounted, a server down), or ``None``; only when every region is scrubbed
    (``scrub()``): a region named alone raises ``TransferError`` instead.
    """

    region: str
    chunks_checked: int
    bytes_checked: int
    quarantined: list[str]
    chunks_repaired: int
    images_repaired: list[str]
    images_damaged: list[str]
    unavailable: str | None = None

    @property
    def healthy(self) -> bool:
        """True when the region was scrubbed and nothing damaged is left in it."""
        return not self.images_damaged and self.unavailable is None

    @classmethod
    def _from_core(cls, r: _core.ScrubReportInfo) -> ScrubReport:
        return cls(region=r.region, chunks_checked=r.chunks_checked,
                   bytes_checked=r.bytes_checked, quarantined=list(r.quarantined),
                   chunks_repaired=r.chunks_repaired, images_repaired=list(r.images_repaired),
                   images_damaged=list(r.images_damaged), unavailable=r.unavailable or None)
