"""The errors of a playbook, and how a step's error is told where it happened."""

from __future__ import annotations

import copy

from ..errors import ImageRelayError, ValidationError


class PlaybookError(ValidationError):
    """A playbook that cannot run as written: bad YAML, an unknown step kind, a missing field,
    a reference to a missing step or var. Code ``InvalidParameter``.

    ``path``, ``line`` and ``step`` (the step's id or ``#n``, or ``None``) say where.
    """

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 step: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.line = line
        self.step = step


class PlaybookAssertionError(ImageRelayError):
    """An ``assert`` step found an image property other than expected."""

    default_code = "Playbook.AssertionFailed"
    default_status = 412


class LimitError(ValueError):
    """Resolved arguments past the bounds: an error even for a step done before."""


def prefixed(exc: ImageRelayError, prefix: str) -> ImageRelayError:
    """The same error (class, code, problems, extra attributes such as ``.job``), its message
    prefixed with where it happened."""
    try:
        new = copy.copy(exc)
    except Exception:  # an exception that cannot be copied: keep its class and code
        new = ImageRelayError(exc.message, code=exc.code, http_status=exc.http_status,
                              problems=exc.problems)
    new.message = prefix + exc.message
    new.args = (f"{exc.code}: {new.message}",)
    return new
