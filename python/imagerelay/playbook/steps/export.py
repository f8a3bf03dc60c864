"""``export``: an image to a file, again unless the file is still there with its size."""

from __future__ import annotations

from pathlib import Path

from ...errors import NotFoundError
from ..result import DRY_RUN, SKIPPED
from ..state import encode_output
from .base import Outcome, StepKind, StepRun


class Export(StepKind):
    def recorded(self, run: StepRun) -> Outcome | None:
        a = run.args
        path = Path(a["path"])
        if not (run.done_before and path.is_file()):
            return None
        try:
            size: int | None = run.cloud.image(a["image"]).size
        except NotFoundError:  # deleted since (e.g. by a later step): keep the file
            size = None
        if size is None or path.stat().st_size == size:
            return Outcome(path, SKIPPED, f"already exported {a['image']} to {path}")
        return None

    def plan(self, run: StepRun) -> Outcome:
        a = run.args
        path = Path(a["path"])
        image = run.known_image(a["image"])
        return Outcome(path, DRY_RUN,
                       f"would export {image.id if image else a['image']} to {path}")

    def apply(self, run: StepRun) -> Outcome:
        a = run.args
        path = Path(a["path"])
        image = run.cloud.image(a["image"])
        path.parent.mkdir(parents=True, exist_ok=True)
        # A file this step wrote in an earlier run (of any image) is its own to overwrite.
        own = encode_output(path) in run.state.done_outputs(run.step.key)
        written = run.cloud.export_image(image.id, path, force=bool(a.get("force")) or own)
        return run.finish(written, f"exported {image.id} to {written} ({image.size} bytes)")
