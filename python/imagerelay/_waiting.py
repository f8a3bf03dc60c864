"""Waits cut into short blocking calls, so that Ctrl-C (and a notebook's interrupt) is seen.

A signal reaches Python only between calls into C++; a wait of minutes inside one call
would hold it until the wait ends.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from ._checks import check_timeout

WAIT_SLICE = 0.25  # seconds per blocking call


def wait_slices(timeout: float | None) -> Iterator[float]:
    """The length of each short wait, until ``timeout`` seconds (None: never) have passed.

    The loop that uses it ends normally only when the time is up. A bad ``timeout`` (NaN
    would wait forever) raises ``ValidationError`` here, before any wait.
    """
    return _slices(check_timeout(timeout))


def _slices(timeout: float | None) -> Iterator[float]:
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        if deadline is None:
            yield WAIT_SLICE
            continue
        left = deadline - time.monotonic()
        yield min(WAIT_SLICE, max(0.0, left))
        if left <= WAIT_SLICE:
            return
