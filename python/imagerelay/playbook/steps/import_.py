"""``import``: a file (or URL) into a region as a new image, once; again if that image is
gone (not deleted by a later step of the playbook)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging

from ...errors import ImageRelayError, NotFoundError, TransferError
from ...image import Image
from ..result import DRY_RUN, SKIPPED
from ..schema import IMPORT_OPTIONS
from ..values import GoneImage, Placeholder, describe_output
from .base import Outcome, StepKind, StepRun

log = logging.getLogger("imagerelay")

# Replicating: Available, with copies of it in flight. NotAvailable: damaged; scrub repairs
# it from another region, importing again would duplicate it.
_KEPT = ("Available", "Replicating", "NotAvailable")


@dataclasses.dataclass
class _Recorded:
    """The image an earlier run of these arguments started importing, as it is now."""

    image: Image | None = None  # it, if it exists
    removed_by: str | None = None  # the later step that deleted it
    drift: str | None = None  # why it is imported again, after an import that was done

    @property
    def usable(self) -> bool:
        return self.image is not None and self.image.status in _KEPT


class Import(StepKind):
    """The state records the image as soon as the import starts: a re-run reuses it, waits
    for it while Creating, or imports again if it is CreateFailed or gone."""

    def plan(self, run: StepRun) -> Outcome:
        a = run.args
        found = _recorded(run, wait=False)
        if found.removed_by is not None:
            return _removed(run, found.removed_by)
        if found.image is not None and found.usable:
            return _already(found.image)
        if found.image is not None and found.image.status == "Creating":
            return Outcome(found.image, DRY_RUN,
                           f"would wait for the import of {describe_output(found.image)}")
        # Every check of the real import (source, region, rules, policies), in the core.
        options = {k: a[k] for k in IMPORT_OPTIONS if k in a}
        run.cloud.dry_run.import_image(a["source"], region=a["region"], name=a["name"],
                                       **options)
        what = f"would import {a['source']} into {a['region']} as {a['name']}"
        if found.drift:
            return Outcome(Placeholder(run.step.key), DRY_RUN, f"would redo: {found.drift}; "
                           f"{what} again", found.drift)
        again = f" (again: {found.image.id} is CreateFailed)" if found.image is not None else ""
        return Outcome(Placeholder(run.step.key), DRY_RUN, what + again)

    def apply(self, run: StepRun) -> Outcome:
        a = run.args
        found = _recorded(run, wait=True)
        if found.removed_by is not None:
            return _removed(run, found.removed_by)
        if found.image is not None and found.usable:
            run.settle(found.image)
            return _already(found.image)
        if found.image is not None:  # CreateFailed: deleted and imported again
            log.info("playbook %s: step %s: image %s is CreateFailed (%s); deleting it and "
                     "importing again", run.playbook, run.step.key, found.image.id,
                     found.image.error)
            with contextlib.suppress(ImageRelayError):
                found.image.delete()
        options = {k: a[k] for k in IMPORT_OPTIONS if k in a}
        image = run.cloud.import_image(a["source"], region=a["region"], name=a["name"],
                                       wait=False, **options)
        status = run.again if found.drift else None
        run.save("started", image)
        image.wait()
        if image.status != "Available":
            raise TransferError(f"the import of {a['source']} as image {image.id} failed: "
                                f"{image.error or image.status}; run the playbook again to "
                                "retry")
        if status is not None:
            return run.finish(image, f"{found.drift}; imported again: "
                                     f"{describe_output(image)}", status, drift=found.drift)
        return run.finish(image, f"imported {describe_output(image)}")


def _recorded(run: StepRun, *, wait: bool) -> _Recorded:
    """What became of the image an earlier run of these arguments started importing: kept
    (Available, Replicating, NotAvailable), CreateFailed, deleted by a later step, or gone;
    ``wait`` waits for one still Creating."""
    image_id = ((run.record or {}).get("output") or {}).get("image")
    if not image_id:
        return _Recorded()
    try:
        image = run.cloud.image(image_id)
    except NotFoundError:
        image = None
    if image is None or image.status == "Deleted":
        removed_by = run.removed_by(image_id)
        if removed_by is not None:
            return _Recorded(removed_by=removed_by)
        # An import that never ended leaves nothing to redo: it is simply done now.
        done = run.done_before
        return _Recorded(drift=f"image {image_id} ({run.args['name']}, "
                               f"{run.args['region']}) was deleted" if done else None)
    if image.status == "Creating" and wait:
        image.wait()
    return _Recorded(image=image)  # kept, CreateFailed, or Creating (in a dry run)


def _removed(run: StepRun, by: str) -> Outcome:
    image_id = run.record["output"]["image"]  # type: ignore[index]
    return Outcome(GoneImage(image_id), SKIPPED,
                   f"imported before; {image_id} is gone: step {by} removed it")


def _already(image: Image) -> Outcome:
    detail = f"already imported: {describe_output(image)}"
    if image.status == "NotAvailable":
        detail += f"; it is damaged ({image.error}): `imagerelay scrub` repairs it"
    return Outcome(image, SKIPPED, detail)
