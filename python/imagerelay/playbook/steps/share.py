"""``share`` and ``unshare``: an image with accounts, touching only those not yet
shared (still shared). A share undone since the step did it is done again."""

from __future__ import annotations

from ...image import Image
from ..result import DRY_RUN, SKIPPED
from ..values import Placeholder
from .base import Outcome, StepKind, StepRun


class Share(StepKind):
    verb = "share"
    state = "shared"
    undo = "unshare"  # the kind of step that undoes this one
    undone = "was unshared from"  # what drifted: "<image> <undone> <accounts> since"

    def plan(self, run: StepRun) -> Outcome:
        a = run.args
        accounts = list(dict.fromkeys(a["accounts"]))
        run.check_accounts(accounts)
        if isinstance(a["image"], Placeholder):
            return Outcome(a["image"], DRY_RUN,
                           f"would {self.verb} {a['image']} with {', '.join(accounts)}")
        image = run.image(a["image"])
        if image is None:
            return run.gone(a["image"])
        todo = self._todo(run, image, accounts)
        if not todo and accounts:
            return Outcome(image, SKIPPED, self._already(image, accounts))
        self._check(run, image, todo)
        drift = self._drift(run, image, todo)
        what = f"would {self.verb} {image.id} with {', '.join(todo)}"
        return Outcome(image, DRY_RUN, f"would redo: {drift}; {what}" if drift else what, drift)

    def apply(self, run: StepRun) -> Outcome:
        a = run.args
        accounts = list(dict.fromkeys(a["accounts"]))
        image = run.image(a["image"])
        if image is None:
            return run.gone(a["image"])
        todo = self._todo(run, image, accounts)
        if not todo and accounts:
            return run.unchanged(image, self._already(image, accounts), accounts=accounts)
        self._change(run, image, todo)
        done = f"{self.verb}d {image.id} with {', '.join(todo)}"
        drift = self._drift(run, image, todo)
        if drift:
            return run.finish(image, f"{drift}; {done} again", run.again, drift=drift,
                              accounts=accounts)
        return run.finish(image, done, accounts=accounts)

    def _todo(self, run: StepRun, image: Image, accounts: list[str]) -> list[str]:
        """The accounts not shared with yet."""
        current = set(run.cloud.shared_users(image.id))
        return [x for x in accounts if x not in current]

    def _drift(self, run: StepRun, image: Image, accounts: list[str]) -> str | None:
        """After a run that did the step: what undid it since (also a later step of the
        playbook: each step converges to what it says, where it stands)."""
        if not run.done_before:
            return None
        later = sorted({k for x in accounts if (k := run.changed_by(self.undo, image.id, x))})
        by = f" (step {', '.join(later)} {self.undo}s it)" if later else ""
        return f"{image.id} {self.undone} {', '.join(accounts)} since{by}"

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
    undo = "share"
    undone = "was shared with"

    def _todo(self, run: StepRun, image: Image, accounts: list[str]) -> list[str]:
        """The accounts still shared with."""
        current = set(run.cloud.shared_users(image.id))
        return [x for x in accounts if x in current]

    def _change(self, run: StepRun, image: Image, accounts: list[str]) -> None:
        run.cloud.unshare(image.id, accounts)

    def _check(self, run: StepRun, image: Image, accounts: list[str]) -> None:
        run.cloud.dry_run.unshare(image.id, accounts)
