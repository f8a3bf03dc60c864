"""What ``${...}`` references and step outputs hold besides catalog objects, and how a value
is shown in messages and written as JSON."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._checks import shown
from ..image import Image
from ..job import Job


class Placeholder:
    """In a dry run, the not yet known output of a step that would run (``<golden.id>``)."""

    def __init__(self, text: str, *, display: str | None = None) -> None:
        self.text = text
        self.display = display if display is not None else f"<{text}>"

    def child(self, segment: str) -> Placeholder:
        return Placeholder(f"{self.text}.{segment}")

    def __str__(self) -> str:
        return self.display

    def __repr__(self) -> str:
        return f"Placeholder({self.display!r})"


class Partial(Placeholder):
    """In a dry run, the output of a step that would be done again in part (a replicate
    step copying again to one region): what it keeps is known (``known``: attribute ->
    value), the rest are placeholders."""

    def __init__(self, text: str, known: Mapping[str, Any]) -> None:
        super().__init__(text)
        self.known = dict(known)

    def child(self, segment: str) -> Any:
        return self.known[segment] if segment in self.known else super().child(segment)


@dataclasses.dataclass(frozen=True)
class GoneImage:
    """The output of an earlier run's step whose image no longer exists (e.g. deleted by a
    later step). Only its ``id`` is known."""

    id: str

    def __str__(self) -> str:
        return self.id


def has_placeholder(value: Any) -> bool:
    if isinstance(value, Placeholder):
        return True
    if isinstance(value, Mapping):
        return any(has_placeholder(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(has_placeholder(v) for v in value)
    return False


def plain(value: Any) -> Any:
    """A JSON-able form of a resolved value: objects become their ids."""
    if isinstance(value, (Image, Job, GoneImage)):
        return value.id
    if isinstance(value, (Path, Placeholder)):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def describe(value: Any) -> str:
    """A value as an error message names it: its type, and its value if short."""
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, str):
        return shown(value)
    return f"{type(value).__name__} {shown(plain(value))}"


def describe_output(value: Any) -> str:
    """A step's output as the step log shows it."""
    if isinstance(value, Image):
        return f"{value.id} ({value.name}, {value.region}, {value.status})"
    if isinstance(value, Job):
        copies = ", ".join(f"{r}: {t.dest_image_id} {t.state}" for r, t in value.tasks.items())
        return f"job {value.id} {value.state} ({copies})"
    if isinstance(value, GoneImage):
        return f"{value.id} (gone)"
    return str(value)
