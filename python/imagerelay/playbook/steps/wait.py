"""``wait``: until a job's copies or an image are done; skipped when done before and they
still are (the image still there)."""

from __future__ import annotations

from ...errors import NotFoundError, TransferError
from ..result import DRY_RUN, SKIPPED
from ..values import Placeholder, describe_output
from .base import Outcome, StepKind, StepRun


class Wait(StepKind):
    checks_only = True

    def recorded(self, run: StepRun) -> Outcome | None:
        a = run.args
        if not run.done_before or isinstance(a.get("job", a.get("image")), Placeholder):
            return None
        if "job" in a:
            job = run.cloud.job(a["job"])
            return None if job.state == "Running" else Outcome(
                job, SKIPPED, f"waited before: {describe_output(job)}")
        try:
            image = run.image(a["image"])
        except NotFoundError:
            return None  # apply says so
        if image is None:
            return run.gone(a["image"])
        return None if image.status == "Creating" else Outcome(
            image, SKIPPED, f"waited before: image {describe_output(image)}")

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
