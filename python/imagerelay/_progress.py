"""Progress over bytes, for imports, copies and digests: tqdm bars; for the command line
without a terminal (a log file, CI, a pipe), a line on stderr every 10 s of long work."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO


def _line_every_s() -> float:
    """Seconds between progress lines without a terminal: IMAGERELAY_PROGRESS_INTERVAL, or 10."""
    try:
        return max(0.0, float(os.environ.get("IMAGERELAY_PROGRESS_INTERVAL", "10")))
    except ValueError:
        return 10.0


_lines_without_terminal = False


@contextmanager
def lines_without_terminal() -> Iterator[None]:
    """Within it, bars made without a terminal (or Jupyter) are ``LineBar``s: the command
    line's progress in logs. Outside it, ``progress=True`` always gets tqdm."""
    global _lines_without_terminal
    before, _lines_without_terminal = _lines_without_terminal, True
    try:
        yield
    finally:
        _lines_without_terminal = before


def _interactive() -> bool:
    return sys.stderr.isatty() or "ipykernel" in sys.modules


class LineBar:
    """A bar for no terminal: ``desc: 42% (430 MiB of 1.0 GiB)`` on stderr, first after 10 s
    (IMAGERELAY_PROGRESS_INTERVAL), then as often, and a last line at the end of work that
    printed any. Short work prints nothing. Offers the part of tqdm's interface that ``show``
    and the callers use."""

    def __init__(self, desc: str, total: int | None, stream: TextIO | None = None) -> None:
        self.desc, self.total, self.n = desc, total, 0
        self._stream = stream
        self._every_s = _line_every_s()
        self._status = ""
        self._last = time.monotonic()
        self._printed = ""  # the last line printed

    def set_postfix_str(self, status: str, refresh: bool = True) -> None:
        self._status = status

    def refresh(self) -> None:
        if time.monotonic() - self._last >= self._every_s:
            self._print()

    def close(self) -> None:
        if self._printed:
            self._print()  # where it ended, unless that was the last line already

    def _print(self) -> None:
        from .collections import human_size

        done = human_size(self.n)
        if self.total:
            line = f"{self.desc}: {100 * self.n / self.total:.0f}% ({done} of " \
                   f"{human_size(self.total)})"
        else:
            line = f"{self.desc}: {done}"
        if self._status:
            line += f", {self._status}"
        if line != self._printed:
            print(line, file=self._stream or sys.stderr, flush=True)
        self._last = time.monotonic()
        self._printed = line


def byte_bar(desc: str, total: int | None = None) -> Any:
    """A new bar (a ``LineBar`` without a terminal, for the command line); ``total`` may be
    set later by ``show``."""
    if _lines_without_terminal and not _interactive():
        return LineBar(desc, total)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                leave=True)


def show(bar: Any, done: int, total: int, status: str | None = None) -> None:
    """Moves ``bar`` to ``done`` of ``total`` bytes, with ``status`` after it if given."""
    if bar.total != total:
        bar.total = total
    bar.n = done
    if status is not None:
        bar.set_postfix_str(status, refresh=False)
    bar.refresh()


@contextmanager
def bar_callback(desc: str, enabled: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A ``callback(done, total)`` that moves a new bar, closed afterwards; None if not
    ``enabled``."""
    if not enabled:
        yield None
        return
    bar = byte_bar(desc)
    try:
        yield lambda done, total: show(bar, done, total)
    finally:
        bar.close()
