"""A time limit on a block of a test: input that used to hang must end (SIGALRM, main
thread only)."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def deadline(seconds: float,
             error: Callable[[str], BaseException] = AssertionError) -> Iterator[None]:
    """Raises ``error("still running after N s")`` inside the block once it runs longer."""

    def expire(signum: int, frame: Any) -> None:
        raise error(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
