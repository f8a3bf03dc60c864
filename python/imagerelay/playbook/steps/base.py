"""What every step kind shares: the step being run (StepRun), its outcome, and the
interface of a kind: recorded(), plan(), apply().

Runs converge: a step that an earlier run did is skipped only once the world shows it still
done (its image there, its copies there, its shares there...); what drifted since is done
again and the step reported ``redone`` with what drifted. Each step converges to what it
says where it stands in the playbook: a share that a later unshare step undid is shared
again for the steps between (a rename, the same). Removals are the exception: a copy or
image that a later ``delete`` or ``cancel`` step removed is not made again (that step would
only remove it again), and a step whose image it was has nothing to do."""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

from ...errors import NotFoundError, ValidationError
from ...image import Image
from ..result import DONE, REDONE, SKIPPED
from ..schema import Step
from ..state import RunState, encode_output
from ..values import GoneImage, Placeholder, has_placeholder

if TYPE_CHECKING:
    from ...cloud import Cloud


class Outcome(NamedTuple):
    output: Any
    status: str  # DONE, REDONE, SKIPPED or DRY_RUN
    detail: str
    drift: str | None = None  # what drifted, when the step is (or would be) redone


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
    later: tuple[str, ...] = ()  # the keys of the playbook's later steps
    earlier: tuple[str, ...] = ()  # and of its earlier ones

    @property
    def done_before(self) -> bool:
        return bool(self.record and self.latest and self.record.get("status") == DONE)

    @property
    def again(self) -> str:
        """The status of a step that changes the world: ``redone`` if an earlier run did it
        with these arguments (what it did drifted since), else ``done``."""
        return REDONE if self.done_before else DONE

    def done_steps(self, keys: tuple[str, ...]) -> Iterator[tuple[str, dict[str, Any]]]:
        """(key, record) of each of these steps whose latest run is done."""
        for key in keys:
            record = self.state.latest(key)
            if record and record.get("status") == DONE:
                yield key, record

    def removed_by(self, image_id: str, job_id: str | None = None) -> str | None:
        """The later step that deleted or cancelled the image (a copy of job ``job_id``), if
        one did."""
        for key, record in self.done_steps(self.later):
            kind = record.get("kind")
            out = record.get("output") or {}
            if kind == "delete" and out.get("value") == image_id:
                return key
            if kind == "cancel" and (
                    out.get("value") == image_id or image_id in (record.get("images") or ())
                    # a job's cancel recorded before it listed its copies: all of them
                    or (job_id is not None and out.get("job") == job_id
                        and "images" not in record)):
                return key
        return None

    def changed_by(self, kind: str, image_id: str, account: str | None = None) -> str | None:
        """The other step of ``kind`` (``rename``, ``share``, ``unshare``) that acted on the
        image (and ``account``), if one did: what a drift is told to come from."""
        for key, record in self.done_steps((*self.earlier, *self.later)):
            if record.get("kind") != kind or (record.get("output") or {}).get("image") \
                    != image_id:
                continue
            accounts = record.get("accounts")
            if account is None or accounts is None or account in accounts:
                return key
        return None

    def save(self, status: str, output: Any, **extra: Any) -> None:
        self.state.put(self.step.key, self.fingerprint,
                       {"kind": self.step.kind, "account": self.cloud.account,
                        "status": status, "output": encode_output(output), **extra})

    def settle(self, output: Any, **extra: Any) -> None:
        """Records ``output`` as done, unless the record already says so (and is the
        step's latest)."""
        if not self.done_before:
            self.save(DONE, output, **extra)

    def finish(self, output: Any, detail: str, status: str = DONE, *,
               drift: str | None = None, **extra: Any) -> Outcome:
        """Records the step as done with ``output``; its outcome."""
        self.save(DONE, output, **extra)
        return Outcome(output, status, detail, drift)

    def unchanged(self, output: Any, detail: str, **extra: Any) -> Outcome:
        """The outcome of a step with nothing to do: the world is as it says."""
        self.settle(output, **extra)
        return Outcome(output, SKIPPED, detail)

    def image(self, image_id: str) -> Image | None:
        """The image the step acts on; None when a later step of this playbook deleted it
        (the step then has nothing to do: :meth:`gone`); ``NoSuchImage`` when it is gone
        otherwise."""
        try:
            return self.cloud.image(image_id)
        except NotFoundError:
            if self.removed_by(image_id) is None:
                raise
            return None

    def gone(self, image_id: str) -> Outcome:
        """The outcome of a step whose image a later step of this playbook deleted."""
        return Outcome(GoneImage(image_id), SKIPPED,
                       f"{image_id} is gone: step {self.removed_by(image_id)} removed it")

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
    catalog nor the state) or :meth:`apply` in a real run. Both look at the world before
    they skip a step done before, and redo what drifted."""

    #: True for the kinds that only check (wait, assert): they change nothing.
    checks_only = False

    def recorded(self, run: StepRun) -> Outcome | None:
        """The outcome of a step done before that a look at the world shows still done,
        when that look is cheaper than plan() and apply() (None: ask them). Reads, never
        writes."""
        return None

    @abc.abstractmethod
    def plan(self, run: StepRun) -> Outcome:
        """What the step would do (status DRY_RUN, or SKIPPED if nothing)."""

    @abc.abstractmethod
    def apply(self, run: StepRun) -> Outcome:
        """Does the step (again, where the world drifted) and records it in the state."""
