"""The step kinds, one class each: by kind, as a playbook names them (schema.STEP_KINDS)."""

from __future__ import annotations

from .assert_ import Assert
from .base import Outcome, StepKind, StepRun
from .cancel import Cancel
from .delete import Delete
from .export import Export
from .import_ import Import
from .rename import Rename
from .replicate import Replicate
from .share import Share, Unshare
from .wait import Wait

KINDS: dict[str, StepKind] = {
    "import": Import(), "replicate": Replicate(), "wait": Wait(), "cancel": Cancel(),
    "share": Share(), "unshare": Unshare(), "rename": Rename(), "export": Export(),
    "delete": Delete(), "assert": Assert(),
}

__all__ = ["KINDS", "Outcome", "StepKind", "StepRun"]
