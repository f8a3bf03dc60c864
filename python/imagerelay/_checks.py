"""Checks of the numbers and texts the public API takes.

A bad number is a ``ValidationError`` (``InvalidParameter``) naming the argument, never a
``TypeError`` or ``OverflowError`` from the C++ binding, nor a wait that never ends (NaN).
A bad text likewise: the binding's own ``TypeError`` shows every argument of the call, a
secret among them.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any

from .errors import ValidationError

INT32_MAX = 2**31 - 1  # C++ int
INT64_MAX = 2**63 - 1  # C++ int64_t; also the bound of the uint64_t limits (SQLite, JSON)

_NAMED_BOUNDS = {INT32_MAX: "2**31-1", INT64_MAX: "2**63-1"}


def shown(value: Any) -> str:
    """``repr(value)`` for an error message: short, and never failing (an int of more than
    4300 digits has no str)."""
    try:
        text = repr(value)
    except Exception:
        bits = value.bit_length() if isinstance(value, int) else None
        return f"an integer of {bits} bits" if bits is not None else type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def check_int(name: str, value: Any, *, low: int = 0, high: int = INT64_MAX) -> int:
    """``value`` as an int in [low, high]; bool is not an int, an integral numpy scalar is."""
    number: int | None = None
    if not isinstance(value, bool):
        try:
            number = operator.index(value)
        except TypeError:
            pass
    if number is None or not low <= number <= high:
        bound = _NAMED_BOUNDS.get(high, str(high))
        raise ValidationError(f"{name} must be an integer between {low} and {bound}, "
                              f"got {shown(value)}")
    return number


def check_text(name: str, value: Any, *, secret: bool = False) -> str:
    """``value`` as a str the C++ core takes (UTF-8 text); None is "". A ``secret`` is never
    shown, not even in part: the error names its type only."""
    if value is None:
        return ""
    if not isinstance(value, str):
        got = type(value).__name__ if secret else shown(value)
        raise ValidationError(f"{name} must be a string, got {got}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # (a name read with os.fsdecode from bytes that are not UTF-8: surrogate escapes)
        raise ValidationError(f"{name} is not UTF-8 text (it holds unpaired surrogates)") from None
    return value


def check_timeout(value: Any, name: str = "timeout") -> float | None:
    """A timeout in seconds: None (no limit), or a finite number >= 0."""
    if value is None:
        return None
    seconds = math.nan
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:
            pass
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ValidationError(f"{name} must be a finite number of seconds >= 0, or None, "
                              f"got {shown(value)}")
    return seconds


def as_str_list(value: str | list[str] | tuple[str, ...] | None, what: str) -> list[str]:
    """One string or a list of them, as a list; ValidationError naming `what` otherwise."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValidationError(f"{what} must be a string or a list of strings, got {value!r}")
