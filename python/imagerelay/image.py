"""Image: one image in one region, as the acting account sees it."""

from __future__ import annotations

import html
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _core
from ._checks import check_timeout
from ._enums import ImageStatus
from ._fields import CoreField, fields_of
from ._types import utc_from_us
from ._wait import wait_for

if TYPE_CHECKING:
    from .cloud import Cloud
    from .job import Job

class Image:
    """An image. Properties are a snapshot; ``refresh()`` reads the catalog again."""

    def __init__(self, cloud: Cloud, info: _core.ImageInfo) -> None:
        self._cloud = cloud
        self._info = info

    # -- fields (to_dict, to_pandas and the tables list them in this order) -------------
    id = CoreField[str]("m- followed by 8 characters")
    name = CoreField[str]()
    region = CoreField[str]()
    type = CoreField[str]("System, Custom, or Sharing")
    owner = CoreField[str | None]("None for System images")
    status = CoreField[ImageStatus](
        "Creating, Available, Replicating, CreateFailed or NotAvailable (stored bytes found "
        "damaged; see Cloud.scrub): an ``ImageStatus``, equal to its string",
        convert=ImageStatus)
    progress = CoreField[float | None]("0-100 while a destination copy is in flight, else None")
    size = CoreField[int]("bytes of the image as stored: the file imported")
    virtual_size = CoreField[int](
        "bytes of the disk the image holds (its header's; equal to size for raw)")
    digest = CoreField[str | None](
        "sha256:<hex> of the whole image; None while it is computed after the import of a "
        "mostly-empty file (see wait_digest)")
    format = CoreField[str]("raw, qcow2, vmdk or vhd, as the file's header said at import")
    os_type = CoreField[str]()
    os_name = CoreField[str]()
    os_version = CoreField[str]()
    os_arch = CoreField[str]()
    description = CoreField[str]()
    created_at = CoreField[datetime | None](source="created_us", convert=utc_from_us)
    source_image_id = CoreField[str | None]()
    source_region = CoreField[str | None]()
    error = CoreField[str | None]("why it is CreateFailed")

    # -- methods ------------------------------------------------------------------
    def refresh(self) -> Image:
        """Reads the image again from the catalog."""
        self._info = self._cloud._engine.image(self._cloud.account, self.id)
        return self

    def replicate(self, to: str | list[str], *, name: str | None = None,
                  client_token: str | None = None) -> Job:
        return self._cloud.replicate(self.id, to, name=name, client_token=client_token)

    def share(self, *accounts: str) -> None:
        self._cloud.share(self.id, list(accounts))

    def unshare(self, *accounts: str) -> None:
        self._cloud.unshare(self.id, list(accounts))

    def shared_users(self) -> list[str]:
        return self._cloud.shared_users(self.id)

    def rename(self, name: str) -> None:
        self._cloud.rename_image(self.id, name)
        self.refresh()

    def delete(self) -> None:
        self._cloud.delete_image(self.id)

    def export(self, path: str | Path, *, progress: bool = False, force: bool = False) -> Path:
        """Writes the image's bytes to ``path``, a new file unless ``force=True`` (see
        ``Cloud.export_image``); ``progress=True`` shows a progress bar."""
        return self._cloud.export_image(self.id, path, progress=progress, force=force)

    def verify(self, *, progress: bool = False) -> str:
        """Checks every stored byte against the digest; returns it (IntegrityError if not).
        ``progress=True`` shows a progress bar."""
        return self._cloud.verify_image(self.id, progress=progress)

    def wait_digest(self, timeout: float | None = None, *, progress: bool = False) -> str:
        """Waits for the digest (None while computed after a sparse import); returns it.
        ``progress=True`` shows how far the digester got."""
        digest = self._cloud.wait_digest(self.id, timeout, progress=progress)
        self.refresh()
        return digest

    def wait(self, timeout: float | None = None) -> Image:
        """Waits until the image is neither Creating nor Replicating."""
        timeout = check_timeout(timeout)

        def timed_out() -> str:
            self.refresh()  # the caller sees the image as it is now
            return f"image {self.id} is still {self.status} after {timeout} s"

        self._info = wait_for(
            lambda: self._cloud._engine.wait_image(self._cloud.account, self.id,
                                                   ["Creating", "Replicating"], timeout),
            timed_out)
        return self

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in fields_of(Image)}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Image) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        extra = f" {self.progress:.0f}%" if self.progress is not None else ""
        return (f"<Image {self.id} {self.name!r} {self.region} {self.type} "
                f"{self.status}{extra} {self.size} bytes>")

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><th style='text-align:left'>{html.escape(k)}</th>"
            f"<td>{html.escape(str(v))}</td></tr>"
            for k, v in self.to_dict().items() if v not in (None, ""))
        return f"<table>{rows}</table>"
