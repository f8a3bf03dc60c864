"""The one way the package waits: an engine wait (``_core.Engine.wait_*``).

The engine wakes a wait at once for this process's changes, and the bindings let Ctrl-C (a
notebook's interrupt) end it, so no wait here polls or cuts itself into slices.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from . import _core
from .errors import TimeoutError

T = TypeVar("T")


def wait_for(engine_wait: Callable[[], T], timed_out: Callable[[], str]) -> T:
    """``engine_wait()``; its TimeoutError is raised again with ``timed_out()``, the message
    the public method has always given."""
    try:
        return engine_wait()
    except TimeoutError:
        raise TimeoutError(timed_out()) from None


async def wait_for_async(engine_wait: Callable[[_core.CancelToken], T]) -> T:
    """``engine_wait(cancel)`` on a thread, so that the event loop goes on meanwhile; a
    cancelled task fires ``cancel``, which ends the engine wait instead of leaving it to run."""
    import asyncio  # here: a script that never awaits does not load the event loop machinery

    cancel = _core.CancelToken()
    try:
        return await asyncio.to_thread(engine_wait, cancel)
    except asyncio.CancelledError:
        cancel.cancel()
        raise
