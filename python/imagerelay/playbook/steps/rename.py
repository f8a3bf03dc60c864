"""``rename``: an image, if its name is not already right."""

from __future__ import annotations

from ..result import DRY_RUN, SKIPPED
from .base import Outcome, StepKind, StepRun


class Rename(StepKind):
    def plan(self, run: StepRun) -> Outcome:
        a = run.args
        image = run.known_image(a["image"])
        if image is None:
            return Outcome(a["image"], DRY_RUN, f"would rename {a['image']} to {a['name']}")
        if image.name == a["name"]:
            return Outcome(image, SKIPPED, f"{image.id} is already named {a['name']}")
        run.cloud.dry_run.rename_image(image.id, a["name"])  # the real request's checks
        return Outcome(image, DRY_RUN,
                       f"would rename {image.id} from {image.name} to {a['name']}")

    def apply(self, run: StepRun) -> Outcome:
        a = run.args
        image = run.cloud.image(a["image"])
        if image.name == a["name"]:
            return run.finish(image, f"{image.id} is already named {a['name']}", SKIPPED)
        run.cloud.rename_image(image.id, a["name"])
        image.refresh()
        return run.finish(image, f"renamed {image.id} to {a['name']}")
