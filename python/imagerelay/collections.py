"""Lists of images and jobs that show as tables in a notebook and convert to pandas.

``cloud.images()`` returns an :class:`ImageList`, ``cloud.jobs()`` a :class:`JobList`: plain
lists (index, iterate, ``len``) with ``_repr_html_()`` (one table row per item) and
``to_pandas()`` (pandas is optional: ``pip install imagerelay[pandas]``).
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, SupportsIndex, TypeVar, overload

from ._fields import fields_of
from .image import Image
from .job import Job

if TYPE_CHECKING:
    import pandas

__all__ = ["ImageList", "JobList"]

_T = TypeVar("_T")
_L = TypeVar("_L", bound="_TableList[Any]")


def _import_pandas() -> Any:
    try:
        import pandas
    except ImportError as exc:
        raise ImportError("to_pandas() needs pandas: pip install imagerelay[pandas]") from exc
    return pandas


def human_size(n: int | None) -> str:
    """Bytes for people: ``1.5 GiB``."""
    if n is None:
        return ""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(n)


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else ""


class _TableList(list[_T]):
    """A list whose items are shown as the rows of one HTML table."""

    _noun = "items"
    _columns: tuple[tuple[str, Callable[[Any], object]], ...] = ()

    def __init__(self, items: Iterable[_T] = ()) -> None:
        super().__init__(items)

    @overload
    def __getitem__(self, index: SupportsIndex) -> _T: ...
    @overload
    def __getitem__(self: _L, index: slice) -> _L: ...
    def __getitem__(self, index: SupportsIndex | slice) -> Any:
        if isinstance(index, slice):
            return type(self)(super().__getitem__(index))
        return super().__getitem__(index)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({list.__repr__(self)})"

    def _repr_html_(self) -> str:
        """An HTML table: one row per item, every cell escaped."""
        head = "".join(f"<th style='text-align:left'>{html.escape(name)}</th>"
                       for name, _ in self._columns)
        if self:
            body = "".join(
                "<tr>" + "".join(f"<td>{html.escape(str(cell(item)))}</td>"
                                 for _, cell in self._columns) + "</tr>"
                for item in self)
        else:
            body = (f"<tr><td colspan='{len(self._columns)}'><i>no {self._noun}</i></td></tr>")
        return (f"<table class='imagerelay-{self._noun}'><thead><tr>{head}</tr></thead>"
                f"<tbody>{body}</tbody></table>")


class ImageList(_TableList[Image]):
    """The images of ``cloud.images()``: a list, a table in a notebook, a DataFrame."""

    _noun = "images"
    _columns = (
        ("id", lambda i: i.id),
        ("name", lambda i: i.name),
        ("region", lambda i: i.region),
        ("type", lambda i: i.type),
        ("status", lambda i: i.status if i.progress is None
         else f"{i.status} {i.progress:.0f}%"),
        ("size", lambda i: human_size(i.size)),
        ("owner", lambda i: i.owner or "-"),
        ("os", lambda i: " ".join(p for p in (i.os_name, i.os_version) if p)),
        ("digest", lambda i: (i.digest or "")[:19]),
        ("created (UTC)", lambda i: _when(i.created_at)),
    )

    def to_pandas(self) -> pandas.DataFrame:
        """One row per image, one column per ``Image.to_dict()`` key (pandas is optional)."""
        pd = _import_pandas()
        return pd.DataFrame([i.to_dict() for i in self], columns=list(fields_of(Image)))


_JOB_COLUMNS = ("id", "source_image_id", "source_region", "to", "state", "progress",
                "bytes_total", "bytes_done", "bytes_transferred", "bytes_sent", "created_at")
_TASK_COLUMNS = ("job_id", "source_image_id", "source_region", "region", "dest_image_id",
                 "state", "bytes_total", "bytes_done", "bytes_transferred", "bytes_sent",
                 "chunks_total",
                 "chunks_skipped", "rate", "attempts", "error", "error_code", "started_at",
                 "finished_at")


class JobList(_TableList[Job]):
    """The jobs of ``cloud.jobs()``: a list, a table in a notebook, a DataFrame."""

    _noun = "jobs"
    _columns = (
        ("job", lambda j: j.id),
        ("source", lambda j: j.source_image_id),
        ("from", lambda j: j.source_region),
        ("to", lambda j: ",".join(j.tasks)),
        ("state", lambda j: j.state),
        ("progress", lambda j: f"{j.progress:.0f}%"),
        ("transferred", lambda j: human_size(sum(t.bytes_transferred for t in j.tasks.values()))),
        ("created (UTC)", lambda j: _when(j.created_at)),
    )

    def to_pandas(self) -> pandas.DataFrame:
        """One row per job; ``to`` lists its regions, the byte counts sum its tasks."""
        pd = _import_pandas()
        rows = []
        for j in self:
            tasks = j.tasks.values()
            rows.append({
                "id": j.id, "source_image_id": j.source_image_id,
                "source_region": j.source_region, "to": list(j.tasks), "state": j.state,
                "progress": j.progress,
                "bytes_total": sum(t.bytes_total for t in tasks),
                "bytes_done": sum(t.bytes_done for t in tasks),
                "bytes_transferred": sum(t.bytes_transferred for t in tasks),
                "bytes_sent": sum(t.bytes_sent for t in tasks),
                "created_at": j.created_at})
        return pd.DataFrame(rows, columns=list(_JOB_COLUMNS))

    def tasks_to_pandas(self) -> pandas.DataFrame:
        """One row per (job, destination region): the per-region transfer of the jobs."""
        pd = _import_pandas()
        rows = [{"job_id": j.id, "source_image_id": j.source_image_id,
                 "source_region": j.source_region, **t.to_dict()}
                for j in self for t in j.tasks.values()]
        return pd.DataFrame(rows, columns=list(_TASK_COLUMNS))
