"""``rename``: an image, if its name is not already right; renamed again if it was
renamed since."""

from __future__ import annotations

from ...image import Image
from ..result import DRY_RUN, SKIPPED
from ..values import Placeholder
from .base import Outcome, StepKind, StepRun


class Rename(StepKind):
    def plan(self, run: StepRun) -> Outcome:
        a = run.args
        if isinstance(a["image"], Placeholder):
            return Outcome(a["image"], DRY_RUN, f"would rename {a['image']} to {a['name']}")
        image = run.image(a["image"])
        if image is None:
            return run.gone(a["image"])
        if image.name == a["name"]:
            return Outcome(image, SKIPPED, _already(image))
        run.cloud.dry_run.rename_image(image.id, a["name"])  # the real request's checks
        drift = _drift(run, image)
        what = f"would rename {image.id} from {image.name} to {a['name']}"
        return Outcome(image, DRY_RUN, f"would redo: {drift}; {what}" if drift else what, drift)

    def apply(self, run: StepRun) -> Outcome:
        a = run.args
        image = run.image(a["image"])
        if image is None:
            return run.gone(a["image"])
        if image.name == a["name"]:
            return run.unchanged(image, _already(image))
        drift = _drift(run, image)
        run.cloud.rename_image(image.id, a["name"])
        image.refresh()
        if drift:
            return run.finish(image, f"{drift}; renamed it to {a['name']} again", run.again,
                              drift=drift)
        return run.finish(image, f"renamed {image.id} to {a['name']}")


def _already(image: Image) -> str:
    return f"{image.id} is already named {image.name}"


def _drift(run: StepRun, image: Image) -> str | None:
    """After a run that did the step: the rename since (also by a later step of the
    playbook: each step converges to what it says, where it stands)."""
    if not run.done_before:
        return None
    later = run.changed_by("rename", image.id)
    by = f" (step {later} renames it)" if later else ""
    return f"{image.id} was renamed to {image.name} since{by}"
