"""What a run reports: a log entry per step and the outputs of the steps."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from .values import plain

#: Step statuses in a :class:`StepLog`.
DONE = "done"
REDONE = "redone"
SKIPPED = "skipped"
DRY_RUN = "dry-run"
_ORDER = (DONE, REDONE, SKIPPED, DRY_RUN)  # of the counts in a summary


@dataclasses.dataclass
class StepLog:
    """What one step did: ``status`` is ``done``, ``redone`` (done by an earlier run, but
    the world drifted since: done again where it drifted), ``skipped`` (already done by an
    earlier run and still so, or nothing to do) or ``dry-run`` (would run). ``drift`` says
    what drifted when the step was (or, in a dry run, would be) redone, else ``None``."""

    index: int
    id: str | None
    kind: str
    status: str
    detail: str
    account: str
    line: int
    drift: str | None = None

    @property
    def key(self) -> str:
        return self.id if self.id is not None else f"#{self.index}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        return f"{self.status:8} {self.key:14} {self.kind:9} {self.detail}"


class PlaybookResult:
    """The result of :meth:`Playbook.run`.

    ``outputs`` maps each step (its id, or ``#n``) to what it produced: an :class:`Image`
    (import, share, unshare, rename, assert, wait on an image), a :class:`Job` (replicate,
    wait on a job, cancel of a job), a :class:`pathlib.Path` (export), an image id (delete,
    cancel of a copy), or a :class:`Placeholder` in a dry run. ``steps`` is the step log.
    """

    def __init__(self, name: str, *, dry_run: bool, state_path: Path) -> None:
        self.name = name
        self.dry_run = dry_run
        self.state_path = state_path
        self.outputs: dict[str, Any] = {}
        self.steps: list[StepLog] = []

    def output_ids(self) -> dict[str, Any]:
        """The outputs as ids and strings (JSON-able)."""
        return {k: plain(v) for k, v in self.outputs.items()}

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dry_run": self.dry_run, "state_file": str(self.state_path),
                "outputs": self.output_ids(), "steps": [s.to_dict() for s in self.steps]}

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for s in self.steps:
            counts[s.status] = counts.get(s.status, 0) + 1
        order = sorted(counts, key=lambda s: _ORDER.index(s) if s in _ORDER else len(_ORDER))
        parts = ", ".join(f"{counts[status]} {status}" for status in order)
        return f"playbook {self.name}: {len(self.steps)} steps ({parts or 'none'})"

    def __repr__(self) -> str:
        return f"<PlaybookResult {self.summary()}>"
