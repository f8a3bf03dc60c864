"""``delete``: an image; one already gone (or not visible to the acting account) is done."""

from __future__ import annotations

from ...errors import NotFoundError
from ...image import Image
from ..result import DRY_RUN, SKIPPED
from ..values import Placeholder
from .base import Outcome, StepKind, StepRun


class Delete(StepKind):
    def recorded(self, run: StepRun) -> Outcome | None:
        # Done before and still gone: its id is all there is to show.
        if run.done_before and _find(run) is None:
            return Outcome(run.args["image"], SKIPPED, f"already deleted {run.args['image']}")
        return None

    def plan(self, run: StepRun) -> Outcome:
        image_id = run.args["image"]
        if isinstance(image_id, Placeholder):
            return Outcome(image_id, DRY_RUN, f"would delete {image_id}")
        image = _find(run)
        if image is None:
            return Outcome(image_id, SKIPPED, _gone(image_id))
        run.cloud.dry_run.delete_image(image.id)  # the real request's checks
        return Outcome(image.id, DRY_RUN, f"would delete {_named(image)}")

    def apply(self, run: StepRun) -> Outcome:
        image = _find(run)
        if image is None:
            return run.unchanged(run.args["image"], _gone(run.args["image"]))
        run.cloud.delete_image(image.id)
        return run.finish(image.id, f"deleted {_named(image)}")


def _find(run: StepRun) -> Image | None:
    try:
        return run.cloud.image(run.args["image"])
    except NotFoundError:
        return None


def _gone(image_id: str) -> str:
    return f"{image_id} is already gone"


def _named(image: Image) -> str:
    return f"{image.id} ({image.name}, {image.region})"
