"""``cancel``: a copy in flight (by its image), or a job's copies (all, or to one region)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from ...errors import NotFoundError, ValidationError
from ..result import DRY_RUN, SKIPPED
from ..values import Placeholder, describe_output
from .base import Outcome, StepKind, StepRun


@dataclasses.dataclass
class _Target:
    """What a cancel step cancels."""

    output: Any  # the step's output: the job, or the copy's image id
    what: str  # as the log names it
    cancel: Callable[[], None]
    already: str | None = None  # the detail when it is already cancelled
    now: str = ""  # its state, as a dry run tells it
    # the copies it cancels (their image ids): what a replicate step does not copy again
    images: list[str] = dataclasses.field(default_factory=list)


class Cancel(StepKind):
    def plan(self, run: StepRun) -> Outcome:
        a = run.args
        target = a["job"] if "job" in a else a["image"]
        if isinstance(target, Placeholder):
            noun = "job" if "job" in a else "the copy"
            return Outcome(target, DRY_RUN, f"would cancel {noun} {target}")
        found = _target(run)
        if found.already is not None:
            return Outcome(found.output, SKIPPED, found.already)
        return Outcome(found.output, DRY_RUN, f"would cancel {found.what}{found.now}")

    def apply(self, run: StepRun) -> Outcome:
        found = _target(run)
        if found.already is not None:
            return run.unchanged(found.output, found.already, images=found.images)
        found.cancel()
        return run.finish(found.output, f"cancelled {found.what}", images=found.images)


def _target(run: StepRun) -> _Target:
    c, a = run.cloud, run.args
    if "job" in a:
        job = c.job(a["job"])
        region = a.get("region")
        tasks = [t for r, t in job.tasks.items() if region is None or r == region]
        if region is not None and not tasks:
            raise ValidationError(f"job {job.id} has no copy to region {region!r} "
                                  f"(regions: {', '.join(job.tasks)})",
                                  code="InvalidParameter")
        already = None
        if tasks and all(t.state == "Cancelled" for t in tasks):
            already = f"already cancelled: {describe_output(job)}"
        return _Target(job, f"job {job.id}" + (f" to {region}" if region else ""),
                       lambda: job.cancel(region), already,
                       images=[t.dest_image_id for t in tasks
                               if t.state in ("Pending", "Running", "Cancelled")])
    image_id = a["image"]
    try:
        image = c.image(image_id)
    except NotFoundError:
        if any(e.type == "task.cancelled" for e in c.events(image_id=image_id)):
            return _Target(image_id, f"the copy {image_id}", lambda: None,
                           f"the copy {image_id} is already cancelled", images=[image_id])
        raise
    return _Target(image_id, f"the copy {image_id}", lambda: c.cancel_copy(image_id),
                   now=f" (now {image.status})", images=[image_id])
