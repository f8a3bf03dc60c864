"""Job and Task: one replicate request and its per-region copies."""

from __future__ import annotations

import html
from collections.abc import Generator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from . import _core
from ._checks import check_timeout
from ._enums import JobState, TaskState
from ._fields import CoreField, fields_of
from ._progress import byte_bar, show
from ._types import utc_from_us
from ._wait import wait_for, wait_for_async

if TYPE_CHECKING:
    from .cloud import Cloud
    from .image import Image


class Task:
    """One (source image -> destination region) copy of a job."""

    def __init__(self, info: _core.TaskInfo) -> None:
        self._info = info

    # -- fields (to_dict and the tables list them in this order) ------------------------
    region = CoreField[str]()
    dest_image_id = CoreField[str]()
    state = CoreField[TaskState](
        "Pending, Running, Completed, Failed or Cancelled: a ``TaskState``, equal to its "
        "string", convert=TaskState)
    bytes_total = CoreField[int]()
    bytes_done = CoreField[int]("covered, zero and already-present chunks included")
    bytes_transferred = CoreField[int](
        "bytes of the image actually written (not in the region before)")
    bytes_sent = CoreField[int]("what was written for them, compressed: the bytes on the wire")
    chunks_total = CoreField[int]()
    chunks_skipped = CoreField[int]()
    rate = CoreField[float]("bytes/s")
    attempts = CoreField[int]()
    worker = CoreField[str | None](
        "``host:pid`` of the worker copying it while it runs (None otherwise)")
    error = CoreField[str | None]()
    error_code = CoreField[str | None]()
    started_at = CoreField[datetime | None](source="started_us", convert=utc_from_us)
    finished_at = CoreField[datetime | None](source="finished_us", convert=utc_from_us)

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in fields_of(Task)}

    def __repr__(self) -> str:
        return (f"<Task {self.region} {self.dest_image_id} {self.state} "
                f"{self.bytes_done}/{self.bytes_total}>")


class Job:
    """A replicate request: one source image, one task per destination region."""

    def __init__(self, cloud: Cloud, info: _core.JobInfo) -> None:
        self._cloud = cloud
        self._info = info

    def _parts(self) -> tuple[Cloud, _core.JobInfo]:
        """What this job was built from: for a subclass that shows the same job (the
        playbook's RetriedJob), within the package."""
        return self._cloud, self._info

    @property
    def id(self) -> str:
        return self._info.id

    @property
    def source_image_id(self) -> str:
        return self._info.source_image_id

    @property
    def source_region(self) -> str:
        return self._info.source_region

    @property
    def state(self) -> JobState:
        """Running, Completed, Failed, Cancelled or PartiallyCompleted: a ``JobState``, equal
        to its string"""
        return JobState(self._info.state)

    @property
    def created_at(self) -> datetime | None:
        return utc_from_us(self._info.created_us)

    @property
    def tasks(self) -> dict[str, Task]:
        return {t.region: Task(t) for t in self._info.tasks}

    @property
    def copies(self) -> dict[str, Image]:
        """The destination images that exist (a cancelled copy has none)."""
        from .errors import NotFoundError

        out: dict[str, Image] = {}
        for t in self._info.tasks:
            try:
                out[t.region] = self._cloud.image(t.dest_image_id)
            except NotFoundError:
                pass
        return out

    @property
    def progress(self) -> float:
        total = sum(t.bytes_total for t in self._info.tasks)
        done = sum(t.bytes_done for t in self._info.tasks)
        if total == 0:
            return 100.0 if self.state != "Running" else 0.0
        return 100.0 * done / total

    def refresh(self) -> Job:
        self._info = self._cloud._engine.job(self._cloud.account, self.id)
        return self

    def cancel(self, region: str | None = None) -> None:
        """Cancels every copy in flight, or only the one to ``region``."""
        self._cloud._engine.cancel_job(self._cloud.account, self.id, region)
        self.refresh()

    def wait(self, timeout: float | None = None, *, progress: bool = False,
             raise_on_error: bool = True) -> Job:
        """Waits until no task is Pending or Running.

        ``progress=True`` shows one bar per destination (tqdm: terminal and Jupyter).
        Raises ``ReplicationFailedError`` when a task failed (if ``raise_on_error``) and
        ``TimeoutError`` when ``timeout`` seconds pass; the copies go on either way.
        """
        from .errors import ReplicationFailedError

        timeout_s = check_timeout(timeout)  # before a bar shows
        bars = _ProgressBars(self) if progress else None

        def tick() -> None:  # while the engine waits: the bars move
            if bars:
                bars.update(self.refresh())

        def timed_out() -> str:
            self.refresh()  # the caller sees the job as it is now
            return f"job {self.id} is still running after {timeout} s; its copies go on"

        try:
            self._info = wait_for(
                lambda: self._cloud._engine.wait_job(self._cloud.account, self.id, timeout_s,
                                                     tick=tick if bars else None),
                timed_out)
            if bars:
                bars.update(self)
        finally:
            if bars:
                bars.close()
        if raise_on_error and self.state == "Failed":
            failed = [t for t in self.tasks.values() if t.state == "Failed"]
            reasons = "; ".join(f"{t.region}: {t.error_code}: {t.error}" for t in failed)
            raise ReplicationFailedError(f"job {self.id} failed ({reasons})", job=self)
        return self

    def __await__(self) -> Generator[Any, None, Job]:
        return self._wait_async().__await__()

    async def _wait_async(self) -> Job:
        await wait_for_async(lambda cancel: self._cloud._engine.wait_job(
            self._cloud.account, self.id, None, cancel=cancel))
        return self.wait(timeout=0)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "source_image_id": self.source_image_id,
                "source_region": self.source_region, "created_at": self.created_at,
                "state": self.state, "progress": self.progress,
                "tasks": {r: t.to_dict() for r, t in self.tasks.items()}}

    def __repr__(self) -> str:
        regions = ",".join(self.tasks)
        return (f"<Job {self.id} {self.source_image_id} -> {regions} {self.state} "
                f"{self.progress:.0f}%>")

    def _repr_html_(self) -> str:
        head = (f"<p>Job <b>{html.escape(self.id)}</b>: {html.escape(self.source_image_id)} "
                f"({html.escape(self.source_region)}), {html.escape(self.state)}, "
                f"{self.progress:.0f}%</p>")
        rows = "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (
                t.region, t.dest_image_id, t.state, f"{t.bytes_done}/{t.bytes_total}",
                t.bytes_transferred, t.error or "")) + "</tr>"
            for t in self.tasks.values())
        return (head + "<table><tr><th>region</th><th>image</th><th>state</th><th>done</th>"
                "<th>transferred</th><th>error</th></tr>" + rows + "</table>")


class _ProgressBars:
    """One tqdm bar per destination region."""

    def __init__(self, job: Job) -> None:
        self._bars = {region: byte_bar(f"{job.source_image_id} -> {region}", task.bytes_total)
                      for region, task in job.tasks.items()}

    def update(self, job: Job) -> None:
        for region, task in job.tasks.items():
            bar = self._bars.get(region)
            if bar is not None:
                show(bar, task.bytes_done, task.bytes_total, task.state)

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
