"""``replicate``: copies of an image to regions, as one job; copied again, as a new job, to
the regions whose copy failed or is gone since."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from typing import Any

from ...errors import ImageRelayError, NotFoundError, ReplicationFailedError
from ...job import Job, Task
from ..result import DONE, DRY_RUN, SKIPPED
from ..retried import attempts
from ..values import Partial, Placeholder, describe_output
from .base import Outcome, StepKind, StepRun


@dataclasses.dataclass
class _Earlier:
    """What earlier runs of this step with these arguments started."""

    job_ids: list[str]  # oldest first
    attempt: int
    jobs: list[Job]
    job: Job | None  # their jobs as one

    @classmethod
    def of(cls, run: StepRun) -> _Earlier:
        record = run.record or {}
        job_ids: list[str] = list(record.get("jobs") or [])
        jobs = [run.cloud.job(j) for j in job_ids]
        return cls(job_ids, int(record.get("attempt", 0)), jobs,
                   attempts(jobs) if jobs else None)

    def missing(self, run: StepRun) -> dict[str, str]:
        """Once the jobs are over: region -> why it needs a copy, for the regions of ``to``
        whose copy (of the latest attempt to it) failed, or is gone since and not by a
        later step of the playbook."""
        latest: dict[str, tuple[Task, str]] = {}
        for job in self.jobs:
            for region, task in job.tasks.items():
                latest[region] = (task, job.id)
        out: dict[str, str] = {}
        for region in dict.fromkeys(run.args["to"]):
            if region not in latest:
                out[region] = f"no copy to {region} was started"
                continue
            task, job_id = latest[region]
            why = _why_missing(run, task, job_id)
            if why is not None:
                out[region] = why
        return out


def _why_missing(run: StepRun, task: Task, job_id: str) -> str | None:
    copy = task.dest_image_id
    if task.state == "Failed":
        return f"the copy to {task.region} failed ({task.error or 'no reason given'})"
    if task.state == "Cancelled":
        if run.removed_by(copy, job_id) is not None:
            return None
        return f"the copy to {task.region} ({copy}) was cancelled"
    if task.state != "Completed":
        return None  # in flight: not once the job is over
    try:
        status: str = run.cloud.image(copy).status
    except NotFoundError:
        status = "Deleted"
    if status == "Deleted":
        if run.removed_by(copy) is not None:
            return None
        return f"the copy in {task.region} ({copy}) was deleted"
    if status == "CreateFailed":
        return f"the copy in {task.region} ({copy}) is CreateFailed"
    return None  # Available, Replicating; or NotAvailable: scrub repairs it, no second copy


class Replicate(StepKind):
    """The engine gets a client token derived from (playbook, step, arguments, attempt), so a
    run killed between starting the job and recording it gets the same job back."""

    def plan(self, run: StepRun) -> Outcome:
        a = run.args
        earlier = _Earlier.of(run)
        regions = a["to"]
        missing: dict[str, str] = {}
        if earlier.job is not None:
            if earlier.job.state == "Running":
                return _in_flight(earlier.job)
            missing = earlier.missing(run)
            if not missing:
                return _already(earlier.job)
            regions = list(missing)
        image = run.known_image(a["image"])
        if image is not None:
            # Every rule and policy of the real request, in the core.
            run.cloud.dry_run.replicate(image.id, regions, name=a.get("name"))
        else:
            for r in regions:  # the image comes from an earlier step: what can be told now
                run.cloud.region(r)
        src = image.id if image else a["image"]
        what = f"would replicate {src} to {', '.join(regions)}"
        if earlier.job is None:
            return Outcome(Placeholder(run.step.key), DRY_RUN, what)
        output = _kept(run.step.key, earlier.job, a["to"], missing)
        why = "; ".join(missing.values())
        if run.done_before:
            return Outcome(output, DRY_RUN, f"would redo: {why}; {what} again", why)
        return Outcome(output, DRY_RUN, f"{what} (retrying a failed job: {why})")

    def apply(self, run: StepRun) -> Outcome:
        c, a = run.cloud, run.args
        wait = a.get("wait", True)
        earlier = _Earlier.of(run)
        job_ids, attempt, regions = earlier.job_ids, earlier.attempt, a["to"]
        why: str | None = None
        if earlier.job is not None:
            job = earlier.job
            if job.state == "Running":
                if not wait:
                    run.save(DONE, job, jobs=job_ids, attempt=attempt)
                    return _in_flight(job)
                return _wait(run, job, job_ids, attempt, "resumed: ")
            missing = earlier.missing(run)
            if not missing:
                run.settle(job, jobs=job_ids, attempt=attempt)
                return _already(job)
            regions, why = list(missing), "; ".join(missing.values())
            attempt += 1
            for task in job.tasks.values():
                if task.region in missing and task.state in ("Failed", "Completed"):
                    with contextlib.suppress(ImageRelayError):  # a failed copy's image
                        c.delete_image(task.dest_image_id)
        status = run.again
        latest = c.replicate(a["image"], regions, name=a.get("name"),
                             client_token=_token(run, attempt))
        if latest.id not in job_ids:
            job_ids.append(latest.id)
        job = attempts([c.job(j) for j in job_ids[:-1]] + [latest])
        # drift: what changed since the step was done (not a retry of a failed job)
        drift = why if why is not None and status != DONE else None
        what = f"{why}; copying again: " if why else ""
        if not wait:
            return run.finish(job, f"{what}started {describe_output(job)}", status,
                              drift=drift, jobs=job_ids, attempt=attempt)
        run.save("started", job, jobs=job_ids, attempt=attempt)
        return _wait(run, job, job_ids, attempt, what, status, drift)


def _wait(run: StepRun, job: Job, job_ids: list[str], attempt: int, what: str,
          status: str = DONE, drift: str | None = None) -> Outcome:
    try:
        job.wait(run.args.get("timeout"), progress=run.progress)
    except ReplicationFailedError:
        run.save("failed", job, jobs=job_ids, attempt=attempt)
        raise
    return run.finish(job, f"{what}replicated {describe_output(job)}", status, drift=drift,
                      jobs=job_ids, attempt=attempt)


def _kept(key: str, job: Job, to: list[str], missing: dict[str, str]) -> Partial:
    """A dry run's output for a job that would copy ``missing`` again: the copies it keeps
    are known, the others placeholders."""
    copies, tasks = job.copies, job.tasks
    known: dict[str, Any] = {
        "copies": {r: Placeholder(f"{key}.copies.{r}") if r in missing else copies[r]
                   for r in dict.fromkeys(to) if r in missing or r in copies},
        "tasks": {r: Placeholder(f"{key}.tasks.{r}") if r in missing else tasks[r]
                  for r in dict.fromkeys(to) if r in missing or r in tasks},
        "source_image_id": job.source_image_id, "source_region": job.source_region}
    return Partial(key, known)


def _token(run: StepRun, attempt: int) -> str:
    seed = f"{run.playbook}\0{run.step.key}\0{run.fingerprint}\0{attempt}"
    return "pb-" + hashlib.sha256(seed.encode()).hexdigest()[:40]


def _in_flight(job: Job) -> Outcome:
    return Outcome(job, SKIPPED, f"job {job.id} is in flight ({job.progress:.0f}%)")


def _already(job: Job) -> Outcome:
    return Outcome(job, SKIPPED, f"already replicated: {describe_output(job)}")
