"""``assert``: an image's properties as the acting account sees them."""

from __future__ import annotations

from typing import Any

from ...image import Image
from ..errors import PlaybookAssertionError
from ..result import DRY_RUN
from ..values import Placeholder, has_placeholder, plain
from .base import Outcome, StepKind, StepRun


class Assert(StepKind):
    checks_only = True

    def done_detail(self, run: StepRun) -> str:
        return f"held before: {_checks(run.args)}"

    def plan(self, run: StepRun) -> Outcome:
        a, account = run.args, run.cloud.account
        if not run.world_current or has_placeholder(a):
            # what it checks depends on steps that would run first
            output = a["image"] if isinstance(a["image"], Placeholder) else Placeholder(
                run.step.key, display=str(a["image"]))
            return Outcome(output, DRY_RUN, f"would check {a['image']} as {account}: "
                                            f"{_checks(a)}")
        image = _check(run)
        return Outcome(image, DRY_RUN, f"holds now: {image.id} as {account}: {_checks(a)}")

    def apply(self, run: StepRun) -> Outcome:
        image = _check(run)
        return run.finish(image, f"{image.id} as {run.cloud.account}: {_checks(run.args)}")


def _expected(args: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in args.items() if k != "image"}


def _checks(args: dict[str, Any]) -> str:
    return ", ".join(f"{k}={plain(v)}" for k, v in _expected(args).items()) or "visible"


def _check(run: StepRun) -> Image:
    """The image, if it has the expected properties (``PlaybookAssertionError`` if not)."""
    image = run.cloud.image(run.args["image"])
    wrong = []
    for key, want in _expected(run.args).items():
        have = getattr(image, key)
        if have != want and not (have is not None and want is not None
                                 and str(have) == str(want)):
            wrong.append(f"{key} is {have!r}, expected {want!r}")
    if wrong:
        raise PlaybookAssertionError(f"image {image.id} as {run.cloud.account}: "
                                     + "; ".join(wrong))
    return image
