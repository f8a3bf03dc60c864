"""A replicate step's output after a retry: its jobs seen as one."""

from __future__ import annotations

from ..image import Image
from ..job import Job, Task


class RetriedJob(Job):
    """The latest job, whose ``tasks`` and ``copies`` also show the regions copied by earlier
    attempts."""

    def __init__(self, latest: Job, earlier: list[Job]) -> None:
        super().__init__(*latest._parts())
        self._earlier = earlier

    @property
    def tasks(self) -> dict[str, Task]:
        out: dict[str, Task] = {}
        for job in self._earlier:
            out.update(job.tasks)
        out.update(super().tasks)
        return out

    @property
    def copies(self) -> dict[str, Image]:
        out: dict[str, Image] = {}
        for job in self._earlier:
            # an earlier attempt's copies that are there: not its failed ones
            out.update({r: im for r, im in job.copies.items() if im.status != "CreateFailed"})
        out.update(super().copies)
        return out

    @property
    def job_ids(self) -> list[str]:
        return [j.id for j in self._earlier] + [self.id]


def attempts(jobs: list[Job]) -> Job:
    """The jobs of a replicate step's attempts, oldest first, as its output."""
    return jobs[-1] if len(jobs) == 1 else RetriedJob(jobs[-1], jobs[:-1])
