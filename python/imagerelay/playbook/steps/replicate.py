"""``replicate``: copies of an image to regions, as one job, retried for the regions a
failed job did not copy."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib

from ...errors import ImageRelayError, ReplicationFailedError
from ...job import Job
from ..result import DONE, DRY_RUN, SKIPPED
from ..retried import attempts
from ..values import Placeholder, describe_output
from .base import Outcome, StepKind, StepRun


@dataclasses.dataclass
class _Earlier:
    """What earlier runs of this step with these arguments started."""

    job_ids: list[str]  # oldest first
    attempt: int
    job: Job | None  # their jobs as one

    @classmethod
    def of(cls, run: StepRun) -> _Earlier:
        record = run.record or {}
        job_ids: list[str] = list(record.get("jobs") or [])
        job = attempts([run.cloud.job(j) for j in job_ids]) if job_ids else None
        return cls(job_ids, int(record.get("attempt", 0)), job)

    def regions_left(self, to: list[str]) -> list[str]:
        """After a failed job: the regions that have no good copy yet."""
        assert self.job is not None
        good = {r for r, im in self.job.copies.items() if im.status == "Available"}
        return [r for r in dict.fromkeys(to) if r not in good]


class Replicate(StepKind):
    """The engine gets a client token derived from (playbook, step, arguments, attempt), so a
    run killed between starting the job and recording it gets the same job back."""

    def recorded(self, run: StepRun) -> Outcome | None:
        return None  # plan and apply look at the recorded jobs themselves

    def plan(self, run: StepRun) -> Outcome:
        a = run.args
        earlier = _Earlier.of(run)
        regions = a["to"]
        if earlier.job is not None:
            if earlier.job.state == "Running":
                return _in_flight(earlier.job)
            if earlier.job.state != "Failed":
                return _already(earlier.job)
            regions = earlier.regions_left(a["to"])
        image = run.known_image(a["image"])
        if image is not None:
            # Every rule and policy of the real request, in the core.
            run.cloud.dry_run.replicate(image.id, regions, name=a.get("name"))
        else:
            for r in regions:  # the image comes from an earlier step: what can be told now
                run.cloud.region(r)
        src = image.id if image else a["image"]
        retry = " (retrying a failed job)" if earlier.job_ids else ""
        return Outcome(Placeholder(run.step.key), DRY_RUN,
                       f"would replicate {src} to {', '.join(regions)}{retry}")

    def apply(self, run: StepRun) -> Outcome:
        c, a = run.cloud, run.args
        wait = a.get("wait", True)
        earlier = _Earlier.of(run)
        job_ids, attempt, regions = earlier.job_ids, earlier.attempt, a["to"]
        if earlier.job is not None:
            job = earlier.job
            if job.state == "Running":
                if not wait:
                    run.save(DONE, job, jobs=job_ids, attempt=attempt)
                    return _in_flight(job)
                return self._wait(run, job, job_ids, attempt, "resumed: ")
            if job.state != "Failed":
                run.settle(job, jobs=job_ids, attempt=attempt)
                return _already(job)
            regions = earlier.regions_left(a["to"])
            attempt += 1
            for task in job.tasks.values():
                if task.state == "Failed":
                    with contextlib.suppress(ImageRelayError):
                        c.delete_image(task.dest_image_id)
        latest = c.replicate(a["image"], regions, name=a.get("name"),
                             client_token=_token(run, attempt))
        if latest.id not in job_ids:
            job_ids.append(latest.id)
        job = attempts([c.job(j) for j in job_ids[:-1]] + [latest])
        if not wait:
            return run.finish(job, f"started {describe_output(job)}", jobs=job_ids,
                              attempt=attempt)
        run.save("started", job, jobs=job_ids, attempt=attempt)
        return self._wait(run, job, job_ids, attempt, "")

    @staticmethod
    def _wait(run: StepRun, job: Job, job_ids: list[str], attempt: int, what: str) -> Outcome:
        try:
            job.wait(run.args.get("timeout"), progress=run.progress)
        except ReplicationFailedError:
            run.save("failed", job, jobs=job_ids, attempt=attempt)
            raise
        return run.finish(job, f"{what}replicated {describe_output(job)}", jobs=job_ids,
                          attempt=attempt)


def _token(run: StepRun, attempt: int) -> str:
    seed = f"{run.playbook}\0{run.step.key}\0{run.fingerprint}\0{attempt}"
    return "pb-" + hashlib.sha256(seed.encode()).hexdigest()[:40]


def _in_flight(job: Job) -> Outcome:
    return Outcome(job, SKIPPED, f"job {job.id} is in flight ({job.progress:.0f}%)")


def _already(job: Job) -> Outcome:
    return Outcome(job, SKIPPED, f"already replicated: {describe_output(job)}")
