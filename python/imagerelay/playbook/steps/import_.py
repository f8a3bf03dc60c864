"""``import``: a file (or URL) into a region as a new image, once."""

from __future__ import annotations

import contextlib
import logging

from ...errors import ImageRelayError, NotFoundError, TransferError
from ...image import Image
from ..result import DRY_RUN, SKIPPED
from ..schema import IMPORT_OPTIONS
from ..values import Placeholder, describe_output
from .base import Outcome, StepKind, StepRun

log = logging.getLogger("imagerelay")

# Replicating: Available, with copies of it in flight
_USABLE = ("Available", "Replicating")


class Import(StepKind):
    """The state records the image as soon as the import starts: a re-run reuses it, waits
    for it while Creating, or imports again if it is CreateFailed."""

    def recorded(self, run: StepRun) -> Outcome | None:
        return None  # plan and apply look at the recorded image themselves

    def plan(self, run: StepRun) -> Outcome:
        a = run.args
        image = self._recorded_image(run, wait=False)
        if image is not None and image.status in _USABLE:
            return self._already(image)
        # Every check of the real import (source, region, rules, policies), in the core.
        options = {k: a[k] for k in IMPORT_OPTIONS if k in a}
        run.cloud.dry_run.import_image(a["source"], region=a["region"], name=a["name"],
                                       **options)
        again = f" (again: {image.id} is CreateFailed)" if image is not None else ""
        return Outcome(Placeholder(f"{run.step.key}"), DRY_RUN,
                       f"would import {a['source']} into {a['region']} as {a['name']}{again}")

    def apply(self, run: StepRun) -> Outcome:
        a = run.args
        image = self._recorded_image(run, wait=True)
        if image is not None and image.status in _USABLE:
            run.settle(image)
            return self._already(image)
        if image is not None:  # CreateFailed: deleted and imported again
            log.info("playbook %s: step %s: image %s is CreateFailed (%s); deleting it and "
                     "importing again", run.playbook, run.step.key, image.id, image.error)
            with contextlib.suppress(ImageRelayError):
                image.delete()
        options = {k: a[k] for k in IMPORT_OPTIONS if k in a}
        image = run.cloud.import_image(a["source"], region=a["region"], name=a["name"],
                                       wait=False, **options)
        run.save("started", image)
        image.wait()
        if image.status != "Available":
            raise TransferError(f"the import of {a['source']} as image {image.id} failed: "
                                f"{image.error or image.status}; run the playbook again to "
                                "retry")
        return run.finish(image, f"imported {describe_output(image)}")

    @staticmethod
    def _recorded_image(run: StepRun, *, wait: bool) -> Image | None:
        """The image an earlier run of these arguments started importing, if it exists and
        is usable (Available, Replicating) or not (CreateFailed); ``wait`` waits for one
        still Creating."""
        if not (run.record and run.record.get("output", {}).get("image")):
            return None
        try:
            image = run.cloud.image(run.record["output"]["image"])
        except NotFoundError:
            return None
        if image.status == "Creating" and wait:
            image.wait()
        return image if image.status in (*_USABLE, "CreateFailed") else None

    @staticmethod
    def _already(image: Image) -> Outcome:
        return Outcome(image, SKIPPED, f"already imported: {describe_output(image)}")
