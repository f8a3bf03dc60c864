"""``wait``: until a job's copies or an image are done."""

from __future__ import annotations

from ...errors import TransferError
from ..result import DRY_RUN
from ..values import Placeholder, describe_output
from .base import Outcome, StepKind, StepRun


class Wait(StepKind):
    checks_only = True

    def done_detail(self, run: StepRun) -> str:
        return "waited before"

    def plan(self, run: StepRun) -> Outcome:
        noun = "job" if "job" in run.args else "image"
        target = run.args[noun]
        if isinstance(target, Placeholder):
            return Outcome(target, DRY_RUN, f"would wait for {noun} {target}")
        if noun == "job":
            job = run.cloud.job(target)
            return Outcome(job, DRY_RUN, f"would wait for job {job.id} (now {job.state})")
        image = run.cloud.image(target)
        return Outcome(image, DRY_RUN, f"would wait for image {image.id} (now {image.status})")

    def apply(self, run: StepRun) -> Outcome:
        c, a = run.cloud, run.args
        timeout = a.get("timeout")
        if "job" in a:
            job = c.job(a["job"])
            job.wait(timeout, progress=run.progress)
            return run.finish(job, f"job {describe_output(job)}")
        image = c.image(a["image"])
        image.wait(timeout)
        if image.status == "CreateFailed":
            raise TransferError(f"image {image.id} is CreateFailed: {image.error}")
        return run.finish(image, f"image {describe_output(image)}")
