"""Progress bars over bytes, for imports and copies (tqdm: terminal and Jupyter)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


def byte_bar(desc: str, total: int | None = None) -> Any:
    """A new bar; ``total`` may be set later by ``show``."""
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
