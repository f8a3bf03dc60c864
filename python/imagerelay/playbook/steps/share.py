"""``share`` and ``unshare``: an image with accounts, touching only those not yet
shared (still shared)."""

from __future__ import annotations

from ...image import Image
from ..result import DRY_RUN, SKIPPED
from .base import Outcome, StepKind, StepRun


class Share(StepKind):
    verb = "share"
    state = "shared"

    def plan(self, run: StepRun) -> Outcome:
        a = run.args
        accounts = list(dict.fromkeys(a["accounts"]))
        image = run.known_image(a["image"])
        run.check_accounts(accounts)
        if image is None:
            return Outcome(a["image"], DRY_RUN,
                           f"would {self.verb} {a['image']} with {', '.join(accounts)}")
        todo = self._todo(run, image, accounts)
        if not todo and accounts:
            return Outcome(image, SKIPPED, self._already(image, accounts))
        self._check(run, image, todo)
        return Outcome(image, DRY_RUN, f"would {self.verb} {image.id} with {', '.join(todo)}")

    def apply(self, run: StepRun) -> Outcome:
        accounts = list(dict.fromkeys(run.args["accounts"]))
        image = run.cloud.image(run.args["image"])
        todo = self._todo(run, image, accounts)
        if not todo and accounts:
            return run.finish(image, self._already(image, accounts), SKIPPED)
        self._change(run, image, todo)
        return run.finish(image, f"{self.verb}d {image.id} with {', '.join(todo)}")

    def _todo(self, run: StepRun, image: Image, accounts: list[str]) -> list[str]:
        """The accounts not shared with yet."""
        current = set(run.cloud.shared_users(image.id))
        return [x for x in accounts if x not in current]

    def _change(self, run: StepRun, image: Image, accounts: list[str]) -> None:
        run.cloud.share(image.id, accounts)

    def _check(self, run: StepRun, image: Image, accounts: list[str]) -> None:
        """Every rule and policy of the real request, in the core."""
        run.cloud.dry_run.share(image.id, accounts)

    def _already(self, image: Image, accounts: list[str]) -> str:
        return f"{image.id} is already {self.state} with {', '.join(accounts)}"


class Unshare(Share):
    verb = "unshare"
    state = "not shared"

    def _todo(self, run: StepRun, image: Image, accounts: list[str]) -> list[str]:
        """The accounts still shared with."""
        current = set(run.cloud.shared_users(image.id))
        return [x for x in accounts if x in current]

    def _change(self, run: StepRun, image: Image, accounts: list[str]) -> None:
        run.cloud.unshare(image.id, accounts)

    def _check(self, run: StepRun, image: Image, accounts: list[str]) -> None:
        run.cloud.dry_run.unshare(image.id, accounts)
