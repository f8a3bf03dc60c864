"""Bounds on what a playbook file makes the loader and the runner do.

A real playbook is a few KiB; a hostile one (nested aliases, a "billion laughs", 5,000
nested brackets) fails at once with a PlaybookError instead of running for minutes or
overflowing the stack.
"""

from __future__ import annotations

MAX_FILE_BYTES = 2**20
MAX_DEPTH = 64  # nesting of collections, aliases expanded
# Values and characters of the document with its aliases expanded; and, counted apart, of
# what the ${...} references of one run resolve to.
MAX_VALUES = 100_000
MAX_TEXT = 16 * 2**20


def over_limits(values: int, chars: int) -> str | None:
    """Which bound a count of values and characters passes, if any."""
    if values > MAX_VALUES:
        return f"more than {MAX_VALUES:,} values"
    if chars > MAX_TEXT:
        return f"more than {MAX_TEXT // 2**20} MiB of text"
    return None
