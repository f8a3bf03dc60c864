"""What every step kind shares: the step being run (StepRun), its outcome, and the
interface of a kind: recorded(), plan(), apply()."""

from __future__ import annotations

import abc
import dataclasses
from typing import TYPE_CHECKING, Any, NamedTuple

from ...errors import ValidationError
from ...image import Image
from ..result import DONE, SKIPPED
from ..schema import Step
from ..state import RunState, decode_output, encode_output
from ..values import Placeholder, describe_output, has_placeholder

if TYPE_CHECKING:
    from ...cloud import Cloud


class Outcome(NamedTuple):
    output: Any
    status: str  # DONE, SKIPPED or DRY_RUN
    detail: str


@dataclasses.dataclass
class StepRun:
    """One step being run: its resolved arguments, what the state knows of it, and what of
    the run it needs."""

    step: Step
    cloud: Cloud  # acting as the step's account
    args: dict[str, Any]
    fingerprint: str
    record: dict[str, Any] | None  # the state's record for these arguments, if any
    latest: bool  # the record is the step's latest run
    state: RunState
    playbook: str  # the playbook's name
    progress: bool
    # False once an earlier step of this run changed something (or, in a dry run, would).
    world_current: bool

    @property
    def done_before(self) -> bool:
        return bool(self.record and self.latest and self.record.get("status") == DONE)

    def save(self, status: str, output: Any, **extra: Any) -> None:
        self.state.put(self.step.key, self.fingerprint,
                       {"kind": self.step.kind, "account": self.cloud.account,
                        "status": status, "output": encode_output(output), **extra})

    def settle(self, output: Any, **extra: Any) -> None:
        """Records ``output`` as done, unless the record already says so."""
        if (self.record or {}).get("status") != DONE:
            self.save(DONE, output, **extra)

    def finish(self, output: Any, detail: str, status: str = DONE, **extra: Any) -> Outcome:
        """Records the step as done with ``output``; its outcome."""
        self.save(DONE, output, **extra)
        return Outcome(output, status, detail)

    def skip_done(self, detail: str = "already done") -> Outcome:
        """The outcome of a step done before: its recorded output, as it is now."""
        assert self.record is not None
        output = decode_output(self.cloud, self.record.get("output") or {})
        return Outcome(output, SKIPPED, f"{detail} ({describe_output(output)})")

    def known_image(self, value: Any) -> Image | None:
        """The image if its id is known (not a placeholder); raises NoSuchImage if unknown."""
        if isinstance(value, Placeholder):
            return None
        return self.cloud.image(value)

    def check_accounts(self, accounts: Any) -> None:
        """A dry run's check that the accounts exist."""
        if has_placeholder(accounts):
            return
        known = {a.id for a in self.cloud.accounts}
        for a in accounts:
            if a not in known:
                raise ValidationError(f"account {a!r} does not exist; check the id or add it",
                                      code="Image.InvalidAccount")


class StepKind(abc.ABC):
    """One kind of step. The runner asks :meth:`recorded` first; when it has no outcome,
    :meth:`plan` in a dry run (checks against the catalog, writes nothing: neither the
    catalog nor the state) or :meth:`apply` in a real run."""

    #: True for the kinds that only check (wait, assert): they change nothing.
    checks_only = False

    def recorded(self, run: StepRun) -> Outcome | None:
        """The outcome when an earlier run did this step with these arguments; None when
        the step is to be planned or applied. Reads, never writes."""
        # A check that passed before is done again once a step of this run changed something.
        if run.done_before and (run.world_current or not self.checks_only):
            return run.skip_done(self.done_detail(run))
        return None

    def done_detail(self, run: StepRun) -> str:
        """What the log says of a step that :meth:`recorded` skips."""
        return "already done"

    @abc.abstractmethod
    def plan(self, run: StepRun) -> Outcome:
        """What the step would do (status DRY_RUN, or SKIPPED if nothing)."""

    @abc.abstractmethod
    def apply(self, run: StepRun) -> Outcome:
        """Does the step and records it in the state."""
