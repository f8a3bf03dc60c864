"""The Playbook: loaded and checked from a file or text, run against a cloud."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import PlaybookError
from .loader import load_yaml, read_file
from .result import PlaybookResult, StepLog
from .runner import Runner
from .schema import Step, check

if TYPE_CHECKING:
    from ..cloud import Cloud


def parse_var(text: str) -> tuple[str, str]:
    """``"K=V"`` -> ``("K", "V")`` (the command line's ``--var``)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"a var is written NAME=VALUE, got {text!r}")
    return key, value


class Playbook:
    """A parsed playbook. :meth:`load` reads a file; :meth:`run` runs it against a cloud."""

    def __init__(self, name: str, steps: list[Step], *, account: str | None = None,
                 vars: dict[str, Any] | None = None, path: Path | None = None,
                 lines: dict[str, int] | None = None) -> None:
        self.name = name
        self.steps = steps
        self.account = account
        self.vars: dict[str, Any] = dict(vars or {})
        self.path = path
        self._lines = dict(lines or {})

    @property
    def base_dir(self) -> Path:
        """Relative paths (import source, export path) are relative to this folder."""
        return (self.path.parent if self.path is not None else Path.cwd()).absolute()

    @property
    def _where(self) -> str:
        return str(self.path) if self.path is not None else "<playbook>"

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Playbook:
        """Reads and checks a playbook file (``PlaybookError`` naming the file and line)."""
        p = Path(path)
        return cls.parse(read_file(p), path=p)

    @classmethod
    def parse(cls, text: str, *, path: str | os.PathLike[str] | None = None) -> Playbook:
        """Parses playbook text; ``path`` names it in errors and anchors relative paths."""
        p = Path(path) if path is not None else None
        where = str(p) if p is not None else "<playbook>"
        outline = check(load_yaml(text, where), where)
        return cls(outline.name, outline.steps, account=outline.account, vars=outline.vars,
                   path=p, lines=outline.lines)

    def run(self, cloud: Cloud, *, vars: Mapping[str, Any] | None = None,
            dry_run: bool = False, progress: bool = False,
            on_step: Callable[[StepLog], None] | None = None) -> PlaybookResult:
        """Runs the steps in order, continuing an earlier run of the same ``name``.

        ``vars`` override the playbook's vars (each must be declared). ``dry_run`` checks
        every step against the catalog and changes nothing. ``progress`` shows progress bars
        while waiting for copies; ``on_step`` is called with each step's log entry as soon
        as the step is over. Raises the failing step's error (same class and code), its
        message prefixed with ``<file>:<line>: step <id> (<kind>): ``.
        """
        merged = dict(self.vars)
        for key, value in (vars or {}).items():
            if key not in self.vars:
                declared = ", ".join(self.vars) or "none"
                raise PlaybookError(f"{self._where}:{self._lines.get('vars') or 1}: var "
                                    f"{key!r} is not declared by the playbook (vars: "
                                    f"{declared})", path=self._where,
                                    line=self._lines.get("vars") or None)
            merged[key] = value
        runner = Runner(self, cloud, merged, where=self._where,
                        account_line=self._lines.get("account") or 1, dry_run=dry_run,
                        progress=progress, on_step=on_step)
        return runner.run()

    def __repr__(self) -> str:
        return f"<Playbook {self.name!r} {len(self.steps)} steps from {self._where}>"
