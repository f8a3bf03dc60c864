"""``assert``: an image's properties as the acting account sees them, checked against the
catalog at every run (never taken from the run state)."""

from __future__ import annotations

from typing import Any

from ...errors import NotFoundError
from ...image import Image
from ..errors import PlaybookAssertionError
from ..result import DRY_RUN, SKIPPED
from ..values import Placeholder, has_placeholder, plain
from .base import Outcome, StepKind, StepRun


class Assert(StepKind):
    checks_only = True

    def plan(self, run: StepRun) -> Outcome:
        a, account = run.args, run.cloud.account
        if not run.world_current or has_placeholder(a):
            # what it checks depends on steps that would run first
            output = a["image"] if isinstance(a["image"], Placeholder) else Placeholder(
                run.step.key, display=str(a["image"]))
            return Outcome(output, DRY_RUN, f"would check {a['image']} as {account}: "
                                            f"{_checks(a)}")
        image = _check(run)
        if run.done_before:
            return Outcome(image, SKIPPED, _held(run, image))
        return Outcome(image, DRY_RUN, f"holds now: {image.id} as {account}: {_checks(a)}")

    def apply(self, run: StepRun) -> Outcome:
        image = _check(run)
        # Held before with these arguments, and nothing changed in this run: nothing new.
        if run.done_before and run.world_current:
            return run.unchanged(image, _held(run, image))
        return run.finish(image, f"{image.id} as {run.cloud.account}: {_checks(run.args)}")


def _expected(args: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in args.items() if k != "image"}


def _checks(args: dict[str, Any]) -> str:
    return ", ".join(f"{k}={plain(v)}" for k, v in _expected(args).items()) or "visible"


def _held(run: StepRun, image: Image) -> str:
    return f"still holds: {image.id} as {run.cloud.account}: {_checks(run.args)}"


def _check(run: StepRun) -> Image:
    """The image as the catalog shows it now, if it has the expected properties
    (``PlaybookAssertionError`` if not, or if it is gone)."""
    account = run.cloud.account
    try:
        image = run.cloud.image(run.args["image"])
    except NotFoundError as exc:
        if exc.code != "NoSuchImage":
            raise
        raise PlaybookAssertionError(f"image {run.args['image']} as {account}: it is gone "
                                     f"(deleted, or {account} cannot see it)") from exc
    wrong = []
    for key, want in _expected(run.args).items():
        have = getattr(image, key)
        if have != want and not (have is not None and want is not None
                                 and str(have) == str(want)):
            wrong.append(f"{key} is {have!r}, expected {want!r}")
    if wrong:
        raise PlaybookAssertionError(f"image {image.id} as {account}: " + "; ".join(wrong))
    return image
